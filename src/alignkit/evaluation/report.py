"""Run reports: PNG plots (matplotlib, headless) and one self-contained ``report.html``."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(runs: dict[str, list[dict[str, Any]]], keys: list[str], path: Path, title: str) -> Path | None:
    """One panel per metric key; one line per run (only records that hold the key)."""
    keys = [k for k in keys if any(k in r for records in runs.values() for r in records)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, records in runs.items():
            points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_frontier(
    series: dict[str, list[tuple]],
    path: Path,
    title: str | None = "gold reward vs KL",
    xlabel: str = "KL(policy ‖ reference), nats per completion",
    ylabel: str = "mean gold reward",
    size: tuple[float, float] = (5.5, 4),
) -> Path:
    """Gold reward (y) against KL to the reference, or another ``xlabel`` (x). Each series is a list of
    (x, reward, label) points, or (x, reward, label, reward s.e.) for error bars; labels are annotated."""
    fig, ax = plt.subplots(figsize=size)
    for name, points in series.items():
        xs, ys, _, *errors = zip(*points)
        if errors:
            ax.errorbar(xs, ys, yerr=errors[0], marker="o", capsize=2, label=name)
        else:
            ax.plot(xs, ys, marker="o", label=name)
        for x, y, label, *_ in points:
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Lays out, saves (PNG, 110 dpi) and closes ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(run_dir: Path, title: str, blocks: Iterable[tuple[str, Any]]) -> Path:
    """``blocks``: (heading, content) with content an image path, a list of row dicts (table), a
    dict (key/value table) or a string (paragraph). Images are referenced relative to ``run_dir``."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
        "img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, content in blocks:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, Path):
            parts.append(f"<img src='{html.escape(str(content.relative_to(run_dir)))}' alt='{html.escape(heading)}'>")
        elif isinstance(content, list) and content and isinstance(content[0], dict):
            columns = list(dict.fromkeys(k for row in content for k in row))
            parts.append(_table(content, columns))
        elif isinstance(content, dict):
            rows = [{"key": k, "value": v if not isinstance(v, (dict, list)) else json.dumps(v)} for k, v in content.items()]
            parts.append(_table(rows, ["key", "value"]))
        else:
            parts.append(f"<p>{html.escape(str(content))}</p>")
    parts.append("</body></html>")
    path = run_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
