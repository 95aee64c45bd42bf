"""Shared fixtures: the numerai-tools reference case and small synthetic tournaments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from fhe_toolkit.data import SynthConfig, make_tournament, synthesize
from tests.databases import NoServer, new_database, postgres_server

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


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    try:
        with postgres_server() as url:
            yield url
    except NoServer as exc:
        yield f"unavailable: {exc}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fund.db'}"
    server = request.getfixturevalue("postgres_server_url")
    if server.startswith("unavailable: "):
        reason = server.removeprefix("unavailable: ")
        pytest.skip(f"no PostgreSQL server could be started: {reason}")
    return new_database(server)
