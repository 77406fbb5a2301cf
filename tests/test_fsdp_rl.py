"""FSDP2 for online RL and LoRA (engine/strategies.py): each process samples from a full-weights replica
of the sharded policy, refreshed after every update, so torchrun with 2 CPU processes (gloo) draws the
1-process completions and trains the 1-process weights; LoRA trains only the adapters under FSDP2 too."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from alignkit.algorithms import train
from alignkit.config import load_recipe
from alignkit.engine.strategies import FSDP2Strategy, Strategy
from test_engine import assert_same_weights, metric_rows, recipe, torchrun

GRPO = ["rl.sampling.group_size=4", "rl.sampling.max_new_tokens=8", "train.lr=3e-3", "rl.reward=reward_fns:soup_is_constant",
        "train.max_steps=3"]


def test_replica_is_a_frozen_full_copy_that_follows_the_trained_parameters():
    """The replica is built only by sharding strategies, holds no gradient, and ``sync_replica`` copies the
    trained parameters (and only those: a frozen base is never gathered again)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert Strategy().replica(model) is None  # one process / DDP: forward-only work runs on the model itself
    strategy = object.__new__(FSDP2Strategy)  # no process group needed for the copy itself
    mirror = FSDP2Strategy.replica(strategy, model)
    assert mirror is not model and not any(p.requires_grad for p in mirror.parameters()) and not mirror.training
    frozen_before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
        model[0].weight.add_(5.0)  # frozen: the replica does not follow it
    FSDP2Strategy.sync_replica(strategy, model, mirror)
    torch.testing.assert_close(mirror[1].weight, model[1].weight, atol=0, rtol=0)
    torch.testing.assert_close(mirror[0].weight, frozen_before, atol=0, rtol=0)


def test_sharded_strategies_accept_ppo_grpo_and_lora():
    for strategy in ("fsdp2", "deepspeed_zero2", "deepspeed_zero3"):
        load_recipe({"algorithm": "rl"}, [f"train.distributed={strategy}", "rl.estimator=ppo"])
        load_recipe({"algorithm": "rl"}, [f"train.distributed={strategy}"])
        load_recipe({"algorithm": "dpo"}, [f"train.distributed={strategy}", "model.lora.r=4"])


@pytest.mark.distributed
def test_fsdp2_grpo_two_processes_match_one(tmp_path, tiny_dir):
    """GRPO under FSDP2: same completions (reward, length) and the same weights after 3 updates as one
    process; the rewards varied, so the updates moved the policy (and so the later samples)."""
    one = train(recipe(tmp_path, tiny_dir, "rl", "one", GRPO))
    two = torchrun(tmp_path, tiny_dir, "two", ["train.distributed=fsdp2", *GRPO], algorithm="rl")
    assert_same_weights(one, two, atol=1e-5)
    one_rows, two_rows = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    for key in ("reward", "completion_length", "loss"):
        assert [r[key] for r in one_rows] == pytest.approx([r[key] for r in two_rows], abs=1e-5), key
    assert max(r["reward_std"] for r in one_rows) > 0
    start = load_file(str(tmp_path / "one" / "initial-model" / "model.safetensors")) if (tmp_path / "one" / "initial-model").exists() \
        else load_file(str(tiny_dir / "model.safetensors"))
    trained = load_file(str(two / "model.safetensors"))
    assert max((trained[k].float() - start[k].float()).abs().max().item() for k in trained) > 1e-3


@pytest.mark.distributed
def test_fsdp2_lora_dpo_two_processes_match_one(tmp_path, tiny_dir):
    """LoRA DPO under FSDP2 (adapters sharded with their layers, base frozen; the reference is the replica
    with its adapter off): the 1-process adapter after 4 steps, and a merged folder beside it."""
    extra = ["model.lora.r=4", "train.lr=3e-3"]
    one = train(recipe(tmp_path, tiny_dir, "dpo", "one", extra))
    two = torchrun(tmp_path, tiny_dir, "two", ["train.distributed=fsdp2", *extra])
    a, b = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a and all("lora" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert max(v.abs().max().item() for k, v in b.items() if "lora_B" in k) > 1e-4  # B starts at 0: the adapters trained
    assert_same_weights(one.parent / "final-merged", two.parent / "final-merged", atol=1e-5)
    assert json.loads((two / "adapter_config.json").read_text())["r"] == 4
    margins = [r["rewards/margins"] for r in metric_rows(tmp_path / "two")]
    assert margins == pytest.approx([r["rewards/margins"] for r in metric_rows(tmp_path / "one")], abs=1e-5)


PPO = ["rl.estimator=ppo", "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=8", "train.lr=3e-3", "rl.reward=reward_fns:soup_is_constant",
       "train.max_steps=3", "rl.update.epochs=2", "rl.ppo.vf_coef=0.5", "train.save_every=1"]


def critic_state(checkpoint):
    return load_file(str(checkpoint / "critic.safetensors"))


def assert_same_ppo_run(tmp_path, one, two, name_one="one", name_two="two"):
    """Same weights, the same per-step losses, rewards and value losses (the critic's values entered GAE,
    so its loss is the 1-process one only if the values were), the same critic in the checkpoint."""
    assert_same_weights(one, two, atol=1e-5)
    one_rows, two_rows = metric_rows(tmp_path / name_one), metric_rows(tmp_path / name_two)
    for key in ("reward", "loss", "critic/value_loss"):
        assert [r[key] for r in one_rows] == pytest.approx([r[key] for r in two_rows], abs=1e-5), key
    a, b = critic_state(tmp_path / name_one / "checkpoint-2"), critic_state(tmp_path / name_two / "checkpoint-2")
    assert a.keys() == b.keys() and "head.weight" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert b["head.weight"].abs().max().item() > 1e-4  # the head starts at 0: the critic trained (and was saved in full)


def assert_resumes(tmp_path, tiny_dir, name, extra, site=None):
    """Resumed from ``name``'s checkpoint-1, steps 2 and 3 are the uninterrupted ones: the same losses and value
    losses (step 3's reads the critic that step 2 trained from the checkpoint's, so the checkpoint reached the
    weights the optimizer steps, not only the forward), the same critic at checkpoint-2 and the same policy."""
    (tmp_path / "again").mkdir()
    shutil.copytree(tmp_path / name / "checkpoint-1", tmp_path / "again" / "checkpoint-1")
    again = torchrun(tmp_path, tiny_dir, "again", [*extra, *PPO, "train.resume=true"], algorithm="rl", site=site)
    assert_same_weights(tmp_path / name / "final", again, atol=1e-5)
    rows = {r["step"]: r for r in metric_rows(tmp_path / name)}
    resumed = {r["step"]: r for r in metric_rows(tmp_path / "again")}
    for step in (2, 3):
        for key in ("loss", "critic/value_loss"):
            assert resumed[step][key] == pytest.approx(rows[step][key], abs=1e-5), (step, key)
    a, b = critic_state(tmp_path / name / "checkpoint-2"), critic_state(tmp_path / "again" / "checkpoint-2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.distributed
@pytest.mark.slow  # a 1-process run and 2 torchrun launches (a run, then its resume)
def test_fsdp2_ppo_critic_two_processes_match_one_and_resumes(tmp_path, tiny_dir):
    """PPO under FSDP2: the critic is sharded with the policy, its values come from a replica refreshed after
    every step, and it is saved in full and written back into the shards on resume."""
    one = train(recipe(tmp_path, tiny_dir, "rl", "one", PPO))
    two = torchrun(tmp_path, tiny_dir, "two", ["train.distributed=fsdp2", *PPO], algorithm="rl")
    assert_same_ppo_run(tmp_path, one, two)
    assert_resumes(tmp_path, tiny_dir, "two", ["train.distributed=fsdp2"])


@pytest.mark.distributed
@pytest.mark.slow  # a 1-process run and 2 torchrun launches (a run, then its resume)
@pytest.mark.parametrize("stage", ["deepspeed_zero2", "deepspeed_zero3"])
def test_zero_ppo_critic_two_processes_match_one_and_resumes(tmp_path, tiny_dir, stage):
    """PPO under ZeRO: the critic is partitioned with the policy (ZeRO-3: values from its replica; ZeRO-2: from
    its replicated parameters); on resume the checkpoint's critic reaches the fp32 master partitions, so the
    resumed run's next update is the uninterrupted one."""
    from test_deepspeed import SITE

    assert (SITE / "deepspeed").is_dir(), f"DeepSpeed is not installed in {SITE} (make install)"
    one = train(recipe(tmp_path, tiny_dir, "rl", "one", PPO))
    zero = torchrun(tmp_path, tiny_dir, "zero", [f"train.distributed={stage}", *PPO], algorithm="rl", site=SITE)
    assert_same_ppo_run(tmp_path, one, zero, name_two="zero")
    assert_resumes(tmp_path, tiny_dir, "zero", [f"train.distributed={stage}"], site=SITE)
