"""Shared set-up for the FHE benchmarks: Numerai-shaped data with the 42-feature small set."""

from __future__ import annotations

import os
import platform

import pandas as pd

from fhe_toolkit.data import SynthConfig, make_tournament

NUMERAI_SMALL = 42
LIVE_ROWS = 6720


def numerai_like(rows_per_era: int = LIVE_ROWS, train_eras: int = 30) -> tuple[pd.DataFrame, ...]:
    """Train rows, live rows (one era of ``rows_per_era``) and the 42 'small' features."""
    config = SynthConfig(
        train_eras=train_eras, validation_eras=0, live_eras=1, rows_per_era=rows_per_era,
        n_features=2748, n_groups=10,
    )  # fmt: skip
    frame, metadata = make_tournament(config)
    features = metadata.features("small")
    assert len(features) == NUMERAI_SMALL
    keep = ["era", "data_type", "target", *features]
    frame = frame[keep]
    return frame[frame["data_type"] == "train"], frame[frame["data_type"] == "live"], features


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
