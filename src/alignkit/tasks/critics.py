"""Programmatic critics: natural-language judgments, good/bad character spans and revisions, written from
the parts of a built-in task's gold reward, so that every language-feedback method has data offline.

A critic maps ``(prompt, completion)`` to a :class:`Critique`: the sentence(s) a careful annotator would
write, the character spans of the completion that the judgment is about (``good`` or ``bad``), a revision
that does what the critique asks, whether the judgment is positive, and the gold reward. Critics are
registered by task name in :data:`CRITICS`.

* **sentiment** (the gold reward is the mean sentiment of the review's adjectives): the critique names the
  negative words and what they describe ("the review calls the price terrible and the soup dull, which
  is negative"), the neutral ones, and the positive ones; when nothing is positive it says so ("it never
  says anything good about the soup"). Bad spans are the adjectives of negative sentiment, good spans
  those of positive sentiment (neutral adjectives get no span). The revision replaces every adjective
  that is not positive by a positive one (drawn from a stream seeded by the row). A completion outside
  the language is criticised as such, its whole text is one bad span, and its revision is a well-formed
  positive clause. The judgment is positive when every adjective is positive.
* **arithmetic** (the gold reward is an exact answer followed by ``" ."``): the critique checks the
  number ("the answer 12 is wrong: 7 + 4 = 11, so it is 1 too high"); the number is the span (good if
  right, bad if wrong); the revision is the right answer.

Rows for training (:func:`feedback_rows`): ``critique`` rows (``prompt``, ``completion``, ``critique``,
``revision``, ``label``, ``score``) and ``spans`` rows (``prompt``, ``completion``, ``spans``,
``critique``) over the task's base distribution, or over a model's samples (``alignkit critique``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.registry import Registry
from .arithmetic import ArithmeticTask
from .sentiment import ADJECTIVES, TOPICS, SentimentTask

__all__ = ["CRITICS", "HELD_OUT_PROFILES", "PROFILES", "Critique", "critic_for", "feedback_rows", "profile_reward", "profile_rows"]


@dataclass
class Critique:
    """A judgment of one completion: ``text`` (sentences), ``spans`` (``{start, end, label}`` with label
    ``good``/``bad``, character offsets into the completion, end exclusive), ``revision`` (a completion
    that follows the critique; None when there is nothing to fix), ``positive`` and the gold ``score``."""

    text: str
    spans: list[dict[str, Any]] = field(default_factory=list)
    revision: str | None = None
    positive: bool = False
    score: float = 0.0

    def critique_row(self, prompt: str, completion: str) -> dict[str, Any]:
        row = {"prompt": prompt, "completion": completion, "critique": self.text, "label": self.positive, "score": self.score}
        if self.revision is not None and self.revision != completion:
            row["revision"] = self.revision
        return row

    def spans_row(self, prompt: str, completion: str) -> dict[str, Any]:
        return {"prompt": prompt, "completion": completion, "spans": self.spans, "critique": self.text}


CRITICS: Registry[Callable[[Any], Callable[[str, str, random.Random], Critique]]] = Registry("critic")


def critic_for(task: Any) -> Callable[[str, str, random.Random], Critique]:
    """The critic of ``task`` (a function ``(prompt, completion, rng) -> Critique``)."""
    if task.name not in CRITICS:
        raise ValueError(f"no programmatic critic for the {task.name} task; critics exist for: {', '.join(CRITICS.names())}")
    return CRITICS.get(task.name)(task)


# --------------------------------------------------------------------------------------------------
# sentiment
# --------------------------------------------------------------------------------------------------
_CLAUSE = re.compile(r"the (\w+) was (\w+)")
POSITIVE = sorted(a for a, v in ADJECTIVES.items() if v > 0)


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentiment_clauses(task: SentimentTask, prompt: str, completion: str) -> list[tuple[str, str, int, int]] | None:
    """``(noun, adjective, start, end)`` per clause (the adjective's character span), None outside the language."""
    if task.parse(prompt, completion) is None:
        return None
    return [(m.group(1), m.group(2), m.start(2), m.end(2)) for m in _CLAUSE.finditer(completion)]


@CRITICS.register("sentiment")
def sentiment_critic(task: SentimentTask) -> Callable[[str, str, random.Random], Critique]:
    def critique(prompt: str, completion: str, rng: random.Random) -> Critique:
        score = task.gold_reward(prompt, completion)
        clauses = _sentiment_clauses(task, prompt, completion)
        topic = task.topic_of(prompt) or "subject"
        if clauses is None:
            noun = TOPICS.get(topic, ["soup"])[0]
            text = (f"this is not a review in the expected form: each clause should read 'the <part of the {topic}> was <word>', "
                    "joined by 'and' or 'but' and ended by ' .'")
            spans = [{"start": 0, "end": len(completion), "label": "bad"}] if completion else []
            return Critique(text, spans, f" the {noun} was {rng.choice(POSITIVE)} .", False, score)
        bad = [(n, a) for n, a, _, _ in clauses if ADJECTIVES[a] < 0]
        neutral = [(n, a) for n, a, _, _ in clauses if ADJECTIVES[a] == 0]
        good = [(n, a) for n, a, _, _ in clauses if ADJECTIVES[a] > 0]
        sentences = []
        if bad:
            words = _listing([f"the {n} {a}" for n, a in bad])
            sentences.append(f"the review calls {words}, which {'is' if len(bad) == 1 else 'are'} negative")
        if neutral:
            words = _listing([f"'{a}'" for _, a in neutral])
            sentences.append(f"{words} about the {_listing([n for n, _ in neutral])} {'says' if len(neutral) == 1 else 'say'} nothing good or bad")
        if good:
            words = _listing([f"the {n} {a}" for n, a in good])
            sentences.append(f"{'it does call' if bad or neutral else 'the review is positive throughout: it calls'} {words}, which is good")
        else:
            sentences.append(f"it never says anything good about the {topic}")
        text = "; ".join(sentences) + "."
        spans = [{"start": s, "end": e, "label": "good" if ADJECTIVES[a] > 0 else "bad"} for _, a, s, e in clauses if ADJECTIVES[a] != 0]
        revision = completion
        for _, a, s, e in reversed(clauses):  # right to left, so earlier offsets stay valid
            if ADJECTIVES[a] <= 0:
                revision = revision[:s] + rng.choice(POSITIVE) + revision[e:]
        positive = not bad and not neutral
        return Critique(text, spans, None if positive else revision, positive, score)

    return critique


# --------------------------------------------------------------------------------------------------
# arithmetic
# --------------------------------------------------------------------------------------------------
_ANSWER = re.compile(r"-?\d+")


@CRITICS.register("arithmetic")
def arithmetic_critic(task: ArithmeticTask) -> Callable[[str, str, random.Random], Critique]:
    def critique(prompt: str, completion: str, rng: random.Random) -> Critique:
        answer = task.answer(prompt)
        score = task.gold_reward(prompt, completion)
        problem = prompt.strip().rstrip("=").strip()
        value = task.parse(prompt, completion)
        if value is None:
            m = _ANSWER.search(completion)
            text = f"the answer should be a single number followed by ' .'; {problem} = {answer}."
            spans = [{"start": m.start(), "end": m.end(), "label": "bad"}] if m else ([{"start": 0, "end": len(completion), "label": "bad"}] if completion else [])
            return Critique(text, spans, f" {answer} .", False, score)
        m = _ANSWER.search(completion)
        span = {"start": m.start(), "end": m.end()}
        if value == answer:
            return Critique(f"the answer {value} is right: {problem} = {answer}.", [{**span, "label": "good"}], None, True, score)
        off = value - answer
        text = f"the answer {value} is wrong: {problem} = {answer}, so it is {abs(off)} too {'high' if off > 0 else 'low'}."
        return Critique(text, [{**span, "label": "bad"}], f" {answer} .", False, score)

    return critique


# --------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------
FEEDBACK_KINDS = ("critique", "spans")


def critique_completions(task: Any, prompts: list[str], completions: list[str], kind: str = "critique", seed: int | str = 0) -> list[dict]:
    """One ``kind`` row (``critique`` or ``spans``) per (prompt, completion), judged by the task's critic;
    empty completions are left out. The revisions' random words come from a stream named by ``seed``."""
    if kind not in FEEDBACK_KINDS:
        raise ValueError(f"critic rows are of kind {' or '.join(FEEDBACK_KINDS)}, not {kind!r}")
    critic = critic_for(task)
    rng = random.Random(f"{seed}-critic")
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        if not completion.strip():
            continue
        judged = critic(prompt, completion, rng)
        rows.append(judged.critique_row(prompt, completion) if kind == "critique" else judged.spans_row(prompt, completion))
    return rows


def feedback_rows(task: Any, kind: str, n: int, split: str) -> list[dict]:
    """``n`` rows of ``kind`` over the task's base distribution (prompt ``i`` of ``task.prompts(n, split)``)."""
    rng = random.Random(f"{task.seed}-{split}-feedback")
    prompts = task.prompts(n, split)
    completions = [task.sample_completion(p, rng) for p in prompts]
    return critique_completions(task, prompts, completions, kind, seed=f"{task.seed}-{split}")


# --------------------------------------------------------------------------------------------------
# value profiles: a reader's tone and length preferences, for system-message-conditioned training
# --------------------------------------------------------------------------------------------------
PROFILE_TONES = {"warm": 1.0, "harsh": -1.0}  # the sign the reader gives the review's sentiment
PROFILE_LENGTHS = {"short": 1, "medium": 2, "long": 3}  # clauses the reader wants
PROFILES = tuple({"tone": t, "length": n} for t in PROFILE_TONES for n in PROFILE_LENGTHS)
HELD_OUT_PROFILES = ({"tone": "harsh", "length": "long"}, {"tone": "warm", "length": "medium"})  # never in the training rows


def check_profile(profile: Any) -> dict[str, str]:
    if not isinstance(profile, dict) or profile.get("tone") not in PROFILE_TONES or profile.get("length") not in PROFILE_LENGTHS:
        raise ValueError(f"a sentiment value profile is {{tone: {' | '.join(PROFILE_TONES)}, length: {' | '.join(PROFILE_LENGTHS)}}}, got {profile!r}")
    return profile


def profile_reward(task: SentimentTask, prompt: str, completion: str, profile: dict[str, str]) -> float:
    """The gold reward of a review for a reader with ``profile``: ``tone · mean sentiment − |clauses − wanted| / 2``
    (in [−2, 1]); ``−1 − malformed_penalty − 1`` for text outside the language."""
    check_profile(profile)
    adjectives = task.parse(prompt, completion)
    if adjectives is None:
        return -2.0 - task.malformed_penalty
    tone = PROFILE_TONES[profile["tone"]] * sum(ADJECTIVES[a] for a in adjectives) / len(adjectives)
    return tone - abs(len(adjectives) - PROFILE_LENGTHS[profile["length"]]) / 2


def profile_demonstration(task: SentimentTask, prompt: str, profile: dict[str, str], rng: random.Random) -> str:
    """A review that suits ``profile``: as many clauses as it wants, adjectives of the sign its tone likes."""
    nouns = TOPICS.get(task.topic_of(prompt) or "soup", TOPICS["soup"])
    sign = PROFILE_TONES[check_profile(profile)["tone"]]
    words = sorted(a for a, v in ADJECTIVES.items() if v * sign > 0)
    clauses = []
    for i in range(PROFILE_LENGTHS[profile["length"]]):
        clause = f"the {rng.choice(nouns)} was {rng.choice(words)}"
        clauses.append(f"{rng.choice(('and', 'but'))} {clause}" if i else clause)
    return " " + " ".join(clauses) + " ."


def profile_rows(task: SentimentTask, kind: str, n: int, split: str, profiles=None, temperature: float = 0.25) -> list[dict]:
    """``n`` rows with a ``system`` field (one of ``profiles``, default every profile but :data:`HELD_OUT_PROFILES`):
    ``sft`` rows hold a demonstration that suits the profile; ``pair`` rows two base samples labelled by a
    Bradley–Terry draw on :func:`profile_reward`. Read them with ``data.format: system``."""
    from ._labels import bt_probability

    if not isinstance(task, SentimentTask):
        raise ValueError(f"value profiles are defined for the sentiment task, not {task.name}")
    profiles = [check_profile(p) for p in (profiles or [p for p in PROFILES if p not in HELD_OUT_PROFILES])]
    rng = random.Random(f"{task.seed}-{split}-profiles-{kind}")
    rows = []
    for prompt in task.prompts(n, split):
        profile = dict(rng.choice(profiles))
        if kind == "sft":
            rows.append({"prompt": prompt, "completion": profile_demonstration(task, prompt, profile, rng), "system": profile})
        elif kind == "pair":
            a, b = task.sample_completion(prompt, rng), task.sample_completion(prompt, rng)
            while b == a:
                b = task.sample_completion(prompt, rng)
            p_a = bt_probability(profile_reward(task, prompt, a, profile), profile_reward(task, prompt, b, profile), temperature)
            chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "system": profile})
        else:
            raise ValueError(f"profile rows are sft or pair rows, not {kind!r}")
    return rows
