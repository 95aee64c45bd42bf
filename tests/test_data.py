"""Tournament data: the validator's messages, the loader, the synthetic generator, and splitting
a file into one file per era."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fhe_toolkit.data import (
    SynthConfig,
    iter_eras,
    load_features_json,
    load_tournament,
    make_tournament,
    split_eras,
    synthesize,
    validate_tournament,
)
from fhe_toolkit.errors import DataValidationError
from tests.conftest import SMALL


@pytest.fixture
def frame(tournament) -> pd.DataFrame:
    return tournament[0].iloc[:300].copy()


def test_valid_frame_passes(frame):
    validate_tournament(frame)


def test_missing_era_is_named(frame):
    with pytest.raises(DataValidationError, match="missing column 'era'"):
        validate_tournament(frame.drop(columns="era"))


def test_numeric_era_gives_the_fix(frame):
    with pytest.raises(DataValidationError, match=r"era.*numeric.*astype\(int\)"):
        validate_tournament(frame.assign(era=frame["era"].astype(int)))


def test_duplicate_ids_are_listed(frame):
    doubled = pd.concat([frame, frame.iloc[[3]]])
    with pytest.raises(DataValidationError, match=rf"1 duplicate id.*{frame.index[3]}"):
        validate_tournament(doubled)


def test_out_of_range_feature_names_column_and_rows(frame):
    column = [c for c in frame if c.startswith("feature_")][2]
    bad = frame.copy()
    bad.iloc[[4, 9], bad.columns.get_loc(column)] = 7
    with pytest.raises(DataValidationError) as err:
        validate_tournament(bad)
    message = str(err.value)
    assert column in message and "outside 0..4 in 2 row(s)" in message
    assert f"{frame.index[4]!r} (7)" in message


def test_non_integer_feature_is_named(frame):
    column = next(c for c in frame if c.startswith("feature_"))
    bad = frame.astype({column: float})
    bad.iloc[1, bad.columns.get_loc(column)] = 2.5
    with pytest.raises(DataValidationError, match=rf"{column}.*float64, not integer.*1 row"):
        validate_tournament(bad)


def test_target_outside_buckets_is_named(frame):
    bad = frame.copy()
    bad.iloc[0, bad.columns.get_loc("target")] = 0.3
    with pytest.raises(DataValidationError, match=r"target 'target'.*outside the buckets.*\(0.3"):
        validate_tournament(bad)


def test_all_problems_reported_at_once(frame):
    bad = frame.drop(columns="era").copy()
    bad.iloc[0, bad.columns.get_loc("target")] = 2.0
    bad.index.name = "row"
    with pytest.raises(DataValidationError, match=r"\(3 problem\(s\)\)"):
        validate_tournament(bad)


def test_validator_does_not_modify_the_frame(frame):
    before = frame.copy()
    with pytest.raises(DataValidationError):
        validate_tournament(frame.assign(target=5.0))
    validate_tournament(frame)
    pd.testing.assert_frame_equal(frame, before)


def test_loader_reads_a_feature_set(synth_dir):
    metadata = load_features_json(synth_dir / "features.json")
    df = load_tournament(synth_dir / "train.parquet", feature_set="small")
    assert df.index.name == "id"
    assert [c for c in df if c.startswith("feature_")] == metadata.features("small")
    assert {"era", "data_type", "target", "target_resid", "target_60d"} <= set(df.columns)
    assert all(df[c].dtype == np.int8 for c in metadata.features("small"))


def test_loader_errors(synth_dir, tmp_path):
    with pytest.raises(DataValidationError, match=r"'huge' is not in features\.json"):
        load_tournament(synth_dir / "train.parquet", feature_set="huge")
    with pytest.raises(DataValidationError, match="does not exist"):
        load_tournament(tmp_path / "nope.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataValidationError, match="not a readable parquet file"):
        load_tournament(garbage)
    with pytest.raises(DataValidationError, match=r"no column\(s\) \['feature_nope'\]"):
        load_tournament(synth_dir / "train.parquet", features=["feature_nope"])
    broken = tmp_path / "features.json"
    broken.write_text(json.dumps({"sets": {}}))
    with pytest.raises(DataValidationError, match="feature_sets"):
        load_features_json(broken)


def test_loader_reads_numerai_style_files(tmp_path, frame):
    """Real Numerai files: float32 targets with NaN, the index stored as an 'id' column."""
    real = frame.reset_index().astype({"target_resid": "float32"})
    real.loc[:5, "target"] = np.nan
    real.to_parquet(tmp_path / "validation.parquet", index=False)
    loaded = load_tournament(tmp_path / "validation.parquet")
    assert loaded.index.name == "id" and len(loaded) == len(frame)


def test_synth_is_deterministic_and_chunk_independent():
    first, _ = make_tournament(SMALL)
    second, _ = make_tournament(SMALL)
    pd.testing.assert_frame_equal(first, second)
    longer = SynthConfig(**{**SMALL.__dict__, "train_eras": SMALL.train_eras + 5})
    era_three = next(e for i, e in enumerate(iter_eras(longer)) if i == 2)
    pd.testing.assert_frame_equal(era_three, first[first["era"] == "0003"])
    other, _ = make_tournament(SynthConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not first[other.columns].equals(other)


def test_synth_shape_splits_and_targets(tournament):
    frame, metadata = tournament
    validate_tournament(frame)
    eras = frame.groupby("data_type")["era"].agg(["min", "max", "nunique"])
    assert eras.loc["train", "nunique"] == SMALL.train_eras
    assert eras.loc["validation", "nunique"] == SMALL.validation_eras
    gap = int(eras.loc["validation", "min"]) - int(eras.loc["train", "max"]) - 1
    assert gap == SMALL.embargo_eras
    assert frame.groupby("era").size().eq(SMALL.rows_per_era).all()
    features = metadata.features("all")
    assert len(features) == SMALL.n_features
    assert set(metadata.features("small")) < set(metadata.features("medium")) <= set(features)
    # Five equal bins per era.
    shares = frame[features[0]].groupby(frame["era"]).value_counts(normalize=True)
    np.testing.assert_allclose(shares, 0.2, atol=0.01)
    assert frame["target"].notna().all()
    assert 0 < frame["target_resid"].isna().mean() < 0.05
    assert frame["target_60d"].isna().any()


def test_synth_plants_regime_flipping_features(tournament):
    """Some feature's per-era correlation with the target is strongly positive in some eras
    and strongly negative in others."""
    frame, metadata = tournament
    features = metadata.features("all")
    per_era = frame.groupby("era").apply(
        lambda era: era[features].corrwith(era["target"], method="spearman")
    )
    flips = (per_era.max() > 0.15) & (per_era.min() < -0.15)
    assert flips.any()


def test_synthesize_writes_files_era_by_era(synth_dir):
    train = pq.ParquetFile(synth_dir / "train.parquet")
    assert train.metadata.num_row_groups == SMALL.train_eras
    live = load_tournament(synth_dir / "live.parquet")
    assert live["target"].isna().all() and (live["data_type"] == "live").all()
    live_targets = pd.read_parquet(synth_dir / "live_targets.parquet")
    assert live_targets.index.equals(live.index) and live_targets["target"].notna().all()
    metadata = json.loads((synth_dir / "features.json").read_text())
    assert {"small", "medium", "all"} <= set(metadata["feature_sets"])


def test_synth_rejects_bad_settings():
    with pytest.raises(DataValidationError, match="rows_per_era"):
        SynthConfig(rows_per_era=2)


def test_synth_writes_each_live_era_with_its_targets(tmp_path):
    """With several live eras, one file per era (a round each), its targets beside it in the
    form `fund score --targets` reads, named as `data split` names them."""
    config = SynthConfig(**{**SMALL.__dict__, "live_eras": 3})
    paths = synthesize(tmp_path / "data", config)
    live = load_tournament(paths["live"])
    targets = pd.read_parquet(paths["live_targets"])
    eras = sorted(live["era"].unique())
    files = sorted(paths["live_eras"].iterdir())
    assert [f.name for f in files] == [f"era_{era}.parquet" for era in eras]
    for era, file in zip(eras, files, strict=True):
        pd.testing.assert_frame_equal(load_tournament(file), live[live["era"] == era])
        era_targets = pd.read_parquet(paths["live_era_targets"] / file.name)
        pd.testing.assert_frame_equal(era_targets, targets.loc[live.index[live["era"] == era]])
    split = split_eras(paths["live"], tmp_path / "split")
    assert [f.path.name for f in split] == [f.name for f in files]
    for done, file in zip(split, files, strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(done.path), pd.read_parquet(file))
    one = synthesize(tmp_path / "one", SMALL)
    assert "live_eras" not in one and not (tmp_path / "one" / "live").exists()


def test_split_writes_one_file_per_era_in_order(synth_dir, tmp_path):
    whole = pd.read_parquet(synth_dir / "validation.parquet")
    written = split_eras(synth_dir / "validation.parquet", tmp_path / "all")
    assert [f.era for f in written] == sorted(whole["era"].unique())
    assert [f.rows for f in written] == [SMALL.rows_per_era] * SMALL.validation_eras
    pd.testing.assert_frame_equal(pd.concat(pd.read_parquet(f.path) for f in written), whole)
    picked = split_eras(synth_dir / "validation.parquet", tmp_path / "some",
                        eras=[written[2].era, written[0].era])  # fmt: skip
    assert [f.era for f in picked] == [written[0].era, written[2].era]
    assert sorted(p.name for p in (tmp_path / "some").iterdir()) == [f.path.name for f in picked]
    # Numbers as eras: zero-padded to one width, so that listing the folder gives their order.
    numbered = whole.assign(era=whole["era"].map({e: i for i, e in enumerate(
        sorted(whole["era"].unique()), start=8)}))  # fmt: skip
    numbered.to_parquet(tmp_path / "numbered.parquet")
    written = split_eras(tmp_path / "numbered.parquet", tmp_path / "numbered")
    assert [f.path.name for f in written] == [
        "era_08.parquet", "era_09.parquet", "era_10.parquet", "era_11.parquet"
    ]  # fmt: skip
    assert list(pd.read_parquet(written[2].path)["era"].unique()) == [10]


def test_split_refuses_what_it_cannot_split_before_writing(synth_dir, tmp_path):
    out = tmp_path / "out"
    source = synth_dir / "live.parquet"
    cases = {"is a directory": synth_dir, "does not exist": tmp_path / "nothing.parquet"}
    (tmp_path / "empty.parquet").write_bytes(b"")
    cases["is empty"] = tmp_path / "empty.parquet"
    (tmp_path / "link.parquet").symlink_to(source)
    cases["is a symbolic link"] = tmp_path / "link.parquet"
    os.mkfifo(tmp_path / "fifo.parquet")
    cases["not a regular file"] = tmp_path / "fifo.parquet"
    cases["has no 'era' column"] = synth_dir / "live_targets.parquet"
    frame = pd.read_parquet(source)
    frame.iloc[:0].to_parquet(tmp_path / "no-rows.parquet")
    cases["has no rows"] = tmp_path / "no-rows.parquet"
    (tmp_path / "text.parquet").write_text("id,era\n")
    cases["not a readable parquet file"] = tmp_path / "text.parquet"
    for message, path in cases.items():
        with pytest.raises(DataValidationError, match=message):
            split_eras(path, out)
    with pytest.raises(DataValidationError, match=r"has no era \['9999'\]; its 1 era\(s\)"):
        split_eras(source, out, eras=["9999"])
    assert not out.exists(), "a refused split wrote something"
    [done] = split_eras(source, out)
    before = done.path.read_bytes()
    with pytest.raises(DataValidationError, match="exists already; nothing was written"):
        split_eras(source, out)
    assert done.path.read_bytes() == before
