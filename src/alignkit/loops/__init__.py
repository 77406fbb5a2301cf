"""Iterative alignment: the loop that samples from the live policy, judges, builds examples, trains in the
same trainer, updates the reference and evaluates — round after round (``alignkit iterate``).

* :func:`iterate` / :class:`IterativeLoop` (:mod:`.iterate`): the controller;
* :data:`JUDGES`, :func:`build_judge` (:mod:`.judges`): reward sources, preference oracles, LLM-as-judge;
* :data:`BUILDERS`, :func:`build_builder` (:mod:`.builders`): best-vs-worst, all/random/large-margin pairs,
  RSO rejection sampling, SPIN, best-of-K, win rates, soft-preference pairs, HyPO's offline pairs;
* :class:`LogLinearReference` (:mod:`.references`): INPO's geometric and APO's momentum references;
* :func:`group_win_rate` (:mod:`.spo`): SPO's win rate against the group, a reward function for online RL.

See ``docs/iterative.md``.
"""

from __future__ import annotations

from .builders import BUILDERS, REAL, REAL_REJECTED, Group, build_builder, rso_accept
from .iterate import IterativeLoop, LoopTrainer, iterate, round_seed
from .judges import JUDGES, Judge, JudgeEnv, Judgement, LLMJudge, build_judge, parse_choice, parse_score
from .references import LogLinearReference
from .spo import group_win_rate

__all__ = [
    "BUILDERS", "JUDGES", "REAL", "REAL_REJECTED", "Group", "IterativeLoop", "Judge", "JudgeEnv", "Judgement", "LLMJudge", "LogLinearReference",
    "LoopTrainer", "build_builder", "build_judge", "group_win_rate", "iterate", "parse_choice", "parse_score", "round_seed", "rso_accept",
]
