"""Numerai's per-era metrics: CORR, MMC / BMC, neutral correlation and contribution, FNC and
feature exposure.

Called on one era with numerai-tools' argument order, each returns numerai-tools' value. Where
numerai-tools asserts, these raise :class:`~fhe_toolkit.errors.ScoringInputError` naming the fix,
and none of them modifies its arguments. Inputs are aligned by id (index) and sorted internally,
so row order does not matter.

Documented results rather than errors:

- A prediction column holding a single value scores NaN (every metric here).
- Targets may hold NaN: those rows are left out (as numerai-tools does), and so are ids missing
  from one side, as long as no more than ``max_filtered_index_ratio`` of either side is dropped.
  ``neutral_correlation`` and ``neutral_contribution`` treat rows with a NaN neutralizer the same
  way, as numerai-tools does.
- A feature that is constant within the era has NaN exposure and is skipped by the summaries.
- ``top_bottom=k`` scores each prediction column on its ``k`` lowest and ``k`` highest rows only
  (numerai-tools' option); ``None`` or 0 scores every row. ``2·k`` above the rows scored is
  refused, since numerai-tools would count rows twice there.

Targets are centred and raised to the power 1.5 in their own float type (float32 in Numerai's
files), as numerai-tools does, and correlated in float64.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring._checks import (
    DEFAULT_MAX_FILTERED_INDEX_RATIO,
    aligned_ids,
    check_predictions,
    check_vector,
    nan_if_constant,
    require_frame,
)
from fhe_toolkit.scoring.neutralization import Neutralizer, check_features, features_for
from fhe_toolkit.scoring.transforms import (
    center,
    check_top_bottom,
    gaussian_array,
    orthogonalize,
    power_array,
    rank_gaussian_array,
    tie_kept_rank_array,
    top_bottom_mask,
)

EXPLAINED_TOLERANCE = 1e-9
"""A residual this small relative to the predictions is rounding noise: nothing is left."""

ExposureMethod = Literal["spearman", "pearson"]


class EraPredictions:
    """One era's checked predictions, ids sorted, with their tie-kept ranks and gaussian scores
    computed once and shared by every metric scored on all of the era's rows.

    The metric functions below are thin wrappers around its methods, which take inputs already
    checked; :func:`~fhe_toolkit.scoring.per_era.score_eras` keeps one per era, so CORR, MMC,
    BMC, FNC and exposure rank the predictions once between them.
    """

    def __init__(self, predictions: pd.DataFrame) -> None:
        if not predictions.index.is_monotonic_increasing:
            predictions = predictions.sort_index()
        self.frame = predictions
        self.values = predictions.to_numpy(np.float64)
        self._ranks: np.ndarray | None = None
        self._gaussian: np.ndarray | None = None

    @property
    def columns(self) -> pd.Index:
        return self.frame.columns

    def ranks(self) -> np.ndarray:
        """Tie-kept ranks of every column over all of the era's rows."""
        if self._ranks is None:
            self._ranks = tie_kept_rank_array(self.values)
        return self._ranks

    def rows(self, ids: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        """The values on sorted ``ids``, and their rank-gaussian transform (ranked among them)."""
        if ids.equals(self.frame.index):
            if self._gaussian is None:
                self._gaussian = gaussian_array(self.ranks())
            return self.values, self._gaussian
        values = self.values[self.frame.index.get_indexer(ids)]
        return values, rank_gaussian_array(values)

    def corr(
        self, targets: pd.Series, max_filtered_index_ratio: float, top_bottom: object
    ) -> np.ndarray:
        """CORR of each column: see :func:`numerai_corr`."""
        targets = center(targets)
        ids = aligned_ids({"targets": targets, "predictions": self.frame}, max_filtered_index_ratio)
        keep = check_top_bottom(top_bottom, len(ids))
        _, gaussian = self.rows(ids)
        # In the targets' own float type (float32 in Numerai's files), as numerai-tools does.
        powered = power_array(targets.loc[ids].to_numpy(), 1.5).astype(np.float64)
        return pearson_columns(power_array(gaussian, 1.5), powered, keep)

    def contribution(
        self,
        meta_model: pd.Series,
        live_targets: pd.Series,
        max_filtered_index_ratio: float,
        top_bottom: object,
    ) -> np.ndarray:
        """MMC of each column against ``meta_model``: see :func:`correlation_contribution`."""
        ids = aligned_ids(
            {"predictions": self.frame, "meta_model": meta_model, "live_targets": live_targets},
            max_filtered_index_ratio,
        )
        keep = check_top_bottom(top_bottom, len(ids))
        values, gaussian = self.rows(ids)
        meta = rank_gaussian_array(meta_model.loc[ids].to_numpy(np.float64))
        if not np.any(meta):
            raise ScoringInputError(
                "meta_model holds a single value in this era, so contributions to it are "
                "undefined; build the meta model from at least one non-constant prediction."
            )
        neutral = orthogonalize(gaussian, meta)
        scores = contribution_scores(neutral, live_targets.loc[ids].to_numpy(np.float64), keep)
        return nan_if_constant(scores, values)

    def feature_neutral_corr(
        self,
        features: object,
        targets: pd.Series,
        max_filtered_index_ratio: float,
        top_bottom: object,
    ) -> np.ndarray:
        """FNC of each column: see :func:`feature_neutral_corr`."""
        check_top_bottom(top_bottom, len(self.frame))
        design = features_for(self.frame, features, "features")
        _, gaussian = self.rows(self.frame.index)
        neutral = Neutralizer(design).residual(gaussian)
        explained = _explained(neutral, gaussian)
        with np.errstate(invalid="ignore", divide="ignore"):
            neutral = neutral / np.std(neutral, axis=0)
        # Zeroed columns score NaN (constant) or are set to 0 below (fully explained by features).
        neutral[:, explained] = 0.0
        frame = pd.DataFrame(neutral, index=self.frame.index, columns=self.columns)
        scores = EraPredictions(frame).corr(targets, max_filtered_index_ratio, top_bottom)
        constant = np.all(self.values == self.values[:1], axis=0)
        return np.where(explained & ~constant, 0.0, scores)

    def exposures(self, features: object, method: ExposureMethod) -> np.ndarray:
        """Exposure of each column to each feature (features × columns): see
        :func:`feature_exposures`."""
        if method not in ("spearman", "pearson"):
            raise ScoringInputError(f"method must be 'spearman' or 'pearson', but got {method!r}.")
        design = features_for(self.frame, features, "features")
        values = self.values
        if method == "spearman":
            values = self.ranks()
            design = tie_kept_rank_array(design)
        exposures = correlation_matrix(design.astype(np.float64, copy=False), values)
        return nan_if_constant(exposures, self.values)


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


def pearson_columns(values: np.ndarray, target: np.ndarray, top_bottom: int | None) -> np.ndarray:
    """Pearson correlation of each column of ``values`` with ``target`` (numerai-tools'
    ``pearson_correlation``).

    With ``top_bottom``, each column is correlated over its own ``top_bottom`` lowest and highest
    rows (:func:`~fhe_toolkit.scoring.transforms.top_bottom_mask`): means, then centred products,
    over those rows only. Constant columns give NaN.
    """
    if top_bottom is None:
        return correlation_matrix(values, target[:, None])[:, 0]
    kept = top_bottom_mask(values, top_bottom)
    rows = 2 * top_bottom
    target = np.broadcast_to(target[:, None], values.shape)
    values_centred = np.where(kept, values - (values * kept).sum(axis=0) / rows, 0.0)
    target_centred = np.where(kept, target - (target * kept).sum(axis=0) / rows, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values_centred * target_centred).sum(axis=0) / np.sqrt(
            (values_centred**2).sum(axis=0) * (target_centred**2).sum(axis=0)
        )


def contribution_targets(live_targets: np.ndarray) -> np.ndarray:
    """Targets as contributions use them: scaled by 4 when they lie in [0, 1] (buckets -2..2),
    then centred."""
    if np.all((live_targets >= 0) & (live_targets <= 1)):
        live_targets = live_targets * 4
    return live_targets - live_targets.mean()


def contribution_scores(
    neutral: np.ndarray, live_targets: np.ndarray, top_bottom: int | None
) -> np.ndarray:
    """Targets · orthogonalized predictions, per column (numerai-tools' ``contribution_scores``).

    1. prepare the targets (:func:`contribution_targets`, over all rows);
    2. without ``top_bottom``: ``targets · neutral / n``, a covariance since targets have mean 0;
       with it: the same sum over each column's ``top_bottom`` lowest and highest rows of
       ``neutral``, divided by ``2·top_bottom``.
    """
    targets = contribution_targets(live_targets)
    if top_bottom is None:
        return (targets @ neutral) / len(targets)
    kept = top_bottom_mask(neutral, top_bottom)
    return (targets @ np.where(kept, neutral, 0.0)) / (2 * top_bottom)


def numerai_corr(
    predictions: pd.DataFrame,
    targets: pd.Series,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
    top_bottom: int | None = None,
) -> pd.Series:
    """Numerai's CORR of each prediction column with the target.

    1. centre the targets on 0;
    2. align and sort ids (rows with NaN targets are dropped);
    3. tie-kept rank, gaussianize, then raise predictions to the power 1.5 (sign kept);
    4. raise the targets to the power 1.5 (sign kept);
    5. Pearson correlation of the two (with ``top_bottom``: over each column's ``top_bottom``
       lowest and highest rows of step 3).
    """
    era = EraPredictions(check_predictions(predictions))
    targets = check_vector(targets, "targets", allow_nan=True)
    scores = era.corr(targets, max_filtered_index_ratio, top_bottom)
    return pd.Series(scores, index=era.columns, name="corr")


def correlation_contribution(
    predictions: pd.DataFrame,
    meta_model: pd.Series,
    live_targets: pd.Series,
    top_bottom: int | None = None,
    *,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """MMC: how much each prediction column adds to the meta model's correlation with the target.

    1. align and sort ids (rows with NaN targets are dropped);
    2. tie-kept rank and gaussianize the predictions and the meta model;
    3. orthogonalize each prediction column to the meta model;
    4. :func:`contribution_scores`: targets in [0, 1] scaled by 4 (buckets -2..2) and centred,
       then targets · orthogonalized predictions / n (with ``top_bottom``: over each column's
       ``top_bottom`` lowest and highest orthogonalized rows, / ``2·top_bottom``).

    It is the derivative of ``corr((1 - ε)·meta_model + ε·predictions, target)`` at ε = 0, up to
    a per-era scale.
    """
    return _contribution(
        predictions, (meta_model, "meta_model"), live_targets, top_bottom, max_filtered_index_ratio
    ).rename("mmc")


def benchmark_contribution(
    predictions: pd.DataFrame,
    benchmark: pd.Series,
    live_targets: pd.Series,
    top_bottom: int | None = None,
    *,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """BMC: MMC computed against a benchmark model instead of the stake-weighted meta model."""
    return _contribution(
        predictions, (benchmark, "benchmark"), live_targets, top_bottom, max_filtered_index_ratio
    ).rename("bmc")


def _contribution(
    predictions: pd.DataFrame,
    reference: tuple[pd.Series, str],
    live_targets: pd.Series,
    top_bottom: int | None,
    max_filtered_index_ratio: float,
) -> pd.Series:
    """Each prediction column's contribution to ``reference`` (a Series and the name its
    errors call it by), as :func:`correlation_contribution` describes."""
    era = EraPredictions(check_predictions(predictions))
    against = check_vector(reference[0], reference[1], allow_nan=False)
    live_targets = check_vector(live_targets, "live_targets", allow_nan=True)
    scores = era.contribution(against, live_targets, max_filtered_index_ratio, top_bottom)
    return pd.Series(scores, index=era.columns)


def neutral_correlation(
    predictions: pd.DataFrame,
    neutralizers: pd.DataFrame,
    targets: pd.Series,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
    top_bottom: int | None = None,
) -> pd.Series:
    """Correlation of the predictions, neutralized to the neutralizers, with the target.

    1. centre the targets on 0;
    2. align and sort the ids of targets, predictions and neutralizers (rows with NaN dropped);
    3. tie-kept rank and gaussianize the predictions;
    4. neutralize them to the neutralizers (with an intercept), proportion 1;
    5. Pearson correlation with the targets (with ``top_bottom``: over each column's
       ``top_bottom`` lowest and highest neutralized rows).

    Unlike :func:`feature_neutral_corr`, nothing is raised to the power 1.5 and the neutralized
    predictions are not ranked again. Predictions the neutralizers explain entirely score 0 (as
    in FNC), where numerai-tools would correlate the rounding noise.
    """
    era = EraPredictions(check_predictions(predictions))
    neutralizers = check_features(neutralizers, "neutralizers")
    targets = center(check_vector(targets, "targets", allow_nan=True))
    ids = aligned_ids(
        {"targets": targets, "predictions": era.frame, "neutralizers": neutralizers},
        max_filtered_index_ratio,
    )
    keep = check_top_bottom(top_bottom, len(ids))
    values, gaussian = era.rows(ids)
    neutral = Neutralizer(neutralizers.loc[ids].to_numpy()).residual(gaussian)
    explained = _explained(neutral, gaussian)
    scores = pearson_columns(neutral, targets.loc[ids].to_numpy(np.float64), keep)
    scores = nan_if_constant(np.where(explained, 0.0, scores), values)
    return pd.Series(scores, index=era.columns, name="neutral_corr")


def neutral_contribution(
    predictions: pd.DataFrame,
    meta_model: pd.Series,
    neutralizers: pd.DataFrame,
    live_targets: pd.Series,
    top_bottom: int | None = None,
    *,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """MMC once the predictions and the meta model are both neutralized to the neutralizers.

    1. align and sort the ids of targets, predictions, meta model and neutralizers (rows with
       NaN targets or neutralizers dropped);
    2. tie-kept rank and gaussianize the predictions and the meta model;
    3. neutralize both to the neutralizers (with an intercept), proportion 1, in one solve;
    4. orthogonalize each neutralized prediction column to the neutralized meta model;
    5. :func:`contribution_scores` against the targets, as in :func:`correlation_contribution`.

    Nothing is raised to the power 1.5 or variance-normalized (numerai-tools' definition).
    """
    era = EraPredictions(check_predictions(predictions))
    meta_model = check_vector(meta_model, "meta_model", allow_nan=False)
    neutralizers = check_features(neutralizers, "neutralizers")
    live_targets = check_vector(live_targets, "live_targets", allow_nan=True)
    ids = aligned_ids(
        {
            "live_targets": live_targets,
            "predictions": era.frame,
            "meta_model": meta_model,
            "neutralizers": neutralizers,
        },
        max_filtered_index_ratio,
    )
    keep = check_top_bottom(top_bottom, len(ids))
    values, gaussian = era.rows(ids)
    meta = rank_gaussian_array(meta_model.loc[ids].to_numpy(np.float64))
    both = np.column_stack([gaussian, meta])
    neutral = Neutralizer(neutralizers.loc[ids].to_numpy()).residual(both)
    if _explained(neutral[:, -1:], both[:, -1:])[0]:
        raise ScoringInputError(
            "meta_model is constant or explained entirely by the neutralizers in this era, so "
            "neutral contributions to it are undefined; check that the meta model and the "
            "neutralizers are the ones of this era."
        )
    orthogonal = orthogonalize(neutral[:, :-1], neutral[:, -1])
    scores = contribution_scores(orthogonal, live_targets.loc[ids].to_numpy(np.float64), keep)
    return pd.Series(nan_if_constant(scores, values), index=era.columns, name="neutral_mmc")


def feature_neutral_corr(
    predictions: pd.DataFrame,
    features: pd.DataFrame,
    targets: pd.Series,
    top_bottom: int | None = None,
    *,
    max_filtered_index_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Series:
    """FNC: CORR of the predictions once fully neutralized to the features.

    1. tie-kept rank and gaussianize the predictions;
    2. neutralize them to the features (with an intercept), proportion 1
       (:class:`~fhe_toolkit.scoring.neutralization.Neutralizer`: one factorization for every
       column);
    3. variance-normalize, then take :func:`numerai_corr` against the targets (``top_bottom``
       passed on).

    Predictions the features explain entirely (what is left after step 2 is below
    ``EXPLAINED_TOLERANCE`` of their norm, i.e. rounding noise) score 0, where numerai-tools would
    return the CORR of that noise scaled up to unit variance.
    """
    era = EraPredictions(check_predictions(predictions))
    targets = check_vector(targets, "targets", allow_nan=True)
    scores = era.feature_neutral_corr(features, targets, max_filtered_index_ratio, top_bottom)
    return pd.Series(scores, index=era.columns, name="fnc")


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
    exposures = EraPredictions(predictions).exposures(features, method)
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


def _explained(neutral: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Columns of which neutralization left only rounding noise (or nothing)."""
    return np.linalg.norm(neutral, axis=0) <= EXPLAINED_TOLERANCE * np.linalg.norm(original, axis=0)
