"""Online RL as a pipeline of stages (sample -> score -> shape rewards -> advantages -> update).

``pipeline`` — :class:`OnlineRL`, the stages in order; ``batch`` — the typed :class:`Rollout` and
:class:`RolloutBatch`; ``estimators`` — the estimator registry (:data:`ESTIMATORS`) and the outcome
estimators; ``ppo`` — the critic and GAE; ``pairwise`` — P3O and CoPG.
"""

from . import pairwise, ppo  # noqa: F401  (register ppo, p3o, copg)
from .batch import Rollout, RolloutBatch, Row
from .estimators import ESTIMATORS, Estimator, build_estimator
from .pipeline import OnlineRL

__all__ = ["ESTIMATORS", "Estimator", "OnlineRL", "Rollout", "RolloutBatch", "Row", "build_estimator"]
