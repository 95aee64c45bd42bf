"""Summaries of a played tournament: per archetype, and per combination method."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fhe_toolkit.lab.participants import ARCHETYPES

SUMMARY_COLUMNS = [
    "archetype", "accounts", "mean_corr", "mean_mmc", "mean_payout_per_stake", "t_stat",
    "final_stake_multiple",
]  # fmt: skip
COPIES_AND_SYBILS = ("meta_copycat", "top_copycat", "meta_copy_exact", "noisy_copy", "sybil")
"""Who is paid for someone else's signal, or for one signal several times."""


def payout_per_stake(rounds: pd.DataFrame, by: str = "archetype") -> pd.DataFrame:
    """Per round, each group's total payout over its total stake at the round's start (rounds ×
    groups), counting the accounts that submitted with a stake; NaN where there were none."""
    taking_part = rounds[rounds["score"].notna() & (rounds["stake"] > 0)]
    totals = taking_part.groupby(["round", by])[["payout", "stake"]].sum()
    return (totals["payout"] / totals["stake"]).unstack(by)


ROUNDING = 1e-12
"""Payouts per stake that vary less than this only carry floating-point rounding (an exact copy
of the meta model has an MMC of ~1e-17, not 0): no t-statistic is taken of them."""


def t_stat(series: pd.Series) -> float:
    """``mean / (std / √n)`` (std with ddof 1) of the non-NaN values; NaN below 2 values or
    when they do not vary beyond :data:`ROUNDING`."""
    values = series.dropna().to_numpy(np.float64)
    if len(values) < 2:
        return float("nan")
    spread = values.std(ddof=1)
    if spread <= ROUNDING:
        return float("nan")
    return float(values.mean() / (spread / np.sqrt(len(values))))


def summarize_archetypes(rounds: pd.DataFrame, accounts: pd.DataFrame) -> pd.DataFrame:
    """One row per archetype, in :data:`ARCHETYPES` order, with :data:`SUMMARY_COLUMNS`:

    - ``accounts``: how many accounts it has;
    - ``mean_corr``, ``mean_mmc``: means over its accounts' submitted rounds;
    - ``mean_payout_per_stake``: the mean over rounds of its payout per unit of stake
      (:func:`payout_per_stake`), and ``t_stat`` that mean's t-statistic over rounds;
    - ``final_stake_multiple``: its accounts' stakes after the last round over their initial
      stakes (sums over accounts).
    """
    per_stake = payout_per_stake(rounds)
    last = rounds[rounds["round"] == rounds["round"].max()].set_index("account")["stake_after"]
    out = []
    for name in ARCHETYPES:
        members = accounts.index[accounts["archetype"] == name]
        if not len(members):
            continue
        own = rounds[rounds["archetype"] == name]
        series = per_stake[name] if name in per_stake else pd.Series(dtype=float)
        out.append(
            {
                "archetype": name,
                "accounts": len(members),
                "mean_corr": own["corr"].mean(),
                "mean_mmc": own["mmc"].mean(),
                "mean_payout_per_stake": series.mean(),
                "t_stat": t_stat(series),
                "final_stake_multiple": last[members].sum()
                / accounts.loc[members, "initial_stake"].sum(),
            }
        )
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def compare_methods(meta: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per combination method (``meta`` and ``rounds`` carry a ``method`` column):

    - ``meta_mean_corr``, ``meta_sharpe``: the meta model's CORR per round, mean and mean/std;
    - ``fallback_rounds``: rounds in which reputation filtering had no one to keep;
    - ``gaming_share_of_gains``: the share of all positive payouts that went to ``gaming``
      archetypes, and ``copies_sybils_share_of_gains`` to :data:`COPIES_AND_SYBILS`;
    - ``net_payout_<role>``: total payouts minus burns of each role, per unit of its initial
      stake;
    - ``final_stake_share_<role>``: each role's share of all stake after the last round.
    """
    out = []
    for method, rows in rounds.groupby("method", sort=False):
        meta_corr = meta.loc[meta["method"] == method, "meta_corr"]
        gains = rows["payout"].clip(lower=0)
        initial = rows[rows["round"] == rows["round"].min()].groupby("role")["stake"].sum()
        final = rows[rows["round"] == rows["round"].max()].groupby("role")["stake_after"].sum()
        net = rows.groupby("role")["payout"].sum() / initial
        spread = meta_corr.std(ddof=0)
        record: dict[str, object] = {
            "method": method,
            "meta_mean_corr": meta_corr.mean(),
            "meta_sharpe": meta_corr.mean() / spread if spread > 0 else np.nan,
            "fallback_rounds": int(meta.loc[meta["method"] == method, "fallback"].sum()),
            "gaming_share_of_gains": gains[rows["role"] == "gaming"].sum() / gains.sum(),
            "copies_sybils_share_of_gains": gains[rows["archetype"].isin(COPIES_AND_SYBILS)].sum()
            / gains.sum(),
        }
        for role in ("honest", "low_effort", "gaming"):
            record[f"net_payout_{role}"] = net.get(role, np.nan)
        for role in ("honest", "low_effort", "gaming"):
            record[f"final_stake_share_{role}"] = final.get(role, 0.0) / final.sum()
        out.append(record)
    return pd.DataFrame(out)
