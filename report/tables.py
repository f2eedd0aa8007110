"""One table formatter: numbers rounded for reading, as plain text or GitHub markdown.

Rules: NaN prints as ``nan`` (``-`` in text tables, empty in markdown); floats of 100 or
more get thousands separators and no decimals, smaller ones four significant digits, very
large or very small ones three in scientific notation; a column can carry its own format
(a ``str.format`` pattern such as ``"{:+.0%}"`` or a function).  Rows are a DataFrame or a
list of dicts; ``cols`` picks and orders the columns (default: all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = ["fmt", "markdown_table", "text_table"]

Format = str | Callable[[Any], str]


def fmt(v: Any, nan: str = "-") -> str:
    """A cell: numbers rounded for reading, ``nan`` for NaN, anything else as ``str``."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return nan
        if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _rows(rows: pd.DataFrame | Sequence[Mapping[str, Any]],
          cols: Sequence[str] | None) -> tuple[list[str], list[list[Any]]]:
    if isinstance(rows, pd.DataFrame):
        names = [str(c) for c in rows.columns] if cols is None else list(cols)
        data = rows[names].itertuples(index=False) if names else []
        return names, [list(r) for r in data]
    if cols is None:
        names = []
        for r in rows:
            names += [k for k in r if k not in names]
    else:
        names = list(cols)
    return names, [[r.get(c, math.nan) for c in names] for r in rows]


def _cells(names: list[str], data: list[list[Any]], formats: Mapping[str, Format] | None,
           nan: str) -> list[list[str]]:
    out = []
    for row in data:
        cells = []
        for c, v in zip(names, row, strict=True):
            f = (formats or {}).get(c)
            if f is None or (isinstance(v, float) and math.isnan(v)):
                cells.append(fmt(v, nan))
            else:
                cells.append(f(v) if callable(f) else f.format(v))
        out.append(cells)
    return out


def text_table(rows: pd.DataFrame | Sequence[Mapping[str, Any]],
               cols: Sequence[str] | None = None, *,
               formats: Mapping[str, Format] | None = None) -> str:
    """Aligned plain text for a terminal: a header line, then one line per row; text
    columns align left, numbers right."""
    names, data = _rows(rows, cols)
    cells = _cells(names, data, formats, "-")
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(names)]
    left = [all(isinstance(r[i], str) for r in data) and bool(data) for i in range(len(names))]

    def line(items: Sequence[str]) -> str:
        return "  ".join(x.ljust(w) if lf else x.rjust(w)
                         for x, w, lf in zip(items, widths, left, strict=True)).rstrip()

    return "\n".join([line(names)] + [line(r) for r in cells])


def markdown_table(rows: pd.DataFrame | Sequence[Mapping[str, Any]],
                   cols: Sequence[str] | None = None, *,
                   formats: Mapping[str, Format] | None = None,
                   headers: Mapping[str, str] | None = None, max_rows: int = 200) -> str:
    """A GitHub markdown table; ``headers`` renames columns for display, rows past
    ``max_rows`` are counted in a note."""
    names, data = _rows(rows, cols)
    cells = _cells(names, data[:max_rows], formats, "")
    shown = [(headers or {}).get(c, c) for c in names]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(x.replace("|", "\\|") for x in r) + " |" for r in cells]
    if len(data) > max_rows:
        lines.append(f"\n({len(data) - max_rows} more rows in the CSV)")
    return "\n".join(lines)
