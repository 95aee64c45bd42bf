"""The stake-weighted meta model and the payout rule."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring._checks import check_predictions, require_series
from fhe_toolkit.scoring.transforms import rank_gaussian_array

DEFAULT_PAYOUT_FACTOR = 1.0
DEFAULT_CORR_WEIGHT = 0.5
DEFAULT_MMC_WEIGHT = 2.0
DEFAULT_PAYOUT_CLIP = 0.05


def check_stakes(stakes: object, models: pd.Index | None = None) -> pd.Series:
    """Stakes as a float Series by model: finite, non-negative, naming only known models."""
    given = require_series(stakes, "stakes")
    values = pd.to_numeric(given, errors="coerce")
    bad = values.index[~np.isfinite(values.to_numpy(np.float64)) | (values < 0)].tolist()
    if bad:
        raise ScoringInputError(
            f"stakes must be finite and ≥ 0, but model(s) {bad[:5]} have {given[bad[:5]].tolist()}."
        )
    if not values.index.is_unique:
        raise ScoringInputError(
            "stakes name model(s) more than once: "
            f"{values.index[values.index.duplicated()].tolist()}."
        )
    if models is not None:
        unknown = values.index.difference(models)
        if len(unknown):
            raise ScoringInputError(
                f"stakes name model(s) {list(unknown)[:5]} that have no predictions; "
                f"known models are {list(models)[:10]}."
            )
    return values.astype(np.float64)


def stake_weighted_meta_model(
    predictions: pd.DataFrame,
    stakes: pd.Series,
    eras: pd.Series | None = None,
) -> pd.Series:
    """Stake-weighted mean of the models' rank-gaussianized predictions, per era.

    ``stakes`` is indexed by model (column of ``predictions``); models without a stake weigh 0.
    With ``eras`` (a Series by id), ranking is done within each era, as scoring is.
    """
    predictions = check_predictions(predictions)
    stakes = check_stakes(stakes, predictions.columns)
    if stakes.sum() <= 0:
        raise ScoringInputError(
            "the stakes add up to 0, so there is no meta model; give at least one model a stake."
        )
    weights = stakes.reindex(predictions.columns, fill_value=0.0).to_numpy() / stakes.sum()
    staked = predictions.loc[:, weights > 0]
    weights = weights[weights > 0]
    if eras is None:
        groups = [staked.index]
    else:
        eras = require_series(eras, "eras")
        missing = staked.index.difference(eras.index)
        if len(missing):
            raise ScoringInputError(
                f"{len(missing)} prediction id(s) have no era, e.g. {list(missing[:3])}."
            )
        groups = list(staked.groupby(eras.loc[staked.index]).groups.values())
    meta = pd.Series(np.nan, index=staked.index, name="meta_model")
    for ids in groups:
        meta.loc[ids] = rank_gaussian_array(staked.loc[ids].to_numpy(np.float64)) @ weights
    return meta


def payout(
    stakes: pd.Series,
    corr: pd.Series,
    mmc: pd.Series,
    *,
    payout_factor: float = DEFAULT_PAYOUT_FACTOR,
    corr_weight: float = DEFAULT_CORR_WEIGHT,
    mmc_weight: float = DEFAULT_MMC_WEIGHT,
    clip: float = DEFAULT_PAYOUT_CLIP,
) -> pd.Series:
    """``stake · clip(payout_factor · (corr_weight·CORR + mmc_weight·MMC), -clip, clip)``.

    All three Series are indexed by model; every staked model needs both scores. A NaN score (e.g.
    constant predictions) counts as 0, so that model neither earns nor burns.
    """
    stakes = check_stakes(stakes)
    scores = {"corr": require_series(corr, "corr"), "mmc": require_series(mmc, "mmc")}
    for name, series in scores.items():
        missing = stakes.index.difference(series.index)
        if len(missing):
            raise ScoringInputError(
                f"model(s) {list(missing)[:5]} have a stake but no {name} score; score every "
                f"staked model, or drop its stake."
            )
    corr, mmc = (series.reindex(stakes.index) for series in scores.values())
    score = payout_score(corr, mmc, corr_weight=corr_weight, mmc_weight=mmc_weight)
    return (stakes * np.clip(payout_factor * score, -clip, clip)).rename("payout")


def payout_score(
    corr: pd.Series,
    mmc: pd.Series,
    *,
    corr_weight: float = DEFAULT_CORR_WEIGHT,
    mmc_weight: float = DEFAULT_MMC_WEIGHT,
) -> pd.Series:
    """``corr_weight·CORR + mmc_weight·MMC`` per model, a NaN score counting as 0: what payouts
    (and the tournament's reputation) rest on."""
    return (corr_weight * corr.fillna(0.0) + mmc_weight * mmc.fillna(0.0)).rename("score")
