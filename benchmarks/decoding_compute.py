"""Inference-time alignment on the controlled-sentiment task: gold reward against compute for every decoding
strategy (with DPO- and PPO-trained policies as reference points, their KL to the base reported), nudging against its threshold gamma, and activation
steering against its strength alpha.

    python benchmarks/decoding_compute.py --base runs/sft/final --small runs/sft-small/final \\
        --small-aligned runs/dpo-small/final --dpo runs/dpo/final --ppo runs/ppo/final --small-arm runs/arm-small/final --out docs/figures

``--only "DPO-trained,PPO-trained"`` (label prefixes) re-runs only those points, merged into an existing
``decoding.json``; only the models those points use need to be given then.

``--parts value --baseline runs/dpo/final`` fits CD-FUDGE's MC value once (kept in ``--values-dir``), decodes with it
at every ``k:w`` of ``--value-grid``, and runs Transfer Q* direct and indirect (``--transfer-beta`` list) from the
baseline's rollouts; those points are drawn in the compute figure too.

Compute is the model FLOPs of a call, ``2 * parameters * token positions run`` summed over every model the
strategy ran (policy, guides, ARMs, value models, nudging model; the gold reward is a program and costs nothing
here), divided by the prompts. Writes ``decoding_compute.png``, ``decoding_nudging.png``, ``decoding_steering.png``
and ``decoding.json`` (every point) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def model_flops(cost: dict[str, Any], params: dict[str, int]) -> float:
    """2 * parameters * token positions, summed over roles (``cost``: ``PolicyEval.cost``, flat ``cost/...`` keys)."""
    total = 0.0
    for key, tokens in cost.items():
        if key.startswith("cost/tokens_processed/"):
            total += 2.0 * params[key.rsplit("/", 1)[1]] * tokens
    return total


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters()) if model is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the base (SFT) model being aligned at inference time")
    parser.add_argument("--small", type=Path, help="a smaller SFT model with the same tokenizer (w2s: the untuned model)")
    parser.add_argument("--small-aligned", type=Path, help="the smaller model after DPO (nudging model, w2s tuned, Transfer Q*)")
    parser.add_argument("--dpo", type=Path, help="the base model after DPO (a trained reference point)")
    parser.add_argument("--ppo", type=Path, nargs="+", help="the base model after PPO (recipes/ppo.yaml; the other trained reference point); "
                        "several folders (checkpoints) give one point each, to pick the one at the DPO point's KL")
    parser.add_argument("--small-arm", type=Path, help="an autoregressive reward model (reward.type: arm) from the small model")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--parts", default="compute,nudging,steering", help="compute, nudging, steering, value (value-guided settings)")
    parser.add_argument("--value-grid", default="10:4,10:8,10:16,20:8", help="with --parts value: k:w pairs of CD-FUDGE on one fitted MC value")
    parser.add_argument("--values-dir", type=Path, default=Path("runs/decoding-values"), help="with --parts value: where the fitted values are kept")
    parser.add_argument("--baseline", type=Path, help="with --parts value: an aligned baseline model for Transfer Q* direct vs indirect")
    parser.add_argument("--transfer-beta", default="1", help="with --parts value: beta(s) of indirect transfer's target pi_sft exp(r / beta), comma-separated")
    parser.add_argument("--only", default="", help="comma-separated label prefixes: run only those points (merged into an existing decoding.json)")
    parser.add_argument("--nudger", type=Path, default=None, help="the nudging model (default: --small-aligned)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figures from --out/decoding.json")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    if args.plot_only:
        return plot(json.loads((args.out / "decoding.json").read_text()), args.out)
    missing = [name for name in ("base", "small", "small_aligned", "dpo", "small_arm") if getattr(args, name) is None]
    if args.base is None or (missing and not args.only and set(args.parts.split(",")) & {"compute", "nudging"}):
        parser.error("needs " + ", ".join("--" + m.replace("_", "-") for m in missing))

    import torch

    from alignkit.evaluation.policy import evaluate_policy
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.tasks import get_task

    torch.manual_seed(0)
    task = get_task("sentiment")
    prompts = task.prompts(args.prompts, "test")
    tok = load_tokenizer(args.base)
    base = load_policy_for_inference(args.base)

    def load(path):  # with --only, the models of the points left out may be missing
        return load_policy_for_inference(path) if path is not None else None

    small, aligned, arm = load(args.small), load(args.small_aligned), load(args.small_arm)
    size = {"policy": n_params(base), "small": n_params(small), "aligned": n_params(aligned), "arm": n_params(arm)}
    parts = set(args.parts.split(","))
    points: dict[str, list[dict[str, Any]]] = {}

    only = [x for x in args.only.split(",") if x]

    def run(label: str, strategy: str | None, options: dict[str, Any] | None = None, model=None, roles: dict[str, int] | None = None, **extra):
        if only and not any(label.startswith(x) for x in only):
            return None
        began = time.perf_counter()
        e = evaluate_policy(label, model if model is not None else base, tok, task, prompts, reference=base, max_new_tokens=args.max_new_tokens,
                            seed=0, strategy=strategy, strategy_options=options)
        params = {"policy": n_params(model) if model is not None else size["policy"], **(roles or {})}
        point = {"label": label, "strategy": strategy, "gold": e.gold_reward, "gold_se": e.gold_reward_se, "kl": e.kl,
                 "flops_per_prompt": model_flops(e.cost, params) / len(prompts), "seconds": round(time.perf_counter() - began, 2),
                 "stats": {k: v for k, v in (e.strategy_stats or {}).items() if not isinstance(v, (list, dict))}, **extra}
        if isinstance((e.strategy_stats or {}).get("fit"), dict):  # a value's fit: its rollouts, seconds, importance weights
            point["fit"] = {k: v for k, v in e.strategy_stats["fit"].items() if not isinstance(v, list)}
        print(json.dumps(point, default=str), flush=True)
        return point

    if "compute" in parts:
        pts = [run("base (sample)", "sample")]
        for n in (2, 4, 8, 16):
            pts.append(run(f"best-of-{n}", "best_of_n", {"N": n}, n=n))
        pts.append(run("rejection N=8 beta=0.25", "rejection", {"N": 8, "beta": 0.25}))
        pts.append(run("ARGS k=10 w=1", "args", {"k": 10, "w": 1.0}))
        for beta in (1.0, 0.5):
            pts.append(run(f"GenARM small ARM beta={beta}", "genarm", {"arm": arm, "beta": beta}, roles={"arm": size["arm"]}))
        pts.append(run("nudging gamma=0.4", "nudging", {"nudger": aligned, "gamma": 0.4}, roles={"nudger": size["aligned"]}))
        pts.append(run("steering alpha=4 (layer search)", "steer", {"alpha": 4.0}))
        for label, opts in (("CD-FUDGE (MC value)", {"lam": 1.0}), ("VAS (TD(0.8) value)", {"lam": 0.8}),
                            ("Transfer Q* (aligned rollouts)", {"lam": 1.0, "fit_from": aligned})):
            pts.append(run(label, "value_guided", {"value": "fit", "k": 10, "w": 4.0, "fit_prompts": 128, **opts}, roles={"value": size["policy"]}))
        for depth in (4, 16):
            pts.append(run(f"DeAL lookahead k=4 depth={depth} (gold)", "lookahead", {"reward": "gold", "k": 4, "depth": depth}))
        pts.append(run("weak-to-strong beams=2 expand=4", "w2s", {"tuned": aligned, "untuned": small, "beams": 2, "expand": 4, "chunk": 4},
                       roles={"small0": size["aligned"], "small1": size["small"]}))
        trained = [("DPO-trained policy (sample)", args.dpo)] if args.dpo else []
        ppo = args.ppo or []
        trained += [(f"PPO-trained policy (sample){'' if len(ppo) == 1 else ', ' + path.parent.name + '/' + path.name}", path) for path in ppo]
        for label, path in trained:  # trained reference points: their KL to the base is in the point
            pts.append(run(label, "sample", model=load_policy_for_inference(path), reference_point=True, path=str(path)))
        points["compute"] = pts

    if "value" in parts:  # value-guided decoding at more (k, w); Transfer Q* direct vs indirect from --baseline
        fit = {"k": 10, "fit_prompts": 128, "lam": 1.0}
        cd = args.values_dir / "cd-mc"
        pts = []
        if not (cd / "value.json").exists():  # the MC value of the compute table's CD-FUDGE point, fitted once and kept
            pts.append(run("CD-FUDGE (MC value)", "value_guided", {"value": "fit", "w": 4.0, "save": str(cd), **fit}, roles={"value": size["policy"]}))
        for item in args.value_grid.split(","):
            k, w = item.split(":")
            pts.append(run(f"CD-FUDGE (MC value) k={k} w={w}", "value_guided", {"value": str(cd), "k": int(k), "w": float(w)}, roles={"value": size["policy"]}))
        if args.baseline is not None:
            settings = [("direct", 1.0)] + [("indirect", float(b)) for b in args.transfer_beta.split(",")]
            for transfer, beta in settings:
                opts = {"value": "fit", "w": 4.0, "fit_from": str(args.baseline), "transfer": transfer, "transfer_beta": beta, **fit}
                label = f"Transfer Q* {transfer} (baseline {args.baseline.parent.name}" + (f", beta {beta:g})" if transfer == "indirect" else ")")
                pts.append(run(label, "value_guided", opts, roles={"value": size["policy"]}))
        points["value"] = [p for p in pts if p]

    if "nudging" in parts:
        nudger = load_policy_for_inference(args.nudger) if args.nudger else aligned
        pts = [run("the nudging model alone", "sample", model=nudger)]
        for gamma in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.99, 1.01):
            pts.append(run(f"nudging gamma={gamma}", "nudging", {"nudger": nudger, "gamma": gamma}, roles={"nudger": n_params(nudger)}, gamma=gamma))
        points["nudging"] = pts

    if "steering" in parts:
        from alignkit.decoding.base import Context, Cost, ForwardCounter
        from alignkit.decoding.steering import layer_search, read_contrasts
        from alignkit.rollout.engine import Sampling

        cost = Cost()
        ctx = Context(base, tok, [], 1, Sampling(max_new_tokens=args.max_new_tokens), 64, "alignkit", cost, ForwardCounter(cost))
        layer, _, scores = layer_search(ctx, read_contrasts("task"), 16.0, "gold", task.prompts(32, "train"))
        print(json.dumps({"layer_search": [s.__dict__ for s in scores], "layer": layer}), flush=True)
        pts = []
        for alpha in (-32.0, -16.0, -8.0, 0.0, 8.0, 16.0, 32.0):
            pts.append(run(f"steer alpha={alpha}", "steer", {"alpha": alpha, "layer": layer}, alpha=alpha, layer=layer))
        points["steering"] = pts
        points["layer_search"] = [s.__dict__ for s in scores]

    args.out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((args.out / "decoding.json").read_text()) if (args.out / "decoding.json").exists() else {}
    for part, pts in list(points.items()):
        pts = [p for p in pts if p]  # points skipped by --only are None
        if only and part == "compute" and part in previous:  # replace the points re-run, keep the others
            fresh = {p["label"]: p for p in pts}
            pts = [fresh.pop(p["label"], p) for p in previous[part]] + list(fresh.values())
        points[part] = pts
    merged = {**previous, **points}
    (args.out / "decoding.json").write_text(json.dumps(merged, indent=1, default=str))
    plot(merged, args.out)


def plot(points: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "compute" in points:
        fig, ax = plt.subplots(figsize=(8, 5))
        extra = [p for p in points.get("value", []) if p["label"] != "CD-FUDGE (MC value)"]  # the --parts value settings
        for p in points["compute"] + extra:
            trained = p.get("reference_point") or p["label"].startswith(("DPO-trained", "PPO-trained"))
            ax.errorbar(p["flops_per_prompt"], p["gold"], yerr=p["gold_se"], fmt="*" if trained else "o", ms=10 if trained else 6, capsize=2,
                        color="black" if trained else None)
            label = f"{p['label']}, KL {p['kl']:.2f}" if trained and p.get("kl") is not None else p["label"]
            ax.annotate(label, (p["flops_per_prompt"], p["gold"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(xlabel="model FLOPs per prompt (2 x params x token positions, all models)", ylabel="gold reward",
               title="inference-time strategies on controlled sentiment")
        fig.tight_layout()
        fig.savefig(out / "decoding_compute.png", dpi=150)
    if "nudging" in points:
        fig, ax = plt.subplots(figsize=(6, 4))
        pts = [p for p in points["nudging"] if "gamma" in p]
        share = [p["stats"]["nudged_share"] for p in pts]
        ax.plot(share, [p["gold"] for p in pts], "o-", label="nudged base model")
        for p, s in zip(pts, share):
            ax.annotate(f"γ={p['gamma']}", (s, p["gold"]), fontsize=7, xytext=(3, -8), textcoords="offset points")
        ax.axhline(next(p["gold"] for p in points["nudging"] if "gamma" not in p), color="green", ls="--", label="the nudging model alone")
        ax.axhline(next(p["gold"] for p in pts if p["gamma"] == 0.0), color="grey", ls=":", label="the base model alone")
        ax.set(xlabel="share of tokens written by the nudging model", ylabel="gold reward", title="nudging")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "decoding_nudging.png", dpi=150)
    if "steering" in points:
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
        pts = points["steering"]
        alphas = [p["alpha"] for p in pts]
        ax[0].errorbar(alphas, [p["gold"] for p in pts], yerr=[p["gold_se"] for p in pts], fmt="o-", capsize=2)
        ax[0].set(xlabel="α (negative: steering as an attack)", ylabel="gold reward", title=f"CAA at layer {pts[0]['layer']}")
        ax[1].plot(alphas, [p["kl"] for p in pts], "o-")
        ax[1].set(xlabel="α", ylabel="KL to the base model (k1)", title="its KL")
        fig.tight_layout()
        fig.savefig(out / "decoding_steering.png", dpi=150)


if __name__ == "__main__":
    main()
