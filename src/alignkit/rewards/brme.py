"""A saved BRME reward model (``reward.type: brme``) as a reward source, reduced to one robust reward.

The model is a sequence classifier with ``2K`` outputs: the K heads' means ``μ_1..μ_K`` then their log-stds
``log σ_1..log σ_K`` (``config.heads = K``). :func:`alignkit.objectives.pluralistic.brme_reward` reduces
them per sample (``reduce``, ``lam``)::

    {type: model, path: runs/brme-rm/final, reduce: robust, lam: 0.5}   # λ μ_{argmin σ} + (1 − λ) min_k μ_k
    {type: model, path: runs/brme-rm/final, reduce: min}                # the worst case alone
    {type: model, path: runs/brme-rm/final, reduce: mean_minus_std, lam: 1.0}

``score_members`` gives the means ``[N, K]`` and :meth:`BRMERewardSource.heads` both halves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..objectives.pluralistic import BRME_REDUCTIONS, brme_reward
from .sources import _check_lengths, _ModelBacked


class BRMERewardSource(_ModelBacked):
    def __init__(self, path: str | Path, reduce: str = "robust", lam: float = 0.5, **kwargs: Any):
        super().__init__(path, **kwargs)
        if reduce not in BRME_REDUCTIONS:
            raise KeyError(f"{path}: unknown brme reduction {reduce!r}; allowed: {', '.join(BRME_REDUCTIONS)}")
        if reduce == "robust" and not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"{path}: reduce robust needs lam in [0, 1] (the nominal reward's weight), got {lam}")
        self.reduce, self.lam = reduce, float(lam)
        self.k = int(self.model.config.heads)

    def heads(self, prompts, completions, *, progress: bool = False) -> tuple[Tensor, Tensor]:
        """``(μ [N, K], log σ [N, K])``."""
        from .models import encode_single

        _check_lengths(prompts, completions)
        seqs = [encode_single(self.encoder, p, c) for p, c in zip(prompts, completions)]
        out = self._run(seqs, progress, f"brme {self.name}")
        return out[:, : self.k], out[:, self.k :]

    def score_members(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        return self.heads(prompts, completions, progress=progress)[0]

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        mu, log_std = self.heads(prompts, completions, progress=progress)
        return brme_reward(mu, log_std, self.reduce, self.lam)
