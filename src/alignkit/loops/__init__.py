"""Iterative alignment: the loop that samples from the live policy, judges, builds examples, trains in the
same trainer, updates the reference and evaluates — round after round (``alignkit iterate``).

* :func:`iterate` / :class:`IterativeLoop` (:mod:`.iterate`): the controller;
* :data:`JUDGES`, :func:`build_judge` (:mod:`.judges`): reward sources, preference oracles, LLM-as-judge;
* :data:`BUILDERS`, :func:`build_builder` (:mod:`.builders`): best-vs-worst, all/random/large-margin pairs,
  RSO rejection sampling, SPIN, best-of-K.

See ``docs/iterative.md``.
"""

from __future__ import annotations

from .builders import BUILDERS, REAL, Group, build_builder, rso_accept
from .iterate import IterativeLoop, LoopTrainer, iterate, round_seed
from .judges import JUDGES, Judge, JudgeEnv, Judgement, LLMJudge, build_judge, parse_choice, parse_score

__all__ = [
    "BUILDERS", "JUDGES", "REAL", "Group", "IterativeLoop", "Judge", "JudgeEnv", "Judgement", "LLMJudge", "LoopTrainer", "build_builder",
    "build_judge", "iterate", "parse_choice", "parse_score", "round_seed", "rso_accept",
]
