"""Reward losses (alignkit.objectives.reward) and transforms (alignkit.rewards.transforms).

Expected values are worked by hand from the formulas with plain ``math`` on scalars.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.objectives.reward import REWARD_LOSSES, pair_accuracy, register_reward_loss, reward_loss
from alignkit.rewards import transforms as T


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_registry_names():
    assert {"bradley_terry", "hinge", "centering", "regression", "plackett_luce", "preference", "process"} <= set(REWARD_LOSSES)
    with pytest.raises(KeyError):
        reward_loss("nope", t(1.0), t(0.0))
    with pytest.raises(TypeError):
        reward_loss("bradley_terry", t(1.0), t(0.0), beta=1.0)
    with pytest.raises(ValueError):
        register_reward_loss("bradley_terry")(lambda a, b: a)


def test_bradley_terry_plain_and_margin():
    # r_c = 1.5, r_r = 0.5: -log σ(1.0) = log(1 + e^-1) = 0.31326...
    got = reward_loss("bradley_terry", t(1.5, -0.2), t(0.5, 0.3))
    assert got[0].item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-12)
    assert got[1].item() == pytest.approx(math.log(1 + math.exp(0.5)), abs=1e-12)  # d = -0.5
    # with margin m = 0.4 on the first pair: -log σ(1.0 - 0.4) = log(1 + e^-0.6)
    got = reward_loss("bradley_terry", t(1.5, -0.2), t(0.5, 0.3), margin=t(0.4, 0.0))
    assert got[0].item() == pytest.approx(math.log(1 + math.exp(-0.6)), abs=1e-12)
    assert got[1].item() == pytest.approx(math.log(1 + math.exp(0.5)), abs=1e-12)


def test_bradley_terry_label_smoothing():
    eps, d = 0.1, 1.0
    want = -(1 - eps) * log_sigmoid(d) - eps * log_sigmoid(-d)  # 0.9·0.31326 + 0.1·1.31326 = 0.41326
    assert want == pytest.approx(0.9 * 0.3132616875 + 0.1 * 1.3132616875, abs=1e-9)
    got = reward_loss("bradley_terry", t(1.0), t(0.0), label_smoothing=eps)
    assert got.item() == pytest.approx(want, abs=1e-12)


def test_hinge():
    # max(0, 1 + m - d): d = 0.25 -> 0.75; d = 2 -> 0; with m = 0.5 and d = 1 -> 0.5
    assert reward_loss("hinge", t(0.25, 2.0), t(0.0, 0.0)).tolist() == pytest.approx([0.75, 0.0])
    assert reward_loss("hinge", t(1.0), t(0.0), margin=0.5).item() == pytest.approx(0.5)


def test_centering():
    # 0.01 · (1.5 + 0.5)^2 = 0.04 ; 0.01 · (-1 + 1)^2 = 0
    assert reward_loss("centering", t(1.5, -1.0), t(0.5, 1.0), coef=0.01).tolist() == pytest.approx([0.04, 0.0])


def test_centering_gradient_pulls_to_zero():
    rc, rr = t(2.0).requires_grad_(), t(1.0).requires_grad_()
    reward_loss("centering", rc, rr, coef=0.5).sum().backward()
    # d/dr_c 0.5 (r_c + r_r)^2 = (r_c + r_r) = 3
    assert rc.grad.item() == pytest.approx(3.0) and rr.grad.item() == pytest.approx(3.0)


def test_regression():
    assert reward_loss("regression", t(1.0, 0.5), t(0.0, 1.0)).tolist() == pytest.approx([1.0, 0.25])


def test_plackett_luce_three_items():
    rewards, scores = t(0.0, 1.0, 2.0), t(1.0, 3.0, 2.0)  # ranking by score: item1 > item2 > item0
    r1, r2, r0 = 1.0, 2.0, 0.0
    want = -(r1 - math.log(math.exp(r1) + math.exp(r2) + math.exp(r0))) - (r2 - math.log(math.exp(r2) + math.exp(r0)))
    assert reward_loss("plackett_luce", rewards, scores).item() == pytest.approx(want, abs=1e-12)
    # two items: PL reduces to BT
    assert reward_loss("plackett_luce", t(1.5, 0.5), t(1.0, 0.0)).item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-12)


def test_preference_and_process():
    assert reward_loss("preference", t(0.0)).item() == pytest.approx(math.log(2.0))
    # soft label 0.25 on logit 1: -(0.25 log σ(1) + 0.75 log σ(-1))
    want = -(0.25 * log_sigmoid(1.0) + 0.75 * log_sigmoid(-1.0))
    assert reward_loss("preference", t(1.0), t(0.25)).item() == pytest.approx(want, abs=1e-12)
    logits = torch.tensor([[2.0, -1.0, 9.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    got = reward_loss("process", logits, labels, mask)
    want0 = (-log_sigmoid(2.0) - log_sigmoid(1.0)) / 2
    assert got.tolist() == pytest.approx([want0, 0.0], abs=1e-12)


def test_pair_accuracy_ties_half():
    assert pair_accuracy(t(1.0, 0.0, 0.5), t(0.0, 1.0, 0.5)).tolist() == [1.0, 0.0, 0.5]


# --------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------
def test_log_sigmoid_centre_and_sum():
    assert T.log_sigmoid_centre(t(1.0), 1.0).item() == pytest.approx(math.log(0.5))
    got = T.sum_transformed([t(2.0), t(-1.0)], [0.5, 0.0], weights=[1.0, 2.0])
    assert got.item() == pytest.approx(log_sigmoid(1.5) + 2 * log_sigmoid(-1.0), abs=1e-12)
    # "good on all": being much better on one objective cannot make up for being bad on the other
    balanced = T.sum_transformed([t(1.0), t(1.0)], [0.0, 0.0])
    lopsided = T.sum_transformed([t(10.0), t(-8.0)], [0.0, 0.0])
    assert balanced.item() > lopsided.item()


def test_ensemble_reductions():
    s = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64)  # member std (population) 1 and 0
    assert T.ensemble_reduce(s, "mean").tolist() == [2.0, 2.0]
    assert T.ensemble_reduce(s, "mean_minus_std", lam=0.5).tolist() == pytest.approx([1.5, 2.0])
    assert T.ensemble_reduce(s, "min").tolist() == [1.0, 2.0]
    assert T.ensemble_reduce(s, "uncertainty_weighted", lam=1.0).tolist() == pytest.approx([2.0 / 2.0, 2.0])
    with pytest.raises(KeyError):
        T.ensemble_reduce(s, "max")


def test_length_clip_whiten():
    assert T.length_penalty(t(1.0, 1.0), [10, 30], coef=0.01, target=20).tolist() == pytest.approx([1.0, 0.9])
    assert T.length_penalty(t(1.0), [10], coef=0.01).tolist() == pytest.approx([0.9])
    assert T.clip(t(-5.0, 0.5, 5.0), -1.0, 1.0).tolist() == [-1.0, 0.5, 1.0]
    w = T.whiten(t(1.0, 3.0))  # mean 2, population std 1
    assert w.tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)
    assert T.whiten(t(1.0, 3.0), shift_mean=False).tolist() == pytest.approx([1.0, 3.0], abs=1e-6)


# --------------------------------------------------------------------------------------------------
# multi-objective and process reward models
# --------------------------------------------------------------------------------------------------
def test_attribute_regression_masked():
    pred = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 3.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 4.0], [0.5, 0.0], [0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [0, 1], [0, 0]])
    # row 0: ((1-0)^2 + (2-4)^2) / 2 = 2.5 ; row 1: only the second rating, (-1-0)^2 = 1 ; row 2: none -> 0
    assert reward_loss("attribute_regression", pred, target, mask).tolist() == pytest.approx([2.5, 1.0, 0.0])
    # no mask: the plain mean over attributes
    assert reward_loss("attribute_regression", pred, target).tolist() == pytest.approx([2.5, 0.5, 9.0])


def test_gated_reward_and_bradley_terry():
    from alignkit.objectives.reward import gated_reward

    gate = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    chosen = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    rejected = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    # r_c = 2 · (0.75·1 + 0.25·(−2)) = 0.5 ; r_r = 2 · (0 + 0.25·2) = 1.0
    assert gated_reward(gate, chosen, 2.0).tolist() == pytest.approx([0.5])
    assert gated_reward(gate, rejected, 2.0).tolist() == pytest.approx([1.0])
    # −log σ(0.5 − 1.0) = log(1 + e^0.5)
    got = reward_loss("gated_bradley_terry", gate, chosen, rejected, scale=2.0)
    assert got.item() == pytest.approx(math.log(1 + math.exp(0.5)), abs=1e-12)
    # a one-hot gate reduces to plain BT on that attribute: −log σ(1 − 0)
    one_hot = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert reward_loss("gated_bradley_terry", one_hot, chosen, rejected).item() == pytest.approx(-log_sigmoid(1.0), abs=1e-12)
    # the gradient on the gate logits favours the attribute on which chosen beats rejected
    logits = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    reward_loss("gated_bradley_terry", torch.softmax(logits, -1), chosen, rejected).sum().backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]


def test_split_steps_and_aggregates():
    from alignkit.rewards.models import aggregate_steps, split_steps
    from alignkit.rewards.task_data import SENTIMENT_STEP_SPLIT, clause_labels

    text = " the soup was great and the bread was bad but the staff was fine ."
    steps = split_steps(text, SENTIMENT_STEP_SPLIT)
    assert steps == [" the soup was great", " and the bread was bad", " but the staff was fine ."]
    assert "".join(steps) == text and clause_labels(steps) == [1, 0, 1]
    assert split_steps("step 1\nstep 2\n", r"\n") == ["step 1\n", "step 2\n"]
    p = torch.tensor([0.9, 0.5, 0.8])
    assert aggregate_steps(p, "min").item() == pytest.approx(0.5)
    assert aggregate_steps(p, "prod").item() == pytest.approx(0.36)
    assert aggregate_steps(p, "mean").item() == pytest.approx(2.2 / 3)
    assert aggregate_steps(p, "last").item() == pytest.approx(0.8)
    with pytest.raises(KeyError):
        aggregate_steps(p, "max")
