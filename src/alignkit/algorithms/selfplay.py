"""Self-play on win rates on the shared engine: SPPO and Nash-MD (``algorithm: sppo``, ``sppo.loss``).

Rows are ``prompt`` + ``completion`` + ``win_rate`` (record kind ``win_rate``: a sample ``y`` of ``π_t``
and its estimated ``P̂(y ≻ π_t | x)``; the loop's ``win_rate`` builder makes them from a judged group).
The loss (:func:`alignkit.objectives.selfplay_loss`, ``sppo.loss``) is per sample,
``(log π_θ(y|x)/π_t(y|x) − η (P̂ − 1/2))²`` with ``η = sppo.eta``. The reference ``π_t`` is the
context's reference: under ``alignkit iterate`` the loop's (the previous iterate with
``iterate.reference: previous``), under ``alignkit train`` the starting policy. Its log-probs are cached
before each fit (only for the examples the fit reads), as DPO's and KTO's are.

``sppo.loss: nash_md`` trains the same rows by Nash-MD's policy gradient: ``P̂`` is then the win rate of the
policy's sample against a sample of the geometric mixture opponent (``iterate.opponent: mixture``,
``iterate.builder: win_rate_vs_opponent``), the reference ``π_ref`` is fixed (``iterate.reference: fixed``),
and the logged ``target`` is the per-sample reward ``P̂ − 1/2 − β log π/π_ref``.
"""

from __future__ import annotations

import torch

from ..data.collate import attach_meta, collate_sequences
from ..engine.contract import Algorithm, Metrics
from ..objectives.selfplay import selfplay_loss

LOSS_PARAMS = {"sppo": ("eta",), "nash_md": ("beta",)}  # the sppo-section keys each loss takes


class SPPO(Algorithm):
    name = "sppo"
    data_kind = "win_rate"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.sppo
        self.name = self.cfg.loss
        self.needs_reference = True

    def setup(self, ctx) -> None:
        module = ctx.reference(keep=False)

        def reference(batch):
            return module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1)[:, None]

        ctx.cache(ctx.train_examples, reference, ("ref_logp",), only=ctx.used_indices())
        if ctx.eval_examples:
            ctx.cache(ctx.eval_examples, reference, ("ref_logp",))

    def collate(self, examples, pad_id):
        batch = collate_sequences([e["input_ids"] for e in examples], [e["loss_mask"] for e in examples], pad_id)
        batch["win_rate"] = torch.tensor([float(e["win_rate"]) for e in examples], dtype=torch.float32)
        if "ref_logp" in examples[0]:
            batch["ref_logp"] = torch.tensor([e["ref_logp"] for e in examples], dtype=torch.float32)
        return attach_meta(batch, examples)

    def weight(self, batch) -> float:
        return float(batch["win_rate"].numel())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        b = float(batch["win_rate"].numel())
        logp = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1).float()
        ratio = logp - batch["ref_logp"].to(logp.device)
        win = batch["win_rate"].to(logp.device)
        losses = selfplay_loss(self.cfg.loss, ratio, win, **{k: getattr(self.cfg, k) for k in LOSS_PARAMS[self.cfg.loss]})
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
