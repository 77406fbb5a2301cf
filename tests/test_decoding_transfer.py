"""Transfer Q*'s indirect transfer (value_guided ``transfer: indirect``): the importance weights
``w_i ∝ exp(r_i / beta) pi_sft(y_i|x) / rho_BL(y_i|x)`` by hand, the weighted value fit converging to the
self-normalised estimate, and the strategy end to end."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.decoding import decode_with
from alignkit.decoding.value import Rollouts, completion_logps, fit_value, importance_weights, new_value_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_importance_weights_by_hand():
    # one prompt, two rollouts: r = (1, 0), beta 1, log pi_sft - log rho_BL = (0, log 2)
    # logits 1 and log 2 -> w ∝ (e, 2), normalised to mean 1: (2e / (e + 2), 4 / (e + 2))
    w = importance_weights([1.0, 0.0], [-3.0, -2.0 + math.log(2)], [-3.0, -2.0], group=2, beta=1.0)
    assert w == pytest.approx([2 * math.e / (math.e + 2), 4 / (math.e + 2)])
    # the weighted mean reward (the value of the prompt toward pi* ∝ pi_sft exp(r / beta)): e / (e + 2) = 0.576
    assert sum(wi * r for wi, r in zip(w, [1.0, 0.0])) / sum(w) == pytest.approx(math.e / (math.e + 2)) == pytest.approx(0.5761, abs=1e-4)
    # groups are normalised apart; beta scales the reward's pull
    w2 = importance_weights([1.0, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4, group=2, beta=0.5)
    assert w2 == pytest.approx([2 * math.e ** 2 / (math.e ** 2 + 1), 2 / (math.e ** 2 + 1), 1.0, 1.0])
    with pytest.raises(ValueError, match="transfer_beta must be > 0"):
        importance_weights([1.0], [0.0], [0.0], 1, 0.0)


def test_a_baseline_that_is_the_targets_optimum_gets_uniform_weights():
    # rho_BL = pi_sft exp(r / beta) / Z exactly: log rho_BL = log pi_sft + r / beta - log Z, so every weight is 1
    # (direct transfer is then exact)
    r, base = [0.3, -1.0, 2.0, 0.5], [-4.0, -2.5, -6.0, -1.0]
    beta, log_z = 0.7, 1.3
    baseline = [b + ri / beta - log_z for b, ri in zip(base, r)]
    assert importance_weights(r, base, baseline, group=4, beta=beta) == pytest.approx([1.0] * 4)


def test_weighted_fit_converges_to_the_self_normalised_estimate(tiny_dir, tokenizer):
    from alignkit.models.loading import load_policy_for_inference

    model = load_policy_for_inference(tiny_dir)
    ids = tokenizer("review of the soup : the soup was good .", add_special_tokens=False)["input_ids"]
    # the same text twice with rewards 1 and 0: the best value of every prefix is the weighted mean of (1, 0)
    data = Rollouts([ids, ids], [4, 4], [1.0, 0.0])
    w = [2 * math.e / (math.e + 2), 4 / (math.e + 2)]
    torch.manual_seed(0)
    value = new_value_model(model)
    fit_value(value, data, tokenizer.pad_token_id, lam=1.0, epochs=150, lr=3e-3, weights=w)
    with torch.no_grad():
        v = value.values(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -5:]
    assert v.tolist() == pytest.approx([math.e / (math.e + 2)] * 5, abs=0.02)  # 0.576, not the unweighted 0.5
    with pytest.raises(ValueError, match="2 rollouts but 1 weights"):
        fit_value(value, data, tokenizer.pad_token_id, weights=[1.0])


def test_completion_logps_match_a_plain_forward(tiny_dir, tokenizer):
    from alignkit.models.loading import load_policy_for_inference

    model = load_policy_for_inference(tiny_dir)
    a = tokenizer("review of the soup : the soup was good .", add_special_tokens=False)["input_ids"]
    b = tokenizer("review of the game : bad", add_special_tokens=False)["input_ids"]
    expected = []
    for seq, n in ((a, 5), (b, 1)):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        expected.append(sum(float(logp[j - 1, seq[j]]) for j in range(len(seq) - n, len(seq))))
    got = completion_logps(model, Rollouts([a, b], [5, 1], [0.0, 0.0]), tokenizer.pad_token_id)  # left padding changes nothing
    assert got == pytest.approx(expected, abs=1e-4)


def test_indirect_transfer_strategy(tiny_dir, tokenizer):
    from alignkit.models.loading import load_policy_for_inference

    model, baseline = load_policy_for_inference(tiny_dir), load_policy_for_inference(tiny_dir)
    prompts = ["review of the soup :"]
    opts = dict(value="fit", fit_prompts=4, fit_samples=2, fit_epochs=1, k=3, fit_from=baseline)
    out = decode_with("value_guided", model, tokenizer, prompts, max_new_tokens=4, transfer="indirect", transfer_beta=0.5, **opts)
    fit = out.stats["fit"]
    assert fit["transfer"] == "indirect" and fit["transfer_beta"] == 0.5 and 1.0 <= fit["ess_per_prompt"] <= 2.0
    assert out.cost.forwards["policy"] <= 5  # the fit's forwards (rollouts, log-probs) are not the decoding's
    with pytest.raises(ValueError, match="transfer=indirect needs value=fit and fit_from"):
        decode_with("value_guided", model, tokenizer, prompts, max_new_tokens=2, transfer="indirect")
    with pytest.raises(ValueError, match="transfer must be one of direct, indirect"):
        decode_with("value_guided", model, tokenizer, prompts, max_new_tokens=2, transfer="both")
