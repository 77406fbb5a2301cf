"""Evidence: after DPA, the generated text moves along the sentiment-brevity trade-off as the direction v changes.

    python benchmarks/dpa.py --sft runs/sft/final --out runs/dpa-evidence --figure docs/figures/dpa_directions.png

From an SFT start, DPA (``recipes/feedback/dpa.yaml``: directions ``v = (cos θ, sin θ)`` over (sentiment,
brevity) with θ uniform in [0°, 90°], ``--samples`` completions per prompt and direction, the best by
``vᵀr`` (gold attributes of the multi-objective task) as the SFT target, ``--rounds`` rounds) is trained
once. Then, for each test angle θ, the policy is prompted with ``v(θ)`` on held-out prompts
(``--eval-prompts`` × 2 samples, temperature 1) and the mean gold sentiment and brevity of its samples are
measured; the SFT start given the same direction-conditioned prompts is the control (it never learnt to read
v). Results go to ``<out>/results.json`` and the figure (each attribute against θ, and the path in the
brevity-sentiment plane).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.evaluation.metrics import mean_and_se


def evaluate(model_dir: Path, task, prompts: list[str], angles: list[float], options, seed: int) -> dict:
    from alignkit.algorithms.feedback.dpa import direction, options_prompt
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.rollout.generate import generate

    tokenizer, model = load_tokenizer(model_dir), load_policy_for_inference(model_dir)
    out = {}
    for theta in angles:
        v = direction(theta)
        asked = [options_prompt(options, p, v) for p in prompts]
        samples = generate(model, tokenizer, asked, n=2, max_new_tokens=48, seed=seed)
        plain = [prompts[i // 2] for i in range(len(samples))]
        parts = task.gold_rewards(plain, [s.completion for s in samples], per_attribute=True)
        row = {"v": v, "prompt": asked[0], "malformed": sum(x < -1 for x in parts["sentiment"]) / len(samples)}
        for name in ("sentiment", "brevity"):
            row[name], row[f"{name}_se"] = mean_and_se(parts[name])
        row["v_dot_r"] = v[0] * row["sentiment"] + v[1] * row["brevity"]
        out[str(theta)] = row
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True)
    parser.add_argument("--out", default="runs/dpa-evidence")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--angles", default="0,15,30,45,60,75,90")
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-original", action="store_true", help="the row's own SFT completion is a candidate too (feedback.dpa.keep_original)")
    parser.add_argument("--encoding", default="decimal", help="feedback.dpa.encoding: decimal (the paper's form) or words (one word per angle bucket)")
    parser.add_argument("--words", default=None, help="with --encoding words: comma-separated bucket words (feedback.dpa.words; default A..E)")
    parser.add_argument("--figure", default=None)
    args = parser.parse_args(argv)

    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task("multi_objective")
    prompts = task.prompts(args.eval_prompts, "test")
    angles = [float(a) for a in args.angles.split(",")]
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "feedback" / "dpa.yaml", [
        f"model.path={args.sft}", f"train.output_dir={out / 'dpa'}", f"task.n_train={args.prompts}", f"feedback.dpa.samples={args.samples}",
        f"feedback.dpa.rounds={args.rounds}", f"train.epochs={args.epochs}", f"train.lr={args.lr}", f"train.batch_size={args.batch_size}",
        f"train.seed={args.seed}", "train.progress=false", "train.overwrite=true", f"feedback.dpa.keep_original={str(args.keep_original).lower()}",
        f"feedback.dpa.encoding={args.encoding}", *([f"feedback.dpa.words=[{args.words}]"] if args.words else [])])
    options = recipe.feedback.dpa
    results = {"settings": vars(args)}
    results["start"] = evaluate(Path(args.sft), task, prompts, angles, options, args.seed + 1)
    final = train(recipe)
    results["dpa"] = evaluate(final, task, prompts, angles, options, args.seed + 1)
    results["rounds"] = [json.loads(line) for line in (out / "dpa" / "dpa_rounds.jsonl").read_text().splitlines()]
    for name in ("start", "dpa"):
        for theta, row in results[name].items():
            print(name, theta, f"sentiment {row['sentiment']:+.3f} brevity {row['brevity']:.3f} malformed {row['malformed']:.2f}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.figure:
        figure(results, Path(args.figure))
    return results


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for name, style, label in (("dpa", "-", "DPA"), ("start", ":", "SFT start (same prompts)")):
        rows = results[name]
        thetas = sorted(rows, key=float)
        x = [float(t) for t in thetas]
        for attr, color in (("sentiment", "#c44e52"), ("brevity", "#4c72b0")):
            left.errorbar(x, [rows[t][attr] for t in thetas], yerr=[rows[t][f"{attr}_se"] for t in thetas], linestyle=style, color=color, marker="o",
                          markersize=3, capsize=2, label=f"{label}: {attr}")
        right.plot([rows[t]["brevity"] for t in thetas], [rows[t]["sentiment"] for t in thetas], linestyle=style, marker="o", color="#555555" if name == "start" else "#dd8452",
                   label=label)
        for t in thetas:
            right.annotate(f"{float(t):g}°", (rows[t]["brevity"], rows[t]["sentiment"]), textcoords="offset points", xytext=(3, 3), fontsize=6)
    left.set_xlabel("angle of v = (cos t, sin t) (0: all sentiment, 90: all brevity)")
    left.set_ylabel("mean gold attribute")
    left.legend(fontsize=6)
    right.set_xlabel("mean brevity")
    right.set_ylabel("mean sentiment")
    right.legend(fontsize=7)
    fig.suptitle("DPA: the direction v in the prompt moves the samples along the trade-off", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
