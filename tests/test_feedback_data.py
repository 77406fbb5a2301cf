"""Language-feedback data: the critique and spans kinds, the system format, the programmatic critics and `alignkit critique`."""

import json
import random

import pytest

from alignkit.data.collate import collate_sft
from alignkit.data.encode import Encoder, encode_records
from alignkit.data.errors import DataError
from alignkit.data.feedback_kinds import render_system, system_prompt, token_labels
from alignkit.data.records import load_records
from alignkit.data.sources import ReadOptions
from alignkit.tasks import get_task, task_rows
from alignkit.tasks.critics import critic_for, critique_completions

P = "review of the soup :"


# --------------------------------------------------------------------------------------------------
# kinds
# --------------------------------------------------------------------------------------------------
def test_critique_rows_are_inferred_checked_and_keep_their_texts(tokenizer):
    rows = [{"prompt": P, "completion": " the soup was bad .", "critique": "bad is negative", "revision": " the soup was good .", "user": 4},
            {"prompt": P, "completion": " the soup was great .", "critique": "great is positive", "label": True}]
    records, _ = load_records(rows)  # kind inferred from the critique field
    assert [r["label"] for r in records] == [False, True] and records[0]["meta"] == {"user": 4}
    examples = encode_records(records, "critique", Encoder(tokenizer, 64))
    first = examples[0]
    assert first["text"]["critique"] == "bad is negative" and first["text"]["revision"] == " the soup was good ."
    assert tokenizer.decode(first["revision_ids"]) == " the soup was good ." + tokenizer.eos_token
    completion = [t for t, m in zip(first["input_ids"], first["loss_mask"]) if m]
    assert tokenizer.decode(completion) == " the soup was bad ." + tokenizer.eos_token  # trained like an sft row
    assert "revision_ids" not in examples[1]


@pytest.mark.parametrize("row, field, problem", [
    ({"prompt": P, "completion": " a .", "critique": "  "}, "critique", "non-empty string"),
    ({"prompt": P, "completion": " a .", "critique": "c", "revision": " a ."}, "revision", "identical to 'completion'"),
    ({"prompt": P, "completion": " a .", "critique": "c", "label": "maybe"}, "label", "expected true"),
    ({"prompt": P, "completion": " a .", "critique": "c", "score": float("nan")}, "score", "is NaN"),
])
def test_bad_critique_rows_name_file_row_and_field(tmp_path, row, field, problem):
    path = tmp_path / "critiques.jsonl"
    path.write_text(json.dumps({"prompt": P, "completion": " b .", "critique": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_records(str(path), kind="critique")
    assert str(path) in str(e.value) and "row 2" in str(e.value) and field in str(e.value) and problem in str(e.value)


@pytest.mark.parametrize("spans, field, problem", [
    ([{"start": 3, "end": 3, "label": "bad"}], "spans[0]", "0 <= start < end"),
    ([{"start": 0, "end": 99, "label": "bad"}], "spans[0]", "<= 19"),
    ([{"start": 0, "end": 2, "label": "meh"}], "spans[0].label", "good or bad"),
    ([{"start": 0, "label": "bad"}], "spans[0]", "{start, end, label}"),
    ([{"start": 0, "end": 5, "label": "good"}, {"start": 4, "end": 8, "label": "bad"}], "spans", "overlaps"),
    ("terrible", "spans", "expected a list"),
])
def test_bad_spans_name_the_span(spans, field, problem):
    with pytest.raises(DataError) as e:
        load_records([{"prompt": P, "completion": " the soup was bad .", "spans": spans}], kind="spans")
    assert f"row 1: field '{field}'" in str(e.value)
    assert problem in str(e.value)


def test_token_labels_follow_character_spans(tokenizer):
    completion = " the soup was terrible but the bread was great ."
    bad, good = completion.index("terrible"), completion.index("great")
    spans = [{"start": bad, "end": bad + 8, "label": "bad"}, {"start": good, "end": good + 5, "label": "good"}]
    records, _ = load_records([{"prompt": P, "completion": completion, "spans": spans, "critique": "terrible is negative"}])
    example = encode_records(records, "spans", Encoder(tokenizer, 64))[0]
    ids = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if m]
    labels = example["token_labels"]
    assert len(labels) == len(ids) and labels[-1] == 0  # the EOS is neutral
    assert tokenizer.decode([t for t, v in zip(ids, labels) if v < 0]).strip() == "terrible"
    assert tokenizer.decode([t for t, v in zip(ids, labels) if v > 0]).strip() == "great"
    with pytest.raises(DataError, match="field 'prompt': span annotations need a text prompt"):
        load_records([{"prompt": [{"role": "user", "content": "hi"}], "completion": " a .", "spans": []}], kind="spans")
    # overlap rule by hand: a token overlapping a bad span is bad even if it also touches a good one
    assert token_labels([(0, 4), (4, 9), (9, 12)], [{"start": 3, "end": 5, "label": -1}, {"start": 8, "end": 10, "label": 1}]) == [-1, -1, 1]


# --------------------------------------------------------------------------------------------------
# the system format: system messages, value profiles, principle lists
# --------------------------------------------------------------------------------------------------
def test_an_unseen_profile_is_rendered_into_the_prompt_and_kept_as_metadata(tokenizer):
    rows = [{"prompt": P, "completion": " the soup was good .", "system": {"tone": "warm", "length": "short"}},
            {"prompt": P, "chosen": " the soup was good .", "rejected": " the soup was bad .", "system": ["praise the food", "be brief"]}]
    sft, _ = load_records(rows[:1], kind="sft", read=ReadOptions(format="system"))
    assert sft[0]["prompt"] == "tone: warm\nlength: short\nreview of the soup :" and sft[0]["meta"]["system"] == rows[0]["system"]
    pair, _ = load_records(rows[1:], kind="pair", read=ReadOptions(format="system"))
    assert pair[0]["prompt"] == "- praise the food\n- be brief\nreview of the soup :"
    example = encode_records(sft, "sft", Encoder(tokenizer, 64))[0]
    prompt = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if not m]
    assert tokenizer.decode(prompt) == "tone: warm\nlength: short\nreview of the soup :"  # the profile is context, never trained
    assert collate_sft([example], tokenizer.pad_token_id)["meta"]["system"] == [rows[0]["system"]]
    # without the format the field is only metadata (the default)
    plain, _ = load_records(rows[:1], kind="sft")
    assert plain[0]["prompt"] == P


def test_system_field_on_chat_rows_becomes_the_first_message():
    chat = [{"role": "user", "content": "hi"}]
    assert system_prompt("be kind", chat) == [{"role": "system", "content": "be kind"}, *chat]
    records, _ = load_records([{"messages": [*chat, {"role": "assistant", "content": "hello"}], "system": "be kind"}], kind="sft",
                              read=ReadOptions(format="system"))
    assert records[0]["messages"][0] == {"role": "system", "content": "be kind"}
    with pytest.raises(DataError, match="already starts with a system message"):
        load_records([{"prompt": [{"role": "system", "content": "a"}, *chat], "completion": "x", "system": "b"}], kind="sft",
                     read=ReadOptions(format="system"))
    with pytest.raises(ValueError, match="a list of principles"):
        render_system(["ok", 3])


# --------------------------------------------------------------------------------------------------
# critics
# --------------------------------------------------------------------------------------------------
def test_sentiment_critic_writes_sentences_spans_and_a_revision_from_the_gold_reward_parts():
    task = get_task("sentiment")
    critic = critic_for(task)
    completion = " the soup was terrible and the price was dull but the staff was great ."
    c = critic(P, completion, random.Random(0))
    assert c.text == ("the review calls the soup terrible and the price dull, which are negative; "
                      "it does call the staff great, which is good.")
    assert [completion[s["start"]:s["end"]] + ":" + s["label"] for s in c.spans] == ["terrible:bad", "dull:bad", "great:good"]
    assert c.score == pytest.approx((-1.0 - 0.25 + 1.0) / 3) and not c.positive
    assert task.gold_reward(P, c.revision) > 0 and task.parse(P, c.revision) is not None  # the revision does what the critique asks
    assert c.revision.endswith("but the staff was great .")  # the positive clause is kept
    nothing_good = critic(P, " the bread was okay .", random.Random(0))
    assert nothing_good.text == "'okay' about the bread says nothing good or bad; it never says anything good about the soup."
    praised = critic(P, " the soup was superb .", random.Random(0))
    assert praised.positive and praised.revision is None and praised.text.startswith("the review is positive throughout")
    broken = critic(P, " soup soup .", random.Random(0))
    assert "not a review" in broken.text and broken.spans == [{"start": 0, "end": 12, "label": "bad"}]
    assert task.gold_reward(P, broken.revision) > 0


def test_arithmetic_critic_checks_the_number():
    task = get_task("arithmetic")
    critic = critic_for(task)
    wrong = critic("7 + 4 =", " 12 .", random.Random(0))
    assert wrong.text == "the answer 12 is wrong: 7 + 4 = 11, so it is 1 too high." and wrong.revision == " 11 ."
    assert wrong.spans == [{"start": 1, "end": 3, "label": "bad"}]
    right = critic("7 + 4 =", " 11 .", random.Random(0))
    assert right.positive and right.text == "the answer 11 is right: 7 + 4 = 11."


def test_task_rows_make_critique_and_spans_rows_that_load():
    task = get_task("sentiment")
    for kind in ("critique", "spans"):
        rows = task_rows(task, kind, 16, "train")
        assert len(rows) == 16 and [r["prompt"] for r in rows] == task.prompts(16, "train")
        records, _ = load_records(rows, kind=kind)
        assert len(records) == 16
    rows = critique_completions(task, [P, P], [" the soup was bad .", " "], "critique")
    assert len(rows) == 1 and rows[0]["revision"] != rows[0]["completion"]


def test_critique_command_judges_a_models_samples(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli import app

    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(app, ["critique", str(tiny_dir), "--out", str(out), "--n", "6", "--kind", "spans", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(set(r) == {"prompt", "completion", "spans", "critique"} for r in rows)
    load_records(str(out), kind="spans")  # what it writes loads as the kind
    bad = CliRunner().invoke(app, ["critique", str(tiny_dir), "--out", str(out), "--task", "pluralistic"])
    assert bad.exit_code == 2 and "no programmatic critic for the pluralistic task" in bad.output


# --------------------------------------------------------------------------------------------------
# value profiles
# --------------------------------------------------------------------------------------------------
def test_profile_reward_by_hand_and_held_out_profiles_never_in_the_rows():
    from alignkit.tasks.critics import HELD_OUT_PROFILES, profile_reward, profile_rows

    task = get_task("sentiment")
    review = " the soup was great and the price was bad ."  # mean sentiment (1 - 0.75) / 2 = 0.125, two clauses
    assert profile_reward(task, P, review, {"tone": "warm", "length": "medium"}) == pytest.approx(0.125)
    assert profile_reward(task, P, review, {"tone": "harsh", "length": "long"}) == pytest.approx(-0.125 - 0.5)
    assert profile_reward(task, P, " soup .", {"tone": "warm", "length": "short"}) == -3.0
    with pytest.raises(ValueError, match="value profile"):
        profile_reward(task, P, review, {"tone": "sunny", "length": "short"})
    sft, pairs = profile_rows(task, "sft", 200, "train"), profile_rows(task, "pair", 50, "train")
    assert not any(r["system"] in HELD_OUT_PROFILES for r in sft + pairs)
    assert all(profile_reward(task, r["prompt"], r["completion"], r["system"]) >= 0.25 for r in sft)  # demonstrations suit their profile
    records, _ = load_records(pairs, kind="pair", read=ReadOptions(format="system"))
    assert records[0]["prompt"] == f"tone: {pairs[0]['system']['tone']}\nlength: {pairs[0]['system']['length']}\n{pairs[0]['prompt']}"


def test_profile_evaluation_covers_unseen_profiles(tiny_dir):
    from alignkit.evaluation.profiles import evaluate_profiles
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer
    from alignkit.tasks.critics import HELD_OUT_PROFILES, PROFILES

    results = evaluate_profiles(load_policy_for_inference(tiny_dir), load_tokenizer(tiny_dir), list(PROFILES), n_prompts=2, max_new_tokens=6)["profiles"]
    assert [r["profile"] for r in results] == list(PROFILES) and sum(r["unseen"] for r in results) == len(HELD_OUT_PROFILES)
    assert all(r["n"] == 4 and -3.0 <= r["reward"] <= 1.0 for r in results)
