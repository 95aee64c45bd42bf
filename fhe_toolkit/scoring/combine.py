"""How the fund combines the submitted forecasts into one meta model: a choice, not a given.

Three constructions, each a pure function over indexed pandas objects and built era by era like
:func:`~fhe_toolkit.scoring.meta_model.stake_weighted_meta_model` (which is the first of them):

- ``stake_weighted``: every model weighs its stake (Numerai's meta model, the toolkit's default);
- ``reputation_filtered``: only models whose reputation is at least a threshold count, weighed
  by stake: accounts that have scored badly lately (noise, lottery tickets, negations) drop out;
- ``cluster_capped``: submissions that are nearly the same forecast (|correlation| ≥ a
  threshold, linked by single linkage) form a cluster, and a cluster weighs no more than a share
  of all stakes (``cap``, :data:`DEFAULT_CLUSTER_CAP`): no one forecast, however many accounts
  or copies submit it, dominates the meta model, and splitting it over accounts gains nothing.

:func:`combine` picks one by name and returns the meta model (a Series by id named
``meta_model``) with the stakes the construction really used; :func:`reputation_filtered` and
:func:`cluster_capped` return the meta model alone.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypedDict, Unpack, get_args

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
DEFAULT_CLUSTER_CAP = 0.1
"""The share of all stakes a cluster of one forecast may weigh at most. A share of the total,
unlike a cap at the cluster's largest member, does not depend on how the cluster's stake is
split over accounts, so splitting one signal over several accounts (sybils) gains nothing
(``docs/lab.md`` has the lab's figures)."""


class CombineOptions(TypedDict, total=False):
    """The options of the constructions; each method reads its own and ignores the others."""

    reputation: pd.Series | None
    """``reputation_filtered``: a Series of reputations by model (required)."""
    reputation_threshold: float
    """``reputation_filtered``: the reputation a model needs (default 0)."""
    cluster_threshold: float
    """``cluster_capped``: the |correlation| that links two models (default 0.9)."""
    cap: float
    """``cluster_capped``: a cluster's largest share of all stakes, in (0, 1] (default 0.1)."""


class Combined(NamedTuple):
    """A meta model and the weights it was built with."""

    meta_model: pd.Series
    """By id, named ``meta_model``."""
    weights: pd.Series
    """The stake each model weighs, by model (0 for those left out), named ``weight``: the meta
    model is :func:`stake_weighted_meta_model` of the predictions with these as stakes."""


def combine(
    predictions: pd.DataFrame,
    stakes: pd.Series,
    *,
    eras: pd.Series | None,
    method: str = "stake_weighted",
    **options: Unpack[CombineOptions],
) -> Combined:
    """The meta model by ``method`` and the weights it uses: ``stake_weighted``
    (:func:`stake_weighted_meta_model`), ``reputation_filtered`` (:func:`reputation_filtered`,
    needs ``reputation=``) or ``cluster_capped`` (:func:`cluster_capped`), built era by era.

    ``options``: :class:`CombineOptions` (``reputation``, ``reputation_threshold``,
    ``cluster_threshold``, ``cap``); the other methods' options are ignored, unknown ones
    refused.
    """
    if method not in COMBINE_METHODS:
        raise ScoringInputError(
            f"method must be one of {list(COMBINE_METHODS)}, but got {method!r}."
        )
    unknown = sorted(set(options).difference(CombineOptions.__annotations__))
    if unknown:
        raise ScoringInputError(
            f"unknown option(s) {unknown}; the constructions take "
            f"{list(CombineOptions.__annotations__)}."
        )
    predictions = check_predictions(predictions)
    stakes = check_stakes(stakes, predictions.columns)
    if stakes.sum() <= 0:
        raise ScoringInputError(
            "the stakes add up to 0, so there is no meta model; give at least one model a stake."
        )
    weights = stakes.rename("weight")
    if method == "reputation_filtered":
        reputation = options.get("reputation")
        if reputation is None:
            raise ScoringInputError(
                "method 'reputation_filtered' needs reputation=, a Series of reputations by "
                "model (e.g. the mean payout score of each model's latest rounds)."
            )
        threshold = options.get("reputation_threshold", DEFAULT_REPUTATION_THRESHOLD)
        weights = _filter_by_reputation(stakes, reputation, threshold)
    elif method == "cluster_capped":
        clusters = prediction_clusters(
            predictions[stakes.index[stakes > 0]], eras=eras,
            threshold=options.get("cluster_threshold", DEFAULT_CLUSTER_THRESHOLD),
        )  # fmt: skip
        weights = _capped(stakes, clusters, options.get("cap", DEFAULT_CLUSTER_CAP))
    return Combined(stake_weighted_meta_model(predictions, weights, eras=eras), weights)


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
    options = CombineOptions(reputation=reputation, reputation_threshold=threshold)
    return combine(
        predictions, stakes, eras=eras, method="reputation_filtered", **options
    ).meta_model


def cluster_capped(
    predictions: pd.DataFrame,
    stakes: pd.Series,
    *,
    eras: pd.Series | None,
    threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    cap: float = DEFAULT_CLUSTER_CAP,
) -> pd.Series:
    """A stake-weighted meta model in which each cluster of near-identical forecasts is capped.

    1. cluster the staked models (:func:`prediction_clusters`): |correlation| ≥ ``threshold``
       links two models, and linked models share a cluster (single linkage);
    2. cap each cluster's total stake at ``cap`` × the sum of all stakes (``0 < cap ≤ 1``; 1
       caps nothing); a cluster below its cap keeps it all;
    3. scale the members of a capped cluster down in proportion to their stakes;
    4. :func:`stake_weighted_meta_model` with those weights, era by era.

    A cluster's weight depends only on its total stake, not on how many accounts hold it, so
    splitting one forecast over several accounts gains nothing; copies of a model add weight
    to its forecast until the cap. Clusters are found once, over all rows given (within-era
    correlations, averaged), and the weights apply to every era.
    """
    options = CombineOptions(cluster_threshold=threshold, cap=cap)
    return combine(predictions, stakes, eras=eras, method="cluster_capped", **options).meta_model


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


def _capped(stakes: pd.Series, clusters: pd.Series, cap: float) -> pd.Series:
    if isinstance(cap, bool) or not 0.0 < cap <= 1.0:
        raise ScoringInputError(
            f"cap must be a share of all stakes within (0, 1] (1 caps nothing), but got {cap!r}."
        )
    staked = stakes[clusters.index].to_numpy()
    labels = clusters.to_numpy()
    totals = np.bincount(labels, weights=staked)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(totals > 0, np.minimum(1.0, cap * stakes.sum() / totals), 1.0)
    weights = stakes.copy()
    weights[clusters.index] = staked * scale[labels]
    return weights.rename("weight")
