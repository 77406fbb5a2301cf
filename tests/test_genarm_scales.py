"""GenARM's ``scale: std`` option (each ARM's next-token log-probs standardised under the base model's next-token
distribution before weighting) on hand-made two-token vocabularies, and an ARM folder as a reward source
(``r = beta_r * sum_t log pi_r(y_t | x, y<t)``) checked against a separate forward of the model."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from alignkit.decoding import decode_with
from alignkit.decoding.genarm import ScaledArmsGuide, genarm_alphas, standardised
from alignkit.decoding.guided import ProductGuide
from alignkit.rollout import Sampler, decode
from alignkit.rollout.local import CachedModelGuide
from test_decoding_strategies import Fixed

pytestmark = pytest.mark.usefixtures("one_thread")


def scaled(arms, weights, beta):
    return ScaledArmsGuide([CachedModelGuide(Fixed(a), 1.0) for a in arms], genarm_alphas(beta, weights, len(arms)))


def first_token(base, guide, jobs=3000):
    out = decode(Fixed(base), [[0]] * jobs, None, Sampler(seed=5, truncated_logprobs=True), 1, [2], guide=guide)
    return out


def check(out, p1):
    """Every sample's log-prob is that of the expected distribution (p(1) = p1, p(0) = 1 - p1); frequencies match."""
    for d in out:
        assert d.completion_ids[0] in (0, 1)
        assert d.logprobs[0] == pytest.approx(math.log(p1 if d.completion_ids[0] == 1 else 1 - p1), abs=1e-4)
    assert sum(d.completion_ids[0] == 1 for d in out) / len(out) == pytest.approx(p1, abs=0.03)


def test_standardised_by_hand():
    # base (0.5, 0.3, 0.2); ARM log-probs l = log(0.2, 0.3, 0.5)
    p = torch.tensor([[0.5, 0.3, 0.2]])
    lp = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    l0, l1, l2 = math.log(0.2), math.log(0.3), math.log(0.5)
    m = 0.5 * l0 + 0.3 * l1 + 0.2 * l2
    s = math.sqrt(0.5 * (l0 - m) ** 2 + 0.3 * (l1 - m) ** 2 + 0.2 * (l2 - m) ** 2)
    expected = [(l0 - m) / s, (l1 - m) / s, (l2 - m) / s]
    assert standardised(lp, p)[0].tolist() == pytest.approx(expected, abs=1e-6)
    # an ARM flat over the base's support adds nothing
    assert standardised(torch.log(torch.tensor([[0.25, 0.25, 0.5]])), torch.tensor([[0.5, 0.5, 0.0]]))[0, :2].tolist() == pytest.approx([0, 0])


def test_scale_std_two_token_vocabulary_by_hand():
    # base (0.8, 0.2), ARM (0.3, 0.7), beta 0.5, w 1: alpha = 2. Under the base, l(1) - l(0) = d has std
    # sqrt(0.8 * 0.2) |d| = 0.4 |d|, so the standardised ARM tilts token 1 by d / (0.4 d) = 2.5 against token 0
    # and the guided logit difference is log(0.2 / 0.8) + 2 * 2.5 = -1.3863 + 5.
    p1 = 0.2 * math.exp(5) / (0.8 + 0.2 * math.exp(5))
    assert p1 == pytest.approx(0.97376, abs=1e-5)
    check(first_token([0.8, 0.2, 1e-30], scaled([[0.3, 0.7, 1e-30]], 1.0, 0.5)), p1)
    # the paper's rule (scale none) would give 0.2 * 0.49 / (0.8 * 0.09 + 0.2 * 0.49) = 0.576: the std scale differs
    assert p1 != pytest.approx(0.098 / 0.170, abs=0.1)


def test_scale_std_makes_the_arm_scale_irrelevant():
    # any ARM preferring token 1, however weakly, tilts by the same 2.5 standardised units: (0.45, 0.55) as (0.3, 0.7)
    p1 = 0.2 * math.exp(5) / (0.8 + 0.2 * math.exp(5))
    check(first_token([0.8, 0.2, 1e-30], scaled([[0.45, 0.55, 1e-30]], 1.0, 0.5)), p1)
    # two opposite ARMs of very different sharpness, equal weights: they cancel, the base distribution is left
    check(first_token([0.8, 0.2, 1e-30], scaled([[0.3, 0.7, 1e-30], [0.9, 0.1, 1e-30]], [0.5, 0.5], 0.5)), 0.2)
    # under the paper's rule they do not cancel: log-ratios log(7/3) = 0.847 and log(1/9) = -2.197, alpha 1 each
    tilt = math.log(0.7 / 0.3) + math.log(0.1 / 0.9)
    paper = 0.2 * math.exp(tilt) / (0.8 + 0.2 * math.exp(tilt))
    guide = ProductGuide([CachedModelGuide(Fixed([0.3, 0.7, 1e-30]), 1.0), CachedModelGuide(Fixed([0.9, 0.1, 1e-30]), 1.0)])
    check(first_token([0.8, 0.2, 1e-30], guide), paper)
    assert paper == pytest.approx(0.2 * 7 / 27 / (0.8 + 0.2 * 7 / 27)) and paper == pytest.approx(0.0609, abs=1e-4)


def test_genarm_strategy_scale_option(tiny_dir, tokenizer):
    from alignkit.models.loading import load_policy_for_inference

    model, arm = load_policy_for_inference(tiny_dir), load_policy_for_inference(tiny_dir)
    prompts = ["review of the soup :", "review of the game :"]
    out = decode_with("genarm", model, tokenizer, prompts, max_new_tokens=6, arm=arm, beta=0.5, scale="std")
    assert out.stats["scale"] == "std" and out.stats["alpha"] == [2.0]
    assert out.cost.forwards["arm"] == out.cost.forwards["policy"]  # the ARM's cache in lockstep: one forward per step
    plain = decode_with("genarm", model, tokenizer, prompts, max_new_tokens=6, arm=arm, beta=0.5)
    assert plain.stats["scale"] == "none"
    with pytest.raises(ValueError, match="scale must be one of none, std"):
        decode_with("genarm", model, tokenizer, prompts, max_new_tokens=2, arm=arm, scale="max")


# ---------------------------------------------------------------------------------------------------------
# an ARM folder as a reward source
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arm_dir(tiny_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("arm") / "arm"
    shutil.copytree(tiny_dir, path)
    config = json.loads((path / "config.json").read_text()) | {"reward_type": "arm", "arm_beta": 0.25}
    (path / "config.json").write_text(json.dumps(config))
    return path


def summed_logp_by_hand(model, tokenizer, prompt, completion):
    """sum_t log pi(y_t | x, y<t) over the completion's tokens and the EOS, from one plain forward."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(p) + i - 1, tok]) for i, tok in enumerate(c))


def test_arm_folder_scores_beta_r_times_summed_logprobs(arm_dir, tokenizer):
    from alignkit.models.loading import load_policy_for_inference
    from alignkit.rewards import build_reward_source, check_reward_spec

    check_reward_spec(str(arm_dir))
    model = load_policy_for_inference(arm_dir)
    prompts = ["review of the soup :", "review of the game :", "review of the soup :"]
    completions = [" the soup was good .", " the boss was bad and the music was fine .", ""]
    by_hand = [summed_logp_by_hand(model, tokenizer, p, c) for p, c in zip(prompts, completions)]
    source = build_reward_source(str(arm_dir))
    assert source.arm_beta == 0.25  # the folder's arm_beta
    assert source.score(prompts, completions).tolist() == pytest.approx([0.25 * x for x in by_hand], abs=1e-4)
    unscaled = build_reward_source({"type": "model", "path": str(arm_dir), "arm_beta": 1.0, "batch_size": 2})
    assert unscaled.score(prompts, completions).tolist() == pytest.approx(by_hand, abs=1e-4)  # batching changes nothing
    # the empty completion is the EOS alone: r = beta_r log pi(EOS | x)
    assert by_hand[2] < 0 and source.score(prompts[2:], completions[2:]).item() == pytest.approx(0.25 * by_hand[2], abs=1e-5)


def test_arm_folder_from_the_cli_eval_and_as_a_best_of_n_reward(arm_dir, tiny_dir, tokenizer, tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli import app
    from alignkit.models.loading import load_policy_for_inference

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["review of the soup :", "review of the game :"]))
    result = CliRunner().invoke(app, ["eval", str(tiny_dir), "--data", str(data), "--reward", str(arm_dir), "--max-new-tokens", "6",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    report = json.loads(next((tmp_path / "e").glob("eval-*.json")).read_text())
    assert "reward" in json.dumps(report)
    # best-of-N with the ARM's reward keeps, per prompt, the candidate of the highest beta_r * sum log pi_r
    model = load_policy_for_inference(tiny_dir)
    out = decode_with("best_of_n", model, tokenizer, ["review of the soup :"], max_new_tokens=6, N=4, reward=str(arm_dir))
    assert out.cost.reward_sequences == 4
