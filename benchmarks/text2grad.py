"""Evidence (short): Text2Grad's token-level PPO trains, against the same span reward used as a sequence reward.

    python benchmarks/text2grad.py --sft runs/sft/final --out runs/text2grad-evidence

1. A span reward model (``recipes/feedback/text2grad/reward.yaml``) on the sentiment critic's adjective
   spans of base samples; its held-out token accuracy (all tokens and the tokens inside spans).
2. PPO from the SFT start with that model as the reward (``recipes/feedback/text2grad/ppo.yaml``), twice,
   the same seed, steps and settings: ``token`` puts each token's ``p_good − p_bad`` on its own token (into
   GAE), ``sequence`` puts their sum on the last token (``{type: spans, token_level: false}``).

Each policy (and the start) is evaluated on held-out prompts (``--eval-prompts`` × 2 samples): the task's
gold reward (± s.e.), the malformed share and the span reward. Results go to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.evaluation.metrics import mean_and_se

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "feedback" / "text2grad"


def evaluate(model_dir: Path, task, prompts: list[str], source, seed: int) -> dict:
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.rollout.generate import generate

    tokenizer, model = load_tokenizer(model_dir), load_policy_for_inference(model_dir)
    samples = generate(model, tokenizer, prompts, n=2, max_new_tokens=40, seed=seed)
    texts, asked = [s.completion for s in samples], [s.prompt for s in samples]
    gold = task.gold_rewards(asked, texts)
    out = {"malformed": sum(g < -1 for g in gold) / len(gold), "span_reward": float(source.score(asked, texts).mean())}
    out["gold"], out["gold_se"] = mean_and_se(gold)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True)
    parser.add_argument("--out", default="runs/text2grad-evidence")
    parser.add_argument("--rm-steps", type=int, default=120)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-prompts", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-rm", action="store_true", help="reuse a trained span reward model (--rm, default <out>/rm) instead of training one")
    parser.add_argument("--rm", default=None, help="with --skip-rm: the earlier span reward model run folder (holding final/ and summary.json)")
    parser.add_argument("--only", default="token,sequence", help="which PPO variants to run: token, sequence or both")
    parser.add_argument("--policy", action="append", default=[], help="NAME=DIR: evaluate this already trained policy (e.g. a run's checkpoint-N/model) as NAME "
                        "instead of training it (repeatable; with --skip-rm)")
    args = parser.parse_args(argv)

    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.rewards.sources import build_reward_source
    from alignkit.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args)}
    rm_run = Path(args.rm) if args.rm else out / "rm"
    rm = rm_run / "final"
    if args.skip_rm and not (rm / "model.safetensors").exists():
        raise SystemExit(f"--skip-rm: no trained span reward model at {rm}; drop --skip-rm to train one, or pass --rm DIR")
    if not args.skip_rm:
        rm_run = out / "rm"
        rm = train(load_recipe(RECIPES / "reward.yaml", [f"model.path={args.sft}", f"train.output_dir={out / 'rm'}", f"train.max_steps={args.rm_steps}",
                                                         "train.progress=false", "train.overwrite=true", f"train.eval_every={args.rm_steps}"]))
    results["reward_model"] = json.loads((rm_run / "summary.json").read_text()).get("eval", {})
    task = get_task("sentiment")
    prompts = task.prompts(args.eval_prompts, "test")
    source = build_reward_source(str(rm))
    results["start"] = evaluate(Path(args.sft), task, prompts, source, args.seed + 1)
    print("start", json.dumps(results["start"]), flush=True)
    given = dict(item.split("=", 1) for item in args.policy)
    for name, folder in given.items():
        results[name] = evaluate(Path(folder), task, prompts, source, args.seed + 1)
        print(name, folder, json.dumps(results[name]), flush=True)
    variants = {"token": str(rm), "sequence": f"{{type: spans, path: {rm}, token_level: false}}"}
    for name in [] if given else args.only.split(","):
        if name not in variants:
            raise SystemExit(f"--only: unknown variant {name!r}; allowed: token, sequence")
        reward = variants[name]
        final = train(load_recipe(RECIPES / "ppo.yaml", [f"model.path={args.sft}", f"rl.reward={reward}", f"train.output_dir={out / name}",
                                                         f"train.max_steps={args.steps}", "train.progress=false", "train.overwrite=true", "train.eval_every=null",
                                                         f"train.seed={args.seed}"]))
        results[name] = evaluate(final, task, prompts, source, args.seed + 1)
        print(name, json.dumps(results[name]), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
