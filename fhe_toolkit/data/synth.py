"""A seeded generator of Numerai-shaped tournament data with planted signal.

Each era is drawn from its own random stream (seed, era), so the data do not depend on how they
are chunked, and files are written era by era: real-scale sizes never sit whole in memory.

What is planted, per era:

- features in groups: each feature loads on its group's latent factor, then is cut into five
  equal bins (int8 0..4) within the era, as Numerai's are;
- a linear signal on some features, a non-linear one (``x²``), and interactions (``x·y``);
- features whose effect flips sign between regimes (runs of eras), so that a model exposed to
  them does well in one regime and badly in the next: feature exposure matters;
- an era-level signal strength, so that per-era scores vary as real ones do;
- targets: ``target`` (the main 20-day one), ``target_resid`` (residualized against the group
  factors) and ``target_60d`` (longer horizon: noisier, the regime features weigh more), bucketed
  0/.25/.5/.75/1 in Numerai's 5/20/50/20/5 % shares. Auxiliary targets have some NaN, and
  ``target_60d`` is unresolved (NaN) in the last eras before live.

Regimes are public to whoever runs the generator (not to the participants it stands in for):
:func:`era_regimes` returns each era's regime (+1 or -1), and ``SynthConfig(regime_column=True)``
also writes it as a ``regime`` column (int8) beside ``era``, for studies such as the incentive
lab's. It is neither a feature nor a target, so loaders and validators ignore it.

Splits: train eras, an embargo gap, validation eras, another gap, live eras. Live targets go to a
separate file (``live_targets.parquet``) that only the fund keeps. With more than one live era,
each is also written on its own, one round's worth: ``live/era_<era>.parquet``, with its targets
in ``live_targets/era_<era>.parquet`` (named as ``fhe-toolkit data split`` names them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fhe_toolkit.data.io import FEATURES_JSON, FeatureMetadata
from fhe_toolkit.data.schema import DATA_TYPE, ERA, ID, MAIN_TARGET
from fhe_toolkit.data.split import era_file_name
from fhe_toolkit.errors import DataValidationError

GROUP_NAMES = (
    "intelligence", "charisma", "strength", "dexterity", "constitution",
    "wisdom", "agility", "serenity", "sunshine", "rain",
)  # fmt: skip
TARGET_SHARES = (0.05, 0.20, 0.50, 0.20, 0.05)
AUX_NAN_SHARE = 0.02
UNRESOLVED_60D_ERAS = 3
SMALL_SHARE, MEDIUM_SHARE = 42 / 2748, 780 / 2748  # Numerai v5's set sizes
SPLIT_FILES = {"train": "train.parquet", "validation": "validation.parquet", "live": "live.parquet"}
LIVE_TARGETS_FILE = "live_targets.parquet"
PER_ERA_DIRS = {"live_eras": "live", "live_era_targets": "live_targets"}
"""Where each live era and its targets go on their own, when there is more than one live era."""
REGIME = "regime"
"""Name of the optional regime column (``SynthConfig.regime_column``)."""


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and knobs of a synthetic tournament. Defaults make a small, quick data set."""

    train_eras: int = 80
    validation_eras: int = 20
    live_eras: int = 1
    embargo_eras: int = 4
    rows_per_era: int = 400
    n_features: int = 60
    n_groups: int = 6
    noise: float = 4.0
    """Noise standard deviation against a signal of standard deviation 1."""
    regime_length: float = 12.0
    """Mean number of eras a sign regime lasts."""
    seed: int = 0
    targets: tuple[str, ...] = field(default=(MAIN_TARGET, "target_resid", "target_60d"))
    regime_column: bool = False
    """Also write each era's regime (+1 / -1, see :func:`era_regimes`) as a ``regime`` column."""

    def __post_init__(self) -> None:
        checks = {
            "train_eras": self.train_eras >= 1,
            "validation_eras": self.validation_eras >= 0,
            "live_eras": self.live_eras >= 0,
            "embargo_eras": self.embargo_eras >= 0,
            "rows_per_era": self.rows_per_era >= 10,
            "n_features": self.n_features >= 5,
            "n_groups": 1 <= self.n_groups <= min(len(GROUP_NAMES), self.n_features),
            "noise": self.noise >= 0,
            "regime_length": self.regime_length >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise DataValidationError(
                f"invalid synthetic data settings {bad}: need train_eras ≥ 1, rows_per_era ≥ 10, "
                f"n_features ≥ 5, 1 ≤ n_groups ≤ min({len(GROUP_NAMES)}, n_features), "
                "non-negative counts and noise, regime_length ≥ 1."
            )

    def era_splits(self) -> list[tuple[int, str]]:
        """(era number, split) for every era written; embargo eras are skipped."""
        eras = [(e, "train") for e in range(1, self.train_eras + 1)]
        start = self.train_eras + self.embargo_eras + 1
        eras += [(start + i, "validation") for i in range(self.validation_eras)]
        start += self.validation_eras + self.embargo_eras
        eras += [(start + i, "live") for i in range(self.live_eras)]
        return eras


@dataclass(frozen=True)
class _Structure:
    """What stays fixed across eras: feature names, groups, loadings and planted effects."""

    names: list[str]
    group: np.ndarray
    loading: np.ndarray
    linear: dict[int, float]
    square: dict[int, float]
    pairs: dict[tuple[int, int], float]
    flips: dict[int, float]
    regime: np.ndarray
    feature_sets: dict[str, list[str]]


def _structure(config: SynthConfig) -> _Structure:
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_features
    group = np.sort(np.arange(n) % config.n_groups)
    names = [f"feature_{GROUP_NAMES[g]}_{i:04d}" for i, g in enumerate(group)]
    order = rng.permutation(n)
    n_linear = max(3, n // 8)
    take = iter(order)
    linear = {int(next(take)): float(rng.normal(0, 1)) for _ in range(n_linear)}
    square = {int(next(take)): float(rng.normal(0, 0.7)) for _ in range(max(1, n // 20))}
    flips = {int(next(take)): float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0))
             for _ in range(max(1, n // 20))}  # fmt: skip
    pairs = {(int(a), int(b)): float(rng.normal(0, 0.7))
             for a, b in rng.choice(n, size=(max(1, n // 20), 2), replace=False)}  # fmt: skip
    loading = rng.uniform(0.3, 0.8, size=n)
    regime = _regime_array(config)

    planted = list(dict.fromkeys([*linear, *square, *flips, *(i for pair in pairs for i in pair)]))
    unplanted = [int(i) for i in order if i not in set(planted)]
    n_small = max(5, round(n * SMALL_SHARE))
    n_medium = max(n_small, round(n * MEDIUM_SHARE))
    sets = {
        "small": _mix(planted, unplanted, n_small, names),
        "medium": _mix(planted, unplanted, n_medium, names),
        "all": list(names),
    }
    for g in range(config.n_groups):
        sets[GROUP_NAMES[g]] = [names[i] for i in np.flatnonzero(group == g)]
    return _Structure(
        names=names,
        group=group,
        loading=loading,
        linear=linear,
        square=square,
        pairs=pairs,
        flips=flips,
        regime=regime,
        feature_sets=sets,
    )


def _regime_array(config: SynthConfig) -> np.ndarray:
    """+1 / -1 for era numbers 0..last: the sign the regime-flipping features take.

    A stream of its own, so that an era's regime does not depend on how many eras there are:
    each era switches regime with probability ``1 / regime_length``.
    """
    last_era = config.era_splits()[-1][0]
    switches = np.random.default_rng([config.seed, 2]).random(last_era + 1)
    return np.where(np.cumsum(switches < 1.0 / config.regime_length) % 2 == 0, 1.0, -1.0)


def era_regimes(config: SynthConfig) -> pd.Series:
    """Each written era's regime: +1 or -1 (int8), indexed by era label (``"0001"``, ...).

    The regime-flipping features push the target one way in +1 eras and the other way in -1
    eras; the same config gives the same regimes as the data it generates (embargo eras, which
    are not written, are left out).
    """
    regime = _regime_array(config)
    eras = [era for era, _ in config.era_splits()]
    return pd.Series(
        regime[eras].astype(np.int8),
        index=pd.Index([f"{era:04d}" for era in eras], name=ERA),
        name=REGIME,
    )


def _mix(planted: list[int], unplanted: list[int], size: int, names: list[str]) -> list[str]:
    """A feature set of ``size`` names, half planted features where there are enough.

    Real feature sets hold both useful and useless features; so must these.
    """
    half = (size + 1) // 2
    chosen = planted[:half] + unplanted[: size - half]
    chosen += planted[half : half + size - len(chosen)]
    return sorted(names[i] for i in chosen)


def _bin_within_era(values: np.ndarray, shares: tuple[float, ...] | None = None) -> np.ndarray:
    """Cut each column into buckets by rank: five equal bins, or the given shares."""
    ranks = np.argsort(np.argsort(values, axis=0, kind="stable"), axis=0) / len(values)
    if shares is None:
        return np.minimum((ranks * 5).astype(np.int8), 4)
    edges = np.cumsum(shares)[:-1]
    return np.searchsorted(edges, ranks, side="right").astype(np.int8)


def _standardize(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


def _era_frame(config: SynthConfig, s: _Structure, era: int, split: str) -> pd.DataFrame:
    rng = np.random.default_rng([config.seed, 1, era])
    rows = config.rows_per_era
    factors = rng.normal(size=(rows, config.n_groups))
    noise = rng.normal(size=(rows, config.n_features))
    latent = factors[:, s.group] * s.loading + noise * np.sqrt(1 - s.loading**2)
    binned = _bin_within_era(latent)
    x = (binned.astype(np.float64) - 2.0) / 2.0

    def effect(flip_weight: float) -> np.ndarray:
        total = sum(w * x[:, j] for j, w in s.linear.items())
        total = total + sum(w * (x[:, j] ** 2 - np.mean(x[:, j] ** 2)) for j, w in s.square.items())
        total = total + sum(w * x[:, a] * x[:, b] for (a, b), w in s.pairs.items())
        total = total + sum(flip_weight * w * s.regime[era] * x[:, j] for j, w in s.flips.items())
        return _standardize(np.asarray(total))

    strength = rng.uniform(0.4, 1.6)
    main = strength * effect(1.0) + config.noise * rng.normal(size=rows)
    long = strength * effect(2.0) + 1.5 * config.noise * rng.normal(size=rows)
    resid = main - factors @ np.linalg.lstsq(factors, main, rcond=None)[0]
    raw = {"target": main, "target_resid": resid, "target_60d": long}

    ids = [f"n{era:04x}{(r * 2654435761 + era * 40503) % 16**9:09x}" for r in range(rows)]
    frame = pd.DataFrame(binned, columns=s.names, index=pd.Index(ids, name=ID))
    frame.insert(0, ERA, f"{era:04d}")
    frame.insert(1, DATA_TYPE, split)
    if config.regime_column:
        frame.insert(2, REGIME, np.int8(s.regime[era]))
    last_era = config.era_splits()[-1][0]
    for name in config.targets:
        values = _bin_within_era(raw[name][:, None], TARGET_SHARES)[:, 0] / 4.0
        if name != MAIN_TARGET:
            values = np.where(rng.random(rows) < AUX_NAN_SHARE, np.nan, values)
        if name == "target_60d" and split != "live" and era > last_era - UNRESOLVED_60D_ERAS - 1:
            values = np.full(rows, np.nan)
        frame[name] = values.astype(np.float32)
    return frame


def iter_eras(config: SynthConfig) -> Iterator[pd.DataFrame]:
    """Yield the tournament era by era (train, validation, then live), targets included."""
    structure = _structure(config)
    for era, split in config.era_splits():
        yield _era_frame(config, structure, era, split)


def make_tournament(config: SynthConfig | None = None) -> tuple[pd.DataFrame, FeatureMetadata]:
    """The whole synthetic tournament in memory (for small sizes), with its feature metadata."""
    config = config or SynthConfig()
    frame = pd.concat(list(iter_eras(config)))
    return frame, feature_metadata(config)


def feature_metadata(config: SynthConfig) -> FeatureMetadata:
    return FeatureMetadata(
        feature_sets=_structure(config).feature_sets, targets=list(config.targets)
    )


def synthesize(
    out_dir: str | Path,
    config: SynthConfig | None = None,
    on_era: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Write ``train/validation/live.parquet``, ``live_targets.parquet`` and ``features.json``;
    with more than one live era, also each live era and its targets in a file of its own
    (``live/era_0095.parquet``, ``live_targets/era_0095.parquet``, ...: see ``PER_ERA_DIRS``).

    Files are written one era at a time. ``on_era(done, total)`` is called after each era, for
    progress. Returns the written paths by name (the per-era folders as ``live_eras`` and
    ``live_era_targets``).
    """
    config = config or SynthConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(config.era_splits())
    paths = {split: out / name for split, name in SPLIT_FILES.items()}
    paths["live_targets"] = out / LIVE_TARGETS_FILE
    per_era = config.live_eras > 1
    if per_era:
        for name, folder in PER_ERA_DIRS.items():
            paths[name] = out / folder
            paths[name].mkdir(exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for done, frame in enumerate(iter_eras(config), start=1):
            split = str(frame[DATA_TYPE].iloc[0])
            if split == "live":
                targets = frame[list(config.targets)]
                _write(writers, "live_targets", paths, targets)
                frame = frame.assign(**dict.fromkeys(config.targets, np.float32(np.nan)))
                if per_era:
                    file = era_file_name(str(frame[ERA].iloc[0]))
                    pq.write_table(_table(frame), paths["live_eras"] / file)
                    pq.write_table(_table(targets), paths["live_era_targets"] / file)
            _write(writers, split, paths, frame)
            if on_era is not None:
                on_era(done, total)
    finally:
        for writer in writers.values():
            writer.close()
    paths["features"] = out / FEATURES_JSON
    paths["features"].write_text(json.dumps(feature_metadata(config).to_json(), indent=1))
    paths["config"] = out / "synth_config.json"
    paths["config"].write_text(json.dumps(asdict(config), indent=1))
    return {name: path for name, path in paths.items() if path.exists()}


def _write(
    writers: dict[str, pq.ParquetWriter], name: str, paths: dict[str, Path], frame: pd.DataFrame
) -> None:
    table = _table(frame)
    if name not in writers:
        writers[name] = pq.ParquetWriter(paths[name], table.schema)
    writers[name].write_table(table)


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=True)
