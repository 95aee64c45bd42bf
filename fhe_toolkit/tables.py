"""Terminal tables (rich) for score summaries."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.table import Table

SCORE_FORMAT = "{:+.4f}"


def _cell(value: object, float_format: str) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else float_format.format(value)
    return str(value)


def frame_table(
    frame: pd.DataFrame, title: str, index_name: str | None = None, float_format: str = SCORE_FORMAT
) -> Table:
    """A rich Table of a DataFrame, index first, floats as ``float_format`` (signed scores)."""
    table = Table(title=title, title_justify="left")
    table.add_column(index_name or str(frame.index.name or ""), style="bold")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        label = " / ".join(map(str, index)) if isinstance(index, tuple) else str(index)
        table.add_row(label, *(_cell(v, float_format) for v in row.tolist()))
    return table


def print_frame(
    frame: pd.DataFrame, title: str, console: Console, float_format: str = SCORE_FORMAT
) -> None:
    console.print(frame_table(frame, title, float_format=float_format))
