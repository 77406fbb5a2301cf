"""MODPO, multi-objective direct preference optimisation (Zhou et al. 2024, "Beyond One-Preference-Fits-All
Alignment: Multi-Objective Direct Preference Optimization").

Objectives ``r = (r_k, r_{−k})`` with weights ``w`` on the simplex. The pairs carry preferences of **one**
objective ``k`` (e.g. sentiment); the others enter through a reward ``r_{−k}`` already at hand (a trained
reward model, or a gold attribute). The policy optimal for ``w·r`` satisfies
``β log π(y|x)/π_ref(y|x) = w_k r_k + w_{−k}ᵀ r_{−k} − Z(x)``; solving for ``r_k`` and putting it into the
Bradley–Terry likelihood of objective ``k``'s pairs gives the loss

    L = −log σ( (β / w_k) [Δ(y_w) − Δ(y_l)] − (1 / w_k) w_{−k}ᵀ [r_{−k}(x, y_w) − r_{−k}(x, y_l)] ),
    Δ(y) = log π(y|x) − log π_ref(y|x),

(:func:`~alignkit.objectives.pluralistic.modpo_logits`). Sweeping ``w_k`` traces the front: one DPO-cost
run per weight, with no reward model of objective ``k`` and no RL.

Options ``feedback.modpo``: ``weight`` (``w_k``), ``margin_reward`` (``attribute:<name>``: the task's gold
attribute; or any reward source, e.g. a multi-objective reward model ``{type: multi_objective, path,
attribute}``), ``margin_weight`` (``w_{−k}``, default ``1 − w_k``). ``dpo.beta`` and ``dpo.reference``
apply; the margins are scored once, before the first step, on every pair of the fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...engine.contract import Metrics
from ..dpo import DPO, pair_logps
from .base import FEEDBACK_METHODS, FeedbackMethod


@FEEDBACK_METHODS.register("modpo")
class MODPO(FeedbackMethod, DPO):
    method = "modpo"
    data_kind = "pair"
    data_kinds = ("pair",)
    example_unit = "pairs"

    def __init__(self, recipe):
        super().__init__(recipe)
        cfg = self.cfg  # dpo's section
        if self.token_level or cfg.mix or cfg.group_robust or cfg.xpo_alpha is not None or cfg.loss != "dpo" or cfg.params:
            raise ValueError("feedback.method=modpo has its own loss: keep dpo.loss=dpo without dpo.params, mix, wpo, ld_alpha, tdpo, group_robust or xpo_alpha")
        if cfg.reference_update != "none":
            raise ValueError("feedback.method=modpo keeps the reference fixed (dpo.reference_update: none)")
        o = self.options
        self.w_k = float(o.weight)
        self.w_other = float(1.0 - o.weight if o.margin_weight is None else o.margin_weight)
        self.scorer = None

    def margin_scorer(self):
        if self.scorer is None:
            from .attributes import margin_scorer

            self.scorer = margin_scorer(self.options.margin_reward, self.task)
        return self.scorer

    def before_convert(self, ctx) -> None:
        """Score ``r_{−k}`` of both sides of every pair not yet scored, in one call per split."""
        for split, examples in (("train", ctx.train_examples), ("eval", ctx.eval_examples)):
            todo = [e for e in examples or [] if "modpo_margin" not in e]
            if not todo:
                continue
            prompts, texts = [], []
            for e in todo:
                p = self.prompt_text(e, split)
                for side in ("chosen_ids", "rejected_ids"):
                    prompts.append(p)
                    texts.append(self.tokenizer.decode(e[side], skip_special_tokens=True))
            r = self.margin_scorer()(prompts, texts).view(-1, 2)
            if not torch.isfinite(r).all():
                bad = int((~torch.isfinite(r)).any(1).nonzero()[0])
                raise self.error(todo[bad], split, None, f"feedback.modpo.margin_reward gave a non-finite reward for this pair: {r[bad].tolist()}")
            for e, (rw, rl) in zip(todo, r.tolist(), strict=True):
                e["modpo_margin"] = self.w_other * (rw - rl)
                e["modpo_r_other"] = (rw, rl)

    def collate(self, examples, pad_id):
        batch = DPO.collate(self, examples, pad_id)
        batch["modpo_margin"] = torch.tensor([float(e["modpo_margin"]) for e in examples], dtype=torch.float32)
        return batch

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        from ...objectives.pluralistic import modpo_logits

        beta = self.cfg.beta
        chosen, rejected, _, _ = pair_logps(policy, batch)
        if "ref_chosen" in batch:
            ref_c, ref_r = batch["ref_chosen"].to(chosen.device), batch["ref_rejected"].to(chosen.device)
        else:
            ref_c, ref_r = self._reference_logps(self.reference, batch)
        h = (chosen - ref_c) - (rejected - ref_r)
        margin = batch["modpo_margin"].to(h.device)
        logits = modpo_logits(h, margin, beta, self.w_k)
        losses = -F.logsigmoid(logits)
        with torch.no_grad():
            rc, rr = beta * (chosen.detach() - ref_c), beta * (rejected.detach() - ref_r)
        n = float(chosen.shape[0])
        metrics: Metrics = {
            "rewards/chosen": (rc.sum(), n),
            "rewards/rejected": (rr.sum(), n),
            "rewards/margins": ((rc - rr).sum(), n),
            "modpo/other_margin": (margin.sum(), n),
            "modpo/accuracy": ((logits.detach() > 0).float().sum(), n),
        }
        return losses.sum(), metrics
