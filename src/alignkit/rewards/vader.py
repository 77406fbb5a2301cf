"""A human-grounded sentiment reward: VADER's compound score of the completion text.

VADER (Hutto & Gilbert, 2014; the PyPI package ``vaderSentiment``) scores text with a lexicon of 7,520
words, emoticons and slang, each the mean of 10 human ratings on a -4 (most negative) .. +4 (most
positive) scale, plus a few rules (negation, "but", boosters such as "very", ALL CAPS, "!" and "?"). The
*compound* score sums the valences ``s`` of a text's words and normalises the sum to [-1, 1]::

    compound = s / sqrt(s**2 + 15)          (then rounded to 4 decimals by the package)

so one "good" (1.9) gives 0.4404 and "great ... lovely" (3.1 + 2.8) gives 0.836; text without any
lexicon word scores 0. The reward ignores the prompt: it is the sentiment of what the policy wrote.

``rl.reward: vader``, ``iterate.judge: vader``, ``alignkit eval --reward vader`` (wherever a reward spec
is accepted) use :class:`VaderSource`; it needs ``pip install 'alignkit[real]'``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import Tensor

from .sources import RewardSource, _check_lengths

VADER_PACKAGE = "vaderSentiment"


@lru_cache(maxsize=1)
def _analyzer():
    """The package's analyzer (it reads its lexicon file once)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ImportError(f"reward source 'vader' needs the PyPI package {VADER_PACKAGE}: pip install 'alignkit[real]' (or pip install {VADER_PACKAGE})") from None
    return SentimentIntensityAnalyzer()


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of a chat message / the last message of a list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return completion_text(completion[-1])
    return str(completion)


def vader_compound(text: str) -> float:
    """VADER's compound sentiment of ``text``, in [-1, 1]."""
    return float(_analyzer().polarity_scores(text)["compound"])


class VaderSource(RewardSource):
    """``score(prompts, completions)``: the VADER compound score of each completion, float32 ``[N]`` in [-1, 1]."""

    name = "vader"

    def __init__(self) -> None:
        _analyzer()  # a missing package is named when the source is built, not at the first score

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], *, progress: bool = False, **context: Any) -> Tensor:
        _check_lengths(prompts, completions)
        return torch.tensor([vader_compound(completion_text(c)) for c in completions], dtype=torch.float32)
