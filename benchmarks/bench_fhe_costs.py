"""FHE costs per model family on this machine, through the toolkit's own code paths.

For each family (defaults from fhe_toolkit.protocol.families, 42 features as Numerai's small set):
key generation, encryption rows/s (fund), FHE run rows/s (participant runner, all cores),
decryption rows/s (fund, worker processes), ciphertext bytes per row in the bundle, evaluation
key size.

    python benchmarks/bench_fhe_costs.py [--families linear xgboost ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import machine, numerai_like

from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from fhe_toolkit.protocol.artifacts import CIPHERTEXTS, EVALUATION_KEYS, ROUND_BUNDLE, open_artifact
from fhe_toolkit.protocol.families import FAMILIES
from fhe_toolkit.protocol.signing import create_identity

# Rows per family: enough for a steady rate, few enough for minutes, not hours.
ROWS = {"linear": 640, "ridge": 640, "logistic": 640, "decision_tree": 40,
        "random_forest": 30, "xgboost": 30, "neural_net": 10}  # fmt: skip


def measure(family: str, train, live, features, work: Path) -> dict[str, float]:
    rows = live.iloc[: ROWS[family]]
    model = train_model(train, family=family, features=features)
    compile_model(model, train)
    export_model(model, work / family, family.replace("_", "-"))
    fund = Fund(work / f"fund-{family}", work / f"keys-{family}")
    identity = work / f"{family}.pem"
    fund.add_participant(family.replace("_", "-"), create_identity(identity))
    fund.register(work / family / "model_spec.json", participant=family.replace("_", "-"), stake=1)
    spec = fund.spec(family.replace("_", "-"))
    start = time.perf_counter()
    fund.keys.create("keygen-only", spec.name, spec)
    keygen = time.perf_counter() - start
    start = time.perf_counter()
    bundle_dir = fund.open_round("r1", rows)[spec.name]
    encrypt = time.perf_counter() - start - keygen  # open_round makes its own keys first
    start = time.perf_counter()
    submission = run_bundle(bundle_dir, work / family, work / f"sub-{family}", identity=identity)
    run = time.perf_counter() - start
    start = time.perf_counter()
    predictions = fund.receive("r1", submission)
    decrypt = time.perf_counter() - start
    expected = model.predict(rows, "quantized")
    bundle = open_artifact(bundle_dir, ROUND_BUNDLE)
    return {
        "rows": len(rows),
        "keygen_s": round(keygen, 2),
        "encrypt_rows_per_s": round(len(rows) / encrypt, 1),
        "run_rows_per_s": round(len(rows) / run, 2),
        "decrypt_rows_per_s": round(len(rows) / decrypt, 1),
        "bundle_bytes_per_row": round((bundle.directory / CIPHERTEXTS).stat().st_size / len(rows)),
        "evaluation_key_mb": round((bundle.directory / EVALUATION_KEYS).stat().st_size / 1e6, 2),
        "max_abs_diff_vs_clear_quantized": float(
            (predictions.loc[expected.index] - expected).abs().max()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    train, live, features = numerai_like(rows_per_era=max(ROWS.values()), train_eras=20)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            results[family] = measure(family, train, live, features, Path(tmp))
            print(family, json.dumps(results[family]), flush=True)
    print(f"machine: {machine()}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "families": results}, indent=1))


if __name__ == "__main__":
    main()
