"""Reading feedback data and checking it row by row.

Sources: JSON Lines (``.jsonl``), a JSON array (``.json``), Parquet, CSV, a dataset saved with
``datasets.Dataset.save_to_disk`` (a folder), or a list of dicts from Python.

Each row is checked against a record kind (:mod:`alignkit.data.kinds` lists them: ``sft``, ``pair``,
``unpaired``, ``ranked``, ``prompt``, ``ratings``, ``steps``; adding one is one registration). A row's
fields outside its kind's schema are kept as metadata (``record["meta"]``) and travel to the batch.

Every problem is reported as a :class:`DataError` whose message names the file, the row (1-based; the
line number for JSON Lines) and the field. Nothing is dropped silently: rows are skipped only when the
user asks (``skip_invalid=True``), and then :class:`SkipSummary` says how many and why.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError, SkipSummary, check_text, number_field
from .kinds import RECORD_KINDS, check_row, infer_kind, kind_names

__all__ = ["DataError", "Row", "SkipSummary", "check_row", "check_text", "infer_kind", "load_records", "number_field", "read_rows", "write_jsonl"]


def __getattr__(name: str) -> Any:
    # ``KINDS`` / ``KIND_FIELDS`` are read from the kind registry (kinds registered later included)
    if name == "KINDS":
        return tuple(kind_names())
    if name == "KIND_FIELDS":
        return {n: k.required for n, k in RECORD_KINDS.items()}
    raise AttributeError(name)


@dataclass
class Row:
    """One row of a source: its 1-based number (line number for JSON Lines) and its fields."""

    number: int
    data: dict[str, Any]


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
def load_records(
    source: str | Path | list[dict],
    kind: str = "auto",
    skip_invalid: bool = False,
    **options: Any,
) -> tuple[list[dict[str, Any]], SkipSummary]:
    """Read and check every row of ``source``.

    ``kind="auto"`` takes the kind from the first row's fields. With ``skip_invalid=False`` (the default)
    the first bad row raises :class:`DataError`; with ``True`` bad rows are left out and counted in the
    returned :class:`SkipSummary`. Each record keeps its row number under ``"_row"`` and the row's fields
    outside the kind's schema under ``"meta"``. ``options`` go to the kind's check (e.g. ``attributes``).
    """
    name, rows = read_rows(source)
    if kind != "auto" and kind not in RECORD_KINDS:
        raise ValueError(f"{RECORD_KINDS.unknown(kind).replace('; allowed: ', '; allowed: auto, ')}")
    if not rows:
        raise DataError(name, None, None, "has no rows")
    if kind == "auto":
        kind = infer_kind(rows[0].data)
    summary = SkipSummary(name, total=len(rows))
    records = []
    for row in rows:
        try:
            record = check_row(row.data, kind, name, row.number, **options)
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
