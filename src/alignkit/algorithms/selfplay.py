"""Self-play objectives on the shared engine (``algorithm: sppo``, ``sppo.loss``): SPPO and Nash-MD on
win-rate rows, online IPO / IPO-MD / INPO / EGPO, OSP and SELM / VPO on pairs with a soft preference.

**Per-sample losses** (``sppo``, ``nash_md``; record kind ``win_rate``): rows are ``prompt`` + ``completion`` +
``win_rate`` (a sample ``y`` of ``π_t`` and its estimated ``P̂(y ≻ π_t | x)``; the loop's ``win_rate`` builder
makes them from a judged group). SPPO's loss is ``(log π_θ(y|x)/π_t(y|x) − η (P̂ − 1/2))²`` with
``η = sppo.eta``. ``sppo.loss: nash_md`` trains the same rows by Nash-MD's policy gradient: ``P̂`` is then the
win rate of the policy's sample against a sample of the geometric mixture opponent (``iterate.opponent:
mixture``, ``iterate.builder: win_rate_vs_opponent``), the reference ``π_ref`` is fixed, and the logged
``target`` is the per-sample reward ``P̂ − 1/2 − β log π/π_ref``.

**Pair losses** (``online_ipo``, ``soft_dpo``; record kind ``pair``): rows are ``prompt`` + ``chosen`` +
``rejected`` and optionally ``preference`` = ``P(chosen ≻ rejected)`` (the loop's ``soft_pairs`` builder writes
it from the judge; absent: 1, a hard label). The loss sees the margin
``h = log π_θ(y_c)/π_ref(y_c) − log π_θ(y_r)/π_ref(y_r)`` and ``P``. ``sppo.optimism: α`` adds SELM's / VPO's
optimistic term ``α · ½ (log π_θ(y_c)/π_ref(y_c) + log π_θ(y_r)/π_ref(y_r))``: the mean log-ratio of the pair's
two samples, which under the loop are samples of ``π_ref`` (``E_{y~π_ref}[log π_θ(y)/π_ref(y)]``); minimising
it lowers the likelihood of what the reference already writes (α > 0, optimism); α < 0 is VPO's offline
pessimism. ``sppo.kl_own: λ`` adds HyPO's online reverse KL on the row's ``own`` field (a fresh sample of the
policy for the prompt; the loop's ``hypo`` builder puts it beside an offline pair): ``λ · E_{y~π_θ}[log π_θ(y)/π_ref(y)]``,
whose gradient ``E[(log π_θ/π_ref)(y) ∇ log π_θ(y)]`` is taken through the surrogate ``λ · sg(Δ(y)) · log π_θ(y)``.

The reference is the context's: under ``alignkit iterate`` the loop's (previous iterate, fixed start, the
INPO geometric mixture or APO's extrapolation), under ``alignkit train`` the starting policy. Its log-probs
are cached before each fit (only for the examples the fit reads), as DPO's and KTO's are.
"""

from __future__ import annotations

import torch

from ..data.collate import attach_meta, collate_pairs, collate_sequences
from ..data.encode import Encoder
from ..engine.contract import Algorithm, Metrics
from ..objectives.selfplay import SELFPLAY_LOSSES, selfplay_loss
from .dpo import pair_logps

LOSS_PARAMS = {"sppo": ("eta",), "nash_md": ("beta",), "online_ipo": ("tau",), "soft_dpo": ("beta",)}  # the sppo-section keys each loss takes


class SPPO(Algorithm):
    name = "sppo"
    data_kind = "win_rate"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.sppo
        self.name = self.cfg.loss
        self.pairs = getattr(SELFPLAY_LOSSES.get(self.cfg.loss), "kind", "sample") == "pair"
        self.data_kind = "pair" if self.pairs else "win_rate"
        if (self.cfg.optimism or self.cfg.kl_own) and not self.pairs:
            raise ValueError(f"sppo.optimism (SELM / VPO) and sppo.kl_own (HyPO) are terms on pairs: use sppo.loss online_ipo or soft_dpo, not {self.cfg.loss}")
        self.needs_reference = True

    def params(self) -> dict[str, float]:
        return {k: getattr(self.cfg, k) for k in LOSS_PARAMS[self.cfg.loss]}

    def setup(self, ctx) -> None:
        module = ctx.reference(keep=False)
        if self.pairs:
            keys = ("ref_chosen", "ref_rejected")
            if self.cfg.kl_own:
                self._encode_own(ctx)
                keys = (*keys, "ref_own")

            def reference(batch):
                values = list(pair_logps(module, batch)[:2])
                if self.cfg.kl_own:
                    values.append(module(*self._own_args(batch)).sum(-1))
                return torch.stack(values, -1)
        else:
            keys = ("ref_logp",)

            def reference(batch):
                return module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1)[:, None]

        ctx.cache(ctx.train_examples, reference, keys, only=ctx.used_indices())
        if ctx.eval_examples:
            ctx.cache(ctx.eval_examples, reference, keys)

    def _encode_own(self, ctx) -> None:
        """Token ids of each row's ``own`` sample (HyPO), encoded as the data path encodes a completion."""
        encoder = Encoder(ctx.tokenizer, self.recipe.data.max_length)
        for e in [*ctx.train_examples, *(ctx.eval_examples or [])]:
            if "own_ids" not in e:
                own = (e.get("meta") or {}).get("own")
                if not isinstance(own, str) or not own.strip():
                    raise ValueError("sppo.kl_own (HyPO) needs rows with an 'own' sample of the policy: alignkit iterate with iterate.builder=hypo")
                e["own_ids"] = encoder.completion_ids("", [], own, e.get("row", 0), "own")

    @staticmethod
    def _own_args(batch):
        return batch["own_input_ids"], batch["own_attention_mask"], batch["own_loss_mask"]

    def collate(self, examples, pad_id):
        if self.pairs:
            batch = collate_pairs(examples, pad_id)
            if "own_ids" in examples[0]:
                own = collate_sequences([e["prompt_ids"] + e["own_ids"] for e in examples], [[0] * len(e["prompt_ids"]) + [1] * len(e["own_ids"]) for e in examples], pad_id)
                batch.update({f"own_{k}": v for k, v in own.items()})
            for key in ("ref_chosen", "ref_rejected", "ref_own"):
                if key in examples[0]:
                    batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
            return batch
        batch = collate_sequences([e["input_ids"] for e in examples], [e["loss_mask"] for e in examples], pad_id)
        batch["win_rate"] = torch.tensor([float(e["win_rate"]) for e in examples], dtype=torch.float32)
        if "ref_logp" in examples[0]:
            batch["ref_logp"] = torch.tensor([e["ref_logp"] for e in examples], dtype=torch.float32)
        return attach_meta(batch, examples)

    def weight(self, batch) -> float:
        return float(batch["index"].numel() if self.pairs else batch["win_rate"].numel())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        return self._pair_loss(policy, batch) if self.pairs else self._sample_loss(policy, batch)

    def _sample_loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        b = float(batch["win_rate"].numel())
        logp = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1).float()
        ratio = logp - batch["ref_logp"].to(logp.device)
        win = batch["win_rate"].to(logp.device)
        losses = selfplay_loss(self.cfg.loss, ratio, win, **self.params())
        target = self.cfg.eta * (win - 0.5) if self.cfg.loss == "sppo" else (win - 0.5) - self.cfg.beta * ratio.detach()
        above = win > 0.5
        below = win < 0.5
        r = ratio.detach()
        metrics: Metrics = {
            "logratio": (r.sum(), b),
            "target": (target.sum(), b),
            "win_rate": (win.sum(), b),
            "logratio/winners": (r[above].sum(), float(above.sum())),
            "logratio/losers": (r[below].sum(), float(below.sum())),
            "logps": (logp.detach().sum(), b),
        }
        return losses.sum(), metrics

    def _pair_loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected, _, _ = pair_logps(policy, batch)
        chosen, rejected = chosen.float(), rejected.float()
        ratio_c = chosen - batch["ref_chosen"].to(chosen.device)
        ratio_r = rejected - batch["ref_rejected"].to(chosen.device)
        margin = ratio_c - ratio_r
        meta = batch.get("meta") or {}
        p = torch.as_tensor(meta["preference"], dtype=margin.dtype, device=margin.device) if "preference" in meta else torch.ones_like(margin)
        losses = selfplay_loss(self.cfg.loss, margin, p, **self.params())
        n = float(margin.numel())
        metrics: Metrics = {
            "margin": (margin.detach().sum(), n),
            "preference": (p.sum(), n),
            "logratio/chosen": (ratio_c.detach().sum(), n),
            "logratio/rejected": (ratio_r.detach().sum(), n),
            "accuracy": ((margin.detach() > 0).float().sum(), n),
        }
        if self.cfg.loss == "online_ipo":
            metrics["target"] = (((p - 0.5) / self.cfg.tau).sum(), n)
        if self.cfg.kl_own:  # HyPO: the reverse KL on the fresh sample, through its score-function surrogate
            own = policy(*self._own_args(batch)).sum(-1).float()
            kl = own.detach() - batch["ref_own"].to(own.device)
            losses = losses + self.cfg.kl_own * (kl + kl * (own - own.detach()))  # value: the KL estimate; gradient: kl * grad log pi
            metrics["hypo/kl"] = (kl.sum(), n)
        if self.cfg.optimism:
            optimism = 0.5 * (ratio_c + ratio_r)
            losses = losses + self.cfg.optimism * optimism
            metrics["optimism/logratio"] = (optimism.detach().sum(), n)
        return losses.sum(), metrics
