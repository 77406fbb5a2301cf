"""Decoding from a bf16 copy of the policy (``rl.sampling.precision=bf16``, ``LocalEngine(dtype=...)``) and
the contiguous output-head input of a prefill (``rollout.local.forward_last``)."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit.algorithms import train
from alignkit.models.weights import mark_updated
from alignkit.rollout.engine import Sampling
from alignkit.rollout.local import LocalEngine, Sampler, decode, forward_last
from test_engine import recipe

PROMPTS = [[5, 9, 11, 7], [5, 9, 11, 7], [12, 3], [8, 8, 14, 2, 6]]


def load(tiny_dir, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=dtype).eval().requires_grad_(False)


def test_prefill_logits_equal_the_full_forward_and_leave_no_hook(tiny_dir):
    from transformers import DynamicCache

    model = load(tiny_dir)
    ids = torch.tensor([[0, 0, 5, 9, 11], [3, 4, 5, 6, 7]])
    attention = (ids != 0).long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    last = forward_last(model, ids, attention, positions, DynamicCache())
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits[:, -1]
    torch.testing.assert_close(last, full, rtol=0, atol=1e-5)
    assert not model.get_output_embeddings()._forward_pre_hooks  # the hook lives for the one call


def test_bf16_engine_decodes_a_bf16_copy_and_follows_the_updates(tiny_dir, tokenizer):
    policy = load(tiny_dir)
    engine = LocalEngine(policy, tokenizer, dtype=torch.bfloat16)
    assert engine.model is not policy and not engine.shares_model
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # the caller's model is untouched
    # the engine samples exactly what a bf16 cast of the policy samples (tokens and behaviour log-probs)
    bf16 = load(tiny_dir, torch.bfloat16)
    sampler = Sampler(seed=3)
    ours = decode(engine.model, PROMPTS, None, sampler, 6, stops=())
    theirs = decode(bf16, PROMPTS, None, sampler, 6, stops=())
    assert [d.completion_ids for d in ours] == [d.completion_ids for d in theirs]
    assert [d.logprobs for d in ours] == [d.logprobs for d in theirs]
    # an optimizer step on the policy reaches the copy at the next update_from (cast to bf16)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mark_updated(policy)
    engine.update_from(policy)
    for (name, mine), theirs in zip(engine.model.state_dict().items(), policy.state_dict().values()):
        assert torch.equal(mine, theirs.to(torch.bfloat16)), name
    # a model already in bf16 is shared, not copied
    assert LocalEngine(bf16, tokenizer, dtype=torch.bfloat16).model is bf16


def test_bf16_engine_samples_the_policy_at_bf16_resolution(tiny_dir, tokenizer):
    """The behaviour log-probs of the bf16 sampler are close to the fp32 policy's (bf16 keeps 8 bits of
    mantissa: a relative error of about 2^-8 on each weight) and greedy text mostly agrees."""
    policy = load(tiny_dir)
    sampling = Sampling(max_new_tokens=8, greedy=True, seed=0)
    fp32 = LocalEngine(policy, tokenizer).generate([tokenizer.decode(p) for p in PROMPTS[2:]], n=1, sampling=sampling)
    half = LocalEngine(policy, tokenizer, dtype=torch.bfloat16).generate([tokenizer.decode(p) for p in PROMPTS[2:]], n=1, sampling=sampling)
    first = [(a.logprobs[0], b.logprobs[0]) for a, b in zip(fp32, half)]
    assert all(abs(a - b) < 0.05 for a, b in first), first


def test_grpo_with_a_bf16_sampler_trains_and_logs(tmp_path, tiny_dir):
    extra = ["rl.sampling.precision=bf16", "rl.sampling.backend=alignkit", "rl.sampling.group_size=4", "rl.sampling.max_new_tokens=8",
             "train.batch_size=4", "train.max_steps=2", "train.precision=bf16", "rl.kl.beta=0.04", "rl.update.epochs=2"]
    out = train(recipe(tmp_path, tiny_dir, "rl", extra=extra))
    assert out is not None
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and all(abs(r["loss"]) < 1e3 for r in steps)


def test_bf16_sampler_is_refused_for_another_backend(tmp_path, tiny_dir):
    extra = ["rl.sampling.precision=bf16", "rl.sampling.backend=hf", "train.max_steps=1"]
    with pytest.raises(ValueError, match=r"rl\.sampling\.precision=bf16 is a setting of the alignkit decoder; rl\.sampling\.backend resolves to 'hf'"):
        train(recipe(tmp_path, tiny_dir, "rl", extra=extra))


@pytest.mark.parametrize("extra, words", [
    (["rl.asynchronous.mode=one_step_off", "rl.off_policy.correction=tis"], "rl.sampling.precision=bf16 applies to synchronous sampling"),
    (["scale.backend=ray"], "rl.sampling.precision=bf16 is a setting of the local alignkit decoder; with scale.backend=ray"),
])
def test_bf16_sampler_is_refused_where_another_engine_samples(extra, words):
    from alignkit.config import load_recipe

    with pytest.raises(ValueError, match=re.escape(words)) as error:
        load_recipe({"algorithm": "rl"}, ["rl.sampling.precision=bf16", *extra])
    assert "\n" not in str(error.value)
