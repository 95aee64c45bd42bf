"""Per-era scoring of many models, summaries, the meta model and payouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.errors import ScoringInputError, ScoringTypeError
from fhe_toolkit.scoring import (
    benchmark_contribution,
    correlation_contribution,
    feature_exposures,
    feature_neutral_corr,
    numerai_corr,
    payout,
    payout_per_stake,
    payout_score,
    score_eras,
    stake_weighted_meta_model,
    summarize,
    summarize_series,
)
from fhe_toolkit.scoring.transforms import rank_gaussian_array


@pytest.fixture
def scored(tournament):
    frame, metadata = tournament
    data = frame[frame["data_type"] == "validation"]
    rng = np.random.default_rng(0)
    small = metadata.features("small")
    preds = pd.DataFrame(
        {
            "signal": data[small].sum(axis=1) + rng.normal(size=len(data)),
            "noise": rng.normal(size=len(data)),
            "feature": data[small[0]] + 0.01 * rng.normal(size=len(data)),
        },
        index=data.index,
    )
    return data, preds


def test_per_era_scores_equal_single_era_calls(scored):
    data, preds = scored
    stakes = pd.Series({"signal": 2.0, "noise": 1.0, "feature": 1.0})
    meta = stake_weighted_meta_model(preds, stakes, eras=data["era"])
    result = score_eras(preds, data, meta_model=meta, benchmark=preds["signal"])
    eras = sorted(data["era"].unique())
    assert list(result["era"].unique()) == eras
    assert set(result.columns) >= {"corr", "mmc", "bmc", "fnc", "max_exposure", "rms_exposure"}
    era = eras[1]
    ids = data.index[data["era"] == era]
    row = result[result["era"] == era].set_index("model")
    features = [c for c in data if c.startswith("feature_")]
    np.testing.assert_allclose(
        row["corr"], numerai_corr(preds.loc[ids], data.loc[ids, "target"])[row.index]
    )
    np.testing.assert_allclose(
        row["mmc"],
        correlation_contribution(preds.loc[ids], meta.loc[ids], data.loc[ids, "target"])[row.index],
    )
    np.testing.assert_allclose(
        row["fnc"],
        feature_neutral_corr(preds.loc[ids], data.loc[ids, features], data.loc[ids, "target"])[
            row.index
        ],
    )
    assert row.loc["signal", "bmc"] == pytest.approx(0.0, abs=1e-12)


def test_stakes_build_the_meta_model(scored):
    data, preds = scored
    stakes = pd.Series({"signal": 1.0, "noise": 3.0})
    meta = stake_weighted_meta_model(preds, stakes, eras=data["era"])
    pd.testing.assert_frame_equal(
        score_eras(preds, data, stakes=stakes), score_eras(preds, data, meta_model=meta)
    )


def test_planted_signal_scores_above_noise(scored):
    data, preds = scored
    means = summarize(score_eras(preds, data))["mean"]
    assert means[("signal", "corr")] > 0.05
    assert abs(means[("noise", "corr")]) < means[("signal", "corr")]
    assert means[("feature", "max_exposure")] > 0.9


def test_unresolved_era_scores_nan_but_keeps_exposure(scored):
    data, preds = scored
    last = data["era"].max()
    data = data.assign(target=data["target"].where(data["era"] != last))
    result = score_eras(preds, data).set_index("era")
    assert result.loc[last, "corr"].isna().all()
    assert result.loc[last, "max_exposure"].notna().all()


def test_missing_columns_and_unknown_ids_are_named(scored):
    data, preds = scored
    with pytest.raises(ScoringInputError, match=r"no column\(s\) \['target_x'\]"):
        score_eras(preds, data, target="target_x")
    with pytest.raises(ScoringInputError, match=r"5 prediction id\(s\) are not in data"):
        score_eras(preds, data.iloc[5:])


def test_feature_lists_can_be_chosen_or_skipped(scored):
    data, preds = scored
    result = score_eras(preds, data, exposure_features=[], fnc_features=[])
    assert list(result.columns) == ["era", "model", "corr"]


def test_summary_statistics():
    values = pd.Series([0.1, -0.2, 0.05, -0.1, 0.3])
    stats = summarize_series(values)
    assert stats["mean"] == pytest.approx(0.03)
    assert stats["std"] == pytest.approx(np.std(values.to_numpy()))
    assert stats["sharpe"] == pytest.approx(0.03 / np.std(values.to_numpy()))
    # cumsum 0.1, -0.1, -0.05, -0.15, 0.15; peak 0.1 → trough -0.15
    assert stats["max_drawdown"] == pytest.approx(0.25)
    assert np.isnan(summarize_series(pd.Series([0.1, 0.1]))["sharpe"])


def test_meta_model_is_stake_weighted_rank_gaussian_mean_per_era(scored):
    data, preds = scored
    stakes = pd.Series({"signal": 3.0, "noise": 1.0})
    meta = stake_weighted_meta_model(preds, stakes, eras=data["era"])
    for ids in data.groupby("era").groups.values():
        ranked = rank_gaussian_array(preds.loc[ids, ["signal", "noise"]].to_numpy())
        np.testing.assert_allclose(meta.loc[ids].to_numpy(), ranked @ np.array([0.75, 0.25]))
    one_era = stake_weighted_meta_model(preds, stakes, eras=None)
    ranked = rank_gaussian_array(preds[["signal", "noise"]].to_numpy())
    np.testing.assert_allclose(one_era.to_numpy(), ranked @ np.array([0.75, 0.25]))
    assert not np.allclose(one_era.to_numpy(), meta.to_numpy())


def test_meta_model_requires_eras(scored):
    """Ranking across eras mixes them: the caller says which rows form an era (None: one)."""
    data, preds = scored
    stakes = pd.Series({"signal": 3.0, "noise": 1.0})
    with pytest.raises(TypeError, match="eras"):
        stake_weighted_meta_model(preds, stakes)  # type: ignore[call-arg]
    with pytest.raises(ScoringInputError, match=r"5 id\(s\) have no era"):
        stake_weighted_meta_model(preds, stakes, eras=data["era"].iloc[5:])


def test_score_eras_refuses_meta_model_and_stakes_together(scored):
    data, preds = scored
    stakes = pd.Series({"signal": 1.0, "noise": 3.0})
    meta = stake_weighted_meta_model(preds, stakes, eras=data["era"])
    with pytest.raises(ScoringInputError, match="both meta_model and stakes"):
        score_eras(preds, data, meta_model=meta, stakes=stakes)


def test_score_eras_equals_single_calls_on_partial_rows(scored):
    """NaN targets and a meta model missing ids: each metric keeps its own rows, as alone."""
    data, preds = scored
    era = sorted(data["era"].unique())[2]
    ids = data.index[data["era"] == era]
    data = data.assign(target=data["target"].where(~data.index.isin(ids[:7])))
    meta = stake_weighted_meta_model(preds, pd.Series({"noise": 1.0}), eras=data["era"])
    meta = meta.drop(ids[-5:])
    features = [c for c in data if c.startswith("feature_")]
    result = score_eras(preds, data, meta_model=meta, benchmark=preds["feature"], top_bottom=20)
    row = result[result["era"] == era].set_index("model")
    preds_era, targets = preds.loc[ids], data.loc[ids, "target"]
    expected = {
        "corr": numerai_corr(preds_era, targets, top_bottom=20),
        "mmc": correlation_contribution(preds_era, meta.loc[ids[:-5]], targets, 20),
        "bmc": benchmark_contribution(preds_era, preds.loc[ids, "feature"], targets, 20),
        "fnc": feature_neutral_corr(preds_era, data.loc[ids, features], targets, 20),
        "max_exposure": feature_exposures(preds_era, data.loc[ids, features]).abs().max(),
    }
    for column, scores in expected.items():
        np.testing.assert_allclose(row[column], scores[row.index], rtol=0, atol=1e-12)


def test_score_eras_refuses_ids_without_an_era(scored):
    data, preds = scored
    data = data.assign(era=data["era"].where(np.arange(len(data)) != 3))
    with pytest.raises(ScoringInputError, match="eras contains NaN"):
        score_eras(preds, data)


def test_summarize_names_a_non_numeric_column(scored):
    data, preds = scored
    per_era = score_eras(preds, data, exposure_features=[], fnc_features=[])
    with pytest.raises(ScoringTypeError, match=r"\['target'\] are not numeric.*'target_60d'"):
        summarize(per_era.assign(target="target_60d"))
    with pytest.raises(ScoringTypeError, match=r"\['corr'\] are not numeric"):
        summarize_series(pd.Series(["0.1", "x"], name="corr"))


def test_meta_model_refuses_bad_stakes(scored):
    _, preds = scored
    with pytest.raises(ScoringInputError, match="finite and ≥ 0"):
        stake_weighted_meta_model(preds, pd.Series({"signal": -1.0}), eras=None)
    with pytest.raises(ScoringInputError, match="add up to 0"):
        stake_weighted_meta_model(preds, pd.Series({"signal": 0.0}), eras=None)
    with pytest.raises(ScoringInputError, match=r"\['ghost'\] that have no predictions"):
        stake_weighted_meta_model(preds, pd.Series({"ghost": 1.0}), eras=None)


def test_payout_formula_and_clip():
    stakes = pd.Series({"a": 100.0, "b": 100.0, "c": 50.0, "d": 10.0})
    corr = pd.Series({"a": 0.02, "b": 0.5, "c": -0.5, "d": np.nan})
    mmc = pd.Series({"a": 0.01, "b": 0.0, "c": 0.0, "d": 0.01})
    got = payout(stakes, corr=corr, mmc=mmc, payout_factor=1.0, corr_weight=0.5, mmc_weight=2.0)
    assert got["a"] == pytest.approx(100 * (0.5 * 0.02 + 2 * 0.01))
    assert got["b"] == pytest.approx(100 * 0.05)
    assert got["c"] == pytest.approx(-50 * 0.05)
    assert got["d"] == pytest.approx(10 * 0.02)
    with pytest.raises(ScoringInputError, match="no mmc score"):
        payout(stakes, corr=corr, mmc=mmc.drop("a"))


def test_payout_scores_are_keyword_only():
    """CORR and MMC are both Series by model: positionally, swapping them would go unnoticed."""
    stakes = pd.Series({"a": 100.0})
    corr, mmc = pd.Series({"a": 0.02}), pd.Series({"a": 0.01})
    with pytest.raises(TypeError, match="positional"):
        payout(stakes, corr, mmc)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        payout_score(corr, mmc)  # type: ignore[misc]
    assert payout(stakes, corr=corr, mmc=mmc)["a"] != payout(stakes, corr=mmc, mmc=corr)["a"]


def test_payout_per_stake_is_the_return_on_one_unit():
    stakes = pd.Series({"a": 100.0, "b": 20.0})
    corr = pd.Series({"a": 0.02, "b": 0.5})
    mmc = pd.Series({"a": -0.01, "b": 0.0})
    per_stake = payout_per_stake(corr=corr, mmc=mmc, payout_factor=2.0)
    assert per_stake.name == "payout_per_stake"
    assert per_stake["a"] == pytest.approx(2.0 * (0.5 * 0.02 - 2.0 * 0.01))
    assert per_stake["b"] == pytest.approx(0.05)
    pd.testing.assert_series_equal(
        payout(stakes, corr=corr, mmc=mmc, payout_factor=2.0),
        (stakes * per_stake).rename("payout"),
    )
    with pytest.raises(ScoringInputError, match=r"\['b'\] have only corr"):
        payout_per_stake(corr=corr, mmc=mmc.drop("b"))
