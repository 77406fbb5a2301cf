"""MODPO (feedback.method: modpo): margins from the other objective's reward, the loss against the paper's
formula worked out by hand, its reduction to DPO, bad settings, and a run of the recipe."""

import math
from types import SimpleNamespace

import pytest
import torch

from alignkit.algorithms import build_algorithm, train
from alignkit.config import load_recipe
from alignkit.data.encode import Encoder, encode_records
from alignkit.data.records import load_records
from alignkit.models.logprobs import TargetLogProbs
from alignkit.objectives.pluralistic import modpo_logits

P = "review of the soup :"
ONE = " the soup was great ."  # 1 clause: brevity 1, sentiment 1/3
TWO = " the soup was great and the bread was good ."  # 2 clauses: brevity 0.5
THREE = " the soup was bad and the bread was good and the staff was fine ."  # 3 clauses: brevity 0


def modpo(*overrides):
    return build_algorithm(load_recipe({"algorithm": "feedback"}, ["task.name=multi_objective", "feedback.method=modpo", "data.kind=pair",
                                                                   "data.max_length=96", "data.train=rows.jsonl", "dpo.packing=false", *overrides]))


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)


def prepared(algo, tokenizer, model, rows):
    records, _ = load_records(rows, kind="pair")
    examples = algo.prepare_examples(encode_records(records, "pair", Encoder(tokenizer, 96)), "pair")
    for i, e in enumerate(examples):
        e["index"] = i
    ctx = SimpleNamespace(tokenizer=tokenizer, model=model, train_examples=examples, eval_examples=None, strategy=SimpleNamespace(is_main=False),
                          reference=lambda keep, **kw: None, cache=lambda *a, **k: None, used_indices=lambda: None)
    algo.setup(ctx)
    return examples


def test_modpo_logits_by_hand():
    # (beta h - m) / w_k with h = 2, m = 0.3, beta = 0.1, w_k = 0.25: (0.2 - 0.3) / 0.25 = -0.4
    assert modpo_logits(torch.tensor([2.0]), torch.tensor([0.3]), 0.1, 0.25).item() == pytest.approx(-0.4)
    with pytest.raises(ValueError, match=r"w_k must be in \(0, 1\]"):
        modpo_logits(torch.tensor([1.0]), torch.tensor([0.0]), 0.1, 0.0)


def test_margins_come_from_the_other_objectives_gold_attribute(tokenizer, model):
    rows = [{"prompt": P, "chosen": ONE, "rejected": THREE}, {"prompt": P, "chosen": THREE, "rejected": TWO}]
    examples = prepared(modpo("feedback.modpo.weight=0.3"), tokenizer, model, rows)
    # w_-k = 1 - 0.3 = 0.7; brevity 1 - (clauses - 1) / 2: (1 - 0) * 0.7 and (0 - 0.5) * 0.7
    assert [e["modpo_margin"] for e in examples] == pytest.approx([0.7, -0.35])
    assert [e["modpo_r_other"] for e in examples] == [pytest.approx((1.0, 0.0)), pytest.approx((0.0, 0.5))]
    explicit = prepared(modpo("feedback.modpo.weight=0.3", "feedback.modpo.margin_weight=2.0"), tokenizer, model, rows)
    assert [e["modpo_margin"] for e in explicit] == pytest.approx([2.0, -1.0])


def test_loss_is_the_papers_formula(tokenizer, model):
    """L = -log sigmoid((beta / w) h - (w_-k / w) (r(y_w) - r(y_l))), h the DPO log-ratio margin."""
    beta, w = 0.5, 0.4
    algo = modpo(f"feedback.modpo.weight={w}", f"dpo.beta={beta}")
    rows = [{"prompt": P, "chosen": ONE, "rejected": TWO}, {"prompt": P, "chosen": THREE, "rejected": ONE}]
    examples = prepared(algo, tokenizer, model, rows)
    batch = algo.collate(examples, tokenizer.pad_token_id)
    batch["ref_chosen"], batch["ref_rejected"] = torch.tensor([-30.0, -20.0]), torch.tensor([-25.0, -41.0])  # a made-up reference
    policy = TargetLogProbs(model)
    with torch.no_grad():
        total, metrics = algo.loss(policy, batch)
        logp = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1)
    c, r = logp[:2].tolist(), logp[2:].tolist()
    by_hand = 0.0
    for j, (db) in enumerate([1.0 - 0.5, 0.0 - 1.0]):  # brevity of chosen minus rejected
        h = (c[j] - batch["ref_chosen"][j].item()) - (r[j] - batch["ref_rejected"][j].item())
        z = (beta / w) * h - ((1 - w) / w) * db
        by_hand += math.log1p(math.exp(-z))
    assert total.item() == pytest.approx(by_hand, rel=1e-5)
    assert metrics["modpo/other_margin"][0].item() == pytest.approx(0.6 * 0.5 + 0.6 * -1.0)


def test_weight_one_without_a_margin_is_dpo(tiny_dir, tmp_path):
    """w_k = 1, w_-k = 0: MODPO's logit is beta h, DPO's; two steps of each give the same weights."""
    from safetensors.torch import load_file

    common = [f"model.path={tiny_dir}", "task.name=multi_objective", "task.n_train=16", "task.n_eval=0", "train.max_steps=2", "train.batch_size=4",
              "train.progress=false", "train.eval_every=null", "dpo.beta=0.3", "train.lr=1e-2", "data.max_length=96"]
    a = train(load_recipe({"algorithm": "feedback"}, [*common, "feedback.method=modpo", "feedback.modpo.weight=1.0", "feedback.modpo.margin_weight=0",
                                                      f"train.output_dir={tmp_path / 'modpo'}"]))
    b = train(load_recipe({"algorithm": "dpo"}, [*common, f"train.output_dir={tmp_path / 'dpo'}"]))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    start = load_file(str(tiny_dir / "model.safetensors"))
    assert any(not torch.equal(wa[k], start[k]) for k in wa)  # it trained
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides, match", [
    (["dpo.loss=ipo"], "modpo has its own loss"),
    (["dpo.reference_update=soft", "dpo.reference=model"], "keeps the reference fixed"),
    (["feedback.modpo.weight=0"], "greater than 0"),
    (["feedback.modpo.weight=1.5"], "less than or equal to 1"),
])
def test_bad_settings_are_refused(overrides, match):
    with pytest.raises(Exception, match=match):
        modpo(*overrides)


def test_a_task_without_the_attribute_is_named(tokenizer, model):
    algo = build_algorithm(load_recipe({"algorithm": "feedback"}, ["task.name=sentiment", "feedback.method=modpo", "data.kind=pair", "data.train=rows.jsonl",
                                                                   "feedback.modpo.margin_reward=attribute:brevity"]))
    with pytest.raises(ValueError, match="has no gold attributes"):
        prepared(algo, tokenizer, model, [{"prompt": P, "chosen": ONE, "rejected": TWO}])
    wrong = modpo("feedback.modpo.margin_reward=attribute:length")
    with pytest.raises(ValueError, match="no gold attribute 'length'; it has sentiment, brevity"):
        prepared(wrong, tokenizer, model, [{"prompt": P, "chosen": ONE, "rejected": TWO}])
