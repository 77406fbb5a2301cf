"""GenARM decoding (Xu et al. 2025): sample from ``pi_base(y_t|.) * prod_i pi_r,i(y_t|.)^(w_i / beta)``, normalised
token by token, with one or several autoregressive reward models ``pi_r,i`` (``reward.type: arm``,
:mod:`alignkit.algorithms.reward.arm`) and weights ``w_i`` chosen at run time (multi-objective alignment without
retraining). An ARM may be smaller than the base model (weak-to-strong guidance): it only has to share the
tokenizer. Each ARM keeps its own KV cache in lockstep with the base model's.
"""

from __future__ import annotations

from .base import STRATEGIES, Context, Decoding
from .guided import as_list, weighted_guides


def genarm_alphas(beta: float, weights, count: int) -> list[float]:
    """The exponents ``w_i / beta`` of the ARMs (one weight for all, or one per ARM)."""
    if beta <= 0:
        raise ValueError(f"genarm: beta must be > 0 (got {beta})")
    ws = [float(w) for w in as_list(weights, "weights", "genarm")]
    if len(ws) == 1:
        ws = ws * count
    if len(ws) != count:
        raise ValueError(f"genarm: {count} ARMs but {len(ws)} weights")
    return [w / beta for w in ws]


@STRATEGIES.register("genarm", family="reward-guided decoding", paper="Xu et al. 2025, GenARM")
def genarm(ctx: Context, arm=None, beta: float = 1.0, weights=1.0) -> Decoding:
    """``pi_base * prod_i pi_r,i^(w_i / beta)``: ``arm`` an ARM folder (``reward.type: arm``) or model, or a list;
    ``weights`` one per ARM (run-time trade-off between objectives); ``beta`` the KL strength (smaller: more
    reward)."""
    specs = as_list(arm, "arm=PATH (an autoregressive reward model, reward.type: arm; or a list)", "genarm")
    result = weighted_guides(ctx, "genarm", specs, genarm_alphas(beta, weights, len(specs)), role="arm")
    result.stats.update(beta=beta, weights=as_list(weights, "weights", "genarm"))
    return result
