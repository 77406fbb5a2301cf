"""End to end: the demo's DPO model beats its SFT model on the gold reward (not only "it runs")."""

import json

import pytest

from alignkit.pipelines.demo import run_demo


@pytest.mark.slow
def test_demo_raises_gold_reward(tmp_path):
    results = run_demo(tmp_path / "demo", n_pairs_prompts=2048, n_eval_prompts=256, quiet=True, progress=False)
    assert results["gain"] > 0.25, results
    assert results["dpo_gold_reward"] > results["sft_gold_reward"] + 4 * max(e["gold_reward_se"] for e in results["evaluations"])
    assert 0 < results["dpo_kl_to_sft"] < 10
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "gold_reward_vs_kl.png" in report and "dpo_curves.png" in report
    for png in ["gold_reward_vs_kl.png", "sft_curves.png", "dpo_curves.png"]:
        assert (tmp_path / "demo" / "plots" / png).stat().st_size > 5000
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["gain"] == pytest.approx(results["gain"])
