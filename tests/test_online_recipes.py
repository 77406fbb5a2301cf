"""The online recipes of recipes/ (online DPO / OAIF, XPO, Nash-MD) run as written, shortened to two one-step rounds
on the tiny model; each round's pairs are fresh samples of that round, judged with the recipe's judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.loops import iterate

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("name, sources", [("online_dpo", {"policy"}), ("xpo", {"policy", "reference"}), ("nash_md", {"policy", "mixture"})])
def test_online_recipe_runs_as_written(name, sources, tmp_path, tiny_dir, one_thread):
    out = tmp_path / name
    result = iterate(RECIPES / f"{name}.yaml", [f"train.output_dir={out}", f"model.path={tiny_dir}", "train.progress=false", "train.batch_size=2",
                                                "iterate.rounds=2", "iterate.prompts_per_round=4", "iterate.eval_prompts=2", "iterate.eval_every=2",
                                                "iterate.max_new_tokens=8", "iterate.eval_max_new_tokens=8", "data.max_length=48"])
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[0]["eval"] is None and rounds[1]["eval"]["gold_reward"] is not None
    assert all(r["steps"] <= 1 for r in rounds) and rounds[1]["policy_step_start"] == rounds[0]["policy_step_end"]  # one step per round: online
    for r in (0, 1):
        rows = [json.loads(x) for x in (out / "rounds" / f"round-{r}.jsonl").read_text().splitlines()]
        assert {x["source"] for x in rows} == sources and all(x["round"] == r and x["policy_step"] == rounds[r]["policy_step_start"] for x in rows)
