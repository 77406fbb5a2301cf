"""Losses of the language-feedback methods, checked against numbers worked out by hand from the papers' formulas."""

import math

import pytest
import torch

from alignkit.objectives.feedback import cut_loss, ratio_flags, unlikelihood, weighted_nll

LOG = math.log


def test_unlikelihood_is_minus_log_one_minus_p_without_cancellation():
    p = torch.tensor([0.25, 0.5, 0.999999, 1e-8], dtype=torch.float64)
    got = unlikelihood(torch.log(p))
    # -log(1 - p): 0.287682, 0.693147, 13.815511 (p = 1 - 1e-6), 1e-8
    assert got.tolist() == pytest.approx([0.2876821, 0.6931472, 13.8155106, 1e-8], rel=1e-4)
    assert torch.isfinite(unlikelihood(torch.zeros(1))).all()  # probability 1 is capped, not infinite


def test_cut_loss_unlikelihood_on_flagged_tokens_and_likelihood_elsewhere():
    # one sequence: a prompt position (not a target), then tokens of probability 0.5, 0.25 (flagged), 0.8
    logp = torch.tensor([[0.0, LOG(0.5), LOG(0.25), LOG(0.8)]])
    mask = torch.tensor([[0, 1, 1, 1]])
    flagged = torch.tensor([[1, 0, 1, 0]])  # the prompt's flag is ignored: it is not a target
    # -log 0.5 - log 0.8 + 2 * (-log(1 - 0.25)) = 0.693147 + 0.223144 + 0.575364
    assert cut_loss(logp, mask, flagged, unlikelihood_weight=2.0).item() == pytest.approx(1.4916553, rel=1e-6)
    # nothing flagged: plain NLL
    assert cut_loss(logp, mask, torch.zeros_like(flagged)).item() == pytest.approx(-(LOG(0.5) + LOG(0.25) + LOG(0.8)), rel=1e-6)


def test_cut_unlikelihood_pushes_a_flagged_token_down_and_likelihood_pulls_others_up():
    logits = torch.zeros(2, 3, requires_grad=True)  # two positions, three-token vocabulary
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all[[0, 1], [0, 1]][None]  # target token 0 at position 0, token 1 at position 1
    cut_loss(logp, torch.ones(1, 2), torch.tensor([[1, 0]])).backward()
    assert logits.grad[0, 0] > 0  # gradient descent lowers the flagged token's logit
    assert logits.grad[1, 1] < 0  # and raises the unflagged target's


def test_ratio_flags_mark_tokens_the_judgment_makes_more_likely():
    judged = torch.log(torch.tensor([0.6, 0.2, 0.3]))
    plain = torch.log(torch.tensor([0.5, 0.2, 0.1]))
    # λ = 1.1: 0.6 > 0.55 yes; 0.2 > 0.22 no; 0.3 > 0.11 yes
    assert ratio_flags(judged, plain, 1.1).tolist() == [True, False, True]
    assert ratio_flags(judged, plain, 4.0).tolist() == [False, False, False]  # 0.3 < 0.4
    with pytest.raises(ValueError, match="positive"):
        ratio_flags(judged, plain, 0.0)


def test_weighted_nll_is_the_class_reward_times_the_nll():
    logp = torch.tensor([[0.0, LOG(0.5), LOG(0.5)], [0.0, LOG(0.1), 0.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    # expert (r = 1): -2 log 0.5 = 1.386294; other (r = 0.1): 0.1 * -log 0.1 = 0.230259
    got = weighted_nll(logp, mask, torch.tensor([1.0, 0.1]))
    assert got.tolist() == pytest.approx([1.3862944, 0.2302585], rel=1e-6)
