"""Rows of dicts to Markdown and CSV: the one table writer of node-report, node-bench and the family reports."""
from __future__ import annotations

import csv
from pathlib import Path


def fmt(v, spec=".4f", none="–") -> str:
    """A number formatted by `spec`, or `none` when missing."""
    return none if v is None else format(v, spec)


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def md_table(header, rows) -> list[str]:
    """A Markdown table as lines (with a blank line after); cells are any values, `|` escaped."""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return (["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""])


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows of dicts as CSV; the columns are every key in the order first seen."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def column_table(rows: list[dict], columns) -> list[str]:
    """A Markdown table of `rows` by `columns`: (key, header, format) with format a str.format pattern, a callable,
    "mib" (bytes shown in MiB) or None (the value as is); a missing value is "-"."""
    def cell(row, key, form):
        value = row.get(key)
        if value is None:
            return "-"
        if form == "mib":
            return f"{value / 2**20:.2f}"
        if form is None:
            return value
        return form(value) if callable(form) else form.format(value)

    return md_table([h for _, h, _ in columns], [[cell(r, k, f) for k, _, f in columns] for r in rows])


def write_table(out: Path, name: str, rows: list[dict], columns, header: str) -> str:
    """`out/name.csv` (every field) and `out/name.md` (header, then the `columns` table); returns the Markdown."""
    write_csv(Path(out) / f"{name}.csv", rows)
    text = header + "\n\n" + "\n".join(column_table(rows, columns)).rstrip() + "\n"
    (Path(out) / f"{name}.md").write_text(text)
    return text
