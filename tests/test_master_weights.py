"""``train.precision=bf16_params``: bf16 parameters for compute, fp32 master weights in the optimizer."""

import math
import shutil

import pytest
import torch
from torch import nn

from alignkit.algorithms import train
from alignkit.engine.master_weights import MasterWeights
from test_engine import assert_same_weights, metric_rows, recipe, torchrun, weights

BF16 = ["train.precision=bf16_params"]


def relative_gap(start, a, b) -> float:
    """sum |a - b| over sum |a - start|: how far two runs' weights are apart, as a share of how far training moved them."""
    wa, wb, w0 = weights(a), weights(b), weights(start)
    moved = sum((wa[k] - w0[k]).abs().sum().item() for k in wa)
    assert moved > 0
    return sum((wa[k] - wb[k]).abs().sum().item() for k in wa) / moved


def test_an_update_below_half_a_bf16_step_is_kept_and_lands():
    """w = 1.0: the bf16 number below it is 1 - 2^-8 = 0.99609375, the midpoint 0.998046875. SGD steps of
    -0.0005 (gradient 1, lr 5e-4) round away on a bf16 weight: it stays 1.0. With an fp32 master the
    master walks 0.9995, 0.999, 0.9985, 0.998 and the 4th step, past the midpoint, moves the bf16 weight."""
    layer = nn.Linear(1, 1, bias=False)
    plain = nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
    with torch.no_grad():
        layer.weight.fill_(1.0)
    master = MasterWeights()
    master.adopt(layer)
    assert layer.weight.dtype == torch.bfloat16 and master.masters[0].dtype == torch.float32
    opt = torch.optim.SGD(master.masters, lr=5e-4)
    plain_opt = torch.optim.SGD([plain], lr=5e-4)
    seen = []
    for _ in range(4):
        layer(torch.ones(1, 1, dtype=torch.bfloat16)).sum().backward()  # d/dw = 1
        master.collect()
        assert layer.weight.grad is None
        opt.step()
        opt.zero_grad()
        master.publish()
        seen.append(layer.weight.item())
        plain.sum().backward()
        plain_opt.step()
        plain_opt.zero_grad()
    assert seen == [1.0, 1.0, 1.0, 0.99609375]
    assert master.masters[0].item() == pytest.approx(0.998, abs=1e-6)
    assert plain.item() == 1.0  # a bf16 weight without a master never moves


def test_gradients_accumulate_in_fp32_over_micro_batches():
    """Two micro-batches' bf16 gradients add in the master's fp32 gradient: 1 + 2^-9 is not a bf16 number
    (8 significant bits), so a bf16 accumulator would round it to 1."""
    layer = nn.Linear(1, 1, bias=False)
    master = MasterWeights()
    master.adopt(layer)
    for x in (1.0, 2.0 ** -9):
        layer(torch.full((1, 1), x, dtype=torch.bfloat16)).sum().backward()
        master.collect()
    assert master.masters[0].grad.dtype == torch.float32
    assert master.masters[0].grad.item() == 1.0 + 2.0 ** -9


def test_tied_weights_get_one_master_and_stay_tied():
    emb = nn.Embedding(4, 3)
    head = nn.Linear(3, 4, bias=False)
    head.weight = emb.weight
    module = nn.ModuleDict({"emb": emb, "head": head})
    master = MasterWeights()
    master.adopt(module)
    assert len(master.masters) == 1 and module["head"].weight is module["emb"].weight
    with master.full_precision():
        assert module["emb"].weight.dtype == torch.float32
    assert module["emb"].weight.dtype == torch.bfloat16


def test_bf16_params_trains_saves_fp32_and_resumes_exactly(tmp_path, tiny_dir):
    """DPO under bf16_params: the run's loss starts at log 2 (policy = reference, both bf16), training lowers
    it, the saved weights are the fp32 masters (not bf16-rounded), and a resumed run ends on the
    uninterrupted run's weights and losses exactly."""
    extra = [*BF16, "train.max_steps=6", "train.save_every=3"]
    whole = train(recipe(tmp_path, tiny_dir, "dpo", "whole", extra))
    rows = metric_rows(tmp_path / "whole")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-8)  # see the next test
    assert rows[-1]["loss"] < rows[0]["loss"]
    saved = weights(whole)
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in saved.values())  # fp32 values off the bf16 grid
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = train(recipe(tmp_path, tiny_dir, "dpo", "resumed", [*extra, "train.resume=true"]))
    assert_same_weights(whole, resumed, atol=0)
    tail = [r["loss"] for r in rows if r["step"] > 3]
    assert tail == [r["loss"] for r in metric_rows(tmp_path / "resumed")]


@pytest.mark.parametrize("precision", ["bf16_params", "bf16"])
def test_cached_bf16_reference_equals_the_first_forward(tmp_path, tiny_dir, precision):
    """DPO's first loss is exactly log 2 in bf16: the reference log-probs are cached in the first epoch's
    micro-batches (engine.trainer.Trainer._cache_chunks), so the reference's forward has the policy's batch
    shapes and roundings. Cached in index order it was 0.689 on SmolLM2 and 1e-5 off here."""
    train(recipe(tmp_path, tiny_dir, "dpo", "run", [f"train.precision={precision}", "train.max_steps=1", "train.micro_batch_size=2"]))
    assert metric_rows(tmp_path / "run")[0]["loss"] == pytest.approx(math.log(2), abs=1e-8)


def test_bf16_params_micro_batches_match_the_full_batch(tmp_path, tiny_dir):
    """fp32 accumulation of the micro-batches' gradients: the same update as one full batch up to bf16
    rounding of each micro-batch's forward, far closer than the distance training moved the weights; and
    the losses follow the fp32 run's."""
    full = train(recipe(tmp_path, tiny_dir, "sft", "full", BF16))
    micro = train(recipe(tmp_path, tiny_dir, "sft", "micro", [*BF16, "train.micro_batch_size=2"]))
    train(recipe(tmp_path, tiny_dir, "sft", "fp32"))
    assert relative_gap(tiny_dir, full, micro) < 0.02
    losses = [r["loss"] for r in metric_rows(tmp_path / "full")]
    assert losses == pytest.approx([r["loss"] for r in metric_rows(tmp_path / "micro")], abs=2e-3)
    assert losses == pytest.approx([r["loss"] for r in metric_rows(tmp_path / "fp32")], abs=1e-2)
    assert losses[-1] < losses[0] - 0.1


def test_bf16_params_grpo_runs_with_a_bf16_reference(tmp_path, tiny_dir):
    """GRPO with a KL term under bf16_params: the reference is bf16 like the policy (KL 0 at the first
    update), the sampler decodes from the bf16 policy itself, and rewards are logged."""
    extra = ["rl.sampling.group_size=4", "rl.sampling.max_new_tokens=8", "train.lr=3e-3", "rl.kl.beta=0.04",
             "rl.reward=reward_fns:soup_is_constant", *BF16]
    train(recipe(tmp_path, tiny_dir, "rl", "grpo", extra))
    rows = metric_rows(tmp_path / "grpo")
    assert len(rows) == 4 and all(r["loss"] == r["loss"] for r in rows)
    assert max(r["reward_std"] for r in rows) > 0  # the rewards varied, so the updates did something
    # the first update starts from the reference's weights: its KL is bf16 rounding noise (two forward
    # passes of different batch shapes), far below what the updates then make
    assert abs(rows[0]["kl"]) < 1e-3
    assert max(abs(r["kl"]) for r in rows[1:]) > 10 * abs(rows[0]["kl"])


@pytest.mark.parametrize("strategy", ["fsdp2", "deepspeed_zero2"])
def test_bf16_params_refuses_sharded_strategies(tmp_path, tiny_dir, strategy):
    with pytest.raises(ValueError, match=f"train.precision=bf16_params runs on one process or DDP, not train.distributed={strategy}"):
        recipe(tmp_path, tiny_dir, "dpo", "f", [*BF16, f"train.distributed={strategy}"])


@pytest.mark.distributed
def test_bf16_params_two_processes_match_one(tmp_path, tiny_dir):
    """DDP with bf16 parameters: the fp32 master gradients are averaged over processes (DDP's bf16 reduce
    is bypassed), so 2 processes give the 1-process update up to bf16 forward rounding (measured: 0.3% of
    the distance the weights moved; without the reduce of the master gradients it is 68%)."""
    one = train(recipe(tmp_path, tiny_dir, "dpo", "one", BF16))
    two = torchrun(tmp_path, tiny_dir, "two", BF16)
    assert relative_gap(tiny_dir, one, two) < 0.02
    one_losses = [r["loss"] for r in metric_rows(tmp_path / "one")]
    assert one_losses == pytest.approx([r["loss"] for r in metric_rows(tmp_path / "two")], abs=1e-3)
