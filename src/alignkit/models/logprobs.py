"""Per-token log-probabilities of the targets, without full-vocabulary fp32 logits.

Convention: for a sequence ``x_0 .. x_{T-1}`` with ``loss_mask``, the log-prob of token ``t`` (t >= 1) is
``log softmax(logits_{t-1} / temperature)[x_t]``; it is returned at position ``t`` and is zero wherever
``loss_mask[t] == 0``. The sequence log-prob is the sum over masked tokens (never a mean).

Packed rows (several sequences sharing a row, e.g. ``[prompt, chosen, rejected]``) break the "predicted by
position t-1" rule: the first rejected token is predicted by the last prompt token. For them the caller
passes ``source_index`` (for every target ``t``, the position whose hidden state predicts ``x_t``), a 4-D
``attention_mask`` (see :func:`packed_attention_mask`) and ``position_ids``; then ``loss_mask[t] == 1``
marks target ``t`` at any position.

:class:`TargetLogProbs` wraps a causal LM so that one forward returns these log-probs: it runs the
decoder, keeps only the hidden states that predict a masked target, and applies the output head to those
rows alone, in the model's compute precision, upcasting only the selected rows' logits to fp32 for the
log-softmax. Wrapping (rather than post-processing the logits) keeps DDP/FSDP hooks on the one forward.

At real vocabularies (32k-150k) the ``[targets x vocab]`` logits dominate memory: :func:`chunked_target_logps`
applies a plain linear head in chunks of rows and recomputes each chunk's logits in the backward, so no
``[targets x vocab]`` tensor is ever kept (forward and backward). ``TargetLogProbs`` uses it whenever the head
is a plain ``nn.Linear`` held whole by this process (not a LoRA, FSDP or ZeRO-3 wrapped head) and the caller
does not ask for the logits.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

# attention implementations that take a custom 4-D mask as ``attention_mask``
PACKABLE_ATTENTION = ("eager", "sdpa")


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):  # peft: LoRA layers live inside the base model's modules
        inner = inner.get_base_model()
    return inner


def attention_implementation(model: nn.Module) -> str | None:
    config = getattr(_unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None)


def supports_packing(model: nn.Module) -> bool:
    """Whether ``model`` accepts the custom 4-D masks of packed rows (eager or sdpa attention)."""
    return attention_implementation(model) in PACKABLE_ATTENTION


def packed_attention_mask(segment: torch.Tensor, group: torch.Tensor, kind: str = "bool", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[B, 1, T, T]`` mask of packed pair rows.

    Query ``q`` may attend key ``k`` when ``k <= q``, both belong to the same pair (``group``), and ``k``
    is a prompt token or in the same segment as ``q`` (so rejected tokens never see chosen ones). Padding
    attends only to itself (no empty rows). ``kind="bool"``: True where allowed (sdpa);
    ``kind="additive"``: 0 where allowed and ``finfo(dtype).min`` elsewhere (eager).
    """
    t = segment.shape[1]
    positions = torch.arange(t, device=segment.device)
    causal = positions[None, :] <= positions[:, None]  # [T(q), T(k)]
    same_group = group[:, :, None] == group[:, None, :]
    visible = (segment[:, None, :] == 0) | (segment[:, :, None] == segment[:, None, :])
    allowed = causal[None] & same_group & visible & (group[:, :, None] >= 0)
    allowed |= torch.eye(t, dtype=torch.bool, device=segment.device)[None]
    allowed = allowed[:, None]
    if kind == "bool":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def mask_for(model: nn.Module, segment: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """:func:`packed_attention_mask` in the form ``model``'s attention implementation takes."""
    if attention_implementation(model) == "eager":
        dtype = next(_unwrap(model).parameters()).dtype
        return packed_attention_mask(segment, group, "additive", dtype)
    return packed_attention_mask(segment, group, "bool")


def packed_target_logps(module: nn.Module, input_ids: torch.Tensor, segment: torch.Tensor, group: torch.Tensor, loss_mask: torch.Tensor,
                        position_ids: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """Log-probs of every target of packed rows, in ``loss_mask.nonzero()`` order ([n_targets]).

    ``module`` is a :class:`TargetLogProbs` (possibly DDP-wrapped, or a reference); the 4-D mask is built
    for its model's attention implementation. Callers scatter the values to where they belong: DPO sums
    them per (pair, chosen/rejected), online RL puts them back in the per-sequence layout."""
    inner = getattr(module, "module", module)  # DDP
    mask = mask_for(inner.model, segment, group)
    token_logps = module(input_ids, mask, loss_mask, position_ids, source_index)
    return token_logps[loss_mask.bool()]


# rows of logits per chunk: about 2**24 fp32 values (64 MiB) at any vocabulary
CHUNK_VALUES = 2**24


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class _Scratch(threading.local):
    """Flat buffers for the chunked head's temporaries, one set per thread, kept between calls on CPU.

    On CPU a fresh [chunk x vocabulary] tensor (tens of MiB) is a fresh mapping that page-faults on every
    allocation; writing into these buffers instead made the head about 3x faster at
    SmolLM2's 49k vocabulary (benchmarks/README.md, "Host allocator"). Accelerators have caching allocators:
    there every request is a plain ``torch.empty``."""

    def __init__(self):
        self.buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def view(self, name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = shape[0] * shape[1]
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        key = (name, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


_SCRATCH = _Scratch()


def _logits_into(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """hidden W^T + b in the weight's dtype, in a scratch buffer."""
    h = hidden.to(weight.dtype)
    out = _SCRATCH.view("logits", (h.shape[0], weight.shape[0]), weight.dtype, h.device)
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias, h, weight.t(), out=out)


def _fp32_tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The logits in fp32, divided by the temperature afterwards (the sampler's order of roundings), in place
    when they are fp32 already, else in the fp32 scratch buffer (``sub`` with ``out=`` and a dtype change is
    4x slower than ``copy_`` then in-place ops)."""
    x = logits if logits.dtype == torch.float32 else _SCRATCH.view("fp32", logits.shape, torch.float32, logits.device).copy_(logits)
    return x.div_(temperature) if temperature != 1.0 else x


def _add_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b, fused when a and b are fp32."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc += a @ b


# vocabulary columns per slice in the chunked head's backward: fixed, so a row's gradient is summed over the
# same slices in the same order whatever else is in the batch (micro-batch = full-batch invariance)
VOCAB_SLICE = 8192


class _ChunkedTargetLogProbs(torch.autograd.Function):
    """log softmax((h W^T + b) / temperature)[target] per row. The forward goes chunk of rows by chunk of
    rows (each row's log-sum-exp needs the whole vocabulary); the backward goes slice of the vocabulary by
    slice (:data:`VOCAB_SLICE` columns), recomputing the slice's logits: d/dlogits = (onehot(target) -
    softmax) * grad / temperature, with the softmax from the forward's log-sum-exp. Slicing the vocabulary
    writes each row of the weight's gradient once, in one matmul over the rows (no [vocab x hidden] partial
    sums to add up and cast, which cost more than the matmuls at 49k-token vocabularies on CPU); the hidden
    states' gradient, [rows x hidden], is the small sum, kept in fp32. Both directions hold one
    ``CHUNK_VALUES``-sized temporary of each kind at a time (:class:`_Scratch`)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            lse = torch.empty_like(out)
            for start in range(0, hidden.shape[0], chunk):
                end = start + chunk
                x = _fp32_tempered(_logits_into(hidden[start:end], w, b), temperature)
                target_logit = x.gather(-1, targets[start:end, None]).squeeze(-1)
                lse[start:end] = torch.logsumexp(x, dim=-1)
                out[start:end] = target_logit - lse[start:end]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.dtype = temperature, dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        temperature, dtype = ctx.temperature, ctx.dtype
        rows, vocab = hidden.shape[0], weight.shape[0]
        width = min(vocab, VOCAB_SLICE)
        step = max(1, CHUNK_VALUES // width)  # rows per block within a slice
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            g = grad.float()
            for start in range(0, vocab, width):
                end = min(start + width, vocab)
                w = weight[start:end].to(dtype)
                b = None if bias is None else bias[start:end].to(dtype)
                whole = rows <= step and grad_w is not None and grad_w.dtype == dtype  # the slice's weight gradient in one matmul
                acc = None if whole or not need_w else _SCRATCH.view("grad_w", (end - start, h.shape[1]), torch.float32, h.device).zero_()
                for r0 in range(0, rows, step):
                    r1 = min(r0 + step, rows)
                    logits = _logits_into(h[r0:r1], w, b)
                    gr, t = g[r0:r1], targets[r0:r1]
                    grad_logits = _fp32_tempered(logits, temperature).sub_(lse[r0:r1, None]).exp_().mul_(-gr[:, None])  # -softmax * grad
                    hit = ((t >= start) & (t < end)).nonzero().squeeze(-1)
                    grad_logits.index_put_((hit, t[hit] - start), gr[hit], accumulate=True)  # + onehot(target) * grad
                    if temperature != 1.0:
                        grad_logits.div_(temperature)
                    if need_b:
                        grad_b[start:end] += grad_logits.sum(0)
                    if dtype != torch.float32:
                        grad_logits = logits.copy_(grad_logits)  # the logits' buffer is free again
                    if need_h:
                        _add_product(grad_h[r0:r1], grad_logits, w)
                    if whole:
                        torch.mm(grad_logits.t(), h, out=grad_w[start:end])
                    elif need_w:
                        _add_product(acc, grad_logits.t(), h[r0:r1])
                if acc is not None:
                    grad_w[start:end] = acc
        return (None if grad_h is None else grad_h.to(hidden.dtype), grad_w, None if grad_b is None else grad_b.to(bias.dtype),
                None, None, None, None)


def chunked_target_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
                         temperature: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """``log softmax((hidden @ weight.T + bias) / temperature)[targets]`` for ``hidden`` [N, H], as fp32 [N],
    without a ``[N, vocab]`` tensor kept for the backward. The matmuls run in the autocast dtype when autocast
    is on (else the weight's dtype); the log-softmax in fp32, like the unchunked path."""
    chunk = chunk or max(1, CHUNK_VALUES // weight.shape[0])
    return _ChunkedTargetLogProbs.apply(hidden, weight, bias, targets, float(temperature), int(chunk), _compute_dtype(weight))


def _plain_head(head: nn.Module | None) -> bool:
    """A linear head this process holds whole: not LoRA-wrapped, FSDP2-sharded (DTensor) or ZeRO-3 partitioned."""
    if type(head) is not nn.Linear:
        return False
    weight = head.weight
    return type(weight) in (torch.Tensor, nn.Parameter) and not hasattr(weight, "ds_id") and weight.dim() == 2


class TargetLogProbs(nn.Module):
    """``forward(input_ids, attention_mask, loss_mask) -> [B, T]`` target log-probs (0 off the mask)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        source_index: torch.Tensor | None = None,
        return_logits: bool = False,
    ):
        """Target log-probs [B, T]; with ``return_logits`` also the fp32 (tempered) logits of the target
        rows [N, V] and their (row, column) positions, for token-level objectives such as TDPO's KL."""
        core = _unwrap(self.model)
        decoder = core.get_decoder() if hasattr(core, "get_decoder") else None
        head = core.get_output_embeddings()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if source_index is None:
            # target t is predicted by position t-1
            rows, cols = loss_mask[:, 1:].nonzero(as_tuple=True)
            cols = cols + 1
            sources = cols - 1
        else:
            rows, cols = loss_mask.nonzero(as_tuple=True)
            sources = source_index[rows, cols]
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        targets = input_ids[rows, cols]
        if decoder is not None and decoder is not core and head is not None:
            hidden = decoder(**kwargs).last_hidden_state
            if _plain_head(head) and not return_logits:
                picked = chunked_target_logps(hidden[rows, sources], head.weight, targets, head.bias, self.temperature)
                return out.index_put((rows, cols), picked)
            logits = head(hidden[rows, sources])
        else:
            logits = self.model(**kwargs).logits[rows, sources]
        logits = logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        out = out.index_put((rows, cols), picked)
        return (out, logits, (rows, cols)) if return_logits else out
