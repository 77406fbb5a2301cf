"""How alignkit's GRPO step grows with the work: seconds per step vs group size, completion length, prompt
length and model size, and peak memory vs sequence length.

    HF_HUB_OFFLINE=1 python benchmarks/scaling.py                 # every sweep, a few minutes on 2 cores
    HF_HUB_OFFLINE=1 python benchmarks/scaling.py --sweeps group  # one sweep

Each point is one ``alignkit`` side of ``grpo_vs_trl.py`` in its own subprocess (same recipe: GRPO, PPO-clip,
token-mean, beta 0, fp32), on a tiny Llama with random weights (``--sft-steps 0``), so no sample stops early
and every completion is exactly ``max_new_tokens`` long: the work of a point is known exactly. A sweep
doubles one quantity at a time from the base point (8 prompts x 4 samples, 16 new tokens, bare ~5-token
prompts, hidden 128). For each point it reports the steady step (median time between rollouts), the
generation and update seconds per step, peak RSS, and the *growth factor* against the previous point: a
doubling of the work that costs close to 2x is linear; close to 4x would be a hidden quadratic.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BASE = {"prompts": 8, "group": 4, "max_new_tokens": 16, "context_reviews": 0, "hidden": 128, "layers": 4}
SWEEPS = {  # name -> (the quantity doubled, its values)
    "group": ("group", [2, 4, 8, 16]),
    "completion": ("max_new_tokens", [8, 16, 32, 64]),
    "prompt": ("context_reviews", [0, 1, 2, 4]),
    "model": ("hidden", [64, 128, 256, 512]),
}


def point(work: Path, settings: dict, steps: int) -> dict:
    """One alignkit run of ``settings`` in a subprocess (its policy prepared here first), its result."""
    import grpo_vs_trl

    shape = argparse.Namespace(model=None, tokenizer=None, hidden=settings["hidden"], layers=settings["layers"], sft_steps=0)
    grpo_vs_trl.prepare(work, shape)
    side = ["--side", "alignkit", "--work", str(work), "--steps", str(steps)]
    for name in ("prompts", "group", "max_new_tokens", "context_reviews"):
        side += [f"--{name.replace('_', '-')}", str(settings[name])]
    subprocess.run([sys.executable, str(HERE / "grpo_vs_trl.py"), *side], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((work / "result-alignkit.json").read_text())


def work_of(settings: dict) -> float:
    """Relative work of a point: samples x (prompt + completion) tokens x parameters (~ hidden^2)."""
    prompt = 5 + 70 * settings["context_reviews"] / 4
    return settings["prompts"] * settings["group"] * (prompt + settings["max_new_tokens"]) * settings["hidden"] ** 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated, of {', '.join(SWEEPS)}")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path("runs/bench-scaling"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [s.strip() for s in args.sweeps.split(",") if s.strip()]:
        key, values = SWEEPS[name]
        print(f"\nsweep: {key} (others at {BASE})")
        print(f"{key:>16}{'steady s/step':>15}{'x prev':>8}{'gen s/step':>12}{'x prev':>8}{'update s/step':>15}{'x prev':>8}{'peak RSS MiB':>14}{'work x prev':>13}")
        rows, previous = [], None
        for value in values:
            settings = {**BASE, key: value}
            r = point(args.work / f"{name}-{value}", settings, args.steps)
            row = {"value": value, "steady": r["steady_step"], "generate": r["generate_seconds"] / args.steps,
                   "update": (r["seconds"] - r["rollout_seconds"]) / args.steps, "rss_mib": r["ru_maxrss"] / 2**20, "work": work_of(settings)}
            def grow(k, row=row, previous=previous):
                return f"{row[k] / previous[k]:.2f}" if previous else ""
            print(f"{value:>16}{row['steady']:>15.3f}{grow('steady'):>8}{row['generate']:>12.3f}{grow('generate'):>8}"
                  f"{row['update']:>15.3f}{grow('update'):>8}{row['rss_mib']:>14.0f}{grow('work'):>13}")
            rows.append(row)
            previous = row
        out[name] = rows
    (args.work / "summary.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
