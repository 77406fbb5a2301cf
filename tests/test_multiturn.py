"""Online RL over multi-turn trajectories (rl.env): environment tokens out of the policy loss and skipped by GAE,
rollouts independent of batching and of the number of processes, recipes that train end to end, and the
real SmolLM2 checkpoint through a multi-turn episode."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import quick_sft

from alignkit.algorithms.rl.batch import Rollout, RolloutBatch, collate_rows
from alignkit.algorithms.rl.estimators import ESTIMATORS, policy_gradient_loss
from alignkit.config import load_recipe
from alignkit.envs import CalculatorEnv, Environment, Limits, StepResult, run_episodes
from alignkit.rollout import Sampling, build_rollout_engine
from test_envs import CALL, play

pytestmark = pytest.mark.usefixtures("one_thread")


def rl_config(*overrides):
    return load_recipe({"algorithm": "rl"}, ["rl.env.name=calculator", *overrides]).rl


def as_batch(trajectories, pad_id):
    n = len(trajectories)
    rewards = torch.tensor([t.reward for t in trajectories])
    rollout = Rollout([{"prompt": t.prompt} for t in trajectories], trajectories, 1, reward=rewards, raw_reward=rewards,
                      finished=torch.ones(n, dtype=torch.bool), keep=torch.ones(n, dtype=torch.bool), own=slice(0, n))
    return rollout, RolloutBatch.from_samples(rollout, list(range(n)), None, pad_id)


@pytest.fixture(scope="module")
def calculator_batch(tokenizer):
    script = [[CALL, " 85 ."], [CALL.replace("37 + 48", "1 + 2"), " 4 ."]]
    trajectories, _ = play(tokenizer, CalculatorEnv, [{"prompt": "37 + 48 ="}, {"prompt": "1 + 2 ="}], script)
    return trajectories, *as_batch(trajectories, tokenizer.pad_token_id)


def test_batch_rows_carry_the_trajectory_masks(calculator_batch):
    trajectories, _, batch = calculator_batch
    for r, t in enumerate(trajectories):
        p, n = len(t.prompt_ids), len(t.completion_ids)
        assert batch.completion_mask[r, :p].sum() == 0 and batch.completion_mask[r, p : p + n].tolist() == t.completion_mask
        assert batch.turn[r, p : p + n].tolist() == t.token_turns()
        assert batch.token_reward[r, p + t.turn_ends[-1]] == t.reward
    rows = batch.rows()
    assert [row.trained_tokens for row in rows] == [sum(t.completion_mask) for t in trajectories]
    assert all(row.trained_tokens < row.completion_tokens for row in rows)  # tool results are in the completion, not trained


def test_policy_loss_gradient_is_zero_on_environment_tokens(tiny_dir, calculator_batch):
    from transformers import AutoModelForCausalLM

    trajectories, _, batch = calculator_batch
    batch.advantage = torch.tensor([1.0, -0.5])
    inputs = collate_rows(batch.rows(), share_prompts=False)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    logits.retain_grad()
    # every position's log-prob, environment tokens included: only the loss's mask may leave them out
    logp = torch.zeros(inputs["input_ids"].shape)
    logp[:, 1:] = torch.log_softmax(logits[:, :-1], -1).gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)
    for loss_name in ("ppo_clip", "reinforce"):
        cfg = rl_config(f"rl.policy.loss={loss_name}")
        loss, _ = policy_gradient_loss(cfg, logp, inputs, weight=1.0, reference=False)
        logits.grad = None
        loss.backward(retain_graph=True)
        grad = logits.grad.abs().sum(-1)  # [B, T]: position t-1 predicts token t
        for r, t in enumerate(trajectories):
            p = len(t.prompt_ids)
            for i, m in enumerate(t.completion_mask):
                if m:
                    assert grad[r, p + i - 1] > 0, (loss_name, r, i)
                else:
                    assert grad[r, p + i - 1] == 0, (loss_name, r, i)


def test_first_turn_kl_weighs_only_the_first_turn(calculator_batch):
    """SCoRe stage I's extra term: coef * sum over first-turn policy tokens of KL_t / (all policy tokens) under token_mean;
    with log pi - log pi_ref = 0.5 on every token and k1, that is coef * 0.5 * n_turn1 / n_policy."""
    trajectories, _, batch = calculator_batch
    batch.advantage = torch.zeros(2)
    inputs = collate_rows(batch.rows(), share_prompts=False)
    logp = torch.full(inputs["input_ids"].shape, -1.0) * inputs["loss_mask"]
    inputs["ref_logp"] = logp - 0.5
    cfg = rl_config("rl.env.first_turn_kl=2.0", "rl.kl.estimator=k1", "rl.policy.loss=reinforce")
    total, metrics = policy_gradient_loss(cfg, logp, inputs, weight=1.0, reference=True)
    n_policy = sum(sum(t.completion_mask) for t in trajectories)
    n_first = sum(t.turn_ends[0] + 1 for t in trajectories)
    assert total.item() == pytest.approx(2.0 * 0.5 * n_first / n_policy)  # the policy term is 0 (A = 0), beta = 0
    assert metrics["policy/first_turn_kl"][0].item() == pytest.approx(0.5 * n_first / n_policy)


def test_gae_over_a_trajectory_skips_environment_tokens(calculator_batch):
    """PPO with per-turn credit: values 0, so A_t = sum over later policy tokens j of (gamma lam)^(policy steps from
    t to j) r_j, the tool result's tokens not counting as steps; worked out from the masks by hand."""
    trajectories, rollout, batch = calculator_batch
    cfg = rl_config("rl.estimator=ppo", "rl.env.credit=turn", "rl.ppo.whiten=false", "rl.ppo.gamma=0.9", "rl.ppo.lam=0.5")
    batch.values = batch.zeros()
    batch.reward = torch.tensor([1.0, 0.0])
    batch.token_reward = batch.zeros()
    p0 = len(trajectories[0].prompt_ids)
    first_end, last = p0 + trajectories[0].turn_ends[0], p0 + trajectories[0].turn_ends[1]
    batch.token_reward[0, first_end], batch.token_reward[0, last] = -0.2, 1.0  # a turn-1 reward, then the answer's
    estimator = ESTIMATORS.get("ppo")(cfg)
    estimator.token_advantages(SimpleNamespace(reference=None), None, rollout, batch)
    mask = trajectories[0].completion_mask
    policy_positions = [p0 + i for i, m in enumerate(mask) if m]
    k = 0.9 * 0.5
    for pos in policy_positions:
        later = [q for q in policy_positions if q >= pos]
        expected = sum(k ** later.index(q) * float(batch.token_reward[0, q]) for q in later)
        assert batch.token_advantage[0, pos].item() == pytest.approx(expected, abs=1e-6)
    env_positions = [p0 + i for i, m in enumerate(mask) if not m]
    assert env_positions and all(batch.token_advantage[0, q] == 0 and batch.returns[0, q] == 0 for q in env_positions)
    # trajectory credit: the reward after the last token only
    estimator = ESTIMATORS.get("ppo")(rl_config("rl.estimator=ppo", "rl.ppo.whiten=false", "rl.ppo.gamma=0.9", "rl.ppo.lam=0.5"))
    estimator.token_advantages(SimpleNamespace(reference=None), None, rollout, batch)
    assert batch.token_advantage[0, policy_positions[0]].item() == pytest.approx(k ** (len(policy_positions) - 1) * 1.0, abs=1e-6)


class Countdown(Environment):
    """Three turns whatever the policy says; rewards the length of each turn's text (a deterministic function of the samples)."""

    def reset(self, row):
        self.turn = 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, message):
        self.turn += 1
        return StepResult(reward=len(message) / 10, feedback=f"turn {self.turn} :", done=self.turn == 3)


def test_rollouts_do_not_depend_on_batching_or_processes(tiny_dir, tokenizer):
    from alignkit.tasks import get_task

    model = quick_sft(tiny_dir, tokenizer)
    engine = build_rollout_engine("alignkit", model, tokenizer)
    rows = [{"prompt": p} for p in get_task().prompts(6, "test")]
    ids = [100 + 7 * i for i in range(len(rows))]  # global job ids, as the trainer names them
    sampling = Sampling(max_new_tokens=10, temperature=1.0, seed=3)
    limits = Limits(max_turns=3, max_tokens=200)

    def key(ts):
        return [(t.prompt_ids, t.completion_ids, t.completion_mask, t.reward, t.truncated) for t in ts]

    whole = run_episodes(engine, Countdown, rows, ids, sampling, limits, batch_size=64)
    one_by_one = run_episodes(engine, Countdown, rows, ids, sampling, limits, batch_size=1)
    halves = run_episodes(engine, Countdown, rows[:3], ids[:3], sampling, limits) + run_episodes(engine, Countdown, rows[3:], ids[3:], sampling, limits)
    assert key(whole) == key(one_by_one) == key(halves)
    assert any(t.turns > 1 for t in whole) and any(0 in t.completion_mask for t in whole)
    other_seed = run_episodes(engine, Countdown, rows, ids, sampling.with_(seed=4), limits)
    assert key(other_seed) != key(whole)


@pytest.fixture(scope="module")
def env_tiny(tmp_path_factory):
    """An untrained tiny model whose tokenizer knows the calculator's demonstrations."""
    from alignkit.envs.demos import build_tiny_model, demonstrations

    rows = demonstrations("calculator", 64, level=4)
    return build_tiny_model(rows, tmp_path_factory.mktemp("env") / "tiny", level=4, hidden_size=32, num_layers=1)


def short_rl(tmp_path, model, name, *overrides):
    return load_recipe({"algorithm": "rl"}, [
        f"model.path={model}", f"train.output_dir={tmp_path / name}", "task.name=arithmetic", "task.level=4", "task.n_train=8", "task.n_eval=2",
        "data.max_length=32", "train.max_steps=2", "train.batch_size=2", "train.progress=false", "train.eval_every=2", "train.log_every=1",
        "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=6", "rl.env.max_turns=2", "rl.env.max_tokens=64", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("rl.env.name=calculator", "rl.estimator=grpo", "rl.env.describe_tools=false"),
    ("rl.env.name=guess_number", "rl.estimator=ppo", "rl.env.credit=turn", "rl.env.options={step_penalty: 0.1}"),
    ("rl.env.name=self_correction", "rl.estimator=reinforce_pp", "rl.env.credit=turn", "rl.env.first_turn_kl=0.5", "rl.env.reward=final"),
], ids=["grpo-calculator", "ppo-guess-turn-credit", "reinforce_pp-self-correction-first-turn-kl"])
def test_rl_trains_over_trajectories_end_to_end(tmp_path, env_tiny, overrides):
    from alignkit.algorithms import train

    recipe = short_rl(tmp_path, env_tiny, "run", *overrides)
    final = train(recipe)
    assert (final / "model.safetensors").exists()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "env/turns" in m and "loss" in m]
    assert len(steps) == 2 and all(m["env/errors"] == 0 and 1 <= m["env/turns"] <= 2 for m in steps)
    evals = [m for m in lines if any(k.startswith("eval/env/") for k in m)]
    assert evals, lines[-1]
    if "rl.env.first_turn_kl=0.5" in overrides:
        assert all("policy/first_turn_kl" in m for m in steps)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["tokens"] > 0 for s in samples)


def test_env_config_refuses_what_cannot_work():
    for bad, message in [(["rl.estimator=remax"], "not supported over multi-turn"), (["rl.reward=./r.py:f"], "leave rl.reward at gold"),
                         (["rl.dapo.overlong=shape"], "overlong=shape"), (["rl.env.credit=turn"], "credit=turn")]:
        with pytest.raises(Exception, match=message):
            rl_config(*bad)
    from alignkit.algorithms import build_algorithm

    with pytest.raises(ValueError, match="takes no option"):
        build_algorithm(load_recipe({"algorithm": "rl"}, ["rl.env.name=guess_number", "rl.env.options={hihg: 3}"]))
    with pytest.raises(ValueError, match="unknown environment"):
        build_algorithm(load_recipe({"algorithm": "rl"}, ["rl.env.name=nope"]))


@pytest.mark.slow
def test_smollm2_plays_a_multi_turn_episode_with_tool_messages(smollm2):
    """The real checkpoint's chat template renders tool results between turns, prefix-consistently; two episodes of
    the calculator environment (scripted turns), then one sampled turn of SmolLM2-135M-Instruct itself."""
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer

    tokenizer = load_tokenizer(smollm2)
    script = [[CALL, " 85 ."], [" 85 ."]]
    [t, direct], _ = play(tokenizer, CalculatorEnv, [{"prompt": "What is 37 + 48?", "answer": 85}] * 2, script, Limits(max_tokens=2000))
    assert t.error is None and t.turns == 2 and t.reward == 1.0
    env_text = tokenizer.decode([i for i, m in zip(t.completion_ids, t.completion_mask) if not m])
    assert "tool" in env_text and "85" in env_text and "assistant" in env_text
    assert '"name": "calc"' in tokenizer.decode(t.prompt_ids)  # the tools' schemas are shown
    model = load_policy_for_inference(str(smollm2))
    engine = build_rollout_engine("alignkit", model, tokenizer)
    [s] = run_episodes(engine, CalculatorEnv, [{"prompt": "37 + 48 ="}], [0], Sampling(max_new_tokens=4, seed=0), Limits(max_turns=2, describe_tools=False))
    assert s.error is None and 1 <= s.turns <= 2 and s.completion_mask[:s.turn_ends[0] + 1] == [1] * (s.turn_ends[0] + 1)
    assert s.truncated or s.turns == 2 or s.turn_rewards  # a cut turn ends the episode truncated; a finished one is graded
