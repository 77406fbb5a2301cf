"""Evidence: Chain of Hindsight and ILF against SFT on the positive examples only, at equal data.

    python benchmarks/feedback_evidence.py --sft runs/sft/final --out runs/feedback-evidence \\
        --figure docs/figures/feedback_coh_ilf.png

From one SFT start on the sentiment task: ``--rows`` prompts, one sample each from the SFT policy, each
judged by the task's programmatic critic (a critique sentence, and a revision when the judgment is
negative). The same rows train every method, with the same steps, learning rate and batch size:

* ``sft_positive`` — SFT on the positive examples only: each row's revision, or its sample when the
  judgment is positive (the critique and the negative samples are thrown away);
* ``hindsight`` — Chain of Hindsight on the rows (the sample and its revision after feedback phrases, in
  a random order per row); ``hindsight_worse_first`` the same with the worse answer always first;
* ``ilf`` — ILF: 4 refinements per row from the policy given the critique, plus the revision and the
  sample itself, the best by the gold reward, SFT on it;
* ``ilf_no_revision`` (``--self-refine``) — ILF with the policy's own refinements only (no revision),
  two rounds, with the refinement NLL term (``refine_weight 1``).

Each model is evaluated on held-out prompts (``--eval-prompts`` × 2 samples, temperature 1), conditioned
as its method prescribes (Chain of Hindsight: ``prompt + " A better answer:"``, and also after the
negative phrase, ``worse_phrase``): mean gold reward with its standard error and the malformed share. Results go to ``<out>/results.json`` and the figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.evaluation.metrics import mean_and_se


def evaluate(model_dir: Path, run_dir: Path, task, prompts: list[str], seed: int, suffix: str | None = None) -> dict:
    """Gold reward of the model's samples, its prompts conditioned as the run prescribes (or ``prompt + " " + suffix``)."""
    from alignkit.algorithms.feedback.base import conditioned_prompt
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.rollout.generate import generate

    tokenizer, model = load_tokenizer(model_dir), load_policy_for_inference(model_dir)
    asked = [f"{p} {suffix}" if suffix else conditioned_prompt(run_dir, p) for p in prompts]
    samples = generate(model, tokenizer, asked, n=2, max_new_tokens=48, seed=seed)
    gold = task.gold_rewards([prompts[i // 2] for i in range(len(samples))], [s.completion for s in samples])
    mean, se = mean_and_se(gold)
    return {"gold": mean, "gold_se": se, "malformed": sum(g < -1 for g in gold) / len(gold), "n": len(gold),
            "prompt_example": asked[0], "sample": samples[0].completion}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True, help="the SFT start (e.g. runs/sft/final from recipes/sft.yaml)")
    parser.add_argument("--out", default="runs/feedback-evidence")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--self-refine", action="store_true", help="also run ILF on the policy's own refinements only")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--methods", default=None, help="comma-separated subset of the runs (the others are kept from an earlier results.json in --out)")
    args = parser.parse_args(argv)

    from alignkit.algorithms import train
    from alignkit.algorithms.feedback.data import critique_samples
    from alignkit.config import load_recipe
    from alignkit.data.records import write_jsonl
    from alignkit.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task("sentiment")
    rows = critique_samples(args.sft, "sentiment", args.rows, "train", "critique", seed=args.seed, out=out / "critiques.jsonl")
    positives = [{"prompt": r["prompt"], "completion": r.get("revision", r["completion"])} for r in rows]
    write_jsonl(out / "positives.jsonl", positives)
    common = [f"model.path={args.sft}", f"train.lr={args.lr}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
              "train.progress=false", "train.overwrite=true", "data.max_length=192", "train.warmup_ratio=0.05", f"train.seed={args.seed}"]
    runs = {
        "sft_positive": ({"algorithm": "sft"}, [f"data.train={out / 'positives.jsonl'}"]),
        "hindsight": ({"algorithm": "feedback"}, [f"data.train={out / 'critiques.jsonl'}", "data.kind=critique", "feedback.method=hindsight"]),
        "hindsight_worse_first": ({"algorithm": "feedback"}, [f"data.train={out / 'critiques.jsonl'}", "data.kind=critique", "feedback.method=hindsight",
                                                              "feedback.hindsight.order=worse_first"]),
        "ilf": ({"algorithm": "feedback"}, [f"data.train={out / 'critiques.jsonl'}", "data.kind=critique", "feedback.method=ilf", "feedback.ilf.samples=4"]),
    }
    if args.self_refine:
        runs["ilf_no_revision"] = ({"algorithm": "feedback"}, [f"data.train={out / 'critiques.jsonl'}", "data.kind=critique", "feedback.method=ilf",
                                                                "feedback.ilf.samples=4", "feedback.ilf.use_revision=false", "feedback.ilf.rounds=2",
                                                                "feedback.ilf.refine_weight=1.0"])
    prompts = task.prompts(args.eval_prompts, "test")
    earlier = out / "results.json"
    results = json.loads(earlier.read_text()) if args.methods and earlier.exists() else {}
    if "start" not in results:
        results["start"] = {"sft": evaluate(Path(args.sft), Path(args.sft), task, prompts, args.seed + 1)}
    results.update(rows=len(rows), negative_rows=sum(not r["label"] for r in rows), settings=vars(args))
    chosen = args.methods.split(",") if args.methods else list(runs)
    for name, (base, overrides) in runs.items():
        if name not in chosen:
            continue
        run_dir = out / name
        final = train(load_recipe(base, [*common, *overrides, f"train.output_dir={run_dir}"]))
        results[name] = evaluate(final, run_dir, task, prompts, args.seed + 1)
        if name.startswith("hindsight"):  # does the policy follow its conditioning? the same model after the negative phrase
            results[name]["worse_phrase"] = evaluate(final, run_dir, task, prompts, args.seed + 1, suffix="A worse answer:")
        if (run_dir / "ilf_rounds.jsonl").exists():
            results[name]["rounds"] = [json.loads(line) for line in (run_dir / "ilf_rounds.jsonl").read_text().splitlines()]
        print(name, json.dumps(results[name]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.figure:
        _figure(results, [n for n in runs if n in results], Path(args.figure))
    return results


def _figure(results: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["start", *names]
    values = [results["start"]["sft"] if n == "start" else results[n] for n in names]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(range(len(names)), [v["gold"] for v in values], yerr=[v["gold_se"] for v in values], capsize=4,
           color=["#999999", "#4c72b0", *["#dd8452"] * (len(names) - 2)])
    ax.set_xticks(range(len(names)), ["SFT start" if n == "start" else n.replace("_", " ") for n in names], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("mean gold reward (± s.e.)")
    ax.set_title(f"language feedback vs SFT on positives ({results['rows']} rows, equal data)")
    ax.axhline(0, color="black", linewidth=0.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
