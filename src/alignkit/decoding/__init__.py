"""Inference-time alignment: decoding strategies that turn a frozen model into an aligned policy
(policy = model + strategy), each reporting what it cost.

Strategies (a registry, :data:`STRATEGIES`; :func:`strategy_names`): ``sample`` (plain), ``best_of_n``,
``rejection`` (toward pi * exp(r / beta), RSO's rule), ``args`` (reward-guided token decoding), ``product``
(a product of experts with guide models in lockstep), ``genarm`` (autoregressive reward models with run-time
weights), ``nudging`` (a small aligned model writes where the base is unsure), ``steer`` (contrastive activation
addition), ``value_guided`` (CD-FUDGE / VAS / Transfer Q* values), ``lookahead`` (DeAL-style search) and ``w2s``
(weak-to-strong beam search). :func:`decode_with` is the front door;
``alignkit generate MODEL --strategy NAME --strategy-option k=v`` and ``alignkit eval --strategy`` use it.
See ``docs/decoding.md``.
"""

from .base import STRATEGIES, Context, Cost, CountingSource, Decoding, ForwardCounter, check_strategy, decode_with, parse_options, strategy_names
from .genarm import genarm_alphas
from .guided import ARGSGuide, ProductGuide, run_guided
from .nudging import NudgingGuide
from .sampling import acceptance_probabilities, acceptance_uniforms, best_of_n_kl, best_of_n_log_ratio
from .search import constraint_scores, drop_last
from .steering import Contrast, Steering, caa_vectors, layer_search, load_vector, save_vector, task_contrasts
from .value import ValueGuide, ValueModel, fit_value, td_lambda_targets

__all__ = [
    "ARGSGuide", "STRATEGIES", "Context", "Contrast", "Cost", "CountingSource", "Decoding", "ForwardCounter", "NudgingGuide", "ProductGuide",
    "Steering", "ValueGuide", "ValueModel", "acceptance_probabilities", "acceptance_uniforms", "best_of_n_kl", "best_of_n_log_ratio",
    "caa_vectors", "check_strategy", "constraint_scores", "decode_with", "drop_last", "fit_value", "genarm_alphas", "layer_search",
    "load_vector", "parse_options", "run_guided", "save_vector", "strategy_names", "task_contrasts", "td_lambda_targets",
]
