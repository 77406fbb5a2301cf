"""Where rows come from, and how they are read: files, saved datasets, dataset folders, Hub names.

A source is

* a file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet``, ``.csv``), or a folder saved with
  ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` gives the split :attr:`ReadOptions.split`);
* a dataset folder that ``datasets.load_dataset(folder)`` reads (data files, optionally a README with
  ``configs:``), written ``folder`` or ``folder:config``;
* a Hub dataset ``org/name`` or ``org/name:config`` (not an existing path), loaded through
  ``datasets.load_dataset(name, config, split=...)``: the Hub cache serves it offline once downloaded.

:class:`ReadOptions` is what the recipe's ``data`` section says about reading (``format``, ``columns``,
``extra_columns``, the split, ``score_margin``); :func:`read_options` builds it from a ``DataConfig``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

SPLIT_PREFERENCES = {"train": ("train",), "eval": ("test", "validation", "valid", "dev")}
EXTRA_COLUMNS = ("keep", "drop")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gz", ".txt", ".tsv", ".arrow")
HUB_NAME = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<config>[\w.-]+))?$")


@dataclass
class ReadOptions:
    """How one source is read (``docs/data.md``).

    ``label``: the recipe key that names the source (``data.train``), for messages; ``split``: the split of
    a dataset with several (None: ``train`` for the train role, else ``test``/``validation``, or the only
    split); ``role``: ``train`` or ``eval`` (which default split to look for); ``format``: a name in
    :data:`~alignkit.data.formats.FORMATS` or ``auto``; ``columns``: ``{alignkit field: source column}``
    renames applied before the format is detected; ``extra_columns``: ``keep`` (as metadata) or ``drop``;
    ``score_margin``: a pair's ``margin`` = ``score_chosen - score_rejected`` where the row has no margin."""

    label: str | None = None
    split: str | None = None
    role: str = "train"
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    extra_columns: str = "keep"
    score_margin: bool = False

    def __post_init__(self) -> None:
        if self.extra_columns not in EXTRA_COLUMNS:
            raise ValueError(f"data.extra_columns: got {self.extra_columns!r}; allowed: {', '.join(EXTRA_COLUMNS)}")
        if self.format != "auto":
            from .formats import get_format

            get_format(self.format)


def read_options(data: Any, role: str = "train") -> ReadOptions:
    """The :class:`ReadOptions` of the recipe's ``data`` section (a ``DataConfig``) for ``data.train``
    (``role="train"``) or ``data.eval`` (``"eval"``)."""
    return ReadOptions(
        label=f"data.{role}",
        split=getattr(data, f"{role}_split", None),
        role=role,
        format=getattr(data, "format", "auto"),
        columns=dict(getattr(data, "columns", None) or {}),
        extra_columns=getattr(data, "extra_columns", "keep"),
        score_margin=bool(getattr(data, "score_margin", False)),
    )


# --------------------------------------------------------------------------------------------------
# what a source string names
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """A source read with ``datasets.load_dataset``: a local folder or a Hub name, and its config."""

    path: str
    config: str | None
    local: bool

    @property
    def text(self) -> str:
        return self.path + (f":{self.config}" if self.config else "")


def dataset_spec(source: str) -> DatasetSpec | None:
    """The :class:`DatasetSpec` of a source that is not a file: ``folder:config`` (an existing folder)
    or ``org/name[:config]`` (not an existing path, no data-file suffix); None otherwise."""
    if ":" in source and not Path(source).exists():
        folder, config = source.rsplit(":", 1)
        if folder and config and Path(folder).is_dir():
            return DatasetSpec(folder, config, local=True)
    match = HUB_NAME.match(source)
    if match is None or Path(source).exists() or source.lower().endswith(DATA_SUFFIXES):
        return None
    if Path(match["name"].split("/")[0]).is_dir():
        return None  # a missing file in an existing folder, not a Hub name
    return DatasetSpec(match["name"], match["config"], local=False)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or \
        os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# --------------------------------------------------------------------------------------------------
# reading through datasets
# --------------------------------------------------------------------------------------------------
def pick_split(splits: list[str], options: ReadOptions, where: str, hint: str = "") -> str:
    """The split to read: ``options.split`` (which must exist), else the role's usual names, else the
    only split; a one-line :class:`DataError` lists the splits otherwise (``hint`` appended)."""
    key = f"data.{options.role}_split"
    if options.split is not None:
        if options.split not in splits:
            raise DataError(where, None, None, f"has no split {options.split!r} ({key}); splits: {', '.join(splits) or '(none)'}")
        return options.split
    for name in SPLIT_PREFERENCES.get(options.role, ()):
        if name in splits:
            return name
    if len(splits) == 1:
        return splits[0]
    raise DataError(where, None, None, f"has splits {', '.join(splits) or '(none)'}: choose one with {key}{hint}")


def load_hub_rows(spec: DatasetSpec, options: ReadOptions) -> tuple[str, list[dict[str, Any]]]:
    """``(name for messages, rows)`` of a dataset folder or Hub dataset, one split of it."""
    import datasets

    label = options.label or "source"
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        try:
            splits = datasets.get_dataset_split_names(spec.path, spec.config)
        except Exception as e:  # noqa: BLE001 - datasets raises many types (connection, missing config, bad files)
            raise DataError(label, None, None, _load_problem(spec, e)) from None
        split = pick_split(list(splits), options, f"{label}: {spec.text}")
        try:
            ds = datasets.load_dataset(spec.path, spec.config, split=split)
        except Exception as e:  # noqa: BLE001 - as above
            raise DataError(label, None, None, _load_problem(spec, e)) from None
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    return f"{spec.text}[{split}]", [jsonable(dict(r)) for r in ds]


def jsonable(value: Any) -> Any:
    """Values as JSON has them: Arrow's dates and times (inferred from ISO strings by ``load_dataset``)
    become ISO strings again (a timestamp at midnight without a zone as its date), so that metadata
    stays JSON."""
    import datetime

    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime.datetime) and value.tzinfo is None and value.time() == datetime.time():
        return value.date().isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return value


def _load_problem(spec: DatasetSpec, error: BaseException) -> str:
    if spec.local:
        return f"{spec.text}: datasets.load_dataset could not read this folder ({_first_line(error)})"
    if offline():
        return (f"{spec.text!r} is not a local file or folder, and the Hub dataset could not be loaded offline "
                f"(HF_HUB_OFFLINE=1): {_first_line(error)}")
    return f"{spec.text!r} is not a local file or folder, and the Hub dataset could not be loaded: {_first_line(error)}"


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


# --------------------------------------------------------------------------------------------------
# columns
# --------------------------------------------------------------------------------------------------
def check_columns(columns: dict[str, str], first: dict[str, Any], source: str) -> None:
    """Every source column that ``columns`` names exists in the first row, and no column would be
    overwritten by a rename; a one-line :class:`DataError` names the file and the column."""
    present = ", ".join(sorted(first)) or "none"
    for target, column in columns.items():
        if column not in first:
            raise DataError(source, None, None, f"data.columns: column {column!r} (for {target}) is not in the data; columns: {present}")
    sources = set(columns.values())
    for target, column in columns.items():
        if target in first and target not in sources and target != column:
            raise DataError(source, None, None, f"data.columns: renaming {column!r} to {target!r} would overwrite the data's own column "
                                                f"{target!r}; map that one elsewhere too (e.g. data.columns.{target}_original={target})")


def rename_columns(data: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """``data`` with each mapped column under its alignkit name (renames apply at once: swaps work)."""
    if not columns:
        return data
    moved = {target: data[column] for target, column in columns.items() if column in data}
    kept = {k: v for k, v in data.items() if k not in columns.values() and k not in moved}
    return {**kept, **moved}


def score_margin(data: dict[str, Any], source: str, row: int) -> dict[str, Any]:
    """``margin = score_chosen - score_rejected`` for a pair row with both scores and no margin."""
    from .errors import number_field

    if data.get("margin") is not None or data.get("score_chosen") is None or data.get("score_rejected") is None:
        return data
    chosen = number_field(data["score_chosen"], source, row, "score_chosen")
    rejected = number_field(data["score_rejected"], source, row, "score_rejected")
    if chosen < rejected:
        raise DataError(source, row, "score_rejected", f"{rejected:g} is above score_chosen {chosen:g}: chosen and rejected look swapped "
                                                       "(data.score_margin needs score_chosen >= score_rejected)")
    return {**data, "margin": chosen - rejected}
