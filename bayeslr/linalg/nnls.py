r"""Non-negative least squares, jittable (Lawson–Hanson active set with static shapes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

__all__ = ["nnls"]

_HI = jax.lax.Precision.HIGHEST


def nnls(c: ArrayLike, t: ArrayLike, max_iter: int | None = None) -> Array:
    r"""Non-negative least squares :math:`\arg\min_{g \ge 0} \|C g - t\|^2`, jittable.

    Lawson–Hanson active-set method with static shapes: the passive set :math:`P` is a boolean
    mask and each least-squares solve on :math:`P` is a full-size solve of the masked normal
    equations (:math:`Q_{PP}` in the :math:`P` block, identity elsewhere, :math:`Q = C^TC`).
    Each outer step moves the coordinate with the largest positive gradient
    :math:`w = C^T(t - Cg)` into :math:`P`; inner steps walk back along the segment to the
    first coordinate that would turn negative and drop it, until the solve on :math:`P` is
    positive. Stops at the KKT point (:math:`w_k \le \text{tol}` off :math:`P`) or after
    ``max_iter`` outer steps (default :math:`3n`, as SciPy). For the small factor sizes of
    PC-KroSBL (:math:`n = N_i`) this is exact to round-off, where projected gradient would need
    many iterations on the ill-conditioned :math:`C_\beta` (:math:`\beta \to 1`).

    Args:
        c: ``(m, n)`` matrix :math:`C`.
        t: ``(m,)`` target.
        max_iter: maximum outer (add-a-coordinate) steps; ``None`` gives ``3 n``.

    Returns:
        ``(n,)`` solution :math:`g \ge 0`. Cost :math:`O(n^3)` per inner step, at most
        ``max_iter`` outer and :math:`n` inner steps per outer step.
    """
    c = jnp.asarray(c)
    t = jnp.asarray(t, c.dtype)
    n = c.shape[1]
    max_iter = 3 * n if max_iter is None else int(max_iter)
    q = jnp.matmul(c.T, c, precision=_HI)
    b = jnp.matmul(c.T, t, precision=_HI)
    eye = jnp.eye(n, dtype=c.dtype)
    tol = (
        10.0
        * max(c.shape)
        * jnp.finfo(c.dtype).eps
        * jnp.maximum(jnp.max(jnp.abs(b)), jnp.finfo(c.dtype).tiny)
    )

    def solve_on(p):
        qm = jnp.where(p[:, None] & p[None, :], q, eye)
        return jnp.where(p, jnp.linalg.solve(qm, jnp.where(p, b, 0.0)), 0.0)

    def inner_cond(state):
        _, p, s, k = state
        return jnp.any(p & (s <= 0)) & (k < n)

    def inner_body(state):
        x, p, s, k = state
        neg = p & (s <= 0)
        gap = x - s
        ratio = jnp.where(neg, x / jnp.where(gap > 0, gap, 1.0), jnp.inf)
        ratio = jnp.where(neg & (gap <= 0), 0.0, ratio)
        j = jnp.argmin(ratio)
        x = x + ratio[j] * (s - x)
        p = p & (x > 0)
        p = p.at[j].set(False)
        x = jnp.where(p, x, 0.0)
        return x, p, solve_on(p), k + 1

    def outer_cond(state):
        it, _, _, done = state
        return (it < max_iter) & ~done

    def outer_body(state):
        it, x, p, _ = state
        w = b - jnp.matmul(q, x, precision=_HI)
        cand = jnp.where(p, -jnp.inf, w)
        j = jnp.argmax(cand)
        done = cand[j] <= tol
        p_new = p.at[j].set(True)
        x_new, p_new, s, _ = jax.lax.while_loop(
            inner_cond, inner_body, (x, p_new, solve_on(p_new), jnp.asarray(0))
        )
        x_new = jnp.where(p_new, s, 0.0)
        x = jnp.where(done, x, x_new)
        p = jnp.where(done, p, p_new)
        return it + 1, x, p, done

    init = (jnp.asarray(0), jnp.zeros(n, c.dtype), jnp.zeros(n, bool), jnp.asarray(False))
    return jax.lax.while_loop(outer_cond, outer_body, init)[1]
