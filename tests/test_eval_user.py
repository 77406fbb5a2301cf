"""`alignkit eval MODEL --data FILE [--reward SPEC]`: a user's model on the user's data, checked against numbers
worked out here from independently computed log-probs; the built-in task's malformed warning; reports that
explain their columns; readable training panels."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from alignkit import cli

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    {"prompt": "review of the soup :", "chosen": " the soup was great .", "rejected": " the soup was awful ."},
    {"prompt": "review of the phone : the screen was", "chosen": " bright and sharp .", "rejected": " dull ."},
]
PROMPTS = ["review of the soup :", "review of the film :", "review of the phone : the screen was"]


@pytest.fixture(scope="module")
def policy_dir(tiny_dir, tmp_path_factory):
    """The session's tiny model with every weight moved by seeded noise: a policy that differs from its reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    out = tmp_path_factory.mktemp("policy") / "model"
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(out))
    return out


def summed_logp(model, tokenizer, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """log p(completion | prompt) by hand: one forward, log-softmax at each position before a completion token."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(prompt_ids) + i - 1, t]) for i, t in enumerate(completion_ids))


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_line_error(args, *words):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), result.stderr


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(str(path))


def test_pairs_implicit_reward_accuracy_and_margin_by_hand(policy_dir, tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = runner.invoke(cli.app, ["eval", str(policy_dir), "--data", str(data), "--reference", str(tiny_dir), "--beta", "0.5", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "eval-pairs.json").read_text())

    policy, tok = load(policy_dir)
    reference, _ = load(tiny_dir)
    eos = tok.eos_token_id
    beta, acc, margins, likelihood, per_token, logps = 0.5, [], [], [], [], []
    for row in PAIRS:
        p = text_ids(tok, row["prompt"])
        c, r = text_ids(tok, row["chosen"]) + [eos], text_ids(tok, row["rejected"]) + [eos]  # the EOS is a target
        pc, pr = summed_logp(policy, tok, p, c), summed_logp(policy, tok, p, r)
        rc, rr = summed_logp(reference, tok, p, c), summed_logp(reference, tok, p, r)
        ic, ir = beta * (pc - rc), beta * (pr - rr)
        acc.append(1.0 if ic > ir else 0.0 if ic < ir else 0.5)
        margins.append(ic - ir)
        likelihood.append(1.0 if pc > pr else 0.0)
        per_token.append(1.0 if pc / len(c) > pr / len(r) else 0.0)
        logps.append((pc, pr))
    assert got["kind"] == "pair" and got["pairs"] == 2 and got["beta"] == 0.5
    assert got["implicit_reward_accuracy"] == sum(acc) / 2
    assert got["implicit_reward_margin"] == pytest.approx(sum(margins) / 2, abs=1e-4)
    assert got["implicit_reward_margin_se"] == pytest.approx(abs(margins[0] - margins[1]) / 2, abs=1e-4)  # s.e. of two values: |a − b| / 2
    assert got["logp_accuracy"] == sum(likelihood) / 2 and got["logp_per_token_accuracy"] == sum(per_token) / 2
    assert got["chosen_logp"] == pytest.approx(sum(c for c, _ in logps) / 2, abs=1e-3)
    assert got["rejected_logp"] == pytest.approx(sum(r for _, r in logps) / 2, abs=1e-3)
    # the table on stdout names each metric and explains it
    assert "implicit_reward_accuracy" in result.stdout and "ties ½" in result.stdout
    html = (tmp_path / "eval-pairs.html").read_text()
    assert "fraction of held-out pairs with β·log(π/π_ref)(chosen) &gt; β·log(π/π_ref)(rejected)" in html


def test_pairs_without_reference_give_likelihood_metrics_and_say_why(policy_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = runner.invoke(cli.app, ["eval", str(policy_dir), "--data", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "eval-pairs.json").read_text())
    assert "implicit_reward_accuracy" not in got and got["logp_accuracy"] in (0.0, 0.5, 1.0)
    assert got["notes"] == ["implicit-reward metrics need a reference model: give --reference (reference= in Python)"]
    assert "note: implicit-reward metrics need a reference model" in result.stdout


def test_unpaired_accuracy_by_hand(policy_dir, tiny_dir, tmp_path):
    from alignkit.evaluation.on_data import evaluate_on_data

    rows = [{"prompt": "review of the soup :", "completion": " the soup was great .", "label": True},
            {"prompt": "review of the film :", "completion": " the plot was dull .", "label": False}]
    result = evaluate_on_data(policy_dir, rows, reference=tiny_dir, beta=1.0)
    policy, tok = load(policy_dir)
    reference, _ = load(tiny_dir)
    implicit = []
    for row in rows:
        p, c = text_ids(tok, row["prompt"]), text_ids(tok, row["completion"]) + [tok.eos_token_id]
        implicit.append(summed_logp(policy, tok, p, c) - summed_logp(reference, tok, p, c))
    right = [(r > 0) == row["label"] for r, row in zip(implicit, rows)]
    assert result.kind == "unpaired" and result.metrics["desirable"] == 1 and result.metrics["undesirable"] == 1
    assert result.metrics["implicit_reward_accuracy"] == sum(right) / 2
    assert result.metrics["implicit_reward_margin"] == pytest.approx(implicit[0] - implicit[1], abs=1e-4)


def test_reward_function_mean_win_rate_and_kl_by_hand(policy_dir, tiny_dir, tmp_path):
    from alignkit.rollout.generate import generate

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    args = ["eval", str(policy_dir), "--data", str(data), "--reference", str(tiny_dir), "--reward", "reward_fns:completion_length",
            "--samples", "2", "--max-new-tokens", "8", "--seed", "3", "--out", str(tmp_path)]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "eval-prompts.json").read_text())

    policy, tok = load(policy_dir)
    reference, _ = load(tiny_dir)
    ours = generate(policy, tok, PROMPTS, n=2, max_new_tokens=8, seed=3)  # the model's samples: the evaluation's seed
    theirs = generate(reference, tok, PROMPTS, n=2, max_new_tokens=8, seed=1003)  # the reference's: seed + 1000
    a, b = [len(s.completion) for s in ours], [len(s.completion) for s in theirs]
    mean = sum(a) / 6
    se = math.sqrt(sum((x - mean) ** 2 for x in a) / 5 / 6)
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / 6
    d = [summed_logp(policy, tok, s.prompt_ids, s.completion_ids) - summed_logp(reference, tok, s.prompt_ids, s.completion_ids) for s in ours]
    assert got["prompts"] == 3 and got["samples_per_prompt"] == 2 and got["reward"] == "reward_fns:completion_length"
    assert got["model_reward"] == pytest.approx(mean) and got["model_reward_se"] == pytest.approx(se)
    assert got["reference_reward"] == pytest.approx(sum(b) / 6)
    assert got["win_rate"] == pytest.approx(wins)
    assert got["kl_k1"] == pytest.approx(sum(d) / 6, abs=1e-3)
    assert got["kl_k3"] == pytest.approx(sum(math.exp(-x) + x - 1 for x in d) / 6, abs=1e-3)
    samples = [json.loads(line) for line in (tmp_path / "eval-prompts-samples.jsonl").read_text().splitlines()]
    assert [s["completion"] for s in samples] == [s.completion for s in ours]
    assert [s["reward"] for s in samples] == [float(x) for x in a] and [s["reference_reward"] for s in samples] == [float(x) for x in b]
    assert [s["prompt"] for s in samples] == [p for p in PROMPTS for _ in range(2)]


def test_constant_reward_ties_everything(policy_dir, tiny_dir, tmp_path):
    from alignkit.evaluation.on_data import evaluate_on_data

    result = evaluate_on_data(policy_dir, [{"prompt": p} for p in PROMPTS], reference=tiny_dir, reward="reward_fns:constant", max_new_tokens=4)
    r = result.rewards
    assert (r.model_reward, r.model_reward_se, r.reference_reward, r.win_rate) == (0.5, 0.0, 0.5, 0.5)
    assert len(result.samples) == 3 and result.notes == []


def test_run_folder_gives_reference_and_beta(policy_dir, tiny_dir, tmp_path):
    """A run folder evaluates its final/ model against its starting model with its dpo.beta."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(policy_dir, run / "final")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"path": str(tiny_dir)}, "dpo": {"beta": 0.25}}))
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = runner.invoke(cli.app, ["eval", str(run), "--data", str(data)])
    assert result.exit_code == 0, result.output
    got = json.loads((run / "eval-pairs.json").read_text())  # written to the run folder
    assert got["reference"] == str(tiny_dir) and got["beta"] == 0.25 and "implicit_reward_accuracy" in got


def test_bad_input_is_one_line(policy_dir, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    one_line_error(["eval", str(policy_dir), "--reward", "reward_fns:constant"], "--reward needs --data")
    one_line_error(["eval", str(policy_dir), "--data", str(data), "--reward", "nope"], "--reward", "'nope'", "module:function")
    one_line_error(["eval", str(tmp_path / "missing"), "--data", str(data)], "missing")
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "x", "chosen": "a"}])
    one_line_error(["eval", str(policy_dir), "--data", str(bad)], "bad.jsonl", "row 2", "rejected")


def test_malformed_warning_on_the_builtin_task(tiny_dir, tmp_path):
    """An untrained model writes nothing the sentiment task parses: the evaluation says so."""
    result = runner.invoke(cli.app, ["eval", str(tiny_dir), "--n-prompts", "6", "--samples", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "eval.json").read_text())
    assert got["malformed"] > 0.5
    expected = (f"the model writes mostly text the task's gold reward cannot parse ({100 * got['malformed']:.0f}% malformed): "
                "is this the task it was trained for? For your own data use --data/--reward")
    assert got["warning"] == expected
    assert f"warning: {expected}" in result.stderr.splitlines()


def test_malformed_warning_threshold():
    from alignkit.evaluation.policy import PolicyEval, malformed_warning

    assert malformed_warning(0.5) is None and malformed_warning(0.0) is None
    assert "(51% malformed)" in malformed_warning(0.51)
    assert PolicyEval("m", 0.1, 0.0, None, None, 3.0, 0.2, 8).warning is None
    assert "100% malformed" in PolicyEval("m", -2.0, 0.0, None, None, 3.0, 1.0, 8).warning


def test_report_explains_every_column(tmp_path):
    from dataclasses import fields

    from alignkit.evaluation.glossary import explain
    from alignkit.evaluation.on_data import RewardComparison
    from alignkit.evaluation.policy import PolicyEval
    from alignkit.evaluation.report import write_report
    from alignkit.evaluation.reward_model import evaluate_pairs
    from alignkit.rewards import build_reward_source

    rm = evaluate_pairs(build_reward_source("reward_fns:completion_length"), [{"prompt": "p", "chosen": "long one", "rejected": "x"}] * 2)
    bench = ("method", "run", "step", "gold_reward", "gold_reward_se", "kl_k1", "kl_k3", "win_rate", "proxy", "length", "words", "distinct_2",
             "self_bleu", "malformed")
    extras = ("kl_k1_se", "kl_k3_se", "implicit_reward_accuracy", "implicit_reward_beta", "logprob_curves", "gold/majority", "cost/wall_s")
    names = [f.name for f in fields(PolicyEval)] + [f.name for f in fields(RewardComparison)] + list(rm) + list(bench) + list(extras)
    assert [n for n in names if explain(n) is None] == []
    assert explain("eval/logps/chosen").startswith("on the held-out eval data: mean summed log π(chosen")
    assert explain("no_such_metric") is None

    summary = {"gold_reward": 0.25, "malformed": 0.0, "win_rate": 0.5}
    samples = [{"prompt": "p", "completion": "c", "gold_reward": 0.1}]
    html = write_report(tmp_path, "t", [("Evaluation", summary), ("Samples", samples)]).read_text()
    for column in [*summary, "prompt", "completion", "key", "value", "meaning"]:
        escaped = explain(column).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;").replace('"', "&quot;")
        assert escaped in html, column
    assert html.count("<ul class='legend'>") == 2  # one legend per table


def test_training_panels_are_labelled(tmp_path, monkeypatch):
    from alignkit.evaluation import report

    captured = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: captured.setdefault("fig", fig) and path)
    records = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 6)] + [{"step": 5, "eval/loss": 0.4}]
    report.plot_curves({"sft": records}, ["loss", "eval/loss", "lr"], tmp_path / "c.png", "SFT training")
    axes = captured["fig"].axes
    assert len(axes) == 2  # training and held-out loss share one axis; the learning rate has its own
    assert [a.get_ylabel() for a in axes] == ["loss (nats)", "learning rate"]
    assert {a.get_xlabel() for a in axes} == {"optimizer step"}
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["training", "held-out"]
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["training"]
