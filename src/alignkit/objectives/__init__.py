"""Pure tensor maths, one module per family; no models and no I/O here.

==================  =====================================================================================
module              contents
==================  =====================================================================================
``pairwise``        :class:`PairLogps`, :func:`pairwise_loss` (:data:`PAIRWISE_LOSSES`), :func:`combine`,
                    TDPO (:func:`tdpo_loss`, :func:`sequential_kl`), WPO and LD-DPO helpers
``unpaired``        :class:`UnpairedLogps`, :func:`unpaired_loss` (:data:`UNPAIRED_LOSSES`), :class:`RunningMean`
``listwise``        :func:`listwise_loss` (:data:`LISTWISE_LOSSES`), :func:`curriculum_pairs`
``advantages``      :func:`outcome_advantages` (:data:`OUTCOME_ADVANTAGES`), :class:`MovingBaseline`, :func:`gae`,
                    macro-action advantages, P3O pairwise advantages
``kl``              :func:`kl_penalty` (:data:`KL_ESTIMATORS`), :func:`kl_in_reward`
``aggregation``     :func:`aggregate` (:data:`AGGREGATIONS`): token -> scalar reductions
``policy``          :func:`policy_loss` (:data:`POLICY_LOSSES`), :func:`copg_loss`
``offpolicy``       :func:`off_policy_correction` (:data:`OFF_POLICY_CORRECTIONS`: TIS, MIS, sequence-level, decoupled
                    PPO), :func:`corrected_policy_loss`: samples from a behaviour policy (docs/scale.md)
``value``           :func:`value_loss` (clipped PPO critic loss)
``reward``          reward-model losses (:data:`REWARD_LOSSES`)
``selfplay``        win-rate regressions: :func:`selfplay_loss` (:data:`SELFPLAY_LOSSES`: SPPO), :func:`online_ipo_loss`
==================  =====================================================================================

Each family is a registry (:class:`alignkit.core.registry.Registry`) of functions with one signature.
"""

from .advantages import OUTCOME_ADVANTAGES, MovingBaseline, gae, macro_action_advantages, macro_gae, outcome_advantages, pairwise_advantages
from .aggregation import AGGREGATIONS, aggregate
from .kl import KL_ESTIMATORS, kl_in_reward, kl_penalty
from .listwise import LISTWISE_LOSSES, curriculum_pairs, listwise_loss, register_listwise
from .offpolicy import OFF_POLICY_CORRECTIONS, Correction, corrected_policy_loss, off_policy_correction
from .pairwise import (
    PAIRWISE_LOSSES,
    PairLogps,
    combine,
    ld_dpo_logps,
    pairwise_loss,
    register_pairwise,
    sequential_kl,
    tdpo_loss,
    token_kl,
    wpo_weights,
)
from .policy import POLICY_LOSSES, copg_loss, policy_loss
from .reward import REWARD_LOSSES, register_reward_loss, reward_loss
from .selfplay import SELFPLAY_LOSSES, online_ipo_loss, register_selfplay, selfplay_loss, sppo_loss
from .unpaired import UNPAIRED_LOSSES, RunningMean, UnpairedLogps, register_unpaired, unpaired_loss
from .value import value_loss

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LISTWISE_LOSSES",
    "OFF_POLICY_CORRECTIONS",
    "OUTCOME_ADVANTAGES",
    "PAIRWISE_LOSSES",
    "POLICY_LOSSES",
    "REWARD_LOSSES",
    "SELFPLAY_LOSSES",
    "UNPAIRED_LOSSES",
    "MovingBaseline",
    "PairLogps",
    "RunningMean",
    "UnpairedLogps",
    "Correction",
    "aggregate",
    "combine",
    "corrected_policy_loss",
    "copg_loss",
    "curriculum_pairs",
    "gae",
    "kl_in_reward",
    "kl_penalty",
    "ld_dpo_logps",
    "listwise_loss",
    "macro_action_advantages",
    "macro_gae",
    "off_policy_correction",
    "outcome_advantages",
    "pairwise_advantages",
    "pairwise_loss",
    "policy_loss",
    "register_listwise",
    "register_pairwise",
    "register_reward_loss",
    "register_unpaired",
    "reward_loss",
    "sequential_kl",
    "token_kl",
    "tdpo_loss",
    "unpaired_loss",
    "value_loss",
    "online_ipo_loss",
    "register_selfplay",
    "selfplay_loss",
    "sppo_loss",
    "wpo_weights",
]
