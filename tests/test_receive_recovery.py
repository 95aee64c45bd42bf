"""`fund receive` killed (SIGKILL) at each of its steps, then run again: it finishes, or rolls back
and takes the submission sent again, and ends with the predictions stored once and the keys
retired; two receives started at once never both decrypt.

Real FHE on tiny models (24 live rows, 5 features): a linear model compiled into its own circuit
and one on the round's packed encryption. Each case opens its own round (fresh keys) and runs
the real command line in a subprocess, killed from outside: when the fund's records show the
step, or by ``strace`` at the first system call that touches a file of that step (see
``tests/interrupting.py``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.fhe.packed import PACKED_KEYS
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from fhe_toolkit.protocol.artifacts import PREDICTIONS, open_answer
from fhe_toolkit.protocol.manifest import MANIFEST
from fhe_toolkit.registry import SubmissionStatus
from tests.cli_runner import cli, ok
from tests.identities import enroll
from tests.interrupting import finish, kill_when, killed_at, paused, start, wait_until

pytestmark = pytest.mark.fhe

CONFIG = SynthConfig(
    train_eras=8, validation_eras=1, live_eras=1, rows_per_era=24, n_features=8, n_groups=2
)
PACKED = {"lin": False, "plin": True}
"""The models: a linear model compiled into its own circuit, and one run packed."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("recovery").resolve()
    paths = synthesize(root / "data", CONFIG)
    train = load_tournament(paths["train"])
    features = load_features_json(paths["features"]).features("small")
    fund = Fund(root / "fund", root / "keys")
    identity = enroll(fund, root, "alice")
    models = {}
    for name, packed in PACKED.items():
        model = train_model(train, family="linear", features=features, packed=packed)
        if not packed:
            compile_model(model, train)
        export_model(model, root / name, name)
        fund.register(root / name / "model_spec.json", participant="alice", stake=10.0)
        models[name] = model
    live = load_tournament(paths["live"])
    return {"root": root, "fund": fund, "identity": identity, "models": models, "live": live}


def submit(world: dict, round_id: str, name: str) -> Path:
    """Open ``round_id`` for model ``name`` alone (fresh keys); the participant's submission."""
    bundle = world["fund"].open_round(round_id, world["live"], models=[name])[name]
    return run_bundle(bundle, world["root"] / name, world["root"] / f"sub-{round_id}",
                      identity=world["identity"], workers=1)  # fmt: skip


def receive(world: dict, round_id: str, submission: Path) -> tuple[str | Path, ...]:
    """The command, every path absolute."""
    root = world["root"]
    return ("fund", "receive", round_id, submission, "--fund-dir", root / "fund",
            "--keys", root / "keys", "--workers", "1")  # fmt: skip


def status(world: dict, round_id: str, name: str) -> SubmissionStatus:
    return world["fund"].round_record(round_id).bundles[name].status


def keys_of(name: str) -> str:
    return PACKED_KEYS if PACKED[name] else name


def predictions_file(world: dict, round_id: str, name: str) -> Path:
    return world["fund"].round_dir(round_id) / "predictions" / f"{name}.parquet"


def assert_received_once(world: dict, round_id: str, name: str, submission: Path) -> None:
    """The model's submission is received, its predictions stored once and exact, its keys
    retired, the copy kept as sent, and nothing half-done left behind."""
    fund = world["fund"]
    assert status(world, round_id, name) == SubmissionStatus.RECEIVED
    assert fund.db.accepted_submission(round_id, name) == open_answer(submission).sha256
    folder = fund.round_dir(round_id)
    assert [p.name for p in (folder / "predictions").iterdir()] == [f"{name}.parquet"]
    stored = fund.predictions(round_id)[name]
    expected = world["models"][name].predict(world["live"], "quantized")
    np.testing.assert_array_equal(stored.loc[expected.index].to_numpy(), expected.to_numpy())
    assert fund.keys.is_retired(round_id, keys_of(name))
    kept = folder / "submissions" / name
    assert open_answer(kept).sha256 == open_answer(submission).sha256
    assert sorted(p.name for p in (folder / "submissions").iterdir()) == [f".{name}.lock", name]


def test_killed_while_decrypting_it_finishes_from_the_kept_copy(world):
    """Killed (with its worker processes) as soon as the records say "decrypting"."""
    fund, root = world["fund"], world["root"]
    submission = submit(world, "k-decrypting", "lin")
    process = start(*receive(world, "k-decrypting", submission), cwd=root)
    kill_when(process, lambda: status(world, "k-decrypting", "lin") == SubmissionStatus.DECRYPTING)
    assert fund.keys.keyset_path("k-decrypting", "lin").is_file(), "killed after decrypting"
    assert not predictions_file(world, "k-decrypting", "lin").exists()
    out = ok(cli(*receive(world, "k-decrypting", submission), cwd=root))
    assert f"received {CONFIG.rows_per_era} predictions of lin" in out
    assert_received_once(world, "k-decrypting", "lin", submission)


# point: (model, the file whose nth touch is the kill, system calls, n, status left). A circuit's
# key set is read by the worker processes; the command itself only looks it up, once when it
# opens the key store (tightening modes) and again to decrypt.
POINTS = {
    "keeping the copy": ("lin", "copy", "openat", 1, SubmissionStatus.ACCEPTED),
    "starting to decrypt": ("lin", "keys", "%file", 2, SubmissionStatus.DECRYPTING),
    "stored, keys not yet retired": ("lin", "retired", "openat", 1, SubmissionStatus.DECRYPTING),
    "keeping the packed copy": ("plin", "copy", "openat", 1, SubmissionStatus.ACCEPTED),
    "decrypting with the round key": ("plin", "keys", "openat", 1, SubmissionStatus.DECRYPTING),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_at_a_step_it_finishes_or_rolls_back_and_takes_it_again(world, point):
    name, where, calls, nth, left = POINTS[point]
    fund, root = world["fund"], world["root"]
    round_id = "k-" + point.replace(" ", "-").replace(",", "")
    submission = submit(world, round_id, name)
    keys = fund.keys.directory(round_id, keys_of(name))
    path = {
        "copy": fund.round_dir(round_id) / "submissions" / f".{name}.receiving" / PREDICTIONS,
        "keys": fund.keys.keyset_path(round_id, keys_of(name)),
        "retired": keys / ".retired.json.tmp",
    }[where]
    killed_at(path, calls, *receive(world, round_id, submission), cwd=root, nth=nth)

    assert status(world, round_id, name) == left
    assert fund.keys.keyset_path(round_id, keys_of(name)).is_file()
    stored = predictions_file(world, round_id, name)
    assert stored.exists() == (where == "retired")
    before = stored.read_bytes() if stored.exists() else None
    if where == "copy":  # cut off half-way through the copy: only the manifest is there
        staging = fund.round_dir(round_id) / "submissions" / f".{name}.receiving"
        assert [p.name for p in staging.iterdir()] == [MANIFEST]
        # The participant sends it again (from wherever): the half copy is rolled back.
        submission = Path(shutil.copytree(submission, root / f"resent-{round_id}"))
    out = ok(cli(*receive(world, round_id, submission), cwd=root))
    assert f"received {CONFIG.rows_per_era} predictions of {name}" in out
    assert_received_once(world, round_id, name, submission)
    if before is not None:
        assert stored.read_bytes() == before, "the stored predictions were decrypted again"


def test_two_receives_started_at_once_decrypt_once(world):
    root = world["root"]
    submission = submit(world, "twice", "lin")
    both = [start(*receive(world, "twice", submission), cwd=root) for _ in range(2)]
    first, second = sorted((finish(p) for p in both), key=lambda r: r.returncode)
    assert first.returncode == 0, first.stdout + first.stderr
    # The other one found it being received and stopped at once, or came after the first had
    # finished and was refused: received already.
    assert second.returncode == 2, second.stdout + second.stderr
    assert re.search("being received by another process|received already", second.stderr)
    assert_received_once(world, "twice", "lin", submission)
    again = cli(*receive(world, "twice", submission), cwd=root)
    assert again.returncode == 2 and "received already" in again.stderr


def test_a_receive_while_another_decrypts_is_refused_at_once(world):
    """The first receive is paused while the records say it decrypts: the second one, run to
    the end meanwhile, must stop at once; the first then finishes."""
    root = world["root"]
    submission = submit(world, "overlap", "lin")
    first = start(*receive(world, "overlap", submission), cwd=root)
    wait_until(first, lambda: status(world, "overlap", "lin") == SubmissionStatus.DECRYPTING)
    with paused(first):
        second = cli(*receive(world, "overlap", submission), cwd=root)
    assert second.returncode == 2, second.stdout + second.stderr
    assert "being received by another process right now" in second.stderr
    ok(finish(first))
    assert_received_once(world, "overlap", "lin", submission)
