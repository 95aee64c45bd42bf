"""The tournament report: one self-contained HTML file (plotly.js inlined) that renders offline.

Per model: cumulative CORR and MMC over rounds, per-era MMC, payouts and stake, the distribution
of per-era maximum feature exposure, and how each model's predictions correlate with the meta
model and with the others; with the leaderboard on top.
"""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from fhe_toolkit.errors import ReportError
from fhe_toolkit.fund.leaderboard import leaderboard
from fhe_toolkit.html_page import chart_grid, page, styled
from fhe_toolkit.protocol.files import write_atomic
from fhe_toolkit.registry import Registry, RoundStatus

_styled = partial(styled, height=380, legend_y=-0.2)


def write_report(registry: Registry, path: str | Path) -> Path:
    """Write the report of every resolved round in ``registry`` to ``path``."""
    payouts = registry.payouts()
    if payouts.empty:
        raise ReportError("no round is resolved yet: score a round first (`fund score`).")
    scores = registry.scores()
    charts = {
        "cumulative-corr": _cumulative(payouts, "corr", "Cumulative CORR over rounds"),
        "cumulative-mmc": _cumulative(payouts, "mmc", "Cumulative MMC over rounds"),
        "per-era-mmc": _per_era(scores, "mmc", "MMC per era"),
        "payouts": _payouts(payouts),
        "stakes": _stakes(registry.stake_history()),
        "exposure": _exposure(scores),
        "correlations": _correlations(registry.correlations()),
    }
    board = leaderboard(registry.models(), payouts, "reputation")
    rounds = registry.rounds()
    page = _page(board, rounds, charts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page.encode())
    return path


def _cumulative(payouts: pd.DataFrame, metric: str, title: str) -> go.Figure:
    figure = go.Figure()
    for model, rows in payouts.groupby("model"):
        rows = rows.sort_values("round_order")
        figure.add_scatter(x=rows["round"], y=rows[metric].fillna(0).cumsum(), name=str(model),
                           mode="lines+markers")  # fmt: skip
    return _styled(figure, title, "round", metric.upper())


def _per_era(scores: pd.DataFrame, metric: str, title: str) -> go.Figure:
    figure = go.Figure()
    rows = scores[scores["metric"] == metric]
    for model, group in rows.groupby("model"):
        group = group.sort_values(["round_order", "era"])
        labels = group["round"].astype(str) + " / " + group["era"].astype(str)
        figure.add_bar(x=labels, y=group["value"], name=str(model))
    return _styled(figure, title, "round / era", metric.upper())


def _payouts(payouts: pd.DataFrame) -> go.Figure:
    figure = go.Figure()
    for model, rows in payouts.groupby("model"):
        rows = rows.sort_values("round_order")
        figure.add_bar(x=rows["round"], y=rows["payout"], name=str(model))
    return _styled(figure, "Payouts per round (gains add to the stake, losses burn it)", "round",
                   "payout")  # fmt: skip


def _stakes(history: pd.DataFrame) -> go.Figure:
    figure = go.Figure()
    for model, rows in history.groupby("model"):
        figure.add_scatter(x=list(range(len(rows))), y=rows["balance"], name=str(model),
                           mode="lines+markers", text=rows["kind"],
                           hovertemplate="%{text}: %{y:.4f}")  # fmt: skip
    return _styled(figure, "Stake after each change", "stake change", "stake")


def _exposure(scores: pd.DataFrame) -> go.Figure:
    figure = go.Figure()
    rows = scores[scores["metric"] == "max_exposure"]
    for model, group in rows.groupby("model"):
        figure.add_box(y=group["value"], name=str(model), boxpoints="all")
    return _styled(figure, "Maximum feature exposure per era (aim: about 0.3 or lower)", "model",
                   "max |exposure|")  # fmt: skip


def _correlations(correlations: pd.DataFrame) -> go.Figure:
    latest = correlations[correlations["round_order"] == correlations["round_order"].max()]
    matrix = latest.pivot(index="first", columns="second", values="value")
    names = list(matrix.index)
    matrix = matrix.loc[names, names]
    figure = go.Figure(
        go.Heatmap(z=matrix.to_numpy(), x=names, y=names, zmin=-1, zmax=1,
                   colorscale="RdBu", reversescale=True,
                   text=matrix.round(2).to_numpy(), texttemplate="%{text}")
    )  # fmt: skip
    title = f"Prediction correlations (Spearman), round {latest['round'].iloc[0]}"
    return _styled(figure, title, "", "")


def _page(board: pd.DataFrame, rounds: pd.DataFrame, charts: dict[str, go.Figure]) -> str:
    table = board.round(4).to_html(classes="board", na_rep="—", border=0)
    resolved = rounds[rounds["status"] == RoundStatus.RESOLVED] if not rounds.empty else rounds
    body = f"""<h1>Tournament report</h1>
<p>{len(resolved)} resolved round(s): {html.escape(", ".join(map(str, resolved.index)))}.
Scores are rounded aggregates of decrypted predictions; no per-row value is shown.</p>
<h2>Leaderboard</h2>
{table}
<h2>Rounds</h2>
{chart_grid(charts)}
"""
    return page("fhe-toolkit tournament report", body)
