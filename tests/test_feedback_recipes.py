"""The recipes of recipes/feedback run as written (shortened to one step on the session's tiny model)."""

import json
from pathlib import Path

import pytest

from alignkit.algorithms import train
from alignkit.algorithms.feedback import conditioned_prompt
from alignkit.config import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "feedback"
EXTRA = {"ilf.yaml": ["feedback.ilf.samples=1", "feedback.ilf.max_new_tokens=4", "feedback.ilf.rounds=1"]}
CONDITIONED = {"hindsight.yaml": "review of the soup : A better answer:", "c_rlft.yaml": "<expert> review of the soup :",
               "reward_augmented.yaml": "<score 1.0> review of the soup :", "dpa.yaml": "<v 0.71 0.71> review of the soup :"}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_feedback_recipe_runs(path, tiny_dir, tmp_path, one_thread):
    out = tmp_path / path.stem
    recipe = load_recipe(path, [f"model.path={tiny_dir}", f"train.output_dir={out}", "train.max_steps=1", "train.batch_size=4", "task.n_train=8",
                                "task.n_eval=0", "train.progress=false", "train.eval_every=null", *EXTRA.get(path.name, [])])
    final = train(recipe)
    assert (final / "model.safetensors").exists()
    assert conditioned_prompt(final, "review of the soup :") == CONDITIONED.get(path.name, "review of the soup :")
    if path.name == "reward_augmented.yaml":  # 8 pairs -> 16 score-conditioned pairs; one step of 4
        assert json.loads((out / "summary.json").read_text())["examples_seen"] == 4
