r"""Second- and fourth-order finite differences on a GP-HM grid, for any pointwise PDE operator.

The baseline of ``benchmarks/gphm.py``: the same uniform grid as GP-HM, the boundary nodes held
at the Dirichlet data, central differences at the interior nodes (second order:
:math:`(u_{i+1} - u_{i-1})/2h` and :math:`(u_{i+1} - 2u_i + u_{i-1})/h^2` per axis; fourth
order: the five-point stencils, and at the nodes next to the boundary the fourth-order
one-sided ones over six nodes; Kronecker products for mixed indices), and Newton's method on
:math:`\mathcal L[u] - f = 0` there (one sparse solve for a linear operator). The Jacobian uses
that the operator is pointwise (the value at a node reads the fields at that node only, as
every built-in and example operator does): its coefficients are one ``jax.jvp`` per field with
a vector of ones. A step is halved until the residual norm decreases (at most 30 halvings).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["fd_solve"]


# Fourth-order stencils: centred (offsets -2..2), and at the node next to the lower boundary
# (offsets -1..4 for u'', -1..3 for u'); the upper side mirrors them (u' changes sign).
_C4 = {1: np.array([1.0, -8.0, 0.0, 8.0, -1.0]) / 12.0,
       2: np.array([-1.0, 16.0, -30.0, 16.0, -1.0]) / 12.0}  # fmt: skip
_EDGE4 = {1: np.array([-3.0, -10.0, 18.0, -6.0, 1.0]) / 12.0,
          2: np.array([10.0, -15.0, -4.0, 14.0, -6.0, 1.0]) / 12.0}  # fmt: skip


def _axis_matrix(n: int, h: float, r: int, order: int = 2) -> sp.csr_matrix:
    if r == 0:
        return sp.eye(n, format="csr")
    if r not in (1, 2):
        raise ValueError(f"finite differences here support orders up to 2; got {r}")
    if order == 2:
        if r == 1:
            return sp.diags([-1.0, 1.0], [-1, 1], shape=(n, n), format="csr") / (2 * h)
        return sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr") / h**2
    if order != 4 or n < 7:
        raise ValueError(f"`order` must be 2 or 4 (4 needs >= 7 points); got {order} on {n}")
    m = sp.lil_matrix((n, n))
    for i in range(2, n - 2):
        m[i, i - 2:i + 3] = _C4[r]
    edge = _EDGE4[r]
    m[1, 0:len(edge)] = edge
    m[n - 2, n - len(edge):n] = edge[::-1] * (-1.0 if r == 1 else 1.0)
    return m.tocsr() / h**r


def fd_solve(operator, orders, axes, source, boundary, max_newton: int = 50,
             tol: float = 1e-12, order: int = 2) -> np.ndarray:  # fmt: skip
    """The FD solution on the grid ``axes`` (uniform, endpoints included).

    Args:
        operator: ``operator(u, derivs, x)`` as in :class:`bayeslr.models.PDE`.
        orders: the derivative multi-indices it reads.
        axes: per-axis coordinates.
        source: ``f`` on the grid; ``boundary``: ``g`` on the grid (only boundary nodes read).
        order: 2 or 4, the order of the difference stencils.

    Returns:
        ``u`` on the grid, boundary nodes equal to ``boundary``.
    """
    shape = tuple(a.size for a in axes)
    hs = [float(a[1] - a[0]) for a in axes]
    mats = {}
    for idx in orders:
        m = sp.csr_matrix(np.ones((1, 1)))
        for j, r in enumerate(idx):
            m = sp.kron(m, _axis_matrix(shape[j], hs[j], r, order), format="csr")
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
