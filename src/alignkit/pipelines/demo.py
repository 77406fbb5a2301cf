"""The embedded default: SFT → preference pairs from the SFT model's own samples → DPO → evaluation.

Everything runs offline on the built-in controlled-sentiment task with a tiny model built from scratch:

1. build a byte-level BPE tokenizer and a tiny Llama on the task's text;
2. SFT on demonstrations from the neutral base distribution;
3. sample two completions per training prompt from the SFT model and label each pair by a Bradley–Terry
   draw on the gold reward;
4. DPO from the SFT model on those pairs (checkpoints along the way);
5. evaluate the SFT model and each DPO checkpoint on held-out prompts: mean gold reward, KL to the SFT
   model, samples;
6. write ``report.html`` with training curves and the gold-reward-vs-KL plot, and ``results.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..algorithms import train
from ..config import load_recipe
from ..data.records import write_jsonl
from ..engine.checkpoint import list_checkpoints
from ..engine.tracking import read_metrics
from ..evaluation.policy import evaluate_policy
from ..evaluation.report import plot_curves, plot_frontier, write_report
from ..models.loading import load_policy_for_inference, load_tokenizer
from ..tasks import get_task
from .pairs import sample_pairs

SFT_RECIPE: dict[str, Any] = {
    "algorithm": "sft",
    "model": {"tiny": {"arch": "llama", "hidden_size": 96, "num_layers": 2, "num_heads": 4, "intermediate_size": 256}},
    "task": {"name": "sentiment", "n_train": 4096, "n_eval": 256},
    "data": {"max_length": 96},
    "train": {"lr": 3e-3, "epochs": 3, "batch_size": 32, "warmup_ratio": 0.05, "log_every": 8, "eval_every": 64},
}

DPO_RECIPE: dict[str, Any] = {
    "algorithm": "dpo",
    "dpo": {"loss": "dpo", "beta": 0.5, "reference": "cache"},
    "data": {"max_length": 96},
    "train": {"lr": 3e-4, "epochs": 2, "batch_size": 32, "warmup_ratio": 0.1, "log_every": 4, "save_every": 32, "save_total_limit": None},
}


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[alignkit demo] {message}", flush=True)


def run_demo(out_dir: str | Path = "runs/demo", n_pairs_prompts: int = 2048, n_eval_prompts: int = 256, seed: int = 0, quiet: bool = False,
             progress: bool = True) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task()
    # the demo owns its folder: running it again replaces its earlier runs
    common = [f"train.seed={seed}", f"train.progress={str(progress).lower()}", "train.overwrite=true"]

    _say("1/4 supervised fine-tuning of a tiny Llama on the synthetic language", quiet)
    sft_recipe = load_recipe(SFT_RECIPE, [f"train.output_dir={out / 'sft'}", *common])
    sft_dir = train(sft_recipe)

    _say("2/4 sampling pairs from the SFT model and labelling them with the gold reward (Bradley-Terry)", quiet)
    tokenizer = load_tokenizer(sft_dir)
    sft_model = load_policy_for_inference(sft_dir)
    prompts = task.prompts(n_pairs_prompts, "train")
    pairs = sample_pairs(sft_model, tokenizer, task, prompts, sample_seed=seed, label_seed=seed, progress=progress and not quiet)
    pairs_path = write_jsonl(out / "pairs.jsonl", pairs)

    _say(f"3/4 DPO on {len(pairs)} pairs", quiet)
    dpo_recipe = load_recipe(DPO_RECIPE, [f"train.output_dir={out / 'dpo'}", f"model.path={sft_dir}", f"data.train={pairs_path}", *common])
    dpo_dir = train(dpo_recipe)

    _say("4/4 evaluating on held-out prompts: gold reward, KL to the SFT model", quiet)
    eval_prompts = task.prompts(n_eval_prompts, "test")

    def evaluate(name, path):
        model = sft_model if path == sft_dir else load_policy_for_inference(path)
        return evaluate_policy(name, model, tokenizer, task, eval_prompts, reference=sft_model, n_samples=2, seed=seed + 1)

    sft_eval = evaluate("sft", sft_dir)
    checkpoints = [(int(p.name.split("-")[1]), p / "model") for p in list_checkpoints(out / "dpo")]
    along = [evaluate(f"dpo@{step}", path) for step, path in checkpoints]
    dpo_eval = evaluate("dpo", dpo_dir)

    frontier = {"DPO (along training)": [(sft_eval.kl or 0.0, sft_eval.gold_reward, "SFT")]}
    frontier["DPO (along training)"] += [(e.kl, e.gold_reward, e.name.split("@")[1]) for e in along]
    frontier["DPO (along training)"].append((dpo_eval.kl, dpo_eval.gold_reward, "final"))
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    sft_metrics, dpo_metrics = read_metrics(out / "sft"), read_metrics(out / "dpo")
    curves_sft = plot_curves({"sft": sft_metrics}, ["loss", "eval/loss", "lr"], plots / "sft_curves.png", "SFT training")
    dpo_keys = ["loss", "rewards/accuracy", "rewards/margins", "logps/chosen", "logps/rejected"]
    curves_dpo = plot_curves({"dpo": dpo_metrics}, dpo_keys, plots / "dpo_curves.png", "DPO training")
    frontier_png = plot_frontier(frontier, plots / "gold_reward_vs_kl.png")

    summary = [{k: v for k, v in e.as_dict().items() if k != "samples"} for e in [sft_eval, *along, dpo_eval]]
    results = {
        "sft_gold_reward": sft_eval.gold_reward,
        "dpo_gold_reward": dpo_eval.gold_reward,
        "gain": dpo_eval.gold_reward - sft_eval.gold_reward,
        "dpo_kl_to_sft": dpo_eval.kl,
        "pairs": len(pairs),
        "evaluations": summary,
        "samples": {"sft": sft_eval.samples, "dpo": dpo_eval.samples},
        "seconds": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    blocks: list[tuple[str, Any]] = [
        ("Result", f"Mean gold reward on {len(eval_prompts)} held-out prompts (2 samples each): "
         f"SFT {sft_eval.gold_reward:+.3f} ± {sft_eval.gold_reward_se:.3f}, "
         f"DPO {dpo_eval.gold_reward:+.3f} ± {dpo_eval.gold_reward_se:.3f} (gain {results['gain']:+.3f}) at KL(DPO ‖ SFT) = {dpo_eval.kl:.2f} nats. "
         f"Run time {results['seconds']:.0f} s."),
        ("Evaluations", summary),
        ("Gold reward vs KL", frontier_png),
        ("SFT training", curves_sft),
        ("DPO training", curves_dpo),
        ("Samples from the SFT model", sft_eval.samples),
        ("Samples from the DPO model", dpo_eval.samples),
        ("How to reproduce", "alignkit demo --out " + str(out)),
    ]
    report = write_report(out, "alignkit demo: SFT → DPO on controlled sentiment", [(h, c) for h, c in blocks if c is not None])
    results["report"] = str(report)
    _say(f"SFT gold reward {sft_eval.gold_reward:+.3f}, DPO {dpo_eval.gold_reward:+.3f} (gain {results['gain']:+.3f}), KL {dpo_eval.kl:.2f}", quiet)
    _say(f"report: {report}  ({results['seconds']:.0f} s)", quiet)
    return results
