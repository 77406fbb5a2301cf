"""Tests for the online-RL objectives (alignkit.objectives.advantages, .kl, .aggregation, .policy, .value).

Every expected value is worked out by hand in the test from the formula, with
plain Python numbers and ``math``; the code under test is never used to make
an expected value.
"""

import math

import pytest
import torch

from alignkit.objectives import (
    MovingBaseline,
    aggregate,
    gae,
    kl_in_reward,
    kl_penalty,
    macro_action_advantages,
    macro_gae,
    outcome_advantages,
    policy_loss,
    value_loss,
)

EPS = 1e-4
TOL = dict(rel_tol=1e-5, abs_tol=1e-6)


def _t(x, dtype=torch.float64, **kw):
    return torch.tensor(x, dtype=dtype, **kw)


def _close(actual, expected):
    actual = actual.tolist() if isinstance(actual, torch.Tensor) else actual
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            _close(a, e)
    else:
        assert math.isclose(float(actual), float(expected), **TOL), (actual, expected)


def _mean(xs):
    return sum(xs) / len(xs)


def _std(xs, ddof):
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


# ---------------------------------------------------------------------------
# outcome advantages
# ---------------------------------------------------------------------------


def test_grpo_group_std_unbiased():
    rewards = [1.0, 2.0, 3.0, 0.0, 0.0, 1.0]
    out = outcome_advantages("grpo", _t(rewards), 3)
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1
    g1 = [-1 / (1 + EPS), 0.0, 1 / (1 + EPS)]
    # group 2: mean 1/3, unbiased var ((1/3)^2 * 2 + (2/3)^2) / 2 = 1/3
    s2 = math.sqrt(1 / 3)
    g2 = [(-1 / 3) / (s2 + EPS), (-1 / 3) / (s2 + EPS), (2 / 3) / (s2 + EPS)]
    _close(out, g1 + g2)


def test_grpo_biased_batch_and_none():
    rewards = [1.0, 2.0, 3.0, 0.0, 0.0, 1.0]
    biased = outcome_advantages("grpo", _t(rewards), 3, unbiased=False)
    s1 = math.sqrt(2 / 3)  # population std of [1, 2, 3]
    assert math.isclose(biased[2].item(), 1 / (s1 + EPS), **TOL)

    batch = outcome_advantages("grpo", _t(rewards), 3, std="batch")
    sb = _std(rewards, ddof=1)
    means = [2.0] * 3 + [1 / 3] * 3
    _close(batch, [(r - m) / (sb + EPS) for r, m in zip(rewards, means)])

    none = outcome_advantages("grpo", _t(rewards), 3, std="none")
    _close(none, [r - m for r, m in zip(rewards, means)])
    with pytest.raises(ValueError):
        outcome_advantages("grpo", _t(rewards), 3, std="bogus")


def test_dr_grpo_mean_centred():
    out = outcome_advantages("dr_grpo", _t([1.0, 3.0, 10.0, 20.0]), 2)
    _close(out, [-1.0, 1.0, -5.0, 5.0])


def test_rloo_leave_one_out():
    out = outcome_advantages("rloo", _t([1.0, 2.0, 4.0]), 3)
    # baselines: (2 + 4) / 2 = 3, (1 + 4) / 2 = 2.5, (1 + 2) / 2 = 1.5
    _close(out, [1 - 3, 2 - 2.5, 4 - 1.5])


def test_remax_greedy_baseline_per_group_and_per_sample():
    r = _t([1.0, 0.0, 0.5, 0.7])
    per_group = outcome_advantages("remax", r, 2, baseline=_t([0.4, 0.6]))
    _close(per_group, [1.0 - 0.4, 0.0 - 0.4, 0.5 - 0.6, 0.7 - 0.6])
    per_sample = outcome_advantages("remax", r, 2, baseline=_t([0.1, 0.2, 0.3, 0.4]))
    _close(per_sample, [0.9, -0.2, 0.2, 0.3])
    with pytest.raises(ValueError):
        outcome_advantages("remax", r, 2, baseline=_t([0.1, 0.2, 0.3]))


def test_reinforce_and_moving_baseline():
    r = _t([1.0, 3.0])
    _close(outcome_advantages("reinforce", r, 1), [1.0, 3.0])
    _close(outcome_advantages("reinforce", r, 1, baseline=0.5), [0.5, 2.5])
    mb = MovingBaseline(momentum=0.9)
    assert mb.value == 0.0
    assert math.isclose(mb.update([1.0, 3.0]), 2.0)  # first update: batch mean
    assert math.isclose(mb.update([4.0]), 0.9 * 2.0 + 0.1 * 4.0)
    assert math.isclose(mb.value, 2.2)


def test_reinforce_pp_global_whitening():
    rewards = [1.0, 2.0, 3.0, 6.0]
    out = outcome_advantages("reinforce_pp", _t(rewards), 2)
    m, s = _mean(rewards), _std(rewards, ddof=1)
    _close(out, [(r - m) / (s + EPS) for r in rewards])


def test_reinforce_pp_baseline_group_then_global():
    rewards = [1.0, 2.0, 3.0, 6.0]
    out = outcome_advantages("reinforce_pp_baseline", _t(rewards), 2)
    x = [-0.5, 0.5, -1.5, 1.5]  # minus group means 1.5 and 4.5
    m, s = _mean(x), _std(x, ddof=1)
    _close(out, [(v - m) / (s + EPS) for v in x])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_group_of_one_gives_zero(name):
    out = outcome_advantages(name, _t([0.3, 5.0, -2.0]), 1)
    assert torch.isfinite(out).all()
    _close(out, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_zero_variance_gives_zero_not_nan(name):
    out = outcome_advantages(name, _t([1.0, 1.0, 1.0, 1.0]), 2)
    _close(out, [0.0] * 4)
    if name in ("grpo", "reinforce_pp"):
        _close(outcome_advantages(name, _t([1.0, 1.0]), 2, eps=0.0), [0.0, 0.0])
        _close(outcome_advantages(name, _t([2.0]), 1, eps=0.0), [0.0])


def test_grpo_batch_std_single_reward():
    _close(outcome_advantages("grpo", _t([3.0]), 1, std="batch"), [0.0])


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce"])
def test_nan_reward_raises_with_index(name):
    with pytest.raises(ValueError, match="index 2"):
        outcome_advantages(name, _t([1.0, 0.0, float("nan"), 1.0]), 2)


def test_bad_group_size_and_unknown_name():
    with pytest.raises(ValueError):
        outcome_advantages("grpo", _t([1.0, 2.0, 3.0]), 2)
    with pytest.raises(KeyError):
        outcome_advantages("nope", _t([1.0]), 1)
    with pytest.raises(TypeError):
        outcome_advantages("dr_grpo", _t([1.0]), 1, std="group")


# ---------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------


def test_gae_1x3_and_masked_middle_token():
    g, lam = 0.9, 0.8
    # row 0: plain 3 tokens, then 2 padding tokens
    # row 1: valid, masked (tool) token, valid, valid, trailing padding
    rewards = _t([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 5.0, 0.0, 1.0, 9.0]])
    values = _t([[0.5, 0.6, 0.7, 0.0, 0.0], [0.5, 99.0, 0.6, 0.7, 42.0]])
    mask = _t([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=g, lam=lam)

    # row 0 unrolled by hand; value after the last token is 0
    d2 = 1.0 + g * 0.0 - 0.7
    a2 = d2
    d1 = 0.0 + g * 0.7 - 0.6
    a1 = d1 + g * lam * a2
    d0 = 0.0 + g * 0.6 - 0.5
    a0 = d0 + g * lam * a1
    _close(adv[0], [a0, a1, a2, 0.0, 0.0])
    _close(ret[0], [a0 + 0.5, a1 + 0.6, a2 + 0.7, 0.0, 0.0])

    # row 1: the masked token (reward 5, value 99) is skipped; bootstrap from the
    # next *valid* token's value
    b3 = 1.0 + g * 0.0 - 0.7
    b2 = (0.0 + g * 0.7 - 0.6) + g * lam * b3
    b0 = (0.0 + g * 0.6 - 0.5) + g * lam * b2
    _close(adv[1], [b0, 0.0, b2, b3, 0.0])
    _close(ret[1], [b0 + 0.5, 0.0, b2 + 0.6, b3 + 0.7, 0.0])


def test_gae_empty_row_is_zero():
    adv, ret = gae(_t([[1.0, 2.0]]), _t([[3.0, 4.0]]), _t([[0, 0]]))
    _close(adv[0], [0.0, 0.0])
    _close(ret[0], [0.0, 0.0])


# ---------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------


def test_kl_estimators_and_clamp():
    logp, ref = [-1.0, -2.0], [-1.5, -1.0]
    lp, rf = _t(logp), _t(ref)
    _close(kl_penalty("k1", lp, rf), [0.5, -1.0])
    _close(kl_penalty("k2", lp, rf), [0.5 * 0.25, 0.5 * 1.0])
    _close(
        kl_penalty("k3", lp, rf),
        [math.exp(-0.5) - (-0.5) - 1, math.exp(1.0) - 1.0 - 1],
    )
    _close(kl_penalty("abs", lp, rf), [0.5, 1.0])
    _close(kl_penalty("k1", lp, rf, clamp=0.3), [0.3, -0.3])
    _close(kl_penalty("k3", lp, rf, clamp=0.3), [math.exp(-0.5) - 0.5, 0.3])
    with pytest.raises(KeyError):
        kl_penalty("k4", lp, rf)


def test_kl_in_reward_scores_on_last_valid_token():
    logp = _t([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0], [0.0, 0.0, 0.0]])
    ref = _t([[-1.5, -1.0, -0.5], [-2.0, -1.0, -2.0], [0.0, 0.0, 0.0]])
    mask = _t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    beta = 0.1
    out = kl_in_reward(_t([2.0, 3.0, 7.0]), logp, ref, mask, beta=beta, kind="k1")
    _close(out[0], [-beta * 0.5, 0.0, -beta * (-0.5) + 2.0])
    _close(out[1], [0.0, -beta * (-1.0) + 3.0, 0.0])
    _close(out[2], [0.0, 0.0, 0.0])  # empty row: score dropped

    tok = _t([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    out = kl_in_reward(tok, logp, ref, mask, beta=beta, kind="k1")
    _close(out[0], [-beta * 0.5 + 1.0, 0.0, beta * 0.5])
    _close(out[1], [0.0, beta * 1.0, 0.0])
    _close(out[2], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------


AGG_LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")], [7.0, 7.0, 7.0]]
AGG_MASK = [[1, 1, 1], [1, 1, 0], [0, 0, 0]]  # lengths 3, 2 and an empty row


@pytest.mark.parametrize(
    "mode,params,expected",
    [
        ("token_mean", {}, (1 + 2 + 3 + 4 + 5) / 5),
        ("seq_mean_token_mean", {}, ((1 + 2 + 3) / 3 + (4 + 5) / 2) / 2),
        ("seq_mean_token_sum", {}, ((1 + 2 + 3) + (4 + 5)) / 2),
        ("seq_mean_token_sum_norm", {}, ((1 + 2 + 3) / 3 + (4 + 5) / 3) / 2),
        ("seq_mean_token_sum_norm", {"max_len": 10}, ((1 + 2 + 3) / 10 + (4 + 5) / 10) / 2),
    ],
)
def test_aggregation_modes(mode, params, expected):
    loss = _t(AGG_LOSS, requires_grad=True)
    out = aggregate(loss, _t(AGG_MASK), mode, **params)
    assert math.isclose(out.item(), expected, **TOL)
    out.backward()
    assert torch.isfinite(loss.grad).all()
    assert loss.grad[2].abs().sum() == 0 and loss.grad[1, 2] == 0


@pytest.mark.parametrize(
    "mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
)
def test_aggregation_all_empty_is_zero(mode):
    loss = _t([[1.0, 2.0], [3.0, float("inf")]], requires_grad=True)
    out = aggregate(loss, _t([[0, 0], [0, 0]]), mode)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(loss.grad, torch.zeros_like(loss))


# ---------------------------------------------------------------------------
# policy losses
# ---------------------------------------------------------------------------


def _logp_for_ratios(ratios, old=-1.0):
    return [[old + math.log(r) for r in row] for row in ratios]


def test_ppo_clip_asymmetric_values_metrics_and_grad():
    ratios = [[1.5, 0.5, 1.1], [0.75, 1.25, 1.0]]
    adv = [[2.0, -1.0, 2.0], [1.0, -1.0, 0.0]]
    lo, hi = 0.2, 0.28
    logp = _t(_logp_for_ratios(ratios), requires_grad=True)
    old = _t([[-1.0] * 3] * 2)
    mask = _t([[1, 1, 1], [1, 1, 1]])
    loss, m = policy_loss("ppo_clip", logp, old, _t(adv), mask, clip_low=lo, clip_high=hi)

    def clip(r):
        return min(max(r, 1 - lo), 1 + hi)

    per_tok = [-min(r * a, clip(r) * a) for rr, aa in zip(ratios, adv) for r, a in zip(rr, aa)]
    # by hand: 1.5*2 clipped to 1.28*2; 0.5 with A<0 clipped to 0.8; 1.25 with A<0 is
    # inside the asymmetric range (would be clipped with clip_high=0.2)
    assert math.isclose(per_tok[0], -2.56) and math.isclose(per_tok[1], 0.8)
    assert math.isclose(per_tok[4], 1.25)
    assert math.isclose(loss.item(), sum(per_tok) / 6, **TOL)
    assert math.isclose(m["clip_frac"].item(), 2 / 6, **TOL)
    flat_r = [r for row in ratios for r in row]
    assert math.isclose(m["ratio_mean"].item(), sum(flat_r) / 6, **TOL)
    assert math.isclose(m["approx_kl"].item(), sum(r - 1 - math.log(r) for r in flat_r) / 6, **TOL)

    loss.backward()
    g = logp.grad
    # clipped tokens: zero gradient; unclipped: d(-r A)/dlogp / N = -r A / 6
    assert g[0, 0] == 0 and g[0, 1] == 0
    _close(g[0, 2], -1.1 * 2.0 / 6)
    _close(g[1, 0], -0.75 * 1.0 / 6)
    _close(g[1, 1], 1.25 / 6)
    assert g[1, 2] == 0  # zero advantage


def test_ppo_dual_clip_negative_advantage():
    ratios = [[4.0, 2.0, 4.0]]
    adv = [[-1.0, -1.0, 1.0]]
    logp = _t(_logp_for_ratios(ratios), requires_grad=True)
    old = _t([[-1.0] * 3])
    mask = _t([[1, 1, 1]])
    kw = dict(clip_low=0.2, clip_high=0.2)
    plain, _ = policy_loss("ppo_clip", logp, old, _t(adv), mask, **kw)
    # without dual clip: -min(-4, -1.2) = 4, -min(-2, -1.2) = 2, -min(4, 1.2) = -1.2
    assert math.isclose(plain.item(), (4 + 2 - 1.2) / 3, **TOL)
    dual, m = policy_loss("ppo_clip", logp, old, _t(adv), mask, dual_clip=3.0, **kw)
    # dual clip caps the A<0 loss at -c*A = 3: min(4, 3) = 3, min(2, 3) = 2; A>0 untouched
    assert math.isclose(dual.item(), (3 + 2 - 1.2) / 3, **TOL)
    assert math.isclose(m["dual_clip_frac"].item(), 1 / 3, **TOL)
    dual.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 2] == 0
    _close(logp.grad[0, 1], 2.0 / 3)
    with pytest.raises(ValueError):
        policy_loss("ppo_clip", logp, old, _t(adv), mask, dual_clip=0.5)


def test_cispo_clipped_detached_weight():
    ratios = [[1.5, 0.5, 1.1]]
    adv = [1.0]
    logp_vals = _logp_for_ratios(ratios, old=-1.0)[0]
    logp = _t([logp_vals], requires_grad=True)
    old = _t([[-1.0] * 3])
    loss, m = policy_loss("cispo", logp, old, _t(adv), _t([[1, 1, 1]]), clip_high=0.2)
    w = [min(r, 1.2) for r in ratios[0]]  # no lower bound by default
    assert math.isclose(loss.item(), sum(-wi * 1.0 * lp for wi, lp in zip(w, logp_vals)) / 3, **TOL)
    assert math.isclose(m["clip_frac"].item(), 1 / 3, **TOL)
    loss.backward()
    # gradient flows through every token, even the clipped one: -w A / N
    _close(logp.grad[0], [-wi / 3 for wi in w])

    loss2, m2 = policy_loss("cispo", logp.detach(), old, _t(adv), _t([[1, 1, 1]]), clip_high=0.2, clip_low=0.2)
    w2 = [min(max(r, 0.8), 1.2) for r in ratios[0]]
    assert math.isclose(loss2.item(), sum(-wi * lp for wi, lp in zip(w2, logp_vals)) / 3, **TOL)
    assert math.isclose(m2["clip_frac"].item(), 2 / 3, **TOL)


def test_gspo_sequence_ratio():
    # seq 0: token log-ratios 0.1, 0.3 -> s = exp(0.2) ~ 1.221 > 1.2, A = +1 -> clipped
    # seq 1: token log-ratio -0.05 (one valid token) -> s = exp(-0.05), A = -1 -> unclipped
    old = _t([[-1.0, -2.0], [-1.0, 0.0]])
    logp = _t([[-0.9, -1.7], [-1.05, float("nan")]], requires_grad=True)
    mask = _t([[1, 1], [1, 0]])
    adv = _t([1.0, -1.0])
    loss, m = policy_loss(
        "gspo", logp, old, adv, mask, aggregation="seq_mean_token_mean", clip_low=0.2, clip_high=0.2
    )
    s0, s1 = math.exp(0.2), math.exp(-0.05)
    l0 = -min(s0 * 1.0, 1.2 * 1.0)
    l1 = -min(s1 * -1.0, max(min(s1, 1.2), 0.8) * -1.0)
    assert math.isclose(loss.item(), (l0 + l1) / 2, **TOL)
    assert math.isclose(m["ratio_mean"].item(), (s0 + s1) / 2, **TOL)
    assert math.isclose(m["clip_frac"].item(), 2 / 3, **TOL)
    loss.backward()
    g = logp.grad
    assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 1] == 0
    # d/dlogp of (1/2) * (-s1 * A) with ds1/dlogp = s1 / |y| = s1
    _close(g[1, 0], 0.5 * s1)


def test_gspo_token_mean_unclipped_gradient():
    # default clip (3e-4, 4e-4); s = exp(mean(0.1, -0.1)) = 1 -> inside the range
    old = _t([[0.0, 0.0]])
    logp = _t([[0.1, -0.1]], requires_grad=True)
    loss, _ = policy_loss("gspo", logp, old, _t([2.0]), _t([[1, 1]]))
    assert math.isclose(loss.item(), -2.0, **TOL)
    loss.backward()
    # token_mean of L_t = -s_t A with s_t = sg(s) * exp(lr_t - sg(lr_t)): dL/dlogp_t = -A * s / 2
    _close(logp.grad[0], [-2.0 / 2, -2.0 / 2])


def test_reinforce_policy_loss():
    logp = _t([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    loss, m = policy_loss("reinforce", logp, None, _t([1.0, -2.0]), _t([[1, 1], [1, 0]]))
    assert math.isclose(loss.item(), (1.0 + 2.0 + -1.0) / 3, **TOL)
    assert m["clip_frac"].item() == 0.0
    loss.backward()
    _close(logp.grad.flatten().tolist(), [-1 / 3, -1 / 3, 2 / 3, 0.0])


def test_policy_loss_empty_sequence_and_nan_padding():
    logp = _t([[-1.0, float("nan")], [float("nan"), float("nan")]], requires_grad=True)
    old = _t([[-1.2, float("nan")], [float("nan"), float("nan")]])
    adv = _t([[1.0, float("nan")], [float("nan"), float("nan")]])
    mask = _t([[1, 0], [0, 0]])
    for name in ["ppo_clip", "cispo", "gspo", "reinforce"]:
        for agg in ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]:
            logp.grad = None
            loss, m = policy_loss(name, logp, old, adv, mask, aggregation=agg)
            loss.backward()
            assert torch.isfinite(loss), (name, agg)
            assert torch.isfinite(logp.grad).all(), (name, agg)
            assert all(torch.isfinite(v) for v in m.values()), (name, agg)


def test_float32_inputs_and_int_mask():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0]])
    mask = torch.tensor([[1, 1]])
    loss, _ = policy_loss("ppo_clip", logp, old, torch.tensor([1.0]), mask)
    assert loss.dtype == torch.float32
    r = math.exp(0.1)
    assert math.isclose(loss.item(), -(r + 1.0) / 2, rel_tol=1e-6)


def test_policy_loss_errors():
    x = _t([[0.0]])
    with pytest.raises(KeyError):
        policy_loss("nope", x, x, _t([1.0]), x)
    with pytest.raises(TypeError):
        policy_loss("reinforce", x, x, _t([1.0]), x, clip_high=0.2)
    with pytest.raises(ValueError):
        policy_loss("ppo_clip", x, None, _t([1.0]), x)


# ---------------------------------------------------------------------------
# value loss
# ---------------------------------------------------------------------------


def test_value_loss_clipped_and_unclipped():
    values = _t([[1.2, 2.0, 0.5]], requires_grad=True)
    old = _t([[0.8, 2.5, 0.5]])
    ret = _t([[1.5, 1.0, 0.0]])
    mask = _t([[1, 1, 1]])
    loss, m = value_loss(values, old, ret, mask, clip=0.2)
    # t0: v_clip = 0.8 + 0.2 = 1.0; max(0.3^2, 0.5^2) = 0.25
    # t1: v_clip = 2.5 - 0.2 = 2.3; max(1.0^2, 1.3^2) = 1.69
    # t2: v_clip = 0.5;             max(0.5^2, 0.5^2) = 0.25
    assert math.isclose(loss.item(), 0.5 * (0.25 + 1.69 + 0.25) / 3, **TOL)
    assert math.isclose(m["vf_clip_frac"].item(), 2 / 3, **TOL)
    loss.backward()
    # clipped terms win on t0 and t1 -> no gradient there; t2: 0.5 * 2 * 0.5 / 3
    _close(values.grad[0], [0.0, 0.0, 0.5 / 3])
    plain, _ = value_loss(values, old, ret, mask, clip=None)
    assert math.isclose(plain.item(), 0.5 * (0.09 + 1.0 + 0.25) / 3, **TOL)


def test_value_clip_fraction_counts_only_clipped_tokens():
    """V itself is clamped to [V_old - c, V_old + c]: inside the range V_clip == V exactly, so rounding in
    V_old + (V - V_old) (0.1 and -0.1 here come back off by 1.4e-17) no longer counts tokens as clipped."""
    values = torch.tensor([[0.1, -0.1, 0.6, 0.5]], dtype=torch.float64)
    old = torch.tensor([[-0.05, 0.05, 0.2, 0.0]], dtype=torch.float64)
    ret = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    loss, m = value_loss(values, old, ret, torch.ones(1, 4), clip=0.2)
    # t0, t1: |V - V_old| = 0.15 < 0.2, V_clip = V, errors 0.01 and 0.01 (not clipped)
    # t2: V_clip = 0.4, max(0.6^2, 0.4^2) = 0.36 (the plain error is larger: not clipped)
    # t3: V_clip = 0.2, max(0.5^2, 0.8^2) = 0.64 (clipped)
    assert math.isclose(loss.item(), 0.5 * (0.01 + 0.01 + 0.36 + 0.64) / 4, **TOL)
    assert m["vf_clip_frac"].item() == 0.25


# ---------------------------------------------------------------------------
# MA-RLHF macro actions
# ---------------------------------------------------------------------------


def test_macro_action_advantages_mean_over_valid_blocks():
    adv = _t([[1.0, 2.0, 100.0, 4.0, 5.0]])
    mask = _t([[1, 1, 0, 1, 1]])
    _close(macro_action_advantages(adv, mask, 2)[0], [1.5, 1.5, 0.0, 4.5, 4.5])
    # macro_len 3: blocks {1, 2, 4} and a short last block {5}
    _close(macro_action_advantages(adv, mask, 3)[0], [7 / 3, 7 / 3, 0.0, 7 / 3, 5.0])
    _close(macro_action_advantages(adv, mask, 1)[0], [1.0, 2.0, 0.0, 4.0, 5.0])


def test_macro_gae_two_blocks():
    r = _t([[0.0, 0.0, 0.0, 1.0]])
    v = _t([[0.5, 0.6, 0.7, 0.8]])
    mask = _t([[1, 1, 1, 1]])
    adv, ret = macro_gae(r, v, mask, 2, gamma=1.0, lam=1.0)
    # macro rewards [0, 1]; macro values (first token) [0.5, 0.7]
    a1 = 1.0 - 0.7
    a0 = 0.0 + 0.7 - 0.5 + a1
    _close(adv[0], [a0, a0, a1, a1])
    _close(ret[0], [a0 + 0.5, a0 + 0.5, a1 + 0.7, a1 + 0.7])


# ---------------------------------------------------------------------------------------------
# P3O and CoPG (pairwise online objectives), hand-worked
# ---------------------------------------------------------------------------------------------
def test_pairwise_advantages_hand_worked():
    from alignkit.objectives import pairwise_advantages

    out = pairwise_advantages(torch.tensor([1.0, 0.0, 0.5, 2.5]))
    assert out.tolist() == pytest.approx([0.5, -0.5, -1.0, 1.0])
    shifted = pairwise_advantages(torch.tensor([11.0, 10.0, -9.5, -7.5]))  # per-pair shifts do not matter
    assert shifted.tolist() == pytest.approx([0.5, -0.5, -1.0, 1.0])


def test_p3o_trajectory_ratio_clip_hand_worked():
    from alignkit.objectives import policy_loss

    # Sequence 0: tokens log-ratios 0.1, 0.2 -> rho = e^0.3 = 1.34986 > 1.2 (clipped), A = +1.
    # Sequence 1: one token, log-ratio -0.05 -> rho = e^-0.05 = 0.95123, A = -1 (unclipped side: min(-0.951, -0.951)).
    logp = torch.tensor([[0.0, 0.1, 0.2], [0.0, -0.05, 0.0]], requires_grad=True)
    old = torch.zeros(2, 3)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, metrics = policy_loss("p3o", logp, old, adv, mask, aggregation="seq_mean_token_sum")
    l0 = -min(math.exp(0.3) * 1.0, 1.2 * 1.0)
    rho1 = math.exp(-0.05)
    l1 = -min(rho1 * -1.0, max(min(rho1, 1.2), 0.8) * -1.0)
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    loss.backward()
    # The clipped sequence gets no gradient; the other gets d/dlogp (-rho*A)/2 = rho/2 on its token.
    assert logp.grad[0].abs().max().item() == 0.0
    assert logp.grad[1, 1].item() == pytest.approx(rho1 / 2, abs=1e-6)
    assert metrics["clip_frac"].item() == pytest.approx(0.5)


def test_copg_hand_worked_and_gradient():
    from alignkit.objectives import copg_loss

    beta = 0.5
    logp = torch.tensor([-3.0, -4.0], requires_grad=True)
    ref = torch.tensor([-3.5, -3.0])
    r = torch.tensor([1.0, 0.0])
    loss = copg_loss(logp, ref, r, beta)
    rho_a, rho_b = -3.0 + 3.5, -4.0 + 3.0
    residual = (1.0 - 0.0) - beta * (rho_a - rho_b)
    assert loss.item() == pytest.approx(residual**2 / (2 * beta))
    loss.sum().backward()
    # d/dlogp_a = -residual ; d/dlogp_b = +residual  (the contrastive policy gradient)
    assert logp.grad.tolist() == pytest.approx([-residual, residual])
    with pytest.raises(ValueError):
        copg_loss(logp, ref, r, 0.0)
