"""The feedback methods (algorithm: feedback): the sequences each builds, its loss against hand-computed values,
and what a few steps of it teach a tiny model."""

import json
from types import SimpleNamespace

import pytest
import torch

from alignkit.algorithms import build_algorithm
from alignkit.config import ConfigError, load_recipe
from alignkit.data.encode import Encoder, encode_records
from alignkit.data.errors import DataError
from alignkit.data.records import load_records
from alignkit.models.logprobs import TargetLogProbs
from alignkit.tasks import get_task

P = "review of the soup :"
BAD, GOOD = " the soup was bad .", " the soup was good ."


def method(*overrides):
    return build_algorithm(load_recipe({"algorithm": "feedback"}, ["data.max_length=160", "data.train=rows.jsonl", *overrides]))


def prepared(algo, tokenizer, rows, kind, model=None, split="train", main=False):
    """Rows checked, encoded, prepared and converted as the trainer would (setup on a minimal context)."""
    records, _ = load_records(rows, kind=kind)
    examples = algo.prepare_examples(encode_records(records, kind, Encoder(tokenizer, 160)), kind)
    for i, e in enumerate(examples):
        e["index"] = i
    ctx = SimpleNamespace(tokenizer=tokenizer, model=model, train_examples=examples if split == "train" else [],
                          eval_examples=examples if split == "eval" else None, strategy=SimpleNamespace(is_main=main))
    algo.setup(ctx)
    return examples


def decoded(tokenizer, example, trained=None):
    ids = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if trained is None or bool(m) == trained]
    return tokenizer.decode(ids)


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)


@pytest.mark.parametrize("overrides, error, match", [
    (["feedback.method=hindsigt"], ConfigError, "feedback.method: .*did you mean 'hindsight'"),
    (["feedback.method=cut", "feedback.cut.template='{prompt} only'"], ValueError, r"feedback.cut.template must hold \{prompt\}, \{judgment\}"),
    (["feedback.method=c_rlft", "feedback.c_rlft.inference_class=gpt5"], ValueError, "inference_class: 'gpt5' is not a class"),
    (["feedback.method=ilf", "feedback.ilf.samples=0", "feedback.ilf.use_revision=false"], ValueError, "leave no refinement"),
    (["feedback.method=reward_augmented", "dpo.params={lable_smoothing: 0.1}"], ConfigError, "did you mean 'lable_smoothing' -> 'label_smoothing'"),
])
def test_bad_feedback_settings_are_refused_before_training(overrides, error, match):
    with pytest.raises(error, match=match):
        method(*overrides)


# --------------------------------------------------------------------------------------------------
# Chain of Hindsight
# --------------------------------------------------------------------------------------------------
def test_hindsight_sequence_masks_the_prompt_and_the_feedback_phrases(tokenizer):
    eos = tokenizer.eos_token
    pair = prepared(method("feedback.hindsight.order=worse_first"), tokenizer, [{"prompt": P, "chosen": GOOD, "rejected": BAD}], "pair")[0]
    assert decoded(tokenizer, pair) == f"{P} A worse answer:{BAD}{eos} A better answer:{GOOD}{eos}"
    assert decoded(tokenizer, pair, trained=True) == f"{BAD}{eos}{GOOD}{eos}"  # only answer tokens are targets
    assert decoded(tokenizer, pair, trained=False) == f"{P} A worse answer: A better answer:"
    better_only = prepared(method("feedback.hindsight.train_on=better", "feedback.hindsight.order=worse_first"), tokenizer, [{"prompt": P, "chosen": GOOD, "rejected": BAD}], "pair")[0]
    assert decoded(tokenizer, better_only, trained=True) == f"{GOOD}{eos}"
    critique = [{"prompt": P, "completion": BAD, "critique": "bad is negative", "revision": GOOD},
                {"prompt": P, "completion": GOOD, "critique": "good is positive", "label": True}]
    revised, praised = prepared(method("data.kind=critique", "feedback.hindsight.order=worse_first"), tokenizer, critique, "critique")
    assert decoded(tokenizer, revised) == decoded(tokenizer, pair)  # a revision is the better answer
    assert decoded(tokenizer, praised) == f"{P} A better answer:{GOOD}{eos}"
    assert method().inference_prompt(P) == f"{P} A better answer:"


def test_hindsight_random_order_is_per_row_and_reproducible(tokenizer):
    rows = [{"prompt": P, "chosen": GOOD, "rejected": BAD, "n": i} for i in range(16)]
    first = [decoded(tokenizer, e) for e in prepared(method(), tokenizer, rows, "pair")]  # random is the default
    again = [decoded(tokenizer, e) for e in prepared(method(), tokenizer, rows, "pair")]
    assert first == again and 0 < sum(s.startswith(f"{P} A better answer:") for s in first) < 16


def test_hindsight_training_teaches_the_policy_to_follow_the_feedback_phrase(tokenizer, model, one_thread):
    """After a few CoH steps, the better phrase makes the better answer more likely than the worse phrase does."""
    import copy

    policy = copy.deepcopy(model)
    algo = method()
    rows = [{"prompt": f"review of the {t} :", "chosen": f" the {n} was {good} .", "rejected": f" the {n} was {bad} ."}
            for t, n in [("soup", "soup"), ("film", "plot"), ("book", "story"), ("trip", "hotel")] for good, bad in [("great", "awful"), ("lovely", "poor")]]
    batch = algo.collate(prepared(algo, tokenizer, rows, "pair"), tokenizer.pad_token_id)
    module = TargetLogProbs(policy)

    def logp(prompt, completion):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p + c])
        return module(ids, torch.ones_like(ids), torch.tensor([[0] * len(p) + [1] * len(c)])).sum().item()

    def margin():  # how much more the better phrase prefers y+ over y- than the worse phrase does, summed over rows
        with torch.no_grad():
            return sum(sign * (logp(r["prompt"] + phrase, r["chosen"]) - logp(r["prompt"] + phrase, r["rejected"]))
                       for r in rows for phrase, sign in ((" A better answer:", 1), (" A worse answer:", -1)))

    before = margin()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(120):  # a randomly initialised model first learns the language, then the phrases (about 100 steps)
        loss, _ = algo.loss(module, batch)
        optimizer.zero_grad()
        (loss / algo.weight(batch)).backward()
        optimizer.step()
    assert margin() > before + 5.0


# --------------------------------------------------------------------------------------------------
# C-RLFT
# --------------------------------------------------------------------------------------------------
def test_c_rlft_conditions_on_the_class_and_weights_the_nll_by_its_reward(tokenizer, model):
    rows = [{"prompt": P, "completion": GOOD, "quality": "expert"}, {"prompt": P, "completion": BAD, "quality": "other"}]
    algo = method("feedback.method=c_rlft")
    examples = prepared(algo, tokenizer, rows, "sft")
    assert [decoded(tokenizer, e, trained=False) for e in examples] == [f"<expert> {P}", f"<other> {P}"]
    assert [e["seq_weight"] for e in examples] == [1.0, 0.1]
    batch = algo.collate(examples, tokenizer.pad_token_id)
    loss, _ = algo.loss(TargetLogProbs(model), batch)
    # by hand: each row's NLL from the logits, times its class reward
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    nll = -(logp * batch["loss_mask"][:, 1:]).sum(-1)
    assert loss.item() == pytest.approx(1.0 * nll[0].item() + 0.1 * nll[1].item(), rel=1e-5)
    assert algo.inference_prompt(P) == f"<expert> {P}"
    with pytest.raises(DataError, match="row 1: field 'quality': unknown class 'gpt5'"):
        prepared(algo, tokenizer, [{"prompt": P, "completion": GOOD, "quality": "gpt5"}], "sft")
    with pytest.raises(DataError, match="field 'quality': missing"):
        prepared(algo, tokenizer, [{"prompt": P, "completion": GOOD}], "sft")


# --------------------------------------------------------------------------------------------------
# CUT
# --------------------------------------------------------------------------------------------------
def spans_row(completion, word, label="bad", critique="the review calls the soup terrible, which is negative"):
    start = completion.index(word)
    return {"prompt": P, "completion": completion, "spans": [{"start": start, "end": start + len(word), "label": label}], "critique": critique}


def test_cut_flags_the_bad_span_and_matches_the_formula(tokenizer, model):
    algo = method("feedback.method=cut", "data.kind=spans", "feedback.cut.judgment_weight=0.5", "feedback.cut.unlikelihood_weight=2.0")
    negative, positive = prepared(algo, tokenizer, [spans_row(" the soup was terrible .", "terrible"), spans_row(GOOD, "good", "good")], "spans")
    flagged = [t for t, f in zip(negative["input_ids"], negative["flagged"]) if f]
    assert tokenizer.decode(flagged).strip() == "terrible" and not any(positive["flagged"]) and "judged_ids" not in positive
    assert tokenizer.decode(negative["judged_ids"][: len(negative["judged_ids"]) - sum(negative["judged_mask"])]) == \
        f"{P} (judgment: the review calls the soup terrible, which is negative)"
    batch = algo.collate([negative, positive], tokenizer.pad_token_id)
    loss, metrics = algo.loss(TargetLogProbs(model), batch)
    with torch.no_grad():
        def target_logps(ids, attention, mask):
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
            return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0], mask[:, 1:].bool()
        logp, mask = target_logps(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        flags = batch["flagged"][:, 1:].bool() & mask
        p = logp.exp()
        misalign = (torch.where(flags, -2.0 * torch.log1p(-p), -logp) * mask).sum()
        jl, jm = target_logps(batch["judged_input_ids"], batch["judged_attention_mask"], batch["judged_loss_mask"])
    assert loss.item() == pytest.approx(misalign.item() - 0.5 * (jl * jm).sum().item(), rel=1e-4)
    assert metrics["flagged_frac"][0] == float(flags.sum()) and metrics["flagged_frac"][1] == float(mask[0].sum())


def test_cut_ratio_rule_flags_what_the_judgment_makes_more_likely(tokenizer, model):
    algo = method("feedback.method=cut", "data.kind=spans", "feedback.cut.flag=ratio", "feedback.cut.ratio_lambda=1.0", "feedback.cut.judgment_weight=0")
    example = prepared(algo, tokenizer, [spans_row(" the soup was terrible .", "terrible")], "spans")[0]
    batch = algo.collate([example], tokenizer.pad_token_id)
    module = TargetLogProbs(model)
    with torch.no_grad():
        plain = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[0][batch["loss_mask"][0].bool()]
        judged = module(batch["judged_input_ids"], batch["judged_attention_mask"], batch["judged_loss_mask"])[0][batch["judged_loss_mask"][0].bool()]
    expected = int((judged > plain).sum())  # λ = 1: flagged where the judgment raises the probability
    _, metrics = algo.loss(module, batch)
    assert metrics["flagged_frac"][0] == expected
    with pytest.raises(ValueError, match="critique rows need feedback.cut.flag=ratio"):
        method("feedback.method=cut", "data.kind=critique").prepare_examples([], "critique")


def test_cut_keeps_the_flagged_token_below_what_likelihood_training_gives_it(tokenizer, model, one_thread):
    """The same steps from the same start with and without the flags: CUT's flagged token ends up less likely."""
    import copy

    algo = method("feedback.method=cut", "data.kind=spans", "feedback.cut.judgment_weight=0")
    example = prepared(algo, tokenizer, [spans_row(" the soup was terrible .", "terrible")], "spans")[0]
    batch = algo.collate([example], tokenizer.pad_token_id)
    flags = batch["flagged"].bool()
    assert flags.sum() > 0

    def trained(flagged):
        policy = copy.deepcopy(model)
        module = TargetLogProbs(policy)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        steps = dict(batch, flagged=flagged)
        for _ in range(8):
            loss, _ = algo.loss(module, steps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[flags].sum().item()

    assert trained(batch["flagged"]) < trained(torch.zeros_like(batch["flagged"])) - 1.0


# --------------------------------------------------------------------------------------------------
# reward-augmented DPO
# --------------------------------------------------------------------------------------------------
def test_reward_augmented_relabels_each_pair_into_two_score_conditioned_pairs(tokenizer, model):
    algo = method("feedback.method=reward_augmented", "dpo.loss=simpo")  # no reference: the conversion alone
    rows = [{"prompt": P, "chosen": GOOD, "rejected": BAD, "score_chosen": 0.5, "score_rejected": -0.75}]
    kept, swapped = prepared(algo, tokenizer, rows, "pair", model=model)
    assert tokenizer.decode(kept["prompt_ids"]) == f"<score 0.5> {P}" and kept["chosen_ids"] == swapped["rejected_ids"]
    assert tokenizer.decode(swapped["prompt_ids"]) == f"<score -0.8> {P}" and tokenizer.decode(swapped["chosen_ids"]).startswith(BAD)
    assert algo.inference_prompt(P) == f"<score 0.5> {P}"  # the highest score seen
    three = prepared(method("feedback.method=reward_augmented", "dpo.loss=simpo", "feedback.reward_augmented.keep_original=true"), tokenizer, rows, "pair",
                     model=model)
    assert [tokenizer.decode(e["prompt_ids"]) for e in three] == [f"<score 0.5> {P}", f"<score -0.8> {P}", P]
    with pytest.raises(DataError, match="field 'score_rejected': missing"):
        prepared(algo, tokenizer, [{"prompt": P, "chosen": GOOD, "rejected": BAD, "score_chosen": 1}], "pair", model=model)


# --------------------------------------------------------------------------------------------------
# ILF
# --------------------------------------------------------------------------------------------------
def test_ilf_selects_the_best_candidate_by_the_reward_and_fine_tunes_on_it(tokenizer, model, tmp_path):
    rows = [{"prompt": P, "completion": BAD, "critique": "bad is negative", "revision": GOOD},  # revision -0.0 > original: revision
            {"prompt": P, "completion": " the soup was great .", "critique": "great is positive", "label": True},  # no revision: kept
            {"prompt": P, "completion": " the soup was okay .", "critique": "okay is neutral", "revision": " the soup was awful ."}]  # worse revision
    algo = method("data.kind=critique", "feedback.method=ilf", "feedback.ilf.samples=0", "feedback.ilf.refine_weight=0.5",
                  f"train.output_dir={tmp_path}")
    examples = prepared(algo, tokenizer, rows, "critique", model=model)
    assert [e["target"] for e in examples] == [GOOD, " the soup was great .", " the soup was okay ."]  # gold: 0.5 > -0.75; 1.0; 0.0 > -1.0
    assert decoded(tokenizer, examples[0], trained=True) == GOOD + tokenizer.eos_token and decoded(tokenizer, examples[0], trained=False) == P
    refine = tokenizer.decode([t for t, m in zip(examples[0]["refine_ids"], examples[0]["refine_mask"]) if not m])
    assert refine == f"{P}{BAD} (feedback: bad is negative) improved:"
    # sampled refinements join the candidates; the selection statistics are written per round
    sampling = method("data.kind=critique", "feedback.method=ilf", "feedback.ilf.samples=2", "feedback.ilf.max_new_tokens=6", f"train.output_dir={tmp_path}")
    sampled = prepared(sampling, tokenizer, rows, "critique", model=model, main=True)
    stats = [json.loads(line) for line in (tmp_path / "ilf_rounds.jsonl").read_text().splitlines()]
    assert stats[-1]["rows"] == 3 and stats[-1]["reward/selected"] >= stats[-1]["reward/original"]
    gold = get_task("sentiment").gold_reward
    assert all(gold(P, e["target"]) >= gold(P, r["completion"]) for e, r in zip(sampled, rows))  # y0 is a candidate: never worse
    assert json.loads((tmp_path / "conditioning.json").read_text())["template"] == "{prompt}"  # ILF trains the plain prompt
