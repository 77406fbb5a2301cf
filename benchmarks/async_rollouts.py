"""Synchronous vs one-step-off vs asynchronous GRPO (and, with --ray, Ray rollout workers) on the arithmetic task
with a tiny model, on CPU: seconds per step, the trainer's wait for samples, staleness, dropped samples, and the
held-out gold reward at the end (docs/scale.md).

    python benchmarks/async_rollouts.py --model runs/sft-arith/final [--steps 20] [--ray] [--out runs/bench-async]

Without --model, a weak arithmetic SFT model is trained first (the test suite's, a few CPU minutes). On a CPU
machine the producer's thread and the trainer share the same cores, so overlap can only hide generation behind
training where cores sit idle; the numbers say what happened on this machine, not what a GPU pair would do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe_for(model: Path, out: Path, steps: int, extra: list[str]):
    from alignkit.config import load_recipe

    return load_recipe({"algorithm": "rl"}, [
        f"train.output_dir={out}", f"model.path={model}", "task.name=arithmetic", "task.level=0", "task.n_train=512", "task.n_eval=128",
        "train.batch_size=16", f"train.max_steps={steps}", "train.lr=1e-3", f"train.eval_every={steps}", "train.scheduler=constant",
        "train.progress=false", "rl.estimator=grpo", "rl.sampling.group_size=8", "rl.sampling.max_new_tokens=6", "rl.sampling.eval_samples=4",
        "rl.log_samples=0", *extra,
    ])


def summarise(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r]
    evals = [r for r in rows if "eval/gold_reward" in r]
    mean = lambda key: statistics.fmean(r[key] for r in steps) if steps and key in steps[0] else None  # noqa: E731
    return {"s_per_step": mean("time/step"), "s_sample": mean("time/sample"), "async_wait": mean("async/wait"),
            "staleness_mean": mean("async/staleness_mean"), "dropped": sum(r.get("async/dropped", 0) for r in steps),
            "gold_start": evals[0]["eval/gold_reward"] if evals else None, "gold_end": evals[-1]["eval/gold_reward"] if evals else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an arithmetic SFT model folder (default: train one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ray", action="store_true", help="also run the synchronous and one-step-off modes with 2 Ray rollout workers")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-async"))
    args = parser.parse_args(argv)
    from alignkit.algorithms import train

    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import train_arithmetic_sft

        model = train_arithmetic_sft(args.out / "sft")
    runs = {
        "sync": ["rl.off_policy.correction=tis"],
        "one_step_off": ["rl.asynchronous.mode=one_step_off", "rl.off_policy.correction=tis"],
        "async(2)": ["rl.asynchronous.mode=async", "rl.asynchronous.max_staleness=2", "rl.off_policy.correction=decoupled", "rl.off_policy.params={cap: 5.0}"],
    }
    if args.ray:
        ray = ["scale.backend=ray", "scale.rollout_workers=2", "scale.worker_cpus=1", "scale.num_cpus=2"]
        runs["ray sync"] = [*runs["sync"], *ray]
        runs["ray one_step_off"] = [*runs["one_step_off"], *ray]
    results = {}
    for name, extra in runs.items():
        out = args.out / name.replace(" ", "_").replace("(", "").replace(")", "")
        train(recipe_for(model, out, args.steps, extra))
        results[name] = summarise(out)
        print(name, json.dumps(results[name]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2))
    print(f"{'run':<18} {'s/step':>7} {'sample':>7} {'wait':>6} {'stale':>6} {'dropped':>7} {'gold start':>10} {'gold end':>8}")
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for name, r in results.items():
        print(f"{name:<18} {fmt(r['s_per_step'], '7.2f')} {fmt(r['s_sample'], '7.2f')} {fmt(r['async_wait'], '6.2f')} {fmt(r['staleness_mean'], '6.2f')} "
              f"{r['dropped']:>7.0f} {fmt(r['gold_start'], '10.3f')} {fmt(r['gold_end'], '8.3f')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
