"""Bad input refused with one line naming what is wrong and where, before any model work (issue 12)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.config import ConfigError, load_recipe
from alignkit.data.records import DataError, load_records

runner = CliRunner()


def cli_train(tmp_path, algorithm, *overrides):
    """``alignkit train`` on a minimal recipe; returns the CliRunner result."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"algorithm: {algorithm}\ntrain:\n  output_dir: {tmp_path / 'out'}\n  progress: false\n  max_steps: 1\n  batch_size: 4\n")
    return runner.invoke(app, ["train", str(recipe), *overrides])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("[alignkit]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------
def test_messages_that_is_a_string_is_one_line(tmp_path, tiny_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                                                 {"messages": "hello there"}])
    line = one_line_error(cli_train(tmp_path, "sft", f"model.path={tiny_dir}", f"data.train={data}"))
    assert line == f"error: {data}: row 2: field 'messages': expected a list of chat messages [{{role, content}}, ...], got a string"


@pytest.mark.parametrize("role, problem", [("robot", "unknown role 'robot'; allowed: system, developer, user, assistant, tool"),
                                           (3, "expected a string (system, developer, user, assistant, tool), got 3")])
def test_chat_roles_are_checked(role, problem):
    rows = [{"messages": [{"role": role, "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    with pytest.raises(DataError) as e:
        load_records(rows, "sft")
    assert str(e.value) == f"<list>: row 1: field 'messages[0].role': {problem}"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("inf")])
def test_non_finite_scores_are_refused(value):
    with pytest.raises(DataError, match=r"row 1: field 'scores\[1\]': is (NaN|-?infinite)"):
        load_records([{"prompt": "p", "completions": ["a", "b"], "scores": [1.0, value]}], "ranked")
    with pytest.raises(DataError, match=r"field 'margin': is (NaN|-?infinite)"):
        load_records([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": value}], "pair")


def test_ranked_rows_without_a_preference_are_refused():
    with pytest.raises(DataError, match=r"row 1: field 'scores': every completion has the same score \(2\)"):
        load_records([{"prompt": "p", "completions": ["a", "b", "c"], "scores": [2, 2, 2]}], "ranked")
    with pytest.raises(DataError, match=r"row 1: field 'ranks': every completion has the same rank"):
        load_records([{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]}], "ranked")
    with pytest.raises(DataError, match=r"row 1: field 'completions\[2\]': is identical to completions\[0\]"):
        load_records([{"prompt": "p", "completions": ["a", "b", "a"], "scores": [3, 2, 1]}], "ranked")
    records, _ = load_records([{"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 1, 0]}], "ranked")  # partial ties are fine
    assert records[0]["scores"] == [1, 1, 0]


def test_non_utf8_lines_are_named(tmp_path):
    good = json.dumps({"prompt": "p", "completion": "c"}).encode()
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(good + b"\n" + good + b"\n" + b'{"prompt": "caf\xe9", "completion": "c"}\n')
    with pytest.raises(DataError) as e:
        load_records(jsonl, "sft")
    assert str(e.value) == f"{jsonl}: row 3: not UTF-8 text (byte 0xe9 at column 16); save the file as UTF-8"
    csv_file = tmp_path / "bad.csv"
    csv_file.write_bytes(b"prompt,completion\np,c\np,caf\xe9\n")
    with pytest.raises(DataError) as e:
        load_records(csv_file, "sft")
    assert str(e.value) == f"{csv_file}: line 3: not UTF-8 text (byte 0xe9 at column 6); save the file as UTF-8"
    json_file = tmp_path / "bad.json"
    json_file.write_bytes(b'[\n{"prompt": "p", "completion": "c"},\n{"prompt": "\xff", "completion": "c"}\n]')
    with pytest.raises(DataError, match=r"bad.json: line 3: not UTF-8 text \(byte 0xff\)"):
        load_records(json_file, "sft")


def test_files_with_a_byte_order_mark_are_read(tmp_path):
    bom = b"\xef\xbb\xbf"
    row = {"prompt": "p", "completion": "c"}
    files = {"a.jsonl": json.dumps(row).encode() + b"\n", "a.json": json.dumps([row]).encode(), "a.csv": b"prompt,completion\r\np,c\r\n"}
    for name, body in files.items():
        (tmp_path / name).write_bytes(bom + body)
        records, _ = load_records(tmp_path / name, "sft")
        assert [(r["prompt"], r["completion"]) for r in records] == [("p", "c")], name


def test_dataset_dict_names_its_splits_and_empty_parquet(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "dd"
    DatasetDict({"first": Dataset.from_list([{"prompt": "p", "completion": "c"}]), "second": Dataset.from_list([{"prompt": "q", "completion": "d"}])}).save_to_disk(str(folder))
    with pytest.raises(DataError) as e:
        load_records(folder, "sft")
    assert str(e.value) == f"{folder}: has splits first, second: choose one with data.train_split, or give one split's folder (e.g. {folder / 'first'})"
    assert len(load_records(folder / "first", "sft")[0]) == 1
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_records(empty, "sft")
    assert str(e.value) == f"{empty}: is an empty file (0 bytes), not a Parquet file"


def test_ranked_rows_with_different_counts_name_the_file(tmp_path, tiny_dir):
    data = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "scores": [3, 2, 1]},
                                                   {"prompt": "q", "completions": ["a", "b"], "scores": [1, 0]}])
    line = one_line_error(cli_train(tmp_path, "pro", f"model.path={tiny_dir}", f"data.train={data}"))
    assert line == f"error: {data}: row 2: field 'completions': ranks 2 completions; every row must rank 3 (as row 1 does)"
    assert not (tmp_path / "out").exists()  # found before the run folder or any model


def test_duplicates_are_counted_reported_and_dropped_on_request(tmp_path, tiny_dir):
    from alignkit.algorithms import build_algorithm, check_data
    from alignkit.engine.trainer import Trainer

    rows = [{"prompt": f"p{i % 3}", "completion": f"c{i % 3}"} for i in range(5)]  # rows 4 and 5 repeat rows 1 and 2
    data = write_jsonl(tmp_path / "dup.jsonl", rows)
    records, summary = load_records(data, "sft")
    assert len(records) == 5 and summary.duplicates == 2 and summary.first_duplicate == (4, 1) and summary.n_skipped == 0
    records, summary = load_records(data, "sft", duplicates="drop")
    assert [r["_row"] for r in records] == [1, 2, 3] and summary.n_skipped == 2
    result = cli_train(tmp_path, "sft", f"model.path={tiny_dir}", f"data.train={data}", "train.batch_size=1")
    assert result.exit_code == 0, result.output
    assert f"[alignkit] {data}: 2 exact duplicate row(s) of 5, kept (data.duplicates: drop leaves them out); first: row 4 repeats row 1" in result.output
    recipe = load_recipe({"algorithm": "sft"}, [f"model.path={tiny_dir}", f"data.train={data}", f"train.output_dir={tmp_path / 'drop'}",
                                                "data.duplicates=drop", "train.progress=false"])
    algorithm = build_algorithm(recipe)
    check_data(recipe, algorithm)
    trainer = Trainer(recipe, algorithm)
    assert sorted(e["row"] for e in trainer.load_examples(str(data), "train")) == [1, 2, 3]
    with pytest.raises(ConfigError, match="data.duplicates"):
        load_recipe({"algorithm": "sft"}, ["data.duplicates=maybe"])


def test_data_errors_come_before_any_model_work(tmp_path, tiny_dir, monkeypatch):
    """An error in the last row of a 5,000-row file is raised with no model loaded and no run folder made."""
    from alignkit.engine import trainer

    events = []
    monkeypatch.setattr(trainer.Trainer, "_load_model", lambda self, checkpoint: events.append("model") or (_ for _ in ()).throw(AssertionError("model loaded")))
    rows = [{"prompt": f"prompt {i}", "chosen": "good", "rejected": "bad"} for i in range(4999)] + [{"prompt": "p", "chosen": "x", "rejected": "x"}]
    data = write_jsonl(tmp_path / "big.jsonl", rows)
    line = one_line_error(cli_train(tmp_path, "dpo", f"model.path={tiny_dir}", f"data.train={data}"))
    assert line == f"error: {data}: row 5000: field 'rejected': is identical to 'chosen' (the pair carries no preference)"
    assert events == [] and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "file", "no_config", "only_bin", "truncated"])
def test_bad_model_folders_are_one_line(tmp_path, tiny_dir, case):
    from alignkit.models.loading import ModelFolderError, load_causal_lm

    folder = tmp_path / "model"
    if case != "missing":
        shutil.copytree(tiny_dir, folder)
    if case == "file":
        folder = folder / "config.json"
    elif case == "no_config":
        (folder / "config.json").unlink()
    elif case == "only_bin":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif case == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    expected = {"missing": "does not exist", "file": "is a file; expected a model folder", "no_config": "has no config.json",
                "only_bin": "has only pickled weights (pytorch_model.bin)", "truncated": "truncated safetensors file"}[case]
    line = one_line_error(cli_train(tmp_path, "sft", f"model.path={folder}"))
    assert expected in line and str(folder) in line
    with pytest.raises(ModelFolderError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_causal_lm(folder)


@pytest.mark.parametrize("override, message", [
    ("model.tiny.num_heads=3", "model.tiny.hidden_size (64) must be a multiple of model.tiny.num_heads (3)"),
    ("model.tiny.hidden_size=0", "model.tiny.hidden_size must be a positive integer (got 0)"),
    ("model.tiny.vocab_size=100", "model.tiny.vocab_size (100) must be at least 263"),
])
def test_impossible_tiny_shapes_are_config_errors(tmp_path, override, message):
    line = one_line_error(cli_train(tmp_path, "sft", override))
    assert message in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# recipes: loss parameters, online RL
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm, override, message", [
    ("dpo", "dpo.params={lable_smoothing: 0.1}", "dpo.params: pairwise loss 'dpo' got unknown parameter(s) 'lable_smoothing'; accepted parameters: label_smoothing "
                                                 "(did you mean 'lable_smoothing' -> 'label_smoothing'?)"),
    ("dpo", "dpo.mix=[{loss: ipo, params: {bta: 1}}]", "dpo.mix[0].params: pairwise loss 'ipo' got unknown parameter(s) 'bta'; accepted parameters: (none)"),
    ("dpo", "dpo.loss=tdpo2|dpo.reference=model|dpo.params={alpha: 0.5}",
     "dpo.params: dpo.loss=tdpo2 takes no extra parameters (got 'alpha'); its alpha is dpo.tdpo_alpha"),
])
def test_loss_parameter_typos_fail_before_any_work(tmp_path, algorithm, override, message):
    line = one_line_error(cli_train(tmp_path, algorithm, *override.split("|")))
    assert line == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_loss_parameters_passed_by_unpaired_and_listwise_are_accepted():
    from alignkit.algorithms import build_algorithm

    for algorithm, overrides in [("kto", ["unpaired.loss=kto"]), ("kto", ["unpaired.loss=bco"]), ("kto", ["unpaired.loss=apo_zero_unpaired"]),
                                 ("pro", ["listwise.sft_weight=0.5"]), ("dpo", ["dpo.params={label_smoothing: 0.1}"])]:
        build_algorithm(load_recipe({"algorithm": algorithm}, overrides))


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_group_relative_estimators_need_groups(estimator):
    with pytest.raises(ConfigError, match=f"rl.sampling.group_size must be at least 2 for rl.estimator={estimator}"):
        load_recipe({"algorithm": "rl"}, [f"rl.estimator={estimator}", "rl.sampling.group_size=1"])
    for other in ("reinforce", "reinforce_pp", "remax", "ppo"):
        load_recipe({"algorithm": "rl"}, [f"rl.estimator={other}", "rl.sampling.group_size=1"])


def test_max_new_tokens_beyond_the_context_is_refused(tmp_path, tiny_dir):
    context = json.loads((tiny_dir / "config.json").read_text())["max_position_embeddings"]
    line = one_line_error(cli_train(tmp_path, "rl", f"model.path={tiny_dir}", f"rl.sampling.max_new_tokens={context}"))
    assert line == (f"error: rl.sampling.max_new_tokens ({context}) must be smaller than the model's context of {context} tokens "
                    "(max_position_embeddings), which also holds the prompt")
    line = one_line_error(cli_train(tmp_path, "rl", "model.tiny.max_position_embeddings=64", "rl.sampling.max_new_tokens=100"))
    assert "context of 64 tokens" in line and not (tmp_path / "out").exists()


def test_a_causal_lm_is_not_a_reward_model(tmp_path, tiny_dir):
    from alignkit.rewards import build_reward_source

    line = one_line_error(cli_train(tmp_path, "rl", f"model.path={tiny_dir}", f"rl.reward={tiny_dir}"))
    assert line == (f"error: rl.reward: {tiny_dir} is a causal LM (LlamaForCausalLM), not a reward model; "
                    "train one with algorithm: reward, or give gold or module:function")
    with pytest.raises(ValueError, match="is a causal LM"):
        build_reward_source({"type": "ensemble", "members": [str(tiny_dir)]})


# --------------------------------------------------------------------------------------------------
# reward functions
# --------------------------------------------------------------------------------------------------
def raises_on_soup(prompts, completions):
    return [1.0 / (0 if "soup" in p else 1) for p in prompts]


def returns_none(prompts, completions):
    return None


def returns_strings(prompts, completions):
    return ["good" for _ in completions]


def returns_one_too_few(prompts, completions):
    return [1.0] * (len(completions) - 1)


def returns_nan_second(prompts, completions):
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


@pytest.mark.parametrize("fn, message", [
    (returns_none, "reward function test_bad_input:returns_none returned None; expected 3 numbers, one per completion"),
    (returns_strings, "reward function test_bad_input:returns_strings returned str 'good' for sample 0 (prompt 'a'); expected a number"),
    (returns_one_too_few, "reward function test_bad_input:returns_one_too_few returned 2 values for 3 completions (one number per completion)"),
    (returns_nan_second, "reward function test_bad_input:returns_nan_second returned nan for sample 1 (prompt 'the soup'); rewards must be finite"),
    (raises_on_soup, "reward function test_bad_input:raises_on_soup raised ZeroDivisionError: float division by zero on sample 1 (prompt 'the soup')"),
])
def test_reward_functions_that_misbehave_are_named(fn, message):
    from alignkit.rewards import FunctionSource, RewardFunctionError

    source = FunctionSource(f"test_bad_input:{fn.__name__}")
    with pytest.raises(RewardFunctionError) as e:
        source.score(["a", "the soup", "c"], ["x", "y", "z"])
    assert str(e.value) == message
    assert isinstance(e.value, ValueError)  # the CLI's one-line errors


def test_a_raising_reward_function_is_one_line_from_the_cli(tmp_path, tiny_dir):
    line = one_line_error(cli_train(tmp_path, "rl", f"model.path={tiny_dir}", "rl.reward=test_bad_input:raises_on_soup", "rl.sampling.max_new_tokens=4",
                                    "task.n_train=8", "task.n_eval=0", "rl.sampling.group_size=2"))
    assert line.startswith("error: reward function test_bad_input:raises_on_soup raised ZeroDivisionError: float division by zero on sample ")
    assert "soup" in line
