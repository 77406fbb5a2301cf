"""Direct preference optimisation and every pairwise loss of the preference registry.

The policy scores the B chosen and B rejected sequences of a batch in one forward. The reference is the
starting policy, either evaluated once before training with its log-probs cached on each example
(``dpo.reference: cache``, the default: no second model in memory) or kept as a frozen copy evaluated
every step (``model``; for LoRA runs the copy is the policy with its adapter switched off).

Logged: ``rewards/chosen`` and ``rewards/rejected`` (β·log π/π_ref), ``rewards/margins``,
``rewards/accuracy`` (fraction with chosen reward > rejected reward), ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from ..data.collate import collate_pairs
from ..models.loading import is_peft
from ..models.logprobs import TargetLogProbs
from ..objectives.preference import PairLogps, pairwise_loss
from .base import Algorithm, Metrics


class DPO(Algorithm):
    name = "dpo"
    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.dpo
        self.reference: TargetLogProbs | None = None
        self.reference_context = contextlib.nullcontext
        self.needs_reference = self._needs_reference()

    def _needs_reference(self) -> bool:
        from ..objectives.preference import PAIRWISE_LOSSES

        if self.cfg.loss not in PAIRWISE_LOSSES:
            raise ValueError(f"dpo.loss: unknown loss '{self.cfg.loss}'; allowed: {', '.join(sorted(PAIRWISE_LOSSES))}")
        return getattr(PAIRWISE_LOSSES[self.cfg.loss], "needs_reference", True)

    def collate(self, examples, pad_id):
        batch = collate_pairs(examples, pad_id)
        if "ref_chosen" in examples[0]:
            batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float32)
            batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float32)
        return batch

    def weight(self, batch) -> float:
        return float(batch["input_ids"].shape[0] // 2)

    # ----------------------------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        if not self.needs_reference:
            return
        model = trainer.model
        if self.cfg.reference == "model" or is_peft(model):
            if is_peft(model):
                self.reference = TargetLogProbs(model)
                self.reference_context = model.disable_adapter
            else:
                frozen = copy.deepcopy(model).eval()
                frozen.requires_grad_(False)
                self.reference = TargetLogProbs(frozen)
        if self.cfg.reference == "cache":
            module = self.reference or TargetLogProbs(model)
            for examples in (trainer.train_examples, trainer.eval_examples):
                if examples:
                    self._cache(trainer, module, examples)
            if not is_peft(model):
                self.reference = None

    def _cache(self, trainer, module, examples) -> None:
        """Reference log-probs of every example, split over processes and summed back."""
        from ..engine.trainer import make_progress

        values = torch.zeros(len(examples), 2, dtype=torch.float64)
        mine = list(range(trainer.dist.rank, len(examples), trainer.dist.world))
        size = trainer.cfg.micro_batch_size or max(1, trainer.cfg.batch_size // trainer.dist.world)
        with make_progress(trainer.cfg.progress and trainer.dist.is_main) as progress:
            bar = progress.add_task("reference log-probs", total=len(mine), info="")
            for start in range(0, len(mine), size):
                idx = mine[start : start + size]
                batch = trainer.micro_batches(examples, idx)[0]
                with trainer.autocast():
                    chosen, rejected = self._reference_logps(module, batch)
                values[idx, 0] = chosen.double().cpu()
                values[idx, 1] = rejected.double().cpu()
                progress.update(bar, advance=len(idx))
        values = trainer.dist.sum(values.to(trainer.device)).cpu()
        for e, (c, r) in zip(examples, values.tolist()):
            e["ref_chosen"], e["ref_rejected"] = c, r

    def _reference_logps(self, module, batch):
        """(chosen, rejected) summed log-probs under the reference ``module``, without gradient."""
        with torch.no_grad(), self.reference_context():
            token_logps = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        sums = token_logps.sum(-1).float()
        b = sums.shape[0] // 2
        return sums[:b], sums[b:]

    # ----------------------------------------------------------------------------------------------
    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        token_logps = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        sums = token_logps.sum(-1)
        counts = batch["loss_mask"][:, 1:].sum(-1).float()
        b = sums.shape[0] // 2
        ref_c = ref_r = None
        if self.needs_reference:
            if "ref_chosen" in batch:
                ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
            else:
                ref_c, ref_r = self._reference_logps(self.reference, batch)
        logps = PairLogps(
            chosen=sums[:b], rejected=sums[b:], ref_chosen=ref_c, ref_rejected=ref_r,
            chosen_tokens=counts[:b], rejected_tokens=counts[b:],
        )
        losses = pairwise_loss(self.cfg.loss, logps, beta=self.cfg.beta, **self.cfg.params)
        with torch.no_grad():
            c, r = sums[:b].detach(), sums[b:].detach()
            rc = self.cfg.beta * (c - ref_c) if ref_c is not None else self.cfg.beta * c
            rr = self.cfg.beta * (r - ref_r) if ref_r is not None else self.cfg.beta * r
        n = float(b)
        metrics: Metrics = {
            "rewards/chosen": (rc.sum(), n),
            "rewards/rejected": (rr.sum(), n),
            "rewards/margins": ((rc - rr).sum(), n),
            "rewards/accuracy": ((rc > rr).float().sum(), n),
            "logps/chosen": (c.sum(), n),
            "logps/rejected": (r.sum(), n),
        }
        return losses.sum(), metrics
