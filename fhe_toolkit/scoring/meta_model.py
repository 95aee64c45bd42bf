"""The stake-weighted meta model and the payout rule."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring._checks import (
    check_predictions,
    era_rows,
    require_numeric,
    require_series,
    require_unique_ids,
)
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
    if not np.isfinite(values.sum()):
        raise ScoringInputError(
            "the stakes add up to more than a float holds; give them in smaller units (the meta "
            "model weighs models by their shares of the total)."
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
    *,
    eras: pd.Series | None,
) -> pd.Series:
    """Stake-weighted mean of the models' rank-gaussianized predictions, era by era.

    1. weights: each model's stake over the total (models without a stake weigh 0);
    2. within each era, tie-kept rank and gaussianize each staked model's predictions;
    3. the weighted sum of those, row by row.

    ``stakes`` is indexed by model (column of ``predictions``). ``eras`` (a Series of era labels
    by id, e.g. ``data["era"]``) is required, because Numerai ranks within each era: ranks taken
    across eras would mix them. Pass ``eras=None`` only when every row belongs to one era (a live
    round).
    """
    predictions = check_predictions(predictions)
    stakes = check_stakes(stakes, predictions.columns)
    if stakes.sum() <= 0:
        raise ScoringInputError(
            "the stakes add up to 0, so there is no meta model; give at least one model a stake."
        )
    weights = stakes.reindex(predictions.columns, fill_value=0.0).to_numpy() / stakes.sum()
    staked = predictions.loc[:, weights > 0].to_numpy(np.float64)
    weights = weights[weights > 0]
    meta = np.empty(len(staked))
    for _, rows in era_rows(predictions.index, eras):
        meta[rows] = rank_gaussian_array(staked[rows]) @ weights
    return pd.Series(meta, index=predictions.index, name="meta_model")


def payout_per_stake(
    *,
    corr: pd.Series,
    mmc: pd.Series,
    payout_factor: float = DEFAULT_PAYOUT_FACTOR,
    corr_weight: float = DEFAULT_CORR_WEIGHT,
    mmc_weight: float = DEFAULT_MMC_WEIGHT,
    clip: float = DEFAULT_PAYOUT_CLIP,
) -> pd.Series:
    """What one unit of stake earns (or burns) per model:
    ``clip(payout_factor · (corr_weight·CORR + mmc_weight·MMC), -clip, clip)``.

    Both scores are Series by model, passed by keyword so CORR and MMC cannot be swapped
    unnoticed; a model must have both. A NaN score (e.g. constant predictions) counts as 0.
    """
    corr, mmc = _scores_by_model(corr, mmc, None)
    score = payout_score(corr=corr, mmc=mmc, corr_weight=corr_weight, mmc_weight=mmc_weight)
    return np.clip(payout_factor * score, -clip, clip).rename("payout_per_stake")


def payout(
    stakes: pd.Series,
    *,
    corr: pd.Series,
    mmc: pd.Series,
    payout_factor: float = DEFAULT_PAYOUT_FACTOR,
    corr_weight: float = DEFAULT_CORR_WEIGHT,
    mmc_weight: float = DEFAULT_MMC_WEIGHT,
    clip: float = DEFAULT_PAYOUT_CLIP,
) -> pd.Series:
    """``stake · clip(payout_factor · (corr_weight·CORR + mmc_weight·MMC), -clip, clip)``:
    ``stakes`` times :func:`payout_per_stake`.

    All three Series are indexed by model, the scores passed by keyword; every staked model needs
    both scores. A NaN score (e.g. constant predictions) counts as 0, so that model neither earns
    nor burns.
    """
    stakes = check_stakes(stakes)
    corr, mmc = _scores_by_model(corr, mmc, stakes.index)
    per_stake = payout_per_stake(
        corr=corr,
        mmc=mmc,
        payout_factor=payout_factor,
        corr_weight=corr_weight,
        mmc_weight=mmc_weight,
        clip=clip,
    )
    return (stakes * per_stake).rename("payout")


def payout_score(
    *,
    corr: pd.Series,
    mmc: pd.Series,
    corr_weight: float = DEFAULT_CORR_WEIGHT,
    mmc_weight: float = DEFAULT_MMC_WEIGHT,
) -> pd.Series:
    """``corr_weight·CORR + mmc_weight·MMC`` per model, a NaN score counting as 0: what payouts
    (and the tournament's reputation) rest on. Scores by keyword, as in :func:`payout`."""
    corr, mmc = _scores_by_model(corr, mmc, None)
    return (corr_weight * corr.fillna(0.0) + mmc_weight * mmc.fillna(0.0)).rename("score")


def _scores_by_model(
    corr: object, mmc: object, models: pd.Index | None
) -> tuple[pd.Series, pd.Series]:
    """CORR and MMC as Series over the same models: ``models`` when given (each must be
    scored), else the models both score."""
    scores = {"corr": require_series(corr, "corr"), "mmc": require_series(mmc, "mmc")}
    for name, series in scores.items():
        require_unique_ids(series, name)
        require_numeric(series, name)
    if models is None:
        corr_only = scores["corr"].index.difference(scores["mmc"].index)
        mmc_only = scores["mmc"].index.difference(scores["corr"].index)
        if len(corr_only) or len(mmc_only):
            raise ScoringInputError(
                f"corr and mmc must score the same models, but model(s) "
                f"{list(corr_only)[:5]} have only corr and {list(mmc_only)[:5]} only mmc."
            )
        models = scores["corr"].index
    for name, series in scores.items():
        missing = models.difference(series.index)
        if len(missing):
            raise ScoringInputError(
                f"model(s) {list(missing)[:5]} have a stake but no {name} score; score every "
                f"staked model, or drop its stake."
            )
    return scores["corr"].reindex(models), scores["mmc"].reindex(models)
