"""Off-policy corrections (objectives/offpolicy.py): weights worked out by hand, and the estimator's
expectation under the behaviour policy against the on-policy gradient on a 3-action bandit, computed
exactly by summing over actions and by sampling."""

import itertools
import math

import pytest
import torch

from alignkit.objectives.offpolicy import OFF_POLICY_CORRECTIONS, corrected_policy_loss, off_policy_correction

LN = math.log


def logs(*ps):
    return torch.tensor([[LN(p) for p in ps]], dtype=torch.float64)


def test_registry_lists_every_correction():
    assert OFF_POLICY_CORRECTIONS.names() == ["decoupled", "mis", "none", "seq_mis", "seq_tis", "tis"]
    with pytest.raises(KeyError, match="did you mean 'tis'"):
        off_policy_correction("tiss", logs(0.5), logs(0.5), torch.ones(1, 1))
    with pytest.raises(TypeError, match="'c'"):
        off_policy_correction("tis", logs(0.5), logs(0.5), torch.ones(1, 1), c=2.0)
    with pytest.raises(ValueError, match="band"):
        off_policy_correction("mis", logs(0.5), logs(0.5), torch.ones(1, 1), low=2.0)


def test_tis_weights_by_hand():
    # rho = pi_old / mu = 0.5/0.1, 0.2/0.4, 0.9/0.3 = 5, 0.5, 3; the 4th token is padding holding NaN
    old = torch.cat([logs(0.5, 0.2, 0.9), torch.tensor([[float("nan")]], dtype=torch.float64)], 1)
    mu = torch.cat([logs(0.1, 0.4, 0.3), torch.tensor([[float("inf")]], dtype=torch.float64)], 1)
    mask = torch.tensor([[1, 1, 1, 0]])
    fix = off_policy_correction("tis", old, mu, mask, cap=2.0)
    torch.testing.assert_close(fix.weight, torch.tensor([[2.0, 0.5, 2.0, 0.0]], dtype=torch.float64))
    m = {k: v.item() for k, v in fix.metrics.items()}
    assert m["is_truncated_frac"] == pytest.approx(2 / 3)
    assert m["is_ratio_mean"] == pytest.approx(8.5 / 3)
    assert m["is_weight_mean"] == pytest.approx(4.5 / 3)
    # k3 of KL(mu || pi_old): rho - 1 - ln rho per token
    assert m["mismatch_kl"] == pytest.approx(((4 - LN(5)) + (-0.5 - LN(0.5)) + (2 - LN(3))) / 3)
    assert m["is_masked_tokens"] == 0
    plain = off_policy_correction("tis", old, mu, mask, cap=None)
    torch.testing.assert_close(plain.weight, torch.tensor([[5.0, 0.5, 3.0, 0.0]], dtype=torch.float64))
    assert off_policy_correction("none", old, mu, mask).weight.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_mis_drops_exactly_the_out_of_band_tokens():
    # rho = 5, 0.5, 3, 0.2, 6 with the band [0.5, 5] (ends included): the last two leave
    old, mu = logs(0.5, 0.2, 0.9, 0.1, 0.6), logs(0.1, 0.4, 0.3, 0.5, 0.1)
    mask = torch.ones(1, 5)
    fix = off_policy_correction("mis", old, mu, mask, low=0.5, high=5.0)
    torch.testing.assert_close(fix.weight, torch.tensor([[5.0, 0.5, 3.0, 0.0, 0.0]], dtype=torch.float64))
    assert fix.kept.tolist() == [[True, True, True, False, False]]
    assert fix.metrics["is_masked_tokens"].item() == 2
    assert fix.metrics["is_masked_frac"].item() == pytest.approx(0.4)
    unweighted = off_policy_correction("mis", old, mu, mask, low=0.5, high=5.0, weighted=False)
    assert unweighted.weight.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    # the gradient of every dropped token is exactly 0, the kept ones get rho * A (REINFORCE, A = 1, sum)
    logp = old.clone().requires_grad_(True)
    loss, _ = corrected_policy_loss("reinforce", "mis", logp, old, mu, torch.ones(1), mask, "seq_mean_token_sum",
                                    correction_params={"low": 0.5, "high": 5.0})
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-5.0, -0.5, -3.0, 0.0, 0.0])


def test_sequence_weights_by_hand():
    # row 0: rho = 4, 1 -> geometric mean 2, product 4; row 1: rho = 0.25, 0.25 -> 0.25, 0.0625
    old = logs(0.8, 0.3).repeat(2, 1)
    mu = torch.cat([logs(0.2, 0.3), logs(0.8 * 4, 0.3 * 4)])
    mask = torch.ones(2, 2)
    geo = off_policy_correction("seq_tis", old, mu, mask, cap=1.5)
    torch.testing.assert_close(geo.weight, torch.tensor([[1.5, 1.5], [0.25, 0.25]], dtype=torch.float64))
    assert geo.metrics["is_truncated_frac"].item() == pytest.approx(0.5)
    prod = off_policy_correction("seq_tis", old, mu, mask, cap=2.0, ratio="product")
    torch.testing.assert_close(prod.weight, torch.tensor([[2.0, 2.0], [0.0625, 0.0625]], dtype=torch.float64))
    # seq_mis: row 0's geometric mean 2 is inside [0.5, 2] (kept), row 1's 0.25 is not (the whole row goes)
    rej = off_policy_correction("seq_mis", old, mu, mask, low=0.5, high=2.0 + 1e-9)
    assert rej.weight.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert rej.metrics["is_masked_tokens"].item() == 2
    # a padded token does not enter the sequence ratio: row with rho = 4 then padding -> 4
    pad = off_policy_correction("seq_tis", logs(0.8, 0.1), torch.cat([logs(0.2), torch.tensor([[0.0]], dtype=torch.float64)], 1),
                                torch.tensor([[1, 0]]), cap=None)
    assert pad.weight.tolist() == [[pytest.approx(4.0), 0.0]]


def test_decoupled_ppo_by_hand():
    """-(pi_prox/mu) min(r A, clip(r, 0.8, 1.2) A), r = pi/pi_prox, token mean over 3 tokens."""
    pi, prox, mu = logs(0.3, 0.1, 0.21), logs(0.2, 0.2, 0.2), logs(0.1, 0.4, 0.1)
    adv = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64)
    logp = pi.clone().requires_grad_(True)
    loss, metrics = corrected_policy_loss("ppo_clip", "decoupled", logp, prox, mu, adv, torch.ones(1, 3))
    # token 0: r=1.5 -> 1.2, w=2: -2.4 (clipped); token 1: r=0.5, A<0 -> -min(-0.5,-0.8)=0.8, w=0.5: 0.4 (clipped);
    # token 2: r=1.05, w=2: -2.1 with gradient -w r A = -2.1
    assert loss.item() == pytest.approx((-2.4 + 0.4 - 2.1) / 3)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, -2.1 / 3])
    assert metrics["clip_frac"].item() == pytest.approx(2 / 3)
    assert metrics["is_weight_mean"].item() == pytest.approx(4.5 / 3)


# ---- expectation under mu: a 3-action bandit ---------------------------------------------------------------
PI = [0.6, 0.3, 0.1]
MU = [0.2, 0.3, 0.5]  # rho = 3, 1, 0.2
R = [1.0, 0.0, 2.0]


def on_policy_gradient(pi=PI):
    """d/dtheta E_pi[R] for pi = softmax(theta): g_k = pi_k (R_k - E_pi R)."""
    mean = sum(p * r for p, r in zip(pi, R))
    return torch.tensor([p * (r - mean) for p, r in zip(pi, R)], dtype=torch.float64)


def loss_gradient(actions, correction, params=None, loss="reinforce", prox=None):
    """Gradient w.r.t. the logits of the corrected loss of one sample per action (token mean over them)."""
    theta = torch.tensor([LN(p) for p in PI], dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(theta, 0)[actions][:, None]
    old = logp.detach() if prox is None else torch.log(torch.tensor(prox, dtype=torch.float64))[actions][:, None]
    mu = torch.log(torch.tensor(MU, dtype=torch.float64))[actions][:, None]
    adv = torch.tensor(R, dtype=torch.float64)[actions]
    out, _ = corrected_policy_loss(loss, correction, logp, old, mu, adv, torch.ones_like(logp), correction_params=params)
    (grad,) = torch.autograd.grad(out, theta)
    return -grad  # ascent direction of the objective


def expected_under_mu(correction, params=None, loss="reinforce", prox=None):
    """Sum over the 3 actions with their behaviour probabilities: E_mu[g], exactly."""
    return sum(MU[a] * loss_gradient(torch.tensor([a]), correction, params, loss, prox) for a in range(3))


@pytest.mark.parametrize("loss", ["reinforce", "ppo_clip"])
def test_importance_weighted_gradient_is_unbiased_exactly(loss):
    exact = on_policy_gradient()
    torch.testing.assert_close(exact, torch.tensor([0.12, -0.24, 0.12], dtype=torch.float64))
    torch.testing.assert_close(expected_under_mu("tis", {"cap": None}, loss), exact)
    # without a correction the gradient is the one of E_mu[R]'s surrogate: sum_a mu_a R_a (e_a - pi) = [-0.52, -0.36, 0.88]
    torch.testing.assert_close(expected_under_mu("none", None, loss), torch.tensor([-0.52, -0.36, 0.88], dtype=torch.float64))


def test_decoupled_ppo_is_unbiased_with_a_separate_proximal_policy():
    """pi_prox != pi and != mu; inside the clip range E_mu[(pi_prox/mu)(pi/pi_prox) A grad log pi] = on-policy."""
    prox = [0.55, 0.33, 0.12]  # r = pi/pi_prox = 1.09, 0.91, 0.83: all inside [0.8, 1.2]
    torch.testing.assert_close(expected_under_mu("decoupled", None, "ppo_clip", prox), on_policy_gradient())


def test_tis_bias_when_the_truncation_binds():
    """Only action 0 has rho = 3 > C = 2: the bias is -(pi_0 - C mu_0) R_0 (e_0 - pi) = -0.2 [0.4, -0.3, -0.1]."""
    bias = expected_under_mu("tis", {"cap": 2.0}) - on_policy_gradient()
    torch.testing.assert_close(bias, torch.tensor([-0.08, 0.06, 0.02], dtype=torch.float64))
    # MIS with the band [0.5, 2.5] drops actions 0 (rho 3) and 2 (rho 0.2): only action 1 (R = 0) is left
    torch.testing.assert_close(expected_under_mu("mis", {"low": 0.5, "high": 2.5}), torch.zeros(3, dtype=torch.float64))


def test_sampled_gradient_matches_within_the_clt_bound():
    n = 40_000
    actions = torch.multinomial(torch.tensor(MU), n, replacement=True, generator=torch.Generator().manual_seed(0))
    exact = on_policy_gradient()
    # per-sample gradient g_a = (pi_a/mu_a) R_a (e_a - pi): its exact std under mu bounds the sample mean's error
    pi = torch.tensor(PI, dtype=torch.float64)
    per_action = torch.stack([PI[a] / MU[a] * R[a] * (torch.eye(3, dtype=torch.float64)[a] - pi) for a in range(3)])
    mu = torch.tensor(MU, dtype=torch.float64)
    std = ((mu[:, None] * per_action**2).sum(0) - exact**2).sqrt()
    bound = 4 * std / math.sqrt(n)
    sampled = loss_gradient(actions, "tis", {"cap": None})
    assert ((sampled - exact).abs() <= bound).all(), (sampled, exact, bound)
    # the truncated estimator's sample mean sits at its biased expectation, more than 5 bounds away (bias 0.08)
    truncated = loss_gradient(actions, "tis", {"cap": 2.0})
    assert (truncated - exact).abs()[0] > 5 * bound[0]


def test_sequence_importance_weight_is_unbiased_for_sequences():
    """Two draws from the bandit make a sequence with reward R(a1) R(a2) + R(a2): the product ratio over
    its tokens gives the on-policy gradient in expectation (sum over the 9 sequences)."""
    pi = torch.tensor(PI, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)

    def reward(a, b):
        return R[a] * R[b] + R[b]

    exact = sum(PI[a] * PI[b] * reward(a, b) * ((eye[a] - pi) + (eye[b] - pi)) for a, b in itertools.product(range(3), repeat=2))
    total = torch.zeros(3, dtype=torch.float64)
    for a, b in itertools.product(range(3), repeat=2):
        theta = torch.tensor([LN(p) for p in PI], dtype=torch.float64, requires_grad=True)
        logp = torch.log_softmax(theta, 0)[[a, b]][None]
        mu = torch.log(torch.tensor(MU, dtype=torch.float64))[[a, b]][None]
        out, _ = corrected_policy_loss("reinforce", "seq_tis", logp, logp.detach(), mu, torch.tensor([reward(a, b)], dtype=torch.float64),
                                       torch.ones(1, 2), "seq_mean_token_sum", correction_params={"cap": None, "ratio": "product"})
        (grad,) = torch.autograd.grad(out, theta)
        total -= MU[a] * MU[b] * grad
    torch.testing.assert_close(total, exact)
