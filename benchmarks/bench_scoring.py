"""Scoring at Numerai scale: 100 models × 6,720 rows × 2,748 features, one era.

CORR, MMC (against the stake-weighted meta model), exposure on all 2,748 features and FNC on a
780-feature set, through ``score_eras``. Target from the issue: ≤ 5 s and ≤ 4 GB peak memory.

    python benchmarks/bench_scoring.py [--repeats 3]

Peak memory is the peak of Python-tracked allocations (NumPy's included) during scoring, and the
process's peak resident size (which also counts making the data).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import tracemalloc

import numpy as np
import pandas as pd

from fhe_toolkit.data import SynthConfig, feature_columns, iter_eras
from fhe_toolkit.scoring import score_eras

ROWS, FEATURES, MODELS, FNC_FEATURES = 6720, 2748, 100, 780


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

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

    timings = []
    for _ in range(args.repeats):
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
    assert result.shape[0] == MODELS

    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"scoring {MODELS} models x {ROWS} rows x {FEATURES} features (FNC on {FNC_FEATURES})")
    print(f"seconds per round: best {min(timings):.2f}, median {np.median(timings):.2f}")
    print(f"peak traced memory during scoring: {peak / 1024**3:.2f} GB")
    print(f"peak process RSS (data generation included): {rss_gb:.2f} GB")


if __name__ == "__main__":
    main()
