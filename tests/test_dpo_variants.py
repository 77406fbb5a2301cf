"""DPO-family options on the training path: each is checked against an invariance with plain DPO."""

import json

import pytest
import torch
from safetensors.torch import load_file

from alignkit.algorithms import train
from alignkit.config import ConfigError, load_recipe


def run(tmp_path, tiny_dir, name, extra=()):
    recipe = load_recipe({"algorithm": "dpo"}, [
        f"train.output_dir={tmp_path / name}", f"model.path={tiny_dir}", "task.n_train=32", "task.n_eval=0",
        "train.batch_size=8", "train.max_steps=3", "train.lr=1e-3", "train.progress=false", "data.max_length=64",
        *extra,
    ])
    final = train(recipe)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(final / "model.safetensors")), rows


def close(a, b, atol):
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


@pytest.fixture
def plain(tmp_path, tiny_dir):
    return run(tmp_path, tiny_dir, "plain", ["dpo.packing=false"])


def test_ld_dpo_with_alpha_one_is_dpo(tmp_path, tiny_dir, plain):
    weights, rows = run(tmp_path, tiny_dir, "ld1", ["dpo.ld_alpha=1.0"])
    assert close(weights, plain[0], 1e-6)
    _, rows_half = run(tmp_path, tiny_dir, "ld05", ["dpo.ld_alpha=0.5"])
    assert rows_half[1]["loss"] != pytest.approx(rows[1]["loss"], abs=1e-6)


def test_single_item_mixture_is_the_loss(tmp_path, tiny_dir, plain):
    weights, _ = run(tmp_path, tiny_dir, "mix", ["dpo.packing=false", "dpo.mix=[{loss: dpo, weight: 1.0}]"])
    assert close(weights, plain[0], 1e-6)
    _, rows = run(tmp_path, tiny_dir, "mix2", ["dpo.mix=[{loss: dpo, weight: 0.5}, {loss: ipo, weight: 0.5}]"])
    assert rows[0]["loss"] == pytest.approx(0.5 * 0.6931472 + 0.5 * (1 / (2 * 0.1)) ** 2, rel=1e-5)  # margins are 0 at step 1


def test_wpo_weights_are_logged_and_change_the_update(tmp_path, tiny_dir, plain):
    weights, rows = run(tmp_path, tiny_dir, "wpo", ["dpo.wpo=true"])
    assert 0 < rows[0]["wpo/weight"] < 1
    assert rows[0]["loss"] == pytest.approx(0.6931472 * rows[0]["wpo/weight"], rel=0.2)
    assert not close(weights, plain[0], 1e-7)


@pytest.mark.parametrize("variant", ["tdpo1", "tdpo2"])
def test_tdpo_starts_at_log2_and_trains(tmp_path, tiny_dir, variant):
    _, rows = run(tmp_path, tiny_dir, variant, [f"dpo.loss={variant}", "dpo.reference=model"])
    assert rows[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)  # policy == reference: SeqKL = 0
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_tdpo2_with_tiny_alpha_is_close_to_dpo(tmp_path, tiny_dir, plain):
    weights, _ = run(tmp_path, tiny_dir, "tdpo-a0", ["dpo.loss=tdpo2", "dpo.reference=model", "dpo.tdpo_alpha=1e-9"])
    assert close(weights, plain[0], 1e-5)


def test_tr_dpo_hard_update_every_step_moves_the_reference(tmp_path, tiny_dir, plain):
    weights, rows = run(tmp_path, tiny_dir, "tr", ["dpo.reference=model", "dpo.reference_update=hard", "dpo.reference_update_every=1"])
    # after each step the reference is the policy, so every step starts at margin 0 and loss log 2
    assert all(r["loss"] == pytest.approx(0.6931472, abs=1e-5) for r in rows)
    assert not close(weights, plain[0], 1e-7)


def test_variant_errors():
    with pytest.raises(ConfigError, match="needs dpo.reference=model"):
        load_recipe({"algorithm": "dpo"}, ["dpo.loss=tdpo1"])
    with pytest.raises(ConfigError, match="dpo.mix\\[0\\]"):
        load_recipe({"algorithm": "dpo"}, ["dpo.mix=[{weight: 1}]"])
