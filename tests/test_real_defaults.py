"""Defaults for real models: the VADER gold reward, the real-model recipes, and the settings warnings of
alignkit.models.sanity (tiny-model settings on a large model; bf16 master weights)."""

import math
from pathlib import Path

import pytest
import torch

from alignkit.config import load_recipe
from alignkit.models.sanity import bf16_unmovable, check_settings
from alignkit.rewards import build_reward_source, check_reward_spec
from alignkit.rewards.vader import completion_text

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "real"


# --------------------------------------------------------------------------------------------------
# VADER
# --------------------------------------------------------------------------------------------------
def test_vader_compound_matches_the_lexicon_by_hand():
    # lexicon (vader_lexicon.txt): great 3.1, lovely 2.8, broke -1.8, terrible -2.1; no other word of the
    # sentences is in it, and no rule (negation, but, booster, caps, !/?) applies. compound = s / sqrt(s^2 + 15)
    pos = 5.9 / math.sqrt(5.9**2 + 15)      # 0.83598
    neg = -3.9 / math.sqrt(3.9**2 + 15)     # -0.70956
    source = build_reward_source("vader")
    scores = source.score(["p"] * 4, ["Great price and lovely colour.", "The handle broke and the lid is terrible.", "It is a blue box.",
                                      [{"role": "assistant", "content": "Great price and lovely colour."}]])
    assert scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([round(pos, 4), round(neg, 4), 0.0, round(pos, 4)], abs=1e-6)
    assert round(pos, 4) == 0.836 and round(neg, 4) == -0.7096


def test_vader_is_a_reward_spec_everywhere():
    check_reward_spec("vader", "rl.reward")  # accepted like gold: no error
    recipe = load_recipe(RECIPES / "grpo.yaml")
    assert recipe.rl.reward == "vader"
    assert completion_text({"role": "assistant", "content": "ok"}) == "ok"
    with pytest.raises(ValueError, match="reward source 'vadr': not 'gold"):
        build_reward_source("vadr")


# --------------------------------------------------------------------------------------------------
# recipes/real
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_real_recipes_validate_with_real_model_settings(path):
    recipe = load_recipe(path)
    assert recipe.model.path == "models/smollm2" and recipe.model.dtype == "float32"
    assert recipe.data.max_length >= 512
    assert recipe.train.lr <= 1e-5
    assert (RECIPES.parent.parent / recipe.data.train).exists(), recipe.data.train
    big = _meta_model(64_000_000)
    assert check_settings(recipe, big, _ChatTokenizer()) == []


@pytest.mark.slow
def test_real_recipe_runs_on_smollm2(smollm2, tmp_path):
    from alignkit.algorithms import train
    from alignkit.engine.tracking import read_metrics

    out = tmp_path / "dpo"
    final = train(load_recipe(RECIPES / "dpo.yaml", [f"model.path={smollm2}", f"train.output_dir={out}", "train.max_steps=2", "train.batch_size=4",
                                                     "train.progress=false", f"data.train={RECIPES / 'data' / 'reviews_pairs.jsonl'}"]))
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # the reference is the starting model
    assert len(losses) == 2 and math.isfinite(losses[1]) and (final / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# check_settings
# --------------------------------------------------------------------------------------------------
class _ChatTokenizer:
    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"


def _meta_model(n: int) -> torch.nn.Module:
    """A model of ``n`` parameters that holds no memory."""
    return torch.nn.Linear(n // 1000, 1000, bias=False, device="meta")


TINY_SETTINGS = {"algorithm": "dpo", "model": {"path": "models/smollm2"}, "data": {"max_length": 96}, "dpo": {"beta": 0.5}, "train": {"lr": 3e-4}}


def test_tiny_model_settings_on_a_large_model_warn():
    warnings = check_settings(load_recipe(TINY_SETTINGS), _meta_model(135_000_000), _ChatTokenizer())
    assert [w.split(" ")[0] for w in warnings] == ["dpo.beta=0.5", "train.lr=0.0003", "data.max_length=96"]
    assert "full fine-tuning of this 135M-parameter pretrained model at lr >= 0.0001" in warnings[1]


def test_no_warning_where_the_settings_suit_the_model():
    # a small model (40M), a model trained from scratch (no model.path), LoRA, no chat template
    assert check_settings(load_recipe(TINY_SETTINGS), _meta_model(40_000_000), None) == []
    assert check_settings(load_recipe(TINY_SETTINGS), _meta_model(40_000_000), _ChatTokenizer()) == []
    scratch = load_recipe({**TINY_SETTINGS, "model": {}})
    assert check_settings(scratch, _meta_model(135_000_000), _ChatTokenizer()) == []
    lora = load_recipe({**TINY_SETTINGS, "model": {"path": "models/smollm2", "lora": {"r": 8}}, "dpo": {"beta": 0.1}})
    assert check_settings(lora, _meta_model(135_000_000), None) == []


def test_bf16_weights_lose_small_updates_by_hand():
    # bf16 keeps 8 significant bits: the spacing is 2^-7 on [1, 2), 2^-8 on [0.5, 1), 2^-6 on [2, 4); a step of
    # 1e-3 is below half of each (and of the spacing just below 1 and 2), so 1.0, 0.75 and -2.0 cannot move; 1e-4 can. AdamW's first step is lr * g/|g|.
    start = [1.0, 0.75, 1e-4, -2.0]
    assert bf16_unmovable(torch.tensor(start, dtype=torch.bfloat16), 1e-3) == 3
    after = {}
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.nn.Parameter(torch.tensor(start, dtype=dtype))
        opt = torch.optim.AdamW([w], lr=1e-3, weight_decay=0.0)
        w.grad = torch.ones_like(w)
        opt.step()
        after[dtype] = w.detach().float()
    changed_bf16 = (after[torch.bfloat16] != torch.tensor(start, dtype=torch.bfloat16).float()).tolist()
    assert changed_bf16 == [False, False, True, False]
    assert after[torch.float32].tolist() == pytest.approx([0.999, 0.749, 1e-4 - 1e-3, -2.001], abs=1e-6)
    recipe = load_recipe({"algorithm": "sft", "model": {"path": "m", "dtype": "bfloat16"}, "train": {"lr": 1e-3}})
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.tensor(start, dtype=torch.bfloat16))
    (warning,) = check_settings(recipe, model)
    assert "(75.0% of the trainable weights here)" in warning and "use train.precision=bf16_params" in warning
    assert "or model.dtype=float32 with train.precision=bf16" in warning
    masters = load_recipe({"algorithm": "sft", "model": {"path": "m", "dtype": "bfloat16"}, "train": {"lr": 1e-3, "precision": "bf16_params"}})
    assert check_settings(masters, model) == []  # fp32 master weights keep the small updates


def test_bf16_master_weights_through_the_trainer(tiny_dir, tmp_path, capsys):
    """model.dtype=bfloat16 with a small lr: one step leaves (nearly) every weight as it was, and the trainer
    says so; the recommended float32 weights + bf16 autocast move them."""
    from safetensors.torch import load_file

    from alignkit.algorithms import train

    start = load_file(str(tiny_dir / "model.safetensors"))

    def changed(extra, name):
        final = train(load_recipe({"algorithm": "sft"}, [f"model.path={tiny_dir}", f"train.output_dir={tmp_path / name}", "task.n_train=8",
                                                         "task.n_eval=0", "train.batch_size=8", "train.max_steps=1", "train.lr=1e-6",
                                                         "train.progress=false", "data.max_length=64", *extra]))
        end = load_file(str(final / "model.safetensors"))
        moved = sum(int((end[k].float() != start[k].to(end[k].dtype).float()).sum()) for k in start if k in end)
        return moved / sum(start[k].numel() for k in start if k in end)

    bf16 = changed(["model.dtype=bfloat16"], "bf16")
    out = capsys.readouterr().out
    assert "[alignkit] warning: the trainable weights are stored in bfloat16" in out
    share = float(out.split("% of the trainable weights here")[0].rsplit("(", 1)[1])
    assert share > 95.0 and bf16 <= 1 - share / 100 + 1e-9  # at most the movable share changed
    master = changed(["train.precision=bf16"], "master")
    assert "warning" not in capsys.readouterr().out
    assert bf16 < 0.05 and master > 0.9
    # bf16 weights with fp32 masters (loaded in bf16 or in fp32): no warning, the saved masters moved
    for dtype in ("bfloat16", "float32"):
        masters = changed([f"model.dtype={dtype}", "train.precision=bf16_params"], f"masters-{dtype}")
        assert "warning" not in capsys.readouterr().out
        assert masters > 0.9, dtype
