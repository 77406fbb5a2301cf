"""Online IPO, IPO-MD, INPO, EGPO, accelerated PO, SELM / VPO and OSP on the iterative loop: the pair losses
and builder worked out by hand, the log-linear references (INPO's geometric, APO's momentum) against the two
models' own log-probs, the extragradient combination, and each recipe end to end."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch

from alignkit.config import load_recipe
from alignkit.loops import Group, build_builder, iterate
from alignkit.loops.iterate import IterativeLoop
from alignkit.loops.references import LogLinearReference
from alignkit.models.logprobs import TargetLogProbs
from alignkit.objectives.selfplay import selfplay_loss

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "selfplay"


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def logsig(x):
    return math.log(sigmoid(x))


# ------------------------------------------------------------------------------------------------------
# losses and builder by hand
# ------------------------------------------------------------------------------------------------------
def test_online_ipo_pair_loss_by_hand():
    # (h - (P - 1/2)/tau)^2, tau = 0.25:
    #   h 1.0, P 0.75 -> target 1    -> 0
    #   h 0.0, P 1.0  -> target 2    -> 4   (the hard label: offline IPO's (h - 1/(2 tau))^2)
    #   h 0.5, P 0.5  -> target 0    -> 0.25 (a tie pulls the margin to 0)
    h = torch.tensor([1.0, 0.0, 0.5], requires_grad=True)
    p = torch.tensor([0.75, 1.0, 0.5])
    loss = selfplay_loss("online_ipo", h, p, tau=0.25)
    assert loss.tolist() == pytest.approx([0.0, 4.0, 0.25])
    loss.sum().backward()
    assert h.grad.tolist() == pytest.approx([0.0, -4.0, 1.0])  # 2 (h - target)
    with pytest.raises(ValueError, match="probability"):
        selfplay_loss("online_ipo", torch.zeros(1), torch.tensor([1.5]))
    with pytest.raises(ValueError, match="tau"):
        selfplay_loss("online_ipo", torch.zeros(1), torch.ones(1), tau=0.0)


def test_soft_dpo_loss_by_hand():
    # -[P log sig(beta h) + (1 - P) log sig(-beta h)], beta 0.5: h 2, P 0.8; h -1, P 1 (DPO)
    h, p = torch.tensor([2.0, -1.0]), torch.tensor([0.8, 1.0])
    expected = [-(0.8 * logsig(1.0) + 0.2 * logsig(-1.0)), -logsig(-0.5)]
    assert selfplay_loss("soft_dpo", h, p, beta=0.5).tolist() == pytest.approx(expected)


def test_soft_pairs_builder():
    # rock-paper-scissors among 0, 1, 2 (P 0.8) and 3 beaten by all three (0.9)
    matrix = [[None, 0.8, 0.2, 0.9], [0.2, None, 0.8, 0.9], [0.8, 0.2, None, 0.9], [0.1, 0.1, 0.1, None]]
    g = Group("p", ["a", "b", "c", "d"], [0.0] * 4, extra={"preferences": matrix})
    got = build_builder("soft_pairs")(g, random.Random(0))
    # each pair i < j oriented so that P >= 1/2: (0,1) 0.8; (0,2) -> (2,0) 0.8; (0,3) 0.9; (1,2) 0.8; (1,3) 0.9; (2,3) 0.9
    assert got == [(0, 1, pytest.approx(0.8)), (2, 0, pytest.approx(0.8)), (0, 3, pytest.approx(0.9)),
                   (1, 2, pytest.approx(0.8)), (1, 3, pytest.approx(0.9)), (2, 3, pytest.approx(0.9))]
    assert len(build_builder("soft_pairs", {"pairs": 2})(g, random.Random(0))) == 2
    # from scores by Bradley-Terry at temperature 0.5; a tie (equal scores) is kept at P = 1/2, equal texts are not
    g2 = Group("p", ["x", "y", "y"], [1.0, 0.5, 0.5])
    assert build_builder("soft_pairs", {"temperature": 0.5})(g2, random.Random(0)) == [
        (0, 1, pytest.approx(sigmoid(1.0))), (0, 2, pytest.approx(sigmoid(1.0)))]
    g4 = Group("p", ["x", "y", "z"], [1.0, 0.5, 0.5])  # y and z tie: kept at 1/2, or left out with ties=false
    assert build_builder("soft_pairs")(g4, random.Random(0))[-1] == (1, 2, 0.5)
    assert [t[:2] for t in build_builder("soft_pairs", {"ties": False})(g4, random.Random(0))] == [(0, 1), (0, 2)]
    # among the opponent's samples only (IPO-MD: both from the mixture)
    g3 = Group("p", ["own", "m1", "m2"], [0.0, 1.0, 0.0], extra={"opponents": [1, 2]})
    assert build_builder("soft_pairs", {"among": "opponent"})(g3, random.Random(0)) == [(1, 2, pytest.approx(sigmoid(1.0)))]
    assert build_builder("soft_pairs", {"among": "policy"})(g3, random.Random(0)) == []
    with pytest.raises(ValueError, match="iterate.opponent"):
        build_builder("soft_pairs", {"among": "opponent"})(g2, random.Random(0))


# ------------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------------
def recipe(tmp_path, tiny_dir, name, *extra, algorithm="sppo"):
    return load_recipe({"algorithm": algorithm, "iterate": {"rounds": 2, "prompts_per_round": 6, "samples_per_prompt": 2, "steps_per_round": 2,
                                                            "builder": "soft_pairs", "reference": "fixed", "eval_prompts": 0, "max_new_tokens": 8}},
                       [f"model.path={tiny_dir}", f"train.output_dir={tmp_path / name}", "train.batch_size=4", "train.progress=false", "train.lr=1e-3",
                        "data.max_length=48", "sppo.loss=online_ipo", "sppo.tau=0.5", "iterate.judge=alignkit.rewards.verifiable:length", *extra])


def batch_of(loop, rows):
    examples = loop.trainer.load_examples(rows, "train")
    return loop.algorithm.collate(examples, loop.trainer.tokenizer.pad_token_id)


def pair_logps(model, batch):
    with torch.no_grad():
        sums = TargetLogProbs(model)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1)
    b = sums.shape[0] // 2
    return sums[:b], sums[b:]


def test_online_ipo_round_trains_soft_pairs(tmp_path, tiny_dir, one_thread):
    loop = IterativeLoop(recipe(tmp_path, tiny_dir, "oipo", "iterate.rounds=1", "iterate.steps_per_round=6"))
    start = loop.reference.model
    stats = loop.run_round(0)
    built = [json.loads(x) for x in (loop.rounds_dir / "examples-0.jsonl").read_text().splitlines()[1:]]
    assert stats["steps"] == 6 and len(built) == stats["examples"] >= 4
    # each row's preference is Bradley-Terry on the length reward of its two samples (T = 1), >= 1/2
    rows = [json.loads(x) for x in (loop.rounds_dir / "round-0.jsonl").read_text().splitlines()]
    score = {(r["prompt"], r["completion"]): r["score"] for r in rows}
    for b in built:
        assert b["preference"] == pytest.approx(sigmoid(score[(b["prompt"], b["chosen"])] - score[(b["prompt"], b["rejected"])]))
        assert b["preference"] >= 0.5
    # the loss by hand: (h - (P - 1/2)/tau)^2 with h from the two models' log-probs; at theta = pi_ref it is ((P - 1/2)/tau)^2
    batch = batch_of(loop, built)
    p = torch.tensor([b["preference"] for b in built])
    c, r = pair_logps(loop.trainer.model, batch)
    rc, rr = pair_logps(start, batch)
    after = float((((c - rc) - (r - rr) - (p - 0.5) / 0.5) ** 2).mean())
    before = float((((p - 0.5) / 0.5) ** 2).mean())
    assert after < before, (before, after)
    assert stats["fit"]["target"] == pytest.approx(float(((p - 0.5) / 0.5).mean()), abs=0.6)  # the logged target is (P - 1/2)/tau
    loop.close()


def test_ipo_md_pairs_only_mixture_samples(tmp_path, tiny_dir, one_thread):
    loop = IterativeLoop(recipe(tmp_path, tiny_dir, "ipomd", "iterate.rounds=1", "iterate.samples_per_prompt=1", "iterate.opponent=mixture",
                                "iterate.opponent_samples=2", "iterate.builder_params={among: opponent}"))
    stats = loop.run_round(0)
    rows = [json.loads(x) for x in (loop.rounds_dir / "round-0.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows[:3]] == ["policy", "mixture", "mixture"]
    assert all(not r["used_as"] for r in rows if r["source"] == "policy")
    assert sum(len(r["used_as"]) for r in rows if r["source"] == "mixture") == 2 * stats["examples"]
    loop.close()


def test_geometric_reference_is_inpo_mixture(tmp_path, tiny_dir, one_thread):
    """INPO: after round t the reference's log-probs are (1 - a) log pi_t + a log pi_start, token by token."""
    loop = IterativeLoop(recipe(tmp_path, tiny_dir, "inpo", "iterate.reference=geometric", "iterate.reference_alpha=0.25"))
    start = copy.deepcopy(loop.trainer.model)
    loop.run_round(0)
    assert isinstance(loop.reference, LogLinearReference)
    pi_1 = copy.deepcopy(loop.trainer.model)
    rows = [{"prompt": "review of the soup :", "chosen": " good .", "rejected": " bad and dull ."}]
    batch = batch_of(loop, rows)
    args = (batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    got = loop.reference(*args).sum(-1)
    expected = 0.75 * TargetLogProbs(pi_1)(*args).sum(-1) + 0.25 * TargetLogProbs(start)(*args).sum(-1)
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(TargetLogProbs(pi_1)(*args).sum(-1), TargetLogProbs(start)(*args).sum(-1), atol=1e-3)  # the rounds moved
    loop.close()


def test_momentum_reference_is_nesterov_extrapolation(tmp_path, tiny_dir, one_thread):
    """Accelerated PO: round 0's reference is pi_0; after round 1 it is (1 + a) log pi_2 - a log pi_1."""
    loop = IterativeLoop(recipe(tmp_path, tiny_dir, "apo", "iterate.reference=momentum", "iterate.reference_alpha=0.5", "iterate.builder=best_vs_worst",
                                algorithm="dpo"))
    rows = [{"prompt": "review of the lamp :", "chosen": " fine .", "rejected": " awful but cheap ."}]
    batch = batch_of(loop, rows)
    args = (batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    start = TargetLogProbs(copy.deepcopy(loop.trainer.model))(*args).sum(-1)
    assert torch.allclose(loop.reference(*args).sum(-1), start, atol=1e-5)  # (1 + a) pi_0 - a pi_0
    loop.run_round(0)
    pi_1 = TargetLogProbs(copy.deepcopy(loop.trainer.model))(*args).sum(-1)
    assert torch.allclose(loop.reference(*args).sum(-1), 1.5 * pi_1 - 0.5 * start, atol=1e-4)
    loop.run_round(1)
    pi_2 = TargetLogProbs(copy.deepcopy(loop.trainer.model))(*args).sum(-1)
    assert torch.allclose(loop.reference(*args).sum(-1), 1.5 * pi_2 - 0.5 * pi_1, atol=1e-4)
    loop.close()


def test_extragradient_applies_the_extrapolated_update_at_theta_t(tmp_path, tiny_dir, one_thread, monkeypatch):
    """EGPO: theta_(t+1) = theta_t + (theta' - theta_(t+1/2)); the second pass starts from theta_t's optimizer moments."""
    loop = IterativeLoop(recipe(tmp_path, tiny_dir, "egpo", "iterate.update=extragradient", "iterate.rounds=2", "iterate.steps_per_round=1"))
    trainer = loop.trainer
    snaps, moments = [], []
    fit = trainer.fit

    def recording_fit(*args, **kwargs):
        moments.append(None if trainer.optimizer is None else sum(len(s) for s in trainer.optimizer.state.values()))
        out = fit(*args, **kwargs)
        snaps.append([p.detach().clone() for p in trainer.model.parameters()])
        return out

    monkeypatch.setattr(trainer, "fit", recording_fit)
    loop.run_round(0)
    theta_0 = [p.detach().clone() for p in loop.reference.model.parameters()]  # the fixed reference is the start
    half, second = snaps
    assert moments == [None, 0]  # round 0: no moments before either pass
    for p, t, h, s in zip(trainer.model.parameters(), theta_0, half, second):
        assert torch.allclose(p, t + (s - h), atol=1e-6)
    assert trainer.step == 2  # two optimizer steps per round step
    theta_1 = [p.detach().clone() for p in trainer.model.parameters()]
    loop.run_round(1)
    for p, t, h, s in zip(trainer.model.parameters(), theta_1, *snaps[2:]):
        assert torch.allclose(p, t + (s - h), atol=1e-6)
    assert moments[2] == moments[3] > 0  # round 1's second pass starts from the moments round 1 started with
    loop.close()


def test_selm_optimism_term(tmp_path, tiny_dir, one_thread):
    """SELM / VPO: the loss adds optimism * (logratio(chosen) + logratio(rejected)) / 2; at theta = pi_ref the
    term is 0 and its gradient is optimism/2 * grad(log pi(y_c) + log pi(y_r))."""
    loop = IterativeLoop(recipe(tmp_path, tiny_dir, "selm", "sppo.loss=soft_dpo", "sppo.beta=0.5", "sppo.optimism=0.2", "iterate.builder=best_vs_worst",
                                "iterate.rounds=1"))
    rows = [{"prompt": "review of the soup :", "chosen": " good .", "rejected": " bad and dull ."}]
    examples = loop.trainer.load_examples(rows, "train")
    for e in examples:
        e["ref_chosen"], e["ref_rejected"] = -30.0, -40.0  # a reference of our own: known log-ratios
    batch = loop.algorithm.collate(examples, loop.trainer.tokenizer.pad_token_id)
    policy = TargetLogProbs(loop.trainer.model)
    loss, metrics = loop.algorithm.loss(policy, batch)
    c, r = pair_logps(loop.trainer.model, batch)
    h = float((c + 30.0) - (r + 40.0))
    expected = -logsig(0.5 * h) + 0.2 * 0.5 * float((c + 30.0) + (r + 40.0))  # no preference field: P = 1, DPO
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert float(metrics["optimism/logratio"][0]) == pytest.approx(0.5 * float((c + 30.0) + (r + 40.0)), rel=1e-4)
    with pytest.raises(ValueError, match="pair losses|online_ipo or soft_dpo"):
        IterativeLoop(recipe(tmp_path, tiny_dir, "bad", "sppo.loss=sppo", "sppo.optimism=0.1", "iterate.builder=win_rate"))
    loop.close()


def test_hypo_offline_pairs_and_reverse_kl_on_own_samples(tmp_path, tiny_dir, one_thread):
    """HyPO: rows are the task's offline pairs with the policy's fresh sample as 'own'; the loss adds
    lambda * (log pi(own) - log pi_ref(own)) in value, lambda * that * grad log pi(own) in gradient."""
    from alignkit.tasks import get_task, task_rows

    loop = IterativeLoop(recipe(tmp_path, tiny_dir, "hypo", "iterate.builder=hypo", "iterate.judge=none", "iterate.samples_per_prompt=1",
                                "sppo.loss=soft_dpo", "sppo.beta=0.5", "sppo.kl_own=0.3", "iterate.rounds=1", "iterate.steps_per_round=1"))
    stats = loop.run_round(0)
    built = [json.loads(x) for x in (loop.rounds_dir / "examples-0.jsonl").read_text().splitlines()[1:]]
    pairs = task_rows(get_task("sentiment"), "pair", 6, "train")
    assert [(b["prompt"], b["chosen"], b["rejected"]) for b in built] == [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs][: len(built)]
    rows = [json.loads(x) for x in (loop.rounds_dir / "round-0.jsonl").read_text().splitlines()]
    own = [r["completion"] for r in rows if r["source"] == "policy"]  # one fresh sample per prompt, in prompt order
    assert len(built) == 6 and [b["own"] for b in built] == own and stats["steps"] == 1
    assert {r["source"] for r in rows} == {"data", "data_rejected", "policy"}
    # the loss by hand on one row, with a reference of our own
    examples = loop.trainer.load_examples(built[:1], "train")
    from alignkit.engine.contract import Context

    ctx = Context(tokenizer=loop.trainer.tokenizer, train_examples=examples, eval_examples=None)
    loop.algorithm._encode_own(ctx)
    examples[0].update(ref_chosen=-30.0, ref_rejected=-40.0, ref_own=-20.0)
    batch = loop.algorithm.collate(examples, loop.trainer.tokenizer.pad_token_id)
    model = loop.trainer.model
    loss, metrics = loop.algorithm.loss(TargetLogProbs(model), batch)
    c, r = pair_logps(model, batch)
    with torch.no_grad():
        o = TargetLogProbs(model)(batch["own_input_ids"], batch["own_attention_mask"], batch["own_loss_mask"]).sum(-1)
    assert float(loss.detach()) == pytest.approx(-logsig(0.5 * float((c + 30) - (r + 40))) + 0.3 * float(o + 20), rel=1e-4)
    assert float(metrics["hypo/kl"][0]) == pytest.approx(float(o + 20), rel=1e-4)
    loop.close()


def test_cream_rank_consistency_judge_and_builder():
    from alignkit.loops.judges import ConsistencyJudge, Judgement, rank_consistency

    # Kendall tau_b: [3, 2, 1] vs [3, 1, 2]: pairs (0,1) +, (0,2) +, (1,2) - -> tau (2 - 1)/3 = 1/3 -> C = 2/3
    assert rank_consistency([3, 2, 1], [3, 1, 2]) == pytest.approx(2 / 3)
    assert rank_consistency([1, 2, 3], [3, 2, 1]) == pytest.approx(0.0)  # reversed
    # ties at the same places are agreement: [1, 1, 2] vs [5, 5, 9] -> concordant 2 of sqrt(2 * 2) -> tau 1
    assert rank_consistency([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)
    # a tie in one list only: [1, 1, 2] vs [1, 2, 3]: (0,1) 0, (0,2) +, (1,2) + -> 2 / sqrt(2 * 3) -> C = (1 + 2/sqrt(6))/2
    assert rank_consistency([1, 1, 2], [1, 2, 3]) == pytest.approx((1 + 2 / math.sqrt(6)) / 2)
    assert rank_consistency([1, None, 2], [2, 3, None]) is None and rank_consistency([1, 1], [2, 3]) is None

    class Fixed:
        def __init__(self, scores):
            self.scores, self.model, self.name = scores, torch.nn.Linear(2, 2), "fixed"

        def judge(self, prompts, groups):
            return Judgement(self.scores, stats={"judge/calls": 3.0})

    now, before = Fixed([[3, 2, 1]]), Fixed([[3, 1, 2]])
    judgement = ConsistencyJudge(now, before).judge(["p"], [["a", "b", "c"]])
    assert judgement.scores == [[3, 2, 1]] and judgement.consistency == [pytest.approx(2 / 3)]
    assert torch.equal(before.model.weight, now.model.weight)  # the previous judge moved to the live weights
    g = Group("p", ["a", "b", "c"], [3.0, 2.0, 1.0], extra={"consistency": 2 / 3})
    assert build_builder("cream")(g, random.Random(0)) == [(0, 2, pytest.approx(2 / 3))]  # best vs worst, P = C


@pytest.mark.parametrize("name", ["online_ipo", "ipo_md", "inpo", "egpo", "apo", "selm", "vpo", "osp", "hypo", "cream"])
def test_selfplay_recipes_run(name, tmp_path, tiny_dir, one_thread):
    """Each recipe of recipes/selfplay runs as written, shortened to one small round."""
    result = iterate(RECIPES / f"{name}.yaml", [f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "train.progress=false", "train.batch_size=2",
                                                "iterate.rounds=1", "iterate.prompts_per_round=4", "iterate.steps_per_round=1", "iterate.eval_prompts=2",
                                                "iterate.max_new_tokens=8", "iterate.eval_max_new_tokens=8", "data.max_length=48"])
    assert result["final"] and result["rounds"][0]["eval"]["gold_reward"] is not None
