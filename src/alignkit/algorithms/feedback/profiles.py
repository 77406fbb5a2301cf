"""Value-profile conditioning on the sentiment task: data for system-message-conditioned SFT / DPO (the
evaluation on profiles the training rows never held is ``alignkit eval RUN --profiles all``,
:mod:`alignkit.evaluation.profiles`).

A profile is ``{tone: warm | harsh, length: short | medium | long}`` (:mod:`alignkit.tasks.critics`); its
gold reward is ``tone · mean sentiment − |clauses − wanted| / 2``. The training rows use four of the six
profiles; ``harsh + long`` and ``warm + medium`` are held out, so a policy that follows them has composed
the profile's parts rather than memorised whole profiles. Rows carry the profile in ``system`` and are read
with ``data.format: system`` (the profile is rendered as ``tone: harsh\\nlength: long`` before the prompt).

    python -m alignkit.algorithms.feedback.profiles data --out recipes/feedback/data      # profiles_sft.jsonl, profiles_pairs.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...data.records import write_jsonl


def write_profile_data(out: str | Path, n_sft: int = 2048, n_pairs: int = 2048, seed: int = 0) -> dict[str, Path]:
    """``profiles_sft.jsonl`` and ``profiles_pairs.jsonl`` in ``out`` (training profiles only)."""
    from ...tasks.critics import profile_rows
    from ...tasks.sentiment import SentimentTask

    task = SentimentTask(seed=seed)
    out = Path(out)
    return {"sft": write_jsonl(out / "profiles_sft.jsonl", profile_rows(task, "sft", n_sft, "train")),
            "pair": write_jsonl(out / "profiles_pairs.jsonl", profile_rows(task, "pair", n_pairs, "train"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="value-profile training rows (sentiment task); evaluate with `alignkit eval RUN --profiles all`")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write profiles_sft.jsonl and profiles_pairs.jsonl")
    data.add_argument("--out", default="recipes/feedback/data")
    data.add_argument("--n", type=int, default=2048)
    args = parser.parse_args(argv)
    for kind, path in write_profile_data(args.out, args.n, args.n).items():
        print(f"wrote {kind} rows to {path}")


if __name__ == "__main__":
    main()
