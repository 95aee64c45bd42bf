"""Compiling for FHE: a circuit that accepts every row the features allow, not just the
calibration sample's. (Simulation only: no encryption.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.compiling import calibration_rows
from fhe_toolkit.participant import compile_model, train_model


@pytest.mark.parametrize("family", ["linear", "logistic", "decision_tree", "xgboost"])
def test_a_narrow_calibration_sample_still_accepts_every_row(tournament, family):
    """Without the corner rows, a tree compiled on rows of 2s refuses a 4 ("expected uint2")."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    features = metadata.features("medium")
    model = train_model(train, family=family, features=features)
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
