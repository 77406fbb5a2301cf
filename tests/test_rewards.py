"""Reward sources, reward-model training (BT, ensemble, preference model, ranked data) and evaluation."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from alignkit.algorithms import train
from alignkit.config import TaskConfig, load_recipe
from alignkit.rewards import (
    CombinedSource,
    EnsembleSource,
    FunctionSource,
    PreferenceModelSource,
    RewardModelSource,
    TaskGoldSource,
    build_reward_source,
)
from alignkit.rewards.evaluate import evaluate_pairs, expected_calibration_error
from alignkit.tasks import get_task, task_rows

TEMPERATURE = 0.25


def recipe(out, model_path=None, **sections):
    data = {
        "algorithm": "reward",
        "task": {"n_train": 256, "n_eval": 0, "label_temperature": TEMPERATURE},
        "train": {"output_dir": str(out), "max_steps": 4, "batch_size": 16, "lr": 2e-3, "progress": False, "log_every": 1},
    }
    if model_path is not None:
        data["model"] = {"path": str(model_path)}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return load_recipe(data)


# --------------------------------------------------------------------------------------------------
# sources without a model
# --------------------------------------------------------------------------------------------------
def double_length(prompts, completions, scale=1.0):
    return [scale * 2 * len(c) for c in completions]


def test_function_sources_and_factory():
    src = build_reward_source("alignkit.rewards.verifiable:exact_match")
    assert isinstance(src, FunctionSource)
    assert src.score(["q", "q"], [" Paris ", "Lyon"], answers=["paris", "paris"]).tolist() == [1.0, 0.0]
    num = build_reward_source({"type": "function", "path": "alignkit.rewards.verifiable:numeric_answer", "kwargs": {"tol": 0.01}})
    assert num.score(["q"] * 3, ["so it is 1,234.001", "42", "none"], answers=[1234, 41, 1]).tolist() == [1.0, 0.0, 0.0]
    fmt = build_reward_source({"function": "alignkit.rewards.verifiable:format_match", "kwargs": {"pattern": r"the .* \."}})
    assert fmt.score(["p", "p"], [" the soup was good .", "soup"]).tolist() == [1.0, 0.0]
    assert build_reward_source({"function": f"{__name__}:double_length", "kwargs": {"scale": 0.5}}).score(["a"], ["abc"]).tolist() == [3.0]
    for bad in ("os.system", "/no/such/folder", "not a path"):
        with pytest.raises(ValueError):
            build_reward_source(bad)
    with pytest.raises(ValueError):
        FunctionSource("alignkit.rewards.verifiable:no_such_function")


def test_gold_ensemble_and_combined_sources():
    prompts = ["review of the soup :"] * 3
    completions = [" the soup was great .", " the soup was awful .", "garbage"]
    gold = build_reward_source("gold")
    assert isinstance(gold, TaskGoldSource)
    assert gold.score(prompts, completions).tolist() == [1.0, -1.0, -2.0]
    length = FunctionSource(lambda p, c: [float(len(x.split())) for x in c], name="words")
    ens = EnsembleSource([gold, length], reduce="mean_minus_std", lam=1.0)
    members = ens.score_members(prompts, completions)
    assert members.shape == (3, 2)
    mean, std = members.mean(-1), members.std(-1, unbiased=False)
    assert ens.score(prompts, completions).tolist() == pytest.approx((mean - std).tolist())
    combo = build_reward_source({"type": "combine", "transform": "log_sigmoid", "sources": [{"source": "gold", "weight": 2.0, "reference": 0.5}, {"source": "gold", "weight": 1.0, "reference": 0.0}]})
    assert isinstance(combo, CombinedSource)
    want = [2 * math.log(1 / (1 + math.exp(-(g - 0.5)))) + math.log(1 / (1 + math.exp(-g))) for g in (1.0, -1.0, -2.0)]
    assert combo.score(prompts, completions).tolist() == pytest.approx(want, abs=1e-5)


def test_ece_hand_worked():
    # p = 0.8 for two pairs: the both-orders set is {0.8: outcome 1, 0.8: 1, 0.2: 0, 0.2: 0}
    # bins 8 and 2: |0.8 - 1| · 1/2 + |0.2 - 0| · 1/2 = 0.2
    assert expected_calibration_error(torch.tensor([0.8, 0.8])) == pytest.approx(0.2)
    # p = 0.5 everywhere: one bin, mean 0.5, frequency 0.5 -> 0
    assert expected_calibration_error(torch.tensor([0.5, 0.5])) == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------------
# Bradley–Terry training on the built-in task reaches the Bayes limit of the noisy labels
# --------------------------------------------------------------------------------------------------
def bayes_limit(task, rows) -> float:
    """E[σ(|r_a − r_b| / T)]: the expected accuracy of the classifier that picks the higher gold reward."""
    total = 0.0
    for r in rows:
        gap = abs(task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"]))
        total += 1.0 / (1.0 + math.exp(-gap / TEMPERATURE))
    return total / len(rows)


@pytest.mark.slow
def test_bt_reward_model_reaches_bayes_limit(tmp_path):
    from transformers import AutoModelForSequenceClassification
    from typer.testing import CliRunner

    from alignkit.cli import app

    r = load_recipe({
        "algorithm": "reward",
        "task": {"n_train": 1024, "n_eval": 0, "label_temperature": TEMPERATURE},
        "train": {"output_dir": str(tmp_path / "rm"), "max_steps": 80, "batch_size": 24, "lr": 2e-3, "warmup_ratio": 0.05, "progress": False, "log_every": 20},
        "reward": {"centering": 0.001},
    })
    final = train(r)
    task = get_task()
    rows = task_rows(task, "pair", 256, "eval", TaskConfig(label_temperature=TEMPERATURE))
    result = evaluate_pairs(build_reward_source(str(final)), rows, task=task, temperature=TEMPERATURE)
    bayes = bayes_limit(task, rows)
    assert result["bayes_accuracy"] == pytest.approx(bayes)
    print(f"held-out accuracy {result['accuracy']:.4f} vs Bayes limit {bayes:.4f}; gold agreement {result['gold_agreement']:.4f}")
    assert result["accuracy"] >= bayes - 0.05
    assert result["gold_agreement"] > 0.9 and result["gold_spearman"] > 0.85
    assert result["ece"] < 0.1 and len(result["by_margin"]) >= 3
    # standard transformers format: loadable without alignkit, pad token set, safetensors
    assert (final / "model.safetensors").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(str(final))
    assert type(plain).__name__ == "LlamaForSequenceClassification" and plain.config.num_labels == 1
    assert plain.config.pad_token_id is not None
    # CLI: eval-rm on a run folder writes JSON and the report
    res = CliRunner().invoke(app, ["eval-rm", str(tmp_path / "rm"), "--n-pairs", "64", "--split", "eval"])
    assert res.exit_code == 0, res.output
    written = json.loads((tmp_path / "rm" / "reward_eval.json").read_text())
    assert written["n_pairs"] == 64 and "accuracy" in written and "gold_spearman" in written
    assert (tmp_path / "rm" / "report.html").exists()


# --------------------------------------------------------------------------------------------------
# ensembles, preference models, margins, ranked data
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ensemble_std_rises_off_distribution(tmp_path, tiny_dir, tokenizer):
    r = recipe(tmp_path / "ens", tiny_dir, reward={"ensemble": 3, "ensemble_init": "all"}, train={"max_steps": 40, "lr": 3e-3})
    final = train(r)
    assert (final / "ensemble.json").exists() and (final / "member-2" / "config.json").exists()
    src = build_reward_source({"type": "model", "path": str(final), "reduce": "mean_minus_std", "lam": 1.0})
    assert isinstance(src, RewardModelSource)
    task = get_task()
    rng = random.Random(0)
    prompts = task.prompts(48, "test")
    inside = [task.sample_completion(p, rng) for p in prompts]
    vocab = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    outside = [tokenizer.decode([rng.choice(vocab) for _ in range(12)]) for _ in prompts]
    std_in = src.score_members(prompts, inside).std(-1).mean().item()
    std_out = src.score_members(prompts, outside).std(-1).mean().item()
    print(f"ensemble std in-distribution {std_in:.4f}, random tokens {std_out:.4f}")
    assert std_out > 1.5 * std_in
    members = src.score_members(prompts, inside)
    assert src.score(prompts, inside).tolist() == pytest.approx((members.mean(-1) - members.std(-1, unbiased=False)).tolist(), abs=1e-5)


@pytest.mark.slow
def test_preference_model_is_antisymmetric(tmp_path, tiny_dir):
    final = train(recipe(tmp_path / "pm", tiny_dir, reward={"type": "preference"}, train={"max_steps": 6}))
    src = build_reward_source(str(final))
    assert isinstance(src, PreferenceModelSource)
    task, rng = get_task(), random.Random(1)
    prompts = task.prompts(16, "test")
    a = [task.sample_completion(p, rng) for p in prompts]
    b = [task.sample_completion(p, rng) for p in prompts]
    p_ab, p_ba = src.compare(prompts, a, b), src.compare(prompts, b, a)
    assert torch.allclose(p_ab + p_ba, torch.ones(16), atol=1e-5)
    assert torch.allclose(src.compare(prompts, a, a), torch.full((16,), 0.5), atol=1e-6)
    assert src.score(prompts, a, references=b).tolist() == pytest.approx(torch.logit(p_ab.double()).tolist(), abs=1e-3)


def test_margin_centering_and_ranked_training(tmp_path, tiny_dir):
    from alignkit.data.records import write_jsonl

    task, rng = get_task(), random.Random(2)
    pairs, ranked = [], []
    for p in task.prompts(32, "train"):
        a, b, c = (task.sample_completion(p, rng) for _ in range(3))
        ga, gb = task.gold_reward(p, a), task.gold_reward(p, b)
        if a != b and ga != gb:
            (hi, lo) = (a, b) if ga > gb else (b, a)
            pairs.append({"prompt": p, "chosen": hi, "rejected": lo, "margin": abs(ga - gb)})
        ranked.append({"prompt": p, "completions": [a, b, c], "scores": [task.gold_reward(p, x) for x in (a, b, c)]})
    pair_file = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    final = train(recipe(tmp_path / "m", tiny_dir, data={"train": str(pair_file)}, reward={"margin": True, "centering": 0.01}))
    assert (final / "config.json").exists()
    log = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) and "accuracy" in x for x in log)
    ranked_file = write_jsonl(tmp_path / "ranked.jsonl", ranked)
    final = train(recipe(tmp_path / "r", tiny_dir, data={"train": str(ranked_file), "kind": "ranked"}, reward={"regression": 0.5}))
    log = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) for x in log) and log[0]["pairs_per_list"] > 0


def test_bt_loss_step_matches_formula(tiny_dir):
    """The algorithm's summed loss on one batch equals Σ [−log σ(r_c − r_r − m) + c (r_c + r_r)²]."""
    from alignkit.algorithms.reward import RewardModelling
    from alignkit.data.encode import Encoder, encode_records
    from alignkit.data.records import load_records
    from alignkit.models.loading import load_tokenizer

    r = recipe("unused", tiny_dir, reward={"margin": True, "centering": 0.1})
    algo = RewardModelling(r)
    tok = load_tokenizer(tiny_dir)
    rows = [{"prompt": "review of the soup :", "chosen": " the soup was great .", "rejected": " the soup was bad .", "margin": 0.5},
            {"prompt": "review of the film :", "chosen": " the plot was fine .", "rejected": " the plot was dull ."}]
    records, _ = load_records(rows, kind="pair")
    examples = encode_records(records, "pair", Encoder(tok, 64))
    for i, e in enumerate(examples):
        e["index"] = i
    model = algo.load_model(tiny_dir, r.model)
    module = algo.module(model).eval()
    batch = algo.collate(examples, tok.pad_token_id)
    with torch.no_grad():
        loss, metrics = algo.loss(module, batch)
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].tolist()
    rc, rr, m = rewards[:2], rewards[2:], [0.5, 0.0]
    want = sum(math.log1p(math.exp(-(c - x - mm))) + 0.1 * (c + x) ** 2 for c, x, mm in zip(rc, rr, m))
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert algo.weight(batch) == 2.0
