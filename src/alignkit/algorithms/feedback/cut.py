"""CUT, contrastive unlikelihood training (Xu et al. 2023, "Reasons to Reject? Aligning Language Models with Judgments").

A judgment ``j`` says what is wrong with a completion ``y``. CUT learns from it in three parts:

* **align-P** — a completion whose judgment is positive is trained by likelihood: ``−Σ_t log π(y_t | x, y_<t)``;
* **misalign-N** — a completion with a negative judgment: unlikelihood on the inappropriate tokens ``U``
  (those the judgment explains) and likelihood on the rest,
  ``−Σ_{t∈U} w log(1 − π(y_t | x, y_<t)) − Σ_{t∉U} log π(y_t | x, y_<t)`` (``w``: ``unlikelihood_weight``);
* **align-N** — the same completion is appropriate *given its judgment*: ``−λ_j Σ_t log π(y_t | x ⊕ j, y_<t)``
  (``judgment_weight``; the context is ``feedback.cut.template``).

Which tokens are in ``U`` (``feedback.cut.flag``): ``spans`` — the tokens overlapping a bad span of a
``spans`` row (the judgment grounded in the text, e.g. by :mod:`alignkit.tasks.critics`); ``ratio`` — the
paper's rule, the tokens the judgment makes more likely, ``π(y_t | x ⊕ j, y_<t) > λ π(y_t | x, y_<t)``
(``ratio_lambda``), detected with the current policy without gradient. A row is negative when it has a bad
span (``spans`` rows) or ``label: false`` (``critique`` rows, ``flag: ratio`` only).

The loss is summed over the three parts and averaged over the step's completion tokens (of the plain
sequences). Logged: ``nll``, ``flagged_frac`` (flagged share of the negative rows' tokens), ``unlikelihood``.
"""

from __future__ import annotations

import torch

from ...data.collate import collate_sequences, collate_sft, pad
from ...engine.contract import Metrics
from ...objectives.feedback import cut_loss, ratio_flags, unlikelihood
from .base import FEEDBACK_METHODS, FeedbackMethod


@FEEDBACK_METHODS.register("cut")
class CUT(FeedbackMethod):
    method = "cut"
    data_kind = "spans"
    data_kinds = ("spans", "critique")
    placeholders = ("prompt", "judgment")

    def __init__(self, recipe):
        super().__init__(recipe)
        self.judged = self.options.flag == "ratio" or self.options.judgment_weight > 0

    def prepare_examples(self, examples, kind):
        if kind == "critique" and self.options.flag == "spans":
            raise ValueError("feedback.cut.flag=spans reads spans rows (data.kind=spans); critique rows need feedback.cut.flag=ratio")
        return super().prepare_examples(examples, kind)

    def convert(self, example, ctx, split: str) -> None:
        n_prompt = len(example["prompt_ids"])
        completion = example["input_ids"][n_prompt:]
        if "token_labels" in example:
            labels = example["token_labels"]
            negative = any(v < 0 for v in labels)
            flags = [int(v < 0) for v in labels] if self.options.flag == "spans" else [0] * len(labels)
        else:
            negative, flags = not example["label"], [0] * len(completion)
        flags = flags + [0] * (len(completion) - len(flags))
        example["negative"] = negative
        example["flagged"] = [0] * n_prompt + flags
        critique = (example.get("text") or {}).get("critique")
        if self.options.flag == "ratio" and negative and critique is None:
            raise self.error(example, split, "critique", "feedback.cut.flag=ratio needs the judgment text of every negative row")
        if self.judged and negative and critique is not None:
            context = self.options.template.replace("{prompt}", self.prompt_text(example, split)).replace("{judgment}", critique)
            judged = self.ids(context)
            example["judged_ids"] = self.fits(example, split, judged + completion, "judgment-conditioned row")
            example["judged_mask"] = [0] * len(judged) + [1] * len(completion)

    def collate(self, examples, pad_id):
        batch = collate_sft(examples, pad_id)
        batch["flagged"] = pad([e["flagged"] for e in examples], 0)
        batch["negative"] = torch.tensor([bool(e["negative"]) for e in examples])
        rows = [i for i, e in enumerate(examples) if "judged_ids" in e]
        if rows:
            judged = collate_sequences([examples[i]["judged_ids"] for i in rows], [examples[i]["judged_mask"] for i in rows], pad_id)
            batch.update({f"judged_{k}": v for k, v in judged.items()})
            batch["judged_rows"] = torch.tensor(rows)
        return batch

    def weight(self, batch) -> float:
        return float(batch["loss_mask"][:, 1:].sum())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        logp = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        mask = batch["loss_mask"].clone().bool()
        mask[:, 0] = False
        negative = batch["negative"].to(logp.device)
        flagged = batch["flagged"].to(logp.device).bool() & mask & negative[:, None]
        total = logp.new_zeros(())
        if "judged_rows" in batch:
            rows = batch["judged_rows"].to(logp.device)
            judged_mask = batch["judged_loss_mask"].clone().bool()
            judged_mask[:, 0] = False
            if self.options.judgment_weight > 0:
                logp_j = policy(batch["judged_input_ids"], batch["judged_attention_mask"], batch["judged_loss_mask"])
                total = total - self.options.judgment_weight * (logp_j * judged_mask).sum()
            else:
                with torch.no_grad():
                    logp_j = policy(batch["judged_input_ids"], batch["judged_attention_mask"], batch["judged_loss_mask"])
            if self.options.flag == "ratio":
                flagged = flagged.clone()
                for k, b in enumerate(rows.tolist()):
                    plain_pos, judged_pos = mask[b].nonzero().squeeze(-1), judged_mask[k].nonzero().squeeze(-1)
                    flagged[b, plain_pos] = ratio_flags(logp_j[k, judged_pos], logp[b, plain_pos], self.options.ratio_lambda)
        losses = cut_loss(logp, mask, flagged, self.options.unlikelihood_weight)
        total = total + losses.sum()
        tokens = self.weight(batch)
        neg_tokens = float((mask & negative[:, None]).sum())
        with torch.no_grad():
            ul = torch.where(flagged, unlikelihood(logp.detach()), torch.zeros_like(logp)).sum()
        metrics: Metrics = {"nll": (-(logp.detach() * mask).sum(), tokens), "unlikelihood": (ul, max(float(flagged.sum()), 1.0))}
        if neg_tokens:
            metrics["flagged_frac"] = (float(flagged.sum()), neg_tokens)
        return total, metrics
