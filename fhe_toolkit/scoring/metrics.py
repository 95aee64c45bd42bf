"""Numerai's per-era metrics: CORR, MMC / BMC, neutralization, FNC and feature exposure.

Called on one era with numerai-tools' argument order, each returns numerai-tools' value. Where
numerai-tools asserts, these raise :class:`~fhe_toolkit.errors.ScoringInputError` naming the fix,
and none of them modifies its arguments. Inputs are aligned by id (index) and sorted internally,
so row order does not matter.

Documented results rather than errors:

- A prediction column holding a single value scores NaN (CORR, MMC, BMC, FNC, exposure).
- Targets may hold NaN: those rows are left out (as numerai-tools does), and so are ids missing
  from one side, as long as no more than ``max_filtered_index_ratio`` of either side is dropped.
- A feature that is constant within the era has NaN exposure and is skipped by the summaries.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring._checks import (
    DEFAULT_MAX_FILTERED_INDEX_RATIO,
    align,
    check_predictions,
    check_vector,
    nan_if_constant,
    require_frame,
    require_no_nan,
    require_numeric,
    require_unique_ids,
)
from fhe_toolkit.scoring.transforms import (
    center,
    orthogonalize,
    power_array,
    rank_gaussian_array,
    tie_kept_rank_array,
)

EXPLAINED_TOLERANCE = 1e-9
"""A residual this small relative to the predictions is rounding noise: nothing is left."""

ExposureMethod = Literal["spearman", "pearson"]

PINV_RCOND = 1e-6
"""Singular values below this share of the largest are dropped, as numpy's pinv(rcond=1e-6)."""


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``a`` with every column of ``b`` (one product).

    Columns with zero variance give NaN.
    """
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / np.linalg.norm(a, axis=0)
        b = b / np.linalg.norm(b, axis=0)
    return a.T @ b


def numerai_corr_array(predictions: np.ndarray, centred_targets: np.ndarray) -> np.ndarray:
    """CORR of each prediction column against targets already centred and aligned."""
    ranked = power_array(rank_gaussian_array(predictions), 1.5)
    target = power_array(centred_targets, 1.5)
    return correlation_matrix(ranked, target[:, None])[:, 0]


def mmc_array(predictions: np.ndarray, meta_model: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """MMC of each prediction column, all inputs aligned and free of NaN.

    1. tie-kept rank and gaussianize the predictions and the meta model;
    2. orthogonalize each prediction column to the meta model;
    3. scale targets in [0, 1] by 4 (buckets -2..2) and centre them;
    4. MMC = targets · orthogonalized predictions / n (a covariance).
    """
    p = rank_gaussian_array(predictions)
    m = rank_gaussian_array(meta_model[:, None])[:, 0]
    if not np.any(m):
        raise ScoringInputError(
            "meta_model holds a single value in this era, so contributions to it are undefined; "
            "build the meta model from at least one non-constant prediction."
        )
    neutral = orthogonalize(p, m)
    if np.all((targets >= 0) & (targets <= 1)):
        targets = targets * 4
    targets = targets - targets.mean()
    return nan_if_constant((targets @ neutral) / len(targets), predictions)


def neutralize_array(values: np.ndarray, neutralizers: np.ndarray, proportion: float) -> np.ndarray:
    """``values - proportion · N (N⁺ values)`` with an intercept column added to ``N``.

    Uses the thin SVD of N: ``N N⁺ = U Uᵀ`` over the kept singular values, which is what numpy's
    ``pinv(N, rcond=1e-6)`` gives, without forming the pseudo-inverse.
    """
    design = np.column_stack([neutralizers.astype(np.float64), np.ones(len(neutralizers))])
    basis, singular, _ = np.linalg.svd(design, full_matrices=False)
    basis = basis[:, singular > PINV_RCOND * singular[0]]
    return values - proportion * (basis @ (basis.T @ values))


def numerai_corr(
    predictions: pd.DataFrame,
    targets: pd.Series,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """Numerai's CORR of each prediction column with the target.

    1. centre the targets on 0;
    2. align and sort ids (rows with NaN targets are dropped);
    3. tie-kept rank, gaussianize, then raise predictions to the power 1.5 (sign kept);
    4. raise the targets to the power 1.5 (sign kept);
    5. Pearson correlation of the two.
    """
    predictions = check_predictions(predictions)
    targets = center(check_vector(targets, "targets", allow_nan=True))
    targets, predictions = align(
        {"targets": targets, "predictions": predictions}, max_filtered_index_ratio
    )
    scores = numerai_corr_array(predictions.to_numpy(np.float64), targets.to_numpy(np.float64))
    return pd.Series(scores, index=predictions.columns, name="corr")


def correlation_contribution(
    predictions: pd.DataFrame,
    meta_model: pd.Series,
    live_targets: pd.Series,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """MMC: how much each prediction column adds to the meta model's correlation with the target.

    See :func:`mmc_array` for the steps. It is the derivative of
    ``corr((1 - ε)·meta_model + ε·predictions, target)`` at ε = 0, up to a per-era scale.
    """
    predictions = check_predictions(predictions)
    meta_model = check_vector(meta_model, "meta_model", allow_nan=False)
    live_targets = check_vector(live_targets, "live_targets", allow_nan=True)
    predictions, meta_model, live_targets = align(
        {"predictions": predictions, "meta_model": meta_model, "live_targets": live_targets},
        max_filtered_index_ratio,
    )
    scores = mmc_array(
        predictions.to_numpy(np.float64),
        meta_model.to_numpy(np.float64),
        live_targets.to_numpy(np.float64),
    )
    return pd.Series(scores, index=predictions.columns, name="mmc")


def benchmark_contribution(
    predictions: pd.DataFrame,
    benchmark: pd.Series,
    live_targets: pd.Series,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """BMC: MMC computed against a benchmark model instead of the stake-weighted meta model."""
    benchmark = check_vector(benchmark, "benchmark", allow_nan=False)
    return correlation_contribution(
        predictions, benchmark, live_targets, max_filtered_index_ratio
    ).rename("bmc")


def neutralize(
    df: pd.DataFrame,
    neutralizers: pd.DataFrame,
    proportion: float = 1.0,
) -> pd.DataFrame:
    """Subtract ``proportion`` of each column's least-squares fit on the neutralizers (+ 1s).

    ``neutralizers`` is aligned to ``df`` by id and must cover every id of ``df``. A constant column
    of ``df`` comes back as NaN, as in numerai-tools. The result keeps ``df``'s row order.
    """
    df = check_predictions(df, "df")
    if not 0.0 <= proportion <= 1.0:
        raise ScoringInputError(f"proportion must be within [0, 1], but got {proportion}.")
    design = _features_for(df, neutralizers, "neutralizers")
    values = df.to_numpy(np.float64)
    neutral = neutralize_array(values, design, proportion)
    neutral = np.where(np.all(values == values[:1], axis=0), np.nan, neutral)
    return pd.DataFrame(neutral, index=df.index, columns=df.columns)


def feature_neutral_corr(
    predictions: pd.DataFrame,
    features: pd.DataFrame,
    targets: pd.Series,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """FNC: CORR of the predictions once fully neutralized to the features.

    1. tie-kept rank and gaussianize the predictions;
    2. neutralize them to the features (with an intercept), proportion 1;
    3. variance-normalize, then take :func:`numerai_corr` against the targets.

    Predictions the features explain entirely (what is left after step 2 is below
    ``EXPLAINED_TOLERANCE`` of their norm, i.e. rounding noise) score 0, where numerai-tools would
    return the CORR of that noise scaled up to unit variance.
    """
    predictions = check_predictions(predictions)
    design = _features_for(predictions, features, "features")
    values = predictions.to_numpy(np.float64)
    ranked = rank_gaussian_array(values)
    neutral = neutralize_array(ranked, design, 1.0)
    explained = np.linalg.norm(neutral, axis=0) <= EXPLAINED_TOLERANCE * np.linalg.norm(
        ranked, axis=0
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        neutral = neutral / np.std(neutral, axis=0)
    # Zeroed columns score NaN (constant) or are set to 0 below (fully explained by features).
    neutral[:, explained] = 0.0
    scores = numerai_corr(
        pd.DataFrame(neutral, index=predictions.index, columns=predictions.columns),
        targets,
        max_filtered_index_ratio,
    )
    constant = np.all(values == values[:1], axis=0)
    return scores.where(~explained | constant, 0.0).rename("fnc")


def feature_exposures(
    predictions: pd.DataFrame,
    features: pd.DataFrame,
    method: ExposureMethod = "spearman",
) -> pd.DataFrame:
    """Correlation of each prediction column with each feature: features × models.

    ``method="spearman"`` correlates ranks (the toolkit's default); ``"pearson"`` correlates raw
    values, as numerai-tools' ``max_feature_correlation`` does. All exposures of all models come
    from one matrix product.
    """
    predictions = check_predictions(predictions)
    if method not in ("spearman", "pearson"):
        raise ScoringInputError(f"method must be 'spearman' or 'pearson', but got {method!r}.")
    design = _features_for(predictions, features, "features")
    values = predictions.to_numpy(np.float64)
    if method == "spearman":
        values = tie_kept_rank_array(values)
        design = tie_kept_rank_array(design)
    exposures = correlation_matrix(design.astype(np.float64, copy=False), values)
    exposures = nan_if_constant(exposures, predictions.to_numpy())
    return pd.DataFrame(exposures, index=features.columns, columns=predictions.columns)


def exposure_summary(exposures: pd.DataFrame) -> pd.DataFrame:
    """Max, mean and RMS of the absolute exposures of each model (NaN exposures skipped)."""
    exposures = require_frame(exposures, "exposures")
    magnitude = exposures.abs()
    return pd.DataFrame(
        {
            "max_exposure": magnitude.max(skipna=True),
            "mean_exposure": magnitude.mean(skipna=True),
            "rms_exposure": np.sqrt((magnitude**2).mean(skipna=True)),
        }
    )


def max_feature_correlation(s: pd.Series, features: pd.DataFrame) -> tuple[str, float]:
    """The feature most correlated (absolute Pearson) with ``s``, and that correlation."""
    s = check_vector(s, "s", allow_nan=False)
    name = "predictions" if s.name is None else s.name
    exposures = feature_exposures(s.to_frame(name), features, method="pearson").iloc[:, 0].abs()
    if exposures.isna().all():
        raise ScoringInputError(
            "no feature has a defined correlation with s (s or every feature is constant)."
        )
    best = exposures.idxmax()
    return str(best), float(exposures[best])


def _features_for(predictions: pd.DataFrame, features: object, name: str) -> np.ndarray:
    """The feature matrix in the rows of ``predictions``, checked."""
    frame = require_frame(features, name)
    if frame.shape[1] == 0:
        raise ScoringInputError(f"{name} has no columns.")
    require_unique_ids(frame, name)
    require_numeric(frame, name)
    missing = predictions.index.difference(frame.index)
    if len(missing):
        raise ScoringInputError(
            f"{len(missing)} prediction id(s) are not in {name}, e.g. {list(missing[:3])}; "
            f"pass the feature rows of the same ids (same era)."
        )
    frame = frame.loc[predictions.index]
    require_no_nan(frame, name)
    return frame.to_numpy()
