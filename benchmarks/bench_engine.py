"""The FHE engine's own costs: start-up, per-task overhead and rows/s, for a no-op task and tiny
real circuits (a 5-feature dot product without bootstrap, like a linear model; two comparisons
with bootstraps and 75 MB of evaluation keys, like a depth-2 tree), on

- the former home-made process pool (optional: ``--old-pool FILE``, a copy of the module it was,
  e.g. ``git show <commit>:fhe_toolkit/fhe/engine.py > /tmp/oldpool.py``),
- the local Dask cluster, started for the call ("fresh") and reused by the next call,
- a `dask scheduler` with two `dask worker` processes (one thread each) on 127.0.0.1.

    python bench_engine.py [--old-pool /tmp/oldpool.py] [--repeats 3] [--out engine.json]

Each figure is the best of ``--repeats`` runs (all runs are in the JSON). Per-task overhead is
the wall time per Dask task (one chunk) of the no-op run with one row per chunk, all workers
busy: what dispatching a task costs the machine, the client and scheduler included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from common import machine

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fhe_toolkit.fhe import engine  # noqa: E402
from fhe_toolkit.fhe.tasks import ServerTask  # noqa: E402
from tests.tasks_for_tests import EchoTask, tiny_circuit  # noqa: E402

WORKERS = 2
RowsRunner = Callable[..., Any]


@contextmanager
def dask_cluster(root: Path) -> Iterator[tuple[str, int]]:
    """A scheduler and two one-thread workers on 127.0.0.1, as docs/cluster.md starts them."""
    root.mkdir(parents=True, exist_ok=True)
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}  # fmt: skip
    log = (root / "cluster.log").open("wb")
    scheduler_file = root / "scheduler.json"
    common = {"env": env, "stdout": log, "stderr": subprocess.STDOUT, "start_new_session": True}
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file)], **common,  # type: ignore[call-overload]
        )
    ]  # fmt: skip
    try:
        address = None
        while address is None:  # the file exists a moment before it is written
            time.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):
                address = json.loads(scheduler_file.read_text())["address"]
        for name in ("a", "b"):
            processes.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nthreads", "1", "--name", name,
                     "--no-dashboard", "--local-directory", str(root / name)],
                    **common,  # type: ignore[call-overload]
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, set_as_default=False) as client:
            client.wait_for_workers(WORKERS, timeout=120)
        yield address, processes[0].pid
    finally:
        for process in reversed(processes):
            with_signal = (signal.SIGTERM, signal.SIGKILL)
            for sig in with_signal:
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=10)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        log.close()


def timed(run: RowsRunner, task: Any, items: list[Any], chunk_size: int) -> float:
    results: dict[int, Any] = {}
    started = time.perf_counter()
    failures = run(task, items, range(len(items)), results.__setitem__, chunk_size=chunk_size)
    elapsed = time.perf_counter() - started
    if failures or len(results) != len(items):
        raise RuntimeError(f"the run lost rows: {failures[:3]}")
    return elapsed


def measure(engines: dict[str, tuple[RowsRunner, Callable[[], None]]], work: dict, repeats: int):
    """For each engine: start-up (a one-row call right after ``fresh()``, then on the running
    engine), then each workload on the warm engine. The engines take turns, run by run, so
    that a busy moment of the machine does not land on one of them only."""
    echo = [b"row"] * 2000
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in engines}

    def record(name: str, key: str, seconds: float) -> None:
        figures[name].setdefault(key, []).append(seconds)

    for name, (run, fresh) in engines.items():
        fresh()
        record(name, "start_up_fresh_s", timed(run, EchoTask(), echo[:1], 1))
        timed(run, EchoTask(), echo[: WORKERS * 4], 1)  # warm: every worker has run a task
    for _ in range(repeats):
        for name, (run, _) in engines.items():
            record(name, "start_up_reused_s", timed(run, EchoTask(), echo[:1], 1))
            record(name, "noop_chunk16_s", timed(run, EchoTask(), echo, 16))
            record(name, "noop_chunk1_s", timed(run, EchoTask(), echo[:500], 1))
            for kind, (task, items, chunk_size) in work.items():
                record(name, f"{kind}_s", timed(run, task, items, chunk_size))
    return [{"engine": name, **values} for name, values in figures.items()]


def dispatch_cpu(run: RowsRunner, scheduler_pid: int, tasks: int = 1000) -> dict[str, float]:
    """CPU milliseconds per task spent by the scheduler's process and by the caller's, over
    ``tasks`` one-row no-op tasks: the central costs that bound how many workers one scheduler
    can keep busy."""
    import psutil

    processes = {"scheduler": psutil.Process(scheduler_pid), "caller": psutil.Process()}

    def used() -> dict[str, float]:
        return {k: sum(p.cpu_times()[:2]) for k, p in processes.items()}

    before = used()
    timed(run, EchoTask(), [b"row"] * tasks, 1)
    after = used()
    return {f"{k} CPU ms per task": 1000 * (after[k] - before[k]) / tasks for k in processes}


def summarize(figures: dict[str, Any], work: dict) -> dict[str, float]:
    best = {key: min(value) for key, value in figures.items() if isinstance(value, list)}
    out = {
        "start-up, fresh s": best["start_up_fresh_s"],
        "start-up, running s": best["start_up_reused_s"],
        "no-op rows/s (16 per task)": 2000 / best["noop_chunk16_s"],
        "per-task overhead ms": 1000 * best["noop_chunk1_s"] / 500,
    }
    for kind, (_, items, chunk_size) in work.items():
        out[f"{kind} rows/s ({chunk_size} per task)"] = len(items) / best[f"{kind}_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-pool", type=Path, help="a copy of the former pool module")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--linear-rows", type=int, default=400)
    parser.add_argument("--tree-rows", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    rng = np.random.default_rng(0)
    work = {}
    for kind, rows, chunk_size in (("linear", args.linear_rows, 4), ("tree", args.tree_rows, 1)):
        circuit = tiny_circuit(root / kind, kind=kind)
        items = [circuit.encrypt(row) for row in rng.integers(0, 5, size=(rows, 5))]
        work[kind] = (ServerTask(str(circuit.library), str(circuit.evaluation_keys)), items,
                      chunk_size)  # fmt: skip

    engines: dict[str, tuple[RowsRunner, Callable[[], None]]] = {}
    if args.old_pool is not None:
        sys.path.insert(0, str(args.old_pool.parent))
        old = importlib.import_module(args.old_pool.stem)

        def old_run(*a: Any, **k: Any) -> Any:
            return old.run_rows(*a, workers=WORKERS, **k)

        engines["old process pool"] = (old_run, lambda: None)

    def local_run(*a: Any, **k: Any) -> Any:
        return engine.run_rows(*a, workers=WORKERS, **k)

    engines["local cluster"] = (local_run, engine.close_local_cluster)
    with dask_cluster(root / "cluster") as (address, scheduler_pid):

        def remote_run(*a: Any, **k: Any) -> Any:
            return engine.run_rows(*a, scheduler=address, **k)

        engines["2-worker scheduler"] = (remote_run, lambda: engine.disconnect(address))
        results = measure(engines, work, args.repeats)
        cpu = dispatch_cpu(remote_run, scheduler_pid)
        engine.disconnect(address)  # before the cluster stops
    engine.close_local_cluster()

    print(f"{machine()}; {WORKERS} workers; best of {args.repeats} (fresh start-up: 1 run)")
    table = [(r["engine"], summarize(r, work)) for r in results]
    columns = list(table[0][1])
    print("| engine | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for name, row in table:
        print(f"| {name} | " + " | ".join(f"{row[c]:,.3g}" for c in columns) + " |")
    print(", ".join(f"{k}: {v:.2f}" for k, v in cpu.items()), "(2-worker scheduler)")
    if args.out:
        out = {"machine": machine(), "runs": results, "dispatch_cpu": cpu}
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
