"""The sandboxed code reward (alignkit.rewards.code): unit tests of a row run against a completion's Python
in a subprocess with time and memory limits, no network, a minimal environment and a temporary directory."""

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from alignkit.rewards import build_reward_source
from alignkit.rewards.code import CodeRewardSource, SandboxLimits, extract_code, run_tests, score_code, unit_tests

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 0) == 10"]
GOOD = "def add(a, b):\n    return a + b\n"
LIMITS = SandboxLimits(timeout=3.0, memory_mb=256)


def fenced(code):
    return f"Here is the function:\n```python\n{code}```\nDone."


def test_correct_wrong_and_partial_code():
    assert run_tests(GOOD, TESTS, LIMITS).reward() == 1.0
    wrong = run_tests("def add(a, b):\n    return a * b\n", TESTS, LIMITS)  # 6 != 5, -1 != 0, 0 != 10
    assert (wrong.reward(), wrong.reason, wrong.passed) == (0.0, "failed", 0)
    partial = run_tests("def add(a, b):\n    return 5 if a == 2 else a + b if a < 0 else 0\n", TESTS, LIMITS)  # tests 1 and 2 pass
    assert partial.passed == 2 and partial.reward() == pytest.approx(2 / 3) and partial.reward(all_or_nothing=True) == 0.0
    assert "AssertionError" in partial.detail


def test_share_of_tests_passed():
    # a - b: 2 - 3 = -1 (fail), -1 - 1 = -2 (fail), 10 - 0 = 10 (pass): one of three
    assert unit_tests(["p"], ["def add(a, b):\n    return a - b\n"], [TESTS], timeout=3.0) == [pytest.approx(1 / 3)]
    assert unit_tests(["p"], ["def add(a, b):\n    return a - b\n"], [TESTS], timeout=3.0, all_or_nothing=True) == [0.0]


def test_extraction():
    assert extract_code(fenced(GOOD)) == GOOD
    assert extract_code("```\nx = 1\n```\nthen\n```py\ny = 2\n```") == "y = 2\n"  # the last block
    assert extract_code("no fence here", mode="fenced") is None
    assert extract_code("x = 1") == "x = 1"
    assert extract_code([{"role": "user", "content": "q"}, {"role": "assistant", "content": fenced(GOOD)}]) == GOOD
    with pytest.raises(ValueError, match="unknown extract mode 'strict'; allowed: auto, fenced"):
        extract_code("x", mode="strict")


def test_infinite_loop_is_stopped_at_the_time_limit():
    start = time.monotonic()
    result = run_tests("def add(a, b):\n    while True:\n        pass\n", TESTS, SandboxLimits(timeout=1.0))
    elapsed = time.monotonic() - start
    assert (result.reward(), result.reason) == (0.0, "timeout")
    assert 1.0 <= elapsed < 4.0


def test_memory_bomb_scores_zero():
    top = run_tests("blob = bytearray(8 * 1024 ** 3)\n" + GOOD, TESTS, LIMITS)
    assert (top.reward(), top.reason) == (0.0, "memory")
    inside = run_tests("def add(a, b):\n    blob = [0] * (10 ** 9)\n    return a + b\n", TESTS, LIMITS)
    assert (inside.reward(), inside.reason) == (0.0, "memory")


def test_network_attempt_fails():
    """A server listens on the parent's loopback; the sandboxed code's connection never reaches it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    waiter = threading.Thread(target=accept)
    waiter.start()
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n" + GOOD
    result = run_tests(code, TESTS, LIMITS)
    waiter.join()
    server.close()
    assert result.reward() == 0.0 and result.reason == "runtime_error" and not accepted
    assert result.isolation.split()[0] in ("network=namespace", "network=audit-hook")


def test_syntax_error_scores_zero_with_its_reason_counted():
    source = CodeRewardSource(timeout=3.0, workers=2)
    rewards = source.score(["p"] * 3, [fenced("def add(a, b) return a + b\n"), fenced(GOOD), "   "], tests=[TESTS] * 3)
    assert rewards.tolist() == [0.0, 1.0, 0.0]
    assert [r.reason for r in source.last] == ["syntax_error", "passed", "no_code"]
    assert "SyntaxError" in source.last[0].detail
    source.score(["p"], ["def add(a, b) return"], tests=[TESTS])
    assert source.reasons == {"syntax_error": 2, "passed": 1, "no_code": 1}


def test_no_parent_environment_no_writes_outside_and_the_directory_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_TEST_SECRET", "hunter2")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    env = run_tests("import os\nprint(os.getcwd())\nprint(sorted(os.environ))\n" + GOOD,
                    ["import os\nassert 'ALIGNKIT_TEST_SECRET' not in os.environ and 'HTTPS_PROXY' not in os.environ"], LIMITS)
    assert env.reason == "passed", env.detail
    workdir = env.output.splitlines()[0]
    assert workdir.startswith("/") and not Path(workdir).exists()  # removed afterwards
    assert set(json.loads(env.output.splitlines()[1].replace("'", '"'))) <= {"HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "TMPDIR"}
    target = tmp_path / "written.txt"
    outside = run_tests(f"open({str(target)!r}, 'w').write('x')\n" + GOOD, TESTS, LIMITS)
    assert outside.reason == "runtime_error" and "outside the working directory" in outside.detail and not target.exists()
    inside = run_tests("open('scratch.txt', 'w').write('x')\n" + GOOD, ["assert open('scratch.txt').read() == 'x'"], LIMITS)
    assert inside.reason == "passed"
    spawn = run_tests("import subprocess\nsubprocess.run(['true'])\n" + GOOD, TESTS, LIMITS)
    assert spawn.reason == "runtime_error" and "not allowed" in spawn.detail


def test_parallel_batch_respects_the_worker_limit():
    """Four one-second runs: two workers take two waves (>= 2 s), not four (serial) and not one."""
    sleepy = "import time\ntime.sleep(1.0)\n" + GOOD
    start = time.monotonic()
    results = score_code([sleepy, sleepy, sleepy, "import time\ntime.sleep(1.0)\ndef add(a, b):\n    return 0\n"], [TESTS] * 4, LIMITS, workers=2)
    elapsed = time.monotonic() - start
    assert [r.reason for r in results] == ["passed", "passed", "passed", "failed"]  # in input order
    assert 2.0 <= elapsed < 3.9


def test_named_source_and_function_spec():
    source = build_reward_source("code")
    assert isinstance(source, CodeRewardSource)
    assert source.score(["p", "p"], [fenced(GOOD), "x = 1"], tests=[TESTS, TESTS]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="the code reward runs each row's unit tests: give the prompt rows a 'tests' field"):
        source.score(["p"], [GOOD])
    spec = {"type": "function", "function": "alignkit.rewards.code:unit_tests", "kwargs": {"timeout": 2.0, "all_or_nothing": True}}
    partial = "def add(a, b):\n    return 5\n"
    assert build_reward_source(spec).score(["p"], [partial], tests=[TESTS]).tolist() == [0.0]
    with pytest.raises(ValueError, match="'tests' must be a non-empty list of Python snippets"):
        score_code([GOOD], [[]])


@pytest.mark.slow
def test_code_grpo_recipe_computes_rewards(tmp_path):
    """The recipe runs as written (one step): the tiny model writes no Python, every reward is computed (0)."""
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    out = tmp_path / "code-grpo"
    train(load_recipe(ROOT / "recipes" / "trajectory" / "code_grpo.yaml", [
        f"train.output_dir={out}", "train.max_steps=1", "train.batch_size=2", "rl.sampling.group_size=2", "rl.sampling.max_new_tokens=8",
        "train.progress=false"]))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["reward"] == 0.0 for s in samples)
    rows = [json.loads(line) for line in (ROOT / "recipes" / "data" / "code_tasks.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} <= {r["prompt"] for r in rows}
