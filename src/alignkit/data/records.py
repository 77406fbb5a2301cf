"""Reading feedback data and checking it row by row.

Sources: JSON Lines (``.jsonl``), a JSON array (``.json``), Parquet, CSV, a dataset saved with
``datasets.Dataset.save_to_disk`` (a folder), or a list of dicts from Python.

Record kinds and their fields (a prompt or completion is a string, or a list of chat messages
``{"role": ..., "content": ...}`` rendered with the tokenizer's chat template):

============  ======================================================================
kind          fields
============  ======================================================================
``sft``       ``prompt`` + ``completion``, or ``messages`` (assistant turns are trained)
``pair``      ``prompt`` + ``chosen`` + ``rejected``
``unpaired``  ``prompt`` + ``completion`` + ``label`` (bool: thumbs up / down)
``ranked``    ``prompt`` + ``completions`` (list) + ``scores`` or ``ranks`` (list, same length)
``prompt``    ``prompt`` only
============  ======================================================================

Every problem is reported as a :class:`DataError` whose message names the file, the row (1-based; the
line number for JSON Lines) and the field. Nothing is dropped silently: rows are skipped only when the
user asks (``skip_invalid=True``), and then :class:`SkipSummary` says how many and why.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "pair": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "ranked": ("prompt", "completions"),
    "prompt": ("prompt",),
}
KINDS = tuple(KIND_FIELDS)


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


@dataclass
class Row:
    """One row of a source: its 1-based number (line number for JSON Lines) and its fields."""

    number: int
    data: dict[str, Any]


@dataclass
class SkipSummary:
    """Rows left out on the user's request (``skip_invalid``), by reason."""

    source: str
    total: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, int] = field(default_factory=dict)

    def add(self, error: DataError) -> None:
        key = f"{error.field or 'row'}: {error.problem}"
        self.skipped[key] += 1
        self.examples.setdefault(key, error.row or 0)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        if not self.skipped:
            return f"{self.source}: {self.total} rows, none skipped"
        lines = [f"{self.source}: skipped {self.n_skipped} of {self.total} rows"]
        for key, count in self.skipped.most_common():
            lines.append(f"  {count} x {key} (first at row {self.examples[key]})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def read_rows(source: str | Path | list[dict]) -> tuple[str, list[Row]]:
    """Read every row of ``source``; returns (name of the source for messages, rows)."""
    if isinstance(source, list):
        return "<list>", [Row(i + 1, dict(r)) for i, r in enumerate(source)]
    path = Path(source)
    name = str(path)
    if not path.exists():
        raise DataError(name, None, None, "no such file or folder")
    if path.is_dir():
        return name, _read_saved_dataset(path)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".jsonl.gz"):
        return name, _read_jsonl(path)
    if suffix == ".json":
        return name, _read_json(path)
    if suffix == ".parquet":
        return name, _read_parquet(path)
    if suffix == ".csv":
        return name, _read_csv(path)
    raise DataError(name, None, None, f"unknown file type '{path.suffix}' (use .jsonl, .json, .parquet, .csv or a saved dataset folder)")


def _read_jsonl(path: Path) -> list[Row]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), number, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(data, dict):
                raise DataError(str(path), number, None, f"expected a JSON object, got {type(data).__name__}")
            rows.append(Row(number, data))
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        # A .json file may hold JSON Lines too.
        try:
            return _read_jsonl(path)
        except DataError:
            raise DataError(str(path), e.lineno, None, f"malformed JSON ({e.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(str(path), None, None, "expected a JSON array of objects or JSON Lines")
    rows = []
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise DataError(str(path), i, None, f"expected a JSON object, got {type(item).__name__}")
        rows.append(Row(i, item))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise DataError(str(path), None, None, f"unreadable Parquet file ({e})") from None
    return [Row(i + 1, r) for i, r in enumerate(table.to_pylist())]


def _read_csv(path: Path) -> list[Row]:
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for i, data in enumerate(reader, start=1):
            # A CSV cell holding a JSON list (messages, completions, scores) is decoded.
            for key, value in data.items():
                if isinstance(value, str) and value[:1] in "[{" and value[-1:] in "]}":
                    try:
                        data[key] = json.loads(value)
                    except json.JSONDecodeError:
                        pass
            rows.append(Row(i, data))
    return rows


def _read_saved_dataset(path: Path) -> list[Row]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any failure means it is not a saved dataset
        raise DataError(str(path), None, None, f"not a saved dataset folder ({e})") from None
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
        raise DataError(str(path), None, None, f"a DatasetDict: name one split folder ({', '.join(ds.keys())})")
    return [Row(i + 1, dict(r)) for i, r in enumerate(ds)]


# --------------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------------
def infer_kind(data: dict[str, Any]) -> str:
    """The record kind a row's fields describe."""
    if "messages" in data:
        return "sft"
    if "chosen" in data or "rejected" in data:
        return "pair"
    if "completions" in data:
        return "ranked"
    if "label" in data:
        return "unpaired"
    if "completion" in data:
        return "sft"
    return "prompt"


def _check_text(value: Any, source: str, row: int, name: str, allow_empty: bool = False) -> None:
    """A field holding text: a string, or a list of chat messages."""
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
            if not isinstance(message["content"], str):
                raise DataError(source, row, f"{name}[{j}].content", f"expected a string, got {type(message['content']).__name__}")
        if not allow_empty and not any(m["content"].strip() for m in value):
            raise DataError(source, row, name, "every message is empty")
        return
    got = "null" if value is None else type(value).__name__
    raise DataError(source, row, name, f"expected a string or a list of messages, got {got}")


def check_row(data: dict[str, Any], kind: str, source: str, row: int) -> dict[str, Any]:
    """Check one row against ``kind``; returns the fields alignkit uses. Raises :class:`DataError`."""
    if kind == "sft" and "messages" in data:
        _check_text(data["messages"], source, row, "messages")
        if not any(m["role"] == "assistant" for m in data["messages"]):
            raise DataError(source, row, "messages", "has no assistant turn to train on")
        return {"messages": data["messages"]}
    for name in KIND_FIELDS[kind]:
        if name not in data or data[name] is None:
            present = ", ".join(sorted(data)) or "none"
            raise DataError(source, row, name, f"missing (fields present: {present})")
    out: dict[str, Any] = {}
    if kind == "prompt":  # other fields (e.g. a reference answer) travel to the reward function
        out.update({k: v for k, v in data.items() if k != "prompt"})
    _check_text(data["prompt"], source, row, "prompt", allow_empty=kind != "prompt")
    out["prompt"] = data["prompt"]
    if kind in ("sft", "unpaired"):
        _check_text(data["completion"], source, row, "completion")
        out["completion"] = data["completion"]
    if kind == "unpaired":
        label = data["label"]
        if isinstance(label, str) and label.lower() in ("true", "false", "1", "0"):
            label = label.lower() in ("true", "1")
        if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
            label = bool(label)
        if not isinstance(label, bool):
            raise DataError(source, row, "label", f"expected true/false, got {data['label']!r}")
        out["label"] = label
    if kind == "pair":
        _check_text(data["chosen"], source, row, "chosen")
        _check_text(data["rejected"], source, row, "rejected")
        if data["chosen"] == data["rejected"]:
            raise DataError(source, row, "rejected", "is identical to 'chosen' (the pair carries no preference)")
        out["chosen"], out["rejected"] = data["chosen"], data["rejected"]
        if "margin" in data and data["margin"] is not None:
            out["margin"] = number_field(data["margin"], source, row, "margin")
    if kind == "ranked":
        completions = data["completions"]
        if not isinstance(completions, list) or len(completions) < 2:
            raise DataError(source, row, "completions", "expected a list of at least two completions")
        for j, c in enumerate(completions):
            _check_text(c, source, row, f"completions[{j}]")
        key = "scores" if "scores" in data else "ranks" if "ranks" in data else None
        if key is None:
            raise DataError(source, row, "scores", "missing (a ranked row needs 'scores' or 'ranks')")
        values = data[key]
        if not isinstance(values, list) or len(values) != len(completions):
            raise DataError(source, row, key, f"expected a list of {len(completions)} numbers, one per completion")
        values = [number_field(v, source, row, f"{key}[{j}]") for j, v in enumerate(values)]
        # Normalise to scores (higher is better).
        out["completions"] = completions
        out["scores"] = values if key == "scores" else [-v for v in values]
    return out


def number_field(value: Any, source: str, row: int, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(source, row, name, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise DataError(source, row, name, f"expected a number, got {value!r}") from None
    if number != number:
        raise DataError(source, row, name, "is NaN")
    return number


def load_records(
    source: str | Path | list[dict],
    kind: str = "auto",
    skip_invalid: bool = False,
) -> tuple[list[dict[str, Any]], SkipSummary]:
    """Read and check every row of ``source``.

    ``kind="auto"`` takes the kind from the first row's fields. With ``skip_invalid=False`` (the default)
    the first bad row raises :class:`DataError`; with ``True`` bad rows are left out and counted in the
    returned :class:`SkipSummary`. Each record keeps its row number under ``"_row"``.
    """
    name, rows = read_rows(source)
    if kind != "auto" and kind not in KIND_FIELDS:
        raise ValueError(f"unknown data kind '{kind}'; allowed: auto, {', '.join(KINDS)}")
    if not rows:
        raise DataError(name, None, None, "has no rows")
    if kind == "auto":
        kind = infer_kind(rows[0].data)
    summary = SkipSummary(name, total=len(rows))
    records = []
    for row in rows:
        try:
            record = check_row(row.data, kind, name, row.number)
        except DataError as e:
            if not skip_invalid:
                raise
            summary.add(e)
            continue
        record["_row"] = row.number
        records.append(record)
    if not records:
        raise DataError(name, None, None, f"every row was invalid:\n{summary}")
    return records, summary


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
