"""Training data for multi-objective and process reward models, generated from the sentiment task.

Multi-objective rows (``multi_objective_rows``) are of two shapes, mixed in one list:

* a **ratings row** ``{"prompt", "completion", "ratings": {"sentiment": s, "verbosity": v}}`` with the
  absolute attribute values: ``sentiment`` = the task's gold reward (mean adjective sentiment, in
  [-1, 1]), ``verbosity`` = − the number of clauses (−1 … −3, shorter is higher);
* a **pair row** ``{"prompt", "chosen", "rejected"}``, labelled by a Bradley–Terry draw at temperature
  T on *one* attribute that depends on the prompt: reviews of a phone or a game (``BREVITY_TOPICS``)
  prefer the shorter completion, every other topic the more positive one. An ideal gate therefore puts
  its weight on ``verbosity`` for those prompts and on ``sentiment`` for the rest.

Process rows (``process_rows``) are ``{"prompt", "steps", "labels"}``: the steps are the completion's
clauses, cut before each connector (``SENTIMENT_STEP_SPLIT``; the last step keeps the final ``" ."``), and
a step's label is 1 when its adjective's sentiment is > 0.

Row ``i`` of each generator uses prompt ``i`` of ``task.prompts(n, split)``, the same prompts as the
task's ``prompt`` rows, so generated rows can be attached to the trainer's prompt examples.
"""

from __future__ import annotations

import random
from typing import Any

from ..tasks import bt_probability
from ..tasks.sentiment import ADJECTIVES, SENTIMENT_ATTRIBUTES, SENTIMENT_STEP_SPLIT, SentimentTask  # noqa: F401  (re-exported)

BREVITY_TOPICS = ("phone", "game")


def _check_task(task: Any) -> None:
    if not isinstance(task, SentimentTask):
        raise ValueError(f"multi-objective and process reward data is generated only for the sentiment task (got '{getattr(task, 'name', task)}'); give data.train")


def attribute_values(task: SentimentTask, prompt: str, completion: str) -> dict[str, float]:
    """``{"sentiment": gold reward, "verbosity": −number of clauses}`` (verbosity −4 for malformed text)."""
    adjectives = task.parse(prompt, completion)
    return {"sentiment": task.gold_reward(prompt, completion), "verbosity": -float(len(adjectives)) if adjectives else -4.0}


def preferred_attribute(task: SentimentTask, prompt: str) -> str:
    """The attribute a prompt's pair labels are drawn on."""
    return "verbosity" if task.topic_of(prompt) in BREVITY_TOPICS else "sentiment"


def multi_objective_rows(task: SentimentTask, n: int, split: str, temperature: float = 0.25, pair_every: int = 2) -> list[dict]:
    """``n`` rows: every ``pair_every``-th is a pair row, the others ratings rows (see the module docstring)."""
    _check_task(task)
    rng = random.Random(f"{task.seed}-{split}-multi-objective")
    rows = []
    for i, prompt in enumerate(task.prompts(n, split)):
        if pair_every and i % pair_every == pair_every - 1:
            a = task.sample_completion(prompt, rng)
            b = task.sample_completion(prompt, rng)
            while b == a:
                b = task.sample_completion(prompt, rng)
            attribute = preferred_attribute(task, prompt)
            va, vb = attribute_values(task, prompt, a)[attribute], attribute_values(task, prompt, b)[attribute]
            p_a = bt_probability(va, vb, temperature)
            chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:
            completion = task.sample_completion(prompt, rng)
            rows.append({"prompt": prompt, "completion": completion, "ratings": attribute_values(task, prompt, completion)})
    return rows


def clause_labels(steps: list[str]) -> list[int]:
    """1 for a clause whose adjective has sentiment > 0, else 0."""
    labels = []
    for step in steps:
        words = [w for w in step.split() if w in ADJECTIVES]
        if len(words) != 1:
            raise ValueError(f"step {step!r}: expected exactly one adjective")
        labels.append(int(ADJECTIVES[words[0]] > 0))
    return labels


def process_rows(task: SentimentTask, n: int, split: str) -> list[dict]:
    """``n`` rows ``{"prompt", "steps", "labels"}``; the steps are the clauses of a base sample."""
    from .models import split_steps

    _check_task(task)
    rng = random.Random(f"{task.seed}-{split}-process")
    rows = []
    for prompt in task.prompts(n, split):
        steps = split_steps(task.sample_completion(prompt, rng), SENTIMENT_STEP_SPLIT)
        rows.append({"prompt": prompt, "steps": steps, "labels": clause_labels(steps)})
    return rows
