"""GRPO with alignkit vs TRL's GRPOTrainer: same tiny model, prompts, reward and settings, fp32 or bf16, on this machine.

    HF_HUB_OFFLINE=1 python benchmarks/grpo_vs_trl.py             # defaults below, a few minutes on 2 cores
    HF_HUB_OFFLINE=1 python benchmarks/grpo_vs_trl.py --steps 4   # quicker
    HF_HUB_OFFLINE=1 python benchmarks/grpo_vs_trl.py --context-reviews 4   # ~70-token prompts instead of ~5
    HF_HUB_OFFLINE=1 python benchmarks/grpo_vs_trl.py --algorithm rloo --beta 0.04   # RLOO vs TRL's RLOOTrainer

The parent process builds a tiny Llama on the sentiment task's text (build_tiny; hidden 256, 4 layers by
default) and gives it a short SFT with alignkit on the task's base distribution (so that completions end
with EOS, as a real policy's do), then runs each side in its own fresh subprocess (one after the other, so
each has the cores to itself and its own peak RSS), alternating sides over ``--repeats`` runs:

* alignkit: ``alignkit.algorithms.train(load_recipe({"algorithm": "rl", ...}))`` with ``rl.estimator=grpo``
  and the default ``alignkit`` generation backend. The time is the whole ``train()`` call (model load,
  prompt encoding and the loop; saving is switched off).
* TRL: ``GRPOTrainer`` with ``use_vllm=False``, fp32 (``bf16=False``), ``gradient_checkpointing=False``.
  The time is ``trainer.train()`` only (model loading and dataset preparation happen before it).

Shared settings: the task's train prompts (bare, about 5 tokens; with ``--context-reviews K`` each is
preceded by K complete reviews, about 70 tokens for K = 4, like the DPO benchmark's prompts), ``--prompts`` prompts per step × ``--group`` samples each
(TRL: ``per_device_train_batch_size = prompts × group``, ``num_generations = group``, one generation per
optimizer step), ``max_new_tokens = max_completion_length``, temperature 1, top-p 1, top-k off, beta 0 (no
reference model on either side), GRPO advantages with the group std, PPO-clip 0.2 with one update per
rollout, token-mean loss aggregation (TRL ``loss_type="dapo"``), AdamW (lr, no weight decay), linear
schedule without warmup, grad-norm clipping 1.0. The reward is the task's gold reward (alignkit:
``rl.reward=gold``; TRL: the same ``SentimentTask.gold_rewards`` wrapped as a reward function).
alignkit splits each update into length-bucketed micro-batches (``train.micro_batch_tokens``,
``--micro-batch-tokens``): the gradient is the same as one padded batch (tested), with less padding work.

Reported per side: seconds per step measured three ways — the whole timed call / steps; the *step loop*
(from the first rollout's start to the end, / steps: the same eight steps of work on both sides, set-up
excluded on both); and the *steady* step (median time between consecutive rollouts, no first-step
warm-up) — each with the per-round ratios (the two sides alternate, so a round shares the machine's
state); the time inside generation (alignkit: the
``generate`` call of the rollout; TRL: ``_generate_single_turn``, its ``model.generate`` call) and inside
the whole rollout (generation + reward + advantages, and for alignkit the old-log-prob pass; TRL:
``_generate_and_score_completions``), both measured by wrapping those functions in the subprocess, the
rest being the update; before the two sides, one rollout's generation alone with alignkit's engine and with
``model.generate`` in the parent; peak RSS of the subprocess (ru_maxrss) and its growth while timed; mean completion
length and mean reward of the rollouts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


from _common import PeakRSS, matmul_flops, review_context  # noqa: E402  (benchmarks/ is the script folder)


def bench_prompts(args) -> list[str]:
    """The run's prompts in data order: the task's train prompts, each after ``--context-reviews``
    complete reviews (0: the bare prompts, about 5 tokens)."""
    import random

    from alignkit.tasks.sentiment import SentimentTask

    task = SentimentTask(seed=0)
    prompts = task.prompts(args.steps * args.prompts, "train")
    if not args.context_reviews:
        return prompts
    rng = random.Random("bench-grpo-0")
    return [review_context(task, args.context_reviews, rng) + " " + p for p in prompts]


def prompts_file(work: Path, args) -> Path:
    path = work / f"prompts-{args.steps * args.prompts}-{args.context_reviews}.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in bench_prompts(args)))
    return path


class Timed:
    """Wraps a callable, adds up the seconds spent in it and keeps the start time of every call."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls, self.starts = fn, 0.0, 0, []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        self.starts.append(start)
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


# --------------------------------------------------------------------------------------------------
# the two sides (each in its own subprocess)
# --------------------------------------------------------------------------------------------------
def steady_step(starts: list[float]) -> float:
    """Median seconds between consecutive rollouts (one whole step: rollout + update), which leaves out
    the set-up before the first step and the first step's warm-up on either side."""
    gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
    return gaps[len(gaps) // 2] if gaps else float("nan")


def run_alignkit(work: Path, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import alignkit.algorithms.rl.pipeline as online
    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.engine.tracking import read_metrics

    recipe = load_recipe(
        {
            "algorithm": "rl",
            "model": {"path": str(work / "policy"), "dtype": "float32", "attn_implementation": args.attn},
            "task": {"name": "sentiment", "n_train": args.steps * args.prompts, "n_eval": 0},
            "data": {"train": str(prompts_file(work, args)), "kind": "prompt"} if args.context_reviews else {},
            "rl": {
                "estimator": args.algorithm, "reward": "gold",
                "sampling": {"group_size": args.group, "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0,
                             "batch_size": args.prompts * args.group, "precision": args.sampling_precision,
                             **({"backend": "alignkit"} if args.sampling_precision == "bf16" else {})},
                **(RLOO_KL_AND_LOSS(args.beta) if args.algorithm == "rloo" else {
                    "kl": {"beta": args.beta}, "advantage": {"std": "group"},
                    "policy": {"loss": "ppo_clip", "aggregation": "token_mean", "clip_low": 0.2, "clip_high": 0.2}}),
                "update": {"epochs": 1, "mini_batches": 1, "skip_zero_advantage": not args.no_skip_zero_advantage},
            },
            "train": {
                "output_dir": str(work / "alignkit-run"), "seed": 0, "max_steps": args.steps, "batch_size": args.prompts,
                "lr": args.lr, "scheduler": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                "precision": args.precision, "log_every": 1, "progress": False, "save_final": False, "overwrite": True,
                "micro_batch_tokens": args.micro_batch_tokens or None,
            },
        }
    )
    # warm the imports that train() does lazily (the TRL side has them done before its timer too)
    AutoTokenizer.from_pretrained(str(work / "policy"))
    AutoModelForCausalLM.from_pretrained(str(work / "policy"), dtype=torch.float32)
    from alignkit.engine.strategies import build_strategy

    build_strategy()  # the process layout, outside the timer
    gen = Timed(online.generate)
    online.generate = gen
    rollout = Timed(online.OnlineRL.rollout)
    online.OnlineRL.rollout = lambda self, *a, **k: rollout(self, *a, **k)
    with PeakRSS() as mem:
        start = time.perf_counter()
        train(recipe)
        end = time.perf_counter()
        seconds = end - start
    records = [r for r in read_metrics(work / "alignkit-run") if "loss" in r]
    return {
        "seconds": seconds, "generate_seconds": gen.seconds, "rollout_seconds": rollout.seconds, "steps": len(records),
        "steady_step": steady_step(rollout.starts),
        "loop_seconds": end - rollout.starts[0],
        "completion_length": sum(r["completion_length"] for r in records) / len(records),
        "reward": sum(r["reward"] for r in records) / len(records),
        "zero_advantage_skipped": sum(r.get("zero_advantage_skipped", 0.0) for r in records) / len(records),
        "rss_base": mem.base, "rss_peak_timed": mem.peak,
    }


def RLOO_KL_AND_LOSS(beta: float) -> dict:  # noqa: N802  (a constant-like recipe fragment)
    """alignkit's side of ``--algorithm rloo``, as close to TRL's ``RLOOTrainer`` as alignkit's options go: the
    k1 KL summed over the sequence and subtracted from its reward, leave-one-out baseline, no advantage
    normalisation, PPO-clip 0.2 summed over each sequence's tokens and averaged over sequences. TRL clips the
    ratio of whole sequences (exp of the summed log-ratio) where alignkit clips per token: the same forward and
    backward work, a different clipping region (one update per rollout: the ratio is 1 at that update either way)."""
    return {"kl": {"beta": beta, "estimator": "k1", "in_reward": True},
            "policy": {"loss": "ppo_clip", "aggregation": "seq_mean_token_sum", "clip_low": 0.2, "clip_high": 0.2}}


def run_trl(work: Path, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from alignkit.tasks.sentiment import SentimentTask

    task = SentimentTask(seed=0)
    # alignkit's prompts for seed 0 in alignkit's order (engine.loop.DataOrder), read sequentially
    prompts = bench_prompts(args)
    perm = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0)).tolist()
    dataset = Dataset.from_list([{"prompt": prompts[i]} for i in perm])

    def gold_reward(prompts, completions, **kwargs):
        return task.gold_rewards(prompts, completions)

    tokenizer = AutoTokenizer.from_pretrained(str(work / "policy"))
    model = AutoModelForCausalLM.from_pretrained(str(work / "policy"), dtype=torch.float32, attn_implementation=args.attn)
    specific = (dict(normalize_advantages=False) if args.algorithm == "rloo" else dict(scale_rewards="group", loss_type="dapo"))
    config = (RLOOConfig if args.algorithm == "rloo" else GRPOConfig)(
        output_dir=str(work / "trl-run"), seed=0, max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=args.group, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=args.beta, num_iterations=1, epsilon=0.2, mask_truncated_completions=False, **specific,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        bf16=args.precision.startswith("bf16"), fp16=False, gradient_checkpointing=False, use_vllm=False, shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = (RLOOTrainer if args.algorithm == "rloo" else GRPOTrainer)(model=model, reward_funcs=gold_reward, args=config, train_dataset=dataset, processing_class=tokenizer)
    gen = Timed(trainer._generate_single_turn)
    trainer._generate_single_turn = gen
    rollout = Timed(trainer._generate_and_score_completions)
    trainer._generate_and_score_completions = rollout
    with PeakRSS() as mem:
        start = time.perf_counter()
        trainer.train()
        end = time.perf_counter()
        seconds = end - start
    logs = [r for r in trainer.state.log_history if "loss" in r]
    length = [r[k] for r in logs for k in ("completions/mean_length",) if k in r]
    return {
        "seconds": seconds, "generate_seconds": gen.seconds, "rollout_seconds": rollout.seconds, "steps": len(logs),
        "steady_step": steady_step(rollout.starts),
        "loop_seconds": end - rollout.starts[0],
        "completion_length": sum(length) / len(length) if length else float("nan"),
        "reward": sum(r["reward"] for r in logs) / len(logs),
        "rss_base": mem.base, "rss_peak_timed": mem.peak,
    }


# --------------------------------------------------------------------------------------------------
def child(side: str, work: Path, args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = (run_alignkit if side == "alignkit" else run_trl)(work, args)
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    (work / f"result-{side}.json").write_text(json.dumps(result))


def prepare(work: Path, args) -> None:
    """A tiny Llama on the task's text, briefly SFT-ed on the base distribution, saved to work/policy."""
    import shutil

    from alignkit.algorithms import train
    from alignkit.config import load_recipe
    from alignkit.models.tiny import TinyModelConfig, build_tiny
    from alignkit.tasks.sentiment import SentimentTask

    key = json.dumps([args.model, args.tokenizer, args.hidden, args.layers, args.sft_steps])
    if (work / "policy" / "config.json").exists() and (work / "policy" / "shape.json").read_text() == key:
        return
    shutil.rmtree(work / "policy", ignore_errors=True)
    if args.model:  # a real checkpoint, used as it is
        shutil.copytree(args.model, work / "policy")
        (work / "policy" / "shape.json").write_text(key)
        return
    shape = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=4, intermediate_size=4 * args.hidden)
    if args.tokenizer:  # a tiny body on a real tokenizer's vocabulary
        from transformers import AutoTokenizer

        from alignkit.models.tiny import build_model

        shutil.rmtree(work / "base", ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        build_model(tokenizer, shape).save_pretrained(work / "base")
        tokenizer.save_pretrained(work / "base")
    else:
        build_tiny(work / "base", SentimentTask().corpus(), shape)
    if args.sft_steps == 0:  # random weights: no sample stops, every completion is max_new_tokens long
        shutil.copytree(work / "base", work / "policy")
        (work / "policy" / "shape.json").write_text(key)
        return
    recipe = load_recipe(
        {
            "algorithm": "sft",
            "model": {"path": str(work / "base")},
            "task": {"name": "sentiment", "n_train": 32 * args.sft_steps, "n_eval": 0},
            "train": {"output_dir": str(work / "sft-run"), "max_steps": args.sft_steps, "batch_size": 32, "lr": 3e-3, "progress": False},
        }
    )
    final = train(recipe)
    shutil.copytree(final, work / "policy")
    (work / "policy" / "shape.json").write_text(key)


def generation_only(work: Path, args) -> dict[str, float]:
    """Seconds of one rollout's generation (prompts x group samples) with each backend of
    ``alignkit.rollout.generate`` (``hf`` is ``model.generate``, what TRL calls), best of 3, in this process."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.models.loading import load_tokenizer
    from alignkit.rollout import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(work / "policy")
    model = AutoModelForCausalLM.from_pretrained(str(work / "policy"), dtype=torch.float32)
    prompts = bench_prompts(args)[: args.prompts]
    out = {}
    for backend in ("hf", "alignkit"):
        generate(model, tokenizer, prompts[:1], n=2, max_new_tokens=4, backend=backend)
        best = float("inf")
        for seed in range(3):
            start = time.perf_counter()
            generate(model, tokenizer, prompts, n=args.group, max_new_tokens=args.max_new_tokens, batch_size=args.prompts * args.group, seed=seed, backend=backend)
            best = min(best, time.perf_counter() - start)
        out[backend] = best
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="samples per prompt (num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--model", help="a checkpoint folder to train as it is (default: a tiny Llama built and SFT-ed here)")
    p.add_argument("--tokenizer", help="with the tiny Llama: this tokenizer's vocabulary (e.g. SmolLM2's 49k) instead of the task's 443 tokens")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient; > 0 adds a reference model on both sides")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16_params"], default="fp32",
                   help="bf16: autocast on both sides (fp32 weights); bf16_params: alignkit keeps the weights in bf16 with fp32 master "
                        "weights in its optimizer (train.precision=bf16_params), TRL runs its bf16 autocast (bf16=True, its mixed precision)")
    p.add_argument("--algorithm", choices=["grpo", "rloo"], default="grpo",
                   help="rloo: alignkit rl.estimator=rloo (KL in the reward) vs TRL's RLOOTrainer (see RLOO_KL_AND_LOSS)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention kernel on both sides (from_pretrained's attn_implementation)")
    p.add_argument("--sampling-precision", choices=["model", "bf16"], default="model",
                   help="alignkit's rl.sampling.precision: bf16 decodes from a bf16 copy of the policy, refreshed after every update")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--sft-steps", type=int, default=60, help="0: random weights (completions never stop early)")
    p.add_argument("--context-reviews", type=int, default=0, help="complete reviews before each prompt (0: bare ~5-token prompts; 4: ~70 tokens)")
    p.add_argument("--micro-batch-tokens", type=int, default=1024, help="alignkit's length-bucketed micro-batches (0: one micro-batch); the update is the same either way")
    p.add_argument("--no-skip-zero-advantage", action="store_true",
                   help="alignkit trains on zero-advantage samples too (rl.update.skip_zero_advantage=false): the same update, TRL's amount of work")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads in each side (0: torch's default)")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the fastest counts")
    p.add_argument("--work", type=Path, default=Path("runs/bench-grpo-vs-trl"))
    p.add_argument("--side", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return child(args.side, args.work, args)

    import torch

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args)
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(work / "policy")).parameters())
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, threads per side: {args.threads or torch.get_num_threads()}")
    config = AutoModelForCausalLM.from_pretrained(str(work / "policy")).config
    print(f"model: {args.model or 'tiny llama'}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size}, "
          f"{n_params / 1e6:.2f} M parameters{'' if args.model else f', SFT {args.sft_steps} steps'}")
    print(f"algorithm: {args.algorithm} (TRL: {'RLOOTrainer' if args.algorithm == 'rloo' else 'GRPOTrainer'})")
    print(f"settings: {args.steps} steps x {args.prompts} prompts x {args.group} samples, max {args.max_new_tokens} new tokens, "
          f"lr {args.lr}, beta {args.beta}, {args.precision}, {args.attn} attention, no gradient checkpointing, no vLLM; alignkit samples from "
          f"{'a bf16 copy of the policy' if args.sampling_precision == 'bf16' else 'the policy as trained'}")

    from alignkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(work / "policy")
    prompt_tokens = sum(len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in bench_prompts(args)) / (args.steps * args.prompts)
    peak = matmul_flops(dtype=args.precision)
    print(f"{args.precision} matmul 1024x1024: {peak / 1e9:.1f} GFLOP/s; mean prompt {prompt_tokens:.1f} tokens")
    gen = generation_only(work, args)
    print(f"generation only (one rollout, best of 3): model.generate {gen['hf']:.3f} s, alignkit {gen['alignkit']:.3f} s, "
          f"{gen['hf'] / gen['alignkit']:.2f}x")

    forwarded = ["--work", str(work)]
    for name in ("steps", "prompts", "group", "max_new_tokens", "lr", "threads", "context_reviews", "micro_batch_tokens", "beta", "precision",
                 "sampling_precision", "algorithm", "attn"):
        forwarded += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.no_skip_zero_advantage:
        forwarded.append("--no-skip-zero-advantage")
    results: dict[str, dict] = {}
    runs: dict[str, list[float]] = {"trl": [], "alignkit": []}
    steady: dict[str, list[float]] = {"trl": [], "alignkit": []}
    loop: dict[str, list[float]] = {"trl": [], "alignkit": []}
    for _ in range(args.repeats):
        for side in ("trl", "alignkit"):
            subprocess.run([sys.executable, __file__, "--side", side, *forwarded], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = json.loads((work / f"result-{side}.json").read_text())
            runs[side].append(r["seconds"] / args.steps)
            steady[side].append(r["steady_step"])
            loop[side].append(r["loop_seconds"] / args.steps)
            if side not in results or r["seconds"] < results[side]["seconds"]:
                results[side] = r
    a, t = results["alignkit"], results["trl"]
    for r in (a, t):
        r["s_per_step"] = r["seconds"] / args.steps
    mib = lambda x: f"{x / 2**20:.0f} MiB"  # noqa: E731
    share = lambda r, k: f"{r[k] / r['seconds']:.0%}"  # noqa: E731
    print()
    print(f"{'':34}{'alignkit':>16}{'TRL':>16}")
    print(f"{'s/step (each run)':34}{' '.join(f'{x:.2f}' for x in runs['alignkit']):>26}{' '.join(f'{x:.2f}' for x in runs['trl']):>26}")
    print(f"{'s/step (fastest run)':34}{a['s_per_step']:>16.3f}{t['s_per_step']:>16.3f}")
    print(f"{'steps/s':34}{1 / a['s_per_step']:>16.3f}{1 / t['s_per_step']:>16.3f}")
    print(f"{'loop s/step (each run)':34}{' '.join(f'{x:.2f}' for x in loop['alignkit']):>26}{' '.join(f'{x:.2f}' for x in loop['trl']):>26}")
    print(f"{'loop s/step (best run)':34}{min(loop['alignkit']):>16.3f}{min(loop['trl']):>16.3f}")
    print(f"{'steady s/step (each run)':34}{' '.join(f'{x:.2f}' for x in steady['alignkit']):>26}{' '.join(f'{x:.2f}' for x in steady['trl']):>26}")
    print(f"{'steady s/step (best run)':34}{min(steady['alignkit']):>16.3f}{min(steady['trl']):>16.3f}")
    print(f"{'generation share of the time':34}{share(a, 'generate_seconds'):>16}{share(t, 'generate_seconds'):>16}")
    print(f"{'rollout share (gen+reward+...)':34}{share(a, 'rollout_seconds'):>16}{share(t, 'rollout_seconds'):>16}")
    print(f"{'generation s/step':34}{a['generate_seconds'] / args.steps:>16.3f}{t['generate_seconds'] / args.steps:>16.3f}")
    print(f"{'update s/step (rest)':34}{(a['seconds'] - a['rollout_seconds']) / args.steps:>16.3f}{(t['seconds'] - t['rollout_seconds']) / args.steps:>16.3f}")
    print(f"{'peak RSS (process)':34}{mib(a['ru_maxrss']):>16}{mib(t['ru_maxrss']):>16}")
    print(f"{'peak RSS growth while timed':34}{mib(a['rss_peak_timed'] - a['rss_base']):>16}{mib(t['rss_peak_timed'] - t['rss_base']):>16}")
    print(f"{'mean completion length':34}{a['completion_length']:>16.1f}{t['completion_length']:>16.1f}")
    print(f"{'mean reward':34}{a['reward']:>16.3f}{t['reward']:>16.3f}")
    print(f"{'samples with advantage 0 skipped':34}{a['zero_advantage_skipped']:>16.0%}{'0%':>16}")
    # model FLOPs per phase as a share of the matmul rate: the update is 6 N per token trained (prompt +
    # completion; alignkit trains fewer samples when it skips zero advantages), generation 2 N per new token
    samples = args.prompts * args.group
    for r in (a, t):
        trained = samples * (1 - r.get("zero_advantage_skipped", 0.0)) * (prompt_tokens + r["completion_length"])
        r["update_flops"] = 6 * n_params * trained / ((r["seconds"] - r["rollout_seconds"]) / args.steps)
        r["generate_flops"] = 2 * n_params * samples * r["completion_length"] / (r["generate_seconds"] / args.steps)
    print(f"{'update GFLOP/s (6N x tokens)':34}{a['update_flops'] / 1e9:>16.1f}{t['update_flops'] / 1e9:>16.1f}")
    print(f"{'  share of the matmul rate':34}{a['update_flops'] / peak:>16.1%}{t['update_flops'] / peak:>16.1%}")
    print(f"{'generation GFLOP/s (2N x tokens)':34}{a['generate_flops'] / 1e9:>16.1f}{t['generate_flops'] / 1e9:>16.1f}")
    print(f"{'  share of the matmul rate':34}{a['generate_flops'] / peak:>16.1%}{t['generate_flops'] / peak:>16.1%}")
    rounds = [tr / al for al, tr in zip(runs["alignkit"], runs["trl"])]
    steady_rounds = [tr / al for al, tr in zip(steady["alignkit"], steady["trl"])]
    loop_rounds = [tr / al for al, tr in zip(loop["alignkit"], loop["trl"])]
    print(f"\nspeed-up alignkit / TRL, whole timed call: {t['s_per_step'] / a['s_per_step']:.2f}x steps/s (fastest vs fastest); "
          f"per round {' '.join(f'{x:.2f}x' for x in rounds)}")
    print(f"speed-up alignkit / TRL, step loop:        {min(loop['trl']) / min(loop['alignkit']):.2f}x steps/s (best vs best); "
          f"per round {' '.join(f'{x:.2f}x' for x in loop_rounds)}, median {sorted(loop_rounds)[len(loop_rounds) // 2]:.2f}x")
    print(f"speed-up alignkit / TRL, steady state:     {min(steady['trl']) / min(steady['alignkit']):.2f}x steps/s (best vs best); "
          f"per round {' '.join(f'{x:.2f}x' for x in steady_rounds)}")
    (work / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "n_params": n_params, "matmul_flops": peak,
                                                   "prompt_tokens": prompt_tokens, "generation_only": gen,
                                                   "runs": runs, "loop": loop, "steady": steady, "results": results}, indent=1))


if __name__ == "__main__":
    main()
