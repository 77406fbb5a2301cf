"""Batched decoding against the machine's floor: alignkit's decoder (and ``model.generate``) vs the time the
step's FLOPs and the per-step fixed overhead allow.

    HF_HUB_OFFLINE=1 python benchmarks/decode_floor.py --model models/smollm2            # the real checkpoint
    HF_HUB_OFFLINE=1 python benchmarks/decode_floor.py --model models/smollm2 --dtype bf16
    HF_HUB_OFFLINE=1 python benchmarks/decode_floor.py                                 # the tiny Llama

How the floor of one decode step with ``B`` active rows is computed (stated in the output too):

* **FLOPs:** one new token costs ``2 * N`` multiply-adds-as-FLOPs (``N``: parameters, output head
  included, embedding lookup excluded), plus attention over the cache, ``4 * layers * hidden * context``;
  the step does this for ``B`` rows. Divided by the measured matmul rate of the dtype (a 1024 x 1024 x 1024
  product, best of a couple of seconds) it is the compute floor.
* **Fixed overhead:** the same decode loop on the same architecture and number of layers, vocabulary and
  batch, with hidden size 16 (so its FLOPs are negligible): what Python, kernel launches and the cache
  bookkeeping cost per step, whatever the model's width.
* **Bytes:** a step reads every weight once (the output head included; the input embedding only for the
  ``B`` rows it looks up) and the whole KV cache, ``2 * layers * kv_heads * head_dim * context * B`` values,
  in the model's dtype. Divided by the measured memory bandwidth (a 512 MiB ``copy_``, bytes read + written)
  it is the bandwidth floor: what bounds a step at small ``B``, where the FLOPs are few.
* floor(B) = overhead(B) + max(FLOPs(B) / matmul rate, bytes(B) / bandwidth). Reported: achieved seconds
  per step, the floor, and their ratio (the target is within 2x), for alignkit's decoder and for
  ``model.generate``. ``--dtype bf16`` holds the weights (and so the cache) in bf16: half the bytes, and the
  bf16 matmul rate.

No row stops early (stop tokens are switched off) so every step has ``B`` rows; prompts are the sentiment
task's, left-padded to the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from _common import matmul_flops, memory_bandwidth  # noqa: E402  (benchmarks/ is the script folder)


def step_seconds(model, prompt_ids, new_tokens: int, backend: str, repeats: int) -> float:
    """Best-of-``repeats`` seconds per decode step (prefill excluded: a 1-token run is subtracted)."""
    import torch

    from alignkit.rollout.local import Sampler, decode

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            if backend == "alignkit":
                decode(model, prompt_ids, None, Sampler(seed=0), n, stops=())
            else:
                ids = torch.tensor(prompt_ids)
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=True, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=None)
        return time.perf_counter() - start

    run(2)
    best = float("inf")
    for _ in range(repeats):
        best = min(best, (run(new_tokens) - run(1)) / (new_tokens - 1))
    return best


def narrow_copy(model):
    """The same architecture, layers and vocabulary with hidden size 16: the per-step fixed overhead."""
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim = 16, 32, 2, 2, 8
    return AutoModelForCausalLM.from_config(config).to(next(model.parameters()).dtype).eval().requires_grad_(False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="checkpoint folder (default: a tiny Llama built here)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batches", default="1,8,32,64", help="active rows per step")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backends", default="alignkit,hf")
    p.add_argument("--work", type=Path, default=Path("runs/bench-decode-floor"))
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.models.loading import load_tokenizer
    from alignkit.tasks.sentiment import SentimentTask

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    path = args.model
    if not path:
        from alignkit.models.tiny import build_tiny

        path = args.work / "tiny"
        if not (path / "config.json").exists():
            build_tiny(path, SentimentTask().corpus())
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval().requires_grad_(False)
    narrow = narrow_copy(model)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters()) - (0 if cfg.tie_word_embeddings else model.get_input_embeddings().weight.numel())
    rate = matmul_flops(dtype=args.dtype)
    bandwidth = memory_bandwidth()
    width = next(model.parameters()).element_size()
    embedding = model.get_input_embeddings().weight
    weight_bytes = sum(p.numel() for p in model.parameters()) * width - (0 if cfg.tie_word_embeddings else embedding.numel() * width)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    prompts = SentimentTask(seed=0).prompts(64, "train")
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    ids = [(x * args.prompt_tokens)[: args.prompt_tokens] for x in ids]

    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.dtype} matmul {rate / 1e9:.1f} GFLOP/s; "
          f"memory bandwidth {bandwidth / 1e9:.1f} GB/s (512 MiB copy)")
    print(f"model: {args.model or 'tiny llama'}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}, "
          f"{n_params / 1e6:.1f} M parameters in the per-token matmuls; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens")
    print(f"floor(B) = overhead(B) [same loop, hidden 16] + max(B * (2N + 4 * layers * hidden * context) / matmul rate, "
          f"(weights {weight_bytes / 1e6:.0f} MB + KV cache + B embedding rows) / bandwidth)\n")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    header = f"{'rows':>5}{'overhead s':>12}{'FLOP s':>10}{'bytes s':>10}{'floor s':>10}" + "".join(f"{b + ' s':>14}{b + ' / floor':>18}{b + ' tok/s':>16}" for b in backends)
    print(header)
    table = []
    for batch in [int(b) for b in args.batches.split(",")]:
        rows = [ids[i % len(ids)] for i in range(batch)]
        context = args.prompt_tokens + args.new_tokens / 2
        flops = batch * (2 * n_params + 4 * cfg.num_hidden_layers * cfg.hidden_size * context)
        kv_bytes = 2 * cfg.num_hidden_layers * kv_heads * head_dim * context * batch * width
        moved = weight_bytes + kv_bytes + batch * cfg.hidden_size * width
        overhead = step_seconds(narrow, rows, args.new_tokens, "alignkit", args.repeats)
        floor = overhead + max(flops / rate, moved / bandwidth)
        entry = {"rows": batch, "overhead_s": overhead, "flop_s": flops / rate, "bytes_s": moved / bandwidth, "floor_s": floor}
        line = f"{batch:>5}{overhead:>12.4f}{flops / rate:>10.4f}{moved / bandwidth:>10.4f}{floor:>10.4f}"
        for backend in backends:
            seconds = step_seconds(model, rows, args.new_tokens, backend, args.repeats)
            entry[backend] = seconds
            line += f"{seconds:>14.4f}{seconds / floor:>18.2f}{batch / seconds:>16.1f}"
        print(line)
        table.append(entry)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / f"summary-{args.dtype}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "matmul_flops": rate,
                                                                      "bandwidth": bandwidth, "weight_bytes": weight_bytes, "n_params": n_params, "table": table}, indent=1))
    print(f"\nload average (other work on the machine): {os.getloadavg()}")


if __name__ == "__main__":
    main()
