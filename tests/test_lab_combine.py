"""Meta-model constructions (fhe_toolkit.scoring.combine): known answers and refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring import (
    COMBINE_METHODS,
    DEFAULT_CLUSTER_CAP,
    cluster_capped,
    combine,
    prediction_clusters,
    reputation_filtered,
    stake_weighted_meta_model,
)

ROWS = 300


@pytest.fixture
def frame() -> tuple[pd.DataFrame, pd.Series]:
    """Three independent models a, b, c over two eras, and the eras."""
    rng = np.random.default_rng(0)
    ids = pd.Index([f"id{i:04d}" for i in range(ROWS)], name="id")
    predictions = pd.DataFrame(rng.normal(size=(ROWS, 3)), index=ids, columns=["a", "b", "c"])
    eras = pd.Series(np.where(np.arange(ROWS) < ROWS // 2, "0001", "0002"), index=ids)
    return predictions, eras


def test_stake_weighted_is_todays_meta_model(frame):
    predictions, eras = frame
    stakes = pd.Series({"a": 1.0, "b": 2.0, "c": 0.5})
    meta, weights = combine(predictions, stakes, eras=eras)
    pd.testing.assert_series_equal(meta, stake_weighted_meta_model(predictions, stakes, eras=eras))
    pd.testing.assert_series_equal(weights, stakes.rename("weight"))
    assert COMBINE_METHODS == ("stake_weighted", "reputation_filtered", "cluster_capped")


def test_reputation_filtered_keeps_only_reputable_models(frame):
    predictions, eras = frame
    stakes = pd.Series({"a": 1.0, "b": 2.0, "c": 0.5})
    reputation = pd.Series({"a": 0.01, "b": -0.002, "c": np.nan})
    meta = reputation_filtered(predictions, stakes, eras=eras, reputation=reputation)
    pd.testing.assert_series_equal(
        meta, stake_weighted_meta_model(predictions[["a"]], stakes[["a"]], eras=eras)
    )
    weights = combine(
        predictions, stakes, eras=eras, method="reputation_filtered", reputation=reputation,
        reputation_threshold=-0.005,
    ).weights  # fmt: skip
    assert weights.to_dict() == {"a": 1.0, "b": 2.0, "c": 0.0}
    with pytest.raises(ScoringInputError, match=r"no staked model has a reputation ≥ 0\.02"):
        reputation_filtered(predictions, stakes, eras=eras, reputation=reputation, threshold=0.02)
    with pytest.raises(ScoringInputError, match="needs reputation="):
        combine(predictions, stakes, eras=eras, method="reputation_filtered")


def test_copies_add_weight_to_their_forecast_only_up_to_the_cap(frame):
    """a, a copy of a, b and c, stakes 1 each: the {a, copy} cluster holds 2/4 of all stakes,
    and weighs at most ``cap`` of them."""
    predictions, eras = frame
    with_copy = predictions.assign(a_copy=predictions["a"])
    stakes = pd.Series({"a": 1.0, "b": 1.0, "c": 1.0, "a_copy": 1.0})
    capped = combine(with_copy, stakes, eras=eras, method="cluster_capped", cap=0.25)
    np.testing.assert_allclose(capped.weights.to_numpy(), [0.5, 1.0, 1.0, 0.5])
    # Weighing what a alone would, the copies add nothing: the meta model without the copy.
    plain = stake_weighted_meta_model(predictions, stakes[["a", "b", "c"]], eras=eras)
    np.testing.assert_allclose(capped.meta_model, plain, atol=1e-12)
    # Under the default cap (a tenth of all stakes) every one of the four forecasts is capped
    # to the same weight.
    default = combine(with_copy, stakes, eras=eras, method="cluster_capped").weights
    assert DEFAULT_CLUSTER_CAP == 0.1
    np.testing.assert_allclose(default.to_numpy(), [0.2, 0.4, 0.4, 0.2])
    # Stake-weighted, the copy doubles a's weight.
    doubled = stake_weighted_meta_model(with_copy, stakes, eras=eras)
    assert not np.allclose(doubled, plain)


def test_splitting_a_forecast_over_accounts_does_not_change_its_weight(frame):
    """One signal held by one account, or split over four (slightly perturbed): the cluster
    weighs the same, so each unit of stake in it weighs the same."""
    predictions, eras = frame
    rng = np.random.default_rng(1)
    sybils = {f"s{i}": predictions["a"] + 0.01 * rng.normal(size=ROWS) for i in range(4)}
    split = predictions[["b", "c"]].assign(**sybils)
    alone = predictions[["b", "c"]].assign(s0=sybils["s0"])
    for cap in (0.1, 0.3, 0.5, 1.0):
        many = combine(
            split,
            pd.Series({"b": 1.0, "c": 2.0, "s0": 0.4, "s1": 0.3, "s2": 0.2, "s3": 0.1}),
            eras=eras,
            method="cluster_capped",
            cap=cap,
        )
        one = combine(alone, pd.Series({"b": 1.0, "c": 2.0, "s0": 1.0}), eras=eras,
                      method="cluster_capped", cap=cap)  # fmt: skip
        sybil_weights = many.weights[list(sybils)]
        np.testing.assert_allclose(sybil_weights.sum(), one.weights["s0"], rtol=1e-12)
        np.testing.assert_allclose(
            sybil_weights / pd.Series({"s0": 0.4, "s1": 0.3, "s2": 0.2, "s3": 0.1}),
            one.weights["s0"], rtol=1e-12,
        )  # fmt: skip
        np.testing.assert_allclose(many.weights[["b", "c"]], one.weights[["b", "c"]])


def test_clusters_link_by_absolute_correlation_single_linkage(frame):
    predictions, eras = frame
    rng = np.random.default_rng(2)
    a = predictions["a"]
    chained = predictions.assign(
        minus_a=-a,
        near_a=a + 0.3 * rng.normal(size=ROWS),  # |corr| with a ≈ 0.96
        constant=1.0,
    )
    clusters = prediction_clusters(chained, eras=eras)
    assert clusters["a"] == clusters["minus_a"] == clusters["near_a"]
    assert clusters.nunique() == 4 and clusters.to_list()[:3] == [0, 1, 2]
    strict = prediction_clusters(chained, eras=eras, threshold=0.99)
    assert strict["near_a"] != strict["a"] == strict["minus_a"]
    with pytest.raises(ScoringInputError, match="within \\(0, 1\\]"):
        prediction_clusters(chained, eras=eras, threshold=0.0)


def test_unstaked_models_link_nothing(frame):
    """A zero-stake model that correlates with two clusters does not merge them."""
    predictions, eras = frame
    bridge = (predictions["a"] + predictions["b"]) / np.sqrt(2)
    stakes = pd.Series({"a": 1.0, "b": 2.0, "c": 1.0, "bridge": 0.0})
    weights = combine(
        predictions.assign(bridge=bridge), stakes, eras=eras, method="cluster_capped",
        cluster_threshold=0.7, cap=1.0,
    ).weights  # fmt: skip
    assert weights.to_dict() == {"a": 1.0, "b": 2.0, "c": 1.0, "bridge": 0.0}


def test_inputs_are_checked_and_never_modified(frame):
    predictions, eras = frame
    stakes = pd.Series({"a": 1.0, "b": 1.0, "c": 1.0})
    before = predictions.copy(), stakes.copy()
    for method in COMBINE_METHODS:
        combine(predictions, stakes, eras=eras, method=method, reputation=stakes)
    pd.testing.assert_frame_equal(predictions, before[0])
    pd.testing.assert_series_equal(stakes, before[1])
    with pytest.raises(ScoringInputError, match="method must be one of"):
        combine(predictions, stakes, eras=eras, method="equal")
    with pytest.raises(ScoringInputError, match="add up to 0"):
        combine(predictions, stakes * 0, eras=eras, method="cluster_capped")
    for cap in (1.5, 0.0, float("nan"), True):
        with pytest.raises(ScoringInputError, match="cap must be a share"):
            cluster_capped(predictions, stakes, eras=eras, cap=cap)
    with pytest.raises(ScoringInputError, match=r"unknown option\(s\) \['cluster_cap'\]"):
        combine(predictions, stakes, eras=eras, method="cluster_capped", cluster_cap=0.2)
