"""Batching encoded examples into tensors.

Right padding with the tokenizer's pad id; ``attention_mask`` marks real tokens and ``loss_mask`` marks the
trained (completion) tokens.

Preference pairs have two layouts:

* padded (:func:`collate_pairs`): a batch of B pairs becomes one batch of 2B sequences — the B chosen then
  the B rejected, each ``prompt + completion`` — so the policy runs one forward per batch. The prompt is
  computed twice.
* packed with a shared prefix (:func:`collate_pairs_packed`): each pair becomes ONE row
  ``[prompt, chosen, rejected]``. Position ids restart at the end of the prompt for the rejected tokens
  (``0..P-1, P..P+C-1, P..P+R-1``) and the attention pattern (built from ``segment``/``group`` by
  :func:`alignkit.models.logprobs.packed_attention_mask`) lets chosen tokens see the prompt and earlier
  chosen tokens, and rejected tokens see the prompt and earlier rejected tokens but never a chosen one. Every
  token therefore has exactly the context it has in the padded layout, and the prompt is computed once.
  The first rejected token is predicted by the hidden state of the last prompt token, so each target
  carries an explicit ``source_index`` (the position whose hidden state predicts it). With ``row_tokens``
  several pairs share a row (block-diagonal attention: a pair never sees another pair).

Trajectory replies (:mod:`alignkit.data.trajectory`): a pair example may carry ``chosen_mask`` /
``rejected_mask`` (1 on a reply's assistant tokens, 0 on its tool and user turns); both layouts then train
only those tokens (:func:`reply_mask`), the others stay in the input as context.

Metadata: examples that carry a ``"meta"`` dict (a row's fields outside its kind's schema, see
:mod:`alignkit.data.kinds`) give the batch a ``"meta"`` entry, one value per example in batch order (per
pair, not per sequence): a CPU tensor when every value is a number or a bool, else a list (``None`` where an
example lacks the field). :func:`collate_sft`, :func:`collate_pairs` and :func:`collate_pairs_packed` add
it; other collate functions call :func:`attach_meta`. A batch without metadata has no ``"meta"`` key.
"""

from __future__ import annotations

from typing import Any

import torch

# segment ids of the packed layout
PAD_SEGMENT, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_meta(examples: list[dict]) -> dict[str, Any] | None:
    """The examples' metadata, one value per example for every key any of them has (None if none has any)."""
    keys: dict[str, None] = {}
    for e in examples:
        keys.update(dict.fromkeys(e.get("meta") or {}))
    if not keys:
        return None
    out: dict[str, Any] = {}
    for key in keys:
        values = [(e.get("meta") or {}).get(key) for e in examples]
        numeric = all(isinstance(v, (bool, int, float)) for v in values)
        out[key] = torch.tensor(values) if numeric else values
    return out


def attach_meta(batch: dict[str, Any], examples: list[dict]) -> dict[str, Any]:
    """Add ``batch["meta"]`` (:func:`collate_meta`) when the examples carry metadata; returns ``batch``."""
    meta = collate_meta(examples)
    if meta is not None:
        batch["meta"] = meta
    return batch


def collate_sequences(ids: list[list[int]], masks: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    input_ids = pad(ids, pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": pad([[1] * len(s) for s in ids], 0),
        "loss_mask": pad(masks, 0),
    }


def collate_sft(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    return attach_meta(collate_sequences([e["input_ids"] for e in examples], [e["loss_mask"] for e in examples], pad_id), examples)


def collate_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    ids, masks = [], []
    for key in ("chosen", "rejected"):
        for e in examples:
            ids.append(e["prompt_ids"] + e[f"{key}_ids"])
            masks.append([0] * len(e["prompt_ids"]) + reply_mask(e, key))
    batch = collate_sequences(ids, masks, pad_id)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return attach_meta(batch, examples)


def reply_mask(example: dict, side: str) -> list[int]:
    """Which tokens of a pair's ``side`` ("chosen" / "rejected") are trained: its ``{side}_mask`` (a
    trajectory's assistant tokens, :mod:`alignkit.data.trajectory`), else every token."""
    mask = example.get(f"{side}_mask")
    return list(mask) if mask is not None else [1] * len(example[f"{side}_ids"])


def _packed_tensors(shape: tuple[int, int], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Empty packed-row tensors: input_ids, attention_mask, position_ids, loss_mask, source_index, segment, group."""
    long = dict(dtype=torch.long)
    return (
        torch.full(shape, pad_id, **long), torch.zeros(shape, **long), torch.zeros(shape, **long),
        torch.zeros(shape, **long), torch.zeros(shape, **long), torch.full(shape, PAD_SEGMENT, **long),
        torch.full(shape, -1, **long),
    )


def packed_pair_length(example: dict) -> int:
    return len(example["prompt_ids"]) + len(example["chosen_ids"]) + len(example["rejected_ids"])


def _rows(examples: list[dict], row_tokens: int | None) -> list[list[int]]:
    """Which pairs go in which row: one per row, or greedily in order while a row stays within
    ``row_tokens`` (a pair longer than that gets a row of its own)."""
    if row_tokens is None:
        return [[i] for i in range(len(examples))]
    rows: list[list[int]] = []
    used = 0
    for i, e in enumerate(examples):
        n = packed_pair_length(e)
        if rows and used + n <= row_tokens:
            rows[-1].append(i)
            used += n
        else:
            rows.append([i])
            used = n
    return rows


def collate_pairs_packed(examples: list[dict], pad_id: int, row_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """B pairs as prefix-shared packed rows (see the module docstring).

    Returns ``input_ids``, ``attention_mask`` (2-D, 1 on real tokens), ``position_ids``, ``loss_mask`` (1 on
    every target), ``source_index`` (per target, the position whose hidden state predicts it),
    ``segment`` (prompt 0 / chosen 1 / rejected 2 / pad -1), ``group`` (the pair's slot in its row, -1 on
    pads), ``target_pair`` (per target, the pair's index in the batch, else -1), ``chosen_tokens`` and
    ``rejected_tokens`` ([B] target counts) and ``index`` ([B]).
    """
    layout = _rows(examples, row_tokens)
    width = max(sum(packed_pair_length(examples[i]) for i in row) for row in layout)
    shape = (len(layout), width)
    input_ids, attention_mask, position_ids, loss_mask, source_index, segment, group = _packed_tensors(shape, pad_id)
    target_pair = torch.full(shape, -1, dtype=torch.long)
    counts = torch.zeros(len(examples), 2, dtype=torch.long)
    for r, row in enumerate(layout):
        start = 0
        for slot, i in enumerate(row):
            e = examples[i]
            p, c, q = e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]
            n_p, n_c, n_r = len(p), len(c), len(q)
            end = start + n_p + n_c + n_r
            input_ids[r, start:end] = torch.tensor(p + c + q, dtype=torch.long)
            attention_mask[r, start:end] = 1
            group[r, start:end] = slot
            position_ids[r, start : start + n_p + n_c] = torch.arange(n_p + n_c)
            position_ids[r, start + n_p + n_c : end] = torch.arange(n_p, n_p + n_r)
            segment[r, start : start + n_p] = PROMPT
            segment[r, start + n_p : start + n_p + n_c] = CHOSEN
            segment[r, start + n_p + n_c : end] = REJECTED
            # targets: every completion token that has a predecessor in its own sequence (with an empty
            # prompt the first completion token has none, exactly as in the padded layout)
            for side, (first, length) in enumerate(((start + n_p, n_c), (start + n_p + n_c, n_r))):
                positions = torch.arange(first, first + length)
                sources = positions - 1
                if length:
                    sources[0] = start + n_p - 1  # the last prompt token predicts the first completion token
                keep = (sources >= start) & torch.tensor(reply_mask(e, ("chosen", "rejected")[side]), dtype=torch.bool)
                positions, sources = positions[keep], sources[keep]
                loss_mask[r, positions] = 1
                source_index[r, positions] = sources
                target_pair[r, positions] = i
                counts[i, side] = int(keep.sum())
            start = end
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "loss_mask": loss_mask,
        "source_index": source_index,
        "segment": segment,
        "group": group,
        "target_pair": target_pair,
        "chosen_tokens": counts[:, 0].float(),
        "rejected_tokens": counts[:, 1].float(),
        "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
    }
    return attach_meta(batch, examples)


def collate_shared_prefix(groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Groups of completions that share a prompt, one row per group: ``[prompt, c_1, ..., c_K]``.

    The generalisation of the packed pair layout to K completions (e.g. a GRPO group): completion ``k``
    has segment ``k + 1`` and positions ``P .. P + |c_k| - 1``, sees the prompt and its own earlier tokens
    only, and its first token is predicted by the last prompt token. Besides the packed tensors
    (``input_ids``, ``attention_mask``, ``position_ids``, ``loss_mask``, ``source_index``, ``segment``,
    ``group``) it returns, for every target in row-major order, the completion it belongs to (flat index
    over all groups' completions, ``target_seq``) and its position in that completion's own unpacked
    sequence ``prompt + completion`` (``target_pos``), to scatter packed log-probs back to a per-sequence
    layout.
    """
    width = max(len(p) + sum(len(c) for c in cs) for p, cs in groups)
    shape = (len(groups), width)
    input_ids, attention_mask, position_ids, loss_mask, source_index, segment, group = _packed_tensors(shape, pad_id)
    target_seq, target_pos = [], []
    seq = 0
    for r, (prompt, completions) in enumerate(groups):
        n_p = len(prompt)
        row = prompt + [t for c in completions for t in c]
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
        group[r, : len(row)] = 0
        segment[r, :n_p] = PROMPT
        position_ids[r, :n_p] = torch.arange(n_p)
        start = n_p
        for k, completion in enumerate(completions):
            n = len(completion)
            segment[r, start : start + n] = k + 1
            position_ids[r, start : start + n] = torch.arange(n_p, n_p + n)
            for j in range(n):
                if n_p + j == 0:
                    continue  # no predecessor (empty prompt), as in the padded layout
                loss_mask[r, start + j] = 1
                source_index[r, start + j] = start + j - 1 if j else n_p - 1
                target_seq.append(seq)
                target_pos.append(n_p + j)
            start += n
            seq += 1
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
        "loss_mask": loss_mask, "source_index": source_index, "segment": segment, "group": group,
        "target_seq": torch.tensor(target_seq, dtype=torch.long), "target_pos": torch.tensor(target_pos, dtype=torch.long),
    }
