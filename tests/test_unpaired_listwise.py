"""KTO/BCO/APO on thumbs up/down, PRO on rankings, Curry-DPO ordering: end to end on the tiny model."""

import json
import math

import pytest

from alignkit.algorithms import train
from alignkit.algorithms.dpo import DPO
from alignkit.config import load_recipe


def run(tmp_path, tiny_dir, algorithm, name, extra=()):
    recipe = load_recipe({"algorithm": algorithm}, [
        f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "task.n_train=32", "task.n_eval=8",
        "train.batch_size=8", "train.max_steps=4", "train.lr=3e-3", "train.progress=false", "data.max_length=96",
        "train.eval_every=4", *extra,
    ])
    train(recipe)
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss,first", [
    ("kto", 0.5),                  # w * (1 - sigmoid(beta * (0 - z0))) with z0 = 0 at the start
    ("bco", math.log(2.0)),        # -log sigmoid(0 - delta), delta = 0 before any update
    ("apo_zero_unpaired", 0.5),    # 1 - sigmoid(0) or sigmoid(0)
])
def test_unpaired_losses_start_where_the_formula_says(tmp_path, tiny_dir, loss, first):
    rows = run(tmp_path, tiny_dir, "kto", loss, [f"unpaired.loss={loss}"])
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[0]["loss"] == pytest.approx(first, abs=1e-5)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert any("eval/loss" in r for r in rows)
    if loss == "kto":
        assert train_rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
        assert "rewards/desirable" in train_rows[-1]


def test_pro_trains_on_rankings(tmp_path, tiny_dir):
    rows = run(tmp_path, tiny_dir, "pro", "pro", ["listwise.sft_weight=0.1"])
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]


def test_ranked_rows_must_rank_the_same_number(tmp_path, tiny_dir):
    data = tmp_path / "ranked.jsonl"
    rows = [{"prompt": "review of the soup :", "completions": [" the soup was good .", " the soup was bad ."], "scores": [1, 0]}] * 8
    rows.append({"prompt": "review of the soup :", "completions": [" a .", " b .", " c ."], "scores": [1, 0, 2]})
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from alignkit.data.records import DataError

    with pytest.raises(DataError, match="row 9: field 'completions': ranks 3 completions; every row must rank 2"):
        run(tmp_path, tiny_dir, "pro", "bad", [f"data.train={data}"])


def test_curry_dpo_orders_pairs_easy_to_hard(tiny_dir):
    recipe = load_recipe({"algorithm": "dpo"}, ["dpo.curriculum=true", "data.kind=ranked"])
    dpo = DPO(recipe)
    assert dpo.shuffle is False
    a = {"prompt_ids": [1], "completion_ids": [[10], [11], [12]], "scores": [0.0, 1.0, 0.5], "row": 1}
    b = {"prompt_ids": [2], "completion_ids": [[20], [21]], "scores": [2.0, -1.0], "row": 2}
    pairs = dpo.prepare_examples([a, b], "ranked")
    got = [(p["chosen_ids"][0], p["rejected_ids"][0]) for p in pairs]
    # stage 1: the largest-gap pair of each prompt; then the next ones (a has 3 pairs, b has 1)
    assert got == [(11, 10), (20, 21), (11, 12), (12, 10)]  # equal gaps: lower chosen index first
    assert [p["index"] for p in pairs] == [0, 1, 2, 3]


def test_curry_dpo_runs_from_task_rankings(tmp_path, tiny_dir):
    rows = run(tmp_path, tiny_dir, "dpo", "curry", ["dpo.curriculum=true", "data.kind=ranked", "train.eval_every=null"])
    assert rows[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-5)


@pytest.mark.parametrize("loss", ["kto", "bco"])
def test_unpaired_micro_batches_give_the_full_batch_update(tmp_path, tiny_dir, loss):
    """KTO's z0 and BCO's shift are step-level quantities: splitting the step into micro-batches changes
    nothing (with per-micro-batch statistics the two runs differ)."""
    from safetensors.torch import load_file

    run(tmp_path, tiny_dir, "kto", "full", [f"unpaired.loss={loss}"])
    run(tmp_path, tiny_dir, "kto", "micro", [f"unpaired.loss={loss}", "train.micro_batch_size=2"])
    full, micro = (load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("full", "micro"))
    assert max((full[k] - micro[k]).abs().max().item() for k in full) < 2e-6


def test_bco_shift_survives_resume(tmp_path, tiny_dir):
    import shutil

    from safetensors.torch import load_file

    extra = ["unpaired.loss=bco", "train.max_steps=6", "train.save_every=3"]
    run(tmp_path, tiny_dir, "kto", "whole", extra)
    (tmp_path / "again").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "again" / "checkpoint-3")
    shift = load_file(str(tmp_path / "again" / "checkpoint-3" / "bco_shift.safetensors"))
    assert int(shift["count"]) == 3 * 8 and float(shift["mean"]) != 0.0  # 3 steps of 8 rewards folded in
    run(tmp_path, tiny_dir, "kto", "again", [*extra, "train.resume=true"])
    a, b = (load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("whole", "again"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_kto_takes_the_step_level_z0():
    """Hand-worked KTO with an explicit z0 = 0.5, beta = 1: r = (1.0, -1.0) for (desirable, undesirable)."""
    import torch

    from alignkit.objectives.unpaired import UnpairedLogps, unpaired_loss

    lp = UnpairedLogps(logp=torch.tensor([1.0, -1.0]), ref_logp=torch.zeros(2), label=torch.tensor([True, False]))
    losses = unpaired_loss("kto", lp, beta=1.0, z0=0.5)
    expected = [1 - 1 / (1 + math.exp(-(1.0 - 0.5))), 1 - 1 / (1 + math.exp(-(0.5 + 1.0)))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    clamped = unpaired_loss("kto", lp, beta=1.0, z0=-3.0)  # z0 = max(0, .)
    assert clamped.tolist() == pytest.approx(unpaired_loss("kto", lp, beta=1.0, z0=0.0).tolist(), abs=1e-7)
