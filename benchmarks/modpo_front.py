"""Evidence: MODPO traces a sentiment-brevity front comparable to one scalarised-preference DPO policy per weight.

    python benchmarks/modpo_front.py --sft runs/sft-mo/final --out runs/modpo-front --figure docs/figures/modpo_front.png

The multi-objective task has two gold attributes that trade off (sentiment grows with every positive
clause, brevity falls with every clause). From one SFT start, for each weight ``w`` on sentiment:

* ``modpo`` — MODPO on pairs labelled by **sentiment only** (Bradley–Terry on the sentiment attribute,
  ``task.objective_weights=[1, 0]``), the brevity margin ``(1 − w)(b(y_w) − b(y_l))`` from the task's gold
  brevity attribute: one preference data set for every weight;
* ``dpo_scalarised`` — the baseline: DPO on pairs labelled by the scalarised gold reward ``w · sentiment +
  (1 − w) · brevity`` (``task.objective_weights=[w, 1 − w]``), a new preference data set per weight. This
  is the cheapest fair stand-in for the paper's per-weight baseline (MORLHF: PPO on ``w·r`` per weight): it
  gets the scalarised preference for free, which MODPO has to build from sentiment pairs and a reward.

Same prompts, pair count, steps, β and learning rate everywhere. Each policy is evaluated on held-out
prompts (``--eval-prompts`` × 2 samples at temperature 1): mean sentiment, mean brevity (with standard
errors) and the malformed share. Results go to ``<out>/results.json`` and the figure (the two fronts in the
brevity-sentiment plane, with the SFT start).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.evaluation.metrics import mean_and_se


def evaluate(model_dir: Path, task, prompts: list[str], seed: int) -> dict:
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.rollout.generate import generate

    tokenizer, model = load_tokenizer(model_dir), load_policy_for_inference(model_dir)
    samples = generate(model, tokenizer, prompts, n=2, max_new_tokens=48, seed=seed)
    parts = task.gold_rewards([s.prompt for s in samples], [s.completion for s in samples], per_attribute=True)
    out = {"n": len(samples), "malformed": sum(v < -1 for v in parts["sentiment"]) / len(samples)}
    for name in ("sentiment", "brevity"):
        out[name], out[f"{name}_se"] = mean_and_se(parts[name])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True, help="the SFT start on the multi-objective task's language (recipes/sft.yaml task.name=multi_objective)")
    parser.add_argument("--out", default="runs/modpo-front")
    parser.add_argument("--weights", default="0.2,0.5,0.8", help="weights w on sentiment")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=1.5)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="modpo,dpo_scalarised")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--reuse", default="", help="comma-separated earlier --out folders: a finished <dir>/<method>-w<w>/final there is evaluated instead of retrained")
    parser.add_argument("--skip-done", action="store_true", help="keep the points already in <out>/results.json (same settings) instead of re-running them")
    args = parser.parse_args(argv)

    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task("multi_objective")
    prompts = task.prompts(args.eval_prompts, "test")
    weights = [float(w) for w in args.weights.split(",")]
    common = [f"model.path={args.sft}", f"task.n_train={args.pairs}", "task.n_eval=0", "task.label_temperature=0.25", f"train.lr={args.lr}",
              f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.progress=false", "train.overwrite=true", "train.eval_every=null",
              f"train.seed={args.seed}", "train.warmup_ratio=0.1", f"dpo.beta={args.beta}", "data.kind=pair", "data.max_length=96"]
    earlier = out / "results.json"
    results = json.loads(earlier.read_text()) if earlier.exists() else {}
    results["settings"] = vars(args)
    if "start" not in results:
        results["start"] = evaluate(Path(args.sft), task, prompts, args.seed + 1)
        print("start", json.dumps(results["start"]), flush=True)
    for method in args.methods.split(","):
        results.setdefault(method, {})
        for w in weights:
            if method == "modpo":
                base = {"algorithm": "feedback"}
                overrides = ["task.name=multi_objective", "task.objective_weights=[1.0,0.0]", "feedback.method=modpo", f"feedback.modpo.weight={w}",
                             "feedback.modpo.margin_reward=attribute:brevity"]
            elif method == "dpo_scalarised":
                base = {"algorithm": "dpo"}
                overrides = ["task.name=multi_objective", f"task.objective_weights=[{w},{1 - w}]"]
            else:
                raise SystemExit(f"--methods: unknown method {method!r}; allowed: modpo, dpo_scalarised")
            if args.skip_done and str(w) in results[method]:
                print(method, w, "kept from", earlier, flush=True)
                continue
            run_dir = out / f"{method}-w{w}"
            earlier_finals = [Path(d) / run_dir.name / "final" for d in args.reuse.split(",") if d]
            found = [f for f in earlier_finals if (f / "model.safetensors").exists()]
            if found:
                final = found[0]
                print(method, w, "reusing the trained policy", final, flush=True)
            else:
                final = train(load_recipe(base, [*common, *overrides, f"train.output_dir={run_dir}"]))
            results[method][str(w)] = evaluate(final, task, prompts, args.seed + 1)
            print(method, w, json.dumps(results[method][str(w)]), flush=True)
            earlier.write_text(json.dumps(results, indent=2) + "\n")
    earlier.write_text(json.dumps(results, indent=2) + "\n")
    if args.figure:
        figure(results, Path(args.figure))
    return results


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    styles = {"modpo": ("#c44e52", "o", "MODPO (sentiment pairs + brevity margin)"), "dpo_scalarised": ("#4c72b0", "s", "DPO on w-scalarised pairs (one data set per w)")}
    for method, (color, marker, label) in styles.items():
        points = results.get(method) or {}
        if not points:
            continue
        ws = sorted(points, key=float)
        xs, ys = [points[w]["brevity"] for w in ws], [points[w]["sentiment"] for w in ws]
        ax.errorbar(xs, ys, xerr=[points[w]["brevity_se"] for w in ws], yerr=[points[w]["sentiment_se"] for w in ws], color=color, marker=marker,
                    label=label, capsize=2, linewidth=1)
        for w, x, y in zip(ws, xs, ys):
            ax.annotate(f"w={float(w):g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    s = results["start"]
    ax.scatter([s["brevity"]], [s["sentiment"]], color="#777777", marker="x", label="SFT start", zorder=5)
    ax.set_xlabel("mean brevity (gold)")
    ax.set_ylabel("mean sentiment (gold)")
    ax.set_title("sentiment-brevity front, one policy per weight w on sentiment", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
