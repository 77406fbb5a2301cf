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
