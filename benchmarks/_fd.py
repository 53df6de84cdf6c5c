r"""Second-order finite differences on a GP-HM grid, for any pointwise PDE operator.

The baseline of ``benchmarks/gphm.py``: the same uniform grid as GP-HM, the boundary nodes held
at the Dirichlet data, central differences (:math:`(u_{i+1} - u_{i-1})/2h` and
:math:`(u_{i+1} - 2u_i + u_{i-1})/h^2` per axis, Kronecker products for mixed indices) at the
interior nodes, and Newton's method on :math:`\mathcal L[u] - f = 0` there (one sparse solve
for a linear operator). The Jacobian uses that the operator is pointwise (the value at a node
reads the fields at that node only, as every built-in and example operator does): its
coefficients are one ``jax.jvp`` per field with a vector of ones. A step is halved until the
residual norm decreases (at most 30 halvings).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["fd_solve"]


def _axis_matrix(n: int, h: float, r: int) -> sp.csr_matrix:
    if r == 0:
        return sp.eye(n, format="csr")
    if r == 1:
        return sp.diags([-1.0, 1.0], [-1, 1], shape=(n, n), format="csr") / (2 * h)
    if r == 2:
        return sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr") / h**2
    raise ValueError(f"finite differences here support orders up to 2; got {r}")


def fd_solve(operator, orders, axes, source, boundary, max_newton: int = 50,
             tol: float = 1e-12) -> np.ndarray:  # fmt: skip
    """The FD solution on the grid ``axes`` (uniform, endpoints included).

    Args:
        operator: ``operator(u, derivs, x)`` as in :class:`bayeslr.models.PDE`.
        orders: the derivative multi-indices it reads.
        axes: per-axis coordinates.
        source: ``f`` on the grid; ``boundary``: ``g`` on the grid (only boundary nodes read).

    Returns:
        ``u`` on the grid, boundary nodes equal to ``boundary``.
    """
    shape = tuple(a.size for a in axes)
    hs = [float(a[1] - a[0]) for a in axes]
    mats = {}
    for idx in orders:
        m = sp.csr_matrix(np.ones((1, 1)))
        for j, r in enumerate(idx):
            m = sp.kron(m, _axis_matrix(shape[j], hs[j], r), format="csr")
        mats[idx] = m
    inner = np.zeros(shape, bool)
    inner[tuple(slice(1, -1) for _ in shape)] = True
    inner = inner.ravel()
    x = jnp.stack(jnp.meshgrid(*[jnp.asarray(a) for a in axes], indexing="ij"), axis=-1)
    f = np.asarray(source).ravel()
    u = np.where(inner, 0.0, np.asarray(boundary).ravel())

    def fields(v):
        return {idx: (mats[idx] @ v).reshape(shape) for idx in orders}

    def residual(v):
        out = operator(jnp.asarray(v.reshape(shape)), {k: jnp.asarray(a) for k, a in
                                                       fields(v).items()}, x)  # fmt: skip
        return (np.asarray(out).ravel() - f)[inner]

    def jacobian(v):
        uu = jnp.asarray(v.reshape(shape))
        dd = {k: jnp.asarray(a) for k, a in fields(v).items()}
        ones, zeros = jnp.ones(shape), {k: jnp.zeros(shape) for k in orders}
        a0 = jax.jvp(lambda a, b: operator(a, b, x), (uu, dd), (ones, zeros))[1]
        jac = sp.diags(np.asarray(a0).ravel())
        for k in orders:
            ak = jax.jvp(lambda a, b: operator(a, b, x), (uu, dd),
                         (jnp.zeros(shape), {**zeros, k: ones}))[1]  # fmt: skip
            jac = jac + sp.diags(np.asarray(ak).ravel()) @ mats[k]
        return jac.tocsr()[inner][:, inner].tocsc()

    res = residual(u)
    for _ in range(max_newton):
        du = spla.spsolve(jacobian(u), res)
        step, norm0 = 1.0, np.linalg.norm(res)
        for _ in range(30):
            trial = u.copy()
            trial[inner] -= step * du
            r_trial = residual(trial)
            if np.linalg.norm(r_trial) < norm0:
                break
            step *= 0.5
        u, res = trial, r_trial
        if np.max(np.abs(step * du)) < tol * (1.0 + np.max(np.abs(u))):
            break
    return u.reshape(shape)
