"""The batch-size vocabulary (engine/batch_plan.py): the arithmetic on hand-worked layouts, the refusals of
settings that cannot give the layout, and the one line a run prints at its start."""

import re

import pytest

from alignkit.algorithms import train
from alignkit.config import load_recipe
from alignkit.engine.batch_plan import plan_batches
from test_engine import recipe


def rl(*extra):
    return load_recipe({"algorithm": "rl"}, list(extra))


def test_online_layout_worked_by_hand():
    # 8 prompts x 4 samples = 32 samples per step; 2 mini-batches -> 16 per optimizer step (global batch);
    # 2 processes -> 8 per device; micro-batches of 4 (one GRPO group each) -> 2 accumulation steps; 2 epochs -> 4 updates.
    plan = plan_batches(rl("train.batch_size=8", "rl.sampling.group_size=4", "rl.update.mini_batches=2", "rl.update.epochs=2",
                           "train.micro_batch_size=4"), processes=2)
    assert (plan.samples_per_step, plan.global_batch, plan.per_device, plan.accumulation, plan.optimizer_steps) == (32, 16, 8, 2, 4)
    assert plan.unit_size == 4  # a group shares its prompt's row
    assert plan.global_batch == plan.processes * plan.micro_batch * plan.accumulation
    line = plan.line()
    for words in ("prompts per step 8", "samples per prompt 4", "processes 2", "per-device micro-batch 4", "gradient-accumulation steps 2",
                  "global batch 16 samples per optimizer step", "4 optimizer steps per training step"):
        assert words in line, words


def test_offline_and_ppo_layouts_worked_by_hand():
    # DPO: 12 pairs per step over 3 processes = 4 each, micro-batch 2 -> 2 accumulation steps, global batch 12.
    dpo = plan_batches(load_recipe({"algorithm": "dpo"}, ["train.batch_size=12", "train.micro_batch_size=2"]), processes=3)
    assert (dpo.global_batch, dpo.per_device, dpo.accumulation, dpo.samples_per_prompt, dpo.optimizer_steps) == (12, 4, 2, 1, 1)
    assert "examples per step 12" in dpo.line() and "global batch 12 examples" in dpo.line()
    # PPO reads padded rows, one sample per unit: 4 prompts x 3 samples = 12, 3 mini-batches -> 4 per update on one process;
    # no micro-batch size: the whole per-device batch in one forward.
    ppo = plan_batches(rl("rl.estimator=ppo", "train.batch_size=4", "rl.sampling.group_size=3", "rl.update.mini_batches=3"), processes=1)
    assert (ppo.unit_size, ppo.global_batch, ppo.per_device, ppo.accumulation) == (1, 4, 4, 1)
    # length buckets decide the accumulation
    tokens = plan_batches(rl("train.micro_batch_tokens=64"), processes=1)
    assert tokens.accumulation is None and "length buckets of <= 64 tokens" in tokens.line()


@pytest.mark.parametrize("extra, processes, words", [
    (["train.batch_size=9"], 2, "train.batch_size=9 prompts per step must be divisible by the number of processes (2)"),
    # 4 prompts per process, groups of 4 are the units: 4 units do not split into 3 optimizer steps
    (["train.batch_size=8", "rl.sampling.group_size=4", "rl.update.mini_batches=3"], 2, "rl.update.mini_batches=3 must divide the 4 units"),
    # a micro-batch of 2 samples cannot hold a group of 4 (units never span micro-batches)
    (["train.batch_size=8", "rl.sampling.group_size=4", "train.micro_batch_size=2"], 1, "train.micro_batch_size=2 samples per forward must be a multiple of a unit"),
    # p3o pairs: a micro-batch of 3 splits a pair
    (["rl.estimator=p3o", "train.batch_size=6", "rl.sampling.group_size=2", "rl.update.share_prompts=false", "train.micro_batch_size=3"], 1,
     "a pair of samples"),
    # 6 prompts x 2 samples / 2 mini-batches / 2 processes = 3 samples per device and update: micro-batches of 2 do not
    # divide them (ppo: units of 1), though train.batch_size=6 is a multiple of 2 (the recipe check counts prompts)
    (["rl.estimator=ppo", "train.batch_size=6", "rl.sampling.group_size=2", "rl.update.mini_batches=2", "train.micro_batch_size=2"], 2,
     "train.micro_batch_size=2 must divide the 3 samples each process trains on per optimizer step"),
])
def test_inconsistent_online_settings_are_refused_naming_the_options(extra, processes, words):
    with pytest.raises(ValueError, match=re.escape(words)) as error:
        plan_batches(rl(*extra), processes)
    assert "\n" not in str(error.value)  # one line


def test_offline_micro_batch_must_divide_the_per_process_batch():
    with pytest.raises(ValueError, match=r"train\.micro_batch_size=4 must divide the 6 examples each of the 2 process"):
        plan_batches(load_recipe({"algorithm": "sft"}, ["train.batch_size=12", "train.micro_batch_size=4"]), processes=2)


def test_a_run_prints_the_vocabulary_once(tmp_path, tiny_dir, capsys):
    train(recipe(tmp_path, tiny_dir, "rl", "run", ["train.max_steps=1", "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=4",
                                                   "train.batch_size=4", "train.micro_batch_size=4"]))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "batch vocabulary" in line]
    assert lines == ["[alignkit] batch vocabulary: prompts per step 4, samples per prompt 2, processes 1, per-device micro-batch 4, "
                     "gradient-accumulation steps 2, global batch 8 samples per optimizer step (1 optimizer step per training step)"]


def test_a_refused_layout_stops_the_run_before_the_model_loads(tmp_path, tiny_dir):
    r = recipe(tmp_path, tiny_dir, "rl", "bad", ["train.batch_size=4", "rl.sampling.group_size=4", "rl.update.mini_batches=3"])
    with pytest.raises(ValueError, match="rl.update.mini_batches=3 must divide the 4 units"):
        train(r)
    assert not (tmp_path / "bad" / "final").exists()
