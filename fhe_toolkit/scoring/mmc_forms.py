"""Three formulations of meta model contribution, kept side by side as a check on each other.

Each takes raw, aligned 1-D inputs, like the other scoring functions: ``p`` (one model's
predictions), ``m`` (the meta model) and ``y`` (the targets), as NumPy arrays or as Series on one
shared index. Each prepares them the way MMC does before its own formula:

1. tie-kept rank and gaussianize ``p`` and ``m``
   (:func:`~fhe_toolkit.scoring.transforms.rank_gaussian_array`);
2. scale ``y`` by 4 when it lies in [0, 1], then centre it
   (:func:`~fhe_toolkit.scoring.metrics.contribution_targets`).

The three then agree up to a positive per-era scale, so across many cases they correlate at ≈ 1.
On the same inputs, :func:`mmc_pseudo_inverse` and ``mmc_closed_form / n`` equal the production
score, :func:`~fhe_toolkit.scoring.metrics.correlation_contribution`.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import pandas as pd

from fhe_toolkit.errors import ScoringInputError, ScoringTypeError
from fhe_toolkit.scoring.metrics import contribution_targets
from fhe_toolkit.scoring.transforms import rank_gaussian_array

Vector: TypeAlias = np.ndarray | pd.Series


def mmc_finite_difference(p: Vector, m: Vector, y: Vector, eps: float = 1e-6) -> float:
    """``(corr((1 - ε)·m + ε·p, y) - corr(m, y)) / ε``: the gain from moving the meta model to p."""
    gp, gm, target = prepare_mmc_inputs(p, m, y)
    return (_pearson((1 - eps) * gm + eps * gp, target) - _pearson(gm, target)) / eps


def mmc_closed_form(p: Vector, m: Vector, y: Vector) -> float:
    """``yᵀ (p - m (pᵀm)/(mᵀm))``: the targets against p orthogonalized to m."""
    gp, gm, target = prepare_mmc_inputs(p, m, y)
    return float(target @ (gp - gm * (gp @ gm) / (gm @ gm)))


def mmc_pseudo_inverse(p: Vector, m: Vector, y: Vector) -> float:
    """``cov(y, p - m (m⁺ p))``: the covariance of y with p's least-squares residual on m."""
    gp, gm, target = prepare_mmc_inputs(p, m, y)
    residual = gp - gm * (np.linalg.pinv(gm[:, None]) @ gp)[0]
    return float(np.cov(target, residual, ddof=0)[0, 1])


def prepare_mmc_inputs(
    p: Vector, m: Vector, y: Vector
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the three inputs and prepare them as MMC does (steps 1 and 2 of the module's doc)."""
    named = {"p": p, "m": m, "y": y}
    series = {name: value for name, value in named.items() if isinstance(value, pd.Series)}
    if series and len(series) < len(named):
        raise ScoringTypeError(
            f"{sorted(series)} are Series but {sorted(set(named) - set(series))} are not; pass "
            f"all three as Series on one index, or all as arrays in the same row order."
        )
    first = next(iter(series.values()), None)
    for name, value in series.items():
        if first is not None and not value.index.equals(first.index):
            raise ScoringInputError(
                f"{name}'s index differs from p's; align the three Series on one index first "
                f"(e.g. `{name}.loc[p.index]`)."
            )
    arrays = []
    for name, value in named.items():
        array: np.ndarray = np.asarray(value)
        if array.ndim != 1 or array.dtype.kind not in "biuf":
            raise ScoringTypeError(
                f"{name} must be 1-D numbers, but got shape {array.shape} of {array.dtype}."
            )
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ScoringInputError(f"{name} holds NaN or infinite values; drop those rows.")
        arrays.append(array)
    if len({len(array) for array in arrays}) > 1:
        raise ScoringInputError(
            f"p, m and y must have one value per row, but have {[len(a) for a in arrays]} values."
        )
    ranked = rank_gaussian_array(np.column_stack(arrays[:2]))
    if not np.any(ranked[:, 1]):
        raise ScoringInputError("m holds a single value, so contributions to it are undefined.")
    return ranked[:, 0], ranked[:, 1], contribution_targets(arrays[2])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])
