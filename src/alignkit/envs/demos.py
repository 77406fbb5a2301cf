"""SFT demonstrations of the built-in environments: conversations (``messages`` rows, with ``tools`` when
the tools are described) that teach a tiny model the format of an environment before RL.

.. code-block:: bash

    python -m alignkit.envs.demos calculator --level 4 --n 1000 --out recipes/agents/data/calculator_sft.jsonl
    python -m alignkit.envs.demos calculator --level 4 --n 1000 --tiny runs/agents/calculator-tiny   # + a tiny model

The prompts are the arithmetic task's (``task.seed``, ``level``, split ``train``); the rows are a pure
function of the arguments, so a shipped file can be checked against its command.

``--tiny DIR`` also builds a tiny model (:func:`alignkit.models.tiny.build_tiny`) whose byte-level BPE is
trained on the arithmetic task's text *and* the demonstrations' messages (tool calls written as
``<tool_call>`` blocks), so the environment's fixed strings (``{"name": "calc", "arguments": ...``,
``higher``, ``check your answer``) become a few tokens each and a 2-layer model learns them in minutes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from .base import environment_class
from .tools import tool_schemas


def demonstrations(env: str, n: int, level: int = 2, seed: int = 0, describe_tools: bool = False, **options: Any) -> list[dict[str, Any]]:
    """``n`` SFT rows of the built-in environment ``env`` on arithmetic prompts of ``level``; ``options`` go
    to its ``demonstration`` (e.g. ``tool_share`` for ``calculator``, ``max_turns`` for ``guess_number``)."""
    from ..tasks import ArithmeticTask

    cls = environment_class(env)
    if not hasattr(cls, "demonstration"):
        raise ValueError(f"environment {env!r} has no demonstration policy")
    rng = random.Random(f"{seed}-{env}-demos")
    prompts = ArithmeticTask(seed=seed, level=level).prompts(n, "train")
    rows = []
    for prompt in prompts:
        row: dict[str, Any] = {"messages": cls.demonstration({"prompt": prompt}, rng, **options)}
        if describe_tools and cls.tools:
            row["tools"] = tool_schemas(cls.tools)
        rows.append(row)
    return rows


def corpus(rows: list[dict[str, Any]], level: int = 2, seed: int = 0) -> list[str]:
    """Tokenizer text for a tiny model of an environment: the arithmetic task's corpus and every message of
    ``rows`` as the policy sees it (assistant tool calls as ``<tool_call>`` text)."""
    from ..data.encode import tools_as_text
    from ..tasks import ArithmeticTask

    texts = ArithmeticTask(seed=seed, level=level).corpus()
    for row in rows:
        texts.extend(tools_as_text(m)["content"] for m in row["messages"])
    return texts


def build_tiny_model(rows: list[dict[str, Any]], out: Path, level: int = 2, seed: int = 0, **shape: Any) -> Path:
    """A tiny model in ``out`` whose tokenizer is trained on :func:`corpus` of ``rows``; ``shape``: fields of
    :class:`alignkit.config.TinyModelConfig` (hidden_size, num_layers, ...)."""
    from ..config import TinyModelConfig
    from ..models.tiny import build_tiny

    return build_tiny(out, corpus(rows, level, seed), TinyModelConfig(**shape))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignkit.envs.demos", description=__doc__.split("\n\n")[0])
    parser.add_argument("env")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--describe-tools", action="store_true")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="an option of the demonstration policy (JSON value)")
    parser.add_argument("--out", type=Path, help="the JSONL file of SFT rows to write")
    parser.add_argument("--tiny", type=Path, help="also build a tiny model in this folder, its tokenizer trained on these demonstrations")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.out is None and args.tiny is None:
        parser.error("give --out, --tiny or both")
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    rows = demonstrations(args.env, args.n, args.level, args.seed, args.describe_tools, **options)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {args.out}")
    if args.tiny is not None:
        print(f"built {build_tiny_model(rows, args.tiny, args.level, args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers)}")


if __name__ == "__main__":
    main()
