"""The rollout engine protocol (alignkit.rollout.engine), alignkit's decode loop with its guide hook and
KV-cache fork/select (alignkit.rollout.local), and the registry of backends."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from conftest import quick_sft

from alignkit.data.encode import Encoder
from alignkit.rollout import (
    BACKENDS,
    ENGINES,
    CachedModelGuide,
    Guide,
    HFEngine,
    LocalEngine,
    RolloutEngine,
    Sampler,
    Sampling,
    StepState,
    build_rollout_engine,
    decode,
    engine_names,
    generate,
    prefill,
    stop_token_ids,
)
from alignkit.rollout.local import fork_cache, select_cache

PROMPTS = ["review of the soup :", "review of the phone : the screen was", "the", "review of the film : the plot was good and"]


pytestmark = pytest.mark.usefixtures("one_thread")


def load(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def trained(tiny_dir, tokenizer):
    """The tiny model after a few SFT steps on the sentiment task, so that rows stop at EOS at different steps."""
    return quick_sft(tiny_dir, tokenizer, rows=32, steps=40)


@pytest.fixture(scope="module")
def expert(tiny_dir):
    """A second model (the untrained tiny model: other weights, same vocabulary) for product-of-experts guides."""
    return load(tiny_dir)


def triples(samples):
    return [(s.completion_ids, s.finished, s.logprobs) for s in samples]


class RecordingGuide(Guide):
    """The identity guide that records what it is shown."""

    def __init__(self):
        self.prefilled, self.steps, self.selections = None, [], []

    def prefill(self, state):
        self.prefilled = (state.rows.tolist(), state.prompt_ids, state.job_ids)

    def select(self, indices):
        self.selections.append(indices.tolist())

    def __call__(self, logits, state):
        self.steps.append(dict(step=state.step, rows=state.rows.tolist(), job_ids=state.job_ids, active=state.active.tolist(),
                               prefixes=state.prefixes(), last=None if state.last_tokens is None else state.last_tokens.tolist(),
                               shape=tuple(logits.shape)))
        return logits


# --------------------------------------------------------------------------------------------------
# the guide hook
# --------------------------------------------------------------------------------------------------
def test_identity_guide_and_batching_leave_samples_bit_identical(trained, tokenizer):
    kwargs = dict(n=4, max_new_tokens=40, seed=1, top_p=0.9, truncated_logprobs=True)
    plain = generate(trained, tokenizer, PROMPTS, **kwargs)
    assert any(s.finished for s in plain)
    assert len({len(s.completion_ids) for s in plain}) > 2  # rows leave the batch at different steps
    guided = generate(trained, tokenizer, PROMPTS, guide=Guide(), **kwargs)
    one = generate(trained, tokenizer, PROMPTS, batch_size=1, **kwargs)
    eight = generate(trained, tokenizer, PROMPTS, batch_size=8, guide=Guide(), **kwargs)
    assert triples(guided) == triples(plain)  # exact: tokens, flags and float log-probs
    # another batching: the same tokens (the log-probs agree to float rounding of other matmul shapes)
    assert [s.completion_ids for s in one] == [s.completion_ids for s in eight] == [s.completion_ids for s in plain]
    assert [s.finished for s in one] == [s.finished for s in plain]
    for a, b in zip(one, plain):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    assert triples(eight) == triples(generate(trained, tokenizer, PROMPTS, batch_size=8, **kwargs))


def test_guide_sees_the_state_of_every_step(trained, tokenizer):
    guide = RecordingGuide()
    samples = generate(trained, tokenizer, PROMPTS, n=3, max_new_tokens=30, seed=2, guide=guide, job_ids=list(range(100, 112)))
    jobs = len(samples)
    assert guide.prefilled[0] == list(range(jobs)) and guide.prefilled[2] == list(range(100, 112))
    assert guide.prefilled[1] == [s.prompt_ids for s in samples]
    for record in guide.steps:
        t = record["step"]
        alive = [j for j, s in enumerate(samples) if len(s.completion_ids) > t]  # the jobs still decoding at step t
        assert record["rows"] == alive and record["job_ids"] == [100 + j for j in alive]
        assert record["active"] == [j in alive for j in range(jobs)] and record["shape"][0] == len(alive)
        assert record["prefixes"] == [samples[j].prompt_ids + samples[j].completion_ids[:t] for j in alive]
        assert record["last"] == (None if t == 0 else [samples[j].completion_ids[t - 1] for j in alive])
    assert [r["step"] for r in guide.steps] == list(range(max(len(s.completion_ids) for s in samples)))
    # every selection keeps the rows that did not stop, in order
    assert guide.selections and all(sel == sorted(sel) for sel in guide.selections)


class BanGuide(Guide):
    def __init__(self, token: int):
        self.token = token

    def __call__(self, logits, state):
        logits = logits.clone()
        logits[:, self.token] = float("-inf")
        return logits


def test_a_banning_guide_never_emits_the_token_and_renormalises(trained, tokenizer):
    prompt = PROMPTS[1]
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(trained(input_ids=ids).logits[0, -1], -1)
    banned = int(probs.argmax())
    n = 3000
    samples = generate(trained, tokenizer, [prompt], n=n, max_new_tokens=1, batch_size=n, seed=0, guide=BanGuide(banned))
    first = torch.tensor([s.completion_ids[0] for s in samples])
    assert banned not in first.tolist()
    renormalised = probs.clone()
    renormalised[banned] = 0
    renormalised /= renormalised.sum()
    for s in samples[:50]:  # the reported log-prob is that of the renormalised distribution
        assert abs(s.logprobs[0] - renormalised[s.completion_ids[0]].log().item()) < 1e-4
    counts = torch.bincount(first, minlength=probs.numel()).float() / n
    top = torch.topk(renormalised, 8).indices
    expected = torch.cat([renormalised[top], (1 - renormalised[top].sum())[None]])
    observed = torch.cat([counts[top], (1 - counts[top].sum())[None]])
    assert 0.5 * (observed - expected).abs().sum() < 0.04
    # over whole completions too, and the stop token can be banned as well
    eos = tokenizer.eos_token_id
    longer = generate(trained, tokenizer, PROMPTS, n=4, max_new_tokens=12, seed=4, guide=BanGuide(eos))
    assert all(eos not in s.completion_ids for s in longer)


class RecomputedModelGuide(Guide):
    """The product-of-experts guide without a cache: the expert's logits recomputed over each row's full prefix."""

    def __init__(self, model):
        self.model = model

    def __call__(self, logits, state):
        rows = []
        for prefix in state.prefixes():
            with torch.no_grad():
                rows.append(self.model(input_ids=torch.tensor([prefix])).logits[0, -1])
        return logits + torch.log_softmax(torch.stack(rows).float(), -1)


@pytest.mark.parametrize("batch_size", [16, 5])
def test_a_guide_with_its_own_cache_in_lockstep_equals_recomputing(trained, expert, tokenizer, batch_size):
    kwargs = dict(n=4, max_new_tokens=24, seed=6, batch_size=batch_size)
    cached = generate(trained, tokenizer, PROMPTS, guide=CachedModelGuide(expert, pad_id=tokenizer.pad_token_id), **kwargs)
    recomputed = generate(trained, tokenizer, PROMPTS, guide=RecomputedModelGuide(expert), **kwargs)
    assert any(s.finished for s in cached) and len({len(s.completion_ids) for s in cached}) > 2
    assert [s.completion_ids for s in cached] == [s.completion_ids for s in recomputed]
    for a, b in zip(cached, recomputed):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
    assert [s.completion_ids for s in cached] != [s.completion_ids for s in generate(trained, tokenizer, PROMPTS, **kwargs)]


# --------------------------------------------------------------------------------------------------
# decode loop, fork / select
# --------------------------------------------------------------------------------------------------
def test_public_decode_loop_is_what_the_engine_runs(trained, tokenizer):
    encoder = Encoder(tokenizer, max_length=10**9)
    ids = [encoder.prompt_ids(p) for p in PROMPTS for _ in range(2)]
    out = decode(trained, ids, list(range(8)), Sampler(temperature=0.8, seed=11), 20, stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id)
    samples = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=20, temperature=0.8, seed=11)
    assert [(d.completion_ids, d.finished, d.logprobs) for d in out] == triples(samples)
    with LocalEngine(trained, tokenizer) as engine:  # token id prompts give the same samples
        by_ids = engine.generate(prompt_ids=ids[::2], n=2, max_new_tokens=20, temperature=0.8, seed=11)
    assert triples(by_ids) == triples(samples) and by_ids[0].prompt == ids[0]


def full_logits(model, prefixes):
    with torch.no_grad():
        return torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1] for p in prefixes])


def test_fork_and_select_then_continue_equals_recomputing(trained, tokenizer):
    encoder = Encoder(tokenizer, max_length=10**9)
    prefixes = [encoder.prompt_ids(p) for p in PROMPTS]
    state = prefill(trained, prefixes, tokenizer.pad_token_id)
    torch.testing.assert_close(state.logits, full_logits(trained, prefixes), atol=1e-5, rtol=0)
    for _ in range(2):  # two greedy steps
        tokens = state.logits.argmax(-1)
        prefixes = [p + [t] for p, t in zip(prefixes, tokens.tolist())]
        state.advance(trained, tokens)
    state.fork(3)  # every row three times
    prefixes = [p for p in prefixes for _ in range(3)]
    assert state.rows == 12
    torch.testing.assert_close(state.logits, full_logits(trained, prefixes), atol=1e-5, rtol=0)
    # each branch takes another of its row's three most likely tokens
    tokens = torch.topk(state.logits, 3, dim=-1).indices[torch.arange(12), torch.arange(12) % 3]
    prefixes = [p + [t] for p, t in zip(prefixes, tokens.tolist())]
    state.advance(trained, tokens)
    torch.testing.assert_close(state.logits, full_logits(trained, prefixes), atol=1e-5, rtol=0)
    keep = [7, 0, 0, 11, 2]  # reorder, drop and repeat rows (drops the longest prompt's rows: padding is trimmed)
    state.select(keep)
    prefixes = [prefixes[i] for i in keep]
    for _ in range(3):
        torch.testing.assert_close(state.logits, full_logits(trained, prefixes), atol=1e-5, rtol=0)
        tokens = torch.tensor([3, 5, 9, 11, 13])[: state.rows]
        prefixes = [p + [t] for p, t in zip(prefixes, tokens.tolist())]
        state.advance(trained, tokens)
    torch.testing.assert_close(state.logits, full_logits(trained, prefixes), atol=1e-5, rtol=0)


def test_bare_cache_fork_and_select_use_the_cache_methods(trained, tokenizer):
    state = prefill(trained, [[5, 6, 7], [8, 9, 10]], tokenizer.pad_token_id)
    keys = state.cache.layers[0].keys.clone()
    fork_cache(state.cache, 2)
    assert torch.equal(state.cache.layers[0].keys, keys.repeat_interleave(2, dim=0))
    select_cache(state.cache, [3, 0])
    assert torch.equal(state.cache.layers[0].keys, keys[[1, 0]])


# --------------------------------------------------------------------------------------------------
# registry and protocol
# --------------------------------------------------------------------------------------------------
def test_unknown_backend_lists_the_allowed_names(trained, tokenizer):
    with pytest.raises(ValueError, match=r"unknown generation backend 'nope'; allowed: auto, alignkit, hf, vllm"):
        build_rollout_engine("nope", trained, tokenizer)
    with pytest.raises(ValueError, match="did you mean 'alignkit'"):
        generate(trained, tokenizer, PROMPTS, backend="alignkt")
    assert engine_names() == ["auto", *ENGINES.names()] and set(ENGINES.names()) <= set(BACKENDS)
    assert isinstance(build_rollout_engine("auto", trained, tokenizer), LocalEngine)  # on CPU
    from alignkit.config import VLLMConfig

    # a recipe's vLLM settings can always be passed: only a vllm engine takes them
    assert isinstance(build_rollout_engine("auto", trained, tokenizer, vllm_options=VLLMConfig()), LocalEngine)


def test_every_engine_satisfies_the_protocol(trained, tokenizer):
    assert set(ENGINES.names()) >= {"alignkit", "hf", "vllm"}
    base = inspect.signature(RolloutEngine.generate)
    for name in ENGINES.names():
        cls = ENGINES.get(name)
        assert issubclass(cls, RolloutEngine) and not inspect.isabstract(cls) and cls.name == name
        for method in ("generate", "update_weights", "update_from", "release", "close", "__enter__", "__exit__"):
            assert callable(getattr(cls, method))
        assert inspect.signature(cls.generate) == base
        assert list(inspect.signature(cls.__init__).parameters)[:3] == ["self", "model", "tokenizer"]
    for cls in (LocalEngine, HFEngine):
        engine = build_rollout_engine(cls.name, trained, tokenizer)
        assert type(engine) is cls and engine.shares_model and engine.model is trained
        with engine:
            samples = engine.generate(PROMPTS[:2], n=2, max_new_tokens=4, seed=0)
            assert len(samples) == 4 and all(len(s.completion_ids) <= 4 for s in samples)
            engine.release()
            engine.generate(PROMPTS[:1], max_new_tokens=2)  # still usable after release
        with pytest.raises(RuntimeError, match="closed"):
            engine.generate(PROMPTS[:1], max_new_tokens=2)
    with pytest.raises(ValueError, match="takes no guide"):
        HFEngine(trained, tokenizer).generate(PROMPTS[:1], max_new_tokens=2, guide=Guide())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Sampling(temperature=0)


@pytest.mark.parametrize("backend", ["alignkit", "hf"])
def test_update_weights_changes_what_a_copying_engine_samples(trained, expert, tokenizer, backend):
    kwargs = dict(max_new_tokens=12, greedy=True)
    ours = generate(trained, tokenizer, PROMPTS, backend=backend, **kwargs)
    theirs = generate(expert, tokenizer, PROMPTS, backend=backend, **kwargs)
    assert [s.completion_ids for s in ours] != [s.completion_ids for s in theirs]
    with build_rollout_engine(backend, trained, tokenizer, copy=True) as engine:
        assert not engine.shares_model and engine.model is not trained
        assert [s.completion_ids for s in engine.generate(PROMPTS, **kwargs)] == [s.completion_ids for s in ours]
        engine.update_weights(expert.state_dict().items())
        assert [s.completion_ids for s in engine.generate(PROMPTS, **kwargs)] == [s.completion_ids for s in theirs]
        # through the front door: the engine is brought up to the model it is called with
        again = generate(trained, tokenizer, PROMPTS, engine=engine, **kwargs)
        assert [s.completion_ids for s in again] == [s.completion_ids for s in ours] and not engine.closed
        with pytest.raises(KeyError, match="no tensor 'nope'"):
            engine.update_weights([("nope", torch.zeros(1))])


def test_an_engine_sharing_the_model_needs_no_update(trained, tokenizer):
    engine = LocalEngine(trained, tokenizer)
    before = generate(trained, tokenizer, PROMPTS, max_new_tokens=8, greedy=True, engine=engine)
    versions = [p._version for p in trained.parameters()]
    engine.update_weights(trained.state_dict().items())  # its own tensors: nothing is copied
    engine.update_from(trained)
    assert [p._version for p in trained.parameters()] == versions
    with pytest.raises(ValueError, match="shares"):
        engine.update_from(load_other(trained))
    # an in-place change of the live model is seen at once, with no update
    head = trained.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head[before[0].completion_ids[0]] -= 100.0
        after = engine.generate(PROMPTS, max_new_tokens=8, greedy=True)
        assert after[0].completion_ids[0] != before[0].completion_ids[0]
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert triples(engine.generate(PROMPTS, max_new_tokens=8, greedy=True)) == triples(before)
    engine.close()


def load_other(model):
    import copy

    return copy.deepcopy(model)


def test_vllm_engine_without_vllm_is_a_clear_error(trained, tokenizer):
    from alignkit.rollout.vllm import vllm_available

    if vllm_available():
        pytest.skip("vLLM is installed here (tests/test_vllm.py covers it)")
    with pytest.raises(ImportError, match="vllm"):
        build_rollout_engine("vllm", trained, tokenizer)


def test_step_state_is_lazy_and_consistent():
    tokens = torch.tensor([[1, 2, 0], [3, 4, 0], [5, 6, 0]])
    state = StepState(2, torch.tensor([0, 2]), 3, [10, 11, 12], [[7], [8], [9, 9]], tokens, torch.tensor([2, 6]))
    assert state.job_ids == [10, 12] and state.active.tolist() == [True, False, True]
    assert state.prefixes() == [[7, 1, 2], [9, 9, 5, 6]] and state.completion.tolist() == [[1, 2], [5, 6]]
    assert math.isclose(len(state.prompt_ids), 2)
