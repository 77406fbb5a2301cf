"""FSDP2 for online RL and LoRA (engine/strategies.py): each process samples from a full-weights replica
of the sharded policy, refreshed after every update, so torchrun with 2 CPU processes (gloo) draws the
1-process completions and trains the 1-process weights; LoRA trains only the adapters under FSDP2 too."""

import json

import pytest
import torch
from safetensors.torch import load_file

from alignkit.algorithms import train
from alignkit.config import ConfigError, load_recipe
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


def test_ppo_critic_is_refused_when_sharded_and_grpo_lora_are_not():
    for strategy in ("fsdp2", "deepspeed_zero2", "deepspeed_zero3"):
        with pytest.raises(ConfigError, match=f"train.distributed={strategy} does not run PPO's critic"):
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
