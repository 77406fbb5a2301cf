"""rl.asynchronous beyond one process and one turn: several trainer processes (each rank's producer samples its own
share of the step with the global job ids, so 2 processes draw the 1-process samples), and multi-turn episodes
(rl.env: the producer runs whole trajectories with the job's weights; the correction reads the policy tokens only)."""

import pytest
import torch

from alignkit.algorithms import train
from alignkit.algorithms.rl.asynchronous import step_seed
from alignkit.algorithms.rl.pipeline import _job_ids
from alignkit.config import load_recipe
from alignkit.envs import Limits, environment_class, run_episodes
from alignkit.rollout import Sampling, build_rollout_engine
from test_async_rl import recorded_run, token_logps, with_weights
from test_engine import assert_same_weights, metric_rows, recipe, torchrun

ONE_STEP_OFF = ["rl.sampling.group_size=4", "rl.sampling.max_new_tokens=8", "train.lr=3e-3", "rl.reward=reward_fns:soup_is_constant",
                "train.max_steps=3", "train.log_every=1", "rl.asynchronous.mode=one_step_off", "rl.off_policy.correction=tis",
                "rl.off_policy.params={cap: 100.0}"]


@pytest.mark.distributed
def test_one_step_off_two_processes_match_one(tmp_path, tiny_dir):
    """torchrun with 2 processes (gloo, DDP), one producer per rank for its half of each step's prompts: the same
    samples (rewards, lengths), the same staleness and importance ratios, and the same weights after 3 steps."""
    one = train(recipe(tmp_path, tiny_dir, "rl", "one", ONE_STEP_OFF))
    two = torchrun(tmp_path, tiny_dir, "two", ONE_STEP_OFF, algorithm="rl")
    a, b = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert [r["async/staleness_mean"] for r in a] == [r["async/staleness_mean"] for r in b] == [0.0, 1.0, 1.0]
    for key in ("reward", "completion_length", "loss", "policy/is_ratio_mean"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], abs=1e-5), key
    assert max(r["reward_std"] for r in a) > 0 and abs(a[2]["policy/is_ratio_mean"] - 1) > 1e-5  # updates moved the policy
    assert_same_weights(one, two, atol=1e-5)


def env_recipe(tmp_path, model, name, *overrides):
    return load_recipe({"algorithm": "rl"}, [
        f"model.path={model}", f"train.output_dir={tmp_path / name}", "task.name=arithmetic", "task.level=0", "task.n_train=8", "task.n_eval=0",
        "data.max_length=32", "train.max_steps=3", "train.batch_size=2", "train.progress=false", "train.eval_every=null", "train.log_every=1",
        "train.lr=3e-3", "rl.sampling.group_size=4", "rl.sampling.max_new_tokens=6", "rl.env.name=guess_number", "rl.env.max_turns=3",
        "rl.env.max_tokens=96", "rl.env.options={low: 1, high: 3, step_penalty: 0.1}", "rl.update.skip_zero_advantage=false", "rl.log_samples=0",
        "rl.off_policy.correction=tis", "rl.off_policy.params={cap: 100.0}", *overrides])


def test_one_step_off_episodes_are_the_previous_versions_trajectories(tmp_path, arithmetic_sft):
    """Staleness 1 over episodes: step s's trajectories are those a fresh engine with the weights of step s-1 plays
    for step s's rows and seed, recorded as version s-1; the sampler's log-probs are μ's on the policy tokens and 0 on
    the environment's; the logged ratio is π_old/μ averaged over the policy tokens only (recomputed by hand here)."""
    r = env_recipe(tmp_path, arithmetic_sft, "osd", "rl.asynchronous.mode=one_step_off", "train.max_steps=4")
    records, model, tokenizer = recorded_run(r)
    logged = metric_rows(tmp_path / "osd")
    assert [m["async/staleness_mean"] for m in logged] == [0.0, 1.0, 1.0, 1.0]
    assert [m["async/version_min"] for m in logged] == [0.0, 0.0, 1.0, 2.0]
    moved = 0
    g, env = r.rl.sampling.group_size, r.rl.env
    limits = Limits(max_turns=env.max_turns, max_tokens=env.max_tokens, reward=env.reward)
    environment = environment_class(env.name)
    saw_environment_tokens = False
    for step in (1, 2, 3):
        rec, trajectories = records[step], records[step]["samples"]
        assert rec["seed"] == step_seed(rec["ctx_seed"], step)
        assert {t.version for t in trajectories} == {step - 1}
        behaviour = with_weights(model, records[step - 1]["weights"])
        rows = [e for e in rec["examples"] for _ in range(g)]
        sampling = Sampling(max_new_tokens=r.rl.sampling.max_new_tokens, temperature=r.rl.sampling.temperature, seed=rec["seed"])
        again = run_episodes(build_rollout_engine("alignkit", behaviour, tokenizer), lambda: environment(low=1, high=3, step_penalty=0.1), rows,
                             _job_ids(rec["examples"], g), sampling, limits, batch_size=len(rows))
        assert [t.completion_ids for t in again] == [t.completion_ids for t in trajectories]
        assert [t.completion_mask for t in again] == [t.completion_mask for t in trajectories]
        mu = token_logps(behaviour, trajectories)
        old = token_logps(with_weights(model, rec["weights"]), trajectories)
        ratios = []
        for t, m, o in zip(trajectories, mu, old):
            policy = torch.tensor(t.completion_mask, dtype=torch.bool)
            saw_environment_tokens |= not bool(policy.all())
            lp = torch.tensor(t.logprobs)
            assert lp.shape == policy.shape and bool((lp[~policy] == 0).all())
            torch.testing.assert_close(lp[policy], m[policy], atol=1e-4, rtol=1e-4)
            ratios.append(torch.exp(o[policy] - m[policy]))
        ratios = torch.cat(ratios)
        assert logged[step]["policy/is_ratio_mean"] == pytest.approx(ratios.mean().item(), rel=2e-3)
        assert logged[step]["policy/mismatch_kl"] == pytest.approx((ratios - 1 - ratios.log()).mean().item(), rel=2e-2, abs=1e-6)
        if logged[step - 1]["grad_norm"] > 0:  # the update that made version `step` moved the weights (not when every
            moved += 1                          # reward of the step was equal): then pi_old differs from mu
            assert abs(logged[step]["policy/is_ratio_mean"] - 1) > 1e-4
    assert moved, "no update moved the weights; the off-policy ratio check did not run"
    assert saw_environment_tokens, "no episode got past its first turn; the check of environment tokens did not run"
    assert logged[0]["policy/is_ratio_mean"] == pytest.approx(1.0, abs=1e-4)


def test_episodes_with_no_staleness_allowed_train_the_synchronous_weights(tmp_path, arithmetic_sft):
    """max_staleness 0: every prefetched episode batch is dropped and played again with the current weights, so the
    run trains the weights of the synchronous (rl.asynchronous off) run, and ρ = 1."""
    sync = train(env_recipe(tmp_path, arithmetic_sft, "sync"))
    strict = train(env_recipe(tmp_path, arithmetic_sft, "strict", "rl.asynchronous.mode=one_step_off", "rl.asynchronous.max_staleness=0"))
    logged = metric_rows(tmp_path / "strict")
    assert [m["async/dropped"] for m in logged] == [0.0, 8.0, 8.0]
    assert all(m["policy/is_ratio_mean"] == pytest.approx(1.0, abs=1e-4) for m in logged)
    base = metric_rows(tmp_path / "sync")
    assert [m["reward"] for m in base] == pytest.approx([m["reward"] for m in logged], abs=1e-6)
    assert_same_weights(sync, strict, atol=1e-5)


def test_episode_recipes_load_and_partial_rollouts_are_refused():
    base = {"algorithm": "rl"}
    load_recipe(base, ["rl.env.name=calculator", "rl.asynchronous.mode=one_step_off", "rl.off_policy.correction=tis"])
    load_recipe(base, ["rl.env.name=calculator", "rl.off_policy.correction=mis"])
    with pytest.raises(ValueError, match="whole episode is drawn by one weight version"):
        load_recipe(base, ["rl.env.name=calculator", "rl.asynchronous.mode=async", "rl.off_policy.correction=tis", "rl.asynchronous.partial_tokens=2"])
