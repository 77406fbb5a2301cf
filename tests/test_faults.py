"""Runs that survive faults: atomic folders, corrupt checkpoints, disk full, run-folder ownership and locks,
signals, metrics after resume, non-finite values; and TrainConfig values refused when the recipe loads."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from alignkit.algorithms import build_algorithm, train
from alignkit.cli import app
from alignkit.config import ConfigError, load_recipe
from alignkit.engine.checkpoint import RunError, checkpoint_problem, find_resumable, list_checkpoints, remove_folder
from alignkit.engine.trainer import NonFiniteError, Trainer

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread here and in the subprocesses: the same float sums, so resumed weights can be compared bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def overrides(out, tiny_dir, extra=()):
    return [f"train.output_dir={out}", f"model.path={tiny_dir}", "task.n_train=64", "task.n_eval=0", "train.batch_size=8",
            "train.max_steps=6", "train.lr=1e-3", "train.progress=false", "train.warmup_steps=1", "data.max_length=64", *extra]


def recipe(out, tiny_dir, extra=(), algorithm="sft"):
    return load_recipe({"algorithm": algorithm}, overrides(out, tiny_dir, extra))


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_bit_identical(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def metric_rows(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def cli(args):
    result = runner.invoke(app, [str(a) for a in args])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output, result.output
    return result, errors


# --------------------------------------------------------------------------------------------------
# TrainConfig values, refused at recipe load
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("item, words", [
    ("train.output_dir=runs/{algo}", ["train.output_dir", "{algo}", "allowed: {algorithm}"]),
    ("train.output_dir=runs/{", ["train.output_dir", "not a valid folder template"]),
    ("train.adam_betas=[0.9, 1.0]", ["train.adam_betas", "[0, 1)"]),
    ("train.adam_betas=[-0.1, 0.99]", ["train.adam_betas", "[0, 1)"]),
    ("train.adam_eps=-1e-8", ["train.adam_eps", "greater than or equal to 0"]),
    ("train.nonfinite=ignore", ["train.nonfinite", "'stop' or 'skip'"]),
])
def test_bad_train_values_name_the_key_at_load(tmp_path, item, words):
    with pytest.raises(ConfigError) as info:
        load_recipe({"algorithm": "sft"}, [item])
    assert all(w in str(info.value) for w in words), str(info.value)
    (tmp_path / "r.yaml").write_text("algorithm: sft\n")
    result, errors = cli(["train", tmp_path / "r.yaml", f"train.output_dir={tmp_path / 'never'}", item])
    assert result.exit_code == 2 and len(errors) == 1 and words[0] in errors[0]
    assert not (tmp_path / "never").exists()  # before any work


def test_output_dir_keeps_its_placeholder_and_literal_braces():
    assert str(load_recipe({"algorithm": "dpo"}, ["train.output_dir=runs/{{x}}/{algorithm}"]).output_dir) == "runs/{x}/dpo"


# --------------------------------------------------------------------------------------------------
# atomic folders
# --------------------------------------------------------------------------------------------------
def test_a_save_that_fails_leaves_no_folder_and_earlier_checkpoints_intact(tmp_path, tiny_dir, monkeypatch):
    real = torch.save

    def failing(obj, f, *args, **kwargs):
        if "checkpoint-4.tmp" in str(f):
            raise RuntimeError("killed while writing")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(RuntimeError, match="killed while writing"):
        train(recipe(tmp_path / "run", tiny_dir, ["train.save_every=2"]))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert [n for n in names if n.startswith(("checkpoint", "final"))] == ["checkpoint-2"]
    assert checkpoint_problem(tmp_path / "run" / "checkpoint-2") is None


def test_pruning_renames_away_before_deleting(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint-2"
    (folder / "model").mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    seen = []
    monkeypatch.setattr(shutil, "rmtree", lambda p, ignore_errors=False: seen.append(Path(p).name))
    remove_folder(folder)
    assert seen == ["checkpoint-2.deleting"] and not folder.exists()  # a kill now leaves no checkpoint-2
    assert list_checkpoints(tmp_path) == []


def test_incomplete_initial_model_is_rebuilt(tmp_path):
    tiny = ["model.path=null", "model.tiny.hidden_size=16", "model.tiny.num_heads=2", "model.tiny.num_layers=1", "model.tiny.intermediate_size=32",
            "train.max_steps=1", "train.save_final=false"]
    train(recipe(tmp_path / "clean", None, tiny))
    broken = tmp_path / "broken" / "initial-model"
    shutil.copytree(tmp_path / "clean" / "initial-model", broken)
    config = (broken / "config.json").read_text()
    (broken / "config.json").write_text(config[: len(config) // 2])  # a kill while config.json was written
    with open(broken / "model.safetensors", "r+b") as f:
        f.truncate(100)
    train(recipe(tmp_path / "broken", None, tiny))
    assert json.loads((broken / "config.json").read_text()) == json.loads(config)
    assert_bit_identical(tmp_path / "clean" / "initial-model", broken)
    assert not (tmp_path / "broken" / "initial-model.tmp").exists()


# --------------------------------------------------------------------------------------------------
# corrupt or incomplete checkpoints: named, set aside, the previous complete one resumed
# --------------------------------------------------------------------------------------------------
def _truncate(path, keep=0.5):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


CORRUPTIONS = {
    "weights": lambda ck: _truncate(ck / "model" / "model.safetensors"),
    "optimizer": lambda ck: _truncate(ck / "optimizer.pt"),
    "state": lambda ck: (ck / "state.json").write_text('{"step": 4, "epo'),
    "unfinished": lambda ck: (ck / "state.json").unlink(),
}


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("whole") / "run"
    train(recipe(out, tiny_dir, ["train.save_every=2", "train.save_total_limit=null"]))
    return out


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_resume_falls_back_past_a_corrupt_latest_checkpoint(tmp_path, tiny_dir, whole_run, kind, capsys):
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    shutil.rmtree(run / "final")
    CORRUPTIONS[kind](run / "checkpoint-4")
    found, skipped = find_resumable(run)
    assert found == run / "checkpoint-2" and [p.name for p, _ in skipped] == ["checkpoint-4"]
    final = train(recipe(run, tiny_dir, ["train.save_every=2", "train.save_total_limit=null", "train.resume=true"]))
    said = capsys.readouterr().out
    assert "checkpoint-4 is incomplete or corrupt" in said and "falling back to checkpoint-2" in said
    assert (run / "checkpoint-4.incomplete").exists() and checkpoint_problem(run / "checkpoint-4") is None  # rewritten by the resumed run
    assert_bit_identical(whole_run / "final", final)
    rows = metric_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # each step once
    assert [r["loss"] for r in rows] == [r["loss"] for r in metric_rows(whole_run)]


def test_explicit_resume_of_a_corrupt_checkpoint_names_it(tmp_path, tiny_dir, whole_run):
    shutil.copytree(whole_run / "checkpoint-4", tmp_path / "ck")
    _truncate(tmp_path / "ck" / "optimizer.pt")
    result, errors = cli(["train", _yaml(tmp_path), *overrides(tmp_path / "run", tiny_dir, [f"train.resume={tmp_path / 'ck'}"])])
    assert result.exit_code == 2 and len(errors) == 1
    assert f"{tmp_path / 'ck'} cannot be resumed from: optimizer.pt is truncated" in errors[0]


def _yaml(tmp_path, algorithm="sft"):
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(f"algorithm: {algorithm}\n")
    return path


# --------------------------------------------------------------------------------------------------
# disk full
# --------------------------------------------------------------------------------------------------
def test_disk_full_is_one_line_and_keeps_earlier_checkpoints(tmp_path, tiny_dir, monkeypatch):
    real = torch.save

    def full(obj, f, *args, **kwargs):
        if "checkpoint-4.tmp" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    result, errors = cli(["train", _yaml(tmp_path), *overrides(run, tiny_dir, ["train.save_every=2"])])
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert errors[0].startswith("error: no space left on /") and "while writing checkpoint-4" in errors[0]
    assert errors[0].endswith("checkpoint-2 is the last complete one")
    assert checkpoint_problem(run / "checkpoint-2") is None
    assert not (run / "checkpoint-4").exists() and not (run / "checkpoint-4.tmp").exists() and not (run / "final").exists()
    monkeypatch.setattr(torch, "save", real)  # space again: the run continues from checkpoint-2
    result, errors = cli(["train", _yaml(tmp_path), *overrides(run, tiny_dir, ["train.save_every=2", "train.resume=true"])])
    assert result.exit_code == 0 and not errors and [r["step"] for r in metric_rows(run)] == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------------------------------
# run folders: one owner
# --------------------------------------------------------------------------------------------------
def test_a_fresh_run_refuses_another_runs_folder_unless_overwrite(tmp_path, tiny_dir):
    run = tmp_path / "run"
    first = train(recipe(run, tiny_dir, ["train.save_every=2", "train.max_steps=4"]))
    before = (run / "metrics.jsonl").read_text()
    result, errors = cli(["train", _yaml(tmp_path, "dpo"), *overrides(run, tiny_dir, ["train.max_steps=2"])])
    assert result.exit_code == 2 and len(errors) == 1
    assert f"{run} holds another run (checkpoint-2, metrics.jsonl, final)" in errors[0] and "train.overwrite=true" in errors[0]
    assert (run / "metrics.jsonl").read_text() == before and (first / "model.safetensors").exists()
    result, errors = cli(["train", _yaml(tmp_path, "dpo"), *overrides(run, tiny_dir, ["train.max_steps=2", "train.overwrite=true"])])
    assert result.exit_code == 0 and not errors, result.output
    assert not (run / "checkpoint-2").exists() and [r["step"] for r in metric_rows(run)] == [1, 2]
    assert "algorithm: dpo" in (run / "config.yaml").read_text()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, tiny_dir, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then"}))
    train(recipe(run, tiny_dir, ["train.max_steps=1"]))
    assert f"took over the lock {run / 'run.lock'} of pid {dead.pid}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# signals: finish the step, checkpoint, say how to resume, exit non-zero; resume is bit-identical
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_resume_is_bit_identical(tmp_path, tiny_dir, sig):
    steps = ["train.max_steps=60", "train.save_every=25"]
    whole = train(recipe(tmp_path / "whole", tiny_dir, steps))
    run = tmp_path / "run"
    yaml_path = _yaml(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli", "train", str(yaml_path), *overrides(run, tiny_dir, steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        # a second run in the same folder at the same time is refused, naming the holder
        with pytest.raises(RunError, match=f"in use by another run \\(pid {proc.pid}"):
            Trainer(recipe(run, tiny_dir, [*steps, "train.resume=true"]), build_algorithm(recipe(run, tiny_dir, steps)))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"stopped by {sig.name} after step" in errors[0], err
    step = int(errors[0].split("after step ")[1].split()[0])
    assert 3 <= step < 60 and f"wrote {run / f'checkpoint-{step}'}" in errors[0]
    assert f"alignkit train {yaml_path} " in errors[0] and errors[0].endswith("train.resume=true`")
    assert "Traceback" not in err and checkpoint_problem(run / f"checkpoint-{step}") is None
    again = train(recipe(run, tiny_dir, [*steps, "train.resume=true"]))
    assert_bit_identical(whole, again)
    rows = metric_rows(run)
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert [r["loss"] for r in rows] == [r["loss"] for r in metric_rows(tmp_path / "whole")]


# --------------------------------------------------------------------------------------------------
# non-finite losses, gradients and weights
# --------------------------------------------------------------------------------------------------
def test_a_diverging_run_stops_naming_the_step_and_saves_no_final(tmp_path, tiny_dir):
    run = tmp_path / "run"
    result, errors = cli(["train", _yaml(tmp_path), *overrides(run, tiny_dir, ["train.lr=1e30", "train.max_steps=20", "train.warmup_steps=0"])])
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert errors[0].startswith("error: step ") and ("the loss is" in errors[0] or "gradient" in errors[0] or "weights" in errors[0])
    assert "train.nonfinite=skip" in errors[0] or "was not saved" in errors[0]
    assert not (run / "final").exists()


def _poison(trainer, at_calls):
    """Make the algorithm's loss NaN at the given calls (1-based)."""
    loss, calls = trainer.algorithm.loss, [0]

    def poisoned(policy, batch):
        calls[0] += 1
        value, metrics = loss(policy, batch)
        return (value * float("nan") if calls[0] in at_calls else value), metrics

    trainer.algorithm.loss = poisoned


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_skip_policy_skips_and_counts_the_update(tmp_path, tiny_dir):
    r = recipe(tmp_path / "run", tiny_dir, ["train.nonfinite=skip", "train.save_final=false", "train.scheduler=constant"])
    trainer = Trainer(r, build_algorithm(r))
    examples = trainer.load_examples(None, "train")
    trainer.fit(examples, steps=2)
    before, steps_before = _state(trainer.model), {float(s["step"]) for s in trainer.optimizer.state.values()}
    _poison(trainer, {1})
    trainer.fit(examples, steps=1)
    after = _state(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing applied
    assert {float(s["step"]) for s in trainer.optimizer.state.values()} == steps_before
    assert trainer.nonfinite_skipped == 1 and trainer.step == 3
    last = metric_rows(tmp_path / "run")[-1]
    assert last["step"] == 3 and last["nonfinite_skipped"] == 1 and last["loss"] is None
    trainer.fit(examples, steps=1)  # and training goes on
    assert not all(torch.equal(after[k], v) for k, v in _state(trainer.model).items())
    trainer.close()


def test_stop_policy_names_the_step(tmp_path, tiny_dir):
    r = recipe(tmp_path / "run", tiny_dir)
    trainer = Trainer(r, build_algorithm(r))
    _poison(trainer, {3})
    with pytest.raises(NonFiniteError, match=r"step 3: the loss is nan; stopped before applying the update"):
        trainer.train()
    assert not (tmp_path / "run" / "final").exists()


def test_non_finite_gradient_is_caught_without_clipping(tmp_path, tiny_dir):
    r = recipe(tmp_path / "run", tiny_dir, ["train.max_grad_norm=null"])
    trainer = Trainer(r, build_algorithm(r))
    trainer.fit(trainer.load_examples(None, "train"), steps=1)
    params = trainer._params
    for p in params:
        p.grad = torch.zeros_like(p)
    assert trainer._nonfinite(1.0, None, params) is None
    params[0].grad[0] = float("inf")
    assert "gradient" in trainer._nonfinite(1.0, None, params)
    assert "gradient norm is inf" in trainer._nonfinite(1.0, float("inf"), params)
    trainer.close()


def test_non_finite_weights_are_never_saved(tmp_path, tiny_dir):
    r = recipe(tmp_path / "run", tiny_dir, ["train.save_every=1"])
    trainer = Trainer(r, build_algorithm(r))
    trainer.fit(trainer.load_examples(None, "train"), steps=1)
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteError, match="final was not saved"):
        trainer.save(tmp_path / "run" / "final")
    with pytest.raises(NonFiniteError, match="checkpoint-1 was not saved"):
        trainer.save_checkpoint({"epoch": 0.0})
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "final.tmp").exists()
    trainer.close()
