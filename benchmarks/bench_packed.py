"""The packed round at Numerai width, through the toolkit's own API: what one more linear model
costs the fund and the participant, against the per-model (circuit) path side by side.

    python bench_packed.py [--feature-set medium|all] [--rows 672] [--models 1 4]
        [--participants N] [--circuit-rows 64] [--primitive-rows 0] [--out packed.json]

``medium`` is 780 features and ``all`` 2,748, Numerai v5's widths.

For each model count: the fund opens a round (one key, one encryption of the live features,
published once), each participant runs its model (all cores), the fund receives every submission
(decrypt, verify, decode); ``--participants N`` runs and receives only the first N models of
each round (a participant's run is the longest part at full width). The per-model path is a
compiled ``linear`` circuit on fewer rows (``--circuit-rows``, 0 to skip), compared per row.
Models are random integer weights over the features (8 bits), registered as LinearSpecs: what is
measured is the encryption, not training. ``--primitive-rows N`` also times the GLWE
multiplication alone (``bench_glwe.py``'s measurement, on at least N rows, one process and as
many as there are cores) in the same run, so the participant's rate can be read against the
primitive under the same load.

The last line extrapolates the fund's cost of a round of 1, 10 and 100 models from the measured
round of one model and the measured marginal cost of each further model (opening and receiving),
and says which figures are measured.

Every part records the machine's load average (1 minute) before and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_glwe import bench_width  # type: ignore[import-not-found]
from common import machine  # type: ignore[import-not-found]

from fhe_toolkit.data import SynthConfig, make_tournament
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from fhe_toolkit.participant.model import DEPLOYMENT_DIR, SPEC_FILE, WEIGHTS_FILE
from fhe_toolkit.protocol.artifacts import PACKED_ROUND, open_artifact
from fhe_toolkit.protocol.modelspec import LinearSpec
from fhe_toolkit.protocol.signing import create_identity

EXTRAPOLATED = (1, 10, 100)


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


def load() -> float:
    return round(os.getloadavg()[0], 2)


def packed_round(
    root: Path, live: pd.DataFrame, features: list[str], count: int, runs: int | None
) -> dict:
    """Open a round for ``count`` models; ``runs`` of them (all if None) run and are received."""
    load_before = load()
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
    encrypted_rows = open_artifact(dataset, PACKED_ROUND).manifest.n_rows
    run_seconds, receive_seconds = [], []
    for i in range(count if runs is None else min(runs, count)):
        start = time.perf_counter()
        out = run_bundle(dataset, root / f"m{i}", root / f"s{i}", identity=identity)
        run_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        fund.receive("r", out)
        receive_seconds.append(time.perf_counter() - start)
    run = float(np.mean(run_seconds))
    return {
        "models": count,
        "live_rows": len(live),
        "encrypted_rows": encrypted_rows,
        "open_s": round(open_seconds, 2),
        "published_bytes": size(dataset),
        "participant_s_per_model": [round(s, 2) for s in run_seconds],
        "participant_ms_per_live_row": round(1e3 * run / len(live), 2),
        "participant_ms_per_encrypted_row": round(1e3 * run / encrypted_rows, 2),
        "submission_bytes": size(root / "s0"),
        "fund_receive_s_per_model": [round(s, 3) for s in receive_seconds],
        "load_before_after": (load_before, load()),
    }


def circuit_round(root: Path, train: pd.DataFrame, live: pd.DataFrame, features: list[str]) -> dict:
    load_before = load()
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
        "load_before_after": (load_before, load()),
    }


def fund_costs(packed: list[dict]) -> dict[str, Any]:
    """Seconds and bytes of a round of 1, 10, 100 models: the round of one model as measured,
    plus each further model's measured marginal cost. Opening: the slope between the smallest
    and the largest round measured. Receiving: the first model of a round pays for the round's
    verifier (the factorization of its features), the others reuse it: the largest round's
    first receive, then the mean of its later ones."""
    first, last = packed[0], packed[-1]
    extra = last["models"] - first["models"]
    # A slope below zero is the machine's noise (more models cannot cost less): counted as 0.
    open_marginal = max(0.0, (last["open_s"] - first["open_s"]) / extra) if extra else 0.0
    bytes_marginal = (
        max(0.0, (last["published_bytes"] - first["published_bytes"]) / extra) if extra else 0
    )
    receives = last["fund_receive_s_per_model"]
    receive_first = receives[0]
    receive_marginal = float(np.mean(receives[1:])) if len(receives) > 1 else receive_first
    rounds = {}
    for models in EXTRAPOLATED:
        rounds[models] = {
            "open_s": round(first["open_s"] + (models - first["models"]) * open_marginal, 2),
            "receive_s": round(receive_first + (models - 1) * receive_marginal, 1),
            "published_bytes": int(first["published_bytes"] + (models - 1) * bytes_marginal),
            "measured": models in {r["models"] for r in packed},
        }
    return {
        "open_marginal_s_per_model": round(open_marginal, 3),
        "published_marginal_bytes_per_model": round(bytes_marginal),
        "receive_first_s": receive_first,
        "receive_marginal_s_per_model": round(receive_marginal, 3),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )  # fmt: skip
    parser.add_argument("--feature-set", choices=["medium", "all"], default="medium")
    parser.add_argument("--rows", type=int, default=672, help="live rows of the round")
    parser.add_argument("--models", type=int, nargs="+", default=[1, 4],
                        help="model counts: one packed round each")  # fmt: skip
    parser.add_argument("--participants", type=int,
                        help="run and receive at most this many models per round (default: "
                        "all); the others are only opened for")  # fmt: skip
    parser.add_argument("--circuit-rows", type=int, default=64,
                        help="rows for the per-model circuit path (0: skip it)")  # fmt: skip
    parser.add_argument(
        "--primitive-rows",
        type=int,
        default=0,
        help="also time the GLWE multiplication alone on this many rows (0: no)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = SynthConfig(
        train_eras=4, validation_eras=0, live_eras=1, rows_per_era=args.rows, n_features=2748
    )
    frame, metadata = make_tournament(config)
    features = metadata.features(args.feature_set)
    train, live = (frame[frame["data_type"] == kind] for kind in ("train", "live"))
    results: dict = {"machine": machine(), "features": len(features), "rows": len(live)}
    packed = []
    for count in sorted(args.models):
        with tempfile.TemporaryDirectory() as work:
            packed.append(packed_round(Path(work), live, features, count, args.participants))
            results[f"packed_{count}"] = packed[-1]
            print(json.dumps(packed[-1]), flush=True)
    results["fund_costs"] = fund_costs(packed)
    print(json.dumps(results["fund_costs"]), flush=True)
    if args.primitive_rows:
        before = load()
        cores = os.cpu_count() or 1
        rows = max(args.primitive_rows, len(features) + 64)  # as bench_glwe.py pads
        chunk = -(-rows // (4 * cores))
        primitive = bench_width(len(features), rows, 127, chunk, cores, seed=0)
        results["primitive"] = {
            "rows": primitive["rows"],
            "multiply_ms_per_row_1proc": round(primitive["multiply_ms_per_row_1proc"], 2),
            f"multiply_ms_per_row_{cores}proc": round(
                primitive[f"multiply_ms_per_row_{cores}proc"], 2
            ),
            "exact": primitive["exact"] and primitive["verified"],
            "load_before_after": (before, load()),
        }
        print(json.dumps(results["primitive"]), flush=True)
    if args.circuit_rows:
        with tempfile.TemporaryDirectory() as work:
            results["circuit"] = circuit_round(
                Path(work), train, live.iloc[: args.circuit_rows], features
            )
            print(json.dumps(results["circuit"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
