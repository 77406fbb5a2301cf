"""Evidence for the self-play family (docs/results.md): on the intransitive task, Nash methods (SPPO, INPO,
EGPO) against Bradley-Terry DPO on the same oracle labels -- the style distribution and the exploitability
(max over pure styles s of P(s > pi) - 1/2) of the policy after every round, from the SFT start and from DPO's
skewed policy; and SPIN's gold reward per round.

    alignkit train recipes/sft.yaml train.output_dir=runs/h6/sft
    python benchmarks/selfplay_evidence.py --start runs/h6/sft/final --out runs/h6/evidence --figure docs/figures/selfplay_nash.png

Every run is an ``alignkit iterate`` recipe of ``recipes/`` (with the start, output folder and ``save_rounds``
overridden); a run whose summary already holds all its rounds is not run again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (recipe, overrides): every intransitive method sees 3 rounds of 128 prompts x 4 samples judged by the oracle
NASH = {
    "DPO (BT, same pairs)": ("recipes/selfplay/inpo.yaml", ["algorithm=dpo", "dpo.beta=0.5", "iterate.reference=previous", "iterate.builder_params={ties: false}"]),
    "SPPO": ("recipes/sppo.yaml", []),
    "INPO": ("recipes/selfplay/inpo.yaml", []),
    "EGPO (rounds)": ("recipes/selfplay/inpo.yaml", ["iterate.reference=fixed", "iterate.update=extragradient", "sppo.tau=0.2"]),
}
SPIN = ("recipes/spin.yaml", [])


def run(recipe: str, overrides: list[str], out: Path) -> dict:
    from alignkit.loops import iterate

    summary = out / "rounds" / "summary.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if len(done["rounds"]) == 3 and all(r.get("eval") for r in done["rounds"]):
            return done
    iterate(ROOT / recipe, overrides + [f"train.output_dir={out}", "train.progress=false", "train.overwrite=true"])
    return json.loads(summary.read_text())


def styles(model_dir: Path, task, prompts: list[str], seed: int) -> dict[str, float]:
    """The share of each style (single / and / but / malformed) in one sample per prompt of the model."""
    from transformers import AutoModelForCausalLM

    from alignkit.models.loading import load_tokenizer
    from alignkit.rollout.generate import generate

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    samples = generate(model, load_tokenizer(model_dir), prompts, n=1, max_new_tokens=48, temperature=1.0, seed=seed)
    counts = {"single": 0, "and": 0, "but": 0, "malformed": 0}
    for p, s in zip(prompts, samples):
        counts[task.style(p, s.completion) or "malformed"] += 1
    return {k: v / len(prompts) for k, v in counts.items()}


def exploitability(task, dist: dict[str, float]) -> tuple[float, str]:
    """max_s P(s > pi) - 1/2 over the pure styles s, with pi's style distribution ``dist`` (malformed: None)."""
    best = max(("single", "and", "but"), key=lambda s: sum(p * task.style_preference(s, None if t == "malformed" else t) for t, p in dist.items()))
    value = sum(p * task.style_preference(best, None if t == "malformed" else t) for t, p in dist.items())
    return value - 0.5, best


def nash_table(task, prompts: list[str], start: Path, out_dir: Path, names: list[str]) -> dict[str, list[dict]]:
    """Run the ``names`` of :data:`NASH` from ``start``; the style distribution and exploitability of every round's model."""
    table: dict[str, list[dict]] = {}
    for name in names:
        recipe, extra = NASH[name]
        out = out_dir / name.split()[0].lower().replace("(", "")
        run(recipe, extra + [f"model.path={start}", "iterate.save_rounds=true", "iterate.eval_prompts=64"], out)
        rows = []
        for r, model_dir in enumerate([start] + [out / "rounds" / f"model-{i}" for i in range(3)]):
            dist = styles(model_dir, task, prompts, seed=1234)
            value, best = exploitability(task, dist)
            rows.append({"round": r, **dist, "exploitability": value, "best_response": best})
        table[name] = rows
        print(out_dir.name, name, json.dumps(rows))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=Path, required=True, help="the SFT model (recipes/sft.yaml)")
    parser.add_argument("--out", type=Path, default=Path("runs/selfplay_evidence"))
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/selfplay_nash.png"))
    parser.add_argument("--prompts", type=int, default=256, help="held-out prompts sampled once per model for the style distribution")
    args = parser.parse_args()
    from alignkit.tasks import get_task

    task = get_task("intransitive")
    prompts = task.prompts(args.prompts, "test")
    start = args.start.resolve()
    table = nash_table(task, prompts, start, args.out, list(NASH))
    spin = run(SPIN[0], SPIN[1] + [f"model.path={start}"], args.out / "spin")
    spin_gold = [spin["start"]["gold_reward"]] + [r["eval"]["gold_reward"] for r in spin["rounds"]]
    spin_se = [spin["start"]["gold_reward_se"]] + [r["eval"]["gold_reward_se"] for r in spin["rounds"]]
    print("SPIN gold per round", spin_gold, "s.e.", spin_se)
    # a start far from the equilibrium: DPO's policy after its 3 rounds (skewed toward 'and'), then 3 more rounds of each
    skewed_start = (args.out / "dpo" / "rounds" / "model-2").resolve()
    skewed = nash_table(task, prompts, skewed_start, args.out / "skewed", ["DPO (BT, same pairs)", "SPPO", "INPO"])
    (args.out / "evidence.json").write_text(json.dumps({"nash": table, "skewed": skewed, "spin": {"gold": spin_gold, "se": spin_se}}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plot_rounds import save_figure

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    axes = list(axes.flat)
    for ax, results, where in ((axes[0], table, "from the SFT start"), (axes[1], skewed, "from DPO's skewed policy")):
        for name, rows in results.items():
            ax.plot([r["round"] for r in rows], [r["exploitability"] for r in rows], marker="o", label=name)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set(xlabel="round (0 = start)", ylabel="exploitability: max_s P(s > pi) - 1/2", title=f"intransitive task, {where}")
        ax.legend(fontsize=8)
    kinds = ["single", "and", "but", "malformed"]
    bars = [(n, table[n][-1]) for n in table] + [(f"{n.split(' (')[0]} (skewed)", skewed[n][-1]) for n in skewed]
    bottom = [0.0] * len(bars)
    for kind in kinds:
        values = [row[kind] for _, row in bars]
        axes[2].bar(range(len(bars)), values, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, values)]
    axes[2].set_xticks(range(len(bars)), [n.split(" (BT")[0] for n, _ in bars], rotation=20, fontsize=8)
    axes[2].set(ylabel="share of samples", title="style distribution after the 3 rounds (equilibrium: 1/3 each)")
    axes[2].legend(fontsize=8)
    axes[3].errorbar(range(len(spin_gold)), spin_gold, yerr=spin_se, marker="o")
    axes[3].set(xlabel="round (0 = SFT start)", ylabel="mean gold reward (held-out)", title="SPIN (sentiment task, no new labels)")
    save_figure(fig, axes, args.figure)


if __name__ == "__main__":
    main()
