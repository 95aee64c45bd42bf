"""Column transforms that Numerai scoring is built from.

Each works column by column on a DataFrame and returns a new object; the caller's data is never
changed. The ``*_array`` variants take and return NumPy arrays (rows × columns) for the vectorized
scoring paths, so that each transform is written once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from fhe_toolkit.scoring._checks import require_frame

SMALL_INTEGER_LEVELS = 64
"""Integer columns spanning fewer values than this are ranked by counting, not sorting."""


def tie_kept_rank_array(values: np.ndarray) -> np.ndarray:
    """Percentile rank of each column, ties sharing their average rank: ``(rank - 0.5) / count``.

    NaN stays NaN and is left out of ``count``.
    """
    values = np.asarray(values)
    if (
        values.dtype.kind in "iub"
        and values.size
        and int(values.max()) - int(values.min()) < SMALL_INTEGER_LEVELS
    ):
        return _rank_small_integers(values)
    values = values.astype(np.float64, copy=False)
    has_nan = bool(np.isnan(values).any())
    ranks = stats.rankdata(values, axis=0, nan_policy="omit" if has_nan else "propagate")
    count = np.sum(~np.isnan(values), axis=0) if has_nan else len(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks - 0.5) / count


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
    """Inverse normal CDF of values in (0, 1): ranks become standard-normal scores."""
    return stats.norm.ppf(values)


def rank_gaussian_array(values: np.ndarray) -> np.ndarray:
    """Tie-kept rank, then gaussianize: the form predictions take in CORR, MMC, the meta model."""
    return gaussian_array(tie_kept_rank_array(values))


def power_array(values: np.ndarray, p: float) -> np.ndarray:
    """``sign(x) · |x| ** p``: stretches the tails while keeping the order."""
    return np.sign(values) * np.abs(values) ** p


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
