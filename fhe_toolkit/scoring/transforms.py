"""Column transforms that Numerai scoring is built from.

Each works column by column on a DataFrame and returns a new object; the caller's data is never
changed. The ``*_array`` variants take and return NumPy arrays (rows × columns) for the vectorized
scoring paths, so that each transform is written once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from fhe_toolkit.errors import ScoringInputError, ScoringTypeError
from fhe_toolkit.scoring._checks import require_frame

SMALL_INTEGER_LEVELS = 64
"""Integer columns spanning fewer values than this are ranked by counting, not sorting."""


def tie_kept_rank_array(values: np.ndarray) -> np.ndarray:
    """Percentile rank of each column, ties sharing their average rank: ``(rank - 0.5) / count``.

    NaN stays NaN and is left out of ``count``. Equal, value for value, to pandas'
    ``rank(method="average")`` that numerai-tools uses. All columns are ranked at once:

    1. sort every column with one ``argsort`` over the 2-D array (NaN sorts last);
    2. a value's rank is its 1-based position in its sorted column;
    3. in the columns that hold ties, each run of equal values gets the mean of its first and
       last positions (found with cumulative max / min over the run starts and ends);
    4. scatter the ranks back to the original rows, then ``(rank - 0.5) / count``.
    """
    values = np.asarray(values)
    if (
        values.dtype.kind in "iub"
        and values.size
        and int(values.max()) - int(values.min()) < SMALL_INTEGER_LEVELS
    ):
        return _rank_small_integers(values)
    # One row per column of ``values``, contiguous, so each sort runs over adjacent memory.
    columns = np.array(np.atleast_2d(values.T), dtype=np.float64, order="C")
    n = columns.shape[1]
    order = np.argsort(columns, axis=1)
    ordered = np.take_along_axis(columns, order, axis=1)
    position = np.arange(1, n + 1, dtype=np.float64)
    starts = np.ones(ordered.shape, dtype=bool)
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=starts[:, 1:])
    ranks_in_order = np.repeat(position[None, :], len(columns), axis=0)
    tied = ~starts.all(axis=1)
    if tied.any():
        ranks_in_order[tied] = _average_tied_positions(starts[tied], position)
    ranks = np.empty_like(columns)
    np.put_along_axis(ranks, order, ranks_in_order, axis=1)
    missing = np.isnan(columns)
    count = n - missing.sum(axis=1, keepdims=True)
    ranks[missing] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        percentile = (ranks - 0.5) / count
    return percentile.T.reshape(values.shape)


def _average_tied_positions(starts: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Mean of the first and last 1-based positions of each run of equal sorted values.

    ``starts`` marks where a run begins in each (sorted) row.
    """
    n = starts.shape[1]
    first = np.maximum.accumulate(np.where(starts, position, 0.0), axis=1)
    ends = np.ones(starts.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    last = np.minimum.accumulate(np.where(ends, position, float(n))[:, ::-1], axis=1)[:, ::-1]
    return (first + last) / 2


def _rank_small_integers(values: np.ndarray) -> np.ndarray:
    """Average ranks by counting: a value's rank is the count below it plus half its ties.

    Numerai features take five values, so this is a few passes instead of a sort per column.
    """
    shifted = (values.astype(np.int64) - int(values.min())).astype(np.intp)
    levels = int(shifted.max()) + 1
    counts = np.stack([(shifted == level).sum(axis=0) for level in range(levels)])
    average_rank = np.cumsum(counts, axis=0) - counts + (counts + 1) / 2.0
    ranks = np.take_along_axis(average_rank, shifted, axis=0)
    return (ranks - 0.5) / len(values)


def gaussian_array(values: np.ndarray) -> np.ndarray:
    """Inverse normal CDF (``scipy.special.ndtri``, what ``scipy.stats.norm.ppf`` calls) of
    values in (0, 1): ranks become standard-normal scores."""
    return special.ndtri(values)


def rank_gaussian_array(values: np.ndarray) -> np.ndarray:
    """Tie-kept rank, then gaussianize: the form predictions take in CORR, MMC, the meta model."""
    return gaussian_array(tie_kept_rank_array(values))


def power_array(values: np.ndarray, p: float) -> np.ndarray:
    """``sign(x) · |x| ** p``: stretches the tails while keeping the order."""
    return np.sign(values) * np.abs(values) ** p


def check_top_bottom(top_bottom: object, rows: int) -> int | None:
    """``top_bottom`` as numerai-tools reads it: ``None`` or 0 keeps every row, ``k`` keeps the
    ``k`` lowest and ``k`` highest; refuses anything else, and ``2·k`` above the rows there are."""
    if top_bottom is None:
        return None
    if isinstance(top_bottom, bool) or not isinstance(top_bottom, int | np.integer):
        raise ScoringTypeError(
            f"top_bottom must be None or a whole number of rows, but got {top_bottom!r} "
            f"({type(top_bottom).__name__}); pass max_filtered_index_ratio by keyword."
        )
    if top_bottom < 0:
        raise ScoringInputError(f"top_bottom must be ≥ 0 rows, but got {top_bottom}.")
    if 2 * top_bottom > rows:
        raise ScoringInputError(
            f"top_bottom={top_bottom} keeps {2 * top_bottom} rows (the top and the bottom "
            f"{top_bottom}), but only {rows} are scored here; use at most {rows // 2}."
        )
    return int(top_bottom) or None


def top_bottom_mask(values: np.ndarray, top_bottom: int) -> np.ndarray:
    """Rows kept per column by numerai-tools' ``filter_sort_top_bottom``: the ``top_bottom``
    lowest and highest values of each column, ties taken in row order (a stable sort)."""
    order = np.argsort(values, axis=0, kind="stable")
    mask = np.zeros(values.shape, dtype=bool)
    columns = np.arange(values.shape[1])
    mask[order[:top_bottom], columns] = True
    mask[order[-top_bottom:], columns] = True
    return mask


def tie_kept_rank(df: pd.DataFrame) -> pd.DataFrame:
    """Percentile-rank each column, keeping ties, centred in (0, 1).

    Same values as numerai-tools' ``tie_kept_rank``; the index need not be sorted.
    """
    df = require_frame(df, "df")
    return _like(df, tie_kept_rank_array(df.to_numpy(dtype=np.float64)))


def gaussian(df: pd.DataFrame) -> pd.DataFrame:
    """Gaussianize each column of percentile ranks with the normal inverse CDF."""
    df = require_frame(df, "df")
    return _like(df, gaussian_array(df.to_numpy(dtype=np.float64)))


def power(df: pd.DataFrame, p: float) -> pd.DataFrame:
    """Raise each column to ``p`` keeping its sign (numerai-tools' ``power``)."""
    df = require_frame(df, "df")
    return _like(df, power_array(df.to_numpy(dtype=np.float64), p))


def center(s: pd.Series) -> pd.Series:
    """Subtract the mean (NaN ignored)."""
    return s - s.mean()


def variance_normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Scale each column to standard deviation 1 (ddof 0). Constant columns become NaN."""
    df = require_frame(df, "df")
    values = df.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _like(df, values / np.std(values, axis=0))


def orthogonalize(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Remove from each column of ``v`` its projection on the vector ``u``."""
    return v - np.outer(u, (v.T @ u) / (u.T @ u))


def _like(df: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(values, index=df.index, columns=df.columns)
