"""Pluralistic alignment: the objectives against numbers worked out by hand, per-group evaluation, and the
reward types / group-robust DPO end to end on the pluralistic task (docs/pluralistic.md)."""

import math
from pathlib import Path

import pytest
import torch

from alignkit.config import load_recipe
from alignkit.evaluation.groups import accuracy_by, policy_group_metrics
from alignkit.objectives.pluralistic import (
    GroupWeights,
    em_responsibilities,
    exponentiated_gradient,
    fit_user_weights,
    gaussian_kl,
    ideal_point_logits,
    ideal_points,
    mixture_bradley_terry,
    mixture_prior,
    modpo_logits,
    vpl_loss,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


# --------------------------------------------------------------------------------------------------
# MaxMin-RLHF: one EM step on a two-user toy
# --------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors and a tiny model: one intra-op thread is faster on a shared machine."""


def test_em_step_on_two_users():
    # user 0 labelled two pairs that head 0 ranks right (margins 2 and 1) and head 1 wrong; user 1 one pair
    # that head 1 ranks right; user 2 labelled nothing
    margins = torch.tensor([[2.0, -2.0], [1.0, -1.0], [-1.0, 1.0]])
    users = torch.tensor([0, 0, 1])
    resp = em_responsibilities(margins, users, 3)
    # gamma_00 = s(2)s(1) / (s(2)s(1) + s(-2)s(-1))
    g00 = sig(2) * sig(1) / (sig(2) * sig(1) + sig(-2) * sig(-1))
    assert resp[0, 0].item() == pytest.approx(g00, abs=1e-6) and g00 == pytest.approx(sig(3))
    assert resp[1, 0].item() == pytest.approx(sig(-1) / (sig(-1) + sig(1)), abs=1e-6)
    assert resp[2].tolist() == pytest.approx([0.5, 0.5])  # no pairs: the prior
    # a prior of (0.8, 0.2) moves user 1 towards cluster 0
    prior = torch.log(torch.tensor([0.8, 0.2]))
    biased = em_responsibilities(margins, users, 3, prior)
    expected = 0.8 * sig(-1) / (0.8 * sig(-1) + 0.2 * sig(1))
    assert biased[1, 0].item() == pytest.approx(expected, abs=1e-6)
    # hard assignment (the paper's): user 0 -> 0, user 1 -> 1; the prior is the share of users
    hard = em_responsibilities(margins[:, :], users, 2, hard=True)
    assert hard.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert mixture_prior(hard).tolist() == [0.5, 0.5]
    # the M-step loss of pair 0 for a user with responsibilities (0.75, 0.25)
    loss = mixture_bradley_terry(margins[:1], torch.tensor([[0.75, 0.25]]))
    assert loss.item() == pytest.approx(-(0.75 * math.log(sig(2)) + 0.25 * math.log(sig(-2))), abs=1e-6)


def test_hard_em_never_leaves_a_head_without_users():
    # both users fit head 0 better; head 1 would get nobody -> it takes the user head 0 explains worst (user 1)
    margins = torch.tensor([[3.0, -1.0], [0.2, 0.1]])
    hard = em_responsibilities(margins, torch.tensor([0, 1]), 2, hard=True)
    assert hard.tolist() == [[1.0, 0.0], [0.0, 1.0]]


# --------------------------------------------------------------------------------------------------
# PAL: ideal points and a new user's weights from a few pairs
# --------------------------------------------------------------------------------------------------
def test_pal_logit_and_new_user_fit():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = ideal_points(prototypes, torch.log(torch.tensor([[0.75, 0.25]])))
    assert a.tolist() == [pytest.approx([0.75, 0.25])]
    fc, fr = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # ||f_r - a||^2 - ||f_c - a||^2 = 2 w^2 - 2 (1 - w)^2 = 4 w - 2 = 1 at w = 0.75
    assert ideal_point_logits(fc, fr, a).item() == pytest.approx(1.0)
    # a new user who preferred fc three times and fr once: minimise -3 log s(x) - log s(-x), x = 4w - 2,
    # so e^x = 3 and w = (2 + ln 3) / 4
    chosen = torch.stack([fc[0], fc[0], fc[0], fr[0]])
    rejected = torch.stack([fr[0], fr[0], fr[0], fc[0]])
    w = fit_user_weights(chosen, rejected, prototypes, steps=200, lr=0.1)
    assert w[0].item() == pytest.approx((2 + math.log(3)) / 4, abs=1e-3)
    assert w.sum().item() == pytest.approx(1.0)
    # one who always preferred fc goes all the way to prototype 0
    assert fit_user_weights(fc.repeat(3, 1), fr.repeat(3, 1), prototypes, steps=100)[0] > 0.97


# --------------------------------------------------------------------------------------------------
# VPL, group-robust weights, MODPO
# --------------------------------------------------------------------------------------------------
def test_vpl_negative_elbo():
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    kl = 0.5 * ((1 + 1 - 1 - 0) + (0 + 4 - 1 - math.log(4)))
    assert gaussian_kl(mu, logvar).item() == pytest.approx(kl)
    assert vpl_loss(torch.tensor([0.0]), mu, logvar, kl_weight=0.1).item() == pytest.approx(math.log(2) + 0.1 * kl)
    assert gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0  # the prior itself


def test_group_weights_update_by_exponentiated_gradient():
    names = ["maj"] * 8 + ["min"] * 2
    gw = GroupWeights(names, eta=1.0)
    assert gw.names == ["maj", "min"] and gw.alpha.tolist() == pytest.approx([0.8, 0.2])
    losses = torch.tensor([0.5] * 8 + [1.0] * 2)
    w = gw.weights(names, losses)
    assert w.tolist() == pytest.approx([1.0] * 10)  # alpha = shares: plain DPO on the first step
    alpha = gw.update()
    a0, a1 = 0.8 * math.exp(0.5), 0.2 * math.exp(1.0)
    assert alpha.tolist() == pytest.approx([a0 / (a0 + a1), a1 / (a0 + a1)])
    w = gw.weights(["maj", "min"], torch.zeros(2), record=False)
    assert w.tolist() == pytest.approx([a0 / (a0 + a1) / 0.8, a1 / (a0 + a1) / 0.2], rel=1e-5)
    # a group absent from a step keeps its weight relative to ... nothing else moves it
    same = exponentiated_gradient(torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0]), 1.0, present=torch.tensor([False, False]))
    assert same.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="not among the training groups"):
        gw.weights(["other"], torch.zeros(1))


def test_modpo_logit():
    # (beta h - m) / w_k with beta 0.5, h 1.0, m = w_other (r_w - r_l) = 0.5 * 0.6 = 0.3, w_k 0.5
    assert modpo_logits(torch.tensor([1.0]), torch.tensor([0.3]), beta=0.5, weight=0.5).item() == pytest.approx(0.4)
    with pytest.raises(ValueError):
        modpo_logits(torch.tensor([1.0]), torch.tensor([0.0]), beta=0.5, weight=0.0)


# --------------------------------------------------------------------------------------------------
# per-group evaluation
# --------------------------------------------------------------------------------------------------
class TwoGroups:
    """A toy task: group a likes longer completions, group b shorter ones."""

    def group_rewards(self, prompt, completion):
        return {"a": float(len(completion)), "b": -float(len(completion))}


def test_policy_group_metrics_and_worst_group():
    prompts = ["p", "p"]
    out = policy_group_metrics(TwoGroups(), prompts, ["xxx", "x"], reference_completions=["xx", "xx"])
    assert out["gold/a"] == 2.0 and out["gold/b"] == -2.0
    assert out["gold/worst_group"] == "b" and out["gold/worst_group_value"] == -2.0
    assert out["win_rate/a"] == 0.5 and out["win_rate/b"] == 0.5  # one win, one loss each
    assert policy_group_metrics(object(), prompts, ["x", "x"]) == {}


def test_accuracy_by_group():
    out = accuracy_by([1.0, 2.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0], ["a", "a", "b", None], "group")
    assert out["accuracy/group/a"] == 0.5 and out["accuracy/group/b"] == 0.5 and out["n/group/a"] == 2
    assert out["accuracy/group/spread"] == 0.0


# --------------------------------------------------------------------------------------------------
# end to end on the pluralistic task (tiny model, a few steps)
# --------------------------------------------------------------------------------------------------
RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "pluralistic"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_pluralistic_recipes_validate(path):
    assert load_recipe(path).task.name == "pluralistic"


def _train(tiny_dir, out, recipe, *overrides, n_train=128):
    """A recipe of recipes/pluralistic as written, shortened, from the tiny model."""
    from alignkit.algorithms import train

    return train(load_recipe(RECIPES / recipe, [
        f"model.path={tiny_dir}", f"task.n_train={n_train}", "task.n_eval=32", "data.max_length=48",
        "train.batch_size=32", "train.lr=3e-3", "train.progress=false", "train.log_every=1", "train.eval_every=100",
        f"train.output_dir={out}", *overrides,
    ]))


def test_mixture_reward_model_end_to_end(tmp_path, tiny_dir):
    from typer.testing import CliRunner

    from alignkit.algorithms.reward.mixture import cluster_of
    from alignkit.algorithms.reward.users import UserRewardModel, score_texts
    from alignkit.cli import app
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards import build_reward_source

    final = _train(tiny_dir, tmp_path / "mm", "maxmin_reward.yaml", "reward.em_every=2", "train.max_steps=4", n_train=256)
    model = UserRewardModel.from_pretrained(final)
    assert len(model.users) == 16 and sorted(set(cluster_of(model).values())) == [0, 1]  # two non-empty clusters
    assert model.extra.responsibilities.sum(-1).tolist() == pytest.approx([1.0] * 16)
    # the folder is also a 2-output reward model: reduce=min is MaxMin's reward, the min over the heads
    prompts, texts = ["review of the soup :"] * 2, [" the soup was great .", " the soup was awful ."]
    heads = score_texts(model, load_tokenizer(final), prompts, texts)
    source = build_reward_source({"type": "model", "path": str(final), "reduce": "min"})
    assert torch.allclose(source.score_members(prompts, texts), heads, atol=1e-5)
    assert torch.allclose(source.score(prompts, texts), heads.min(-1).values, atol=1e-5)
    # eval-rm reports the accuracy per group and per user and the worst ones
    result = CliRunner().invoke(app, ["eval-rm", str(final), "--task", "pluralistic", "--n-pairs", "64", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    for key in ("accuracy/group/majority", "accuracy/group/minority", "worst_group", "accuracy/user/worst"):
        assert key in result.output
    # MaxMin's policy recipe runs on it: GRPO on min over the heads
    policy = _train(tiny_dir, tmp_path / "maxmin", "maxmin_grpo.yaml", f"rl.reward.path={final}", "train.max_steps=1", "train.batch_size=4",
                    "rl.sampling.max_new_tokens=8", "task.n_eval=0", n_train=16)
    assert (policy / "model.safetensors").exists()


@pytest.mark.parametrize("kind", ["pal", "vpl"])
def test_pal_and_vpl_train_save_and_score_users(tmp_path, tiny_dir, kind):
    import json

    from alignkit.algorithms.reward.users import UserRewardModel, score_texts
    from alignkit.models.loading import load_tokenizer

    final = _train(tiny_dir, tmp_path / kind, f"{kind}_reward.yaml", "train.max_steps=3", "reward.context_pairs=2", "reward.em_every=2", n_train=256)
    records = [json.loads(line) for line in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records if "accuracy" in r)
    model = UserRewardModel.from_pretrained(final)
    assert len(model.users) == 16
    f = score_texts(model, load_tokenizer(final), ["review of the soup :"] * 3, [" the soup was great .", " the soup was awful .", " the soup was ok ."])
    assert f.shape == (3, 8)
    if kind == "pal":
        from alignkit.algorithms.reward.pal import fit_user, user_reward

        w = fit_user(model, f[:1].repeat(4, 1), f[1:2].repeat(4, 1), steps=100)
        assert w.sum().item() == pytest.approx(1.0)
        # the fitted user prefers what their pairs preferred, at least as much as the uniform mix does
        uniform = torch.full_like(w, 1.0 / len(w))
        fitted = user_reward(model, f[:1], w) - user_reward(model, f[1:2], w)
        assert fitted.item() >= (user_reward(model, f[:1], uniform) - user_reward(model, f[1:2], uniform)).item() - 1e-6
    else:
        from alignkit.algorithms.reward.vpl import user_latent

        z = user_latent(model, f[:2], f[1:3])
        assert z.shape == (4,) and torch.isfinite(z).all()


def test_group_robust_dpo_follows_exponentiated_gradient(tmp_path, tiny_dir):
    import json

    _train(tiny_dir, tmp_path / "gdpo", "group_dpo.yaml", "dpo.group_eta=2.0", "train.max_steps=4")
    assert _train(tiny_dir, tmp_path / "dpo", "dpo.yaml", "train.max_steps=1", "task.n_eval=0", n_train=32).exists()  # the baseline recipe
    records = [json.loads(line) for line in (tmp_path / "gdpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "group_alpha/minority" in r and "eval/loss" not in r]
    assert len(steps) == 4
    assert 0.1 < steps[0]["group_alpha/minority"] < 0.3  # the start: the minority's share of the pairs (0.2 expected)
    for before, after in zip(steps, steps[1:]):  # alpha_{t+1} = EG(alpha_t, the step's group losses)
        a = torch.tensor([before["group_alpha/majority"], before["group_alpha/minority"]], dtype=torch.float64)
        losses = torch.tensor([before["group_loss/majority"], before["group_loss/minority"]], dtype=torch.float64)
        expected = a * torch.exp(2.0 * losses)
        expected = expected / expected.sum()
        assert after["group_alpha/minority"] == pytest.approx(float(expected[1]), rel=1e-4)


def test_group_robust_dpo_needs_the_group_field(tmp_path, tiny_dir):
    import json

    rows = [{"prompt": "review of the soup :", "chosen": " the soup was great .", "rejected": " the soup was bad ."}] * 4
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="group_robust needs every pair to name its group in the field 'group'"):
        _train(tiny_dir, tmp_path / "x", "group_dpo.yaml", f"data.train={data}", "train.max_steps=1", "train.batch_size=4")


def test_pluralistic_rows_name_a_user_of_their_group():
    from alignkit.config import TaskConfig
    from alignkit.tasks import get_task, task_rows

    config = TaskConfig(name="pluralistic")
    rows = task_rows(get_task(config), "pair", 400, "train", config)
    assert all(r["user"].startswith(r["group"] + "-") for r in rows)
    assert {r["user"] for r in rows} == {f"{g}-{i}" for g in ("majority", "minority") for i in range(8)}
    again = task_rows(get_task(config), "pair", 400, "train", config)
    assert [r["user"] for r in again] == [r["user"] for r in rows]  # a function of the pair, not of a draw
