"""Tests for the preference objectives (alignkit.objectives.pairwise, .unpaired, .listwise).

Expected values are computed by hand from the papers' formulas with plain ``math`` on scalars.
(TRL 1.16's DPOTrainer computes its losses inline in ``_compute_loss``, which needs a model, so no
tensor-level TRL comparison is possible without constructing a trainer; none is attempted.)
"""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.objectives import (
    LISTWISE_LOSSES,
    PAIRWISE_LOSSES,
    UNPAIRED_LOSSES,
    PairLogps,
    RunningMean,
    UnpairedLogps,
    combine,
    curriculum_pairs,
    ld_dpo_logps,
    listwise_loss,
    pairwise_loss,
    register_pairwise,
    sequential_kl,
    tdpo_loss,
    unpaired_loss,
    wpo_weights,
)

BETA = 0.1
# (chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens) per pair
PAIRS = [(-5.0, -7.0, -6.0, -6.5, 4, 5), (-10.0, -9.0, -9.5, -9.8, 8, 6)]


def make_logps(with_ref: bool = True, with_tokens: bool = True, dtype=torch.float64) -> PairLogps:
    col = list(zip(*PAIRS))
    t = lambda xs: torch.tensor(xs, dtype=dtype)  # noqa: E731
    return PairLogps(
        chosen=t(col[0]),
        rejected=t(col[1]),
        ref_chosen=t(col[2]) if with_ref else None,
        ref_rejected=t(col[3]) if with_ref else None,
        chosen_tokens=torch.tensor(col[4]) if with_tokens else None,
        rejected_tokens=torch.tensor(col[5]) if with_tokens else None,
    )


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x: float) -> float:
    return math.log(sig(x))


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-9) -> None:
    assert actual.shape == (len(expected),)
    for a, e in zip(actual.tolist(), expected):
        assert a == pytest.approx(e, rel=tol, abs=tol)


# ---- hand formulas, one scalar pair at a time: (c, r, rc, rr, nc, nr, b) -> loss ----


def h(c, r, rc, rr):
    return (c - rc) - (r - rr)


def f_dpo_eps(eps):
    return lambda c, r, rc, rr, nc, nr, b: -(1 - eps) * logsig(b * h(c, r, rc, rr)) - eps * logsig(-b * h(c, r, rc, rr))


def f_robust(eps):
    def f(c, r, rc, rr, nc, nr, b):
        z = b * h(c, r, rc, rr)
        return ((1 - eps) * -logsig(z) - eps * -logsig(-z)) / (1 - 2 * eps)

    return f


def f_exo(eps):
    def f(c, r, rc, rr, nc, nr, b):
        z = b * h(c, r, rc, rr)
        qw, ql = sig(z), sig(-z)
        return qw * (math.log(qw) - math.log(1 - eps)) + ql * (math.log(ql) - math.log(eps))

    return f


def f_hinge(c, r, rc, rr, nc, nr, b):
    return max(0.0, 1 - b * h(c, r, rc, rr))


def f_ipo(c, r, rc, rr, nc, nr, b):
    return ((c - rc) / nc - (r - rr) / nr - 1 / (2 * b)) ** 2


def f_nca(c, r, rc, rr, nc, nr, b):
    wc, wr = b * (c - rc), b * (r - rr)
    return -logsig(wc) - 0.5 * logsig(-wc) - 0.5 * logsig(-wr)


def f_bco(delta):
    return lambda c, r, rc, rr, nc, nr, b: -logsig(b * (c - rc) - delta) - logsig(-(b * (r - rr) - delta))


def f_sppo(c, r, rc, rr, nc, nr, b):
    return ((c - rc) - 1 / (2 * b)) ** 2 + ((r - rr) + 1 / (2 * b)) ** 2


def f_apo_zero(c, r, rc, rr, nc, nr, b):
    return (1 - sig(b * (c - rc))) + sig(b * (r - rr))


def f_apo_down(c, r, rc, rr, nc, nr, b):
    return sig(b * (c - rc)) + (1 - sig(b * h(c, r, rc, rr)))


def f_discopop(tau):
    def f(c, r, rc, rr, nc, nr, b):
        z = b * h(c, r, rc, rr)
        m = sig(z / tau)
        return (1 - m) * -logsig(z) + m * math.exp(-z)

    return f


def f_sigmoid_norm(c, r, rc, rr, nc, nr, b):
    return -logsig(b * ((c - rc) / nc - (r - rr) / nr))


def f_simpo(gamma):
    return lambda c, r, rc, rr, nc, nr, b: -logsig(b * c / nc - b * r / nr - gamma)


def f_orpo(c, r, rc, rr, nc, nr, b):
    pw, pl = math.exp(c / nc), math.exp(r / nr)
    log_odds_ratio = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
    return -c / nc - b * logsig(log_odds_ratio)


def f_cpo(alpha):
    return lambda c, r, rc, rr, nc, nr, b: -logsig(b * (c - r)) + alpha * (-c / nc)


def f_rpo(alpha):
    return lambda c, r, rc, rr, nc, nr, b: -logsig(b * h(c, r, rc, rr)) + alpha * (-c / nc)


def f_fdpo(div, a=0.5):
    def fprime(u):
        if div == "reverse_kl":
            return math.log(u)
        if div == "forward_kl":
            return -1 / u
        if div == "js":
            return math.log(2 * u / (1 + u))
        return (1 - u ** (-a)) / a

    def f(c, r, rc, rr, nc, nr, b):
        uw, ul = math.exp(c - rc), math.exp(r - rr)
        return -logsig(b * fprime(uw) - b * fprime(ul))

    return f


def aot_expected(eps: float, unpaired: bool, b: float = BETA) -> list[float]:
    if unpaired:
        xs = sorted(c - rc for c, r, rc, rr, nc, nr in PAIRS)
        ys = sorted(r - rr for c, r, rc, rr, nc, nr in PAIRS)
    else:
        xs = sorted(c - r for c, r, rc, rr, nc, nr in PAIRS)
        ys = sorted(rc - rr for c, r, rc, rr, nc, nr in PAIRS)
    return [-(1 - eps) * logsig(b * (x - y)) - eps * logsig(-b * (x - y)) for x, y in zip(xs, ys)]


CASES = [
    ("dpo", {}, f_dpo_eps(0.0)),
    ("dpo", {"label_smoothing": 0.2}, f_dpo_eps(0.2)),
    ("hinge", {}, f_hinge),
    ("ipo", {}, f_ipo),
    ("robust", {}, f_robust(0.0)),
    ("robust", {"label_smoothing": 0.2}, f_robust(0.2)),
    ("exo", {"label_smoothing": 1e-3}, f_exo(1e-3)),
    ("exo", {"label_smoothing": 0.3}, f_exo(0.3)),
    ("nca", {}, f_nca),
    ("bco", {}, f_bco(0.0)),
    ("bco", {"delta": 0.05}, f_bco(0.05)),
    ("sppo_hard", {}, f_sppo),
    ("apo_zero", {}, f_apo_zero),
    ("apo_down", {}, f_apo_down),
    ("discopop", {}, f_discopop(0.05)),
    ("discopop", {"tau": 0.5}, f_discopop(0.5)),
    ("sigmoid_norm", {}, f_sigmoid_norm),
    ("simpo", {}, f_simpo(0.5)),
    ("simpo", {"gamma": 1.2}, f_simpo(1.2)),
    ("orpo", {}, f_orpo),
    ("cpo", {}, f_cpo(1.0)),
    ("cpo", {"alpha": 0.0}, f_cpo(0.0)),
    ("rpo", {}, f_rpo(1.0)),
    ("rpo", {"alpha": 0.3}, f_rpo(0.3)),
    ("f_dpo", {}, f_fdpo("reverse_kl")),
    ("f_dpo", {"divergence": "forward_kl"}, f_fdpo("forward_kl")),
    ("f_dpo", {"divergence": "js"}, f_fdpo("js")),
    ("f_dpo", {"divergence": "alpha"}, f_fdpo("alpha", 0.5)),
    ("f_dpo", {"divergence": "alpha", "alpha": 0.3}, f_fdpo("alpha", 0.3)),
]
SORTED_CASES = [
    ("aot", {}, 0.0, False),
    ("aot", {"label_smoothing": 0.1}, 0.1, False),
    ("aot_unpaired", {}, 0.0, True),
    ("aot_unpaired", {"label_smoothing": 0.1}, 0.1, True),
]


@pytest.mark.parametrize("name,params,formula", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_pairwise_matches_hand_formula(name, params, formula, beta):
    out = pairwise_loss(name, make_logps(), beta=beta, **params)
    close(out, [formula(*p, beta) for p in PAIRS])


@pytest.mark.parametrize("name,params,eps,unpaired", SORTED_CASES)
def test_aot_sorted_hand_formula(name, params, eps, unpaired):
    close(pairwise_loss(name, make_logps(), beta=BETA, **params), aot_expected(eps, unpaired))


def test_every_registered_pairwise_name_is_covered():
    covered = {c[0] for c in CASES} | {c[0] for c in SORTED_CASES}
    assert covered == set(PAIRWISE_LOSSES)


def test_default_beta_is_0_1():
    close(pairwise_loss("dpo", make_logps()), [f_dpo_eps(0.0)(*p, 0.1) for p in PAIRS])


def test_reference_free_losses_accept_missing_reference():
    lp = make_logps(with_ref=False)
    for name, formula in [("simpo", f_simpo(0.5)), ("orpo", f_orpo), ("cpo", f_cpo(1.0))]:
        close(pairwise_loss(name, lp, beta=BETA), [formula(*p, BETA) for p in PAIRS])


def test_explicit_chosen_nll_overrides_token_average():
    lp = make_logps()
    lp.chosen_nll = torch.tensor([2.0, 3.0], dtype=torch.float64)
    expected = [-logsig(BETA * h(*p[:4])) + 0.5 * nll for p, nll in zip(PAIRS, [2.0, 3.0])]
    close(pairwise_loss("rpo", lp, beta=BETA, alpha=0.5), expected)
    # cpo with the NLL given and no token counts at all
    lp2 = make_logps(with_tokens=False)
    lp2.chosen_nll = torch.tensor([2.0, 3.0], dtype=torch.float64)
    close(pairwise_loss("cpo", lp2, beta=BETA), [-logsig(BETA * (p[0] - p[1])) + n for p, n in zip(PAIRS, [2, 3])])


def test_combine_is_weighted_sum():
    out = combine([("dpo", 0.8, {}), ("bco", 0.2, {}), ("rpo", 1.0, {"alpha": 0.5})], make_logps(), beta=BETA)
    expected = [
        0.8 * f_dpo_eps(0)(*p, BETA) + 0.2 * f_bco(0)(*p, BETA) + f_rpo(0.5)(*p, BETA) for p in PAIRS
    ]
    close(out, expected)
    with pytest.raises(ValueError):
        combine([], make_logps(), BETA)


def test_register_pairwise_adds_a_usable_loss():
    name = "_test_margin_only"
    try:

        @register_pairwise(name, reference=False)
        def _margin(lp, beta, scale: float = 1.0):
            return scale * beta * (lp.rejected - lp.chosen)

        close(pairwise_loss(name, make_logps(with_ref=False), beta=0.5, scale=2.0), [-2.0, 1.0])
        with pytest.raises(ValueError, match="already registered"):
            register_pairwise(name)(_margin)
    finally:
        PAIRWISE_LOSSES.unregister(name)


# ---- errors ----


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="allowed:.*dpo"):
        pairwise_loss("nope", make_logps())
    with pytest.raises(ValueError, match="kto"):
        unpaired_loss("nope", make_unpaired())
    with pytest.raises(ValueError, match="pro"):
        listwise_loss("nope", torch.zeros(1, 2), torch.ones(1, 2))


def test_unknown_param_is_named():
    with pytest.raises(TypeError, match="'label_smothing'"):
        pairwise_loss("dpo", make_logps(), label_smothing=0.1)
    with pytest.raises(TypeError, match="'tau'"):
        pairwise_loss("ipo", make_logps(), tau=0.1)
    with pytest.raises(TypeError, match="'gamma'"):
        unpaired_loss("kto", make_unpaired(), gamma=1.0)


def test_missing_required_param_is_named():
    name = "_test_required"
    try:

        @register_pairwise(name)
        def _needs(lp, beta, margin):
            return lp.chosen * 0 + margin

        with pytest.raises(TypeError, match="'margin'"):
            pairwise_loss(name, make_logps())
    finally:
        PAIRWISE_LOSSES.unregister(name)


def test_exo_requires_label_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        pairwise_loss("exo", make_logps())
    with pytest.raises(ValueError, match="label_smoothing"):
        pairwise_loss("exo", make_logps(), label_smoothing=0.0)


@pytest.mark.parametrize("name", sorted(n for n, f in PAIRWISE_LOSSES.items() if f.needs_reference))
def test_missing_reference_raises(name):
    params = {"label_smoothing": 0.1} if name == "exo" else {}
    with pytest.raises(ValueError, match="reference"):
        pairwise_loss(name, make_logps(with_ref=False), **params)


def test_other_invalid_inputs():
    with pytest.raises(ValueError, match="token"):
        pairwise_loss("ipo", make_logps(with_tokens=False))
    with pytest.raises(ValueError, match="NLL|chosen_nll"):
        pairwise_loss("rpo", make_logps(with_tokens=False))
    with pytest.raises(ValueError, match="beta"):
        pairwise_loss("dpo", make_logps(), beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        pairwise_loss("robust", make_logps(), label_smoothing=0.5)
    with pytest.raises(ValueError, match="divergence"):
        pairwise_loss("f_dpo", make_logps(), divergence="tv")
    with pytest.raises(ValueError, match="tau"):
        pairwise_loss("discopop", make_logps(), tau=0.0)
    with pytest.raises(ValueError, match="shape"):
        PairLogps(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="together"):
        PairLogps(torch.zeros(2), torch.zeros(2), ref_chosen=torch.zeros(2))


# ---- gradients ----


def test_dpo_gradient_signs():
    lp = make_logps()
    lp.chosen.requires_grad_(True)
    lp.rejected.requires_grad_(True)
    pairwise_loss("dpo", lp).sum().backward()
    assert (lp.chosen.grad < 0).all()  # raising the chosen log-prob lowers the loss
    assert (lp.rejected.grad > 0).all()
    base = pairwise_loss("dpo", make_logps())
    up = make_logps()
    up.chosen = up.chosen + 0.5
    assert (pairwise_loss("dpo", up) < base).all()


@pytest.mark.parametrize(
    "name,params,with_ref",
    [("dpo", {"label_smoothing": 0.1}, True), ("ipo", {}, True), ("orpo", {}, False), ("f_dpo", {"divergence": "js"}, True)],
)
def test_gradcheck(name, params, with_ref):
    base = make_logps(with_ref=with_ref)
    c = base.chosen.clone().requires_grad_(True)
    r = base.rejected.clone().requires_grad_(True)

    def fn(c, r):
        lp = make_logps(with_ref=with_ref)
        lp.chosen, lp.rejected = c, r
        return pairwise_loss(name, lp, beta=0.5, **params)

    assert torch.autograd.gradcheck(fn, (c, r))


def test_gradcheck_tdpo_and_unpaired():
    lp0 = make_logps()
    c = lp0.chosen.clone().requires_grad_(True)
    klc = torch.tensor([0.3, 0.1], dtype=torch.float64, requires_grad=True)
    klr = torch.tensor([0.2, 0.4], dtype=torch.float64, requires_grad=True)

    def fn(c, klc, klr):
        lp = make_logps()
        lp.chosen = c
        return tdpo_loss(lp, klc, klr, beta=0.5, variant="tdpo1")

    assert torch.autograd.gradcheck(fn, (c, klc, klr))
    x = torch.tensor([-3.0, -4.0, -2.0], dtype=torch.float64, requires_grad=True)

    def fk(x):
        u = make_unpaired()
        u.logp = x
        return unpaired_loss("kto", u, beta=0.5)

    assert torch.autograd.gradcheck(fk, (x,))


# ---- unpaired ----


def make_unpaired(kl: bool = True) -> UnpairedLogps:
    d = torch.float64
    return UnpairedLogps(
        logp=torch.tensor([-3.0, -4.0, -2.0], dtype=d),
        ref_logp=torch.tensor([-3.5, -3.0, -2.2], dtype=d),
        label=torch.tensor([True, False, True]),
        tokens=torch.tensor([3, 4, 2]),
        kl_logp=torch.tensor([-6.0, -5.0, -7.0], dtype=d) if kl else None,
        kl_ref_logp=torch.tensor([-6.6, -5.1, -6.9], dtype=d) if kl else None,
    )


UNPAIRED = [(-3.0, -3.5, True), (-4.0, -3.0, False), (-2.0, -2.2, True)]


def test_kto_hand_formula_with_kl():
    z0 = max(0.0, ((-6.0 + 6.6) + (-5.0 + 5.1) + (-7.0 + 6.9)) / 3)
    wd, wu = 1.5, 0.7
    exp = [
        wd * (1 - sig(BETA * ((lp - ref) - z0))) if lab else wu * (1 - sig(BETA * (z0 - (lp - ref))))
        for lp, ref, lab in UNPAIRED
    ]
    close(unpaired_loss("kto", make_unpaired(), beta=BETA, desirable_weight=wd, undesirable_weight=wu), exp)


def test_kto_z0_clamped_and_absent():
    u = make_unpaired()
    u.kl_logp = torch.tensor([-7.0, -7.0, -7.0], dtype=torch.float64)  # mean KL estimate negative -> z0 = 0
    exp = [1 - sig(BETA * (lp - ref)) if lab else 1 - sig(-BETA * (lp - ref)) for lp, ref, lab in UNPAIRED]
    close(unpaired_loss("kto", u, beta=BETA), exp)
    close(unpaired_loss("kto", make_unpaired(kl=False), beta=BETA), exp)


def test_kto_z0_is_detached():
    u = make_unpaired()
    u.kl_logp = u.kl_logp.clone().requires_grad_(True)
    u.logp = u.logp.clone().requires_grad_(True)
    unpaired_loss("kto", u).sum().backward()
    assert u.logp.grad is not None
    assert u.kl_logp.grad is None or torch.all(u.kl_logp.grad == 0)


def test_bco_and_apo_zero_unpaired():
    delta = 0.02
    exp = [-logsig(BETA * (lp - ref) - delta) if lab else -logsig(-(BETA * (lp - ref) - delta)) for lp, ref, lab in UNPAIRED]
    close(unpaired_loss("bco", make_unpaired(), beta=BETA, delta=delta), exp)
    exp = [1 - sig(BETA * (lp - ref)) if lab else sig(BETA * (lp - ref)) for lp, ref, lab in UNPAIRED]
    close(unpaired_loss("apo_zero_unpaired", make_unpaired(), beta=BETA), exp)
    assert set(UNPAIRED_LOSSES) == {"kto", "bco", "apo_zero_unpaired"}


def test_running_mean():
    rm = RunningMean()
    rm.update(torch.tensor([1.0, 2.0, 3.0]))
    rm.update(torch.tensor([10.0]))
    assert rm.value == pytest.approx(4.0)
    ema = RunningMean(momentum=0.5)
    ema.update(torch.tensor([2.0, 4.0]))
    ema.update(torch.tensor([7.0]))
    assert ema.value == pytest.approx(0.5 * 3.0 + 0.5 * 7.0)
    clone = RunningMean()
    clone.load_state_dict(rm.state_dict())
    assert clone.value == rm.value and clone.count == 4


# ---- listwise ----


def test_pro_hand_formula():
    logps = [[-4.0, -9.0, -6.0], [-2.0, -3.0, -8.0]]
    toks = [[2, 3, 2], [1, 3, 4]]
    lam = 0.25
    exp = []
    for lp, n in zip(logps, toks):
        r = [a / b for a, b in zip(lp, n)]
        loss = 0.0
        for k in range(len(r) - 1):
            loss -= r[k] - math.log(sum(math.exp(x) for x in r[k:]))
        exp.append(loss + lam * (-r[0]))
    out = listwise_loss("pro", torch.tensor(logps, dtype=torch.float64), torch.tensor(toks), sft_weight=lam)
    close(out, exp)
    assert set(LISTWISE_LOSSES) == {"pro"}
    with pytest.raises(ValueError, match="reference-free"):
        listwise_loss("pro", torch.zeros(1, 2), torch.ones(1, 2), ref_logps=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="K >= 2"):
        listwise_loss("pro", torch.zeros(1, 1), torch.ones(1, 1))


def test_curriculum_pairs_easy_to_hard():
    # gaps: (0,1)=0.8, (2,1)=0.5, (0,2)=0.3
    assert curriculum_pairs([0.9, 0.1, 0.6]) == [(0, 1), (2, 1), (0, 2)]
    # equal gaps are ordered by (chosen, rejected) index
    assert curriculum_pairs([1.0, 3.0, 2.0]) == [(1, 0), (1, 2), (2, 0)]
    assert curriculum_pairs([1.0, 1.0]) == []


# ---- token level ----


def test_tdpo_variants_and_stop_gradient():
    klc_v, klr_v = [0.3, 0.1], [0.2, 0.4]
    a = 0.7
    exp2 = [-logsig(BETA * (h(*p[:4]) - a * (kr - kc))) for p, kc, kr in zip(PAIRS, klc_v, klr_v)]
    exp1 = [-logsig(BETA * (h(*p[:4]) - (kr - kc))) for p, kc, kr in zip(PAIRS, klc_v, klr_v)]
    for variant, alpha, exp in [("tdpo2", a, exp2), ("tdpo1", None, exp1)]:
        klc = torch.tensor(klc_v, dtype=torch.float64, requires_grad=True)
        klr = torch.tensor(klr_v, dtype=torch.float64, requires_grad=True)
        out = tdpo_loss(make_logps(), klc, klr, beta=BETA, alpha=alpha, variant=variant)
        close(out, exp)
        out.sum().backward()
        assert klr.grad is not None and (klr.grad > 0).all()
        if variant == "tdpo2":
            assert klc.grad is None or torch.all(klc.grad == 0)
        else:
            assert (klc.grad < 0).all()
    with pytest.raises(ValueError, match="alpha"):
        tdpo_loss(make_logps(), torch.zeros(2), torch.zeros(2), alpha=0.5, variant="tdpo1")
    with pytest.raises(ValueError, match="reference"):
        tdpo_loss(make_logps(with_ref=False), torch.zeros(2), torch.zeros(2))


def test_sequential_kl_hand():
    # B=1, T=2, V=2; second token masked out
    ref_logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]], dtype=torch.float64)
    pol_logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[1, 0]])
    p = [math.exp(0) / (math.exp(0) + math.exp(1)), math.exp(1) / (math.exp(0) + math.exp(1))]
    q = [p[1], p[0]]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    close(sequential_kl(ref_logits, pol_logits, mask), [kl])
    p2 = [sig(2.0), 1 - sig(2.0)]
    kl2 = sum(pi * math.log(pi / 0.5) for pi in p2)
    close(sequential_kl(ref_logits, pol_logits, torch.ones(1, 2)), [kl + kl2])


def test_wpo_weights_hand_and_detached():
    tl = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    w = wpo_weights(tl, mask)
    close(w, [math.exp(-1.5), math.exp(-0.5)])
    assert not w.requires_grad
    lss = torch.full((2, 3), -0.25, dtype=torch.float64)
    close(wpo_weights(tl, mask, log_sum_sq_probs=lss), [math.exp(-1.25), math.exp(-0.25)])


def test_ld_dpo_logps_hand():
    tl = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -5.0, -7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])  # second row: first position is padding
    out = ld_dpo_logps(tl, mask, public_length=torch.tensor([2, 1]), alpha=0.5)
    close(out, [-1 - 2 + 0.5 * (-3 - 4), -1 + 0.5 * (-5 - 7)])
    close(ld_dpo_logps(tl, mask, torch.tensor([2, 1]), alpha=1.0), [-10.0, -13.0])
