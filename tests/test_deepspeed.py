"""DeepSpeed ZeRO-2/3 strategies (engine/deepspeed.py) on CPU with gloo: 2 processes give the 1-process
weights, checkpoints are ordinary save_pretrained folders whose optimizer state is the 1-process torch AdamW
state, and they resume under DeepSpeed to the uninterrupted result. Online RL (GRPO: ZeRO-3 samples from
a full-weights replica gathered after each step) and LoRA (only the adapters in ZeRO's optimizer) give the
1-process results too."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

from alignkit.algorithms import train
from alignkit.config import load_recipe
from alignkit.engine.deepspeed import zero_config
from alignkit.engine.strategies import STRATEGIES
from test_engine import assert_same_weights, metric_rows, recipe, torchrun

# `make install` puts DeepSpeed in a folder of its own, outside the main environment's import path
SITE = Path(sys.executable).parent.parent / "deepspeed-site"
STEPS = ["train.max_steps=6", "train.save_every=3", "train.micro_batch_size=2", "train.max_grad_norm=0.5"]


def test_strategies_are_registered_and_refused_where_untested():
    assert {"deepspeed_zero2", "deepspeed_zero3"} <= set(STRATEGIES.names())
    config = zero_config(3, 0.5)
    assert config["zero_optimization"]["stage"] == 3 and config["gradient_clipping"] == 0.5
    assert config["managed_gradient_accumulation"] is False  # every step() is the boundary, whatever the micro-batches
    assert zero_config(2, None)["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"
    with pytest.raises(ValueError, match="deepspeed_zero2 needs train.nonfinite=stop"):
        load_recipe({"algorithm": "dpo"}, ["train.distributed=deepspeed_zero2", "train.nonfinite=skip"])
    for extra in (["model.lora.r=4"], [], ["rl.estimator=ppo"]):  # online RL, LoRA and PPO's critic are no longer refused
        load_recipe({"algorithm": "rl"}, ["train.distributed=deepspeed_zero3", *extra])
    assert STRATEGIES.get("deepspeed_zero3").replicates and not STRATEGIES.get("deepspeed_zero2").replicates


def optimizer_state(folder):
    return torch.load(folder / "optimizer.pt", weights_only=True)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["deepspeed_zero2", "deepspeed_zero3"])
def test_zero_matches_one_process_and_resumes(tmp_path, tiny_dir, stage):
    one = train(recipe(tmp_path, tiny_dir, "dpo", "one", STEPS))
    assert (SITE / "deepspeed").is_dir(), f"DeepSpeed is not installed in {SITE} (make install)"
    zero = torchrun(tmp_path, tiny_dir, "zero", [f"train.distributed={stage}", *STEPS], site=SITE)
    assert_same_weights(one, zero, atol=2e-6)
    assert [r["loss"] for r in metric_rows(tmp_path / "one")] == pytest.approx([r["loss"] for r in metric_rows(tmp_path / "zero")], abs=1e-5)
    # the checkpoint is a save_pretrained folder and a torch AdamW state, the 1-process one up to float error
    ckpt, ref = tmp_path / "zero" / "checkpoint-3", tmp_path / "one" / "checkpoint-3"
    assert_same_weights(ckpt / "model", ref / "model", atol=2e-6)
    mine, theirs = optimizer_state(ckpt), optimizer_state(ref)
    assert mine["state"].keys() == theirs["state"].keys() and len(mine["state"]) > 0
    for i, entry in theirs["state"].items():
        assert float(mine["state"][i]["step"]) == float(entry["step"]) == 3.0
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine["state"][i][key], entry[key], atol=1e-7, rtol=1e-4, msg=f"{i} {key}")
    assert [g["lr"] for g in mine["param_groups"]] == pytest.approx([g["lr"] for g in theirs["param_groups"]])
    # resumed under DeepSpeed: the optimizer state is scattered back into the partitions
    (tmp_path / "again").mkdir()
    shutil.copytree(ckpt, tmp_path / "again" / "checkpoint-3")
    again = torchrun(tmp_path, tiny_dir, "again", [f"train.distributed={stage}", *STEPS, "train.resume=true"], site=SITE)
    assert_same_weights(zero, again, atol=2e-6)


GRPO = ["rl.sampling.group_size=4", "rl.sampling.max_new_tokens=8", "train.lr=3e-3", "rl.reward=reward_fns:soup_is_constant",
        "train.max_steps=3"]


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["deepspeed_zero2", "deepspeed_zero3"])
def test_zero_grpo_two_processes_match_one(tmp_path, tiny_dir, stage):
    """GRPO under ZeRO: the same completions and weights after 3 updates as one process (ZeRO-2 samples
    from its replicated parameters, ZeRO-3 from the replica gathered after each update)."""
    one = train(recipe(tmp_path, tiny_dir, "rl", "one", GRPO))
    zero = torchrun(tmp_path, tiny_dir, "zero", [f"train.distributed={stage}", *GRPO], algorithm="rl", site=SITE)
    assert_same_weights(one, zero, atol=1e-5)
    one_rows, zero_rows = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "zero")
    for key in ("reward", "completion_length", "loss"):
        assert [r[key] for r in one_rows] == pytest.approx([r[key] for r in zero_rows], abs=1e-5), key
    assert max(r["reward_std"] for r in one_rows) > 0


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["deepspeed_zero2", "deepspeed_zero3"])
def test_zero_lora_dpo_two_processes_match_one(tmp_path, tiny_dir, stage):
    """LoRA DPO under ZeRO: the 1-process adapter after 4 steps (the adapters trained: B left 0)."""
    from safetensors.torch import load_file

    extra = ["model.lora.r=4", "train.lr=3e-3"]
    one = train(recipe(tmp_path, tiny_dir, "dpo", "one", extra))
    zero = torchrun(tmp_path, tiny_dir, "zero", [f"train.distributed={stage}", *extra], site=SITE)
    a, b = load_file(str(one / "adapter_model.safetensors")), load_file(str(zero / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a and all("lora" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert max(v.abs().max().item() for k, v in b.items() if "lora_B" in k) > 1e-4
    assert_same_weights(one.parent / "final-merged", zero.parent / "final-merged", atol=1e-5)
