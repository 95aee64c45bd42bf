"""Three formulations of meta model contribution, kept side by side as a check on each other.

All take 1-D arrays already aligned: ``p`` (one model's predictions), ``m`` (the meta model) and
``y`` (centred targets). Once ``p`` and ``m`` are rank-gaussianized
(:func:`~fhe_toolkit.scoring.transforms.rank_gaussian_array`), the three agree up to a positive
per-era scale, so across many cases they correlate at ≈ 1. The production score is
:func:`~fhe_toolkit.scoring.metrics.correlation_contribution`, which is the closed form over n.
"""

from __future__ import annotations

import numpy as np


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def mmc_finite_difference(p: np.ndarray, m: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> float:
    """``(corr((1 - ε)·m + ε·p, y) - corr(m, y)) / ε``: the gain from moving the meta model to p."""
    return (_pearson((1 - eps) * m + eps * p, y) - _pearson(m, y)) / eps


def mmc_closed_form(p: np.ndarray, m: np.ndarray, y: np.ndarray) -> float:
    """``yᵀ (p - m (pᵀm)/(mᵀm))``: the targets against p orthogonalized to m."""
    return float(y @ (p - m * (p @ m) / (m @ m)))


def mmc_pseudo_inverse(p: np.ndarray, m: np.ndarray, y: np.ndarray) -> float:
    """``cov(y, p - m (m⁺ p))``: the covariance of y with p's least-squares residual on m."""
    residual = p - m * (np.linalg.pinv(m[:, None]) @ p)[0]
    return float(np.cov(y, residual, ddof=0)[0, 1])
