"""Evidence (short): does GRPO on BRME's robust reward hack less than GRPO on one Bradley–Terry reward model?

    python benchmarks/brme_policy.py --sft runs/sft/final --bt-rm-run runs/pluralistic-evidence/rm/scalar --out runs/brme-policy

Reward-robust RLHF (Yan et al. 2024) trains the policy on ``λ μ_nominal + (1 − λ) min_k μ_k`` over K Gaussian
reward heads (BRME), so that a completion one head over-rates is not rewarded unless every head agrees. Here:

1. BRME (``reward.type: brme``, K heads, bootstrap weights, the N(0, s²) prior) is trained on **the same
   pairs, initialisation, steps, batch and learning rate** as the given Bradley–Terry run (``--bt-rm-run``:
   its ``config.yaml`` is re-read and only the reward type and output folder change);
2. GRPO from the SFT start on each reward (``recipes/pluralistic/brme_grpo.yaml`` settings: group 4, 16
   prompts a step, KL β 0.05, lr 5e-4, constant), the same seed and ``--steps`` steps; the BT side can be an
   earlier run's policy at that step (``--bt-policy``, e.g. a checkpoint of benchmarks/pluralistic.py --rl);
3. every policy and the SFT start: ``ReferenceEvaluator`` on ``--prompts`` held-out prompts × 2 samples —
   gold reward (± s.e.) overall and per group, the malformed share (gold < −1: text outside the task's
   language, the reward-hacking signature of this task), KL to the start, win rate against the start.

Results go to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEEP = ("gold_reward", "gold_reward_se", "kl", "win_rate", "malformed", "gold/majority", "gold/minority", "gold/worst_group")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True, help="the SFT start (recipes/sft.yaml)")
    parser.add_argument("--bt-rm-run", required=True, help="a finished Bradley-Terry reward model run folder (config.yaml + final/) on the pluralistic task's pairs")
    parser.add_argument("--out", default="runs/brme-policy")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--reduce", default="robust", help="the BRME reduction for RL: robust, min, nominal, mean, mean_minus_std")
    parser.add_argument("--lam", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bt-policy", default=None, help="reuse this GRPO-on-BT policy folder (trained with the same settings for --steps steps) instead of training one")
    parser.add_argument("--reuse", action="store_true", help="a BRME reward model / policy whose final folder exists in --out is not trained again")
    args = parser.parse_args(argv)

    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.evaluation.policy import ReferenceEvaluator
    from alignkit.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": vars(args)}
    bt_rm = Path(args.bt_rm_run) / "final"
    brme_rm = out / "brme-rm" / "final"
    if not (args.reuse and (brme_rm / "model.safetensors").exists()):
        brme_rm = train(load_recipe(Path(args.bt_rm_run) / "config.yaml", [
            "reward.type=brme", f"reward.heads={args.heads}", "reward.prior_std=1.0", "reward.prior_weight=0.01", "reward.bootstrap=true",
            f"train.output_dir={out / 'brme-rm'}", "train.progress=false", "train.overwrite=true", "train.resume=false"]))
    results["brme_rm"] = json.loads((out / "brme-rm" / "summary.json").read_text()).get("metrics", {})
    results["bt_rm"] = json.loads((Path(args.bt_rm_run) / "summary.json").read_text()).get("metrics", {})

    common = [f"model.path={args.sft}", f"train.max_steps={args.steps}", f"train.seed={args.seed}", "train.progress=false", "train.overwrite=true",
              "train.eval_every=null"]
    rewards = {"grpo_bt": str(bt_rm), f"grpo_brme_{args.reduce}": f"{{type: model, path: {brme_rm}, reduce: {args.reduce}, lam: {args.lam}}}"}
    finals = {}
    for name, reward in rewards.items():
        if name == "grpo_bt" and args.bt_policy:
            finals[name] = Path(args.bt_policy)
            continue
        if args.reuse and (out / name / "final" / "model.safetensors").exists():
            finals[name] = out / name / "final"
            continue
        finals[name] = train(load_recipe("recipes/pluralistic/brme_grpo.yaml", [*common, f"rl.reward={reward}", f"train.output_dir={out / name}"]))

    evaluator = ReferenceEvaluator.from_dir(get_task("pluralistic"), args.sft, n_prompts=args.prompts, n_samples=2)
    results["policies"] = {"sft": {k: v for k, v in evaluator.evaluate(args.sft, "sft").items() if k in KEEP}}
    for name, folder in finals.items():
        results["policies"][name] = {k: v for k, v in evaluator.evaluate(folder, name).items() if k in KEEP}
        print(name, json.dumps(results["policies"][name]), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
