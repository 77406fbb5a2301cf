"""The iterative-alignment loop (alignkit.loops): builders on hand-made scores, RSO's acceptance rule, LLM-judge
parsing, judges, the controller on one long-lived trainer, provenance, the CLI, and iterative DPO's gain."""

from __future__ import annotations

import json
import math
import random

import pytest
from typer.testing import CliRunner

from alignkit.config import ConfigError, load_recipe
from alignkit.loops import BUILDERS, JUDGES, REAL, Group, JudgeEnv, build_builder, build_judge, parse_choice, parse_score, rso_accept
from alignkit.loops.iterate import IterativeLoop
from alignkit.tasks import get_task


def group(scores, completions=None, real=None):
    completions = completions or [f"c{i}" for i in range(len(scores))]
    return Group("p", completions, list(scores), real)


def run(name, g, seed=0, **params):
    return build_builder(name, params)(g, random.Random(seed))


# ------------------------------------------------------------------------------------------------------
# builders (expected pairs worked by hand)
# ------------------------------------------------------------------------------------------------------
def test_best_vs_worst_and_all_pairs():
    g = group([0.2, 0.9, None, -0.5])
    assert run("best_vs_worst", g) == [(1, 3)]
    # scored: 0, 1, 3 -> pairs (0,1): 1 wins; (0,3): 0 wins; (1,3): 1 wins
    assert run("all_pairs", g) == [(1, 0), (0, 3), (1, 3)]
    assert run("best_vs_worst", group([0.5, 0.5])) == []  # a tie carries no preference
    assert run("all_pairs", group([0.1, 0.7], ["same", "same"])) == []  # equal texts neither
    assert run("best_vs_worst", group([None, 1.0])) == []


def test_random_and_large_margin_pairs():
    g = group([0.0, 1.0, 0.4, 0.9])
    pairs = run("random_pairs", g, pairs=2)
    assert len(pairs) == 2 and set(pairs) <= set(run("all_pairs", g))
    assert pairs == run("random_pairs", g, pairs=2)  # seeded
    assert run("large_margin", g, margin=0.8) == [(1, 0)]  # best vs worst: gap 1.0
    assert run("large_margin", g, margin=1.5) == []
    # every pair with a gap >= 0.5: (1,0) 1.0, (3,0) 0.9, (1,2) 0.6, (3,2) 0.5
    assert sorted(run("large_margin", g, margin=0.5, extremes=False)) == [(1, 0), (1, 2), (3, 0), (3, 2)]


def test_spin_and_best_of_k():
    g = group([None] * 3, ["own a", "the real one", "own b"], real="the real one")
    assert run("spin", g) == [(REAL, 0)]
    assert run("spin", g, per_prompt=5) == [(REAL, 0), (REAL, 2)]  # the sample equal to the real text is left out
    assert g.text(REAL) == "the real one"
    assert run("best_of_k", group([0.1, 0.8, 0.8, None])) == [(1,)]
    assert run("best_of_k", group([0.1, 0.8, 0.3]), top=2) == [(1,), (2,)]
    assert run("best_of_k", group([0.1, 0.2]), min_score=0.5) == []
    assert build_builder("best_of_k").kind == "sft" and build_builder("spin").kind == "pair"


def test_builder_errors():
    with pytest.raises(ValueError, match="did you mean 'all_pairs'"):
        build_builder("all_pair")
    with pytest.raises(ValueError, match="unknown parameter"):
        build_builder("large_margin", {"gap": 1})
    assert {"best_vs_worst", "all_pairs", "random_pairs", "large_margin", "rso", "spin", "best_of_k"} <= set(BUILDERS.names())


# ------------------------------------------------------------------------------------------------------
# RSO
# ------------------------------------------------------------------------------------------------------
class Scripted(random.Random):
    """An rng whose randrange/random return scripted values."""

    def __init__(self, picks, uniforms):
        super().__init__(0)
        self.picks, self.uniforms = list(picks), list(uniforms)

    def randrange(self, n):
        return self.picks.pop(0)

    def random(self):
        return self.uniforms.pop(0)


def test_rso_acceptance_rule_is_the_formula():
    scores, beta = [1.0, 0.0, 0.5], 0.5
    # draw 1: candidate 1 (r=0), accept iff u < exp((0-1)/0.5) = 0.1353: u=0.2 rejects
    # draw 2: candidate 1 again, u=0.1 < 0.1353 accepts -> pool [0, 2]
    # draw 3: pool[1] = candidate 2 (r=0.5), threshold exp(-1) = 0.3679: u=0.36 accepts
    rng = Scripted([1, 1, 1], [0.2, 0.1, 0.36])
    assert rso_accept(scores, beta, 2, rng) == [1, 2]
    assert math.exp(-2.0) > 0.1 and math.exp(-1.0) > 0.36  # the thresholds the script straddles
    assert rso_accept(scores, beta, 1, Scripted([0], [0.999])) == [0]  # the best is always accepted


def test_rso_first_acceptance_follows_exp_r_over_beta():
    """With a uniform proposal, the first accepted candidate is distributed as softmax(r / beta)."""
    scores, beta, n = [0.0, 0.3, 1.0], 0.4, 20000
    rng = random.Random(0)
    counts = [0, 0, 0]
    for _ in range(n):
        counts[rso_accept(scores, beta, 1, rng)[0]] += 1
    weights = [math.exp(s / beta) for s in scores]
    for c, w in zip(counts, weights):
        assert abs(c / n - w / sum(weights)) < 0.015


def test_rso_builder_pairs_in_acceptance_order():
    g = group([1.0, 0.0, 0.5, 0.2])
    pairs = run("rso", g, beta=100.0)  # beta -> infinity: everything accepted, in a seeded order
    assert len(pairs) == 2 and sorted(i for p in pairs for i in p) == [0, 1, 2, 3]
    assert all(g.scores[c] > g.scores[r] for c, r in pairs)


# ------------------------------------------------------------------------------------------------------
# judges
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("7", 7.0), (" 8/10", 8.0), ("Score: **9**", 9.0), ("seven", 7.0), (" 3.5 out of 10", 3.5),
                                          ("11", None), ("great", None), ("", None), (None, None), ("-2", None)])
def test_parse_score(text, value):
    assert parse_score(text, 1, 10) == value


@pytest.mark.parametrize("text, value", [("A", 1.0), (" B.", 0.0), ("(A)", 1.0), ("**B**", 0.0), ("Answer: B", 0.0), ("Response A is better", 1.0),
                                          ("I prefer B", 0.0), ("A and B are both fine", 1.0), ("both B and A", None), ("neither", None), ("", None),
                                          ("Absolutely", None)])
def test_parse_choice(text, value):
    assert parse_choice(text) == value


def test_gold_and_preference_judges():
    task = get_task("intransitive")
    prompt = task.prompts(1)[0]
    comps = [task.sample_completion(prompt, random.Random(i)) for i in range(3)]
    j = build_judge("preference", JudgeEnv(task=task)).judge([prompt], [comps])
    p = j.preferences[0]
    for a in range(3):
        for b in range(3):
            if a != b:
                assert p[a][b] == pytest.approx(task.preference(prompt, comps[a], comps[b]))
                assert p[a][b] + p[b][a] == pytest.approx(1.0)
    assert j.scores[0][0] == pytest.approx((p[0][1] + p[0][2]) / 2)  # the win rate against the group
    sentiment = get_task("sentiment")
    g = build_judge("gold", JudgeEnv(task=sentiment)).judge(["review of the film :"], [[" the plot was great .", " the plot was bad ."]])
    assert g.scores == [[1.0, -0.75]]
    fn = build_judge("alignkit.rewards.verifiable:exact_match", JudgeEnv(task=sentiment))
    assert fn.name.startswith("reward:")
    with pytest.raises(ValueError, match="unknown parameter"):
        build_judge({"type": "llm", "temprature": 1}, JudgeEnv(task=sentiment))
    assert {"gold", "reward", "preference", "llm", "none"} <= set(JUDGES.names())


def test_llm_judge_counts_unparseable(tiny_dir, tokenizer):
    from alignkit.models.loading import load_policy_for_inference

    model = load_policy_for_inference(tiny_dir)
    env = JudgeEnv(task=get_task(), model=model, tokenizer=tokenizer)
    judge = build_judge({"type": "llm", "mode": "score", "max_new_tokens": 4}, env)
    prompts, groups = ["review of the film :"] * 2, [[" the plot was great .", " the plot was bad ."], [" the music was fine .", " x"]]
    out = judge.judge(prompts, groups)
    answers = [a for g in out.answers for a in g]
    expected = [parse_score(a, 1, 10) for a in answers]
    assert [s for g in out.scores for s in g] == expected
    assert out.stats["judge/calls"] == 4 and out.stats["judge/unparseable"] == sum(e is None for e in expected)
    choice = build_judge({"type": "llm", "mode": "choice", "max_new_tokens": 3, "both_orders": True}, env).judge(prompts, groups)
    assert choice.stats["judge/calls"] == 4  # one pair per group, both orders
    assert 0 <= choice.stats["judge/unparseable"] <= 4


# ------------------------------------------------------------------------------------------------------
# the controller
# ------------------------------------------------------------------------------------------------------
def loop_recipe(tmp_path, tiny_dir, *extra, name="loop"):
    return load_recipe({"algorithm": "dpo", "iterate": {"rounds": 2, "prompts_per_round": 8, "samples_per_prompt": 4, "steps_per_round": 2,
                                                         "eval_prompts": 4, "eval_samples": 1, "max_new_tokens": 8, "eval_max_new_tokens": 8}},
                       [f"model.path={tiny_dir}", f"train.output_dir={tmp_path / name}", "train.batch_size=2", "train.progress=false",
                        "data.max_length=48", "iterate.judge=alignkit.rewards.verifiable:length", *extra])


def test_two_rounds_on_one_trainer_with_provenance(tmp_path, tiny_dir, one_thread):
    loop = IterativeLoop(loop_recipe(tmp_path, tiny_dir, "iterate.builder=all_pairs"))
    model, trainer = loop.trainer.model, loop.trainer
    first = loop.run_round(0)
    optimizer = trainer.optimizer
    second = loop.run_round(1)
    assert trainer.model is model and trainer.optimizer is optimizer  # no reload, optimizer kept
    assert trainer.step == first["steps"] + second["steps"] == 4
    assert all(s["step"] == 4 for s in optimizer.state.values())  # AdamW's step count = the sum of the rounds' steps
    assert second["policy_step_start"] == 2
    # previous-iterate reference: refreshed to the policy after each round
    for ref, cur in zip(loop.reference.model.parameters(), model.parameters()):
        assert ref.data.equal(cur.data) and ref is not cur
    rows = [json.loads(line) for line in (loop.rounds_dir / "round-1.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 4 and {r["round"] for r in rows} == {1} and {r["policy_step"] for r in rows} == {2}
    assert {r["judge"] for r in rows} == {"reward:alignkit.rewards.verifiable:length"}
    assert all((r["score"] is None) == (not r["completion"].strip()) for r in rows)  # every non-empty sample scored
    assert sum(r["used_as"].count("chosen") for r in rows) == second["examples"]
    summary = json.loads((loop.rounds_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["rounds"][1]["eval"]["gold_reward"] is not None
    loop.close()


def test_samples_do_not_depend_on_batch_size(tmp_path, tiny_dir, one_thread):
    a = IterativeLoop(loop_recipe(tmp_path, tiny_dir, "iterate.generation_batch_size=32", name="a"))
    b = IterativeLoop(loop_recipe(tmp_path, tiny_dir, "iterate.generation_batch_size=3", name="b"))
    prompts = [p for p, _ in a._round_rows(1)[1]]
    sa, sb = a.sample(1, prompts, 8), b.sample(1, prompts, 8)
    assert [s.completion_ids for s in sa] == [s.completion_ids for s in sb]
    assert [s.completion_ids for s in sa] != [s.completion_ids for s in a.sample(0, prompts, 8)]  # another round, other streams
    a.close()
    b.close()


def test_fixed_reference_reset_optimizer_and_raft(tmp_path, tiny_dir, one_thread):
    loop = IterativeLoop(loop_recipe(tmp_path, tiny_dir, "iterate.reference=fixed", "iterate.reset_optimizer=true", "iterate.builder=all_pairs",
                                     "iterate.eval_prompts=0", name="fixed"))
    start = [p.detach().clone() for p in loop.reference.model.parameters()]
    result = loop.run()
    assert all(p.equal(q) for p, q in zip(start, loop.reference.model.parameters()))  # fixed: the starting model throughout
    assert all(s["step"] == 2 for s in loop.trainer.optimizer.state.values())  # moments cleared at round 2: 2 steps since
    assert result["start"] is None and (tmp_path / "fixed" / "final" / "model.safetensors").exists()
    raft = load_recipe(loop_recipe(tmp_path, tiny_dir, name="raft").model_dump(mode="json"),
                       ["algorithm=sft", "iterate.builder=best_of_k"])
    out = IterativeLoop(raft).run()
    assert 2 <= out["rounds"][0]["examples"] <= 8  # at most one best-of-K target per prompt
    rows = [json.loads(line) for line in (tmp_path / "raft" / "rounds" / "round-0.jsonl").read_text().splitlines()]
    assert sum("sft" in r["used_as"] for r in rows) == out["rounds"][0]["examples"]


def test_spin_uses_real_completions(tmp_path, tiny_dir, one_thread):
    recipe = load_recipe(loop_recipe(tmp_path, tiny_dir, name="spin").model_dump(mode="json"),
                         ["iterate.builder=spin", "iterate.judge=none", "iterate.rounds=1", "iterate.eval_prompts=0"])
    loop = IterativeLoop(recipe)
    stats = loop.run_round(0)
    rows = [json.loads(line) for line in (loop.rounds_dir / "round-0.jsonl").read_text().splitlines()]
    real = [r for r in rows if r["source"] == "data"]
    assert len(real) == 8 and stats["examples"] == sum(r["used_as"] == ["rejected"] for r in rows) > 0
    loop.close()


def test_mismatched_builder_and_algorithm_are_refused(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="best_of_k with algorithm: sft"):
        IterativeLoop(loop_recipe(tmp_path, tiny_dir, "iterate.builder=best_of_k", name="bad"))
    with pytest.raises(ConfigError, match="reference"):
        loop_recipe(tmp_path, tiny_dir, "iterate.reference=sometimes")


def test_cli_iterate(tmp_path, tiny_dir, one_thread):
    from alignkit.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(loop_recipe(tmp_path, tiny_dir, name="cli").model_dump(mode="json")))
    result = CliRunner().invoke(app, ["iterate", str(recipe), "iterate.rounds=1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert len(out["rounds"]) == 1 and out["rounds"][0]["gold_reward"] is not None and out["final"]
    bad = CliRunner().invoke(app, ["iterate", str(recipe), "iterate.builder=nope", f"train.output_dir={tmp_path / 'cli2'}"])
    assert bad.exit_code == 2 and "unknown example builder" in bad.output


# ------------------------------------------------------------------------------------------------------
# iterative DPO improves the gold reward from a weak SFT start
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_iterative_dpo_raises_gold_reward(tmp_path):
    """Measured (2 CPU cores): gold -1.683 at the start, -1.741, -1.613, -1.390 after rounds 1-3 (KL to the start 1.5)."""
    from alignkit.algorithms import train
    from alignkit.loops import iterate

    sft = train(load_recipe({"algorithm": "sft"}, [f"train.output_dir={tmp_path / 'sft'}", "task.n_train=2048", "task.n_eval=0", "train.lr=3e-3",
                                                   "train.epochs=2", "train.batch_size=32", "train.progress=false", "model.tiny.hidden_size=64",
                                                   "data.max_length=64"]))
    result = iterate({"algorithm": "dpo", "iterate": {"rounds": 3, "prompts_per_round": 128, "samples_per_prompt": 4, "steps_per_round": 16,
                                                      "eval_prompts": 128}},
                     [f"model.path={sft}", f"train.output_dir={tmp_path / 'idpo'}", "train.batch_size=16", "train.lr=5e-4", "train.progress=false",
                      "dpo.beta=0.5", "data.max_length=64"])
    golds = [result["start"]["gold_reward"]] + [r["eval"]["gold_reward"] for r in result["rounds"]]
    assert golds[-1] > golds[0] + 0.1, golds
