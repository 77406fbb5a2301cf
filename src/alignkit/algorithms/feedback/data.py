"""Critique data from a model's own samples (``alignkit critique``): sample completions of a task's
prompts, judge each with the task's programmatic critic (:mod:`alignkit.tasks.critics`), write rows."""

from __future__ import annotations

from pathlib import Path

from ...data.records import write_jsonl


def critique_samples(model_dir: str | Path, task_name: str = "sentiment", n_prompts: int = 256, split: str = "train", kind: str = "critique",
                     samples: int = 1, seed: int = 0, max_new_tokens: int = 48, temperature: float = 1.0, out: str | Path | None = None,
                     progress: bool = False) -> list[dict]:
    """``samples`` completions per prompt of ``task.prompts(n_prompts, split)`` from the model in
    ``model_dir``, each judged by the task's critic into a ``kind`` row (``critique`` or ``spans``); empty
    samples are left out. Written as JSON Lines to ``out`` when given. Returns the rows."""
    from ...models.loading import load_policy_for_inference, load_tokenizer
    from ...rollout.generate import generate
    from ...tasks import get_task
    from ...tasks.critics import FEEDBACK_KINDS, critic_for, critique_completions

    if kind not in FEEDBACK_KINDS:
        raise ValueError(f"critic rows are of kind {' or '.join(FEEDBACK_KINDS)}, not {kind!r}")
    task = get_task(task_name)
    critic_for(task)  # a task without a critic fails before any sampling
    tokenizer = load_tokenizer(model_dir)
    model = load_policy_for_inference(model_dir)
    prompts = task.prompts(n_prompts, split)
    drawn = generate(model, tokenizer, prompts, n=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, progress=progress)
    rows = critique_completions(task, [s.prompt for s in drawn], [s.completion for s in drawn], kind, seed=seed)
    if out is not None:
        write_jsonl(out, rows)
    return rows
