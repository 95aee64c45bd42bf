"""Scoring many models era by era, and summarizing the per-era series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError, ScoringTypeError
from fhe_toolkit.scoring._checks import (
    DEFAULT_MAX_FILTERED_INDEX_RATIO,
    check_predictions,
    check_vector,
    era_rows,
    require_frame,
    require_series,
    require_unique_ids,
)
from fhe_toolkit.scoring.meta_model import stake_weighted_meta_model
from fhe_toolkit.scoring.metrics import EraPredictions, ExposureMethod, exposure_summary
from fhe_toolkit.scoring.transforms import check_top_bottom

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
    top_bottom: int | None = None,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.DataFrame:
    """Score every prediction column in every era of ``data``.

    Arguments:
        predictions: one column per model, indexed by id.
        data: indexed by id, with the era column, the target and the feature columns.
        meta_model, benchmark: Series by id; when given, MMC and BMC are scored against them.
        stakes: Series by model; MMC is then scored against the stake-weighted meta model of
            these predictions, built era by era (:func:`stake_weighted_meta_model`). Give
            ``meta_model`` or ``stakes``, not both.
        exposure_features: features for exposure (default: every ``feature_*`` column of data;
            an empty list skips exposure).
        fnc_features: features for FNC (default: the exposure features; empty skips FNC).
        top_bottom: score CORR, MMC, BMC and FNC on each model's top and bottom ``top_bottom``
            rows of each era (numerai-tools' option); None scores every row.

    Each era's predictions are ranked and gaussianized once for all its metrics
    (:class:`~fhe_toolkit.scoring.metrics.EraPredictions`), and FNC's neutralization is solved
    once per era for all models; the scores equal the single-era functions' (CORR:
    :func:`numerai_corr`, MMC: :func:`correlation_contribution`, BMC, FNC:
    :func:`feature_neutral_corr`, exposure: :func:`feature_exposures`).

    Returns one row per (era, model), eras in sorted order: ``era``, ``model``, ``corr``, then
    ``mmc`` / ``bmc`` when their reference was given, ``fnc``, ``max_exposure``,
    ``mean_exposure``, ``rms_exposure``. Eras whose target is all NaN (not yet resolved) get NaN
    target-based scores. Every predicted id needs an era (NaN is refused).
    """
    predictions = check_predictions(predictions)
    data = require_frame(data, "data")
    require_unique_ids(data, "data")
    if meta_model is not None and stakes is not None:
        raise ScoringInputError(
            "score_eras got both meta_model and stakes, but MMC is scored against one meta "
            "model: pass meta_model=..., or stakes=... to build it from these predictions "
            "(stake_weighted_meta_model), not both."
        )
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
    check_top_bottom(top_bottom, len(predictions))
    targets = check_vector(data[target], f"data[{target!r}]", allow_nan=True)
    if stakes is not None:
        meta_model = stake_weighted_meta_model(predictions, stakes, eras=data[era_col])
    refs = {
        column: check_vector(series, name, allow_nan=False)
        for name, column, series in (
            ("meta_model", "mmc", meta_model),
            ("benchmark", "bmc", benchmark),
        )
        if series is not None
    }

    rows = []
    for era_label, positions in era_rows(predictions.index, data[era_col]):
        era = EraPredictions(predictions.iloc[positions])
        ids = era.frame.index
        era_targets = targets.loc[ids]
        scores = pd.DataFrame(index=predictions.columns)
        resolved = bool(era_targets.notna().any())
        scores["corr"] = (
            era.corr(era_targets, max_filtered_index_ratio, top_bottom) if resolved else np.nan
        )
        for column, reference in refs.items():
            scores[column] = (
                era.contribution(
                    _within(reference, ids), era_targets, max_filtered_index_ratio, top_bottom
                )
                if resolved
                else np.nan
            )
        if fnc_cols:
            scores["fnc"] = (
                era.feature_neutral_corr(
                    data.loc[ids, fnc_cols], era_targets, max_filtered_index_ratio, top_bottom
                )
                if resolved
                else np.nan
            )
        if exposure_cols:
            exposures = era.exposures(data.loc[ids, exposure_cols], exposure_method)
            scores = scores.join(
                exposure_summary(pd.DataFrame(exposures, columns=predictions.columns))
            )
        rows.append(scores.rename_axis("model").reset_index().assign(era=era_label))
    result = pd.concat(rows, ignore_index=True)
    return result[["era", *[c for c in result.columns if c != "era"]]]


def summarize_series(values: pd.Series) -> dict[str, float]:
    """Mean, std (ddof 0), Sharpe (mean / std) and max drawdown of a per-era score series.

    Max drawdown is ``max(cummax(cumsum) - cumsum)`` in era order. NaN eras are skipped.
    """
    values = require_series(values, "values")
    _require_scores(
        values.to_frame("values" if values.name is None else values.name),
        "values",
        "pass the Series of one metric",
    )
    numbers = values.dropna().to_numpy(np.float64)
    if len(numbers) == 0:
        return dict.fromkeys(SUMMARY_STATS, np.nan)
    mean = float(np.mean(numbers))
    std = float(np.std(numbers))
    cumulative = np.cumsum(numbers)
    return {
        "mean": mean,
        "std": std,
        "sharpe": mean / std if std > 0 else np.nan,
        "max_drawdown": float(np.max(np.maximum.accumulate(cumulative) - cumulative)),
    }


def summarize(per_era: pd.DataFrame) -> pd.DataFrame:
    """Summaries of every metric of :func:`score_eras`' output: rows (model, metric), columns
    ``mean``, ``std``, ``sharpe``, ``max_drawdown``.

    Every column besides ``era`` and ``model`` is a metric and must be numeric.
    """
    per_era = require_frame(per_era, "per_era")
    if not {"era", "model"} <= set(per_era.columns):
        raise ScoringInputError(
            "per_era needs 'era' and 'model' columns, as score_eras returns them."
        )
    metrics = per_era.drop(columns=["era", "model"])
    _require_scores(metrics, "per_era", "drop them first (e.g. `per_era.drop(columns=[...])`)")
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


def _require_scores(scores: pd.DataFrame, name: str, fix: str) -> None:
    """Every column holds numbers (or NaN): a column with anything else is not a per-era score."""
    bad = {}
    for column in scores.columns:
        values = scores[column]
        if pd.api.types.is_numeric_dtype(values.dtype):
            continue
        not_numbers = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        if len(not_numbers):
            bad[str(column)] = not_numbers.iloc[0]
    if bad:
        raise ScoringTypeError(
            f"{name} column(s) {list(bad)[:5]} are not numeric scores (e.g. "
            f"{next(iter(bad.values()))!r} in {next(iter(bad))!r}), so they cannot be summarized; "
            f"{fix}, or convert them with `pd.to_numeric`."
        )
