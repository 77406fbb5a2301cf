"""The training engine: invariances that make results trustworthy."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.algorithms import train
from alignkit.config import load_recipe


def recipe(tmp_path, tiny_dir, algorithm="sft", name="run", extra=()):
    overrides = [
        f"train.output_dir={tmp_path / name}",
        f"model.path={tiny_dir}",
        "task.n_train=64",
        "task.n_eval=0",
        "train.batch_size=8",
        "train.max_steps=4",
        "train.lr=1e-3",
        "train.progress=false",
        "train.warmup_steps=1",
        "data.max_length=64",
        *extra,
    ]
    return load_recipe({"algorithm": algorithm}, overrides)


def weights(folder):
    state = load_file(str(folder / "model.safetensors"))
    return {k: v.float() for k, v in state.items()}


def assert_same_weights(a, b, atol):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


def metric_rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["sft", "dpo"])
def test_micro_batching_does_not_change_the_update(tmp_path, tiny_dir, algorithm):
    full = train(recipe(tmp_path, tiny_dir, algorithm, "full"))
    micro = train(recipe(tmp_path, tiny_dir, algorithm, "micro", ["train.micro_batch_size=2"]))
    assert_same_weights(full, micro, atol=2e-6)
    losses_full = [r["loss"] for r in metric_rows(tmp_path / "full") if "loss" in r]
    losses_micro = [r["loss"] for r in metric_rows(tmp_path / "micro") if "loss" in r]
    assert losses_full == pytest.approx(losses_micro, abs=1e-5)


def test_sft_loss_is_token_mean_over_the_whole_batch(tmp_path, tiny_dir):
    """Micro-batches with different token counts: the step loss is total NLL / total tokens."""
    from alignkit.algorithms.sft import SFT
    from alignkit.engine.trainer import Trainer

    r = recipe(tmp_path, tiny_dir, "sft", "tm", ["train.micro_batch_size=1", "train.batch_size=4"])
    trainer = Trainer(r, SFT(r))
    examples = trainer.load_examples(None, "train")
    policy = trainer.algorithm.module(trainer.model)
    batches = trainer.micro_batches(examples, [0, 1, 2, 3])
    loss, _ = trainer.run_batches(policy, batches, train=False)
    nll, tokens = 0.0, 0.0
    with torch.no_grad():
        for b in batches:
            nll -= policy(b["input_ids"], b["attention_mask"], b["loss_mask"]).sum().item()
            tokens += b["loss_mask"][:, 1:].sum().item()
    assert loss.item() == pytest.approx(nll / tokens, rel=1e-6)


def test_resume_gives_the_uninterrupted_result(tmp_path, tiny_dir):
    whole = train(recipe(tmp_path, tiny_dir, "sft", "whole", ["train.max_steps=6", "train.save_every=3"]))
    # A second run that was "killed" after its step-3 checkpoint (and while writing another one).
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-5.tmp")
    resumed = train(recipe(tmp_path, tiny_dir, "sft", "resumed", ["train.max_steps=6", "train.save_every=3", "train.resume=true"]))
    assert_same_weights(whole, resumed, atol=0)
    tail = [r["loss"] for r in metric_rows(tmp_path / "whole") if r["step"] > 3]
    assert tail == [r["loss"] for r in metric_rows(tmp_path / "resumed")]


def test_checkpoints_are_safetensors_and_pruned(tmp_path, tiny_dir):
    train(recipe(tmp_path, tiny_dir, "sft", "ck", ["train.max_steps=6", "train.save_every=2", "train.save_total_limit=1"]))
    checkpoints = sorted(p.name for p in (tmp_path / "ck").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4"]
    files = {p.name for p in (tmp_path / "ck" / "checkpoint-4" / "model").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)


def test_lora_trains_only_adapters_and_resumes(tmp_path, tiny_dir):
    extra = ["model.lora.r=4", "train.max_steps=4", "train.save_every=2"]
    final = train(recipe(tmp_path, tiny_dir, "dpo", "lora", extra))
    assert (final / "adapter_config.json").exists()
    assert (tmp_path / "lora" / "final-merged" / "model.safetensors").exists()
    merged, base = weights(tmp_path / "lora" / "final-merged"), weights(tiny_dir)
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    (tmp_path / "lora2").mkdir()
    shutil.copytree(tmp_path / "lora" / "checkpoint-2", tmp_path / "lora2" / "checkpoint-2")
    train(recipe(tmp_path, tiny_dir, "dpo", "lora2", [*extra, "train.resume=true"]))
    assert_same_weights(tmp_path / "lora" / "final-merged", tmp_path / "lora2" / "final-merged", atol=1e-6)


def test_bf16_autocast_trains(tmp_path, tiny_dir):
    train(recipe(tmp_path, tiny_dir, "sft", "bf16", ["train.precision=bf16", "train.max_steps=3"]))
    losses = [r["loss"] for r in metric_rows(tmp_path / "bf16")]
    assert len(losses) == 3 and all(x == x and x > 0 for x in losses)


def test_dpo_first_step_starts_at_log2(tmp_path, tiny_dir):
    train(recipe(tmp_path, tiny_dir, "dpo", "d", ["train.max_steps=1"]))
    first = metric_rows(tmp_path / "d")[0]
    assert first["loss"] == pytest.approx(0.6931472, abs=1e-5)  # policy == reference at step 1
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_reference_model_and_cache_agree(tmp_path, tiny_dir):
    a = train(recipe(tmp_path, tiny_dir, "dpo", "cache", ["dpo.reference=cache"]))
    b = train(recipe(tmp_path, tiny_dir, "dpo", "model", ["dpo.reference=model"]))
    assert_same_weights(a, b, atol=1e-6)


def free_port() -> int:
    """A port no process listens on now (fixed ports collide with other runs on a shared machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(tmp_path, tiny_dir, name, extra=(), algorithm="dpo", site=None):
    """``alignkit train`` under torchrun with 2 processes; ``site``: a folder of extra packages put first on the
    processes' import path (and its ``bin`` on PATH), e.g. DeepSpeed's."""
    overrides = [
        f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "task.n_train=64", "task.n_eval=0",
        "train.batch_size=8", "train.max_steps=4", "train.lr=1e-3", "train.progress=false", "train.warmup_steps=1",
        "data.max_length=64", *extra,
    ]
    (tmp_path / f"{algorithm}.yaml").write_text(f"algorithm: {algorithm}\n")
    tests = str(Path(__file__).parent)  # reward functions of tests/reward_fns.py load by module:function
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [site and str(site), tests, os.environ.get("PYTHONPATH")]))}
    if site:
        env["PATH"] = os.pathsep.join([str(Path(site) / "bin"), env["PATH"]])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "alignkit.cli", "train", str(tmp_path / f"{algorithm}.yaml"), *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["processes"] for r in metric_rows(tmp_path / name)} == {2}
    return tmp_path / name / "final"


@pytest.mark.distributed
def test_two_processes_match_one(tmp_path, tiny_dir):
    """torchrun with 2 CPU processes (gloo DDP) gives the 1-process result at the same global batch."""
    one = train(recipe(tmp_path, tiny_dir, "dpo", "one"))
    two = torchrun(tmp_path, tiny_dir, "two")
    assert_same_weights(one, two, atol=2e-6)
    one_losses = [r["loss"] for r in metric_rows(tmp_path / "one")]
    two_losses = [r["loss"] for r in metric_rows(tmp_path / "two")]
    assert one_losses == pytest.approx(two_losses, abs=1e-5)


@pytest.mark.distributed
def test_kto_two_processes_match_one(tmp_path, tiny_dir):
    """KTO's z0 is reduced over both processes' mismatched pairs: 2 processes give the 1-process losses
    (a per-process z0 moves them by ~4e-4 here) and weights."""
    extra = ["train.lr=3e-3", "train.max_steps=6"]  # long enough for z0 = max(0, mean log-ratio) to leave 0
    one = train(recipe(tmp_path, tiny_dir, "kto", "one", extra))
    two = torchrun(tmp_path, tiny_dir, "two", extra, algorithm="kto")
    assert_same_weights(one, two, atol=1e-5)
    one_rows, two_rows = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert max(r["kl"] for r in one_rows) > 0.1
    assert [r["loss"] for r in one_rows] == pytest.approx([r["loss"] for r in two_rows], abs=1e-5)


@pytest.mark.distributed
@pytest.mark.parametrize("variant", [
    [],  # GRPO, group statistics
    ["rl.estimator=reinforce_pp_baseline", "rl.reward_transforms=[{name: whiten}]"],  # rollout-wide statistics
    ["rl.estimator=ppo", "rl.reward_transforms=[{name: clip, low: 0.0, high: 3.0}]"],  # critic, token whitening
], ids=["grpo", "batch-statistics", "ppo"])
def test_online_rl_two_processes_match_one(tmp_path, tiny_dir, variant):
    """Online RL under torchrun: each process samples its share of the prompts with the streams their
    global indices name, and rollout-wide statistics span both processes, so 2 processes draw the
    1-process completions and make the same update."""
    extra = ["rl.sampling.group_size=4", "rl.sampling.max_new_tokens=8", "train.lr=3e-3", "rl.reward=reward_fns:soup_is_constant", *variant]
    one = train(recipe(tmp_path, tiny_dir, "rl", "one", extra))
    two = torchrun(tmp_path, tiny_dir, "two", extra, algorithm="rl")
    assert_same_weights(one, two, atol=1e-5)
    one_rows, two_rows = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    for key in ("reward", "completion_length", "loss"):
        assert [r[key] for r in one_rows] == pytest.approx([r[key] for r in two_rows], abs=1e-5), key
    assert max(r["reward_std"] for r in one_rows) > 0  # the rewards varied, so the updates did something


@pytest.mark.distributed
def test_fsdp2_matches_one_process_and_resumes(tmp_path, tiny_dir):
    """FSDP2 (sharded parameters and optimizer state, gloo on CPU): same update as 1 process; its
    checkpoints (gathered to full state dicts) resume to the uninterrupted result."""
    one = train(recipe(tmp_path, tiny_dir, "dpo", "one", ["train.max_steps=6", "train.save_every=3"]))
    sharded = torchrun(tmp_path, tiny_dir, "fsdp", ["train.distributed=fsdp2", "train.max_steps=6", "train.save_every=3"])
    assert_same_weights(one, sharded, atol=2e-6)
    (tmp_path / "again").mkdir()
    shutil.copytree(tmp_path / "fsdp" / "checkpoint-3", tmp_path / "again" / "checkpoint-3")
    again = torchrun(tmp_path, tiny_dir, "again", ["train.distributed=fsdp2", "train.max_steps=6", "train.save_every=3", "train.resume=true"])
    assert_same_weights(sharded, again, atol=1e-6)


def test_dpo_resume_keeps_the_starting_policy_as_reference(tmp_path, tiny_dir):
    """On resume, the reference log-probs come from the starting weights, not the resumed policy."""
    extra = ["train.max_steps=6", "train.save_every=3"]
    whole = train(recipe(tmp_path, tiny_dir, "dpo", "whole", extra))
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = train(recipe(tmp_path, tiny_dir, "dpo", "resumed", [*extra, "train.resume=true"]))
    assert_same_weights(whole, resumed, atol=1e-6)
    tail = [r["rewards/margins"] for r in metric_rows(tmp_path / "whole") if r["step"] > 3]
    assert tail == pytest.approx([r["rewards/margins"] for r in metric_rows(tmp_path / "resumed")], abs=1e-5)


@pytest.mark.parametrize("algorithm", ["sft", "dpo"])
def test_length_buckets_do_not_change_the_update(tmp_path, tiny_dir, algorithm):
    full = train(recipe(tmp_path, tiny_dir, algorithm, "full"))
    bucketed = train(recipe(tmp_path, tiny_dir, algorithm, "buckets", ["train.micro_batch_tokens=48"]))
    assert_same_weights(full, bucketed, atol=2e-6)


def test_tensorboard_tracker_gets_the_logged_metrics(tmp_path, tiny_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(recipe(tmp_path, tiny_dir, "sft", "tb", ["train.report_to=[tensorboard]", "train.max_steps=2"]))
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("loss")]
    expected = [r["loss"] for r in metric_rows(tmp_path / "tb")]
    assert losses == pytest.approx(expected, rel=1e-6)


def test_missing_tracker_is_a_clear_error(tmp_path, tiny_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ImportError, match="train.report_to includes 'wandb' but it is not installed"):
        train(recipe(tmp_path, tiny_dir, "sft", "wb", ["train.report_to=[wandb]", "train.max_steps=1"]))


def test_weights_version_sees_fused_optimizer_steps():
    """A fused AdamW step does not bump parameter version counters; the trainer's update mark does."""
    from alignkit.models.weights import mark_updated, weights_version

    model = torch.nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    optimizer.step()  # the first step initialises the state
    before = weights_version(model)
    optimizer.step()
    assert weights_version(model) == before  # what the version counters alone would miss
    mark_updated(model)
    assert weights_version(model) != before
    with torch.no_grad():
        model.weight.mul_(2.0)  # any in-place edit is seen too
    assert weights_version(model)[0] != before[0]


def test_trainer_marks_every_optimizer_step(tmp_path, tiny_dir):
    from alignkit.algorithms import build_algorithm
    from alignkit.engine.trainer import Trainer

    recipe = load_recipe({"algorithm": "sft"}, [f"model.path={tiny_dir}", f"train.output_dir={tmp_path}", "train.max_steps=3",
                                                "train.batch_size=4", "task.n_train=16", "task.n_eval=0", "train.progress=false"])
    trainer = Trainer(recipe, build_algorithm(recipe))
    trainer.train()
    assert getattr(trainer.model, "module", trainer.model)._alignkit_updates == 3
