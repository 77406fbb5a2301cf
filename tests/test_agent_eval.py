"""Agent metrics of `alignkit eval MODEL --env NAME` (alignkit.evaluation.agents): success rate, turns, tool
calls, invalid calls and regret counted by hand on scripted episodes, and the command end to end."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.envs import CalculatorEnv, Limits, Trajectory
from alignkit.evaluation.agents import agent_metrics, agent_rows, evaluate_agent
from test_envs import ScriptedEngine

CALL = '<tool_call>{"name": "calc", "arguments": {"expr": "37 + 48"}}</tool_call>'
runner = CliRunner()


def scripted(tokenizer, env, rows, script, options=None, max_turns=3):
    engine = ScriptedEngine(tokenizer, dict(enumerate(script)))
    return evaluate_agent(None, tokenizer, env, rows, options, max_new_tokens=200, seed=3, limits=Limits(max_turns=max_turns, max_tokens=1000,
                          describe_tools=False), engine=engine)


def test_calculator_success_turns_and_calls_are_counted_by_hand(tokenizer):
    rows = [{"prompt": "37 + 48 ="}] * 4
    script = [
        [CALL, " 85 ."],  # a call, then right: success in 2 turns, 1 call
        ['<tool_call>{"name": "calc", "arguments": {"expr": "37 + 48"}}', " 84 ."],  # never closed: 1 invalid call; then wrong
        [" 85 ."],  # right from the head: success in 1 turn, no call
        ['<tool_call>{"name": "sqrt", "arguments": {}}</tool_call> ' + CALL, "no"],  # unknown tool + a good call; then no answer
    ]
    result = scripted(tokenizer, "calculator", rows, script)
    assert result.episodes == 4 and result.errors == 0
    assert result.success_rate == 0.5  # episodes 0 and 2
    assert result.reward == 0.5
    assert result.turns == (2 + 2 + 1 + 2) / 4
    assert result.turns_to_success == (2 + 1) / 2
    assert result.tool_calls == (1 + 1 + 0 + 2) / 4
    assert result.invalid_calls == (0 + 1 + 0 + 1) / 4
    assert result.invalid_call_rate == 2 / 4
    assert result.regret is None and result.truncated == 0.0
    assert "calculator" == result.env and result.settings["max_turns"] == 3
    assert result.samples[0]["conversation"].startswith("[user] 37 + 48 = | [assistant] " + CALL + " | [tool] 85")


def test_guess_number_regret_is_wrong_guesses_and_max_guesses_for_a_lost_game(tokenizer):
    rows = [{"prompt": "a", "secret": 5}, {"prompt": "b", "secret": 5}, {"prompt": "c", "secret": 9}]
    script = [
        [" 8 .", " 3 .", " 5 ."],  # lower, higher, found: 2 wrong guesses
        [" 20 .", " 5 ."],  # out of range (invalid, wrong), found: 1
        [" 1 .", " 2 .", " 3 ."],  # never found within 3 guesses: regret = max_guesses = 3
    ]
    result = scripted(tokenizer, "guess_number", rows, script, {"max_guesses": 3})
    assert result.regret == (2 + 1 + 3) / 3
    assert result.regret_se == pytest.approx((((2 - 2) ** 2 + (1 - 2) ** 2 + (3 - 2) ** 2) / 2) ** 0.5 / 3 ** 0.5)
    assert result.success_rate == pytest.approx(2 / 3)
    assert result.turns == (3 + 2 + 3) / 3 and result.turns_to_success == (3 + 2) / 2
    assert result.tool_calls == 0.0 and result.invalid_call_rate is None  # no tool-call blocks in any turn
    assert result.env_metrics == {"invalid": pytest.approx(1 / 3)}


def test_self_correction_success_is_the_final_answer(tokenizer):
    rows = [{"prompt": "3 + 4 ="}] * 3
    script = [[" 6 .", " 7 ."], [" 7 .", " 6 ."], [" 7 .", " 7 ."]]  # fixed, broken, kept
    result = scripted(tokenizer, "self_correction", rows, script)
    assert result.success_rate == pytest.approx(2 / 3)
    assert result.env_metrics["turn1_correct"] == pytest.approx(2 / 3) and result.env_metrics["turn2_correct"] == pytest.approx(2 / 3)
    assert result.env_metrics["fixed"] == pytest.approx(1 / 3) and result.env_metrics["broken"] == pytest.approx(1 / 3)
    assert result.env_metrics["delta"] == pytest.approx(0.0)


class Exploding(CalculatorEnv):
    def reset(self, row):
        if row["prompt"] == "boom":
            raise RuntimeError("no such task")
        return super().reset(row)


def test_an_episode_that_fails_in_the_environment_counts_as_failed(tokenizer, monkeypatch):
    import alignkit.evaluation.agents as agents

    monkeypatch.setattr(agents, "environment_class", lambda spec: Exploding)
    result = scripted(tokenizer, "exploding", [{"prompt": "37 + 48 ="}, {"prompt": "boom"}], [[" 85 ."], []])
    assert result.errors == 1 and result.success_rate == 0.5 and result.reward == 0.5


def test_calls_are_parsed_from_the_turns_when_the_environment_does_not_count_them():
    bad = '<tool_call>{"name": "calc", "arguments": 3}</tool_call>'
    t = Trajectory(prompt="p", prompt_ids=[1], turn_ends=[0, 1], metrics={"turns": 2.0, "success": 1.0},
                   messages=[{"role": "user", "content": "p"}, {"role": "assistant", "content": CALL + bad}, {"role": "user", "content": "ok"},
                             {"role": "assistant", "content": "<tool_call>{oops"}])
    result = agent_metrics([t, Trajectory(prompt="q", prompt_ids=[1], turn_ends=[0], metrics={"turns": 1.0, "success": 0.0})])
    assert result.tool_calls == 3 / 2 and result.invalid_calls == 2 / 2 and result.invalid_call_rate == 2 / 3
    assert result.success_rate == 0.5 and result.turns == 1.5
    with pytest.raises(ValueError, match="no episodes"):
        agent_metrics([])


def test_rows_come_from_the_task_or_a_file(tmp_path):
    rows = agent_rows({"name": "arithmetic", "level": 3}, 5)
    assert len(rows) == 5 and all(r["prompt"].endswith("=") for r in rows)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1 + 1 =", "answer": 2}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="row 2 has no string 'prompt'"):
        agent_rows(data=path)
    assert agent_rows(data=path, n=1) == [{"prompt": "1 + 1 =", "answer": 2}]


def test_cli_eval_env_writes_the_agent_metrics_and_is_reproducible(tiny_dir, tmp_path):
    command = ["eval", str(tiny_dir), "--env", "calculator", "--task", "{name: arithmetic, level: 3}", "--n-prompts", "4", "--samples", "2",
               "--max-new-tokens", "6", "--max-turns", "2", "--no-describe-tools", "--out", str(tmp_path / "a")]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "a" / "eval-env-calculator.json").read_text())
    assert data["episodes"] == 8 and 1 <= data["turns"] <= 2 and 0 <= data["success_rate"] <= 1 and data["warning"] is None
    assert {"tool_calls", "invalid_calls", "invalid_call_rate", "regret", "truncated"} <= set(data)
    assert data["settings"]["max_turns"] == 2 and data["settings"]["max_new_tokens"] == 6
    assert (tmp_path / "a" / "eval-env-calculator.html").exists() and "success_rate" in result.output
    runner.invoke(app, command[:-1] + [str(tmp_path / "b")])
    assert json.loads((tmp_path / "b" / "eval-env-calculator.json").read_text()) == data


def test_cli_eval_of_an_env_run_uses_its_environment(tiny_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_dir, run / "final")
    config = {"algorithm": "rl", "model": {"path": str(tiny_dir)}, "task": {"name": "arithmetic", "level": 2},
              "rl": {"sampling": {"max_new_tokens": 4}, "env": {"name": "guess_number", "options": {"high": 7, "max_guesses": 3}, "max_turns": 3,
                                                                "max_tokens": 80, "reward": "sum", "describe_tools": True}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["eval", str(run), "--n-prompts", "3", "--samples", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads((run / "eval-env-guess_number.json").read_text())
    assert data["settings"]["options"] == {"high": 7, "max_guesses": 3} and data["settings"]["max_new_tokens"] == 4
    assert data["episodes"] == 6 and 0 <= data["regret"] <= 3 and data["turns"] <= 3
    long = runner.invoke(app, ["eval", str(run), "--n-prompts", "1", "--samples", "1", "--env", "calculator", "--max-tokens", "20"])
    assert long.exit_code == 0 and "never got a turn" in long.output  # the tools' schemas alone fill 20 tokens


@pytest.mark.parametrize("args, message", [
    (["--env", "chess"], "unknown environment 'chess'"),
    (["--env", "guess_number", "-E", "colour=red"], "takes no option(s) 'colour'"),
    (["--max-turns", "2"], "need --env NAME"),
    (["--env", "calculator", "--strategy", "best_of_n"], "drop --reward / --strategy"),
])
def test_cli_eval_env_bad_input_is_one_clear_line(tiny_dir, args, message):
    result = runner.invoke(app, ["eval", str(tiny_dir), *args, "--n-prompts", "1"])
    assert result.exit_code != 0 and message in result.output, result.output


def test_no_tools_means_calls_are_answered_unknown_tool(tokenizer):
    """rl.env.tools: [] (the no-tool arm of the calculator evidence) takes the calculator away: a call is
    an invalid call answered "unknown tool", not a result."""
    from test_envs import play

    trajectories, _ = play(tokenizer, CalculatorEnv, [{"prompt": "37 + 48 ="}], [[CALL, " 85 ."]], Limits(tools=[], describe_tools=False))
    tool_message = [m for m in trajectories[0].messages if m["role"] == "tool"]
    assert tool_message[0]["content"] == "error: unknown tool 'calc'; tools: (none)"
    assert trajectories[0].metrics["invalid_calls"] == 1.0 and trajectories[0].reward == 1.0  # answering from the head still counts
    with pytest.raises(ValueError, match="rl.env.tools: unknown tool 'clac'"):
        Limits(tools=["clac"])


def test_cli_eval_env_backend_plays_the_episodes_on_the_named_engine(tiny_dir, tmp_path, monkeypatch):
    """--backend picks the engine that plays: hf builds model.generate's engine, local alignkit's decoder (and
    the settings record which); greedy episodes are the same on both, token for token; a bad name is one line."""
    import alignkit.evaluation.agents as agents
    from alignkit.models.loading import load_policy_for_inference, load_tokenizer

    built = []
    real = agents.build_rollout_engine
    monkeypatch.setattr(agents, "build_rollout_engine", lambda name, *a, **k: built.append(name) or real(name, *a, **k))
    base = ["eval", str(tiny_dir), "--env", "calculator", "--task", "arithmetic", "--n-prompts", "2", "--samples", "1", "--max-new-tokens", "4",
            "--max-turns", "2", "--no-describe-tools"]
    for backend in ("hf", "local"):
        result = runner.invoke(app, [*base, "--backend", backend, "--out", str(tmp_path / backend)])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / backend / "eval-env-calculator.json").read_text())["settings"]["backend"] == {"hf": "hf", "local": "alignkit"}[backend]
    assert built == ["hf", "alignkit"]
    bad = runner.invoke(app, [*base, "--backend", "vlm"])
    assert bad.exit_code != 0 and "unknown generation backend 'vlm'" in bad.output and "allowed:" in bad.output
    assert "need --env NAME" in runner.invoke(app, ["eval", str(tiny_dir), "--backend", "hf", "--n-prompts", "1"]).output
    model, tokenizer = load_policy_for_inference(tiny_dir), load_tokenizer(tiny_dir)
    rows = agent_rows("arithmetic", 3)
    play = dict(n_samples=1, max_new_tokens=5, greedy=True, limits=Limits(max_turns=2, max_tokens=200, describe_tools=False), keep_samples=3)
    hf, local = (evaluate_agent(model, tokenizer, "calculator", rows, backend=b, **play) for b in ("hf", "local"))
    assert [s["conversation"] for s in hf.samples] == [s["conversation"] for s in local.samples]
    assert (hf.reward, hf.turns, hf.tokens) == (local.reward, local.turns, local.tokens)
