"""alignkit bench: suite handling, figures, and one tiny end-to-end suite (slow)."""

import json

import pytest

from alignkit.pipelines.bench import Bench, _substitute, draw_figures


def _point(method, kl, gold, **kw):
    return {"method": method, "run": "default", "kl": kl, "gold_reward": gold, "gold_reward_se": 0.01, "length": 10.0, **kw}


def test_figures_from_points(tmp_path):
    points = [_point("start", 0.0, 0.0, proxy=0.0), _point("A", 1.0, 0.3, proxy=1.0, final=True, x=0.0, group="A"),
              _point("A", 0.5, 0.2, proxy=0.5), _point("B", 2.0, 0.1, proxy=2.0, final=True, x=0.2, group="B")]
    figures = draw_figures(points, tmp_path, "t")
    assert {p.name for p in figures.values()} == {"frontier.png", "overoptimisation.png", "by_x.png", "lengths.png"}
    assert all(p.stat().st_size > 1000 for p in figures.values())


def test_reference_evaluator_shares_evaluate_policy(tiny_dir):
    from alignkit.evaluation.policy import ReferenceEvaluator, evaluate_policy
    from alignkit.tasks import get_task

    task = get_task("sentiment")
    evaluator = ReferenceEvaluator.from_dir(task, tiny_dir, n_prompts=4, n_samples=2, max_new_tokens=8, seed=3)
    point = evaluator.evaluate(tiny_dir, "start")
    basic = evaluate_policy("start", evaluator.reference, evaluator.tokenizer, task, evaluator.prompts, reference=evaluator.reference,
                            n_samples=2, max_new_tokens=8, seed=3)
    got = (point["gold_reward"], point["gold_reward_se"], point["length"], point["malformed"])
    assert got == (basic.gold_reward, basic.gold_reward_se, basic.length, basic.malformed)
    assert point["kl"] == point["kl_k3"] == basic.kl == 0.0  # the start model against itself
    assert 0.0 <= point["win_rate"] <= 1.0 and len(point["samples"]) == 6 and set(point["samples"][0]) == {"prompt", "completion", "gold"}


def test_suite_checks_and_reward_model_names(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        Bench({"methods": [{"name": "x"}], "bogus": 1})
    with pytest.raises(ValueError, match="methods"):
        Bench({"methods": []})
    with pytest.raises(FileNotFoundError):
        Bench(tmp_path / "missing.yaml")
    assert _substitute({"rl": {"reward": "@rm"}, "l": ["@rm", "x"]}, {"rm": "/p"}) == {"rl": {"reward": "/p"}, "l": ["/p", "x"]}
    with pytest.raises(ValueError, match="names no reward model"):
        _substitute("@other", {"rm": "/p"})
    bench = Bench({"methods": [{"name": "x"}], "task": {"name": "pluralistic"}}, ["output_dir=" + str(tmp_path / "b")])
    assert bench.out == tmp_path / "b" and bench.task().name == "pluralistic"


@pytest.mark.slow
def test_tiny_suite_end_to_end(tmp_path, tiny_dir):
    from typer.testing import CliRunner

    from alignkit.cli import app

    train = {"max_steps": 2, "batch_size": 8, "lr": 1.0e-3}
    suite = {
        "name": "tiny",
        "output_dir": str(tmp_path / "bench"),
        "task": {"name": "sentiment"},
        "sft": str(tiny_dir),
        "eval": {"prompts": 8, "samples": 1, "max_new_tokens": 12},
        "pairs": {"prompts": 32, "label_noise": 0.2},
        "reward_models": {"rm": {"recipe": {"train": {"max_steps": 2, "batch_size": 8}}}},
        "proxy": "@rm",
        "methods": [
            {"name": "DPO", "x": 0.2, "checkpoints": True,
             "recipe": {"algorithm": "dpo", "train": {**train, "save_every": 1, "save_total_limit": None}}},
            {"name": "iterative DPO", "type": "iterative_dpo", "rounds": 2, "recipe": {"algorithm": "dpo", "train": {**train, "max_steps": 1}}},
            {"name": "GRPO vs RM",
             "recipe": {"algorithm": "rl", "rl": {"reward": "@rm", "sampling": {"group_size": 2, "max_new_tokens": 8}}, "train": {**train, "batch_size": 4}}},
        ],
    }
    path = tmp_path / "suite.yaml"
    import yaml

    path.write_text(yaml.safe_dump(suite))
    result = CliRunner().invoke(app, ["bench", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench" / "points.json").read_text())
    methods = [p["method"] for p in data["points"]]
    assert methods.count("DPO") >= 2 and methods.count("iterative DPO") == 2 and methods.count("GRPO vs RM") == 1
    for p in data["points"]:
        assert {"gold_reward", "kl_k1", "kl_k3", "win_rate", "proxy", "distinct_2", "self_bleu", "length"} <= set(p)
        assert 0.0 <= p["win_rate"] <= 1.0 and p["kl_k3"] >= 0
    for name in ("frontier.png", "overoptimisation.png", "by_x.png", "lengths.png", "report.html"):
        assert (tmp_path / "bench" / name).exists()
    # eval of a run folder writes the new metrics
    run_dir = tmp_path / "bench" / "runs" / "dpo-default"
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--n-prompts", "8", "--samples", "1"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert {"kl_k3", "win_rate", "distinct_2", "self_bleu", "implicit_reward_accuracy", "logprob_curves"} <= set(evaluation)
    assert "extra_metrics_error" not in evaluation
