"""Value-profile evaluation (``alignkit eval RUN --profiles held_out``): does a system-message-conditioned policy
follow reader profiles, including profiles its training rows never held?

A profile is ``{tone: warm | harsh, length: short | medium | long}`` on the sentiment language
(:mod:`alignkit.tasks.critics`); a review's profile reward is ``tone · mean sentiment − |clauses − wanted| / 2``
(at most +1; ``−2 − malformed_penalty`` for text outside the language). For each profile of the set, the
profile is rendered before each held-out test prompt exactly as ``data.format: system`` renders it in training
(``tone: harsh\\nlength: long\\n{prompt}``), the policy samples ``samples`` completions per prompt, and the
report gives the mean profile reward ± its standard error, the malformed share, and whether the built-in
training rows held the profile (``unseen``: one of :data:`~alignkit.tasks.critics.HELD_OUT_PROFILES`).

Profile sets: ``held_out`` (the two profiles no training row holds), ``train`` (the other four), ``all``, or a
file: a JSON list of profile mappings, or JSONL rows that are profile mappings or hold one in ``system``.
``summary`` averages the profiles' rewards over the seen and the unseen ones.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

PROFILE_SETS = ("held_out", "train", "all")


def profile_set(spec: str | Path) -> list[dict[str, str]]:
    """The profiles named by ``spec`` (a built-in set name or a file); a one-line ``ValueError`` naming the
    file, row and field of a bad profile."""
    from ..tasks.critics import HELD_OUT_PROFILES, PROFILES

    if str(spec) in PROFILE_SETS:
        return [dict(p) for p in {"held_out": HELD_OUT_PROFILES, "train": [p for p in PROFILES if p not in HELD_OUT_PROFILES], "all": PROFILES}[str(spec)]]
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--profiles: {spec!r} is neither a profile set ({', '.join(PROFILE_SETS)}) nor a file")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON / JSONL ({e})") from None
    if not rows:
        raise ValueError(f"{path}: no profiles")
    return [check_profile_row(row, path, i + 1) for i, row in enumerate(rows)]


def check_profile_row(row: Any, path: Path, number: int) -> dict[str, str]:
    from ..tasks.critics import PROFILE_LENGTHS, PROFILE_TONES

    profile = row.get("system", row) if isinstance(row, dict) else row
    if not isinstance(profile, dict):
        raise ValueError(f"{path}: row {number}: expected a profile mapping {{tone, length}}, got {profile!r}")
    for field, allowed in (("tone", PROFILE_TONES), ("length", PROFILE_LENGTHS)):
        if profile.get(field) not in allowed:
            raise ValueError(f"{path}: row {number}: field '{field}': expected {' | '.join(allowed)}, got {profile.get(field)!r}")
    extra = sorted(set(profile) - {"tone", "length"})
    if extra:
        raise ValueError(f"{path}: row {number}: unknown field '{extra[0]}'; a profile has tone and length")
    return {"tone": profile["tone"], "length": profile["length"]}


def evaluate_profiles(policy, tokenizer, profiles: list[dict[str, str]], n_prompts: int = 64, samples: int = 2, seed: int = 0,
                      max_new_tokens: int = 48) -> dict[str, Any]:
    """``{"profiles": [{profile, unseen, reward, reward_se, malformed, n}], "summary": {...}}``."""
    from ..data.feedback_kinds import system_prompt
    from ..rollout.generate import generate
    from ..tasks.critics import HELD_OUT_PROFILES, profile_reward
    from ..tasks.sentiment import SentimentTask

    task = SentimentTask()
    prompts = task.prompts(n_prompts, "test")
    rows = []
    for profile in profiles:
        asked = [system_prompt(profile, p) for p in prompts]
        drawn = generate(policy, tokenizer, asked, n=samples, max_new_tokens=max_new_tokens, seed=seed)
        plain = [prompts[i // samples] for i in range(len(drawn))]
        rewards = [profile_reward(task, p, s.completion, profile) for p, s in zip(plain, drawn, strict=True)]
        rows.append({"profile": profile, "unseen": profile in HELD_OUT_PROFILES, "reward": statistics.fmean(rewards),
                     "reward_se": statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else 0.0,
                     "malformed": sum(task.parse(p, s.completion) is None for p, s in zip(plain, drawn, strict=True)) / len(drawn),
                     "n": len(drawn), "example": {"prompt": asked[0], "completion": drawn[0].completion}})
    summary = {}
    for name, keep in (("seen", False), ("unseen", True)):
        values = [r["reward"] for r in rows if r["unseen"] is keep]
        summary[f"reward/{name}"] = statistics.fmean(values) if values else None
    return {"profiles": rows, "summary": summary}


def profile_table(report: dict[str, Any]) -> str:
    lines = []
    for r in report["profiles"]:
        tag = "unseen" if r["unseen"] else "seen  "
        lines.append(f"{tag} tone={r['profile']['tone']:5s} length={r['profile']['length']:6s} reward {r['reward']:+.3f} ± {r['reward_se']:.3f}"
                     f"  malformed {100 * r['malformed']:.0f}%")
    for key, value in report["summary"].items():
        if value is not None:
            lines.append(f"mean {key}: {value:+.3f}")
    return "\n".join(lines)


def run_profiles_eval(target: str | Path, spec: str, n_prompts: int = 64, samples: int = 2, seed: int = 0, out: str | Path | None = None) -> tuple[dict, Path]:
    """Evaluate a run folder (its final model) or a model folder on the profile set ``spec``; writes
    ``eval-profiles.json`` into ``out`` (default the run / model folder) and returns ``(report, file)``."""
    from ..models.loading import load_policy_for_inference, load_tokenizer

    target = Path(target)
    model_dir = target / "final" if (target / "final" / "config.json").exists() else target
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{target}: not a model folder (no config.json) nor a run folder with final/")
    profiles = profile_set(spec)
    report = evaluate_profiles(load_policy_for_inference(model_dir), load_tokenizer(model_dir), profiles, n_prompts, samples, seed)
    report.update(model=str(model_dir), profile_set=str(spec), n_prompts=n_prompts, samples=samples, seed=seed)
    folder = Path(out) if out is not None else target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "eval-profiles.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report, path
