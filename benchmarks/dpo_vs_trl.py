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
def make_pairs(n: int, context_reviews: int, seed: int = 0, completion_sentences: int = 1, chat: bool = False) -> list[dict]:
    """Pairs whose prompt is ``context_reviews`` complete reviews followed by a new review prompt; each
    completion is ``completion_sentences`` of the task's completions joined (longer completions). With
    ``chat`` the rows are conversations (a user turn, an assistant reply), rendered by the chat template
    on both sides."""
    from alignkit.tasks.sentiment import SentimentTask

    task = SentimentTask(seed=seed)
    rng = random.Random(f"bench-{seed}")
    prompts, a, b = [], [], []
    complete = lambda prompt: "".join(task.sample_completion(prompt, rng) for _ in range(completion_sentences))  # noqa: E731
    for prompt in task.prompts(n, "train"):
        prompts.append((review_context(task, context_reviews, rng) + " " + prompt).strip())
        a.append(complete(prompt))
        while True:
            b_ = complete(prompt)
            if b_ != a[-1]:
                break
        b.append(b_)
    rows = task.label_pairs(prompts, a, b, seed=seed)
    assert len(rows) == n
    if chat:
        user = lambda text: [{"role": "user", "content": "Continue this review: " + text}]  # noqa: E731
        reply = lambda text: [{"role": "assistant", "content": text.strip()}]  # noqa: E731
        rows = [{"prompt": user(r["prompt"]), "chosen": reply(r["chosen"]), "rejected": reply(r["rejected"])} for r in rows]
    return rows


from _common import PeakRSS, matmul_flops, review_context  # noqa: E402  (benchmarks/ is the script folder)


# --------------------------------------------------------------------------------------------------
# the two sides (each in its own subprocess)
# --------------------------------------------------------------------------------------------------
def run_alignkit(work: Path, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.engine.tracking import read_metrics

    model = {"path": str(work / "model"), "dtype": "float32", "attn_implementation": args.attn}
    if args.lora:
        model["lora"] = {"r": 16, "alpha": 32, "target_modules": "all-linear"}
    recipe = load_recipe(
        {
            "algorithm": "dpo",
            "model": model,
            "data": {"train": str(work / "pairs.jsonl"), "max_length": 1024},
            "task": {"n_eval": 0},
            "dpo": {"loss": "dpo", "beta": args.beta, "reference": "cache"},
            "train": {
                "output_dir": str(work / "alignkit-run"), "seed": 0, "max_steps": args.steps, "batch_size": args.batch_size,
                "lr": args.lr, "scheduler": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                "precision": args.precision, "log_every": 1, "progress": False, "save_final": False, "overwrite": True,
            },
        }
    )
    # warm the imports that train() does lazily (the TRL side has them done before its timer too)
    AutoTokenizer.from_pretrained(str(work / "model"))
    AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32)
    import accelerate  # noqa: F401
    if args.lora:
        import peft  # noqa: F401

    from alignkit.engine.strategies import build_strategy

    build_strategy()  # the process layout, outside the timer
    with PeakRSS() as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        train(recipe)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    losses = [r["loss"] for r in read_metrics(work / "alignkit-run") if "loss" in r]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses, "rss_base": mem.base, "rss_peak_timed": mem.peak}


def run_trl(work: Path, args, precompute: bool = False) -> dict:
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
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32, attn_implementation=args.attn)
    peft_config = None
    if args.lora:  # TRL's reference is then the policy with the adapter switched off
        from peft import LoraConfig

        peft_config, ref_model = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"), None
    else:
        ref_model = copy.deepcopy(model).eval()
    config = DPOConfig(
        output_dir=str(work / "trl-run"), seed=0, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        beta=args.beta, loss_type=["sigmoid"], bf16=args.precision.startswith("bf16"), fp16=False, gradient_checkpointing=False,
        precompute_ref_log_probs=precompute, max_length=None, train_sampling_strategy="sequential",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    with PeakRSS() as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses, "rss_base": mem.base, "rss_peak_timed": mem.peak}


# --------------------------------------------------------------------------------------------------
SIDES = {  # name -> how it runs; TRL's padding_free is disabled in TRL 1.16's DPOTrainer (it warns and pads)
    "alignkit": run_alignkit,
    "trl": run_trl,
    "trl-precompute": lambda work, args: run_trl(work, args, precompute=True),
}


def child(side: str, work: Path, args) -> None:
    result = SIDES[side](work, args)
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    (work / f"result-{side}.json").write_text(json.dumps(result))


def build_model_folder(work: Path, args) -> None:
    """``work/model``: the checkpoint of ``--model`` (copied), or a tiny Llama on ``--tokenizer``'s vocabulary
    (default: a tokenizer trained on the task's text, 443 tokens)."""
    import shutil

    from alignkit.models.tiny import TinyModelConfig, build_model, build_tiny
    from alignkit.tasks.sentiment import SentimentTask

    if (work / "model").exists():
        shutil.rmtree(work / "model")
    if args.model:
        shutil.copytree(args.model, work / "model")
        return
    shape = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=4, intermediate_size=4 * args.hidden, max_position_embeddings=2048)
    if not args.tokenizer:
        build_tiny(work / "model", SentimentTask().corpus(), shape)
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    build_model(tokenizer, shape).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")


def token_lengths(tok, rows: list[dict]) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) real tokens of each pair as the model sees them (chat template applied)."""
    if isinstance(rows[0]["prompt"], list):
        def ids(messages, generation_prompt=False):
            out = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
            return out["input_ids"] if hasattr(out, "keys") else out  # a BatchEncoding in transformers 5
        lengths = []
        for r in rows:
            n_p = len(ids(r["prompt"], True))
            lengths.append((n_p, len(ids(r["prompt"] + r["chosen"])) - n_p, len(ids(r["prompt"] + r["rejected"])) - n_p))
        return lengths
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [(len(ids(r["prompt"])), len(ids(r["chosen"])) + 1, len(ids(r["rejected"])) + 1) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--model", help="a checkpoint folder to train (default: a tiny Llama built here)")
    p.add_argument("--tokenizer", help="with the tiny Llama: this tokenizer's vocabulary (e.g. SmolLM2's 49k) instead of the task's 443 tokens")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--context-reviews", type=int, default=4, help="complete reviews before the prompt (prompt length)")
    p.add_argument("--completion-sentences", type=int, default=1, help="task completions joined into one reply (completion length)")
    p.add_argument("--chat", action="store_true", help="conversational rows rendered by the model's chat template")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16_params"], default="fp32",
                   help="bf16: autocast on both sides (fp32 weights); bf16_params: alignkit keeps the weights in bf16 with fp32 master "
                        "weights in its optimizer (train.precision=bf16_params), TRL runs its bf16 autocast (bf16=True, its mixed precision)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention kernel on both sides (from_pretrained's attn_implementation)")
    p.add_argument("--lora", action="store_true", help="LoRA r=16 on all linear layers, both sides (reference = adapter off)")
    p.add_argument("--trl-sides", default="trl,trl-precompute", help="TRL configurations to run; the fastest is the comparison")
    p.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; the fastest counts")
    p.add_argument("--work", type=Path, default=Path("runs/bench-dpo-vs-trl"))
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return child(args.side, args.work, args)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.data.records import write_jsonl

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    peak_flops = matmul_flops(dtype=args.precision)
    build_model_folder(work, args)
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"))
    n_params = sum(p.numel() for p in model.parameters())
    vocab, hidden, layers = model.config.vocab_size, model.config.hidden_size, model.config.num_hidden_layers
    del model
    rows = make_pairs(args.steps * args.batch_size, args.context_reviews, completion_sentences=args.completion_sentences, chat=args.chat)
    write_jsonl(work / "pairs.jsonl", rows)

    tok = AutoTokenizer.from_pretrained(str(work / "model"))
    lengths = token_lengths(tok, rows)
    n_p, n_c, n_r = (sum(x[i] for x in lengths) for i in range(3))
    shared_tokens = n_p + n_c + n_r  # packed, prompt once
    separate_tokens = 2 * n_p + n_c + n_r  # padded rows, prompt twice (real tokens only)
    trl_sides = [x.strip() for x in args.trl_sides.split(",") if x.strip()]
    # (trained, reference forward) real tokens: alignkit's reference pass runs once, before training; TRL's
    # reference model runs every step, or once before training with precompute_ref_log_probs
    work_tokens = {"alignkit": (shared_tokens, shared_tokens), **{side: (separate_tokens, separate_tokens) for side in trl_sides}}
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.precision} matmul 1024x1024: {peak_flops / 1e9:.1f} GFLOP/s")
    print(f"model: {args.model or 'tiny llama'}: hidden {hidden}, {layers} layers, vocab {vocab}, {n_params / 1e6:.2f} M parameters{', LoRA r=16' if args.lora else ''}")
    print(f"data: {len(rows)} {'chat ' if args.chat else ''}pairs; mean tokens prompt {n_p / len(rows):.1f}, chosen {n_c / len(rows):.1f}, rejected {n_r / len(rows):.1f}")
    print(f"settings: {args.steps} steps x batch {args.batch_size}, lr {args.lr}, beta {args.beta}, {args.precision}, {args.attn} attention, no gradient checkpointing")

    sides = [*trl_sides, "alignkit"]
    results: dict[str, dict] = {}
    runs: dict[str, list[float]] = {side: [] for side in sides}
    cpu_runs: dict[str, list[float]] = {side: [] for side in sides}
    passthrough = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--beta", str(args.beta), "--precision", args.precision, "--attn", args.attn]
    passthrough += ["--lora"] if args.lora else []
    for _ in range(args.repeats):
        for side in sides:
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work), *passthrough]
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode:
                raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
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

    best_trl = min(trl_sides, key=lambda side: results[side]["seconds"])
    a = results["alignkit"]
    mib = lambda x: f"{x / 2**20:.0f} MiB"  # noqa: E731
    print()
    print(f"{'':36}" + "".join(f"{side:>22}" for side in sides))
    rows_out = [
        ("timed seconds (each run)", lambda r: " ".join(f"{x:.1f}" for x in r["runs_seconds"])),
        ("pairs/s (fastest run)", lambda r: f"{r['pairs_per_s']:.2f}"),
        ("pairs per CPU-second (best run)", lambda r: f"{r['pairs_per_cpu_s']:.2f}"),
        ("peak RSS (process)", lambda r: mib(r["ru_maxrss"])),
        ("peak RSS growth while timed", lambda r: mib(r["rss_peak_timed"] - r["rss_base"])),
        ("achieved GFLOP/s", lambda r: f"{r['flops'] / 1e9:.1f}"),
        (f"  share of {args.precision} matmul rate", lambda r: f"{r['flops'] / peak_flops:.1%}"),
    ]
    for i in range(3):
        rows_out.append((f"loss step {i + 1}", lambda r, i=i: f"{r['losses'][i]:.6f}" if len(r["losses"]) > i else "-"))
    for label, fmt in rows_out:
        print(f"{label:36}" + "".join(f"{fmt(results[side]):>22}" for side in sides))
    t = results[best_trl]
    ratios = [tt / aa for aa, tt in zip(a["runs_seconds"], t["runs_seconds"])]
    print(f"\nspeed-up alignkit / fastest TRL ({best_trl}): {a['pairs_per_s'] / t['pairs_per_s']:.2f}x pairs/s (wall), "
          f"{a['pairs_per_cpu_s'] / t['pairs_per_cpu_s']:.2f}x pairs per CPU-second; peak RSS {a['ru_maxrss'] / t['ru_maxrss']:.2f}x")
    print(f"speed-up in each round: {', '.join(f'{x:.2f}x' for x in ratios)} (spread {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"load average during the benchmark (other work on the machine): {os.getloadavg()}")
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "matmul_flops": peak_flops, "n_params": n_params, "vocab": vocab,
               "tokens": {"prompt": n_p, "chosen": n_c, "rejected": n_r, "pairs": len(rows)}, "best_trl": best_trl,
               "speedup": a["pairs_per_s"] / t["pairs_per_s"], "round_speedups": ratios, "results": results}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
