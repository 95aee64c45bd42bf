"""Terminal tables (rich) for score summaries."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.table import Table


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:+.4f}"
    return str(value)


def frame_table(frame: pd.DataFrame, title: str, index_name: str | None = None) -> Table:
    """A rich Table of a DataFrame, index first, floats to 4 decimals."""
    table = Table(title=title, title_justify="left")
    table.add_column(index_name or str(frame.index.name or ""), style="bold")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        label = " / ".join(map(str, index)) if isinstance(index, tuple) else str(index)
        table.add_row(label, *(_cell(v) for v in row.tolist()))
    return table


def print_frame(frame: pd.DataFrame, title: str, console: Console) -> None:
    console.print(frame_table(frame, title))


def summary_by_model(summary: pd.DataFrame, stat: str = "mean") -> pd.DataFrame:
    """One row per model, one column per metric, holding ``stat`` of the per-era series."""
    metrics = list(dict.fromkeys(summary.index.get_level_values("metric")))
    models = list(dict.fromkeys(summary.index.get_level_values("model")))
    return summary[stat].unstack("metric").loc[models, metrics]
