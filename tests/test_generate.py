"""The sampling engine (alignkit.rollout.generate): exactness against model.generate and the trainer's
log-prob kernel, stopping, determinism and shared-prompt groups."""

from __future__ import annotations

import pytest
import torch
from conftest import quick_sft

from alignkit.data.collate import collate_sequences
from alignkit.models.logprobs import TargetLogProbs
from alignkit.rollout import Sample, generate, sample_logprobs, stop_token_ids

# prompts of different token lengths (left padding, different position ids)
PROMPTS = ["review of the soup :", "review of the phone : the screen was", "the", "review of the film : the plot was good and"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_dir, tokenizer):
    """The session's tiny model after a few SFT steps on the sentiment task, so that it stops at EOS."""
    return quick_sft(tiny_dir, tokenizer, rows=32, steps=40)


class ForwardSpy:
    """Records the batch size and query length of every forward of ``model``."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.original = model.forward

    def __enter__(self):
        def spy(*args, **kwargs):
            ids = kwargs["input_ids"]
            self.calls.append(tuple(ids.shape))
            return self.original(*args, **kwargs)

        self.model.forward = spy
        return self

    def __exit__(self, *exc):
        del self.model.forward


def test_greedy_matches_hf_generate(trained, tokenizer):
    for batch_size in (3, 64):  # a chunk boundary inside a group, and one batch
        ours = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=24, greedy=True, batch_size=batch_size)
        ref = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=24, greedy=True, batch_size=batch_size, backend="hf")
        assert [s.completion_ids for s in ours] == [s.completion_ids for s in ref]
        assert [s.finished for s in ours] == [s.finished for s in ref]
        assert [s.completion for s in ours] == [s.completion for s in ref]
        assert [s.prompt_ids for s in ours] == [s.prompt_ids for s in ref]
        assert all(s.logprobs is None for s in ref)


def test_greedy_matches_hf_on_random_weights(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    ours = generate(model, tokenizer, PROMPTS, max_new_tokens=12, greedy=True)
    ref = generate(model, tokenizer, PROMPTS, max_new_tokens=12, greedy=True, backend="hf")
    assert [s.completion_ids for s in ours] == [s.completion_ids for s in ref]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_trainer_kernel(trained, tokenizer, temperature):
    samples = generate(trained, tokenizer, PROMPTS, n=3, max_new_tokens=20, temperature=temperature, seed=3)
    ids = [s.prompt_ids + s.completion_ids for s in samples]
    masks = [[0] * len(s.prompt_ids) + [1] * len(s.completion_ids) for s in samples]
    batch = collate_sequences(ids, masks, tokenizer.pad_token_id)
    with torch.no_grad():
        ref = TargetLogProbs(trained, temperature)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        assert len(s.logprobs) == c
        torch.testing.assert_close(torch.tensor(s.logprobs), ref[i, p : p + c], atol=1e-4, rtol=0)
    summed = sample_logprobs(trained, samples, tokenizer.pad_token_id, temperature=temperature)
    torch.testing.assert_close(torch.tensor([sum(s.logprobs) for s in samples]), summed, atol=1e-3, rtol=0)


def test_greedy_logprobs_match_trainer_kernel(trained, tokenizer):
    samples = generate(trained, tokenizer, PROMPTS, max_new_tokens=16, greedy=True, temperature=0.5)
    summed = sample_logprobs(trained, samples, tokenizer.pad_token_id, temperature=0.5)
    torch.testing.assert_close(torch.tensor([sum(s.logprobs) for s in samples]), summed, atol=1e-3, rtol=0)


def test_stops_at_eos_and_drops_finished_rows(trained, tokenizer):
    stops = set(stop_token_ids(tokenizer))
    max_new = 48
    with ForwardSpy(trained) as spy:
        samples = generate(trained, tokenizer, PROMPTS, n=4, max_new_tokens=max_new, seed=1)
    assert any(s.finished for s in samples)
    for s in samples:
        if s.finished:
            assert s.completion_ids[-1] in stops and not stops & set(s.completion_ids[:-1])
            assert len(s.completion_ids) <= max_new
        else:
            assert len(s.completion_ids) == max_new and not stops & set(s.completion_ids)
        assert len(s.logprobs) == len(s.completion_ids)
    # the prefill runs the 4 unique prompts once; decode steps shrink as rows finish and stop when all have
    assert spy.calls[0][0] == len(PROMPTS)
    sizes = [b for b, t in spy.calls[1:]]
    assert all(t == 1 for _, t in spy.calls[1:])
    assert sizes == sorted(sizes, reverse=True) and sizes[0] <= len(samples)
    assert len(spy.calls) - 1 == max(len(s.completion_ids) for s in samples) - 1
    unfinished_after = [sum(len(s.completion_ids) > k for s in samples) for k in range(1, len(spy.calls))]
    assert sizes == unfinished_after  # exactly the rows still decoding are computed


def test_same_seed_same_samples(trained, tokenizer):
    a = generate(trained, tokenizer, PROMPTS, n=3, max_new_tokens=16, seed=7, top_p=0.9, top_k=20)
    b = generate(trained, tokenizer, PROMPTS, n=3, max_new_tokens=16, seed=7, top_p=0.9, top_k=20)
    c = generate(trained, tokenizer, PROMPTS, n=3, max_new_tokens=16, seed=8, top_p=0.9, top_k=20)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert [s.logprobs for s in a] == [s.logprobs for s in b]
    assert [s.completion_ids for s in a] != [s.completion_ids for s in c]


def test_samples_do_not_depend_on_batching(trained, tokenizer):
    """A job's draws depend on (seed, job id, step) only: other batch sizes, or the job decoded alone under
    its id, give the same completions (this is what makes N-process rollouts equal 1-process ones)."""
    whole = generate(trained, tokenizer, PROMPTS, n=4, max_new_tokens=16, seed=3, batch_size=4 * len(PROMPTS))
    small = generate(trained, tokenizer, PROMPTS, n=4, max_new_tokens=16, seed=3, batch_size=3)
    assert [s.completion_ids for s in small] == [s.completion_ids for s in whole]
    alone = generate(trained, tokenizer, PROMPTS[1:2], n=4, max_new_tokens=16, seed=3, job_ids=[4, 5, 6, 7])
    assert [s.completion_ids for s in alone] == [s.completion_ids for s in whole[4:8]]
    assert len({tuple(s.completion_ids) for s in whole}) > len(PROMPTS)  # the group's samples differ


def test_splitmix64_matches_the_reference_generator():
    """splitmix64 on int64 tensors equals the reference algorithm in Python integers (mod 2^64)."""
    import importlib

    module = importlib.import_module("alignkit.rollout.generate")
    mask = 2**64 - 1

    def reference(x):
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    values = [0, 1, 12345, 2**62 + 7, -(2**63), -1]
    got = [v & mask for v in module.splitmix64(torch.tensor(values, dtype=torch.int64)).tolist()]
    assert got == [reference(v & mask) for v in values]
    assert got[0] == 0xE220A8397B1DCDAF  # the generator's first output from state 0
    u = module.uniform_stream(torch.arange(64), 4096)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002


def test_group_sharing_greedy_equals_single(trained, tokenizer):
    single = generate(trained, tokenizer, PROMPTS, n=1, max_new_tokens=20, greedy=True)
    with ForwardSpy(trained) as spy:
        grouped = generate(trained, tokenizer, PROMPTS, n=4, max_new_tokens=20, greedy=True)
    assert spy.calls[0][0] == len(PROMPTS)  # one prefill row per prompt, not per sample
    for i, s in enumerate(single):
        for j in range(4):
            g = grouped[i * 4 + j]
            assert g.prompt == s.prompt and g.completion_ids == s.completion_ids
            torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(s.logprobs), atol=1e-5, rtol=0)


def test_first_token_distribution(trained, tokenizer):
    """Samples follow softmax(logits / temperature); top-k truncates to the k most likely tokens."""
    prompt = PROMPTS[1]
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(trained(input_ids=ids).logits[0, -1] / 1.5, -1)
    n = 4000
    samples = generate(trained, tokenizer, [prompt], n=n, max_new_tokens=1, temperature=1.5, batch_size=n, seed=0)
    counts = torch.bincount(torch.tensor([s.completion_ids[0] for s in samples]), minlength=probs.numel()).float()
    # total variation over buckets (the 8 most likely tokens, everything else) against the model's softmax
    top8 = torch.topk(probs, 8).indices
    expected = torch.cat([probs[top8], (1 - probs[top8].sum())[None]])
    observed = torch.cat([counts[top8], (n - counts[top8].sum())[None]]) / n
    assert 0.5 * (observed - expected).abs().sum() < 0.04
    top = generate(trained, tokenizer, [prompt], n=200, max_new_tokens=1, temperature=1.5, top_k=3, batch_size=200, truncated_logprobs=True)
    allowed = set(torch.topk(probs, 3).indices.tolist())
    assert {s.completion_ids[0] for s in top} <= allowed
    kept = probs[list(allowed)].sum()
    for s in top:  # renormalised over the 3 kept tokens
        assert abs(s.logprobs[0] - (probs[s.completion_ids[0]] / kept).log().item()) < 1e-4


def test_top_k_one_is_greedy(trained, tokenizer):
    greedy = generate(trained, tokenizer, PROMPTS, max_new_tokens=12, greedy=True)
    top1 = generate(trained, tokenizer, PROMPTS, max_new_tokens=12, top_k=1, seed=5)
    assert [s.completion_ids for s in greedy] == [s.completion_ids for s in top1]


def test_backends(trained, tokenizer):
    with pytest.raises(ValueError, match="unknown generation backend"):
        generate(trained, tokenizer, PROMPTS, backend="nope")
    with pytest.raises((ImportError, RuntimeError, NotImplementedError), match="vllm"):
        generate(trained, tokenizer, PROMPTS, backend="vllm")
    # the old positional/keyword API still works and the new field is optional
    s = Sample("p", "c", [1], [2], True)
    assert s.logprobs is None
    assert trained.training is False
    trained.train()
    generate(trained, tokenizer, PROMPTS[:1], max_new_tokens=2)
    assert trained.training is True  # the caller's mode is restored
    trained.eval()


# ---- plain-text prompts and the chat template ------------------------------------------------------
def test_tiny_tokenizer_keeps_raw_text_unless_asked(trained, tokenizer):
    """The tiny models learn plain-text tasks: "auto" keeps the raw text for their tokenizer (whose chat
    template exists for conversational data); chat_template=True renders the user turn + generation prompt."""
    from alignkit.rollout.generate import wraps_plain_prompts

    assert tokenizer.chat_template and not wraps_plain_prompts(tokenizer)
    auto = generate(trained, tokenizer, PROMPTS[:2], max_new_tokens=4, greedy=True)
    raw = generate(trained, tokenizer, PROMPTS[:2], max_new_tokens=4, greedy=True, chat_template=False)
    assert [s.prompt_ids for s in auto] == [s.prompt_ids for s in raw] == [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    chat = generate(trained, tokenizer, PROMPTS[:2], n=2, max_new_tokens=4, greedy=True, chat_template=True)
    rendered = [tokenizer(f"<|user|>{p}<|end|><|assistant|>", add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    assert [s.prompt_ids for s in chat] == [rendered[0], rendered[0], rendered[1], rendered[1]]
    assert [s.prompt for s in chat] == [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]  # the prompt as the caller gave it
    messages = [{"role": "user", "content": PROMPTS[0]}]
    [as_messages] = generate(trained, tokenizer, [messages], max_new_tokens=4, greedy=True, chat_template=False)
    assert as_messages.prompt_ids == rendered[0] and as_messages.prompt == messages  # message lists always use the template


def test_auto_wraps_for_another_template_and_true_needs_one(tokenizer):
    import copy

    from alignkit.rollout.generate import as_chat_prompts, wraps_plain_prompts

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    assert wraps_plain_prompts(chat) and as_chat_prompts(chat, ["hi", [{"role": "user", "content": "x"}]]) == [
        [{"role": "user", "content": "hi"}], [{"role": "user", "content": "x"}]]
    assert as_chat_prompts(chat, ["hi"], False) == ["hi"]
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert not wraps_plain_prompts(plain)
    with pytest.raises(ValueError, match="the tokenizer has no chat template"):
        wraps_plain_prompts(plain, True)
    with pytest.raises(ValueError, match="chat_template: got 'yes'; allowed: 'auto', True, False"):
        wraps_plain_prompts(chat, "yes")


def _rendered(tokenizer, text):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True, return_dict=False)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.slow
def test_cli_plain_prompt_on_a_chat_model_uses_the_template(smollm2, tmp_path):
    """SmolLM2-135M-Instruct answers nothing to the raw text; through the chat template it names Paris."""
    import json

    from typer.testing import CliRunner

    from alignkit import cli
    from alignkit.models.loading import load_tokenizer

    question = "What is the capital of France?"
    tok = load_tokenizer(smollm2)
    runner = CliRunner()
    rows = {}
    for flag in ("--chat-template", "--no-chat-template"):
        out = tmp_path / f"{flag}.jsonl"
        result = runner.invoke(cli.app, ["generate", str(smollm2), "-p", question, "--greedy", "--max-new-tokens", "24", "--out", str(out), flag])
        assert result.exit_code == 0, result.output
        [rows[flag]] = [json.loads(line) for line in out.read_text().splitlines()]
    templated, raw = rows["--chat-template"], rows["--no-chat-template"]
    assert templated["prompt"] == raw["prompt"] == question
    assert templated["prompt_ids"] == _rendered(tok, question)
    assert "Paris" in templated["completion"] and templated["finished"]
    assert raw["prompt_ids"] == tok(question, add_special_tokens=False)["input_ids"]


def test_cli_chat_template_flag_on_a_chat_tokenizer(tiny_dir, tmp_path):
    """A model folder whose tokenizer has a (non-tiny) chat template: the CLI renders plain prompts with it,
    --no-chat-template keeps the raw tokens, and the combination a strategy cannot honour is refused."""
    import json
    import shutil

    from typer.testing import CliRunner

    from alignkit import cli
    from alignkit.models.loading import load_tokenizer

    folder = tmp_path / "chat"
    shutil.copytree(tiny_dir, folder)
    tok = load_tokenizer(folder)
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %} "
    tok.save_pretrained(str(folder))
    runner = CliRunner()
    rows = {}
    for flag in ("--chat-template", "--no-chat-template"):
        out = tmp_path / f"{flag}.jsonl"
        result = runner.invoke(cli.app, ["generate", str(folder), "-p", PROMPTS[0], "--n", "2", "--max-new-tokens", "3", "--out", str(out), flag])
        assert result.exit_code == 0, result.output
        rows[flag] = [json.loads(line) for line in out.read_text().splitlines()]
    rendered = tok(f"<|user|>{PROMPTS[0]}<|end|><|assistant|> ", add_special_tokens=False)["input_ids"]
    assert [r["prompt_ids"] for r in rows["--chat-template"]] == [rendered, rendered]
    assert [r["prompt_ids"] for r in rows["--no-chat-template"]] == [tok(PROMPTS[0], add_special_tokens=False)["input_ids"]] * 2
    assert {r["prompt"] for rs in rows.values() for r in rs} == {PROMPTS[0]}
    out = tmp_path / "strategy.jsonl"
    result = runner.invoke(cli.app, ["generate", str(folder), "-p", PROMPTS[0], "--max-new-tokens", "3", "--strategy", "sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt_ids"] == rendered and row["prompt"] == PROMPTS[0]  # a strategy sees the same rendering
    result = runner.invoke(cli.app, ["generate", str(folder), "-p", PROMPTS[0], "--no-chat-template", "--strategy", "sample"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: --no-chat-template with --strategy: the decoding strategies render plain-text prompts with the chat template; "
        "drop --strategy or --no-chat-template"]
