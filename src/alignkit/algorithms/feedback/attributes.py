"""Attribute scores for the multi-objective methods (MODPO's margins, DPA's directions).

:func:`attribute_scorer` turns a spec into ``f(prompts, completions) -> Tensor [N, K]`` over named
attributes: ``gold`` reads the task's gold attributes (``task.attribute_rewards``, e.g. the
multi-objective task's ``sentiment`` and ``brevity``); a multi-objective reward model (a folder, or
``{type: multi_objective, path}``) reads its heads by name; with a single attribute, any other reward
source (a scalar reward model folder, ``module:function``, ``combine``) is that attribute.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

Scorer = Callable[[Sequence[str], Sequence[str]], Tensor]


def gold_attribute_scorer(task: Any, attributes: Sequence[str]) -> Scorer:
    """The task's gold attributes ``attributes`` (columns in that order)."""
    if not hasattr(task, "attribute_rewards"):
        raise ValueError(f"task '{getattr(task, 'name', task)}' has no gold attributes (attribute_rewards); use the multi_objective task or give a reward model")
    probe = task.attribute_rewards(*_probe(task))
    missing = [a for a in attributes if a not in probe]
    if missing:
        raise ValueError(f"task '{task.name}' has no gold attribute {missing[0]!r}; it has {', '.join(probe)}")

    def score(prompts, completions) -> Tensor:
        rows = [task.attribute_rewards(p, c) for p, c in zip(prompts, completions, strict=True)]
        return torch.tensor([[r[a] for a in attributes] for r in rows], dtype=torch.float32).reshape(len(rows), len(attributes))

    return score


def _probe(task: Any) -> tuple[str, str]:
    import random

    prompt = task.prompts(1, "train")[0]
    return prompt, task.sample_completion(prompt, random.Random(0))


def attribute_scorer(spec: Any, attributes: Sequence[str], task_factory: Callable[[], Any]) -> Scorer:
    """``f(prompts, completions) -> [N, len(attributes)]`` for ``spec`` (see the module docstring)."""
    if spec == "gold":
        return gold_attribute_scorer(task_factory(), attributes)
    from ...rewards.sources import MultiObjectiveRewardSource, build_reward_source

    source = build_reward_source(spec)
    if isinstance(source, MultiObjectiveRewardSource):
        missing = [a for a in attributes if a not in source.attributes]
        if missing:
            raise ValueError(f"reward model {source.path} has no attribute {missing[0]!r}; it has {', '.join(source.attributes)}")
        columns = [source.attributes.index(a) for a in attributes]

        def score(prompts, completions) -> Tensor:
            return source.score_attributes(list(prompts), list(completions))[:, columns].float()

        return score
    if len(attributes) != 1:
        raise ValueError(f"reward source {spec!r} gives one score, but {len(attributes)} attributes are asked for ({', '.join(attributes)}); give a multi-objective reward model or gold")
    return lambda prompts, completions: source.score(list(prompts), list(completions)).float().reshape(-1, 1)


def margin_scorer(spec: Any, task_factory: Callable[[], Any]) -> Scorer:
    """MODPO's other-objective reward ``r_{-k}`` as ``[N]``: ``attribute:<name>`` is the task's gold
    attribute; anything else is a reward source (its ``score``)."""
    if isinstance(spec, str) and spec.startswith("attribute:"):
        one = gold_attribute_scorer(task_factory(), [spec.split(":", 1)[1]])
        return lambda prompts, completions: one(prompts, completions)[:, 0]
    from ...rewards.sources import build_reward_source

    source = build_reward_source(spec)
    return lambda prompts, completions: source.score(list(prompts), list(completions)).float()
