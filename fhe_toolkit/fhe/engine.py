"""Run one function over many rows on Dask workers, surviving crashes of the FHE runtime.

Concrete's runtime can abort the whole process (a Rust panic, a segfault) when fed ciphertexts or
keys that do not belong to its circuit, so circuit calls run in Dask worker *processes* (one
thread each) watched by a nanny, which starts a fresh process when one dies. One code path serves
both cases:

- ``scheduler=None``: a local cluster of ``workers`` processes (default: one per core), started
  the first time this process needs it and reused by every later call (start-up costs ~2 s, a
  reused cluster ~20 ms per call), closed when the process exits (or by
  :func:`close_local_cluster`, or at once on Ctrl-C);
- ``scheduler="tcp://HOST:PORT"`` (or ``tls://``): the workers of a running Dask scheduler,
  possibly on other machines (see ``docs/cluster.md``).

How a call runs:

- **The task travels once.** A task is a small picklable object whose ``setup()`` loads what
  the rows need (a compiled circuit, evaluation keys) and returns the function applied to each
  item. It is registered on the scheduler as a worker plugin for the duration of the call:
  every worker, including one the nanny restarts mid-run or one that joins late, gets it once,
  however many rows it runs. For a scheduler's workers, which may be on other machines, the
  engine ships the task's ``portable()`` copy, which carries the contents of the files it reads
  (as :class:`Blob`\\ s, a directory as a tar archive) instead of their paths: no shared files
  are needed. The local cluster's workers read the caller's files in place, from the caller's
  current directory (shipping the 75 MB of keys of a small tree through Dask costs ~2 s a call
  on a 2-core machine; reading them, nothing).
- **It loads once per worker.** A worker runs ``setup()`` on its first chunk of rows and keeps the
  function in a per-process cache keyed by the call; the cache entry (and the task's keys) is
  dropped when the call ends.
- **Rows go in chunks** (``chunk_size``): a Dask task costs ~8 ms of wall time on a 2-core
  machine (2.5 ms of the scheduler's CPU, 2 ms of the caller's), more than a linear circuit's
  row. At most two chunks per worker thread are in flight,
  so memory stays bounded and Ctrl-C has little to cancel. ``on_result`` runs in the caller's
  process as each chunk comes back, so the caller can checkpoint; ``on_done`` follows each row.
- **A crash is narrowed down to its row.** When a worker dies, Dask reports every task that was on
  it as lost (:class:`distributed.KilledWorker`, after the scheduler's ``allowed-failures``
  retries; 0 on the local cluster). A lost chunk is split into single rows; a single row that is
  lost again is run once more *alone* (nothing else of this call in flight), so a row is only
  blamed for a crash it caused by itself, never for a neighbour's. A row lost alone is reported
  as a :class:`RowFailure` (with the worker's exit signal, e.g. ``signal 11``) and the rest goes
  on; ``max_consecutive_crashes`` such rows with no row succeeding in between raise
  :class:`RowsCrashedError`: then the task's inputs do not fit it at all.
- **Ctrl-C stops at once**: pending work is cancelled, a local cluster's worker processes are
  killed (a running circuit call cannot be interrupted otherwise), and ``KeyboardInterrupt`` is
  raised again. Everything finished before was already handed to ``on_result``.

Worker processes are spawned (a fork of a parent that has loaded Concrete's runtime could inherit
its threads' locks in a held state). Spawning imports the caller's ``__main__`` script again in
each worker, so a script must start FHE work under ``if __name__ == "__main__":``; one that does
not is refused with an error saying so before any process starts.

Writing a task: a frozen dataclass with ``setup()``; if ``setup()`` reads files, give it a
``portable()`` method returning a copy whose paths are replaced by ``Blob.of(path)`` (a directory
travels as a tar archive), and read them in ``setup()`` through :func:`read_bytes` /
:func:`local_path`, which accept either form (without ``portable()``, a scheduler's workers get
the paths, which only work on a shared file system). A task that holds secret keys, or returns
them, sets ``holds_secrets = True``: it is refused on a plain ``tcp://`` scheduler on another
host.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import hashlib
import heapq
import io
import ipaddress
import itertools
import logging
import multiprocessing
import os
import queue
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from fhe_toolkit.errors import (
    EngineError,
    RowFailedError,
    RowsCrashedError,
    WorkerCrashedError,
    WorkerSetupError,
)

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

__all__ = [
    "Blob",
    "RowFailure",
    "SequentialWorker",
    "Task",
    "close_local_cluster",
    "disconnect",
    "local_path",
    "parse_scheduler",
    "read_bytes",
    "run_rows",
]


class Task(Protocol):
    """A picklable description of per-row work; ``setup`` runs once in each worker.

    Optional: ``portable()`` returns a copy carrying its files as :class:`Blob`\\ s (called once
    per call, in the caller's process); ``holds_secrets = True`` marks secret key material.
    """

    def setup(self) -> Callable[[Any], Any]: ...


@dataclass(frozen=True)
class RowFailure:
    """A row that could not be processed: the worker died on it, or the function raised."""

    position: int
    reason: str


# --------------------------------------------------------------------------- files that travel


@dataclass(frozen=True, repr=False)
class Blob:
    """The content of a file, or of a directory packed as a tar archive, that travels with a task
    to workers that may not see the caller's files. ``sha256`` names it on the workers."""

    data: bytes
    directory: bool
    name: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> Blob:
        """Read ``path`` (a file, or a directory packed with its files and subdirectories)."""
        source = Path(path)
        data = _pack_directory(source) if source.is_dir() else source.read_bytes()
        return cls(data, source.is_dir(), source.name, hashlib.sha256(data).hexdigest())

    def __repr__(self) -> str:
        kind = "directory" if self.directory else "file"
        return f"Blob({self.name!r}, {kind}, {len(self.data):,} bytes, {self.sha256[:12]})"


def read_bytes(source: str | Path | Blob) -> bytes:
    """The bytes of a file given by path, or carried as a :class:`Blob`."""
    if isinstance(source, Blob):
        if source.directory:
            raise IsADirectoryError(f"{source.name} is a directory, not a file")
        return source.data
    return Path(source).read_bytes()


def local_path(source: str | Path | Blob) -> Path:
    """A path to a file or directory on this machine: ``source`` itself if it is a path, else the
    blob written (unpacked, for a directory) once per process under a name made of its SHA-256,
    in the Dask worker's own scratch directory (removed with the worker)."""
    if not isinstance(source, Blob):
        return Path(source)
    target = _scratch_directory() / source.sha256
    if not target.exists():
        staging = target.with_name(f".{source.sha256}.{os.getpid()}.{threading.get_ident()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if source.directory:
            with tarfile.open(fileobj=io.BytesIO(source.data)) as archive:
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                    archive.extractall(staging, filter="data")
                else:  # pragma: no cover
                    archive.extractall(staging)  # noqa: S202 (our own archive)
        else:
            (staging / source.name).write_bytes(source.data)
            (staging / source.name).chmod(0o600)
        with contextlib.suppress(OSError):  # another thread or worker won the race
            staging.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target if source.directory else target / source.name


def _pack_directory(directory: Path) -> bytes:
    """A tar archive of ``directory`` whose bytes depend only on the files' names, modes and
    contents (so its SHA-256 names the content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(directory.rglob("*")):
            info = archive.gettarinfo(path, arcname=path.relative_to(directory).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
            else:
                archive.addfile(info)
    return buffer.getvalue()


_SCRATCH: list[Path] = []


def _scratch_directory() -> Path:
    if "distributed" in sys.modules:
        from distributed import get_worker

        with contextlib.suppress(ValueError):
            return Path(get_worker().local_directory) / "fhe-toolkit-files"
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="fhe-toolkit-files-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], ignore_errors=True)
    return _SCRATCH[0]


# --------------------------------------------------------------------------- the public calls


def run_rows(
    task: Task,
    items: Sequence[Any],
    positions: Iterable[int],
    on_result: Callable[[int, Any], None],
    *,
    workers: int | None = None,
    chunk_size: int = 16,
    on_done: Callable[[int], None] | None = None,
    max_consecutive_crashes: int = 3,
    scheduler: str | None = None,
) -> list[RowFailure]:
    """Apply ``task`` to ``items[p]`` for every position ``p``, on Dask worker processes.

    ``on_result(position, output)`` is called in this process as each row finishes (in no
    particular order), so the caller can checkpoint it; pass only the positions still missing.
    ``on_done(position)`` is called for every row finished or failed, for progress. Returns the
    rows that failed (sorted by position).

    ``scheduler``: ``None`` for this machine's local cluster of ``workers`` processes (default:
    one per core), or the address of a running Dask scheduler (``tcp://HOST:PORT``), whose
    workers are used (``workers`` is then ignored).

    Raises :class:`WorkerSetupError` if the workers cannot load the task, and
    :class:`RowsCrashedError` after ``max_consecutive_crashes`` rows crashed their worker with no
    row succeeding in between: then the task's inputs do not fit it at all, and retrying every
    row would take hours. On Ctrl-C, cancels what is pending and re-raises ``KeyboardInterrupt``.
    """
    pending = deque(_Chunk(chunk, _BATCH) for chunk in _chunks(list(positions), max(1, chunk_size)))
    if not pending:
        return []
    engine = _engine_for(task, scheduler, workers)
    failures: list[RowFailure] = []
    singles: list[int] = []  # heaps of positions: rows of lost chunks, rows to run alone
    alone: list[int] = []
    crashes_in_a_row = 0
    with _Call(engine, task) as call:
        while pending or singles or alone or call.in_flight:
            if alone:
                if not call.in_flight:
                    call.submit(_Chunk([heapq.heappop(alone)], _ALONE), items)
            else:
                limit = call.window()
                while (pending or singles) and len(call.in_flight) < limit:
                    next_chunk = (
                        _Chunk([heapq.heappop(singles)], _SINGLE) if singles else pending.popleft()
                    )
                    call.submit(next_chunk, items)
            for chunk, outcome in call.finished():
                if isinstance(outcome, _Lost):
                    if chunk.stage == _BATCH and len(chunk.positions) > 1:
                        for position in chunk.positions:
                            heapq.heappush(singles, position)
                    elif chunk.stage != _ALONE:
                        heapq.heappush(alone, chunk.positions[0])
                    else:
                        position = chunk.positions[0]
                        failures.append(RowFailure(position, call.crash_reason(outcome)))
                        crashes_in_a_row += 1
                        if on_done is not None:
                            on_done(position)
                        if crashes_in_a_row >= max_consecutive_crashes:
                            raise RowsCrashedError(failures)
                    continue
                for position, ok, value in outcome:
                    if ok:
                        on_result(position, value)
                        crashes_in_a_row = 0
                    else:
                        failures.append(RowFailure(position, value))
                    if on_done is not None:
                        on_done(position)
    return sorted(failures, key=lambda f: f.position)


class SequentialWorker:
    """A worker for sequential work, where each item needs the previous result.

    ``call(item)`` returns the task's output. The task is loaded once, on one worker, which later
    calls go back to. If the runtime kills that worker, the item is tried once more (on a fresh
    worker) before :class:`WorkerCrashedError` is raised; :class:`RowFailedError` if the task
    raised. ``scheduler`` as for :func:`run_rows` (the local cluster starts with one worker if
    none is running). Use it as a context manager; Ctrl-C as for :func:`run_rows`.
    """

    def __init__(self, task: Task, scheduler: str | None = None) -> None:
        self.task = task
        self.scheduler = scheduler
        self._call: _Call | None = None
        self._worker: str | None = None

    def __enter__(self) -> SequentialWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the task from the workers (the cluster itself stays for later calls)."""
        if self._call is not None:
            self._call.close()
            self._call = None

    def call(self, item: Any) -> Any:
        if self._call is None:
            engine = _engine_for(self.task, self.scheduler, None, starting=1)
            self._call = _Call(engine, self.task).open()
        call = self._call
        lost = _Lost(None)
        for _attempt in range(2):
            try:
                call.submit(_Chunk([0], _ALONE), [item], worker=self._worker)
                _, outcome = call.next_done()
            except BaseException as exc:
                self._call = None
                call.close(type(exc))
                raise
            if not isinstance(outcome, _Lost):
                self._worker = call.last_worker
                ((_, ok, value),) = outcome
                if ok:
                    return value
                raise RowFailedError(value)
            lost, self._worker = outcome, None
        raise WorkerCrashedError(call.crash_reason(lost))


def close_local_cluster() -> None:
    """Stop this process's local cluster, if one is running (done anyway when the process ends)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(_LOCAL, None)
    if engine is not None:
        engine.close()


def disconnect(scheduler: str) -> None:
    """Close this process's connection to ``scheduler``, if any (done anyway when the process
    ends; the scheduler and its workers keep running)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(parse_scheduler(scheduler), None)
    if engine is not None:
        engine.close()


def parse_scheduler(address: str) -> str:
    """``address`` checked as a Dask scheduler address, ``tcp://HOST:PORT`` or ``tls://HOST:PORT``
    (``HOST:PORT`` alone means ``tcp://``); raises ``ValueError`` with the expected form."""
    text = address.strip()
    if "://" not in text:
        text = f"tcp://{text}"
    match = re.fullmatch(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", text)
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ValueError(
            f"{address!r} is not a Dask scheduler address: expected tcp://HOST:PORT "
            "(or tls://HOST:PORT), as printed by `dask scheduler`"
        )
    return text


# --------------------------------------------------------------------------- one call


_BATCH, _SINGLE, _ALONE = 0, 1, 2  # a chunk as cut; one row of a lost chunk; one row run alone


@dataclass
class _Chunk:
    positions: list[int]
    stage: int


@dataclass(frozen=True)
class _Rows:
    """The rows of a chunk, wrapped so that Dask does not look inside the items."""

    rows: list[tuple[int, Any]]


@dataclass(frozen=True)
class _Lost:
    """A chunk whose worker died under it (``pid``: the last worker process that died)."""

    pid: int | None


@dataclass
class _Call:
    """One call's task, shipped to the workers as a plugin while the call lasts."""

    engine: _Engine
    task: Task
    name: str = field(default_factory=lambda: f"fhe-toolkit-task-{uuid.uuid4().hex[:16]}")
    in_flight: dict[Any, tuple[Future, _Chunk]] = field(default_factory=dict)
    last_worker: str | None = None
    _done: queue.Queue[Future] = field(default_factory=queue.Queue)
    _counter: Iterator[int] = field(default_factory=itertools.count)
    _window: tuple[float, int] = (0.0, 2)
    _since_workers: float = field(default_factory=time.monotonic)
    _open: bool = False

    def open(self) -> _Call:
        if self.engine.cluster is not None:
            # Workers on this machine read the caller's files where they are (shipping 75 MB
            # of keys through Dask costs ~2 s a call here), from the caller's directory.
            shipped = self.task
            with contextlib.suppress(Exception):
                self.engine.client.run(os.chdir, os.getcwd())
        else:
            portable = getattr(self.task, "portable", None)
            try:
                shipped = portable() if callable(portable) else self.task
            except OSError as exc:
                raise WorkerSetupError(f"cannot read the task's files: {exc}") from None
        plugin = _plugin_types()[0](self.name, shipped)
        try:
            self.engine.client.register_plugin(plugin, name=self.name)
        except OSError:
            pass  # a worker died during the broadcast; the scheduler keeps the plugin for it
        except Exception as exc:
            self._unregister()
            raise WorkerSetupError(
                f"the workers could not load the task ({type(exc).__name__}: {exc}). Every "
                f"worker needs the same fhe-toolkit installed, and the module defining "
                f"{type(self.task).__module__}.{type(self.task).__qualname__}."
            ) from None
        self._open = True
        return self

    def __enter__(self) -> _Call:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.close(kind)

    def close(self, kind: type[BaseException] | None = None) -> None:
        """Cancel what is in flight and drop the task from the workers; on Ctrl-C (or any
        ``BaseException`` that is not an ``Exception``) tear the cluster down as well."""
        futures = [future for future, _ in self.in_flight.values()]
        self.in_flight.clear()
        if kind is not None and not issubclass(kind, Exception):
            self.engine.abandon(futures, self.name if self._open else None)
            return
        if self.engine.closed:
            return
        if futures:
            with contextlib.suppress(Exception):
                self.engine.client.cancel(futures)
        if self._open:
            self._unregister()
            self._open = False

    def _unregister(self) -> None:
        with contextlib.suppress(Exception):  # workers restarting, or the plugin never arrived
            self.engine.client.unregister_worker_plugin(self.name)

    def submit(self, chunk: _Chunk, items: Sequence[Any], worker: str | None = None) -> None:
        rows = _Rows([(p, items[p]) for p in chunk.positions])
        future = self.engine.client.submit(
            _run_chunk, self.name, rows,
            key=f"{self.name}-{next(self._counter)}", pure=False, priority=chunk.stage,
            workers=[worker] if worker else None, allow_other_workers=bool(worker),
        )  # fmt: skip
        self.in_flight[future.key] = (future, chunk)
        future.add_done_callback(self._done.put)

    def window(self) -> int:
        """Chunks to keep in flight: two per worker thread, so each worker has its next one."""
        checked, size = self._window
        if time.monotonic() - checked > 2.0:
            size = max(2, 2 * sum(self.engine.client.nthreads().values()))
            self._window = (time.monotonic(), size)
        return size

    def next_done(self) -> tuple[_Chunk, list[tuple[int, bool, Any]] | _Lost]:
        """Wait for a chunk in flight to finish: its rows' outcomes, or the worker lost."""
        while True:
            try:
                future = self._done.get(timeout=5.0)
            except queue.Empty:
                self._check_workers()
                continue
            if future.key in self.in_flight:
                return self._take(future)

    def finished(self) -> list[tuple[_Chunk, list[tuple[int, bool, Any]] | _Lost]]:
        """The next chunk to finish and any others already finished; after a lost worker, also
        those that finish within 0.2 s (the other chunks it held), so that the rows to retry are
        known before any is resubmitted."""
        done = [self.next_done()]
        until = time.monotonic() + (0.2 if isinstance(done[0][1], _Lost) else 0.0)
        while self.in_flight:
            try:
                future = self._done.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if future.key in self.in_flight:
                done.append(self._take(future))
        return done

    def _take(self, future: Future) -> tuple[_Chunk, list[tuple[int, bool, Any]] | _Lost]:
        from distributed import KilledWorker

        _, chunk = self.in_flight.pop(future.key)
        if future.status == "error":
            error = future.exception()
            future.release()
            if isinstance(error, KilledWorker):
                return chunk, _Lost(getattr(error.last_worker, "pid", None))
            raise WorkerSetupError(
                f"the workers could not run the task ({type(error).__name__}: {error})"
            )
        if future.status == "lost":
            # The scheduler lost track of it (a worker gone under load): retry like a crash.
            future.release()
            return chunk, _Lost(None)
        if future.status != "finished":
            raise EngineError(
                f"the Dask scheduler dropped this work (task {future.status}); run again "
                "(finished rows were delivered)"
            )
        self.last_worker, outcome = future.result()
        future.release()
        if isinstance(outcome, str):
            if self.engine.cluster is None and not hasattr(self.task, "portable"):
                outcome += (
                    f"\n{type(self.task).__name__} has no portable(): the workers read its paths "
                    "on their own machines (see fhe_toolkit.fhe.engine on writing a task)"
                )
            raise WorkerSetupError(outcome)
        return chunk, outcome

    def _check_workers(self) -> None:
        if self.engine.client.nthreads():
            self._since_workers = time.monotonic()
        elif time.monotonic() - self._since_workers > _NO_WORKERS_TIMEOUT:
            raise EngineError(
                f"the Dask scheduler at {self.engine.address} has had no workers for "
                f"{_NO_WORKERS_TIMEOUT:.0f} s; start some (see docs/cluster.md)"
            )

    def crash_reason(self, lost: _Lost) -> str:
        how = self.engine.exit_status(lost.pid)
        return f"the FHE runtime crashed the worker ({how})"


_NO_WORKERS_TIMEOUT = 120.0
_CONNECT_TIMEOUT = "10s"


def _chunks(positions: list[int], size: int) -> list[list[int]]:
    return [positions[i : i + size] for i in range(0, len(positions), size)]


# --------------------------------------------------------------------------- in the workers

_LOADED: dict[str, Callable[[Any], Any]] = {}


def _run_chunk(name: str, rows: _Rows) -> tuple[str, list[tuple[int, bool, Any]] | str]:
    """Worker side: apply the call's function (loaded once per worker) to each row; a setup
    failure comes back as its traceback text."""
    from distributed import get_worker

    worker = get_worker()
    function = _LOADED.get(name)
    if function is None:
        plugin = worker.plugins.get(name)
        if plugin is None:
            return worker.address, f"the task {name} did not reach worker {worker.address}"
        try:
            function = _LOADED[name] = cast(Any, plugin).task.setup()
        except Exception:
            return worker.address, traceback.format_exc(limit=3)
    outcomes: list[tuple[int, bool, Any]] = []
    for position, item in rows.rows:
        try:
            outcomes.append((position, True, function(item)))
        except Exception as exc:
            outcomes.append((position, False, f"{type(exc).__name__}: {exc}"))
    return worker.address, outcomes


def _worker_versions() -> dict[str, str]:
    from fhe_toolkit.fhe.versions import package_versions

    return package_versions()


_EXIT_TOPIC = "fhe-toolkit-worker-exit"
_PLUGIN_TYPES: list[type] = []


def _plugin_types() -> tuple[type, type]:
    """The worker plugin that carries a task, and the nanny plugin that reports how a worker
    process ended. Defined on first use so that importing this module does not import Dask
    (~0.6 s); unpickling on a worker finds them through the module's ``__getattr__``."""
    if not _PLUGIN_TYPES:
        from distributed.core import Status
        from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

        class _TaskPlugin(WorkerPlugin):
            def __init__(self, name: str, task: Task) -> None:
                self.name = name
                self.task = task

            def teardown(self, worker: Any) -> None:
                _LOADED.pop(self.name, None)

        class _ExitStatus(NannyPlugin):
            """Logs how each worker process ended (pid, exit code) as an event on the
            scheduler: Dask itself only says that a worker died."""

            idempotent = True

            def setup(self, nanny: Any) -> None:
                def watch() -> None:  # the nanny keeps one WorkerProcess across restarts
                    process = getattr(nanny, "process", None)
                    if process is None or getattr(process, "_fhe_toolkit_watched", False):
                        return
                    original = process.mark_stopped

                    def mark_stopped() -> None:
                        child = process.process
                        if child is not None and nanny.status == Status.running:
                            with contextlib.suppress(Exception):
                                if child.exitcode:
                                    event = {"pid": child.pid, "exitcode": child.exitcode}
                                    nanny.log_event(_EXIT_TOPIC, event)
                        original()

                    process.mark_stopped = mark_stopped
                    process._fhe_toolkit_watched = True

                watch()
                if getattr(nanny, "process", None) is None:  # not started yet
                    instantiate = nanny.instantiate

                    async def instantiate_and_watch() -> Any:
                        try:
                            return await instantiate()
                        finally:
                            watch()

                    nanny.instantiate = instantiate_and_watch

        for kind in (_TaskPlugin, _ExitStatus):  # pickled by reference, as module attributes
            kind.__module__, kind.__qualname__ = __name__, kind.__name__
            globals()[kind.__name__] = kind
        _PLUGIN_TYPES.extend((_TaskPlugin, _ExitStatus))
    return _PLUGIN_TYPES[0], _PLUGIN_TYPES[1]


if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        if name in ("_TaskPlugin", "_ExitStatus"):
            _plugin_types()
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- clusters

_LOCAL = "local"
_ENGINES: dict[str, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


@dataclass
class _Engine:
    """A client of a scheduler: this process's local cluster, or a running scheduler."""

    client: Client
    address: str
    cluster: LocalCluster | None = None
    closed: bool = False

    def exit_status(self, pid: int | None) -> str:
        """How the worker process ``pid`` ended ("signal 11"), as its nanny reported it."""
        deadline = time.monotonic() + 2.0
        while pid is not None:
            with contextlib.suppress(Exception):
                for _, event in reversed(self.client.get_events(_EXIT_TOPIC)):
                    if event.get("pid") == pid:
                        code = int(event["exitcode"])
                        return f"signal {-code}" if code < 0 else f"exit code {code}"
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return "process lost"

    def abandon(self, futures: list[Future], plugin: str | None) -> None:
        """Ctrl-C: cancel, and stop a local cluster's workers mid-call (killed: a running
        circuit call cannot be interrupted); a remote cluster's workers finish their current
        chunk, drop it, and forget the task (``plugin``)."""
        with _ENGINES_LOCK:
            if _ENGINES.get(_LOCAL if self.cluster else self.address) is self:
                del _ENGINES[_LOCAL if self.cluster else self.address]
        with _quiet_logs(), contextlib.suppress(Exception):
            self.client.cancel(futures)
            if self.cluster is None and plugin is not None:
                self.client.unregister_worker_plugin(plugin)
        self.close(kill=True)

    def close(self, kill: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        with _quiet_logs():
            if self.cluster is not None and kill:
                for nanny in list(self.cluster.workers.values()):
                    with contextlib.suppress(Exception):
                        os.kill(nanny.process.process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close(timeout=5)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Dask logs connection errors while a cluster shuts down; they are expected then."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _engine_for(
    task: Task, scheduler: str | None, workers: int | None, starting: int | None = None
) -> _Engine:
    """The engine for ``scheduler``; a local one gets ``workers`` processes (``None``: those it
    has, or ``starting`` / one per core if it must start)."""
    if scheduler is None:
        _refuse_work_while_main_is_imported()
        return _local_engine(workers, starting)
    address = parse_scheduler(scheduler)
    if getattr(task, "holds_secrets", False) and not _private_channel(address):
        raise EngineError(
            f"{type(task).__name__} carries secret keys between this process and the workers, "
            f"and {address} is a plain tcp:// address on another host: use tls:// (see "
            "docs/cluster.md), or run this step without --scheduler"
        )
    with _ENGINES_LOCK:
        engine = _ENGINES.get(address)
        if engine is None or engine.closed or engine.client.status != "running":
            engine = _ENGINES[address] = _connect(address)
    return engine


def _private_channel(address: str) -> bool:
    scheme, _, rest = address.partition("://")
    host = rest.rsplit(":", 1)[0].strip("[]")
    if scheme == "tls" or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connect(address: str) -> _Engine:
    from distributed import Client

    try:
        client = Client(address, timeout=_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise EngineError(
            f"cannot reach the Dask scheduler at {address} ({exc}); start one with "
            "`dask scheduler` (see docs/cluster.md)"
        ) from None
    engine = _Engine(client, address)
    try:
        _prepare(engine)
        client.wait_for_workers(1, timeout=_NO_WORKERS_TIMEOUT)
        mine = _worker_versions()
        theirs = client.run(_worker_versions)
    except TimeoutError:
        engine.close()
        raise EngineError(
            f"the Dask scheduler at {address} has no workers; start them with "
            f"`dask worker {address} --nthreads 1` (see docs/cluster.md)"
        ) from None
    except Exception as exc:
        engine.close()
        raise WorkerSetupError(
            f"the workers of {address} cannot run fhe-toolkit ({type(exc).__name__}: {exc}); "
            "install the same fhe-toolkit on every worker machine"
        ) from None
    different = {w: v for w, v in theirs.items() if v != mine}
    if different:
        engine.close()
        worker, versions = next(iter(different.items()))
        raise WorkerSetupError(
            f"{len(different)} worker(s) of {address} run other versions than this machine "
            f"(e.g. {worker}: {versions}; here: {mine}); keys and ciphertexts would not fit. "
            "Install the same versions everywhere."
        )
    return engine


def _local_engine(workers: int | None, starting: int | None = None) -> _Engine:
    """This process's local cluster, with ``workers`` processes (``None``: as many as it has,
    or ``starting`` / one per core when starting it)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(_LOCAL)
        if engine is not None and (engine.closed or engine.client.status != "running"):
            engine = None
        if engine is None:
            engine = _ENGINES[_LOCAL] = _start_local(workers or starting or os.cpu_count() or 1)
        elif workers is not None:
            _scale(engine, workers)
    return engine


def _start_local(count: int) -> _Engine:
    import dask
    from distributed import Client, LocalCluster

    config = {
        # A dead worker's tasks come straight back as KilledWorker: run_rows does the retrying,
        # row by row, instead of the scheduler rerunning a whole chunk that may crash again.
        "distributed.scheduler.allowed-failures": 0,
    }
    # The cluster drops a worker that its nanny has not brought back within this time after
    # a crash (Dask: 15 s), read when the worker dies, hence set for the process. Restarting
    # one took 19 s on the loaded 2-core machine; the dropped worker's next task was then lost
    # and blamed for a crash it did not cause. Our nannies live in this process: none vanishes.
    dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"})
    with dask.config.set(config):
        try:
            cluster = LocalCluster(
                n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=":0", silence_logs=logging.CRITICAL,
            )  # fmt: skip
        except Exception as exc:
            raise WorkerSetupError(
                f"could not start the local worker processes ({type(exc).__name__}: {exc}); "
                f"if a script starts FHE work, {_GUARD_HELP}"
            ) from None
    engine = _Engine(Client(cluster, set_as_default=False), "local cluster", cluster)
    _prepare(engine)
    return engine


def _prepare(engine: _Engine) -> None:
    engine.client.register_plugin(_plugin_types()[1](), name="fhe-toolkit-exit-status")


def _scale(engine: _Engine, count: int) -> None:
    if engine.cluster is None or (
        len(engine.client.nthreads()) == count and len(engine.cluster.worker_spec) == count
    ):
        return
    engine.cluster.scale(count)
    deadline = time.monotonic() + 60
    while len(engine.client.nthreads()) != count:
        if time.monotonic() > deadline:
            raise EngineError(f"the local cluster did not reach {count} workers in 60 s")
        time.sleep(0.05)


@atexit.register
def _close_all() -> None:
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()


# --------------------------------------------------------------------------- the __main__ guard

_GUARD_HELP = (
    'put the code that starts it under `if __name__ == "__main__":` (worker processes start by '
    "importing that script again, and would each start the work again)"
)


def _refuse_work_while_main_is_imported() -> None:
    """Refuse FHE work started by a script's top-level code outside ``if __name__ ==
    "__main__":``. In the parent this is found before any worker starts (by reading the script);
    in a worker process importing the script, by multiprocessing's bootstrapping flag."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise WorkerSetupError(f"FHE work was started while a worker imported the script: "
                               f"{_GUARD_HELP}")  # fmt: skip
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if main is None or path is None or (spec_name and spec_name.endswith("__main__")):
        return  # `python -c`, a REPL, `python -m package`: workers do not import it again
    frame = sys._getframe()
    while frame is not None and not (
        frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return  # the script's top level has finished: it is calling from a function or thread
    try:
        source = Path(path).read_text(encoding="utf-8")
        now = compile(source, path, "exec")
        if (now.co_code, now.co_linetable) != (frame.f_code.co_code, frame.f_code.co_linetable):
            return  # edited since it started: its lines no longer say where it runs
        guarded = _under_main_guard(source, frame.f_lineno)
    except (OSError, SyntaxError, ValueError):
        return
    if not guarded:
        raise WorkerSetupError(
            f"{path} starts FHE work at line {frame.f_lineno} while it is being imported: "
            f"{_GUARD_HELP}"
        )


def _under_main_guard(source: str, line: int) -> bool:
    """Whether ``line`` of a script lies inside a top-level ``if`` testing ``__name__`` (or the
    current or parent process)."""
    for node in ast.parse(source).body:
        if not isinstance(node, ast.If):
            continue
        names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute)}
        if names & {"__name__", "parent_process", "current_process"}:
            end = node.end_lineno or node.lineno
            if node.lineno <= line <= end:
                return True
    return False
