"""Pure tensor maths: preference losses, policy-gradient losses, advantages, KL estimators, aggregation.

No models and no I/O here; each family is a registry of functions with one signature.
"""

from .policy_gradient import (  # noqa: F401
    aggregate,
    gae,
    kl_in_reward,
    kl_penalty,
    outcome_advantages,
    policy_loss,
    value_loss,
)
from .preference import (  # noqa: F401
    PAIRWISE_LOSSES,
    UNPAIRED_LOSSES,
    PairLogps,
    UnpairedLogps,
    combine,
    listwise_loss,
    pairwise_loss,
    unpaired_loss,
)
