"""Multi-objective controlled generation: sentiment against brevity, two gold attributes that trade off.

The language is the sentiment task's (same prompts, grammar and tokenizer corpus). Two gold attributes:

* ``sentiment`` — the *sum* of the adjectives' sentiment values divided by ``max_clauses``, in [-1, 1]:
  every extra positive clause adds sentiment, so the most positive review is also the longest;
* ``brevity`` — ``1 − (clauses − 1) / (max_clauses − 1)``, in [0, 1]: one clause is 1, three clauses 0.

Their weighted sum ``w_s · sentiment + w_b · brevity`` (``weights``, default 0.5/0.5) is the scalar gold
reward. With three clauses of "superb" the policy gets sentiment 1 and brevity 0; with one, 1/3 and 1, so
the best length depends on the weighting: three clauses when ``w_s/(w_s+w_b) > 0.6``, else one. Text
outside the language scores ``−1 − malformed_penalty`` on both attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import TASKS
from .sentiment import ADJECTIVES, SentimentTask

ATTRIBUTES = ("sentiment", "brevity")


@TASKS.register("multi_objective")
@dataclass
class MultiObjectiveTask(SentimentTask):
    """Sentiment vs brevity on the sentiment language. ``weights`` = (w_sentiment, w_brevity).
    Pairs are Bradley–Terry draws on the weighted gold reward (:class:`~alignkit.tasks.base.TaskBase`)."""

    weights: tuple[float, float] = (0.5, 0.5)
    name: str = field(default="multi_objective", init=False)
    label_salt = "mo"
    reward_attributes = None  # its gold attributes (sentiment, brevity) are not the rated reward-model data's
    reward_step_split = None

    @classmethod
    def from_config(cls, config: Any) -> "MultiObjectiveTask":
        weights = getattr(config, "objective_weights", None)
        return cls(seed=config.seed, **({"weights": tuple(weights)} if weights else {}))

    def __post_init__(self) -> None:
        if len(self.weights) != 2 or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"multi_objective weights must be two non-negative numbers, not both 0 (got {self.weights})")
        self.weights = (float(self.weights[0]), float(self.weights[1]))

    def attribute_rewards(self, prompt: str, completion: str) -> dict[str, float]:
        """Both gold attributes of one completion."""
        adjectives = self.parse(prompt, completion)
        if adjectives is None:
            bad = -1.0 - self.malformed_penalty
            return {"sentiment": bad, "brevity": bad}
        sentiment = sum(ADJECTIVES[a] for a in adjectives) / self.max_clauses
        brevity = 1.0 - (len(adjectives) - 1) / max(self.max_clauses - 1, 1)
        return {"sentiment": sentiment, "brevity": max(brevity, 0.0)}

    def gold_reward(self, prompt: str, completion: str, weights: tuple[float, float] | None = None) -> float:
        w = weights or self.weights
        a = self.attribute_rewards(prompt, completion)
        return w[0] * a["sentiment"] + w[1] * a["brevity"]

    def gold_rewards(self, prompts: list[str], completions: list[str], per_attribute: bool = False, weights: tuple[float, float] | None = None):
        """The weighted gold reward of each completion (a list, the interface every task shares), or with
        ``per_attribute=True`` a dict ``{"sentiment": [...], "brevity": [...], "weighted": [...]}``."""
        if not per_attribute:
            return [self.gold_reward(p, c, weights) for p, c in zip(prompts, completions, strict=True)]
        out: dict[str, list[float]] = {k: [] for k in (*ATTRIBUTES, "weighted")}
        w = weights or self.weights
        for p, c in zip(prompts, completions, strict=True):
            a = self.attribute_rewards(p, c)
            out["sentiment"].append(a["sentiment"])
            out["brevity"].append(a["brevity"])
            out["weighted"].append(w[0] * a["sentiment"] + w[1] * a["brevity"])
        return out
