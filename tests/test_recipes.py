"""Every shipped recipe validates and runs as written (shortened with max_steps) on the tiny model."""

from pathlib import Path

import pytest

from alignkit.algorithms import train
from alignkit.config import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def short(tmp_path, name):
    return [f"train.output_dir={tmp_path / name}", "train.max_steps=2", "train.progress=false", "train.eval_every=null", "train.save_every=null"]


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.algorithm


def test_recipes_run_in_order(tmp_path):
    sft = train(load_recipe(RECIPES / "sft.yaml", [*short(tmp_path, "sft"), "task.n_train=128", "task.n_eval=16"]))
    assert (sft / "model.safetensors").exists()
    for name in ("dpo.yaml", "dpo_lora.yaml"):
        out = train(load_recipe(RECIPES / name, [*short(tmp_path, name), f"model.path={sft}", "task.n_train=64", "task.n_eval=0"]))
        assert out.exists()
    for name in ("grpo.yaml", "dapo.yaml", "ppo.yaml"):
        out = train(load_recipe(RECIPES / name, [*short(tmp_path, name), f"model.path={sft}", "task.n_train=64", "task.n_eval=0", "train.batch_size=4"]))
        assert out.exists()
    for name in ("reward.yaml", "reward_multi_objective.yaml", "reward_process.yaml"):
        out = train(load_recipe(RECIPES / name, [*short(tmp_path, name), f"model.path={sft}"]))
        assert out.exists(), name
    arith = train(load_recipe(RECIPES / "sft_arithmetic.yaml", [*short(tmp_path, "sft-arith"), "task.n_train=64", "task.n_eval=0"]))
    train(load_recipe(RECIPES / "grpo_arithmetic.yaml", [*short(tmp_path, "grpo-arith"), f"model.path={arith}", "task.n_train=64", "task.n_eval=0"]))
    chat = train(load_recipe(RECIPES / "sft_chat.yaml", [*short(tmp_path, "chat"), f"data.train={RECIPES / 'data' / 'chat_sft.jsonl'}", "model.tiny.hidden_size=32"]))
    assert chat.exists()


@pytest.mark.parametrize("name", ["iterative_dpo.yaml", "spin.yaml", "raft.yaml", "rso.yaml", "dno.yaml"])
def test_iterative_recipes_run(tmp_path, tiny_dir, name):
    """The iterative recipes (alignkit iterate) run as written, shortened to one small round on the tiny model."""
    from alignkit.loops import iterate

    result = iterate(RECIPES / name, [f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "train.progress=false", "train.batch_size=2",
                                      "iterate.rounds=1", "iterate.prompts_per_round=4", "iterate.steps_per_round=1", "iterate.eval_prompts=2",
                                      "iterate.max_new_tokens=8", "iterate.eval_max_new_tokens=8"])
    assert (tmp_path / name / "rounds" / "round-0.jsonl").exists() and result["final"]
    assert result["rounds"][0]["eval"]["gold_reward"] is not None
