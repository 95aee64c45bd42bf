"""The decryption worker: takes checked uploads from the queue and runs the fund's receive path.

It runs as its own process (``python -m fhe_toolkit.service.worker``), started and restarted by
the server (:class:`WorkerSupervisor`), so that a crash of the FHE runtime while decrypting
costs the worker, not the server. The queue is in the fund's database
(:class:`~fhe_toolkit.registry.store.ServiceStore`):

- an upload is taken (``decrypting``, one more attempt) and :meth:`Fund.receive` runs on it;
  the upload ends ``received``, ``refused`` (the fund said why) or ``failed``;
- an upload found ``decrypting`` when the worker starts was cut off (the worker or the server
  died): it is taken again first, and the fund's receive finishes or rolls back its own work
  that was cut off (an upload the fund had received already is recorded so); after
  ``max_attempts`` it is marked ``failed``;
- one worker per fund: it holds ``service/worker.lock``. A worker whose server died finishes
  the upload it is on, then exits; the next server's worker waits for the lock meanwhile.

A participant is told only what the fund's records say about its submission: for a submission
refused after decryption, the bundle's short reason, never the decrypted values.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from fhe_toolkit.errors import FheToolkitError
from fhe_toolkit.fund import Fund
from fhe_toolkit.registry import SubmissionStatus
from fhe_toolkit.registry.records import UploadRecord, UploadStatus
from fhe_toolkit.registry.store import ServiceStore
from fhe_toolkit.service.config import ServiceConfig

log = logging.getLogger("fhe_toolkit.service.worker")
SUBMISSION_DIR = "submission"


@contextlib.contextmanager
def file_lock(
    path: Path, *, wait: bool, alive: Callable[[], bool] | None = None
) -> Iterator[IO[str]]:
    """Hold an exclusive lock on ``path`` (released when the process dies, however).

    ``wait``: wait for it (while ``alive()`` holds, if given); otherwise raise
    :class:`BlockingIOError` at once if it is held.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (alive is not None and not alive()):
                    raise
                time.sleep(0.2)
        yield handle
    finally:
        handle.close()


def run_worker(
    config: ServiceConfig,
    *,
    parent: int | None = None,
    stopping: threading.Event | None = None,
) -> None:
    """Empty the queue, then keep watching it, until ``stopping`` is set or the process whose
    id is ``parent`` is gone (checked between uploads)."""
    stop = stopping or threading.Event()

    def alive() -> bool:
        return not stop.is_set() and (parent is None or os.getppid() == parent)

    try:
        with file_lock(config.service_dir / "worker.lock", wait=True, alive=alive):
            fund = Fund(config.fund_dir, config.key_dir, database=config.database, create=False)
            store = ServiceStore(fund.db)
            log.info("decryption worker %d watching the queue", os.getpid())
            while alive():
                job = store.claim_next(config.max_attempts)
                if job is None:
                    stop.wait(config.poll_interval)
                    continue
                process_upload(fund, store, job, config)
    except BlockingIOError:
        return  # told to stop while waiting for the lock


def process_upload(
    fund: Fund, store: ServiceStore, job: UploadRecord, config: ServiceConfig
) -> None:
    """Run the fund's receive path on one upload and record how it ended."""
    folder = config.uploads_dir / job.upload_id
    directory = folder / SUBMISSION_DIR
    log.info("decrypting upload %s (%s in %s, attempt %d)", job.upload_id, job.model, job.round,
             job.attempts)  # fmt: skip
    if (
        job.attempts > 1
        and fund.db.accepted_submission(job.round, job.model) == job.manifest_sha256
    ):
        bundle = fund.round_record(job.round).bundles[job.model]
        if bundle.status == SubmissionStatus.RECEIVED:  # done, then cut off before recording it
            store.finish(job.upload_id, UploadStatus.RECEIVED, bundle.detail)
            shutil.rmtree(folder, ignore_errors=True)
            return
    if not directory.is_dir():
        store.finish(job.upload_id, UploadStatus.FAILED, "the uploaded files are missing.")
        return
    try:
        fund.receive(job.round, directory, workers=config.decrypt_workers)
    except FheToolkitError as exc:
        bundle = fund.round_record(job.round).bundles[job.model]
        refused_after_decryption = bundle.status == SubmissionStatus.REFUSED
        # After a decryption, only the recorded short reason: never what was decrypted.
        detail = (
            bundle.detail
            if refused_after_decryption
            else str(exc).replace(str(directory), "the submission")
        )
        store.finish(job.upload_id, UploadStatus.REFUSED, detail)
        log.info("upload %s refused: %s", job.upload_id, detail)
    except Exception as exc:
        log.exception("upload %s failed", job.upload_id)
        store.finish(
            job.upload_id, UploadStatus.FAILED, f"the service failed: {type(exc).__name__}"
        )
        return  # its files stay for the fund's operator
    else:
        bundle = fund.round_record(job.round).bundles[job.model]
        store.finish(job.upload_id, UploadStatus.RECEIVED, bundle.detail)
        log.info("upload %s received", job.upload_id)
    shutil.rmtree(folder, ignore_errors=True)  # the fund keeps its own copy, as sent


class WorkerSupervisor:
    """Starts the worker process, and starts it again if it dies (after 1, 2, 4... up to 30
    seconds); stops it on :meth:`stop`, letting it finish the upload it is on for
    ``config.shutdown_grace`` seconds."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            process = subprocess.Popen(  # noqa: S603 - this interpreter, this module
                [sys.executable, "-m", "fhe_toolkit.service.worker", "--parent", str(os.getpid())],
                stdin=subprocess.PIPE, text=True,
            )  # fmt: skip
            self._process = process
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.write(self.config.to_json())
                    process.stdin.close()
            code = process.wait()
            if self._stop.is_set():
                return
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            log.warning("the decryption worker exited (%s); starting it again in %.0f s",
                        code, delay)  # fmt: skip
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.config.shutdown_grace)
            except subprocess.TimeoutExpired:
                log.warning("the decryption worker did not finish in time: killing it (the "
                            "upload it was on is taken again next time)")  # fmt: skip
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The fund service's decryption worker.")
    parser.add_argument("--parent", type=int, help="Exit once this process is gone.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = ServiceConfig.from_json(sys.stdin.read())
    stopping = threading.Event()
    # Stop between uploads: an upload being decrypted is finished, never cut in the middle by
    # this signal (its keys are retired only once its decryption really happened).
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    run_worker(config, parent=args.parent, stopping=stopping)


if __name__ == "__main__":
    main()
