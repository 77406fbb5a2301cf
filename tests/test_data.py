"""Data layer: every bad input gives one clear error naming the file, row and field."""

import json

import pytest

from alignkit.data.encode import Encoder, encode_records
from alignkit.data.records import DataError, load_records


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD_PAIR = {"prompt": "review of the soup :", "chosen": " the soup was good .", "rejected": " the soup was bad ."}


def test_malformed_json_line_names_file_and_row(tmp_path):
    path = write(tmp_path, "pairs.jsonl", [json.dumps(GOOD_PAIR), '{"prompt": "x", "chosen": ', json.dumps(GOOD_PAIR)])
    with pytest.raises(DataError) as e:
        load_records(path, kind="pair")
    msg = str(e.value)
    assert str(path) in msg and "row 2" in msg and "malformed JSON" in msg
    assert "\n" not in msg


def test_missing_field_names_row_and_field(tmp_path):
    bad = {"prompt": "p", "chosen": " a ."}
    path = write(tmp_path, "pairs.jsonl", [json.dumps(GOOD_PAIR), json.dumps(GOOD_PAIR), json.dumps(bad)])
    with pytest.raises(DataError) as e:
        load_records(path, kind="pair")
    assert "row 3" in str(e.value) and "field 'rejected'" in str(e.value) and "missing" in str(e.value)


def test_empty_completion(tmp_path):
    path = write(tmp_path, "sft.jsonl", [json.dumps({"prompt": "p", "completion": "   "})])
    with pytest.raises(DataError, match=r"row 1: field 'completion': is empty"):
        load_records(path, kind="sft")


def test_wrong_type_and_identical_pair(tmp_path):
    path = write(tmp_path, "a.jsonl", [json.dumps({"prompt": 3, "completion": "x"})])
    with pytest.raises(DataError, match=r"row 1: field 'prompt': expected a string or a list of messages, got int"):
        load_records(path, kind="sft")
    path = write(tmp_path, "b.jsonl", [json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"})])
    with pytest.raises(DataError, match=r"field 'rejected': is identical to 'chosen'"):
        load_records(path, kind="pair")


def test_bad_label_and_ranked_lengths(tmp_path):
    path = write(tmp_path, "u.jsonl", [json.dumps({"prompt": "p", "completion": "x", "label": "maybe"})])
    with pytest.raises(DataError, match="field 'label'"):
        load_records(path, kind="unpaired")
    path = write(tmp_path, "r.jsonl", [json.dumps({"prompt": "p", "completions": ["a", "b"], "scores": [1]})])
    with pytest.raises(DataError, match=r"field 'scores': expected a list of 2 numbers"):
        load_records(path, kind="ranked")


def test_skip_invalid_counts_and_keeps_good_rows(tmp_path):
    rows = [json.dumps(GOOD_PAIR), json.dumps({"prompt": "p"}), json.dumps(GOOD_PAIR), json.dumps({"prompt": "p", "chosen": "", "rejected": "y"})]
    path = write(tmp_path, "pairs.jsonl", rows)
    records, summary = load_records(path, kind="pair", skip_invalid=True)
    assert [r["_row"] for r in records] == [1, 3]
    assert summary.n_skipped == 2 and summary.total == 4
    assert "skipped 2 of 4 rows" in str(summary)


def test_over_long_row_error_and_policies(tmp_path, tokenizer):
    long_prompt = "review of the soup : " * 20
    rows = [{"prompt": "review of the soup :", "completion": " the soup was good ."}, {"prompt": long_prompt, "completion": " the soup was good ."}]
    path = write(tmp_path, "sft.jsonl", [json.dumps(r) for r in rows])
    records, summary = load_records(path, kind="sft")
    with pytest.raises(DataError) as e:
        encode_records(records, "sft", Encoder(tokenizer, max_length=32, source=str(path)))
    assert "row 2" in str(e.value) and "max_length=32" in str(e.value)
    kept = encode_records(records, "sft", Encoder(tokenizer, max_length=32, truncation="skip"), summary)
    assert len(kept) == 1 and summary.n_skipped == 1
    left = encode_records(records, "sft", Encoder(tokenizer, max_length=32, truncation="left"))
    completion = tokenizer(" the soup was good .", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(left[1]["input_ids"]) == 32
    assert left[1]["input_ids"][-len(completion):] == completion  # the completion is kept whole
    with pytest.raises(DataError, match="the prompt alone fills"):  # cutting the completion cannot help
        encode_records(records, "sft", Encoder(tokenizer, max_length=32, truncation="right"))
    long_completion, _ = load_records([{"prompt": "review of the soup :", "completion": " the soup was good and" * 20}])
    right = encode_records(long_completion, "sft", Encoder(tokenizer, max_length=32, truncation="right"))[0]
    assert len(right["input_ids"]) == 32 and right["input_ids"][: len(right["prompt_ids"])] == right["prompt_ids"]


def test_loss_mask_covers_completion_only(tokenizer):
    records, _ = load_records([{"prompt": "review of the soup :", "completion": " the soup was good ."}])
    ex = encode_records(records, "sft", Encoder(tokenizer, 64))[0]
    trained = [t for t, m in zip(ex["input_ids"], ex["loss_mask"]) if m]
    assert tokenizer.decode(trained) == " the soup was good .<|endoftext|>"
    assert ex["loss_mask"][: len(ex["prompt_ids"])] == [0] * len(ex["prompt_ids"])


def test_conversation_masks_assistant_turns_only(tokenizer):
    messages = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "review of the soup :"},
        {"role": "assistant", "content": " the soup was good ."},
        {"role": "user", "content": "and the bread ?"},
        {"role": "assistant", "content": " the bread was fine ."},
    ]
    records, _ = load_records([{"messages": messages}])
    ex = encode_records(records, "sft", Encoder(tokenizer, 128))[0]
    trained = tokenizer.decode([t for t, m in zip(ex["input_ids"], ex["loss_mask"]) if m])
    assert trained == " the soup was good .<|end|> the bread was fine .<|end|>"


def test_conversational_pair_shares_prompt(tokenizer):
    prompt = [{"role": "user", "content": "review of the soup :"}]
    records, _ = load_records([{"prompt": prompt, "chosen": " the soup was good .", "rejected": " the soup was bad ."}])
    ex = encode_records(records, "pair", Encoder(tokenizer, 64))[0]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ex["prompt_ids"]) == rendered
    assert tokenizer.decode(ex["chosen_ids"]) == " the soup was good .<|end|>"


def test_file_formats_agree(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD_PAIR, {**GOOD_PAIR, "rejected": " the soup was awful ."}]
    jsonl = write(tmp_path, "p.jsonl", [json.dumps(r) for r in rows])
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with open(tmp_path / "p.csv", "w") as f:
        f.write("prompt,chosen,rejected\n" + "\n".join(f'"{r["prompt"]}","{r["chosen"]}","{r["rejected"]}"' for r in rows) + "\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    expected = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    for source in [jsonl, tmp_path / "p.json", tmp_path / "p.parquet", tmp_path / "p.csv", tmp_path / "saved"]:
        records, _ = load_records(source)
        assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records] == expected, source


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        load_records(tmp_path / "x.txt")
