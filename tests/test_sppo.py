"""SPPO on the iterative loop: the win_rate builder on hand-made preference matrices, the win_rate record kind,
one SPPO round on one long-lived trainer (the SPPO loss against the previous iterate goes down), the recipe."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from alignkit.config import ConfigError, load_recipe
from alignkit.data.errors import DataError
from alignkit.data.kinds import check_row
from alignkit.loops import Group, build_builder
from alignkit.loops.iterate import IterativeLoop
from alignkit.models.logprobs import TargetLogProbs
from alignkit.objectives import sppo_loss

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# P[i][j] = P(y_i ≻ y_j): rock-paper-scissors among 0, 1, 2 with 0.8, and sample 3 beaten by everyone with 0.9
P = [
    [None, 0.8, 0.2, 0.9],
    [0.2, None, 0.8, 0.9],
    [0.8, 0.2, None, 0.9],
    [0.1, 0.1, 0.1, None],
]


def rates(group, **params):
    return build_builder("win_rate", params)(group, random.Random(0))


def test_win_rate_builder_on_a_preference_matrix():
    g = Group("p", ["a", "b", "c", "d"], [0.0] * 4, extra={"preferences": P})
    # SPPO's (1/K) Σ_k P(y_i ≻ y_k), the sample itself a tie (1/2), K = 4:
    #   0: (0.5 + 0.8 + 0.2 + 0.9) / 4 = 0.6; 1, 2 the same; 3: (0.1 * 3 + 0.5) / 4 = 0.2
    got = rates(g)
    assert [i for i, _ in got] == [0, 1, 2, 3]
    assert [r for _, r in got] == pytest.approx([0.6, 0.6, 0.6, 0.2])
    # against the others only: 0: (0.8 + 0.2 + 0.9) / 3 = 19/30; 3: 0.1
    assert [r for _, r in rates(g, include_self=False)] == pytest.approx([1.9 / 3, 1.9 / 3, 1.9 / 3, 0.1])
    # an unscored sample (None: an empty completion) is neither trained nor an opponent: among 0, 1, 2 only
    g2 = Group("p", ["a", "b", "c", "d"], [0.0, 0.0, 0.0, None], extra={"preferences": P})
    assert dict(rates(g2)) == pytest.approx({0: 0.5, 1: 0.5, 2: 0.5})  # (0.5 + 0.8 + 0.2) / 3
    # an unknown pair (judge could not decide) is left out of the mean: 0 vs 1 unknown
    Q = [row[:] for row in P]
    Q[0][1] = Q[1][0] = None
    assert dict(rates(Group("p", list("abcd"), [0.0] * 4, extra={"preferences": Q})))[0] == pytest.approx((0.5 + 0.2 + 0.9) / 3)
    assert build_builder("win_rate").kind == "win_rate"


def test_win_rate_builder_from_scores():
    # no matrix: Bradley–Terry on the scores, P(i ≻ j) = σ((s_i − s_j) / T)
    g = Group("p", ["a", "b"], [1.0, 0.0])
    s = 1 / (1 + math.exp(-1.0))
    assert dict(rates(g)) == pytest.approx({0: (0.5 + s) / 2, 1: (0.5 + 1 - s) / 2})
    s2 = 1 / (1 + math.exp(-0.5))
    assert dict(rates(g, include_self=False, temperature=2.0)) == pytest.approx({0: s2, 1: 1 - s2})
    assert rates(Group("p", ["a"], [1.0])) == []  # a lone sample has no opponent
    with pytest.raises(ValueError, match="temperature"):
        rates(g, temperature=0.0)


def test_win_rate_record_kind():
    row = check_row({"prompt": "p", "completion": "c", "win_rate": 0.25, "group": 3}, "win_rate", "rows.jsonl", 0)
    assert row == {"prompt": "p", "completion": "c", "win_rate": 0.25, "meta": {"group": 3}}
    with pytest.raises(DataError, match="win_rate"):
        check_row({"prompt": "p", "completion": "c", "win_rate": 1.5}, "win_rate", "rows.jsonl", 0)
    with pytest.raises(DataError, match="win_rate"):
        check_row({"prompt": "p", "completion": "c"}, "win_rate", "rows.jsonl", 0)


def test_sppo_config():
    recipe = load_recipe({"algorithm": "sppo"}, ["sppo.eta=3"])
    assert recipe.sppo.eta == 3.0 and recipe.sppo.loss == "sppo"
    with pytest.raises(ConfigError):
        load_recipe({"algorithm": "sppo"}, ["sppo.gamma=1"])  # an unknown key
    with pytest.raises((ConfigError, ValueError)):
        load_recipe({"algorithm": "sppo"}, ["sppo.eta=0"])


def sppo_recipe(tmp_path, tiny_dir, *extra, name="sppo"):
    return load_recipe({"algorithm": "sppo", "iterate": {"rounds": 1, "prompts_per_round": 8, "samples_per_prompt": 4, "steps_per_round": 8,
                                                          "eval_prompts": 2, "eval_samples": 1, "max_new_tokens": 8, "eval_max_new_tokens": 8,
                                                          "builder": "win_rate"}},
                       [f"model.path={tiny_dir}", f"train.output_dir={tmp_path / name}", "train.batch_size=16", "train.progress=false",
                        "train.lr=1e-3", "data.max_length=48", "sppo.eta=4", "iterate.judge=alignkit.rewards.verifiable:length", *extra])


def mean_sppo_loss(loop, policy, reference, rows):
    examples = loop.trainer.load_examples(rows, "train")
    batch = loop.algorithm.collate(examples, loop.trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        args = (batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        ratio = TargetLogProbs(policy)(*args).sum(-1) - TargetLogProbs(reference)(*args).sum(-1)
    return float(sppo_loss(ratio.float(), batch["win_rate"], eta=loop.recipe.sppo.eta).mean())


def test_one_sppo_round_lowers_the_loss(tmp_path, tiny_dir, one_thread):
    loop = IterativeLoop(sppo_recipe(tmp_path, tiny_dir))
    model = loop.trainer.model
    start = loop.start_model  # frozen copy of π_t: the round's reference
    assert loop.reference is not None and loop.trainer.loop_reference is loop.reference
    stats = loop.run_round(0)
    assert loop.trainer.model is model and stats["steps"] == 8 and stats["examples"] >= 16
    rows = [json.loads(line) for line in (loop.rounds_dir / "round-0.jsonl").read_text().splitlines()]
    used = [r for r in rows if "win_rate" in r["used_as"]]
    assert len(used) == stats["examples"]
    # rebuild the rows the round trained on, with their win rates, from the scores (BT on the length reward, K = 4)
    built = []
    for i in range(8):
        g = [r for r in rows if r["prompt_index"] == i]
        group = Group(g[0]["prompt"], [r["completion"] for r in g], [r["score"] for r in g])
        built += [{"prompt": group.prompt, "completion": group.completions[j], "win_rate": p} for j, p in rates(group) if group.completions[j].strip()]
    assert len(built) == stats["examples"]
    assert any(abs(b["win_rate"] - 0.5) > 0.05 for b in built)
    before = mean_sppo_loss(loop, start, start, built)  # at θ = π_t: mean (η (P̂ − 1/2))²
    after = mean_sppo_loss(loop, model, start, built)
    assert before == pytest.approx(sum((4 * (b["win_rate"] - 0.5)) ** 2 for b in built) / len(built), rel=1e-5)
    assert after < 0.8 * before, (before, after)
    # previous-iterate reference: refreshed to the trained policy after the round
    for ref, cur in zip(loop.reference.model.parameters(), model.parameters()):
        assert ref.data.equal(cur.data)
    loop.close()


def test_sppo_needs_the_win_rate_builder(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="win_rate with algorithm: sppo"):
        IterativeLoop(sppo_recipe(tmp_path, tiny_dir, "iterate.builder=best_vs_worst", name="bad"))


def test_sppo_recipe_runs(tmp_path, tiny_dir, one_thread):
    """recipes/sppo.yaml (the intransitive task, the preference oracle) runs as written, shortened to one small round."""
    from alignkit.loops import iterate

    result = iterate(RECIPES / "sppo.yaml", [f"train.output_dir={tmp_path / 'sppo'}", f"model.path={tiny_dir}", "train.progress=false", "train.batch_size=2",
                                             "iterate.rounds=1", "iterate.prompts_per_round=4", "iterate.steps_per_round=1", "iterate.eval_prompts=2",
                                             "iterate.max_new_tokens=8", "iterate.eval_max_new_tokens=8"])
    assert result["final"] and result["rounds"][0]["eval"]["gold_reward"] is not None
    rows = [json.loads(line) for line in (tmp_path / "sppo" / "rounds" / "round-0.jsonl").read_text().splitlines()]
    assert all(len(r["preferences"]) == 4 for r in rows) and {r["judge"] for r in rows} == {"preference:intransitive"}
