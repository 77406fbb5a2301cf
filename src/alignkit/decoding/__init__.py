"""Inference-time alignment: decoding strategies that turn a frozen model into an aligned policy
(policy = model + strategy), each reporting what it cost.

Strategies (a registry, :data:`STRATEGIES`; :func:`strategy_names`): ``sample`` (plain), ``best_of_n``,
``rejection`` (toward pi * exp(r / beta), RSO's rule), ``args`` (reward-guided token decoding), ``product``
(a product of experts with guide models in lockstep, GenARM's rule). :func:`decode_with` is the front door;
``alignkit generate MODEL --strategy NAME --strategy-option k=v`` and ``alignkit eval --strategy`` use it.
See ``docs/decoding.md``.
"""

from .base import STRATEGIES, Context, Cost, CountingSource, Decoding, ForwardCounter, check_strategy, decode_with, parse_options, strategy_names
from .guided import ARGSGuide, ProductGuide, run_guided
from .sampling import acceptance_probabilities, acceptance_uniforms, best_of_n_kl, best_of_n_log_ratio

__all__ = [
    "ARGSGuide", "STRATEGIES", "Context", "Cost", "CountingSource", "Decoding", "ForwardCounter", "ProductGuide", "acceptance_probabilities",
    "acceptance_uniforms", "best_of_n_kl", "check_strategy", "best_of_n_log_ratio", "decode_with", "parse_options", "run_guided", "strategy_names",
]
