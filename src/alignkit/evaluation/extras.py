"""The metrics ``alignkit eval`` adds to the basic evaluation of a policy: KL (k1, k3), win rate, diversity,
the implicit-reward preference accuracy on held-out pairs and the run's chosen/rejected log-prob curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import metrics as M
from .policy import ReferenceEvaluator


def preference_accuracy(model_dir: str | Path, reference_dir: str | Path, rows: list[dict], beta: float = 1.0) -> float:
    """Held-out preference accuracy of the implicit reward β (log π − log π_ref) on pair rows."""
    from ..data.encode import Encoder
    from ..models.loading import load_policy_for_inference, load_tokenizer
    from ..rollout.generate import Sample, sample_logprobs

    tokenizer = load_tokenizer(model_dir)
    encoder = Encoder(tokenizer, max_length=10**9)
    encoded = [encoder.encode(r, "pair") for r in rows]
    chosen = [Sample(r["prompt"], r["chosen"], e["prompt_ids"], e["chosen_ids"], True) for r, e in zip(rows, encoded)]
    rejected = [Sample(r["prompt"], r["rejected"], e["prompt_ids"], e["rejected_ids"], True) for r, e in zip(rows, encoded)]
    policy, reference = load_policy_for_inference(model_dir), load_policy_for_inference(reference_dir)
    pad = tokenizer.pad_token_id
    return M.implicit_reward_accuracy(sample_logprobs(policy, chosen, pad), sample_logprobs(policy, rejected, pad),
                                      sample_logprobs(reference, chosen, pad), sample_logprobs(reference, rejected, pad), beta)


def run_metrics(policy, reference, tokenizer, task, n_prompts: int, samples: int, seed: int, run_dir: Path | None, model_dir: Path,
                reference_dir: Path | None, folder: Path,
                run_records: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The metrics ``alignkit eval`` adds to the basic evaluation: KL (k1, k3), win rate against the
    reference's samples, distinct-n, self-BLEU, the implicit-reward preference accuracy on held-out task
    pairs (when a reference is given) and the chosen/rejected log-prob curves of the run's metrics
    (``run_records``: the rows of its metrics.jsonl, read by the caller; ``run_dir`` gives its config.yaml)."""
    from ..tasks import task_rows
    from .report import plot_curves

    out: dict[str, Any] = {}
    blocks: list[tuple[str, Any]] = []
    if reference is not None:
        evaluator = ReferenceEvaluator(task, tokenizer, reference, task.prompts(n_prompts, "test"), n_samples=samples, max_new_tokens=48, seed=seed)
        point = evaluator.evaluate(policy, model_dir.name)
        out = {k: v for k, v in point.items() if k not in ("name", "samples", "kl", "gold_reward", "gold_reward_se", "length", "malformed")}
        beta = 1.0
        if run_dir is not None and (run_dir / "config.yaml").exists():
            beta = float((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("dpo", {}).get("beta", 1.0))
        try:
            rows = task_rows(task, "pair", min(256, 2 * n_prompts), "test")
            out["implicit_reward_accuracy"] = preference_accuracy(model_dir, reference_dir, rows, beta) if reference_dir else None
            out["implicit_reward_beta"] = beta
        except (ValueError, KeyError):
            pass
    if run_records:
        records = run_records
        curves = M.logprob_curves(records)
        if curves:
            out["logprob_curves"] = {k: v for k, v in curves.items()}
            keys = [k for k in ("logps/chosen", "logps/rejected", "eval/logps/chosen", "eval/logps/rejected") if k in curves]
            png = plot_curves({"run": records}, keys,
                              folder / "logprob_curves.png", "chosen / rejected log-probs")
            if png is not None and png.is_relative_to(folder):
                blocks.append(("Chosen / rejected log-probs", png))
    return out, blocks
