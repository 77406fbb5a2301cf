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

import torch

from ..data.collate import REJECTED, collate_pairs, collate_pairs_packed
from ..engine.contract import Algorithm, Metrics
from ..models.loading import is_peft
from ..models.logprobs import packed_target_logps, supports_packing
from ..models.reference import Reference
from ..objectives.pairwise import PairLogps, combine, ld_dpo_logps, pairwise_loss, tdpo_loss, token_kl, wpo_weights

TDPO = ("tdpo1", "tdpo2")


def token_pair_logps(module, batch, ld_alpha: float | None = None, return_logits: bool = False):
    """Padded layout only: (chosen, rejected, chosen_tokens, rejected_tokens, token_logps [2B, T], target
    mask [2B, T][, logits, positions]) with LD-DPO's length desensitisation applied when ``ld_alpha`` is set."""
    out = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], return_logits=return_logits)
    token_logps = out[0] if return_logits else out
    mask = batch["loss_mask"].clone()
    mask[:, 0] = 0
    counts = mask.sum(-1).float()
    b = counts.shape[0] // 2
    if ld_alpha is None:
        sums = token_logps.sum(-1)
    else:
        public = torch.minimum(counts[:b], counts[b:]).repeat(2)
        sums = ld_dpo_logps(token_logps, mask, public, ld_alpha)
    result = (sums[:b], sums[b:], counts[:b], counts[b:], token_logps, mask)
    return (*result, out[1], out[2]) if return_logits else result


def pair_logps(module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen, rejected, chosen_tokens, rejected_tokens), each [B], of a padded or packed pair batch
    under ``module`` (a :class:`TargetLogProbs`, possibly DDP-wrapped)."""
    if "source_index" not in batch:
        token_logps = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        sums = token_logps.sum(-1)
        counts = batch["loss_mask"][:, 1:].sum(-1).float()
        b = sums.shape[0] // 2
        return sums[:b], sums[b:], counts[:b], counts[b:]
    values = packed_target_logps(module, batch["input_ids"], batch["segment"], batch["group"], batch["loss_mask"], batch["position_ids"], batch["source_index"])
    targets = batch["loss_mask"].bool()
    b = batch["index"].numel()
    slot = batch["target_pair"][targets] + b * (batch["segment"][targets] == REJECTED).long()
    sums = torch.zeros(2 * b, dtype=values.dtype, device=values.device).index_add(0, slot, values)
    return sums[:b], sums[b:], batch["chosen_tokens"], batch["rejected_tokens"]


def group_weights(examples, key: str, eta: float):
    """Group-robust DPO's state from the training pairs' group field (metadata ``key``)."""
    from ..objectives.pluralistic import GroupWeights

    names = [(e.get("meta") or {}).get(key) for e in examples]
    if any(n is None for n in names):
        row = next(e.get("row", e.get("index")) for e, n in zip(examples, names) if n is None)
        raise ValueError(f"dpo.group_robust needs every pair to name its group in the field '{key}' (row {row} has none; set dpo.group_key)")
    return GroupWeights(names, eta)


def xpo_exploration(chosen: torch.Tensor, rejected: torch.Tensor, batch) -> torch.Tensor:
    """XPO's exploration term per pair (Xie et al. 2024, "Exploratory preference optimization"): ``log π(y_ref|x)``,
    the policy's summed log-prob of the side of the pair the reference sampled; rows carry it as metadata
    ``opponent`` (+1: the chosen side, −1: the rejected side, 0: neither; ``iterate.builder: vs_opponent``).
    Minimising ``α log π(y_ref)`` lowers the likelihood of what the reference already writes: optimism."""
    meta = batch.get("meta") or {}
    if "opponent" not in meta:
        raise ValueError("dpo.xpo_alpha needs pairs that mark the reference's sample (metadata 'opponent': +1 chosen, -1 rejected, 0 none); "
                         "make them with alignkit iterate, iterate.opponent=reference and iterate.builder=vs_opponent")
    side = torch.as_tensor(meta["opponent"], device=chosen.device)
    return torch.where(side > 0, chosen, torch.zeros_like(chosen)) + torch.where(side < 0, rejected, torch.zeros_like(rejected))


class DPO(Algorithm):
    name = "dpo"
    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.dpo
        self.token_level = self.cfg.wpo or self.cfg.ld_alpha is not None or self.cfg.loss in TDPO
        self.packing = self.cfg.packing and not self.token_level  # token-level options use the padded layout
        self.pack_tokens = self.cfg.pack_tokens
        self.reference: Reference | None = None
        self.needs_reference = self._needs_reference()
        self.shuffle = not self.cfg.curriculum
        self.groups = None  # group-robust DPO's weights (dpo.group_robust)

    def _needs_reference(self) -> bool:
        from ..objectives.pairwise import PAIRWISE_LOSSES

        names = [item["loss"] for item in self.cfg.mix] or [self.cfg.loss]
        for name in names:
            if name not in PAIRWISE_LOSSES and name not in TDPO:
                raise ValueError(f"dpo.loss: unknown loss '{name}'; allowed: {', '.join(sorted([*PAIRWISE_LOSSES, *TDPO]))}")
        return any(name in TDPO or getattr(PAIRWISE_LOSSES[name], "needs_reference", True) for name in names)

    def prepare_examples(self, examples, kind):
        """Pairs as they are; rankings (``data.kind: ranked``) become every ordered pair of each ranking.
        With ``dpo.curriculum`` (Curry-DPO, Pattnaik et al. 2024) the pairs are ordered easy to hard: stage
        k holds the k-th largest-gap pair of every prompt, and the engine keeps that order."""
        if kind == "pair":
            return examples
        if kind != "ranked":
            raise ValueError(f"algorithm 'dpo' trains on pair or ranked data, not data.kind={kind}")
        from ..objectives.listwise import curriculum_pairs

        stages: list[list[dict]] = []
        for e in examples:
            for k, (i, j) in enumerate(curriculum_pairs(e["scores"])):
                pair = {"prompt_ids": e["prompt_ids"], "chosen_ids": e["completion_ids"][i], "rejected_ids": e["completion_ids"][j], "row": e["row"],
                        "meta": e.get("meta") or {}}
                if k == len(stages):
                    stages.append([])
                stages[k].append(pair)
        pairs = [p for stage in stages for p in stage]
        for n, p in enumerate(pairs):
            p["index"] = n
        return pairs

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
    def setup(self, ctx) -> None:
        model = ctx.model
        if self.cfg.group_robust and self.groups is None:
            self.groups = group_weights(ctx.train_examples, self.cfg.group_key, self.cfg.group_eta)
        if self.packing and not supports_packing(model):
            self.packing = False  # e.g. flash-attention takes no custom 4-D mask
        if not self.needs_reference:
            return
        if self.cfg.reference_update != "none" and is_peft(model):
            raise ValueError("dpo.reference_update (TR-DPO) needs a full model: with LoRA the reference is the base weights")
        keep = self.cfg.reference == "model"
        reference = ctx.reference(keep)
        if self.cfg.reference == "cache":  # the starting policy's log-probs, for the examples this fit reads
            compute = lambda batch: torch.stack(self._reference_logps(reference, batch), -1)  # noqa: E731
            ctx.cache(ctx.train_examples, compute, ("ref_chosen", "ref_rejected"), only=ctx.used_indices())
            if ctx.eval_examples:
                ctx.cache(ctx.eval_examples, compute, ("ref_chosen", "ref_rejected"))
        self.reference = reference if keep else None

    def _reference_logps(self, module, batch):
        """(chosen, rejected) summed log-probs under the reference ``module``, without gradient."""
        with torch.no_grad():
            if self.token_level:
                chosen, rejected = token_pair_logps(module, batch, self.cfg.ld_alpha)[:2]
            else:
                chosen, rejected, _, _ = pair_logps(module, batch)
        return chosen.float(), rejected.float()

    def extra_modules(self):
        # TR-DPO's reference changes during training, so checkpoints carry it.
        return {"reference": self.reference.model} if self.cfg.reference_update != "none" else {}

    def after_step(self, ctx, step: int) -> None:
        """TR-DPO (Gorbatovski et al. 2024): refresh the reference every ``reference_update_every`` steps,
        softly (ref <- a * policy + (1 - a) * ref) or by copying the policy."""
        if self.groups is not None:
            total = ctx.strategy.sum(torch.stack([self.groups.sums, self.groups.counts]).to(ctx.device)).cpu()
            self.groups.update(total[0], total[1])  # every process takes the same exponentiated-gradient step
        if self.cfg.reference_update == "none" or step % self.cfg.reference_update_every:
            return
        a = 1.0 if self.cfg.reference_update == "hard" else self.cfg.reference_update_alpha
        self.reference.refresh(ctx.model, a)

    # ----------------------------------------------------------------------------------------------
    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        cfg = self.cfg
        tdpo = cfg.loss in TDPO
        if self.token_level:
            out = token_pair_logps(policy, batch, cfg.ld_alpha, return_logits=tdpo)
            chosen, rejected, chosen_tokens, rejected_tokens, token_logps, mask = out[:6]
        else:
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
        if tdpo:
            seq_kl = self._sequential_kl(batch, out[6], out[7])
            b = chosen.shape[0]
            alpha = cfg.tdpo_alpha if cfg.loss == "tdpo2" else None
            losses = tdpo_loss(logps, seq_kl[:b], seq_kl[b:], beta=cfg.beta, alpha=alpha, variant=cfg.loss)
        elif cfg.mix:
            losses = combine([(m["loss"], float(m.get("weight", 1.0)), m.get("params", {})) for m in cfg.mix], logps, beta=cfg.beta)
        else:
            losses = pairwise_loss(cfg.loss, logps, beta=cfg.beta, **cfg.params)
        if cfg.wpo:
            b = chosen.shape[0]
            weights = wpo_weights(token_logps[:b], mask[:b]) * wpo_weights(token_logps[b:], mask[b:])
            losses = losses * weights
        if self.groups is not None:
            names = (batch.get("meta") or {}).get(cfg.group_key)
            group_index, plain = self.groups.indices(names), losses.detach()
            losses = losses * self.groups.weights(names, losses, record=torch.is_grad_enabled())
        explore = xpo_exploration(chosen, rejected, batch) if cfg.xpo_alpha is not None else None
        if explore is not None:
            losses = losses + cfg.xpo_alpha * explore
        with torch.no_grad():
            c, r = chosen.detach(), rejected.detach()
            rc = cfg.beta * (c - ref_c) if ref_c is not None else cfg.beta * c
            rr = cfg.beta * (r - ref_r) if ref_r is not None else cfg.beta * r
        n = float(c.shape[0])
        metrics: Metrics = {
            "rewards/chosen": (rc.sum(), n),
            "rewards/rejected": (rr.sum(), n),
            "rewards/margins": ((rc - rr).sum(), n),
            "rewards/accuracy": ((rc > rr).float().sum(), n),
            "logps/chosen": (c.sum(), n),
            "logps/rejected": (r.sum(), n),
        }
        if cfg.wpo:
            metrics["wpo/weight"] = (weights.detach().sum(), n)
        if self.groups is not None:
            metrics.update({f"group_alpha/{g}": (float(a) * n, n) for g, a in zip(self.groups.names, self.groups.alpha.tolist())})
            for k, g in enumerate(self.groups.names):  # the unweighted DPO loss of each group's pairs
                mine = group_index == k
                metrics[f"group_loss/{g}"] = (float(plain[mine.to(plain.device)].sum()), float(mine.sum()))
        if explore is not None:
            marked = (torch.as_tensor(batch["meta"]["opponent"]) != 0).float().sum()
            metrics["xpo/logps_reference_sample"] = (explore.detach().sum(), float(marked))
        return losses.sum(), metrics

    def _sequential_kl(self, batch, policy_logits, positions) -> torch.Tensor:
        """TDPO's SeqKL per sequence [2B]: sum over completion tokens of KL(pi_ref(.|s_t) || pi(.|s_t))."""
        with torch.no_grad():
            _, ref_logits, _ = self.reference(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], return_logits=True)
        per_token = token_kl(ref_logits, policy_logits)  # the target rows' logits only: [N, V] -> [N]
        rows = positions[0]
        return torch.zeros(batch["input_ids"].shape[0], dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)
