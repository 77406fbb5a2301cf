"""Evidence for docs/results.md (run the SFT stage of the recipe first).

    python recipes/agents/evidence.py calculator [--steps 20]    # RL with and without the calc tool
    python recipes/agents/evidence.py guess_number [--steps 20] [OVERRIDES]  # regret of the guessing game along GRPO

calculator: both runs are recipes/agents/calculator_grpo.yaml with the same budget (steps, prompts, samples,
seed) from the same SFT model; the second offers no tool (`rl.env.tools=[]`: a call is answered "error: unknown
tool"), so the policy must answer from its head. guess_number: recipes/agents/guess_number_grpo.yaml. Writes
<out>/summary.json and docs/figures/agents_<env>.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# env -> (recipe, {label: overrides}, the two metrics plotted, the first one's axis label)
SETUPS = {
    "calculator": ("recipes/agents/calculator_grpo.yaml", {"with the calc tool": [], "without a tool (rl.env.tools=[])": ["rl.env.tools=[]"]},
                   ("success", "tool_calls"), "exact answers"),
    "guess_number": ("recipes/agents/guess_number_grpo.yaml", {"GRPO": []}, ("regret", "success"), "regret (wrong guesses per game)"),
}


def run(env: str, steps: int, out: Path, settings: list[str]) -> dict:
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    recipe, runs, (first, second), _ = SETUPS[env]
    summary = {}
    for label, extra in runs.items():
        folder = out / ("base" if not extra else "variant")
        overrides = [f"train.output_dir={folder}", f"train.max_steps={steps}", f"train.eval_every={steps // 2}", "train.progress=false",
                     "task.n_eval=128", *settings, *extra]
        if not (folder / "final").exists():
            train(load_recipe(ROOT / recipe, overrides))
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        rows = [m for m in lines if f"env/{first}" in m and "loss" in m]
        summary[label] = {first: [m[f"env/{first}"] for m in rows], second: [m.get(f"env/{second}", 0.0) for m in rows],
                          "eval": [{"step": m["step"], **{k.removeprefix("eval/"): v for k, v in m.items() if k.startswith("eval/")}}
                                   for m in lines if f"eval/env/{first}" in m]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def plot(env: str, summary: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, (first, second), ylabel = SETUPS[env]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, s in summary.items():
        axes[0].plot(range(1, len(s[first]) + 1), s[first], label=f"{label} (rollouts)")
        axes[0].plot([e["step"] for e in s["eval"]], [e[f"env/{first}"] for e in s["eval"]], "o--", label=f"{label} (held-out)")
        axes[1].plot(range(1, len(s[second]) + 1), s[second], label=label)
    axes[0].set(xlabel="GRPO step", ylabel=ylabel, title=f"{env} episodes")
    axes[1].set(xlabel="GRPO step", ylabel=second.replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    figure = ROOT / f"docs/figures/agents_{env}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("env", choices=sorted(SETUPS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every run, e.g. train.lr=2e-3")
    args = parser.parse_intermixed_args()
    summary = run(args.env, args.steps, args.out or Path(f"runs/agents/evidence-{args.env}"), args.overrides)
    print(plot(args.env, summary))
    print(json.dumps({k: v["eval"] for k, v in summary.items()}, indent=1))


if __name__ == "__main__":
    main()
