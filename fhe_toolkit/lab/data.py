"""The lab's data: training eras for the participants' models, then one era per round.

From the synthetic generator (regimes known), or from a parquet of the fund's own eras
(``--data``): the last ``rounds`` eras are the tournament, the ``train_eras`` before them (less
an embargo) train the models. A ``regime`` column in that file, if any, is read as the regimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fhe_toolkit.data import SynthConfig, feature_columns, load_tournament, make_tournament
from fhe_toolkit.data.schema import ERA, MAIN_TARGET
from fhe_toolkit.data.synth import REGIME, era_regimes
from fhe_toolkit.errors import DataValidationError

MIN_TRAIN_ERAS = 8
"""Fewer training eras than this would leave the models nothing to learn from."""


@dataclass(frozen=True)
class LabData:
    """Training rows, tournament rows (one era per round) and what is known about them.

    ``train`` and ``rounds`` are indexed by id, with ``era``, the features and ``target``;
    ``round_eras`` lists the tournament's eras in order; ``regimes`` maps era → +1 / -1 where
    known (synthetic data, or a file with a ``regime`` column), else None.
    """

    train: pd.DataFrame
    rounds: pd.DataFrame
    features: list[str]
    round_eras: list[str]
    regimes: pd.Series | None
    source: str

    def training_regime(self) -> int | None:
        """The regime of the last training era: the one the models learnt last."""
        if self.regimes is None:
            return None
        return int(self.regimes.get(str(self.train[ERA].iloc[-1]), 0)) or None


def synthetic_data(
    *,
    rounds: int,
    train_eras: int,
    embargo_eras: int,
    rows_per_era: int,
    n_features: int,
    n_groups: int,
    noise: float,
    regime_length: float,
    seed: int,
) -> LabData:
    """Generate ``train_eras`` + embargo + ``rounds`` eras with :mod:`fhe_toolkit.data.synth`."""
    config = SynthConfig(
        train_eras=train_eras, validation_eras=rounds, live_eras=0, embargo_eras=embargo_eras,
        rows_per_era=rows_per_era, n_features=n_features, n_groups=n_groups, noise=noise,
        regime_length=regime_length, seed=seed, targets=(MAIN_TARGET,),
    )  # fmt: skip
    frame, _ = make_tournament(config)
    features = feature_columns(list(frame.columns))
    keep = [ERA, *features, MAIN_TARGET]
    train = frame.loc[frame["data_type"] == "train", keep]
    tournament = frame.loc[frame["data_type"] == "validation", keep]
    return LabData(
        train=train,
        rounds=tournament,
        features=features,
        round_eras=sorted(tournament[ERA].unique()),
        regimes=era_regimes(config),
        source=(
            f"synthetic: seed {seed}, {train_eras} training eras, {rounds} rounds of "
            f"{rows_per_era} rows, {n_features} features in {n_groups} groups, noise {noise:g}, "
            f"regimes of ~{regime_length:g} eras"
        ),
    )


def parquet_data(path: str | Path, *, rounds: int, train_eras: int, embargo_eras: int) -> LabData:
    """The fund's own eras from a Numerai-format parquet (``era``, ``feature_*``, ``target``).

    Eras in sorted order: the last ``rounds`` are played, the ``train_eras`` before them (less
    ``embargo_eras`` in between, as targets overlap) train the models. Rows without a target
    are dropped. Refuses files with too few eras, saying how many there are.
    """
    path = Path(path)
    frame = load_tournament(path, targets=[MAIN_TARGET])
    frame = frame[frame[MAIN_TARGET].notna()]
    eras = sorted(frame[ERA].unique())
    needed = rounds + embargo_eras + MIN_TRAIN_ERAS
    if len(eras) < needed:
        raise DataValidationError(
            f"{path} has {len(eras)} era(s) with targets, but {rounds} round(s) need at least "
            f"{needed} ({rounds} played, {embargo_eras} embargo, {MIN_TRAIN_ERAS} to train on); "
            f"pass fewer --rounds or a file with more eras."
        )
    played = eras[-rounds:]
    trained = eras[: len(eras) - rounds - embargo_eras][-train_eras:]
    features = feature_columns(list(frame.columns))
    keep = [ERA, *features, MAIN_TARGET]
    regimes = _regimes_in(path)
    return LabData(
        train=frame.loc[frame[ERA].isin(trained), keep].sort_values(ERA, kind="stable"),
        rounds=frame.loc[frame[ERA].isin(played), keep].sort_values(ERA, kind="stable"),
        features=features,
        round_eras=played,
        regimes=regimes,
        source=(
            f"{path.name}: {len(trained)} training eras ({trained[0]}..{trained[-1]}), "
            f"{rounds} rounds ({played[0]}..{played[-1]}), {len(features)} features"
        ),
    )


def _regimes_in(path: Path) -> pd.Series | None:
    """Era → regime from a ``regime`` column, when the file has one (one value per era)."""
    if REGIME not in pq.read_schema(path).names:
        return None
    table = pd.read_parquet(path, columns=[ERA, REGIME])
    per_era = table.groupby(ERA)[REGIME].agg(["min", "max"])
    mixed = per_era.index[per_era["min"] != per_era["max"]]
    if len(mixed):
        raise DataValidationError(
            f"{path}: the regime column must hold one value per era, but era(s) "
            f"{list(mixed[:5])} have several."
        )
    return per_era["min"].astype(np.int8).rename(REGIME)
