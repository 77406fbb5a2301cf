"""scale.backend=ray on a local Ray cluster of 2 CPUs: rollout workers and a reward worker as actors, weights
pushed through update_weights, the same update as one process, worker failures with their tracebacks, and no Ray
import for single-machine runs."""

import json
import subprocess
import sys
import textwrap

import pytest
import ray  # the test extra installs it (pyproject: test = [..., "ray>=2.40"])
import torch
from safetensors.torch import load_file

from alignkit.algorithms import train
from alignkit.config import ScaleConfig
from alignkit.models.loading import load_causal_lm
from alignkit.rollout import Sampling, build_rollout_engine
from alignkit.scale import ray_reward_source, ray_rollout_engine
from alignkit.scale.ray_engine import WorkerError
from test_online_rl import rl_recipe

SHORT = ["train.max_steps=2", "train.eval_every=null", "train.log_every=1", "train.batch_size=8", "rl.sampling.group_size=4", "task.n_train=64"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory, arithmetic_sft):
    """The single-process run the Ray runs are compared with."""
    return train(rl_recipe(tmp_path_factory.mktemp("single") / "local", arithmetic_sft, "grpo", SHORT))


def test_synchronous_ray_run_gives_the_single_process_update(tmp_path, arithmetic_sft, single, cluster):
    """Two colocated rollout workers (each a whole-group share of every step) and a reward worker: the same samples
    (batch-independent streams keyed by job id) and so the same weights as the single-process run."""
    local = single
    remote = train(rl_recipe(tmp_path / "ray", arithmetic_sft, "grpo", [*SHORT, "scale.backend=ray", "scale.rollout_workers=2", "scale.worker_cpus=1"]))
    a, b = load_file(str(local / "model.safetensors")), load_file(str(remote / "model.safetensors"))
    start = load_file(str(arithmetic_sft / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a[name], start[name]) for name in a)  # the update did something
    samples = [[json.loads(line) for line in (run.parent / "samples.jsonl").read_text().splitlines()] for run in (local, remote)]
    assert [(s["completion"], s["reward"]) for s in samples[0]] == [(s["completion"], s["reward"]) for s in samples[1]]
    logged = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and all("reward" in r for r in logged)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_trainer_group_of_two_ray_actors_gives_the_single_process_update(tmp_path, arithmetic_sft, single, cluster):
    """scale.trainer_processes=2: two trainer actors in one gloo process group (each driving its own rollout worker)
    train each step's prompts half each, and the update is the one-process one."""
    extra = [*SHORT, "scale.backend=ray", "scale.trainer_processes=2", "scale.trainer_cpus=1", "scale.worker_cpus=0", "scale.reward_worker=false"]
    two = train(rl_recipe(tmp_path / "two", arithmetic_sft, "grpo", extra))
    a, b = load_file(str(single / "model.safetensors")), load_file(str(two / "model.safetensors"))
    # the same tolerance as the other 1-vs-2-process GRPO tests (test_engine, test_fsdp_rl): two processes sum the
    # gradient in another order, and Adam amplifies it where a gradient is near zero (6.9e-6 on one weight of
    # 16384 on an AMD EPYC; within 2e-6 on the Intel machine before)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert {r["processes"] for r in logged} == {2}


def test_disaggregated_workers_take_new_weights(tiny_dir, tokenizer, cluster):
    """A placement group of 2 one-CPU bundles; the workers' samples equal a local engine's before and after
    update_weights (named tensors through the object store)."""
    model = load_causal_lm(tiny_dir).eval()
    scale = ScaleConfig(backend="ray", rollout_workers=2, placement="disaggregated", worker_cpus=1, timeout_s=60)
    sampling = Sampling(max_new_tokens=5, seed=11)
    prompts = ["The movie was", "I think", "Honestly,"]
    with ray_rollout_engine(model, tokenizer, scale) as engine:
        assert len({w["pid"] for w in engine.where}) == 2
        local = build_rollout_engine("alignkit", model, tokenizer)
        first = engine.generate(prompts, n=2, sampling=sampling)
        assert [s.completion_ids for s in first] == [s.completion_ids for s in local.generate(prompts, n=2, sampling=sampling)]
        assert [s.prompt for s in first] == [p for p in prompts for _ in range(2)]
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
        engine.update_from(model)
        second = engine.generate(prompts, n=2, sampling=sampling)
        expected = local.generate(prompts, n=2, sampling=sampling)
        assert [s.completion_ids for s in second] == [s.completion_ids for s in expected]
        for s, e in zip(second, expected):
            torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(e.logprobs), atol=1e-5, rtol=1e-5)
        assert [s.completion_ids for s in second] != [s.completion_ids for s in first]


def test_worker_failures_surface_with_the_workers_traceback(tmp_path, tiny_dir, tokenizer, cluster):
    model = load_causal_lm(tiny_dir).eval()
    scale = ScaleConfig(backend="ray", rollout_workers=1, worker_cpus=1)
    with ray_rollout_engine(model, tokenizer, scale) as engine:
        with pytest.raises(WorkerError) as failure:
            engine.generate(prompt_ids=[[10**6]], sampling=Sampling(max_new_tokens=2))  # a token id past the vocabulary
        text = str(failure.value)
        assert "rollout worker 0" in text and "RolloutWorker.generate" in text, text
        assert 'File "' in text and "alignkit/rollout/local.py" in text and "IndexError" in text, text  # the worker's own frames
    reward = tmp_path / "bad_reward.py"
    reward.write_text(textwrap.dedent("""
        def score(prompts, completions, **context):
            raise ValueError("this reward cannot read row 3")
    """))
    source = ray_reward_source(f"{reward}:score", ScaleConfig(backend="ray"))
    with pytest.raises(WorkerError) as failure:
        source.score(["a"], ["b"])
    text = str(failure.value)
    assert "reward worker" in text and "this reward cannot read row 3" in text and "bad_reward.py" in text
    source.close()


def test_single_machine_runs_never_import_ray(tmp_path, arithmetic_sft):
    script = textwrap.dedent(f"""
        import sys
        import alignkit, alignkit.cli, alignkit.scale
        from alignkit.algorithms import train
        sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        from test_online_rl import rl_recipe
        train(rl_recipe({str(tmp_path / 'plain')!r}, {str(arithmetic_sft)!r}, "grpo", ["train.max_steps=1", "train.eval_every=null", "train.batch_size=4",
                                                                              "rl.sampling.group_size=2", "task.n_train=16"]))
        assert "ray" not in sys.modules, "ray was imported"
        print("no ray")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no ray" in done.stdout
