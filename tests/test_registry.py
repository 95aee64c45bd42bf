"""The fund's records: schema and upgrades, stakes and payouts over rounds, reputation,
refusals, and crash safety (an exception, and a real SIGKILL, in the middle of paying). Each
test runs on SQLite and on a real PostgreSQL server. No FHE here: the records are what is
tested, so results are made up."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fhe_toolkit.leaderboard import leaderboard
from fhe_toolkit.registry import Registry, RegistryError, upgrade
from fhe_toolkit.registry.store import connect
from fhe_toolkit.registry.tables import Base
from tests.tournament_records import KEY_A, KEY_B, play_round, registry_with_models


def test_the_migrations_build_exactly_the_tables_the_code_uses(database_url):
    Registry(database_url)
    with connect(database_url).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_an_older_database_is_upgraded_and_keeps_its_data(database_url):
    engine = connect(database_url)
    upgrade(engine, "0001")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO participants (name, public_key, created_at) VALUES (:n, :k, :t)"),
            {"n": "alice", "k": KEY_A, "t": when},
        )
        connection.execute(
            sa.text(
                "INSERT INTO models (name, participant_id, target, stake, created_at) "
                "VALUES ('old-model', 1, 'target', 42.0, :t)"
            ),
            {"t": when},
        )
        connection.execute(
            sa.text(
                "INSERT INTO model_versions (model_id, version, family, spec_sha256, spec_json, "
                "registered_at) VALUES (1, 1, 'ridge', :sha, '{}', :t)"
            ),
            {"sha": "f" * 64, "t": when},
        )
        assert not sa.inspect(connection).has_table("payouts")
    registry = Registry(database_url)  # opening upgrades to the newest schema
    models = registry.models()
    assert models.loc["old-model", "stake"] == 42.0 and models.loc["old-model", "family"] == "ridge"
    with engine.connect() as connection:
        assert sa.inspect(connection).has_table("payouts")
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0002"
    play_round(registry_with_new_participant(registry), "r1", {"old-model": (0.02, 0.01)})


def registry_with_new_participant(registry: Registry) -> Registry:
    """The upgraded registry takes new records next to the old ones."""
    registry.add_participant("bob", KEY_B)
    registry.register_model("m-b", "bob", "linear", "target", "{}", "b" * 64, 10.0)
    return registry


def test_payouts_change_stakes_and_reputation_follows_the_last_rounds(database_url):
    registry = registry_with_models(database_url)
    play_round(registry, "r1", {"m-a": (0.04, 0.01), "m-b": (-0.02, -0.02)})
    stakes = registry.models()["stake"]
    assert stakes["m-a"] == pytest.approx(100 * 1.04)  # gain 0.5·.04 + 2·.01 = .04, added
    assert stakes["m-b"] == pytest.approx(50 * 0.95)  # loss clipped at -0.05, burned
    registry.set_stake("m-b", 80.0)  # between rounds: the next round pays on it
    play_round(registry, "r2", {"m-a": (0.0, 0.0), "m-b": (0.02, 0.0)})
    play_round(registry, "r3", {"m-a": (0.02, 0.0), "m-b": (0.0, 0.0)})
    payouts = registry.payouts().set_index(["round", "model"])
    assert payouts.loc[("r2", "m-b"), "stake"] == 80.0
    assert payouts.loc[("r2", "m-b"), "payout"] == pytest.approx(80 * 0.01)
    # Reputation: the mean payout score over the last 2 resolved rounds.
    assert payouts.loc[("r3", "m-a"), "reputation"] == pytest.approx((0.0 + 0.01) / 2)
    assert payouts.loc[("r1", "m-a"), "reputation"] == pytest.approx(0.04)
    history = registry.stake_history()
    assert list(history.query("model == 'm-b'")["kind"]) == [
        "set",
        "burn",
        "set",
        "payout",
        "payout",
    ]
    board = leaderboard(registry.models(), registry.payouts(), "corr")
    assert list(board.index) == ["m-a", "m-b"] and board.loc["m-a", "rounds"] == 3


def test_refusals(database_url):
    registry = registry_with_models(database_url)
    with pytest.raises(RegistryError, match="another public key"):
        registry.add_participant("alice", KEY_B)
    with pytest.raises(RegistryError, match="belongs to another participant"):
        registry.register_model("m-a", "bob", "linear", "target", "{}", "c" * 64, 1.0)
    with pytest.raises(RegistryError, match="stake must be ≥ 0"):
        registry.set_stake("m-a", -1.0)
    play_round(registry, "r1", {"m-a": (0.01, 0.0), "m-b": (0.01, 0.0)})
    with pytest.raises(RegistryError, match="exists already"):
        registry.create_round("r1", 1, None, [])
    with pytest.raises(RegistryError, match="resolved already"):
        registry.record_results("r1", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), 2)
    bundles = [{"model": "m-a", "key_set_id": "0" * 32, "bundle_sha256": "1" * 64,
                "batch_ids": [["x"]]}]  # fmt: skip
    registry.create_round("r2", 1, datetime.now(UTC) + timedelta(hours=1), bundles)
    registry.accept_submission("r2", "m-a", "d" * 64, "alice")
    registry.accept_submission("r2", "m-a", "d" * 64, "alice")  # cut off before decryption
    registry.set_status("r2", "m-a", "received")
    with pytest.raises(RegistryError, match="received already"):
        registry.accept_submission("r2", "m-a", "d" * 64, "alice")
    registry.create_round("r3", 1, datetime.now(UTC) - timedelta(seconds=1), bundles)
    with pytest.raises(RegistryError, match="stopped taking submissions"):
        registry.accept_submission("r3", "m-a", "e" * 64, "alice")
    with pytest.raises(RegistryError, match="has no bundle"):
        registry.accept_submission("r3", "m-b", "e" * 64, "bob")


def test_an_exception_while_paying_leaves_nothing_and_a_rerun_finishes(database_url, monkeypatch):
    registry = registry_with_models(database_url)
    original = Registry._set_stake
    calls = []

    def fail_on_the_second_payout(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("the process died here")
        return original(*args, **kwargs)

    monkeypatch.setattr(Registry, "_set_stake", staticmethod(fail_on_the_second_payout))
    with pytest.raises(RuntimeError, match="died here"):
        play_round(registry, "r1", {"m-a": (0.04, 0.0), "m-b": (0.04, 0.0)})
    monkeypatch.undo()
    assert_nothing_was_paid(registry)
    play_round_resolution(registry)


KILLER = """
import os, signal, sys
import pandas as pd
from fhe_toolkit.registry import Registry
from tests.tournament_records import play_round

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

registry = Registry(sys.argv[1])
first = Registry._set_stake
calls = []
def second_payout_kills(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        die()
    return first(*args, **kwargs)
Registry._set_stake = staticmethod(second_payout_kills)
play_round(registry, "r1", {"m-a": (0.04, 0.0), "m-b": (0.04, 0.0)})
"""


def test_a_process_killed_while_paying_leaves_nothing_and_a_rerun_finishes(database_url):
    registry = registry_with_models(database_url)
    result = subprocess.run(
        [sys.executable, "-c", KILLER, database_url], capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == -9, result.stderr
    assert_nothing_was_paid(registry)
    play_round_resolution(registry)


def assert_nothing_was_paid(registry: Registry) -> None:
    assert registry.payouts().empty and registry.scores().empty
    assert registry.models()["stake"].to_dict() == {"m-a": 100.0, "m-b": 50.0}
    assert registry.round_info("r1")["status"] == "open"


def play_round_resolution(registry: Registry) -> None:
    """Finish the round that was cut off: its submissions are in, only the results are not."""
    payouts = pd.DataFrame(
        {m: {"corr": 0.04, "mmc": 0.0, "score": 0.02, "payout": s * 0.02}
         for m, s in (("m-a", 100.0), ("m-b", 50.0))}
    ).T  # fmt: skip
    per_era = pd.DataFrame(
        [{"model": "m-a", "target": "target", "era": "0001", "metric": "corr", "value": 0.04}]
    )
    registry.record_results("r1", per_era, payouts, pd.DataFrame(), reputation_rounds=2)
    assert registry.models()["stake"].to_dict() == {"m-a": 102.0, "m-b": 51.0}
    assert json.loads(registry.payouts()[["model", "payout"]].to_json(orient="values")) == [
        ["m-a", 2.0], ["m-b", 1.0],
    ]  # fmt: skip
