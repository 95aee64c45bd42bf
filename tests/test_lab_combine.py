"""Meta-model constructions (fhe_toolkit.scoring.combine): known answers and refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.errors import ScoringInputError
from fhe_toolkit.scoring import (
    COMBINE_METHODS,
    cluster_capped,
    combination_weights,
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
    pd.testing.assert_series_equal(
        combine(predictions, stakes, eras=eras),
        stake_weighted_meta_model(predictions, stakes, eras=eras),
    )
    assert COMBINE_METHODS == ("stake_weighted", "reputation_filtered", "cluster_capped")


def test_reputation_filtered_keeps_only_reputable_models(frame):
    predictions, eras = frame
    stakes = pd.Series({"a": 1.0, "b": 2.0, "c": 0.5})
    reputation = pd.Series({"a": 0.01, "b": -0.002, "c": np.nan})
    meta = reputation_filtered(predictions, stakes, eras=eras, reputation=reputation)
    pd.testing.assert_series_equal(
        meta, stake_weighted_meta_model(predictions[["a"]], stakes[["a"]], eras=eras)
    )
    weights = combination_weights(
        predictions, stakes, eras=eras, method="reputation_filtered", reputation=reputation,
        reputation_threshold=-0.005,
    )  # fmt: skip
    assert weights.to_dict() == {"a": 1.0, "b": 2.0, "c": 0.0}
    with pytest.raises(ScoringInputError, match=r"no staked model has a reputation ≥ 0\.02"):
        reputation_filtered(predictions, stakes, eras=eras, reputation=reputation, threshold=0.02)
    with pytest.raises(ScoringInputError, match="needs reputation="):
        combine(predictions, stakes, eras=eras, method="reputation_filtered")


def test_a_copy_adds_no_weight_under_cluster_capping(frame):
    """a, a copy of a, and b: capped, the copies weigh what a alone does."""
    predictions, eras = frame
    with_copy = predictions.assign(a_copy=predictions["a"])
    stakes = pd.Series({"a": 1.0, "b": 1.0, "c": 1.0, "a_copy": 1.0})
    capped = cluster_capped(with_copy, stakes, eras=eras)
    plain = stake_weighted_meta_model(predictions, stakes[["a", "b", "c"]], eras=eras)
    np.testing.assert_allclose(capped, plain, atol=1e-12)
    # Stake-weighted, the copy doubles a's weight.
    doubled = stake_weighted_meta_model(with_copy, stakes, eras=eras)
    assert not np.allclose(doubled, plain)


def test_sybils_weigh_their_largest_account(frame):
    predictions, eras = frame
    rng = np.random.default_rng(1)
    sybils = {f"s{i}": predictions["a"] + 0.01 * rng.normal(size=ROWS) for i in range(4)}
    together = predictions[["b"]].assign(**sybils)
    stakes = pd.Series({"b": 0.5, "s0": 0.4, "s1": 0.3, "s2": 0.2, "s3": 0.1})
    weights = combination_weights(together, stakes, eras=eras, method="cluster_capped")
    np.testing.assert_allclose(weights[["s0", "s1", "s2", "s3"]].sum(), 0.4)
    np.testing.assert_allclose(
        weights[["s0", "s1", "s2", "s3"]] / stakes[["s0", "s1", "s2", "s3"]], 0.4
    )
    assert weights["b"] == 0.5
    shared = combination_weights(together, stakes, eras=eras, method="cluster_capped", cap=0.4)
    np.testing.assert_allclose(shared[["s0", "s1", "s2", "s3"]].sum(), 0.4 * stakes.sum())
    assert shared["b"] == 0.5, "a cluster under its cap keeps its stake"


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
    weights = combination_weights(
        predictions.assign(bridge=bridge), stakes, eras=eras, method="cluster_capped",
        cluster_threshold=0.7,
    )  # fmt: skip
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
    with pytest.raises(ScoringInputError, match="cap must be a share"):
        cluster_capped(predictions, stakes, eras=eras, cap=1.5)
