"""The packed round at Numerai width, through the toolkit's own API: what one more linear model
costs the fund and the participant, against the per-model (circuit) path side by side.

    python benchmarks/bench_packed.py [--feature-set medium|all] [--rows 672] [--models 1 4]
        [--circuit-rows 64] [--out packed.json]

``medium`` is 780 features and ``all`` 2,748, Numerai v5's widths.

For each model count: the fund opens a round (one key, one encryption of the live features,
published once), each participant runs its model (all cores), the fund receives every
submission (decrypt, verify, decode). The per-model path is a compiled ``linear`` circuit on
fewer rows (``--circuit-rows``), compared per row. Models are random integer weights over the
features (8 bits), registered as LinearSpecs: what is measured is the encryption, not training.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import machine  # type: ignore[import-not-found]

from fhe_toolkit.data import SynthConfig, make_tournament
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from fhe_toolkit.participant.model import DEPLOYMENT_DIR, SPEC_FILE, WEIGHTS_FILE
from fhe_toolkit.protocol.modelspec import LinearSpec
from fhe_toolkit.protocol.signing import create_identity


def linear_model(root: Path, name: str, features: list[str], rng: np.random.Generator) -> Path:
    """A packed model directory with random 8-bit weights (no training needed to time FHE)."""
    home = root / name
    (home / DEPLOYMENT_DIR).mkdir(parents=True)
    weights = rng.integers(-127, 128, size=len(features))
    spec = LinearSpec(
        name=name, family="linear", target="target", features=features, weight_bits=8,
        scale=1e-3, intercept=0.5, versions=package_versions(),
    )  # fmt: skip
    (home / SPEC_FILE).write_text(spec.to_json())
    (home / DEPLOYMENT_DIR / WEIGHTS_FILE).write_text(json.dumps({"weights": weights.tolist()}))
    return home


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def packed_round(root: Path, live: pd.DataFrame, features: list[str], count: int) -> dict:
    fund = Fund(root / "fund", root / "keys")
    rng = np.random.default_rng(count)
    identity = root / "p.pem"
    fund.add_participant("p", create_identity(identity))
    for i in range(count):
        fund.register(linear_model(root, f"m{i}", features, rng) / SPEC_FILE, participant="p",
                      stake=1.0)  # fmt: skip
    start = time.perf_counter()
    opened = fund.open_round("r", live, max_packed_per_participant=count)
    open_seconds = time.perf_counter() - start
    dataset = opened["m0"]
    run_seconds, receive_seconds = [], []
    for i in range(count):
        start = time.perf_counter()
        out = run_bundle(dataset, root / f"m{i}", root / f"s{i}", identity=identity)
        run_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        fund.receive("r", out)
        receive_seconds.append(time.perf_counter() - start)
    return {
        "models": count,
        "open_s": round(open_seconds, 2),
        "published_bytes": size(dataset),
        "participant_s_per_model": round(float(np.mean(run_seconds)), 2),
        "participant_ms_per_row": round(1e3 * float(np.mean(run_seconds)) / len(live), 2),
        "fund_receive_s_per_model": round(float(np.mean(receive_seconds)), 3),
    }


def circuit_round(root: Path, train: pd.DataFrame, live: pd.DataFrame, features: list[str]) -> dict:
    model = train_model(train, family="linear", features=features, packed=False)
    compile_model(model, train)
    export_model(model, root / "c", "c")
    fund = Fund(root / "fund", root / "keys")
    identity = root / "c.pem"
    fund.add_participant("c", create_identity(identity))
    fund.register(root / "c" / SPEC_FILE, participant="c", stake=1.0)
    start = time.perf_counter()
    bundle = fund.open_round("r", live)["c"]
    open_seconds = time.perf_counter() - start
    start = time.perf_counter()
    out = run_bundle(bundle, root / "c", root / "sub", identity=identity)
    run_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fund.receive("r", out)
    return {
        "rows": len(live),
        "open_s_per_row": round(open_seconds / len(live), 4),
        "published_bytes_per_row": size(bundle) // len(live),
        "participant_ms_per_row": round(1e3 * run_seconds / len(live), 2),
        "fund_receive_s": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feature-set", choices=["medium", "all"], default="medium")
    parser.add_argument("--rows", type=int, default=672)
    parser.add_argument("--models", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--circuit-rows", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = SynthConfig(
        train_eras=4, validation_eras=0, live_eras=1, rows_per_era=args.rows, n_features=2748
    )
    frame, metadata = make_tournament(config)
    features = metadata.features(args.feature_set)
    train, live = (frame[frame["data_type"] == kind] for kind in ("train", "live"))
    results: dict = {"machine": machine(), "features": len(features), "rows": len(live)}
    for count in args.models:
        with tempfile.TemporaryDirectory() as work:
            results[f"packed_{count}"] = packed_round(Path(work), live, features, count)
            print(json.dumps(results[f"packed_{count}"]), flush=True)
    with tempfile.TemporaryDirectory() as work:
        results["circuit"] = circuit_round(
            Path(work), train, live.iloc[: args.circuit_rows], features
        )
        print(json.dumps(results["circuit"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
