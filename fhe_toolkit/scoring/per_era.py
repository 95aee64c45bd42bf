"""Scoring many models era by era, and summarizing the per-era series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring._checks import (
    DEFAULT_MAX_FILTERED_INDEX_RATIO,
    check_predictions,
    check_vector,
    require_frame,
    require_unique_ids,
)
from fhe_toolkit.scoring.meta_model import stake_weighted_meta_model
from fhe_toolkit.scoring.metrics import (
    ExposureMethod,
    benchmark_contribution,
    correlation_contribution,
    exposure_summary,
    feature_exposures,
    feature_neutral_corr,
    numerai_corr,
)

SUMMARY_STATS = ("mean", "std", "sharpe", "max_drawdown")


def score_eras(
    predictions: pd.DataFrame,
    data: pd.DataFrame,
    *,
    target: str = "target",
    era_col: str = "era",
    meta_model: pd.Series | None = None,
    stakes: pd.Series | None = None,
    benchmark: pd.Series | None = None,
    exposure_features: Sequence[str] | None = None,
    fnc_features: Sequence[str] | None = None,
    exposure_method: ExposureMethod = "spearman",
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.DataFrame:
    """Score every prediction column in every era of ``data``.

    Arguments:
        predictions: one column per model, indexed by id.
        data: indexed by id, with the era column, the target and the feature columns.
        meta_model, benchmark: Series by id; when given, MMC and BMC are scored against them.
        stakes: Series by model; without ``meta_model``, MMC is scored against the
            stake-weighted meta model of these predictions (:func:`stake_weighted_meta_model`).
        exposure_features: features for exposure (default: every ``feature_*`` column of data;
            an empty list skips exposure).
        fnc_features: features for FNC (default: the exposure features; empty skips FNC).

    Returns one row per (era, model): ``era``, ``model``, ``corr``, then ``mmc`` / ``bmc`` when
    their reference was given, ``fnc``, ``max_exposure``, ``mean_exposure``, ``rms_exposure``.
    Eras whose target is all NaN (not yet resolved) get NaN target-based scores.
    """
    predictions = check_predictions(predictions)
    data = require_frame(data, "data")
    require_unique_ids(data, "data")
    default_features = [c for c in data.columns if str(c).startswith("feature_")]
    exposure_cols = list(default_features if exposure_features is None else exposure_features)
    fnc_cols = list(exposure_cols if fnc_features is None else fnc_features)
    needed = [era_col, target, *exposure_cols, *fnc_cols]
    absent = [c for c in dict.fromkeys(needed) if c not in data.columns]
    if absent:
        raise ScoringInputError(
            f"data has no column(s) {absent[:5]}; it needs the era column {era_col!r}, the target "
            f"{target!r} and the feature columns to score against."
        )
    unknown = predictions.index.difference(data.index)
    if len(unknown):
        raise ScoringInputError(
            f"{len(unknown)} prediction id(s) are not in data, e.g. {list(unknown[:3])}; "
            f"predictions must be indexed by the ids of the data they were made for."
        )
    if meta_model is None and stakes is not None:
        meta_model = stake_weighted_meta_model(predictions, stakes, eras=data[era_col])
    refs = {
        name: check_vector(series, name, allow_nan=False)
        for name, series in (("meta_model", meta_model), ("benchmark", benchmark))
        if series is not None
    }

    rows = []
    eras = data.loc[predictions.index, era_col]
    for era, ids in sorted(predictions.groupby(eras).groups.items()):
        era_preds = predictions.loc[ids]
        era_data = data.loc[ids]
        targets = era_data[target]
        scores = pd.DataFrame(index=predictions.columns)
        resolved = bool(targets.notna().any())
        scores["corr"] = (
            numerai_corr(era_preds, targets, max_filtered_index_ratio) if resolved else np.nan
        )
        for name, reference in refs.items():
            score = correlation_contribution if name == "meta_model" else benchmark_contribution
            column = "mmc" if name == "meta_model" else "bmc"
            scores[column] = (
                score(era_preds, _within(reference, ids), targets, max_filtered_index_ratio)
                if resolved
                else np.nan
            )
        if fnc_cols:
            scores["fnc"] = (
                feature_neutral_corr(
                    era_preds, era_data[fnc_cols], targets, max_filtered_index_ratio
                )
                if resolved
                else np.nan
            )
        if exposure_cols:
            exposures = feature_exposures(era_preds, era_data[exposure_cols], exposure_method)
            scores = scores.join(exposure_summary(exposures))
        rows.append(scores.rename_axis("model").reset_index().assign(era=era))
    result = pd.concat(rows, ignore_index=True)
    return result[["era", *[c for c in result.columns if c != "era"]]]


def summarize_series(values: pd.Series) -> dict[str, float]:
    """Mean, std (ddof 0), Sharpe (mean / std) and max drawdown of a per-era score series.

    Max drawdown is ``max(cummax(cumsum) - cumsum)`` in era order. NaN eras are skipped.
    """
    values = values.dropna().to_numpy(np.float64)
    if len(values) == 0:
        return dict.fromkeys(SUMMARY_STATS, np.nan)
    mean = float(np.mean(values))
    std = float(np.std(values))
    cumulative = np.cumsum(values)
    return {
        "mean": mean,
        "std": std,
        "sharpe": mean / std if std > 0 else np.nan,
        "max_drawdown": float(np.max(np.maximum.accumulate(cumulative) - cumulative)),
    }


def summarize(per_era: pd.DataFrame) -> pd.DataFrame:
    """Summaries of every metric of :func:`score_eras`' output: rows (model, metric), columns
    ``mean``, ``std``, ``sharpe``, ``max_drawdown``."""
    per_era = require_frame(per_era, "per_era")
    if not {"era", "model"} <= set(per_era.columns):
        raise ScoringInputError(
            "per_era needs 'era' and 'model' columns, as score_eras returns them."
        )
    long = per_era.sort_values("era").melt(id_vars=["era", "model"], var_name="metric")
    summary = {
        key: summarize_series(group["value"])
        for key, group in long.groupby(["model", "metric"], sort=False)
    }
    frame = pd.DataFrame.from_dict(summary, orient="index", columns=list(SUMMARY_STATS))
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["model", "metric"])
    return frame


def by_model(summary: pd.DataFrame, stat: str = "mean") -> pd.DataFrame:
    """One row per model, one column per metric (in scoring order), holding ``stat`` of
    :func:`summarize`'s output."""
    metrics = list(dict.fromkeys(summary.index.get_level_values("metric")))
    models = list(dict.fromkeys(summary.index.get_level_values("model")))
    return summary[stat].unstack("metric").loc[models, metrics]


def _within(series: pd.Series, ids: pd.Index) -> pd.Series:
    return series.loc[series.index.intersection(ids)]
