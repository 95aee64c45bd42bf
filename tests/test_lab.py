"""The incentive lab: determinism, its outputs, archetypes that behave as they must, the payout
rule as applied round by round, the command line, and the report drawn in Chromium."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.data import SynthConfig, synthesize
from fhe_toolkit.errors import DataValidationError
from fhe_toolkit.lab import (
    ARCHETYPES,
    DEFAULT_ACCOUNTS,
    SUMMARY_COLUMNS,
    LabConfig,
    PayoutRule,
    mmc_form_agreement,
    run_lab,
    write_outputs,
)
from fhe_toolkit.lab.report import CHARTS
from tests.browser import assert_charts_drawn, self_contained
from tests.cli_runner import cli, ok

SMALL = LabConfig(
    rounds=24, train_eras=24, embargo_eras=2, rows_per_era=250, n_features=20, n_groups=4,
    noise=4.0, recent_eras=6, copy_window=4,
)  # fmt: skip
"""Small and strong-signal: quick, and the archetypes' differences stand out of the noise."""


def small(**changes: object) -> LabConfig:
    return dataclasses.replace(SMALL, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def result():
    return run_lab(SMALL)


def by_archetype(rounds: pd.DataFrame, name: str) -> pd.DataFrame:
    return rounds[rounds["archetype"] == name]


def test_the_same_seed_gives_the_same_run_and_another_seed_another(result):
    again = run_lab(SMALL)
    pd.testing.assert_frame_equal(result.all_rounds, again.all_rounds)
    pd.testing.assert_frame_equal(result.summary, again.summary)
    other = run_lab(small(seed=1, rounds=4, compare_methods=False))
    assert not np.allclose(other.summary["mean_corr"], result.summary["mean_corr"])


def test_the_summary_has_exactly_its_columns_and_one_row_per_archetype(result, tmp_path):
    paths = write_outputs(result, tmp_path, report=False)
    summary = pd.read_csv(paths["summary"])
    assert list(summary.columns) == SUMMARY_COLUMNS == [
        "archetype", "accounts", "mean_corr", "mean_mmc", "mean_payout_per_stake", "t_stat",
        "final_stake_multiple",
    ]  # fmt: skip
    assert list(summary["archetype"]) == [a for a in ARCHETYPES if DEFAULT_ACCOUNTS.get(a)]
    assert dict(zip(summary["archetype"], summary["accounts"], strict=True)) == DEFAULT_ACCOUNTS
    rounds = pd.read_csv(paths["rounds"])
    assert {"round", "account", "archetype", "corr", "mmc", "payout", "stake"} <= set(rounds)
    assert len(rounds) == SMALL.rounds * sum(DEFAULT_ACCOUNTS.values())
    methods = pd.read_csv(paths["methods"])
    assert list(methods["method"]) == ["stake_weighted", "reputation_filtered", "cluster_capped"]
    claims = pd.read_csv(paths["claims"])
    assert list(claims["claim"].unique()) == ["a", "b", "c", "d", "e"]


def test_noise_scores_about_zero_and_the_negated_meta_model_scores_below_it(result):
    summary = result.summary.set_index("archetype")
    # 2 accounts × 24 rounds of 250 rows: the standard error of the mean CORR is ~0.009.
    assert abs(summary.at["noise", "mean_corr"]) < 0.03
    assert summary.at["negated_meta", "mean_corr"] < -0.05
    assert summary.at["negated_meta", "final_stake_multiple"] < 1
    honest = summary.loc[["ridge", "tree", "orthogonal"], "mean_corr"]
    assert (honest > 0.03).all(), honest


def test_an_exact_copy_of_the_meta_model_adds_nothing(result):
    """The copy ranks exactly as the meta model does, so its MMC is 0 in every round and its
    CORR is the meta model's. Under cluster_capped the copy itself can link clusters (single
    linkage), so the meta model is no longer quite the one it copied: MMC near 0 only."""
    rounds = result.all_rounds.set_index(["method", "round"])
    copies = rounds[rounds["archetype"] == "meta_copy_exact"]
    exact = copies.drop(index="cluster_capped", level="method")
    np.testing.assert_allclose(exact["mmc"], 0.0, atol=1e-9)
    meta = result.meta.set_index(["method", "round"])["meta_corr"]
    np.testing.assert_allclose(exact["corr"], meta.loc[exact.index])
    assert (exact["corr_with_meta"] > 1 - 1e-9).all()
    capped = copies.xs("cluster_capped", level="method")
    assert abs(capped["mmc"].mean()) < 0.002 and (capped["corr_with_meta"] > 0.99).all()


@pytest.mark.parametrize("method", ["stake_weighted", "cluster_capped"])
def test_splitting_a_signal_over_sybil_accounts_gains_nothing(method):
    """Five accounts holding one signal (stakes 1/5 each) earn per unit of stake what one
    account with the same signal and the whole stake earns, under the stake-weighted meta model
    and under cluster capping at its default cap (a share of all stakes)."""
    split = run_lab(small(compare_methods=False, method=method)).summary.set_index("archetype")
    alone = run_lab(
        small(compare_methods=False, method=method, accounts={**DEFAULT_ACCOUNTS, "sybil": 1})
    ).summary.set_index("archetype")
    five, one = (s.at["sybil", "mean_payout_per_stake"] for s in (split, alone))
    assert one > 0.005, "the shared signal should earn something"
    # Each account's own perturbation moves the figures a little (measured: 0.0087 vs 0.0080).
    assert abs(five - one) < 0.25 * abs(one), (five, one)
    assert split.at["sybil", "final_stake_multiple"] == pytest.approx(
        alone.at["sybil", "final_stake_multiple"], rel=0.05
    )


def test_payouts_follow_the_rule_and_stakes_follow_the_payouts():
    rule = PayoutRule(corr_weight=1.0, mmc_weight=3.0, clip=0.04, payout_factor=2.0,
                      multipliers=(1.0, 0.0, 0.5))  # fmt: skip
    run = run_lab(small(rounds=6, rule=rule, compare_methods=False))
    rounds = run.rounds
    factor = rounds["round"].map(lambda r: 2.0 * (1.0, 0.0, 0.5)[(r - 1) % 3])
    score = rounds["corr"].fillna(0) + 3.0 * rounds["mmc"].fillna(0)
    expected = rounds["stake"] * np.clip(factor * score, -0.04, 0.04)
    submitted = rounds["score"].notna()
    np.testing.assert_allclose(rounds.loc[submitted, "payout"], expected[submitted], atol=1e-12)
    assert (rounds.loc[rounds["round"] % 3 == 2, "payout"] == 0).all()
    np.testing.assert_allclose(rounds["stake_after"], rounds["stake"] + rounds["payout"])
    following = rounds.pivot(index="round", columns="account", values="stake")
    previous = rounds.pivot(index="round", columns="account", values="stake_after")
    pd.testing.assert_frame_equal(
        following.iloc[1:], previous.iloc[:-1].set_axis(following.index[1:])
    )


def test_burns_stop_at_a_zero_stake():
    rule = PayoutRule(clip=2.0, payout_factor=1000.0)
    rounds = run_lab(small(rounds=4, rule=rule, compare_methods=False)).rounds
    assert (rounds["stake_after"] >= 0).all()
    negated = by_archetype(rounds, "negated_meta")
    assert negated["stake_after"].iloc[-1] == 0.0
    assert (negated["payout"][negated["stake"] == 0] == 0).all()


def test_mmc_only_pays_an_exact_meta_copy_nothing():
    run = run_lab(small(rule=PayoutRule(corr_weight=0.0), compare_methods=False))
    summary = run.summary.set_index("archetype")
    assert summary.at["meta_copy_exact", "final_stake_multiple"] == pytest.approx(1.0, abs=1e-6)
    assert summary.at["negated_meta", "final_stake_multiple"] == pytest.approx(1.0, abs=1e-6)


def test_the_realistic_copycat_sits_out_until_a_meta_model_is_published(result):
    copycat = by_archetype(result.rounds, "meta_copycat")
    first = copycat[copycat["round"] == 1]
    assert first["corr"].isna().all() and (first["payout"] == 0).all()
    later = copycat[copycat["round"] > 1]
    assert later["corr"].notna().all() and later["corr_with_meta"].mean() > 0.8


def test_the_top_copycat_submits_the_largest_staked_model(result):
    rounds = result.rounds.set_index(["round", "account"])
    for round_number in (1, SMALL.rounds):
        at = rounds.xs(round_number, level="round")
        copying = at[at["archetype"] == "top_copycat"].iloc[0]
        static = at[~at["archetype"].isin(
            ["top_copycat", "meta_copycat", "meta_copy_exact", "negated_meta"]
        )]  # fmt: skip
        assert copying["corr"] == pytest.approx(static.loc[static["stake"].idxmax(), "corr"])


def test_reputation_filtering_starts_stake_weighted(result):
    meta = result.meta.set_index(["method", "round"])["fallback"]
    assert meta[("reputation_filtered", 1)]
    assert not meta.xs("stake_weighted").any() and not meta.xs("cluster_capped").any()
    weights = result.all_rounds.query("method == 'reputation_filtered' and round > 4")
    negated = weights.loc[weights["archetype"] == "negated_meta", "meta_weight"]
    assert (negated == 0).all(), "a model burning every round must drop out"


def test_the_high_exposure_model_does_worse_after_a_regime_shift():
    run = run_lab(small(rounds=40, compare_methods=False, regime_length=6.0))
    assert run.training_regime in (-1, 1)
    figures = run.claims.set_index("measure")["value"]
    same = figures["high_exposure mean CORR, rounds in the training regime"]
    shifted = figures["high_exposure mean CORR, rounds after a shift"]
    assert same > shifted
    assert figures["high_exposure mean risky exposure"] > figures["neutralized mean risky exposure"]


def test_the_three_mmc_formulations_agree_over_random_cases():
    forms = mmc_form_agreement(cases=60, rows=200, seed=3)
    correlations = forms[["finite_difference", "closed_form", "pseudo_inverse"]].corr()
    assert correlations.min().min() > 0.99
    np.testing.assert_allclose(forms["pseudo_inverse"], forms["closed_form"] / forms["rows"])


def test_bad_settings_are_refused_with_what_was_expected():
    with pytest.raises(DataValidationError, match="rounds ≥ 2"):
        LabConfig(rounds=1)
    with pytest.raises(DataValidationError, match="clip must be > 0"):
        PayoutRule(clip=0.0)
    with pytest.raises(DataValidationError, match="unknown archetype"):
        run_lab(small(accounts={"ridge": 1, "whale": 2}))
    with pytest.raises(DataValidationError, match="noisy_copy copies the first ridge"):
        run_lab(small(accounts={"noisy_copy": 1, "noise": 1}))


def test_the_fund_s_own_eras_can_be_played_regimes_included(tmp_path):
    synthesize(tmp_path, SynthConfig(train_eras=30, validation_eras=0, live_eras=0,
                                     rows_per_era=120, n_features=12, n_groups=3,
                                     regime_column=True))  # fmt: skip
    run = run_lab(small(rounds=8, train_eras=20, data_path=tmp_path / "train.parquet",
                        compare_methods=False))  # fmt: skip
    assert run.rounds["era"].nunique() == 8 and run.rounds["regime"].isin([-1, 1]).all()
    assert "train.parquet" in run.source
    with pytest.raises(DataValidationError, match="has 30 era"):
        run_lab(small(rounds=25, data_path=tmp_path / "train.parquet"))


def test_the_cli_writes_every_file_and_reports_progress(tmp_path):
    out = tmp_path / "lab"
    result = cli(
        "simulate", "--out", out, "--rounds", "6", "--train-eras", "12", "--rows-per-era", "120",
        "--features", "12", "--groups", "3", "--corr-weight", "0", "--multipliers", "1,2",
        "--accounts", "sybil=2", "--accounts", "lottery=0", "--no-compare", "--no-report",
        cwd=tmp_path,
    )  # fmt: skip
    stdout = ok(result)
    assert "Per archetype" in stdout and "sybil" in stdout and "0·CORR + 2·MMC" in stdout
    assert "rounds" in result.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert "lottery" not in set(summary["archetype"])
    assert summary.set_index("archetype").at["sybil", "accounts"] == 2
    for name in ("rounds", "methods", "meta", "claims", "mmc_forms", "method_summary"):
        assert (out / f"{name}.csv").is_file(), name
    assert not (out / "report.html").exists()

    bad = cli("simulate", "--out", out, "--accounts", "whale=3", cwd=tmp_path)
    assert bad.returncode == 2 and "ARCHETYPE=COUNT" in bad.stderr
    bad = cli("simulate", "--out", out, "--multipliers", "1,x", cwd=tmp_path)
    assert bad.returncode == 2 and "--multipliers" in bad.stderr


@pytest.fixture(scope="module")
def report(result, tmp_path_factory):
    return write_outputs(result, tmp_path_factory.mktemp("lab"))["report"]


def test_the_report_is_self_contained(report):
    page = self_contained(report)
    assert "Per archetype" in page and "meta_copy_exact" in page


def test_chromium_draws_every_chart_offline(report, tmp_path):
    assert_charts_drawn(report, CHARTS, tmp_path / "profile")
