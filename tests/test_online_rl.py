"""Online RL end to end: each estimator raises held-out accuracy of a weak SFT model on arithmetic."""

import json

import pytest
import torch

from alignkit.algorithms import train
from alignkit.config import load_recipe


def rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def rl_recipe(out, model, estimator, extra=()):
    return load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={out}", f"model.path={model}", "task.name=arithmetic", "task.level=0", "task.n_train=512",
        "task.n_eval=128", "train.batch_size=16", "train.max_steps=40", "train.lr=1e-3", "train.eval_every=40",
        "train.scheduler=constant", "train.progress=false", f"rl.estimator={estimator}", "rl.sampling.group_size=8",
        "rl.sampling.max_new_tokens=6", "rl.sampling.eval_samples=4", *extra,
    ])


def ready_trainer(recipe):
    """A trainer with its model, training prompts and reward source set up: ready for a rollout."""
    from alignkit.algorithms.rl import OnlineRL
    from alignkit.engine.trainer import Trainer

    trainer = Trainer(recipe, OnlineRL(recipe))
    trainer.ctx = trainer.prepare(trainer.load_examples(None, "train"))[0]
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("estimator,extra", [
    ("grpo", []), ("rloo", []), ("remax", []), ("ppo", []), ("ppo", ["rl.ppo.macro_len=2"]), ("p3o", []),
    ("copg", ["rl.kl.beta=0.1"]),
], ids=["grpo", "rloo", "remax", "ppo", "ma-ppo", "p3o", "copg"])
def test_rl_raises_heldout_accuracy(tmp_path, arithmetic_sft, estimator, extra):
    train(rl_recipe(tmp_path / estimator, arithmetic_sft, estimator, extra))
    evals = [r for r in rows(tmp_path / estimator) if "eval/gold_reward" in r]
    start, end = evals[0]["eval/gold_reward"], evals[-1]["eval/gold_reward"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
    assert start < 0.85  # a weak starting point
    assert end >= start + 0.1, (start, end)


@pytest.mark.slow
def test_copg_fits_off_policy_samples(tmp_path, arithmetic_sft):
    """CoPG on the frozen SFT model's samples only (no importance weights) fits its regression target.

    (Held-out accuracy is not asserted: learning only from another policy's samples, the policy can move
    mass to sequences it never sees; at this scale accuracy first rose, then collapsed, after ~40 steps.)
    """
    for seed in (0, 1):  # each step's loss is on fresh samples, so it is noisy: compare 10-step means, two seeds
        out = tmp_path / f"copg-{seed}"
        train(rl_recipe(out, arithmetic_sft, "copg", ["rl.kl.beta=0.1", "rl.sampling.behavior=reference", "train.max_steps=40", "train.eval_every=null",
                                                      "train.log_every=1", f"train.seed={seed}"]))
        losses = [r["policy/copg_loss"] for r in rows(out)]
        assert sum(losses[-10:]) / 10 < 0.85 * sum(losses[:10]) / 10, (seed, losses)


@pytest.mark.slow
def test_remax_holds_less_training_state_than_ppo(tmp_path, arithmetic_sft):
    """ReMax has no critic: its parameters + gradients + optimizer state take less memory than PPO's."""
    for est in ("remax", "ppo"):
        train(rl_recipe(tmp_path / est, arithmetic_sft, est, ["train.max_steps=2", "train.eval_every=null"]))
    remax = rows(tmp_path / "remax")[-1]["memory/train_state_mb"]
    ppo = rows(tmp_path / "ppo")[-1]["memory/train_state_mb"]
    assert remax < 0.7 * ppo


def test_ppo_resume_restores_the_critic(tmp_path, tiny_dir):
    def recipe(name, extra=()):
        return load_recipe({"algorithm": "rl"}, [
            f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "task.n_train=32", "task.n_eval=0",
            "train.batch_size=4", "train.max_steps=4", "train.save_every=2", "train.progress=false",
            "rl.estimator=ppo", "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=6", "rl.update.epochs=2", "rl.update.mini_batches=2", "rl.kl.beta=0.1",
            "rl.kl.in_reward=true", *extra,
        ])

    import shutil

    from safetensors.torch import load_file

    whole = train(recipe("whole"))
    (tmp_path / "again").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "again" / "checkpoint-2")
    assert (tmp_path / "again" / "checkpoint-2" / "critic.safetensors").exists()
    again = train(recipe("again", ["train.resume=true"]))
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    whole_rows, again_rows = rows(tmp_path / "whole"), rows(tmp_path / "again")
    assert [r["loss"] for r in whole_rows if r["step"] > 2] == pytest.approx([r["loss"] for r in again_rows], abs=1e-6)
    assert all(r["updates"] == 4 for r in whole_rows)  # 2 epochs x 2 mini-batches per rollout
    assert all("kl" in r for r in whole_rows)


def test_dynamic_sampling_drops_zero_variance_groups(tmp_path, tiny_dir):
    recipe = load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={tmp_path / 'dapo'}", f"model.path={tiny_dir}", "task.n_train=64", "task.n_eval=0",
        "train.batch_size=16", "train.max_steps=2", "train.progress=false", "rl.sampling.group_size=4", "rl.sampling.max_new_tokens=6",
        "rl.dapo.dynamic_sampling=true", "rl.reward=reward_fns:soup_is_constant", "rl.policy.clip_high=0.28",
    ])
    train(recipe)
    prompts = [p for p in __import__("alignkit.tasks", fromlist=["get_task"]).get_task().prompts(64, "train")]
    for r in rows(tmp_path / "dapo"):
        assert r["groups_kept"] < 1.0  # every 'soup' group has identical rewards and is dropped
        assert r["kept"] == pytest.approx(r["groups_kept"])
    assert any("soup" in p for p in prompts[:32])


def test_grpo_with_kl_in_loss_and_reference(tmp_path, tiny_dir):
    recipe = load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={tmp_path / 'kl'}", f"model.path={tiny_dir}", "task.n_train=32", "task.n_eval=8",
        "train.batch_size=8", "train.max_steps=3", "train.eval_every=3", "train.progress=false", "rl.sampling.group_size=2",
        "rl.sampling.max_new_tokens=6", "rl.kl.beta=0.1", "rl.kl.estimator=k3", "rl.policy.aggregation=seq_mean_token_sum_norm",
        "rl.policy.loss=gspo",
    ])
    train(recipe)
    history = rows(tmp_path / "kl")
    train_rows = [r for r in history if "loss" in r]
    assert train_rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert all("policy/kl_loss" in r for r in train_rows)
    assert any("eval/gold_reward" in r for r in history)


def test_rto_dense_reward_and_macro_actions_run(tmp_path, tiny_dir):
    """RTO: PPO with per-token rewards from a DPO policy's log-ratio (here any saved policy)."""
    recipe = load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={tmp_path / 'rto'}", f"model.path={tiny_dir}", "task.n_train=16", "task.n_eval=0",
        "train.batch_size=4", "train.max_steps=2", "train.progress=false", "rl.estimator=ppo", "rl.sampling.group_size=2",
        "rl.sampling.max_new_tokens=6", f"rl.ppo.dense_reward_model={tiny_dir}", "rl.ppo.dense_reward_beta=0.5", "rl.ppo.macro_len=3",
    ])
    train(recipe)
    history = rows(tmp_path / "rto")
    assert len(history) == 2 and all(r["loss"] == r["loss"] for r in history)


def test_pairwise_estimators_need_even_groups():
    from alignkit.config import ConfigError

    with pytest.raises(ConfigError, match="rl.sampling.group_size must be even"):
        load_recipe({"algorithm": "rl"}, ["rl.estimator=p3o", "rl.sampling.group_size=3"])
    with pytest.raises(ConfigError, match="needs rl.kl.beta > 0"):
        load_recipe({"algorithm": "rl"}, ["rl.estimator=copg"])


def test_config_names_match_the_registries():
    from typing import get_args

    from alignkit.algorithms.rl import ESTIMATORS
    from alignkit.config import REWARD_TRANSFORMS, RLConfig
    from alignkit.rewards.transforms import TRANSFORMS

    assert set(get_args(RLConfig.model_fields["estimator"].annotation)) == set(ESTIMATORS.names())
    assert set(REWARD_TRANSFORMS) == set(TRANSFORMS)


def test_estimator_dependent_policy_defaults_are_explicit():
    """rl.policy.loss/aggregation `auto` resolve from the estimator; a contradiction is refused, never rewritten."""
    from alignkit.algorithms.rl import OnlineRL
    from alignkit.config import ConfigError

    p3o = load_recipe({"algorithm": "rl"}, ["rl.estimator=p3o"])
    assert (p3o.rl.policy.loss, p3o.rl.policy_loss, p3o.rl.aggregation) == ("auto", "p3o", "seq_mean_token_sum")
    assert OnlineRL(p3o).cfg == p3o.rl  # the algorithm reads the recipe as written
    grpo = load_recipe({"algorithm": "rl"}, [])
    assert (grpo.rl.policy_loss, grpo.rl.aggregation) == ("ppo_clip", "token_mean")
    with pytest.raises(ConfigError, match="rl.estimator=p3o trains with rl.policy.loss=p3o"):
        load_recipe({"algorithm": "rl"}, ["rl.estimator=p3o", "rl.policy.loss=ppo_clip"])
    with pytest.raises(ConfigError, match="rl.estimator=copg trains with its own"):
        load_recipe({"algorithm": "rl"}, ["rl.estimator=copg", "rl.kl.beta=0.1", "rl.policy.aggregation=token_mean"])
    with pytest.raises(ConfigError, match="unknown key; allowed: .*group_size"):
        load_recipe({"algorithm": "rl"}, ["rl.sampling.groupsize=4"])


def test_prompt_sharing_gives_the_padded_update(tmp_path, tiny_dir):
    """Packing each group as [prompt, c1..cG] (prompt computed once) changes nothing but the work done."""
    from safetensors.torch import load_file

    def run(name, extra):
        recipe = load_recipe({"algorithm": "rl"}, [
            f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "task.n_train=16", "task.n_eval=0",
            "train.batch_size=4", "train.max_steps=3", "train.lr=1e-3", "train.progress=false", "rl.sampling.group_size=4",
            "rl.sampling.max_new_tokens=8", "rl.update.epochs=2", "rl.update.mini_batches=2", *extra,
        ])
        return load_file(str(train(recipe) / "model.safetensors")), rows(tmp_path / name)

    packed, packed_rows = run("packed", ["rl.update.share_prompts=true", "train.micro_batch_tokens=64"])
    padded, padded_rows = run("padded", ["rl.update.share_prompts=false"])
    assert all((packed[k] - padded[k]).abs().max() < 1e-5 for k in packed)
    assert [r["loss"] for r in packed_rows] == pytest.approx([r["loss"] for r in padded_rows], abs=1e-5)


def test_fsdp2_runs_online_rl_with_and_without_a_critic():
    """FSDP2 runs critic-free online RL and PPO's critic (tests/test_fsdp_rl.py); neither is refused."""
    load_recipe({"algorithm": "rl"}, ["train.distributed=fsdp2"])
    load_recipe({"algorithm": "rl"}, ["train.distributed=fsdp2", "rl.estimator=ppo"])


def test_reward_transforms_shape_the_rollout_rewards(tmp_path, tiny_dir):
    """PPO-max-style clipping then whitening: the advantages see transformed rewards, the log the raw ones."""
    from alignkit.config import ConfigError

    recipe = load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={tmp_path / 'rt'}", f"model.path={tiny_dir}", "task.n_train=16", "task.n_eval=0",
        "train.batch_size=4", "train.max_steps=1", "train.progress=false", "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=6",
        "rl.estimator=reinforce", "rl.advantage.moving_baseline=false", "rl.reward=reward_fns:soup_is_constant", "rl.update.skip_zero_advantage=false",
        "rl.reward_transforms=[{name: clip, low: 0.0, high: 3.0}, {name: whiten}]",
    ])
    trainer = ready_trainer(recipe)
    steps, stats = trainer.algorithm.rollout(trainer.ctx, trainer.train_examples[:4])
    advantages = torch.cat([b["advantage"] for update in steps for b in update])  # reinforce, no baseline: A = r~
    assert advantages.std() > 0
    assert advantages.mean().abs() < 1e-5 and (advantages.std(unbiased=False) - 1).abs() < 1e-3
    assert stats["reward"] > 0  # the logged reward is the raw one (word counts), not the whitened one
    with pytest.raises(ConfigError, match=r"rl.reward_transforms\[0\].name"):
        load_recipe({"algorithm": "rl"}, ["rl.reward_transforms=[{name: nope}]"])


@pytest.mark.parametrize("reward,aggregation,extra", [
    ("reward_fns:soup_is_constant", "token_mean", ["rl.update.epochs=2", "rl.update.mini_batches=2"]),
    ("reward_fns:soup_is_constant", "seq_mean_token_mean", ["rl.update.share_prompts=false"]),
    ("reward_fns:constant", "token_mean", ["train.weight_decay=1.0", "train.lr=1e-2"]),
], ids=["groups-epochs-minibatches", "per-sequence-unpacked", "all-zero-still-steps"])
def test_skipping_zero_advantage_samples_gives_the_same_update(tmp_path, tiny_dir, reward, aggregation, extra):
    """Samples with A = 0 (here: zero-variance groups) are left out of the forward/backward but kept in the
    mean's denominator: the weights and losses equal those of a run that trains on them."""
    from safetensors.torch import load_file

    def run(name, skip):
        recipe = load_recipe({"algorithm": "rl"}, [
            f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "task.n_train=16", "task.n_eval=0",
            "train.batch_size=8", "train.max_steps=3", "train.lr=1e-3", "train.progress=false", "rl.sampling.group_size=4",
            "rl.sampling.max_new_tokens=8", f"rl.reward={reward}", f"rl.policy.aggregation={aggregation}", f"rl.update.skip_zero_advantage={skip}",
            *extra,
        ])
        return load_file(str(train(recipe) / "model.safetensors")), rows(tmp_path / name)

    skipped, skipped_rows = run("skip", "true")
    full, full_rows = run("full", "false")
    start = load_file(str(tiny_dir / "model.safetensors"))
    differ = max((skipped[k] - full[k]).abs().max().item() for k in full)
    moved = max((full[k] - start[k]).abs().max().item() for k in full)
    assert differ < 1e-5 and moved > 100 * max(differ, 1e-7)  # float rounding (other batch shapes) vs the steps taken
    assert [r["loss"] for r in skipped_rows] == pytest.approx([r["loss"] for r in full_rows], abs=1e-6)
    assert all(0 < r["zero_advantage_skipped"] for r in skipped_rows)
    assert all("zero_advantage_skipped" not in r for r in full_rows)


def test_zero_advantage_samples_leave_the_batches_but_not_the_denominator(tmp_path, tiny_dir):
    recipe = load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={tmp_path / 'z'}", f"model.path={tiny_dir}", "task.n_train=32", "task.n_eval=0",
        "train.batch_size=8", "train.max_steps=1", "train.progress=false", "rl.sampling.group_size=4", "rl.sampling.max_new_tokens=6",
        "rl.reward=reward_fns:soup_is_constant", "rl.update.share_prompts=false",
    ])
    trainer = ready_trainer(recipe)
    examples = trainer.train_examples[:8]
    n_soup = sum("soup" in e["prompt"] for e in examples)
    assert 0 < n_soup < 8
    (update,), stats = trainer.algorithm.rollout(trainer.ctx, examples)
    trained_rows = sum(b["input_ids"].shape[0] for b in update)
    assert all((b["advantage"] != 0).all() for b in update)
    assert stats["zero_advantage_skipped"] * 32 == pytest.approx(32 - trained_rows)
    assert trained_rows <= 32 - 4 * n_soup  # every soup group (constant reward) is out of the batches
    # the denominator still counts every completion token of the rollout
    tokens = sum(float(b["loss_mask"][:, 1:].sum()) for b in update)
    assert sum(trainer.algorithm.weight(b) for b in update) > tokens
    assert update[0]["skipped_weight"] >= 4 * n_soup  # at least one completion token per left-out sample


def perturbed_reference_rollout(tmp_path, tiny_dir, estimator, kl_estimator, beta):
    """One rollout with rl.kl.in_reward=true against a reference that differs from the policy, unpacked and
    unskipped; returns the update's batch, the per-token KL worked out here from the trainer's log-probs
    of both models, the completion mask, the raw rewards and the rollout's stats."""
    from alignkit.models.logprobs import TargetLogProbs
    from reward_fns import soup_is_constant

    recipe = load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={tmp_path / 'klr'}", f"model.path={tiny_dir}", "task.n_train=16", "task.n_eval=0",
        "train.batch_size=4", "train.max_steps=1", "train.progress=false", "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=6",
        f"rl.estimator={estimator}", "rl.advantage.moving_baseline=false", "rl.reward=reward_fns:soup_is_constant", f"rl.kl.beta={beta}",
        "rl.kl.in_reward=true", f"rl.kl.estimator={kl_estimator}", "rl.update.share_prompts=false", "rl.update.skip_zero_advantage=false",
    ])
    trainer = ready_trainer(recipe)
    with torch.no_grad():  # a reference that is not the policy, so the KL is not 0
        for p in trainer.algorithm.reference.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    distinct = list({e["prompt"]: e for e in trainer.train_examples}.values())[:4]  # a prompt names its group
    (update,), stats = trainer.algorithm.rollout(trainer.ctx, distinct)
    batch = update[0]
    with torch.no_grad():
        logp = TargetLogProbs(trainer.model)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        ref = TargetLogProbs(trainer.algorithm.reference.model)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    target = batch["loss_mask"].bool()
    target[:, 0] = False
    diff = logp - ref
    per_token = diff if kl_estimator == "k1" else torch.exp(-diff) - 1 + diff  # k3: r - 1 - log r, r = pi_ref / pi
    kl = torch.where(target, per_token, torch.zeros_like(per_token))
    texts = []
    for ids, mask in zip(batch["input_ids"].tolist(), batch["loss_mask"].tolist()):
        start, end = mask.index(1), len(mask) - mask[::-1].index(1)
        texts.append((trainer.tokenizer.decode(ids[:start]), trainer.tokenizer.decode(ids[start:end], skip_special_tokens=True)))
    raw = torch.tensor(soup_is_constant([p for p, _ in texts], [c for _, c in texts]))
    assert kl.sum(-1).abs().max() > 1e-3
    return batch, kl, target, raw, stats


@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_kl_in_the_reward_of_an_outcome_estimator(tmp_path, tiny_dir, kl_estimator):
    """rl.kl.in_reward=true with REINFORCE (no baseline): A_i = r_i - beta * sum_t KL_t(pi_old || pi_ref)."""
    beta = 0.5
    batch, kl, _, raw, stats = perturbed_reference_rollout(tmp_path, tiny_dir, "reinforce", kl_estimator, beta)
    assert batch["advantage"] == pytest.approx((raw - beta * kl.sum(-1)).tolist(), abs=1e-4)
    assert stats["kl_penalty"] == pytest.approx(beta * kl.sum(-1).mean().item(), abs=1e-4)  # every sample has tokens here


def test_reinforce_pp_with_kl_in_the_reward_uses_token_returns(tmp_path, tiny_dir):
    """REINFORCE++ (KL in the reward): A_t = whiten(r - beta * sum_{s>=t} KL_s) over the rollout's tokens,
    worked out here; REINFORCE++-baseline subtracts the group mean of r first (groups of 2, consecutive)."""
    beta = 0.5
    for estimator in ("reinforce_pp", "reinforce_pp_baseline"):
        batch, kl, target, raw, _ = perturbed_reference_rollout(tmp_path / estimator, tiny_dir, estimator, "k1", beta)
        assert "advantage" not in batch
        score = raw
        if estimator == "reinforce_pp_baseline":  # rows are shuffled: find each row's group by its prompt
            prompts = [tuple(ids[: mask.index(1)]) for ids, mask in zip(batch["input_ids"].tolist(), batch["loss_mask"].tolist())]
            score = torch.tensor([raw[i] - raw[[j for j, q in enumerate(prompts) if q == p]].mean() for i, p in enumerate(prompts)])
        to_go = kl.flip(-1).cumsum(-1).flip(-1)  # sum over s >= t
        returns = torch.where(target, score[:, None] - beta * to_go, torch.zeros_like(kl))
        expected = (returns[target] - returns[target].mean()) / (returns[target].std() + 1e-8)
        assert batch["token_adv"][target].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
        assert (batch["token_adv"][~target] == 0).all()
