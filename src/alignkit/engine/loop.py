"""The loop's pure pieces: data order, micro-batches and length buckets, the learning-rate schedule.

Data order: the examples of epoch ``e`` are a permutation drawn from a generator seeded with
``seed + e``; step ``s`` takes the ``s``-th slice of ``batch_size`` examples of that epoch, and each
process takes its own contiguous share of the slice. The order depends only on (seed, step), which is
what makes a resumed run and a 2-process run identical to an uninterrupted 1-process run.

No example is dropped: an epoch is ``ceil(n / batch_size)`` steps and its last step trains on the
``n mod batch_size`` examples left (a smaller step; the engine's loss is a mean over the step's own
weight, so a step means the same thing whatever its size). Under ``world`` processes that last batch is
filled up to a multiple of ``world`` with the first examples of the epoch's permutation (at most
``world - 1`` examples read twice in that step), so every process gets an equal share. A data set
smaller than ``batch_size`` is one such step per epoch: the batch is capped to the data (the trainer
says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .contract import Algorithm


@dataclass(frozen=True)
class DataOrder:
    """Which examples each optimizer step reads: a pure function of (seed, step)."""

    n: int
    batch_size: int
    seed: int
    shuffle: bool = True
    world: int = 1

    @property
    def per_epoch(self) -> int:
        """Steps per epoch: every example once, the last step taking the remainder."""
        return math.ceil(self.n / self.batch_size)

    def size(self, step: int) -> int:
        """Examples step ``step`` reads over all processes (``batch_size``, or fewer at an epoch's end)."""
        pos = step % self.per_epoch
        left = min(self.batch_size, self.n - pos * self.batch_size)
        return left + (-left) % self.world  # an equal share on every process

    def batch(self, step: int) -> list[int]:
        """Every process's example indices of step ``step``, in process order."""
        import torch

        epoch, pos = divmod(step, self.per_epoch)
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:  # the algorithm's own order (e.g. a curriculum)
            order = torch.arange(self.n)
        indices = order[pos * self.batch_size : (pos + 1) * self.batch_size].tolist()
        fill = self.size(step) - len(indices)  # several processes: the last batch filled to an equal share
        return indices + [int(order[i % self.n]) for i in range(fill)]

    def share(self, step: int, rank: int) -> list[int]:
        """Process ``rank``'s contiguous share of step ``step``."""
        share = self.size(step) // self.world
        return self.batch(step)[rank * share : (rank + 1) * share]

    def used(self, start: int, stop: int) -> list[int]:
        """Sorted indices read by steps ``start .. stop - 1`` (all processes)."""
        seen: set[int] = set()
        for step in range(start, stop):
            if len(seen) == self.n:
                break
            seen.update(self.batch(step))
        return sorted(seen)


def check_layout(n: int, batch_size: int, world: int, micro_batch_size: int | None) -> None:
    if n == 0:
        raise ValueError("the training data has no examples")
    if batch_size % world:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the number of processes ({world})")
    if micro_batch_size is not None and (batch_size // world) % micro_batch_size:
        raise ValueError(f"train.batch_size / processes = {batch_size // world} must be a multiple of train.micro_batch_size={micro_batch_size}")


def split_micro_batches(
    algorithm: Algorithm, examples: list[dict[str, Any]], indices: list[int], collate: Callable[[list[dict]], Any],
    micro_batch_size: int | None, micro_batch_tokens: int | None,
) -> list[Any]:
    """The collated micro-batches of :func:`micro_batch_groups`."""
    return [collate([examples[i] for i in g]) for g in micro_batch_groups(algorithm, examples, indices, micro_batch_size, micro_batch_tokens)]


def micro_batch_groups(algorithm: Algorithm, examples: list[dict[str, Any]], indices: list[int],
                       micro_batch_size: int | None, micro_batch_tokens: int | None) -> list[list[int]]:
    """``indices`` of ``examples`` split by ``micro_batch_size`` (in order) or, with
    ``micro_batch_tokens``, into length buckets: units sorted by length and grouped so that a
    micro-batch's padded size (rows x longest) stays within the budget. Units (consecutive examples with
    the same ``algorithm.unit_key``: a pair, a group) never span micro-batches. The engine's loss
    scaling makes every split give the same update; bucketing only removes padding work."""
    units: list[list[int]] = []
    for i in indices:
        key = algorithm.unit_key(examples[i])
        if units and key is not None and algorithm.unit_key(examples[units[-1][-1]]) == key:
            units[-1].append(i)
        else:
            units.append([i])
    groups: list[list[int]] = []
    if micro_batch_tokens is None:
        size = micro_batch_size or len(indices)
        current: list[int] = []
        for u in units:
            current += u
            if len(current) >= size:
                groups.append(current)
                current = []
        if current:
            groups.append(current)
    else:
        rows_of = {id(u): algorithm.unit_rows([examples[i] for i in u]) for u in units}
        units.sort(key=lambda u: max(rows_of[id(u)]))
        current, n_rows, longest = [], 0, 0
        for u in units:
            rows = rows_of[id(u)]
            if current and (n_rows + len(rows)) * max(longest, max(rows)) > micro_batch_tokens:
                groups.append(current)
                current, n_rows, longest = [], 0, 0
            current += u
            n_rows += len(rows)
            longest = max(longest, max(rows))
        if current:
            groups.append(current)
    return groups


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Warmup then constant, linear or cosine decay over ``total`` optimizer updates."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f
