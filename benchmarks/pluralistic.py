"""Pluralistic evidence (docs/results.md, "Pluralistic alignment"): whom do one reward model and one policy
serve, and do the pluralistic methods serve the minority?

    python benchmarks/pluralistic.py --sft runs/sft/final --out runs/pluralistic-evidence

Part 1, reward models. The pluralistic task's pairs: 16 users in two groups (majority 80 % of the pairs,
likes positive reviews; minority 20 %, likes negative ones). Users 0-5 of each group label the training
pairs; users 6-7 of each group are new. A single Bradley-Terry RM, MaxMin-RLHF's EM mixture (K = 2),
PAL (K = 2 prototypes) and VPL are trained on the same pairs. Each test user's first ``--context`` test
pairs are the "few labelled pairs" (MaxMin: an E-step on them; PAL: the user's weights fitted on them;
VPL: the encoder reads them; BT ignores them), the rest are scored: accuracy per user, averaged per group.
Users seen in training use what the model stored for them (MaxMin's cluster, PAL's weights).

Part 3 (``--conditioned``), conditioned reward models: the context-aware RM (``reward.type: context``) and
SALMON's principle-following RM (``reward.type: principles``) trained from the task; the context RM scores
each group's held-out pairs under the group's training wordings, unseen wordings and the other group's
wordings; the principles RM ranks held-out pairs under one principle at a time against that principle's
judge, and how often swapping positive/negative (concise/detailed) flips its ranking.

Part 2, policies, from the SFT model ``--sft``: DPO and group-robust DPO on the task's pairs, and with
``--rl`` GRPO on the BT reward model against GRPO on the mixture's min over heads (MaxMin). Each policy
is evaluated on 128 held-out prompts: per-group gold reward, win rate against the SFT model's samples
per group, KL.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user_number(user: str) -> int:
    return int(user.rsplit("-", 1)[1])


def train_rm(kind: str, out: Path, train_file: Path, eval_file: Path, steps: int) -> Path:
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    extra = {"mixture": ["reward.components=2", "reward.em_every=20"], "pal": ["reward.components=2", "reward.em_every=20"], "vpl": ["reward.context_pairs=2"]}.get(kind, [])
    recipe = load_recipe({"algorithm": "reward"}, [
        f"reward.type={kind}", f"data.train={train_file}", f"data.eval={eval_file}", "data.max_length=64", f"train.max_steps={steps}",
        "train.batch_size=32", "train.lr=1e-3", "train.warmup_ratio=0.05", "train.eval_every=1000", "train.log_every=20",
        "train.progress=false", f"train.output_dir={out / kind}", *extra,
    ])
    return train(recipe)


def accuracy(d: torch.Tensor) -> float:
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


def user_accuracies(kind: str, folder: Path, test_rows: list[dict], context: int) -> dict[str, float]:
    """Accuracy on each test user's pairs after the first ``context`` (which the model may read)."""
    from alignkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(folder)
    users = sorted({r["user"] for r in test_rows})
    out = {}
    if kind == "scalar":
        from alignkit.rewards import build_reward_source

        source = build_reward_source(str(folder))
    else:
        from alignkit.algorithms.reward.users import UserRewardModel, score_texts

        model = UserRewardModel.from_pretrained(folder)
    for user in users:
        rows = [r for r in test_rows if r["user"] == user]
        ctx, rest = rows[:context], rows[context:]
        prompts = [r["prompt"] for r in rest]
        if kind == "scalar":
            d = source.score(prompts, [r["chosen"] for r in rest]) - source.score(prompts, [r["rejected"] for r in rest])
            out[user] = accuracy(d)
            continue
        fc = score_texts(model, tokenizer, prompts, [r["chosen"] for r in rest])
        fr = score_texts(model, tokenizer, prompts, [r["rejected"] for r in rest])
        cp = [r["prompt"] for r in ctx]
        cc, cr = score_texts(model, tokenizer, cp, [r["chosen"] for r in ctx]), score_texts(model, tokenizer, cp, [r["rejected"] for r in ctx])
        seen = user in model.users
        if kind == "mixture":
            from alignkit.objectives.pluralistic import em_responsibilities

            if seen:
                resp = model.extra.responsibilities[model.users.index(user)]
            else:
                resp = em_responsibilities(cc - cr, torch.zeros(len(ctx), dtype=torch.long), 1, model.extra.log_prior)[0]
            out[user] = accuracy(((fc - fr) * resp).sum(-1))
        elif kind == "pal":
            from alignkit.algorithms.reward.pal import fit_user, user_reward

            weights = torch.softmax(model.extra.user_logits[model.users.index(user)].detach(), -1) if seen else fit_user(model, cc, cr)
            out[user] = accuracy(user_reward(model, fc, weights) - user_reward(model, fr, weights))
        elif kind == "vpl":
            from alignkit.algorithms.reward.vpl import user_latent

            z = user_latent(model, cc, cr).detach()
            with torch.no_grad():
                out[user] = accuracy(model.extra.score(fc, z[None]) - model.extra.score(fr, z[None]))
    return out


def reward_models(out: Path, steps: int, context: int, kinds: list[str], reuse: bool = False) -> dict:
    from alignkit.config import TaskConfig
    from alignkit.tasks import get_task, task_rows

    config = TaskConfig(name="pluralistic")
    task = get_task(config)
    train_rows = [r for r in task_rows(task, "pair", 2048, "train", config) if user_number(r["user"]) < 6]
    test_rows = task_rows(task, "pair", 3072, "test", config)
    seen_test = [r for r in test_rows if user_number(r["user"]) < 6]
    train_file = write_jsonl(out / "data" / "train.jsonl", train_rows)
    eval_file = write_jsonl(out / "data" / "eval.jsonl", seen_test[:256])
    result = {"n_train_pairs": len(train_rows), "context_pairs": context, "models": {}}
    for kind in kinds:
        folder = out / "rm" / kind / "final"
        if not (reuse and folder.exists()):
            folder = train_rm(kind, out / "rm", train_file, eval_file, steps)
        per_user = user_accuracies(kind, folder, test_rows, context)
        summary = {}
        for group in ("majority", "minority"):
            for status, keep in (("seen", lambda n: n < 6), ("new", lambda n: n >= 6)):
                values = [a for u, a in per_user.items() if u.startswith(group) and keep(user_number(u))]
                summary[f"{group}/{status}"] = sum(values) / len(values)
        summary["worst_user"] = min(per_user.values())
        result["models"][kind] = {"per_user": per_user, "by_group": summary}
        print(kind, json.dumps(summary), flush=True)
    return result


def policies(out: Path, sft: Path, rl: bool, rm_dir: Path | None, prompts: int, overrides: list[str], only: list[str], tag: str = "") -> dict:
    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.evaluation.policy import ReferenceEvaluator
    from alignkit.tasks import get_task

    runs = {
        "dpo": ("recipes/pluralistic/dpo.yaml", []),
        "group_dpo": ("recipes/pluralistic/group_dpo.yaml", []),
    }
    if rl and rm_dir is not None:
        runs["grpo_bt"] = ("recipes/pluralistic/maxmin_grpo.yaml", [f"rl.reward={rm_dir / 'scalar' / 'final'}"])
        runs["maxmin_grpo"] = ("recipes/pluralistic/maxmin_grpo.yaml", [f"rl.reward.path={rm_dir / 'mixture' / 'final'}"])
    runs = {f"{name}{tag}": run for name, run in runs.items() if not only or name in only}
    finals = {}
    for name, (recipe, extra) in runs.items():
        finals[name] = train(load_recipe(recipe, [f"model.path={sft}", f"train.output_dir={out / 'policy' / name}", "train.progress=false", *extra, *overrides]))
    task = get_task("pluralistic")
    evaluator = ReferenceEvaluator.from_dir(task, sft, n_prompts=prompts, n_samples=2)
    keep = ("gold_reward", "gold_reward_se", "kl", "win_rate", "gold/majority", "gold/minority", "gold/worst_group",
            "win_rate/majority", "win_rate/minority", "malformed", "gold/majority_se", "gold/minority_se")
    result = {"sft": {k: v for k, v in evaluator.evaluate(sft, "sft").items() if k in keep}}
    for name, folder in finals.items():
        result[name] = {k: v for k, v in evaluator.evaluate(folder, name).items() if k in keep}
        print(name, json.dumps(result[name]), flush=True)
    return result


def conditioned_models(out: Path, steps: int, pairs: int, reuse: bool = False) -> dict:
    """Part 3: the context-aware RM and SALMON's principle-conditioned RM, trained from the task (the tiny model
    from scratch), scored on held-out pairs under each condition."""
    import random

    from alignkit.algorithms import train
    from alignkit.algorithms.reward.context import distinct_pair, group_contexts
    from alignkit.algorithms.reward.principles import PRINCIPLES, principle_score, principle_text
    from alignkit.config import TaskConfig, load_recipe
    from alignkit.rewards import build_reward_source
    from alignkit.tasks import get_task, task_rows

    config = TaskConfig(name="pluralistic")
    task = get_task(config)
    folders = {}
    for kind in ("context", "principles"):
        folder = out / "conditioned" / kind / "final"
        if not (reuse and folder.exists()):
            folder = train(load_recipe(f"recipes/pluralistic/{kind}_reward.yaml", [
                f"train.max_steps={steps}", "train.progress=false", "train.eval_every=1000", f"train.output_dir={out / 'conditioned' / kind}",
                "task.n_train=4096"]))
        folders[kind] = folder
    result: dict = {"steps": steps}
    # context: each group's held-out pairs (labelled by that group) under its own training wordings, unseen
    # wordings, and the other group's wordings
    rows = task_rows(task, "pair", pairs, "test", config)
    seen, unseen = group_contexts(task, "train"), group_contexts(task, "unseen")
    ctx: dict = {}
    for group in task.group_names:
        mine = [r for r in rows if r["group"] == group]
        other = next(g for g in task.group_names if g != group)
        prompts = [r["prompt"] for r in mine]
        for label, wordings in (("seen", seen[group]), ("unseen", unseen[group]), ("other_group", seen[other])):
            accs = {}
            for w in wordings:
                source = build_reward_source({"type": "model", "path": str(folders["context"]), "context": w})
                d = source.score(prompts, [r["chosen"] for r in mine]) - source.score(prompts, [r["rejected"] for r in mine])
                accs[w] = accuracy(d)
            ctx[f"{group}/{label}"] = sum(accs.values()) / len(accs)
            ctx[f"{group}/{label}/per_wording"] = accs
        ctx[f"{group}/pairs"] = len(mine)
    result["context"] = ctx
    print("context", json.dumps({k: v for k, v in ctx.items() if "per_wording" not in k}), flush=True)
    # principles: held-out base pairs ranked under one principle, against that principle's judge
    rng = random.Random(f"{task.seed}-principles-eval")
    prompts, a, b = [], [], []
    for p in task.prompts(pairs, "test"):
        x, y = distinct_pair(task, p, rng)
        prompts.append(p), a.append(x), b.append(y)
    margins, pr = {}, {}
    for name in PRINCIPLES:
        source = build_reward_source({"type": "model", "path": str(folders["principles"]), "principles": principle_text([name])})
        margins[name] = source.score(prompts, a) - source.score(prompts, b)
        gold = torch.tensor([principle_score(task, [name], p, x) - principle_score(task, [name], p, y) for p, x, y in zip(prompts, a, b)])
        keep = gold != 0
        pr[f"accuracy/{name}"] = float(((margins[name] > 0) == (gold > 0))[keep].float().mean())
        pr[f"pairs/{name}"] = int(keep.sum())
    for x, y in (("positive", "negative"), ("concise", "detailed")):
        pr[f"flipped/{x}_vs_{y}"] = float(((margins[x] > 0) != (margins[y] > 0)).float().mean())
    result["principles"] = pr
    print("principles", json.dumps(pr), flush=True)
    return result


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("reward_models", "policies", "conditioned") if k in result]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "reward_models":
            models = result[panel]["models"]
            cols = ["majority/seen", "minority/seen", "majority/new", "minority/new"]
            width = 0.8 / len(models)
            for i, (name, m) in enumerate(models.items()):
                ax.bar([j + i * width for j in range(len(cols))], [m["by_group"][c] for c in cols], width, label=name)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, fontsize=8)
            ax.axhline(0.5, color="grey", lw=0.5)
            ax.set_ylabel("pair accuracy (mean over users)")
            ax.set_title("reward models: users seen in training / new users")
        elif panel == "conditioned":
            ctx, pr = result[panel]["context"], result[panel]["principles"]
            labels = [f"{g}\n{w}" for g in ("majority", "minority") for w in ("seen", "unseen", "other_group")]
            values = [ctx[f"{g}/{w}"] for g in ("majority", "minority") for w in ("seen", "unseen", "other_group")]
            names = [k.split("/", 1)[1] for k in pr if k.startswith("accuracy/")]
            ax.bar(range(len(values)), values, 0.7, label="context RM: group's pairs under a context")
            ax.bar([len(values) + 0.5 + i for i in range(len(names))], [pr[f"accuracy/{n}"] for n in names], 0.7, label="principles RM: one principle")
            ax.set_xticks(list(range(len(values))) + [len(values) + 0.5 + i for i in range(len(names))], labels + names, fontsize=6, rotation=30)
            ax.axhline(0.5, color="grey", lw=0.5)
            ax.set_ylabel("pair accuracy")
            ax.set_title("conditioned reward models (held-out pairs)")
        else:
            pol = result[panel]
            names = list(pol)
            for j, group in enumerate(("majority", "minority")):
                ax.bar([i + 0.4 * j for i in range(len(names))], [pol[n][f"gold/{group}"] for n in names], 0.4, label=group)
            ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=15, fontsize=8)
            ax.axhline(0.0, color="grey", lw=0.5)
            ax.set_ylabel("mean gold reward of the group")
            ax.set_title("policies: gold reward per group")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/pluralistic-evidence"))
    parser.add_argument("--sft", type=Path, default=Path("runs/sft/final"))
    parser.add_argument("--rm-steps", type=int, default=120)
    parser.add_argument("--context", type=int, default=8)
    parser.add_argument("--models", default="scalar,mixture,pal,vpl")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--policy-set", action="append", default=[], help="KEY=VALUE override of every policy run (repeatable)")
    parser.add_argument("--policy-runs", type=lambda v: v.split(","), default=[], help="only these policy runs (dpo, group_dpo, grpo_bt, maxmin_grpo)")
    parser.add_argument("--policy-tag", default="", help="suffix of the runs' names (a variant of settings)")
    parser.add_argument("--rl", action="store_true", help="also GRPO on the BT RM vs MaxMin GRPO on the mixture (needs part 1)")
    parser.add_argument("--skip-rm", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="reward models whose final folder exists are evaluated, not trained again")
    parser.add_argument("--skip-policies", action="store_true")
    parser.add_argument("--conditioned", action="store_true", help="part 3: the context-aware and principle-conditioned reward models")
    parser.add_argument("--conditioned-steps", type=int, default=300)
    parser.add_argument("--conditioned-pairs", type=int, default=1024)
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/pluralistic.png"))
    args = parser.parse_args()
    result: dict = {}
    results_file = args.out / "results.json"
    if results_file.exists():
        result = json.loads(results_file.read_text())
    if not args.skip_rm:
        fresh = reward_models(args.out, args.rm_steps, args.context, args.models.split(","), args.reuse)
        fresh["models"] = {**result.get("reward_models", {}).get("models", {}), **fresh["models"]}  # a rerun of some models keeps the others
        result["reward_models"] = fresh
        results_file.write_text(json.dumps(result, indent=1))
    if not args.skip_policies:
        fresh = policies(args.out, args.sft, args.rl, args.out / "rm", args.prompts, args.policy_set, args.policy_runs, args.policy_tag)
        result["policies"] = {**result.get("policies", {}), **fresh}
        results_file.write_text(json.dumps(result, indent=1))
    if args.conditioned:
        result["conditioned"] = conditioned_models(args.out, args.conditioned_steps, args.conditioned_pairs, args.reuse)
        results_file.write_text(json.dumps(result, indent=1))
    figure(result, args.figure)
    print(json.dumps({k: v for k, v in result.items()}, indent=1)[:4000])


if __name__ == "__main__":
    main()
