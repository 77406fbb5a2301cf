"""One update's forward + backward on its own: achieved FLOP/s as a share of the measured matmul rate.

``TargetLogProbs`` (the decoder, then the chunked LM head on the target rows) on ``rows`` x ``tokens`` random
ids whose last ``targets`` tokens of each row are targets, then ``backward`` of the summed log-probs:
the work of a GRPO or DPO update without the optimizer step. FLOPs: 6 N per token for the parameters
outside the output head, 6 x (head parameters) per target row. The matmul rate is a 1024^3 bf16 (or fp32)
product in the same process (``_common.matmul_flops``).

    python benchmarks/update_flops.py --model /tmp/smollm2 --precision bf16_params --rows 32 --tokens 53 --targets 48
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from _common import matmul_flops
from alignkit.core.memory import retain_freed_memory
from alignkit.models.logprobs import TargetLogProbs
from alignkit.models.precision import cast_parameters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a causal-LM folder (e.g. alignkit fetch-model smollm2-135m-instruct --out /tmp/smollm2)")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16_params"], default="bf16_params",
                   help="bf16: fp32 weights under bf16 autocast; bf16_params: bf16 weights (train.precision=bf16_params)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--tokens", type=int, default=53, help="tokens per row")
    p.add_argument("--targets", type=int, default=48, help="target tokens at the end of each row")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator settings alone (core/memory.py off)")
    args = p.parse_args()
    if not args.system_malloc:
        retain_freed_memory()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=args.attn)
    if args.precision == "bf16_params":
        cast_parameters(model, torch.bfloat16)
    module = TargetLogProbs(model)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.tokens))
    mask = torch.zeros_like(ids)
    mask[:, -args.targets :] = 1

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = module(ids, torch.ones_like(ids), mask)
        out.sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(), step()  # warm-up: the heap grows to the step's size
    times = [step() for _ in range(args.repeats)]
    n = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    flops = 6 * (n - head) * args.rows * args.tokens + 6 * head * args.rows * args.targets
    peak = matmul_flops(dtype=args.precision)
    median = statistics.median(times)
    print(f"{args.precision}, {args.attn} attention, {args.rows} x {args.tokens} tokens ({args.targets} targets a row): "
          f"median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}); {flops / 1e12:.3f} TFLOP -> {flops / median / 1e9:.0f} GFLOP/s "
          f"= {flops / median / peak:.1%} of the {'bf16' if args.precision != 'fp32' else 'fp32'} matmul rate ({peak / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
