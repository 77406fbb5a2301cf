"""Reward sources, reward-model training (BT, ensemble, preference model, ranked data) and evaluation."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from alignkit.algorithms import train
from alignkit.config import TaskConfig, load_recipe
from alignkit.evaluation.reward_model import evaluate_pairs, expected_calibration_error
from alignkit.rewards import (
    CombinedSource,
    EnsembleSource,
    FunctionSource,
    PreferenceModelSource,
    RewardModelSource,
    TaskGoldSource,
    build_reward_source,
)
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


def test_ensemble_reductions_hand_worked():
    from alignkit.rewards.transforms import ENSEMBLE_REDUCTIONS, ensemble_reduce

    s = torch.tensor([[1.0, 3.0, 2.0, 10.0], [4.0, 4.0, 4.0, 4.0]], dtype=torch.float64)
    # row 0: mean 4, population var (9 + 1 + 4 + 36) / 4 = 12.5; sorted 1, 2, 3, 10 -> median (2 + 3) / 2 = 2.5
    assert ensemble_reduce(s, "median").tolist() == [2.5, 4.0]
    assert ensemble_reduce(s[:, :3], "median").tolist() == [2.0, 4.0]  # odd count: the middle member
    assert ensemble_reduce(s, "uncertainty_weighted", lam=0.1).tolist() == pytest.approx([4.0 - 0.1 * 12.5, 4.0])  # Coste et al.: mean - lam var
    assert ensemble_reduce(s, "uncertainty_shrink", lam=0.1).tolist() == pytest.approx([4.0 / (1 + 0.1 * 12.5), 4.0])  # mean / (1 + lam var)
    neg = torch.tensor([[-1.0, -3.0]], dtype=torch.float64)  # mean -2, var 1: the penalty lowers a negative reward too
    assert ensemble_reduce(neg, "uncertainty_weighted", lam=1.0).item() == -3.0
    assert ensemble_reduce(neg, "uncertainty_shrink", lam=1.0).item() == -1.0
    assert "uncertainty_shrink" in ENSEMBLE_REDUCTIONS
    source = EnsembleSource([FunctionSource(lambda p, c: [1.0, 4.0]), FunctionSource(lambda p, c: [2.0, 4.0]),
                             FunctionSource(lambda p, c: [3.0, 4.0]), FunctionSource(lambda p, c: [10.0, 5.0])], reduce="median")
    assert source.score(["a", "b"], ["x", "y"]).tolist() == [2.5, 4.0]


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
    # `alignkit eval` recognises a reward model run and evaluates it the same way
    (tmp_path / "rm" / "reward_eval.json").unlink()
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "rm")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "rm" / "reward_eval.json").read_text())["n_pairs"] == 512


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
    assert std_out > 1.2 * std_in
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


# --------------------------------------------------------------------------------------------------
# multi-objective (ArmoRM-style) and process reward models
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_multi_objective_heads_learn_their_attributes(tmp_path, tiny_dir):
    from transformers import AutoModelForSequenceClassification

    from alignkit.evaluation.reward_model import pearson
    from alignkit.rewards import MultiObjectiveRewardSource
    from alignkit.rewards.models import GATING_FILE
    from alignkit.rewards.task_data import attribute_values

    # 60 steps keep the test short; the heads are still far from converged (see docs/rewards.md for a
    # 150-step run: Pearson 0.99 / 1.00 and a prompt-dependent gate)
    r = recipe(tmp_path / "mo", tiny_dir, task={"n_train": 1024, "n_eval": 32},
               train={"max_steps": 60, "batch_size": 32, "lr": 3e-3, "log_every": 20, "eval_every": 60},
               reward={"type": "multi_objective"})
    final = train(r)
    assert (final / GATING_FILE).exists() and (final / "model.safetensors").exists()
    log = [json.loads(line) for line in (tmp_path / "mo" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/mse/sentiment" in log[-1] and all(math.isfinite(x.get("loss", 0.0)) for x in log)
    src = build_reward_source(str(final))
    assert isinstance(src, MultiObjectiveRewardSource) and src.attributes == ["sentiment", "verbosity"]
    task, rng = get_task(), random.Random(3)
    prompts = task.prompts(96, "test")
    completions = [task.sample_completion(p, rng) for p in prompts]
    parts = src.components(prompts, completions)
    corr = {}
    for k, name in enumerate(src.attributes):
        truth = torch.tensor([attribute_values(task, p, c)[name] for p, c in zip(prompts, completions)])
        corr[name] = pearson(parts["scores"][:, k], truth)
    print(f"held-out Pearson of each head with its attribute: {corr}")
    assert corr["sentiment"] > 0.6 and corr["verbosity"] > 0.6
    # score = β Σ_k g_k r_k, the gate is a softmax; one head through the spec's `attribute`
    gate = parts["gate"]
    assert torch.allclose(gate.sum(-1), torch.ones(96), atol=1e-5) and (gate >= 0).all()
    beta = src.model.gate.log_scale.detach().exp().item()
    assert torch.allclose(src.score(prompts, completions), beta * (gate * parts["scores"]).sum(-1), atol=1e-5)
    verbosity = build_reward_source({"type": "model", "path": str(final), "attribute": "verbosity"})
    assert torch.allclose(verbosity.score(prompts, completions), parts["scores"][:, 1], atol=1e-5)
    # standard format: the heads load without alignkit as a K-label sequence classifier
    plain = AutoModelForSequenceClassification.from_pretrained(str(final)).eval()
    assert plain.config.num_labels == 2 and plain.config.id2label[1] == "verbosity"
    ids = src.encoder.encode({"prompt": prompts[0], "completion": completions[0]}, "sft")["input_ids"]
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor([ids])).logits[0]
    assert torch.allclose(logits, parts["scores"][0], atol=1e-4)


@pytest.mark.slow
def test_process_reward_model_per_step_accuracy(tmp_path, tiny_dir):
    from transformers import AutoModelForTokenClassification
    from typer.testing import CliRunner

    from alignkit.cli import app
    from alignkit.rewards import ProcessRewardSource
    from alignkit.rewards.task_data import process_rows

    recipe_file = Path(__file__).resolve().parent.parent / "recipes" / "reward_process.yaml"
    res = CliRunner().invoke(app, ["train", str(recipe_file), f"model.path={tiny_dir}", f"train.output_dir={tmp_path / 'prm'}",
                                   "train.max_steps=40", "task.n_train=512", "task.n_eval=32", "train.eval_every=40", "train.progress=false"])
    assert res.exit_code == 0, res.output
    final = tmp_path / "prm" / "final"
    src = build_reward_source(str(final))
    assert isinstance(src, ProcessRewardSource) and src.aggregate == "min"
    rows = process_rows(get_task(), 128, "test")
    prompts, steps = [r["prompt"] for r in rows], [r["steps"] for r in rows]
    per_step = src.score_steps(prompts, steps=steps)
    probs = torch.cat(per_step)
    labels = torch.tensor([x for r in rows for x in r["labels"]], dtype=torch.bool)
    accuracy = ((probs > 0.5) == labels).float().mean().item()
    majority = max(labels.float().mean().item(), 1 - labels.float().mean().item())
    print(f"held-out per-step accuracy {accuracy:.4f} over {len(labels)} clauses (majority class {majority:.4f})")
    assert accuracy > max(0.85, majority + 0.2)
    # completion strings are cut into the same steps (config.step_split); score() is the min over steps
    completions = ["".join(s) for s in steps]
    again = src.score_steps(prompts, completions)
    assert all(torch.allclose(a, b) for a, b in zip(per_step, again))
    assert src.score(prompts, completions).tolist() == pytest.approx([float(x.min()) for x in per_step], abs=1e-6)
    prod = build_reward_source({"type": "model", "path": str(final), "aggregate": "prod"})
    assert prod.score(prompts[:4], completions[:4]).tolist() == pytest.approx([float(x.prod()) for x in per_step[:4]], abs=1e-6)
    plain = AutoModelForTokenClassification.from_pretrained(str(final))
    assert plain.config.reward_type == "process" and plain.config.num_labels == 1


def test_multi_objective_and_process_rows_are_checked(tiny_dir, tokenizer):
    from alignkit.algorithms.reward import RewardModelling
    from alignkit.data.encode import Encoder
    from alignkit.data.records import DataError

    enc = Encoder(tokenizer, 64)
    mo = RewardModelling(recipe("unused", tiny_dir, data={"train": "rows.jsonl"}, reward={"type": "multi_objective", "attributes": ["helpful", "safe"]}))
    row = {"prompt": "review of the soup :", "completion": " the soup was good .", "row": 3}
    ok = mo.prepare_row({**row, "ratings": {"helpful": 2, "safe": None}}, enc, "rows.jsonl")
    assert ok["ratings"] == [2.0, 0.0] and ok["rating_mask"] == [1.0, 0.0]
    assert mo.prepare_row({**row, "safe": "1.5"}, enc, "rows.jsonl")["rating_mask"] == [0.0, 1.0]  # per-attribute columns
    for bad, field in (({**row, "ratings": {"funny": 1}}, "ratings"), ({**row, "ratings": {"helpful": "x"}}, "ratings.helpful"), ({**row, "ratings": {}}, "ratings")):
        with pytest.raises(DataError, match=f"row 3: field '{field}'"):
            mo.prepare_row(bad, enc, "rows.jsonl")
    with pytest.raises(DataError, match="not both"):
        mo.prepare_row({**row, "ratings": {"safe": 1}, "chosen": "a", "rejected": "b"}, enc, "rows.jsonl")
    with pytest.raises(ValueError, match="reward.attributes"):
        RewardModelling(recipe("unused", tiny_dir, data={"train": "rows.jsonl"}, reward={"type": "multi_objective"})).attributes()
    with pytest.raises(ValueError, match="data.kind"):
        RewardModelling(recipe("unused", tiny_dir, data={"kind": "pair"}, reward={"type": "process"}))
    prm = RewardModelling(recipe("unused", tiny_dir, data={"train": "steps.jsonl"}, reward={"type": "process"}))
    out = prm.prepare_row({"prompt": "review of the soup :", "completion": "the soup was good\nthe bread was bad", "labels": [1, 0], "row": 1}, enc, "steps.jsonl")
    assert out["step_labels"] == [1.0, 0.0] and len(out["step_ends"]) == 2 and out["step_ends"][-1] == len(out["input_ids"]) - 1
    for bad, field in (({"steps": ["a", "b"], "labels": [1]}, "labels"), ({"steps": ["a"], "labels": [2]}, "labels\\[0\\]"), ({"steps": [], "labels": []}, "steps")):
        with pytest.raises(DataError, match=f"row 2: field '{field}'"):
            prm.prepare_row({"prompt": "p", "row": 2, **bad}, enc, "steps.jsonl")
