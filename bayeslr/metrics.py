r"""Metrics shared by the models, the benchmarks and the examples.

* :func:`nmse` — normalised mean squared error :math:`\|\hat x - x\|^2 / \|x\|^2`;
* :func:`support_recovery_rate` — Jaccard index of estimated and true supports.

Plain NumPy on concrete arrays (results, not traced values).
"""

from __future__ import annotations

import numpy as np

__all__ = ["nmse", "support_recovery_rate"]


def nmse(x_hat, x) -> float:
    r"""Normalised mean squared error :math:`\|\hat x - x\|^2 / \|x\|^2` (real or complex)."""
    x_hat, x = np.asarray(x_hat), np.asarray(x)
    if x_hat.shape != x.shape:
        raise ValueError(f"`x_hat` has shape {x_hat.shape} but `x` has shape {x.shape}.")
    den = float(np.sum(np.abs(x) ** 2))
    if den == 0:
        raise ValueError("`x` is all zeros: the NMSE is undefined.")
    return float(np.sum(np.abs(x_hat - x) ** 2) / den)


def support_recovery_rate(s_hat, s) -> float:
    r"""Support recovery rate :math:`|\hat S \cap S| / |\hat S \cup S|` (Jaccard index).

    Args:
        s_hat, s: boolean masks of one shape (estimated and true support).

    Returns:
        A value in [0, 1]; 1 when both supports are empty.
    """
    s_hat, s = np.asarray(s_hat, bool), np.asarray(s, bool)
    if s_hat.shape != s.shape:
        raise ValueError(f"`s_hat` has shape {s_hat.shape} but `s` has shape {s.shape}.")
    union = int(np.sum(s_hat | s))
    return 1.0 if union == 0 else float(np.sum(s_hat & s) / union)
