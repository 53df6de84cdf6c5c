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
        v_k = y_k - H m_k^-,\quad S_k = H P_k^- H^\top + R_k,\quad K_k = P_k^- H^\top S_k^{-1},

    .. math::
        m_k = m_k^- + K_k v_k,\quad
        P_k = (I - K_k H) P_k^- (I - K_k H)^\top + K_k R_k K_k^\top \ \text{(Joseph form)},

    and :math:`\log p(y) = -\tfrac12 \sum_k [p \log 2\pi + \log|S_k| + v_k^\top S_k^{-1}
    v_k]` (:math:`R_k = \operatorname{diag}(r_k)`; for scalar observations :math:`S_k` is a
    number). A missing observation (``mask`` false) skips the update of that component
    (:math:`K_k` gets a zero column) and adds nothing to the log-likelihood. The Joseph form
    and the symmetrization of every covariance keep :math:`P_k` symmetric positive
    semi-definite in float32 as well.

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
    * Vector observations :math:`y_k = H x_k + e_k \in \mathbb{R}^p` use a ``(p, d)``
      measurement matrix (``from_kernel(kernel, times, H=...)``; e.g. ``H = I`` on a Matérn 3/2
      state observes :math:`f` and :math:`f'`): ``y`` has shape ``(n, p)``, ``noise`` is a
      scalar, ``(n,)`` or ``(n, p)`` (independent components, :math:`R_k` diagonal), ``mask``
      ``(n,)`` or ``(n, p)``. The update then uses the :math:`p \times p` innovation
      covariance :math:`S_k = H P_k^- H^\top + R_k` by Cholesky; scalar observations take a
      division-only path.
    * The sequential forms compute :math:`(A_k, Q_k)` inside the ``lax.scan`` step from the gap
      (closed form for Matérn kernels and their sums), so the kernel-level entry points never
      hold ``(n, d, d)`` transition arrays; :class:`StateSpaceModel` materializes them for the
      model-level functions and the parallel forms.
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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from bayeslr._validation import check_finite, check_ndim, check_positive, is_concrete
from bayeslr.linalg._small import matmul, matvec

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
    "smooth_gaussian_sites",
    "gaussian_sites_log_evidence",
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


# Tiny per-step products: fused broadcast-sums where XLA:CPU would call a runtime dot.
_mm = matmul
_mv = matvec


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


def _check_noise(noise: Any, n: int, p: int = 1) -> Array:
    """Check ``noise``: a positive scalar, one variance per time ``(n,)`` or, for vector
    observations (``p > 1``), one per time and component ``(n, p)``."""
    noise_arr = jnp.asarray(noise)
    shapes = [(), (n,)] + ([(n, p)] if p > 1 else [])
    if noise_arr.shape not in shapes:
        allowed = "a scalar or have shape " + " or ".join(str(s) for s in shapes[1:])
        raise ValueError(
            f"`noise` must be {allowed} (observation-noise variances); got shape {noise_arr.shape}."
        )
    check_positive("noise", noise)
    return noise_arr


def _check_H(H: Any, d: int) -> Array:
    H = jnp.asarray(H)
    if H.ndim != 2 or H.shape[1] != d or H.shape[0] < 1:
        raise ValueError(
            f"`H` must be a measurement matrix of shape (p, {d}) with p >= 1 (state dimension "
            f"{d}); got shape {H.shape}."
        )
    return H


def _prepare_data(
    n: int, p: int, y: Any, noise: Any, mask: Any, dtype: Any
) -> tuple[Array, Array, Array]:
    """Validate ``y``, ``noise``, ``mask`` against ``n`` times and ``p`` observed components.

    Returns ``(y, r, w)``, each of shape ``(n, p)``: ``y`` with 0 where missing, the noise
    variances, and the float mask (1 = observed), or ``w = None`` when ``mask`` is None."""
    y_arr = jnp.asarray(y)
    want = (n,) if p == 1 else (n, p)
    if y_arr.shape != want:
        what = "one value per time" if p == 1 else f"one vector of {p} values per time"
        raise ValueError(f"`y` must have {what}, shape {want}; got shape {y_arr.shape}.")
    noise_arr = _check_noise(noise, n, p)
    if mask is None:
        check_finite("y", y)
        m = jnp.ones(want, dtype=bool)
    else:
        m = jnp.asarray(mask)
        if m.dtype != jnp.bool_:
            raise ValueError(
                f"`mask` must be a boolean array (True = observed); got dtype {m.dtype}."
            )
        shapes = [(n,)] + ([(n, p)] if p > 1 else [])
        if m.shape not in shapes:
            raise ValueError(
                f"`mask` must have shape {' or '.join(str(s) for s in shapes)}; got shape "
                f"{m.shape}."
            )
        if is_concrete(y) and is_concrete(mask):
            ma = np.broadcast_to(np.asarray(mask).reshape(n, -1), (n, p)).reshape(want)
            check_finite("y (observed entries)", np.asarray(y)[ma])
        m = jnp.broadcast_to(m.reshape(n, -1), (n, p)).reshape(want)
    r = jnp.broadcast_to(noise_arr.astype(dtype).reshape((n, -1) if noise_arr.ndim else ()), (n, p))
    if mask is None:
        return y_arr.astype(dtype).reshape(n, p), r, None
    y_arr = jnp.where(m, y_arr, 0).astype(dtype).reshape(n, p)
    return y_arr, r, m.astype(dtype).reshape(n, p)


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------


def _check_rate(F: Array, rate: Array) -> None:
    """``F + diag(rate)`` must be nilpotent (checked when concrete)."""
    d = F.shape[-1]
    if rate.ndim not in (0, 1) or (rate.ndim == 1 and rate.shape[0] != d):
        raise ValueError(
            f"`rate` must be a scalar or have shape ({d},) (one rate per state); got shape "
            f"{rate.shape}."
        )
    if is_concrete((F, rate)):
        N = np.asarray(F, np.float64) + np.diag(np.broadcast_to(np.asarray(rate, np.float64), d))
        nd = np.linalg.matrix_power(N, d)
        scale = max(float(np.max(np.abs(np.asarray(F, np.float64)))), 1e-30) ** d
        if float(np.max(np.abs(nd))) > 1e-6 * scale:
            raise ValueError(
                "`rate` must make F + diag(rate) nilpotent (a Matérn SDE or a sum of them); got "
                f"rate={np.asarray(rate)} with max |(F + diag(rate))^{d}| = "
                f"{float(np.max(np.abs(nd))):.3g}."
            )


def _transition_fn(
    sde: Any, rate: Any, dtype: Any, *, symmetrize: bool = True
) -> Callable[[Array], tuple[Array, Array]]:
    r"""Per-gap exact transition ``dt -> (A, Q)`` of an LTI SDE (unbatched; ``vmap`` it).

    With ``rate`` (:math:`\lambda`, scalar or per state) :math:`N = F + \operatorname{diag}(
    \lambda)` is nilpotent and commutes with :math:`\operatorname{diag}(\lambda)` (block-wise
    constant), so :math:`e^{F\Delta} = e^{-\lambda\Delta} \odot \sum_{j<d} (N\Delta)^j / j!`
    (rows scaled); otherwise ``expm``.
    """
    F = jnp.asarray(sde.F).astype(dtype)
    Pinf = _sym(jnp.asarray(sde.Pinf).astype(dtype))
    d = F.shape[-1]
    if rate is None:

        def expm(dt: Array) -> Array:
            return jax.scipy.linalg.expm(F * dt)

    else:
        lam = jnp.asarray(rate).astype(dtype)
        _check_rate(F, lam)
        N = F + jnp.diag(jnp.broadcast_to(lam, (d,)))
        powers = [jnp.eye(d, dtype=dtype)]
        for j in range(1, d):
            powers.append(_mm(powers[-1], N) / j)  # N^j / j!

        def expm(dt: Array) -> Array:
            series = powers[0]
            for j in range(1, d):
                series = series + dt**j * powers[j]
            return jnp.exp(-lam * dt).reshape(-1, 1) * series

    def transition(dt: Array) -> tuple[Array, Array]:
        A = expm(dt)
        Q = Pinf - _mm(_mm(A, Pinf), A.T)
        return A, (_sym(Q) if symmetrize else Q)

    return transition


def discretize(
    sde: Any, dt: Float[ArrayLike, " m"], *, rate: Any = None
) -> tuple[Float[Array, "m d d"], Float[Array, "m d d"]]:
    r"""Exact discretization of an LTI SDE over gaps :math:`\Delta_k`.

    .. math:: A_k = e^{F\Delta_k}, \qquad Q_k = P_\infty - A_k P_\infty A_k^\top

    (symmetrized), exact for any :math:`\Delta_k \ge 0` when :math:`P_\infty` is the stationary
    covariance of the SDE.

    **Closed form for Matérn kernels and their sums.** For Matérn :math:`\nu = p + \tfrac12`
    the companion matrix has characteristic polynomial :math:`(s + \lambda)^d`, so
    :math:`N = F + \lambda I` is nilpotent and exactly

    .. math:: e^{F\Delta} = e^{-\lambda\Delta} \sum_{j<d} \frac{(N\Delta)^j}{j!}.

    For a sum of Matérn kernels (block-diagonal :math:`F`) the same holds with one rate per
    state, :math:`N = F + \operatorname{diag}(\lambda)`. Pass ``rate`` :math:`=\lambda` to
    use it (:func:`from_kernel` does so for kernels with a ``rate``): a few multiply-adds per
    gap instead of a Padé ``expm``. Without ``rate``, ``expm`` is used (e.g. the Student-t
    mixture's quasi-periodic SDE, the approximate RBF SDE).

    Args:
        sde: An :class:`~bayeslr.gp.SDE` (fields ``F`` and ``Pinf`` are used), e.g.
            ``kernel.sde()``.
        dt: Gaps :math:`\Delta_k \ge 0`, shape ``(m,)``.
        rate: Optional :math:`\lambda`, scalar or shape ``(d,)``, with
            :math:`F + \operatorname{diag}(\lambda)` nilpotent.

    Returns:
        ``(A, Q)``, each of shape ``(m, d, d)``. Cost :math:`O(m d^3)`.

    Raises:
        ValueError: ``dt`` not 1-D or negative; ``rate`` of the wrong shape, or given
            (concrete) but :math:`F + \operatorname{diag}(\lambda)` is not nilpotent.
    """
    dt = jnp.asarray(dt)
    check_ndim("dt", dt, 1)
    check_positive("dt", dt, allow_zero=True)
    dtype = jnp.result_type(jnp.asarray(sde.F), jnp.asarray(sde.Pinf), dt)
    return jax.vmap(_transition_fn(sde, rate, dtype))(dt.astype(dtype))


class _Steps(NamedTuple):
    r"""Internal lazy model: step 1 has the prior :math:`N(0, P_1)`, steps :math:`k \ge 2` the
    transition ``transition(x_k) -> (A_k, Q_k)`` of per-step inputs ``xs`` (leading axis
    ``n - 1``).

    Lets the sequential filter and smoother compute each transition inside the ``lax.scan``
    step (no ``(n, d, d)`` arrays and their cotangents in memory, fewer operations per step),
    while the parallel forms and :class:`StateSpaceModel` materialize them with ``vmap``."""

    P1: Array
    xs: Any
    transition: Callable[[Any], tuple[Array, Array]]
    H: Array

    @property
    def n(self) -> int:
        return jax.tree_util.tree_leaves(self.xs)[0].shape[0] + 1

    def materialize(self) -> StateSpaceModel:
        A, Q = jax.vmap(self.transition)(self.xs)
        d = self.P1.shape[-1]
        A = jnp.concatenate([jnp.zeros((1, d, d), A.dtype), A], axis=0)
        Q = jnp.concatenate([self.P1[None], Q], axis=0)
        return StateSpaceModel(transitions=A, process_covs=Q, H=self.H)


def _model_steps(model: StateSpaceModel) -> _Steps:
    xs = (model.transitions[1:], model.process_covs[1:])
    return _Steps(model.process_covs[0], xs, lambda aq: aq, model.H)


def _sde_steps(sde: Any, times: Any, rate: Any, H: Any, *, symmetrize: bool = True) -> _Steps:
    """Lazy steps of an SDE at sorted times: step 1 is the prior (A = 0, Q = P∞), then the
    exact transitions over the gaps."""
    t = _check_times(times)
    d = jnp.shape(sde.F)[-1]
    H = _check_H(sde.H if H is None else H, d)
    dtype = jnp.result_type(jnp.asarray(sde.F), jnp.asarray(sde.Pinf), t)
    trans = _transition_fn(sde, rate, dtype, symmetrize=symmetrize)
    Pinf = _sym(jnp.asarray(sde.Pinf).astype(dtype))
    return _Steps(Pinf, jnp.diff(t.astype(dtype)), trans, H.astype(dtype))


def _kernel_steps(kernel: Any, times: Any, H: Any = None, *, symmetrize: bool = True) -> _Steps:
    if not hasattr(kernel, "sde"):
        raise ValueError(
            f"`kernel` must have an exact state-space form (a `sde()` method); got "
            f"{type(kernel).__name__}."
        )
    # Matérn kernels (and sums of them) expose rates λ with F + diag(λ) nilpotent.
    return _sde_steps(kernel.sde(), times, getattr(kernel, "rate", None), H, symmetrize=symmetrize)


def from_sde(
    sde: Any, times: Float[ArrayLike, " n"], *, rate: Any = None, H: Any = None
) -> StateSpaceModel:
    r"""Build the :class:`StateSpaceModel` of an LTI SDE observed at sorted ``times``.

    Args:
        sde: An :class:`~bayeslr.gp.SDE`, e.g. ``kernel.sde()`` or the approximate
            ``RBF(...).sde(order=6)``.
        times: Strictly increasing times :math:`t_1 < \dots < t_n`, shape ``(n,)``.
        rate: Optional Matérn rate(s) for the closed-form transition (see :func:`discretize`).
        H: Optional measurement matrix of shape ``(p, d)`` replacing ``sde.H`` for vector
            observations :math:`y_k = H x_k + e_k \in \mathbb{R}^p` (e.g. ``jnp.eye(2)`` with a
            Matérn 3/2 observes :math:`f` and :math:`f'`).

    Returns:
        The model with :math:`A_1 = 0, Q_1 = P_\infty` and :func:`discretize` for the gaps.
        Cost :math:`O(n d^3)` time, :math:`O(n d^2)` memory.

    Raises:
        ValueError: ``times`` not 1-D, not finite, unsorted or with duplicates; ``H`` not
            ``(p, d)``; a bad ``rate``.
    """
    return _sde_steps(sde, times, rate, H).materialize()


def from_kernel(kernel: Any, times: Float[ArrayLike, " n"], *, H: Any = None) -> StateSpaceModel:
    r"""Build the :class:`StateSpaceModel` of a stationary kernel with an exact SDE.

    Equivalent to ``from_sde(kernel.sde(), times, rate=kernel.rate)`` for the Matérn family and
    sums of Matérn kernels (closed-form transitions) and ``from_sde(kernel.sde(), times)``
    otherwise.

    Args:
        kernel: A kernel with ``sde()`` (Matérn 1/2, 3/2, 5/2, Student-t mixture, sums of
            these). RBF and spectral mixture raise :class:`ValueError` from ``sde()``.
        times: Strictly increasing times, shape ``(n,)``.
        H: Optional ``(p, d)`` measurement matrix for vector observations (see
            :func:`from_sde`).
    """
    return _kernel_steps(kernel, times, H).materialize()


# ---------------------------------------------------------------------------------------------
# Kalman filter
# ---------------------------------------------------------------------------------------------


def _innovation_solver(S: Array) -> tuple[Callable[[Array], Array], Array]:
    """``(B -> S^{-1} B, log|S|)`` for the ``(p, p)`` innovation covariance (``p == 1``: a
    division, no factorization)."""
    if S.shape[-1] == 1:
        s = S[0, 0]
        return (lambda B: B / s), jnp.log(s)
    c = jnp.linalg.cholesky(S)
    return (
        lambda B: jax.scipy.linalg.cho_solve((c, True), B),
        2.0 * jnp.sum(jnp.log(jnp.diagonal(c))),
    )


def _update(mp: Array, Pp: Array, H: Array, y: Array, r: Array, w: Array | None, eye: Array):
    r"""One Kalman update of :math:`N(m^-, P^-)` by :math:`y = Hx + e`, missing components
    (``w = 0``; ``w = None``: all observed) removed. Returns ``(m, P, log-likelihood term)``.

    Missing components get a zero row of :math:`H` and unit noise: their gain column is zero
    and they add nothing to :math:`\log|S|` and :math:`v^\top S^{-1} v`. For ``p = 1``
    (``y``, ``r``, ``w`` scalars or shape ``(1,)``) only vector operations are used: this is
    the inner loop of every scalar filter, where the operation count sets the speed."""
    if H.shape[0] == 1:
        h, y, r = H[0], jnp.reshape(y, ()), jnp.reshape(r, ())
        if w is not None:
            w = jnp.reshape(w, ())
            h, r_eff = w * h, w * r
        else:
            r_eff = r
        ph = _mv(Pp, h)
        s = _mm(h, ph) + (r if w is None else r_eff + (1.0 - w))
        v = y - _mm(h, mp)
        k = ph / s
        ikh = eye - jnp.outer(k, h)
        P = _sym(_mm(_mm(ikh, Pp), ikh.T) + r_eff * jnp.outer(k, k))  # Joseph form
        c = _LOG_2PI if w is None else w * _LOG_2PI
        return mp + k * v, P, -0.5 * (c + jnp.log(s) + v * v / s)
    if w is None:
        w = jnp.ones_like(r)
    Hw = w[:, None] * H
    PHt = _mm(Pp, Hw.T)
    S = _mm(Hw, PHt) + jnp.diag(w * r + (1.0 - w))
    v = y - _mv(Hw, mp)
    solve, logdet = _innovation_solver(S)
    K = solve(PHt.T).T
    m = mp + _mv(K, v)
    ikh = eye - _mm(K, Hw)
    P = _sym(_mm(_mm(ikh, Pp), ikh.T) + _mm(K * (w * r), K.T))  # Joseph form
    quad = _mm(v, solve(v))
    return m, P, -0.5 * (jnp.sum(w) * _LOG_2PI + logdet + quad)


def _filter_sequential(
    steps: _Steps, y: Array, r: Array, w: Array | None, *, keep_states: bool = True
) -> FilterResult:
    H = steps.H
    p, d = H.shape
    eye = jnp.eye(d, dtype=H.dtype)
    if p == 1:  # scan over scalars
        y, r = y[:, 0], r[:, 0]
        w = None if w is None else w[:, 0]
    first = jax.tree_util.tree_map(lambda a: a[0], (y, r, w))
    m1, P1, ll1 = _update(jnp.zeros((d,), H.dtype), steps.P1, H, *first, eye)
    rest = jax.tree_util.tree_map(lambda a: a[1:], (y, r, w))

    def step(carry, inputs):
        m, P, ll = carry
        x, (yk, rk, wk) = inputs
        A, Q = steps.transition(x)
        mp = _mv(A, m)
        Pp = _sym(_mm(_mm(A, P), A.T) + Q)
        m_new, P_new, llk = _update(mp, Pp, H, yk, rk, wk, eye)
        return (m_new, P_new, ll + llk), ((m_new, P_new) if keep_states else None)

    (_, _, ll), states = jax.lax.scan(step, (m1, P1, ll1), (steps.xs, rest))
    if not keep_states:
        return FilterResult(means=None, covs=None, log_likelihood=ll)  # type: ignore[arg-type]
    means = jnp.concatenate([m1[None], states[0]], axis=0)
    covs = jnp.concatenate([P1[None], states[1]], axis=0)
    return FilterResult(means=means, covs=covs, log_likelihood=ll)


def _filter_element(A, Q, H, yk, rk, wk):
    """Särkkä & García-Fernández (2021) filtering element of one step (missing: K = 0).

    The gain, :math:`S` and the Joseph-form :math:`C` are those of :func:`_update` with the
    prior :math:`N(0, Q)`."""
    d = A.shape[-1]
    Hw = wk[:, None] * H
    QHt = _mm(Q, Hw.T)
    S = _mm(Hw, QHt) + jnp.diag(wk * rk + (1.0 - wk))
    solve, _ = _innovation_solver(S)
    K = solve(QHt.T).T
    ikh = jnp.eye(d, dtype=Q.dtype) - _mm(K, Hw)
    a_bar = _mm(ikh, A)
    b = _mv(K, yk)
    c = _sym(_mm(_mm(ikh, Q), ikh.T) + _mm(K * (wk * rk), K.T))
    HA = _mm(Hw, A)  # (p, d)
    eta = _mv(HA.T, solve(yk))
    J = _sym(_mm(HA.T, solve(HA)))
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


# The parallel forms are jitted: ``lax.associative_scan`` is a Python-level recursion of
# slices and concatenations, so run eagerly (a notebook call, a test) it dispatches hundreds
# of small ops, each compiled on first use (first Matérn-5/2 filter at n = 30: 15.4 s eager,
# 4.9 s jitted, both on 2 cores shared with another job). Under an outer ``jit`` these inner
# ones are inlined.
@jax.jit
def _filter_scan(elems):
    return jax.lax.associative_scan(jax.vmap(_filter_combine), elems)


@jax.jit
def _filter_parallel(model: StateSpaceModel, y: Array, r: Array, w: Array | None) -> FilterResult:
    H = model.H
    A, Q = model.transitions, model.process_covs
    w = jnp.ones_like(r) if w is None else w
    elems = jax.vmap(_filter_element, in_axes=(0, 0, None, 0, 0, 0))(A, Q, H, y, r, w)
    _, ms, Ps, _, _ = _filter_scan(elems)
    # One-step predictions from the filtered moments give the log-likelihood in parallel.
    m_prev = jnp.concatenate([jnp.zeros_like(ms[:1]), ms[:-1]], axis=0)
    P_prev = jnp.concatenate([jnp.zeros_like(Ps[:1]), Ps[:-1]], axis=0)
    mp = _mv(A, m_prev)
    Pp = _sym(_mm(_mm(A, P_prev), jnp.swapaxes(A, -1, -2)) + Q)
    eye = jnp.eye(A.shape[-1], dtype=A.dtype)
    _, _, lls = jax.vmap(_update, in_axes=(0, 0, None, 0, 0, 0, None))(mp, Pp, H, y, r, w, eye)
    return FilterResult(means=ms, covs=Ps, log_likelihood=jnp.sum(lls))


def _check_parallel(parallel: Any) -> None:
    if not isinstance(parallel, bool):
        raise ValueError(f"`parallel` must be a Python bool (static); got {parallel!r}.")


def kalman_filter(
    model: StateSpaceModel,
    y: Float[ArrayLike, " n"] | Float[ArrayLike, "n p"],
    noise: Float[ArrayLike, ""] | Float[ArrayLike, " n"] | Float[ArrayLike, "n p"],
    *,
    mask: Bool[ArrayLike, " n"] | Bool[ArrayLike, "n p"] | None = None,
    parallel: bool = False,
) -> FilterResult:
    r"""Kalman filter of :math:`y_k = H x_k + e_k`, :math:`e_k \sim N(0, R_k)`.

    Computes :math:`p(x_k \mid y_{1:k}) = N(m_k, P_k)` (Joseph-form update, symmetrized) and
    the log marginal likelihood :math:`\log p(y_{1:n}) = -\tfrac12\sum_k [p_k \log 2\pi +
    \log|S_k| + v_k^\top S_k^{-1} v_k]` over the observed entries; equations in the module
    docstring.

    Args:
        model: :class:`StateSpaceModel` over :math:`n` times (:func:`from_kernel`) with a
            ``(p, d)`` measurement matrix.
        y: Observations, shape ``(n,)`` for scalar observations (``p = 1``) or ``(n, p)``;
            finite where observed.
        noise: Noise variances :math:`r_k > 0` (:math:`R_k = \operatorname{diag}(r_k)`):
            scalar, shape ``(n,)`` or, for ``p > 1``, ``(n, p)``.
        mask: Optional boolean, true where observed: ``(n,)`` (whole time steps) or, for
            ``p > 1``, ``(n, p)`` (single components). Missing entries skip the update and add
            nothing to the log-likelihood.
        parallel: Static. ``False``: ``lax.scan`` (:math:`O(n)` depth). ``True``:
            ``lax.associative_scan`` (:math:`O(\log n)` depth, Särkkä & García-Fernández 2021).

    Returns:
        :class:`FilterResult` ``(means (n, d), covs (n, d, d), log_likelihood ())``. Cost
        :math:`O(n (d^3 + p^3))` time, :math:`O(n d^2)` memory.

    Raises:
        ValueError: shape mismatch, non-finite observed ``y``, non-positive ``noise``,
            non-boolean ``mask``, ``parallel`` not a bool.
    """
    _check_parallel(parallel)
    n, p = model.transitions.shape[0], model.H.shape[0]
    y_arr, r, w = _prepare_data(n, p, y, noise, mask, model.process_covs.dtype)
    if parallel:
        return _filter_parallel(model, y_arr, r, w)
    return _filter_sequential(_model_steps(model), y_arr, r, w)


# ---------------------------------------------------------------------------------------------
# RTS smoother
# ---------------------------------------------------------------------------------------------


def _smoother_gain(A: Array, Q: Array, m: Array, P: Array) -> tuple[Array, Array, Array]:
    """Predicted mean/cov of the next step and the gain :math:`G = P A^T (P^-)^{-1}`."""
    mp = _mv(A, m)
    Pp = _sym(_mm(_mm(A, P), A.T) + Q)
    G = jnp.linalg.solve(Pp, _mm(A, P)).T  # P^- symmetric: (P^-^{-1} A P)^T = P A^T P^-^{-1}
    return mp, Pp, G


def _smoother_sequential(steps: _Steps, fr: FilterResult) -> SmootherResult:
    def step(carry, inputs):
        ms_next, Ps_next = carry
        x, m, P = inputs
        A, Q = steps.transition(x)
        mp, Pp, G = _smoother_gain(A, Q, m, P)
        ms = m + _mv(G, ms_next - mp)
        Ps = _sym(P + _mm(_mm(G, Ps_next - Pp), G.T))
        return (ms, Ps), (ms, Ps)

    init = (fr.means[-1], fr.covs[-1])
    _, (ms, Ps) = jax.lax.scan(step, init, (steps.xs, fr.means[:-1], fr.covs[:-1]), reverse=True)
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


def _smoothing_elements(model: StateSpaceModel, fr: FilterResult) -> tuple[Array, Array, Array]:
    """All ``(E_k, g_k, L_k)``, the last one ``(0, m_n, P_n)``."""
    ms, Ps = fr.means, fr.covs
    E, g, L = jax.vmap(_smoother_element)(
        model.transitions[1:], model.process_covs[1:], ms[:-1], Ps[:-1]
    )
    E = jnp.concatenate([E, jnp.zeros_like(Ps[:1])], axis=0)
    g = jnp.concatenate([g, ms[-1:]], axis=0)
    L = jnp.concatenate([L, Ps[-1:]], axis=0)
    return E, g, L


def _smoother_combine(later, earlier):
    """(E_i, g_i, L_i) ⊗ (E_j, g_j, L_j), i = ``earlier``, j = ``later`` (reverse scan order)."""
    Ej, gj, Lj = later
    Ei, gi, Li = earlier
    return _mm(Ei, Ej), _mv(Ei, gj) + gi, _sym(_mm(_mm(Ei, Lj), Ei.T) + Li)


@jax.jit
def _smoother_parallel(model: StateSpaceModel, fr: FilterResult) -> SmootherResult:
    elems = _smoothing_elements(model, fr)
    _, means, covs = jax.lax.associative_scan(jax.vmap(_smoother_combine), elems, reverse=True)
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
    _check_parallel(parallel)
    n = model.transitions.shape[0]
    if filter_result.means.shape[0] != n or filter_result.covs.shape[0] != n:
        raise ValueError(
            f"`filter_result` must hold {n} steps (one per model time); got means of shape "
            f"{filter_result.means.shape}."
        )
    if parallel:
        return _smoother_parallel(model, filter_result)
    return _smoother_sequential(_model_steps(model), filter_result)


def _filter_smooth(
    steps: _Steps, y: Array, r: Array, w: Array | None, parallel: bool
) -> SmootherResult:
    """Filter and smoother of prepared data: lazy transitions inside the scans (sequential) or
    materialized arrays (parallel)."""
    if parallel:
        model = steps.materialize()
        return _smoother_parallel(model, _filter_parallel(model, y, r, w))
    return _smoother_sequential(steps, _filter_sequential(steps, y, r, w))


def _marginals(H: Array, sr: SmootherResult, idx: Any = None) -> PosteriorMarginals:
    """:math:`H m^s_k` and :math:`\\operatorname{diag}(H P^s_k H^\\top)`, squeezed to ``(n,)``
    for scalar observations; rows ``idx`` only if given."""
    means, covs = (sr.means, sr.covs) if idx is None else (sr.means[idx], sr.covs[idx])
    mean = jnp.einsum("pi,ni->np", H, means, precision=_HI)
    var = jnp.einsum("pi,nij,pj->np", H, covs, H, precision=_HI)
    if H.shape[0] == 1:
        mean, var = mean[:, 0], var[:, 0]
    return PosteriorMarginals(mean=mean, variance=jnp.maximum(var, 0.0))


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
    - \tfrac n2 \log 2\pi` on the observed entries (restricted to ``mask`` if given). The
    sequential form computes each transition inside the scan step and keeps no per-step state
    (:math:`O(1)` memory for the value, :math:`O(n d^2)` for the gradient's residuals).

    Args:
        kernel: Kernel with an exact SDE (Matérn 1/2, 3/2, 5/2, Student-t mixture, sums).
        times: Strictly increasing times, shape ``(n,)``.
        y: Observations, shape ``(n,)``.
        noise: Noise variances :math:`r_k > 0`, scalar or ``(n,)``.
        mask: Optional boolean ``(n,)``, true where observed.
        parallel: Static; see :func:`kalman_filter`.

    Returns:
        Scalar log-likelihood, differentiable in the kernel hyperparameters, ``noise`` and
        ``y``.
    """
    _check_parallel(parallel)
    # Q_k unsymmetrized: the predicted P^- = A P A^T + Q is symmetrized in the step anyway.
    steps = _kernel_steps(kernel, times, symmetrize=parallel)
    y_arr, r, w = _prepare_data(steps.n, 1, y, noise, mask, steps.H.dtype)
    if parallel:
        return _filter_parallel(steps.materialize(), y_arr, r, w).log_likelihood
    return _filter_sequential(steps, y_arr, r, w, keep_states=False).log_likelihood


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
    _check_parallel(parallel)
    steps = _kernel_steps(kernel, times)
    y_arr, r, w = _prepare_data(steps.n, 1, y, noise, mask, steps.H.dtype)
    return _marginals(steps.H, _filter_smooth(steps, y_arr, r, w, parallel))


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


def _observe(H: Array, xs: Array, shape: tuple[int, ...]) -> Array:
    """States ``(n, s, d)`` to observations ``(*shape, n)`` (``p = 1``) or ``(*shape, n, p)``."""
    n, p = xs.shape[0], H.shape[0]
    f = jnp.einsum("pi,nsi->snp", H, xs, precision=_HI)
    return f.reshape(shape + ((n,) if p == 1 else (n, p)))


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
        Samples of :math:`f`, shape ``(*sample_shape, n)`` (``(*sample_shape, n, p)`` for a
        ``(p, d)`` measurement matrix with ``p > 1``). Cost :math:`O(S n d^2 + n d^3)` time
        (:math:`S` draws), :math:`O(S n d)` memory; sequential ``lax.scan`` over time,
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
        x_new = _mm(x, Ak.T) + qk
        return x_new, x_new

    _, xs = jax.lax.scan(step, jnp.zeros((s, d), Q.dtype), (A, noise))  # (n, s, d)
    return _observe(model.H, xs, shape)


def _affine_combine(later, earlier):
    """Backward affine recursion x_k = E_k x_{k+1} + c_k: compose two steps (reverse scan)."""
    Ej, cj = later
    Ei, ci = earlier
    return _mm(Ei, Ej), _mm(cj, jnp.swapaxes(Ei, -1, -2)) + ci


@jax.jit
def _affine_scan(E, c):
    return jax.lax.associative_scan(jax.vmap(_affine_combine), (E, c), reverse=True)


def sample_posterior(
    key: Array,
    model: StateSpaceModel,
    y: Float[ArrayLike, " n"] | Float[ArrayLike, "n p"],
    noise: Float[ArrayLike, ""] | Float[ArrayLike, " n"] | Float[ArrayLike, "n p"],
    *,
    mask: Bool[ArrayLike, " n"] | Bool[ArrayLike, "n p"] | None = None,
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
        y: Observations, shape ``(n,)`` or ``(n, p)``; anything (NaN included) where ``mask``
            is false.
        noise: Noise variances :math:`r_k > 0`, scalar, ``(n,)`` or ``(n, p)``.
        mask: Optional boolean ``(n,)`` or ``(n, p)``, true where observed.
        sample_shape: Static leading shape of independent draws.
        parallel: Static. ``False``: sequential filter and backward ``lax.scan``. ``True``:
            parallel filter (:func:`kalman_filter`) and the backward affine recursion
            :math:`x_k = E_k x_{k+1} + c_k` by ``lax.associative_scan`` with
            :math:`(E_i, c_i) \otimes (E_j, c_j) = (E_i E_j,\ E_i c_j + c_i)`
            (:math:`O(\log n)` depth).

    Returns:
        Samples of :math:`f`, shape ``(*sample_shape, n)`` (``(*sample_shape, n, p)`` when
        ``p > 1``). Cost :math:`O(n d^3 + S n d^2)` time, :math:`O(n d^2 + S n d)` memory.

    Raises:
        ValueError: as :func:`kalman_filter`; a bad ``sample_shape``.
    """
    shape = _check_sample_shape(sample_shape)
    fr = kalman_filter(model, y, noise, mask=mask, parallel=parallel)
    n, d = fr.means.shape
    dtype = fr.covs.dtype
    E, g, L = _smoothing_elements(model, fr)
    s = int(np.prod(shape, dtype=np.int64))
    eps = jax.random.normal(key, (n, s, d), dtype=dtype)
    c = g[:, None, :] + jnp.einsum("nij,nsj->nsi", jax.vmap(_psd_sqrt)(L), eps, precision=_HI)
    if parallel:
        _, xs = _affine_scan(E, c)
    else:

        def step(x_next, inputs):
            Ek, ck = inputs
            x = _mm(x_next, Ek.T) + ck
            return x, x

        _, xs = jax.lax.scan(step, jnp.zeros((s, d), dtype), (E, c), reverse=True)
    return _observe(model.H, xs, shape)


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
        kernel: Kernel with an exact SDE (Matérn 1/2, 3/2, 5/2, Student-t mixture, sums).
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
    _check_parallel(parallel)
    if not (is_concrete(times) and is_concrete(new_times)):
        raise ValueError(
            "`times` and `new_times` must be concrete arrays (not traced under jit/vmap): the "
            "merged time grid is built on the host. Close over them instead of passing them "
            "as traced arguments; `y`, `noise` and the kernel may be traced."
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
    steps = _kernel_steps(kernel, grid)
    wdt = steps.H.dtype
    y_arr, r, w = _prepare_data(n, 1, y, noise, mask, wdt)
    N = grid.shape[0]
    y_full = jnp.zeros((N, 1), wdt).at[idx_data].set(y_arr)
    r_full = jnp.ones((N, 1), wdt).at[idx_data].set(r)
    w_full = jnp.zeros((N, 1), wdt).at[idx_data].set(1.0 if w is None else w)
    sr = _filter_smooth(steps, y_full, r_full, w_full, parallel)
    return _marginals(steps.H, sr, jnp.asarray(idx_new))


# ---------------------------------------------------------------------------------------------
# Gaussian site potentials on R independent GPs (EP / message passing)
# ---------------------------------------------------------------------------------------------


def _stacked_steps(kernel: Any, times: Any, R: int) -> _Steps:
    r"""Lazy steps of :math:`R` independent copies of ``kernel``'s SDE, state
    :math:`(x^1, \dots, x^R)`: :math:`F = I_R \otimes F_1`, :math:`P_\infty = I_R \otimes
    P_{\infty,1}`, :math:`H = I_R \otimes H_1` (``(R, R d)``)."""
    if not hasattr(kernel, "sde"):
        raise ValueError(
            f"`kernel` must have an exact state-space form (a `sde()` method); got "
            f"{type(kernel).__name__}."
        )
    one = kernel.sde()
    eye = jnp.eye(R, dtype=jnp.result_type(jnp.asarray(one.F)))
    stacked = type(one)(
        *(jnp.kron(eye, jnp.asarray(getattr(one, f))) for f in ("F", "L", "Qc", "H", "Pinf"))
    )
    rate = getattr(kernel, "rate", None)
    if rate is not None and jnp.ndim(rate) == 1:
        rate = jnp.tile(jnp.asarray(rate), R)
    return _sde_steps(stacked, times, rate, None)


def _site_update_terms(Pp, H, lk, ek, eye_r):
    r""":math:`P^-H^\top`, :math:`M = (I + \Lambda C)^{-1}\Lambda` and
    :math:`v = (I + \Lambda C)^{-1}\eta` (:math:`C = HP^-H^\top`) of an information-form
    site update."""
    PHt = Pp @ H.T
    G = eye_r + lk @ (H @ PHt)
    return PHt, _sym(jnp.linalg.solve(G, lk)), jnp.linalg.solve(G, ek)


def _site_element(A, Q, H, lk, ek):
    r"""Parallel-filter element (as :func:`_filter_element`) of a Gaussian site
    :math:`(\Lambda_k, \eta_k)` on :math:`Hx_k`: the pseudo-observation
    :math:`\Lambda^{-1}\eta` with noise :math:`\Lambda^{-1}` without inverting
    :math:`\Lambda` (:math:`S^{-1} = M`, :math:`S^{-1}y = v`)."""
    d = A.shape[-1]
    QHt, M, v = _site_update_terms(Q, H, lk, ek, jnp.eye(lk.shape[-1], dtype=Q.dtype))
    a_bar = (jnp.eye(d, dtype=Q.dtype) - QHt @ M @ H) @ A
    b = QHt @ v
    c = _sym(Q - QHt @ M @ QHt.T)
    HA = H @ A
    return a_bar, b, c, HA.T @ v, _sym(HA.T @ M @ HA)


def _check_sites(times: Any, precision: Any, shift: Any) -> tuple[Array, Array, Array]:
    """Checked ``(times, precision (n, R, R), shift (n, R))`` of Gaussian site potentials."""
    t = _check_times(times)
    n = t.shape[0]
    lam = jnp.asarray(precision)
    eta = jnp.asarray(shift)
    if lam.ndim != 3 or lam.shape[0] != n or lam.shape[1] != lam.shape[2]:
        raise ValueError(
            f"`precision` must have shape (n, R, R) with n = {n} (the number of times); got "
            f"{lam.shape}."
        )
    R = lam.shape[1]
    if eta.shape != (n, R):
        raise ValueError(f"`shift` must have shape (n, R) = {(n, R)}; got {eta.shape}.")
    return t, lam, eta


def smooth_gaussian_sites(
    kernel: Any,
    times: Float[ArrayLike, " n"],
    precision: Float[ArrayLike, "n R R"],
    shift: Float[ArrayLike, "n R"],
    *,
    parallel: bool = False,
) -> tuple[Float[Array, "n R"], Float[Array, "n R R"]]:
    r"""Posterior marginals of :math:`R` independent GPs under Gaussian site potentials.

    :math:`f_r \sim GP(0, k)` independently for :math:`r = 1..R` (one ``kernel`` with an exact
    SDE), and at each time :math:`t_k` a site in natural form on the vector
    :math:`f_k = (f_1(t_k), \dots, f_R(t_k))`:

    .. math::
        p(f \mid \text{sites}) \propto \prod_r GP(f_r; 0, k) \prod_k
        \exp\big(\eta_k^\top f_k - \tfrac12 f_k^\top \Lambda_k f_k\big).

    This is the smoothing step of expectation propagation and message passing (FunBaT's
    per-mode update): :math:`\Lambda_k` may be singular (a site that informs only some
    directions, or none: :math:`\Lambda_k = 0`, :math:`\eta_k = 0` gives the prior, which is
    how predictions at new times are made). The Kalman update is in information form,

    .. math::
        M_k = (I + \Lambda_k C_k)^{-1}\Lambda_k,\ C_k = H P_k^- H^\top,\quad
        m_k = m_k^- + P_k^- H^\top (I + \Lambda_k C_k)^{-1}(\eta_k - \Lambda_k H m_k^-),\quad
        P_k = P_k^- - P_k^- H^\top M_k H P_k^-,

    (the usual update with the pseudo-observation :math:`\Lambda_k^{-1}\eta_k` and noise
    :math:`\Lambda_k^{-1}`, without inverting :math:`\Lambda_k`), followed by the RTS
    smoother. The :math:`R` processes share no prior coupling, but the sites couple them, so
    the state is the stacked :math:`Rd`-vector.

    Args:
        kernel: kernel with an exact SDE (Matérn 1/2, 3/2, 5/2, mixtures, sums).
        times: strictly increasing times, ``(n,)``.
        precision: site precisions :math:`\Lambda_k`, ``(n, R, R)``, symmetric PSD.
        shift: site shifts :math:`\eta_k`, ``(n, R)``.
        parallel: static; ``True`` runs the filter and smoother as ``lax.associative_scan``
            (:math:`O(\log n)` depth; Särkkä & García-Fernández elements in information form),
            ``False`` as ``lax.scan``.

    Returns:
        ``(mean, cov)``: :math:`E[f_k]` ``(n, R)`` and :math:`\operatorname{Cov}[f_k]`
        ``(n, R, R)``. Cost :math:`O(n R^3 d^3)` time, :math:`O(n R^2 d^2)` memory (jit-,
        grad- and vmap-compatible).

    Raises:
        ValueError: bad ``times`` (as :func:`kalman_filter`), shapes of ``precision`` or
            ``shift`` that do not match ``times``.
    """
    _check_parallel(parallel)
    t, lam, eta = _check_sites(times, precision, shift)
    R = lam.shape[1]
    steps = _stacked_steps(kernel, t, R)
    H = steps.H
    dtype = jnp.result_type(H, lam, eta)
    H = H.astype(dtype)
    lam = _sym(lam.astype(dtype))
    eta = eta.astype(dtype)
    eye_r = jnp.eye(R, dtype=dtype)
    if parallel:
        model = steps.materialize()
        A, Q = model.transitions.astype(dtype), model.process_covs.astype(dtype)
        elems = jax.vmap(_site_element, in_axes=(0, 0, None, 0, 0))(A, Q, H, lam, eta)
        _, ms, Ps, _, _ = _filter_scan(elems)
        fr = FilterResult(means=ms, covs=Ps, log_likelihood=jnp.zeros((), dtype))
        sr = _smoother_parallel(model._replace(transitions=A, process_covs=Q), fr)
        return _site_marginals(H, sr)

    def update(mp, Pp, lk, ek):
        # m = m⁻ + P⁻Hᵀ(I + ΛC)⁻¹(η − ΛHm⁻), P = P⁻ − P⁻HᵀMHP⁻
        PHt, M, _ = _site_update_terms(Pp, H, lk, ek, eye_r)
        G = eye_r + lk @ (H @ PHt)
        m = mp + PHt @ jnp.linalg.solve(G, ek - lk @ (H @ mp))
        return m, _sym(Pp - PHt @ M @ PHt.T)

    d = H.shape[1]
    m1, P1 = update(jnp.zeros((d,), dtype), steps.P1.astype(dtype), lam[0], eta[0])

    def step(carry, inputs):
        m, P = carry
        x, lk, ek = inputs
        A, Q = steps.transition(x)
        mp = A @ m
        Pp = _sym(A @ P @ A.T + Q)
        m, P = update(mp, Pp, lk, ek)
        return (m, P), (m, P)

    _, (ms, Ps) = jax.lax.scan(step, (m1, P1), (steps.xs, lam[1:], eta[1:]))
    fr = FilterResult(
        means=jnp.concatenate([m1[None], ms]),
        covs=jnp.concatenate([P1[None], Ps]),
        log_likelihood=jnp.zeros((), dtype),
    )
    return _site_marginals(H, _smoother_sequential(steps, fr))


def gaussian_sites_log_evidence(
    kernel: Any,
    times: Float[ArrayLike, " n"],
    precision: Float[ArrayLike, "n R R"],
    shift: Float[ArrayLike, "n R"],
) -> Float[Array, ""]:
    r"""Log normalizer of :math:`R` independent GPs times Gaussian site potentials.

    With the prior and sites of :func:`smooth_gaussian_sites`,

    .. math::
        \log Z = \log \int \prod_r GP(f_r; 0, k) \prod_k
        \exp\big(\eta_k^\top f_k - \tfrac12 f_k^\top \Lambda_k f_k\big)\, df
        = -\tfrac12\log\det(I + K\Lambda) + \tfrac12\eta^\top K (I + \Lambda K)^{-1}\eta,

    (:math:`K` the prior covariance of all :math:`f_k`, :math:`\Lambda` block diagonal) in
    :math:`O(n R^3 d^3)` by a Kalman filter: with the one-step prediction
    :math:`f_k \mid \text{sites}_{<k} \sim N(\mu_k, C_k)` and :math:`b_k = \eta_k -
    \Lambda_k\mu_k`, each site adds

    .. math::
        \eta_k^\top\mu_k - \tfrac12\mu_k^\top\Lambda_k\mu_k - \tfrac12\log\det(I + C_k\Lambda_k)
        + \tfrac12 b_k^\top C_k (I + \Lambda_k C_k)^{-1} b_k .

    No :math:`\Lambda_k` is inverted, so singular or zero sites are fine. This is the
    type-II objective of expectation propagation for the kernel's hyperparameters with the
    sites held fixed (FunBaT learns its per-mode kernels with it); it is differentiable in the
    kernel's hyperparameters, the sites and the times.

    Args:
        kernel: kernel with an exact SDE.
        times: strictly increasing times, ``(n,)``.
        precision: site precisions :math:`\Lambda_k`, ``(n, R, R)``, symmetric PSD.
        shift: site shifts :math:`\eta_k`, ``(n, R)``.

    Returns:
        The scalar :math:`\log Z`.

    Raises:
        ValueError: as :func:`smooth_gaussian_sites`.
    """
    t, lam, eta = _check_sites(times, precision, shift)
    R = lam.shape[1]
    steps = _stacked_steps(kernel, t, R)
    dtype = jnp.result_type(steps.H, lam, eta)
    H = steps.H.astype(dtype)
    lam = _sym(lam.astype(dtype))
    eta = eta.astype(dtype)
    eye_r = jnp.eye(R, dtype=dtype)

    def update(mp, Pp, lk, ek):
        PHt = Pp @ H.T
        C = H @ PHt
        mu = H @ mp
        G = eye_r + lk @ C  # I + ΛC
        b = ek - lk @ mu
        gb = jnp.linalg.solve(G, b)
        _, logdet = jnp.linalg.slogdet(G)
        term = ek @ mu - 0.5 * mu @ (lk @ mu) - 0.5 * logdet + 0.5 * b @ (C @ gb)
        m = mp + PHt @ gb
        M = _sym(jnp.linalg.solve(G, lk))
        return m, _sym(Pp - PHt @ M @ PHt.T), term

    d = H.shape[1]
    m1, P1, z1 = update(jnp.zeros((d,), dtype), steps.P1.astype(dtype), lam[0], eta[0])

    def step(carry, inputs):
        m, P = carry
        x, lk, ek = inputs
        A, Q = steps.transition(x)
        m, P, term = update(A @ m, _sym(A @ P @ A.T + Q), lk, ek)
        return (m, P), term

    _, terms = jax.lax.scan(step, (m1, P1), (steps.xs, lam[1:], eta[1:]))
    return z1 + jnp.sum(terms)


def _site_marginals(H: Array, sr: SmootherResult) -> tuple[Array, Array]:
    mean = jnp.einsum("pi,ni->np", H, sr.means, precision=_HI)
    cov = _sym(jnp.einsum("pi,nij,qj->npq", H, sr.covs, H, precision=_HI))
    return mean, cov
