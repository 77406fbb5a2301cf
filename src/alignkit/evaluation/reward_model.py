"""Evaluating a reward source on held-out preference pairs.

* ``accuracy``: fraction of pairs with r(chosen) > r(rejected) (ties count ½).
* ``ece``: expected calibration error of p = σ(r_c − r_r) as P(chosen ≻ rejected). Each pair is counted
  in both orders — (p, outcome 1) and (1 − p, outcome 0) — so the outcomes are not all 1; 10 equal-width
  bins; ECE = Σ_b (n_b / n) |mean p_b − frequency_b|.
* ``by_margin``: accuracy per bucket of the pair's margin (the data's ``margin`` field, or |Δ gold| on a
  built-in task), quartile edges.
* with a built-in task: ``gold_pearson`` / ``gold_spearman`` between the reward and the gold reward over
  every completion, and ``bayes_accuracy`` = mean over pairs of σ(|Δ gold| / T), the best expected
  accuracy on labels drawn by Bradley–Terry at temperature T.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .groups import accuracy_by


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    # average ranks over ties
    values = x[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        if j > i:
            ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else float("nan")


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(_ranks(x), _ranks(y))


def expected_calibration_error(p_chosen: torch.Tensor, bins: int = 10) -> float:
    p = torch.cat([p_chosen.double(), 1 - p_chosen.double()])
    outcome = torch.cat([torch.ones(len(p_chosen)), torch.zeros(len(p_chosen))]).double()
    idx = torch.clamp((p * bins).long(), max=bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += float(sel.sum()) / len(p) * abs(float(p[sel].mean()) - float(outcome[sel].mean()))
    return ece


def accuracy_by_bucket(correct: torch.Tensor, margins: torch.Tensor, n_buckets: int = 4) -> list[dict[str, Any]]:
    qs = torch.quantile(margins.double(), torch.linspace(0, 1, n_buckets + 1, dtype=torch.float64)).tolist()
    edges = sorted(set(qs))
    rows = []
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        sel = (margins >= lo) & ((margins < hi) if k < len(edges) - 2 else (margins <= hi))
        if sel.any():
            bucket = f"[{lo:.3g}, {hi:.3g}{']' if k == len(edges) - 2 else ')'}"
            rows.append({"bucket": bucket, "n": int(sel.sum()), "accuracy": float(correct[sel].mean())})
    return rows


def evaluate_pairs(source: Any, rows: list[dict[str, Any]], task: Any = None, temperature: float | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Metrics of ``source`` (a :class:`RewardSource`) on pair rows {prompt, chosen, rejected[, margin]}."""
    if not rows:
        raise ValueError("no pairs to evaluate")
    prompts = [r["prompt"] for r in rows]
    n = len(rows)
    scores = source.score(prompts + prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows], progress=progress).double()
    rc, rr = scores[:n], scores[n:]
    correct = (rc > rr).double() + 0.5 * (rc == rr).double()
    p = torch.sigmoid(rc - rr)
    out: dict[str, Any] = {
        "n_pairs": n,
        "accuracy": float(correct.mean()),
        "ece": expected_calibration_error(p),
        "mean_margin": float((rc - rr).mean()),
        "reward_mean": float(scores.mean()),
        "reward_std": float(scores.std()),
    }
    margins = None
    if all("margin" in r and r["margin"] is not None for r in rows):
        margins = torch.tensor([float(r["margin"]) for r in rows], dtype=torch.float64)
    if task is not None:
        gold = torch.tensor(task.gold_rewards(prompts + prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]), dtype=torch.float64)
        gap = (gold[:n] - gold[n:]).abs()
        out["gold_pearson"] = pearson(scores, gold)
        out["gold_spearman"] = spearman(scores, gold)
        out["gold_agreement"] = float(((rc - rr) * (gold[:n] - gold[n:]) > 0).double()[gap > 0].mean()) if (gap > 0).any() else float("nan")
        if temperature is not None:
            out["bayes_accuracy"] = float(torch.sigmoid(gap / temperature).mean())
        if margins is None:
            margins = gap
    if margins is not None:
        out["by_margin"] = accuracy_by_bucket(correct, margins)
    for key in ("group", "user"):  # rows that name who labelled them: accuracy per group / user, the worst one
        out.update(accuracy_by(rc.tolist(), rr.tolist(), [r.get(key) for r in rows], key))
    return out


def write_reward_eval(folder: Path, title: str, result: dict[str, Any]) -> Path:
    """``reward_eval.json`` and ``report.html`` in ``folder``."""
    from .report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reward_eval.json").write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if not isinstance(v, list)}
    blocks: list[tuple[str, Any]] = [("Reward model evaluation", summary)]
    if result.get("by_margin"):
        blocks.append(("Accuracy by margin bucket", result["by_margin"]))
    return write_report(folder, title, blocks)
