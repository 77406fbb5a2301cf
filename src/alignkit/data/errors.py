"""Errors of the data layer and the field checks every record kind shares.

Every problem is a :class:`DataError` whose one-line message names the source, the row (1-based; the line
number for JSON Lines) and the field. :class:`SkipSummary` counts rows left out on the user's request.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A problem with one row of a data source; the message names source, row and field."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        where = source
        if row is not None:
            where += f": row {row}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")


class RowTooLong(DataError):
    """A row longer than ``max_length`` under the ``error``/``skip`` policies."""


@dataclass
class SkipSummary:
    """Rows left out on the user's request (``skip_invalid``), by reason."""

    source: str
    total: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # rows identical to an earlier valid row (kept unless duplicates_dropped)
    first_duplicate: tuple[int, int] | None = None  # (row, the earlier row it repeats)
    duplicates_dropped: bool = False

    def add(self, error: DataError) -> None:
        key = f"{error.field or 'row'}: {error.problem}"
        self.skipped[key] += 1
        self.examples.setdefault(key, error.row or 0)

    def add_duplicate(self, row: int, first: int) -> None:
        self.duplicates += 1
        if self.first_duplicate is None:
            self.first_duplicate = (row, first)

    @property
    def n_skipped(self) -> int:
        """Rows left out: invalid ones (``skip_invalid``) and dropped duplicates."""
        return sum(self.skipped.values()) + (self.duplicates if self.duplicates_dropped else 0)

    def duplicates_line(self) -> str | None:
        """One line about exact duplicate rows, or None when there are none."""
        if not self.duplicates:
            return None
        row, first = self.first_duplicate or (0, 0)
        action = "dropped (data.duplicates: drop)" if self.duplicates_dropped else "kept (data.duplicates: drop leaves them out)"
        return f"{self.source}: {self.duplicates} exact duplicate row(s) of {self.total}, {action}; first: row {row} repeats row {first}"

    def __str__(self) -> str:
        dup = self.duplicates_line()
        if not self.skipped:
            return dup or f"{self.source}: {self.total} rows, none skipped"
        lines = [f"{self.source}: skipped {sum(self.skipped.values())} of {self.total} rows"]
        for key, count in self.skipped.most_common():
            lines.append(f"  {count} x {key} (first at row {self.examples[key]})")
        if dup:
            lines.append(dup)
        return "\n".join(lines)


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def check_messages(value: Any, source: str, row: int, name: str, allow_empty: bool = False) -> None:
    """A field holding a conversation: a non-empty list of ``{"role", "content"}`` messages whose roles are
    among :data:`CHAT_ROLES` (a string here is refused: ``messages`` is a list, not text)."""
    if not isinstance(value, list):
        got = "null" if value is None else f"a {type(value).__name__}" if not isinstance(value, str) else "a string"
        raise DataError(source, row, name, f"expected a list of chat messages [{{role, content}}, ...], got {got}")
    check_text(value, source, row, name, allow_empty=allow_empty)


def check_text(value: Any, source: str, row: int, name: str, allow_empty: bool = False) -> None:
    """A field holding text: a string, or a list of chat messages (roles among :data:`CHAT_ROLES`)."""
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(source, row, name, "is empty")
        return
    if isinstance(value, list):
        if not value:
            raise DataError(source, row, name, "is an empty list of messages")
        for j, message in enumerate(value):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DataError(source, row, f"{name}[{j}]", "each message needs 'role' and 'content'")
            role = message["role"]
            if not isinstance(role, str):
                raise DataError(source, row, f"{name}[{j}].role", f"expected a string ({', '.join(CHAT_ROLES)}), got {role!r}")
            if role not in CHAT_ROLES:
                raise DataError(source, row, f"{name}[{j}].role", f"unknown role {role!r}; allowed: {', '.join(CHAT_ROLES)}")
            if not isinstance(message["content"], str):
                raise DataError(source, row, f"{name}[{j}].content", f"expected a string, got {type(message['content']).__name__}")
        if not allow_empty and not any(m["content"].strip() for m in value):
            raise DataError(source, row, name, "every message is empty")
        return
    got = "null" if value is None else type(value).__name__
    raise DataError(source, row, name, f"expected a string or a list of messages, got {got}")


def number_field(value: Any, source: str, row: int, name: str) -> float:
    """A finite number (a numeric string is read); NaN, infinities and booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(source, row, name, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise DataError(source, row, name, f"expected a number, got {value!r}") from None
    if number != number:
        raise DataError(source, row, name, "is NaN")
    if number in (float("inf"), float("-inf")):
        raise DataError(source, row, name, f"is {'-' if number < 0 else ''}infinite (a score, margin or label must be finite)")
    return number
