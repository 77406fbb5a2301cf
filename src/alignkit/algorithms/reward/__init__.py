"""Reward-model training (``algorithm: reward``).

The model is an ``AutoModelForSequenceClassification`` (``num_labels=1``) built from the causal LM
checkpoint; it scores the last non-pad token (the completion's EOS) of ``prompt + completion``.

``reward.type``:

* ``scalar`` (default): Bradley–Terry on pairs, ``−log σ(r_c − r_r − m)`` (``reward.loss: hinge`` for the
  hinge variant), with the pair's ``margin`` field when ``reward.margin`` is on (times
  ``reward.margin_scale``), plus reward centring ``reward.centering · (r_c + r_r)²``. On ranked data
  (``data.kind: ranked``) every ordered pair of the list with different scores is a BT pair (the list's
  loss is the mean over them) and ``reward.regression`` weighs a squared error to the scores (ratings).
* ``reward.ensemble: K`` trains K members side by side in one run: each member's score head starts from
  its own seed (``reward.ensemble_init: all`` re-draws every weight with the member's seed, for an
  untrained starting checkpoint such as the tiny models), and with ``reward.bootstrap`` each member weighs every training pair by its own Poisson(1)
  count (the online bootstrap, fixed per (member, pair)). Saved as an ensemble folder (``ensemble.json``
  plus ``member-k/``, each a standard ``save_pretrained`` folder).
* ``preference``: a PairRM-style pairwise model: one input holds both responses, and the logit is made
  antisymmetric, ``ℓ = (f(c, r) − f(r, c)) / 2``; loss ``−log σ(ℓ)``. Its ``config.json`` carries
  ``reward_type: preference``.

* ``multi_objective``: an ArmoRM-style model, K attribute regression heads plus a prompt gate, trained
  **jointly** in one run on a mix of ratings rows (``prompt``, ``completion``, ``ratings: {attr: value}``
  or one column per attribute) and pair rows (``prompt``, ``chosen``, ``rejected``). A ratings row adds
  the masked mean squared error of the heads (:func:`~alignkit.objectives.reward.attribute_regression`);
  a pair row adds ``reward.gate_weight`` × Bradley–Terry on ``r = β Σ_k g_k(x) r_k``
  (:func:`~alignkit.objectives.reward.gated_bradley_terry`). With ``reward.gate_detach`` (the default)
  the BT loss sees the heads' scores and the prompt representation as constants, so it trains only the
  gate and β, while the heads and the body learn only from ratings: ArmoRM's two stages, run side by side.
* ``process``: a process reward model (token classifier) trained with per-step BCE
  (:func:`~alignkit.objectives.reward.process`) on rows ``prompt``, ``steps`` (or a ``completion`` cut
  by ``reward.step_split``), ``labels`` (one 0/1 per step), reading the logit at each step's last token.

The last two read rows of the ``prompt`` kind, which carries every extra field, and check and encode
them in ``setup`` as the ``ratings`` / ``steps`` record kinds (:mod:`alignkit.data.kinds`); with no
``data.train`` they are generated from the task (:mod:`alignkit.rewards.task_data`), whose
``reward_attributes`` / ``reward_step_split`` give the defaults.

* ``context`` / ``principles`` / ``brme``: a reward conditioned on a context string, SALMON's
  principle-conditioned reward, and BRME's K Gaussian heads with a worst-case reduction for RL
  (:mod:`.context`, :mod:`.principles`, :mod:`.brme`; ``docs/pluralistic.md``).

One file per type: :mod:`.scalar` (+ ensemble, ranked data), :mod:`.preference`, :mod:`.multi_objective`,
:mod:`.process`, each a subclass of :class:`~.base.RewardModelling` registered in :data:`REWARD_TYPES` by
``reward.type``; ``RewardModelling(recipe)`` builds the registered class.

Logged: ``accuracy``, ``margin`` (mean r_c − r_r), ``chosen``/``rejected`` mean rewards, and for an
ensemble ``ensemble_std`` (mean std over members). Multi-objective: ``mse/<attribute>``, ``accuracy``
(pairs, by the gated reward), ``gate/<attribute>`` (mean gate weight on pair rows) and ``scale`` (β).
Process: ``step_accuracy`` (logit > 0 against label > 0.5), ``steps`` per row.
"""

from __future__ import annotations

from .arm import ARMRewardModelling
from .base import REWARD_TYPES, RewardModelling, RowRewardModelling
from .brme import BRMERewardModelling
from .context import ContextRewardModelling
from .mixture import MixtureRewardModelling
from .multi_objective import MultiObjectiveRewardModelling
from .pal import PALRewardModelling
from .preference import PreferenceRewardModelling
from .principles import PrinciplesRewardModelling
from .process import ProcessRewardModelling
from .scalar import ScalarRewardModelling
from .spans import SpanRewardModelling
from .vpl import VPLRewardModelling

__all__ = [
    "REWARD_TYPES", "RewardModelling", "RowRewardModelling", "ScalarRewardModelling", "PreferenceRewardModelling",
    "MultiObjectiveRewardModelling", "ProcessRewardModelling", "ARMRewardModelling",
    "MixtureRewardModelling", "PALRewardModelling", "VPLRewardModelling",
    "ContextRewardModelling", "PrinciplesRewardModelling", "BRMERewardModelling", "SpanRewardModelling",
]
