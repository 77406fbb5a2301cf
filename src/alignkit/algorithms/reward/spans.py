"""``reward.type: spans``: Text2Grad's span reward model (Wang et al. 2025, "Text2Grad: Reinforcement Learning
from Natural Language Feedback"), a token classifier trained on span annotations (the ``spans`` record kind:
``prompt``, ``completion``, ``spans`` of characters marked good or bad, an optional critique).

Each completion token ``t`` has a label ``ℓ_t ∈ {−1, 0, +1}`` (inside a bad span, neither, inside a good
span; :func:`alignkit.data.feedback_kinds.token_labels`); the model has three logits per token and is
trained with the token-mean cross-entropy over every completion token (EOS included, neutral):

    L = −(1/|y|) Σ_t log softmax(z_t)[ℓ_t + 1].

As a reward (:class:`alignkit.rewards.spans.SpanRewardSource`) token ``t`` gets ``p_good − p_bad ∈ [−1, 1]``, the
expected label, so the token-level PPO of Text2Grad can credit the tokens a critique is about. Token
``t``'s logits are read from its own position (a causal classifier that has read ``x, y_≤t``). Rows without a data file come from the task's programmatic critic (base samples of
``task.prompts``).
"""

from __future__ import annotations

import torch

from ...data.collate import pad
from ...engine.contract import Metrics
from ...objectives.feedback import span_cross_entropy
from .base import REWARD_TYPES, RowRewardModelling

SPAN_CLASSES = 3  # bad, neutral, good


@REWARD_TYPES.register("spans")
class SpanRewardModelling(RowRewardModelling):
    reward_type = "spans"
    row_kind = "spans"

    def task_rows(self, task, n, split):
        from ...tasks.critics import feedback_rows

        rows = feedback_rows(task, "spans", n, split)
        if len(rows) != n:
            raise ValueError(f"task '{task.name}': its critic left {n - len(rows)} of {n} base samples without a spans row")
        return rows

    def build_model(self, path, model_config, load_reward_model):
        model = load_reward_model(path, model_config, num_labels=SPAN_CLASSES, seed=self.recipe.train.seed, token_level=True)
        model.config.reward_type = "spans"
        return model

    def module(self, model):
        from ...rewards.spans import SpanForward

        return SpanForward(model)

    def collate(self, examples, pad_id):
        seqs = [e["input_ids"] for e in examples]
        width = max(len(s) for s in seqs)
        labels = torch.zeros(len(examples), width, dtype=torch.long)
        mask = torch.zeros(len(examples), width, dtype=torch.float32)
        for i, e in enumerate(examples):
            p, n = len(e["prompt_ids"]), len(e["token_labels"])
            labels[i, p:p + n] = torch.tensor(e["token_labels"], dtype=torch.long)
            mask[i, p:p + n] = 1.0
        return {"input_ids": pad(seqs, pad_id), "attention_mask": pad([[1] * len(s) for s in seqs], 0), "span_labels": labels, "span_mask": mask,
                "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}

    def weight(self, batch) -> float:
        return float(batch["span_mask"].sum())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        logits = policy(batch["input_ids"], batch["attention_mask"])  # [B, T, 3]
        labels, mask = batch["span_labels"].to(logits.device), batch["span_mask"].to(logits.device)
        losses = span_cross_entropy(logits, labels, mask)
        with torch.no_grad():
            pred = logits.detach().argmax(-1) - 1
            hit = (pred == labels).float() * mask
            flagged = (labels != 0).float() * mask
            metrics: Metrics = {"token_accuracy": (float(hit.sum()), float(mask.sum())),
                                "span_token_accuracy": (float((hit * flagged).sum()), max(float(flagged.sum()), 1.0))}
        return losses.sum(), metrics
