r"""Conjugate gradients with a choice of preconditioner made on the problem itself."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["cg_probe"]


def cg_probe(matvec: Callable, b: jax.Array, precond: Callable, maxiter: int, *,
             probe: int = 5, tol: float = 1e-12) -> jax.Array:  # fmt: skip
    r"""CG on :math:`Ax = b` from zero (``matvec(x)`` :math:`= Ax`, :math:`A` SPD): ``probe``
    iterations with the preconditioner ``precond`` and ``probe`` without, then the remaining
    ``maxiter - probe`` from the iterate with the smaller residual :math:`\|b - Ax\|`, under
    its own choice.

    Use it where a structured preconditioner is exact on some problems and useless on others
    (GP-HM's Kronecker preconditioner for odd-order operators). Jittable; the choice is a
    ``lax.cond``.

    Args:
        matvec: :math:`x \mapsto Ax`.
        b: right-hand side.
        precond: :math:`x \mapsto P^{-1}x`.
        maxiter: total iterations (at least ``probe`` are spent on each candidate).
        probe: iterations per candidate before choosing.
        tol: relative tolerance of ``jax.scipy.sparse.linalg.cg``.

    Returns:
        the approximate solution, shaped like ``b``.
    """
    cg = functools.partial(jax.scipy.sparse.linalg.cg, matvec, b, tol=tol)
    probe = min(probe, maxiter)
    xp, _ = cg(maxiter=probe, M=precond)
    xi, _ = cg(maxiter=probe)
    use_p = jnp.linalg.norm(b - matvec(xp)) <= jnp.linalg.norm(b - matvec(xi))
    if probe == maxiter:
        return jnp.where(use_p, xp, xi)
    rest = maxiter - probe
    return jax.lax.cond(
        use_p,
        lambda: cg(x0=xp, maxiter=rest, M=precond)[0],
        lambda: cg(x0=xi, maxiter=rest)[0],
    )
