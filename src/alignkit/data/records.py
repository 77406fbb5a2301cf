"""Reading feedback data and checking it row by row.

Sources: JSON Lines (``.jsonl``, ``.jsonl.gz``), a JSON array (``.json``), Parquet, CSV, a dataset saved
with ``datasets.Dataset.save_to_disk`` (a folder), a dataset folder or Hub dataset read by
``datasets.load_dataset`` (:mod:`alignkit.data.sources`), or a list of dicts from Python.

Before a row is checked, the source's columns are renamed (``ReadOptions.columns``) and the row is
converted from its public format (Anthropic HH, UltraFeedback, ShareGPT, Alpaca, ...; see
:mod:`alignkit.data.formats`) into alignkit's fields.

Each row is checked against a record kind (:mod:`alignkit.data.kinds` lists them: ``sft``, ``pair``,
``unpaired``, ``ranked``, ``prompt``, ``ratings``, ``steps``; adding one is one registration). A row's
fields outside its kind's schema are kept as metadata (``record["meta"]``) and travel to the batch.

Every problem is reported as a :class:`DataError` whose message names the file, the row (1-based; the
line number for JSON Lines) and the field. Nothing is dropped silently: rows are skipped only when the
user asks (``skip_invalid=True``), and then :class:`SkipSummary` says how many and why. Exact duplicate
rows are counted (``SkipSummary.duplicates``) and kept, or left out with ``duplicates="drop"``.

Text files are UTF-8; a leading byte-order mark (Windows editors, Excel) is accepted. A line that is not
UTF-8 is reported with its line number (its row for CSV).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError, SkipSummary, check_text, number_field
from .formats import FormatReader
from .kinds import RECORD_KINDS, check_row, infer_kind, kind_names
from .sources import DatasetSpec, ReadOptions, check_columns, dataset_spec, is_saved_dataset, load_hub_rows, pick_split, rename_columns, score_margin

__all__ = ["DUPLICATES", "DataError", "ReadOptions", "Row", "SkipSummary", "check_row", "check_text", "infer_kind", "load_records",
           "number_field", "read_rows", "write_jsonl"]


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
def read_rows(source: str | Path | list[dict], options: ReadOptions | None = None) -> tuple[str, list[Row]]:
    """Read every row of ``source``; returns (name of the source for messages, rows). ``options`` picks
    the split of a dataset with several (without them a saved ``DatasetDict`` is refused, naming its splits)."""
    if isinstance(source, list):
        return "<list>", [Row(i + 1, dict(r)) for i, r in enumerate(source)]
    path = Path(source)
    name = str(path)
    if not path.exists():
        spec = dataset_spec(str(source))
        if spec is None:
            raise DataError(name, None, None, "no such file or folder")
        name, data = load_hub_rows(spec, options or ReadOptions())
        return name, [Row(i + 1, r) for i, r in enumerate(data)]
    if path.is_dir():
        if not is_saved_dataset(path):
            name, data = load_hub_rows(DatasetSpec(str(path), None, local=True), options or ReadOptions())
            return name, [Row(i + 1, r) for i, r in enumerate(data)]
        return name, _read_saved_dataset(path, options)
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
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            line = _decode(raw, path, number)
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


BOM = b"\xef\xbb\xbf"


def _decode(raw: bytes, path: Path, number: int, csv_line: bool = False) -> str:
    """One line as text; a line that is not UTF-8 is a DataError naming it (JSON Lines: the row is the
    line number; CSV: the file's line number, the header being line 1)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); save the file as UTF-8"
        if csv_line:
            raise DataError(str(path), None, None, f"line {number}: {problem}") from None
        raise DataError(str(path), number, None, problem) from None


def _read_json(path: Path) -> list[Row]:
    raw = path.read_bytes()
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(str(path), None, None, f"line {line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as UTF-8") from None
    try:
        data = json.loads(text)
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

    if path.stat().st_size == 0:
        raise DataError(str(path), None, None, "is an empty file (0 bytes), not a Parquet file")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise DataError(str(path), None, None, f"unreadable Parquet file ({e})") from None
    return [Row(i + 1, r) for i, r in enumerate(table.to_pylist())]


def _csv_lines(path: Path):
    """The file's text lines, checked as UTF-8 one by one (a bad line is named by its line number)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            yield _decode(raw, path, number, csv_line=True)


def _read_csv(path: Path) -> list[Row]:
    rows = []
    reader = csv.DictReader(_csv_lines(path))
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


def _read_saved_dataset(path: Path, options: ReadOptions | None = None) -> list[Row]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any failure means it is not a saved dataset
        raise DataError(str(path), None, None, f"not a saved dataset folder ({e})") from None
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        splits = list(ds.keys())
        example = f" (e.g. {path / splits[0]})" if splits else ""
        ds = ds[pick_split(splits, options or ReadOptions(), str(path), f", or give one split's folder{example}")]
    return [Row(i + 1, dict(r)) for i, r in enumerate(ds)]


# --------------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------------
def load_records(
    source: str | Path | list[dict],
    kind: str = "auto",
    skip_invalid: bool = False,
    duplicates: str = "keep",
    read: ReadOptions | None = None,
    **options: Any,
) -> tuple[list[dict[str, Any]], SkipSummary]:
    """Read and check every row of ``source``.

    ``kind="auto"`` takes the kind from the first row's fields. With ``skip_invalid=False`` (the default)
    the first bad row raises :class:`DataError`; with ``True`` bad rows are left out and counted in the
    returned :class:`SkipSummary`. Each record keeps its row number under ``"_row"`` and the row's fields
    outside the kind's schema under ``"meta"``. ``options`` go to the kind's check (e.g. ``attributes``).
    Rows identical to an earlier valid row (every field equal) are counted in ``summary.duplicates`` and
    kept (``duplicates="keep"``) or left out (``"drop"``).

    ``read`` (:class:`~alignkit.data.sources.ReadOptions`; default: format ``auto``, no renames) says how
    the source is read: its split, column renames, its format, whether extra fields are kept as metadata
    and whether score columns give the margin. Every row is converted to alignkit's fields before its check.
    """
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates: got {duplicates!r}; allowed: {', '.join(DUPLICATES)}")
    read = read or ReadOptions()
    if kind != "auto" and kind not in RECORD_KINDS:
        raise ValueError(f"{RECORD_KINDS.unknown(kind).replace('; allowed: ', '; allowed: auto, ')}")
    name, rows = read_rows(source, read)
    if not rows:
        raise DataError(name, None, None, "has no rows")
    if read.columns:
        check_columns(read.columns, rows[0].data, name)
    reader = FormatReader(name, read.format, kind)
    summary = SkipSummary(name, total=len(rows))
    summary.duplicates_dropped = duplicates == "drop"
    records, seen = [], {}
    for row in rows:
        try:
            data = reader.convert(row.number, rename_columns(row.data, read.columns))
            if read.score_margin:
                data = score_margin(data, name, row.number)
            if kind == "auto":
                kind = reader.kind = infer_kind(data)
            record = check_row(data, kind, name, row.number, **options)
        except DataError as e:
            if not skip_invalid:
                raise
            summary.add(e)
            continue
        key = _row_key(row.data)
        if key in seen:
            summary.add_duplicate(row.number, seen[key])
            if duplicates == "drop":
                continue
        else:
            seen[key] = row.number
        if read.extra_columns == "drop":
            record = _without_extras(record, kind)
        record["_row"] = row.number
        records.append(record)
    if not records:
        raise DataError(name, None, None, f"every row was invalid:\n{summary}")
    return records, summary


DUPLICATES = ("keep", "drop")


def _without_extras(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """``data.extra_columns: drop``: the record without its metadata (fields outside the kind's schema)."""
    spec = RECORD_KINDS.get(kind)
    if spec.meta_at_top:
        return {k: v for k, v in record.items() if k in spec.fields}
    return {k: v for k, v in record.items() if k != "meta"}


def _row_key(data: dict[str, Any]) -> str:
    """A row's identity for duplicate counting: every field and value (field order ignored)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, default=repr)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
