"""The fund's records: schema and upgrades, stakes and payouts over rounds, reputation,
refusals, and crash safety (an exception, and a real SIGKILL, in the middle of paying). Each
test runs on SQLite and on a real PostgreSQL server. No FHE here: the records are what is
tested, so results are made up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from fhe_toolkit.errors import RegistryError
from fhe_toolkit.fund.leaderboard import leaderboard
from fhe_toolkit.registry import (
    NewTrainingJob,
    Registry,
    RoundStatus,
    SubmissionStatus,
    TrainingJobRecord,
    TrainingJobStatus,
    upgrade,
)
from fhe_toolkit.registry.stakes import DEFAULT_MAX_STAKE, STAKE_CEILING
from fhe_toolkit.registry.store import connect, migrations_config, schema_change
from fhe_toolkit.registry.tables import Base
from tests.tournament_records import (
    KEY_A,
    KEY_B,
    new_bundle,
    play_round,
    registry_with_models,
)

HEAD = ScriptDirectory.from_config(migrations_config()).get_current_head()


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
    assert version == HEAD
    play_round(registry_with_new_participant(registry), "r1", {"old-model": (0.02, 0.01)})


def registry_with_new_participant(registry: Registry) -> Registry:
    """The upgraded registry takes new records next to the old ones."""
    registry.add_participant("bob", KEY_B)
    registry.register_model("m-b", "bob", "linear", "target", "{}", "b" * 64, 10.0)
    return registry


OLD_STATUSES = {
    "m0": ("awaiting submission", SubmissionStatus.AWAITING, None),
    "m1": ("accepted: decrypting", SubmissionStatus.DECRYPTING, None),
    "m2": ("received", SubmissionStatus.RECEIVED, None),
    "m3": ("received: constant predictions", SubmissionStatus.RECEIVED, "constant predictions"),
    "m4": ("refused: outputs could not be decrypted", SubmissionStatus.REFUSED,
           "outputs could not be decrypted"),
    "m5": ("refused: non-finite predictions", SubmissionStatus.REFUSED, "non-finite predictions"),
}  # fmt: skip
"""Per model, its bundle's status as versions before 0003 wrote it, and what it becomes."""


def database_at_0002(database_url: str, statuses: dict[str, str]) -> sa.Engine:
    """A database as version 0002 left it: round r1 with one bundle per model in ``statuses``,
    and the submission of each bundle that was being decrypted."""
    engine = connect(database_url)
    upgrade(engine, "0002")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as connection:
        tables = sa.MetaData()
        tables.reflect(connection)

        def insert(table: str, **row: object) -> None:
            connection.execute(tables.tables[table].insert(), [row])

        insert("participants", name="alice", public_key=KEY_A, created_at=when)
        insert("rounds", name="r1", status="open", n_rows=1, opened_at=when)
        for number, (model, status) in enumerate(statuses.items(), start=1):
            insert("models", name=model, participant_id=1, target="target", stake=10.0,
                   created_at=when)  # fmt: skip
            insert("model_versions", model_id=number, version=1, family="linear",
                   spec_sha256="f" * 64, spec_json="{}", registered_at=when)  # fmt: skip
            insert("bundles", round_id=1, model_id=number, model_version_id=number,
                   key_set_id="0" * 32, bundle_sha256="1" * 64, stake=10.0,
                   batch_ids=[["x"]], status=status)  # fmt: skip
            if status == "accepted: decrypting":
                insert("submissions", bundle_id=number, manifest_sha256="d" * 64, signed_by=1,
                       received_at=when)  # fmt: skip
    return engine


def test_old_submission_statuses_become_a_status_and_its_detail(database_url):
    engine = database_at_0002(database_url, {m: old for m, (old, _, _) in OLD_STATUSES.items()})
    registry = Registry(database_url)  # opening upgrades it
    record = registry.round_record("r1")
    assert record.status == RoundStatus.OPEN and record.n_rows == 1
    assert {m: (b.status, b.detail) for m, b in record.bundles.items()} == {
        m: (status, detail) for m, (_, status, detail) in OLD_STATUSES.items()
    }
    assert record.bundles["m1"].batch_ids == (("x",),) and record.bundles["m1"].stake == 10.0
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT status, detail FROM bundles ORDER BY id")).all()
    assert [tuple(row) for row in stored] == [
        (str(status), detail) for _, status, detail in OLD_STATUSES.values()
    ]  # the database keeps readable words
    # The submission being decrypted when the fund was cut off is still the one on record (the
    # receive path finishes it from the kept copy); no other one is accepted for the bundle.
    assert registry.accepted_submission("r1", "m1") == "d" * 64
    with pytest.raises(RegistryError, match="received already"):
        registry.accept_submission("r1", "m1", "d" * 64, "alice")
    registry.accept_submission("r1", "m0", "a" * 64, "alice")  # its copy being kept
    # And back: the messages are rebuilt as versions before 0003 wrote them; a submission whose
    # copy was being kept is one they take again, as they did one cut off while decrypting.
    with schema_change(engine) as connection:
        command.downgrade(migrations_config(connection), "0002")
    with engine.connect() as connection:
        old = connection.execute(sa.text("SELECT status FROM bundles ORDER BY id")).scalars()
        assert list(old) == [
            "accepted: decrypting",
            *(text for text, _, _ in list(OLD_STATUSES.values())[1:]),
        ]
        assert "detail" not in {c["name"] for c in sa.inspect(connection).get_columns("bundles")}


def test_a_status_no_version_wrote_stops_the_upgrade_before_any_change(database_url):
    engine = database_at_0002(database_url, {"m0": "received", "m1": "lost in the post"})
    with pytest.raises(RegistryError, match=r"no version of fhe_toolkit wrote.*lost in the post"):
        Registry(database_url)
    with engine.begin() as connection:
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert version == "0002"
        assert "detail" not in {c["name"] for c in sa.inspect(connection).get_columns("bundles")}
        connection.execute(sa.text("UPDATE bundles SET status = 'refused: lost in the post' "
                                   "WHERE status = 'lost in the post'"))  # fmt: skip
    record = Registry(database_url).round_record("r1")
    assert (record.bundles["m1"].status, record.bundles["m1"].detail) == (
        SubmissionStatus.REFUSED, "lost in the post",
    )  # fmt: skip


def test_training_jobs_are_recorded_and_take_one_result(database_url):
    registry = registry_with_models(database_url)
    job = NewTrainingJob(
        job_id="j1", name="sgd", key_set_id="0" * 32, spec_sha256="a" * 64,
        bundle_sha256="b" * 64, n_samples=100, positive_share=0.5, iterations=3,
        participant="alice",
    )  # fmt: skip
    registry.open_training_job(job)
    with pytest.raises(RegistryError, match="exists already"):
        registry.open_training_job(job)
    with pytest.raises(RegistryError, match="'nobody' is not registered"):
        registry.open_training_job(replace(job, job_id="j2", participant="nobody"))
    assert not registry.has_training_job("j2")
    record = registry.training_job("j1")
    assert (record.status, record.participant, record.iterations) == (
        TrainingJobStatus.AWAITING, "alice", 3,
    )  # fmt: skip
    assert record.opened_at.tzinfo is not None and record.received_at is None
    registry.accept_training_result("j1", "e" * 64)
    with pytest.raises(RegistryError, match="received already"):
        registry.accept_training_result("j1", "e" * 64)
    registry.roll_back_training_result("j1")  # cut off while keeping its copy
    record = registry.training_job("j1")
    assert (record.status, record.result_sha256, record.received_at) == (
        TrainingJobStatus.AWAITING, None, None,
    )  # fmt: skip
    registry.accept_training_result("j1", "c" * 64)
    registry.set_training_status("j1", TrainingJobStatus.DECRYPTING)
    with pytest.raises(RegistryError, match="only a result still being kept"):
        registry.roll_back_training_result("j1")
    registry.set_training_status("j1", TrainingJobStatus.DECRYPTED)
    with pytest.raises(RegistryError, match="received already"):
        registry.accept_training_result("j1", "c" * 64)
    record = registry.training_job("j1")
    assert record.status == TrainingJobStatus.DECRYPTED and record.result_sha256 == "c" * 64
    assert record.received_at is not None
    imported = TrainingJobRecord(
        job_id="old", name="sgd", participant=None, status=TrainingJobStatus.REFUSED,
        detail="non-finite weights", key_set_id="1" * 32, spec_sha256="a" * 64,
        bundle_sha256="b" * 64, n_samples=50, positive_share=0.25, iterations=2,
        opened_at=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    assert registry.import_training_job(imported)
    assert not registry.import_training_job(replace(imported, status=TrainingJobStatus.AWAITING))
    assert registry.training_job("old") == imported
    with pytest.raises(RegistryError, match="never opened"):
        registry.training_job("nope")


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
    bundles = [new_bundle("m-a")]
    registry.create_round("r2", 1, datetime.now(UTC) + timedelta(hours=1), bundles)
    assert registry.round_record("r2").bundles["m-a"].status == SubmissionStatus.AWAITING
    registry.accept_submission("r2", "m-a", "d" * 64, "alice")
    assert registry.round_record("r2").bundles["m-a"].status == SubmissionStatus.ACCEPTED
    with pytest.raises(RegistryError, match="received already"):
        registry.accept_submission("r2", "m-a", "e" * 64, "alice")
    registry.roll_back_submission("r2", "m-a")  # cut off while keeping its copy
    assert registry.accepted_submission("r2", "m-a") is None
    registry.accept_submission("r2", "m-a", "e" * 64, "alice")  # the participant sends again
    assert registry.accepted_submission("r2", "m-a") == "e" * 64
    registry.set_submission_status("r2", "m-a", SubmissionStatus.DECRYPTING)
    with pytest.raises(RegistryError, match="only one still being kept"):
        registry.roll_back_submission("r2", "m-a")  # decryption may have begun: finished instead
    registry.set_submission_status("r2", "m-a", SubmissionStatus.RECEIVED)
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
    assert registry.round_record("r1").status == RoundStatus.OPEN


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


# --- stakes within limits ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stake", "message"),
    [
        (-5, "a stake must be ≥ 0, got -5"),
        (float("inf"), "a stake must be a finite number, got inf"),
        (float("nan"), "a stake must be a finite number, got nan"),
        (1.7e308, "at most the fund's cap of 1,000,000,000"),
        ("100", "a stake must be a number, got '100'"),
        (True, "a stake must be a number, got True"),
    ],
)
def test_a_stake_outside_the_limits_is_refused_and_changes_nothing(database_url, stake, message):
    registry = registry_with_models(database_url)
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.set_stake("m-a", stake)
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.register_model("m-c", "alice", "linear", "target", "{}", "c" * 64, stake)
    assert registry.models()["stake"].to_dict() == {"m-a": 100.0, "m-b": 50.0}
    assert len(registry.stake_history()) == 2


def test_the_cap_on_stakes_is_a_setting_of_the_fund(database_url):
    registry = registry_with_models(database_url)
    assert registry.max_stake() == DEFAULT_MAX_STAKE
    registry.set_max_stake(200)
    assert Registry(database_url).max_stake() == 200.0  # kept with the records
    registry.set_stake("m-a", 200)
    with pytest.raises(RegistryError, match=r"at most the fund's cap of 200, got 200\.5"):
        registry.set_stake("m-a", 200.5)
    with pytest.raises(RegistryError, match=r"a model's stake is 200\.00, above a cap of 150"):
        registry.set_max_stake(150)
    for cap in (0, -1, float("inf"), float("nan"), 2 * STAKE_CEILING):
        with pytest.raises(RegistryError, match="the cap on stakes must be"):
            registry.set_max_stake(cap)
    assert registry.max_stake() == 200.0


def test_a_payout_stops_a_stake_at_the_cap_and_a_burn_at_zero(database_url):
    registry = registry_with_models(database_url)
    registry.set_max_stake(102)
    paid = play_round(registry, "r1", {"m-a": (0.04, 0.01), "m-b": (-0.1, -0.1)})
    assert paid.loc["m-a", "stake_after"] == 102.0  # 100 + 4 earned, stopped at the cap
    assert paid.loc["m-a", "beyond_cap"] == pytest.approx(2.0)
    assert paid.loc["m-b", "beyond_cap"] == 0.0
    assert registry.payouts().set_index("model").loc["m-a", "payout"] == pytest.approx(4.0)
    history = registry.stake_history().query("round == 'r1'").set_index("model")
    assert history.loc["m-a", "amount"] == pytest.approx(2.0)


def test_a_payout_that_is_not_a_number_pays_nothing(database_url):
    registry = registry_with_models(database_url)
    registry.create_round("r1", 1, None, [new_bundle("m-a"), new_bundle("m-b")])
    payouts = pd.DataFrame(
        {"m-a": {"corr": 0.0, "mmc": 0.0, "score": 0.0, "payout": 1.0},
         "m-b": {"corr": 0.0, "mmc": 0.0, "score": 0.0, "payout": float("inf")}}
    ).T  # fmt: skip
    with pytest.raises(RegistryError, match="would leave the stake of model 'm-b' at inf"):
        registry.record_results("r1", pd.DataFrame(), payouts, pd.DataFrame(), 2)
    assert registry.payouts().empty
    assert registry.models()["stake"].to_dict() == {"m-a": 100.0, "m-b": 50.0}
    assert registry.round_record("r1").status == RoundStatus.OPEN


def test_the_database_itself_refuses_a_stake_out_of_range(database_url):
    """Whatever writes to the tables, a stake outside 0..1e15 (or NaN) never gets in."""
    registry = registry_with_models(database_url)
    registry.create_round("r1", 1, None, [new_bundle("m-a")])
    engine = connect(database_url)
    for table in ("models", "bundles"):
        for value in (-1.0, 1e300, float("inf"), float("nan")):
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
                connection.execute(
                    sa.update(sa.table(table, sa.column("stake"))).values(stake=value)
                )
    assert registry.models()["stake"].to_dict() == {"m-a": 100.0, "m-b": 50.0}


def test_a_database_holding_a_stake_out_of_range_stops_the_upgrade_and_says_how(database_url):
    engine = database_at_0002(database_url, {"m0": "awaiting submission", "m1": "received"})
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE models SET stake = 1.7e308 WHERE name = 'm1'"))
    with pytest.raises(RegistryError, match=r"stakes outside 0..1e15.*'m1', 1.7e\+308.*"
                       r"UPDATE models SET stake = 0 WHERE name IN \('m1'\)"):  # fmt: skip
        Registry(database_url)
    with engine.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            == "0002"
        )
        connection.execute(sa.text("UPDATE models SET stake = 10 WHERE name = 'm1'"))
        connection.commit()
    registry = Registry(database_url)
    assert registry.models()["stake"].to_dict() == {"m0": 10.0, "m1": 10.0}
    assert {b.stake for b in registry.round_record("r1").bundles.values()} == {10.0}
