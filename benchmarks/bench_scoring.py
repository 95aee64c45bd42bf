"""Scoring at Numerai scale: 100 models × 6,720 rows × 2,748 features, one era.

Default: CORR, MMC (against the stake-weighted meta model), exposure on all 2,748 features and
FNC on a 780-feature set, through ``score_eras``. Target from the issue: ≤ 5 s and ≤ 4 GB peak
memory.

    python benchmarks/bench_scoring.py [--repeats 3]

Peak memory is the peak of Python-tracked allocations (NumPy's included) during scoring, and the
process's peak resident size (which also counts making the data).

With ``--compare-numerai-tools PYTHON``: CORR, MMC and FNC on 780 features only, side by side
with numerai-tools 0.7.2 run by ``PYTHON`` (an interpreter with ``numerai-tools==0.7.2``, which
cannot share the project's environment), on the same data in the same run. Each repeat times
``score_eras`` here, then numerai-tools' ``numerai_corr``, ``correlation_contribution`` and
``feature_neutral_corr`` in a subprocess (the same meta model is given to both). The answers must
agree to 1e-9; the best times and their ratio are printed.

    python3.11 -m venv /tmp/nt-venv && /tmp/nt-venv/bin/pip install numerai-tools==0.7.2
    python benchmarks/bench_scoring.py --compare-numerai-tools /tmp/nt-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from fhe_toolkit.data import SynthConfig, feature_columns, iter_eras
from fhe_toolkit.scoring import score_eras, stake_weighted_meta_model

ROWS, FEATURES, MODELS, FNC_FEATURES = 6720, 2748, 100, 780
TOLERANCE = 1e-9
METRICS = ("corr", "mmc", "fnc")

# Runs in the numerai-tools interpreter: no fhe_toolkit there. Reads the arrays this process
# wrote, times the three numerai-tools calls era by era, prints the time and the scores as JSON.
NUMERAI_TOOLS_SIDE = """
import json, sys, time
import numpy as np, pandas as pd
from importlib.metadata import version
from numerai_tools import scoring

arrays = np.load(sys.argv[1], allow_pickle=False)
ids = pd.Index(arrays["ids"], name="id")
eras = pd.Series(arrays["eras"], index=ids)
target = pd.Series(arrays["target"], index=ids, name="target")
meta = pd.Series(arrays["meta_model"], index=ids, name="meta_model")
predictions = pd.DataFrame(arrays["predictions"], index=ids, columns=arrays["models"])
features = pd.DataFrame(arrays["features"], index=ids, columns=arrays["feature_names"])
start = time.perf_counter()
records = []
for era in sorted(eras.unique()):
    rows = ids[(eras == era).to_numpy()].sort_values()
    preds, feats, targets = predictions.loc[rows], features.loc[rows], target.loc[rows]
    scores = {
        "corr": scoring.numerai_corr(preds, targets),
        "mmc": scoring.correlation_contribution(preds, meta.loc[rows], targets),
        "fnc": scoring.feature_neutral_corr(preds, feats, targets),
    }
    for model in preds.columns:
        records.append({"era": str(era), "model": str(model),
                        **{name: float(s[model]) for name, s in scores.items()}})
seconds = time.perf_counter() - start
print(json.dumps({"version": version("numerai-tools"), "seconds": seconds, "scores": records}))
"""


def make_round() -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, list[str]]:
    """One era of synthetic Numerai data, 100 correlated models and their stakes."""
    config = SynthConfig(
        train_eras=1, validation_eras=0, live_eras=0, rows_per_era=ROWS, n_features=FEATURES
    )
    data = next(iter_eras(config))
    features = feature_columns(list(data.columns))
    rng = np.random.default_rng(0)
    base = data[features[:50]].to_numpy(np.float64) @ rng.normal(size=(50, MODELS))
    predictions = pd.DataFrame(
        base + rng.normal(scale=5, size=(ROWS, MODELS)),
        index=data.index,
        columns=[f"model_{i:03d}" for i in range(MODELS)],
    )
    stakes = pd.Series(rng.uniform(1, 100, MODELS), index=predictions.columns)
    return data, predictions, stakes, features


def full_workload(repeats: int) -> None:
    data, predictions, stakes, features = make_round()
    timings = []
    for _ in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        result = score_eras(
            predictions,
            data,
            stakes=stakes,
            exposure_features=features,
            fnc_features=features[:FNC_FEATURES],
        )
        timings.append(time.perf_counter() - start)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    if result.shape[0] != MODELS:
        raise SystemExit(f"expected {MODELS} rows of scores, got {result.shape[0]}")

    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(machine())
    print(f"scoring {MODELS} models x {ROWS} rows x {FEATURES} features (FNC on {FNC_FEATURES})")
    print(f"seconds per round: best {min(timings):.2f}, median {np.median(timings):.2f}")
    print(f"peak traced memory during scoring: {peak / 1024**3:.2f} GB")
    print(f"peak process RSS (data generation included): {rss_gb:.2f} GB")


def compare_numerai_tools(python: str, repeats: int) -> None:
    data, predictions, stakes, features = make_round()
    fnc = features[:FNC_FEATURES]
    meta = stake_weighted_meta_model(predictions, stakes, eras=data["era"])
    ours_s, theirs_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "round.npz"
        np.savez(
            inputs,
            ids=data.index.to_numpy(str),
            eras=data["era"].to_numpy(str),
            target=data["target"].to_numpy(),
            meta_model=meta.loc[data.index].to_numpy(),
            predictions=predictions.loc[data.index].to_numpy(),
            models=predictions.columns.to_numpy(str),
            features=data[fnc].to_numpy(),
            feature_names=np.array(fnc, dtype=str),
        )
        script = Path(tmp) / "numerai_tools_side.py"
        script.write_text(NUMERAI_TOOLS_SIDE)
        for _ in range(repeats):
            start = time.perf_counter()
            ours = score_eras(
                predictions, data, meta_model=meta, exposure_features=[], fnc_features=fnc
            )
            ours_s.append(time.perf_counter() - start)
            run = subprocess.run(
                [python, str(script), str(inputs)], capture_output=True, text=True, check=False
            )
            if run.returncode:
                raise SystemExit(f"numerai-tools side failed:\n{run.stderr}")
            theirs = json.loads(run.stdout)
            theirs_s.append(theirs["seconds"])
    reference = pd.DataFrame(theirs["scores"]).set_index(["era", "model"])
    ours = ours.astype({"era": str}).set_index(["era", "model"]).loc[reference.index]
    gaps = {name: float((ours[name] - reference[name]).abs().max()) for name in METRICS}
    print(machine())
    print(
        f"CORR + MMC + FNC on {FNC_FEATURES} features, {MODELS} models x {ROWS} rows, "
        f"best of {repeats}"
    )
    print(f"fhe_toolkit.scoring.score_eras: {min(ours_s):.2f} s (all: {_list(ours_s)})")
    print(f"numerai-tools {theirs['version']}: {min(theirs_s):.2f} s (all: {_list(theirs_s)})")
    print(f"speed-up: {min(theirs_s) / min(ours_s):.1f}x")
    print("largest difference: " + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()))
    if max(gaps.values()) > TOLERANCE:
        raise SystemExit(f"answers differ by more than {TOLERANCE}: {gaps}")


def machine() -> str:
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def _list(seconds: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compare-numerai-tools",
        metavar="PYTHON",
        help="interpreter with numerai-tools 0.7.2: time CORR + MMC + FNC against it",
    )
    args = parser.parse_args()
    if args.compare_numerai_tools:
        compare_numerai_tools(args.compare_numerai_tools, args.repeats)
    else:
        full_workload(args.repeats)


if __name__ == "__main__":
    main()
