"""Preference pairs from a policy's own samples, labelled by a task's oracle (used by the demo and the bench)."""

from __future__ import annotations

from typing import Any

from ..rollout.generate import generate
from ..tasks import flip_labels


def sample_pairs(
    model,
    tokenizer,
    task,
    prompts: list[Any],
    *,
    sample_seed: int,
    label_seed: int,
    temperature: float = 0.25,
    label_noise: float = 0.0,
    noise_seed: int | str | None = None,
    max_new_tokens: int = 48,
    progress: bool = False,
) -> list[dict]:
    """Two samples per prompt from ``model``, labelled by ``task.label_pairs`` (Bradley–Terry on the gold
    reward at ``temperature``, or the task's own oracle), then label noise: each row's labels are swapped
    with probability ``label_noise`` (draws seeded by ``noise_seed``, default ``label_seed``).

    A sample that is only the stop token decodes to "", which pair data does not allow: such pairs are
    left out *before* labelling, so the labels of the other pairs do not depend on them.
    """
    samples = generate(model, tokenizer, prompts, n=2, max_new_tokens=max_new_tokens, seed=sample_seed, progress=progress)
    both = [(a, b) for a, b in zip(samples[0::2], samples[1::2]) if a.completion.strip() and b.completion.strip()]
    rows = task.label_pairs([a.prompt for a, _ in both], [a.completion for a, _ in both], [b.completion for _, b in both],
                            temperature=temperature, seed=label_seed)
    return flip_labels(rows, label_noise, label_seed if noise_seed is None else noise_seed)
