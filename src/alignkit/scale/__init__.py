"""Scale-out of online RL (docs/scale.md): asynchronous rollouts (:mod:`.producer`, ``rl.asynchronous``) and Ray
orchestration (:mod:`.ray_engine`, ``scale.backend: ray``; the actors in :mod:`.workers`).

Importing this package imports no Ray: :func:`ray_rollout_engine` and :func:`ray_reward_source` import it when
called, so single-machine runs never need it."""

from __future__ import annotations

from .producer import Produced, RolloutProducer


def ray_rollout_engine(model, tokenizer, scale, backend: str = "alignkit", vllm_options=None):
    """A :class:`~.ray_engine.RayRolloutEngine` of ``scale.rollout_workers`` workers over ``model``."""
    from .ray_engine import RayRolloutEngine

    return RayRolloutEngine(model, tokenizer, scale, backend=backend, vllm_options=vllm_options)


def ray_reward_source(spec, scale):
    """A :class:`~.ray_engine.RayRewardSource` scoring ``spec`` (an ``rl.reward`` value) in a Ray actor."""
    from .ray_engine import RayRewardSource

    return RayRewardSource(spec, scale)


__all__ = ["Produced", "RolloutProducer", "ray_rollout_engine", "ray_reward_source"]
