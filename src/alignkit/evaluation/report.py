"""Run reports: PNG plots (matplotlib, headless) and one self-contained ``report.html`` whose tables explain
their columns (:mod:`.glossary`)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .glossary import explain  # noqa: E402


def plot_curves(runs: dict[str, list[dict[str, Any]]], keys: list[str], path: Path, title: str) -> Path | None:
    """One panel per metric, one metric per axis: a key and its held-out ``eval/`` twin share a panel (solid:
    training batches, dashed: held-out data); one line per run and a legend in every panel. Axes are labelled
    with the metric and its units (:func:`alignkit.evaluation.glossary.axis_label`) and x is the optimizer step.
    Only records that hold the key are drawn."""
    from .glossary import axis_label, panel_title

    keys = [k for k in keys if any(k in r for records in runs.values() for r in records)]
    if not keys:
        return None
    panels: list[list[str]] = []
    for key in keys:
        base = key[len("eval/") :] if key.startswith("eval/") else key
        for panel in panels:
            if panel[0] in (base, f"eval/{base}"):
                panel.append(key)
                break
        else:
            panels.append([key])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        base = panel[0][len("eval/") :] if panel[0].startswith("eval/") else panel[0]
        for name, records in runs.items():
            for key in panel:
                points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
                if not points:
                    continue
                xs, ys = zip(*points)
                split = "held-out" if key.startswith("eval/") else "training"
                label = f"{name}, {split}" if len(runs) > 1 else split
                ax.plot(xs, ys, label=label, linestyle="--" if key.startswith("eval/") else "-", marker="." if len(xs) < 30 else None)
        ax.set_title(panel_title(base), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(axis_label(base))
        ax.grid(alpha=0.3)
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


def _cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.4g}"
    elif isinstance(v, (dict, list)):
        v = json.dumps(v, ensure_ascii=False, default=str)
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th title='{html.escape(explain(c) or '')}'>{html.escape(c)}</th>" for c in columns)
    body = ["<tr>" + "".join(f"<td>{_cell(row.get(c, ''))}</td>" for c in columns) + "</tr>" for row in rows]
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _legend(columns: list[str]) -> str:
    """One line per column: what it is, its units, which way is better (:mod:`.glossary`)."""
    items = "".join(f"<li><b>{html.escape(c)}</b>: {html.escape(explain(c) or 'no description')}</li>" for c in columns)
    return f"<ul class='legend'>{items}</ul>"


def column_explanations(content: Any) -> dict[str, str | None]:
    """The columns a report block shows and their explanations (None: the glossary has none)."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        columns = list(dict.fromkeys(k for row in content for k in row))
    elif isinstance(content, dict):
        columns = ["key", "value", "meaning", *content]
    else:
        return {}
    return {c: explain(c) for c in columns}


def write_report(run_dir: Path, title: str, blocks: Iterable[tuple[str, Any]], filename: str = "report.html") -> Path:
    """``blocks``: (heading, content) with content an image path, a list of row dicts (table), a
    dict (key/value table) or a string (paragraph). Images are referenced relative to ``run_dir``. Every
    table explains its columns: a row table is followed by one line per column, a key/value table has a
    ``meaning`` column (:mod:`alignkit.evaluation.glossary`). Written to ``run_dir / filename``."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
        "ul.legend{font-size:12px;color:#444;margin:.2em 0 1em}"
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
            parts.append(_legend(columns))
        elif isinstance(content, dict):
            rows = [{"key": k, "value": v, "meaning": explain(k) or ""} for k, v in content.items()]
            parts.append(_table(rows, ["key", "value", "meaning"]))
            parts.append(_legend(["key", "value", "meaning"]))
        else:
            parts.append(f"<p>{html.escape(str(content))}</p>")
    parts.append("</body></html>")
    path = run_dir / filename
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
