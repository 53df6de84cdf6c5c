r"""Toeplitz matrices from their lags (the Gram matrix of a stationary kernel on equally spaced
points)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["toeplitz_from_lags"]


def toeplitz_from_lags(vals: jax.Array) -> jax.Array:
    r"""The :math:`m \times m` Toeplitz matrix ``T[i, k] = vals[i - k + m - 1]`` from its
    :math:`2m - 1` lags ``vals`` (lag :math:`-(m-1)` first), by tiling and reshaping: no gather,
    so the backward pass is a sum over tiles rather than a scatter-add.

    With :math:`w = (v, 0)` of length :math:`2m`, row :math:`i` of the tiled :math:`w` read
    with stride :math:`2m + 1` is :math:`w[(i + c) \bmod 2m]`: the Hankel matrix
    :math:`v[i + c]`, whose column flip is the Toeplitz matrix. Cost :math:`O(m^2)`.

    Args:
        vals: ``(2m - 1,)`` lags.

    Returns:
        ``(m, m)``.
    """
    if vals.ndim != 1 or vals.shape[0] % 2 != 1:
        raise ValueError(f"`vals` must be 1-D of odd length 2m - 1; got shape {vals.shape}.")
    m = (vals.shape[0] + 1) // 2
    w = jnp.concatenate([vals, jnp.zeros((1,), vals.dtype)])
    hankel = jnp.tile(w, m + 1)[: m * (2 * m + 1)].reshape(m, 2 * m + 1)[:, :m]
    return hankel[:, ::-1]
