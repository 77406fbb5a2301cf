"""The command line: help everywhere, recipe errors before any work, end-to-end train/generate/eval."""

import json

import pytest
from typer.testing import CliRunner

from alignkit.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["train"], ["demo"], ["generate"], ["eval"], ["tiny"], ["options"], ["iterate"], ["fetch-model"], ["convert-gguf"]])
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_unknown_key_fails_before_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm: dpo\ntrain:\n  lrr: 0.1\n")
    result = runner.invoke(app, ["train", str(recipe), f"train.output_dir={tmp_path / 'out'}"])
    assert result.exit_code == 2
    assert "train.lrr: unknown key" in result.output and "did you mean 'lr'" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_value_names_allowed_values(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm: dpo\n")
    result = runner.invoke(app, ["train", str(recipe), "train.precision=fp16"])
    assert result.exit_code == 2 and "train.precision" in result.output and "'fp32', 'bf16' or 'bf16_params'" in result.output
    args = ["train", str(recipe), "dpo.loss=nope", f"train.output_dir={tmp_path / 'o'}", "model.tiny.hidden_size=16", "model.tiny.num_heads=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "dpo.loss: unknown loss 'nope'" in result.output


def test_bad_data_file_is_one_line(tmp_path, tiny_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"algorithm: dpo\nmodel:\n  path: {tiny_dir}\ndata:\n  train: {data}\n"
                      f"train:\n  output_dir: {tmp_path / 'o'}\n  progress: false\n")
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {data}: row 2: field 'rejected': missing (fields present: chosen, prompt)"


def test_train_generate_eval(tmp_path, tiny_dir):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"algorithm: sft\nmodel:\n  path: {tiny_dir}\ntask:\n  n_train: 32\n  n_eval: 8\n"
                      f"train:\n  output_dir: {tmp_path / 'sft'}\n  batch_size: 8\n  max_steps: 2\n  eval_every: 1\n  progress: false\n")
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in m for m in metrics) and any("loss" in m for m in metrics)
    result = runner.invoke(app, ["generate", str(tmp_path / "sft" / "final"), "-p", "review of the soup :", "--n", "2", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert len(rows) == 2 and all(r["prompt"] == "review of the soup :" for r in rows)
    result = runner.invoke(app, ["eval", str(tmp_path / "sft"), "--n-prompts", "8", "--samples", "1"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "sft" / "eval.json").read_text())
    assert evaluation["n"] == 8 and evaluation["kl"] is not None and -2.0 <= evaluation["gold_reward"] <= 1.0
    assert (tmp_path / "sft" / "report.html").exists()


def test_options_list_keys_types_defaults_and_meanings():
    result = runner.invoke(app, ["options", "rl"])
    assert result.exit_code == 0
    assert "| `skip_zero_advantage` | bool | `True` | leave samples whose advantage is exactly 0" in result.output
    assert "| `backend` | `auto` \\| `alignkit` \\| `hf` \\| `vllm` \\| `vllm_server` | `auto` |" in result.output
    assert "## `rl.sampling.vllm`" in result.output and "## `dpo`" not in result.output
    bad = runner.invoke(app, ["options", "rll"])
    assert bad.exit_code == 2 and "did you mean 'rl'" in bad.output


def test_options_doc_is_current_and_complete():
    """docs/options.md is `alignkit options` as it is now, and every option says what it does."""
    from pathlib import Path

    from alignkit.config import Recipe, _sections, options_reference

    text = options_reference()
    doc = Path(__file__).parents[1] / "docs" / "options.md"
    assert doc.read_text() == text + "\n", "docs/options.md is stale: run `alignkit options > docs/options.md`"
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(model.model_fields) for _, model in _sections(Recipe, ""))
    assert not [row for row in rows if row.endswith("|  |")], "options without a description"


def test_malformed_override_value_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm: dpo\n")
    result = runner.invoke(app, ["train", str(recipe), "dpo.params={a: 1", f"train.output_dir={tmp_path / 'o'}"])
    assert result.exit_code == 2 and "override 'dpo.params={a: 1': the value is not valid YAML" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_train_refuses_an_iterative_recipe(tmp_path):
    """`alignkit train` on a recipe with an iterate: section would silently run one plain fit: refused, naming the command."""
    result = runner.invoke(app, ["train", "recipes/iterative_dpo.yaml", f"train.output_dir={tmp_path / 'o'}"])
    assert result.exit_code == 2 and "alignkit iterate" in result.output and not (tmp_path / "o").exists()
