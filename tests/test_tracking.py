"""W&B and MLflow receive the metrics alignkit logs, in their offline modes (no server, no network):
W&B with ``WANDB_MODE=offline`` (a local run folder that ``wandb sync`` would upload), MLflow with a local
file store named by ``MLFLOW_TRACKING_URI``. TensorBoard is tested in test_engine.py."""

import json

import pytest

from alignkit.algorithms import train
from test_engine import metric_rows, recipe

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, tiny_dir, monkeypatch):
    import wandb  # noqa: F401  (the test extra installs it: a missing tracker fails, it is not skipped)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    train(recipe(tmp_path, tiny_dir, "sft", "wb", ["train.report_to=[wandb]", "train.max_steps=3"]))
    runs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "one offline W&B run in <run>/wandb"
    records = wandb_records(runs[0])
    history = {int(json.loads(h["_step"])): json.loads(h["loss"]) for h in records.get("history", [])}
    expected = {r["step"]: r["loss"] for r in metric_rows(tmp_path / "wb")}
    assert sorted(history) == sorted(expected) == [1, 2, 3]
    assert [history[s] for s in sorted(history)] == pytest.approx([expected[s] for s in sorted(expected)], rel=1e-6)
    config = {item.key for item in records["run"][0].run.config.update}
    assert {"algorithm", "train", "model"} <= config  # the recipe travels as the run's config
    assert "exit" in records


def wandb_records(path):
    """The records of an offline ``.wandb`` file, by type: the file is a LevelDB-style log (a 7-byte header
    ``:W&B`` + version, then 32 KiB blocks of chunks with a 7-byte header: crc32, length, type 1 full / 2 first /
    3 middle / 4 last) of ``wandb_internal_pb2.Record`` messages. Read here by hand because wandb 0.31 reads
    them in its Go core only."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, out = 32768, 7, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            name = record.WhichOneof("record_type")
            if name == "history":
                out.setdefault(name, []).append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
            else:
                out.setdefault(name, []).append(record)
    return out


def test_mlflow_file_store_holds_every_step(tmp_path, tiny_dir, monkeypatch):
    import mlflow  # the test extra installs mlflow-skinny
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    train(recipe(tmp_path, tiny_dir, "sft", "ml", ["train.report_to=[mlflow]", "train.max_steps=3"]))
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{store}")
    (run,) = client.search_runs(experiment_ids=["0"])
    assert run.data.tags["mlflow.runName"] == "ml"
    assert run.data.params["algorithm"] == "sft" and run.data.params["train.max_steps"] == "3"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    expected = [(r["step"], r["loss"]) for r in metric_rows(tmp_path / "ml")]
    assert [s for s, _ in history] == [s for s, _ in expected]
    assert [v for _, v in history] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert run.info.status == "FINISHED"
