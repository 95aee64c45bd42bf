"""Encrypted training costs on this machine, through the toolkit's two-role code paths.

For each configuration (features × rows per batch): compiling the SGD step (participant), key
generation and encryption of the batches (fund), the training bundle and its evaluation keys,
seconds per SGD step (participant, one worker process), and decryption (fund). The decrypted
weights are compared with Concrete ML's single-process training on the same rows and seed, in
its exact quantized arithmetic (``fhe="disable"``) and in simulation (``fhe="simulate"``, which
draws bootstrap errors at the circuit's error probability), in steps of the weights' quantizer.

    python benchmarks/bench_training.py [--grid 3x2 3x8 10x8] [--steps 3] [--p-error 1e-5]
        [--out training.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, numerai_like

from fhe_toolkit.fund import Fund
from fhe_toolkit.fund.training import FundTraining
from fhe_toolkit.participant.training import (
    TRAINING_SPEC_FILE,
    TrainingJob,
    compile_training_job,
    run_training_bundle,
)
from fhe_toolkit.protocol.signing import create_identity


def measure(
    n_features: int, batch: int, steps: int, p_error: float, train, features, work: Path
) -> dict:
    chosen = features[:n_features]
    job = TrainingJob(features=chosen, iterations=steps, batch_size=batch, p_error=p_error)
    name = f"sgd-{n_features}x{batch}"
    start = time.perf_counter()
    spec = compile_training_job(job, work / name, name)
    compile_s = time.perf_counter() - start
    fund = FundTraining(work / f"fund-{name}", work / f"keys-{name}")
    identity = work / f"participant-{name}.pem"
    Fund(fund.root, fund.keys.root).add_participant("bench", create_identity(identity))
    start = time.perf_counter()
    fund.keys.create("keygen-only", name, spec)
    keygen_s = time.perf_counter() - start
    encrypted: list[float] = []
    bundle = fund.open_job(
        "j1", work / name / TRAINING_SPEC_FILE, train, participant="bench",
        on_progress=lambda done, total: encrypted.append(time.perf_counter()),
    )  # fmt: skip
    encrypt_s = float(np.median(np.diff(encrypted))) if steps > 1 else float("nan")
    stamps: list[float] = []
    start = time.perf_counter()
    result = run_training_bundle(
        bundle, work / name, work / f"result-{name}", identity=identity,
        fund_key=fund.public_key(),
        on_progress=lambda done, total: stamps.append(time.perf_counter()),
    )  # fmt: skip
    run_s = time.perf_counter() - start
    step_s = np.diff(stamps)  # stamps[0] is the start, before the worker loads anything
    start = time.perf_counter()
    weights = fund.receive("j1", result)
    decrypt_s = time.perf_counter() - start

    rows = train[train["target"].notna()]
    x = rows[chosen].to_numpy(np.float64)
    y = (rows["target"].to_numpy() > 0.5).astype(int)
    got = np.r_[weights.coef, weights.intercept]
    quantizer_step = spec.output_quantizers[0].scale

    def steps_from(mode: str) -> float:
        """Largest difference from Concrete ML's single-process run, in quantizer steps."""
        reference = job.estimator().fit(x, y, fhe=mode)
        want = np.r_[
            reference._weights_encrypted_fit.ravel(), reference._bias_encrypted_fit.ravel()
        ]
        return round(float(np.max(np.abs(got - want)) / quantizer_step), 2)

    return {
        "features": n_features,
        "batch_size": batch,
        "steps": steps,
        "p_error": p_error,
        "compile_s": round(compile_s, 1),
        "keygen_s": round(keygen_s, 1),
        "encrypt_s_per_step": round(encrypt_s, 3),
        "evaluation_keys_mb": round((bundle / "evaluation_keys.bin").stat().st_size / 1e6),
        "bundle_mb": round(sum(f.stat().st_size for f in bundle.iterdir()) / 1e6),
        "first_step_s": round(float(step_s[0]), 1),
        "s_per_step": round(float(np.median(step_s[1:])), 1),
        "run_s": round(run_s, 1),
        "decrypt_s": round(decrypt_s, 1),
        "quantizer_step": round(quantizer_step, 4),
        "max_diff_vs_single_process_clear": steps_from("disable"),
        "max_diff_vs_single_process_simulated": steps_from("simulate"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="+", default=["3x2", "3x8", "10x8"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--p-error", type=float, default=TrainingJob.p_error)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    train, _, features = numerai_like(rows_per_era=500, train_eras=10)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.grid:
            n_features, batch = (int(v) for v in cell.split("x"))
            results.append(
                measure(n_features, batch, args.steps, args.p_error, train, features, Path(tmp))
            )
            print(json.dumps(results[-1]), flush=True)
    print(f"machine: {machine()}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
