"""The leaderboard as one self-contained HTML page: inline CSS, a small table-sorting script, plots as
base64 PNG, the best value of each row (per-dataset tables) or column (aggregate) highlighted."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from offbench.bench.render import (
    PLOTS,
    aggregate_display,
    counts_display,
    early_learning_note,
    header_lines,
    hparams_display,
    improvement_display,
    per_dataset_display,
    success_display,
)
from offbench.bench.report import Tables
from offbench.bench.report_facts import Header

HTML_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 1.5rem auto; max-width: 84rem;
       color: #1d1d1f; padding: 0 1rem; line-height: 1.4; }
h1, h2, h3 { font-weight: 600; }
dl.header { display: grid; grid-template-columns: max-content auto; gap: 0.15rem 1rem; font-size: 0.9rem; }
dl.header dt { font-weight: 600; } dl.header dd { margin: 0; }
.warning { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.5rem 0.8rem; max-width: 60rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; cursor: pointer; user-select: none; }
thead th:hover { background: #eef; }
tbody tr:nth-child(even) { background: #f6f6f8; }
td.best { font-weight: 700; background: #dff3e3; }
#hparams th, #hparams td { white-space: normal; text-align: left; max-width: 40rem; font-size: 0.8rem; }
p.note { color: #555; font-size: 0.85rem; max-width: 60rem; }
img { max-width: 100%; display: block; margin: 0.5rem 0 1.5rem; }
"""
# Click a header to sort its table by that column (numbers by their leading value), again to reverse.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable thead th").forEach((th, column) => {
  th.title = "sort";
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const key = (row) => { const text = row.cells[column].textContent.trim();
                           const value = parseFloat(text.replace(/,/g, ""));
                           return isNaN(value) ? text : value; };
    const ascending = th.dataset.order !== "asc";
    th.dataset.order = ascending ? "asc" : "desc";
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a), y = key(b);
      const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return ascending ? order : -order; });
    rows.forEach((row) => body.appendChild(row));
  });
});
"""


def html_table(frame: pd.DataFrame, table_id: str, marks: pd.DataFrame | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    flags = marks.to_numpy(bool) if marks is not None else np.zeros(frame.shape, bool)
    body = "".join(
        "<tr>"
        + "".join(
            (f'<td class="best">{html.escape(str(v))}</td>' if best else f"<td>{html.escape(str(v))}</td>")
            for v, best in zip(r, f, strict=True)
        )
        + "</tr>"
        for r, f in zip(frame.itertuples(index=False), flags, strict=True)
    )
    return (
        f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def links(results_dir: Path, out_dir: Path, header: Header) -> str:
    """Links to the parquet tables (relative to the page) and to the built-in suite files."""
    from offbench.bench.suite import builtin_suites

    items = []
    for table in ("runs", "evals", "metrics"):
        files = sorted((results_dir / table).glob("*.parquet"))
        if files:
            href = html.escape(os.path.relpath(results_dir / table, out_dir)) + "/"
            items.append(f'<a href="{href}">{table}/</a> ({len(files)} parquet files)')
    suites = builtin_suites()
    for name, _ in header.suites:
        if name in suites:
            href = html.escape(os.path.relpath(suites[name].resolve(), out_dir.resolve()))
            items.append(f'suite <a href="{href}">{html.escape(name)}</a>')
    return f'<p class="note">Data: {"; ".join(items)}.</p>' if items else ""


def render_html(tables: Tables, text: dict[str, str], images: dict[str, bytes], links: str) -> str:
    def section(title: str, key: str, body: str) -> str:
        return f'<h2>{title}</h2><p class="note">{html.escape(text[key])}</p>{body}'

    facts = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in header_lines(tables.header)
    )
    note = early_learning_note(tables.header)
    warning = f'<p class="warning">{html.escape(note)}</p>' if note else ""
    parts = [f'<dl class="header">{facts}</dl>{warning}<p>{html.escape(text["intro"])}</p>{links}']
    display, marks = per_dataset_display(tables)
    parts.append(
        section("Per-dataset final scores", "per_dataset", html_table(display, "per-dataset", marks))
    )
    if len(tables.success):
        display, marks = success_display(tables)
        parts.append(section("Per-dataset success rates", "success", html_table(display, "success", marks)))
    if len(tables.aggregate):
        display, marks = aggregate_display(tables)
        parts.append(section("Aggregate", "aggregate", html_table(display, "aggregate", marks)))
        parts.append(
            section(
                "Probability of improvement",
                "improvement",
                html_table(improvement_display(tables), "improvement"),
            )
        )
    else:
        parts.append("<h2>Aggregate</h2><p>No aggregate.</p>")
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in tables.notes]
    parts.append(section("Hyper-parameters", "hparams", html_table(hparams_display(tables), "hparams")))
    parts.append(f"<h2>Runs</h2>{html_table(counts_display(tables), 'runs')}")
    figures = "".join(
        f'<h3>{html.escape(PLOTS[name])}</h3><img alt="{html.escape(PLOTS[name])}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
        for name, data in images.items()
    )
    parts.append(section("Plots", "plots", figures))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>offbench leaderboard</title><style>{HTML_STYLE}</style></head><body>"
        f"<h1>offbench leaderboard</h1>{''.join(parts)}<script>{SORT_SCRIPT}</script></body></html>\n"
    )
