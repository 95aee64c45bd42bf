"""The essay's claims, each with what the lab measures for it.

:func:`claim_figures` turns one lab run into a table of figures (``claims.csv``): the lab reports
measurements, and ``docs/lab.md`` states the verdicts with the runs behind them.
:func:`mmc_form_agreement` checks claim (d) on random cases, independent of the tournament.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fhe_toolkit.scoring import mmc_closed_form, mmc_finite_difference, mmc_pseudo_inverse

CLAIMS = {
    "a": "MMC pays only for new information",
    "b": "staking filters low effort",
    "c": "high feature exposure burns in regime shifts",
    "d": "the MMC formulations agree",
    "e": "gaming attempts do not pay",
}
FORMS = ("finite_difference", "closed_form", "pseudo_inverse")


def mmc_form_agreement(cases: int = 300, rows: int = 500, seed: int = 0) -> pd.DataFrame:
    """The three MMC formulations of :mod:`fhe_toolkit.scoring.mmc_forms` on ``cases`` random
    cases: one row each, a column per form (:data:`FORMS`) and ``rows``.

    Each case draws a meta model ``m``, a hidden signal ``s``, targets ``y`` (``s`` plus noise of
    a random strength, bucketed 0/.25/.5/.75/1 in Numerai's shares) and predictions
    ``p = a·m + b·s + c·noise`` with random ``a ∈ [-1, 1]``, ``b ∈ [0, 1]``, ``c ∈ [0.1, 1]``:
    copies, negations, new signal and noise all come up.
    """
    rng = np.random.default_rng([seed, 11])
    edges = np.cumsum([0.05, 0.20, 0.50, 0.20])
    out = []
    for _ in range(cases):
        signal = rng.normal(size=rows)
        meta = 0.5 * signal * rng.uniform(0, 1) + rng.normal(size=rows)
        raw = signal + rng.uniform(1, 10) * rng.normal(size=rows)
        ranks = raw.argsort().argsort() / rows
        y = np.searchsorted(edges, ranks, side="right") / 4.0
        p = (
            rng.uniform(-1, 1) * meta
            + rng.uniform(0, 1) * signal
            + rng.uniform(0.1, 1) * rng.normal(size=rows)
        )
        out.append(
            {
                "finite_difference": mmc_finite_difference(p, meta, y),
                "closed_form": mmc_closed_form(p, meta, y),
                "pseudo_inverse": mmc_pseudo_inverse(p, meta, y),
                "rows": rows,
            }
        )
    return pd.DataFrame(out)


def claim_figures(
    summary: pd.DataFrame,
    rounds: pd.DataFrame,
    methods: pd.DataFrame,
    forms: pd.DataFrame,
    training_regime: int | None,
) -> pd.DataFrame:
    """The figures behind each claim from one run: ``claim``, ``measure``, ``value``.

    ``summary``: :func:`~fhe_toolkit.lab.results.summarize_archetypes`; ``rounds``: the played
    rounds of the chosen method; ``methods``: :func:`~fhe_toolkit.lab.results.compare_methods`;
    ``forms``: :func:`mmc_form_agreement`; ``training_regime``: the regime the models last
    trained in (None when regimes are unknown).
    """
    by = summary.set_index("archetype")
    rows: list[tuple[str, str, float]] = []

    def add(claim: str, measure: str, value: float) -> None:
        rows.append((claim, measure, float(value)))

    def have(name: str) -> bool:
        return name in by.index

    # (a) MMC pays only for new information.
    for name in ("orthogonal", "tree", "ridge", "meta_copycat", "meta_copy_exact", "top_copycat"):
        if have(name):
            add("a", f"{name} mean CORR", by.at[name, "mean_corr"])
            add("a", f"{name} mean MMC", by.at[name, "mean_mmc"])
    if have("meta_copy_exact"):
        for measure in ("mean_payout_per_stake", "final_stake_multiple"):
            add("a", f"meta_copy_exact {measure}", by.at["meta_copy_exact", measure])

    # (b) staking filters low effort.
    first, last = rounds["round"].min(), rounds["round"].max()
    start = rounds[rounds["round"] == first].groupby("role")["stake"].sum()
    end = rounds[rounds["round"] == last].groupby("role")["stake_after"].sum()
    for role in ("low_effort", "honest"):
        if role in start:
            add("b", f"{role} share of all stake, first round", start[role] / start.sum())
            add("b", f"{role} share of all stake, after last round", end[role] / end.sum())
    for name in ("noise", "noisy_copy", "lottery", "ridge"):
        if have(name):
            add("b", f"{name} final stake multiple", by.at[name, "final_stake_multiple"])
            add("b", f"{name} payout-per-stake t-stat", by.at[name, "t_stat"])

    # (c) high feature exposure burns in regime shifts.
    pair = [n for n in ("high_exposure", "neutralized") if have(n)]
    for name in pair:
        own = rounds[rounds["archetype"] == name]
        for column in ("max_exposure", "risky_exposure"):
            if column in own:
                add("c", f"{name} mean {column.replace('_', ' ')}", own[column].mean())
        add("c", f"{name} mean CORR", by.at[name, "mean_corr"])
        if training_regime is not None:
            same = own["regime"] == training_regime
            add(
                "c",
                f"{name} mean CORR, rounds in the training regime",
                own.loc[same, "corr"].mean(),
            )
            add("c", f"{name} mean CORR, rounds after a shift", own.loc[~same, "corr"].mean())
            add("c", f"{name} share of rounds after a shift", (~same).mean())
        add("c", f"{name} final stake multiple", by.at[name, "final_stake_multiple"])
        add(
            "c",
            f"{name} max drawdown of cumulative CORR",
            _drawdown(own.groupby("round")["corr"].mean()),
        )

    # (d) the MMC formulations agree.
    correlation = forms[list(FORMS)].corr()
    for i, a in enumerate(FORMS):
        for b in FORMS[i + 1 :]:
            add("d", f"corr({a}, {b}) over {len(forms)} random cases", correlation.at[a, b])
    scaled = forms["closed_form"] / forms["rows"]
    add("d", "max |pseudo_inverse - closed_form/n|", (forms["pseudo_inverse"] - scaled).abs().max())

    # (e) gaming attempts do not pay.
    for name in (
        "meta_copycat",
        "meta_copy_exact",
        "top_copycat",
        "sybil",
        "lottery",
        "negated_meta",
        "noisy_copy",
    ):
        if have(name):
            add("e", f"{name} mean payout per stake", by.at[name, "mean_payout_per_stake"])
            add("e", f"{name} t-stat", by.at[name, "t_stat"])
            add("e", f"{name} final stake multiple", by.at[name, "final_stake_multiple"])
    if have("ridge"):
        add("e", "ridge mean payout per stake (reference)", by.at["ridge", "mean_payout_per_stake"])
    for _, method in methods.iterrows():
        add(
            "e",
            f"share of gains to copies and sybils, {method['method']}",
            method["copies_sybils_share_of_gains"],
        )
        add("e", f"share of gains to gaming, {method['method']}", method["gaming_share_of_gains"])
        add("e", f"meta model mean CORR, {method['method']}", method["meta_mean_corr"])
    frame = pd.DataFrame(rows, columns=["claim", "measure", "value"])
    frame.insert(1, "statement", frame["claim"].map(CLAIMS))
    return frame


def _drawdown(series: pd.Series) -> float:
    """``max(cummax(cumsum) - cumsum)``, as the toolkit's per-era summaries define it."""
    total = series.fillna(0.0).cumsum()
    return float((total.cummax() - total).max())
