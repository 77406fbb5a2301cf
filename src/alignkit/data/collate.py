"""Batching encoded examples into tensors.

Right padding with the tokenizer's pad id; ``attention_mask`` marks real tokens and ``loss_mask`` marks the
trained (completion) tokens. A preference batch of B pairs becomes one batch of 2B sequences — the B
chosen then the B rejected — so the policy runs one forward per batch.
"""

from __future__ import annotations

import torch


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_sequences(ids: list[list[int]], masks: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    input_ids = pad(ids, pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": pad([[1] * len(s) for s in ids], 0),
        "loss_mask": pad(masks, 0),
    }


def collate_sft(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    return collate_sequences([e["input_ids"] for e in examples], [e["loss_mask"] for e in examples], pad_id)


def collate_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    ids, masks = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for e in examples:
            ids.append(e["prompt_ids"] + e[key])
            masks.append([0] * len(e["prompt_ids"]) + [1] * len(e[key]))
    batch = collate_sequences(ids, masks, pad_id)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch
