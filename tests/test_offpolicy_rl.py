"""rl.off_policy: the off-policy corrections of objectives/offpolicy.py (tested there on hand-worked cases)
reached from a recipe. μ's log-probs are the rollout engine's own (``Sample.logprobs``)."""

from typing import get_args

import pytest
import torch
from safetensors.torch import load_file

from alignkit.algorithms import train
from alignkit.algorithms.rl.estimators import policy_gradient_loss
from alignkit.config import OffPolicyConfig, load_recipe
from alignkit.objectives import OFF_POLICY_CORRECTIONS
from test_online_rl import rl_recipe, rows

SHORT = ["train.max_steps=3", "train.eval_every=null", "train.log_every=1", "rl.sampling.group_size=4", "task.n_train=64"]


def test_the_options_are_the_registered_corrections_and_bad_combinations_are_refused():
    assert sorted(get_args(OffPolicyConfig.model_fields["correction"].annotation)) == OFF_POLICY_CORRECTIONS.names()
    base = {"algorithm": "rl"}
    load_recipe(base, ["rl.sampling.behavior=reference", "rl.off_policy.correction=tis"])  # off-policy samples, corrected
    for extra, message in [
        (["rl.sampling.behavior=reference"], "is for rl.estimator=copg"),
        (["rl.off_policy.correction=tis", "rl.sampling.backend=hf"], "does not report"),
        (["rl.off_policy.correction=mis", "rl.estimator=p3o"], "own pairwise loss"),
        (["rl.off_policy.correction=bogus"], "tis"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_recipe(base, extra)


def test_corrected_loss_on_a_hand_made_batch():
    """One row, 3 completion tokens after one prompt token, advantage 2, on-policy ratio 1 (logp = old_logp);
    μ's log-probs chosen so ρ = π_old/μ = (e^0.1, e^-1, e^2) = (1.105, 0.368, 7.389). Masked IS with band
    [0.5, 5] keeps only the first token, with weight ρ. ppo_clip at ratio 1 is -A per token, so the token-mean
    loss is -(1.105 * 2 + 0 + 0) / 3: dropped tokens stay in the denominator."""
    recipe = load_recipe({"algorithm": "rl"}, ["rl.off_policy.correction=mis", "rl.off_policy.params={low: 0.5, high: 5.0}"])
    logp = torch.tensor([[0.0, -1.0, -2.0, -0.5]], requires_grad=True)
    old = logp.detach().clone()
    batch = {"loss_mask": torch.tensor([[0, 1, 1, 1]]), "advantage": torch.tensor([2.0]), "old_logp": old,
             "behaviour_logp": old - torch.tensor([[0.0, 0.1, -1.0, 2.0]])}
    total, metrics = policy_gradient_loss(recipe.rl, logp, batch, weight=3.0, reference=False)
    expected = -(torch.exp(torch.tensor(0.1)) * 2.0) / 3.0
    assert float(total.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert metrics["policy/is_masked_frac"][0] / 3.0 == pytest.approx(2 / 3)
    total.backward()
    assert logp.grad[0, 2] == 0 and logp.grad[0, 3] == 0 and logp.grad[0, 1] != 0  # dropped tokens: no gradient


def test_on_policy_samples_need_no_correction(tmp_path, arithmetic_sft):
    """With the policy as the behaviour (the local engine's log-probs are the trainer's), ρ = 1 up to float
    error: truncated IS trains the same weights as no correction."""
    plain = train(rl_recipe(tmp_path / "plain", arithmetic_sft, "grpo", SHORT))
    tis = train(rl_recipe(tmp_path / "tis", arithmetic_sft, "grpo", [*SHORT, "rl.off_policy.correction=tis"]))
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(tis / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    logged = rows(tmp_path / "tis")
    assert all(r["policy/is_ratio_mean"] == pytest.approx(1.0, abs=1e-4) for r in logged)
    assert all(abs(r["policy/mismatch_kl"]) < 1e-6 for r in logged)


def test_reference_samples_are_reweighted_once_the_policy_moves(tmp_path, arithmetic_sft):
    """rl.sampling.behavior=reference: samples from the frozen start, μ = the start. At step 1 the policy is
    the start (ρ = 1); after updates ρ = π/μ moves away from 1 and the correction acts on it."""
    train(rl_recipe(tmp_path / "ref", arithmetic_sft, "grpo", [*SHORT, "train.max_steps=4", "rl.sampling.behavior=reference",
                                                                 "rl.off_policy.correction=tis", "rl.off_policy.params={cap: 1.5}"]))
    logged = rows(tmp_path / "ref")
    assert logged[0]["policy/is_ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    later = logged[-1]
    assert abs(later["policy/is_ratio_mean"] - 1.0) > 1e-3 and later["policy/mismatch_kl"] > 1e-5
    assert 0.0 <= later["policy/is_truncated_frac"] <= 1.0
