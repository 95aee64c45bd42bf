"""Input checks shared by the scoring functions.

They raise :mod:`fhe_toolkit.errors` exceptions that name the argument, what was wrong and the
fix, and never modify what they are given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError, ScoringTypeError

DEFAULT_MAX_FILTERED_INDEX_RATIO = 0.2
"""Share of ids that aligning predictions with targets may drop before scoring refuses."""


def require_frame(obj: object, name: str) -> pd.DataFrame:
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, pd.Series):
        raise ScoringTypeError(
            f"{name} must be a DataFrame with one column per model, but got a Series "
            f"named {obj.name!r}; pass `{name}.to_frame()` instead."
        )
    raise ScoringTypeError(f"{name} must be a pandas DataFrame, but got {type(obj).__name__}.")


def require_series(obj: object, name: str) -> pd.Series:
    if isinstance(obj, pd.Series):
        return obj
    if isinstance(obj, pd.DataFrame):
        raise ScoringTypeError(
            f"{name} must be a Series, but got a DataFrame with columns {list(obj.columns)[:5]}; "
            f"pick one column, e.g. `{name}[{str(obj.columns[0])!r}]`."
            if len(obj.columns)
            else f"{name} must be a Series, but got an empty DataFrame."
        )
    raise ScoringTypeError(f"{name} must be a pandas Series, but got {type(obj).__name__}.")


def require_unique_ids(obj: pd.Series | pd.DataFrame, name: str) -> None:
    if obj.index.is_unique:
        return
    dupes = obj.index[obj.index.duplicated()].unique()
    raise ScoringInputError(
        f"{name} has {len(dupes)} duplicate id(s), e.g. {list(dupes[:5])}; each id must appear "
        f"once. Drop the repeats (e.g. `{name}[~{name}.index.duplicated()]`) or fix the source."
    )


def require_no_nan(obj: pd.Series | pd.DataFrame, name: str) -> None:
    frame = obj.to_frame() if isinstance(obj, pd.Series) else obj
    bad = frame.isna().sum()
    bad = bad[bad > 0]
    if bad.empty:
        return
    where = ", ".join(f"{col!r}: {n} row(s)" for col, n in bad.head(5).items())
    first = frame.index[frame.isna().any(axis=1)][:3].tolist()
    raise ScoringInputError(
        f"{name} contains NaN ({where}; first ids {first}). Every row needs a value: fill them "
        f"(e.g. with the column median) or drop those rows before scoring."
    )


def require_numeric(obj: pd.Series | pd.DataFrame, name: str) -> None:
    frame = obj.to_frame() if isinstance(obj, pd.Series) else obj
    bad = [c for c, dtype in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if bad:
        raise ScoringInputError(
            f"{name} column(s) {bad[:5]} are not numeric (dtype "
            f"{frame[bad[0]].dtype}); convert them with `pd.to_numeric` first."
        )


def check_predictions(predictions: object, name: str = "predictions") -> pd.DataFrame:
    frame = require_frame(predictions, name)
    if frame.shape[1] == 0:
        raise ScoringInputError(f"{name} has no columns; give one column per model.")
    require_unique_ids(frame, name)
    require_numeric(frame, name)
    require_no_nan(frame, name)
    return frame


def check_vector(obj: object, name: str, allow_nan: bool) -> pd.Series:
    series = require_series(obj, name)
    require_unique_ids(series, name)
    require_numeric(series, name)
    if not allow_nan:
        require_no_nan(series, name)
    return series


def aligned_ids(
    named: dict[str, pd.Series | pd.DataFrame],
    max_filtered_ratio: float = DEFAULT_MAX_FILTERED_INDEX_RATIO,
) -> pd.Index:
    """The ids every object has (without NaN), sorted, as numerai-tools' filter_sort_index.

    Refuses when more than ``max_filtered_ratio`` of any object's ids would be dropped, since that
    means the objects were not indexed by the same ids.
    """
    if isinstance(max_filtered_ratio, bool) or not 0.0 <= max_filtered_ratio <= 1.0:
        raise ScoringInputError(
            f"max_filtered_index_ratio must be a share within [0, 1], but got "
            f"{max_filtered_ratio!r}."
        )
    ids: pd.Index | None = None
    for obj in named.values():
        missing = obj.isna().to_numpy()
        kept = obj.index[~missing.any(axis=1)] if missing.ndim == 2 else obj.index[~missing]
        ids = kept if ids is None else ids.intersection(kept)
    if ids is None:
        raise ScoringInputError("nothing to align")
    for name, obj in named.items():
        if len(obj) == 0:
            raise ScoringInputError(f"{name} is empty; there is nothing to score.")
        kept_share = len(ids) / len(obj)
        if kept_share < 1 - max_filtered_ratio:
            others = [n for n in named if n != name]
            raise ScoringInputError(
                f"only {len(ids)} of the {len(obj)} ids in {name} are also in {others} with a "
                f"value (not NaN); at most {max_filtered_ratio:.0%} may be dropped. Index every "
                f"input by the same `id` (e.g. `df.set_index('id')`), or raise "
                f"max_filtered_index_ratio if the gap is expected."
            )
    return ids.sort_values()


def era_rows(ids: pd.Index, eras: object) -> list[tuple[object, np.ndarray]]:
    """Each era's label and the positions of its rows in ``ids`` (ascending), eras sorted.

    ``eras`` is a Series of era labels by id covering ``ids``, or None for one era of all rows
    (labelled None).
    """
    if eras is None:
        return [(None, np.arange(len(ids)))]
    labels_by_id = require_series(eras, "eras")
    require_unique_ids(labels_by_id, "eras")
    missing = ids.difference(labels_by_id.index)
    if len(missing):
        raise ScoringInputError(
            f"{len(missing)} id(s) have no era, e.g. {list(missing[:3])}; pass the era of every "
            f"row (e.g. `data['era']`)."
        )
    labels = labels_by_id.reindex(ids)
    require_no_nan(labels, "eras")
    codes, uniques = pd.factorize(labels, sort=True)
    order = np.argsort(codes, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    return [(uniques[codes[rows[0]]], rows) for rows in groups if len(rows)]


def nan_if_constant(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Scores of columns that hold one value are undefined: report them as NaN."""
    constant = np.all(values == values[:1], axis=0) if len(values) else np.ones(0, bool)
    return np.where(constant, np.nan, scores)
