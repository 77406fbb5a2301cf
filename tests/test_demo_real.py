"""The real-model demo (alignkit demo --real) at a tiny size on SmolLM2: VADER-labelled pairs from the model's
own samples, DPO from the model itself, before/after evaluation, report and results."""

import json
import math

import pytest

from alignkit.pipelines.demo_real import RealDemoSettings, review_prompts, run_real_demo, settings_from_overrides
from alignkit.rewards.vader import vader_compound


@pytest.mark.slow
def test_real_demo_end_to_end(smollm2, tmp_path):
    settings = RealDemoSettings(model=str(smollm2), train_prompts=8, eval_prompts=4, eval_samples=1, max_new_tokens=16,
                                label_temperature=1e-6, batch_size=4, max_steps=2)
    out = tmp_path / "demo-real"
    results = run_real_demo(out, settings, quiet=True, progress=False)

    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert 4 <= len(pairs) <= 8 and results["pairs"] == len(pairs)
    for row in pairs:  # T -> 0: the Bradley-Terry draw picks the higher VADER score (ties: either side)
        assert row["chosen_vader"] == vader_compound(row["chosen"]) and row["rejected_vader"] == vader_compound(row["rejected"])
        assert row["chosen_vader"] >= row["rejected_vader"]
        assert isinstance(row["prompt"], list) and row["prompt"][0]["role"] == "user"
    assert results["dpo_steps"] == 2
    assert results["dpo_loss_first"] == pytest.approx(math.log(2), abs=1e-4)  # the reference is the starting model

    saved = json.loads((out / "results.json").read_text())
    before, after = saved["evaluations"]
    assert (before["name"], after["name"]) == ("start", "dpo") and before["n"] == after["n"] == 4
    assert before["kl"] == 0.0 and math.isfinite(after["kl"])
    starts = [s["vader"] for s in saved["samples"]["start"]]
    assert saved["start_gold_reward"] == pytest.approx(sum(starts) / len(starts), abs=1e-4)
    assert saved["gain"] == pytest.approx(saved["dpo_gold_reward"] - saved["start_gold_reward"])
    report = (out / "report.html").read_text()
    assert f"start {saved['start_gold_reward']:+.3f}" in report and f"after DPO {saved['dpo_gold_reward']:+.3f}" in report


def test_review_prompts_and_settings():
    train, test = review_prompts(240, "train"), review_prompts(96, "test")
    assert len({p[0]["content"] for p in train}) == 240  # 40 products x 6 wordings, each once
    assert not {p[0]["content"] for p in train} & {p[0]["content"] for p in test}
    assert review_prompts(5, "train", seed=1) == review_prompts(5, "train", seed=1) != review_prompts(5, "train", seed=2)
    s = settings_from_overrides(["lr=1e-6", "train_prompts=16", "max_steps=3"], model="m")
    assert (s.lr, s.train_prompts, s.max_steps, s.model) == (1e-6, 16, 3, "m")
    with pytest.raises(ValueError, match="demo --real --set 'lrr=1': unknown setting 'lrr'; settings: model, train_prompts"):
        settings_from_overrides(["lrr=1"])
    with pytest.raises(ValueError, match="setting train_prompts='many' must be an integer"):
        settings_from_overrides(["train_prompts=many"])


def test_cli_names_a_missing_model(tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli import app

    result = CliRunner().invoke(app, ["demo", "--real", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'none'}: no model folder here; make it with alignkit fetch-model smollm2-135m-instruct" in result.output
    assert not (tmp_path / "out").exists()
