"""A user's own code and paths (issue #19): ``module:function`` / ``file.py:function`` rewards, Hub ids as
``model.path``, one-line errors naming the path and what is wrong."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.core.user_code import UserCodeError, load_object

runner = CliRunner()


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("[alignkit]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_file_path_spec_loads_the_file_once(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("CALLS = []\ndef score(prompts, completions):\n    return [len(c) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    fn = load_object("./my_rewards.py:score", "reward function")
    assert fn(["p", "q"], ["abc", "de"]) == [3, 2]
    assert load_object(f"{tmp_path}/my_rewards.py:score") is fn  # cached per resolved path


def test_a_module_in_the_working_directory_resolves(tmp_path, monkeypatch):
    (tmp_path / "cwd_rewards_h3.py").write_text("def twice(prompts, completions):\n    return [2.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    assert load_object("cwd_rewards_h3:twice")(["a"], ["b"]) == [2.0]


def test_user_code_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.py").write_text("import math\nX = 3\ndef score(p, c):\n    return [0.0] * len(c)\n")
    (tmp_path / "boom.py").write_text("a = 1\nb = 1 / 0\n")
    cases = {
        "./missing.py:fn": f"reward function './missing.py:fn': file ./missing.py not found (looked for {tmp_path / 'missing.py'})",
        "./r.py:scor": "reward function './r.py:scor': ./r.py has no 'scor' (did you mean 'score'?); callables it defines: score",
        "./r.py:X": "reward function './r.py:X': 'X' in ./r.py is int 3, not callable",
        "./boom.py:fn": f"reward function './boom.py:fn': loading ./boom.py raised ZeroDivisionError: division by zero at {tmp_path / 'boom.py'}:2",
        "nomod_h3:fn": f"reward function 'nomod_h3:fn': no module named 'nomod_h3' (searched the working directory {tmp_path} "
                       "and the installed packages; a file can be named as path/to/file.py:function)",
    }
    for spec, message in cases.items():
        with pytest.raises(UserCodeError) as e:
            load_object(spec, "reward function")
        assert str(e.value) == message


def _fake_hub_cache(root, tiny_dir, repo="alignkit-test/tiny"):
    org, name = repo.split("/")
    digest = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{org}--{name}"
    shutil.copytree(tiny_dir, base / "snapshots" / digest)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(digest)
    return base / "snapshots" / digest


def test_a_hub_id_loads_from_the_cache_offline(tmp_path, tiny_dir, monkeypatch):
    from alignkit.models.loading import ModelFolderError, load_causal_lm, load_tokenizer

    snapshot = _fake_hub_cache(tmp_path / "hub", tiny_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_causal_lm("alignkit-test/tiny"), load_tokenizer("alignkit-test/tiny")
    assert model.config.hidden_size == 32 and tokenizer("soup")["input_ids"] == load_tokenizer(snapshot)("soup")["input_ids"]
    with pytest.raises(ModelFolderError) as e:
        load_causal_lm("alignkit-test/not-cached")
    assert str(e.value) == ("model: 'alignkit-test/not-cached' is not a local folder, and HF_HUB_OFFLINE=1 with no cached copy "
                            "(download it once online, or give a local folder)")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"algorithm: sft\ntrain: {{output_dir: {tmp_path / 'out'}, progress: false, max_steps: 1, batch_size: 4}}\n")
    result = runner.invoke(app, ["train", str(recipe), "model.path=alignkit-test/tiny"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()
    line = one_line_error(runner.invoke(app, ["train", str(recipe), "model.path=alignkit-test/not-cached"]))
    assert line.startswith("error: model.path: 'alignkit-test/not-cached' is not a local folder, and HF_HUB_OFFLINE=1")


def test_reward_specs_that_do_not_load_are_one_line_from_the_cli(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"algorithm: rl\ntrain: {{output_dir: {tmp_path / 'out'}, progress: false, max_steps: 1}}\n")
    line = one_line_error(runner.invoke(app, ["train", str(recipe), f"model.path={tiny_dir}", "rl.reward=./missing.py:fn"]))
    assert line == f"error: rl.reward: reward function './missing.py:fn': file ./missing.py not found (looked for {tmp_path / 'missing.py'})"
    line = one_line_error(runner.invoke(app, ["train", str(recipe), f"model.path={tiny_dir}", "rl.reward=reward_fns:missing_fn"]))
    head = "error: rl.reward: reward function 'reward_fns:missing_fn': reward_fns has no 'missing_fn'; callables it defines: "
    assert line.startswith(head) and {"constant", "soup_is_constant"} <= set(line[len(head):].split(", "))  # tests/reward_fns.py's functions
    assert not (tmp_path / "out").exists()


def test_readme_data_files_and_file_reward_through_eval(tmp_path, tiny_dir):
    """The README's own-data lines: recipes/data/pairs.jsonl and the reward file recipes/data/rewards.py by path."""
    from pathlib import Path

    from typer.testing import CliRunner

    from alignkit.cli import app

    root = Path(__file__).resolve().parents[1]
    result = CliRunner().invoke(app, ["eval", str(tiny_dir), "--data", str(root / "recipes/data/pairs.jsonl"), "--reward",
                                      str(root / "recipes/data/rewards.py") + ":warm_words", "--reference", str(tiny_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    from alignkit.data.records import load_records

    assert len(load_records(str(root / "recipes/data/thumbs.jsonl"), kind="unpaired")[0]) == 16
    bad = CliRunner().invoke(app, ["eval", str(tiny_dir), "--data", str(root / "recipes/data/pairs.jsonl"), "--reward", "./nope.py:fn"])
    assert bad.exit_code == 2 and "nope.py" in bad.output


def test_a_gguf_file_is_a_model_source_converted_once(tmp_path, tiny_dir, monkeypatch):
    """``model.path`` / a CLI model argument may be a ``.gguf`` file: converted once into the alignkit cache and
    reused while the file is unchanged (the conversion itself is tested on the real file in test_real_model.py;
    here it is a stand-in that copies the tiny model, to count calls)."""
    import alignkit.models.convert as convert
    from alignkit.models.loading import check_model_folder

    calls = []

    def stand_in(file, out, dtype="float32", overwrite=False, quiet=False):
        calls.append(file)
        shutil.copytree(tiny_dir, out)
        return out

    monkeypatch.setattr(convert, "convert_gguf", stand_in)
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "my-model.Q8_0.gguf"
    file.write_bytes(b"GGUF not really")
    folder = check_model_folder(file)
    assert folder.parent == tmp_path / "cache" / "gguf" and folder.name.startswith("my-model.Q8_0-")
    result = CliRunner().invoke(app, ["generate", str(file), "-p", "review of the soup :", "--n", "1", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1, "the second use reuses the converted folder"
    file.write_bytes(b"GGUF changed")  # another file at the same path: converted again
    assert check_model_folder(file) != folder and len(calls) == 2
