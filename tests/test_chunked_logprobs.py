"""The chunked LM head (models/logprobs.py): target log-probs and their gradients without a [tokens x vocab]
tensor kept, equal to the plain log-softmax, through TargetLogProbs on a real model forward."""

import math

import pytest
import torch

from alignkit.models import logprobs
from alignkit.models.logprobs import TargetLogProbs, chunked_target_logps


def test_two_token_vocabulary_by_hand():
    # one row, h = [1], W = [[2], [0]], b = [0, 1]: logits (2, 1); log p(token 0) = 2 - log(e^2 + e^1)
    h = torch.tensor([[1.0]], requires_grad=True)
    w = torch.tensor([[2.0], [0.0]], requires_grad=True)
    b = torch.tensor([0.0, 1.0], requires_grad=True)
    out = chunked_target_logps(h, w, torch.tensor([0]), b)
    assert out.item() == pytest.approx(2 - math.log(math.e**2 + math.e))
    out.sum().backward()
    p0 = math.e**2 / (math.e**2 + math.e)  # d log p0 / d logits = (1 - p0, -p1)
    assert b.grad.tolist() == pytest.approx([1 - p0, -(1 - p0)])
    assert w.grad[:, 0].tolist() == pytest.approx([1 - p0, -(1 - p0)])  # times h = 1
    assert h.grad.item() == pytest.approx((1 - p0) * 2 + (-(1 - p0)) * 0)
    # temperature 2: logits (1, 0.5)
    tempered = chunked_target_logps(h.detach(), w.detach(), torch.tensor([1]), b.detach(), temperature=2.0)
    assert tempered.item() == pytest.approx(0.5 - math.log(math.e + math.e**0.5))


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("vocab_slice,values", [(8192, 2**24), (10, 2**24), (10, 70)])
def test_equals_full_log_softmax_with_gradients(chunk, temperature, vocab_slice, values, monkeypatch):
    """The forward in chunks of rows; the backward in vocabulary slices (one of 53 columns; five of 10 and one
    of 3) and, with 70 values per block, 7 rows at a time within each slice."""
    monkeypatch.setattr(logprobs, "VOCAB_SLICE", vocab_slice)
    monkeypatch.setattr(logprobs, "CHUNK_VALUES", values)
    torch.manual_seed(0)
    n, hidden, vocab = 37, 12, 53
    h = torch.randn(n, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden, requires_grad=True)
    b = torch.randn(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[:3] = torch.tensor([0, vocab - 1, 10])  # the first and last columns, and a slice's first
    upstream = torch.randn(n)
    chunked = chunked_target_logps(h, w, targets, b, temperature=temperature, chunk=chunk)
    full = torch.log_softmax((h @ w.T + b) / temperature, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(chunked, full, atol=1e-5)
    got = torch.autograd.grad((chunked * upstream).sum(), (h, w, b))
    want = torch.autograd.grad((full * upstream).sum(), (h, w, b))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


def _batch(tokenizer):
    texts = ["the soup was great", "a long and boring film that never ends"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    loss_mask = enc["attention_mask"].clone()
    loss_mask[:, :2] = 0
    return enc["input_ids"], enc["attention_mask"], loss_mask


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_target_logprobs_chunked_equals_unchunked_on_a_model(tiny_dir, tokenizer, monkeypatch, temperature):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert type(model.get_output_embeddings()) is torch.nn.Linear  # the chunked path is the one taken
    ids, attn, mask = _batch(tokenizer)
    module = TargetLogProbs(model, temperature)

    monkeypatch.setattr(logprobs, "CHUNK_VALUES", 3 * model.config.vocab_size)  # 3 rows per chunk
    chunked = module(ids, attn, mask)
    (chunked.sum()).backward()
    grads_chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    # the plain path: ask for the logits too (TDPO's path), which never chunks
    full, logits, _ = module(ids, attn, mask, return_logits=True)
    full.sum().backward()
    assert logits.shape[-1] == model.config.vocab_size
    assert torch.allclose(chunked, full, atol=1e-5)
    assert (chunked[mask == 0] == 0).all()
    for name, p in model.named_parameters():
        assert torch.allclose(grads_chunked[name], p.grad, atol=1e-5), name


def test_bf16_autocast_close_to_fp32(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    ids, attn, mask = _batch(tokenizer)
    module = TargetLogProbs(model)
    fp32 = module(ids, attn, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = module(ids, attn, mask)
        bf16.sum().backward()
    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16, fp32, atol=0.15)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
