"""Compiling for FHE: a circuit that accepts every row the features allow, not just the
calibration sample's, and the compiled library the runner loads. (No encryption.)"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.fhe.compiling import calibration_rows
from fhe_toolkit.fhe.server_library import (
    LIBRARY_DIR,
    SERVER_ZIP,
    SOURCE_DIGEST,
    ensure_server_library,
)
from fhe_toolkit.participant.model import DEPLOYMENT_DIR, compile_model, export_model, train_model
from fhe_toolkit.protocol.files import sha256_file


@pytest.mark.parametrize("family", ["linear", "logistic", "decision_tree", "xgboost"])
def test_a_narrow_calibration_sample_still_accepts_every_row(tournament, family):
    """Without the corner rows, a tree compiled on rows of 2s refuses a 4 ("expected uint2")."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    features = metadata.features("medium")
    model = train_model(train, family=family, features=features, packed=False)
    narrow = pd.DataFrame(2.0, index=range(3), columns=features)
    compile_model(model, narrow)
    corners = calibration_rows(model.estimator, np.full((1, len(features)), 2.0, np.float32))
    rng = np.random.default_rng(0)
    random_corners = rng.choice([0.0, 4.0], size=(64, len(features)))
    rows = pd.DataFrame(np.vstack([corners, random_corners]), columns=features)
    # Equal up to the float rounding of a sigmoid; an overflow would be off by whole buckets.
    np.testing.assert_allclose(
        model.predict(rows, "simulated").to_numpy(),
        model.predict(rows, "quantized").to_numpy(),
        rtol=1e-12,
        atol=0,
    )


def test_calibration_rows_bound_a_linear_accumulator():
    class Linear:
        class sklearn_model:
            coef_ = np.array([1.0, -2.0, 0.0])

    sample = np.array([[1, 2, 3], [3, 1, 0]], dtype=np.float32)
    rows = calibration_rows(Linear(), sample)
    np.testing.assert_array_equal(rows[2:], [[1, 1, 0], [3, 2, 3], [3, 1, 0], [1, 2, 3]])


def test_the_compiled_server_library_follows_server_zip(tournament, tmp_path):
    """The runner's library is built at export, kept while server.zip is unchanged, and rebuilt
    (never run stale) when server.zip is replaced."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    dirs = []
    for name, feature_set in (("a", "small"), ("b", "medium")):
        model = train_model(
            train, family="linear", features=metadata.features(feature_set), packed=False
        )
        compile_model(model, train)
        export_model(model, tmp_path / name, name)
        dirs.append(tmp_path / name / DEPLOYMENT_DIR)
    first, second = dirs
    library = first / LIBRARY_DIR
    built = (library / "sharedlib.so").stat().st_mtime_ns
    assert ensure_server_library(first) == library
    assert (library / "sharedlib.so").stat().st_mtime_ns == built
    shutil.copy(second / SERVER_ZIP, first / SERVER_ZIP)
    ensure_server_library(first)
    assert (library / SOURCE_DIGEST).read_text() == sha256_file(second / SERVER_ZIP)
    program = (library / "program_info.concrete.params.json").read_text()
    assert program == (second / LIBRARY_DIR / "program_info.concrete.params.json").read_text()
