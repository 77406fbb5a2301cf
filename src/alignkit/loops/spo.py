"""SPO (Swamy et al. 2024, "A minimaximalist approach to reinforcement learning from human feedback"): the win
rate of a sample against the other samples of its group as the reward of any online RL estimator.

SPO's self-play reaches the minimax winner of the symmetric preference game with a single agent: for the N
samples ``ξ_1..ξ_N`` of one prompt, ``r(ξ_i) = (1/(N − 1)) Σ_{j≠i} P(ξ_i ≻ ξ_j)``, then any policy-gradient
update. In alignkit this is a reward function for ``algorithm: rl`` (``rl.sampling.group_size`` samples per
prompt, consecutive in the rollout), so every estimator of online RL (GRPO, RLOO, REINFORCE++, PPO) can use it::

    rl:
      sampling: {group_size: 4}
      reward: {type: function, function: alignkit.loops.spo:group_win_rate, kwargs: {group_size: 4, task: intransitive}}

The pairwise preferences come from any pairwise judge of :mod:`.judges` (``judge``, default ``preference``:
the task's oracle ``P(a ≻ b)``; ``{type: preference, model: <folder>}``: a trained preference model), whose
score of a sample is exactly this mean over the rest of its group. Recipe ``recipes/selfplay/spo.yaml``.
"""

from __future__ import annotations

import json
from typing import Any

from ..tasks import get_task
from .judges import Judge, JudgeEnv, build_judge

_judges: dict[str, Judge] = {}


def _judge(task: str, judge: Any) -> Judge:
    key = json.dumps([task, judge], sort_keys=True, default=str)
    if key not in _judges:
        _judges[key] = build_judge(judge, JudgeEnv(task=get_task(task)))
    return _judges[key]


def group_win_rate(prompts: list, completions: list, group_size: int, task: str = "intransitive", judge: Any = "preference",
                   **context: Any) -> list[float]:
    """SPO's reward of every sample: its mean ``P(y_i ≻ y_j)`` against the other ``group_size − 1`` samples of its group
    (groups: consecutive runs of ``group_size`` samples of one prompt). An empty completion, or one the judge could
    not score, gets 0 (it loses every comparison)."""
    if group_size < 2 or len(completions) % group_size:
        raise ValueError(f"group_win_rate: {len(completions)} samples do not split into groups of group_size={group_size} (>= 2): set it to rl.sampling.group_size")
    starts = range(0, len(completions), group_size)
    if any(len({json.dumps(p, sort_keys=True, default=str) for p in prompts[s : s + group_size]}) != 1 for s in starts):
        raise ValueError(f"group_win_rate: a group of {group_size} consecutive samples mixes prompts: group_size must equal rl.sampling.group_size")
    judgement = _judge(task, judge).judge([prompts[s] for s in starts], [list(completions[s : s + group_size]) for s in starts])
    if judgement.preferences is None:
        raise ValueError(f"group_win_rate: judge {judge!r} is not pairwise (use preference or {{type: preference, model: ...}})")
    out = []
    for group, texts in zip(judgement.scores, (completions[s : s + group_size] for s in starts)):
        out += [0.0 if s is None or not str(t).strip() else float(s) for s, t in zip(group, texts)]
    return out
