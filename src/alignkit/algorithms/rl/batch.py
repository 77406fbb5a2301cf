"""The typed data of one rollout: per-sample tensors (:class:`Rollout`) and the completions that train
(:class:`RolloutBatch`, one row each), with the light :class:`Row` records the engine batches by.

Shapes: ``n`` samples drawn on this process (``len(examples) * group_size``, consecutive groups of one
prompt), ``N`` rows of the batch (the kept samples that have at least one completion token), ``T`` the
longest ``prompt + completion`` of the rows. Token tensors use the trainer's target layout: position
``t`` holds the value for token ``t`` (its log-prob is read from the state at ``t - 1``), so prompt
positions and positions at or beyond a row's length are 0 (``pad_id`` for ``input_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from ...data.collate import collate_shared_prefix

# RolloutBatch token field -> the key micro-batches carry it under (what the losses read)
TOKEN_KEYS = {"old_logp": "old_logp", "ref_logp": "ref_logp", "behaviour_logp": "behaviour_logp", "token_advantage": "token_adv", "returns": "returns", "values": "old_values", "turn": "turn"}


@dataclass
class Rollout:
    """What stages 1-3 know about every sample drawn on this process (``n`` of them).

    ``samples``: the sampler's records (prompt/completion text and ids, ``finished``); ``reward [n]``:
    the reward the advantages read (after transforms, DAPO shaping and, for outcome estimators, the KL
    in the reward); ``raw_reward [n]``: the reward source's scores as logged; ``finished [n]``: stopped
    before ``max_new_tokens``; ``keep [n]``: survives the DAPO filters (pairs whole); ``advantage [n]``:
    stage 4's sequence advantages (outcome estimators); ``own``: this process's slice of the rollout
    gathered over processes (in process order, the 1-process rollout)."""

    examples: list[dict[str, Any]]
    samples: list[Any]
    group_size: int
    reward: Tensor
    raw_reward: Tensor
    finished: Tensor
    keep: Tensor
    own: slice
    advantage: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
    token_rewards: list[Tensor] | None = None  # a token-level reward source's rewards, one per completion token (Text2Grad)

    def context(self) -> dict[str, list]:
        return sample_context(self.examples, self.group_size)


def sample_context(examples: list[dict[str, Any]], n: int) -> dict[str, list]:
    """The examples' extra fields, repeated for each of their ``n`` samples (what a reward source may read
    besides the text: e.g. a task's answer or a user group)."""
    skip = ("prompt", "prompt_ids", "row", "index")
    return {k: [e[k] for e in examples for _ in range(n)] for k in examples[0] if k not in skip}


@dataclass(eq=False)
class RolloutBatch:
    """The rows that train: one completion each, tensors on the CPU.

    ``input_ids [N, T]`` (long, ``pad_id`` beyond ``length``), ``completion_mask [N, T]`` (long, 1 on the
    completion's tokens), ``length [N]`` and ``prompt_len [N]`` (long), ``sample [N]`` (the row's index in
    the :class:`Rollout`), ``unit [N]`` (rows with the same unit stay in one micro-batch: a group sharing
    its prompt's forward, or a pair; -1: none), ``reward [N]`` (float). Filled by later stages (None until
    then): ``advantage [N]`` (sequence-level) or ``token_advantage [N, T]``, ``old_logp``, ``ref_logp``
    (log-probs at the sampling temperature), ``behaviour_logp`` (the rollout engine's own log-probs of the
    sampled tokens, μ of ``rl.off_policy``; set when a correction is on and every sample reports them), ``values`` (the critic's, at sampling time), ``returns``
    (critic targets) and ``dense_logp`` (RTO's dense reward model), all ``[N, T]`` float32.

    Multi-turn trajectories (``rl.env``, :class:`alignkit.envs.Trajectory`): the completion is every turn
    with the environment's tokens between them, and ``completion_mask`` is 0 on those (the sample's own
    mask); ``turn [N, T]`` (long) is the turn index of each policy token (-1 elsewhere) and
    ``token_reward [N, T]`` each turn's reward on that turn's last token (``rl.env.credit: turn``).
    """

    input_ids: Tensor
    completion_mask: Tensor
    length: Tensor
    prompt_len: Tensor
    sample: Tensor
    unit: Tensor
    reward: Tensor
    pad_id: int
    advantage: Tensor | None = None
    token_advantage: Tensor | None = None
    old_logp: Tensor | None = None
    ref_logp: Tensor | None = None
    values: Tensor | None = None
    returns: Tensor | None = None
    dense_logp: Tensor | None = None
    turn: Tensor | None = None
    token_reward: Tensor | None = None
    behaviour_logp: Tensor | None = None
    version: Tensor | None = None  # [N] long: the policy version that drew each row's first token (rl.asynchronous); None: the current one
    token_level: bool = False  # token_reward holds a token-level reward source's rewards (the estimators credit tokens)

    @classmethod
    def from_samples(cls, rollout: Rollout, index: list[int], unit_size: int | None, pad_id: int, behaviour: bool = False) -> "RolloutBatch":
        """Rows for samples ``index`` of ``rollout``; ``unit_size``: consecutive samples per unit (None: no units);
        ``behaviour``: also keep the sampler's log-probs as ``behaviour_logp`` (``rl.off_policy``)."""
        samples = [rollout.samples[i] for i in index]
        n = len(samples)
        lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in samples]
        width = max(lengths, default=0)
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        completion_mask = torch.zeros((n, width), dtype=torch.long)
        trajectories = bool(samples) and all(hasattr(s, "completion_mask") for s in samples)
        turn = torch.full((n, width), -1, dtype=torch.long) if trajectories else None
        token_reward = torch.zeros((n, width), dtype=torch.float32) if trajectories else None
        for r, s in enumerate(samples):
            p = len(s.prompt_ids)
            input_ids[r, : lengths[r]] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
            if trajectories:  # environment tokens inside the completion are not the policy's
                completion_mask[r, p : lengths[r]] = torch.tensor(s.completion_mask, dtype=torch.long)
                turn[r, p : lengths[r]] = torch.tensor(s.token_turns(), dtype=torch.long)
                token_reward[r, p : lengths[r]] = torch.tensor(s.token_rewards(), dtype=torch.float32)
            else:
                completion_mask[r, p : lengths[r]] = 1
        behaviour_logp = None
        # trajectories: 0.0 on environment tokens, which completion_mask keeps out of the correction
        if behaviour and samples and all(getattr(s, "logprobs", None) is not None for s in samples):
            behaviour_logp = torch.zeros((n, width), dtype=torch.float32)
            for r, s in enumerate(samples):
                behaviour_logp[r, len(s.prompt_ids) : lengths[r]] = torch.tensor(s.logprobs, dtype=torch.float32)
        sample = torch.tensor(index, dtype=torch.long)
        unit = sample // unit_size if unit_size else torch.full((n,), -1, dtype=torch.long)
        versions = [getattr(s, "version", None) for s in samples]
        version = torch.tensor(versions, dtype=torch.long) if samples and None not in versions else None
        return cls(input_ids=input_ids, completion_mask=completion_mask, length=torch.tensor(lengths, dtype=torch.long),
                   prompt_len=torch.tensor([len(s.prompt_ids) for s in samples], dtype=torch.long), sample=sample, unit=unit,
                   reward=rollout.reward[sample].float(), pad_id=pad_id, turn=turn, behaviour_logp=behaviour_logp,
                   version=version, **({"token_reward": token_reward} | _source_token_rewards(rollout, index, lengths, samples, width)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, rows: Tensor) -> "RolloutBatch":
        """Rows ``rows`` (a bool mask or indices), token tensors cut to their longest row."""
        width = int(self.length[rows].max()) if self.length[rows].numel() else 0
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if torch.is_tensor(value):
                value = value[rows]
                changes[f.name] = value[:, :width] if value.dim() == 2 else value
        return replace(self, **changes)

    def valid(self, rows: Tensor | None = None, width: int | None = None) -> Tensor:
        """``[N, T]`` bool: positions before each row's length (the attention mask)."""
        length = self.length if rows is None else self.length[rows]
        width = self.input_ids.shape[1] if width is None else width
        return torch.arange(width)[None, :] < length[:, None]

    def zeros(self) -> Tensor:
        return torch.zeros(self.input_ids.shape, dtype=torch.float32)

    def rows(self) -> list["Row"]:
        units, policy = self.unit.tolist(), self.completion_mask.sum(-1).tolist()
        return [Row(self, i, None if u < 0 else u, int(n), int(p), int(k))
                for i, (u, n, p, k) in enumerate(zip(units, self.length.tolist(), self.prompt_len.tolist(), policy))]


def _source_token_rewards(rollout: Rollout, index: list[int], lengths: list[int], samples: list, width: int) -> dict:
    """``token_reward`` [N, T] (each completion token's reward at its position) and ``token_level`` from a
    token-level reward source's rewards (``Rollout.token_rewards``); nothing without them."""
    if rollout.token_rewards is None:
        return {}
    out = torch.zeros((len(index), width), dtype=torch.float32)
    for r, (i, s) in enumerate(zip(index, samples, strict=True)):
        p = len(s.prompt_ids)
        out[r, p : lengths[r]] = rollout.token_rewards[i].float()
    return {"token_reward": out, "token_level": True}


@dataclass(frozen=True, eq=False)
class Row:
    """One row of a :class:`RolloutBatch`, what the engine's micro-batching sees (``unit``: its unit key)."""

    batch: RolloutBatch
    index: int
    unit: int | None
    length: int
    prompt_len: int
    policy_tokens: int = -1  # completion tokens the policy chose (mask 1); -1: all of them

    @property
    def completion_tokens(self) -> int:
        return self.length - self.prompt_len

    @property
    def trained_tokens(self) -> int:
        """The row's tokens in the loss: its completion minus any environment tokens."""
        return self.completion_tokens if self.policy_tokens < 0 else self.policy_tokens


def collate_rows(rows: list[Row], share_prompts: bool) -> dict[str, Tensor]:
    """A micro-batch of ``rows`` (all of one batch), padded to its longest row: ``input_ids``,
    ``attention_mask``, ``loss_mask`` (the completion mask) ``[B, W]``, the batch's token fields under
    :data:`TOKEN_KEYS` ``[B, W]``, ``advantage`` and ``reward`` ``[B]``; with ``share_prompts`` the
    packed layout of each unit as one prefix-shared row (``packed_*``, :func:`collate_shared_prefix`)."""
    batch = rows[0].batch
    index = torch.tensor([r.index for r in rows], dtype=torch.long)
    width = max(r.length for r in rows)
    out = {
        "input_ids": batch.input_ids[index, :width],
        "attention_mask": batch.valid(index, width).long(),
        "loss_mask": batch.completion_mask[index, :width],
    }
    for name, key in TOKEN_KEYS.items():
        value = getattr(batch, name)
        if value is not None:
            out[key] = value[index, :width]
    for key in ("advantage", "reward"):
        value = getattr(batch, key)
        if value is not None:
            out[key] = value[index]
    if share_prompts and rows[0].unit is not None:
        groups: list[tuple[list[int], list[list[int]]]] = []
        previous = None
        for r in rows:
            ids = batch.input_ids[r.index, : r.length].tolist()
            if r.unit != previous:
                groups.append((ids[: r.prompt_len], []))
                previous = r.unit
            groups[-1][1].append(ids[r.prompt_len :])
        out.update({f"packed_{k}": v for k, v in collate_shared_prefix(groups, batch.pad_id).items()})
    return out


def annotate(ctx, rows: list[Row], name: str, module, chunk_size: int) -> None:
    """Fill the batch's token field ``name`` on ``rows`` with ``module``'s per-token output (log-probs or
    critic values), without gradient, in chunks of ``chunk_size`` rows in the order given."""
    if not rows:
        return
    batch = rows[0].batch
    if getattr(batch, name) is None:
        setattr(batch, name, batch.zeros())
    target = getattr(batch, name)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        inputs = ctx.collate(chunk)
        with torch.no_grad(), ctx.autocast():
            out = module(inputs["input_ids"], inputs["attention_mask"], inputs["loss_mask"])
        index = torch.tensor([r.index for r in chunk], dtype=torch.long)
        out = out.float().cpu()
        target[index, : out.shape[1]] = torch.where(batch.valid(index, out.shape[1]), out, torch.zeros_like(out))
