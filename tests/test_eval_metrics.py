"""Hand-worked checks of alignkit.evaluation.metrics."""

import math

import pytest

from alignkit.evaluation import metrics as M


def test_mean_and_se():
    mean, se = M.mean_and_se([1.0, 2.0, 3.0, 4.0])
    # var (n-1) = (2.25 + .25 + .25 + 2.25) / 3 = 5/3; se = sqrt(5/3 / 4)
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 12))
    assert M.mean_and_se([7.0]) == (7.0, 0.0)
    assert all(math.isnan(x) for x in M.mean_and_se([]))


def test_win_rate_ties_count_half():
    assert M.win_rate([1, 2, 3, 0], [0, 2, 4, -1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert M.win_rate_from_preferences([0.8, 0.5, 0.2, 1.0]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        M.win_rate([1], [1, 2])
    with pytest.raises(ValueError):
        M.win_rate_from_preferences([1.5])


def test_kl_estimators_by_hand():
    logp, ref = [-1.0, -2.0], [-1.5, -1.0]  # d = 0.5, -1.0
    out = M.kl_estimates(logp, ref)
    assert out["kl_k1"] == pytest.approx(-0.25)
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert out["kl_k3"] == pytest.approx(sum(k3) / 2)
    assert out["kl_k3"] >= 0
    same = M.kl_estimates([-3.0, -4.0], [-3.0, -4.0])
    assert same["kl_k1"] == 0 and same["kl_k3"] == 0


def test_kl_estimators_unbiased_on_a_known_pair():
    # pi = Bernoulli(0.8), ref = Bernoulli(0.5): exact KL = .8 ln 1.6 + .2 ln .4; the exact expectations
    # of k1 and k3 over pi's outcomes (weights 8:2 as 8 and 2 copies) equal it.
    logp = [math.log(0.8)] * 8 + [math.log(0.2)] * 2
    ref = [math.log(0.5)] * 10
    exact = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    out = M.kl_estimates(logp, ref)
    assert out["kl_k1"] == pytest.approx(exact)
    assert out["kl_k3"] == pytest.approx(exact)


def test_distinct_n():
    texts = ["a b c", "a b d"]  # bigrams: ab bc ab bd -> 3 distinct of 4
    assert M.distinct_n(texts, 2) == pytest.approx(0.75)
    assert M.distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert M.distinct_n(["a"], 2) == 0.0


def test_bleu_and_self_bleu():
    assert M.bleu("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert M.bleu("x y z", ["a b c"]) == 0.0
    # hypothesis "a b" vs reference "a c": p1 = 1/2, p2 = (0+1)/(1+1) = 1/2, bp = 1 -> sqrt(1/4) = 0.5
    assert M.bleu("a b", ["a c"], max_n=2) == pytest.approx(0.5)
    # brevity penalty: hyp "a" vs ref "a b": p1 = 1, bp = exp(1 - 2) (order 2 has no hypothesis n-gram)
    assert M.bleu("a", ["a b"], max_n=2) == pytest.approx(math.exp(-1))
    assert M.self_bleu(["a b c d"] * 3) == pytest.approx(1.0)
    assert M.self_bleu(["a b", "c d"]) == 0.0
    assert math.isnan(M.self_bleu(["only one"]))


def test_implicit_reward_accuracy():
    # implicit rewards (beta 0.5): chosen .5*(−1+2)=.5, .5*(−3+3)=0, .5*(−2+1)=−.5
    #                              rejected .5*(−2+2)=0, .5*(−3+3)=0, .5*(−1+1)=0  -> 1, 1/2, 0
    acc = M.implicit_reward_accuracy([-1, -3, -2], [-2, -3, -1], [-2, -3, -1], [-2, -3, -1], beta=0.5)
    assert acc == pytest.approx(0.5)
    assert M.implicit_rewards([-1.0], [-3.0], beta=0.1) == [pytest.approx(0.2)]


def test_logprob_curves():
    records = [
        {"step": 1, "logps/chosen": -5.0, "logps/rejected": -5.5},
        {"step": 2, "eval/logps/chosen": -4.0},
        {"step": 3, "loss": 0.1},
    ]
    curves = M.logprob_curves(records)
    assert curves == {"logps/chosen": [(1, -5.0)], "logps/rejected": [(1, -5.5)], "eval/logps/chosen": [(2, -4.0)]}
