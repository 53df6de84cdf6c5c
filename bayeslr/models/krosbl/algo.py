r"""KroSBL's algorithm: the factored E-step, the M-steps (AM, SVD, SBL, pattern-coupled), pruning,
the support rule and posterior draws, as pure functions; the model, the math and the references
are in :mod:`bayeslr.models.krosbl`."""
from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from bayeslr._validation import as_key, check_finite, check_int, is_concrete
from bayeslr.infer import loop
from bayeslr.linalg.kron import (
    kron_adjoint_mv,
    kron_dense,
    kron_eigh,
    kron_mv,
    kron_outer,
)
from bayeslr.linalg.nnls import nnls

__all__ = [
    "KROSBL_STOP",
    "KroEStep",
    "KroSBLProblem",
    "KroSBLResult",
    "KroSBLState",
    "coupling_matrix",
    "krosbl_em",
    "krosbl_estep",
    "krosbl_init",
    "krosbl_problem",
    "krosbl_sample",
    "krosbl_step",
]

METHODS = ("svd", "am", "sbl")
_HI = jax.lax.Precision.HIGHEST


class KroSBLResult(NamedTuple):
    r"""Output of :func:`krosbl_em` (with a leading batch axis on every field for batched y).

    Attributes:
        mean: posterior mean :math:`\mu` of :math:`x`, shape ``(N,)`` (row-major grid order,
            matching ``jnp.kron``).
        var: marginal posterior variances :math:`\operatorname{diag}\Sigma`, ``(N,)``, real.
        gamma: prior variances :math:`\gamma` (``⊗γ_i`` or the unstructured one), ``(N,)``.
        gammas: the factors :math:`\gamma_i` (``(N_i,)`` each); empty for ``method="sbl"``.
        sigma2: the noise variance used (given or learned) at the last iteration.
        support: boolean ``(N,)`` support estimate (posterior rule, see the module docstring).
        n_iter: EM iterations run.
        converged: whether the relative change of :math:`\gamma` fell below ``tol``.
        gamma_change: ``(max_iter,)`` relative change of :math:`\gamma` per iteration (zero
            after ``n_iter``).
        objective: ``(max_iter,)`` :math:`\log|\Sigma_y| + y^H\Sigma_y^{-1}y` at the
            :math:`\gamma` entering each iteration (zero after ``n_iter``).
    """

    mean: Array
    var: Array
    gamma: Array
    gammas: tuple[Array, ...]
    sigma2: Array
    support: Array
    n_iter: Array
    converged: Array
    gamma_change: Array
    objective: Array


class KroEStep(NamedTuple):
    """One E-step: posterior moments (grid-shaped for Kronecker, flat for dense) and scalars."""

    mean: Array
    var: Array
    objective: Array
    resid2: Array  # ||y - A mu||^2
    dof: Array  # tr(Gamma A^H Sigma_y^{-1} A)


# --------------------------------------------------------------------------------------------
# validation


def _check_problem(y, factors, noise) -> tuple[Array, tuple[Array, ...], bool]:
    """Validate ``y`` and ``factors``; return them as arrays of one dtype and a batched flag."""
    if isinstance(factors, (jax.Array, np.ndarray, str)) or not isinstance(factors, Sequence):
        raise TypeError(
            "`factors` must be a sequence (tuple or list) of 2-D dictionaries A_i, one per "
            f"Kronecker factor; got {type(factors).__name__}."
        )
    if len(factors) < 2:
        raise ValueError(
            f"`factors` must hold at least 2 dictionaries (I >= 2); got {len(factors)}. "
            "For a single dictionary use method='sbl' with a 2-factor split or plain SBL."
        )
    for i, a in enumerate(factors):
        shape = np.shape(a)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"`factors[{i}]` must be a non-empty 2-D matrix; got shape {shape}.")
        check_finite(f"factors[{i}]", a)
    m = int(np.prod([np.shape(a)[0] for a in factors]))
    y_shape = np.shape(y)
    if len(y_shape) not in (1, 2) or y_shape[-1] != m:
        raise ValueError(
            f"`y` must have shape (M,) or (batch, M) with M = prod(M_i) = {m} from the factor "
            f"shapes {[tuple(np.shape(a)) for a in factors]}; got shape {y_shape}."
        )
    check_finite("y", y)
    y_dtype = jnp.result_type(y)
    a_dtypes = [jnp.result_type(a) for a in factors]
    if jnp.issubdtype(y_dtype, jnp.complexfloating) and not any(
        jnp.issubdtype(t, jnp.complexfloating) for t in a_dtypes
    ):
        raise ValueError(
            "`y` is complex but every dictionary in `factors` is real: the model y = A x + n "
            "would then need a complex x with a real-valued prior. Pass complex `factors` "
            f"(e.g. factors[0].astype(complex)) or the real part of y; got y of dtype {y_dtype} "
            f"and factors of dtypes {[str(t) for t in a_dtypes]}."
        )
    if noise is not None:
        if np.ndim(noise) != 0:
            raise ValueError(
                f"`noise` must be None (learned) or a positive scalar variance; got shape "
                f"{np.shape(noise)}."
            )
        if is_concrete(noise):
            value = float(np.asarray(noise))
            if not np.isfinite(value) or value <= 0:
                raise ValueError(
                    "`noise` must be None (learned) or a finite, strictly positive noise "
                    f"variance sigma^2; got {value!r}. For noiseless data pass a small value "
                    "such as 1e-8 * mean(|y|^2)."
                )
    dtype = jnp.result_type(y, *factors, jnp.float32)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    y = jnp.asarray(y, dtype)
    factors = tuple(jnp.asarray(a, dtype) for a in factors)
    if noise is None and is_concrete(y) and not np.any(np.abs(np.asarray(y)) > 0):
        raise ValueError(
            "`y` is all zeros, so the noise variance cannot be learned; pass `noise=` a positive "
            "variance."
        )
    return y, factors, len(y_shape) == 2


DEFAULT_PRUNE = {"svd": 1e-5, "am": 1e-2, "sbl": 1e-3}


def _check_options(method, prune, max_iter, tol, am_sweeps, am_tol, power_iters, support_z):
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    if prune is None:
        prune = DEFAULT_PRUNE[method]
    _check_prune(prune)
    for name, v in (("max_iter", max_iter), ("am_sweeps", am_sweeps), ("power_iters", power_iters)):
        check_int(name, v, minimum=1)
    for name, v in (("tol", tol), ("am_tol", am_tol), ("support_z", support_z)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
            raise ValueError(f"`{name}` must be a finite non-negative float; got {v!r}.")


def _per_factor(name: str, value, n_factors: int | None, one, what: str):
    """``value`` as one setting for every factor or a sequence with one per factor, each
    checked by ``one(v, label)``; with ``n_factors``, returned as one entry per factor."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        out = tuple(one(v, f"{name}[{i}]") for i, v in enumerate(value))
        if n_factors is not None and len(out) != n_factors:
            raise ValueError(
                f"`{name}` must hold {what} per factor, {n_factors} here; got {len(out)} "
                f"entries {list(value)!r}."
            )
        return out
    v = one(value, name)
    return v if n_factors is None else (v,) * n_factors


def _check_prune(prune, n_factors: int | None = None) -> tuple[float, ...] | float:
    """Validate ``prune`` (a threshold or one per factor); with ``n_factors``, one per factor."""

    def one(v, name):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise ValueError(f"`{name}` must be a relative threshold in [0, 1); got {v!r}.")
        return float(v)

    return _per_factor("prune", prune, n_factors, one, "one threshold (or a single one)")


# --------------------------------------------------------------------------------------------
# E-steps


def _real_dtype(dtype):
    return jnp.finfo(dtype).dtype


class _KronFactorization(NamedTuple):
    """Per-factor pieces of the factored E-step: :math:`U_i`, :math:`p_i` (clipped), :math:`B_i`."""

    u: tuple[Array, ...]
    b: tuple[Array, ...]
    p: Array  # grid (M_1, ..., M_I): ⊗ p_i


def _kron_factorize(factors, gammas) -> _KronFactorization:
    grams = tuple(
        jnp.matmul(a * g[None, :].astype(a.dtype), jnp.conj(a).T, precision=_HI)
        for a, g in zip(factors, gammas, strict=True)
    )
    eig = kron_eigh(grams)
    ps = []
    for p_i, a in zip(eig.eigvals, factors, strict=True):
        eps = jnp.finfo(p_i.dtype).eps * max(a.shape)
        ps.append(jnp.where(p_i > eps * jnp.max(p_i), p_i, 0.0))
    bs = tuple(
        g[:, None].astype(a.dtype) * jnp.matmul(jnp.conj(a).T, u, precision=_HI)
        for a, g, u in zip(factors, gammas, eig.eigvecs, strict=True)
    )
    return _KronFactorization(tuple(eig.eigvecs), bs, kron_outer(ps))


def _kron_posterior_apply(fz: _KronFactorization, sigma2, v):
    r""":math:`\Gamma A^H \Sigma_y^{-1} v` for a grid-shaped ``v`` (null directions dropped)."""
    t = kron_adjoint_mv(fz.u, v)
    wm = jnp.where(fz.p > 0, 1.0 / (sigma2 + fz.p), 0.0)
    return kron_mv(fz.b, wm.reshape(wm.shape + (1,) * (t.ndim - wm.ndim)) * t)


def _kron_estep(yg, factors, gammas, sigma2) -> KroEStep:
    fz = _kron_factorize(factors, gammas)
    t = kron_adjoint_mv(fz.u, yg)
    w = 1.0 / (sigma2 + fz.p)
    wm = jnp.where(fz.p > 0, w, 0.0)
    mean = kron_mv(fz.b, wm * t)
    gamma = kron_outer(list(gammas))
    b2 = tuple(jnp.abs(b) ** 2 for b in fz.b)
    var = jnp.clip(gamma - kron_mv(b2, wm), 0.0, None)
    t2 = jnp.abs(t) ** 2
    objective = jnp.sum(jnp.log(sigma2 + fz.p)) + jnp.sum(w * t2)
    resid2 = sigma2**2 * jnp.sum(w**2 * t2)
    dof = jnp.sum(fz.p * w)
    return KroEStep(mean, var, objective, resid2, dof)


def _dense_estep(y, a, gamma, sigma2) -> KroEStep:
    m = a.shape[0]
    ag = a * gamma[None, :].astype(a.dtype)
    sy = jnp.matmul(ag, jnp.conj(a).T, precision=_HI) + sigma2 * jnp.eye(m, dtype=a.dtype)
    chol = jnp.linalg.cholesky(0.5 * (sy + jnp.conj(sy).T))
    solve = jax.scipy.linalg.cho_solve
    alpha = solve((chol, True), y)
    mean = jnp.matmul(jnp.conj(ag).T, alpha, precision=_HI)
    sinv_ag = solve((chol, True), ag)  # Σ_y^{-1} A Γ, (M, N)
    var = jnp.clip(gamma - jnp.real(jnp.sum(jnp.conj(ag) * sinv_ag, axis=0)), 0.0, None)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.real(jnp.diagonal(chol))))
    objective = logdet + jnp.real(jnp.vdot(y, alpha))
    resid2 = sigma2**2 * jnp.sum(jnp.abs(alpha) ** 2)
    sinv_trace = jnp.sum(
        jnp.abs(jax.scipy.linalg.solve_triangular(chol, jnp.eye(m, dtype=a.dtype), lower=True)) ** 2
    )
    dof = m - sigma2 * sinv_trace
    return KroEStep(mean, var, objective, resid2, dof)


def krosbl_estep(
    y: ArrayLike, factors: Sequence[ArrayLike], gammas: Sequence[ArrayLike], sigma2: ArrayLike
) -> KroEStep:
    r"""The exact factored E-step for :math:`\gamma = \otimes\gamma_i` (see the module docstring).

    Args:
        y: observations, shape ``(M,)``, :math:`M = \prod M_i`.
        factors: dictionaries :math:`A_i` (``M_i x N_i``), real or complex.
        gammas: prior variance factors :math:`\gamma_i \ge 0` (``(N_i,)`` each; zeros allowed).
        sigma2: noise variance :math:`\sigma^2 > 0`.

    Returns:
        :class:`KroEStep` with ``mean`` and ``var`` flattened to ``(N,)``, the objective
        :math:`\log|\Sigma_y| + y^H\Sigma_y^{-1}y`, :math:`\|y - A\mu\|^2` and
        :math:`\operatorname{tr}(\Gamma A^H\Sigma_y^{-1}A)`. Cost
        :math:`O(\sum_i(M_i^2N_i + M_i^3) + (M+N)\sum_i\max(M_i,N_i))`.

    Raises:
        ValueError: as :func:`krosbl_em`, or when ``gammas`` do not match the factor widths.
    """
    y, factors, batched = _check_problem(y, factors, sigma2)
    if batched:
        raise ValueError(f"`y` must be 1-D here (one measurement vector); got shape {y.shape}.")
    if len(gammas) != len(factors) or any(
        np.shape(g) != (a.shape[1],) for g, a in zip(gammas, factors, strict=False)
    ):
        raise ValueError(
            "`gammas` must hold one vector per factor with shapes "
            f"{[(a.shape[1],) for a in factors]}; got {[np.shape(g) for g in gammas]}."
        )
    rdt = _real_dtype(y.dtype)
    gammas = tuple(jnp.asarray(g, rdt) for g in gammas)
    est = _kron_estep(
        y.reshape(tuple(a.shape[0] for a in factors)), factors, gammas, jnp.asarray(sigma2, rdt)
    )
    return est._replace(mean=est.mean.reshape(-1), var=est.var.reshape(-1))


# --------------------------------------------------------------------------------------------
# M-steps


def _contract_except(d, vecs, i):
    """Contract every mode of ``d`` except ``i`` with the vectors ``vecs[l]`` (``l != i``)."""
    n = d.ndim
    idx = string.ascii_letters[:n]
    others = [l for l in range(n) if l != i]
    spec = ",".join([idx] + [idx[l] for l in others]) + "->" + idx[i]
    return jnp.einsum(spec, d, *[vecs[l] for l in others], precision=_HI)


def _safe_inv(g):
    return jnp.where(g > 0, 1.0 / jnp.where(g > 0, g, 1.0), 0.0)


def _normalize(gammas):
    """Scale γ_1..γ_{I-1} to unit norm; γ_I takes the product of norms (⊗γ unchanged)."""
    out, scale = [], 1.0
    for g in gammas[:-1]:
        nrm = jnp.linalg.norm(g)
        nrm = jnp.where(nrm > 0, nrm, 1.0)
        out.append(g / nrm)
        scale = scale * nrm
    out.append(gammas[-1] * scale)
    return tuple(out)


def _rel_change(new, old):
    nrm = jnp.linalg.norm(old)
    return jnp.linalg.norm(new - old) / jnp.where(nrm > 0, nrm, 1.0)


def _am_sweep(d, gammas, cmats=None):
    """One AM sweep; ``cmats[i]`` is :math:`C_\beta` for a coupled factor (None: plain AM)."""
    gammas = list(gammas)
    for i in range(len(gammas)):
        vecs = [_safe_inv(g) for g in gammas]
        count = 1.0
        for l, g in enumerate(gammas):
            if l != i:
                count = count * jnp.sum(g > 0)
        count = jnp.maximum(count, 1.0)
        upd = _contract_except(d, vecs, i) / count
        if cmats is not None and cmats[i] is not None:
            gammas[i] = _pc_update(upd, gammas[i] > 0, cmats[i])
        else:
            gammas[i] = jnp.where(gammas[i] > 0, upd, 0.0)
    return _normalize(tuple(gammas))


def _am_mstep(d, gammas, sweeps, tol, cmats=None):
    def cond(state):
        s, _, change = state
        return (s < sweeps) & (change > tol)

    def body(state):
        s, g, _ = state
        new = _am_sweep(d, g, cmats)
        return s + 1, new, _rel_change(kron_outer(list(new)), kron_outer(list(g)))

    init = (jnp.asarray(0), tuple(gammas), jnp.asarray(jnp.inf, d.dtype))
    return jax.lax.while_loop(cond, body, init)[1]


# --------------------------------------------------------------------------------------------
# pattern coupling (PC-KroSBL)

PC_FLOOR = 1e-5


def coupling_matrix(n: int, beta: float) -> np.ndarray:
    r""":math:`C_\beta`: the :math:`n\times n` tridiagonal matrix with 1 on the diagonal and
    :math:`\beta` on both off-diagonals (PC-SBL's neighbour coupling).

    Args:
        n: size :math:`N_i` of the factor.
        beta: coupling :math:`\beta \in [0, 1)`.

    Returns:
        ``(n, n)`` float64 NumPy array.
    """
    c = np.eye(n)
    idx = np.arange(n - 1)
    c[idx, idx + 1] = beta
    c[idx + 1, idx] = beta
    return c


def _check_coupling(coupling, n_factors: int | None = None) -> tuple[float | None, ...] | None:
    """Validate ``coupling``; with ``n_factors`` return one β (or None) per factor."""

    def check_beta(v, name):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(
                f"`{name}` must be None or a coupling beta in [0, 1); got {v!r} "
                f"({type(v).__name__})."
            )
        if not (np.isfinite(v) and 0.0 <= float(v) < 1.0):
            raise ValueError(f"`{name}` must be a coupling beta in [0, 1); got {v!r}.")
        return float(v)

    if coupling is None:
        return None
    if isinstance(coupling, (str, bytes)) or not (
        isinstance(coupling, Sequence)
        or isinstance(coupling, (int, float, np.integer, np.floating, bool))
    ):
        raise ValueError(
            "`coupling` must be None, a float beta in [0, 1) or a sequence with one beta (or "
            f"None) per factor; got {coupling!r}."
        )
    betas = _per_factor("coupling", coupling, n_factors, check_beta, "one beta (or None)")
    return None if n_factors is None and not isinstance(coupling, Sequence) else betas


def _check_coupling_method(coupling, method) -> None:
    n = len(coupling) if isinstance(coupling, Sequence) and not isinstance(coupling, str) else 1
    betas = _check_coupling(coupling, n)
    if betas is not None and any(b is not None for b in betas) and method != "am":
        raise ValueError(
            "`coupling` (pattern-coupled PC-KroSBL) needs method='am': the coupled M-step is a "
            "non-negative least-squares fit inside the AM block update, which the SVD and SBL "
            f"M-steps do not have; got method={method!r} with coupling={coupling!r}."
        )


def _pc_update(t, active, c):
    r"""Coupled factor update: :math:`g = \mathrm{NNLS}(C_\beta, t)` on the active entries,
    :math:`\tilde\gamma = \text{floor} + C_\beta g` (floor :math:`10^{-5}\max C_\beta g`),
    pruned entries kept at zero."""
    cm = jnp.where(active[:, None] & active[None, :], c, 0.0)
    g = nnls(cm, jnp.where(active, t, 0.0))
    cg = jnp.matmul(cm, g, precision=_HI)
    peak = jnp.max(cg)
    floor = PC_FLOOR * jnp.where(peak > 0, peak, 1.0)
    return jnp.where(active, floor + cg, 0.0)


def _svd_mstep(d, gammas, power_iters):
    out = []
    r = d
    for i, g in enumerate(gammas[:-1]):
        mat = r.reshape(g.shape[0], -1)
        active = g > 0
        u0 = jnp.where(
            active,
            g / jnp.maximum(jnp.linalg.norm(g), jnp.finfo(d.dtype).tiny)
            + 1.0 / np.sqrt(g.shape[0]),
            0.0,
        )

        def power(_, u, mat=mat):
            u = jnp.matmul(mat, jnp.matmul(u, mat, precision=_HI), precision=_HI)
            nrm = jnp.linalg.norm(u)
            return u / jnp.where(nrm > 0, nrm, 1.0)

        u = jax.lax.fori_loop(0, power_iters, power, u0)
        sv = jnp.abs(jnp.matmul(u, mat, precision=_HI))  # s |v|
        out.append(jnp.where(active, jnp.abs(u), 0.0))
        r = sv.reshape(gammas[i + 1].shape[0], -1) if i + 2 < len(gammas) else sv
    out.append(jnp.where(gammas[-1] > 0, r.reshape(-1), 0.0))
    return _normalize(tuple(out))


def _support(mean, var, z, *, kron):
    r"""Support estimate from the posterior (see the module docstring).

    Entrywise score :math:`t_j = |\mu_j|/\sqrt{\Sigma_{jj}}` (0 where :math:`\Sigma_{jj} = 0`).
    Unstructured: :math:`\hat S = \{j : t_j > z\}`. Kronecker: the support is a Kronecker
    product, so factor entry :math:`k` of mode :math:`i` is kept when some entry of its slice
    has :math:`t_j > z`, and :math:`\hat S = \otimes_i \hat S_i`.
    """
    sd = jnp.sqrt(var)
    t = jnp.where(sd > 0, jnp.abs(mean) / jnp.where(sd > 0, sd, 1.0), 0.0)
    t = jnp.where(jnp.abs(mean) > 0, t, 0.0)
    if not kron:
        return (t > z).reshape(-1)
    hit = t > z
    axes = range(hit.ndim)
    factor_sets = [jnp.any(hit, axis=tuple(a for a in axes if a != i)) for i in axes]
    return kron_outer(factor_sets).reshape(-1)


def _prune(g, r):
    return jnp.where(g >= r * jnp.max(g), g, 0.0)


# --------------------------------------------------------------------------------------------
# the EM as a pure init/step (bayeslr.infer.loop drives it)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["y", "factors", "noise", "prune", "tol", "am_tol", "cmats", "perturbed"],
    meta_fields=["method", "learn_noise", "am_sweeps", "power_iters"],
)
@dataclasses.dataclass(frozen=True)
class KroSBLProblem:
    r"""The EM's data: ``rows`` measurement vectors sharing the dictionaries.

    One row per (frame, start): a batch of ``F`` frames fitted with ``R`` starts has ``F R``
    rows, frame-major. Every array is data (a new tolerance or noise level reuses the
    compiled EM); ``method``, ``learn_noise``, ``am_sweeps`` and ``power_iters`` are static.

    Attributes:
        y: ``(rows, M)`` observations.
        factors: dictionaries :math:`A_i` ``(M_i, N_i)``.
        noise: ``(rows,)`` the known :math:`\sigma^2`, or its start when learned.
        prune: ``(I,)`` relative pruning thresholds per factor (``"sbl"``: the largest).
        tol, am_tol: the EM and AM-sweep tolerances.
        cmats: per factor :math:`C_\beta` (PC-KroSBL) or ``None``; ``None`` for no coupling.
        perturbed: ``(rows,)`` whether the row starts from a random perturbation of the default
            start (restarts after the first).
    """

    y: Array
    factors: tuple[Array, ...]
    noise: Array
    prune: Array
    tol: Array
    am_tol: Array
    cmats: tuple | None
    perturbed: Array
    method: str
    learn_noise: bool
    am_sweeps: int
    power_iters: int


class KroSBLState(NamedTuple):
    """EM state per row: the prior variance factors (``((rows, N),)`` for ``"sbl"``), the noise
    variance, the last relative change of :math:`\\otimes\\gamma` and the iterations run."""

    gammas: tuple[Array, ...]
    sigma2: Array
    change: Array
    n_iter: Array


def _shapes(problem: KroSBLProblem):
    ms = tuple(a.shape[0] for a in problem.factors)
    ns = tuple(a.shape[1] for a in problem.factors)
    return ms, ns


def _default_start(y, problem: KroSBLProblem):
    r"""The scale-equivariant start :math:`E|y_m|^2 = \gamma_0 \|A\|_F^2 / M`, per factor."""
    ms, ns = _shapes(problem)
    rdt = _real_dtype(y.dtype)
    m = int(np.prod(ms))
    ey2 = jnp.sum(jnp.abs(y) ** 2) / m
    afro = jnp.prod(jnp.stack([jnp.sum(jnp.abs(a) ** 2) for a in problem.factors]))
    g0 = m * ey2 / jnp.where(afro > 0, afro, 1.0)
    g0 = jnp.where(g0 > 0, g0, 1.0).astype(rdt)
    if problem.method == "sbl":
        return (jnp.full((int(np.prod(ns)),), g0, rdt),)
    big_i = len(ns)
    cm = problem.cmats
    # uncoupled factors start constant; a coupled one at C_β·1 (its γ_i = 1), times the same
    # scale so that ⊗γ starts near g0
    return tuple(
        jnp.full((k,), g0 ** (1.0 / big_i), rdt) if cm is None or cm[i] is None
        else (g0 ** (1.0 / big_i) * jnp.sum(cm[i], axis=1)).astype(rdt)
        for i, k in enumerate(ns)
    )  # fmt: skip


def krosbl_init(key, problem: KroSBLProblem, restart=0) -> KroSBLState:
    """The EM's start per row: the default start, scaled entrywise by :math:`e^{N(0,1)}` for the
    rows of later starts (same scale on average, different basins)."""
    rows = problem.y.shape[0]
    rdt = _real_dtype(problem.y.dtype)

    def one(k, y, perturbed):
        gs = _default_start(y, problem)
        keys = jax.random.split(k, len(gs))
        return tuple(
            jnp.where(perturbed, g * jnp.exp(jax.random.normal(kk, g.shape, rdt)), g)
            for kk, g in zip(keys, gs, strict=True)
        )

    gammas = jax.vmap(one)(jax.random.split(key, rows), problem.y, problem.perturbed)
    return KroSBLState(
        gammas, problem.noise.astype(rdt), jnp.full((rows,), jnp.inf, rdt),
        jnp.zeros((rows,), jnp.int32),
    )  # fmt: skip


def _estep(y, gs, s2, problem: KroSBLProblem) -> KroEStep:
    if problem.method == "sbl":
        return _dense_estep(y, kron_dense(problem.factors), gs[0], s2)
    ms, _ = _shapes(problem)
    return _kron_estep(y.reshape(ms), problem.factors, gs, s2)


def _full(gs, problem):
    return gs[0] if problem.method == "sbl" else kron_outer(list(gs)).reshape(-1)


def _mstep(d, gs, problem: KroSBLProblem):
    if problem.method == "sbl":
        new = (jnp.where(gs[0] > 0, d, 0.0),)
        return (_prune(new[0], jnp.max(problem.prune)),)
    if problem.method == "am":
        new = _am_mstep(d, gs, problem.am_sweeps, problem.am_tol, problem.cmats)
    else:
        new = _svd_mstep(d, gs, problem.power_iters)
    return tuple(_prune(g, problem.prune[i]) for i, g in enumerate(new))


def krosbl_step(key, state: KroSBLState, problem: KroSBLProblem):
    r"""One EM iteration on every row not yet converged (module docstring): E-step, M-step,
    pruning, noise update. Rows whose last change is below ``tol`` stay as they are.

    ``info``: ``change`` and ``objective`` per row (the objective at the :math:`\gamma`
    entering the iteration; zero for rows that did not run) and ``max_change`` over rows.
    """
    rdt = _real_dtype(problem.y.dtype)
    m = problem.y.shape[1]

    def one(y, gs, s2, change, n_it):
        active = change > problem.tol
        est = _estep(y, gs, s2, problem)
        d = (est.var + jnp.abs(est.mean) ** 2).astype(rdt)
        new = _mstep(d, gs, problem)
        s2_new = s2
        if problem.learn_noise:
            ey2 = jnp.sum(jnp.abs(y) ** 2) / m
            floor = 1e-10 * ey2 + jnp.finfo(rdt).tiny ** 0.5
            s2_new = jnp.maximum((est.resid2 + s2 * est.dof) / m, floor).astype(rdt)
        ch = _rel_change(_full(new, problem), _full(gs, problem)).astype(rdt)
        keep = functools.partial(jnp.where, active)
        gs = tuple(keep(a, b) for a, b in zip(new, gs, strict=True))
        obj = jnp.where(active, est.objective.astype(rdt), 0.0)
        return (gs, keep(s2_new, s2), keep(ch, change), n_it + active.astype(jnp.int32),
                jnp.where(active, ch, 0.0), obj)  # fmt: skip

    gs, s2, change, n_it, ch, obj = jax.vmap(one)(problem.y, state.gammas, state.sigma2,
                                                  state.change, state.n_iter)  # fmt: skip
    info = {"change": ch, "objective": obj, "max_change": jnp.max(change),
            "converged": jnp.all(change <= problem.tol)}  # fmt: skip
    return KroSBLState(gs, s2, change, n_it), info


def _all_converged(info) -> jax.Array:
    return info["converged"]


#: the EM's stop rule: every row's relative change below ``tol`` (data of the problem)
KROSBL_STOP = loop.Until(_all_converged)


def _finalize_impl(state: KroSBLState, problem: KroSBLProblem, history, support_z, frames,
                   restarts) -> KroSBLResult:  # fmt: skip
    """The final E-step per row, the best start per frame (lowest objective), the support."""

    def one(y, gs, s2):
        est = _estep(y, gs, s2, problem)
        return est.mean.reshape(-1), est.var.reshape(-1), est.objective, _full(gs, problem)

    mean, var, obj, gamma = jax.vmap(one)(problem.y, state.gammas, state.sigma2)
    rdt = _real_dtype(problem.y.dtype)
    pick = jnp.argmin(jnp.where(jnp.isfinite(obj), obj, jnp.inf).reshape(frames, restarts), 1)
    rows = jnp.arange(frames) * restarts + pick

    def take(a):
        return a[rows]

    _, ns = _shapes(problem)
    kron = problem.method != "sbl"
    grid = ns if kron else (-1,)
    support = jax.vmap(lambda mu, v: _support(mu.reshape(grid), v.reshape(grid), support_z,
                                              kron=kron))(take(mean), take(var))  # fmt: skip
    tol = problem.tol
    return KroSBLResult(
        mean=take(mean), var=take(var), gamma=take(gamma),
        gammas=() if not kron else tuple(take(g) for g in state.gammas),
        sigma2=take(state.sigma2), support=support, n_iter=take(state.n_iter),
        converged=take(state.change) <= tol,
        gamma_change=take(history["change"].T).astype(rdt),
        objective=take(history["objective"].T).astype(rdt),
    )  # fmt: skip


_finalize = jax.jit(_finalize_impl, static_argnames=("frames", "restarts"))


def _unbatch(res: KroSBLResult) -> KroSBLResult:
    return jax.tree.map(lambda a: a[0], res)


def krosbl_problem(y, factors, *, method="svd", noise=None, prune=None, tol=1e-4,
                   am_sweeps=10, am_tol=1e-4, power_iters=10, coupling=None,
                   restarts=1) -> tuple[KroSBLProblem, bool]:  # fmt: skip
    """Validate the data and options and build the :class:`KroSBLProblem` (frames × starts rows);
    returns it and whether ``y`` was batched. Every check runs before anything compiles."""
    _check_options(method, prune, 1, tol, am_sweeps, am_tol, power_iters, 0.0)
    _check_coupling_method(coupling, method)
    restarts = check_int("restarts", restarts, minimum=1)
    y, factors, batched = _check_problem(y, factors, noise)
    betas = _check_coupling(coupling, len(factors))
    if betas is not None and all(b is None for b in betas):
        betas = None
    prune = _check_prune(DEFAULT_PRUNE[method] if prune is None else prune, len(factors))
    rdt = _real_dtype(y.dtype)
    ys = y if batched else y[None]
    rows = jnp.repeat(ys, restarts, axis=0)
    if noise is None:
        s2 = 0.1 * jnp.sum(jnp.abs(rows) ** 2, axis=1) / rows.shape[1]
    else:
        s2 = jnp.full((rows.shape[0],), noise, rdt)
    cmats = None
    if betas is not None:
        cmats = tuple(None if b is None else jnp.asarray(coupling_matrix(a.shape[1], b), rdt)
                      for a, b in zip(factors, betas, strict=True))  # fmt: skip
    perturbed = jnp.tile(jnp.arange(restarts) > 0, ys.shape[0])
    problem = KroSBLProblem(
        y=rows, factors=factors, noise=s2.astype(rdt), prune=jnp.asarray(prune, rdt),
        tol=jnp.asarray(tol, rdt), am_tol=jnp.asarray(am_tol, rdt), cmats=cmats,
        perturbed=perturbed, method=method, learn_noise=noise is None,
        am_sweeps=int(am_sweeps), power_iters=int(power_iters),
    )  # fmt: skip
    return problem, batched


def krosbl_em(
    y: ArrayLike,
    factors: Sequence[ArrayLike],
    *,
    method: str = "svd",
    noise: float | None = None,
    prune: float | Sequence[float] | None = None,
    max_iter: int = 150,
    tol: float = 1e-4,
    am_sweeps: int = 10,
    am_tol: float = 1e-4,
    power_iters: int = 10,
    support_z: float = 3.0,
    coupling: float | Sequence[float | None] | None = None,
    restarts: int = 1,
    seed: int = 0,
) -> KroSBLResult:
    r"""Type-II ML (EM) for Kronecker-structured SBL as one pure function (the functional core of
    :class:`~bayeslr.models.KroneckerSBL`, for use under ``jit``/``vmap``).

    The same :func:`krosbl_init`/:func:`krosbl_step` as the estimator, run by
    :func:`bayeslr.infer.loop.scan_steps` (no progress bar, no checkpoint).

    Args:
        y: observations, ``(M,)`` or ``(batch, M)`` (each row a measurement vector sharing the
            dictionary; every row runs its own EM). :math:`M = \prod_i M_i`, row-major order of
            the grid ``(M_1, ..., M_I)`` (as ``jnp.kron``).
        factors: dictionaries :math:`A_i`, ``(M_i, N_i)``, :math:`I \ge 2`; real or complex.
            Complex ``y`` needs complex dictionaries (CN model).
        method: ``"svd"`` (SVD-KroSBL), ``"am"`` (AM-KroSBL) or ``"sbl"`` (unstructured
            :math:`\gamma`, dense E-step; the baseline).
        noise: known noise variance :math:`\sigma^2 > 0`, or ``None`` to learn it.
        prune: relative threshold :math:`r`: :math:`\gamma_i[k] < r\max\gamma_i` is set to 0;
            ``None`` picks the method's default (``1e-5`` for ``"svd"``, ``1e-2`` for
            ``"am"``, ``1e-3`` for ``"sbl"``); or one threshold per factor (the reference's
            PC-KroSBL uses ``(1e-2, 1e-1, 1e-2)`` on IRS-MIMO). ``"sbl"`` prunes the full
            :math:`\gamma` with the largest of them.
        max_iter: maximum EM iterations.
        tol: stop when the relative change of :math:`\otimes\gamma` is below ``tol``.
        am_sweeps, am_tol: AM block sweeps per M-step and their stopping tolerance.
        power_iters: warm-started power iterations per rank-one fit (SVD M-step).
        support_z: threshold :math:`z` of the support rule on :math:`|\mu_j|/\sqrt{\Sigma_{jj}}`.
        coupling: pattern coupling (PC-KroSBL) for clustered (block-sparse) factor supports:
            ``None`` (no coupling), a float :math:`\beta \in [0, 1)` for every factor, or a
            sequence with one :math:`\beta` or ``None`` (uncoupled) per factor. A coupled
            factor has prior variance :math:`\tilde\gamma_i = C_\beta\gamma_i` and an NNLS
            M-step (module docstring). Needs ``method="am"``.
        restarts: EM runs from ``restarts`` starts side by side, keeping per row the one with
            the lowest final objective :math:`\mathcal L`: the default start and ``restarts -
            1`` starts with every :math:`\gamma` entry scaled by :math:`e^{\varepsilon}`,
            :math:`\varepsilon\sim N(0,1)`. EM (like classic SBL) can stop in a local minimum
            that loses a true atom and its slice. Cost: ``restarts`` times one fit.
        seed: seed of the random starts.

    Returns:
        :class:`KroSBLResult` (with a leading batch axis when ``y`` is 2-D). For coupled factors
        ``gammas[i]`` is the prior variance :math:`\tilde\gamma_i`.

    Raises:
        TypeError: ``factors`` is not a sequence of matrices.
        ValueError: fewer than 2 factors, shapes inconsistent with ``y``, non-finite values,
            complex ``y`` with real dictionaries, non-positive ``noise``, bad options,
            ``coupling`` outside :math:`[0, 1)`, of the wrong length, or with a method other
            than ``"am"``.

    Cost: per iteration :math:`O(\sum_i(M_i^2N_i + M_i^3) + (M+N)\sum_i\max(M_i,N_i))` for
    ``"svd"``/``"am"`` (plus :math:`O(N)` per power step or AM sweep), memory :math:`O(M + N +
    \text{max\_iter})`; ``"sbl"``: :math:`O(M^2N)` time and :math:`O(MN)` memory; a coupled
    factor adds an NNLS of size :math:`N_i` per AM block update. It compiles once per array
    shapes and static options (``method``, ``max_iter``, ``am_sweeps``, ``power_iters``,
    ``restarts``, coupling or not, noise known or learned); tolerances, thresholds, the noise
    level and the seed are data.
    """
    check_int("max_iter", max_iter, minimum=1)
    _check_options(method, prune, max_iter, tol, am_sweeps, am_tol, power_iters, support_z)
    problem, batched = krosbl_problem(
        y, factors, method=method, noise=noise, prune=prune, tol=tol, am_sweeps=am_sweeps,
        am_tol=am_tol, power_iters=power_iters, coupling=coupling, restarts=restarts,
    )  # fmt: skip
    key = as_key(seed)
    z = jnp.asarray(support_z, problem.tol.dtype)
    res = _em_compiled(problem, key, z, max_iter=int(max_iter), restarts=restarts)
    return res if batched else _unbatch(res)


@functools.partial(jax.jit, static_argnames=("max_iter", "restarts"))
def _em_compiled(problem, key, support_z, *, max_iter, restarts):
    """:func:`krosbl_em` after validation, compiled once per problem structure."""
    state, hist, _, _ = loop.scan_steps(krosbl_init, krosbl_step, problem, key, max_iter,
                                        stop=KROSBL_STOP)  # fmt: skip
    frames = problem.y.shape[0] // restarts
    return _finalize_impl(state, problem, hist, support_z, frames, restarts)


# --------------------------------------------------------------------------------------------
# posterior draws (Matheron's rule)


def krosbl_sample(
    rng_key,
    y: ArrayLike,
    factors: Sequence[ArrayLike],
    gamma: ArrayLike,
    sigma2: ArrayLike,
    num_draws: int = 100,
    gammas: Sequence[ArrayLike] | None = None,
) -> Array:
    r"""Draws of :math:`x \mid y, \gamma, \sigma^2` by Matheron's rule (pathwise conditioning).

    .. math::
        x = x_0 + \Gamma A^H \Sigma_y^{-1}(y - A x_0 - e), \quad x_0 \sim \mathcal N(0, \Gamma),
        \ e \sim \mathcal N(0, \sigma^2 I)

    (circular complex normals for complex data). With ``gammas`` the correction uses the
    factored :math:`\Gamma A^H \Sigma_y^{-1} = (\otimes B_i)\operatorname{diag}(w)(\otimes
    U_i)^H`; without it a dense Cholesky of :math:`\Sigma_y` (the unstructured case).

    Args:
        rng_key: ``jax.random`` key or int seed.
        y: observations ``(M,)``.
        factors: dictionaries :math:`A_i`.
        gamma: prior variances ``(N,)`` (used when ``gammas`` is None).
        sigma2: noise variance :math:`\sigma^2 > 0`.
        num_draws: number of draws :math:`S`.
        gammas: the Kronecker factors of :math:`\gamma` (preferred when available).

    Returns:
        ``(S, N)`` draws. Cost :math:`O(S (M+N)\sum_i\max(M_i,N_i))` factored,
        :math:`O(M^2N + S\,MN)` dense.
    """
    y, factors, batched = _check_problem(y, factors, sigma2)
    if batched:
        raise ValueError(f"`y` must be 1-D here (one measurement vector); got shape {y.shape}.")
    check_int("num_draws", num_draws, minimum=1)
    key = as_key(rng_key, "rng_key")
    dtype = y.dtype
    rdt = _real_dtype(dtype)
    ms = tuple(a.shape[0] for a in factors)
    ns = tuple(a.shape[1] for a in factors)
    n = int(np.prod(ns))
    is_complex = jnp.issubdtype(dtype, jnp.complexfloating)
    sigma2 = jnp.asarray(sigma2, rdt)

    def normal(k, shape):
        if is_complex:
            k1, k2 = jax.random.split(k)
            return (
                (jax.random.normal(k1, shape, rdt) + 1j * jax.random.normal(k2, shape, rdt))
                / np.sqrt(2.0)
            ).astype(dtype)
        return jax.random.normal(k, shape, rdt)

    kx, ke = jax.random.split(key)
    if gammas is not None:
        gammas = tuple(jnp.asarray(g, rdt) for g in gammas)
        gam = kron_outer(list(gammas))
        x0 = jnp.sqrt(gam)[..., None] * normal(kx, (*ns, num_draws))
        e = jnp.sqrt(sigma2) * normal(ke, (*ms, num_draws))
        fz = _kron_factorize(factors, gammas)
        r = y.reshape(ms)[..., None] - kron_mv(factors, x0) - e
        x = x0 + _kron_posterior_apply(fz, sigma2, r)
        return jnp.moveaxis(x.reshape(n, num_draws), -1, 0)
    gam = jnp.asarray(gamma, rdt)
    a = kron_dense(factors)
    x0 = jnp.sqrt(gam)[:, None] * normal(kx, (n, num_draws))
    e = jnp.sqrt(sigma2) * normal(ke, (a.shape[0], num_draws))
    ag = a * gam[None, :].astype(dtype)
    sy = jnp.matmul(ag, jnp.conj(a).T, precision=_HI) + sigma2 * jnp.eye(a.shape[0], dtype=dtype)
    chol = jnp.linalg.cholesky(0.5 * (sy + jnp.conj(sy).T))
    r = y[:, None] - jnp.matmul(a, x0, precision=_HI) - e
    x = x0 + jnp.matmul(jnp.conj(ag).T, jax.scipy.linalg.cho_solve((chol, True), r), precision=_HI)
    return x.T
