"""Markdown tables, as the reports, summaries and the crackseg-data tool print them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(
    header: Sequence[Any], rows: Iterable[Sequence[Any]], min_width: int | None = None
) -> list[str]:
    """A markdown table's lines. With ``min_width``, each column is padded to its widest
    cell (``min_width`` at least), to be read as text too; without, cells are not padded
    (wide tables, long cells). A ``|`` or a line break in a cell is escaped, so no value
    breaks the table."""
    cells = [[_cell_text(c) for c in header]] + [[_cell_text(c) for c in row] for row in rows]
    if min_width is None:
        lines = [cells[0], ["---"] * len(header), *cells[1:]]
    else:
        widths = [max(min_width, *(len(row[i]) for row in cells)) for i in range(len(header))]
        padded = [[c.ljust(w) for c, w in zip(row, widths, strict=True)] for row in cells]
        lines = [padded[0], ["-" * w for w in widths], *padded[1:]]
    return ["| " + " | ".join(row) + " |" for row in lines]


def _cell_text(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
