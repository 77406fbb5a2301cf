"""Conditioned and robust reward models (docs/pluralistic.md): BRME's head losses and reductions worked out by
hand, the context-aware and SALMON principle-conditioned reward models end to end (clear errors, the
condition reaching the model, swapping principles flips the ranking after training)."""

import json
import math
import random
from pathlib import Path

import pytest
import torch

from alignkit.config import load_recipe
from alignkit.objectives.pluralistic import brme_head_losses, brme_reward, gaussian_kl_to_prior

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "pluralistic"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors and a tiny model: one intra-op thread is faster on a shared machine."""


def softplus(x):
    return math.log1p(math.exp(x))


# --------------------------------------------------------------------------------------------------
# BRME: objectives by hand
# --------------------------------------------------------------------------------------------------
def test_gaussian_kl_to_a_wide_prior():
    # KL(N(1, 1) || N(0, 4)) = log 2 + (1 + 1) / 8 - 1/2
    assert gaussian_kl_to_prior(torch.tensor(1.0), torch.tensor(0.0), 2.0).item() == pytest.approx(math.log(2) + 0.25 - 0.5)
    # the prior itself has KL 0
    assert gaussian_kl_to_prior(torch.tensor(0.0), torch.tensor(math.log(2.0)), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_brme_head_losses_by_hand():
    mu_c, ls_c = torch.tensor([[1.0, 0.5]]), torch.log(torch.tensor([[1.0, 0.5]]))
    mu_r, ls_r = torch.tensor([[0.0, 1.0]]), torch.log(torch.tensor([[2.0, 1.0]]))
    eps_c, eps_r = torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.5, 1.0]])
    # head 0: r_c = 1 + 1 * 0.5 = 1.5, r_r = 0 + 2 * (-0.5) = -1, d = 2.5; head 1: r_c = 0.5 - 0.5 = 0, r_r = 1 + 1 = 2, d = -2
    plain = brme_head_losses(mu_c, ls_c, mu_r, ls_r, eps_c, eps_r)
    assert plain[0].tolist() == pytest.approx([softplus(-2.5), softplus(2.0)], abs=1e-6)
    # zero noise: BT on the means
    means = brme_head_losses(mu_c, ls_c, mu_r, ls_r, torch.zeros(1, 2), torch.zeros(1, 2))
    assert means[0].tolist() == pytest.approx([softplus(-1.0), softplus(0.5)], abs=1e-6)
    # the prior N(0, 2^2) with weight 0.1: KL(N(1,1)) = log 2 + 2/8 - 1/2, KL(N(0, 4)) = 0, KL(N(0.5, 0.25)) = log 4 + 0.5/8 - 1/2
    kl_a, kl_b = math.log(2) + 0.25 - 0.5, math.log(4) + 0.0625 - 0.5
    prior = brme_head_losses(mu_c, ls_c, mu_r, ls_r, eps_c, eps_r, prior_std=2.0, prior_weight=0.1)
    assert prior[0].tolist() == pytest.approx([softplus(-2.5) + 0.1 * kl_a, softplus(2.0) + 0.1 * (kl_b + kl_a)], abs=1e-6)


def test_brme_reductions_by_hand():
    mu = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, 1.0]])
    log_std = torch.tensor([[0.0, 1.0, -1.0], [0.5, -2.0, 0.0]])
    # nominal: the head with the smallest sigma, per sample (head 2, then head 1)
    assert brme_reward(mu, log_std, "nominal").tolist() == [0.5, 2.0]
    assert brme_reward(mu, log_std, "min").tolist() == [-1.0, 0.0]
    # robust, lam 0.5: 0.5 * 0.5 + 0.5 * (-1) = -0.25; 0.5 * 2 + 0.5 * 0 = 1
    assert brme_reward(mu, log_std, "robust", lam=0.5).tolist() == pytest.approx([-0.25, 1.0])
    assert brme_reward(mu, log_std, "robust", lam=0.0).tolist() == [-1.0, 0.0]  # lam 0: the worst case
    assert brme_reward(mu, log_std, "mean").tolist() == pytest.approx([1 / 6, 1.0])
    # mean - std (population): row 0 std = sqrt(((5/6)^2 + (7/6)^2 + (1/3)^2) / 3)
    std0 = math.sqrt(((5 / 6) ** 2 + (7 / 6) ** 2 + (1 / 3) ** 2) / 3)
    assert brme_reward(mu, log_std, "mean_minus_std", lam=1.0)[0].item() == pytest.approx(1 / 6 - std0, abs=1e-6)
    with pytest.raises(KeyError, match="allowed: robust, nominal, min, mean, mean_minus_std"):
        brme_reward(mu, log_std, "max")
    with pytest.raises(ValueError, match="lam in"):
        brme_reward(mu, log_std, "robust", lam=1.5)


def _train(tiny_dir, out, recipe, *overrides, n_train=128, max_length=64):
    from alignkit.algorithms import train

    return train(load_recipe(RECIPES / recipe, [
        f"model.path={tiny_dir}", f"task.n_train={n_train}", "task.n_eval=32", f"data.max_length={max_length}",
        "train.batch_size=32", "train.lr=3e-3", "train.progress=false", "train.log_every=1", "train.eval_every=100",
        f"train.output_dir={out}", *overrides,
    ]))


class FixedOutputs(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, input_ids, attention_mask):
        return self.out


def test_brme_batch_loss_is_the_mean_over_heads_of_bootstrapped_head_losses():
    from alignkit.algorithms.reward import RewardModelling

    recipe = load_recipe(RECIPES / "brme_reward.yaml", ["reward.heads=2", "reward.prior_weight=0.5"])
    algo = RewardModelling(recipe)
    algo.boot = torch.tensor([[2.0, 0.0], [1.0, 3.0]])  # [K, pairs]: head 0 sees pair 0 twice, head 1 pair 1 three times
    # 2 pairs: rows 0-1 chosen, 2-3 rejected; columns mu_0, mu_1, log s_0, log s_1
    out = torch.tensor([[1.0, 0.0, 0.0, -1.0], [0.5, 0.5, 0.2, 0.0], [0.0, 1.0, 0.1, 0.0], [0.2, -0.5, 0.0, 0.3]])
    batch = {"input_ids": None, "attention_mask": None, "index": torch.tensor([0, 1])}
    policy = FixedOutputs(out).eval()  # eval mode: no noise, no bootstrap weights
    total, metrics = algo.loss(policy, batch)
    mu, ls = out[:, :2], out[:, 2:]
    expected = brme_head_losses(mu[:2], ls[:2], mu[2:], ls[2:], torch.zeros(2, 2), torch.zeros(2, 2), 1.0, 0.5).sum() / 2
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)
    # head 0 ranks both pairs right (1 > 0, 0.5 > 0.2), head 1 ranks pair 0 wrong (0 < 1) and pair 1 right
    assert metrics["accuracy/head0"] == (2.0, 2.0) and metrics["accuracy/head1"] == (1.0, 2.0)
    # training mode: a draw from the type's own generator, then the bootstrap weights per (head, pair)
    policy.train()
    total, _ = algo.loss(policy, batch)
    eps = torch.randn((4, 2), generator=torch.Generator().manual_seed(recipe.train.seed + 15485863))
    per = brme_head_losses(mu[:2], ls[:2], mu[2:], ls[2:], eps[:2], eps[2:], 1.0, 0.5)  # [pairs, K]
    assert total.item() == pytest.approx(float((per * algo.boot.T).sum() / 2), abs=1e-5)


def test_brme_trains_saves_and_is_an_rl_reward(tmp_path, tiny_dir):
    from alignkit.rewards import build_reward_source
    from alignkit.rewards.sources import RewardModelSource

    final = _train(tiny_dir, tmp_path / "brme", "brme_reward.yaml", "train.max_steps=3", n_train=128)
    config = json.loads((final / "config.json").read_text())
    assert config["reward_type"] == "brme" and config["heads"] == 4
    records = [json.loads(line) for line in (tmp_path / "brme" / "metrics.jsonl").read_text().splitlines()]
    assert any("sigma" in r and "accuracy/head3" in r for r in records)
    prompts, texts = ["review of the soup :"] * 3, [" the soup was great .", " the soup was awful .", " the soup was plain ."]
    robust = build_reward_source({"type": "model", "path": str(final), "reduce": "robust", "lam": 0.3})
    mu, log_std = robust.heads(prompts, texts)
    assert mu.shape == (3, 4)
    nominal = mu.gather(-1, log_std.argmin(-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(robust.score(prompts, texts), 0.3 * nominal + 0.7 * mu.min(-1).values, atol=1e-6)
    assert torch.allclose(build_reward_source({"type": "model", "path": str(final), "reduce": "min"}).score(prompts, texts), mu.min(-1).values)
    with pytest.raises(KeyError, match="unknown brme reduction 'worst'"):
        build_reward_source({"type": "model", "path": str(final), "reduce": "worst"})
    with pytest.raises(ValueError, match="is a brme reward model"):
        RewardModelSource(final)
    # the RL recipe runs on it
    policy = _train(tiny_dir, tmp_path / "rl", "brme_grpo.yaml", f"rl.reward.path={final}", "train.max_steps=1", "train.batch_size=4",
                    "rl.sampling.max_new_tokens=8", "task.n_eval=0", n_train=16)
    assert (policy / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# the context-aware reward model
# --------------------------------------------------------------------------------------------------
def test_context_rows_state_their_groups_preference():
    from alignkit.algorithms.reward import RewardModelling
    from alignkit.algorithms.reward.context import CONTEXT_WORDINGS
    from alignkit.tasks import get_task

    algo = RewardModelling(load_recipe(RECIPES / "context_reward.yaml"))
    task = get_task("pluralistic")
    train, held = algo.task_rows(task, 200, "train"), algo.task_rows(task, 50, "eval")
    assert [r["prompt"] for r in train] == task.prompts(200, "train")
    for rows, which in ((train, "train"), (held, "unseen")):
        for r in rows:
            sign = 1 if r["group"] == "majority" else -1
            assert r["context"] in CONTEXT_WORDINGS[sign][which] and r["chosen"] != r["rejected"]
    assert {r["group"] for r in train} == {"majority", "minority"}
    assert algo.task_rows(task, 200, "train") == train  # a function of (seed, split, row)
    with pytest.raises(ValueError, match="task with user groups"):
        algo.task_rows(get_task("sentiment"), 4, "train")


def test_context_reward_model_reads_the_context_and_names_bad_rows(tmp_path, tiny_dir):
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards import build_reward_source
    from alignkit.rewards.conditioned import conditioned_prompt
    from alignkit.rewards.models import RewardForward, encode_single, load_any_reward_model, pad_batch

    rows = [{"prompt": "review of the soup :", "chosen": " the soup was great .", "rejected": " the soup was bad .", "context": "The reader likes positive reviews.", "group": "majority"},
            {"prompt": "review of the soup :", "chosen": " the soup was bad .", "rejected": " the soup was great .", "context": "The reader likes negative reviews.", "group": "minority"}] * 8
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = _train(tiny_dir, tmp_path / "ctx", "context_reward.yaml", f"data.train={data}", "train.max_steps=2", "train.batch_size=8", "task.n_eval=0")
    assert json.loads((final / "config.json").read_text())["reward_type"] == "context"
    records = [json.loads(line) for line in (tmp_path / "ctx" / "metrics.jsonl").read_text().splitlines()]
    assert any("accuracy/group/minority" in r for r in records)
    # as a reward source: the spec's context, or a per-sample row field, is what the model reads
    prompts, texts = ["review of the soup :"] * 2, [" the soup was great .", " the soup was bad ."]
    source = build_reward_source({"type": "model", "path": str(final), "context": "The reader likes negative reviews."})
    from alignkit.data.encode import Encoder

    tok = load_tokenizer(final)
    model = load_any_reward_model(final)
    enc = Encoder(tok, 512, "left", source="t")
    seqs = [encode_single(enc, conditioned_prompt("The reader likes negative reviews.", p), t) for p, t in zip(prompts, texts)]
    batch = pad_batch(seqs, tok.pad_token_id)
    with torch.no_grad():
        direct = RewardForward(model)(batch["input_ids"], batch["attention_mask"])[:, 0]
    assert torch.allclose(source.score(prompts, texts), direct, atol=1e-5)
    other = source.score(prompts, texts, context=["The reader likes positive reviews."] * 2)
    assert not torch.allclose(other, direct)  # the condition reaches the model
    with pytest.raises(ValueError, match="give its context in the reward spec"):
        build_reward_source(str(final)).score(prompts, texts)
    # a row without its context, or with an empty one, is named
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({k: v for k, v in rows[1].items() if k != "context"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2: field 'context': missing"):
        _train(tiny_dir, tmp_path / "x", "context_reward.yaml", f"data.train={bad}", "train.max_steps=1", "train.batch_size=2", "task.n_eval=0")
    bad.write_text(json.dumps(rows[0] | {"context": " "}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: field 'context': expected a non-empty context string"):
        _train(tiny_dir, tmp_path / "y", "context_reward.yaml", f"data.train={bad}", "train.max_steps=1", "train.batch_size=1", "task.n_eval=0")


# --------------------------------------------------------------------------------------------------
# SALMON: principles
# --------------------------------------------------------------------------------------------------
def test_principle_judge_and_rows():
    from alignkit.algorithms.reward import RewardModelling
    from alignkit.algorithms.reward.principles import PRINCIPLES, principle_score
    from alignkit.tasks import get_task

    task = get_task("pluralistic")
    p = "review of the soup :"
    two = " the soup was great and the bread was bad ."  # tone (1 - 0.75) / 2 = 0.125, 2 clauses
    assert principle_score(task, ["positive"], p, two) == pytest.approx(0.125)
    assert principle_score(task, ["negative", "detailed"], p, two) == pytest.approx(-0.125 + 0.0)
    assert principle_score(task, ["concise"], p, " the soup was awful .") == pytest.approx(1.0)  # one clause: -(1 - 2)
    assert principle_score(task, ["positive", "concise"], p, "soup soup") == pytest.approx(-4.0)  # malformed: -(1 + 1) each
    rows = RewardModelling(load_recipe(RECIPES / "principles_reward.yaml")).task_rows(task, 300, "train")
    texts = {t for t, _ in PRINCIPLES.values()}
    assert all(r["principles"] and set(r["principles"]) <= texts for r in rows)
    tone = sum(any("tone" in t for t in r["principles"]) for r in rows) / len(rows)
    assert 0.7 < tone < 0.9  # a tone principle with probability 0.8


def test_swapping_principles_flips_the_ranking_after_training(tmp_path, tiny_dir):
    """Trained on pairs judged under sampled principles, the model ranks held-out pairs by the principle it is
    given: 'one short clause' and 'several clauses' order the same pairs in opposite ways."""
    from alignkit.algorithms.reward.context import distinct_pair
    from alignkit.algorithms.reward.principles import principle_score, principle_text
    from alignkit.rewards import build_reward_source
    from alignkit.tasks import get_task

    final = _train(tiny_dir, tmp_path / "salmon", "principles_reward.yaml", "train.max_steps=60", n_train=1024, max_length=64)
    task = get_task("pluralistic")
    rng = random.Random(3)
    prompts, a, b = [], [], []
    for p in task.prompts(120, "test"):
        x, y = distinct_pair(task, p, rng)
        if principle_score(task, ["detailed"], p, x) != principle_score(task, ["detailed"], p, y):
            prompts.append(p), a.append(x), b.append(y)
    margins = {}
    for name in ("concise", "detailed"):
        source = build_reward_source({"type": "model", "path": str(final), "principles": principle_text([name])})
        margins[name] = source.score(prompts, a) - source.score(prompts, b)
        gold = torch.tensor([principle_score(task, [name], p, x) - principle_score(task, [name], p, y) for p, x, y in zip(prompts, a, b)])
        assert ((margins[name] > 0) == (gold > 0)).float().mean() > 0.8, name
    flipped = ((margins["concise"] > 0) != (margins["detailed"] > 0)).float().mean()
    assert flipped > 0.8 and len(prompts) > 40
    # SALMON's RL step: GRPO on the reward under the principles written in the spec
    policy = _train(tiny_dir, tmp_path / "rl", "principles_grpo.yaml", f"rl.reward.path={final}", "train.max_steps=1", "train.batch_size=4",
                    "rl.sampling.max_new_tokens=8", "task.n_eval=0", n_train=16)
    assert (policy / "model.safetensors").exists()


def test_the_principles_chosen_in_an_rl_recipe_reach_the_reward_model(tmp_path, tiny_dir):
    """SALMON at RL time: recipes/pluralistic/salmon_grpo.yaml writes the principle list in rl.reward; the
    reward source the RL pipeline builds from that spec scores each completion under exactly that list,
    rendered as '- principle' lines before the prompt (worked out here by hand), and a row field overrides it."""
    from alignkit.rewards import build_reward_source
    from alignkit.rewards.models import encode_single

    final = _train(tiny_dir, tmp_path / "salmon", "principles_reward.yaml", "train.max_steps=1", n_train=32, max_length=64)
    recipe = load_recipe(RECIPES / "salmon_grpo.yaml", [f"rl.reward.path={final}"])
    source = build_reward_source(recipe.rl.reward)
    assert source.condition == ["Prefer a negative tone.", "Prefer one short clause."]
    prompts = ["review of the soup :", "review of the bread :"]
    ys = [" the soup was awful .", " the bread was great and the staff was lovely ."]
    by_hand = [f"- Prefer a negative tone.\n- Prefer one short clause.\n{p}" for p in prompts]
    expected = source._run([encode_single(source.encoder, t, y) for t, y in zip(by_hand, ys)], False, "by hand")[:, 0]
    scores = source.score(prompts, ys)
    assert torch.allclose(scores, expected, atol=1e-6)
    positive = build_reward_source({"type": "model", "path": str(final), "principles": ["Prefer a positive tone."]}).score(prompts, ys)
    assert not torch.allclose(positive, scores)  # another list is another input: the reward depends on the principles
    mixed = source.score(prompts, ys, principles=[["Prefer a positive tone."], None])  # a row's own list wins, None keeps the recipe's
    assert mixed[0] == pytest.approx(float(positive[0]), abs=1e-6) and mixed[1] == pytest.approx(float(scores[1]), abs=1e-6)
    policy = _train(tiny_dir, tmp_path / "rl", "salmon_grpo.yaml", f"rl.reward.path={final}", "train.max_steps=1", "train.batch_size=4",
                    "rl.sampling.max_new_tokens=8", "task.n_eval=0", n_train=16)
    assert (policy / "model.safetensors").exists()
