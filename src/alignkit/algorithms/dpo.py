"""Direct preference optimisation and every pairwise loss of the preference registry.

The policy scores the B chosen and B rejected sequences of a batch in one forward. By default
(``dpo.packing: true``) each pair is one packed row ``[prompt, chosen, rejected]`` in which the prompt is
computed once for both completions (see :mod:`alignkit.data.collate`); ``dpo.packing: false`` keeps the
padded layout (2B rows, the prompt computed twice). Both give the same log-probs, losses and gradients.
Packing needs an attention implementation that takes a custom 4-D mask (eager or sdpa); with any other
(e.g. flash-attention) the padded layout is used. ``dpo.pack_tokens: N`` also puts several pairs in one
row of at most N tokens (block-diagonal attention).

The reference is the starting policy, either evaluated once before training with its log-probs cached on
each example (``dpo.reference: cache``, the default: no second model in memory) or kept as a frozen copy
evaluated every step (``model``; for LoRA runs the copy is the policy with its adapter switched off).

Logged: ``rewards/chosen`` and ``rewards/rejected`` (β·log π/π_ref), ``rewards/margins``,
``rewards/accuracy`` (fraction with chosen reward > rejected reward), ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

import contextlib

import torch

from ..data.collate import REJECTED, collate_pairs, collate_pairs_packed
from ..models.loading import is_peft
from ..models.logprobs import TargetLogProbs, mask_for, supports_packing
from ..objectives.preference import PairLogps, pairwise_loss
from .base import Algorithm, Metrics


def pair_logps(module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen, rejected, chosen_tokens, rejected_tokens), each [B], of a padded or packed pair batch
    under ``module`` (a :class:`TargetLogProbs`, possibly DDP-wrapped)."""
    if "source_index" not in batch:
        token_logps = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        sums = token_logps.sum(-1)
        counts = batch["loss_mask"][:, 1:].sum(-1).float()
        b = sums.shape[0] // 2
        return sums[:b], sums[b:], counts[:b], counts[b:]
    inner = getattr(module, "module", module)  # DDP
    mask = mask_for(inner.model, batch["segment"], batch["group"])
    token_logps = module(batch["input_ids"], mask, batch["loss_mask"], batch["position_ids"], batch["source_index"])
    targets = batch["loss_mask"].bool()
    b = batch["index"].numel()
    slot = batch["target_pair"][targets] + b * (batch["segment"][targets] == REJECTED).long()
    sums = torch.zeros(2 * b, dtype=token_logps.dtype, device=token_logps.device).index_add(0, slot, token_logps[targets])
    return sums[:b], sums[b:], batch["chosen_tokens"], batch["rejected_tokens"]


class DPO(Algorithm):
    name = "dpo"
    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.dpo
        self.packing = bool(getattr(self.cfg, "packing", True))
        self.pack_tokens = getattr(self.cfg, "pack_tokens", None)
        self.reference: TargetLogProbs | None = None
        self.reference_context = contextlib.nullcontext
        self.needs_reference = self._needs_reference()

    def _needs_reference(self) -> bool:
        from ..objectives.preference import PAIRWISE_LOSSES

        if self.cfg.loss not in PAIRWISE_LOSSES:
            raise ValueError(f"dpo.loss: unknown loss '{self.cfg.loss}'; allowed: {', '.join(sorted(PAIRWISE_LOSSES))}")
        return getattr(PAIRWISE_LOSSES[self.cfg.loss], "needs_reference", True)

    def collate(self, examples, pad_id):
        if self.packing:
            batch = collate_pairs_packed(examples, pad_id, self.pack_tokens)
        else:
            batch = collate_pairs(examples, pad_id)
        if "ref_chosen" in examples[0]:
            batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float32)
            batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float32)
        return batch

    def weight(self, batch) -> float:
        return float(batch["index"].numel())

    # ----------------------------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        model = trainer.model
        if self.packing and not supports_packing(model):
            self.packing = False  # e.g. flash-attention takes no custom 4-D mask
        if not self.needs_reference:
            return
        if self.cfg.reference == "model" or is_peft(model) or trainer.resumed_from is not None:
            if is_peft(model):
                self.reference = TargetLogProbs(model)
                self.reference_context = model.disable_adapter
            else:  # the starting policy (reloaded from its weights when resuming)
                self.reference = TargetLogProbs(trainer.frozen_reference())
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
            chosen, rejected, _, _ = pair_logps(module, batch)
        return chosen.float(), rejected.float()

    # ----------------------------------------------------------------------------------------------
    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected, chosen_tokens, rejected_tokens = pair_logps(policy, batch)
        ref_c = ref_r = None
        if self.needs_reference:
            if "ref_chosen" in batch:
                ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
            else:
                ref_c, ref_r = self._reference_logps(self.reference, batch)
        logps = PairLogps(
            chosen=chosen, rejected=rejected, ref_chosen=ref_c, ref_rejected=ref_r,
            chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
        )
        losses = pairwise_loss(self.cfg.loss, logps, beta=self.cfg.beta, **self.cfg.params)
        with torch.no_grad():
            c, r = chosen.detach(), rejected.detach()
            rc = self.cfg.beta * (c - ref_c) if ref_c is not None else self.cfg.beta * c
            rr = self.cfg.beta * (r - ref_r) if ref_r is not None else self.cfg.beta * r
        n = float(c.shape[0])
        metrics: Metrics = {
            "rewards/chosen": (rc.sum(), n),
            "rewards/rejected": (rr.sum(), n),
            "rewards/margins": ((rc - rr).sum(), n),
            "rewards/accuracy": ((rc > rr).float().sum(), n),
            "logps/chosen": (c.sum(), n),
            "logps/rejected": (r.sum(), n),
        }
        return losses.sum(), metrics
