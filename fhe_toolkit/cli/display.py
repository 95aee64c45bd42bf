"""Tables on the terminal, or as CSV / JSON for scripts.

Names and numbers are never cut. A table wider than the terminal first drops the columns its
command marks optional, then folds long text cells over several lines; if the numbers alone
still do not fit, each row is printed as a block of ``column: value`` lines. Output that is not
a terminal (a pipe, a file) is never folded: it is as wide as the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import click
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

SCORE_FORMAT = "{:+.4f}"
FORMATS = ("table", "csv", "json")
MISSING = "—"
FOLD_WIDTH = 10
"""Text columns fold down to this width before rows are shown as blocks."""
LABEL_WIDTH = 20
"""Row labels (model names) fold only past this width: they are what a reader looks for."""
HEADER_FOLD_WIDTH = 6
"""Headers fold down to this width (or their column's widest number)."""

format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people; csv or json (full precision, every column) for scripts.",
)


def _cell(value: object, float_format: str) -> str:
    if isinstance(value, float):
        return MISSING if math.isnan(value) else float_format.format(value)
    if value is None or value is pd.NaT:
        return MISSING
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _rows(frame: pd.DataFrame, float_format: str) -> list[tuple[str, list[str]]]:
    return [
        (
            " / ".join(map(str, index)) if isinstance(index, tuple) else str(index),
            [_cell(v, float_format) for v in row.tolist()],
        )
        for index, row in frame.iterrows()
    ]


def frame_table(
    frame: pd.DataFrame, title: str, index_name: str | None = None, float_format: str = SCORE_FORMAT
) -> Table:
    """A rich Table of a DataFrame, index first, floats as ``float_format`` (signed scores).

    Number columns are never narrower than their numbers; text folds (never ends in "…").
    """
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    rows = _rows(frame, float_format)
    longest_label = max((len(label) for label, _ in rows), default=1)
    table.add_column(
        index_name or str(frame.index.name or ""),
        style="bold",
        overflow="fold",
        min_width=min(longest_label, LABEL_WIDTH),
    )
    for position, column in enumerate(frame.columns):
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        # A number column is as wide as its widest number, so only its header can fold.
        widest = max((len(cells[position]) for _, cells in rows), default=1)
        table.add_column(
            str(column),
            justify="right" if numeric else "left",
            overflow="fold",
            min_width=widest if numeric else None,
        )
    for label, cells in rows:
        table.add_row(label, *cells)
    return table


def print_frame(
    frame: pd.DataFrame,
    title: str,
    console: Console,
    float_format: str = SCORE_FORMAT,
    *,
    output_format: str = "table",
    optional: Sequence[str] = (),
) -> None:
    """Show ``frame``: as a table that fits the terminal (dropping ``optional`` columns first
    when it is too wide), or as CSV / JSON (every column, full precision) on stdout."""
    if output_format == "csv":
        click.echo(frame.to_csv(), nl=False)
        return
    if output_format == "json":
        records = frame.reset_index().to_json(orient="records", date_format="iso", indent=1)
        click.echo(records)
        return
    if not console.is_terminal:
        # Piped or redirected: nothing to fit, so nothing is folded or dropped.
        wide = Console(width=10_000, file=console.file, color_system=None)
        for line in _unpadded(wide, frame_table(frame, title, float_format=float_format)):
            console.file.write(line + "\n")
        return
    width = console.width
    shown = frame
    for column in optional:
        if _minimum_width(shown, float_format) <= width:
            break
        shown = shown.drop(columns=[column], errors="ignore")
    if _minimum_width(shown, float_format) <= width:
        console.print(frame_table(shown, title, float_format=float_format))
        return
    console.print(title, style="bold", highlight=False)
    for label, cells in _rows(shown, float_format):
        console.print(label, style="bold", highlight=False)
        for column, cell in zip(shown.columns, cells, strict=True):
            console.print(f"  {column}: {cell}", soft_wrap=True, highlight=False, markup=False)


def _minimum_width(frame: pd.DataFrame, float_format: str) -> int:
    """The narrowest the table can be: numbers whole, text folded to ``FOLD_WIDTH`` and headers
    to ``HEADER_FOLD_WIDTH`` (folded over lines, never cut), two spaces between columns."""
    labels = [label for label, _ in _rows(frame, float_format)]
    widths = [min(LABEL_WIDTH, max(map(len, labels), default=1))]
    for column in frame.columns:
        cells = [_cell(v, float_format) for v in frame[column].tolist()]
        widest = max(map(len, cells), default=1)
        header = min(len(str(column)), HEADER_FOLD_WIDTH)
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        widths.append(max(widest, header) if numeric else min(max(widest, header), FOLD_WIDTH))
    return sum(widths) + 2 * (len(widths) - 1)


def _unpadded(console: Console, table: Table) -> list[str]:
    with console.capture() as captured:
        console.print(table)
    return [line.rstrip() for line in captured.get().splitlines()]
