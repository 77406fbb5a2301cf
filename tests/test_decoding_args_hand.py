"""ARGS (Khanov et al. 2024) on a hand-made distribution: the guided distribution of a three-token vocabulary
written out by hand, ARGS-greedy's choice, and that a token outside the top-k is never written."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.decoding.guided import ARGSGuide
from alignkit.rollout import Sampler, decode
from test_decoding import pytestmark  # noqa: F401  (the one-thread marker)
from test_decoding_strategies import Fixed, check_distribution, one_token


class LastTokenText:
    """A hand-made tokenizer: token ids written as numbers, space-separated."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


class TokenReward:
    """A hand-made reward source: the reward of a completion is table[its last token]."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def score(self, prompts, completions):
        self.calls.append(len(completions))
        return torch.tensor([self.table[int(c.split()[-1])] for c in completions])


def test_args_stochastic_by_hand():
    # base (0.5, 0.3, 0.2) over {0, 1, 2}, k = 2, w = 1, rewards (1, 0, 9): token 2 is outside the top-2 and never
    # written; p(0) = 0.5 e / (0.5 e + 0.3)
    source = TokenReward([1.0, 0.0, 9.0])
    guide = ARGSGuide(source, LastTokenText(), [""] * 4000, k=2, w=1.0)
    out = one_token(Fixed([0.5, 0.3, 0.2]), guide)
    p0 = 0.5 * math.e / (0.5 * math.e + 0.3)
    check_distribution(out, [p0, 1 - p0, 0.0])
    assert all(d.completion_ids[0] != 2 for d in out)
    assert source.calls == [2 * 4000]  # all rows x k candidates in one reward call per step


@pytest.mark.parametrize("w, token", [(1.0, 1), (0.2, 0)])
def test_args_greedy_by_hand(w, token):
    # scores: log 0.5 + w * 0 = -0.693 and log 0.3 + w * 2: -1.204 + 2 w; ARGS-greedy takes 1 for w = 1, 0 for w = 0.2
    guide = ARGSGuide(TokenReward([0.0, 2.0, 0.0]), LastTokenText(), [""] * 3, k=2, w=w)
    out = decode(Fixed([0.5, 0.3, 0.2]), [[0]] * 3, None, Sampler(greedy=True), 1, [], guide=guide)
    assert [d.completion_ids for d in out] == [[token]] * 3
