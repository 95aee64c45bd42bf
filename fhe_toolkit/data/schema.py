"""The Numerai data format, and a validator whose errors name the column and rows at fault.

Parquet indexed by ``id`` (string); ``era`` (string, e.g. ``"0001"``); ``feature_*`` (int8 bins
0..4); ``target`` and ``target_*`` (0, .25, .5, .75, 1, or NaN where unresolved); optional
``data_type`` (train / validation / live / test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fhe_toolkit.errors import DataValidationError

ID = "id"
ERA = "era"
DATA_TYPE = "data_type"
MAIN_TARGET = "target"
FEATURE_PREFIX = "feature_"
TARGET_PREFIX = "target"
FEATURE_VALUES = (0, 4)
TARGET_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
DATA_TYPES = ("train", "validation", "live", "test")
SHOWN_ROWS = 5


def feature_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if str(c).startswith(FEATURE_PREFIX)]


def target_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c == MAIN_TARGET or str(c).startswith(TARGET_PREFIX + "_")]


def validate_tournament(
    df: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    source: str = "data",
) -> None:
    """Raise :class:`DataValidationError` listing every way ``df`` departs from the format.

    ``features`` / ``targets`` default to the ``feature_*`` / ``target*`` columns present. The
    frame is only read, never modified.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"{source} must be a pandas DataFrame, got {type(df).__name__}.")
    features = feature_columns(list(df.columns)) if features is None else list(features)
    targets = target_columns(list(df.columns)) if targets is None else list(targets)
    if df.empty:
        raise DataValidationError(
            f"{source} has no rows: there is nothing to train on, encrypt or score. Check that "
            "the file is the one meant (an export cut short, or a filter that kept nothing)."
        )
    problems = [
        *_index_problems(df),
        *_era_problems(df),
        *_column_presence_problems(df, features, targets),
        *_feature_problems(df, [f for f in features if f in df.columns]),
        *_target_problems(df, [t for t in targets if t in df.columns]),
        *_data_type_problems(df),
    ]
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise DataValidationError(
            f"{source} does not follow the Numerai format ({len(problems)} problem(s)):\n{listing}"
        )


def _rows(df: pd.DataFrame, mask: pd.Series | np.ndarray, column: str | None = None) -> str:
    """The first few offending ids (with their values), for error messages."""
    hits = df.loc[mask]
    shown = [
        f"{idx!r}" + ("" if column is None else f" ({hits.at[idx, column]!r})")
        for idx in hits.index[:SHOWN_ROWS]
    ]
    more = f" and {len(hits) - SHOWN_ROWS} more" if len(hits) > SHOWN_ROWS else ""
    return f"{len(hits)} row(s): " + ", ".join(shown) + more


def _index_problems(df: pd.DataFrame) -> list[str]:
    problems = []
    if df.index.name != ID:
        problems.append(
            f"the index is {df.index.name!r}, expected {ID!r}: use `df.set_index('id')` "
            "(or name the index 'id')."
        )
    if df.index.hasnans:
        problems.append(f"the id index has missing values in {int(df.index.isna().sum())} row(s).")
    dupes = df.index[df.index.duplicated()].unique()
    if len(dupes):
        problems.append(
            f"{len(dupes)} duplicate id(s), e.g. {list(dupes[:SHOWN_ROWS])}: each id must appear "
            "once; drop or re-key the repeats."
        )
    return problems


def _era_problems(df: pd.DataFrame) -> list[str]:
    if ERA not in df.columns:
        return [f"missing column {ERA!r}: every row needs its era (e.g. '0001')."]
    era = df[ERA]
    problems = []
    if era.isna().any():
        problems.append(f"column 'era' is empty in {_rows(df, era.isna())}.")
    if pd.api.types.is_numeric_dtype(era):
        problems.append(
            "column 'era' is numeric; eras are zero-padded strings. Fix: "
            "`df['era'] = df['era'].astype(int).map('{:04d}'.format)`."
        )
    return problems


def _column_presence_problems(
    df: pd.DataFrame, features: Sequence[str], targets: Sequence[str]
) -> list[str]:
    problems = []
    if not features:
        problems.append("no feature columns: expected columns named 'feature_*'.")
    absent = [c for c in [*features, *targets] if c not in df.columns]
    if absent:
        problems.append(
            f"missing column(s) {absent[:SHOWN_ROWS]} named by the feature/target list."
        )
    return problems


def _feature_problems(df: pd.DataFrame, features: Sequence[str]) -> list[str]:
    problems = []
    low, high = FEATURE_VALUES
    non_integer = [c for c in features if not pd.api.types.is_integer_dtype(df[c])]
    for column in non_integer[:SHOWN_ROWS]:
        values = df[column]
        if pd.api.types.is_numeric_dtype(values):
            bad = values.isna() | (values != np.round(values))
            detail = _rows(df, bad, column) if bad.any() else "no row (only the dtype is wrong)"
        else:
            detail = "non-numeric values"
        problems.append(
            f"feature {column!r} is {values.dtype}, not integer ({detail}); features are bins "
            f"{low}..{high} stored as int8: `df[col] = df[col].astype('int8')` once they are."
        )
    if len(non_integer) > SHOWN_ROWS:
        problems.append(f"... and {len(non_integer) - SHOWN_ROWS} more non-integer features.")
    integer = [c for c in features if c not in set(non_integer)]
    if integer:
        block = df[integer]
        out_of_range = block.columns[(block.min() < low) | (block.max() > high)]
        for column in out_of_range[:SHOWN_ROWS]:
            bad = (df[column] < low) | (df[column] > high)
            problems.append(
                f"feature {column!r} has values outside {low}..{high} in {_rows(df, bad, column)}; "
                f"re-bin it into five equal bins per era (`pd.qcut(x, 5, labels=False)`)."
            )
        if len(out_of_range) > SHOWN_ROWS:
            problems.append(f"... and {len(out_of_range) - SHOWN_ROWS} more out-of-range features.")
    return problems


def _target_problems(df: pd.DataFrame, targets: Sequence[str]) -> list[str]:
    problems = []
    for column in targets:
        values = df[column]
        if not pd.api.types.is_numeric_dtype(values):
            problems.append(f"target {column!r} is {values.dtype}, not numeric.")
            continue
        allowed = np.isclose(values.to_numpy(np.float64)[:, None], TARGET_VALUES, atol=1e-6)
        bad = values.notna() & ~allowed.any(axis=1)
        if bad.any():
            problems.append(
                f"target {column!r} has values outside the buckets {list(TARGET_VALUES)} in "
                f"{_rows(df, bad, column)}; targets are 0, .25, .5, .75, 1 (NaN if unresolved)."
            )
    return problems


def _data_type_problems(df: pd.DataFrame) -> list[str]:
    if DATA_TYPE not in df.columns:
        return []
    bad = ~df[DATA_TYPE].isin(DATA_TYPES)
    if not bad.any():
        return []
    return [
        f"column 'data_type' must be one of {list(DATA_TYPES)}, but has other values in "
        f"{_rows(df, bad, DATA_TYPE)}."
    ]
