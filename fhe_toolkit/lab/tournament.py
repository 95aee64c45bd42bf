"""The tournament loop: rounds, meta model, CORR and MMC, payouts, stakes.

One round is one era. Each round:

1. every account submits (copycats form their copy now, from what they can see: see
   :mod:`fhe_toolkit.lab.participants`);
2. the fund builds the meta model from the round's submissions with its combination method
   (:func:`fhe_toolkit.scoring.combine`), weighing each account by its stake at the round's start
   (and, for ``reputation_filtered``, its reputation: the mean payout score of its latest
   ``reputation_rounds`` rounds; until some staked account has a reputation ≥ the threshold, as
   in the first round, the meta model is stake-weighted);
3. the round resolves at once (a simplification: live targets take weeks): CORR
   (:func:`~fhe_toolkit.scoring.numerai_corr`) and MMC against that meta model
   (:func:`~fhe_toolkit.scoring.correlation_contribution`);
4. payout = ``stake · clip(payout_factor · multiplier[round] · (w_corr·CORR + w_mmc·MMC))``
   (:func:`~fhe_toolkit.scoring.payout`); gains add to the stake, losses burn it, and a stake
   never goes below 0. An account that sits a round out (the meta copycat before anything is
   published) is neither paid nor burnt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fhe_toolkit.data.schema import ERA, MAIN_TARGET
from fhe_toolkit.errors import DataValidationError
from fhe_toolkit.lab.data import LabData
from fhe_toolkit.lab.participants import (
    DEFAULT_ACCOUNTS,
    Participants,
    ridge_fit_predict,
)
from fhe_toolkit.scoring import (
    COMBINE_METHODS,
    DEFAULT_CLUSTER_CAP,
    combine,
    payout,
    payout_score,
)
from fhe_toolkit.scoring._checks import DEFAULT_MAX_FILTERED_INDEX_RATIO as RATIO
from fhe_toolkit.scoring.meta_model import (
    DEFAULT_CORR_WEIGHT,
    DEFAULT_MMC_WEIGHT,
    DEFAULT_PAYOUT_CLIP,
    DEFAULT_PAYOUT_FACTOR,
)
from fhe_toolkit.scoring.metrics import EraPredictions, correlation_matrix

META = "__meta_model__"
"""The meta model's column while it is scored beside the accounts."""


@dataclass(frozen=True)
class PayoutRule:
    """``payout = stake · clip(payout_factor · multiplier · (corr_weight·CORR + mmc_weight·MMC),
    -clip, clip)``; round ``r`` (from 0) uses ``multipliers[r % len(multipliers)]``.

    MMC-only is ``corr_weight=0``; the defaults are the toolkit's (0.5·CORR + 2·MMC, ±5 %).
    """

    corr_weight: float = DEFAULT_CORR_WEIGHT
    mmc_weight: float = DEFAULT_MMC_WEIGHT
    clip: float = DEFAULT_PAYOUT_CLIP
    payout_factor: float = DEFAULT_PAYOUT_FACTOR
    multipliers: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        values = [self.corr_weight, self.mmc_weight, self.clip, self.payout_factor]
        problems = []
        if not all(np.isfinite(v) for v in [*values, *self.multipliers]):
            problems.append("every weight, factor and multiplier must be finite")
        if not self.clip > 0:
            problems.append(f"clip must be > 0, got {self.clip}")
        if self.payout_factor < 0 or any(m < 0 for m in self.multipliers):
            problems.append("payout_factor and multipliers must be ≥ 0")
        if not self.multipliers:
            problems.append("multipliers needs at least one value (1.0 for none)")
        if problems:
            raise DataValidationError("invalid payout rule: " + "; ".join(problems) + ".")

    def factor(self, round_index: int) -> float:
        return self.payout_factor * self.multipliers[round_index % len(self.multipliers)]

    def describe(self) -> str:
        mult = "" if self.multipliers == (1.0,) else f", multipliers {list(self.multipliers)}"
        return (
            f"{self.corr_weight:g}·CORR + {self.mmc_weight:g}·MMC, factor "
            f"{self.payout_factor:g}, clip ±{self.clip:g}{mult}"
        )


@dataclass(frozen=True)
class LabConfig:
    """Everything a lab run depends on; the same config gives the same results.

    Data: synthetic by default (the sizes below), or ``data_path`` (a parquet of the fund's
    eras: the last ``rounds`` eras are played, the ``train_eras`` before them train the models).
    """

    rounds: int = 100
    train_eras: int = 120
    embargo_eras: int = 4
    rows_per_era: int = 1000
    n_features: int = 60
    n_groups: int = 6
    noise: float = 12.0
    """Synthetic target noise: 12 puts honest models' mean CORR near 0.05, as on Numerai."""
    regime_length: float = 12.0
    seed: int = 0
    data_path: Path | None = None
    accounts: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_ACCOUNTS))
    rule: PayoutRule = field(default_factory=PayoutRule)
    method: str = "stake_weighted"
    """How the meta model that MMC is scored against is built (and payouts follow)."""
    compare_methods: bool = True
    """Also play the same tournament under the other combination methods (``methods.csv``)."""
    reputation_rounds: int = 4
    reputation_threshold: float = 0.0
    cluster_threshold: float = 0.9
    cluster_cap: float = DEFAULT_CLUSTER_CAP
    copy_window: int = 8
    """Resolved rounds of published meta model the meta copycat fits on."""
    crowd_share: float = 0.5
    recent_eras: int = 12

    def __post_init__(self) -> None:
        checks = {
            "rounds ≥ 2": self.rounds >= 2,
            "train_eras ≥ 8": self.train_eras >= 8,
            "embargo_eras ≥ 0": self.embargo_eras >= 0,
            "rows_per_era ≥ 50": self.rows_per_era >= 50,
            "n_features ≥ 10": self.n_features >= 10,
            f"method in {list(COMBINE_METHODS)}": self.method in COMBINE_METHODS,
            "reputation_rounds ≥ 1": self.reputation_rounds >= 1,
            "0 < cluster_threshold ≤ 1": 0 < self.cluster_threshold <= 1,
            "0 < cluster_cap ≤ 1": 0 < self.cluster_cap <= 1,
            "copy_window ≥ 1": self.copy_window >= 1,
            "0 < crowd_share < 1": 0 < self.crowd_share < 1,
            "recent_eras ≥ 2": self.recent_eras >= 2,
        }
        bad = [rule for rule, ok in checks.items() if not ok]
        if bad:
            raise DataValidationError(f"invalid lab settings: need {', '.join(bad)}.")

    @property
    def methods(self) -> list[str]:
        """The combination methods played: the chosen one first."""
        others = [m for m in COMBINE_METHODS if m != self.method] if self.compare_methods else []
        return [self.method, *others]


@dataclass(frozen=True)
class Played:
    """One tournament under one combination method.

    ``rounds``: one row per (round, account): ``round`` (from 1), ``era``, ``regime``,
    ``account``, ``archetype``, ``role``, ``corr``, ``mmc``, ``score`` (the payout score),
    ``payout``, ``stake`` (at the round's start), ``stake_after``, ``meta_weight`` (share of the
    meta model), ``corr_with_meta`` (Pearson of the rank-gaussianized predictions and meta
    model); for the chosen method only, ``max_exposure`` (max |Spearman| with a feature) and
    ``risky_exposure`` (the same over the riskiest features only, see
    :func:`~fhe_toolkit.lab.participants.riskiest_features`).
    ``meta``: one row per round: ``round``, ``era``, ``regime``, ``meta_corr``, ``fallback``
    (whether reputation filtering fell back to stakes alone).
    """

    method: str
    rounds: pd.DataFrame
    meta: pd.DataFrame


class Tournament:
    """Plays the rounds for given data and participants (``play`` once per method).

    Rows are sorted by era, then id, once: each round's rows are then one slice, already in the
    order the scoring functions sort them into.
    """

    def __init__(self, data: LabData, participants: Participants, config: LabConfig) -> None:
        self.data = data
        self.participants = participants
        self.config = config
        frame = data.rounds.sort_index().sort_values(ERA, kind="stable")
        eras = frame[ERA].to_numpy()
        starts = np.flatnonzero(np.r_[True, eras[1:] != eras[:-1]])
        stops = np.r_[starts[1:], len(eras)]
        self.slices = {
            str(eras[a]): slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True)
        }
        self.ids = frame.index
        self.x = frame[data.features].to_numpy(np.float32)
        self.features = frame[data.features]
        self.y = frame[MAIN_TARGET]
        static = participants.static.loc[frame.index]
        self.static = {c: static[c].to_numpy() for c in static}
        risky = set(participants.risky_features)
        self.risky = np.array([f in risky for f in data.features])

    def play(
        self, method: str, *, exposures: bool = False, progress: Callable[[], None] | None = None
    ) -> Played:
        cfg, accounts = self.config, self.participants.accounts
        stakes = accounts["initial_stake"].astype(np.float64).copy()
        published: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=cfg.copy_window)
        history: list[pd.Series] = []
        rows: list[pd.DataFrame] = []
        metas: list[dict[str, object]] = []
        regimes = self.data.regimes
        rule = cfg.rule
        for r, era in enumerate(self.data.round_eras):
            pos = self.slices[era]
            reputation = (
                pd.concat(history[-cfg.reputation_rounds :], axis=1).mean(axis=1)
                if history
                else pd.Series(np.nan, index=accounts.index)
            )
            submitted = self._submissions(pos, stakes, reputation, published, method)
            active = list(submitted.columns)
            meta, weights, fallback = self._meta(submitted, stakes[active], reputation, method)
            target = self.y.iloc[pos]
            # The path score_eras takes: each column ranked once for CORR, MMC and exposure; the
            # meta model rides along as one more column, for its own CORR.
            scored = EraPredictions(submitted.assign(**{META: meta.to_numpy()}))
            corr_all = pd.Series(scored.corr(target, RATIO, None), index=scored.columns)
            corr, meta_corr = corr_all[active], float(corr_all[META])
            mmc = pd.Series(scored.contribution(meta, target, RATIO, None)[:-1], index=active)
            paid = payout(
                stakes[active], corr=corr, mmc=mmc, payout_factor=rule.factor(r),
                corr_weight=rule.corr_weight, mmc_weight=rule.mmc_weight, clip=rule.clip,
            )  # fmt: skip
            score = payout_score(
                corr=corr, mmc=mmc, corr_weight=rule.corr_weight, mmc_weight=rule.mmc_weight
            )
            history.append(score.reindex(accounts.index))
            regime = np.nan if regimes is None else float(regimes.get(era, np.nan))
            _, gaussian = scored.rows(scored.frame.index)
            with_meta = correlation_matrix(gaussian[:, :-1], gaussian[:, -1:])[:, 0]
            columns: dict[str, object] = {
                "round": r + 1, "era": era, "regime": regime,
                "account": accounts.index, "archetype": accounts["archetype"].to_numpy(),
                "role": accounts["role"].to_numpy(),
                "corr": corr.reindex(accounts.index).to_numpy(),
                "mmc": mmc.reindex(accounts.index).to_numpy(),
                "score": score.reindex(accounts.index).to_numpy(),
                "payout": paid.reindex(accounts.index, fill_value=0.0).to_numpy(),
                "stake": stakes.to_numpy(),
                "meta_weight": (weights / weights.sum())
                .reindex(accounts.index, fill_value=0.0).to_numpy(),
                "corr_with_meta": pd.Series(with_meta, index=active)
                .reindex(accounts.index).to_numpy(),
            }  # fmt: skip
            if exposures:
                matrix = np.abs(scored.exposures(self.features.iloc[pos], "spearman"))[:, :-1]
                for name, part in (
                    ("max_exposure", matrix),
                    ("risky_exposure", matrix[self.risky]),
                ):
                    top = pd.Series(_column_max(part), index=active)
                    columns[name] = top.reindex(accounts.index).to_numpy()
            frame = pd.DataFrame(columns)
            stakes = (stakes + frame.set_index("account")["payout"]).clip(lower=0.0)
            frame["stake_after"] = stakes.to_numpy()
            rows.append(frame)
            metas.append(
                {"round": r + 1, "era": era, "regime": regime, "meta_corr": meta_corr,
                 "fallback": fallback}
            )  # fmt: skip
            published.append((self.x[pos], meta.to_numpy()))
            if progress is not None:
                progress()
        return Played(method, pd.concat(rows, ignore_index=True), pd.DataFrame(metas))

    def _submissions(
        self,
        pos: slice,
        stakes: pd.Series,
        reputation: pd.Series,
        published: deque[tuple[np.ndarray, np.ndarray]],
        method: str,
    ) -> pd.DataFrame:
        """This round's predictions of every account taking part, in account order."""
        accounts = self.participants.accounts
        predictions = {name: values[pos] for name, values in self.static.items()}
        copycats = accounts.index[accounts["archetype"] == "meta_copycat"]
        if len(copycats) and published:
            x = np.vstack([features for features, _ in published])
            y = np.concatenate([meta for _, meta in published])
            copy = ridge_fit_predict(x, y, self.x[pos])
            predictions |= dict.fromkeys(copycats, copy)
        candidates = [n for n in self.static if stakes[n] > 0]
        if candidates:
            largest = max(candidates, key=lambda n: (stakes[n], -candidates.index(n)))
            for name in accounts.index[accounts["archetype"] == "top_copycat"]:
                predictions[name] = predictions[largest]
        exact = accounts.index[accounts["archetype"] == "meta_copy_exact"]
        negated = accounts.index[accounts["archetype"] == "negated_meta"]
        if len(exact) or len(negated):
            others = self._frame(predictions, self.ids[pos])
            others_meta, _, _ = self._meta(others, stakes[others.columns], reputation, method)
            values = others_meta.to_numpy()
            predictions |= dict.fromkeys(exact, values) | dict.fromkeys(negated, -values)
        return self._frame(predictions, self.ids[pos])

    def _frame(self, predictions: dict[str, np.ndarray], ids: pd.Index) -> pd.DataFrame:
        order = [n for n in self.participants.accounts.index if n in predictions]
        return pd.DataFrame({n: predictions[n] for n in order}, index=ids)

    def _meta(
        self, predictions: pd.DataFrame, stakes: pd.Series, reputation: pd.Series, method: str
    ) -> tuple[pd.Series, pd.Series, bool]:
        """The meta model, the weights it used, and whether reputation filtering fell back."""
        cfg = self.config
        fallback = False
        if method == "reputation_filtered":
            passing = reputation.reindex(stakes.index) >= cfg.reputation_threshold
            if not (passing & (stakes > 0)).any():
                method, fallback = "stake_weighted", True
        meta, weights = combine(
            predictions, stakes, eras=None, method=method, reputation=reputation,
            reputation_threshold=cfg.reputation_threshold,
            cluster_threshold=cfg.cluster_threshold, cap=cfg.cluster_cap,
        )  # fmt: skip
        return meta, weights, fallback


def _column_max(values: np.ndarray) -> np.ndarray:
    """Max of each column, NaN skipped; NaN for a column of NaN (constant predictions)."""
    filled = np.where(np.isnan(values), -np.inf, values)
    top = filled.max(axis=0) if len(filled) else np.full(values.shape[1], -np.inf)
    return np.where(np.isinf(top), np.nan, top)
