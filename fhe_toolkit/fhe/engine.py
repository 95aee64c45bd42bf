"""Run one function over many rows in worker processes, surviving crashes of the FHE runtime.

Concrete's runtime can abort the whole process (a Rust panic, a segfault) when fed ciphertexts or
keys that do not belong to its circuit. Each worker is therefore a process of its own, talking to
the parent over its own pipe (so a dying worker cannot leave a shared lock held). When a worker
dies, the row it was working on is reported as failed with the worker's exit code, the rest of its
chunk goes back in the queue, and a fresh worker takes its place.

Workers are started with ``spawn``: a fork of a parent that has loaded Concrete's runtime could
inherit its threads' locks in a held state.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from fhe_toolkit.errors import (
    RowFailedError,
    RowsCrashedError,
    WorkerCrashedError,
    WorkerSetupError,
)


class Task(Protocol):
    """A picklable description of per-row work; ``setup`` runs once in each worker."""

    def setup(self) -> Callable[[bytes], Any]: ...


@dataclass(frozen=True)
class RowFailure:
    """A row that could not be processed: the worker died on it, or the function raised."""

    position: int
    reason: str


@dataclass
class _Worker:
    process: Any
    conn: Connection
    chunk: list[int] = field(default_factory=list)
    done_in_chunk: int = 0


def _worker_main(task: Task, conn: Connection) -> None:
    # One thread per worker: rows are the parallel unit, so threads inside a row only compete.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        function = task.setup()
    except Exception:
        conn.send(("setup_failed", traceback.format_exc(limit=3)))
        return
    conn.send(("ready", None))
    while True:
        chunk = conn.recv()
        if chunk is None:
            return
        for position, item in chunk:
            try:
                conn.send(("row", (position, function(item))))
            except Exception as exc:
                conn.send(("row_error", (position, f"{type(exc).__name__}: {exc}")))


def run_rows(
    task: Task,
    items: Sequence[bytes],
    positions: Iterable[int],
    on_result: Callable[[int, Any], None],
    *,
    workers: int | None = None,
    chunk_size: int = 16,
    on_done: Callable[[int], None] | None = None,
    max_consecutive_crashes: int = 3,
) -> list[RowFailure]:
    """Apply ``task`` to ``items[p]`` for every position ``p``, in parallel worker processes.

    ``on_result(position, output)`` is called in this process as each row finishes (in no
    particular order), so the caller can checkpoint it. ``on_done(position)`` is called for every
    row finished or failed, for progress. Returns the rows that failed.

    Raises :class:`WorkerSetupError` if a worker cannot load the task, and
    :class:`RowsCrashedError` after ``max_consecutive_crashes`` crashes with no row succeeding in
    between: then the task's inputs do not fit it at all, and retrying every row would take hours.
    """
    queue = deque(_chunks(list(positions), chunk_size))
    if not queue:
        return []
    count = max(1, min(workers or os.cpu_count() or 1, len(queue)))
    pool: list[_Worker] = []
    failures: list[RowFailure] = []

    def assign(worker: _Worker) -> None:
        if queue:
            worker.chunk, worker.done_in_chunk = queue.popleft(), 0
            worker.conn.send([(p, items[p]) for p in worker.chunk])
        else:
            worker.chunk = []
            worker.conn.send(None)

    crashes_in_a_row = 0
    try:
        # All workers load at once: loading is most of a short run's fixed cost.
        pool.extend(_launch(task) for _ in range(count))
        for worker in pool:
            _wait_ready(worker)
            assign(worker)
        while any(w.chunk for w in pool):
            busy = [w for w in pool if w.chunk]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                # Liveness first, then the pipe: a worker that sends a row and dies right after
                # is only dead once everything it sent can be read, so no finished row is lost
                # or blamed for the crash.
                dead = not worker.process.is_alive()
                received: tuple[str, Any] = _receive(worker) if worker.conn.poll() else ("", None)
                message, detail = received
                if message in ("row", "row_error"):
                    position, payload = detail
                    worker.done_in_chunk += 1
                    if message == "row":
                        on_result(position, payload)
                        crashes_in_a_row = 0
                    else:
                        failures.append(RowFailure(position, payload))
                    if on_done is not None:
                        on_done(position)
                    if worker.done_in_chunk == len(worker.chunk):
                        assign(worker)
                    continue
                if (dead or message == "died") and worker.chunk:
                    failures.append(_crash(worker))
                    crashes_in_a_row += 1
                    if on_done is not None:
                        on_done(failures[-1].position)
                    if crashes_in_a_row >= max_consecutive_crashes:
                        raise RowsCrashedError(failures)
                    rest = worker.chunk[worker.done_in_chunk + 1 :]
                    if rest:
                        queue.appendleft(rest)
                    pool.remove(worker)
                    if queue:
                        pool.append(_launch(task))
                        _wait_ready(pool[-1])
                        assign(pool[-1])
    finally:
        _stop(pool)
    return sorted(failures, key=lambda f: f.position)


class SequentialWorker:
    """One worker process for sequential work, where each item needs the previous result.

    ``call(item)`` returns the task's output, or raises :class:`WorkerCrashedError` if the
    runtime kills the worker (a fresh one is started for the next call) or
    :class:`RowFailedError` if the task raised. Use it as a context manager.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self._worker: _Worker | None = None

    def __enter__(self) -> SequentialWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        _stop([self._worker] if self._worker else [])

    def call(self, item: Any) -> Any:
        if self._worker is None or not self._worker.process.is_alive():
            self._worker = _launch(self.task)
            _wait_ready(self._worker)
        worker = self._worker
        worker.chunk, worker.done_in_chunk = [0], 0
        worker.conn.send([(0, item)])
        message, detail = _receive(worker)
        if message == "row":
            return detail[1]
        if message == "row_error":
            raise RowFailedError(detail[1])
        raise WorkerCrashedError(_crash(worker).reason)


def _launch(task: Task) -> _Worker:
    context = mp.get_context("spawn")
    parent, child = context.Pipe(duplex=True)
    process = context.Process(target=_worker_main, args=(task, child), daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent)


def _wait_ready(worker: _Worker) -> None:
    message, detail = _receive(worker)
    if message != "ready":
        worker.process.join(timeout=5)
        raise WorkerSetupError(
            detail
            if message == "setup_failed"
            else f"a worker died while loading (exit code {worker.process.exitcode})"
        )


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.is_alive():
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
    for worker in workers:
        worker.process.join(timeout=10)
        if worker.process.is_alive():
            worker.process.kill()


def _receive(worker: _Worker) -> tuple[str, Any]:
    try:
        message: tuple[str, Any] = worker.conn.recv()
        return message
    except (EOFError, OSError):
        worker.process.join(timeout=10)
        return "died", None


def _crash(worker: _Worker) -> RowFailure:
    worker.process.join(timeout=10)
    code = worker.process.exitcode
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return RowFailure(
        worker.chunk[worker.done_in_chunk],
        f"the FHE runtime crashed the worker ({how}) on this row",
    )


def _chunks(positions: list[int], size: int) -> list[list[int]]:
    return [positions[i : i + size] for i in range(0, len(positions), size)]
