"""DPO with alignkit vs TRL's DPOTrainer: same tiny model, same pairs, same settings, fp32, on this machine.

    HF_HUB_OFFLINE=1 python benchmarks/dpo_vs_trl.py            # defaults below, a couple of minutes on 2 cores
    HF_HUB_OFFLINE=1 python benchmarks/dpo_vs_trl.py --steps 8  # quicker

The parent process builds a tiny Llama (build_tiny; hidden 256, 4 layers by default) and a pair data set
whose prompts are long (several reviews of the sentiment task followed by the prompt to complete, so each
prompt is several times longer than its completions), measures the fp32 matmul throughput, then trains
each side in its own fresh subprocess (one after the other, so each has the cores to itself):

* alignkit: ``alignkit.algorithms.train(load_recipe(...))`` with its defaults (prefix-shared packed rows,
  reference log-probs cached before training). The time is the whole ``train()`` call: model load,
  tokenization, the reference pass and the loop (saving is switched off).
* TRL: ``DPOTrainer`` with an explicit reference model (a deep copy of the policy), fp32 (``bf16=False``),
  no gradient checkpointing, the same optimizer (AdamW torch, same betas/eps, no weight decay), linear
  schedule without warmup, grad-norm clipping 1.0, loss ``sigmoid``. The time is ``trainer.train()`` only
  (TRL's tokenization and model loading happen before it and are not counted).

Both see the same pairs in the same order (TRL's data set is put in alignkit's order for seed 0 and read
sequentially), the same batch size, steps, lr and beta, so the first logged losses agree (the first one is
log 2 on both sides: the policy is the reference).

Reported per side: pairs/s (pairs trained / timed seconds), peak RSS of the subprocess (ru_maxrss) and the
peak RSS growth during the timed part over the RSS just before it (sampled every 5 ms), achieved model
FLOP/s ≈ (6·N·training tokens + 2·N·reference tokens) / time with N the parameter count and only real (non
pad) tokens counted, as a fraction of the measured fp32 matmul rate, and the first logged losses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------------------------------
# set-up (parent)
# --------------------------------------------------------------------------------------------------
def make_pairs(n: int, context_reviews: int, seed: int = 0) -> list[dict]:
    """Pairs whose prompt is ``context_reviews`` complete reviews followed by a new review prompt."""
    from alignkit.tasks.sentiment import SentimentTask

    task = SentimentTask(seed=seed)
    rng = random.Random(f"bench-{seed}")
    prompts, a, b = [], [], []
    for prompt in task.prompts(n, "train"):
        prompts.append(review_context(task, context_reviews, rng) + " " + prompt)
        a.append(task.sample_completion(prompt, rng))
        while True:
            b_ = task.sample_completion(prompt, rng)
            if b_ != a[-1]:
                break
        b.append(b_)
    rows = task.label_pairs(prompts, a, b, seed=seed)
    assert len(rows) == n
    return rows


def matmul_flops(size: int = 1024, seconds: float = 2.0) -> float:
    import torch

    x, y = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        x @ y
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x @ y
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)


from _common import PeakRSS, review_context  # noqa: E402  (benchmarks/ is the script folder)


# --------------------------------------------------------------------------------------------------
# the two sides (each in its own subprocess)
# --------------------------------------------------------------------------------------------------
def run_alignkit(work: Path, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.engine.tracking import read_metrics

    recipe = load_recipe(
        {
            "algorithm": "dpo",
            "model": {"path": str(work / "model"), "dtype": "float32"},
            "data": {"train": str(work / "pairs.jsonl"), "max_length": 1024},
            "task": {"n_eval": 0},
            "dpo": {"loss": "dpo", "beta": args.beta, "reference": "cache"},
            "train": {
                "output_dir": str(work / "alignkit-run"), "seed": 0, "max_steps": args.steps, "batch_size": args.batch_size,
                "lr": args.lr, "scheduler": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                "precision": "fp32", "log_every": 1, "progress": False, "save_final": False,
            },
        }
    )
    # warm the imports that train() does lazily (the TRL side has them done before its timer too)
    AutoTokenizer.from_pretrained(str(work / "model"))
    AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32)
    import accelerate  # noqa: F401

    from alignkit.engine.strategies import build_strategy

    build_strategy()  # the process layout, outside the timer
    with PeakRSS() as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        train(recipe)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    losses = [r["loss"] for r in read_metrics(work / "alignkit-run") if "loss" in r]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses, "rss_base": mem.base, "rss_peak_timed": mem.peak}


def run_trl(work: Path, args) -> dict:
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
    # alignkit's order for seed 0, epoch 0 (engine.loop.DataOrder), read sequentially by TRL
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    dataset = Dataset.from_list([rows[i] for i in perm])
    tokenizer = AutoTokenizer.from_pretrained(str(work / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32)
    ref_model = copy.deepcopy(model).eval()
    config = DPOConfig(
        output_dir=str(work / "trl-run"), seed=0, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        beta=args.beta, loss_type=["sigmoid"], bf16=False, fp16=False, gradient_checkpointing=False,
        precompute_ref_log_probs=False, max_length=None, train_sampling_strategy="sequential",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset, processing_class=tokenizer)
    with PeakRSS() as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses, "rss_base": mem.base, "rss_peak_timed": mem.peak}


# --------------------------------------------------------------------------------------------------
def child(side: str, work: Path, args) -> None:
    result = (run_alignkit if side == "alignkit" else run_trl)(work, args)
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    (work / f"result-{side}.json").write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--context-reviews", type=int, default=4, help="complete reviews before the prompt (prompt length)")
    p.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; the fastest counts")
    p.add_argument("--work", type=Path, default=Path("runs/bench-dpo-vs-trl"))
    p.add_argument("--side", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return child(args.side, args.work, args)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.data.records import write_jsonl
    from alignkit.models.tiny import TinyModelConfig, build_tiny
    from alignkit.tasks.sentiment import SentimentTask

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    peak_flops = matmul_flops()
    shape = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=4, intermediate_size=4 * args.hidden, max_position_embeddings=1024)
    build_tiny(work / "model", SentimentTask().corpus(), shape)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(work / "model")).parameters())
    rows = make_pairs(args.steps * args.batch_size, args.context_reviews)
    write_jsonl(work / "pairs.jsonl", rows)

    tok = AutoTokenizer.from_pretrained(str(work / "model"))
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    lengths = [(len(ids(r["prompt"])), len(ids(r["chosen"])) + 1, len(ids(r["rejected"])) + 1) for r in rows]
    n_p, n_c, n_r = (sum(x[i] for x in lengths) for i in range(3))
    shared_tokens = n_p + n_c + n_r  # packed, prompt once
    separate_tokens = 2 * n_p + n_c + n_r  # padded rows, prompt twice (real tokens only)
    work_tokens = {
        "alignkit": (shared_tokens, shared_tokens),  # (trained, reference forward): reference pass once
        "trl": (separate_tokens, separate_tokens),  # reference model forward every step
    }
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"fp32 matmul 1024x1024: {peak_flops / 1e9:.1f} GFLOP/s")
    print(f"model: llama hidden {args.hidden}, {args.layers} layers, vocab {len(tok)}, {n_params / 1e6:.2f} M parameters")
    print(f"data: {len(rows)} pairs; mean tokens prompt {n_p / len(rows):.1f}, chosen {n_c / len(rows):.1f}, rejected {n_r / len(rows):.1f}")
    print(f"settings: {args.steps} steps x batch {args.batch_size}, lr {args.lr}, beta {args.beta}, fp32, no gradient checkpointing")

    results: dict[str, dict] = {}
    runs: dict[str, list[float]] = {"trl": [], "alignkit": []}
    cpu_runs: dict[str, list[float]] = {"trl": [], "alignkit": []}
    for _ in range(args.repeats):
        for side in ("trl", "alignkit"):
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--beta", str(args.beta)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = json.loads((work / f"result-{side}.json").read_text())
            runs[side].append(r["seconds"])
            cpu_runs[side].append(r["cpu_seconds"])
            if side not in results or r["seconds"] < results[side]["seconds"]:
                results[side] = r
    for side, r in results.items():
        r["runs_seconds"] = runs[side]
        r["runs_cpu_seconds"] = cpu_runs[side]
        r["pairs_per_cpu_s"] = len(rows) / min(cpu_runs[side])
        r["pairs_per_s"] = len(rows) / r["seconds"]
        trained, ref = work_tokens[side]
        r["flops"] = (6 * n_params * trained + 2 * n_params * ref) / r["seconds"]

    a, t = results["alignkit"], results["trl"]
    mib = lambda x: f"{x / 2**20:.0f} MiB"  # noqa: E731
    print()
    print(f"{'':34}{'alignkit':>14}{'TRL':>14}")
    print(f"{'timed seconds (each run)':34}{' '.join(f'{x:.1f}' for x in a['runs_seconds']):>20}{' '.join(f'{x:.1f}' for x in t['runs_seconds']):>20}")
    print(f"{'timed seconds (fastest)':34}{a['seconds']:>14.2f}{t['seconds']:>14.2f}")
    print(f"{'pairs/s':34}{a['pairs_per_s']:>14.2f}{t['pairs_per_s']:>14.2f}")
    print(f"{'CPU seconds, all threads (each run)':34}{' '.join(f'{x:.1f}' for x in a['runs_cpu_seconds']):>20}{' '.join(f'{x:.1f}' for x in t['runs_cpu_seconds']):>20}")
    print(f"{'pairs per CPU-second (best run)':34}{a['pairs_per_cpu_s']:>14.2f}{t['pairs_per_cpu_s']:>14.2f}")
    print(f"{'peak RSS (process)':34}{mib(a['ru_maxrss']):>14}{mib(t['ru_maxrss']):>14}")
    print(f"{'peak RSS growth while timed':34}{mib(a['rss_peak_timed'] - a['rss_base']):>14}{mib(t['rss_peak_timed'] - t['rss_base']):>14}")
    print(f"{'achieved GFLOP/s':34}{a['flops'] / 1e9:>14.2f}{t['flops'] / 1e9:>14.2f}")
    print(f"{'  fraction of fp32 matmul rate':34}{a['flops'] / peak_flops:>14.1%}{t['flops'] / peak_flops:>14.1%}")
    for i in range(min(3, len(a['losses']), len(t['losses']))):
        print(f"{f'loss step {i + 1}':34}{a['losses'][i]:>14.6f}{t['losses'][i]:>14.6f}")
    print(f"\nspeed-up alignkit / TRL: {a['pairs_per_s'] / t['pairs_per_s']:.2f}x pairs/s (wall), {a['pairs_per_cpu_s'] / t['pairs_per_cpu_s']:.2f}x pairs per CPU-second")
    rounds = [f"{tt / aa:.2f}x" for aa, tt in zip(a["runs_seconds"], t["runs_seconds"])]
    print(f"speed-up in each round (TRL run, then alignkit run): {', '.join(rounds)}")
    print(f"load average during the benchmark (other work on the machine): {os.getloadavg()}")
    (work / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "matmul_flops": peak_flops, "n_params": n_params, "results": results}, indent=1))


if __name__ == "__main__":
    main()
