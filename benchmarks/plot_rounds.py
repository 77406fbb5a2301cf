"""Gold reward against KL to the start, per evaluated round, for iterative/online runs (their rounds/summary.json).

    python benchmarks/plot_rounds.py runs/online_dpo runs/xpo runs/nash_md --out docs/figures/online_variants.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def points(run: Path) -> tuple[list[float], list[float], int]:
    summary = json.loads((run / "rounds" / "summary.json").read_text())
    evals = [summary["start"]] + [r["eval"] for r in summary["rounds"] if r.get("eval")]
    labels = sum(r["examples"] for r in summary["rounds"])
    return [e.get("kl") or 0.0 for e in evals], [e["gold_reward"] for e in evals], labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("rounds.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in args.runs:
        kl, gold, labels = points(run)
        ax.plot(kl, gold, marker="o", label=f"{run.name} ({labels} labelled examples)")
        print(run.name, "labels", labels, " ".join(f"({k:.2f}, {g:+.3f})" for k, g in zip(kl, gold)))
    ax.set_xlabel("KL to the starting model (nats, sampled)")
    ax.set_ylabel("mean gold reward (held-out prompts)")
    ax.legend(fontsize=8)
    save_figure(fig, [ax], args.out)


def save_figure(fig, axes, out: Path) -> None:
    """Light grids on ``axes``, a tight layout, and the figure written to ``out`` (its folder made)."""
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main()
