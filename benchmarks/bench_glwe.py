"""Packed (GLWE) rounds at Numerai widths: what one round costs the fund and a participant.

Per width (780 and 2,748 features, values 0..4, one weight column within ±127, the
parameters ``choose_params`` picks): key generation, encryption per row and bytes per value,
the participant's multiplication per row in one process and spread over worker processes
(chunks; each worker loads the public compression key once), decryption, and the fund's
exact verification (factorizing X once per round, then per model). Every run checks
``Y == X @ W`` exactly.

The verifier needs more rows than features; when the live rows are fewer, the fund pads the
encrypted matrix with rows it knows (indistinguishable once encrypted) and so does this
benchmark: those rows are encrypted, multiplied and decrypted like the others and counted in
the per-row figures.

    python benchmarks/bench_glwe.py [--rows 6720] [--features 780,2748] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fhe_toolkit.fhe import glwe

_WORKER: dict[str, Any] = {}


def _init_worker(params_json: str, key_path: str, barrier: Any) -> None:
    params = glwe.PackedParams.from_json(params_json)
    _WORKER["key"] = glwe.CompressionKey.from_bytes(params, Path(key_path).read_bytes())
    _WORKER["barrier"] = barrier


def _ready(_: int) -> int:
    _WORKER["barrier"].wait()  # every worker has loaded the key before the clock starts
    return os.getpid()


def _multiply(task: tuple[bytes, np.ndarray]) -> bytes:
    chunk, weights = task
    return glwe.multiply_chunk(_WORKER["key"], chunk, weights)


def bench_width(
    n_features: int, live_rows: int, bound: int, chunk_rows: int, processes: int, seed: int
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(seed)
    params = glwe.choose_params(n_features, bound)
    rows = max(live_rows, n_features + 64)  # pad with known rows so that W is identifiable
    x = rng.integers(0, 5, (rows, n_features)).astype(np.int8)
    w = rng.integers(-bound, bound + 1, n_features)
    out: dict[str, Any] = {
        "features": n_features,
        "live_rows": live_rows,
        "rows": rows,
        "params": json.loads(params.to_json()),
        "margin_sigmas": round(params.margin_sigmas, 1),
    }

    t = time.perf_counter()
    key, compression = glwe.RoundKey.generate(params)
    out["keygen_s"] = time.perf_counter() - t
    t = time.perf_counter()
    public = compression.to_bytes()
    out["ckey_serialize_s"] = time.perf_counter() - t
    out["ckey_bytes"] = len(public)
    t = time.perf_counter()
    glwe.CompressionKey.from_bytes(params, public)
    out["ckey_load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    chunks = glwe.encrypt_rows(key, x, chunk_rows=chunk_rows)
    out["encrypt_ms_per_row"] = (time.perf_counter() - t) / rows * 1e3
    total = sum(len(c) for c in chunks)
    out["input_bytes_per_row"] = total / rows
    out["input_bytes_per_value"] = total / (rows * n_features)

    t, cpu = time.perf_counter(), time.process_time()
    results = [glwe.multiply_chunk(compression, c, w) for c in chunks]
    out["multiply_ms_per_row_1proc"] = (time.perf_counter() - t) / rows * 1e3
    out["multiply_cpu_ms_per_row_1proc"] = (time.process_time() - cpu) / rows * 1e3
    out["output_bytes_per_row"] = sum(len(r) for r in results) / rows

    with tempfile.TemporaryDirectory() as tmp:
        key_path = Path(tmp) / "compression.key"
        key_path.write_bytes(public)
        context = mp.get_context("spawn")
        t = time.perf_counter()
        with context.Pool(
            processes, _init_worker, (params.to_json(), str(key_path), context.Barrier(processes))
        ) as pool:
            pids = pool.map(_ready, range(processes), chunksize=1)
            out["workers_ready_s"] = time.perf_counter() - t
            t = time.perf_counter()
            parallel = pool.map(_multiply, [(c, w) for c in chunks], chunksize=1)
            out[f"multiply_ms_per_row_{processes}proc"] = (time.perf_counter() - t) / rows * 1e3
        out["workers"] = len(set(pids))

    spans = glwe.row_chunks(rows, chunk_rows)
    t = time.perf_counter()
    y = np.vstack(
        [glwe.decrypt_chunk(key, r, n_rows=b - a) for r, (a, b) in zip(results, spans, strict=True)]
    )
    out["decrypt_s"] = time.perf_counter() - t
    y_parallel = np.vstack(
        [
            glwe.decrypt_chunk(key, r, n_rows=b - a)
            for r, (a, b) in zip(parallel, spans, strict=True)
        ]
    )
    expected = x.astype(np.int64) @ w
    out["exact"] = bool(
        np.array_equal(y[:, 0], expected) and np.array_equal(y_parallel[:, 0], expected)
    )

    t = time.perf_counter()
    verifier = glwe.LinearVerifier(x, bound)
    out["verifier_setup_s"] = time.perf_counter() - t  # once per round
    t = time.perf_counter()
    recovered = verifier.verify(y[:, 0])
    out["verify_s"] = time.perf_counter() - t  # per model
    out["verified"] = bool(np.array_equal(recovered, w))
    out["load_average"] = (load_before, os.getloadavg()[0])  # other work on the machine
    return out


def table(results: list[dict[str, Any]], processes: int) -> str:
    head = [
        "features", "rows (live+known)", "bits / in / out / ks", "margin", "keygen",
        "ckey", "encrypt", "input", "multiply 1 proc", f"multiply {processes} procs",
        "output", "decrypt", "verify: round setup + per model", "exact", "load avg",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        p = r["params"]
        cells = [
            f"{r['features']:,}",
            f"{r['rows']:,} ({r['live_rows']:,}+{r['rows'] - r['live_rows']:,})",
            f"{p['bits']} / {p['input_storage_bits']} / {p['output_storage_bits']} / "
            f"{p['ks_base_log']}x{p['ks_level']}",
            f"{r['margin_sigmas']}σ",
            f"{r['keygen_s']:.1f} s",
            f"{r['ckey_bytes'] / 1e6:.0f} MB (load {r['ckey_load_s']:.1f} s)",
            f"{r['encrypt_ms_per_row']:.2f} ms/row",
            f"{r['input_bytes_per_value']:.1f} B/value "
            f"({r['input_bytes_per_row'] / 1e3:.1f} KB/row)",
            f"{r['multiply_ms_per_row_1proc']:.1f} ms/row "
            f"(CPU {r['multiply_cpu_ms_per_row_1proc']:.1f})",
            f"{r[f'multiply_ms_per_row_{processes}proc']:.1f} ms/row "
            f"(×{r['multiply_ms_per_row_1proc'] / r[f'multiply_ms_per_row_{processes}proc']:.2f};"
            f" start {r['workers_ready_s']:.1f} s)",
            f"{r['output_bytes_per_row'] / 1e3:.1f} KB/row",
            f"{r['decrypt_s']:.2f} s ({r['decrypt_s'] / r['rows'] * 1e3:.2f} ms/row)",
            f"{r['verifier_setup_s']:.2f} s + {r['verify_s']:.3f} s",
            "yes" if r["exact"] and r["verified"] else "NO",
            "{:.1f} → {:.1f}".format(*r["load_average"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6720, help="live rows per round")
    parser.add_argument("--features", default="780,2748", help="comma-separated widths")
    parser.add_argument("--weight-bound", type=int, default=127)
    parser.add_argument("--chunk-rows", type=int, default=0, help="0: rows / (4 x processes)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results = []
    for n in (int(v) for v in args.features.split(",")):
        rows = max(args.rows, n + 64)
        chunk = args.chunk_rows or max(1, -(-rows // (4 * args.processes)))
        started = time.perf_counter()
        result = bench_width(n, args.rows, args.weight_bound, chunk, args.processes, args.seed)
        result["chunk_rows"] = chunk
        result["wall_s"] = time.perf_counter() - started
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(table(results, args.processes))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
