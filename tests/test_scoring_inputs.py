"""Bad input to the scoring functions: a clear error or a documented result, never mutation."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.errors import ScoringInputError, ScoringTypeError
from fhe_toolkit.scoring import (
    benchmark_contribution,
    correlation_contribution,
    exposure_summary,
    feature_exposures,
    feature_neutral_corr,
    mmc_closed_form,
    mmc_finite_difference,
    mmc_pseudo_inverse,
    neutral_contribution,
    neutral_correlation,
    neutralize,
    numerai_corr,
    stake_weighted_meta_model,
    tie_kept_rank,
)

N = 100


@pytest.fixture
def era() -> dict:
    rng = np.random.default_rng(3)
    ids = pd.Index([f"n{i:04d}" for i in range(N)], name="id")
    return {
        "preds": pd.DataFrame({"a": rng.normal(size=N), "b": rng.normal(size=N)}, index=ids),
        "targets": pd.Series(rng.choice([0, 0.25, 0.5, 0.75, 1.0], N), index=ids),
        "meta": pd.Series(rng.normal(size=N), index=ids, name="meta"),
        "features": pd.DataFrame(rng.integers(0, 5, (N, 4)), index=ids).add_prefix("feature_"),
    }


def test_series_where_frame_needed(era):
    with pytest.raises(ScoringTypeError, match=r"to_frame\(\)"):
        numerai_corr(era["preds"]["a"], era["targets"])


def test_frame_where_series_needed(era):
    with pytest.raises(ScoringTypeError, match="must be a Series"):
        numerai_corr(era["preds"], era["preds"])


def test_duplicate_ids_are_named(era):
    preds = pd.concat([era["preds"], era["preds"].iloc[:2]])
    with pytest.raises(ScoringInputError, match=r"2 duplicate id\(s\).*n0000"):
        numerai_corr(preds, era["targets"])


def test_nan_predictions_are_refused_with_the_column(era):
    preds = era["preds"].copy()
    preds.iloc[5, 1] = np.nan
    with pytest.raises(ScoringInputError, match=r"'b': 1 row\(s\); first ids \['n0005'\]"):
        numerai_corr(preds, era["targets"])


def test_nan_targets_are_left_out(era):
    targets = era["targets"].copy()
    targets.iloc[:10] = np.nan
    got = numerai_corr(era["preds"], targets)
    expected = numerai_corr(era["preds"].iloc[10:], targets.iloc[10:])
    pd.testing.assert_series_equal(got, expected)


def test_misaligned_ids_beyond_the_limit_are_refused(era):
    shifted = era["targets"].copy()
    shifted.index = [f"x{i}" for i in range(N)]
    with pytest.raises(ScoringInputError, match=r"only 0 of the 100 ids.*same `id`"):
        numerai_corr(era["preds"], shifted)


def test_misaligned_ids_within_the_limit_are_dropped(era):
    got = numerai_corr(era["preds"], era["targets"].iloc[:90])
    expected = numerai_corr(era["preds"].iloc[:90], era["targets"].iloc[:90])
    pd.testing.assert_series_equal(got, expected)
    with pytest.raises(ScoringInputError, match="at most 5%"):
        numerai_corr(era["preds"], era["targets"].iloc[:90], max_filtered_index_ratio=0.05)


def test_unsorted_index_gives_the_same_scores(era):
    order = np.random.default_rng(0).permutation(N)
    pd.testing.assert_series_equal(
        correlation_contribution(era["preds"].iloc[order], era["meta"], era["targets"]),
        correlation_contribution(era["preds"], era["meta"], era["targets"]),
    )


def test_constant_prediction_scores_nan(era):
    preds = era["preds"].assign(flat=0.5)
    assert np.isnan(numerai_corr(preds, era["targets"])["flat"])
    assert np.isnan(correlation_contribution(preds, era["meta"], era["targets"])["flat"])
    assert np.isnan(feature_neutral_corr(preds, era["features"], era["targets"])["flat"])
    assert feature_exposures(preds, era["features"])["flat"].isna().all()
    assert neutralize(preds, era["features"])["flat"].isna().all()
    assert not numerai_corr(preds, era["targets"])[["a", "b"]].isna().any()


def test_constant_meta_model_is_refused(era):
    with pytest.raises(ScoringInputError, match="meta_model holds a single value"):
        correlation_contribution(era["preds"], era["meta"] * 0, era["targets"])
    with pytest.raises(ScoringInputError, match="meta_model is constant or explained entirely"):
        neutral_contribution(era["preds"], era["meta"] * 0, era["features"], era["targets"])
    # Any function of feature_0 (its rank-gaussian transform too) lies in its one-hot span.
    one_hot = pd.get_dummies(era["features"]["feature_0"], prefix="level", dtype=float)
    with pytest.raises(ScoringInputError, match="explained entirely by the neutralizers"):
        neutral_contribution(
            era["preds"], era["features"]["feature_0"].astype(float), one_hot, era["targets"]
        )


def test_constant_prediction_scores_nan_in_neutral_scores(era):
    preds = era["preds"].assign(flat=0.5)
    assert np.isnan(neutral_correlation(preds, era["features"], era["targets"])["flat"])
    assert np.isnan(
        neutral_contribution(preds, era["meta"], era["features"], era["targets"])["flat"]
    )
    assert np.isnan(numerai_corr(preds, era["targets"], top_bottom=10)["flat"])
    assert np.isnan(correlation_contribution(preds, era["meta"], era["targets"], 10)["flat"])


def test_nan_neutralizer_rows_are_left_out_like_nan_targets(era):
    features = era["features"].astype(float)
    features.iloc[:5, 1] = np.nan
    got = neutral_correlation(era["preds"], features, era["targets"])
    kept = era["preds"].index[5:]
    expected = neutral_correlation(
        era["preds"].loc[kept], features.loc[kept], era["targets"] - era["targets"].mean()
    )
    pd.testing.assert_series_equal(got, expected)


def test_top_bottom_is_checked(era):
    with pytest.raises(ScoringTypeError, match="pass max_filtered_index_ratio by keyword"):
        correlation_contribution(era["preds"], era["meta"], era["targets"], 0.2)  # type: ignore[arg-type]
    with pytest.raises(ScoringInputError, match=r"keeps 102 rows.*only 100.*at most 50"):
        numerai_corr(era["preds"], era["targets"], top_bottom=51)
    with pytest.raises(ScoringInputError, match="≥ 0"):
        feature_neutral_corr(era["preds"], era["features"], era["targets"], -1)
    pd.testing.assert_series_equal(
        numerai_corr(era["preds"], era["targets"], top_bottom=0),
        numerai_corr(era["preds"], era["targets"]),
    )


def test_max_filtered_index_ratio_must_be_a_share(era):
    with pytest.raises(ScoringInputError, match=r"within \[0, 1\], but got 50"):
        numerai_corr(era["preds"], era["targets"], 50)


def test_mmc_formulations_check_their_inputs(era):
    p, m, y = era["preds"]["a"], era["meta"], era["targets"]
    with pytest.raises(ScoringTypeError, match=r"\['m', 'p'\] are Series but \['y'\]"):
        mmc_closed_form(p, m, y.to_numpy())
    with pytest.raises(ScoringInputError, match="y's index differs from p's"):
        mmc_pseudo_inverse(p, m, y.iloc[::-1])
    with pytest.raises(ScoringInputError, match="one value per row"):
        mmc_finite_difference(p.to_numpy(), m.to_numpy()[1:], y.to_numpy())
    with pytest.raises(ScoringInputError, match="p holds NaN"):
        mmc_closed_form(p.where(p > 0).to_numpy(), m.to_numpy(), y.to_numpy())
    with pytest.raises(ScoringInputError, match="m holds a single value"):
        mmc_closed_form(p, m * 0, y)


def test_neutralize_by_era_fits_each_era_alone(era):
    eras = pd.Series(np.where(np.arange(N) % 3 == 0, "0002", "0001"), index=era["preds"].index)
    got = neutralize(era["preds"], era["features"], 0.7, eras=eras.iloc[::-1])
    for label in ("0001", "0002"):
        ids = eras.index[eras == label]
        pd.testing.assert_frame_equal(
            got.loc[ids], neutralize(era["preds"].loc[ids], era["features"], 0.7)
        )
    assert not np.allclose(got, neutralize(era["preds"], era["features"], 0.7))
    with pytest.raises(ScoringInputError, match=r"10 id\(s\) have no era"):
        neutralize(era["preds"], era["features"], eras=eras.iloc[10:])


def test_constant_feature_is_skipped_in_exposure_summary(era):
    features = era["features"].assign(feature_flat=2)
    exposures = feature_exposures(era["preds"], features)
    assert exposures.loc["feature_flat"].isna().all()
    summary = exposure_summary(exposures)
    assert not summary.isna().any().any()


def test_features_must_cover_the_predicted_ids(era):
    with pytest.raises(ScoringInputError, match=r"10 prediction id\(s\) are not in features"):
        feature_exposures(era["preds"], era["features"].iloc[10:])


def test_nan_features_are_refused(era):
    features = era["features"].astype(float)
    features.iloc[3, 2] = np.nan
    with pytest.raises(ScoringInputError, match="features contains NaN"):
        feature_neutral_corr(era["preds"], features, era["targets"])


def test_non_numeric_predictions_are_refused(era):
    with pytest.raises(ScoringInputError, match="not numeric"):
        numerai_corr(era["preds"].assign(c="x"), era["targets"])


def test_bad_proportion_and_method(era):
    with pytest.raises(ScoringInputError, match=r"within \[0, 1\]"):
        neutralize(era["preds"], era["features"], proportion=1.5)
    with pytest.raises(ScoringInputError, match="'spearman' or 'pearson'"):
        feature_exposures(era["preds"], era["features"], method="kendall")  # type: ignore[arg-type]


def test_benchmark_contribution_is_mmc_against_the_benchmark(era):
    bmc = benchmark_contribution(era["preds"], era["meta"], era["targets"])
    mmc = correlation_contribution(era["preds"], era["meta"], era["targets"])
    np.testing.assert_array_equal(bmc.to_numpy(), mmc.to_numpy())
    assert bmc.name == "bmc"


def test_spearman_and_pearson_exposure_differ_on_skewed_predictions(era):
    skewed = np.exp(3 * era["preds"])
    spearman = feature_exposures(skewed, era["features"], method="spearman")
    pearson = feature_exposures(skewed, era["features"], method="pearson")
    assert not np.allclose(spearman, pearson)
    pd.testing.assert_frame_equal(spearman, feature_exposures(era["preds"], era["features"]))


def test_no_function_mutates_its_arguments(era):
    targets = era["targets"].copy()
    targets.iloc[0] = np.nan
    preds = era["preds"].assign(flat=1.0)
    args = {"preds": preds, "targets": targets, "meta": era["meta"], "features": era["features"]}
    before = copy.deepcopy(args)
    numerai_corr(preds, targets)
    correlation_contribution(preds, era["meta"], targets)
    feature_neutral_corr(preds, era["features"], targets)
    neutralize(preds, era["features"], 0.5)
    neutral_correlation(preds, era["features"], targets, top_bottom=10)
    neutral_contribution(preds, era["meta"], era["features"], targets, 10)
    feature_exposures(preds, era["features"])
    tie_kept_rank(preds)
    for name, value in args.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, before[name])
        else:
            pd.testing.assert_series_equal(value, before[name])


def test_stakes_that_add_up_past_a_float_are_refused(era):
    """Each is finite, but their total is not: the weights would all be 0."""
    stakes = pd.Series({"a": 1.7e308, "b": 1.7e308})
    with pytest.raises(ScoringInputError, match="add up to more than a float holds"):
        stake_weighted_meta_model(era["preds"], stakes, eras=None)
