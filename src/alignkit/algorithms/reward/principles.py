"""``reward.type: principles``: a principle-following reward model ``r(P, x, y)`` (SALMON; Sun et al. 2024,
"SALMON: Self-Alignment with Principle-Following Reward Models").

The model reads a list of natural-language principles ``P`` with the prompt (rendered as ``- principle``
lines before it, :func:`alignkit.rewards.conditioned.conditioned_prompt`) and is trained with Bradley–Terry
on pairs judged *under* a principle set: ``P(y_c ≻ y_r | x, P) = σ(r(P, x, y_c) − r(P, x, y_r))``. SALMON
labels its pairs with an AI judge asked to follow a sampled subset of its principles; here the judge is
programmatic (:data:`PRINCIPLES`: each principle has a score on the task's language) and the label is a
Bradley–Terry draw on the summed scores of the pair's principles, ``σ((s_P(a) − s_P(b)) / T)``. At RL time
the user writes the principles the policy should follow (``{type: model, path: ..., principles: [...]}``);
swapping "positive tone" for "negative tone" flips the model's ranking (``tests/test_pluralistic_conditioned.py``).

Rows: pairs with the principle list in ``reward.principles_key`` (default ``principles``; a list of strings,
or one string). With no ``data.train`` the rows come from a task in the sentiment language (``sentiment``,
``pluralistic``, ...): each pair gets a tone principle (positive or negative) with probability 0.8 and a
length principle (concise or detailed) with probability 0.5, at least one of them, in a random order.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from ...tasks._labels import bt_probability
from ...tasks.sentiment import ADJECTIVES, SentimentTask
from .base import REWARD_TYPES
from .context import ConditionedRewardModelling, prompt_pairs

Scorer = Callable[[Any, str, str], float]


def _tone(task: Any, prompt: str, completion: str) -> float | None:
    """Mean sentiment of the adjectives in [−1, 1]; None for text outside the language."""
    adjectives = SentimentTask.parse(task, prompt, completion)
    return None if adjectives is None else sum(ADJECTIVES[a] for a in adjectives) / len(adjectives)


def _length(task: Any, prompt: str, completion: str) -> float | None:
    """Clauses − 2 (−1 for one clause, +1 for three); None for text outside the language."""
    adjectives = SentimentTask.parse(task, prompt, completion)
    return None if adjectives is None else float(len(adjectives) - 2)


# name -> (the principle's text, its score of a well-formed completion)
PRINCIPLES: dict[str, tuple[str, Scorer]] = {
    "positive": ("Prefer a positive tone.", lambda t, p, c: _tone(t, p, c)),
    "negative": ("Prefer a negative tone.", lambda t, p, c: -_tone(t, p, c)),
    "concise": ("Prefer one short clause.", lambda t, p, c: -_length(t, p, c)),
    "detailed": ("Prefer several clauses.", lambda t, p, c: _length(t, p, c)),
}
TONE, LENGTH = ("positive", "negative"), ("concise", "detailed")


def principle_text(names: list[str]) -> list[str]:
    """The principle list (texts) of principle names."""
    unknown = [n for n in names if n not in PRINCIPLES]
    if unknown:
        raise KeyError(f"unknown principle {unknown[0]!r}; allowed: {', '.join(PRINCIPLES)}")
    return [PRINCIPLES[n][0] for n in names]


def principle_score(task: Any, names: list[str], prompt: str, completion: str) -> float:
    """``s_P(y) = Σ_{p ∈ P} s_p(y)``; malformed text scores ``(−1 − malformed_penalty)`` per principle."""
    if SentimentTask.parse(task, prompt, completion) is None:
        return -(1.0 + getattr(task, "malformed_penalty", 1.0)) * len(names)
    return sum(PRINCIPLES[n][1](task, prompt, completion) for n in names)


def sample_principles(rng: random.Random) -> list[str]:
    """A tone principle w.p. 0.8, a length principle w.p. 0.5 (at least one), shuffled."""
    names = []
    if rng.random() < 0.8:
        names.append(rng.choice(TONE))
    if rng.random() < 0.5 or not names:
        names.append(rng.choice(LENGTH))
    rng.shuffle(names)
    return names


@REWARD_TYPES.register("principles")
class PrinciplesRewardModelling(ConditionedRewardModelling):
    reward_type = "principles"
    condition = "principles"

    @property
    def key(self) -> str:
        return self.cfg.principles_key

    def task_rows(self, task, n: int, split: str) -> list[dict]:
        """Row ``i``: prompt ``i``, two base samples, a sampled principle set, a BT label on its summed scores."""
        if not isinstance(task, SentimentTask):
            raise ValueError(f"reward.type=principles generates its rows from a task in the sentiment language (sentiment, pluralistic), "
                             f"not {task.name!r}; give data.train pairs with a principles field instead")
        temperature = self.recipe.task.label_temperature
        rows = []
        for prompt, rng, a, b in prompt_pairs(task, n, split, "principles"):
            names = sample_principles(rng)
            p_a = bt_probability(principle_score(task, names, prompt, a), principle_score(task, names, prompt, b), temperature)
            chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, self.key: principle_text(names), "principle_names": "+".join(sorted(names))})
        return rows
