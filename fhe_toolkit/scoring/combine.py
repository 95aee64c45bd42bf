"""How the fund combines the submitted forecasts into one meta model: a choice, not a given.

Three constructions, each a pure function over indexed pandas objects and built era by era like
:func:`~fhe_toolkit.scoring.meta_model.stake_weighted_meta_model` (which is the first of them):

- ``stake_weighted``: every model weighs its stake (Numerai's meta model, the toolkit's default);
- ``reputation_filtered``: only models whose reputation is at least a threshold count, weighed
  by stake: accounts that have scored badly lately (noise, lottery tickets, negations) drop out;
- ``cluster_capped``: submissions that are nearly the same forecast (|correlation| ≥ a
  threshold, linked by single linkage) form a cluster, and a cluster weighs no more than its
  largest member's stake (or, with ``cap``, no more than that share of all stakes): copies of a
  model and one signal split over several accounts (sybils) then add no weight to that signal.

:func:`combine` picks one by name. Each returns the meta model as a Series by id named
``meta_model``; :func:`combination_weights` returns the stakes each construction really uses.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd
from scipy.sparse import csgraph

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring._checks import (
    check_predictions,
    era_rows,
    require_numeric,
    require_series,
    require_unique_ids,
)
from fhe_toolkit.scoring.meta_model import check_stakes, stake_weighted_meta_model
from fhe_toolkit.scoring.transforms import rank_gaussian_array

CombineMethod = Literal["stake_weighted", "reputation_filtered", "cluster_capped"]
COMBINE_METHODS: tuple[str, ...] = get_args(CombineMethod)
DEFAULT_REPUTATION_THRESHOLD = 0.0
"""Reputation (mean payout score of the latest rounds) a model needs to count: above zero."""
DEFAULT_CLUSTER_THRESHOLD = 0.9
"""|correlation| at which two submissions count as the same forecast."""


def reputation_filtered(
    predictions: pd.DataFrame,
    stakes: pd.Series,
    *,
    eras: pd.Series | None,
    reputation: pd.Series,
    threshold: float = DEFAULT_REPUTATION_THRESHOLD,
) -> pd.Series:
    """The stake-weighted meta model of the models whose reputation is ≥ ``threshold``.

    1. keep the staked models with ``reputation ≥ threshold``; a model without a reputation
       (missing from ``reputation``, or NaN: e.g. a newcomer) is left out;
    2. :func:`stake_weighted_meta_model` of those, era by era.

    ``reputation`` is a Series by model, e.g. the fund's mean payout score over the latest rounds.
    Raises :class:`~fhe_toolkit.errors.ScoringInputError` when no staked model qualifies.
    """
    weights = combination_weights(
        predictions, stakes, eras=eras, method="reputation_filtered",
        reputation=reputation, reputation_threshold=threshold,
    )  # fmt: skip
    return stake_weighted_meta_model(predictions, weights, eras=eras)


def cluster_capped(
    predictions: pd.DataFrame,
    stakes: pd.Series,
    *,
    eras: pd.Series | None,
    threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    cap: float | None = None,
) -> pd.Series:
    """A stake-weighted meta model in which each cluster of near-identical forecasts is capped.

    1. cluster the staked models (:func:`prediction_clusters`): |correlation| ≥ ``threshold``
       links two models, and linked models share a cluster (single linkage);
    2. cap each cluster's total stake: at its largest member's stake (``cap=None``), or at
       ``cap`` × the sum of all stakes (``0 < cap ≤ 1``); a cluster below its cap keeps it all;
    3. scale the members of a capped cluster down in proportion to their stakes;
    4. :func:`stake_weighted_meta_model` with those weights, era by era.

    With ``cap=None``, k accounts submitting one forecast weigh what the largest of them would
    alone, and a copy of a model adds nothing to that model's weight. Clusters are found once,
    over all rows given (within-era correlations, averaged), and the weights apply to every era.

    The choice has a price, measured by the incentive lab (``docs/lab.md``): with ``cap=None``
    one signal split evenly over five accounts weighs a fifth of what one account with the same
    stake does, so its MMC, and its payout per stake, rise (0.0083 against 0.0068 per round);
    with ``cap=0.1`` splitting gains nothing, but copies add weight until the cap.
    """
    weights = combination_weights(
        predictions, stakes, eras=eras, method="cluster_capped",
        cluster_threshold=threshold, cap=cap,
    )  # fmt: skip
    return stake_weighted_meta_model(predictions, weights, eras=eras)


def combine(
    predictions: pd.DataFrame,
    stakes: pd.Series,
    *,
    eras: pd.Series | None,
    method: str = "stake_weighted",
    reputation: pd.Series | None = None,
    reputation_threshold: float = DEFAULT_REPUTATION_THRESHOLD,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    cap: float | None = None,
) -> pd.Series:
    """The meta model by ``method``: ``stake_weighted`` (:func:`stake_weighted_meta_model`),
    ``reputation_filtered`` (:func:`reputation_filtered`, needs ``reputation``) or
    ``cluster_capped`` (:func:`cluster_capped`). Options of the other methods are ignored."""
    weights = combination_weights(
        predictions, stakes, eras=eras, method=method, reputation=reputation,
        reputation_threshold=reputation_threshold, cluster_threshold=cluster_threshold, cap=cap,
    )  # fmt: skip
    return stake_weighted_meta_model(predictions, weights, eras=eras)


def combination_weights(
    predictions: pd.DataFrame,
    stakes: pd.Series,
    *,
    eras: pd.Series | None,
    method: str = "stake_weighted",
    reputation: pd.Series | None = None,
    reputation_threshold: float = DEFAULT_REPUTATION_THRESHOLD,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    cap: float | None = None,
) -> pd.Series:
    """The stake each model weighs in ``method``'s meta model, by model (0 for those left out).

    The meta model is :func:`stake_weighted_meta_model` of ``predictions`` with these as stakes.
    See :func:`combine` for the arguments.
    """
    if method not in COMBINE_METHODS:
        raise ScoringInputError(
            f"method must be one of {list(COMBINE_METHODS)}, but got {method!r}."
        )
    predictions = check_predictions(predictions)
    stakes = check_stakes(stakes, predictions.columns)
    if stakes.sum() <= 0:
        raise ScoringInputError(
            "the stakes add up to 0, so there is no meta model; give at least one model a stake."
        )
    if method == "reputation_filtered":
        if reputation is None:
            raise ScoringInputError(
                "method 'reputation_filtered' needs reputation=, a Series of reputations by "
                "model (e.g. the mean payout score of each model's latest rounds)."
            )
        return _filter_by_reputation(stakes, reputation, reputation_threshold)
    if method == "cluster_capped":
        clusters = prediction_clusters(
            predictions[stakes.index[stakes > 0]], eras=eras, threshold=cluster_threshold
        )
        return _capped(stakes, clusters, cap)
    return stakes.rename("weight")


def prediction_clusters(
    predictions: pd.DataFrame,
    *,
    eras: pd.Series | None,
    threshold: float = DEFAULT_CLUSTER_THRESHOLD,
) -> pd.Series:
    """Clusters of near-identical forecasts: a cluster number by model (0, 1, ... in column order
    of each cluster's first model).

    1. within each era, tie-kept rank and gaussianize every column, then take the Pearson
       correlation of every pair of columns; average those over eras, weighted by rows;
    2. link two models when ``|correlation| ≥ threshold`` (a model and its negation are the
       same forecast); a column constant in every era links to nothing;
    3. clusters are the connected groups of links (single linkage).
    """
    predictions = check_predictions(predictions)
    if not 0.0 < threshold <= 1.0:
        raise ScoringInputError(f"threshold must be within (0, 1], but got {threshold}.")
    values = predictions.to_numpy(np.float64)
    total = np.zeros((values.shape[1], values.shape[1]))
    for _, rows in era_rows(predictions.index, eras):
        if len(rows) < 2:
            continue
        gaussian = rank_gaussian_array(values[rows])
        centred = gaussian - gaussian.mean(axis=0)
        norms = np.linalg.norm(centred, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = np.where(norms > 0, centred / norms, 0.0)
        total += len(rows) * (unit.T @ unit)
    correlation = total / len(values)
    linked = np.abs(correlation) >= threshold - 1e-12
    _, labels = csgraph.connected_components(linked, directed=False)
    # Number clusters in order of their first member, so the labels do not depend on scipy.
    _, first = np.unique(labels, return_index=True)
    renumber = {old: new for new, old in enumerate(labels[np.sort(first)])}
    return pd.Series(
        [renumber[label] for label in labels], index=predictions.columns, name="cluster"
    )


def _filter_by_reputation(stakes: pd.Series, reputation: object, threshold: float) -> pd.Series:
    given = require_series(reputation, "reputation")
    require_unique_ids(given, "reputation")
    require_numeric(given, "reputation")
    if not np.isfinite(threshold):
        raise ScoringInputError(f"the reputation threshold must be finite, but got {threshold}.")
    passing = given.reindex(stakes.index) >= threshold
    weights = stakes.where(passing, 0.0)
    if weights.sum() <= 0:
        staked = stakes.index[stakes > 0]
        raise ScoringInputError(
            f"no staked model has a reputation ≥ {threshold}: their reputations are "
            f"{given.reindex(staked).head(10).to_dict()}. Lower the threshold, or build the meta "
            "model by stake alone (method 'stake_weighted') until reputations exist."
        )
    return weights.rename("weight")


def _capped(stakes: pd.Series, clusters: pd.Series, cap: float | None) -> pd.Series:
    if cap is not None and not 0.0 < cap <= 1.0:
        raise ScoringInputError(
            f"cap must be a share of all stakes within (0, 1], or None for the largest member's "
            f"stake; got {cap}."
        )
    staked = stakes[clusters.index].to_numpy()
    labels = clusters.to_numpy()
    totals = np.bincount(labels, weights=staked)
    largest = np.zeros(len(totals))
    np.maximum.at(largest, labels, staked)
    limits = largest if cap is None else np.full(len(totals), cap * stakes.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(totals > 0, np.minimum(1.0, limits / totals), 1.0)
    weights = stakes.copy()
    weights[clusters.index] = staked * scale[labels]
    return weights.rename("weight")
