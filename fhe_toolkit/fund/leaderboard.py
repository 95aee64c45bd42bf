"""The tournament leaderboard: one row per model, from the registry's records."""

from __future__ import annotations

import pandas as pd

from fhe_toolkit.errors import LeaderboardError

SORT_KEYS = {
    "corr": "mean_corr",
    "mmc": "mean_mmc",
    "reputation": "reputation",
    "stake": "stake",
    "payout": "total_payout",
}
COLUMNS = [
    "participant", "family", "target", "stake", "rounds", "last_corr", "last_mmc",
    "last_payout", "mean_corr", "mean_mmc", "total_payout", "reputation",
]  # fmt: skip

SUMMARY_COLUMNS = [
    "participant", "stake", "rounds", "mean_corr", "mean_mmc", "last_payout", "reputation",
]  # fmt: skip
"""The columns that fit a terminal."""


def leaderboard(
    models: pd.DataFrame, payouts: pd.DataFrame, sort_by: str = "reputation"
) -> pd.DataFrame:
    """Per model: owner, family, target, current stake, rounds scored, the latest round's CORR,
    MMC and payout, mean CORR and MMC over its resolved rounds, total payout and reputation
    (as of its latest round). Sorted by ``sort_by`` (one of :data:`SORT_KEYS`), best first,
    models never scored last.

    ``models``: :meth:`Registry.models`; ``payouts``: :meth:`Registry.payouts`.
    """
    if sort_by not in SORT_KEYS:
        raise LeaderboardError(f"sort by one of {sorted(SORT_KEYS)}, not {sort_by!r}.")
    if models.empty:
        return pd.DataFrame(columns=COLUMNS).rename_axis("model")
    board = models[["participant", "family", "target", "stake"]].copy()
    if not payouts.empty:
        per_model = payouts.sort_values("round_order").groupby("model")
        last = per_model.last()
        board = board.join(
            pd.DataFrame(
                {
                    "rounds": per_model.size(),
                    "last_corr": last["corr"],
                    "last_mmc": last["mmc"],
                    "last_payout": last["payout"],
                    "mean_corr": per_model["corr"].mean(),
                    "mean_mmc": per_model["mmc"].mean(),
                    "total_payout": per_model["payout"].sum(),
                    "reputation": last["reputation"],
                }
            )
        )
    board = board.reindex(columns=COLUMNS)
    board["rounds"] = board["rounds"].fillna(0).astype(int)
    return board.sort_values(SORT_KEYS[sort_by], ascending=False, na_position="last")
