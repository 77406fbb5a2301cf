"""rl.asynchronous: one-step-off and asynchronous rollouts with a staleness bound (alignkit.scale.producer,
algorithms/rl/asynchronous.py). The checks recompute what the samples and the correction must be from the weights
of each step, independently of the producer."""

import copy

import pytest
import torch

from alignkit.algorithms import build_algorithm, check_run
from alignkit.algorithms.rl.asynchronous import step_seed
from alignkit.algorithms.rl.pipeline import _job_ids
from alignkit.config import load_recipe
from alignkit.engine.trainer import Trainer
from alignkit.models.loading import load_causal_lm
from alignkit.models.logprobs import TargetLogProbs
from alignkit.rollout import Sampling, build_rollout_engine
from alignkit.rollout.local import LocalEngine
from alignkit.scale import RolloutProducer
from test_online_rl import rl_recipe, rows

SHORT = ["train.max_steps=3", "train.eval_every=null", "train.log_every=1", "train.batch_size=8", "rl.sampling.group_size=4",
         "task.n_train=64", "rl.update.skip_zero_advantage=false", "rl.log_samples=0"]


def recorded_run(recipe):
    """Train ``recipe``, recording per step the policy's weights when the step began, the sample() arguments and
    the samples it returned; returns (records, the trained model, tokenizer)."""
    algo = build_algorithm(recipe)
    check_run(recipe, algo)
    records, holder = {}, {}
    original = algo.sample

    def sample(ctx, examples, seed):
        holder["model"], holder["tokenizer"] = ctx.model, ctx.tokenizer
        weights = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        out = original(ctx, examples, seed)
        records[ctx.step] = {"weights": weights, "examples": examples, "seed": seed, "samples": out, "ctx_seed": ctx.seed}
        return out

    algo.sample = sample
    Trainer(recipe, algo).train()
    return records, holder["model"], holder["tokenizer"]


def token_logps(model, samples, temperature=1.0):
    """Per-sample lists of the completion tokens' log-probs under ``model`` (the trainer's kernel)."""
    module = TargetLogProbs(model, temperature)
    out = []
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s.prompt_ids + s.completion_ids])
            mask = torch.tensor([[0] * len(s.prompt_ids) + [1] * len(s.completion_ids)])
            values = module(ids, torch.ones_like(ids), mask)[0]
            out.append(values[len(s.prompt_ids):len(s.prompt_ids) + len(s.completion_ids)])
    return out


def with_weights(model, weights):
    clone = copy.deepcopy(model).eval()
    clone.load_state_dict(weights)
    return clone


def test_recipe_checks():
    base = {"algorithm": "rl"}
    load_recipe(base, ["rl.asynchronous.mode=one_step_off", "rl.off_policy.correction=tis"])
    for extra, message in [
        (["rl.asynchronous.mode=async"], "set rl.off_policy.correction"),
        (["rl.asynchronous.mode=one_step_off", "rl.off_policy.correction=tis", "rl.asynchronous.partial_tokens=4"], "applies to rl.asynchronous.mode=async"),
        (["rl.asynchronous.mode=async", "rl.off_policy.correction=tis", "rl.asynchronous.max_staleness=-1"], "greater than or equal to 0"),
        (["rl.asynchronous.mode=sometimes"], "one_step_off"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_recipe(base, extra)


def test_one_step_off_trains_on_the_previous_versions_samples(tmp_path, arithmetic_sft):
    """Staleness 1: step s's samples are exactly those the weights of step s-1 draw for step s's prompts and seed
    (recomputed here with a fresh engine), recorded as version s-1; the correction's ratio is π_old/μ with μ the
    weights of step s-1 and π_old those of step s, recomputed token by token."""
    out = tmp_path / "osd"
    recipe = rl_recipe(out, arithmetic_sft, "grpo", [*SHORT, "rl.asynchronous.mode=one_step_off", "rl.off_policy.correction=tis",
                                                     "rl.off_policy.params={cap: 100.0}"])
    records, model, tokenizer = recorded_run(recipe)
    logged = rows(out)
    assert [r["async/staleness_mean"] for r in logged] == [0.0, 1.0, 1.0]
    assert [r["async/dropped"] for r in logged] == [0.0, 0.0, 0.0]
    s_cfg = recipe.rl.sampling
    for step in (1, 2):
        rec = records[step]
        assert rec["seed"] == step_seed(rec["ctx_seed"], step)
        assert {s.version for s in rec["samples"]} == {step - 1}
        behaviour = with_weights(model, records[step - 1]["weights"])
        engine = build_rollout_engine("alignkit", behaviour, tokenizer)
        again = engine.generate([e["prompt"] for e in rec["examples"]], n=s_cfg.group_size, job_ids=_job_ids(rec["examples"], s_cfg.group_size),
                                sampling=Sampling(max_new_tokens=s_cfg.max_new_tokens, temperature=s_cfg.temperature, top_p=s_cfg.top_p, seed=rec["seed"]))
        assert [s.completion_ids for s in again] == [s.completion_ids for s in rec["samples"]]
        # the correction reads the producer's log-probs (μ) and the current weights' (π_old): ρ = π_old / μ per token
        mu = token_logps(behaviour, rec["samples"])
        for m, s in zip(mu, rec["samples"]):
            torch.testing.assert_close(m, torch.tensor(s.logprobs), atol=1e-4, rtol=1e-4)
        old = token_logps(with_weights(model, rec["weights"]), rec["samples"])
        ratios = torch.cat([torch.exp(o - m) for o, m in zip(old, mu)])
        assert logged[step]["policy/is_ratio_mean"] == pytest.approx(ratios.mean().item(), rel=2e-3)
        assert logged[step]["policy/mismatch_kl"] == pytest.approx((ratios - 1 - ratios.log()).mean().item(), rel=2e-2, abs=1e-6)
        assert abs(logged[step]["policy/is_ratio_mean"] - 1) > 1e-4  # the weights moved: the samples are off-policy
    assert logged[0]["policy/is_ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # step 0: drawn by the current weights


def test_samples_older_than_the_bound_are_drawn_again(tmp_path, arithmetic_sft):
    """A deliberately stale producer: one-step-off samples are one version old, and max_staleness 0 allows none, so
    every prefetched job is dropped (counted) and drawn again by the current weights: ρ = 1 again."""
    out = tmp_path / "strict"
    train_recipe = rl_recipe(out, arithmetic_sft, "grpo", [*SHORT, "rl.asynchronous.mode=one_step_off", "rl.asynchronous.max_staleness=0",
                                                           "rl.off_policy.correction=tis"])
    records, _, _ = recorded_run(train_recipe)
    logged = rows(out)
    assert [r["async/dropped"] for r in logged] == [0.0, 32.0, 32.0]
    assert [r["async/staleness_max"] for r in logged] == [0.0, 0.0, 0.0]
    assert all(r["policy/is_ratio_mean"] == pytest.approx(1.0, abs=1e-4) for r in logged)
    assert {s.version for s in records[2]["samples"]} == {2}


def test_async_mode_keeps_the_staleness_bound(tmp_path, arithmetic_sft):
    out = tmp_path / "async"
    recipe = rl_recipe(out, arithmetic_sft, "grpo", [*SHORT, "train.max_steps=4", "rl.asynchronous.mode=async", "rl.asynchronous.max_staleness=2",
                                                     "rl.off_policy.correction=decoupled"])
    records, _, _ = recorded_run(recipe)
    logged = rows(out)
    assert len(logged) == 4 and all(0 <= r["async/staleness_max"] <= 2 for r in logged)
    for step, rec in records.items():
        versions = {s.version for s in rec["samples"]}
        assert len(versions) == 1 and 0 <= step - versions.pop() <= 2
    assert sum(r["async/staleness_mean"] for r in logged[1:]) > 0  # later steps train on prefetched, older samples


class HookedEngine(LocalEngine):
    """A private-copy engine that calls ``hook(call_index)`` after each generate call."""

    def __init__(self, model, tokenizer, hook):
        super().__init__(model, tokenizer, copy=True)
        self.hook, self.calls = hook, 0

    def generate(self, *args, **kwargs):
        out = super().generate(*args, **kwargs)
        self.hook(self.calls)
        self.calls += 1
        return out


def test_partial_rollouts_continue_with_the_new_weights(tmp_path, tiny_dir, tokenizer):
    """partial_tokens=2: after the first 2 tokens new weights are published; the unfinished samples continue from
    their prefix with them. Tokens 0-1 carry the old weights' log-probs, the rest the new weights' (recomputed),
    the sample records version 0 (its oldest weights) and one resumption."""
    torch.manual_seed(0)
    old = load_causal_lm(tiny_dir).eval()
    new = copy.deepcopy(old)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    holder = {}
    engine = HookedEngine(old, tokenizer, lambda i: holder["producer"].publish(new, 1) if i == 0 else None)
    producer = holder["producer"] = RolloutProducer(engine, partial_tokens=2)
    producer.publish(old, 0)
    sampling = Sampling(max_new_tokens=6, seed=3)
    producer.submit("k", ["The movie was", "I think"], 2, [0, 1, 2, 3], sampling, batch_size=4)
    produced = producer.take("k")
    producer.close()
    assert produced.version == 0
    long = [s for s in produced.samples if len(s.completion_ids) > 2]
    assert long, "every sample stopped within 2 tokens; pick another seed"
    assert produced.resumed >= len(long)
    for s in long:
        assert s.version == 0 and s.resumed >= 1
        lp = torch.tensor(s.logprobs)
        torch.testing.assert_close(lp[:2], token_logps(old, [s])[0][:2], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lp[2:], token_logps(new, [s])[0][2:], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(lp[2:], token_logps(old, [s])[0][2:], atol=1e-3)
    for s in produced.samples:
        assert len(s.completion_ids) <= 6 and s.completion == tokenizer.decode(s.completion_ids, skip_special_tokens=True)


def test_producer_needs_its_own_weights(tiny_dir, tokenizer):
    with pytest.raises(ValueError, match="its own weights"):
        RolloutProducer(build_rollout_engine("alignkit", load_causal_lm(tiny_dir), tokenizer))
