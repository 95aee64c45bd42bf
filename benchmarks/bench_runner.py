"""The toolkit's runner against a plain loop of ``FHEModelServer.run``, side by side.

Same model, same rows, same machine, one run:

- plain loop: Concrete ML's default deployment (``model.compile``, ``FHEModelDev``,
  ``FHEModelClient``), then ``FHEModelServer.run(ciphertext, evaluation_keys)`` row after row
  in this process, as Concrete ML's deployment docs do it;
- toolkit runner: ``fhe-toolkit``'s own export (linear models: 64 rows per ciphertext), the
  fund's bundle, then ``run_bundle`` (worker processes on all cores, checkpointing).

Both runs' outputs are decrypted and compared with the clear quantized model. The linear case
is also a Numerai-scale round end to end (6,720 rows × 42 features: keys, encryption, FHE run,
decryption, scoring).

    python benchmarks/bench_runner.py [--linear-rows 6720] [--tree-rows 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import machine, numerai_like

from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from fhe_toolkit.protocol.signing import create_identity
from fhe_toolkit.scoring import score_eras


def plain_loop(model, rows: pd.DataFrame, work: Path) -> tuple[float, np.ndarray]:
    """Concrete ML's documented deployment, one row per call, in one process."""
    from concrete.ml.deployment import FHEModelClient, FHEModelDev, FHEModelServer

    estimator = model.estimator
    x = rows[model.features].to_numpy(np.float32)
    estimator.compile(x[:1000])
    FHEModelDev(str(work / "plain"), estimator).save()
    client = FHEModelClient(str(work / "plain"), key_dir=str(work / "plain-keys"))
    client.generate_private_and_evaluation_keys()
    keys = client.get_serialized_evaluation_keys()
    ciphertexts = [client.quantize_encrypt_serialize(x[i : i + 1]) for i in range(len(x))]
    server = FHEModelServer(str(work / "plain"))
    start = time.perf_counter()
    outputs = [server.run(ciphertext, keys) for ciphertext in ciphertexts]
    seconds = time.perf_counter() - start
    decrypted = np.concatenate([client.deserialize_decrypt_dequantize(o) for o in outputs])
    return seconds, np.asarray(decrypted, dtype=np.float64).reshape(len(x), -1).sum(axis=1)


def toolkit(model, rows: pd.DataFrame, work: Path, name: str) -> dict[str, float | pd.Series]:
    """The toolkit's round: export, fund bundle, runner, fund decryption."""
    compile_model(model, rows)
    export_model(model, work / name, name)
    fund = Fund(work / "fund", work / "keys")
    identity = work / f"{name}.pem"
    fund.add_participant(name, create_identity(identity))
    fund.register(work / name / "model_spec.json", participant=name, stake=1)
    timings: dict[str, float | pd.Series] = {}
    start = time.perf_counter()
    bundle = fund.open_round("r1", rows)[name]
    timings["keys_and_encryption_s"] = time.perf_counter() - start
    start = time.perf_counter()
    submission = run_bundle(bundle, work / name, work / "submission", identity=identity)
    timings["run_s"] = time.perf_counter() - start
    start = time.perf_counter()
    timings["predictions"] = fund.receive("r1", submission)
    timings["decryption_s"] = time.perf_counter() - start
    return timings


def compare(family: str, params: dict, n_rows: int, train, live, features) -> dict[str, object]:
    rows = live.iloc[:n_rows]
    model = train_model(train, family=family, features=features, params=params)
    clear = model.predict(rows, "quantized").to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain_s, plain_out = plain_loop(model, rows, work)
        model = train_model(train, family=family, features=features, params=params)
        ours = toolkit(model, rows, work, family.replace("_", "-"))
    predictions = ours["predictions"]
    assert isinstance(predictions, pd.Series)
    start = time.perf_counter()
    score_eras(predictions.to_frame(), rows, exposure_features=features)
    scoring_s = time.perf_counter() - start
    result = {
        "family": family,
        "rows": n_rows,
        "plain_loop_s": round(plain_s, 2),
        "toolkit_run_s": round(float(ours["run_s"]), 2),  # type: ignore[arg-type]
        "speedup": round(plain_s / float(ours["run_s"]), 2),  # type: ignore[arg-type]
        "plain_loop_rows_per_s": round(n_rows / plain_s, 2),
        "toolkit_rows_per_s": round(n_rows / float(ours["run_s"]), 2),  # type: ignore[arg-type]
        "round_keys_and_encryption_s": round(float(ours["keys_and_encryption_s"]), 2),  # type: ignore[arg-type]
        "round_decryption_s": round(float(ours["decryption_s"]), 2),  # type: ignore[arg-type]
        "round_scoring_s": round(scoring_s, 2),
        "toolkit_equals_clear_quantized": bool(np.array_equal(predictions.loc[rows.index], clear)),
        "plain_max_abs_diff_vs_clear": float(np.max(np.abs(plain_out - clear))),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--linear-rows", type=int, default=6720)
    parser.add_argument("--tree-rows", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    train, live, features = numerai_like(rows_per_era=args.linear_rows, train_eras=10)
    results = [
        compare("linear", {}, args.linear_rows, train, live, features),
        compare("decision_tree", {}, args.tree_rows, train, live, features),
    ]
    print(f"machine: {machine()}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
