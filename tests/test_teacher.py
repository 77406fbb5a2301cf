"""Teacher completions in the iterative loop (``iterate.teacher``): the teacher's completion joins each prompt's
pool before judging (and, with the gold judge, a clearly better teacher takes the chosen side), or is the chosen
side of SPIN's pairs; provenance says ``source: teacher``; bad settings are refused with one clear line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import quick_sft

from alignkit.config import load_recipe
from alignkit.loops import Group, build_builder, iterate
from alignkit.loops.iterate import IterativeLoop
from alignkit.rollout.generate import generate
from alignkit.tasks import get_task

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "selfplay"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_dir, tokenizer):
    """A teacher that writes the task's language (quick SFT), saved; the student is the untrained tiny model."""
    out = tmp_path_factory.mktemp("teacher") / "model"
    quick_sft(tiny_dir, tokenizer, rows=64, steps=60).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def base(tmp_path, tiny_dir, teacher_dir, *extra):
    return {
        "algorithm": "dpo", "model": {"path": str(tiny_dir)}, "task": {"name": "sentiment"}, "data": {"max_length": 64},
        "dpo": {"beta": 0.5, "reference": "cache"},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "lr": 1e-4, "progress": False, "save_final": False},
        "iterate": {"rounds": 1, "prompts_per_round": 6, "samples_per_prompt": 2, "steps_per_round": 1, "judge": "gold", "max_new_tokens": 16,
                    "eval_prompts": 0, "teacher": {"path": str(teacher_dir), "max_new_tokens": 32}},
    }


def provenance(tmp_path, r=0):
    return [json.loads(x) for x in (tmp_path / "run" / "rounds" / f"round-{r}.jsonl").read_text().splitlines()]


def built(tmp_path, r=0):
    return [json.loads(x) for x in (tmp_path / "run" / "rounds" / f"examples-{r}.jsonl").read_text().splitlines()[1:]]


def greedy_teacher(teacher_dir, prompts, max_new_tokens=32):
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer

    model = load_policy_for_inference(teacher_dir).eval()
    return [s.completion for s in generate(model, load_tokenizer(teacher_dir), prompts, n=1, greedy=True, max_new_tokens=max_new_tokens)]


def test_teacher_joins_the_pool_and_a_better_teacher_wins_chosen(tmp_path, tiny_dir, teacher_dir, one_thread):
    task = get_task("sentiment")
    iterate(base(tmp_path, tiny_dir, teacher_dir))
    rows = provenance(tmp_path)
    prompts = task.prompts(6, "train")
    assert [r["source"] for r in rows] == ["policy", "policy", "teacher"] * 6  # K = 2 policy samples, then the teacher's
    teacher_rows = [r for r in rows if r["source"] == "teacher"]
    # the teacher's completion is its own greedy decode of the prompt, judged like the policy's samples
    assert [r["completion"] for r in teacher_rows] == greedy_teacher(teacher_dir, prompts)
    for r in rows:  # empty completions get no score
        assert r["score"] == (None if not r["completion"].strip() else pytest.approx(task.gold_reward(r["prompt"], r["completion"])))
    # the untrained student writes malformed text (gold -2); the teacher writes the language (on topic or not):
    # where it is better by gold, best vs worst takes it as chosen; where everything ties, no pair is made
    wins = 0
    for i in range(6):
        group = rows[3 * i : 3 * i + 3]
        teacher, own = group[2], group[:2]
        own = [r for r in own if r["score"] is not None]
        assert all(r["score"] == -2.0 for r in own)
        if own and teacher["score"] > -2.0:
            wins += 1
            assert teacher["used_as"] == ["chosen"] and own[0]["used_as"] == ["rejected"]  # the worst: the first on ties
        else:
            assert teacher["used_as"] == [] and all(r["used_as"] == [] for r in own)
    assert wins >= 3, [(r["source"], r["completion"], r["score"]) for r in rows]
    chosen = [r["chosen"] for r in built(tmp_path)]
    assert len(chosen) == wins and all(c in [t["completion"] for t in teacher_rows] for c in chosen)


def test_teacher_as_chosen_side_of_spin(tmp_path, tiny_dir, teacher_dir, one_thread):
    """use: chosen with builder spin and no judge: every pair is (teacher's completion, the policy's own sample)."""
    task = get_task("sentiment")
    recipe = base(tmp_path, tiny_dir, teacher_dir)
    recipe["iterate"].update({"judge": "none", "builder": "spin", "samples_per_prompt": 1,
                              "teacher": {"path": str(teacher_dir), "use": "chosen", "max_new_tokens": 32}})
    iterate(recipe)
    rows = provenance(tmp_path)
    prompts = task.prompts(6, "train")  # the task's prompts, not its SFT rows: the teacher gives the chosen side
    teacher = [r for r in rows if r["source"] == "teacher"]
    own = [r for r in rows if r["source"] == "policy"]
    assert not [r for r in rows if r["source"] == "data"]
    assert [r["prompt"] for r in teacher] == prompts and [r["completion"] for r in teacher] == greedy_teacher(teacher_dir, prompts)
    pairs = built(tmp_path)
    expected = [(t["completion"], o["completion"]) for t, o in zip(teacher, own) if t["completion"] != o["completion"] and o["completion"].strip()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == expected and len(expected) >= 5
    assert all(t["used_as"] == ["chosen"] for t, o in zip(teacher, own) if (t["completion"], o["completion"]) in expected)


def test_sampled_teacher_and_builders_keep_it_off_the_policy_side(tmp_path, tiny_dir, teacher_dir, one_thread):
    recipe = base(tmp_path, tiny_dir, teacher_dir)
    recipe["iterate"]["teacher"] = {"path": str(teacher_dir), "samples": 2, "greedy": False, "temperature": 1.0, "max_new_tokens": 32}
    recipe["iterate"]["builder"] = "all_pairs"
    iterate(recipe)
    rows = provenance(tmp_path)
    assert [r["source"] for r in rows] == ["policy", "policy", "teacher", "teacher"] * 6
    assert [r["sample"] for r in rows[:4]] == [0, 1, 2, 3]
    # vs_opponent pairs the policy's samples with the opponent's only; soft_pairs among the policy leaves the teacher out
    g = Group("p", ["a", "b", "o", "t"], [0.0, 1.0, 0.5, 2.0], extra={"opponents": [2], "teacher": [3]})
    assert build_builder("vs_opponent")(g, random.Random(0)) == [(2, 0), (1, 2)]
    assert [x[:2] for x in build_builder("soft_pairs", {"among": "policy"})(g, random.Random(0))] == [(1, 0)]
    assert build_builder("best_vs_worst")(g, random.Random(0)) == [(3, 0)]  # a score builder may pick it


def test_bad_teacher_settings_are_refused(tmp_path, tiny_dir, teacher_dir):
    recipe = base(tmp_path, tiny_dir, teacher_dir)
    recipe["iterate"].update({"judge": "none", "builder": "spin"})
    with pytest.raises(ValueError, match="teacher.use=pool: builder 'spin' reads no scores"):
        IterativeLoop(load_recipe(recipe))
    recipe["iterate"].update({"judge": "gold", "builder": "best_vs_worst", "teacher": {"path": str(teacher_dir), "use": "chosen"}})
    with pytest.raises(ValueError, match="teacher.use=chosen takes the teacher's completion as the chosen side of builder spin"):
        IterativeLoop(load_recipe(recipe))
    with pytest.raises(ValueError, match="greedy=true gives the same completion"):
        load_recipe(recipe, ["iterate.teacher.use=pool", "iterate.teacher.samples=3"])
    with pytest.raises(ValueError, match="iterate.teacher.use"):
        load_recipe(recipe, ["iterate.teacher.use=both"])


def test_teacher_recipe_runs(tmp_path, tiny_dir, teacher_dir, one_thread):
    result = iterate(RECIPES / "teacher.yaml", [f"train.output_dir={tmp_path / 'run'}", f"model.path={tiny_dir}", f"iterate.teacher.path={teacher_dir}",
                                                "iterate.teacher.max_new_tokens=32", "train.progress=false", "train.batch_size=2", "iterate.rounds=1", "iterate.prompts_per_round=6",
                                                "iterate.steps_per_round=1", "iterate.eval_prompts=2", "iterate.max_new_tokens=8", "iterate.eval_max_new_tokens=8"])
    assert result["rounds"][0]["steps"] == 1 and any(r["source"] == "teacher" for r in provenance(tmp_path))
