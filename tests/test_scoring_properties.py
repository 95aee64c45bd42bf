"""Properties the scoring must have whatever the data (hypothesis), and the MMC formulations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhe_toolkit.scoring import (
    Neutralizer,
    correlation_contribution,
    feature_exposures,
    feature_neutral_corr,
    mmc_closed_form,
    mmc_finite_difference,
    mmc_pseudo_inverse,
    neutral_contribution,
    neutral_correlation,
    neutralize,
    numerai_corr,
)
from fhe_toolkit.scoring.transforms import rank_gaussian_array, tie_kept_rank_array

BUCKETS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
MONOTONE = {
    "affine": lambda x: 3.0 * x + 1.0,
    "cube": lambda x: x**3,
    "exp": lambda x: np.exp(x / 50.0),
    "arctan": lambda x: np.arctan(x / 10.0),
}


@st.composite
def era_case(draw: st.DrawFn) -> dict[str, pd.DataFrame | pd.Series]:
    """One era: integer-valued predictions (so ties occur), a meta model, targets, features."""
    n = draw(st.integers(30, 150))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    spread = draw(st.sampled_from([5, 50]))
    ids = pd.Index([f"n{i:05d}" for i in rng.permutation(n)], name="id")
    features = pd.DataFrame(rng.integers(0, 5, size=(n, 6)), index=ids).add_prefix("feature_")
    preds = pd.DataFrame(
        {"a": rng.integers(-spread, spread, n), "b": rng.integers(-spread, spread, n)},
        index=ids,
    ).astype(float)
    targets = pd.Series(rng.choice(BUCKETS, n), index=ids)
    meta = pd.Series(rng.normal(size=n), index=ids)
    # Keep every column non-constant: a constant one scores NaN, tested elsewhere.
    for column in preds:
        if preds[column].nunique() < 2:
            preds.iloc[0, preds.columns.get_loc(column)] += 1.0
    if targets.nunique() < 2:
        targets.iloc[0] = 0.0 if targets.iloc[1] else 1.0
    return {"preds": preds, "targets": targets, "meta": meta, "features": features}


@settings(max_examples=40, deadline=None)
@given(case=era_case(), transform=st.sampled_from(sorted(MONOTONE)))
def test_scores_unchanged_by_monotone_transform(case, transform):
    preds, targets, meta, features = case["preds"], case["targets"], case["meta"], case["features"]
    moved = preds.apply(MONOTONE[transform])
    pd.testing.assert_series_equal(
        numerai_corr(preds, targets), numerai_corr(moved, targets), atol=1e-12
    )
    pd.testing.assert_series_equal(
        correlation_contribution(preds, meta, targets),
        correlation_contribution(moved, meta, targets),
        atol=1e-12,
    )
    pd.testing.assert_series_equal(
        feature_neutral_corr(preds, features, targets),
        feature_neutral_corr(moved, features, targets),
        atol=1e-10,
    )
    pd.testing.assert_frame_equal(
        feature_exposures(preds, features), feature_exposures(moved, features), atol=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(case=era_case())
def test_mmc_of_meta_model_and_its_negation_is_zero(case):
    meta, targets = case["meta"], case["targets"]
    both = pd.DataFrame({"itself": meta, "negated": -meta})
    np.testing.assert_allclose(correlation_contribution(both, meta, targets), 0.0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(case=era_case())
def test_exposure_after_full_neutralization_is_zero(case):
    neutral = neutralize(case["preds"], case["features"], proportion=1.0)
    exposures = feature_exposures(neutral, case["features"], method="pearson")
    np.testing.assert_allclose(exposures.to_numpy(), 0.0, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(case=era_case())
def test_fnc_of_a_pure_feature_is_zero(case):
    """Predictions that are (a monotone function of) a feature carry nothing feature-neutral."""
    features = case["features"].copy()
    rng = np.random.default_rng(len(features))
    features["feature_pure"] = rank_gaussian_array(rng.normal(size=(len(features), 1)))[:, 0]
    preds = pd.DataFrame(
        {"pure": features["feature_pure"], "stretched": np.exp(features["feature_pure"])}
    )
    np.testing.assert_allclose(
        feature_neutral_corr(preds, features, case["targets"]), 0.0, atol=1e-12
    )


def test_three_mmc_formulations_agree():
    """Finite difference, closed form and pseudo-inverse MMC correlate ≥ 0.999 over 300 eras.

    They take raw predictions and targets, as the other scoring functions do. The closed form is
    a sum, the others are means, so the eras share one size.
    """
    rng = np.random.default_rng(7)
    n = 600
    results = []
    for _ in range(300):
        signal = rng.normal(size=n)
        m_raw = signal + rng.normal(scale=rng.uniform(0.5, 3), size=n)
        p_raw = rng.uniform(-1, 1) * signal + rng.normal(scale=rng.uniform(0.5, 3), size=n)
        y = rng.choice(BUCKETS, n) + 0.3 * np.tanh(signal)
        p_raw, m_raw = np.exp(p_raw), m_raw**3
        results.append(
            (
                mmc_finite_difference(p_raw, m_raw, y),
                mmc_closed_form(p_raw, m_raw, y),
                mmc_pseudo_inverse(p_raw, m_raw, y),
            )
        )
    fd, closed, pinv = np.array(results).T
    assert np.corrcoef(fd, closed)[0, 1] >= 0.999
    assert np.corrcoef(closed, pinv)[0, 1] >= 0.999
    assert np.corrcoef(fd, pinv)[0, 1] >= 0.999


@settings(max_examples=40, deadline=None)
@given(case=era_case(), transform=st.sampled_from(sorted(MONOTONE)))
def test_mmc_formulations_take_raw_inputs_and_match_the_production_score(case, transform):
    """No manual rank-gaussianization or target centring: the forms prepare inputs as MMC does."""
    preds, meta, targets = case["preds"], case["meta"], case["targets"]
    p = preds["a"]
    production = correlation_contribution(preds, meta, targets)["a"]
    assert mmc_closed_form(p, meta, targets) / len(p) == pytest.approx(production, abs=1e-12)
    assert mmc_pseudo_inverse(p, meta, targets) == pytest.approx(production, abs=1e-12)
    moved = MONOTONE[transform](p.to_numpy())
    assert mmc_closed_form(moved, meta.to_numpy(), targets.to_numpy()) == pytest.approx(
        mmc_closed_form(p, meta, targets), abs=1e-10
    )


@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_finite_difference_converges_to_closed_form_direction(eps):
    rng = np.random.default_rng(1)
    p, m = rank_gaussian_array(rng.normal(size=(500, 2))).T
    y = rng.normal(size=500)
    y -= y.mean()
    # d/dε corr((1-ε)m + εp, y) at 0 = cov(y, p⊥) / std(y) when m has unit variance.
    expected = mmc_pseudo_inverse(p, m, y) / np.std(y) / np.std(m)
    assert mmc_finite_difference(p, m, y, eps) == pytest.approx(expected, rel=1e-2)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 80),
    cols=st.integers(1, 5),
    low=st.integers(-100, 100),
    span=st.integers(1, 70),
    dtype=st.sampled_from(["int8", "int64", "uint8"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_integer_ranks_by_counting_equal_sorted_ranks(rows, cols, low, span, dtype, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    low = max(low, info.min)
    high = min(low + span, info.max)
    values = rng.integers(low, high, size=(rows, cols), endpoint=True).astype(dtype)
    np.testing.assert_allclose(
        tie_kept_rank_array(values), tie_kept_rank_array(values.astype(np.float64)), atol=1e-15
    )


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 60),
    cols=st.integers(1, 4),
    levels=st.integers(1, 8),
    nan_share=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_ranks_equal_pandas_average_ranks(rows, cols, levels, nan_share, seed):
    """Ties (few levels) and NaN: the same (rank - 0.5) / count as numerai-tools' pandas rank."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, levels, size=(rows, cols)) + rng.normal(size=(rows, cols)) * (
        levels > 6
    )
    values = np.where(rng.uniform(size=values.shape) < nan_share, np.nan, values)
    frame = pd.DataFrame(values)
    expected = ((frame.rank(method="average") - 0.5) / frame.count()).to_numpy()
    np.testing.assert_array_equal(tie_kept_rank_array(values), expected)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(20, 120),
    cols=st.integers(1, 12),
    repeated=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_neutralizer_equals_least_squares(rows, cols, repeated, seed):
    """Against numpy's lstsq(rcond=1e-6) on [N, 1], also with constant, repeated and summed
    (dependent) columns."""
    rng = np.random.default_rng(seed)
    design = rng.integers(0, 5, size=(rows, cols)).astype(float)
    extra = [design[:, :repeated], np.full((rows, 1), 2.0), design[:, :1] + 2 * design[:, -1:]]
    design = np.column_stack([design, *extra])
    values = rng.normal(size=(rows, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -3.0]
    with_ones = np.column_stack([design, np.ones(rows)])
    expected = values - with_ones @ np.linalg.lstsq(with_ones, values, rcond=1e-6)[0]
    np.testing.assert_allclose(Neutralizer(design).residual(values), expected, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(case=era_case())
def test_neutral_contribution_of_the_meta_model_is_zero(case):
    meta, targets, features = case["meta"], case["targets"], case["features"]
    both = pd.DataFrame({"itself": meta, "negated": -meta})
    np.testing.assert_allclose(neutral_contribution(both, meta, features, targets), 0.0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(case=era_case())
def test_top_bottom_of_half_the_rows_scores_every_row(case):
    preds, targets, meta = case["preds"], case["targets"], case["meta"]
    rows = len(preds)
    if rows % 2:
        preds, targets, meta = preds.iloc[1:], targets.iloc[1:], meta.iloc[1:]
        rows -= 1
    half = rows // 2
    pd.testing.assert_series_equal(
        numerai_corr(preds, targets, top_bottom=half), numerai_corr(preds, targets), atol=1e-12
    )
    pd.testing.assert_series_equal(
        correlation_contribution(preds, meta, targets, half),
        correlation_contribution(preds, meta, targets),
        atol=1e-12,
    )
    pd.testing.assert_series_equal(
        neutral_correlation(preds, case["features"], targets, top_bottom=half),
        neutral_correlation(preds, case["features"], targets),
        atol=1e-12,
    )
