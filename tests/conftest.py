"""Shared fixtures: the numerai-tools reference case and small synthetic tournaments."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fhe_toolkit.data import SynthConfig, make_tournament, synthesize

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def reference_case() -> pd.DataFrame:
    return pd.read_parquet(DATA / "scoring_case.parquet")


@pytest.fixture(scope="session")
def reference_expected() -> dict:
    return json.loads((DATA / "scoring_case_expected.json").read_text())


SMALL = SynthConfig(train_eras=12, validation_eras=4, rows_per_era=120, n_features=20, n_groups=4)


@pytest.fixture(scope="session")
def tournament() -> tuple[pd.DataFrame, object]:
    return make_tournament(SMALL)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SMALL)
    return out
