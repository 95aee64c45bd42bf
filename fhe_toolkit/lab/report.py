"""The lab's report: one self-contained HTML file (plotly.js inlined, nothing fetched), in the
style of the fund's tournament report (:mod:`fhe_toolkit.fund.report`)."""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from fhe_toolkit.html_page import chart_grid, page, styled
from fhe_toolkit.lab.claims import CLAIMS, FORMS
from fhe_toolkit.lab.participants import ARCHETYPES
from fhe_toolkit.lab.results import payout_per_stake
from fhe_toolkit.lab.run import LabResult
from fhe_toolkit.protocol.files import write_atomic

_styled = partial(styled, height=400, legend_y=-0.25)

CHARTS = (
    "stake-multiple", "cumulative-payout", "corr-mmc", "regimes", "methods-stakes",
    "methods-meta", "mmc-forms",
)  # fmt: skip
"""The element id of each chart, in page order."""
COLORS = dict(zip(ARCHETYPES, qualitative.Dark24, strict=False))
"""One colour per archetype, the same in every chart (plotly's default palette has only 10)."""


def _line(name: str) -> dict[str, str]:
    return {"color": COLORS.get(name, "#444")}


def write_lab_report(result: LabResult, path: str | Path) -> Path:
    """Write the report of ``result`` to ``path`` (written whole, then moved into place)."""
    charts = {
        "stake-multiple": _stake_multiple(result),
        "cumulative-payout": _cumulative_payout(result),
        "corr-mmc": _corr_mmc(result),
        "regimes": _regimes(result),
        "methods-stakes": _methods_stakes(result),
        "methods-meta": _methods_meta(result),
        "mmc-forms": _mmc_forms(result),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, _page(result, charts).encode())
    return path


def _stake_multiple(result: LabResult) -> go.Figure:
    rounds = result.rounds
    stakes = rounds.groupby(["round", "archetype"])["stake_after"].sum().unstack("archetype")
    initial = result.accounts.groupby("archetype")["initial_stake"].sum()
    figure = go.Figure()
    for name in result.summary["archetype"]:
        figure.add_scatter(
            x=stakes.index, y=stakes[name] / initial[name], name=name, mode="lines",
            line=_line(name),
        )  # fmt: skip
    figure.update_yaxes(type="log")
    return _styled(figure, "Stake multiple after each round (log scale)", "round", "× initial")


def _cumulative_payout(result: LabResult) -> go.Figure:
    per_stake = payout_per_stake(result.rounds).fillna(0.0).cumsum()
    figure = go.Figure()
    for name in result.summary["archetype"]:
        if name in per_stake:
            figure.add_scatter(
                x=per_stake.index, y=per_stake[name], name=name, mode="lines", line=_line(name)
            )
    return _styled(figure, "Cumulative payout per unit of stake", "round", "Σ payout / stake")


def _corr_mmc(result: LabResult) -> go.Figure:
    summary = result.summary
    figure = go.Figure(
        go.Scatter(
            x=summary["mean_corr"], y=summary["mean_mmc"], text=summary["archetype"],
            mode="markers+text", textposition="top center",
            marker={"size": 10, "color": summary["mean_payout_per_stake"],
                    "colorscale": "RdBu", "cmid": 0, "showscale": True,
                    "colorbar": {"title": "payout/stake"}},
        )
    )  # fmt: skip
    return _styled(figure, "Mean CORR and MMC per archetype", "mean CORR", "mean MMC")


def _regimes(result: LabResult) -> go.Figure:
    rounds = result.rounds
    figure = go.Figure()
    shown = [n for n in ("high_exposure", "neutralized", "ridge") if n in set(rounds["archetype"])]
    for name in shown:
        corr = rounds[rounds["archetype"] == name].groupby("round")["corr"].mean()
        figure.add_scatter(
            x=corr.index, y=corr.fillna(0).cumsum(), name=name, mode="lines", line=_line(name)
        )
    title = "Cumulative CORR"
    if result.training_regime is not None:
        regime = rounds.groupby("round")["regime"].first()
        shifted = regime != result.training_regime
        for start, stop in _runs(shifted):
            figure.add_vrect(x0=start - 0.5, x1=stop + 0.5, fillcolor="#d62728", opacity=0.08,
                             line_width=0)  # fmt: skip
        title += " (shaded: the regime the models did not last train in)"
    return _styled(figure, title, "round", "Σ CORR")


def _methods_stakes(result: LabResult) -> go.Figure:
    table = result.method_summaries
    figure = go.Figure()
    for method, rows in table.groupby("method", sort=False):
        figure.add_bar(x=rows["archetype"], y=rows["final_stake_multiple"], name=str(method))
    figure.update_layout(barmode="group")
    figure.update_yaxes(type="log")
    return _styled(figure, "Final stake multiple by meta-model method", "archetype", "× initial")


def _methods_meta(result: LabResult) -> go.Figure:
    figure = go.Figure()
    for method, rows in result.meta.groupby("method", sort=False):
        figure.add_scatter(
            x=rows["round"], y=rows["meta_corr"].fillna(0).cumsum(), name=str(method),
            mode="lines",
        )  # fmt: skip
    return _styled(figure, "Cumulative CORR of the meta model, by method", "round", "Σ CORR")


def _mmc_forms(result: LabResult) -> go.Figure:
    forms = result.forms
    figure = go.Figure()
    for form in FORMS[:2]:
        figure.add_scatter(
            x=forms["pseudo_inverse"], y=forms[form] / forms[form].std(), name=form,
            mode="markers", marker={"size": 5},
        )  # fmt: skip
    return _styled(
        figure, f"MMC formulations on {len(forms)} random cases (each scaled to unit spread)",
        "pseudo-inverse form", "other form / its std",
    )  # fmt: skip


def _runs(mask: pd.Series) -> list[tuple[int, int]]:
    """(first, last) round of each run of True, for a mask indexed by round."""
    runs: list[tuple[int, int]] = []
    start = previous = None
    for label, value in mask.items():
        if value and start is None:
            start = int(label)
        if not value and start is not None and previous is not None:
            runs.append((start, previous))
            start = None
        previous = int(label)
    if start is not None and previous is not None:
        runs.append((start, previous))
    return runs


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(
        classes="board", index=False, na_rep="—", border=0, float_format="{:.4g}".format
    )


def _page(result: LabResult, charts: dict[str, go.Figure]) -> str:
    cfg = result.config
    claims = "\n".join(
        f"<li><b>({key})</b> {html.escape(text)}</li>" for key, text in CLAIMS.items()
    )
    archetypes = result.accounts.groupby("archetype", sort=False).size()
    body = f"""<h1>Incentive lab</h1>
<p>{html.escape(result.source)}. {len(result.accounts)} accounts of {len(archetypes)} archetypes.
Payout rule: {html.escape(cfg.rule.describe())}; meta model: <b>{html.escape(cfg.method)}</b>
(stakes move with payouts, never below 0). Seed {cfg.seed}. Every figure is in the clear, on
simulated rounds: no participant data.</p>
<h2>Per archetype</h2>
{_table(result.summary)}
<h2>Meta-model methods compared</h2>
{_table(result.methods)}
<h2>Rounds</h2>
{chart_grid(charts)}
<h2>The claims, and the figures this run measured</h2>
<ul>{claims}</ul>
{_table(result.claims.drop(columns="statement"))}
"""
    return page("fhe-toolkit incentive lab", body)
