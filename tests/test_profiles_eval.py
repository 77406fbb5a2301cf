"""Value-profile evaluation (evaluation/profiles.py, `alignkit eval --profiles`): the profile sets, profile
files and their errors, the per-profile reward worked out by hand from fixed samples, and the CLI end to end."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.evaluation.profiles import evaluate_profiles, profile_set
from alignkit.tasks.sentiment import TOPICS, SentimentTask


def test_built_in_profile_sets():
    assert profile_set("held_out") == [{"tone": "harsh", "length": "long"}, {"tone": "warm", "length": "medium"}]
    train = profile_set("train")
    assert len(train) == 4 and not any(p in profile_set("held_out") for p in train)
    assert len(profile_set("all")) == 6 and sorted(map(str, profile_set("all"))) == sorted(map(str, train + profile_set("held_out")))


def test_profile_files_and_their_errors(tmp_path):
    listed = tmp_path / "profiles.json"
    listed.write_text(json.dumps([{"tone": "warm", "length": "long"}]))
    assert profile_set(listed) == [{"tone": "warm", "length": "long"}]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"system": {"tone": "harsh", "length": "short"}, "prompt": "x"}) + "\n" + json.dumps({"tone": "warm", "length": "short"}) + "\n")
    assert profile_set(rows) == [{"tone": "harsh", "length": "short"}, {"tone": "warm", "length": "short"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tone": "warm", "length": "short"}) + "\n" + json.dumps({"tone": "cold", "length": "short"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2: field 'tone': expected warm \| harsh, got 'cold'"):
        profile_set(bad)
    bad.write_text(json.dumps({"tone": "warm", "length": "short", "mood": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: unknown field 'mood'"):
        profile_set(bad)
    with pytest.raises(ValueError, match=r"neither a profile set \(held_out, train, all\) nor a file"):
        profile_set("heldout")


def fixed_samples(monkeypatch, seen: list):
    """Every prompt gets three completions: one harsh clause, two warm clauses, and malformed text."""
    gen = importlib.import_module("alignkit.rollout.generate")

    def fake_generate(model, tok, prompts, n, **kw):
        seen.extend(prompts)
        out = []
        for p in prompts:
            a, b = TOPICS[p.split()[-2]][:2]
            texts = [f" the {a} was awful .", f" the {a} was great and the {b} was good .", f" {a} {a}"]
            out += [SimpleNamespace(prompt=p, completion=texts[j]) for j in range(n)]
        return out

    monkeypatch.setattr(gen, "generate", fake_generate)


def test_per_profile_reward_by_hand(monkeypatch):
    seen: list = []
    fixed_samples(monkeypatch, seen)
    report = evaluate_profiles(None, None, [{"tone": "harsh", "length": "short"}, {"tone": "warm", "length": "long"}], n_prompts=2, samples=3)
    first = SentimentTask().prompts(2, "test")[0]
    assert seen[0] == f"tone: harsh\nlength: short\n{first}"  # rendered as data.format: system renders it in training
    harsh, warm = report["profiles"]
    # harsh, short: awful -> -1 * -1 - 0 = 1; great+good -> -0.75 - |2 - 1|/2 = -1.25; malformed -> -2 - 1 = -3
    assert harsh["reward"] == pytest.approx((1 - 1.25 - 3) / 3) and harsh["malformed"] == pytest.approx(1 / 3) and harsh["n"] == 6
    assert harsh["reward_se"] == pytest.approx(0.732196, abs=1e-6)  # stdev of (1, -1.25, -3) x 2 over sqrt(6)
    # warm, long: awful -> -1 - |1 - 3|/2 = -2; great+good -> 0.75 - 0.5 = 0.25; malformed -3
    assert warm["reward"] == pytest.approx((-2 + 0.25 - 3) / 3)
    assert harsh["unseen"] is False and warm["unseen"] is False
    assert report["summary"] == {"reward/seen": pytest.approx(((1 - 1.25 - 3) / 3 + (-2 + 0.25 - 3) / 3) / 2), "reward/unseen": None}


def test_alignkit_eval_profiles_end_to_end(tiny_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(tiny_dir), "--profiles", "held_out", "--n-prompts", "3", "--samples", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval-profiles.json").read_text())
    assert [r["profile"] for r in report["profiles"]] == profile_set("held_out") and all(r["unseen"] and r["n"] == 3 for r in report["profiles"])
    assert report["summary"]["reward/seen"] is None and report["summary"]["reward/unseen"] == pytest.approx(
        sum(r["reward"] for r in report["profiles"]) / 2)
    assert "unseen tone=harsh length=long" in result.output
    bad = runner.invoke(app, ["eval", str(tiny_dir), "--profiles", "nope", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "neither a profile set" in bad.output
