"""SPO (the win rate against the group as the reward of online RL): the reward worked out by hand on the
intransitive task's oracle, its checks, and the recipe through alignkit train."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.loops.spo import group_win_rate

PROMPT = "review of the phone :"
SINGLE = " the sound was superb ."
AND = " the battery was bad and the sound was okay and the charger was great ."
BUT = " the case was terrible and the battery was fine but the screen was horrible ."
MALFORMED = " the boss was good and the controls was plain ."  # a boss is no aspect of a phone


def test_group_win_rate_by_hand():
    # oracle: single > and > but > single with 0.8, same style 0.5, well-formed beats malformed with 0.95
    # group 1 [single, and, but, malformed]: single (0.8 + 0.2 + 0.95)/3 = 0.65; and (0.2 + 0.8 + 0.95)/3 = 0.65;
    #   but (0.8 + 0.2 + 0.95)/3 = 0.65; malformed (0.05 * 3)/3 = 0.05
    # group 2 [single, single, and, ""]: each single (0.5 + 0.8 + 0.95)/3 = 0.75; the empty completion is malformed
    #   for the oracle (0.05 each way) but gets reward 0; and: (0.2 + 0.2 + 0.95)/3 = 0.45
    prompts = [PROMPT] * 8
    completions = [SINGLE, AND, BUT, MALFORMED, SINGLE, SINGLE, AND, ""]
    got = group_win_rate(prompts, completions, group_size=4)
    assert got == pytest.approx([0.65, 0.65, 0.65, 0.05, 0.75, 0.75, 0.45, 0.0])
    with pytest.raises(ValueError, match="group_size"):
        group_win_rate(prompts, completions, group_size=3)
    with pytest.raises(ValueError, match="mixes prompts"):
        group_win_rate([PROMPT, "review of the soup :"] * 4, completions, group_size=4)
    with pytest.raises(ValueError, match="not pairwise"):
        group_win_rate(prompts, completions, group_size=4, judge="gold")


def test_spo_recipe_trains_with_online_rl(tmp_path, tiny_dir, one_thread):
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "selfplay" / "spo.yaml", [
        f"model.path={tiny_dir}", f"train.output_dir={tmp_path / 'spo'}", "train.progress=false", "train.max_steps=2", "train.batch_size=2",
        "task.n_train=8", "task.n_eval=0", "rl.sampling.max_new_tokens=8", "data.max_length=48", "train.log_every=1"])
    final = train(recipe)
    assert Path(final).is_dir()
    import json

    records = [json.loads(x) for x in (tmp_path / "spo" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if "reward" in r]
    assert rewards and all(0.0 <= r <= 1.0 for r in rewards)  # win rates
