"""The Dask engine on this machine's local cluster: tasks travel with their files and load once
per worker, the cluster is reused, sequential work, Ctrl-C, a script without its main guard,
and the checks made before any work starts. (tests/test_engine_rows.py covers rows, crashes and
give-up rules; tests/test_cluster.py a real scheduler with two workers.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from fhe_toolkit.cli.options import scheduler_option
from fhe_toolkit.errors import (
    EngineError,
    RowFailedError,
    WorkerCrashedError,
    WorkerSetupError,
)
from fhe_toolkit.fhe import engine
from fhe_toolkit.fhe.engine import (
    Blob,
    SequentialWorker,
    local_path,
    parse_scheduler,
    read_bytes,
    run_rows,
)
from fhe_toolkit.fhe.tasks import DecryptTask, KeygenEncryptTask, ServerTask
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund import Fund
from tests.identities import enroll
from tests.tasks_for_tests import EchoTask, FileTask, LoadCountTask, loaded_tasks
from tests.test_protocol import model_spec_raw

REPO = Path(__file__).resolve().parent.parent
ITEMS = [f"row{i}".encode() for i in range(40)]


def make_files(root: Path) -> tuple[Path, Path]:
    """A file and a directory (with a subdirectory), like evaluation keys and a compiled library."""
    (root / "library" / "sub").mkdir(parents=True)
    (root / "library" / "sharedlib.so").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    (root / "library" / "sub" / "params.json").write_text('{"n": 1}')
    (root / "keys.bin").write_bytes(os.urandom(5000))
    return root / "keys.bin", root / "library"


def test_the_local_workers_read_files_from_the_callers_directory(tmp_path, monkeypatch):
    engine._local_engine(2)  # started before the caller moved to tmp_path
    make_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    task = FileTask("keys.bin", "library")  # relative paths
    expected = {p: task.setup()(ITEMS[p]) for p in range(10)}
    results: dict[int, str] = {}
    assert run_rows(task, ITEMS, range(10), results.__setitem__, workers=2, chunk_size=3) == []
    assert results == expected


def test_a_blob_names_its_content(tmp_path):
    keys, library = make_files(tmp_path)
    first = Blob.of(library)
    os.utime(library / "sharedlib.so", (1, 1))  # a new timestamp is not new content
    assert Blob.of(library).sha256 == first.sha256 and first.directory
    (library / "sub" / "params.json").write_text('{"n": 2}')
    assert Blob.of(library).sha256 != first.sha256
    unpacked = local_path(first)
    assert (unpacked / "sub" / "params.json").read_text() == '{"n": 1}'
    assert local_path(first) == unpacked  # unpacked once
    blob = Blob.of(keys)
    assert read_bytes(blob) == keys.read_bytes() == local_path(blob).read_bytes()
    assert len(repr(blob)) < 80 and "5,000 bytes" in repr(blob)  # never the bytes themselves
    with pytest.raises(IsADirectoryError):
        read_bytes(first)


def test_the_real_tasks_carry_their_files(tmp_path):
    keys, library = make_files(tmp_path)
    server = ServerTask(str(library), str(keys)).portable()
    assert isinstance(server.library, Blob) and server.library.directory
    assert isinstance(server.evaluation_keys, Blob)
    assert read_bytes(server.evaluation_keys) == keys.read_bytes()
    decrypt = DecryptTask(str(keys), str(keys)).portable()
    assert isinstance(decrypt.keyset, Blob) and DecryptTask.holds_secrets
    with pytest.raises(WorkerSetupError, match=r"No such file or directory: 'missing\.bin'"):
        run_rows(FileTask("missing.bin", library), ITEMS, range(2), lambda *_: None, workers=1)


def test_a_task_loads_once_per_worker_and_is_dropped_after_the_call():
    results: dict[int, tuple[int, str]] = {}
    run_rows(LoadCountTask(), ITEMS, range(40), results.__setitem__, workers=2, chunk_size=2)
    tokens_per_worker = Counter(pid for pid, _ in set(results.values()))
    assert len(tokens_per_worker) == 2 and set(tokens_per_worker.values()) == {1}
    client = engine._ENGINES["local"].client
    assert set(client.run(loaded_tasks).values()) == {0}


def test_the_local_cluster_is_reused_between_calls():
    first: dict[int, bytes] = {}
    second: dict[int, bytes] = {}
    run_rows(EchoTask(), ITEMS, range(20), first.__setitem__, workers=2, chunk_size=2)
    run_rows(EchoTask(), ITEMS, range(20), second.__setitem__, workers=2, chunk_size=2)

    def pids(results: dict[int, bytes]) -> set[bytes]:
        return {value.split(b":")[1] for value in results.values()}

    assert pids(first) == pids(second)


def test_sequential_work_stays_on_one_worker_and_survives_a_crash():
    engine._local_engine(2)
    with SequentialWorker(EchoTask(crash=frozenset({b"boom"}), fail=frozenset({b"bad"}))) as w:
        outputs = [w.call(f"step{i}".encode()) for i in range(4)]
        assert {o.split(b":")[1] for o in outputs} == {outputs[0].split(b":")[1]}
        with pytest.raises(WorkerCrashedError, match=r"crashed the worker \(signal 11\)"):
            w.call(b"boom")
        with pytest.raises(RowFailedError, match="bad row"):
            w.call(b"bad")
        assert w.call(b"after").startswith(b"AFTER:")


def test_secret_keys_never_go_over_plain_tcp_to_another_host():
    # Sent to the workers (decryption) or back from them (the fund's key generation); refused
    # before any connection is attempted (the address is never contacted).
    for task in (DecryptTask("specs.json", "keyset.bin"), KeygenEncryptTask()):
        with pytest.raises(EngineError, match="carries secret keys between this process and"):
            run_rows(task, ITEMS, range(1), lambda *_: None, scheduler="tcp://10.20.30.40:8786")
    assert engine._private_channel("tcp://127.0.0.1:8786")
    assert engine._private_channel("tcp://localhost:8786")
    assert engine._private_channel("tls://fund-cluster.example:8786")
    assert not engine._private_channel("tcp://fund-cluster.example:8786")


def test_a_round_is_not_opened_over_plain_tcp_to_another_host(tmp_path):
    """The workers would send each model's secret keys back over it: refused before any key is
    made or anything is written, and the round can be opened again at once."""
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "alice")
    spec = model_spec_raw("alice") | {"versions": package_versions()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    fund.register(tmp_path / "spec.json", participant="alice", stake=1.0)
    live = pd.DataFrame(
        {"era": "0001", "feature_a": [0, 1, 2], "feature_b": [4, 3, 2]},
        index=pd.Index(["r1", "r2", "r3"], name="id"),
    )
    with pytest.raises(EngineError, match="KeygenEncryptTask carries secret keys"):
        fund.open_round("R1", live, scheduler="tcp://10.20.30.40:8786")
    rounds = fund.root / "rounds"  # the round's staging folder was made in there, and removed
    assert not rounds.exists() or list(rounds.iterdir()) == []
    assert not (fund.keys.root / "R1").exists()
    assert fund.db.rounds().empty


def test_an_unreachable_scheduler_is_named(monkeypatch):
    monkeypatch.setattr(engine, "_CONNECT_TIMEOUT", "1s")
    with pytest.raises(EngineError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1"):
        run_rows(EchoTask(), ITEMS, range(1), lambda *_: None, scheduler="tcp://127.0.0.1:1")


def test_scheduler_addresses_are_checked():
    assert parse_scheduler("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert parse_scheduler("sched.internal:8786") == "tcp://sched.internal:8786"
    assert parse_scheduler("tls://[::1]:8786") == "tls://[::1]:8786"
    for bad in ("http://host:8786", "tcp://host", "tcp://host:99999", "host:port", ""):
        with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
            parse_scheduler(bad)


def test_the_scheduler_option():
    @click.command()
    @scheduler_option("the rows")
    def command(scheduler: str | None) -> None:
        click.echo(repr(scheduler))

    runner = CliRunner()
    assert runner.invoke(command, []).output.strip() == "None"
    assert runner.invoke(command, ["--scheduler", "h:8786"]).output.strip() == "'tcp://h:8786'"
    refused = runner.invoke(command, ["--scheduler", "http://h"])
    assert refused.exit_code == 2 and "expected tcp://HOST:PORT" in refused.output
    assert "--scheduler tcp://HOST:PORT" in runner.invoke(command, ["--help"]).output


@pytest.mark.parametrize(
    "command", [["participant", "run"], ["fund", "open-round"], ["fund", "receive"]]
)
def test_the_commands_that_spread_fhe_work_take_a_scheduler(command):
    from fhe_toolkit.cli import main

    shown = CliRunner().invoke(main, [*command, "--help"]).output
    assert "--scheduler tcp://HOST:PORT" in shown and "--workers" in shown


def test_the_main_guard_is_found_in_a_script():
    source = textwrap.dedent(
        """\
        import sys
        work()
        if __name__ == "__main__":
            main()
            other()
        def f():
            pass
        """
    )
    assert not engine._under_main_guard(source, 2)
    assert engine._under_main_guard(source, 4) and engine._under_main_guard(source, 5)
    assert not engine._under_main_guard(source, 7)


def run_script(tmp_path: Path, body: str, **popen: object) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "done.txt")], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,  # type: ignore[call-overload]
    )  # fmt: skip


UNGUARDED = """\
    from fhe_toolkit.fhe.engine import run_rows
    from tests.tasks_for_tests import EchoTask

    print(run_rows(EchoTask(), [b"a", b"b"], range(2), lambda *_: None, workers=2))
"""


def test_a_script_without_its_main_guard_gets_one_clear_error(tmp_path):
    process = run_script(tmp_path, UNGUARDED)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, (out, err)
    assert "starts FHE work at line 4 while it is being imported" in err
    assert 'put the code that starts it under `if __name__ == "__main__":`' in err
    assert err.count("Traceback") == 1, err  # one error, no worker tracebacks
    guarded = UNGUARDED.replace("    print(", '    if __name__ == "__main__":\n        print(')
    process = run_script(tmp_path, guarded)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and out.strip() == "[]", err
    # A guarded script edited while it runs (lines added above the guard) is not refused.
    edited = guarded.replace(
        '    if __name__ == "__main__":\n',
        "    import pathlib\n    path = pathlib.Path(__file__)\n"
        '    path.write_text("# edited\\n" * 3 + path.read_text())\n'
        '    if __name__ == "__main__":\n',
    )
    process = run_script(tmp_path, edited)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and out.strip() == "[]", err


INTERRUPTED = """\
    import sys

    from fhe_toolkit.fhe.engine import run_rows
    from tests.tasks_for_tests import SleepTask

    if __name__ == "__main__":
        done = open(sys.argv[1], "a")

        def keep(position, output):  # the caller's checkpoint
            done.write(f"{position}\\n")
            done.flush()

        run_rows(SleepTask(0.25), [b"x"] * 400, range(400), keep, workers=2, chunk_size=1)
"""


@pytest.mark.parametrize("whom", ["process group (a terminal's Ctrl-C)", "the caller only"])
def test_ctrl_c_stops_promptly_and_keeps_finished_rows(tmp_path, whom):
    process = run_script(tmp_path, INTERRUPTED, start_new_session=True)
    done = tmp_path / "done.txt"
    try:
        deadline = time.monotonic() + 90
        while not (done.exists() and len(done.read_text().split()) >= 6):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr
            time.sleep(0.1)
        if whom.startswith("process group"):
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)  # a hang, not a speed: rows are counted below
        assert process.returncode != 0 and "KeyboardInterrupt" in err
        rows = done.read_text().split()
        assert len(rows) == len(set(rows)) >= 6  # delivered before Ctrl-C, once each
        assert len(rows) < 100  # it did stop
        deadline = time.monotonic() + 60
        while True:  # the worker processes are gone too
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "worker processes outlived the caller"
            time.sleep(0.1)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
