"""The one loader of a user's own Python code: ``module:function`` and ``path/to/file.py:function`` specs.

alignkit runs user code only from a spec the user names (a reward function in a recipe, on the command
line or in Python); nothing is imported because it happens to lie in a folder. Two forms:

* ``pkg.module:function`` — imported with the current working directory first on the import path, as
  ``python -m`` does, so a ``my_rewards.py`` next to the recipe resolves as ``my_rewards:score``;
* ``./my_rewards.py:score``, ``../lib/r.py:score``, ``/abs/r.py:score``, ``rewards/r.py:score`` — the
  file is loaded by its path (any spec whose module part ends in ``.py``), once per resolved path, as a
  module named after the file; its folder is on the import path while it runs, as for ``python file.py``.

Every failure is one :class:`UserCodeError` line (a ``ValueError``) that names the spec and what is
wrong: a missing file, a module not found (with the folder searched), a missing attribute (with the
callables the module defines and the closest name), something that is not callable, or the module raising
while it is imported (the exception type, its message and the ``file:line`` it came from) — never a
traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import sysconfig
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FILE_MODULES: dict[Path, ModuleType] = {}


class UserCodeError(ValueError):
    """User code that cannot be loaded; the one-line message names the spec and what is wrong."""


def split_spec(spec: str) -> tuple[str, str] | None:
    """``(target, attribute)`` of a ``module:function`` or ``file.py:function`` spec, else None."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    target, attribute = spec.rsplit(":", 1)
    if not _IDENTIFIER.match(attribute):
        return None
    if is_file_target(target) or _MODULE.match(target):
        return target, attribute
    return None


def is_code_spec(spec: Any) -> bool:
    """Whether ``spec`` has the form of a user-code spec (``module:function`` or ``file.py:function``)."""
    return split_spec(spec) is not None


def is_file_target(target: str) -> bool:
    """A spec's module part that names a file (it ends in ``.py``) rather than an importable module."""
    return target.endswith(".py") and len(target) > 3


def load_object(spec: str, what: str = "user code") -> Callable[..., Any]:
    """The callable that ``spec`` names, loaded once; ``what`` starts every error (e.g. ``reward function``)."""
    parts = split_spec(spec)
    if parts is None:
        raise UserCodeError(f"{what} '{spec}': expected 'package.module:function' or 'path/to/file.py:function'")
    target, attribute = parts
    if is_file_target(target):
        module, where = _load_file(spec, target, what), target
    else:
        module, where = _import_module(spec, target, what), target
    if not hasattr(module, attribute):
        raise UserCodeError(f"{what} '{spec}': {where} has no '{attribute}'{_close_hint(module, attribute)}; "
                            f"callables it defines: {shown_names(defined_callables(module))}")
    obj = getattr(module, attribute)
    if not callable(obj) or isinstance(obj, ModuleType):
        shown = " ".join(repr(obj).split())
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise UserCodeError(f"{what} '{spec}': '{attribute}' in {where} is {type(obj).__name__} {shown}, not callable")
    return obj


def defined_callables(module: ModuleType) -> list[str]:
    """Public functions and classes that ``module`` itself defines (not ones it imports), sorted."""
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, ModuleType) or not callable(obj):
            continue
        if getattr(obj, "__module__", None) == module.__name__:
            out.append(name)
    return sorted(out)


def shown_names(names: list[str], limit: int = 12) -> str:
    """``names`` joined for a one-line error: at most ``limit`` of them, then how many more."""
    if not names:
        return "(none)"
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _close_hint(module: ModuleType, attribute: str) -> str:
    names = [n for n, obj in vars(module).items() if not n.startswith("_") and callable(obj) and not isinstance(obj, ModuleType)]
    close = difflib.get_close_matches(attribute, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------------------------------
# the two ways in
# --------------------------------------------------------------------------------------------------
def _import_module(spec: str, name: str, what: str) -> ModuleType:
    """``import name`` with the working directory first on ``sys.path`` (as ``python -m``)."""
    cwd = os.getcwd()
    with _on_path(cwd):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            missing = e.name or ""
            if missing and (name == missing or name.startswith(missing + ".")):
                raise UserCodeError(f"{what} '{spec}': no module named '{missing}' (searched the working directory {cwd} "
                                    "and the installed packages; a file can be named as path/to/file.py:function)") from None
            raise UserCodeError(f"{what} '{spec}': importing {name} raised {describe_exception(e)}") from None
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a user module may raise anything while it is imported
            raise UserCodeError(f"{what} '{spec}': importing {name} raised {describe_exception(e)}") from None


def _load_file(spec: str, target: str, what: str) -> ModuleType:
    """The module of a ``.py`` file, executed once per resolved path."""
    path = Path(target).expanduser()
    resolved = path.resolve()
    if resolved in _FILE_MODULES:
        return _FILE_MODULES[resolved]
    if not resolved.exists():
        raise UserCodeError(f"{what} '{spec}': file {target} not found (looked for {resolved})")
    if not resolved.is_file():
        raise UserCodeError(f"{what} '{spec}': {target} is a folder, not a Python file")
    name = module_name_for(resolved)
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise UserCodeError(f"{what} '{spec}': {target} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up by name
    with _on_path(str(resolved.parent)):
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a user file may raise anything while it runs
            sys.modules.pop(name, None)
            raise UserCodeError(f"{what} '{spec}': loading {target} raised {describe_exception(e, resolved)}") from None
    _FILE_MODULES[resolved] = module
    return module


def module_name_for(path: Path) -> str:
    """A module name for a file loaded by path: its stem plus a short hash of the full path, so two
    ``rewards.py`` files in different folders are two modules."""
    stem = re.sub(r"\W", "_", path.stem) or "module"
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:8]
    return f"alignkit_user_{stem}_{digest}"


class _on_path:
    """``folder`` first on ``sys.path`` while the block runs; afterwards it stays at the end (so a
    function that imports a sibling module later still finds it) unless it was there before."""

    def __init__(self, folder: str):
        self.folder = folder

    def __enter__(self) -> None:
        self.was_there = self.folder in sys.path
        sys.path.insert(0, self.folder)

    def __exit__(self, *exc: Any) -> None:
        try:
            sys.path.remove(self.folder)
        except ValueError:
            pass
        if not self.was_there and self.folder not in sys.path:
            sys.path.append(self.folder)


# --------------------------------------------------------------------------------------------------
# describing an exception in one line
# --------------------------------------------------------------------------------------------------
def describe_exception(error: BaseException, user_file: Path | None = None) -> str:
    """``Type: message at file:line``: the line is the deepest frame in the user's code (the file itself,
    else the deepest frame outside Python's and the installed packages' folders)."""
    message = " ".join(str(error).split())
    if isinstance(error, SyntaxError) and error.filename:
        message = " ".join((error.msg or "").split())
        return f"{type(error).__name__}: {message[:200]} at {error.filename}:{error.lineno}"
    where = _user_frame(error, user_file)
    text = f"{type(error).__name__}: {message[:200]}" if message else type(error).__name__
    return f"{text} at {where}" if where else text


def _user_frame(error: BaseException, user_file: Path | None) -> str | None:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<")]
    if user_file is not None:
        own = [f for f in frames if Path(f.filename).resolve() == user_file]
        if own:
            return f"{own[-1].filename}:{own[-1].lineno}"
    library = {str(Path(p).resolve()) for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_paths().get(key))}
    outside = [f for f in frames if not any(str(Path(f.filename).resolve()).startswith(root) for root in library)]
    chosen = (outside or frames or [None])[-1]
    return f"{chosen.filename}:{chosen.lineno}" if chosen is not None else None
