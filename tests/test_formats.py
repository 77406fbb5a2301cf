"""Public data formats (tests/fixtures/formats/), Hub-style dataset folders, column renames and their errors."""

import copy
import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.collate import collate_pairs
from alignkit.data.encode import Encoder, encode_records
from alignkit.data.errors import DataError
from alignkit.data.formats import FORMATS, detect_format
from alignkit.data.records import load_records
from alignkit.data.sources import ReadOptions, dataset_spec

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
HUB = FIXTURES / "hub_dataset"
runner = CliRunner()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def strip_rows(records):
    return [{k: v for k, v in r.items() if k != "_row"} for r in records]


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
OSLO_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}

# Each fixture as alignkit reads it (worked out by hand from the files).
EXPECTED = {
    "hh_raw.jsonl": ("hh_raw", "pair", [
        {"prompt": [user("How do I keep basil alive on a windowsill?")],
         "chosen": "Give it at least six hours of sun and water when the top of the soil feels dry.", "rejected": "Basil is a plant."},
        {"prompt": [user("What is a good name for a grey cat?"), assistant("Maybe Ash or Pebble?"), user("Something longer.")],
         "chosen": "How about Sir Reginald Fluffington?", "rejected": "Cat."},
        {"prompt": [user("Can you tell me how tides work?")],
         "chosen": "Mostly the Moon's gravity pulls the oceans into two bulges, and the Earth turns under them.",
         "rejected": "I don't know anything about that."},
    ]),
    "implicit_prompt.jsonl": ("implicit_prompt", "pair", [
        {"prompt": [user("Is it safe to eat raw cookie dough?")],
         "chosen": [assistant("Raw flour and raw eggs can carry bacteria, so it is safer to use heat-treated flour and no eggs.")],
         "rejected": [assistant("Sure, eat as much as you like.")]},
        {"prompt": [system("You are a concise assistant."), user("Name a prime number."), assistant("7"), user("A bigger one.")],
         "chosen": [assistant("101")], "rejected": [assistant("100")]},
        {"prompt": [user("Translate 'thank you' into French.")], "chosen": [assistant("Merci.")], "rejected": [assistant("Gracias.")]},
    ]),
    "ultrafeedback.jsonl": ("ultrafeedback", "pair", [
        {"prompt": [user("Write a haiku about autumn rain.")],
         "chosen": [assistant("Cold drops on red leaves\nthe gutter hums a low tune\nthe street smells of earth")],
         "rejected": [assistant("Rain falls in autumn.")], "meta": {"prompt_id": "3f2a9c", "score_chosen": 8.5, "score_rejected": 4.0}},
        {"prompt": [user("What is 12 times 12?")], "chosen": [assistant("12 times 12 is 144.")], "rejected": [assistant("It is 124.")],
         "meta": {"prompt_id": "9b01e4", "score_chosen": 10.0, "score_rejected": 2.0}},
        {"prompt": [user("Suggest a title for a talk on sleep.")],
         "chosen": [assistant("\"The Night Shift: What Your Brain Does While You Sleep\"")], "rejected": [assistant("Sleep Talk")],
         "meta": {"prompt_id": "c77d10", "score_chosen": 7.0, "score_rejected": 7.0}},
    ]),
    "sharegpt.jsonl": ("sharegpt", "sft", [
        {"messages": [system("You are a friendly tutor."), user("Why is the sky blue?"),
                      assistant("Air scatters blue light more than red light, so blue reaches your eyes from every direction.")], "meta": {"id": "sg-001"}},
        {"messages": [user("Give me a word that rhymes with moon."), assistant("Spoon."), user("Another one?"), assistant("Tune.")], "meta": {"id": "sg-002"}},
        {"messages": [user("How many legs does a spider have?"), assistant("Eight.")], "meta": {"id": "sg-003"}},
    ]),
    "alpaca.json": ("alpaca", "sft", [
        {"prompt": "Give three tips for staying focused.",
         "completion": "1. Put your phone in another room.\n2. Work in 25-minute blocks.\n3. Write down the one task that matters today."},
        {"prompt": "Classify the sentiment of the sentence.\n\nThe soup was cold and the waiter ignored us.", "completion": "Negative"},
        {"prompt": "Convert the temperature to Fahrenheit.\n\n20 degrees Celsius", "completion": "68 degrees Fahrenheit"},
    ]),
    "openai.jsonl": ("openai", "sft", [
        {"messages": [system("You are a weather assistant."), user("Is it raining in Oslo?"),
                      {"role": "assistant", "content": "", "tool_calls": [OSLO_CALL]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "{\"rain\": true, \"temp_c\": 6}"},
                      assistant("Yes, it is raining in Oslo and it is 6 degrees.")], "tools": [WEATHER_TOOL]},
        {"messages": [system("You are a weather assistant."), user("Say hello."), assistant("Hello!")], "tools": [WEATHER_TOOL]},
        {"messages": [user("What is the capital of Peru?"), assistant("Lima.")]},
    ]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_public_format_is_detected_and_converted_to_these_rows(name):
    fmt, kind, rows = EXPECTED[name]
    first = json.loads((FIXTURES / name).read_text())[0] if name.endswith(".json") else json.loads((FIXTURES / name).read_text().splitlines()[0])
    assert detect_format(first).name == fmt
    for given in ("auto", fmt):  # detected, or named with data.format
        records, _ = load_records(FIXTURES / name, kind="auto", read=ReadOptions(format=given))
        assert strip_rows(records) == rows, given
    assert load_records(FIXTURES / name, kind=kind)[0][0]["_row"] == 1


def test_pair_formats_feed_an_sft_run_with_the_chosen_reply():
    records, _ = load_records(FIXTURES / "ultrafeedback.jsonl", kind="sft")
    assert strip_rows(records)[1] == {"messages": [user("What is 12 times 12?"), assistant("12 times 12 is 144.")],
                                      "meta": {"prompt_id": "9b01e4", "score_chosen": 10.0, "score_rejected": 2.0}}
    records, _ = load_records(FIXTURES / "hh_raw.jsonl", kind="sft")
    assert records[2]["messages"][-1] == assistant("Mostly the Moon's gravity pulls the oceans into two bulges, and the Earth turns under them.")


def test_ultrafeedback_without_prompt_stripping_was_the_old_refusal_and_now_shares_the_prompt(tokenizer):
    records, _ = load_records(FIXTURES / "ultrafeedback.jsonl", kind="pair")
    example = Encoder(tokenizer, 256).encode(records[1], "pair")
    assert tokenizer.decode(example["prompt_ids"]) == "<|user|>What is 12 times 12?<|end|><|assistant|>"
    assert tokenizer.decode(example["chosen_ids"]) == "12 times 12 is 144.<|end|>"
    assert tokenizer.decode(example["rejected_ids"]) == "It is 124.<|end|>"
    # data.format=alignkit reads the row as it is: the conversation is then the completion, which repeats the prompt
    records, _ = load_records(FIXTURES / "ultrafeedback.jsonl", kind="pair", read=ReadOptions(format="alignkit"))
    with pytest.raises(DataError) as e:
        Encoder(tokenizer, 256, source="uf").encode(records[0], "pair")
    assert str(e.value) == "uf: row 1: field 'chosen': the chat template's rendering of the conversation does not start with its rendering of the prompt"


def trained(tokenizer, example):
    return tokenizer.decode([t for t, m in zip(example["input_ids"], example["loss_mask"]) if m])


# (file, kind, row index, the prompt as the tiny template renders it, the trained text)
TINY = [
    ("hh_raw.jsonl", "pair", 1, "<|user|>What is a good name for a grey cat?<|end|><|assistant|>Maybe Ash or Pebble?<|end|><|user|>Something longer.<|end|><|assistant|>",
     "How about Sir Reginald Fluffington?<|end|>"),
    ("implicit_prompt.jsonl", "pair", 1, "<|system|>You are a concise assistant.<|end|><|user|>Name a prime number.<|end|><|assistant|>7<|end|><|user|>A bigger one.<|end|><|assistant|>",
     "101<|end|>"),
    ("ultrafeedback.jsonl", "pair", 0, "<|user|>Write a haiku about autumn rain.<|end|><|assistant|>",
     "Cold drops on red leaves\nthe gutter hums a low tune\nthe street smells of earth<|end|>"),
    ("sharegpt.jsonl", "sft", 1, None, "Spoon.<|end|>Tune.<|end|>"),
    ("alpaca.json", "sft", 1, "Classify the sentiment of the sentence.\n\nThe soup was cold and the waiter ignored us.", "Negative<|endoftext|>"),
]


@pytest.mark.parametrize("name, kind, index, prompt, text", TINY)
def test_formats_encode_with_the_tiny_tokenizer(tokenizer, name, kind, index, prompt, text):
    records, _ = load_records(FIXTURES / name, kind=kind)
    example = encode_records(records, kind, Encoder(tokenizer, 512))[index]
    if kind == "pair":
        assert tokenizer.decode(example["prompt_ids"]) == prompt
        assert tokenizer.decode(example["chosen_ids"]) == text
    else:
        assert trained(tokenizer, example) == text
        if prompt is not None:
            assert tokenizer.decode(example["prompt_ids"]) == prompt


TOOLS_TEXT = ('You can call these tools:\n<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", '
              '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n</tools>')
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def test_tool_calls_train_and_tool_results_do_not_with_a_template_that_ignores_tools(tokenizer):
    records, _ = load_records(FIXTURES / "openai.jsonl", kind="sft")
    encoder = Encoder(tokenizer, 512)
    assert (encoder.renders("tool_calls"), encoder.renders("tools")) == (False, False)  # the tiny template renders neither
    example = encoder.encode(records[0], "sft")
    assert tokenizer.decode(example["input_ids"]) == (
        f"<|system|>You are a weather assistant.\n\n{TOOLS_TEXT}<|end|><|user|>Is it raining in Oslo?<|end|>"
        f"<|assistant|>{CALL_TEXT}<|end|><|tool|>{{\"rain\": true, \"temp_c\": 6}}<|end|><|assistant|>Yes, it is raining in Oslo and it is 6 degrees.<|end|>")
    assert trained(tokenizer, example) == f"{CALL_TEXT}<|end|>Yes, it is raining in Oslo and it is 6 degrees.<|end|>"
    # a conversation without a system message gets one for the tools
    plain = encoder.encode({"messages": [user("hi"), assistant("yo")], "tools": [WEATHER_TOOL], "_row": 1}, "sft")
    assert tokenizer.decode(plain["input_ids"]) == f"<|system|>{TOOLS_TEXT}<|end|><|user|>hi<|end|><|assistant|>yo<|end|>"


TOOL_TEMPLATE = (
    "{% if tools %}<|system|>TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}<|end|>{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}"
    "{% if message.tool_calls %}{% for c in message.tool_calls %}CALL {{ c.function.name }}({{ c.function.arguments | tojson }}){% endfor %}{% endif %}<|end|>"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_template_that_renders_tools_gets_them_through_apply_chat_template(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    records, _ = load_records(FIXTURES / "openai.jsonl", kind="sft")
    encoder = Encoder(tok, 512)
    assert (encoder.renders("tool_calls"), encoder.renders("tools")) == (True, True)
    example = encoder.encode(records[0], "sft")
    assert tok.decode(example["input_ids"]) == (
        "<|system|>TOOLS:get_weather;<|end|><|system|>You are a weather assistant.<|end|><|user|>Is it raining in Oslo?<|end|>"
        "<|assistant|>CALL get_weather({\"city\": \"Oslo\"})<|end|><|tool|>{\"rain\": true, \"temp_c\": 6}<|end|>"
        "<|assistant|>Yes, it is raining in Oslo and it is 6 degrees.<|end|>")
    assert trained(tok, example) == "CALL get_weather({\"city\": \"Oslo\"})<|end|>Yes, it is raining in Oslo and it is 6 degrees.<|end|>"


def test_columnar_copies_of_a_format_read_like_the_jsonl(tmp_path):
    """Parquet (and Hub datasets) give every struct every key, null where a row lacks it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "openai.jsonl").read_text().splitlines()]
    for r in rows:
        r.setdefault("tools", None)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "openai.parquet")
    assert pa.Table.from_pylist(rows).to_pylist()[2]["messages"][0]["tool_calls"] is None  # what the file really holds
    assert strip_rows(load_records(tmp_path / "openai.parquet", kind="sft")[0]) == EXPECTED["openai.jsonl"][2]
    gz = tmp_path / "hh.jsonl.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "hh_raw.jsonl").read_bytes()))
    assert strip_rows(load_records(gz, kind="pair")[0]) == EXPECTED["hh_raw.jsonl"][2]


# --------------------------------------------------------------------------------------------------
# score columns, extra columns, column renames
# --------------------------------------------------------------------------------------------------
def test_score_columns_travel_as_metadata_and_give_the_margin_when_asked(tokenizer):
    records, _ = load_records(FIXTURES / "ultrafeedback.jsonl", kind="pair")
    examples = [{**e, "index": i} for i, e in enumerate(encode_records(records, "pair", Encoder(tokenizer, 256)))]
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    assert batch["meta"]["score_chosen"].tolist() == [8.5, 10.0, 7.0]
    assert batch["meta"]["score_rejected"].tolist() == [4.0, 2.0, 7.0]
    assert batch["meta"]["prompt_id"] == ["3f2a9c", "9b01e4", "c77d10"]
    records, _ = load_records(FIXTURES / "ultrafeedback.jsonl", kind="pair", read=ReadOptions(score_margin=True))
    assert [r["margin"] for r in records] == [4.5, 8.0, 0.0]
    assert [e["margin"] for e in encode_records(records, "pair", Encoder(tokenizer, 256))] == [4.5, 8.0, 0.0]


def test_swapped_scores_are_refused_when_they_give_the_margin(tmp_path):
    path = tmp_path / "swapped.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": 5}) + "\n")
    with pytest.raises(DataError) as e:
        load_records(path, kind="pair", read=ReadOptions(score_margin=True))
    assert str(e.value) == (f"{path}: row 1: field 'score_rejected': 5 is above score_chosen 2: chosen and rejected look swapped "
                            "(data.score_margin needs score_chosen >= score_rejected)")


def test_extra_columns_drop_leaves_no_metadata():
    records, _ = load_records(FIXTURES / "ultrafeedback.jsonl", kind="pair", read=ReadOptions(extra_columns="drop"))
    assert all("meta" not in r for r in records) and records[0]["_row"] == 1
    records, _ = load_records([{"prompt": "p", "user_id": 7}], kind="prompt", read=ReadOptions(extra_columns="drop"))
    assert strip_rows(records) == [{"prompt": "p"}]
    assert strip_rows(load_records([{"prompt": "p", "user_id": 7}], kind="prompt")[0]) == [{"prompt": "p", "user_id": 7}]


STACK = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}


def test_a_dataset_folder_is_read_by_load_dataset_with_config_split_and_renames():
    records, _ = load_records(HUB, kind="pair", read=ReadOptions(columns=STACK))
    assert strip_rows(records)[0] == {"prompt": "How do I reverse a list in Python?",
                                      "chosen": "Use my_list[::-1] for a copy, or my_list.reverse() to reverse in place.", "rejected": "You cannot.",
                                      "meta": {"qid": 101, "date": "2021-03-04"}}
    assert len(records) == 3
    test, summary = load_records(HUB, kind="pair", read=ReadOptions(columns=STACK, role="eval"))
    assert [r["prompt"] for r in test] == ["How do I count lines in a file?", "What is a segfault?"]
    assert summary.source == f"{HUB}[test]"
    sft, _ = load_records(f"{HUB}:sft", kind="sft", read=ReadOptions(columns={"prompt": "question", "completion": "answer"}, split="train"))
    assert strip_rows(sft) == [{"prompt": "What is a tuple?", "completion": "An immutable sequence of values."},
                               {"prompt": "What is a set?", "completion": "An unordered collection of unique values."}]
    swapped, _ = load_records(HUB, kind="pair", read=ReadOptions(columns={**STACK, "chosen": "response_k", "rejected": "response_j"}, extra_columns="drop"))
    assert (swapped[2]["chosen"], swapped[2]["rejected"]) == ("Restart the computer.", "Press Esc, type :q and press Enter (:q! to discard changes).")


def test_split_errors_name_the_split_option(tmp_path):
    with pytest.raises(DataError) as e:
        load_records(HUB, kind="pair", read=ReadOptions(label="data.train", columns=STACK, split="validation"))
    assert str(e.value) == f"data.train: {HUB}: has no split 'validation' (data.train_split); splits: train, test"
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list([{"prompt": "p", "completion": "c"}]),
                 "validation": Dataset.from_list([{"prompt": "q", "completion": "d"}])}).save_to_disk(str(folder))
    assert load_records(folder, "sft", read=ReadOptions(role="eval"))[0][0]["prompt"] == "q"
    assert load_records(folder, "sft", read=ReadOptions())[0][0]["prompt"] == "p"


def test_column_renames_that_cannot_apply_are_one_line():
    with pytest.raises(DataError) as e:
        load_records(HUB, kind="pair", read=ReadOptions(columns={"prompt": "title", "chosen": "response_j", "rejected": "response_k"}))
    assert str(e.value) == f"{HUB}[train]: data.columns: column 'title' (for prompt) is not in the data; columns: date, qid, question, response_j, response_k"
    with pytest.raises(DataError) as e:
        load_records(HUB, kind="pair", read=ReadOptions(columns={"qid": "question"}))
    assert str(e.value) == (f"{HUB}[train]: data.columns: renaming 'question' to 'qid' would overwrite the data's own column 'qid'; "
                            "map that one elsewhere too (e.g. data.columns.qid_original=qid)")


# --------------------------------------------------------------------------------------------------
# bad rows and mixed formats
# --------------------------------------------------------------------------------------------------
def write(tmp_path, rows, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BAD_ROWS = [
    ([{"instruction": "a", "input": "", "output": "b"}, {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}], "sft",
     "row 2: looks like the 'sharegpt' format, but the source's first row (row 1) is 'alpaca': rows of one source must share a format (fields here: conversations)"),
    ([{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hey\n\nAssistant: yo"}], "pair",
     "row 1: field 'rejected': its conversation before the last Assistant turn differs from chosen's"),
    ([{"chosen": "hi there", "rejected": "hello"}], "pair",
     "row 1: field 'chosen': expected Anthropic HH text '\\n\\nHuman: ... \\n\\nAssistant: ...'"),
    ([{"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]}], "pair",
     "row 1: field 'chosen': chosen and rejected do not start with the same prompt turn(s) (a user message)"),
    ([{"chosen": [user("a"), assistant("b"), user("more")], "rejected": [user("a"), assistant("c")]}], "pair",
     "row 1: field 'chosen[2]': a 'user' turn ends the reply after the shared prompt: a reply (one assistant turn, or a trajectory of "
     "assistant, tool and user turns) starts and ends with an assistant turn"),
    ([{"prompt": "other", "chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("c")]}], "pair",
     "row 1: field 'prompt': does not match any user turn that chosen and rejected start with"),
    ([{"conversations": [{"from": "human", "value": "x"}, {"from": "robot", "value": "y"}]}], "sft",
     "row 1: field 'conversations[1].from': unknown speaker 'robot'; allowed: human, user, gpt, assistant, chatgpt, bard, bing, model, system, "
     "tool, observation, function_response, function_call"),
    ([{"messages": [user("x"), {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{city"}}]}]}], "sft",
     "row 1: field 'messages[1].tool_calls[0].function.arguments': is not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ([{"instruction": "do it", "input": ""}], "sft",
     "row 1: field 'output': missing (an Alpaca row has instruction, input, output; fields present: input, instruction)"),
]


@pytest.mark.parametrize("rows, kind, message", BAD_ROWS)
def test_bad_rows_of_public_formats_are_one_line(tmp_path, rows, kind, message):
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as e:
        load_records(path, kind=kind)
    assert str(e.value) == f"{path}: {message}"


def test_skip_invalid_counts_rows_of_another_format(tmp_path):
    hh = (FIXTURES / "hh_raw.jsonl").read_text().splitlines()
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([hh[0], json.dumps({"instruction": "a", "output": "b"}), hh[1]]) + "\n")
    records, summary = load_records(path, kind="pair", skip_invalid=True)
    assert [r["_row"] for r in records] == [1, 3] and summary.n_skipped == 1


def test_hub_names_and_missing_files_are_told_apart(tmp_path, monkeypatch):
    assert dataset_spec("HuggingFaceH4/ultrafeedback_binarized").path == "HuggingFaceH4/ultrafeedback_binarized"
    assert dataset_spec("org/name:sft").config == "sft"
    assert dataset_spec("data/pairs.jsonl") is None  # a missing file, not a Hub name
    assert dataset_spec(f"{HUB}:sft") == type(dataset_spec(f"{HUB}:sft"))(str(HUB), "sft", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_records("data/pairs.jsonl", kind="pair")
    assert str(e.value) == "data/pairs.jsonl: no such file or folder"
    with pytest.raises(DataError) as e:
        load_records("alignkit-tests/no-such-set:default", kind="pair", read=ReadOptions(label="data.eval", role="eval"))
    assert str(e.value).startswith("data.eval: 'alignkit-tests/no-such-set:default' is not a local file or folder, and the Hub dataset "
                                   "could not be loaded offline (HF_HUB_OFFLINE=1): ")


def test_unknown_format_names_the_allowed_ones():
    with pytest.raises(ValueError) as e:
        ReadOptions(format="sharegtp")
    assert str(e.value) == f"data.format: unknown data format 'sharegtp' (did you mean 'sharegpt'?); allowed: auto, {', '.join(FORMATS.names())}"


# --------------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------------
def cli_train(tmp_path, tiny_dir, recipe, *overrides):
    return runner.invoke(app, ["train", recipe, f"model.path={tiny_dir}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
                               "train.batch_size=2", "train.eval_every=null", "train.progress=false", "train.log_every=1", *overrides])


def test_hh_raw_pairs_train_end_to_end_from_the_cli(tmp_path, tiny_dir):
    result = cli_train(tmp_path, tiny_dir, "recipes/dpo.yaml", f"data.train={FIXTURES / 'hh_raw.jsonl'}")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train] == [1, 2]
    assert abs(train[0]["loss"] - 0.693147) < 1e-4  # the first DPO step starts at log 2 (policy = reference)


def test_dataset_folder_with_column_mapping_trains_from_the_cli(tmp_path, tiny_dir):
    """A Hub-shaped dataset folder (stack-exchange-paired columns) read through load_dataset, its columns
    renamed by data.columns, trained and evaluated on its own train and test splits."""
    columns = "data.columns={prompt: question, chosen: response_j, rejected: response_k}"
    folder = FIXTURES / "hub_dataset"
    result = cli_train(tmp_path, tiny_dir, "recipes/dpo.yaml", f"data.train={folder}", f"data.eval={folder}", columns, "train.eval_every=1",
                       "data.extra_columns=drop", "data.max_length=256")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert abs([m for m in metrics if "loss" in m][0]["loss"] - 0.693147) < 1e-4
    assert any(k.startswith("eval/") for m in metrics for k in m)  # the test split was read as the eval set
    unmapped = cli_train(tmp_path / "b", tiny_dir, "recipes/dpo.yaml", f"data.train={folder}")
    assert unmapped.exit_code == 2 and "prompt" in unmapped.output


def test_cli_errors_for_hub_names_formats_and_columns(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli_train(tmp_path, tiny_dir, "recipes/dpo.yaml", "data.train=alignkit-tests/no-such-set")
    assert result.exit_code == 2
    assert result.output.startswith("error: data.train: 'alignkit-tests/no-such-set' is not a local file or folder, and the Hub dataset could not "
                                    "be loaded offline (HF_HUB_OFFLINE=1): ")
    assert len(result.output.strip().splitlines()) == 1
    result = cli_train(tmp_path, tiny_dir, "recipes/dpo.yaml", f"data.train={HUB}", "data.columns={prompt: title}")
    assert (result.exit_code, result.output.strip()) == (
        2, f"error: {HUB}[train]: data.columns: column 'title' (for prompt) is not in the data; columns: date, qid, question, response_j, response_k")
    result = cli_train(tmp_path, tiny_dir, "recipes/dpo.yaml", f"data.train={FIXTURES / 'hh_raw.jsonl'}", "data.format=ultrafeedback")
    assert (result.exit_code, result.output.strip()) == (
        2, f"error: {FIXTURES / 'hh_raw.jsonl'}: row 1: field 'chosen': expected a whole conversation: a list of {{role, content}} messages")


# --------------------------------------------------------------------------------------------------
# SmolLM2's chat template (the real checkpoint)
# --------------------------------------------------------------------------------------------------
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.mark.slow
def test_formats_encode_with_smollm2s_chat_template(smollm2):
    from alignkit.models.loading import load_tokenizer

    tok = load_tokenizer(smollm2)
    encoder = Encoder(tok, 1024)
    records, _ = load_records(FIXTURES / "hh_raw.jsonl", kind="pair")
    example = encoder.encode(records[1], "pair")
    assert tok.decode(example["prompt_ids"]) == (
        f"{SMOL_SYSTEM}<|im_start|>user\nWhat is a good name for a grey cat?<|im_end|>\n<|im_start|>assistant\nMaybe Ash or Pebble?<|im_end|>\n"
        "<|im_start|>user\nSomething longer.<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(example["chosen_ids"]) == "How about Sir Reginald Fluffington?<|im_end|>\n"
    records, _ = load_records(FIXTURES / "ultrafeedback.jsonl", kind="pair")
    example = encoder.encode(records[1], "pair")
    assert tok.decode(example["prompt_ids"]) == f"{SMOL_SYSTEM}<|im_start|>user\nWhat is 12 times 12?<|im_end|>\n<|im_start|>assistant\n"
    assert (tok.decode(example["chosen_ids"]), tok.decode(example["rejected_ids"])) == ("12 times 12 is 144.<|im_end|>\n", "It is 124.<|im_end|>\n")
    records, _ = load_records(FIXTURES / "implicit_prompt.jsonl", kind="pair")
    example = encoder.encode(records[1], "pair")
    assert tok.decode(example["prompt_ids"]).startswith("<|im_start|>system\nYou are a concise assistant.<|im_end|>\n")
    assert tok.decode(example["rejected_ids"]) == "100<|im_end|>\n"
    records, _ = load_records(FIXTURES / "sharegpt.jsonl", kind="sft")
    assert trained(tok, encoder.encode(records[1], "sft")) == "Spoon.<|im_end|>\nTune.<|im_end|>\n"
    records, _ = load_records(FIXTURES / "openai.jsonl", kind="sft")
    assert (encoder.renders("tool_calls"), encoder.renders("tools")) == (False, False)
    example = encoder.encode(records[0], "sft")
    assert tok.decode(example["input_ids"]).startswith(f"<|im_start|>system\nYou are a weather assistant.\n\n{TOOLS_TEXT}<|im_end|>\n")
    assert trained(tok, example) == f"{CALL_TEXT}<|im_end|>\nYes, it is raining in Oslo and it is 6 degrees.<|im_end|>\n"
    records, _ = load_records(FIXTURES / "alpaca.json", kind="sft")
    assert trained(tok, encoder.encode(records[2], "sft")) == "68 degrees Fahrenheit<|im_end|>"
