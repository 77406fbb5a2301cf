"""Activation steering: contrastive activation addition (CAA; Rimsky et al. 2024, "Steering Llama 2 via
Contrastive Activation Addition"; Turner et al. 2023, ActAdd).

The steering vector at decoder layer ``l`` is the difference of the mean residual-stream activations (the
layer's output hidden state, averaged over the completion's tokens) on positive and negative examples::

    v_l = mean_{(x, y+)} h_l(x, y+) - mean_{(x, y-)} h_l(x, y-)

and generation adds ``alpha * v_l`` to layer ``l``'s output at every position (``positions="all"``) or at the
positions that produce completion tokens (``positions="completion"``: the prompt's last token and every new
one) through a forward hook (:class:`Steering`); the model's weights are untouched and the hook is removed
afterwards. :func:`layer_search` tries every layer and keeps the one that moves a reward most.

**Steering as an attack / audit.** The same mechanism with a negative ``alpha`` (or the vector of swapped
examples) pushes the model *against* the behaviour the examples show: ``with Steering(model, v, layer, -8):``
around any evaluation measures how easily an aligned model is steered off its alignment.
"""

from __future__ import annotations

import json
import random
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .base import STRATEGIES, Context, Decoding
from .sampling import plain_sample


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM (``model.model.layers`` for Llama-like models; else the first module
    list with ``config.num_hidden_layers`` entries)."""
    core = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(core, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return layers
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"activation steering: cannot find the decoder layers of {type(model).__name__}")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class Steering:
    """A context manager adding ``alpha * vector`` to the output of decoder layer ``layer`` of ``model``
    (``positions``: ``"all"`` or ``"completion"``, see the module docstring); ``alpha = 0`` changes nothing."""

    def __init__(self, model, vector: torch.Tensor, layer: int, alpha: float, positions: str = "all"):
        if positions not in ("all", "completion"):
            raise ValueError(f"steering positions must be 'all' or 'completion' (got {positions!r})")
        layers = decoder_layers(model)
        if not -len(layers) <= layer < len(layers):
            raise ValueError(f"steering layer {layer} out of range: the model has {len(layers)} layers")
        self.module, self.vector, self.alpha, self.positions = layers[layer], vector, float(alpha), positions
        self.handle = None

    def hook(self, module, args, output):
        hidden = _hidden(output)
        add = (self.alpha * self.vector).to(hidden.device, hidden.dtype)
        if self.positions == "all" or hidden.shape[1] == 1:
            hidden = hidden + add
        else:  # a prefill: only the last position produces a completion token
            hidden = torch.cat([hidden[:, :-1], hidden[:, -1:] + add], dim=1)
        return _replace_hidden(output, hidden)

    def __enter__(self) -> "Steering":
        self.handle = self.module.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


@dataclass
class Contrast:
    """One contrastive example: a prompt with a positive and a negative completion."""

    prompt: Any
    positive: str
    negative: str


def task_contrasts(task, n: int, seed: int = 0) -> list[Contrast]:
    """``n`` contrasts from ``task``'s own base distribution: two completions per train prompt, the one with the
    higher gold reward positive (ties are redrawn, at most 20 times, then skipped)."""
    rng = random.Random(f"steering-{seed}")
    out = []
    for prompt in task.prompts(n, "train"):
        for _ in range(20):
            a, b = task.sample_completion(prompt, rng), task.sample_completion(prompt, rng)
            ra, rb = task.gold_rewards([prompt, prompt], [a, b])
            if ra != rb:
                out.append(Contrast(prompt, a, b) if ra > rb else Contrast(prompt, b, a))
                break
    return out


def read_contrasts(spec) -> list[Contrast]:
    """Contrasts from ``spec``: a JSONL file of ``prompt``, ``chosen``, ``rejected`` rows (the pair format), a
    list of such mappings, a list of :class:`Contrast`, or ``task[:NAME]`` (:func:`task_contrasts`, 64 pairs)."""
    if isinstance(spec, str) and (spec == "task" or spec.startswith("task:")):
        from ..tasks import get_task

        name = spec.split(":", 1)[1] if ":" in spec else "sentiment"
        return task_contrasts(get_task(name), 64)
    if isinstance(spec, (str, Path)):
        rows = [json.loads(line) for line in Path(spec).read_text().splitlines() if line.strip()]
    else:
        rows = list(spec)
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, Contrast):
            out.append(r)
        elif isinstance(r, dict) and {"prompt", "chosen", "rejected"} <= set(r):
            out.append(Contrast(r["prompt"], r["chosen"], r["rejected"]))
        else:
            raise ValueError(f"steering examples: row {i} needs prompt, chosen and rejected")
    if not out:
        raise ValueError("steering examples: no contrasts")
    return out


@torch.no_grad()
def completion_activations(model, tokenizer, prompts: Sequence[Any], completions: Sequence[str], layers: Sequence[int],
                           batch_size: int = 32) -> torch.Tensor:
    """``[len(layers), N, hidden]``: per example, the output of each decoder layer in ``layers`` averaged over
    the completion's token positions (prompt + completion encoded as the data layer encodes them)."""
    from ..data.encode import Encoder
    from ..rollout.engine import left_pad

    encoder = Encoder(tokenizer, max_length=10**9)
    blocks = decoder_layers(model)
    seqs, spans = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p_ids = encoder.prompt_ids(p)
        c_ids = encoder.completion_ids(p, p_ids, c, i, "completion")
        seqs.append(p_ids + c_ids)
        spans.append(len(c_ids))
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(seqs), batch_size):
        ids, attention = left_pad(seqs[start : start + batch_size], tokenizer.pad_token_id)
        ids, attention = ids.to(device), attention.to(device)
        captured: dict[int, torch.Tensor] = {}
        with ExitStack() as stack:
            for layer in layers:
                handle = blocks[layer].register_forward_hook(lambda m, a, o, layer=layer, into=captured: into.__setitem__(layer, _hidden(o).float()))
                stack.callback(handle.remove)
            model(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0), use_cache=False)
        width = ids.shape[1]
        mask = torch.zeros_like(attention, dtype=torch.float32)
        for j, n in enumerate(spans[start : start + batch_size]):
            mask[j, width - n :] = 1.0  # left padding: the completion is the last n positions
        out.append(torch.stack([(captured[layer] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) for layer in layers]))
    return torch.cat(out, dim=1)


def caa_vectors(model, tokenizer, contrasts: Sequence[Contrast], layers: Sequence[int]) -> torch.Tensor:
    """``[len(layers), hidden]``: the CAA vector of every layer in ``layers`` (mean positive minus mean negative)."""
    prompts = [c.prompt for c in contrasts]
    pos = completion_activations(model, tokenizer, prompts, [c.positive for c in contrasts], layers)
    neg = completion_activations(model, tokenizer, prompts, [c.negative for c in contrasts], layers)
    return pos.mean(1) - neg.mean(1)


def save_vector(path, vector: torch.Tensor, layer: int) -> Path:
    """Save a steering vector (safetensors, with its layer) for ``vector=PATH``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"vector": vector.detach().float().cpu().contiguous()}, str(path), metadata={"layer": str(int(layer))})
    return path


def load_vector(path) -> tuple[torch.Tensor, int]:
    """A steering vector saved by :func:`save_vector`: (vector, layer)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("vector"), int(f.metadata()["layer"])


@dataclass
class LayerScore:
    layer: int
    reward: float
    vector_norm: float


def layer_search(ctx: Context, contrasts: Sequence[Contrast], alpha: float, reward, prompts: Sequence[Any], layers: Sequence[int] | None = None,
                 positions: str = "all") -> tuple[int, torch.Tensor, list[LayerScore]]:
    """Try every layer in ``layers`` (default: all): steer with that layer's CAA vector and ``alpha``, sample
    one completion per prompt of ``prompts`` with the call's settings and score it with ``reward``. Returns the
    layer that moves the mean reward furthest in ``alpha``'s direction, its vector, and every layer's score."""
    layers = list(range(len(decoder_layers(ctx.model)))) if layers is None else [int(x) for x in layers]
    vectors = caa_vectors(ctx.model, ctx.tokenizer, contrasts, layers)
    source = ctx.reward(reward)
    probe = Context(ctx.model, ctx.tokenizer, list(prompts), 1, ctx.sampling, ctx.batch_size, ctx.backend, ctx.cost, ctx.counter)
    scores = []
    for layer, vector in zip(layers, vectors):
        with Steering(ctx.model, vector, layer, alpha, positions):
            samples = probe.sample(1)
        r = source.score([s.prompt for s in samples], [s.completion for s in samples])
        scores.append(LayerScore(layer, float(r.mean()), float(vector.norm())))
    sign = 1.0 if alpha >= 0 else -1.0
    best = max(range(len(layers)), key=lambda i: sign * scores[i].reward)
    return layers[best], vectors[best], scores


@STRATEGIES.register("steer", family="activation steering", paper="Rimsky et al. 2024, CAA; Turner et al. 2023, ActAdd")
def steer(ctx: Context, vector=None, examples="task", layer="search", alpha: float = 4.0, positions: str = "all", reward="gold",
          search_prompts: int = 16, task: str = "sentiment") -> Decoding:
    """Sample from the model with ``alpha * v`` added to decoder layer ``layer``'s output. ``vector``: a file
    saved by :func:`save_vector` (its layer is used unless ``layer`` is a number) or a tensor; otherwise the CAA
    vector of ``examples`` (a pairs JSONL, ``task[:NAME]``, or a list). ``layer="search"`` runs
    :func:`layer_search` on ``search_prompts`` train prompts of ``task`` with ``reward`` (its cost
    is counted). A negative ``alpha`` steers against the examples (an attack / audit)."""
    stats: dict[str, Any] = {"alpha": alpha, "positions": positions}
    if vector is not None:
        v, saved_layer = load_vector(vector) if isinstance(vector, (str, Path)) else (torch.as_tensor(vector).float(), None)
        chosen = int(layer) if isinstance(layer, int) else saved_layer
        if chosen is None:
            raise ValueError("steer: a vector given as a tensor needs layer=N")
    else:
        contrasts = read_contrasts(examples)
        stats["contrasts"] = len(contrasts)
        if layer == "search":
            from ..tasks import get_task

            prompts = get_task(task).prompts(search_prompts, "train")
            chosen, v, scores = layer_search(ctx, contrasts, alpha, reward, prompts)
            stats["search"] = [s.__dict__ for s in scores]
        elif isinstance(layer, int):
            chosen, v = layer, caa_vectors(ctx.model, ctx.tokenizer, contrasts, [layer])[0]
        else:
            raise ValueError(f"steer: layer must be a layer index or 'search' (got {layer!r})")
    stats.update(layer=chosen, vector_norm=float(v.norm()))
    with Steering(ctx.model, v, chosen, alpha, positions):
        result = plain_sample(ctx)
    result.stats = stats
    return result
