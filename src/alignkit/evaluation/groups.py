"""Per-group (and per-user) evaluation: whom does a policy or a reward model serve?

A task whose gold reward has one value per group (``task.group_rewards(prompt, completion) -> {group:
reward}``, the pluralistic task) is evaluated per group; rows that name their group or user (pair rows'
``group`` / ``user`` fields) give reward-model accuracy per group or user.

* :func:`policy_group_metrics`: ``gold/<g>`` (mean of group g's reward on the policy's samples, ± s.e.),
  ``win_rate/<g>`` (P(g's reward of the policy's sample > of the reference's sample for the same prompt),
  ties ½) and the worst group of each: ``gold/worst_group``, ``win_rate/worst_group`` (the egalitarian
  view; ``gold_reward`` itself is the share-weighted, utilitarian mean).
* :func:`accuracy_by`: reward-model accuracy (``r_c > r_r``, ties ½) per value of a row field, with the
  worst value and the spread (best − worst).

Plain functions on lists; :mod:`.policy` (``alignkit eval``, ``alignkit bench``) and :mod:`.reward_model`
(``alignkit eval-rm``) call them when the task or the rows have groups.
"""

from __future__ import annotations

from typing import Any, Sequence

from .metrics import mean_and_se, win_rate


def has_groups(task: Any) -> bool:
    """The task gives one gold reward per group (``group_rewards``)."""
    return callable(getattr(task, "group_rewards", None))


def per_group(task: Any, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, list[float]]:
    """``{group: [reward of each completion]}``."""
    out: dict[str, list[float]] = {}
    for p, c in zip(prompts, completions, strict=True):
        for g, v in task.group_rewards(p, c).items():
            out.setdefault(g, []).append(float(v))
    return out


def worst(values: dict[str, float]) -> tuple[str, float]:
    """The (name, value) with the lowest value."""
    name = min(values, key=lambda k: values[k])
    return name, values[name]


def policy_group_metrics(task: Any, prompts: Sequence[str], completions: Sequence[str],
                         reference_completions: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-group gold reward (and win rate against the reference's completion of the same prompt), with the
    worst group of each; ``{}`` for a task without groups."""
    if not has_groups(task):
        return {}
    rewards = per_group(task, prompts, completions)
    out: dict[str, Any] = {}
    gold = {}
    for g, values in rewards.items():
        gold[g], out[f"gold/{g}_se"] = mean_and_se(values)
        out[f"gold/{g}"] = gold[g]
    out["gold/worst_group"], out["gold/worst_group_value"] = worst(gold)
    if reference_completions is not None:
        ref = per_group(task, prompts, reference_completions)
        wins = {g: win_rate(rewards[g], ref[g]) for g in rewards}
        out.update({f"win_rate/{g}": w for g, w in wins.items()})
        out["win_rate/worst_group"], out["win_rate/worst_group_value"] = worst(wins)
    return out


def accuracy_by(chosen: Sequence[float], rejected: Sequence[float], keys: Sequence[Any], name: str = "group") -> dict[str, Any]:
    """Pair accuracy per value of ``keys`` (one per pair; ``None`` values are left out): ``accuracy/<name>/<v>``,
    ``n/<name>/<v>``, ``accuracy/<name>/worst`` (its value), ``worst_<name>`` (which) and ``accuracy/<name>/spread``."""
    hits: dict[str, list[float]] = {}
    for c, r, k in zip(chosen, rejected, keys, strict=True):
        if k is None:
            continue
        hits.setdefault(str(k), []).append(1.0 if c > r else 0.5 if c == r else 0.0)
    if not hits:
        return {}
    acc = {k: sum(v) / len(v) for k, v in hits.items()}
    out: dict[str, Any] = {}
    for k in sorted(acc):
        out[f"accuracy/{name}/{k}"] = acc[k]
        out[f"n/{name}/{k}"] = len(hits[k])
    out[f"worst_{name}"], out[f"accuracy/{name}/worst"] = worst(acc)
    out[f"accuracy/{name}/spread"] = max(acc.values()) - out[f"accuracy/{name}/worst"]
    return out
