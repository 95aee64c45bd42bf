"""Regimes of the synthetic generator, made public for the lab: era_regimes, the regime column,
and `data synth --regime-length / --regime-column`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from fhe_toolkit.data import SynthConfig, load_tournament, make_tournament
from fhe_toolkit.data.synth import era_regimes
from tests.cli_runner import cli, ok

CONFIG = SynthConfig(train_eras=40, validation_eras=8, rows_per_era=300, n_features=20,
                     n_groups=4, noise=0.5, regime_length=5.0)  # fmt: skip


def test_era_regimes_label_every_written_era_and_only_those():
    regimes = era_regimes(CONFIG)
    frame, _ = make_tournament(CONFIG)
    assert list(regimes.index) == sorted(frame["era"].unique())
    assert regimes.dtype == np.int8 and set(regimes) == {-1, 1}
    assert regimes.index.name == "era" and regimes.name == "regime"
    assert "regime" not in frame.columns, "the column is opt-in"


def test_the_regime_column_carries_the_same_labels():
    frame, _ = make_tournament(SynthConfig(**{**CONFIG.__dict__, "regime_column": True}))
    per_era = frame.groupby("era")["regime"].agg(["min", "max"])
    assert (per_era["min"] == per_era["max"]).all() and frame["regime"].dtype == np.int8
    pd.testing.assert_series_equal(per_era["min"].rename("regime"), era_regimes(CONFIG))


def test_regimes_explain_the_features_that_flip_sign():
    """Signed by the era's regime, some feature's correlation with the target is steady, though
    unsigned it averages out: that is what the labels are for."""
    frame, metadata = make_tournament(CONFIG)
    features = metadata.features("all")
    per_era = frame.groupby("era").apply(lambda era: era[features].corrwith(era["target"]))
    signed = per_era.mul(era_regimes(CONFIG).astype(float), axis=0)
    flipping = signed.mean().abs().idxmax()
    assert abs(signed[flipping].mean()) > 0.3  # labels one era off: ~0.2
    assert abs(per_era[flipping].mean()) < 0.5 * abs(signed[flipping].mean())


def test_shorter_regimes_switch_more_often():
    def switches(length: float) -> int:
        labels = era_regimes(SynthConfig(train_eras=400, regime_length=length))
        return int((labels.diff().fillna(0) != 0).sum())

    assert switches(2.0) > 3 * switches(40.0) > 0


def test_data_synth_sets_the_regime_length_and_writes_the_column(tmp_path):
    out = tmp_path / "synth"
    ok(cli("data", "synth", out, "--train-eras", "30", "--validation-eras", "4",
           "--rows-per-era", "40", "--features", "10", "--groups", "2", "--regime-length", "3",
           "--regime-column", cwd=tmp_path))  # fmt: skip
    settings = json.loads((out / "synth_config.json").read_text())
    assert settings["regime_length"] == 3.0 and settings["regime_column"] is True
    config = SynthConfig(**{**settings, "targets": tuple(settings["targets"])})
    train = pd.read_parquet(out / "train.parquet")
    expected = era_regimes(config)
    pd.testing.assert_series_equal(
        train.groupby("era")["regime"].first(), expected[expected.index.isin(train["era"])]
    )
    # The loader reads features and targets only: the column does not get in a model's way.
    assert "regime" not in load_tournament(out / "train.parquet").columns

    bad = cli("data", "synth", tmp_path / "x", "--regime-length", "0.5", cwd=tmp_path)
    assert bad.returncode == 2 and "regime_length" in bad.stderr
