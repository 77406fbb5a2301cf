"""Environments, tools and multi-turn rollouts (alignkit.envs) with a scripted policy: the interface, tool-call
parsing, the calculator, masks and limits of trajectories, and failures counted without crashing."""

from __future__ import annotations

import pytest

from alignkit.envs import (
    ENVIRONMENTS,
    CalculatorEnv,
    Environment,
    GuessNumberEnv,
    Limits,
    Renderer,
    SelfCorrectionEnv,
    StepResult,
    calculate,
    check_options,
    environment_class,
    episode_stats,
    parse_tool_calls,
    run_episodes,
    turn_seed,
)
from alignkit.rollout.engine import RolloutEngine, Sampling

CALL = '<tool_call>{"name": "calc", "arguments": {"expr": "37 + 48"}}</tool_call>'


class ScriptedEngine(RolloutEngine):
    """A rollout engine whose "policy" writes scripted turns: job ``j``'s k-th call answers ``script[j][k]``
    (tokenized, then the end-of-turn token); it records every call's prompts and seeds."""

    name = "scripted"
    shares_model = True

    def __init__(self, tokenizer, script: dict[int, list[str]]):
        super().__init__(None, tokenizer)
        self.script, self.turn, self.calls = script, {}, []
        self.end = tokenizer.convert_tokens_to_ids("<|end|>")

    def _generate_batch(self, jobs, job_ids, n, sampling, **kwargs):
        self.calls.append({"jobs": [ids for _, ids in jobs], "job_ids": list(job_ids), "seed": sampling.seed, "max_new_tokens": sampling.max_new_tokens})
        out = []
        for job, j in zip(jobs, job_ids):
            k = self.turn.get(j, 0)
            self.turn[j] = k + 1
            ids = self.tokenizer(self.script[j][k], add_special_tokens=False)["input_ids"] + [self.end]
            cut = ids[: sampling.max_new_tokens]
            out.append(self._sample(job, cut, len(cut) == len(ids), None))
        return out

    def update_weights(self, named_tensors):
        pass

    def update_from(self, model):
        pass


def play(tokenizer, env_class, rows, script, limits=None, **sampling):
    engine = ScriptedEngine(tokenizer, dict(enumerate(script)))
    settings = {"max_new_tokens": 200, "seed": 7, **sampling}
    trajectories = run_episodes(engine, env_class, rows, list(range(len(rows))), Sampling(**settings), limits or Limits(describe_tools=False))
    return trajectories, engine


def render(tokenizer, messages, generation_prompt=False):
    return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt), add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------------
# the interface and the registry
# ---------------------------------------------------------------------------------------------------
def test_registry_names_and_user_classes(tmp_path):
    assert {"calculator", "guess_number", "self_correction"} <= set(ENVIRONMENTS.names())
    assert environment_class("calculator") is CalculatorEnv
    with pytest.raises(ValueError, match="did you mean 'calculator'"):
        environment_class("calculater")
    (tmp_path / "my_env.py").write_text(
        "from alignkit.envs import Environment, StepResult\n"
        "class Echo(Environment):\n"
        "    def reset(self, row):\n        return [{'role': 'user', 'content': row['prompt']}]\n"
        "    def step(self, message):\n        return StepResult(reward=float(len(message)), done=True)\n"
        "def not_a_class():\n    return 3\n")
    cls = environment_class(f"{tmp_path / 'my_env.py'}:Echo")
    assert cls.__name__ == "Echo" and issubclass(cls, Environment)
    with pytest.raises(ValueError, match="expected a class with reset"):
        environment_class(f"{tmp_path / 'my_env.py'}:not_a_class")
    check_options(GuessNumberEnv, {"high": 31})
    with pytest.raises(ValueError, match="takes no option.*'hihg'.*accepted: low, high"):
        check_options(GuessNumberEnv, {"hihg": 31})


def test_step_result_feedback_follows_the_observation():
    result = StepResult(observation=[{"role": "tool", "content": "85"}], feedback="now answer")
    assert result.messages() == [{"role": "tool", "content": "85"}, {"role": "user", "content": "now answer"}]
    assert StepResult().messages() == []


# ---------------------------------------------------------------------------------------------------
# tool calls
# ---------------------------------------------------------------------------------------------------
def test_parse_tool_calls_good_several_and_malformed():
    text = (f"let me see {CALL} and\n<tool_call>\n{{\"name\": \"calc\", \"arguments\": \"{{\\\"expr\\\": \\\"2*3\\\"}}\"}}\n</tool_call>"
            '<tool_call>{"name": calc}</tool_call><tool_call>{"name": "search", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "calc", "arguments": [1]}</tool_call><tool_call>["calc"]</tool_call><tool_call>{"name": "calc"')
    calls = parse_tool_calls(text, {"calc"})
    assert [(c.name, c.arguments) for c in calls[:2]] == [("calc", {"expr": "37 + 48"}), ("calc", {"expr": "2*3"})]
    assert calls[0].valid and calls[1].valid
    errors = [c.error for c in calls[2:]]
    assert "not JSON" in errors[0]
    assert "unknown tool 'search'" in errors[1]
    assert "arguments must be an object" in errors[2]
    assert 'expected {"name"' in errors[3]
    assert "never closed" in errors[4]
    assert parse_tool_calls("no call here 85 .") == []
    assert parse_tool_calls(CALL)[0].valid  # known=None: any name


def test_calculator_is_arithmetic_only():
    assert calculate("37 + 48") == 85
    assert calculate("2 ** 10 - 3 / 2") == 1022.5
    assert calculate("-(7 - 10) * 4 // 5 =") == 2  # 12 // 5; a trailing '=' (the task's prompt) is allowed
    assert calculate("17 % 5") == 2
    for bad in ("__import__('os').system('true')", "x + 1", "(1).real", "'a' * 3", "1 < 2", "2 ** 100", "1 / 0", "10 ** 40", "1e400", "[1]"):
        with pytest.raises(ValueError):
            calculate(bad)


def test_tool_environment_answers_calls_and_malformed_calls():
    env = CalculatorEnv()
    assert env.reset({"prompt": "37 + 48 ="}) == [{"role": "user", "content": "37 + 48 ="}]
    result = env.step(CALL + CALL.replace("37 + 48", "2 * 3"))
    assert not result.done and result.reward == 0
    assert result.observation == [{"role": "tool", "name": "calc", "content": "85"}, {"role": "tool", "name": "calc", "content": "6"}]
    bad = env.step('<tool_call>{"name": "calc", "arguments": {"expr": "os.system(1)"}}</tool_call><tool_call>oops</tool_call>')
    assert [m["content"].split(":")[0] for m in bad.observation] == ["error", "error"]
    assert "malformed tool call" in bad.observation[1]["content"]
    missing = env.step('<tool_call>{"name": "calc", "arguments": {"expression": "1+1"}}</tool_call>')
    assert "missing argument(s) expr; unknown argument(s) expression" in missing.observation[0]["content"]
    final = env.step(" 85 .")
    assert final.done and final.reward == 1.0
    assert env.metrics() == {"tool_calls": 5.0, "invalid_calls": 3.0, "success": 1.0}


def test_guess_number_feedback_and_regret():
    env = GuessNumberEnv(low=0, high=15)
    env.reset({"prompt": "x", "secret": 11})
    assert env.step(" 7 .").feedback == " higher ."
    assert env.step(" 13 .").feedback == " lower ."
    assert env.step(" banana .").feedback == " say a number from 0 to 15 ."
    assert env.step(" 11 .").done
    assert env.metrics() == {"success": 1.0, "regret": 3.0, "invalid": 1.0}
    a, b = GuessNumberEnv(), GuessNumberEnv()
    assert a.secret_for({"prompt": "p"}) == b.secret_for({"prompt": "p"})  # the secret is a function of the row


def test_self_correction_rewards_follow_score():
    env = SelfCorrectionEnv(first_turn_weight=1.0, progress_bonus=2.0)
    env.reset({"prompt": "3 + 4 ="})
    first = env.step(" 6 .")
    assert first.reward == 0 and first.feedback == " check your answer ." and not first.done
    second = env.step(" 7 .")
    assert second.done and second.reward == 1 + 2.0 * (1 - 0)  # r2 + alpha (r2 - r1)
    assert env.metrics() == {"success": 1.0, "turn1_correct": 0.0, "turn2_correct": 1.0, "delta": 1.0, "fixed": 1.0, "broken": 0.0}


# ---------------------------------------------------------------------------------------------------
# trajectories: tokens, masks, rewards
# ---------------------------------------------------------------------------------------------------
def test_trajectory_is_the_conversation_with_environment_tokens_masked(tokenizer):
    [t], engine = play(tokenizer, CalculatorEnv, [{"prompt": "37 + 48 ="}], [[CALL, " 85 ."]])
    assert t.error is None and t.reward == 1.0 and t.finished and t.turns == 2
    conversation = [{"role": "user", "content": "37 + 48 ="}, {"role": "assistant", "content": CALL},
                    {"role": "tool", "name": "calc", "content": "85"}, {"role": "assistant", "content": " 85 ."}]
    assert t.messages == conversation
    # the token sequence is the chat template's rendering of the whole conversation
    assert t.prompt_ids + t.completion_ids == render(tokenizer, conversation)
    assert t.prompt_ids == render(tokenizer, conversation[:1], generation_prompt=True)
    turn1 = tokenizer(CALL, add_special_tokens=False)["input_ids"] + [engine.end]
    turn2 = tokenizer(" 85 .", add_special_tokens=False)["input_ids"] + [engine.end]
    between = render(tokenizer, conversation[:3], generation_prompt=True)[len(t.prompt_ids) + len(turn1):]
    assert tokenizer.decode(between) == "<|tool|>85<|end|><|assistant|>"
    assert t.completion_ids == turn1 + between + turn2
    assert t.completion_mask == [1] * len(turn1) + [0] * len(between) + [1] * len(turn2)
    assert t.turn_ends == [len(turn1) - 1, len(t.completion_ids) - 1]
    assert t.token_turns() == [0] * len(turn1) + [-1] * len(between) + [1] * len(turn2)
    rewards = t.token_rewards()
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0
    # the second turn was generated from the whole sequence so far, in the second call
    assert engine.calls[1]["jobs"] == [t.prompt_ids + turn1 + between]
    assert t.metrics == {"turns": 2.0, "tool_calls": 1.0, "invalid_calls": 0.0, "success": 1.0}


def test_tools_are_described_in_the_system_message_when_the_template_ignores_them(tokenizer):
    [t], _ = play(tokenizer, CalculatorEnv, [{"prompt": "1 + 1 ="}], [[" 2 ."]], Limits(max_tokens=2000))
    text = tokenizer.decode(t.prompt_ids)
    assert text.startswith("<|system|>You can call these tools:\n<tools>") and '"name": "calc"' in text and text.endswith("<|user|>1 + 1 =<|end|><|assistant|>")
    assert t.reward == 1.0


def test_all_active_episodes_share_each_generate_call_with_their_job_ids_and_turn_seeds(tokenizer):
    rows = [{"prompt": "x", "secret": s} for s in (3, 5, 9)]
    script = [[" 3 ."], [" 1 .", " 5 ."], [" 0 .", " 15 .", " 9 ."]]
    trajectories, engine = play(tokenizer, GuessNumberEnv, rows, script, Limits(max_turns=5))
    assert [c["job_ids"] for c in engine.calls] == [[0, 1, 2], [1, 2], [2]]
    assert [c["seed"] for c in engine.calls] == [turn_seed(7, k) for k in range(3)]
    assert len({turn_seed(7, k) for k in range(5)}) == 5 and turn_seed(None, 3) is None
    assert [t.metrics["regret"] for t in trajectories] == [0.0, 1.0, 2.0]
    assert [t.reward for t in trajectories] == [1.0, 1.0, 1.0]
    stats = episode_stats(trajectories)
    assert stats["env/regret"] == 1.0 and stats["env/turns"] == 2.0 and stats["env/errors"] == 0.0 and stats["env/success"] == 1.0


def test_reward_sum_or_final(tokenizer):
    rows = [{"prompt": "x", "secret": 4}]
    script = [[" 1 .", " 2 .", " 4 ."]]
    env = lambda: GuessNumberEnv(step_penalty=0.25)  # noqa: E731
    [total], _ = play(tokenizer, env, rows, script, Limits(reward="sum"))
    [final], _ = play(tokenizer, env, rows, script, Limits(reward="final"))
    assert total.reward == pytest.approx(1 - 2 * 0.25) and final.reward == 1.0
    assert total.turn_rewards == [-0.25, -0.25, 1.0]


def test_turn_and_token_limits_truncate_and_mark(tokenizer):
    rows = [{"prompt": "x", "secret": 9}]
    # out of turns: not truncated; a game not won costs the whole budget of guesses in regret
    [t], _ = play(tokenizer, GuessNumberEnv, rows, [[" 1 .", " 2 .", " 3 ."]], Limits(max_turns=2))
    assert t.turns == 2 and t.finished and t.metrics["regret"] == 6.0 and t.metrics["success"] == 0.0
    [t], _ = play(tokenizer, lambda: GuessNumberEnv(max_guesses=3), rows, [[" 1 .", " 2 .", " 3 .", " 9 ."]], Limits(max_turns=5))
    assert t.turns == 3 and t.metrics["regret"] == 3.0  # the environment's own turn limit
    # a turn cut by max_new_tokens is still graded, then the episode ends truncated
    [t], _ = play(tokenizer, CalculatorEnv, [{"prompt": "1 + 1 ="}], [[CALL]], Limits(describe_tools=False), max_new_tokens=5)
    assert t.truncated and not t.finished and t.turns == 1 and len(t.completion_ids) == 5 and t.turn_rewards == [0.0]
    # truncated_reward: a cut episode is scored as lost, on its last turn (what per-turn credit reads too)
    [t], _ = play(tokenizer, GuessNumberEnv, rows, [[" 1 .", " 9 ."]], Limits(truncated_reward=-0.6), max_new_tokens=2)
    assert t.truncated and t.reward == -0.6 and t.turn_rewards == [-0.6] and sum(t.token_rewards()) == pytest.approx(-0.6)
    # a trajectory budget: the second turn only gets what is left of max_tokens
    [full], _ = play(tokenizer, GuessNumberEnv, rows, [[" 1 .", " 9 ."]], Limits())
    budget = len(full.prompt_ids) + len(full.completion_ids) - 1
    second_turn = sum(full.completion_mask) - (full.turn_ends[0] + 1)
    [t], engine = play(tokenizer, GuessNumberEnv, rows, [[" 1 .", " 9 ."]], Limits(max_tokens=budget))
    assert t.truncated and len(t.prompt_ids) + len(t.completion_ids) == budget and engine.calls[1]["max_new_tokens"] == second_turn - 1
    # an observation that leaves no room for a policy token is not appended
    first_turn = len(full.prompt_ids) + full.turn_ends[0] + 1
    [t], engine = play(tokenizer, GuessNumberEnv, rows, [[" 1 .", " 9 ."]], Limits(max_tokens=first_turn + 3))
    assert t.truncated and t.turns == 1 and len(engine.calls) == 1 and sum(t.completion_mask) == len(t.completion_ids)


class Fragile(Environment):
    """Fails in reset for secret 1, in step on the second turn for secret 2, returns a wrong type for 3."""

    def reset(self, row):
        self.kind, self.turn = row["secret"], 0
        if self.kind == 1:
            raise RuntimeError("no such task")
        return [{"role": "user", "content": "go"}]

    def step(self, message):
        self.turn += 1
        if self.kind == 2 and self.turn == 2:
            raise KeyError("lost state")
        if self.kind == 3:
            return {"reward": 1}
        return StepResult(reward=1.0, feedback="again", done=self.turn == 2)


def test_environment_errors_are_kept_marked_and_counted(tokenizer):
    rows = [{"prompt": "p", "secret": k, "prompt_ids": [5, 6]} for k in (0, 1, 2, 3)]
    trajectories, _ = play(tokenizer, Fragile, rows, [[" a", " b"]] * 4, Limits(max_turns=3))
    ok, no_reset, bad_step, bad_type = trajectories
    assert len(trajectories) == 4
    assert ok.error is None and ok.reward == 2.0 and ok.turns == 2
    assert no_reset.error == "RuntimeError: no such task" and no_reset.reward == 0 and no_reset.completion_ids == [] and no_reset.prompt_ids == [5, 6]
    assert bad_step.error == "KeyError: 'lost state'" and bad_step.reward == 0.0 and bad_step.turns == 2
    assert bad_type.error.startswith("TypeError: step must return a StepResult") and bad_type.reward == 0.0
    assert episode_stats(trajectories)["env/errors"] == 3.0


def test_renderer_refuses_templates_that_are_not_prefix_consistent(tokenizer):
    class Forgetful:  # a template that drops earlier assistant turns once a tool answers
        chat_template = "x"
        eos_token_id = tokenizer.eos_token_id
        unk_token_id = tokenizer.unk_token_id

        def __call__(self, text, add_special_tokens=False):
            return tokenizer(text, add_special_tokens=False)

        def get_vocab(self):
            return tokenizer.get_vocab()

        def convert_tokens_to_ids(self, t):
            return tokenizer.convert_tokens_to_ids(t)

        def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=False):
            kept = [m for m in messages if not (m["role"] == "assistant" and any(x["role"] == "tool" for x in messages))]
            return "".join(f"[{m['role']}]{m['content']}" for m in kept) + ("[assistant]" if add_generation_prompt else "")

    renderer = Renderer(Forgetful(), None)
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ValueError, match="not prefix-consistent"):
        renderer.between(history, [{"role": "tool", "content": "r"}])


@pytest.mark.parametrize("env, args", [("calculator", dict(n=1000, level=3, tool_share=0.7)), ("guess_number", dict(n=800)), ("self_correction", dict(n=1000, level=1))])
def test_shipped_demonstrations_are_their_commands_output(env, args):
    """recipes/agents/data/<env>_sft.jsonl is what `python -m alignkit.envs.demos` writes (the recipes' headers)."""
    import json
    from pathlib import Path

    from alignkit.envs.demos import demonstrations

    path = Path(__file__).resolve().parents[1] / "recipes" / "agents" / "data" / f"{env}_sft.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == demonstrations(env, **args)


def test_agent_recipes_load_and_build():
    from pathlib import Path

    from alignkit.algorithms import build_algorithm
    from alignkit.config import load_recipe

    paths = sorted((Path(__file__).resolve().parents[1] / "recipes" / "agents").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"calculator_grpo", "guess_number_grpo", "self_correction"}
    for path in paths:
        recipe = load_recipe(path)
        build_algorithm(recipe)
        if recipe.algorithm == "rl":
            assert recipe.rl.env is not None and recipe.rl.env.max_tokens <= recipe.model.tiny.max_position_embeddings
