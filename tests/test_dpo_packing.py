"""Prefix-shared packed DPO rows give the same numbers as the padded layout.

The packed layout puts ``[prompt, chosen, rejected]`` in one row with position ids that restart at the end
of the prompt for the rejected tokens, a 4-D mask that hides the chosen tokens from the rejected ones, and
an explicit source position for each target (the last prompt token predicts the first rejected token).
Everything is compared against the padded layout (2B rows, the prompt computed twice) on a tiny Llama in
fp32: per-sequence log-probs, the DPO loss and every parameter gradient.
"""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.algorithms.dpo import DPO, pair_logps
from alignkit.config import load_recipe
from alignkit.data.collate import CHOSEN, PROMPT, REJECTED, collate_pairs, collate_pairs_packed
from alignkit.models.logprobs import TargetLogProbs, packed_attention_mask
from alignkit.models.tiny import TinyModelConfig, build_tiny
from alignkit.tasks.sentiment import SentimentTask

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"), SentimentTask().corpus(300), TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64))


def load(path, impl):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=impl, dtype=torch.float32)


def pairs(shapes, seed=0):
    """Pairs with the given (prompt, chosen, rejected) lengths and random token ids."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(8, 300, (n,), generator=g).tolist()  # noqa: E731
    return [{"prompt_ids": rand(p), "chosen_ids": rand(c), "rejected_ids": rand(r), "index": i} for i, (p, c, r) in enumerate(shapes)]


# different prompt lengths in a batch; chosen longer, shorter and equal to rejected; one-token completions
SHAPES = [(5, 3, 7), (11, 6, 2), (1, 4, 4), (8, 1, 9), (3, 9, 1)]


def test_packed_layout():
    batch = collate_pairs_packed(pairs([(3, 2, 4)]), pad_id=0)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6]
    assert batch["segment"][0].tolist() == [PROMPT] * 3 + [CHOSEN] * 2 + [REJECTED] * 4
    targets = batch["loss_mask"][0].nonzero().flatten().tolist()
    assert targets == list(range(3, 9))
    # first chosen and first rejected tokens are both predicted by the last prompt token (position 2)
    assert batch["source_index"][0, targets].tolist() == [2, 3, 2, 5, 6, 7]
    allowed = packed_attention_mask(batch["segment"], batch["group"])[0, 0]
    assert allowed[5, :3].all() and not allowed[5, 3:5].any() and allowed[5, 5]  # rejected sees prompt, not chosen
    assert allowed[4, :5].all() and not allowed[4, 5:].any()
    additive = packed_attention_mask(batch["segment"], batch["group"], "additive", torch.float32)[0, 0]
    assert additive[5, 4] == torch.finfo(torch.float32).min and additive[5, 2] == 0
    # the empty-prompt edge case matches the padded layout: the first completion token is not a target
    edge = collate_pairs_packed(pairs([(0, 3, 2)]), pad_id=0)
    assert edge["chosen_tokens"].tolist() == [2.0] and edge["rejected_tokens"].tolist() == [1.0]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_tokens", [None, 40])
def test_same_logps_as_padded(tiny_path, impl, pack_tokens):
    module = TargetLogProbs(load(tiny_path, impl))
    examples = pairs(SHAPES)
    with torch.no_grad():
        padded = pair_logps(module, collate_pairs(examples, 0))
        packed_batch = collate_pairs_packed(examples, 0, pack_tokens)
        packed = pair_logps(module, packed_batch)
    if pack_tokens:
        assert packed_batch["input_ids"].shape[0] < len(examples)  # several pairs shared a row
    for a, b in zip(padded, packed):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def test_rejected_does_not_see_chosen(tiny_path):
    module = TargetLogProbs(load(tiny_path, "sdpa"))
    a = pairs([(6, 4, 5)])
    b = [dict(a[0], chosen_ids=[t + 1 for t in a[0]["chosen_ids"]])]
    with torch.no_grad():
        _, rej_a, _, _ = pair_logps(module, collate_pairs_packed(a, 0))
        _, rej_b, _, _ = pair_logps(module, collate_pairs_packed(b, 0))
    torch.testing.assert_close(rej_a, rej_b, atol=0, rtol=0)


def dpo_algorithm(packing: bool, loss: str = "dpo") -> DPO:
    algorithm = DPO(load_recipe({"algorithm": "dpo", "dpo": {"loss": loss, "beta": 0.5}}))
    algorithm.packing = packing
    return algorithm


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_same_loss_and_gradients(tiny_path, loss):
    examples = pairs(SHAPES, seed=1)
    g = torch.Generator().manual_seed(3)
    for e in examples:  # a reference different from the policy, so the loss is not just log 2
        e["ref_chosen"], e["ref_rejected"] = (-30 + 5 * torch.randn(2, generator=g)).tolist()
    results = []
    for packing in (False, True):
        model = load(tiny_path, "sdpa")
        algorithm = dpo_algorithm(packing, loss)
        batch = algorithm.collate(examples, 0)
        assert ("source_index" in batch) == packing
        value, metrics = algorithm.loss(TargetLogProbs(model), batch)
        value.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((value.detach(), metrics, grads, algorithm.weight(batch)))
    (l0, m0, g0, w0), (l1, m1, g1, w1) = results
    assert w0 == w1 == len(examples)
    torch.testing.assert_close(l1, l0, atol=ATOL, rtol=1e-6)
    for name in m0:
        torch.testing.assert_close(torch.as_tensor(m1[name][0]), torch.as_tensor(m0[name][0]), atol=1e-4, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=ATOL, rtol=1e-4, msg=name)


def run_dpo(tmp_path, name, overrides, packing=True):
    from alignkit.engine.tracking import read_metrics
    from alignkit.engine.trainer import Trainer

    recipe = load_recipe(
        {
            "algorithm": "dpo",
            "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}},
            "task": {"n_train": 16, "n_eval": 0},
            "data": {"max_length": 64},
            "train": {"lr": 1e-2, "max_steps": 3, "batch_size": 8, "micro_batch_size": 4, "progress": False, "save_final": False},
            "dpo": {"beta": 0.5},
        },
        [f"train.output_dir={tmp_path / name}", *overrides],
    )
    algorithm = DPO(recipe)
    algorithm.packing = packing
    Trainer(recipe, algorithm).train()
    return [r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]


@pytest.mark.slow
def test_train_cache_vs_model_vs_padded(tmp_path):
    from alignkit.algorithms import train

    # the public entry point runs (packed by default)
    recipe = load_recipe(
        {"algorithm": "dpo", "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64}},
         "task": {"n_train": 8, "n_eval": 4}, "data": {"max_length": 64},
         "train": {"max_steps": 1, "batch_size": 4, "eval_every": 1, "progress": False, "output_dir": str(tmp_path / "api")}},
    )
    assert (train(recipe) / "model.safetensors").exists()
    records = [json.loads(line) for line in (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in r for r in records)

    cache = run_dpo(tmp_path, "cache", ["dpo.reference=cache"])
    model = run_dpo(tmp_path, "model", ["dpo.reference=model"])
    padded = run_dpo(tmp_path, "padded", ["dpo.reference=cache"], packing=False)
    assert len(cache) == len(model) == len(padded) == 3
    assert cache[0] == pytest.approx(0.6931472, abs=1e-5)  # policy == reference at the first step
    for losses in (model, padded):
        assert losses == pytest.approx(cache, abs=1e-4)
    assert cache[2] != pytest.approx(cache[0], abs=1e-3)  # training moved the policy
