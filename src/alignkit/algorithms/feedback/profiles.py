"""Value-profile conditioning on the sentiment task: data for system-message-conditioned SFT / DPO and an
evaluation on profiles the training rows never held.

A profile is ``{tone: warm | harsh, length: short | medium | long}`` (:mod:`alignkit.tasks.critics`); its
gold reward is ``tone · mean sentiment − |clauses − wanted| / 2``. The training rows use four of the six
profiles; ``harsh + long`` and ``warm + medium`` are held out, so a policy that follows them has composed
the profile's parts rather than memorised whole profiles. Rows carry the profile in ``system`` and are read
with ``data.format: system`` (the profile is rendered as ``tone: harsh\\nlength: long`` before the prompt).

    python -m alignkit.algorithms.feedback.profiles data --out recipes/feedback/data      # profiles_sft.jsonl, profiles_pairs.jsonl
    python -m alignkit.algorithms.feedback.profiles eval runs/profile_sft/final [--start runs/sft/final]

``eval`` samples each profile's rendered prompts (``--prompts`` held-out test prompts, two samples each) and
reports, per profile, the mean profile reward and malformed share, marking the unseen profiles; with
``--start`` the same for the starting model, whose samples ignore the profile.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from ...data.feedback_kinds import system_prompt
from ...data.records import write_jsonl


def write_profile_data(out: str | Path, n_sft: int = 2048, n_pairs: int = 2048, seed: int = 0) -> dict[str, Path]:
    """``profiles_sft.jsonl`` and ``profiles_pairs.jsonl`` in ``out`` (training profiles only)."""
    from ...tasks.critics import profile_rows
    from ...tasks.sentiment import SentimentTask

    task = SentimentTask(seed=seed)
    out = Path(out)
    return {"sft": write_jsonl(out / "profiles_sft.jsonl", profile_rows(task, "sft", n_sft, "train")),
            "pair": write_jsonl(out / "profiles_pairs.jsonl", profile_rows(task, "pair", n_pairs, "train"))}


def evaluate_profiles(model_dir: str | Path, profiles: list[dict[str, str]] | None = None, n_prompts: int = 64, seed: int = 0,
                      max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Per profile: ``{profile, unseen, reward, reward_se, malformed, n}`` for the model's samples of the
    profile-conditioned held-out prompts (every profile by default)."""
    from ...models.loading import load_policy_for_inference, load_tokenizer
    from ...rollout.generate import generate
    from ...tasks.critics import HELD_OUT_PROFILES, PROFILES, profile_reward
    from ...tasks.sentiment import SentimentTask

    task = SentimentTask()
    tokenizer, model = load_tokenizer(model_dir), load_policy_for_inference(model_dir)
    prompts = task.prompts(n_prompts, "test")
    results = []
    for profile in profiles or PROFILES:
        asked = [system_prompt(profile, p) for p in prompts]
        samples = generate(model, tokenizer, asked, n=2, max_new_tokens=max_new_tokens, seed=seed)
        rewards = [profile_reward(task, prompts[i // 2], s.completion, profile) for i, s in enumerate(samples)]
        mean = statistics.fmean(rewards)
        se = statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else 0.0
        results.append({"profile": profile, "unseen": profile in HELD_OUT_PROFILES, "reward": mean, "reward_se": se,
                        "malformed": sum(task.parse(prompts[i // 2], s.completion) is None for i, s in enumerate(samples)) / len(samples),
                        "n": len(samples)})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="value-profile data and evaluation (sentiment task)")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write profiles_sft.jsonl and profiles_pairs.jsonl")
    data.add_argument("--out", default="recipes/feedback/data")
    data.add_argument("--n", type=int, default=2048)
    ev = sub.add_parser("eval", help="per-profile reward of a model, unseen profiles marked")
    ev.add_argument("model")
    ev.add_argument("--start", default=None, help="also evaluate this model (e.g. the SFT start)")
    ev.add_argument("--prompts", type=int, default=64)
    ev.add_argument("--json", default=None, help="write the numbers to this file")
    args = parser.parse_args(argv)
    if args.command == "data":
        for kind, path in write_profile_data(args.out, args.n, args.n).items():
            print(f"wrote {kind} rows to {path}")
        return
    report = {"model": evaluate_profiles(args.model, n_prompts=args.prompts)}
    if args.start:
        report["start"] = evaluate_profiles(args.start, n_prompts=args.prompts)
    for name, rows in report.items():
        for r in rows:
            tag = "unseen" if r["unseen"] else "train "
            print(f"{name:6s} {tag} tone={r['profile']['tone']:5s} length={r['profile']['length']:6s} reward {r['reward']:+.3f} ± {r['reward_se']:.3f}"
                  f"  malformed {100 * r['malformed']:.0f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
