"""Self-rewarding evidence (benchmarks/self_rewarding.py): the EFT targets from the gold reward worked out by hand,
the judge-vs-gold agreement measures by hand, and the self-rewarding recipe end to end with its unparseable
answers counted (never dropped)."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

from alignkit.loops import iterate, parse_score
from alignkit.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("self_rewarding", ROOT / "benchmarks" / "self_rewarding.py")
sr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sr)


def test_eft_score_from_gold_by_hand():
    # malformed (gold -2) -> 1; else 2 + round(7 (g + 1) / 2), halves up: -1 -> 2, -0.5 -> 2 + round(1.75) = 4,
    # 0 -> 2 + round(3.5) = 6, 0.5 -> 2 + round(5.25) = 7, 1 -> 9
    assert [sr.gold_score(g) for g in (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0)] == [1, 2, 4, 6, 7, 9]


def test_eft_rows_ask_the_template_and_answer_the_gold_score():
    task = get_task("sentiment")
    rows = sr.eft_rows(task, 400)
    malformed = 0
    for row in rows:
        head, tail = row["prompt"].split(" :", 1)  # "<prompt><completion> score :" with the prompt "review of the X :"
        prompt, completion = head + " :", tail[: -len(" score :")]
        assert row["prompt"] == sr.TEMPLATE.format(prompt=prompt, completion=completion)
        gold = task.gold_reward(prompt, completion)
        assert row["completion"] == f" {sr.gold_score(gold)}" and parse_score(row["completion"], sr.LOW, sr.HIGH) == sr.gold_score(gold)
        malformed += gold < -1
    assert 0.1 < malformed / len(rows) < 0.3  # about 20% made malformed, so the judge learns to give 1
    assert sr.corrupt(" the soup was good .", random.Random(0)) != " the soup was good ."


def test_agreement_measures_by_hand():
    task = get_task("sentiment")
    p = "review of the soup :"
    good, fine, bad, broken = " the soup was great .", " the soup was fine .", " the soup was awful .", " soup the was"
    rows = [  # gold: +1, +0.25, -1, -2 in prompt 0; +1, -1 in prompt 1
        {"prompt_index": 0, "prompt": p, "completion": good, "score": 8.0},
        {"prompt_index": 0, "prompt": p, "completion": fine, "score": 9.0},
        {"prompt_index": 0, "prompt": p, "completion": bad, "score": 2.0},
        {"prompt_index": 0, "prompt": p, "completion": broken, "score": None},
        {"prompt_index": 1, "prompt": p, "completion": good, "score": 5.0},
        {"prompt_index": 1, "prompt": p, "completion": bad, "score": 5.0},
    ]
    out = sr.agreement(task, rows)
    assert out["unscored"] == 1 and out["unscored_rate"] == pytest.approx(1 / 6)
    # within prompt 0 (scored): (good, fine) wrong, (good, bad) right, (fine, bad) right; prompt 1 ties the judge: left out
    assert out["pairs"] == 3 and out["pair_accuracy"] == pytest.approx(2 / 3)
    # exact EFT score: good -> 9 (judged 8), fine -> 2 + round(4.375) = 6 (9), bad -> 2 (2), good (5), bad (5): 1 of 5
    assert out["exact"] == pytest.approx(1 / 5)
    # Kendall tau_b over the 5 scored samples, scores (8, 9, 2, 5, 5) vs gold (1, .25, -1, 1, -1):
    # pairs: (8,9|1,.25) -, (8,2|1,-1) +, (8,5|1,1) tie-g, (8,5|1,-1) +, (9,2|.25,-1) +, (9,5|.25,1) -, (9,5|.25,-1) +,
    #        (2,5|-1,1) +, (2,5|-1,-1) tie-g, (5,5|1,-1) tie-s  -> concordant 5, discordant 2; non-tied: scores 9, gold 8
    assert out["kendall_tau"] == pytest.approx((5 - 2) / math.sqrt(9 * 8))


def test_self_rewarding_recipe_runs_and_counts_unparseable_answers(tmp_path, tiny_dir, one_thread):
    """The recipe as written (shortened), on the untrained tiny model: its answers are mostly not numbers; every
    sample's raw answer is in the provenance, and the count of those that do not parse is the round's judge/unparseable."""
    out = tmp_path / "run"
    result = iterate(ROOT / "recipes" / "selfplay" / "self_rewarding.yaml", [
        f"train.output_dir={out}", f"model.path={tiny_dir}", "train.progress=false", "train.batch_size=2", "iterate.rounds=1",
        "iterate.prompts_per_round=4", "iterate.steps_per_round=1", "iterate.eval_prompts=2", "iterate.max_new_tokens=8",
        "iterate.eval_max_new_tokens=8", "data.max_length=48"])
    rows = [json.loads(x) for x in (out / "rounds" / "round-0.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all("judge_answer" in r for r in rows)
    for r in rows:
        parsed = parse_score(r["judge_answer"], sr.LOW, sr.HIGH) if r["completion"].strip() else None
        assert r["score"] == parsed
    stats = result["rounds"][0]
    assert stats["judge/calls"] == len(rows)  # every sample is asked, empty ones too (they get no score either way)
    assert stats["judge/unparseable"] == sum(parse_score(r["judge_answer"], sr.LOW, sr.HIGH) is None for r in rows)
    assert stats["judge"] == "llm:policy:score" and result["rounds"][0]["eval"]["gold_reward"] is not None
