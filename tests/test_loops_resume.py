"""Round-level resume of alignkit iterate: a run killed after a round's training, or stopped inside a round's
training, continues with train.resume=true at the round and step it stopped and ends equal to the
uninterrupted run (weights, provenance, per-round history)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignkit.engine.trainer import Interrupted, Trainer
from alignkit.loops import iterate
from alignkit.loops.iterate import IterativeLoop

pytestmark = pytest.mark.slow  # five short iterate runs (still in the default suite)


def overrides(tiny_dir, out, *extra):
    return [f"model.path={tiny_dir}", f"train.output_dir={out}", "train.batch_size=4", "train.progress=false", "train.lr=1e-3", "data.max_length=48",
            "iterate.judge=alignkit.rewards.verifiable:length", "iterate.rounds=2", "iterate.prompts_per_round=6", "iterate.samples_per_prompt=3",
            "iterate.steps_per_round=3", "iterate.eval_prompts=2", "iterate.eval_samples=1", "iterate.max_new_tokens=8", "iterate.eval_max_new_tokens=8",
            "iterate.builder=all_pairs", "iterate.reference=previous", *extra]


RECIPE = {"algorithm": "dpo", "iterate": {}}


def weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


def same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    for r in range(2):
        assert (a / "rounds" / f"round-{r}.jsonl").read_text() == (b / "rounds" / f"round-{r}.jsonl").read_text()
    ha = json.loads((a / "rounds" / "summary.json").read_text())["rounds"]
    hb = json.loads((b / "rounds" / "summary.json").read_text())["rounds"]
    assert [(h["round"], h["policy_step_start"], h["policy_step_end"], h["examples"]) for h in ha] == \
        [(h["round"], h["policy_step_start"], h["policy_step_end"], h["examples"]) for h in hb]
    assert [h["eval"]["gold_reward"] for h in ha] == pytest.approx([h["eval"]["gold_reward"] for h in hb], abs=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("resume") / "full"
    iterate(RECIPE, overrides(tiny_dir, out))
    return out


def test_killed_after_round_training_resumes_at_the_round(uninterrupted, tmp_path, tiny_dir, monkeypatch, one_thread):
    out = tmp_path / "killed"
    calls = []
    update = IterativeLoop.update_reference

    def dies_after_round_1(self):
        calls.append(self.trainer.step)
        if len(calls) == 2:  # round 1's training is done; the process dies before the round ends
            raise KeyboardInterrupt
        update(self)

    monkeypatch.setattr(IterativeLoop, "update_reference", dies_after_round_1)
    with pytest.raises(KeyboardInterrupt):
        iterate(RECIPE, overrides(tiny_dir, out))
    monkeypatch.setattr(IterativeLoop, "update_reference", update)
    state = json.loads((out / "rounds" / "state.json").read_text())
    assert (state["round"], state["phase"], state["step"]) == (1, "train", 3)  # round 1 was training from step 3
    assert calls == [3, 6]
    result = iterate(RECIPE, overrides(tiny_dir, out, "train.resume=true"))
    assert [r["round"] for r in result["rounds"]] == [0, 1] and result["rounds"][1].get("resumed")
    same_run(uninterrupted, out)


def test_stopped_inside_a_round_resumes_at_its_step(uninterrupted, tmp_path, tiny_dir, monkeypatch, one_thread):
    """Through the command line: a SIGTERM during round 1's second step stops the run with a checkpoint and names
    the command that continues it; that command finishes the run equal to the uninterrupted one."""
    from typer.testing import CliRunner

    from alignkit.cli import app

    out = tmp_path / "stopped"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(RECIPE))
    monkeypatch.setattr(Trainer, "_stop_requested", lambda self: self.step == 4)
    stopped = CliRunner().invoke(app, ["iterate", str(recipe), *overrides(tiny_dir, out)])
    monkeypatch.undo()
    assert stopped.exit_code != 0 and isinstance(stopped.exception, (SystemExit, Interrupted))
    assert f"alignkit iterate {recipe}" in stopped.output and "train.resume=true" in stopped.output
    assert (out / "checkpoint-4").is_dir()
    resumed = CliRunner().invoke(app, ["iterate", str(recipe), *overrides(tiny_dir, out, "train.resume=true")])
    assert resumed.exit_code == 0, resumed.output
    rounds = json.loads((out / "rounds" / "summary.json").read_text())["rounds"]
    assert rounds[1]["policy_step_start"] == 3 and rounds[1]["policy_step_end"] == 6 and rounds[1].get("resumed")
    same_run(uninterrupted, out)
