r"""GP-HM's algorithm as pure functions: the Kronecker operators, the loss, the Gauss–Newton
step on the whitened grid values, and the fit as ``gphm_init``/``gphm_step`` for
:func:`bayeslr.infer.loop.run` (the model and the math are in :mod:`bayeslr.models.gphm`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeslr.gp.kernels import SpectralMixture, StudentTMixture
from bayeslr.linalg.cg import cg_probe
from bayeslr.linalg.kron import mode_product
from bayeslr.linalg.toeplitz import toeplitz_from_lags
from bayeslr.models.gphm.pde import (
    MultiIndex,
    NeumannFaces,
    boundary_kinds,
    boundary_mask,
    normal_orders,
)

__all__ = [
    "GPHMProblem",
    "GPHMState",
    "gauss_newton_step",
    "gphm_init",
    "gphm_lbfgs_init",
    "gphm_lbfgs_step",
    "gphm_loss",
    "gphm_operators",
    "gphm_step",
    "heldout_misfits",
    "laplace_draws",
]

_HI = jax.lax.Precision.HIGHEST
_PROFILED = ("V",)  # set by the Gauss–Newton step, not by Adam
CG_TOL = 1e-12
# CG iterations run both with and without the odd-order preconditioner before the better
# of the two is continued (see gauss_newton_step).
CG_PROBE = 5


def _cg_probe(matvec, b, precond, maxiter: int, probe: int = CG_PROBE) -> jax.Array:
    """:func:`bayeslr.linalg.cg.cg_probe` at the Gauss–Newton step's tolerance. Measured at
    the initial kernel on advection: on 50×200 the preconditioned run is at relative residual
    1e-5 after 5 iterations (plain: 0.07); on 200×200 it stalls at 0.9999 for 100 iterations
    (plain: 5e-4)."""
    return cg_probe(matvec, b, precond, maxiter, probe=probe, tol=CG_TOL)


# --------------------------------------------------------------------------------------------
# parameters, kernels and Kronecker operators


def _init_params(shape, num_components: int, freq_scale, dtype) -> dict:
    Q = num_components
    scales = (freq_scale,) * len(shape) if np.ndim(freq_scale) == 0 else tuple(freq_scale)
    return {
        "V": jnp.zeros(tuple(shape), dtype),
        "log_w": tuple(jnp.full((Q,), math.log(1.0 / Q), dtype) for _ in shape),
        "log_ls": tuple(jnp.zeros((Q,), dtype) for _ in shape),
        "mu": tuple(jnp.linspace(0.0, float(f), Q, dtype=dtype) for f in scales),
        "log_tau1": jnp.zeros((), dtype),
        "log_tau2": jnp.zeros((), dtype),
    }


def _kernels(params: dict, family: str) -> tuple:
    r"""Per-axis kernels. ``family="gm"`` stores :math:`\rho^2 = e^{\text{log\_ls}}` as the
    reference does; ``params`` without ``"mu"`` gives zero frequencies (plain Matérn-5/2)."""
    mus = params.get("mu") or tuple(jnp.zeros_like(lw) for lw in params["log_w"])
    out = []
    for lw, ll, mu in zip(params["log_w"], params["log_ls"], mus, strict=True):
        if family == "stm":
            out.append(StudentTMixture(jnp.exp(lw), mu, jnp.exp(ll)))
        else:
            out.append(SpectralMixture.from_rho_squared(jnp.exp(lw), mu, jnp.exp(ll)))
    return tuple(out)


def _per_axis_orders(orders: Sequence[MultiIndex], d: int) -> list[list[int]]:
    return [sorted({0} | {idx[j] for idx in orders}) for j in range(d)]


def _gram(kernel, x: jax.Array, r: int, uniform: bool | None = None) -> jax.Array:
    r""":math:`K^{(r,0)}(x, x)`. A uniform grid (``uniform``; ``None``: checked on the concrete
    values) makes it Toeplitz: the kernel is evaluated at the :math:`2M - 1` lags only and
    gathered, which cuts the per-step kernel cost from :math:`O(M^2 Q)` to :math:`O(MQ + M^2)`."""
    m = x.shape[0]
    if _is_uniform(x) if uniform is None else uniform:
        h = (x[-1] - x[0]) / (m - 1)
        lags = h * jnp.arange(-(m - 1), m, dtype=x.dtype)
        vals = kernel.derivative(lags, jnp.zeros((1,), x.dtype), r, 0)[:, 0]
        return toeplitz_from_lags(vals)
    return kernel.derivative(x, x, r, 0)


def _is_uniform(x) -> bool:
    try:
        a = np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        return False
    dx = np.diff(a)
    return bool(a.size > 2 and np.allclose(dx, dx[0], rtol=1e-10, atol=0.0))


def gphm_operators(kernels: Sequence, axes: Sequence[jax.Array], orders: Sequence[MultiIndex],
                   jitter: float = 1e-6, uniform: Sequence[bool] | None = None,
                   ) -> tuple[list[dict[int, jax.Array]], list[jax.Array]]:  # fmt: skip
    r"""Per-axis factors of the whitened GP-HM operators.

    For each axis :math:`j`: :math:`K_j = k_j(x_j, x_j) + \epsilon k_j(0) I = L_j L_j^\top`,
    and for each derivative order :math:`r` the axis uses, :math:`E_j^{(r)} = K_j^{(r,0)}
    L_j^{-\top}` (:math:`E_j^{(0)} = L_j`), so that :math:`\partial^{\mathbf r} u =
    (\otimes_j E_j^{(r_j)})\,V` on the grid when :math:`U = (\otimes_j L_j) V`.

    Args:
        kernels: one 1-D kernel per axis.
        axes: grid coordinates per axis.
        orders: the multi-indices used (order 0 is always included).
        jitter: :math:`\epsilon`, relative to each kernel's variance.
        uniform: per axis, whether its points are equally spaced (static; ``None``: checked on
            the concrete values, which needs them outside ``jit``).

    Returns:
        ``(E, logdets)``: ``E[j][r]`` the :math:`M_j \times M_j` matrices, ``logdets[j] =
        log|K_j|``. Cost :math:`O(\sum_j M_j^3)`.
    """
    E, logdets = [], []
    uniform = (None,) * len(axes) if uniform is None else tuple(uniform)
    for k, x, rs, uni in zip(kernels, axes, _per_axis_orders(orders, len(axes)), uniform,
                             strict=True):  # fmt: skip
        eye = jnp.eye(x.shape[0], dtype=x.dtype)
        L = jnp.linalg.cholesky(_gram(k, x, 0, uni) + jitter * k.variance * eye)
        ej = {0: L}
        for r in rs[1:]:
            ej[r] = jax.scipy.linalg.solve_triangular(L, _gram(k, x, r, uni).T, lower=True).T
        E.append(ej)
        logdets.append(2.0 * jnp.sum(jnp.log(jnp.diagonal(L))))
    return E, logdets


def _apply_orders(V: jax.Array, E, orders) -> dict[MultiIndex, jax.Array]:
    r""":math:`(\otimes_j E_j^{(r_j)})V` for every multi-index, sharing the partial products of
    the trailing axes (``u``, ``u_xx`` and ``u_yy`` need 4 mode products, not 6)."""
    cache: dict[MultiIndex, jax.Array] = {(): V}

    def suffix(idx: MultiIndex, j: int) -> jax.Array:
        key = idx[j:]
        if key not in cache:
            cache[key] = mode_product(suffix(idx, j + 1), E[j][idx[j]], j)
        return cache[key]

    return {idx: suffix(idx, 0) for idx in orders}


def _fields(V, E, orders, base) -> dict[MultiIndex, jax.Array]:
    """:math:`u` (key ``(0,)*d``) and its derivatives on the grid, plus the fixed ``base``."""
    fields = _apply_orders(V, E, ((0,) * V.ndim, *orders))
    if base is not None:
        fields = {k: v + base[k] for k, v in fields.items()}
    return fields


def _all_orders(orders, neumann: NeumannFaces | None) -> tuple[MultiIndex, ...]:
    """The operator's multi-indices and the first derivatives the Neumann faces read."""
    return tuple(dict.fromkeys((*orders, *normal_orders(neumann))))


def _boundary_field(fields, shape, neumann: NeumannFaces | None) -> jax.Array:
    r"""What the boundary data constrain, per boundary node (:func:`boundary_mask` order):
    :math:`u` at Dirichlet nodes, the outward normal derivative :math:`\pm\partial_{x_j}u` at
    the Neumann nodes of axis :math:`j` (:func:`boundary_kinds`)."""
    mask = boundary_mask(shape)
    b = fields[(0,) * len(shape)][mask]
    if neumann is None:
        return b
    kind, sign = boundary_kinds(shape, neumann)
    for idx in normal_orders(neumann):
        j = idx.index(1)
        b = jnp.where(kind == j + 1, sign * fields[idx][mask], b)
    return b


def _misfits(V, E, axes, operator, orders, source, boundary_values, base, neumann=None):
    r"""The PDE residual :math:`H` on the grid and the boundary misfit (:math:`U_b - g`, and
    :math:`\partial_n u - h` on Neumann faces) of the whitened values ``V`` under the operators
    ``E`` (plus the fixed ``base`` fields)."""
    zero = (0,) * V.ndim
    fields = _fields(V, E, _all_orders(orders, neumann), base)
    u = fields[zero]
    x = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
    H = operator(u, {idx: fields[idx] for idx in orders}, x) - source
    return H, _boundary_field(fields, V.shape, neumann) - boundary_values


def gphm_loss(
    params: dict,
    axes: Sequence[jax.Array],
    operator: Callable,
    orders: Sequence[MultiIndex],
    source: jax.Array,
    boundary_values: jax.Array,
    *,
    family: str = "stm",
    boundary_weight: float = 200.0,
    jitter: float = 1e-6,
    base: dict | None = None,
    uniform: Sequence[bool] | None = None,
    multiplier: jax.Array | None = None,
    penalty: jax.Array | None = None,
    neumann: NeumannFaces | None = None,
) -> tuple[jax.Array, dict]:
    r"""The GP-HM loss :math:`\mathcal L` (module docstring) in the whitened parameterization.

    Args:
        params: ``{"V", "log_w", "log_ls", "mu", "log_tau1", "log_tau2"}``, the kernel
            parameters as per-axis tuples of ``(Q,)`` arrays (``"mu"`` may be left out: zero
            frequencies).
        axes: grid coordinates per axis.
        operator: ``operator(u, derivs, x) -> L[u]`` (see :class:`PDE`).
        orders: the derivative multi-indices ``operator`` reads.
        source: :math:`f` on the grid, shape ``(M_1, ..., M_d)``.
        boundary_values: :math:`g` at the boundary nodes (:func:`boundary_mask`, C order).
        family: ``"stm"`` or ``"gm"``.
        boundary_weight: :math:`\lambda_b`.
        jitter: :math:`\epsilon` relative to each factor's variance.
        base: fixed fields ``{idx: array}`` (``(0,)*d`` for :math:`u`) added to this GP's (the
            frozen first GP of the extra-GP stage); ``None`` for none.
        uniform: per axis, whether the grid is equally spaced (:func:`gphm_operators`).
        multiplier: ``None`` for the paper's penalty (above); else the Lagrange multipliers
            :math:`\lambda` of the boundary constraint :math:`U_b = g`, one per boundary node,
            and the boundary term is the augmented Lagrangian :math:`\lambda^\top(U_b - g) +
            \tfrac{\mu}{2}\|U_b - g\|^2` (``log_tau1`` is not used), see :func:`gphm_step`.
        penalty: :math:`\mu`, with ``multiplier``.
        neumann: per axis, whether its ``lo``/``hi`` faces carry Neumann data (static;
            :class:`PDE`): there ``boundary_values`` are :math:`h` and the misfit is
            :math:`\partial_n u - h`.

    Returns:
        ``(loss, parts)``; ``parts`` has ``prior`` (quadratic + log-det), ``boundary_sse``,
        ``residual_sse`` and ``boundary_residual`` (:math:`U_b - g`). Cost
        :math:`O(\sum_j M_j^3 + M\sum_j M_j)`.
    """
    V = params["V"]
    M = V.size
    E, logdets = gphm_operators(_kernels(params, family), axes, _all_orders(orders, neumann),
                                jitter, uniform)  # fmt: skip
    half_logdet = 0.5 * sum((M / V.shape[j]) * ld for j, ld in enumerate(logdets))
    H, bres = _misfits(V, E, axes, operator, orders, source, boundary_values, base, neumann)
    lt1, lt2 = params["log_tau1"], params["log_tau2"]
    sse_b = jnp.sum(bres**2)
    sse_r = jnp.sum(H**2)
    prior = 0.5 * jnp.sum(V**2) + half_logdet
    if multiplier is None:
        bterm = boundary_weight * (0.5 * jnp.exp(lt1) * sse_b - 0.5 * bres.shape[0] * lt1)
    else:
        bterm = jnp.dot(multiplier, bres) + 0.5 * penalty * sse_b
    loss = prior + bterm + 0.5 * jnp.exp(lt2) * sse_r - 0.5 * M * lt2
    return loss, {"prior": prior, "boundary_sse": sse_b, "residual_sse": sse_r,
                  "boundary_residual": bres}  # fmt: skip


def gauss_newton_step(
    params: dict,
    axes: Sequence[jax.Array],
    operator: Callable,
    orders: Sequence[MultiIndex],
    source: jax.Array,
    boundary_values: jax.Array,
    *,
    family: str = "stm",
    boundary_weight: float = 200.0,
    jitter: float = 1e-6,
    base: dict | None = None,
    dense_limit: int = 2048,
    cg_steps: int = 100,
    uniform: Sequence[bool] | None = None,
    multiplier: jax.Array | None = None,
    penalty: jax.Array | None = None,
    neumann: NeumannFaces | None = None,
) -> jax.Array:
    r"""One Gauss–Newton step on :math:`V` at fixed kernel parameters and precisions.

    In :math:`V` the loss is :math:`\tfrac12\|V\|^2 + \tfrac12\|r(V)\|^2 + \text{const}` with
    :math:`r = (\sqrt{\tau_2}\,H,\ \sqrt{\lambda_b\tau_1}\,(U_b - g))`; the step solves
    :math:`(I + J^\top J)\,\delta = V + J^\top r`, :math:`J = \partial r/\partial V`, and
    returns :math:`V - \delta`. For a linear operator this is the exact minimizer over
    :math:`V` (variable projection); for a nonlinear one (Allen–Cahn) a Gauss–Newton step, whose
    matrix is always SPD; the step length is the best of :math:`1, 2^{-1}, \dots, 2^{-6}, 0`
    on the :math:`V`-objective (a full step can overshoot on a cubic term). With :math:`M \le`
    ``dense_limit`` grid points :math:`J` is formed
    (``jax.jacfwd``, :math:`O(M^2\sum_j M_j)`) and the system solved by Cholesky
    (:math:`O(M^3)`); above it, ``cg_steps`` conjugate-gradient iterations with matrix-free
    products :math:`J^\top J z` (one ``jvp`` and one ``vjp``, :math:`O(M\sum_j M_j)` each),
    started from zero and preconditioned by a Kronecker-diagonal approximation where the
    operator allows it (:func:`_kron_preconditioner`). For an operator with an odd order
    (advection) that preconditioner is exact on some grids and useless on others, so CG runs
    ``CG_PROBE`` (5) iterations with and without it and continues the one with the smaller
    residual (:func:`_cg_probe`).

    With ``multiplier`` :math:`\lambda` and ``penalty`` :math:`\mu` (the augmented
    Lagrangian of :func:`gphm_loss`) the boundary rows are :math:`\sqrt{\mu}\,(U_b - g +
    \lambda/\mu)`, the same function of :math:`V` up to a constant.

    Returns:
        the new :math:`V`, shape ``(M_1, ..., M_d)`` (no gradient flows through it).
    """
    params = jax.lax.stop_gradient(params)
    V, E, w2, r = _gn_parts(params, axes, operator, orders, source, boundary_values,
                            family=family, boundary_weight=boundary_weight, jitter=jitter,
                            base=base, uniform=uniform, multiplier=multiplier,
                            penalty=penalty, neumann=neumann)  # fmt: skip
    shape = V.shape
    v = V.ravel()
    r0, vjp = jax.vjp(r, v)
    grad = v + vjp(r0)[0]
    delta = _gn_solver(V, E, w2, r, axes, operator, orders, base, dense_limit, cg_steps)(grad)
    # Step length: the best of 1, 1/2, ..., 1/64 and 0 on the V-objective. For a linear
    # operator the objective is quadratic and 1 is optimal; for a nonlinear one (Allen–Cahn's
    # cubic) the full Gauss–Newton step from a poor iterate can overshoot by orders of
    # magnitude, and 0 guarantees the objective never increases.
    alphas = jnp.asarray([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0], v.dtype)
    objective = jax.vmap(lambda a: 0.5 * jnp.sum((v - a * delta) ** 2)
                         + 0.5 * jnp.sum(r(v - a * delta) ** 2))  # fmt: skip
    values = objective(alphas)
    best = alphas[jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))]
    return (v - best * delta).reshape(shape)


def _gn_parts(params, axes, operator, orders, source, boundary_values, *, family,
              boundary_weight, jitter, base, uniform, multiplier=None, penalty=None,
              neumann=None):
    r"""The whitened values :math:`V`, the operators, :math:`\sqrt{\tau_2}` and the stacked
    weighted residual :math:`r(v) = (\sqrt{\tau_2}\,H,\ \sqrt{\mu}(U_b - g'))`: the paper's
    :math:`\mu = \lambda_b\tau_1` and :math:`g' = g`, or with ``multiplier`` :math:`\lambda`
    the given ``penalty`` :math:`\mu` and :math:`g' = g - \lambda/\mu`."""
    V = params["V"]
    shape = V.shape
    E, _ = gphm_operators(_kernels(params, family), axes, _all_orders(orders, neumann), jitter,
                          uniform)  # fmt: skip
    w2 = jnp.exp(0.5 * params["log_tau2"])
    mu = boundary_weight * jnp.exp(params["log_tau1"]) if multiplier is None else penalty
    w1 = jnp.sqrt(mu)
    if multiplier is not None:
        boundary_values = boundary_values - multiplier / mu

    def r(v):
        H, b = _misfits(v.reshape(shape), E, axes, operator, orders, source, boundary_values,
                        base, neumann)  # fmt: skip
        return jnp.concatenate([w2 * H.ravel(), w1 * b])

    return V, E, w2, r


def _gn_solver(V, E, w2, r, axes, operator, orders, base, dense_limit, cg_steps):
    r"""``solve(b)`` :math:`\approx (I + J^\top J)^{-1} b`, :math:`J = \partial r/\partial v` at
    :math:`V`: a dense Cholesky up to ``dense_limit`` grid points, else (preconditioned) CG
    (:func:`gauss_newton_step`). ``solve`` is pure and can be vmapped over ``b``."""
    v = V.ravel()
    if v.size <= dense_limit:
        J = jax.jacfwd(r)(v)
        A = jnp.eye(v.size, dtype=v.dtype) + jnp.matmul(J.T, J, precision=_HI)
        chol = jnp.linalg.cholesky(A)
        return lambda b: jax.scipy.linalg.cho_solve((chol, True), b)
    vjp = jax.vjp(r, v)[1]

    def matvec(z):
        return z + vjp(jax.jvp(r, (v,), (z,))[1])[0]

    precond = _kron_preconditioner(V, E, axes, operator, orders, base, w2)
    if precond is not None and _has_odd_order(orders):
        return lambda b: _cg_probe(matvec, b, precond, cg_steps)
    return lambda b: jax.scipy.sparse.linalg.cg(matvec, b, tol=CG_TOL, maxiter=cg_steps,
                                                M=precond)[0]  # fmt: skip


def _has_odd_order(orders: Sequence[MultiIndex]) -> bool:
    """Whether the operator reads a derivative of odd order along some axis (advection): the
    case where :func:`_kron_preconditioner` uses its full complex form and CG is probed."""
    return any(r % 2 for idx in orders for r in idx)


def _kron_preconditioner(V, E, axes, operator, orders, base, w2):
    r"""A Kronecker-structured approximation of :math:`(I + \tau_2 J_H^\top J_H)^{-1}` for CG.

    For an operator that is, after linearization, :math:`\sum_j c_j\,\partial^{r_j}_{x_j} u +
    c_0 u` with one derivative per axis (Poisson, Allen–Cahn, Helmholtz, advection),
    :math:`J_H = (\otimes_j L_j)\,A`, :math:`A = \sum_j c_j S_j^{\oplus} + c_0 I`,
    :math:`S_j = L_j^{-1}K_j^{(r_j,0)}L_j^{-\top}`: symmetric for even :math:`r_j`,
    antisymmetric for odd. Both are unitarily diagonalizable, :math:`S_j = U_j N_j U_j^H`
    (``eigh`` of :math:`S_j`, or of the Hermitian :math:`iS_j` for odd orders, whose
    eigenvalues :math:`\mu` give :math:`N_j = -i\mu`). In the basis :math:`\otimes_j U_j` the
    system is :math:`N = I + \tau_2 \bar D\,G\,D`, :math:`D = \sum_j c_jN_j^{\oplus} + c_0`
    diagonal and :math:`G = \otimes_j U_j^H L_j^\top L_jU_j` Kronecker. The preconditioner is

    .. math::
        P^{-1} = H\,G^{-1}H^H,\qquad h = \frac{\bar D}{|D|}\sqrt{\frac{g}{1 + \tau_2
        |D|^2 g}},

    :math:`g = \operatorname{diag} G`, for operators with an odd order (advection), and the
    diagonal :math:`P^{-1} = \operatorname{diag}(1 + \tau_2 |D|^2 g)^{-1}` for even orders.
    The full one has :math:`N`'s diagonal exactly and is :math:`N^{-1}` exactly where
    :math:`G` is diagonal or where :math:`\tau_2|D|^2 g \gg 1`; :math:`G^{-1} = \otimes_j
    U_j^H L_j^{-1}L_j^{-\top}U_j` costs one mode product per axis. Measured at the initial
    kernel: on advection (24×20) it takes cond from 7e4 to 1.01 (plain CG before; but on 200²
    CG with it stalls, hence :func:`_cg_probe`), and on a
    400-point Poisson axis from 4e8 to 1.1 where the diagonal one leaves 5e6. It is not used for
    even orders because :math:`G^{-1}` reaches :math:`1/\epsilon^d` (:math:`K_j`'s
    eigenvalues sit at the jitter) and on fine 2-D grids (Allen–Cahn at 200², :math:`[0, 1]^2`)
    the cancellation of :math:`h` against it fails in float64: CG stalls at relative residual
    1, where the diagonal one reaches 2e-3 in 100 iterations. The coefficients :math:`c` are
    the grid means of the operator's partial derivatives at the current iterate. Other
    operators (mixed partials, two derivatives on one axis): ``None`` (plain CG).
    """
    d = V.ndim
    per_axis = {}
    for idx in orders:
        nz = [j for j, r in enumerate(idx) if r]
        if len(nz) != 1 or nz[0] in per_axis:
            return None
        per_axis[nz[0]] = idx
    odd = _has_odd_order(orders)
    ctype = jnp.result_type(V.dtype, jnp.complex64) if odd else V.dtype
    zero = (0,) * d
    fields = _fields(V, E, orders, base)
    x = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
    derivs = {idx: fields[idx] for idx in orders}
    ones = jnp.ones_like(V)

    def coef(direction_u, direction_d):
        return jnp.mean(jax.jvp(lambda u, dd: operator(u, dd, x), (fields[zero], derivs),
                                (direction_u, direction_d))[1])  # fmt: skip

    nil = {k: jnp.zeros_like(V) for k in orders}
    D, g = coef(ones, nil).astype(ctype), 1.0
    Us, G_inv = [], []
    for j in range(d):
        L = E[j][0]
        m = L.shape[0]
        if j in per_axis:
            r = per_axis[j][j]
            cj = coef(jnp.zeros_like(V), {**nil, per_axis[j]: ones})
            S = jax.scipy.linalg.solve_triangular(L, E[j][r], lower=True)
            if r % 2:  # antisymmetric: S = U (-i mu) U^H from the Hermitian iS
                mu, U = jnp.linalg.eigh(0.5j * (S - S.T))
                lam = -1j * mu
            else:
                lam, U = jnp.linalg.eigh(0.5 * (S + S.T))
        else:
            cj, lam, U = 0.0, jnp.zeros((m,), V.dtype), jnp.eye(m, dtype=V.dtype)
        U = U.astype(ctype)
        shape = [1] * d
        shape[j] = m
        D = D + cj * lam.reshape(shape)
        g = g * jnp.sum(jnp.abs(L @ U) ** 2, axis=0).reshape(shape)
        if odd:
            R = jax.scipy.linalg.solve_triangular(L.T, U, lower=False)  # L^-T U
            G_inv.append(jnp.matmul(jnp.conj(R).T, R, precision=_HI))
        Us.append(U)
    absD = jnp.abs(D)
    if odd:
        phase = jnp.where(absD > 0, jnp.conj(D) / jnp.where(absD > 0, absD, 1.0), 1.0)
        h = phase * jnp.sqrt(g / (1.0 + w2**2 * absD**2 * g))

        def middle(y):  # H G^-1 H^H
            y = y * jnp.conj(h)
            for j, Gi in enumerate(G_inv):
                y = mode_product(y, Gi, j)
            return y * h
    else:
        scale = 1.0 / (1.0 + w2**2 * absD**2 * g)

        def middle(y):  # diag(1 + tau |D|^2 g)^-1
            return y * scale

    def apply(z):
        y = z.reshape(V.shape).astype(ctype)
        for j, U in enumerate(Us):
            y = mode_product(y, jnp.conj(U).T, j)
        y = middle(y)
        for j, U in enumerate(Us):
            y = mode_product(y, U, j)
        return jnp.real(y).ravel()

    return apply


# --------------------------------------------------------------------------------------------
# the posterior


def _predictive_weights(params, family, axes, jitter, uniform=None) -> jax.Array:
    r""":math:`\alpha = (\otimes_j L_j^{-\top}) V`, the weights of the cross covariances in the
    conditional mean (:math:`L_j` the Cholesky factor of the jittered :math:`K_j`, as in
    :func:`gphm_operators`, so the fit and the prediction share it); shape
    ``(M_1, ..., M_d)``, :math:`O(\sum_j M_j^3 + M\sum_j M_j)`."""
    E, _ = gphm_operators(_kernels(params, family), axes, (), jitter, uniform)  # the fit's L_j
    alpha = params["V"]
    for j, ej in enumerate(E):  # a triangular solve along axis j, no explicit L_j^-T
        a = jnp.moveaxis(alpha, j, 0)
        x = jax.scipy.linalg.solve_triangular(ej[0].T, a.reshape(a.shape[0], -1), lower=False)
        alpha = jnp.moveaxis(x.reshape(a.shape), 0, j)
    return alpha


def check_axes(axes: Sequence) -> tuple:
    r"""The held-out check points per axis: the midpoints :math:`(x_{j,i} + x_{j,i+1})/2`
    between neighbouring grid nodes. Their product grid (:math:`\prod_j (M_j - 1)` points, all
    interior) is where :func:`heldout_misfits` evaluates the PDE residual; no collocation point
    of the fit lies on it."""
    return tuple((a[:-1] + a[1:]) / 2 for a in axes)


def _fields_off_grid(params, family, axes, jitter, uniform, at, orders):
    r"""The conditional mean of :math:`u` and its derivatives ``orders`` on the product grid
    ``at`` (one coordinate array per axis): :math:`(\otimes_j k_j^{(r_j,0)}(a_j, x_j))\,\alpha`
    by one mode product per axis, :math:`O(M\sum_j M_j)` (the step's cost), not a dense
    :math:`n \times M` contraction."""
    alpha = _predictive_weights(params, family, axes, jitter, uniform)
    kernels = _kernels(params, family)
    d = len(axes)
    C = [{r: kernels[j].derivative(at[j], axes[j], r, 0) for r in rs}
         for j, rs in enumerate(_per_axis_orders(orders, d))]  # fmt: skip
    return _apply_orders(alpha, C, ((0,) * d, *orders))


def heldout_misfits(
    params: Sequence[dict], families: Sequence[str], axes, jitter, uniform, operator, orders,
    check: dict, neumann: NeumannFaces | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""The PDE residual and the boundary misfit of a fit at points the fit never saw.

    ``params``, ``families``: each GP whose means add up (the mixture GP, then the extra GP).
    ``check`` (built by the estimator from the PDE's callables): ``"axes"``, the interior check
    grid (:func:`check_axes`), and ``"source"``, :math:`f` there; ``"faces"``,
    per boundary face a product grid (the face's coordinate on its axis, the check midpoints on
    the others) and ``"boundary"``, :math:`g` there (concatenated in face order). Returns
    ``(H, B, U)``: :math:`L[u] - f` on the check grid, :math:`u - g` on the faces (flattened;
    :math:`\partial_n u - h` on Neumann faces) and :math:`u` on the check grid.
    """
    d = len(axes)
    zero = (0,) * d
    at = check["axes"]
    fields = None
    face_u = None
    for p, family in zip(params, families, strict=True):
        f = _fields_off_grid(p, family, axes, jitter, uniform, at, orders)
        fields = f if fields is None else {k: fields[k] + v for k, v in f.items()}
        fu = jnp.concatenate([_face_values(p, family, axes, jitter, uniform, face, i, neumann)
                              for i, face in enumerate(check["faces"])])  # fmt: skip
        face_u = fu if face_u is None else face_u + fu
    x = jnp.stack(jnp.meshgrid(*at, indexing="ij"), axis=-1)
    H = operator(fields[zero], {idx: fields[idx] for idx in orders}, x) - check["source"]
    return H, face_u - check["boundary"], fields[zero]


def _face_values(params, family, axes, jitter, uniform, face, i: int, neumann):
    """On check face ``i`` (axis ``i // 2``, ``lo`` then ``hi``): :math:`u`, or the outward
    normal derivative on a Neumann face."""
    j, side = divmod(i, 2)
    d = len(axes)
    if neumann is None or not neumann[j][side]:
        return _fields_off_grid(params, family, axes, jitter, uniform, face, ())[(0,) * d].ravel()
    e = tuple(int(k == j) for k in range(d))
    du = _fields_off_grid(params, family, axes, jitter, uniform, face, (e,))[e].ravel()
    return du if side else -du


def _cross_predict(params, family, axes, alpha, pts, r, chunk_elements: int = 1 << 24):
    r""":math:`(\otimes_j k_j^{(r_j,0)}(x_{*j}, x_j))\,\alpha` at ``pts``
    (:func:`_predictive_weights`).

    The contraction runs axis by axis (first axis by a matrix product, the others row-wise), so
    the largest intermediate is :math:`n_c \prod_{j\ge 2} M_j` for a chunk of :math:`n_c` points;
    points go in chunks of at most ``chunk_elements`` such entries (memory, not a
    :math:`n \times M_1 \times M_2` tensor). Trailing axes of ``alpha`` beyond the grid's
    (draws) are carried: the result is ``(n, *alpha.shape[d:])``."""
    kernels = _kernels(params, family)
    n = pts.shape[0]
    size = max(1, min(n, chunk_elements // max(1, math.prod(alpha.shape[1:]))))
    padded = jnp.concatenate([pts, jnp.broadcast_to(pts[:1], (-n % size, pts.shape[1]))])

    def contract(p):
        out = jnp.tensordot(kernels[0].derivative(p[:, 0], axes[0], r[0], 0), alpha, axes=1,
                            precision=_HI)  # fmt: skip
        for j in range(1, len(axes)):
            cross = kernels[j].derivative(p[:, j], axes[j], r[j], 0)
            out = jnp.einsum("nb...,nb->n...", out, cross, precision=_HI)
        return out

    chunks = padded.reshape(-1, size, pts.shape[1])
    return jax.lax.map(contract, chunks).reshape(-1, *alpha.shape[len(axes):])[:n]


# --------------------------------------------------------------------------------------------
# the fit as a pure init/step for bayeslr.infer.loop


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["axes", "source", "boundary_values", "boundary_weight", "jitter",
                 "learning_rate", "decay_steps", "start", "base", "multiplier", "penalty"],
    meta_fields=["operator", "orders", "family", "uniform", "optimizer", "dense_limit",
                 "cg_steps", "schedule", "neumann"],
)  # fmt: skip
@dataclasses.dataclass(frozen=True)
class GPHMProblem:
    r"""What one GP-HM stage reads. Arrays are data (a new PDE source, boundary data, boundary
    weight or learning rate on the same grid shape reuses the compiled step); the operator and
    the structural settings are static.

    Attributes:
        axes: grid coordinates per axis; ``source``: :math:`f` on the grid;
            ``boundary_values``: :math:`g` at the boundary nodes (:func:`boundary_mask` order).
        boundary_weight: :math:`\lambda_b`; ``jitter``: :math:`\epsilon`.
        learning_rate, decay_steps: Adam's rate and, for ``optimizer="gauss-newton"``, the
            length of its cosine decay to 1 % (ignored when ``schedule`` is given).
        start: the initial parameters (:func:`init_params`).
        multiplier, penalty: the initial Lagrange multipliers of the boundary constraint (one
            per boundary node) and penalty :math:`\mu` (:func:`gphm_step`), or ``None`` for the
            paper's penalty.
        base: fixed fields added to this GP's (the frozen mixture GP of the extra-GP stage),
            or ``None``.
        operator, orders: the PDE operator and the derivative multi-indices it reads.
        family: ``"stm"`` or ``"gm"``; ``uniform``: per axis, equally spaced points.
        optimizer: ``"gauss-newton"`` or ``"adam"``; ``dense_limit``, ``cg_steps``: the
            Gauss–Newton solver's (:func:`gauss_newton_step`).
        schedule: a user's optax schedule ``step -> rate``, or ``None``.
    """

    axes: tuple[jax.Array, ...]
    source: jax.Array
    boundary_values: jax.Array
    boundary_weight: jax.Array
    jitter: jax.Array
    learning_rate: jax.Array
    decay_steps: jax.Array
    start: dict
    base: dict | None
    operator: Callable
    orders: tuple[MultiIndex, ...]
    family: str
    uniform: tuple[bool, ...]
    optimizer: str
    dense_limit: int
    cg_steps: int
    schedule: Callable | None = None
    multiplier: jax.Array | None = None
    penalty: jax.Array | None = None
    neumann: NeumannFaces | None = None

    @property
    def all_orders(self) -> tuple[MultiIndex, ...]:
        """The operator's multi-indices and the Neumann faces' first derivatives."""
        return _all_orders(self.orders, self.neumann)

    def loss(self, params: dict) -> tuple[jax.Array, dict]:
        """:func:`gphm_loss` of ``params`` on this problem."""
        return gphm_loss(params, self.axes, self.operator, self.orders, self.source,
                         self.boundary_values, family=self.family,
                         boundary_weight=self.boundary_weight, jitter=self.jitter,
                         base=self.base, uniform=self.uniform, multiplier=self.multiplier,
                         penalty=self.penalty, neumann=self.neumann)  # fmt: skip

    def newton(self, params: dict) -> jax.Array:
        """:func:`gauss_newton_step` of ``params`` on this problem (the new ``V``)."""
        return gauss_newton_step(params, self.axes, self.operator, self.orders, self.source,
                                 self.boundary_values, family=self.family,
                                 boundary_weight=self.boundary_weight, jitter=self.jitter,
                                 base=self.base, dense_limit=self.dense_limit,
                                 cg_steps=self.cg_steps, uniform=self.uniform,
                                 multiplier=self.multiplier, penalty=self.penalty,
                                 neumann=self.neumann)  # fmt: skip


class GPHMState(NamedTuple):
    r"""The fit's state: ``params`` (:func:`init_params`), Adam's moments of the parameters it
    moves (all but ``V`` under Gauss–Newton), the step count ``t``, and for the method of
    multipliers (:func:`gphm_step`; ``None`` under the penalty) the boundary constraint's
    Lagrange multipliers, the penalty :math:`\mu` and the norm of the boundary misfit at the
    last multiplier update."""

    params: dict
    opt_state: Any
    t: jax.Array
    multiplier: jax.Array | None = None
    penalty: jax.Array | None = None
    reference: jax.Array | None = None


def init_params(shape, num_components: int, freq_scale, dtype) -> dict:
    r"""The reference initialization: :math:`V = 0`, weights :math:`1/Q`, unit inverse
    lengthscales, frequencies :math:`\operatorname{linspace}(0, F, Q)` per axis, unit
    precisions."""
    return _init_params(shape, num_components, freq_scale, dtype)


def extra_params(shape, tau_source: dict, dtype) -> dict:
    """The extra GP's initial parameters: one Matérn-5/2 component per axis (no ``mu``), the
    precisions carried over from the mixture stage."""
    d = len(shape)
    return {
        "V": jnp.zeros(tuple(shape), dtype),
        "log_w": tuple(jnp.zeros((1,), dtype) for _ in range(d)),
        "log_ls": tuple(jnp.zeros((1,), dtype) for _ in range(d)),
        "log_tau1": jnp.asarray(tau_source["log_tau1"], dtype),
        "log_tau2": jnp.asarray(tau_source["log_tau2"], dtype),
    }


def _theta(problem: GPHMProblem, params: dict) -> dict:
    r"""The parameters Adam moves: all but ``V`` under Gauss–Newton, and not :math:`\tau_1`
    under the method of multipliers (:func:`gphm_step`)."""
    fixed = (_PROFILED if problem.optimizer == "gauss-newton" else ()) + \
        (("log_tau1",) if problem.multiplier is not None else ())  # fmt: skip
    return {k: v for k, v in params.items() if k not in fixed}


def _rate(problem: GPHMProblem, t: jax.Array) -> jax.Array:
    if problem.schedule is not None:
        return jnp.asarray(problem.schedule(t))
    if problem.optimizer != "gauss-newton":
        return problem.learning_rate
    # optax.cosine_decay_schedule(lr, decay_steps, alpha=0.01), operation for operation (the
    # fit's trajectory is sensitive to the last bit of the rate), with lr and the length as data
    count = jnp.minimum(t, problem.decay_steps)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * count / problem.decay_steps))
    return problem.learning_rate * ((1 - 0.01) * cosine + 0.01)


def gphm_init(key: jax.Array, problem: GPHMProblem, restart=0) -> GPHMState:
    """The state at ``problem.start`` (deterministic: ``key`` and ``restart`` are unused)."""
    del key, restart
    params = problem.start
    lam = problem.multiplier
    ref = None if lam is None else jnp.full((), jnp.inf, lam.dtype)
    return GPHMState(params, optax.scale_by_adam().init(_theta(problem, params)),
                     jnp.zeros((), jnp.int32), lam, problem.penalty, ref)  # fmt: skip


# Steps between multiplier updates (Gauss–Newton; Adam moves V slowly, so 4 times more); the
# misfit must shrink by MULTIPLIER_ETA between updates, else the penalty grows by
# MULTIPLIER_GROWTH, up to MULTIPLIER_MAX times lambda_b tau_2.
MULTIPLIER_EVERY = 25
MULTIPLIER_ETA = 0.25
MULTIPLIER_GROWTH = 10.0
MULTIPLIER_MAX = 1e6


def gphm_step(key: jax.Array, state: GPHMState, problem: GPHMProblem):
    r"""One step: with ``optimizer="gauss-newton"`` a Gauss–Newton step on :math:`V`
    (:func:`gauss_newton_step`) then an Adam step on the kernel parameters and precisions;
    with ``"adam"`` an Adam step on everything.

    With multipliers (``problem.multiplier`` not ``None``) the boundary data are a constraint
    :math:`U_b = g` imposed by the method of multipliers: the steps minimize the augmented
    Lagrangian of :func:`gphm_loss`, :math:`\lambda^\top(U_b - g) + \tfrac{\mu}{2}\|U_b -
    g\|^2` in place of the paper's boundary term, at the current multipliers :math:`\lambda`
    and penalty :math:`\mu` (both fixed between updates), and every ``MULTIPLIER_EVERY`` steps
    (the inner minimization) the usual safeguarded update runs: if the misfit's norm fell below
    ``MULTIPLIER_ETA`` times its value at the last update, the multipliers take it,
    :math:`\lambda \leftarrow \lambda + \mu\,(U_b - g)`, and the penalty follows the
    residual's precision, :math:`\mu \leftarrow \max(\mu, \lambda_b\tau_2)`; if not, the
    penalty grows tenfold (at most ``MULTIPLIER_MAX`` :math:`\lambda_b\tau_2`). A fixed point
    has :math:`U_b = g` exactly whatever :math:`\lambda_b`, which sets only the penalty's
    scale; there the kernel parameters' gradient is the constrained problem's (the
    Lagrangian's). :math:`\tau_1` is not learned (an exact constraint has no noise precision:
    it would grow without bound as the misfit vanishes).

    ``info``: ``loss`` (before the Adam step), ``res_rms`` (RMS of the PDE residual on the
    grid) and ``bnd_rms`` (RMS of :math:`U_b - g`), both after the Gauss–Newton step."""
    del key
    p, lam, mu, ref = state.params, state.multiplier, state.penalty, state.reference
    prob = problem if lam is None else dataclasses.replace(problem, multiplier=lam, penalty=mu)
    if problem.optimizer == "gauss-newton":
        p = {**p, "V": prob.newton(p)}
    theta = _theta(problem, p)
    (val, parts), grads = jax.value_and_grad(lambda t: prob.loss({**p, **t}),
                                             has_aux=True)(theta)  # fmt: skip
    updates, opt_state = optax.scale_by_adam().update(grads, state.opt_state, theta)
    rate = _rate(problem, state.t)
    misfit = parts["boundary_residual"]
    if lam is not None:
        every = MULTIPLIER_EVERY * (1 if problem.optimizer == "gauss-newton" else 4)
        norm = jnp.linalg.norm(misfit)
        floor = 1e-10 * (1.0 + jnp.linalg.norm(problem.boundary_values))
        due = (state.t + 1) % every == 0
        ok = due & ((norm <= MULTIPLIER_ETA * ref) | (norm <= floor))
        scale = problem.boundary_weight * jnp.exp(p["log_tau2"])
        lam = jnp.where(ok, lam + mu * misfit, lam)
        ref = jnp.where(ok, norm, ref)
        mu = jnp.where(ok, jnp.maximum(mu, scale), mu)
        mu = jnp.where(due & ~ok, jnp.minimum(mu * MULTIPLIER_GROWTH, MULTIPLIER_MAX * scale), mu)
    theta = jax.tree.map(lambda a, u: a - rate * u, theta, updates)
    info = {"loss": val, "res_rms": jnp.sqrt(parts["residual_sse"] / p["V"].size),
            "bnd_rms": jnp.sqrt(jnp.mean(misfit**2))}  # fmt: skip
    return GPHMState({**p, **theta}, opt_state, state.t + 1, lam, mu, ref), info


def gphm_lbfgs_init(key: jax.Array, problem: GPHMProblem, restart=0):
    """L-BFGS state ``(params, optax state)`` at ``problem.start``."""
    del key, restart
    return problem.start, optax.lbfgs().init(problem.start)


def gphm_lbfgs_step(key: jax.Array, state, problem: GPHMProblem):
    """One L-BFGS step (optax, zoom line search) on all parameters, the multipliers and penalty
    held at the problem's; ``info`` as :func:`gphm_step`."""
    del key
    params, opt_state = state
    opt = optax.lbfgs()

    def value(p):
        return problem.loss(p)[0]

    val, grad = optax.value_and_grad_from_state(value)(params, state=opt_state)
    updates, opt_state = opt.update(grad, opt_state, params, value=val, grad=grad,
                                    value_fn=value)  # fmt: skip
    _, parts = problem.loss(params)
    info = {"loss": val, "res_rms": jnp.sqrt(parts["residual_sse"] / params["V"].size),
            "bnd_rms": jnp.sqrt(jnp.mean(parts["boundary_residual"] ** 2))}  # fmt: skip
    return (optax.apply_updates(params, updates), opt_state), info


def laplace_draws(key: jax.Array, num: int, params: dict, problem: GPHMProblem) -> jax.Array:
    r"""``num`` draws of the whitened grid values :math:`V` from the Gaussian
    :math:`\mathcal N(V^\star, (I + J^\top J)^{-1})` at the fitted :math:`V^\star` with the
    kernel parameters and precisions held at their fitted values: the exact conditional
    posterior of :func:`~bayeslr.models.gphm.gphm_model` for a linear operator, its Laplace
    (Gauss–Newton) approximation for a nonlinear one.

    Each draw is :math:`V^\star + (I + J^\top J)^{-1}(z_1 + J^\top z_2)` with
    :math:`z_1, z_2` standard normal, whose covariance is :math:`(I+J^\top J)^{-1}`; the solve
    is the Gauss–Newton step's (dense Cholesky up to ``dense_limit`` points, else ``cg_steps``
    CG iterations, so large grids give approximate draws). Returns ``(num, M_1, ..., M_d)``.
    """
    params = jax.lax.stop_gradient(params)
    V, E, w2, r = _gn_parts(params, problem.axes, problem.operator, problem.orders,
                            problem.source, problem.boundary_values, family=problem.family,
                            boundary_weight=problem.boundary_weight, jitter=problem.jitter,
                            base=problem.base, uniform=problem.uniform,
                            multiplier=problem.multiplier, penalty=problem.penalty,
                            neumann=problem.neumann)  # fmt: skip
    v = V.ravel()
    r0, vjp = jax.vjp(r, v)
    solve = _gn_solver(V, E, w2, r, problem.axes, problem.operator, problem.orders,
                       problem.base, problem.dense_limit, problem.cg_steps)  # fmt: skip

    def one(k):
        k1, k2 = jax.random.split(k)
        z1 = jax.random.normal(k1, v.shape, v.dtype)
        z2 = jax.random.normal(k2, r0.shape, v.dtype)
        return v + solve(z1 + vjp(z2)[0])

    return jax.lax.map(one, jax.random.split(key, num)).reshape(num, *V.shape)
