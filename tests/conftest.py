"""Shared fixtures: the numerai-tools reference case and small synthetic tournaments; and, after
the session, the scan for secret keys outside the key stores."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from fhe_toolkit.data import SynthConfig, make_tournament, synthesize
from tests.databases import NoServer, new_database, postgres_server
from tests.secret_scan import SEEN, find_leaks, secrets_on_disk, watch_key_stores

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


# --- after the session: no secret key outside the key stores --------------------------------------
watch_key_stores()
WORK_FOLDERS = ("fund", "keys", "fhe_demo", "work", "benchmarks/out")
"""The repository's own folders a command run there writes to (see .gitignore)."""
_session_folders: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _watched_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _session_folders.append(tmp_path_factory.getbasetemp())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if any secret the tests made (key sets, round keys, signing keys) is
    found in a file outside its key store or identity file (see tests/secret_scan.py)."""
    if not _session_folders:
        return
    repo = Path(__file__).parent.parent
    roots = [*_session_folders, *(repo / f for f in WORK_FOLDERS if (repo / f).is_dir())]
    secrets = secrets_on_disk(roots)
    secrets.update(SEEN)
    leaks = find_leaks(secrets, roots)
    if leaks:
        report = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["secret-key bytes found outside the key stores:", *leaks]
        if report is not None:
            report.section("secret scan", sep="=", red=True, bold=True)
            for line in lines:
                report.write_line(line)
        else:
            print("\n".join(lines), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
