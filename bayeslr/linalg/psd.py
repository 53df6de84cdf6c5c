r"""Positive (semi)definite matrices: one jitter rule and one guarded Cholesky.

* :func:`default_jitter` — :math:`\sqrt{\epsilon}` of the dtype (:math:`3.5\times10^{-4}` in
  float32, :math:`1.5\times10^{-8}` in float64): the relative diagonal shift that keeps a
  numerically semidefinite matrix factorizable without changing a well-conditioned one beyond
  the dtype's own round-off of a Cholesky. Literal jitters such as ``1e-10`` are below float32's
  resolution and do nothing there.
* :func:`symmetrize` — :math:`\tfrac12(A + A^H)`, removing round-off asymmetry before a
  factorization that reads one triangle.
* :func:`psd_cholesky` — the lower Cholesky factor of :math:`\tfrac12(A + A^H) + \delta I`
  with :math:`\delta = \text{jitter}\cdot\overline{\operatorname{diag} A}` (0 by default).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

__all__ = ["default_jitter", "symmetrize", "psd_cholesky"]


def default_jitter(dtype) -> float:
    r""":math:`\sqrt{\epsilon}` of ``dtype``'s real type (float32: 3.45e-4, float64: 1.49e-8)."""
    return float(np.sqrt(np.finfo(jnp.finfo(dtype).dtype).eps))


def symmetrize(a: ArrayLike) -> Array:
    r""":math:`\tfrac12(A + A^H)` over the last two axes."""
    a = jnp.asarray(a)
    return 0.5 * (a + jnp.conj(jnp.swapaxes(a, -1, -2)))


def psd_cholesky(a: ArrayLike, jitter: float | str | None = None) -> Array:
    r"""Lower Cholesky factor of :math:`\tfrac12(A + A^H) + \delta I` (batched over leading axes).

    Args:
        a: ``(..., n, n)`` Hermitian positive (semi)definite matrices.
        jitter: ``None`` or 0 for none; ``"auto"`` for :func:`default_jitter` of ``a``'s dtype;
            or a float. :math:`\delta` is the jitter times the mean of the diagonal, so the
            shift is relative to the matrix's scale.

    Returns:
        ``(..., n, n)`` lower-triangular :math:`L`; NaN where the matrix is not positive
        definite even after the shift (as ``jnp.linalg.cholesky``).
    """
    s = symmetrize(a)
    if jitter == "auto":
        jitter = default_jitter(s.dtype)
    if jitter:
        n = s.shape[-1]
        scale = jnp.mean(jnp.real(jnp.diagonal(s, axis1=-2, axis2=-1)), axis=-1)
        s = s + (float(jitter) * scale)[..., None, None] * jnp.eye(n, dtype=s.dtype)
    return jnp.linalg.cholesky(s)
