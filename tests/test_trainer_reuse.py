"""The long-lived trainer (fit called again, a stream of batches), the Reference object, lazy reference caches."""

import copy

import pytest
import torch

from alignkit.algorithms import build_algorithm
from alignkit.config import load_recipe
from alignkit.engine.strategies import STRATEGIES, build_strategy
from alignkit.engine.trainer import Trainer
from alignkit.models.reference import Reference, starting_reference


def make_recipe(tmp_path, tiny_dir, algorithm="sft", extra=()):
    return load_recipe({"algorithm": algorithm}, [
        f"train.output_dir={tmp_path}", f"model.path={tiny_dir}", "task.n_train=16", "task.n_eval=0", "train.batch_size=16",
        "train.lr=1e-3", "train.scheduler=constant", "train.warmup_steps=0", "train.progress=false", "train.save_final=false",
        "data.max_length=64", *extra,
    ])


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_fits_continue_one_run(tmp_path, tiny_dir):
    """fit(2 steps) twice on one trainer = fit(4 steps): the model, the optimizer's moments and step count,
    and the schedule carry over (full-batch steps, constant lr, so the data order cannot matter)."""
    r = make_recipe(tmp_path / "a", tiny_dir)
    once = Trainer(r, build_algorithm(r))
    once.fit(once.load_examples(None, "train"), steps=4)

    r2 = make_recipe(tmp_path / "b", tiny_dir)
    twice = Trainer(r2, build_algorithm(r2))
    model, examples = twice.model, twice.load_examples(None, "train")
    twice.fit(examples, steps=2)
    optimizer = twice.optimizer
    twice.fit(examples, steps=2)
    assert twice.model is model and twice.optimizer is optimizer  # nothing reloaded or rebuilt
    assert twice.step == 4
    steps = {float(s["step"]) for s in twice.optimizer.state.values()}
    assert steps == {4.0}  # AdamW's bias correction saw 4 updates, not 2 + 2 fresh ones
    a, b = state(once.model), state(twice.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=0, msg=k)


def test_fit_over_a_stream_of_batches_equals_fit_over_examples(tmp_path, tiny_dir):
    """A caller that makes its own batches (e.g. an online loop) gets the update the examples would give."""
    r = make_recipe(tmp_path / "a", tiny_dir)
    plain = Trainer(r, build_algorithm(r))
    examples = plain.load_examples(None, "train")
    plain.fit(examples, steps=1)

    r2 = make_recipe(tmp_path / "b", tiny_dir)
    streamed = Trainer(r2, build_algorithm(r2))
    examples2 = streamed.load_examples(None, "train")
    order = torch.randperm(16, generator=torch.Generator().manual_seed(r2.train.seed)).tolist()  # epoch 0's order
    streamed.fit(steps=1, stream=iter([[[streamed.collate([examples2[i] for i in order])]]]))
    a, b = state(plain.model), state(streamed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-7, rtol=0, msg=k)
    with pytest.raises(ValueError, match="needs steps"):
        streamed.fit(stream=iter([]))


def test_dpo_caches_reference_logps_only_for_the_examples_it_reads(tmp_path, tiny_dir):
    """max_steps over a larger data set: only the chunks holding examples the steps read are scored,
    and each cached value equals the one a full cache computes (same chunks, same numbers)."""
    extra = ["task.n_train=64", "train.batch_size=8", "train.micro_batch_size=4", "train.max_steps=2"]
    r = make_recipe(tmp_path / "lazy", tiny_dir, "dpo", extra)
    trainer = Trainer(r, build_algorithm(r))
    examples = trainer.load_examples(None, "train")
    ctx, order, start, total = trainer.prepare(examples, steps=2)
    used = set(order.used(0, 2))
    cached = {e["index"] for e in examples if "ref_chosen" in e}
    assert len(used) == 16 and used <= cached and len(cached) < 64
    full = copy.deepcopy(examples)
    for e in full:
        e.pop("ref_chosen", None)
        e.pop("ref_rejected", None)
    reference = trainer.reference(keep=False)
    compute = lambda batch: torch.stack(trainer.algorithm._reference_logps(reference, batch), -1)  # noqa: E731
    trainer.train_examples = full  # the fit's training examples again, uncached: batched as training reads them
    trainer.cache(full, compute, ("ref_chosen", "ref_rejected"))
    assert all("ref_chosen" in e for e in full)
    for i in cached:
        assert full[i]["ref_chosen"] == examples[i]["ref_chosen"] and full[i]["ref_rejected"] == examples[i]["ref_rejected"]


def test_reference_soft_refresh_and_swap(tiny_dir):
    """TR-DPO's soft update ref <- a * policy + (1 - a) * ref, checked on one weight by hand."""
    from alignkit.config import ModelConfig
    from alignkit.models.loading import load_causal_lm

    policy = load_causal_lm(tiny_dir, ModelConfig(path=str(tiny_dir)))
    ref = starting_reference(policy, keep=True, resumed=False, load_start=lambda: None)
    assert ref.kind == "frozen" and ref.model is not policy and not any(p.requires_grad for p in ref.model.parameters())
    name, w_ref = next(iter(ref.model.named_parameters()))
    w0 = w_ref.detach().clone()
    with torch.no_grad():
        dict(policy.named_parameters())[name].add_(1.0)  # policy = ref + 1 on this weight
    ref.refresh(policy, alpha=0.25)
    torch.testing.assert_close(w_ref.detach(), w0 + 0.25 * 1.0)  # 0.25 * (w0 + 1) + 0.75 * w0
    assert ref.changes
    live = starting_reference(policy, keep=False, resumed=False, load_start=lambda: None)
    assert live.kind == "live" and live.model is policy
    with pytest.raises(ValueError, match="cannot be refreshed"):
        live.refresh(policy)
    other = copy.deepcopy(policy)
    live.swap(other)
    assert live.kind == "opponent" and live.model is other
    ids = torch.tensor([[1, 5, 7, 9]])
    ones = torch.ones_like(ids)
    out = live(ids, ones, ones)
    assert out.shape == (1, 4) and not out.requires_grad and out[0, 0] == 0
    with pytest.raises(ValueError, match="unknown reference kind"):
        Reference(policy, "nonsense")


def test_strategies_are_registered_and_one_process_is_single():
    assert STRATEGIES.names() == ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp2", "single"]
    s = build_strategy("fsdp2")  # one process: always the single strategy
    assert s.name == "single" and s.world == 1 and s.mean({"a": 2.0}) == {"a": 2.0} and s.min_count(3) == 3
    with pytest.raises(KeyError, match="did you mean 'ddp'"):
        STRATEGIES.get("dpp")
