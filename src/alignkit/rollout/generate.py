"""Sampling completions with the ``transformers`` backend.

Prompts are encoded exactly as the data layer encodes them (plain text without special tokens, or the
chat template with the generation prompt), left-padded, and sampled in batches with the KV cache; rows
stop at EOS (or the chat template's end-of-turn token). Each sample keeps its prompt and completion token
ids, so its log-probs can be recomputed exactly by the trainer's kernel (the completion ids include the
stop token when one was produced, matching the training convention that EOS is a target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.collate import collate_sequences
from ..data.encode import Encoder
from ..models.logprobs import TargetLogProbs


@dataclass
class Sample:
    prompt: Any
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id]
    end = tokenizer.convert_tokens_to_ids("<|end|>") if "<|end|>" in tokenizer.get_vocab() else None
    if end is not None and end != tokenizer.unk_token_id:
        ids.append(end)
    return ids


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[Any],
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    batch_size: int = 64,
    seed: int | None = 0,
    progress: bool = False,
) -> list[Sample]:
    """``n`` samples for each prompt, grouped by prompt (sample ``i*n + j`` is prompt ``i``'s j-th)."""
    from ..engine.trainer import make_progress

    encoder = Encoder(tokenizer, max_length=10**9)
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer)
    jobs = [(p, encoder.prompt_ids(p)) for p in prompts for _ in range(n)]
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    samples: list[Sample] = []
    with make_progress(progress) as bar_progress:
        bar = bar_progress.add_task("generate", total=len(jobs), info="")
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for i, (_, ids) in enumerate(chunk):
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention[i, width - len(ids) :] = 1
            kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            if greedy:
                kwargs.update(do_sample=False)
            else:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
            for (prompt, ids), row in zip(chunk, out[:, width:].tolist()):
                completion, finished = [], False
                for token in row:
                    completion.append(token)
                    if token in stops:
                        finished = True
                        break
                text = tokenizer.decode(completion, skip_special_tokens=True)
                samples.append(Sample(prompt, text, ids, completion, finished))
            bar_progress.update(bar, advance=len(chunk))
    model.train(was_training)
    return samples


@torch.no_grad()
def sample_logprobs(model, samples: list[Sample], pad_id: int, batch_size: int = 64, temperature: float = 1.0) -> torch.Tensor:
    """Summed completion log-probs [N] of ``samples`` under ``model`` (the trainer's convention)."""
    module = TargetLogProbs(model, temperature)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        ids = [s.prompt_ids + s.completion_ids for s in chunk]
        masks = [[0] * len(s.prompt_ids) + [1] * len(s.completion_ids) for s in chunk]
        batch = collate_sequences(ids, masks, pad_id)
        logps = module(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["loss_mask"].to(device))
        out.append(logps.sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)
