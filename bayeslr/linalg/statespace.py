r"""Linear-Gaussian state-space models: exact Gauss–Markov GPs in :math:`O(n)`.

A stationary kernel with an exact state-space form (``kernel.sde()``, see
:mod:`bayeslr.gp.kernels`) is the output of the linear time-invariant SDE

.. math::
    dx(t) = F x(t)\, dt + L\, d\beta(t), \quad E[d\beta\, d\beta^\top] = Q_c\, dt, \quad
    f(t) = H x(t), \quad x(t_1) \sim N(0, P_\infty),

with :math:`F P_\infty + P_\infty F^\top + L Q_c L^\top = 0`. Observed at sorted times
:math:`t_1 < \dots < t_n` with :math:`y_k = H x_k + e_k`, :math:`e_k \sim N(0, r_k)`, the GP
regression problem is a linear-Gaussian state-space model that the Kalman filter and the
Rauch–Tung–Striebel (RTS) smoother solve exactly in :math:`O(n d^3)` time instead of the
:math:`O(n^3)` dense Cholesky (:math:`d` is the state dimension: 1, 2, 3 for Matérn 1/2, 3/2, 5/2).

Discretization
    Over a gap :math:`\Delta_k = t_k - t_{k-1}` the exact transition is

    .. math::
        x_k = A_k x_{k-1} + q_k, \quad A_k = e^{F\Delta_k}, \quad
        q_k \sim N(0, Q_k), \quad Q_k = P_\infty - A_k P_\infty A_k^\top

    (the stationary form of :math:`\int_0^{\Delta} e^{Fs} L Q_c L^\top e^{F^\top s} ds`).
    The first step is written in the same form with :math:`A_1 = 0`, :math:`Q_1 = P_\infty`
    and a dummy :math:`x_0 = 0`, so every step is uniform (:class:`StateSpaceModel`).

Kalman filter (sequential, ``jax.lax.scan``)
    .. math::
        m_k^- = A_k m_{k-1},\quad P_k^- = A_k P_{k-1} A_k^\top + Q_k,\quad
        v_k = y_k - H m_k^-,\quad S_k = H P_k^- H^\top + r_k,\quad K_k = P_k^- H^\top S_k^{-1},

    .. math::
        m_k = m_k^- + K_k v_k,\quad
        P_k = (I - K_k H) P_k^- (I - K_k H)^\top + K_k r_k K_k^\top \ \text{(Joseph form)},

    and :math:`\log p(y) = -\tfrac12 \sum_k [\log(2\pi S_k) + v_k^2 / S_k]`. A missing
    observation (``mask[k]`` false) skips the update (:math:`K_k = 0`) and adds nothing to the
    log-likelihood. Every covariance is symmetrized after each step.

RTS smoother (sequential, reverse ``jax.lax.scan``)
    .. math::
        G_k = P_k A_{k+1}^\top (P_{k+1}^-)^{-1},\quad
        m_k^s = m_k + G_k (m_{k+1}^s - m_{k+1}^-),\quad
        P_k^s = P_k + G_k (P_{k+1}^s - P_{k+1}^-) G_k^\top .

Parallel forms (``parallel=True``, ``jax.lax.associative_scan``; Särkkä & García-Fernández 2021)
    Filtering elements :math:`a_k = (\bar A_k, b_k, C_k, \eta_k, J_k)`, with
    :math:`S_k = H Q_k H^\top + r_k`, :math:`K_k = Q_k H^\top S_k^{-1}` (zero where masked):

    .. math::
        \bar A_k = (I - K_k H) A_k,\ b_k = K_k y_k,\ C_k = (I - K_k H) Q_k,\
        \eta_k = A_k^\top H^\top S_k^{-1} y_k,\ J_k = A_k^\top H^\top S_k^{-1} H A_k,

    combined by the associative operator (:math:`a_i` earlier, :math:`a_j` later,
    :math:`M = I + C_i J_j`)

    .. math::
        \bar A_{ij} = \bar A_j M^{-1} \bar A_i,\quad
        b_{ij} = \bar A_j M^{-1}(b_i + C_i \eta_j) + b_j,\quad
        C_{ij} = \bar A_j M^{-1} C_i \bar A_j^\top + C_j,

    .. math::
        \eta_{ij} = \bar A_i^\top M^{-\top}(\eta_j - J_j b_i) + \eta_i,\quad
        J_{ij} = \bar A_i^\top M^{-\top} J_j \bar A_i + J_i .

    The prefix :math:`a_1 \otimes \dots \otimes a_k` holds :math:`(m_k, P_k)` in
    :math:`(b, C)`; the log-likelihood then follows from the one-step predictions in parallel.
    Smoothing elements :math:`(E_k, g_k, L_k)` with :math:`E_k = G_k`,
    :math:`g_k = m_k - E_k A_{k+1} m_k`, :math:`L_k = P_k - E_k A_{k+1} P_k`
    (:math:`E_n = 0, g_n = m_n, L_n = P_n`) are combined backwards by
    :math:`(E_i, g_i, L_i) \otimes (E_j, g_j, L_j) = (E_i E_j,\ E_i g_j + g_i,\
    E_i L_j E_i^\top + L_i)`, and the suffix from :math:`k` holds :math:`(m_k^s, P_k^s)`.

Cost
    Sequential: :math:`O(n d^3)` time, :math:`O(n)` depth. Parallel: :math:`O(n d^3)` work
    (a constant factor more) and :math:`O(\log n)` depth, the better choice on accelerators for
    long series. Memory :math:`O(n d^2)` in both.

Conventions
    * Times must be strictly increasing. They are **not** sorted silently: unsorted times or
      duplicated times raise :class:`ValueError` (a duplicate makes :math:`A_k = I, Q_k = 0`;
      average or merge duplicated observations before calling).
    * ``noise`` is the observation-noise variance :math:`r`: a scalar or one value per time.
    * ``mask`` (boolean, true = observed) marks missing observations; ``y`` may hold anything
      (NaN included) where ``mask`` is false.
    * Only scalar observations (:math:`H` of shape ``(1, d)``) are supported.
    * ``parallel`` is a static Python bool in every entry point. Everything is jittable,
      ``vmap``-able over independent series (same times or not) and differentiable with respect
      to the kernel hyperparameters (kernels are pytrees), the noise and ``y``.
    * Values are checked at the door when they are concrete; under ``jit``/``vmap`` only the
      static shape checks run.

References:
    Särkkä & Solin (2019), *Applied Stochastic Differential Equations*, ch. 6 and 12;
    Särkkä (2013), *Bayesian Filtering and Smoothing*;
    Hartikainen & Särkkä (2010), *Kalman filtering and smoothing solutions to temporal Gaussian
    process regression models*;
    Särkkä & García-Fernández (2021), *Temporal parallelization of Bayesian smoothers*, IEEE TAC.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from bayeslr._validation import check_finite, check_ndim, check_positive, is_concrete

__all__ = [
    "StateSpaceModel",
    "FilterResult",
    "SmootherResult",
    "PosteriorMarginals",
    "discretize",
    "from_sde",
    "from_kernel",
    "kalman_filter",
    "rts_smoother",
    "log_marginal_likelihood",
    "posterior_marginals",
    "sample_prior",
    "sample_posterior",
    "predict",
]

# Full-precision contractions: on GPUs JAX defaults float32 matmuls to TF32 (~3 digits).
_HI = jax.lax.Precision.HIGHEST
_LOG_2PI = float(np.log(2.0 * np.pi))


class StateSpaceModel(NamedTuple):
    r"""Discrete linear-Gaussian model :math:`x_k = A_k x_{k-1} + q_k`, :math:`f_k = H x_k`.

    The first step has :math:`A_1 = 0`, :math:`Q_1 = P_\infty` (prior of :math:`x_1`), so all
    steps share one form.

    Attributes:
        transitions: :math:`A_k`, shape ``(n, d, d)``.
        process_covs: :math:`Q_k`, shape ``(n, d, d)``.
        H: Measurement matrix, shape ``(1, d)``.
    """

    transitions: Float[Array, "n d d"]
    process_covs: Float[Array, "n d d"]
    H: Float[Array, "1 d"]


class FilterResult(NamedTuple):
    r"""Kalman filter output: :math:`p(x_k \mid y_{1:k}) = N(m_k, P_k)` and :math:`\log p(y)`."""

    means: Float[Array, "n d"]
    covs: Float[Array, "n d d"]
    log_likelihood: Float[Array, ""]


class SmootherResult(NamedTuple):
    r"""RTS smoother output: :math:`p(x_k \mid y_{1:n}) = N(m^s_k, P^s_k)`."""

    means: Float[Array, "n d"]
    covs: Float[Array, "n d d"]


class PosteriorMarginals(NamedTuple):
    r"""Posterior marginals of the latent :math:`f(t_k) = H x_k` at the data times."""

    mean: Float[Array, " n"]
    variance: Float[Array, " n"]


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _sym(p: Array) -> Array:
    return 0.5 * (p + jnp.swapaxes(p, -1, -2))


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HI)


def _mv(a: Array, x: Array) -> Array:
    return jnp.matmul(a, x[..., None], precision=_HI)[..., 0]


def _check_times(times: Any) -> Array:
    """1-D, finite, strictly increasing times (value checks only when concrete)."""
    t = jnp.asarray(times)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.promote_types(t.dtype, jnp.float32))
    check_ndim("times", t, 1)
    if t.shape[0] < 1:
        raise ValueError("`times` must hold at least one time; got shape (0,).")
    if is_concrete(times):
        a = np.asarray(times, dtype=np.float64)
        check_finite("times", a)
        gaps = np.diff(a)
        if np.any(gaps < 0):
            k = int(np.argmax(gaps < 0))
            raise ValueError(
                "`times` must be strictly increasing (they are not sorted silently: sort `times` "
                f"and `y` together); got times[{k}] = {a[k]:g} > times[{k + 1}] = {a[k + 1]:g}."
            )
        if np.any(gaps == 0):
            k = int(np.argmax(gaps == 0))
            raise ValueError(
                "`times` must be strictly increasing without duplicates (merge or average "
                f"repeated observations); got the duplicated value {a[k]:g} at positions {k} and "
                f"{k + 1}."
            )
        # Gaps that vanish in the working dtype (e.g. float32 rounding) are duplicates too.
        tiny = np.diff(a.astype(np.dtype(t.dtype))) <= 0
        if np.any(tiny):
            k = int(np.argmax(tiny))
            raise ValueError(
                f"`times` must be strictly increasing in dtype {t.dtype}; times[{k}] = {a[k]!r} "
                f"and times[{k + 1}] = {a[k + 1]!r} round to the same duplicated value."
            )
    return t


def _check_noise(noise: Any, n: int) -> Array:
    """Check ``noise``: a positive scalar or one positive variance per time, shape ``(n,)``."""
    noise_arr = jnp.asarray(noise)
    check_ndim("noise", noise_arr, (0, 1))
    if noise_arr.ndim == 1 and noise_arr.shape[0] != n:
        raise ValueError(
            f"`noise` must be a scalar or have shape ({n},) (one variance per time); got shape "
            f"{noise_arr.shape}."
        )
    check_positive("noise", noise)
    return noise_arr


def _prepare_data(n: int, y: Any, noise: Any, mask: Any, dtype: Any) -> tuple[Array, Array, Array]:
    """Validate ``y``, ``noise``, ``mask`` against ``n`` times; return (y with 0 where masked,
    per-time noise, float mask)."""
    y_arr = jnp.asarray(y)
    check_ndim("y", y_arr, 1)
    if y_arr.shape[0] != n:
        raise ValueError(
            f"`y` must have one value per time, shape ({n},); got shape {y_arr.shape}."
        )
    noise_arr = _check_noise(noise, n)
    if mask is None:
        check_finite("y", y)
        m = jnp.ones((n,), dtype=bool)
    else:
        m = jnp.asarray(mask)
        if m.dtype != jnp.bool_:
            raise ValueError(
                f"`mask` must be a boolean array (True = observed); got dtype {m.dtype}."
            )
        if m.shape != (n,):
            raise ValueError(f"`mask` must have shape ({n},); got shape {m.shape}.")
        if is_concrete(y) and is_concrete(mask):
            check_finite("y (observed entries)", np.asarray(y)[np.asarray(mask)])
    y_arr = jnp.where(m, y_arr, 0).astype(dtype)
    r = jnp.broadcast_to(noise_arr.astype(dtype), (n,))
    return y_arr, r, m.astype(dtype)


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------


def discretize(
    sde: Any, dt: Float[ArrayLike, " m"], *, rate: Any = None
) -> tuple[Float[Array, "m d d"], Float[Array, "m d d"]]:
    r"""Exact discretization of an LTI SDE over gaps :math:`\Delta_k`.

    .. math:: A_k = e^{F\Delta_k}, \qquad Q_k = P_\infty - A_k P_\infty A_k^\top

    (symmetrized), exact for any :math:`\Delta_k \ge 0` when :math:`P_\infty` is the stationary
    covariance of the SDE.

    **Closed form for Matérn kernels.** For Matérn :math:`\nu = p + \tfrac12` the companion
    matrix has characteristic polynomial :math:`(s + \lambda)^d`, so :math:`N = F + \lambda I`
    is nilpotent and exactly

    .. math:: e^{F\Delta} = e^{-\lambda\Delta} \sum_{j<d} \frac{(N\Delta)^j}{j!}.

    Pass ``rate`` :math:`=\lambda` to use it (:func:`from_kernel` does so for kernels with a
    ``rate``, i.e. the Matérn family): a few multiply-adds per gap instead of a Padé ``expm``,
    and about 4x faster value and gradient of a log-likelihood. Without ``rate``, ``expm`` is
    used (e.g. the Student-t mixture's quasi-periodic SDE).

    Args:
        sde: An :class:`~bayeslr.gp.SDE` (fields ``F`` and ``Pinf`` are used), e.g.
            ``kernel.sde()``.
        dt: Gaps :math:`\Delta_k \ge 0`, shape ``(m,)``.
        rate: Optional :math:`\lambda` such that :math:`F + \lambda I` is nilpotent.

    Returns:
        ``(A, Q)``, each of shape ``(m, d, d)``. Cost :math:`O(m d^3)`.

    Raises:
        ValueError: ``dt`` not 1-D or negative; ``rate`` given (concrete) but
            :math:`F + \lambda I` is not nilpotent.
    """
    dt = jnp.asarray(dt)
    check_ndim("dt", dt, 1)
    check_positive("dt", dt, allow_zero=True)
    F, Pinf = jnp.asarray(sde.F), jnp.asarray(sde.Pinf)
    dtype = jnp.result_type(F, Pinf, dt)
    F, Pinf, dt = F.astype(dtype), Pinf.astype(dtype), dt.astype(dtype)
    if rate is None:
        A = jax.vmap(lambda h: jax.scipy.linalg.expm(F * h))(dt)
    else:
        A = _nilpotent_expm(F, jnp.asarray(rate, dtype), dt)
    Q = _sym(Pinf - _mm(_mm(A, Pinf), jnp.swapaxes(A, -1, -2)))
    return A, Q


def _nilpotent_expm(F: Array, rate: Array, dt: Array) -> Array:
    """:math:`e^{F\\Delta}` for every gap when :math:`N = F + \\lambda I` is nilpotent."""
    d = F.shape[-1]
    N = F + rate * jnp.eye(d, dtype=F.dtype)
    if is_concrete((N,)):
        nd = np.linalg.matrix_power(np.asarray(N, np.float64), d)
        scale = max(float(np.max(np.abs(np.asarray(F, np.float64)))), 1e-30) ** d
        if float(np.max(np.abs(nd))) > 1e-6 * scale:
            raise ValueError(
                f"`rate` must make F + rate*I nilpotent (a Matérn SDE); got rate={float(rate):g} "
                f"with max |(F + rate I)^{d}| = {float(np.max(np.abs(nd))):.3g}."
            )
    powers = [jnp.eye(d, dtype=F.dtype)]
    for _ in range(1, d):
        powers.append(_mm(powers[-1], N))
    fact = 1.0
    series = jnp.zeros((dt.shape[0], d, d), F.dtype)
    for j, pj in enumerate(powers):
        fact = fact * max(j, 1)
        series = series + (dt**j / fact)[:, None, None] * pj
    return jnp.exp(-rate * dt)[:, None, None] * series


def from_sde(sde: Any, times: Float[ArrayLike, " n"], *, rate: Any = None) -> StateSpaceModel:
    r"""Build the :class:`StateSpaceModel` of an LTI SDE observed at sorted ``times``.

    Args:
        sde: An :class:`~bayeslr.gp.SDE` with ``H`` of shape ``(1, d)``.
        times: Strictly increasing times :math:`t_1 < \dots < t_n`, shape ``(n,)``.
        rate: Optional Matérn rate for the closed-form transition (see :func:`discretize`).

    Returns:
        The model with :math:`A_1 = 0, Q_1 = P_\infty` and :func:`discretize` for the gaps.
        Cost :math:`O(n d^3)` time, :math:`O(n d^2)` memory.

    Raises:
        ValueError: ``times`` not 1-D, not finite, unsorted or with duplicates; ``H`` not
            ``(1, d)``.
    """
    t = _check_times(times)
    H = jnp.asarray(sde.H)
    d = jnp.shape(sde.F)[-1]
    if H.shape != (1, d):
        raise ValueError(
            f"`sde.H` must have shape (1, {d}) (scalar observations only); got {H.shape}."
        )
    A, Q = discretize(sde, jnp.diff(t), rate=rate)
    dtype = A.dtype
    Pinf = _sym(jnp.asarray(sde.Pinf).astype(dtype))
    A = jnp.concatenate([jnp.zeros((1, d, d), dtype), A], axis=0)
    Q = jnp.concatenate([Pinf[None], Q], axis=0)
    return StateSpaceModel(transitions=A, process_covs=Q, H=H.astype(dtype))


def from_kernel(kernel: Any, times: Float[ArrayLike, " n"]) -> StateSpaceModel:
    r"""Build the :class:`StateSpaceModel` of a stationary kernel with an exact SDE.

    Equivalent to ``from_sde(kernel.sde(), times, rate=kernel.rate)`` for the Matérn family
    (closed-form transitions) and ``from_sde(kernel.sde(), times)`` otherwise.

    Args:
        kernel: A kernel with ``sde()`` (Matérn 1/2, 3/2, 5/2, Student-t mixture). RBF and
            spectral mixture raise :class:`ValueError` from ``sde()``.
        times: Strictly increasing times, shape ``(n,)``.
    """
    if not hasattr(kernel, "sde"):
        raise ValueError(
            f"`kernel` must have an exact state-space form (a `sde()` method); got "
            f"{type(kernel).__name__}."
        )
    # Matérn kernels expose their rate λ (F + λI nilpotent): closed-form transitions
    return from_sde(kernel.sde(), times, rate=getattr(kernel, "rate", None))


# ---------------------------------------------------------------------------------------------
# Kalman filter
# ---------------------------------------------------------------------------------------------


def _filter_sequential(model: StateSpaceModel, y: Array, r: Array, w: Array) -> FilterResult:
    h = model.H[0]
    d = h.shape[0]
    eye = jnp.eye(d, dtype=y.dtype)

    def step(carry, inputs):
        m, P, ll = carry
        A, Q, yk, rk, wk = inputs
        mp = _mv(A, m)
        Pp = _sym(_mm(_mm(A, P), A.T) + Q)
        ph = _mv(Pp, h)
        s = jnp.dot(h, ph, precision=_HI) + rk
        v = yk - jnp.dot(h, mp, precision=_HI)
        k = wk * ph / s
        m_new = mp + k * v
        ikh = eye - jnp.outer(k, h)
        P_new = _sym(_mm(_mm(ikh, Pp), ikh.T) + rk * jnp.outer(k, k))
        ll = ll - 0.5 * wk * (_LOG_2PI + jnp.log(s) + v * v / s)
        return (m_new, P_new, ll), (m_new, P_new)

    init = (jnp.zeros((d,), y.dtype), jnp.zeros((d, d), y.dtype), jnp.zeros((), y.dtype))
    (_, _, ll), (ms, Ps) = jax.lax.scan(
        step, init, (model.transitions, model.process_covs, y, r, w)
    )
    return FilterResult(means=ms, covs=Ps, log_likelihood=ll)


def _filter_element(A, Q, h, yk, rk, wk):
    """Särkkä & García-Fernández (2021) filtering element of one step (masked: K = 0)."""
    d = h.shape[0]
    eye = jnp.eye(d, dtype=Q.dtype)
    qh = _mv(Q, h)
    s = jnp.dot(h, qh, precision=_HI) + rk
    sinv = wk / s
    k = qh * sinv
    ikh = eye - jnp.outer(k, h)
    a_bar = _mm(ikh, A)
    b = k * yk
    c = _sym(_mm(_mm(ikh, Q), ikh.T) + rk * jnp.outer(k, k))
    ha = _mv(A.T, h)  # A^T h
    eta = ha * (sinv * yk)
    J = sinv * jnp.outer(ha, ha)
    return a_bar, b, c, eta, J


def _filter_combine(ei, ej):
    """(a_i earlier) ⊗ (a_j later) of the parallel filter, one pair (vmapped by the caller)."""
    Ai, bi, Ci, etai, Ji = ei
    Aj, bj, Cj, etaj, Jj = ej
    d = Ai.shape[-1]
    eye = jnp.eye(d, dtype=Ai.dtype)
    M = eye + _mm(Ci, Jj)
    rhs = jnp.concatenate([Ai, (bi + _mv(Ci, etaj))[:, None], Ci], axis=1)
    sol = jnp.linalg.solve(M, rhs)
    Ajs = _mm(Aj, sol)
    A = Ajs[:, :d]
    b = Ajs[:, d] + bj
    C = _sym(_mm(Ajs[:, d + 1 :], Aj.T) + Cj)
    rhs_t = jnp.concatenate([(etaj - _mv(Jj, bi))[:, None], _mm(Jj, Ai)], axis=1)
    sol_t = _mm(Ai.T, jnp.linalg.solve(M.T, rhs_t))
    eta = sol_t[:, 0] + etai
    J = _sym(sol_t[:, 1:] + Ji)
    return A, b, C, eta, J


def _filter_parallel(model: StateSpaceModel, y: Array, r: Array, w: Array) -> FilterResult:
    h = model.H[0]
    A, Q = model.transitions, model.process_covs
    elems = jax.vmap(_filter_element, in_axes=(0, 0, None, 0, 0, 0))(A, Q, h, y, r, w)
    _, ms, Ps, _, _ = jax.lax.associative_scan(jax.vmap(_filter_combine), elems)
    # One-step predictions from the filtered moments give the log-likelihood in parallel.
    m_prev = jnp.concatenate([jnp.zeros_like(ms[:1]), ms[:-1]], axis=0)
    P_prev = jnp.concatenate([jnp.zeros_like(Ps[:1]), Ps[:-1]], axis=0)
    mp = _mv(A, m_prev)
    Pp = _sym(_mm(_mm(A, P_prev), jnp.swapaxes(A, -1, -2)) + Q)
    s = jnp.einsum("i,nij,j->n", h, Pp, h, precision=_HI) + r
    v = y - jnp.einsum("i,ni->n", h, mp, precision=_HI)
    ll = -0.5 * jnp.sum(w * (_LOG_2PI + jnp.log(s) + v * v / s))
    return FilterResult(means=ms, covs=Ps, log_likelihood=ll)


def kalman_filter(
    model: StateSpaceModel,
    y: Float[ArrayLike, " n"],
    noise: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    *,
    mask: Bool[ArrayLike, " n"] | None = None,
    parallel: bool = False,
) -> FilterResult:
    r"""Kalman filter of :math:`y_k = H x_k + e_k`, :math:`e_k \sim N(0, r_k)`.

    Computes :math:`p(x_k \mid y_{1:k}) = N(m_k, P_k)` (Joseph-form update, symmetrized) and
    the log marginal likelihood :math:`\log p(y_{1:n}) = -\tfrac12\sum_k [\log 2\pi S_k +
    v_k^2/S_k]` over the observed entries; equations in the module docstring.

    Args:
        model: :class:`StateSpaceModel` over :math:`n` times (:func:`from_kernel`).
        y: Observations :math:`y_k`, shape ``(n,)``; finite where observed.
        noise: Noise variances :math:`r_k > 0`, scalar or shape ``(n,)``.
        mask: Optional boolean ``(n,)``, true where :math:`y_k` is observed. A missing step skips
            the update and adds nothing to the log-likelihood.
        parallel: Static. ``False``: ``lax.scan`` (:math:`O(n)` depth). ``True``:
            ``lax.associative_scan`` (:math:`O(\log n)` depth, Särkkä & García-Fernández 2021).

    Returns:
        :class:`FilterResult` ``(means (n, d), covs (n, d, d), log_likelihood ())``. Cost
        :math:`O(n d^3)` time, :math:`O(n d^2)` memory.

    Raises:
        ValueError: shape mismatch, non-finite observed ``y``, non-positive ``noise``,
            non-boolean ``mask``.
    """
    if not isinstance(parallel, bool):
        raise ValueError(f"`parallel` must be a Python bool (static); got {parallel!r}.")
    n = model.transitions.shape[0]
    y_arr, r, w = _prepare_data(n, y, noise, mask, model.process_covs.dtype)
    if parallel:
        return _filter_parallel(model, y_arr, r, w)
    return _filter_sequential(model, y_arr, r, w)


# ---------------------------------------------------------------------------------------------
# RTS smoother
# ---------------------------------------------------------------------------------------------


def _smoother_gain(A: Array, Q: Array, m: Array, P: Array) -> tuple[Array, Array, Array]:
    """Predicted mean/cov of the next step and the gain :math:`G = P A^T (P^-)^{-1}`."""
    mp = _mv(A, m)
    Pp = _sym(_mm(_mm(A, P), A.T) + Q)
    G = jnp.linalg.solve(Pp, _mm(A, P)).T  # P^- symmetric: (P^-^{-1} A P)^T = P A^T P^-^{-1}
    return mp, Pp, G


def _smoother_sequential(model: StateSpaceModel, fr: FilterResult) -> SmootherResult:
    def step(carry, inputs):
        ms_next, Ps_next = carry
        A, Q, m, P = inputs
        mp, Pp, G = _smoother_gain(A, Q, m, P)
        ms = m + _mv(G, ms_next - mp)
        Ps = _sym(P + _mm(_mm(G, Ps_next - Pp), G.T))
        return (ms, Ps), (ms, Ps)

    init = (fr.means[-1], fr.covs[-1])
    xs = (model.transitions[1:], model.process_covs[1:], fr.means[:-1], fr.covs[:-1])
    _, (ms, Ps) = jax.lax.scan(step, init, xs, reverse=True)
    means = jnp.concatenate([ms, fr.means[-1:]], axis=0)
    covs = jnp.concatenate([Ps, fr.covs[-1:]], axis=0)
    return SmootherResult(means=means, covs=covs)


def _smoother_element(A, Q, m, P):
    """Smoothing element (E, g, L) of one step k < n, from A_{k+1}, Q_{k+1} and (m_k, P_k)."""
    _, _, E = _smoother_gain(A, Q, m, P)
    d = m.shape[0]
    iea = jnp.eye(d, dtype=P.dtype) - _mm(E, A)
    g = _mv(iea, m)
    L = _sym(_mm(_mm(iea, P), iea.T) + _mm(_mm(E, Q), E.T))  # = P - E A P, Joseph form
    return E, g, L


def _smoother_combine(later, earlier):
    """(E_i, g_i, L_i) ⊗ (E_j, g_j, L_j), i = ``earlier``, j = ``later`` (reverse scan order)."""
    Ej, gj, Lj = later
    Ei, gi, Li = earlier
    return _mm(Ei, Ej), _mv(Ei, gj) + gi, _sym(_mm(_mm(Ei, Lj), Ei.T) + Li)


def _smoother_parallel(model: StateSpaceModel, fr: FilterResult) -> SmootherResult:
    ms, Ps = fr.means, fr.covs
    E, g, L = jax.vmap(_smoother_element)(
        model.transitions[1:], model.process_covs[1:], ms[:-1], Ps[:-1]
    )
    E = jnp.concatenate([E, jnp.zeros_like(Ps[:1])], axis=0)
    g = jnp.concatenate([g, ms[-1:]], axis=0)
    L = jnp.concatenate([L, Ps[-1:]], axis=0)
    _, means, covs = jax.lax.associative_scan(jax.vmap(_smoother_combine), (E, g, L), reverse=True)
    return SmootherResult(means=means, covs=covs)


def rts_smoother(
    model: StateSpaceModel, filter_result: FilterResult, *, parallel: bool = False
) -> SmootherResult:
    r"""Rauch–Tung–Striebel smoother: :math:`p(x_k \mid y_{1:n}) = N(m^s_k, P^s_k)`.

    Sequential: :math:`G_k = P_k A_{k+1}^\top (P_{k+1}^-)^{-1}`,
    :math:`m^s_k = m_k + G_k(m^s_{k+1} - m^-_{k+1})`,
    :math:`P^s_k = P_k + G_k(P^s_{k+1} - P^-_{k+1})G_k^\top`. Parallel: the backward
    associative scan over :math:`(E_k, g_k, L_k)` (module docstring).

    Args:
        model: The :class:`StateSpaceModel` that was filtered.
        filter_result: Output of :func:`kalman_filter` on ``model`` (either form).
        parallel: Static; ``True`` uses ``lax.associative_scan`` (:math:`O(\log n)` depth).

    Returns:
        :class:`SmootherResult` ``(means (n, d), covs (n, d, d))``. Cost :math:`O(n d^3)`
        time, :math:`O(n d^2)` memory.
    """
    if not isinstance(parallel, bool):
        raise ValueError(f"`parallel` must be a Python bool (static); got {parallel!r}.")
    n = model.transitions.shape[0]
    if filter_result.means.shape[0] != n or filter_result.covs.shape[0] != n:
        raise ValueError(
            f"`filter_result` must hold {n} steps (one per model time); got means of shape "
            f"{filter_result.means.shape}."
        )
    if parallel:
        return _smoother_parallel(model, filter_result)
    return _smoother_sequential(model, filter_result)


# ---------------------------------------------------------------------------------------------
# Kernel-level entry points
# ---------------------------------------------------------------------------------------------


def log_marginal_likelihood(
    kernel: Any,
    times: Float[ArrayLike, " n"],
    y: Float[ArrayLike, " n"],
    noise: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    *,
    mask: Bool[ArrayLike, " n"] | None = None,
    parallel: bool = False,
) -> Float[Array, ""]:
    r"""GP log marginal likelihood :math:`\log N(y \mid 0, K + \operatorname{diag}(r))` in
    :math:`O(n d^3)`, by the Kalman filter of ``kernel.sde()``.

    Equal to the dense :math:`-\tfrac12 y^\top (K + R)^{-1} y - \tfrac12 \log|K + R|
    - \tfrac n2 \log 2\pi` on the observed entries (restricted to ``mask`` if given).

    Args:
        kernel: Kernel with an exact SDE (Matérn 1/2, 3/2, 5/2, Student-t mixture).
        times: Strictly increasing times, shape ``(n,)``.
        y: Observations, shape ``(n,)``.
        noise: Noise variances :math:`r_k > 0`, scalar or ``(n,)``.
        mask: Optional boolean ``(n,)``, true where observed.
        parallel: Static; see :func:`kalman_filter`.

    Returns:
        Scalar log-likelihood, differentiable in the kernel hyperparameters, ``noise`` and
        ``y``.
    """
    model = from_kernel(kernel, times)
    return kalman_filter(model, y, noise, mask=mask, parallel=parallel).log_likelihood


def posterior_marginals(
    kernel: Any,
    times: Float[ArrayLike, " n"],
    y: Float[ArrayLike, " n"],
    noise: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    *,
    mask: Bool[ArrayLike, " n"] | None = None,
    parallel: bool = False,
) -> PosteriorMarginals:
    r"""Posterior mean and variance of the latent :math:`f(t_k)` at the data times.

    .. math:: E[f_k \mid y] = H m^s_k, \qquad \operatorname{var}[f_k \mid y] = H P^s_k H^\top,

    equal to the dense :math:`K_{\cdot o}(K_{oo} + R)^{-1} y` and
    :math:`\operatorname{diag}(K - K_{\cdot o}(K_{oo} + R)^{-1}K_{o\cdot})` (``o``: observed).
    Arguments as in :func:`log_marginal_likelihood`. Cost :math:`O(n d^3)`.
    """
    model = from_kernel(kernel, times)
    fr = kalman_filter(model, y, noise, mask=mask, parallel=parallel)
    sr = rts_smoother(model, fr, parallel=parallel)
    h = model.H[0]
    mean = jnp.einsum("i,ni->n", h, sr.means, precision=_HI)
    var = jnp.einsum("i,nij,j->n", h, sr.covs, h, precision=_HI)
    return PosteriorMarginals(mean=mean, variance=var)


# ---------------------------------------------------------------------------------------------
# Sampling: prior simulation and forward filtering, backward sampling (FFBS)
# ---------------------------------------------------------------------------------------------


def _psd_sqrt(P: Array) -> Array:
    r"""Symmetric square root :math:`V \operatorname{diag}(\sqrt{\max(\lambda, 0)}) V^\top`.

    Exact for singular PSD matrices (e.g. :math:`Q_k \to 0` over tiny gaps, where a Cholesky
    factor would be NaN); negative round-off eigenvalues are clipped to zero.
    """
    lam, V = jnp.linalg.eigh(_sym(P))
    return _mm(V * jnp.sqrt(jnp.maximum(lam, 0.0))[..., None, :], jnp.swapaxes(V, -1, -2))


def _check_sample_shape(sample_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in sample_shape)
    except TypeError:
        raise ValueError(
            f"`sample_shape` must be a tuple of non-negative ints; got {sample_shape!r}."
        ) from None
    if any(s < 0 for s in shape):
        raise ValueError(f"`sample_shape` must hold non-negative ints; got {shape}.")
    return shape


def sample_prior(
    key: Array, model: StateSpaceModel, sample_shape: tuple[int, ...] = ()
) -> Float[Array, "*sample n"]:
    r"""Draw :math:`f = (H x_1, \dots, H x_n)` from the Gauss–Markov prior by forward simulation.

    .. math::
        x_k = A_k x_{k-1} + Q_k^{1/2} \varepsilon_k, \quad \varepsilon_k \sim N(0, I), \quad
        x_0 = 0,\ A_1 = 0,\ Q_1 = P_\infty,

    so :math:`f \sim N(0, K)` with :math:`K_{ij} = k(t_i - t_j)`. :math:`Q_k^{1/2}` is the
    symmetric (eigendecomposition) square root, exact also for the singular :math:`Q_k` of
    tiny gaps.

    Args:
        key: A JAX PRNG key.
        model: :class:`StateSpaceModel` over :math:`n` times (:func:`from_kernel`).
        sample_shape: Static leading shape of independent draws.

    Returns:
        Samples of :math:`f`, shape ``(*sample_shape, n)``. Cost :math:`O(S n d^2 + n d^3)`
        time (:math:`S` draws), :math:`O(S n d)` memory; sequential ``lax.scan`` over time,
        vectorized over draws.
    """
    shape = _check_sample_shape(sample_shape)
    A, Q = model.transitions, model.process_covs
    n, d = A.shape[0], A.shape[-1]
    s = int(np.prod(shape, dtype=np.int64))
    roots = jax.vmap(_psd_sqrt)(Q)  # (n, d, d)
    eps = jax.random.normal(key, (n, s, d), dtype=Q.dtype)
    noise = jnp.einsum("nij,nsj->nsi", roots, eps, precision=_HI)

    def step(x, inputs):
        Ak, qk = inputs
        x_new = jnp.matmul(x, Ak.T, precision=_HI) + qk
        return x_new, x_new

    _, xs = jax.lax.scan(step, jnp.zeros((s, d), Q.dtype), (A, noise))  # (n, s, d)
    f = jnp.einsum("i,nsi->sn", model.H[0], xs, precision=_HI)
    return f.reshape(shape + (n,))


def _affine_combine(later, earlier):
    """Backward affine recursion x_k = E_k x_{k+1} + c_k: compose two steps (reverse scan)."""
    Ej, cj = later
    Ei, ci = earlier
    return _mm(Ei, Ej), jnp.matmul(cj, jnp.swapaxes(Ei, -1, -2), precision=_HI) + ci


def sample_posterior(
    key: Array,
    model: StateSpaceModel,
    y: Float[ArrayLike, " n"],
    noise: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    *,
    mask: Bool[ArrayLike, " n"] | None = None,
    sample_shape: tuple[int, ...] = (),
    parallel: bool = False,
) -> Float[Array, "*sample n"]:
    r"""Draw :math:`f \sim p(f \mid y)` by forward filtering, backward sampling (FFBS).

    After the Kalman filter (:math:`m_k, P_k`), :math:`x_n \sim N(m_n, P_n)` and backwards

    .. math::
        x_k \mid x_{k+1}, y_{1:k} \sim N\big(m_k + G_k(x_{k+1} - A_{k+1} m_k),\;
        P_k - G_k A_{k+1} P_k\big), \qquad G_k = P_k A_{k+1}^\top (P^-_{k+1})^{-1},

    i.e. :math:`x_k = E_k x_{k+1} + g_k + L_k^{1/2}\varepsilon_k` with the smoothing elements
    :math:`(E_k, g_k, L_k)` of the module docstring (:math:`L_k` in Joseph form, symmetric
    square root). Returns :math:`f_k = H x_k` (Carter & Kohn 1994; Frühwirth-Schnatter 1994).

    Args:
        key: A JAX PRNG key.
        model: :class:`StateSpaceModel` over :math:`n` times.
        y: Observations, shape ``(n,)``; anything (NaN included) where ``mask`` is false.
        noise: Noise variances :math:`r_k > 0`, scalar or ``(n,)``.
        mask: Optional boolean ``(n,)``, true where observed.
        sample_shape: Static leading shape of independent draws.
        parallel: Static. ``False``: sequential filter and backward ``lax.scan``. ``True``:
            parallel filter (:func:`kalman_filter`) and the backward affine recursion
            :math:`x_k = E_k x_{k+1} + c_k` by ``lax.associative_scan`` with
            :math:`(E_i, c_i) \otimes (E_j, c_j) = (E_i E_j,\ E_i c_j + c_i)`
            (:math:`O(\log n)` depth).

    Returns:
        Samples of :math:`f`, shape ``(*sample_shape, n)``. Cost :math:`O(n d^3 + S n d^2)`
        time, :math:`O(n d^2 + S n d)` memory.

    Raises:
        ValueError: as :func:`kalman_filter`; a bad ``sample_shape``.
    """
    shape = _check_sample_shape(sample_shape)
    fr = kalman_filter(model, y, noise, mask=mask, parallel=parallel)
    ms, Ps = fr.means, fr.covs
    n, d = ms.shape
    dtype = Ps.dtype
    E, g, L = jax.vmap(_smoother_element)(
        model.transitions[1:], model.process_covs[1:], ms[:-1], Ps[:-1]
    )
    E = jnp.concatenate([E, jnp.zeros((1, d, d), dtype)], axis=0)
    g = jnp.concatenate([g, ms[-1:]], axis=0)
    L = jnp.concatenate([L, Ps[-1:]], axis=0)
    s = int(np.prod(shape, dtype=np.int64))
    eps = jax.random.normal(key, (n, s, d), dtype=dtype)
    c = g[:, None, :] + jnp.einsum("nij,nsj->nsi", jax.vmap(_psd_sqrt)(L), eps, precision=_HI)
    if parallel:
        _, xs = jax.lax.associative_scan(jax.vmap(_affine_combine), (E, c), reverse=True)
    else:

        def step(x_next, inputs):
            Ek, ck = inputs
            x = jnp.matmul(x_next, Ek.T, precision=_HI) + ck
            return x, x

        _, xs = jax.lax.scan(step, jnp.zeros((s, d), dtype), (E, c), reverse=True)
    f = jnp.einsum("i,nsi->sn", model.H[0], xs, precision=_HI)
    return f.reshape(shape + (n,))


# ---------------------------------------------------------------------------------------------
# Prediction at new times
# ---------------------------------------------------------------------------------------------


def predict(
    kernel: Any,
    times: Float[ArrayLike, " n"],
    y: Float[ArrayLike, " n"],
    noise: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    new_times: Float[ArrayLike, " m"],
    *,
    mask: Bool[ArrayLike, " n"] | None = None,
    parallel: bool = False,
) -> PosteriorMarginals:
    r"""Posterior mean and variance of the latent :math:`f(t_*)` at new times, in :math:`O(N)`.

    .. math::
        E[f_* \mid y] = K_{*o}(K_{oo} + R)^{-1} y_o, \qquad
        \operatorname{var}[f_* \mid y] = k(0) - \operatorname{diag}(K_{*o}(K_{oo} + R)^{-1}
        K_{o*}),

    computed without the dense matrices: the new times are merged into the sorted data grid as
    missing observations (a new time equal to a data time, in the working dtype, reuses that
    grid point, so no duplicate is created), the Kalman filter and RTS smoother run over the
    :math:`N \le n + m` merged times, and :math:`H m^s, H P^s H^\top` are read off at the new
    times. New times may lie before the first or after the last data time, be unsorted or
    repeated; results follow their order. Variances are clipped at zero against round-off.

    Args:
        kernel: Kernel with an exact SDE (Matérn 1/2, 3/2, 5/2, Student-t mixture).
        times: Strictly increasing data times, shape ``(n,)``. Must be concrete (not traced):
            the merge is done on the host, and fixes the shapes.
        y: Observations, shape ``(n,)``; may be traced.
        noise: Noise variances :math:`r_k > 0`, scalar or ``(n,)``; may be traced.
        new_times: Prediction times :math:`t_*`, shape ``(m,)``, finite; must be concrete.
        mask: Optional boolean ``(n,)``, true where ``y`` is observed.
        parallel: Static; see :func:`kalman_filter` and :func:`rts_smoother`.

    Returns:
        :class:`PosteriorMarginals` with ``mean`` and ``variance`` of shape ``(m,)``. Cost
        :math:`O((n + m) d^3 + m \log m)` time, :math:`O((n + m) d^2)` memory.

    Raises:
        ValueError: traced ``times``/``new_times``; ``new_times`` not 1-D, empty or not
            finite; and every check of :func:`kalman_filter`.
    """
    if not isinstance(parallel, bool):
        raise ValueError(f"`parallel` must be a Python bool (static); got {parallel!r}.")
    if not (is_concrete(times) and is_concrete(new_times)):
        raise ValueError(
            "`times` and `new_times` must be concrete arrays (not traced under jit/vmap): the "
            "merged time grid is built on the host. Close over them instead of passing them "
            "as traced arguments; `y`, `noise` and the kernel may be traced."
        )
    if not hasattr(kernel, "sde"):
        raise ValueError(
            f"`kernel` must have an exact state-space form (a `sde()` method); got "
            f"{type(kernel).__name__}."
        )
    t = _check_times(times)
    n = t.shape[0]
    dtype = np.dtype(t.dtype)
    new = np.asarray(new_times)
    check_ndim("new_times", new, 1)
    if new.shape[0] < 1:
        raise ValueError("`new_times` must hold at least one time; got shape (0,).")
    check_finite("new_times", new)
    t_np = np.asarray(times).astype(dtype)
    new_np = new.astype(dtype)
    grid = np.union1d(t_np, new_np)  # sorted, unique in the working dtype
    idx_data = np.searchsorted(grid, t_np)
    idx_new = np.searchsorted(grid, new_np)
    model = from_kernel(kernel, grid)
    y_arr, r, w = _prepare_data(n, y, noise, mask, model.process_covs.dtype)
    N = grid.shape[0]
    wdt = model.process_covs.dtype
    y_full = jnp.zeros((N,), wdt).at[idx_data].set(y_arr)
    r_full = jnp.ones((N,), wdt).at[idx_data].set(r)
    w_full = jnp.zeros((N,), wdt).at[idx_data].set(w)
    if parallel:
        fr = _filter_parallel(model, y_full, r_full, w_full)
        sr = _smoother_parallel(model, fr)
    else:
        fr = _filter_sequential(model, y_full, r_full, w_full)
        sr = _smoother_sequential(model, fr)
    h = model.H[0]
    idx = jnp.asarray(idx_new)
    mean = jnp.einsum("i,mi->m", h, sr.means[idx], precision=_HI)
    var = jnp.einsum("i,mij,j->m", h, sr.covs[idx], h, precision=_HI)
    return PosteriorMarginals(mean=mean, variance=jnp.maximum(var, 0.0))
