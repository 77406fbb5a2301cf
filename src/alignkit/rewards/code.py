"""A verifiable reward for code: run the row's unit tests against the completion's Python in a sandboxed subprocess.

The completion's code is its last fenced block (```` ```python ... ``` ```` or ```` ``` ... ``` ````); with
``extract="auto"`` (default) a completion without a fence is taken whole. A row carries ``tests``: a list of
Python snippets (usually ``assert`` statements) run one after the other in the namespace the code defined,
or one string holding them all. The reward is the share of tests that pass (``all_or_nothing``: 1 only
when every test passes). Each completion's outcome has a reason: ``passed``, ``failed`` (some test
failed), ``no_code``, ``syntax_error``, ``runtime_error`` (the code raised before any test), ``timeout``,
``memory`` or ``crashed``; :class:`CodeRewardSource` counts them (``reasons``).

Names: ``rl.reward: code`` (the defaults below), or ``{type: function, function: alignkit.rewards.code:unit_tests,
kwargs: {timeout: 2.0, all_or_nothing: true}}``; ``alignkit eval --data ROWS --reward code``.

The sandbox, per completion (what it protects against, and what it does not: ``docs/trajectories.md``):

* a fresh temporary working directory, removed afterwards; the code and tests travel on stdin;
* ``python -I -S`` (no user site, no ``PYTHON*`` variables, no site-packages) with a minimal environment
  (``PATH``, ``HOME``/``TMPDIR`` = the working directory, ``LANG``): none of the parent's variables (tokens,
  keys, proxies) is inherited;
* a wall-time limit (the process group is killed) and CPU-time, address-space (``RLIMIT_AS``), file-size,
  open-file and process-count limits (``resource.setrlimit``);
* no network: on Linux the child first moves into a new, empty network namespace (``unshare(CLONE_NEWNET)``,
  or ``CLONE_NEWUSER | CLONE_NEWNET`` without root), where no interface is up and every connection fails;
  in addition (and alone, where namespaces are unavailable) an audit hook refuses socket use;
* run as root, the child drops to the ``nobody`` user before the code runs (when ``nobody`` can read the
  Python standard library; otherwise it keeps its user, and ``CodeResult.isolation`` says so);
* the audit hook refuses writing, removing, renaming or changing files outside the working directory, and
  also refuses starting processes (``subprocess``, ``os.system``, ``fork``, ``exec``),
  ``ctypes`` and garbage-collector introspection (``gc.get_objects``).

It is a guard against accidents and ordinary misbehaviour of generated code (endless loops, memory
bombs, stray network calls, writing into the repository), not a security boundary against code written
to escape it: Python-level audit hooks can be bypassed by native code, and the namespaces share the
host kernel. Run untrusted code at scale in a container or VM with no network.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from .sources import RewardSource

REASONS = ("passed", "failed", "no_code", "syntax_error", "runtime_error", "timeout", "memory", "crashed")
EXTRACT_MODES = ("auto", "fenced")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (per completion, all its tests together)."""

    timeout: float = 5.0  # wall seconds
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_mb: int = 16  # largest file the code may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 64  # RLIMIT_NPROC (a backstop: starting processes is refused anyway)
    output_chars: int = 2000  # stdout/stderr kept for the result

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"code reward: timeout must be > 0 seconds, got {self.timeout}")
        if self.memory_mb < 64:
            raise ValueError(f"code reward: memory_mb must be at least 64 (the interpreter itself needs it), got {self.memory_mb}")


@dataclass
class CodeResult:
    """One completion's outcome: tests passed of ``total``, the reason, the isolation the run had
    (``isolation``: ``network=namespace`` or ``network=audit-hook``, ``user=nobody`` or ``user=unchanged``),
    and the captured output (truncated)."""

    passed: int
    total: int
    reason: str
    detail: str = ""
    isolation: str = ""
    output: str = ""

    def reward(self, all_or_nothing: bool = False) -> float:
        if self.total == 0:
            return 0.0
        if all_or_nothing:
            return float(self.passed == self.total)
        return self.passed / self.total


def extract_code(completion: Any, mode: str = "auto") -> str | None:
    """The Python code of a completion: its last fenced block, or (``auto``) the whole text when it has no
    fence. A message list is read through its last assistant turn. None when there is no code."""
    if mode not in EXTRACT_MODES:
        raise ValueError(f"code reward: unknown extract mode {mode!r}; allowed: {', '.join(EXTRACT_MODES)}")
    if isinstance(completion, list):
        turns = [m.get("content") or "" for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
        completion = turns[-1] if turns else ""
    text = str(completion)
    blocks = _FENCE.findall(text)
    if blocks:
        code = blocks[-1]
    elif mode == "auto":
        code = text
    else:
        return None
    return code if code.strip() else None


def normalise_tests(tests: Any) -> list[str]:
    """A row's ``tests`` as a list of snippets (a string is one snippet); anything else is refused."""
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, (list, tuple)) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise ValueError(f"code reward: 'tests' must be a non-empty list of Python snippets (or one string), got {tests!r:.80}")
    return list(tests)


# The program the child runs (written into its working directory; stdlib only).
_HARNESS = r'''
import json, os, sys

def _isolate(spec):
    import resource
    mb = 1024 * 1024
    for name, value in (("RLIMIT_AS", spec["memory_mb"] * mb), ("RLIMIT_FSIZE", spec["file_mb"] * mb),
                        ("RLIMIT_NOFILE", spec["open_files"]), ("RLIMIT_NPROC", spec["processes"]),
                        ("RLIMIT_CPU", spec["cpu_seconds"]), ("RLIMIT_CORE", 0)):
        limit = getattr(resource, name, None)
        if limit is not None:
            try:
                resource.setrlimit(limit, (value, value))
            except (ValueError, OSError):
                pass
    network = "audit-hook"
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            newuser, newnet = 0x10000000, 0x40000000
            if libc.unshare(newnet) == 0 or libc.unshare(newuser | newnet) == 0:
                network = "namespace"
        except (OSError, AttributeError):
            pass
    user = "unchanged"
    if hasattr(os, "getuid") and os.getuid() == 0 and _others_can_read(os.path.dirname(os.__file__)):
        import pwd
        try:
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            user = "nobody"
        except (KeyError, OSError):
            pass
    return "network=%s user=%s" % (network, user)

def _others_can_read(path):
    # the nobody user can import the standard library only if every directory above it is searchable
    import stat
    path = os.path.abspath(path)
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent

_BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "pty.")
_BLOCKED = {"os.system", "os.fork", "os.forkpty", "os.startfile", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
            "os.kill", "os.killpg"}

_HERE = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove": 1, "os.rename": 2, "os.replace": 2, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
                "os.symlink": 2, "os.link": 2, "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1, "shutil.move": 2, "shutil.copyfile": 2}

def _inside(path):
    if isinstance(path, int):
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real == _HERE or real.startswith(_HERE + os.sep)

def _hook(event, args):
    if event in _BLOCKED or event.startswith(_BLOCKED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and len(args) >= 3 and isinstance(args[2], int) and args[2] & _WRITE_FLAGS and args[0] is not None and not _inside(args[0]):
        raise PermissionError(f"sandbox: writing {args[0]!r} outside the working directory is not allowed")
    if event in _PATH_EVENTS:
        for path in args[: _PATH_EVENTS[event]]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the working directory is not allowed")
    if event == "import" and args and str(args[0]).split(".")[0] in ("ctypes", "_ctypes", "_posixsubprocess", "socket", "_socket"):
        raise PermissionError(f"sandbox: import of {args[0]} is not allowed")

def main():
    spec = json.loads(sys.stdin.read())
    report = os.fdopen(os.dup(1), "w")
    nonce = spec["nonce"]
    devnull = os.open("output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    network = _isolate(spec)
    def say(*parts):
        report.write(" ".join([nonce, *map(str, parts)]) + "\n")
        report.flush()
    say("isolation", network)
    sys.addaudithook(_hook)
    namespace = {"__name__": "__main__"}
    say("load", "start", "-")
    try:
        exec(compile(spec["code"], "solution.py", "exec"), namespace)
    except MemoryError:
        say("load", "memory", "MemoryError")
        return
    except BaseException as e:
        say("load", "runtime_error", type(e).__name__ + ": " + " ".join(str(e).split())[:200])
        return
    say("load", "ok", "-")
    for i, test in enumerate(spec["tests"]):
        try:
            exec(compile(test, "test_%d" % i, "exec"), namespace)
        except MemoryError:
            say("test", i, "memory", "MemoryError")
            continue
        except BaseException as e:
            say("test", i, "fail", type(e).__name__ + ": " + " ".join(str(e).split())[:200])
            continue
        say("test", i, "pass", "-")

main()
'''


def _minimal_env(workdir: str) -> dict[str, str]:
    """The child's whole environment: nothing of the parent's (no tokens, keys or proxies)."""
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0"}


def run_tests(code: str | None, tests: Sequence[str], limits: SandboxLimits = SandboxLimits()) -> CodeResult:
    """Run ``tests`` against ``code`` in one sandboxed subprocess (see the module docstring)."""
    tests = normalise_tests(tests)
    total = len(tests)
    if code is None:
        return CodeResult(0, total, "no_code")
    try:
        compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
        return CodeResult(0, total, "syntax_error", f"{type(e).__name__}: {e}")
    workdir = tempfile.mkdtemp(prefix="alignkit-code-")
    try:
        os.chmod(workdir, 0o777)  # the child may drop to the nobody user
        harness = os.path.join(workdir, "harness.py")
        with open(harness, "w", encoding="utf-8") as f:
            f.write(_HARNESS)
        nonce = secrets.token_hex(16)
        spec = {"code": code, "tests": tests, "nonce": nonce, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                "open_files": limits.open_files, "processes": limits.processes, "cpu_seconds": int(limits.timeout) + 2}
        child = subprocess.Popen([sys.executable, "-I", "-S", harness], cwd=workdir, env=_minimal_env(workdir), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True)
        timed_out = False
        try:
            stdout, _ = child.communicate(json.dumps(spec), timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(child)
            stdout, _ = child.communicate()
        output = _read_output(os.path.join(workdir, "output.txt"), limits.output_chars)
        return _result(stdout, nonce, total, timed_out, child.returncode, output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()


def _read_output(path: str, limit: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def _result(stdout: str, nonce: str, total: int, timed_out: bool, returncode: int | None, output: str) -> CodeResult:
    """Read the harness's nonce-tagged report lines (lines without the nonce are ignored)."""
    passed, network, loaded, failure, memory = 0, "", None, "", False
    for line in (stdout or "").splitlines():
        tag, _, rest = line.partition(" ")
        if tag != nonce:
            continue
        what, _, rest = rest.partition(" ")
        if what == "isolation":
            network = rest
        elif what == "load":
            loaded, _, detail = rest.partition(" ")
            failure = detail if loaded not in ("start", "ok") else failure
        elif what == "test":
            _, status, detail = (rest.split(" ", 2) + ["", ""])[:3]
            passed += status == "pass"
            memory |= status == "memory"
            failure = failure or ("" if status == "pass" else detail)
    passed = min(passed, total)
    if timed_out:
        reason = "timeout"
    elif loaded is None:
        reason, failure = "crashed", f"the sandbox stopped before running the code (exit status {returncode})"
    elif loaded == "start":
        reason, failure = "crashed", f"the code ended the process while it was loaded (exit status {returncode})"
    elif loaded != "ok":
        reason = loaded  # runtime_error or memory while the code itself ran
    elif passed == total:
        reason = "passed"
    elif memory:
        reason = "memory"
    elif returncode != 0:
        reason, failure = "crashed", failure or f"exit status {returncode}"
    else:
        reason = "failed"
    return CodeResult(passed, total, reason, "" if reason == "passed" else failure, network, output)


def score_code(completions: Sequence[Any], tests: Sequence[Any], limits: SandboxLimits = SandboxLimits(), workers: int = 4,
               extract: str = "auto") -> list[CodeResult]:
    """Every completion run against its row's tests, at most ``workers`` sandboxes at a time."""
    if len(tests) != len(completions):
        raise ValueError(f"code reward: {len(completions)} completions but {len(tests)} test lists (one per completion)")
    if workers < 1:
        raise ValueError(f"code reward: workers must be >= 1, got {workers}")
    jobs = [(extract_code(c, extract), normalise_tests(t)) for c, t in zip(completions, tests)]
    if workers == 1 or len(jobs) <= 1:
        return [run_tests(code, t, limits) for code, t in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], limits), jobs))


def unit_tests(prompts: Sequence[Any], completions: Sequence[Any], tests: Sequence[Any], timeout: float = 5.0, memory_mb: int = 512,
               workers: int = 4, all_or_nothing: bool = False, extract: str = "auto", **context: Any) -> list[float]:
    """A batched reward function (``fn(prompts, completions, tests=...) -> list[float]``): the share of each
    row's ``tests`` that the completion's code passes in the sandbox (1/0 with ``all_or_nothing``)."""
    results = score_code(completions, tests, SandboxLimits(timeout=timeout, memory_mb=memory_mb), workers, extract)
    return [r.reward(all_or_nothing) for r in results]


@dataclass
class CodeRewardSource(RewardSource):
    """``rl.reward: code``: :func:`unit_tests` as a reward source, reading each row's ``tests`` field;
    ``reasons`` counts the outcomes of every completion it scored, ``last`` holds the last batch's results."""

    timeout: float = 5.0
    memory_mb: int = 512
    workers: int = 4
    all_or_nothing: bool = False
    extract: str = "auto"
    name: str = "code"
    reasons: Counter = field(default_factory=Counter)
    last: list[CodeResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limits = SandboxLimits(timeout=self.timeout, memory_mb=self.memory_mb)
        extract_code("", self.extract)  # validates the mode

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], *, progress: bool = False, tests: Sequence[Any] | None = None,
              **context: Any) -> Tensor:
        if tests is None:
            raise ValueError("the code reward runs each row's unit tests: give the prompt rows a 'tests' field "
                             "(a list of Python snippets such as \"assert add(2, 3) == 5\")")
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        self.last = score_code(completions, tests, self.limits, self.workers, self.extract)
        self.reasons.update(r.reason for r in self.last)
        return torch.tensor([r.reward(self.all_or_nothing) for r in self.last], dtype=torch.float32)
