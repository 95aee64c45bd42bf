"""The engine on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on
127.0.0.1, started in a directory of their own (so the caller's relative paths mean nothing to
them), as docs/cluster.md tells an operator to start them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.errors import WorkerSetupError
from fhe_toolkit.fhe.engine import SequentialWorker, disconnect, run_rows
from fhe_toolkit.fhe.tasks import DecryptTask, ServerTask
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from tests.cli_runner import cli, ok
from tests.identities import enroll
from tests.tasks_for_tests import (
    EchoTask,
    FileTask,
    LoadCountTask,
    PathTask,
    SleepTask,
    loaded_tasks,
    tiny_circuit,
)
from tests.test_engine import make_files

REPO = Path(__file__).resolve().parent.parent
DASK = str(Path(sys.executable).parent / "dask")
ITEMS = [f"row{i}".encode() for i in range(40)]


@dataclass
class Cluster:
    address: str
    workers: list[subprocess.Popen[bytes]]

    def worker_pids(self) -> dict[str, int]:
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout="10s") as client:
            return dict(client.run(os.getpid))


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process and everything it started (its session), SIGTERM then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            os.killpg(process.pid, signal.SIGKILL)  # nanny children left behind
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
        return


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from distributed import Client

    root = tmp_path_factory.mktemp("cluster")
    elsewhere = root / "workers"  # not the repository, not the caller's directory
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # the test tasks; fhe_toolkit itself is installed
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",  # as docs/cluster.md advises
    }
    scheduler_file = root / "scheduler.json"
    log = (root / "cluster.log").open("wb")
    common = {"cwd": elsewhere, "env": env, "stdout": log, "stderr": subprocess.STDOUT}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(scheduler_file)],
                start_new_session=True, **common,  # type: ignore[call-overload]
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        address = None
        while address is None:  # the file exists a moment before it is written
            assert time.monotonic() < deadline and processes[0].poll() is None, "no scheduler"
            time.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):
                address = json.loads(scheduler_file.read_text())["address"]
        for name in ("a", "b"):
            processes.append(
                subprocess.Popen(
                    [DASK, "worker", address, "--nthreads", "1", "--name", name,
                     "--no-dashboard", "--local-directory", str(root / f"scratch-{name}")],
                    start_new_session=True, **common,  # type: ignore[call-overload]
                )
            )  # fmt: skip
        with Client(address, set_as_default=False, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield Cluster(address, processes[1:])
        disconnect(address)
    finally:
        for process in reversed(processes):
            stop(process)
        log.close()


def test_a_run_through_the_cluster_equals_the_local_run(cluster, tmp_path, monkeypatch):
    make_files(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths: only this directory can read them
    task = FileTask("keys.bin", "library")
    local: dict[int, str] = {}
    remote: dict[int, str] = {}
    done: list[int] = []
    assert run_rows(task, ITEMS, range(40), local.__setitem__, workers=2, chunk_size=3) == []
    failures = run_rows(
        task, ITEMS, range(40), remote.__setitem__, chunk_size=3, on_done=done.append,
        scheduler=cluster.address,
    )  # fmt: skip
    assert failures == [] and remote == local and sorted(done) == list(range(40))
    with pytest.raises(WorkerSetupError, match="cannot read the task's files"):
        run_rows(FileTask("missing.bin", "library"), ITEMS, range(2), lambda *_: None,
                 scheduler=cluster.address)  # fmt: skip
    with pytest.raises(WorkerSetupError, match=r"PathTask has no portable\(\)"):
        run_rows(PathTask("keys.bin"), ITEMS, range(2), lambda *_: None, scheduler=cluster.address)


def test_each_worker_loads_once_and_forgets_after_the_call(cluster):
    from distributed import Client

    results: dict[int, tuple[int, str]] = {}
    run_rows(LoadCountTask(), ITEMS, range(40), results.__setitem__, chunk_size=2,
             scheduler=cluster.address)  # fmt: skip
    pids = {pid for pid, _ in results.values()}
    assert pids == set(cluster.worker_pids().values())  # both worked
    assert len(set(results.values())) == 2  # one load each
    with Client(cluster.address, set_as_default=False) as client:
        assert set(client.run(loaded_tasks).values()) == {0}


def test_a_worker_killed_mid_run_costs_nothing(cluster):
    victim = next(iter(cluster.worker_pids().values()))
    results: dict[int, bytes] = {}

    def keep(position: int, output: bytes) -> None:
        results[position] = output
        if len(results) == 6:
            os.kill(victim, signal.SIGKILL)  # an OOM killer, a lost machine

    failures = run_rows(SleepTask(0.05), ITEMS, range(40), keep, chunk_size=2,
                        scheduler=cluster.address)  # fmt: skip
    assert failures == [] and sorted(results) == list(range(40))
    assert all(results[p].startswith(ITEMS[p] + b":") for p in range(40))
    deadline = time.monotonic() + 60
    while len(cluster.worker_pids()) < 2:  # the nanny has started a fresh worker
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert victim not in cluster.worker_pids().values()


def test_a_row_that_crashes_every_worker_is_reported_and_the_rest_completes(cluster):
    results: dict[int, bytes] = {}
    failures = run_rows(
        EchoTask(crash=frozenset({ITEMS[5], ITEMS[22]})), ITEMS, range(40), results.__setitem__,
        chunk_size=4, scheduler=cluster.address,
    )  # fmt: skip
    assert [f.position for f in failures] == [5, 22]
    assert all(f.reason == "the FHE runtime crashed the worker (signal 11)" for f in failures)
    assert sorted(results) == [p for p in range(40) if p not in (5, 22)]


def test_sequential_work_on_the_cluster(cluster):
    with SequentialWorker(EchoTask(crash=frozenset({b"boom"})), scheduler=cluster.address) as w:
        outputs = [w.call(f"step{i}".encode()) for i in range(3)]
        assert len({o.split(b":")[1] for o in outputs}) == 1  # stays on one worker
        assert w.call(b"x").split(b":")[1] == outputs[0].split(b":")[1]


@pytest.mark.fhe
def test_a_real_circuit_runs_and_decrypts_through_the_cluster(cluster, tmp_path, monkeypatch):
    """A depth-2-tree-like circuit (two bootstraps, 75 MB of evaluation keys) run and decrypted
    through the two workers, equal to the same circuit run in this process."""
    circuit = tiny_circuit(tmp_path / "model", kind="tree")
    monkeypatch.chdir(tmp_path)
    rows = np.random.default_rng(3).integers(0, 5, size=(6, 5))
    items = [circuit.encrypt(row) for row in rows]
    server = ServerTask(
        str(circuit.library.relative_to(tmp_path)),
        str(circuit.evaluation_keys.relative_to(tmp_path)),
    )
    outputs: dict[int, bytes] = {}
    assert run_rows(server, items, range(6), outputs.__setitem__, chunk_size=1,
                    scheduler=cluster.address) == []  # fmt: skip
    decrypt = DecryptTask(
        str(circuit.client_specs.relative_to(tmp_path)), str(circuit.keyset.relative_to(tmp_path))
    )
    clear: dict[int, np.ndarray] = {}
    assert run_rows(decrypt, [outputs[p] for p in range(6)], range(6), clear.__setitem__,
                    scheduler=cluster.address) == []  # fmt: skip
    in_process = server.setup()
    expected = [circuit.decrypt(in_process(item)) for item in items]
    assert [int(clear[p]) for p in range(6)] == expected
    assert expected == [int(circuit.circuit.simulate(row)) for row in rows]


@pytest.mark.fhe
def test_a_round_opens_through_the_cluster_and_a_bad_spec_costs_only_its_model(cluster, tmp_path):
    """`fund open-round --scheduler`: the two workers make each circuit model's keys and
    ciphertexts (a depth-2 tree and a linear circuit, 5 features, 40 live rows). A recorded
    spec whose client specs would crash Concrete's key generation (a bootstrap key naming a
    secret key that does not exist) is left out and named; the others are published, run by
    their participants and decrypted exactly."""
    paths = synthesize(tmp_path / "data", SynthConfig(train_eras=10, validation_eras=1,
                       live_eras=1, rows_per_era=40, n_features=12, n_groups=3))  # fmt: skip
    train, live = load_tournament(paths["train"]), load_tournament(paths["live"])
    features = load_features_json(paths["features"]).features("small")
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    models, identities = {}, {}
    for name, family, params in (
        ("tree", "decision_tree", {"max_depth": 2}),
        ("lin", "linear", {}),
    ):
        model = train_model(train, family=family, features=features, params=params, packed=False)
        compile_model(model, train)
        export_model(model, tmp_path / name, name)
        identities[name] = enroll(fund, tmp_path, f"owner-of-{name}")
        fund.register(tmp_path / name / "model_spec.json", participant=f"owner-of-{name}",
                      stake=1.0)  # fmt: skip
        models[name] = model
    hostile = json.loads((tmp_path / "tree" / "model_spec.json").read_text())
    hostile["name"] = "hostile"
    hostile["client_specs"]["keyset"]["lweBootstrapKeys"][0]["inputId"] = 7
    enroll(fund, tmp_path, "mallory")
    # `register` refuses it now (its client specs name a key that does not exist); recorded as
    # a version without that check would have, it must not stop the round.
    text = json.dumps(hostile)
    fund.db.register_model("hostile", "mallory", "decision_tree", "target", text, "0" * 64, 1.0)

    out = ok(cli("fund", "open-round", "R1", "--live", paths["live"], "--scheduler",
                 cluster.address, cwd=tmp_path))  # fmt: skip
    assert re.search(
        r"hostile left out: its registered spec no longer passes the fund's checks .*input key 7 "
        r"does not exist", " ".join(out.split()),
    )  # fmt: skip
    round_dir = tmp_path / "fund" / "rounds" / "R1"
    assert sorted(p.name for p in (round_dir / "bundles").iterdir()) == ["lin", "tree"]
    assert sorted(fund.round_record("R1").bundles) == ["lin", "tree"]
    assert sorted(p.name for p in (tmp_path / "keys" / "R1").iterdir()) == ["lin", "tree"]
    assert not (round_dir.parent / ".R1.opening").exists()
    for name, model in models.items():
        submission = run_bundle(round_dir / "bundles" / name, tmp_path / name,
                                tmp_path / f"sub-{name}", identity=identities[name],
                                fund_key=fund.public_key(), scheduler=cluster.address)  # fmt: skip
        got = fund.receive("R1", submission, scheduler=cluster.address)
        expected = model.predict(live, "quantized")
        np.testing.assert_array_equal(got.loc[expected.index].to_numpy(), expected.to_numpy())
