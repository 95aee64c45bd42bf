"""Load on the fund's service, on loopback only: N participants at once download a packed
round, ask for their status, and upload their submissions, which the service's worker decrypts.

Everything stays on 127.0.0.1: the server is `fhe-toolkit fund serve --port 0` in a subprocess
(killed at the end, whatever happens), the participants are threads with the toolkit's client.
Bounded: N participants (default 8, at most 32), K status requests each (default 50, at most
500), and a time limit for the whole run (default 600 s) after which it stops and says so.

    python bench_service.py --participants 8 --requests 50 --out service.json

Measured: per phase, wall time, requests and bytes per second, p50 and p99 latency; the
server's peak resident memory (and the decryption worker's, separately), sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from common import machine

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import export_model, run_bundle, train_model
from fhe_toolkit.participant.client import FundClient
from fhe_toolkit.protocol.signing import create_identity
from fhe_toolkit.registry.store import ServiceStore

MAX_PARTICIPANTS = 32
MAX_REQUESTS = 500


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the benchmark ran past its {self.seconds:.0f} s time limit")
        return left


class MemorySampler(threading.Thread):
    """Peak resident memory of the server and of its children (the decryption worker)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.server_peak = 0
        self.worker_peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            try:
                self.server_peak = max(self.server_peak, self.process.memory_info().rss)
                children = self.process.children(recursive=True)
                rss = sum(child.memory_info().rss for child in children)
                self.worker_peak = max(self.worker_peak, rss)
            except psutil.Error:
                continue


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(name: str, latencies: list[float], wall: float, count_bytes: int = 0) -> dict:
    return {
        "phase": name,
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 1),
        "MB_per_s": round(count_bytes / wall / 1e6, 1) if count_bytes else None,
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1),
    }


def world(root: Path, participants: int) -> dict[str, Any]:
    """A fund with ``participants`` participants, one packed linear model each, one round."""
    config = SynthConfig(
        train_eras=4, validation_eras=1, live_eras=1, rows_per_era=300, n_features=20, n_groups=4
    )
    paths = synthesize(root / "data", config)
    train, live = load_tournament(paths["train"]), load_tournament(paths["live"])
    features = load_features_json(paths["features"]).features("all")
    fund = Fund(root / "fund", root / "keys")
    names = [f"p{i:02d}" for i in range(participants)]
    for number, name in enumerate(names):
        fund.add_participant(name, create_identity(root / f"{name}.pem"))
        chosen = features[number % 5 : number % 5 + 12]
        export_model(train_model(train, family="linear", features=chosen), root / name, name)
        fund.register(root / name / "model_spec.json", participant=name, stake=10.0)
    started = time.perf_counter()
    fund.open_round("R1", live)
    return {"fund": fund, "names": names, "open_s": time.perf_counter() - started}


def start_server(root: Path, deadline: Deadline) -> tuple[subprocess.Popen, str]:
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fhe_toolkit.cli", "fund", "serve", "--host", "127.0.0.1",
         "--port", "0", "--fund-dir", str(root / "fund"), "--keys", str(root / "keys"),
         "--requests-per-minute", "100000", "--log-level", "warning"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    while (
        found := re.search(r"on (http://127\.0\.0\.1:\d+)", (root / "server.log").read_text())
    ) is None:
        if process.poll() is not None:
            raise RuntimeError((root / "server.log").read_text())
        deadline.left()
        time.sleep(0.1)
    return process, found.group(1)


def run_all(jobs: list[Callable[[], Any]], deadline: Deadline) -> tuple[list[Any], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        results = [future.result(timeout=deadline.left()) for future in futures]
    return results, time.perf_counter() - started


def bench(participants: int, requests: int, time_limit: float) -> dict[str, Any]:
    deadline = Deadline(time_limit)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as folder:
        root = Path(folder)
        made = world(root, participants)
        fund, names = made["fund"], made["names"]
        fund_key = fund.public_key()
        process, url = start_server(root, deadline)
        sampler = MemorySampler(process.pid)
        sampler.start()
        try:

            def client(name: str) -> FundClient:
                return FundClient(url, root / f"{name}.pem", fund_key=fund_key, timeout=120)

            # 1. Everyone downloads the round's packed dataset at once.
            def download(name: str) -> tuple[float, int]:
                started = time.perf_counter()
                with client(name) as c:
                    out = c.download("R1", name, root / f"{name}-bundle")
                size = sum(f.stat().st_size for f in out.iterdir())
                return time.perf_counter() - started, size

            results, wall = run_all([lambda n=n: download(n) for n in names], deadline)
            downloads = summary("download (whole bundle)", [r[0] for r in results], wall,
                                sum(r[1] for r in results))  # fmt: skip
            downloads["bytes_each"] = results[0][1]

            # 2. Everyone asks for its status, ``requests`` times.
            def statuses(name: str) -> list[float]:
                times = []
                with client(name) as c:
                    for _ in range(requests):
                        started = time.perf_counter()
                        c.status()
                        times.append(time.perf_counter() - started)
                        deadline.left()
                return times

            results, wall = run_all([lambda n=n: statuses(n) for n in names], deadline)
            status = summary("status (signed GET)", [t for r in results for t in r], wall)

            # Submissions, made outside the measured phases (FHE on the participant's side).
            for name in names:
                run_bundle(root / f"{name}-bundle", root / name, root / f"{name}-sub",
                           identity=root / f"{name}.pem", fund_key=fund_key, workers=2)  # fmt: skip
                deadline.left()

            # 3. Everyone uploads at once (4 at a time are taken; the rest retry after 503).
            def upload(name: str) -> tuple[float, str, int]:
                started = time.perf_counter()
                with client(name) as c:
                    answer = c.submit(root / f"{name}-sub")
                size = sum(f.stat().st_size for f in (root / f"{name}-sub").iterdir())
                return time.perf_counter() - started, answer["upload"], size

            queued_at = time.perf_counter()
            results, wall = run_all([lambda n=n: upload(n) for n in names], deadline)
            uploads = summary("upload (to 202 queued)", [r[0] for r in results], wall,
                              sum(r[2] for r in results))  # fmt: skip

            # 4. The worker decrypts the queue.
            # 4. The worker decrypts the queue; each participant asks after its upload every
            #    0.2 s meanwhile (the polls are timed too).
            def poll(name: str, upload_id: str) -> list[float]:
                times = []
                with client(name) as c:
                    while True:
                        started = time.perf_counter()
                        pending = c.upload(upload_id)["pending"]
                        times.append(time.perf_counter() - started)
                        if not pending:
                            return times
                        time.sleep(0.2)
                        deadline.left()

            jobs = [
                lambda n=n, u=u: poll(n, u) for n, (_, u, _) in zip(names, results, strict=True)
            ]
            polled, wall = run_all(jobs, deadline)
            polls = summary("upload status polls", [t for r in polled for t in r], wall)
            drained = time.perf_counter() - queued_at
            assert not any(upload.pending for upload in ServiceStore(fund.db).uploads())
            received = [str(b.status) for b in fund.db.round_record("R1").bundles.values()]
        finally:
            sampler.stopping.set()
            sampler.join()
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    return {
        "machine": machine(),
        "participants": participants,
        "status_requests_each": requests,
        "open_round_s": round(made["open_s"], 1),
        "phases": [downloads, status, uploads, polls],
        "queue_drained_s": round(drained, 2),
        "decrypted": f"{received.count('received')}/{len(received)} received",
        "server_peak_rss_MB": round(sampler.server_peak / 2**20, 1),
        "worker_peak_rss_MB": round(sampler.worker_peak / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="Status requests each.")
    parser.add_argument("--time-limit", type=float, default=600.0, help="Seconds, whole run.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not 1 <= args.participants <= MAX_PARTICIPANTS or not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"1..{MAX_PARTICIPANTS} participants and 1..{MAX_REQUESTS} requests each")
    result = bench(args.participants, args.requests, args.time_limit)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
