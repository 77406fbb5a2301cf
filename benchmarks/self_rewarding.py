"""Evidence for self-rewarding with and without CREAM (docs/results.md): a tiny model taught to judge by
evaluation fine-tuning (EFT), then the self-rewarding loop with the policy as its own LLM-as-judge.

Self-rewarding LMs (Yuan et al. 2024) seed the model with instruction data (IFT) and evaluation data (EFT:
a prompt asking for a score, the target a score). Here the EFT targets come from the sentiment task's gold
reward: a completion's score is ``1`` when it is not in the task's language, else
``2 + round(7 (g + 1) / 2)`` (2 .. 9) for gold reward ``g`` in [-1, 1]. The model is SFT'd on IFT + EFT; then
the same recipe runs twice from it (``recipes/selfplay/self_rewarding.yaml``: the live policy judges its
samples, best vs worst, DPO's loss; ``recipes/selfplay/cream.yaml``: the same with CREAM's consistency
C as the soft label). Reported: the judge's agreement with gold (Kendall tau_b over samples, accuracy of
the chosen-over-rejected pairs by gold, unparseable answers) before the loop and in every round, and the
gold reward by round, per arm and seed; a third arm, the same loop judged by the
gold reward itself, is the ceiling.

    python benchmarks/self_rewarding.py --out runs/self_rewarding --figure docs/figures/self_rewarding.png

Finished steps (the SFT model, an arm whose summary holds all its rounds) are not run again.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "{prompt}{completion} score :"  # the EFT prompt; recipes/selfplay/{self_rewarding,cream}.yaml use the same
LOW, HIGH = 1, 9
# arm -> (folder name, recipe, overrides); the gold-judge arm is the same loop with the task's gold reward as the judge: the ceiling
ARMS = {
    "self-rewarding": ("plain", "recipes/selfplay/self_rewarding.yaml", []),
    "self-rewarding + CREAM": ("cream", "recipes/selfplay/cream.yaml", []),
    "gold judge (ceiling)": ("gold", "recipes/selfplay/self_rewarding.yaml", ["iterate.judge=gold"]),
}


def gold_score(gold: float) -> int:
    """The EFT target of a completion with gold reward ``gold``: 1 (malformed, gold < -1), else 2 .. 9."""
    if gold < -1.0:
        return LOW
    return 2 + int((7 * (gold + 1) / 2) + 0.5)


def corrupt(text: str, rng: random.Random) -> str:
    """A completion made malformed: the final '.' dropped, a word dropped, or a clause cut short."""
    words = text.split()
    how = rng.randrange(3)
    if how == 0:
        words = words[:-1]
    elif how == 1:
        del words[rng.randrange(len(words) - 1)]
    else:
        words = words[: rng.randint(1, max(1, len(words) - 2))] + ["."]
    return " " + " ".join(words)


def eft_rows(task, n: int, seed: int = 0) -> list[dict]:
    """``n`` evaluation examples: the task's base completions (20% made malformed) with their gold-derived scores."""
    rng = random.Random(f"eft-{seed}")
    rows = []
    for prompt in task.prompts(n, "eft"):
        completion = task.sample_completion(prompt, rng)
        if rng.random() < 0.2:
            completion = corrupt(completion, rng)
        score = gold_score(task.gold_reward(prompt, completion))
        rows.append({"prompt": TEMPLATE.format(prompt=prompt, completion=completion), "completion": f" {score}"})
    return rows


def make_start(out: Path, ift: int, eft: int, epochs: int) -> Path:
    """The IFT + EFT data, a tiny model (tokenizer trained on both) and its SFT; returns the SFT model folder."""
    from alignkit.algorithms import train
    from alignkit.config import TinyModelConfig, load_recipe
    from alignkit.models.tiny import build_tiny
    from alignkit.tasks import get_task

    final = out / "sft" / "final"
    if (final / "config.json").exists():
        return final
    task = get_task("sentiment")
    rows = task.sft_rows(ift, "train") + eft_rows(task, eft)
    random.Random(0).shuffle(rows)
    data = out / "ift_eft.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny = build_tiny(out / "tiny", task.corpus(2000) + [r["prompt"] + r["completion"] for r in rows[:2000]],
                      TinyModelConfig(arch="llama", hidden_size=96, num_layers=2, num_heads=4, intermediate_size=256))
    recipe = load_recipe({"algorithm": "sft"}, [
        f"model.path={tiny}", f"data.train={data}", "data.max_length=96", f"train.output_dir={out / 'sft'}", "train.lr=3e-3",
        f"train.epochs={epochs}", "train.batch_size=32", "train.warmup_ratio=0.05", "train.progress=false", "train.overwrite=true",
        "task.name=sentiment", "task.n_eval=0",
    ])
    train(recipe)
    return final


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau_b of two equally long lists (None when either is constant)."""
    from alignkit.loops.judges import rank_consistency

    c = rank_consistency(a, b)
    return None if c is None else 2 * c - 1


def judge_check(model_dir: Path, prompts: list[str], seed: int = 7) -> dict:
    """The model as judge of its own samples (2 per held-out prompt): agreement with gold and unparseable answers."""
    from transformers import AutoModelForCausalLM

    from alignkit.loops.judges import LLMJudge
    from alignkit.models.loading import load_tokenizer
    from alignkit.rollout.generate import generate
    from alignkit.tasks import get_task

    task = get_task("sentiment")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = load_tokenizer(model_dir)
    samples = generate(model, tokenizer, prompts, n=2, max_new_tokens=32, temperature=1.0, seed=seed)
    groups = [[samples[2 * i].completion, samples[2 * i + 1].completion] for i in range(len(prompts))]
    judgement = LLMJudge(model, tokenizer, template=TEMPLATE, max_new_tokens=3, low=LOW, high=HIGH).judge(prompts, groups)
    rows = [{"prompt": p, "completion": c, "score": s} for p, g, sc in zip(prompts, groups, judgement.scores) for c, s in zip(g, sc)]
    return agreement(task, rows)


def agreement(task, rows: list[dict]) -> dict:
    """Judge vs gold over sample rows ``{prompt, completion, score}``: Kendall tau_b on the scored samples, the
    share whose score equals the EFT target, the pair accuracy within prompts (judge order vs gold order, on
    pairs the judge does not tie), and the unscored share (an unparseable answer, or an empty sample)."""
    scored = [r for r in rows if r["score"] is not None]
    gold = [task.gold_reward(r["prompt"], r["completion"]) for r in scored]
    judged = [float(r["score"]) for r in scored]
    by_prompt: dict[tuple, list[tuple[float, float]]] = {}
    for r, g, s in zip(scored, gold, judged):
        by_prompt.setdefault((r.get("prompt_index"), r["prompt"]), []).append((s, g))
    right = total = 0.0
    for items in by_prompt.values():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (si, gi), (sj, gj) = items[i], items[j]
                if si == sj or gi == gj:
                    continue
                total += 1
                right += (si > sj) == (gi > gj)
    return {"samples": len(rows), "unscored": len(rows) - len(scored), "unscored_rate": (len(rows) - len(scored)) / max(len(rows), 1),
            "kendall_tau": kendall_tau(judged, gold), "exact": sum(s == gold_score(g) for s, g in zip(judged, gold)) / max(len(scored), 1),
            "pair_accuracy": right / total if total else None, "pairs": int(total)}


def round_agreement(task, run: Path, r: int) -> dict:
    """The round's judge against gold, from its provenance file, plus the gold accuracy of the trained pairs."""
    rows = [json.loads(x) for x in (run / "rounds" / f"round-{r}.jsonl").read_text().splitlines()]
    rows = [x for x in rows if x["source"] == "policy"]
    out = agreement(task, rows)
    chosen = {x["prompt_index"]: x for x in rows if "chosen" in x["used_as"]}
    rejected = {x["prompt_index"]: x for x in rows if "rejected" in x["used_as"]}
    wins = [task.gold_reward(c["prompt"], c["completion"]) - task.gold_reward(rejected[i]["prompt"], rejected[i]["completion"])
            for i, c in chosen.items() if i in rejected]
    out["trained_pairs"] = len(wins)
    out["trained_pair_gold_accuracy"] = (sum(w > 0 for w in wins) + 0.5 * sum(w == 0 for w in wins)) / len(wins) if wins else None
    return out


def run_arm(recipe: str, overrides: list[str], start: Path, out: Path, seed: int, rounds: int) -> dict:
    from alignkit.loops import iterate

    summary = out / "rounds" / "summary.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if len(done["rounds"]) == rounds and all(r.get("eval") for r in done["rounds"]):
            return done
    iterate(ROOT / recipe, [*overrides, f"model.path={start}", f"train.output_dir={out}", f"train.seed={seed}", f"iterate.rounds={rounds}",
                            "train.progress=false", "train.overwrite=true", "train.save_final=false"])
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/self_rewarding"))
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/self_rewarding.png"))
    parser.add_argument("--ift", type=int, default=2048, help="instruction (review) rows of the SFT data")
    parser.add_argument("--eft", type=int, default=3072, help="evaluation (judge) rows of the SFT data")
    parser.add_argument("--epochs", type=int, default=2, help="SFT epochs over IFT + EFT")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a busy machine)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from alignkit.tasks import get_task

    task = get_task("sentiment")
    start = make_start(args.out, args.ift, args.eft, args.epochs)
    before = judge_check(start, task.prompts(128, "test"))
    print("EFT judge before the loop", json.dumps(before))
    results: dict[str, list[dict]] = {}
    for name, (folder, recipe, overrides) in ARMS.items():
        for seed in args.seeds:
            run = args.out / f"{folder}-{seed}"
            summary = run_arm(recipe, overrides, start, run, seed, args.rounds)
            gold = [summary["start"]["gold_reward"]] + [r["eval"]["gold_reward"] for r in summary["rounds"]]
            se = [summary["start"]["gold_reward_se"]] + [r["eval"]["gold_reward_se"] for r in summary["rounds"]]
            judge = [round_agreement(task, run, r) for r in range(args.rounds)]
            for j, r in zip(judge, summary["rounds"]):  # the loop's own counts: answers that did not parse, empty samples
                j["unparseable"], j["empty"] = int(r.get("judge/unparseable") or 0), int(r["empty"])
            consistency = [r.get("cream/consistency") for r in summary["rounds"]]
            results.setdefault(name, []).append({"seed": seed, "gold": gold, "se": se, "judge": judge, "consistency": consistency,
                                                 "kl": [r["eval"].get("kl") for r in summary["rounds"]]})
            print(name, "seed", seed, "gold", [f"{g:+.3f}" for g in gold], "tau", [j["kendall_tau"] for j in judge],
                  "unparseable", [j["unparseable"] for j in judge], "empty", [j["empty"] for j in judge], "pair acc", [j["trained_pair_gold_accuracy"] for j in judge])
    (args.out / "evidence.json").write_text(json.dumps({"judge_before": before, "arms": results}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plot_rounds import save_figure

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    colors = {name: c for name, c in zip(ARMS, ("tab:blue", "tab:orange", "tab:green"))}
    for name, runs in results.items():
        for k, res in enumerate(runs):
            label = name if k == 0 else None
            xs = list(range(len(res["gold"])))
            axes[0].errorbar(xs, res["gold"], yerr=res["se"], marker="o", color=colors[name], alpha=0.8, capsize=2, label=label)
            if "gold" not in name:  # the gold judge agrees with gold by definition
                axes[1].plot(xs, [before["kendall_tau"]] + [j["kendall_tau"] for j in res["judge"]], marker="o", color=colors[name], label=label)
            axes[2].plot(xs[1:], [j["trained_pair_gold_accuracy"] for j in res["judge"]], marker="o", color=colors[name], label=label)
            if "CREAM" in name:
                axes[3].plot(xs[1:], res["consistency"], marker="o", color=colors[name], label=f"seed {res['seed']}", alpha=0.5 + 0.15 * k)
    axes[0].set(xlabel="round (0 = IFT+EFT start)", ylabel="mean gold reward (held-out)", title="gold reward by round (3 seeds per arm)")
    axes[1].set(xlabel="0: start, held-out; r: the judge of round r", ylabel="Kendall tau_b(judge score, gold)", title="the policy as judge of its samples")
    axes[2].axhline(0.5, color="grey", lw=0.8)
    axes[2].set(xlabel="round", ylabel="share of trained pairs right by gold", title="trained pairs (chosen better by gold)")
    axes[3].set(xlabel="round", ylabel="mean C = (tau_b(now, previous) + 1)/2", title="CREAM's consistency", ylim=(0.5, 1.02))
    for ax in axes:
        ax.set_xticks(range(args.rounds + 1) if ax is not axes[2] and ax is not axes[3] else range(1, args.rounds + 1))
        ax.legend(fontsize=8)
    save_figure(fig, axes, args.figure)


if __name__ == "__main__":
    main()
