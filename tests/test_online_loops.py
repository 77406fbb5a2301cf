"""Online variants on the iterative loop: opponents sampled from the reference (XPO) or from the geometric
mixture of policy and reference (Nash-MD), their builders, losses worked out by hand, and the loop end to end."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from alignkit.config import load_recipe
from alignkit.loops import Group, build_builder
from alignkit.loops.iterate import IterativeLoop
from alignkit.objectives import selfplay_loss


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------------------
# objectives and builders, by hand
# ------------------------------------------------------------------------------------------------------
def test_nash_md_loss_is_the_policy_gradient_of_the_regularised_reward():
    logratio = torch.tensor([0.2, -0.4, 1.0], requires_grad=True)
    win = torch.tensor([0.8, 0.3, 0.5])
    # A = (P - 1/2) - beta * logratio, beta 0.5: 0.3 - 0.1 = 0.2; -0.2 + 0.2 = 0.0; 0 - 0.5 = -0.5
    loss = selfplay_loss("nash_md", logratio, win, beta=0.5)
    assert loss.tolist() == pytest.approx([-0.2 * 0.2, 0.0, 0.5 * 1.0], abs=1e-6)
    loss.sum().backward()
    assert logratio.grad.tolist() == pytest.approx([-0.2, 0.0, 0.5], abs=1e-6)  # -A: the advantage is held constant
    with pytest.raises(ValueError, match="beta"):
        selfplay_loss("nash_md", logratio.detach(), win, beta=-1.0)


def test_vs_opponent_and_win_rate_vs_opponent_builders():
    g = Group("p", ["a", "b", "opp"], [1.0, 0.0, 0.5], extra={"opponents": [2]})
    assert build_builder("vs_opponent")(g, random.Random(0)) == [(0, 2), (2, 1)]  # 1.0 > 0.5; 0.5 > 0.0
    rates = build_builder("win_rate_vs_opponent", {"temperature": 0.5})(g, random.Random(0))
    assert rates == [(0, pytest.approx(sigmoid(1.0))), (1, pytest.approx(sigmoid(-1.0)))]  # sigma((s_i - s_opp) / T)
    # a pairwise judge's matrix wins over the scores; two opponents are averaged
    matrix = [[None, 0.5, 0.9, 0.7], [0.5, None, 0.2, 0.4], [0.1, 0.8, None, 0.5], [0.3, 0.6, 0.5, None]]
    g2 = Group("p", ["a", "b", "o1", "o2"], [0.0] * 4, extra={"opponents": [2, 3], "preferences": matrix})
    assert build_builder("win_rate_vs_opponent")(g2, random.Random(0)) == [(0, pytest.approx(0.8)), (1, pytest.approx(0.3))]
    with pytest.raises(ValueError, match="iterate.opponent=reference or mixture"):
        build_builder("vs_opponent")(Group("p", ["a", "b"], [1.0, 0.0]), random.Random(0))


def test_xpo_exploration_term_reads_the_reference_side():
    from alignkit.algorithms.dpo import xpo_exploration

    chosen, rejected = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0, -5.0, -6.0])
    batch = {"meta": {"opponent": torch.tensor([1, -1, 0])}}
    assert xpo_exploration(chosen, rejected, batch).tolist() == [-1.0, -5.0, 0.0]
    with pytest.raises(ValueError, match="iterate.builder=vs_opponent"):
        xpo_exploration(chosen, rejected, {})


def test_mixture_guide_interpolates_log_probs(tiny_dir, tokenizer, one_thread):
    """Greedy decoding under the mixture: coefficient 0 is the policy's greedy text, 1 the reference's; 1/2
    follows argmax of (log pi + log pi_ref) / 2, checked token by token with the two models' own forwards."""
    from transformers import AutoModelForCausalLM

    from alignkit.rollout.generate import generate
    from alignkit.rollout.local import MixtureGuide

    policy = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
    prompts = ["review of the soup :", "review of the lamp :"]

    def greedy(model, guide=None):
        return [s.completion_ids for s in generate(model, tokenizer, prompts, greedy=True, max_new_tokens=6, guide=guide)]

    pad = tokenizer.pad_token_id
    assert greedy(policy, MixtureGuide(reference, 0.0, pad)) == greedy(policy)
    assert greedy(policy, MixtureGuide(reference, 1.0, pad)) == greedy(reference)
    half = generate(policy, tokenizer, prompts, greedy=True, max_new_tokens=6, guide=MixtureGuide(reference, 0.5, pad))
    for s in half:
        ids = list(s.prompt_ids)
        for token in s.completion_ids:
            x = torch.tensor([ids])
            with torch.no_grad():
                mixed = torch.log_softmax(policy(x).logits[0, -1], -1) + torch.log_softmax(reference(x).logits[0, -1], -1)
            assert token == int(mixed.argmax())
            ids.append(token)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MixtureGuide(reference, 1.5, pad)


# ------------------------------------------------------------------------------------------------------
# the loop with opponents
# ------------------------------------------------------------------------------------------------------
def online_recipe(tmp_path, tiny_dir, name, *extra):
    return load_recipe({"algorithm": "dpo", "iterate": {"rounds": 2, "prompts_per_round": 6, "samples_per_prompt": 1, "steps_per_round": 1,
                                                         "opponent": "reference", "builder": "vs_opponent", "reference": "fixed",
                                                         "eval_prompts": 4, "eval_samples": 1, "eval_every": 2, "max_new_tokens": 8,
                                                         "eval_max_new_tokens": 8}},
                       [f"model.path={tiny_dir}", f"train.output_dir={tmp_path / name}", "train.batch_size=2", "train.progress=false",
                        "data.max_length=48", "iterate.judge=alignkit.rewards.verifiable:length", *extra])


def test_xpo_round_compares_with_reference_samples(tmp_path, tiny_dir, one_thread):
    loop = IterativeLoop(online_recipe(tmp_path, tiny_dir, "xpo", "dpo.xpo_alpha=0.1"))
    first = loop.run_round(0)
    rows = [json.loads(line) for line in (loop.rounds_dir / "round-0.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["policy", "reference"] * 6  # one own sample, one opponent sample per prompt
    # the opponent's samples are the reference model's: greedy-free streams of their own, from the frozen start
    opp = loop.sample_opponents(0, [r["prompt"] for r in rows[::2]], 0)
    assert [s.completion for s in opp] == [r["completion"] for r in rows[1::2]]
    assert first["eval"] is None and "xpo/logps_reference_sample" in first["fit"]  # eval_every=2: round 0 not evaluated
    second = loop.run_round(1)
    assert second["eval"] is not None  # the last round always is
    used = sum(len(r["used_as"]) for r in rows if r["source"] == "reference")
    assert used == first["examples"] == sum(len(r["used_as"]) for r in rows if r["source"] == "policy")  # every pair: own vs opponent
    loop.close()


def test_nash_md_round_samples_the_mixture_and_trains_on_win_rates(tmp_path, tiny_dir, one_thread):
    recipe = load_recipe(online_recipe(tmp_path, tiny_dir, "nash").model_dump(mode="json"),
                         ["algorithm=sppo", "sppo.loss=nash_md", "sppo.beta=0.1", "iterate.opponent=mixture", "iterate.mixture_coef=0.5",
                          "iterate.builder=win_rate_vs_opponent", "iterate.rounds=1"])
    loop = IterativeLoop(recipe)
    before = [p.detach().clone() for p in loop.trainer.model.parameters()]
    stats = loop.run_round(0)
    rows = [json.loads(line) for line in (loop.rounds_dir / "round-0.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["policy", "mixture"] * 6
    assert stats["steps"] == 1 and 0.0 <= stats["fit"]["win_rate"] <= 1.0
    assert any(not p.equal(q) for p, q in zip(before, loop.trainer.model.parameters()))
    loop.close()


def test_opponents_need_a_reference_and_the_local_decoder(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="opponent=mixture samples through alignkit's decode loop"):
        IterativeLoop(online_recipe(tmp_path, tiny_dir, "bad", "iterate.opponent=mixture", "iterate.backend=hf"))
    with pytest.raises(ValueError, match="needs algorithm dpo or sppo"):
        IterativeLoop(load_recipe(online_recipe(tmp_path, tiny_dir, "bad2").model_dump(mode="json"), ["dpo.loss=simpo"]))
