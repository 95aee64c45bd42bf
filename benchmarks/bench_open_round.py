"""The fund's round opening for circuit models (each one: fresh keys, then its live rows
encrypted), side by side in one run on

- the fund's own process, one model after another, as it was before the engine took that work
  (``--old-rounds FILE``, a copy of the module it was:
  ``git show 9f41e46:fhe_toolkit/fund/rounds.py > /tmp/oldrounds.py``),
- the local cluster of 2 worker processes, one task per model (``Fund.open_round``): started
  by the round, as each ``fund open-round`` command starts its own, and already running, as
  for an API user's later rounds,
- a `dask scheduler` with two `dask worker` processes on 127.0.0.1 (``scheduler=...``),
  connected to by the round, as a command does; its workers keep running between rounds.

    python bench_open_round.py --old-rounds /tmp/oldrounds.py [--rows 256] [--repeats 3]
        [--packed-features 780 --packed-rows 6720] [--out open_round.json]

Four small circuit models on Numerai's 42 'small' features: a depth-2 decision tree, a random
forest and an XGBoost model of two depth-2 trees each, and a linear model compiled as a circuit.
The ways take turns, round by round, so that a busy moment of the machine does not land on one
only. The script imports the toolkit's fund and participant inside ``main``: local workers
import this script again, and should import no more than those of ``fhe-toolkit fund
open-round`` do.

``--packed-features``: also the packed (GLWE) dataset of linear models, which the fund encrypts
in its own process: its round key, then its rows encrypted in the fund's process as
``Fund.open_round`` does, against the same rows spread in chunks of 256 over the 2 workers of
the running local cluster (a task made here for the comparison), turn by turn.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fhe_toolkit.fhe import engine, glwe
from fhe_toolkit.fhe.packed import CHUNK_ROWS, encrypt_features

MODELS = {
    "tree": ("decision_tree", {"max_depth": 2}),
    "forest": ("random_forest", {"max_depth": 2, "n_estimators": 2}),
    "xgb": ("xgboost", {"max_depth": 2, "n_estimators": 2}),
    "linear": ("linear", {}),
}
WORKERS = 2


def fund_with_models(root: Path, rows: int) -> tuple[Any, Any]:
    """A fund with the four models registered, and the live rows."""
    from common import numerai_like  # type: ignore[import-not-found]

    from fhe_toolkit.fund import Fund
    from fhe_toolkit.participant import compile_model, export_model, train_model
    from fhe_toolkit.protocol.signing import create_identity

    train, live, features = numerai_like(rows_per_era=rows, train_eras=10)
    fund = Fund(root / "fund", root / "keys")
    for name, (family, params) in MODELS.items():
        model = train_model(train, family=family, features=features, params=params, packed=False)
        compile_model(model, train)
        export_model(model, root / name, name)
        fund.add_participant(name, create_identity(root / f"{name}.pem"))
        fund.register(root / name / "model_spec.json", participant=name, stake=1.0)
    return fund, live


@dataclass(frozen=True)
class PackedChunks:
    """Encrypt chunks of rows under a round key, in a worker (defined in this script, so Dask
    ships it by value; only for this comparison)."""

    params: str
    key: bytes

    def setup(self) -> Callable[[np.ndarray], list[bytes]]:
        key = glwe.RoundKey.from_bytes(glwe.PackedParams.from_json(self.params), self.key)
        return lambda rows: glwe.encrypt_rows(key, rows, chunk_rows=CHUNK_ROWS)


def packed(n_features: int, rows: int, repeats: int) -> dict[str, list[float]]:
    """Seconds for the round key, and for encrypting the rows here or over the local workers."""
    values = np.random.default_rng(0).integers(0, 5, (rows, n_features)).astype(np.int8)
    params = glwe.choose_params(n_features, 127)
    blocks = [values[s : s + CHUNK_ROWS] for s in range(0, rows, CHUNK_ROWS)]
    seconds: dict[str, list[float]] = {"round key": [], "here": [], "2 local workers": []}
    warm, _ = glwe.RoundKey.generate(params)  # the workers run, as after the circuit models
    engine.run_rows(PackedChunks(params.to_json(), warm.to_bytes()), blocks, range(WORKERS),
                    lambda *_: None, workers=WORKERS, chunk_size=1)  # fmt: skip
    for _ in range(repeats):
        started = time.perf_counter()
        key, _ = glwe.RoundKey.generate(params)
        seconds["round key"].append(time.perf_counter() - started)
        started = time.perf_counter()
        here = encrypt_features(key, values, lambda *_: None)
        seconds["here"].append(time.perf_counter() - started)
        spread: dict[int, list[bytes]] = {}
        started = time.perf_counter()
        failures = engine.run_rows(
            PackedChunks(params.to_json(), key.to_bytes()), blocks, range(len(blocks)),
            spread.__setitem__, workers=WORKERS, chunk_size=1,
        )  # fmt: skip
        seconds["2 local workers"].append(time.perf_counter() - started)
        if failures or sum(len(spread[i]) for i in range(len(blocks))) != len(here):
            raise RuntimeError(f"the spread encryption lost chunks: {failures[:3]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-rounds", type=Path, help="a copy of the former rounds module")
    parser.add_argument("--rows", type=int, default=256, help="live rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--packed-features", type=int, help="also time the packed dataset")
    parser.add_argument("--packed-rows", type=int, default=6720)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from bench_engine import dask_cluster  # type: ignore[import-not-found]
    from common import machine

    root = Path(tempfile.mkdtemp(prefix="bench-open-round-"))
    fund, live = fund_with_models(root, args.rows)
    openers: dict[str, Callable[[str], Any]] = {}
    if args.old_rounds is not None:
        sys.path.insert(0, str(args.old_rounds.parent))
        old = importlib.import_module(args.old_rounds.stem).Rounds(fund.root, fund.keys.root)
        openers["in the fund's process (before)"] = lambda round_id: old.open_round(round_id, live)

    def fresh(round_id: str) -> Any:
        engine.close_local_cluster()
        return fund.open_round(round_id, live, workers=WORKERS)

    openers["local cluster, started by the round"] = fresh
    openers["local cluster, running"] = lambda r: fund.open_round(r, live, workers=WORKERS)
    with dask_cluster(root / "cluster") as (address, _):

        def remote(round_id: str) -> Any:
            engine.disconnect(address)
            return fund.open_round(round_id, live, scheduler=address)

        openers["2-worker scheduler"] = remote
        seconds: dict[str, list[float]] = {name: [] for name in openers}
        for repeat in range(args.repeats):
            for number, (name, open_round) in enumerate(openers.items()):
                started = time.perf_counter()
                opened = open_round(f"r{repeat}-{number}")
                seconds[name].append(time.perf_counter() - started)
                if opened.left_out or sorted(opened) != sorted(MODELS):
                    raise RuntimeError(f"{name}: models left out: {opened.left_out}")
        engine.disconnect(address)  # before the cluster stops
    packed_seconds = (
        packed(args.packed_features, args.packed_rows, args.repeats) if args.packed_features else {}
    )
    engine.close_local_cluster()

    print(f"{machine()}; {len(MODELS)} circuit models, {len(live)} live rows, 42 features; "
          f"{args.repeats} rounds each")  # fmt: skip
    print("| where | best | median | rounds |")
    print("| --- | --- | --- | --- |")
    for name, values in seconds.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {min(values):.1f} s | {statistics.median(values):.1f} s | {runs} |")
    if packed_seconds:
        print(f"packed dataset: {args.packed_rows} rows x {args.packed_features} features")
        for name, values in packed_seconds.items():
            runs = ", ".join(f"{v:.2f}" for v in values)
            print(f"| {name} | {min(values):.2f} s | {statistics.median(values):.2f} s | {runs} |")
    if args.out:
        out = {
            "machine": machine(),
            "rows": len(live),
            "seconds": seconds,
            "packed": {
                "features": args.packed_features,
                "rows": args.packed_rows,
                "seconds": packed_seconds,
            },
        }
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
