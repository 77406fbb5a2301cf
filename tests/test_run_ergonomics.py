"""What a practitioner expects around a run: no row lost to a partial batch, the batch vocabulary at the
start, a one-screen summary (summary.json) at the end, a model card in the final folder, per-phase timings
and sample completions of online runs (docs/runs.md)."""

import json
import shutil

import pytest
import torch

from alignkit.algorithms import train
from alignkit.algorithms.rl.pipeline import PHASES
from alignkit.config import load_recipe
from alignkit.engine.loop import DataOrder
from alignkit.engine.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(tmp_path, tiny_dir, algorithm="sft", name="run", extra=()):
    return load_recipe({"algorithm": algorithm}, [
        f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "task.n_train=50", "task.n_eval=0",
        "train.batch_size=32", "train.epochs=1", "train.lr=1e-3", "train.progress=false", "train.warmup_steps=0",
        "data.max_length=64", *extra,
    ])


def rows(folder, name="metrics.jsonl"):
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture
def seen_batches(monkeypatch):
    """Every training step's example indices and collated micro-batches, as the trainer reads them."""
    seen = []
    original = Trainer.micro_batches

    def record(self, examples, indices):
        batches = original(self, examples, indices)
        if examples is self.train_examples:
            seen.append(([examples[i]["index"] for i in indices], batches))
        return batches

    monkeypatch.setattr(Trainer, "micro_batches", record)
    return seen


# ---------------------------------------------------------------------------------------------------
# partial batches
# ---------------------------------------------------------------------------------------------------
def test_data_order_reads_every_row_each_epoch():
    order = DataOrder(50, 32, seed=3)
    assert order.per_epoch == 2  # ceil(50 / 32)
    assert [order.size(s) for s in range(4)] == [32, 18, 32, 18]
    for epoch in range(2):
        steps = [order.batch(2 * epoch), order.batch(2 * epoch + 1)]
        assert sorted(steps[0] + steps[1]) == list(range(50))  # every row once, none dropped
    assert order.used(0, 2) == list(range(50))
    # 2 processes, 51 rows: the last batch (19 rows) is filled to 20 with the epoch's first row, 10 per process
    two = DataOrder(51, 32, seed=3, world=2)
    perm = torch.randperm(51, generator=torch.Generator().manual_seed(3)).tolist()
    assert two.batch(1) == perm[32:] + perm[:1]
    assert two.share(1, 0) == perm[32:42] and two.share(1, 1) == perm[42:] + perm[:1]
    assert two.share(0, 1) == perm[16:32]
    # 20 rows over 2 processes: the remainder (4) splits evenly, so nothing is repeated and 1 process reads the same rows
    assert DataOrder(20, 8, seed=0, world=2).batch(2) == DataOrder(20, 8, seed=0).batch(2)


def test_fifty_rows_batch_32_train_all_rows_in_a_smaller_last_step(tmp_path, tiny_dir, seen_batches, capsys):
    train(recipe(tmp_path, tiny_dir, extra=["train.epochs=2", "train.save_every=1", "train.save_total_limit=null"]))
    out = capsys.readouterr().out
    assert "[alignkit] batch: 32 examples per optimizer step (global); 1 process x 32 examples each; micro-batch: 32 per forward -> 1 gradient-accumulation step(s)" in out
    assert "[alignkit] steps: 2 per epoch (50 examples: 1 x 32 + a last step of 18), 4 in all (2 epochs)" in out
    indices = [i for i, _ in seen_batches]
    assert [len(i) for i in indices] == [32, 18, 32, 18]
    assert sorted(indices[0] + indices[1]) == list(range(50)) and sorted(indices[2] + indices[3]) == list(range(50))
    records = rows(tmp_path / "run")
    assert [r["epoch"] for r in records] == [0.0, 0.5, 1.0, 1.5]
    # the 18-row step's loss is the token mean over its own 18 rows, under the weights after step 1
    from transformers import AutoModelForCausalLM

    from alignkit.models.logprobs import TargetLogProbs

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "checkpoint-1" / "model"), dtype=torch.float32)
    (batch,) = seen_batches[1][1]
    with torch.no_grad():
        logps = TargetLogProbs(model)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    assert records[1]["loss"] == pytest.approx((-logps.sum() / batch["loss_mask"][:, 1:].sum()).item(), abs=1e-5)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["examples_seen"] == 100


def test_data_smaller_than_the_batch_is_capped_with_a_warning(tmp_path, tiny_dir, seen_batches, capsys):
    train(recipe(tmp_path, tiny_dir, extra=["task.n_train=5", "train.batch_size=8", "train.epochs=3"]))
    out = capsys.readouterr().out
    assert "[alignkit] warning: train.batch_size=8 is more than the 5 training examples: the batch is capped to the data (each step trains on all 5)" in out
    assert "[alignkit] steps: 1 per epoch (5 examples: 1 step of 5), 3 in all (3 epochs)" in out
    assert [sorted(i) for i, _ in seen_batches] == [[0, 1, 2, 3, 4]] * 3


def test_resume_across_a_partial_batch_equals_the_uninterrupted_run(tmp_path, tiny_dir):
    extra = ["task.n_train=20", "train.batch_size=8", "train.max_steps=5", "train.save_every=2", "train.save_total_limit=null"]
    whole = train(recipe(tmp_path, tiny_dir, name="whole", extra=extra))  # steps of 8, 8, 4 | 8, 8
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = train(recipe(tmp_path, tiny_dir, name="resumed", extra=[*extra, "train.resume=true"]))
    wa, wb = weights(whole), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in rows(tmp_path / "whole") if r["step"] > 2] == [r["loss"] for r in rows(tmp_path / "resumed")]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["examples_seen"] == 8 + 8 + 4 + 8 + 8  # the steps before the checkpoint count too


# ---------------------------------------------------------------------------------------------------
# summary and model card
# ---------------------------------------------------------------------------------------------------
def test_summary_is_computed_from_the_metrics(tmp_path, tiny_dir, capsys):
    from alignkit.engine.summary import summary_lines

    final = train(recipe(tmp_path, tiny_dir, "dpo", "dpo", ["task.n_train=24", "task.n_eval=8", "train.batch_size=8", "train.max_steps=4",
                                                          "train.eval_every=2", "train.log_every=1"]))
    out = capsys.readouterr().out
    records = rows(tmp_path / "dpo")
    train_rows = [r for r in records if "loss" in r]
    last_eval = [r for r in records if "eval/loss" in r][-1]
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["examples_seen"] == 32 and summary["algorithm"] == "dpo"
    assert summary["metrics"]["loss"] == {"first": train_rows[0]["loss"], "last": train_rows[-1]["loss"]}
    assert summary["metrics"]["loss"]["first"] == pytest.approx(0.6931472, abs=1e-5)  # policy == reference at step 1
    for key in ("rewards/accuracy", "rewards/margins"):
        assert summary["metrics"][key] == {"first": train_rows[0][key], "last": train_rows[-1][key]}
    assert summary["eval"] == {k: v for k, v in last_eval.items() if k.startswith("eval/")} and summary["eval_step"] == 4
    assert summary["files"]["final"] == str(final) and summary["phase_time_s"] == {}
    assert 0 < summary["wall_time_s"]
    lines = summary_lines(summary)
    assert lines[0] == f"done: dpo, 4 steps, 32 examples seen, {summary['wall_time_s']:.1f} s"
    assert f"  loss: {train_rows[0]['loss']:.4g} -> {train_rows[-1]['loss']:.4g}" in lines
    assert f"  next: alignkit eval {tmp_path / 'dpo'}  # gold reward, KL, win rate; writes {tmp_path / 'dpo' / 'eval.json'} and {tmp_path / 'dpo' / 'report.html'}" in lines
    assert all(f"[alignkit] {line}" in out for line in lines)


def test_final_folder_loads_with_plain_transformers_and_carries_a_card(tmp_path, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"review {i}:", "chosen": " good", "rejected": " bad"}) + "\n" for i in range(12)))
    final = train(recipe(tmp_path, tiny_dir, "dpo", "card", [f"data.train={data}", "train.batch_size=8", "dpo.beta=0.2"]))
    model = AutoModelForCausalLM.from_pretrained(str(final))
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    saved = weights(final)
    assert all(torch.equal(p, saved[k]) for k, p in model.state_dict().items() if k in saved)
    ids = tokenizer("review 3:", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    card = (final / "README.md").read_text()
    assert f'base_model: "{tiny_dir}"' in card
    assert "tags: [alignkit, dpo]" in card
    assert "| method | dpo: loss=dpo, beta=0.2, reference=cache, packing=true, wpo=false, " in card and "pack_tokens" not in card
    assert f"| data | {data} (12 training examples) |" in card
    assert "lr=0.001, batch_size=8, epochs=1.0" in card and "; 2 steps |" in card  # 12 rows: a step of 8, then one of 4
    loss = [r["loss"] for r in rows(tmp_path / "card")]
    assert f"| loss | {loss[0]:.4g} | {loss[-1]:.4g} |" in card
    assert f'model = AutoModelForCausalLM.from_pretrained("{final}")' in card


def test_lora_run_cards_the_adapter_and_the_merged_model(tmp_path, tiny_dir):
    from transformers import AutoModelForCausalLM

    final = train(recipe(tmp_path, tiny_dir, "sft", "lora", ["model.lora.r=4", "train.max_steps=2", "train.batch_size=8"]))
    adapter_card = (final / "README.md").read_text()
    assert "library_name: peft" in adapter_card and "AutoPeftModelForCausalLM" in adapter_card and "| LoRA | r=4" in adapter_card
    merged = tmp_path / "lora" / "final-merged"
    merged_card = (merged / "README.md").read_text()
    assert f"| merged from | the LoRA adapter in `{final}` |" in merged_card and "library_name: transformers" in merged_card
    assert AutoModelForCausalLM.from_pretrained(str(merged)).config.num_hidden_layers == 2


# ---------------------------------------------------------------------------------------------------
# online RL: per-phase timings and sample completions
# ---------------------------------------------------------------------------------------------------
def rl_run(tmp_path, tiny_dir, name, extra=()):
    return train(recipe(tmp_path, tiny_dir, "rl", name, [
        "task.n_train=12", "train.batch_size=4", "train.max_steps=3", "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=6",
        "rl.reward=reward_fns:completion_length", "rl.kl.beta=0.05", *extra]))


def test_online_rl_logs_phase_times_and_every_sample(tmp_path, tiny_dir, capsys):
    rl_run(tmp_path, tiny_dir, "rl", ["rl.log_samples=100"])
    out = capsys.readouterr().out
    assert "[alignkit] batch: 4 prompts x 2 samples = 8 completions per step (global); 1 process x 4 prompts each; micro-batch: all completions per forward" in out
    records = rows(tmp_path / "rl")
    phases = [*PHASES, "time/update"]
    for r in records:
        assert all(r[k] >= 0 for k in [*phases, "time/step"])
        assert sum(r[k] for k in phases) <= r["time/step"]
    assert all(r["time/sample"] > 0 and r["time/update"] > 0 and r["time/logprobs"] > 0 for r in records)  # beta > 0: reference log-probs
    samples = rows(tmp_path / "rl", "samples.jsonl")
    assert [s["step"] for s in samples] == [1] * 8 + [2] * 8 + [3] * 8  # every sample of every step (log_samples >= 8)
    assert set(samples[0]) == {"step", "prompt", "completion", "reward", "shaped_reward", "advantage", "finished", "tokens"}
    for s in samples:
        assert s["reward"] == float(len(s["completion"]))  # the reward function's score of that completion
    for r in records:
        mine = [s["reward"] for s in samples if s["step"] == r["step"]]
        assert sum(mine) / len(mine) == pytest.approx(r["reward"], abs=1e-6)  # the logged reward is their mean
        pairs = [s["advantage"] for s in samples if s["step"] == r["step"]]
        assert all(a == pytest.approx(-b, abs=1e-5) for a, b in zip(pairs[::2], pairs[1::2]))  # GRPO, groups of 2
    summary = json.loads((tmp_path / "rl" / "summary.json").read_text())
    assert summary["phase_time_s"] == {k: round(sum(r[k] for r in records), 3) for k in phases}
    assert summary["files"]["samples"] == str(tmp_path / "rl" / "samples.jsonl")
    assert "[alignkit]   time per phase: sample " in out


def test_samples_follow_log_every_and_resume_drops_later_ones(tmp_path, tiny_dir):
    rl_run(tmp_path, tiny_dir, "every", ["rl.log_samples=3", "train.log_every=2", "train.max_steps=4", "train.save_every=2"])
    samples = rows(tmp_path / "every", "samples.jsonl")
    assert [s["step"] for s in samples] == [2, 2, 2, 4, 4, 4]
    (tmp_path / "again").mkdir()
    shutil.copytree(tmp_path / "every" / "checkpoint-2", tmp_path / "again" / "checkpoint-2")
    (tmp_path / "again" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))  # as the killed run left it
    rl_run(tmp_path, tiny_dir, "again", ["rl.log_samples=3", "train.log_every=2", "train.max_steps=4", "train.save_every=2", "train.resume=true"])
    assert rows(tmp_path / "again", "samples.jsonl") == samples  # step 4 once: the old lines after step 2 were dropped, then logged again


def test_progress_info_shows_the_phases():
    from alignkit.algorithms.rl.pipeline import OnlineRL

    stats = {"reward": 1.5, "time/sample": 0.5, "time/score": 0.01, "time/logprobs": 0.2, "time/advantages": 0.0, "time/collate": 0.004, "time/update": 1.25}
    algorithm = OnlineRL(load_recipe({"algorithm": "rl"}, []))
    assert algorithm.progress_info(0.125, stats) == "loss 0.1250 reward 1.500 | s: sample 0.50 score 0.01 logprobs 0.20 advantages 0.00 collate 0.00 update 1.25"
