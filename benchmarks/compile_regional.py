"""Regional ``torch.compile`` on the bf16 update: every decoder layer compiled (one compiled graph shared
by all layers, since they run the same code) vs eager, forward + backward under bf16 autocast.

    HF_HUB_OFFLINE=1 python benchmarks/compile_regional.py --model /tmp/smollm2 --rows 4 --tokens 100

Reported: eager seconds per step (best of ``--repeats``), the compiled run's first step (compilation
included) and its steady step, and after how many steps the compilation is paid back. Random token ids,
a loss on the last hidden state (the LM head is left out: it is alignkit's chunked head either way).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True) (shapes vary between steps in training)")
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.config.use_cache = False
    decoder = model.get_decoder()
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.tokens))

    def step(x=None) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = decoder(input_ids=ids if x is None else x).last_hidden_state.float().pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()
    eager = min(step() for _ in range(args.repeats))
    with torch.no_grad():
        probe = decoder(input_ids=ids[:1, :16]).last_hidden_state
    for layer in decoder.layers:
        layer.compile(dynamic=args.dynamic or None)
    first = step()
    compiled = min(step() for _ in range(args.repeats))
    other = ids[:, : args.tokens - 13]  # a new sequence length, as the next training step brings
    new_shape = step(other)
    with torch.no_grad():
        again = decoder(input_ids=ids[:1, :16]).last_hidden_state
    gain = eager - compiled
    print(f"{args.model}: {len(decoder.layers)} layers, {args.rows} x {args.tokens} tokens, bf16 autocast, forward + backward, torch {torch.__version__}")
    print(f"eager {eager:.3f} s/step; regional compile: first step {first:.1f} s (compilation), then {compiled:.3f} s/step "
          f"({eager / compiled:.2f}x); pays back after {(first - eager) / gain:.0f} steps" if gain > 0 else
          f"eager {eager:.3f} s/step; regional compile: first step {first:.1f} s, then {compiled:.3f} s/step: no gain")
    print(f"first step at a new length ({args.tokens - 13} tokens): {new_shape:.2f} s (a recompilation when it is far above the steady step)")
    print(f"max |compiled - eager| on the last hidden state: {(again - probe).abs().max().item():.3g} (bf16 autocast)")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
