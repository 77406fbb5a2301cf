"""One registry helper for every pluggable piece (losses, estimators, strategies, rollout engines,
data kinds, tasks ...): ``register`` as a decorator or a call, ``get`` with an error that lists the
allowed names and suggests the closest one, and a keyword-parameter check that names what is wrong."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind. ``kind`` is how errors call them (e.g. ``"pairwise loss"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None, **attributes: Any):
        """``@registry.register("name")`` over a function or class, or ``registry.register("name", obj)``.
        ``attributes`` are set on the entry (e.g. ``needs_reference=False``)."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            for key, value in attributes.items():
                setattr(obj, key, value)
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """The message for an unknown ``name``: the allowed names and the closest match."""
        names = sorted(self._entries)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(names)}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def check_params(fn: Callable[..., Any], label: str, n_positional: int, params: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming unknown or missing keyword parameters of ``fn`` (after its first
    ``n_positional`` parameters); ``label`` names the entry in the message (e.g. ``"pairwise loss 'dpo'"``)."""
    sig = inspect.signature(fn)
    accepted = list(sig.parameters)[n_positional:]
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise TypeError(f"{label} got unknown parameter(s) {', '.join(map(repr, unknown))}; accepted parameters: {', '.join(accepted) or '(none)'}")
    missing = [p for p in accepted if sig.parameters[p].default is inspect.Parameter.empty and p not in params]
    if missing:
        raise TypeError(f"{label} is missing required parameter(s) {', '.join(map(repr, missing))}")
