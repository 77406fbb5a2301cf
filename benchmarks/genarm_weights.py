"""GenARM's run-time weights on the multi-objective task: two autoregressive reward models, one per attribute
(sentiment, brevity), guide one frozen base model with weights (w, 1 - w); sweeping w moves the samples along the
sentiment-brevity trade-off without retraining anything (Xu et al. 2025, "GenARM", multi-objective alignment).

    python benchmarks/genarm_weights.py --base runs/sft/final --out docs/figures

trains the two ARMs first when they are not there (``recipes/decoding/arm.yaml`` on the ``multi_objective`` task
with ``task.objective_weights`` [1, 0] and [0, 1]: Bradley-Terry pairs on one attribute each, into
``--arms/arm-sentiment`` and ``--arms/arm-brevity``), then decodes the task's held-out prompts with
``genarm`` (``arm=[sentiment, brevity]``, ``weights=[w, 1 - w]``) for every w and every setting of ``--settings``
(``beta:scale`` pairs, ``scale`` the strategy's ``none`` or ``std``), scores each sample's two gold attributes, and
writes ``genarm_weights.png`` (one curve per setting) and ``genarm_weights.json`` under ``--out``.

    python benchmarks/genarm_weights.py --base runs/sft/final --settings 0.5:none,2:none,4:none,0.5:std,1:std
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ATTRIBUTES = {"sentiment": (1.0, 0.0), "brevity": (0.0, 1.0)}


def train_arm(base: Path, out: Path, weights: tuple[float, float], steps: int) -> Path:
    """One ARM from ``base`` on the multi-objective task's pairs labelled on ``weights`` (one attribute)."""
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    if (out / "final" / "config.json").exists():
        return out / "final"
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/decoding/arm.yaml", [
        f"model.path={base}", "task.name=multi_objective", f"task.objective_weights=[{weights[0]},{weights[1]}]",
        f"train.output_dir={out}", f"train.max_steps={steps}", "train.progress=false"])
    return Path(train(recipe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=False, help="the frozen base model (the SFT model of recipes/sft.yaml)")
    parser.add_argument("--arms", type=Path, default=Path("runs/genarm-weights"), help="where the two ARMs are (trained there if missing)")
    parser.add_argument("--arm-steps", type=int, default=128)
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="the sentiment ARM's weights w (the brevity ARM's: 1 - w)")
    parser.add_argument("--settings", default="0.5:none,2:none,4:none", help="comma-separated beta:scale pairs, one sweep of w each")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --out/genarm_weights.json")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    if args.plot_only:
        return plot(json.loads((args.out / "genarm_weights.json").read_text()), args.out)
    if args.base is None:
        parser.error("needs --base (or --plot-only)")

    from alignkit.evaluation.metrics import mean_and_se
    from alignkit.evaluation.policy import strategy_and_score
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.tasks import get_task

    arms = {name: train_arm(args.base, args.arms / f"arm-{name}", w, args.arm_steps) for name, w in ATTRIBUTES.items()}
    task = get_task("multi_objective")
    prompts = task.prompts(args.prompts, "test")
    tok, base = load_tokenizer(args.base), load_policy_for_inference(args.base)
    models = {name: load_policy_for_inference(path) for name, path in arms.items()}

    def point(label: str, strategy: str, options: dict[str, Any], **extra) -> dict[str, Any]:
        began = time.perf_counter()
        scored, result = strategy_and_score(base, tok, task, prompts, strategy, options, reference=base, max_new_tokens=args.max_new_tokens, seed=0)
        gold = task.gold_rewards(scored.prompts, scored.completions, per_attribute=True)
        p = {"label": label, **extra, "kl": (scored.kl or {}).get("kl_k1"), "malformed": scored.malformed(task),
             "clauses": sum(len(task.parse(pr, c) or []) for pr, c in zip(scored.prompts, scored.completions)) / len(prompts),
             "seconds": round(time.perf_counter() - began, 1)}
        for key in ("sentiment", "brevity"):
            p[key], p[key + "_se"] = mean_and_se(gold[key])
        print(json.dumps(p), flush=True)
        return p

    settings = []
    for item in args.settings.split(","):
        beta, _, scale = item.partition(":")
        settings.append((float(beta), scale or "none"))
    points = [point("base (sample)", "sample", {})]
    for beta, scale in settings:
        for w in [float(x) for x in args.weights.split(",")]:
            points.append(point(f"beta={beta:g} scale={scale} w={w:g}", "genarm", {"arm": [models["sentiment"], models["brevity"]],
                                "weights": [w, 1.0 - w], "beta": beta, "scale": scale}, w=w, beta=beta, scale=scale))
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"base": str(args.base), "arms": {k: str(v) for k, v in arms.items()}, "settings": [f"{b:g}:{s}" for b, s in settings],
            "prompts": args.prompts, "points": points}
    (args.out / "genarm_weights.json").write_text(json.dumps(data, indent=1))
    plot(data, args.out)


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    curves: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for p in data["points"]:
        if "w" in p:
            curves.setdefault((p["beta"], p.get("scale", "none")), []).append(p)
    for (beta, scale), guided in curves.items():
        ax.errorbar([p["brevity"] for p in guided], [p["sentiment"] for p in guided], xerr=[p["brevity_se"] for p in guided],
                    yerr=[p["sentiment_se"] for p in guided], fmt="o-" if scale == "none" else "s--", capsize=2, ms=4,
                    label=f"GenARM (w, 1 − w), β {beta:g}, scale {scale}")
        for p in guided:
            ax.annotate(f"{p['w']:g}", (p["brevity"], p["sentiment"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for p in data["points"]:
        if "w" not in p:
            ax.errorbar(p["brevity"], p["sentiment"], xerr=p["brevity_se"], yerr=p["sentiment_se"], fmt="s", color="grey", capsize=2, label=p["label"])
    ax.set(xlabel="gold brevity (1 − (clauses − 1)/2)", ylabel="gold sentiment (sum of adjective values / 3)",
           title="multi-objective task: the sentiment ARM's weight w")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "genarm_weights.png", dpi=150)


if __name__ == "__main__":
    main()
