r"""Stationary one-dimensional covariance kernels and their products over grids.

Every kernel here is stationary, :math:`k(x, x') = k(\tau)` with :math:`\tau = x - x'`, even
(:math:`k(\tau) = k(-\tau)`) and defined on scalar inputs. Multi-dimensional grids use
:class:`ProductKernel`, whose Gram matrix is the Kronecker product of the per-axis ones.

Conventions
-----------
* **Lag.** :math:`\tau = x - x'`, :math:`r = |\tau|`.
* **Derivatives.** ``dk(tau, n)`` is :math:`k^{(n)}(\tau) = d^n k / d\tau^n`, in closed form
  (never autodiff through :math:`|\tau|`). Because :math:`\partial_x = d/d\tau` and
  :math:`\partial_{x'} = -d/d\tau`,

  .. math:: \partial_x^i \partial_{x'}^j k(x, x') = (-1)^j k^{(i+j)}(x - x'),

  so :math:`\partial_x\partial_{x'}k = -k''`, :math:`\partial_x^2 k = k''` and
  :math:`\partial_x^2\partial_{x'}^2 k = k''''`. Each kernel has a ``max_order``: the highest
  :math:`n` it supports. Asking for more raises :class:`ValueError`.
* **Spectral density** (angular frequency :math:`\omega`, radians per unit of :math:`x`):

  .. math::
      S(\omega) = \int k(\tau)\, e^{-i\omega\tau}\, d\tau, \qquad
      k(\tau) = \frac{1}{2\pi}\int S(\omega)\, e^{i\omega\tau}\, d\omega .

  So :math:`S(0) = \int k` and :math:`k(0) = \frac{1}{2\pi}\int S`. In cycles per unit,
  :math:`s = \omega / 2\pi`, the density is :math:`S(2\pi s)` with
  :math:`k(\tau) = \int S(2\pi s)\, e^{2\pi i s\tau}\, ds`. Mixture means ``means`` are in
  cycles per unit (:math:`\mu`, so :math:`\sin(100x)` has :math:`\mu = 100/2\pi`).
* **State space.** ``sde()`` returns the linear time-invariant SDE
  :math:`dx = F x\, dt + L\, d\beta`, :math:`E[d\beta\, d\beta^\top] = Q_c\, dt`,
  :math:`f = H x`, whose stationary covariance :math:`P_\infty` solves
  :math:`F P_\infty + P_\infty F^\top + L Q_c L^\top = 0` and whose output covariance is
  :math:`\operatorname{cov}(f(t+\tau), f(t)) = H e^{F\tau} P_\infty H^\top = k(\tau)` for
  :math:`\tau \ge 0` (Hartikainen & Särkkä 2010; Solin & Särkkä 2014). The spectral mixture
  has no finite-dimensional SDE and raises :class:`ValueError`; the RBF kernel has none either,
  but ``RBF.sde(order=N)`` gives an ``N``-state Taylor approximation. A :class:`SumKernel`'s SDE
  stacks its components' SDEs block-diagonally.
* **Hyperparameters** are in natural units (variances, lengthscales, weights), not logs; a user
  who optimises in log space exponentiates before building the kernel.
* **dtype.** Nothing is cast: float32 inputs give float32 results, float64 inputs (with x64
  enabled by the caller) give float64. Python-float hyperparameters are weakly typed and follow
  the inputs.
* **Pytrees.** Kernels are frozen dataclasses registered as pytrees: hyperparameters are leaves,
  configuration (a fixed :math:`\nu`) is static. They can be passed through ``jit``, ``grad``
  and ``vmap`` and built inside them. Values are validated when a user builds a kernel with
  concrete values; copies that JAX rebuilds (tracers, gradients, optimiser updates, which may be
  negative) skip validation.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeslr._validation import check_finite, check_ndim, check_positive, is_concrete

if TYPE_CHECKING:
    from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "SDE",
    "StationaryKernel",
    "Matern12",
    "Matern32",
    "Matern52",
    "RBF",
    "SpectralMixture",
    "StudentTMixture",
    "SumKernel",
    "ProductKernel",
]

_TWO_PI = 2.0 * math.pi
_SQRT_TWO_PI = math.sqrt(2.0 * math.pi)
_MATERN_NUS = (0.5, 1.5, 2.5)
# S(ω) of the unit-variance Matérn-ν kernel is C_ν λ^{2ν} / (λ² + ω²)^{ν+1/2},
# C_ν = 2 √π Γ(ν + 1/2) / Γ(ν).
_MATERN_SD_CONST = {0.5: 2.0, 1.5: 4.0, 2.5: 16.0 / 3.0}
# Highest derivative order in τ with a closed form (k is C^{2ν-1} ... see the class docstrings).
_MATERN_MAX_ORDER = {0.5: 4, 1.5: 2, 2.5: 4}
# Largest Taylor order of the approximate RBF SDE (the unit-scale Lyapunov solve and the root
# finding stay at float64 accuracy up to here; the error is then ~3e-5 of the variance).
_RBF_MAX_SDE_ORDER = 12


class SDE(NamedTuple):
    r"""Linear time-invariant state-space form of a stationary kernel.

    .. math::
        dx(t) = F x(t)\, dt + L\, d\beta(t), \quad E[d\beta\, d\beta^\top] = Q_c\, dt, \quad
        f(t) = H x(t),

    with stationary state covariance :math:`P_\infty`
    (:math:`F P_\infty + P_\infty F^\top + L Q_c L^\top = 0`) and
    :math:`k(\tau) = H e^{F\tau} P_\infty H^\top` for :math:`\tau \ge 0`.

    Attributes:
        F: Feedback matrix, shape ``(d, d)``.
        L: Noise effect matrix, shape ``(d, s)``.
        Qc: Spectral density of the white noise :math:`\beta`, shape ``(s, s)``.
        H: Measurement matrix, shape ``(1, d)``.
        Pinf: Stationary state covariance, shape ``(d, d)``.
    """

    F: Array
    L: Array
    Qc: Array
    H: Array
    Pinf: Array


# ---------------------------------------------------------------------------------------------
# Pytree registration and validation helpers
# ---------------------------------------------------------------------------------------------


def _static_field(**kwargs: Any) -> Any:
    """A dataclass field that is static pytree aux data (hashable configuration)."""
    return dataclasses.field(metadata=dict(static=True), **kwargs)


def _register_pytree(cls: type) -> type:
    """Register a frozen dataclass as a pytree with keyed leaves.

    The split is that of :func:`jax.tree_util.register_dataclass` (fields with
    ``metadata["static"]`` are aux data, the rest are leaves), but unflattening bypasses
    ``__init__``: JAX rebuilds pytrees with tracers, sentinels, gradients and optimiser updates
    (gradients of a lengthscale may well be negative), and none of those must be validated as if
    a user had typed them.
    """
    fields = dataclasses.fields(cls)
    data_names = tuple(f.name for f in fields if not f.metadata.get("static", False))
    meta_names = tuple(f.name for f in fields if f.metadata.get("static", False))
    keys = tuple(jax.tree_util.GetAttrKey(n) for n in data_names)

    def flatten_with_keys(obj):
        children = [(key, getattr(obj, n)) for key, n in zip(keys, data_names, strict=True)]
        return children, tuple(getattr(obj, n) for n in meta_names)

    def flatten(obj):
        return [getattr(obj, n) for n in data_names], tuple(getattr(obj, n) for n in meta_names)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for name, value in zip(data_names, children, strict=True):
            object.__setattr__(obj, name, value)
        for name, value in zip(meta_names, aux, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def _is_checkable(x: Any) -> bool:
    """True for concrete numeric array-likes; False for tracers, None and other objects."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.ndarray, np.generic, jax.Array)):
        return False
    if not is_concrete(x):
        return False
    return np.asarray(x).dtype.kind in "iuf"


def _scalar_param(x: Any) -> Any:
    """Normalise a scalar hyperparameter: ints become floats, lists become arrays."""
    if isinstance(x, bool):
        return x
    if isinstance(x, int):
        return float(x)
    if isinstance(x, (list, tuple)):
        return jnp.asarray(x, dtype=float)
    return x


def _vector_param(x: Any) -> Any:
    """Normalise a per-component hyperparameter to a 1-D float array of shape ``(Q,)``."""
    if isinstance(x, (list, tuple, int, float, np.ndarray, np.generic, jax.Array)) and not (
        isinstance(x, bool)
    ):
        a = jnp.asarray(x)
        if not jnp.issubdtype(a.dtype, jnp.floating):
            a = a.astype(float)
        return jnp.atleast_1d(a)
    return x


def _check_param(name: str, x: Any, *, positive: bool = True) -> None:
    if not _is_checkable(x):
        return
    if positive:
        check_positive(name, x)
    else:
        check_finite(name, x)


def _check_order(name: str, order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a Python int (a static derivative order); got {order!r} of type "
            f"{type(order).__name__}."
        )
    if order < 0:
        raise ValueError(f"`{name}` must be a non-negative derivative order; got {order}.")
    return int(order)


def _as_input(name: str, x: Any) -> Array:
    """A 1-D input array, promoted to a floating dtype, checked for shape and finiteness."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    check_ndim(name, x, 1)
    check_finite(name, x)
    return x


# ---------------------------------------------------------------------------------------------
# Closed-form derivative building blocks (lists of d^j/dτ^j, j = 0..n)
# ---------------------------------------------------------------------------------------------


def _leibniz(da: Sequence[Array], db: Sequence[Array], order: int) -> Array:
    r"""n-th derivative of a product by Leibniz' rule.

    .. math:: (ab)^{(n)} = \sum_{j=0}^{n} \binom{n}{j} a^{(j)} b^{(n-j)}

    Args:
        da: Derivatives :math:`a^{(0)}, \dots, a^{(n)}` (broadcastable arrays).
        db: Derivatives :math:`b^{(0)}, \dots, b^{(n)}`.
        order: :math:`n`.
    """
    out = da[0] * db[order]
    for j in range(1, order + 1):
        out = out + math.comb(order, j) * da[j] * db[order - j]
    return out


def _cos_derivs(tau: Array, m: Array, order: int) -> list[Array]:
    r""":math:`d^j/d\tau^j \cos(m\tau) = m^j \cos(m\tau + j\pi/2)` for ``j = 0..order``."""
    c, s = jnp.cos(m * tau), jnp.sin(m * tau)
    cycle = (c, -s, -c, s)
    return [cycle[j % 4] * m**j for j in range(order + 1)]


def _se_derivs(tau: Array, c: Array, order: int) -> list[Array]:
    r"""Derivatives of :math:`g(\tau) = e^{-c^2\tau^2/2}` (unit-variance SE, :math:`c = 1/\ell`).

    :math:`g^{(j)}(\tau) = (-c)^j \mathrm{He}_j(c\tau)\, g(\tau)` with the probabilists' Hermite
    polynomials (:math:`\mathrm{He}_{j+1} = u\,\mathrm{He}_j - j\,\mathrm{He}_{j-1}`).
    """
    u = c * tau
    g = jnp.exp(-0.5 * u * u)
    he_prev, he = jnp.zeros_like(u), jnp.ones_like(u)
    out = [g]
    for j in range(1, order + 1):
        he_prev, he = he, u * he - (j - 1) * he_prev
        out.append((-c) ** j * he * g)
    return out


def _matern_derivs(tau: Array, lam: Array, nu: float, order: int) -> list[Array]:
    r"""Derivatives of the unit-variance Matérn-ν correlation, :math:`\lambda = \sqrt{2\nu}/\ell`.

    With :math:`r = |\tau|`, :math:`E = e^{-\lambda r}`:

    * ν = 1/2: :math:`\rho = E`, :math:`\rho^{(j)} = (-\lambda\,\mathrm{sign}\,\tau)^j E` off the
      diagonal; at :math:`\tau = 0` the average of the one-sided limits
      (0 for odd :math:`j`, :math:`\lambda^j` for even :math:`j`).
    * ν = 3/2: :math:`\rho = (1 + \lambda r)E`, :math:`\rho' = -\lambda^2 \tau E`,
      :math:`\rho'' = -\lambda^2 (1 - \lambda r) E`.
    * ν = 5/2: :math:`\rho = (1 + \lambda r + \lambda^2 r^2/3)E`,
      :math:`\rho' = -\tfrac{\lambda^2}{3}\tau(1 + \lambda r)E`,
      :math:`\rho'' = -\tfrac{\lambda^2}{3}(1 + \lambda r - \lambda^2 r^2)E`,
      :math:`\rho''' = \tfrac{\lambda^4}{3}\tau(3 - \lambda r)E`,
      :math:`\rho'''' = \tfrac{\lambda^4}{3}(3 - 5\lambda r + \lambda^2 r^2)E`.

    All are continuous at :math:`\tau = 0` (up to ``max_order``), with no autodiff through
    :math:`|\tau|`.
    """
    r = jnp.abs(tau)
    lr = lam * r
    e = jnp.exp(-lr)
    if nu == 0.5:
        s = jnp.sign(tau)
        return [(lam**j) * e if j % 2 == 0 else -(lam**j) * s * e for j in range(order + 1)]
    if nu == 1.5:
        lam2 = lam * lam
        forms = (
            lambda: (1.0 + lr) * e,
            lambda: -lam2 * tau * e,
            lambda: -lam2 * (1.0 - lr) * e,
        )
        return [forms[j]() for j in range(order + 1)]
    c2 = lam * lam / 3.0
    c4 = c2 * lam * lam
    forms = (
        lambda: (1.0 + lr + lr * lr / 3.0) * e,
        lambda: -c2 * tau * (1.0 + lr) * e,
        lambda: -c2 * (1.0 + lr - lr * lr) * e,
        lambda: c4 * tau * (3.0 - lr) * e,
        lambda: c4 * (3.0 - 5.0 * lr + lr * lr) * e,
    )
    return [forms[j]() for j in range(order + 1)]


def _matern_unit_sd(omega: Array, lam: Array, nu: float) -> Array:
    r""":math:`S(\omega) = C_\nu \lambda^{2\nu} / (\lambda^2 + \omega^2)^{\nu + 1/2}`."""
    p = int(nu + 0.5)
    return _MATERN_SD_CONST[nu] * lam ** (2 * p - 1) / (lam * lam + omega * omega) ** p


def _stack2(rows: Sequence[Sequence[Array]]) -> Array:
    """Stack a nested list of equally shaped arrays into ``(..., len(rows), len(rows[0]))``."""
    return jnp.stack([jnp.stack(list(row), axis=-1) for row in rows], axis=-2)


def _matern_sde_blocks(nu: float, variance: Array, lam: Array) -> SDE:
    r"""Companion-form SDE of the Matérn-ν kernel, batched over leading dims of the parameters.

    State :math:`x = (f, f', \dots, f^{(m-1)})`, :math:`m = \nu + 1/2`. The last row of
    :math:`F` holds :math:`-\binom{m}{j}\lambda^{m-j}` (the coefficients of
    :math:`(\lambda + D)^m`), :math:`L = e_m`, :math:`H = e_1^\top`,
    :math:`Q_c = \sigma^2 C_\nu \lambda^{2\nu}` and
    :math:`P_\infty[i, j] = (-1)^j k^{(i+j)}(0)`, in closed form:

    * m = 1: :math:`P_\infty = \sigma^2`;
    * m = 2: :math:`P_\infty = \mathrm{diag}(\sigma^2, \lambda^2\sigma^2)`;
    * m = 3: :math:`P_\infty = \begin{pmatrix}\sigma^2 & 0 & -\kappa\\ 0 & \kappa & 0\\
      -\kappa & 0 & \lambda^4\sigma^2\end{pmatrix}`, :math:`\kappa = \lambda^2\sigma^2/3`.
    """
    variance, lam = jnp.asarray(variance), jnp.asarray(lam)
    dtype = jnp.result_type(variance, lam, float)
    variance, lam = jnp.broadcast_arrays(variance.astype(dtype), lam.astype(dtype))
    batch = lam.shape
    z, o = jnp.zeros_like(lam), jnp.ones_like(lam)
    m = int(nu + 0.5)
    if m == 1:
        F = _stack2([[-lam]])
        P = _stack2([[variance]])
    elif m == 2:
        F = _stack2([[z, o], [-(lam**2), -2.0 * lam]])
        P = _stack2([[variance, z], [z, variance * lam**2]])
    else:
        kap = variance * lam**2 / 3.0
        F = _stack2([[z, o, z], [z, z, o], [-(lam**3), -3.0 * lam**2, -3.0 * lam]])
        P = _stack2([[variance, z, -kap], [z, kap, z], [-kap, z, variance * lam**4]])
    qc = (variance * _MATERN_SD_CONST[nu] * lam ** (2 * m - 1))[..., None, None]
    unit = np.eye(m)
    L = jnp.broadcast_to(jnp.asarray(unit[:, m - 1 :], dtype), (*batch, m, 1))
    H = jnp.broadcast_to(jnp.asarray(unit[:1, :], dtype), (*batch, 1, m))
    return SDE(F=F, L=L, Qc=qc, H=H, Pinf=P)


def _batched_kron(a: Array, b: Array) -> Array:
    """Kronecker product over the last two axes, broadcasting leading (batch) axes."""
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    *batch, i, k, j, l_ = out.shape
    return out.reshape(*batch, i * k, j * l_)


def _block_diag(blocks: Array) -> Array:
    """``(Q, a, b)`` blocks to the ``(Q a, Q b)`` block-diagonal matrix."""
    q, a, b = blocks.shape
    eye = jnp.eye(q, dtype=blocks.dtype)
    return (blocks[:, :, None, :] * eye[:, None, :, None]).reshape(q * a, q * b)


def _lyapunov_np(F: np.ndarray, Q: np.ndarray) -> np.ndarray:
    r"""Solve :math:`F P + P F^\top + Q = 0` in float64 NumPy (Kronecker-sum solve), symmetrised.

    With row-major :math:`\mathrm{vec}`, :math:`(F\otimes I + I\otimes F)\,\mathrm{vec}(P) =
    -\mathrm{vec}(Q)`; :math:`d^2` unknowns, meant for small :math:`d` (:math:`\le 12`).
    """
    n = F.shape[0]
    eye = np.eye(n)
    P = np.linalg.solve(np.kron(F, eye) + np.kron(eye, F), -Q.reshape(-1)).reshape(n, n)
    return 0.5 * (P + P.T)


@functools.cache
def _rbf_unit_sde(order: int) -> tuple[np.ndarray, float, np.ndarray]:
    r"""Balanced unit-lengthscale, unit-variance SDE of the order-:math:`N` Taylor RBF spectrum.

    The denominator :math:`p(u^2) = \sum_{n=0}^N (u^2/2)^n/n!` of
    :math:`S(u) = \sqrt{2\pi}/p(u^2)` (:math:`u = \ell\omega`) is factored as
    :math:`p(u^2) = |q(iu)|^2`, :math:`q(s) = a\prod_k (s - s_k)` with :math:`\Re s_k < 0` and
    :math:`a^2 = 1/(2^N N!)` (the leading coefficient): the roots :math:`x_k` of
    :math:`p(x)` (:math:`x = u^2 = -s^2`) give :math:`s_k = -\sqrt{-x_k}` (the root with negative
    real part; no :math:`x_k` is real and positive, as :math:`p > 0` there). The monic
    :math:`q/a = s^N + \sum_{k<N} b_k s^k` gives the companion model
    :math:`f^{(N)} + \sum_k b_k f^{(k)} = w` with :math:`Q_c = \sqrt{2\pi}/a^2`; its state
    :math:`(f, f', \dots, f^{(N-1)})` is then rescaled to :math:`z_i = f^{(i-1)}/\sqrt{m_{i-1}}`
    (:math:`m_j` the variance of :math:`f^{(j)}`, :math:`m_0 := 1`), which brings
    :math:`\mathrm{cond}(P_\infty)` from :math:`2.5\cdot 10^{12}` to :math:`1.5\cdot 10^3` at
    :math:`N = 12`. :math:`P_\infty` is solved twice (once to find :math:`m_j`, once in the
    balanced coordinates, where the solve is accurate).

    Returns:
        ``(F, qc, Pinf)``: read-only float64 ``(N, N)`` arrays and a float; cached per order.
    """
    n = order
    coeffs = np.array([1.0 / (2.0**j * math.factorial(j)) for j in range(n + 1)])
    x_roots = np.roots(coeffs[::-1])
    s_roots = np.sqrt(-x_roots.astype(complex))
    s_roots = np.where(s_roots.real > 0, -s_roots, s_roots)
    monic = np.real(np.poly(s_roots))[::-1]  # b_0, ..., b_{N-1}, 1
    F = np.diag(np.ones(n - 1), 1)
    F[-1, :] = -monic[:n]
    qc = _SQRT_TWO_PI * 2.0**n * math.factorial(n)
    noise = np.zeros((n, n))
    noise[-1, -1] = qc
    P = _lyapunov_np(F, noise)
    scale = 1.0 / np.sqrt(np.diag(P))
    scale[0] = 1.0
    F = scale[:, None] * F / scale[None, :]
    qc = qc * scale[-1] ** 2
    noise[-1, -1] = qc
    P = _lyapunov_np(F, noise)
    F.setflags(write=False)
    P.setflags(write=False)
    return F, float(qc), P


def _check_rbf_sde_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(
            f"`order` must be a Python int (the number of states of the approximate RBF SDE); "
            f"got {order!r} of type {type(order).__name__}."
        )
    if not 1 <= order <= _RBF_MAX_SDE_ORDER:
        raise ValueError(
            f"`order` must be an int in 1..{_RBF_MAX_SDE_ORDER} (Taylor order = number of SDE "
            f"states of the approximate RBF); got order={order}."
        )
    return int(order)


# ---------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------


class StationaryKernel(abc.ABC):
    r"""Base class of the 1-D stationary kernels :math:`k(x, x') = k(\tau)`, :math:`\tau = x - x'`.

    Subclasses provide the closed-form derivatives :math:`k^{(n)}(\tau)` (``_dk``), the spectral
    density and, where one exists, the SDE form. Everything else (Gram matrices of values and of
    derivatives, the diagonal) is derived here.

    Cost of every Gram method: :math:`O(n_1 n_2)` time and memory (:math:`O(n_1 n_2 Q)` for the
    :math:`Q`-component mixtures).
    """

    @property
    @abc.abstractmethod
    def max_order(self) -> int:
        """Highest derivative order :math:`n` in ``dk(tau, n)`` with a closed form."""

    @abc.abstractmethod
    def _dk(self, tau: Array, order: int) -> Array:
        """:math:`k^{(order)}(\\tau)`; ``order`` is already validated."""

    @abc.abstractmethod
    def _spectral_density(self, omega: Array) -> Array:
        """:math:`S(\\omega)` on a floating array."""

    @abc.abstractmethod
    def sde(self) -> SDE:
        """Exact LTI state-space form; raises ``ValueError`` where none exists."""

    def __add__(self, other: Any) -> SumKernel:
        r"""``k1 + k2``: the :class:`SumKernel` :math:`k_1(\tau) + k_2(\tau)`.

        Nested sums are flattened: ``(a + b) + c`` has components ``(a, b, c)``. Adding
        anything but a :class:`StationaryKernel` returns ``NotImplemented`` (a ``TypeError``).
        """
        if not isinstance(other, StationaryKernel):
            return NotImplemented
        return SumKernel(*_summands(self), *_summands(other))

    # -- values and derivatives in τ ----------------------------------------------------------

    def dk(self, tau: Float[ArrayLike, "*shape"], order: int = 0) -> Float[Array, "*shape"]:
        r"""Closed-form derivative :math:`k^{(n)}(\tau) = d^n k / d\tau^n`, elementwise.

        Args:
            tau: Lags :math:`\tau = x - x'`, any shape.
            order: :math:`n`, a Python int in ``0..max_order``.

        Returns:
            :math:`k^{(n)}(\tau)`, same shape as ``tau``. Cost :math:`O(\text{size})`.

        Raises:
            ValueError: ``order`` exceeds ``max_order`` (the kernel is not that smooth).
        """
        order = _check_order("order", order)
        if order > self.max_order:
            raise ValueError(
                f"`order` must be at most {self.max_order} for {type(self).__name__}"
                f"{self._smoothness_note()}; got order={order}."
            )
        tau = jnp.asarray(tau)
        if not jnp.issubdtype(tau.dtype, jnp.floating):
            tau = tau.astype(jnp.promote_types(tau.dtype, jnp.float32))
        return self._dk(tau, order)

    def k(self, tau: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""Kernel value :math:`k(\tau)`, elementwise over ``tau``."""
        return self.dk(tau, 0)

    def _smoothness_note(self) -> str:
        return ""

    # -- Gram matrices ------------------------------------------------------------------------

    def __call__(
        self, x1: Float[ArrayLike, " n1"], x2: Float[ArrayLike, " n2"] | None = None
    ) -> Float[Array, "n1 n2"]:
        r"""Gram matrix :math:`K_{ij} = k(x_{1,i} - x_{2,j})`.

        Args:
            x1: Inputs :math:`x_1`, shape ``(n1,)``.
            x2: Inputs :math:`x_2`, shape ``(n2,)``; defaults to ``x1``.

        Returns:
            ``(n1, n2)`` matrix. Cost :math:`O(n_1 n_2)` time and memory.
        """
        return self.derivative(x1, x2, 0, 0)

    def derivative(
        self,
        x1: Float[ArrayLike, " n1"],
        x2: Float[ArrayLike, " n2"] | None,
        order_x: int,
        order_xp: int,
    ) -> Float[Array, "n1 n2"]:
        r"""Derivative Gram matrix :math:`\partial_x^i \partial_{x'}^j k(x_1, x_2)`.

        .. math:: [\partial_x^i \partial_{x'}^j K]_{ab} = (-1)^j k^{(i+j)}(x_{1,a} - x_{2,b})

        This is the cross-covariance :math:`\operatorname{cov}(f^{(i)}(x_1), f^{(j)}(x_2))`
        (the covariances a linear PDE operator needs).

        Args:
            x1: Inputs :math:`x`, shape ``(n1,)``.
            x2: Inputs :math:`x'`, shape ``(n2,)``; ``None`` means ``x1``.
            order_x: :math:`i`, derivative order in the first argument.
            order_xp: :math:`j`, derivative order in the second argument.

        Returns:
            ``(n1, n2)`` matrix. Cost :math:`O(n_1 n_2)`.

        Raises:
            ValueError: ``order_x + order_xp`` exceeds ``max_order``.
        """
        i = _check_order("order_x", order_x)
        j = _check_order("order_xp", order_xp)
        if i + j > self.max_order:
            raise ValueError(
                f"`order_x + order_xp` (total derivative order) must be at most {self.max_order} "
                f"for {type(self).__name__}{self._smoothness_note()}; got order_x={i}, "
                f"order_xp={j}."
            )
        a = _as_input("x1", x1)
        b = a if x2 is None else _as_input("x2", x2)
        out = self._dk(a[:, None] - b[None, :], i + j)
        return -out if j % 2 else out

    def d_x(
        self, x1: Float[ArrayLike, " n1"], x2: Float[ArrayLike, " n2"]
    ) -> Float[Array, "n1 n2"]:
        r""":math:`\partial_x k(x_1, x_2) = k'(\tau)`, shape ``(n1, n2)``."""
        return self.derivative(x1, x2, 1, 0)

    def d_xp(
        self, x1: Float[ArrayLike, " n1"], x2: Float[ArrayLike, " n2"]
    ) -> Float[Array, "n1 n2"]:
        r""":math:`\partial_{x'} k(x_1, x_2) = -k'(\tau)`, shape ``(n1, n2)``."""
        return self.derivative(x1, x2, 0, 1)

    def d_x_xp(
        self, x1: Float[ArrayLike, " n1"], x2: Float[ArrayLike, " n2"]
    ) -> Float[Array, "n1 n2"]:
        r""":math:`\partial_x\partial_{x'} k(x_1, x_2) = -k''(\tau)`, shape ``(n1, n2)``."""
        return self.derivative(x1, x2, 1, 1)

    def d_xx(
        self, x1: Float[ArrayLike, " n1"], x2: Float[ArrayLike, " n2"]
    ) -> Float[Array, "n1 n2"]:
        r""":math:`\partial_x^2 k(x_1, x_2) = k''(\tau)`, shape ``(n1, n2)``."""
        return self.derivative(x1, x2, 2, 0)

    def d_xx_xpxp(
        self, x1: Float[ArrayLike, " n1"], x2: Float[ArrayLike, " n2"]
    ) -> Float[Array, "n1 n2"]:
        r""":math:`\partial_x^2\partial_{x'}^2 k(x_1, x_2) = k''''(\tau)`, shape ``(n1, n2)``."""
        return self.derivative(x1, x2, 2, 2)

    def diag(self, x: Float[ArrayLike, " n"]) -> Float[Array, " n"]:
        r"""Gram diagonal: :math:`k(0)` repeated, shape ``(n,)``; cost :math:`O(n)`."""
        x = _as_input("x", x)
        return jnp.broadcast_to(self._dk(jnp.zeros((), x.dtype), 0), x.shape)

    # -- spectrum -----------------------------------------------------------------------------

    def spectral_density(self, omega: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""Spectral density :math:`S(\omega) = \int k(\tau) e^{-i\omega\tau} d\tau`.

        Args:
            omega: Angular frequencies :math:`\omega` (radians per unit of :math:`x`), any
                shape.

        Returns:
            :math:`S(\omega) \ge 0`, same shape, with
            :math:`k(\tau) = \frac{1}{2\pi}\int S(\omega) e^{i\omega\tau} d\omega`.
        """
        omega = jnp.asarray(omega)
        if not jnp.issubdtype(omega.dtype, jnp.floating):
            omega = omega.astype(jnp.promote_types(omega.dtype, jnp.float32))
        return self._spectral_density(omega)


# ---------------------------------------------------------------------------------------------
# Matérn family
# ---------------------------------------------------------------------------------------------


class _Matern(StationaryKernel):
    """Shared code of the Matérn kernels (fields ``variance``, ``lengthscale`` in subclasses)."""

    nu: ClassVar[float]
    variance: Any
    lengthscale: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "variance", _scalar_param(self.variance))
        object.__setattr__(self, "lengthscale", _scalar_param(self.lengthscale))
        _check_param("variance", self.variance)
        _check_param("lengthscale", self.lengthscale)

    @property
    def max_order(self) -> int:
        return _MATERN_MAX_ORDER[self.nu]

    @property
    def rate(self) -> Array:
        r""":math:`\lambda = \sqrt{2\nu}/\ell`."""
        return math.sqrt(2.0 * self.nu) / self.lengthscale

    def _dk(self, tau: Array, order: int) -> Array:
        return self.variance * _matern_derivs(tau, self.rate, self.nu, order)[order]

    def _spectral_density(self, omega: Array) -> Array:
        return self.variance * _matern_unit_sd(omega, self.rate, self.nu)

    def sde(self) -> SDE:
        r"""Exact companion-form SDE, state :math:`(f, f', \dots, f^{(\nu - 1/2)})`.

        :math:`Q_c = \sigma^2 C_\nu \lambda^{2\nu}` with :math:`C_\nu = 2, 4, 16/3` for
        :math:`\nu = 1/2, 3/2, 5/2`, and :math:`P_\infty` in closed form (Hartikainen & Särkkä
        2010). Cost :math:`O(1)`.
        """
        return _matern_sde_blocks(self.nu, self.variance, self.rate)


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False)
class Matern12(_Matern):
    r"""Matérn 1/2 (exponential, Ornstein–Uhlenbeck) kernel.

    .. math:: k(\tau) = \sigma^2 e^{-|\tau|/\ell}, \qquad
        S(\omega) = \frac{2\sigma^2\lambda}{\lambda^2 + \omega^2}, \quad \lambda = 1/\ell .

    Sample paths are continuous but nowhere differentiable and :math:`k` has a kink at 0, so
    :math:`k^{(n)}(\tau) = \sigma^2(-\lambda\,\mathrm{sign}\,\tau)^n e^{-\lambda|\tau|}` exists only
    off the diagonal. At :math:`\tau = 0`, ``dk`` returns the average of the one-sided limits:
    0 for odd :math:`n`, :math:`\sigma^2\lambda^n` for even :math:`n` (orders 0..4). Derivative
    Gram matrices of this kernel are therefore not covariances of a derivative process (they are
    not PSD); use them only off the diagonal.

    SDE: :math:`F = -\lambda`, :math:`L = 1`, :math:`Q_c = 2\sigma^2\lambda`, :math:`H = 1`,
    :math:`P_\infty = \sigma^2`.

    Args:
        variance: :math:`\sigma^2 > 0`.
        lengthscale: :math:`\ell > 0`.
    """

    variance: Float[ArrayLike, ""]
    lengthscale: Float[ArrayLike, ""]
    nu: ClassVar[float] = 0.5

    def _smoothness_note(self) -> str:
        return " (derivatives are off-diagonal limits only)"


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False)
class Matern32(_Matern):
    r"""Matérn 3/2 kernel.

    .. math:: k(\tau) = \sigma^2 (1 + \lambda r) e^{-\lambda r}, \quad r = |\tau|,\;
        \lambda = \sqrt{3}/\ell, \qquad
        S(\omega) = \frac{4\sigma^2\lambda^3}{(\lambda^2 + \omega^2)^2}.

    Sample paths are once differentiable: :math:`k` is :math:`C^2` (:math:`k'`, :math:`k''`
    smooth through :math:`\tau = 0`) but :math:`k'''` jumps at 0, so ``dk`` supports orders
    0..2 and raises ``ValueError`` above (``d_xx_xpxp`` is not available).

    SDE: state :math:`(f, f')`, :math:`F = \begin{pmatrix}0 & 1\\ -\lambda^2 & -2\lambda
    \end{pmatrix}`, :math:`Q_c = 4\sigma^2\lambda^3`,
    :math:`P_\infty = \mathrm{diag}(\sigma^2, \lambda^2\sigma^2)`.

    Args:
        variance: :math:`\sigma^2 > 0`.
        lengthscale: :math:`\ell > 0`.
    """

    variance: Float[ArrayLike, ""]
    lengthscale: Float[ArrayLike, ""]
    nu: ClassVar[float] = 1.5

    def _smoothness_note(self) -> str:
        return " (k is only C^2: k''' jumps at tau = 0)"


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False)
class Matern52(_Matern):
    r"""Matérn 5/2 kernel.

    .. math:: k(\tau) = \sigma^2\left(1 + \lambda r + \tfrac{1}{3}\lambda^2 r^2\right)
        e^{-\lambda r}, \quad r = |\tau|,\; \lambda = \sqrt{5}/\ell, \qquad
        S(\omega) = \frac{16}{3}\frac{\sigma^2\lambda^5}{(\lambda^2 + \omega^2)^3}.

    Sample paths are twice differentiable; :math:`k` is :math:`C^4`, so ``dk`` supports orders
    0..4 (e.g. :math:`-k''(0) = 5\sigma^2/(3\ell^2)`, :math:`k''''(0) = 25\sigma^2/\ell^4`).

    SDE: state :math:`(f, f', f'')`, companion :math:`F` with last row
    :math:`(-\lambda^3, -3\lambda^2, -3\lambda)`, :math:`Q_c = \tfrac{16}{3}\sigma^2\lambda^5`.

    Args:
        variance: :math:`\sigma^2 > 0`.
        lengthscale: :math:`\ell > 0`.
    """

    variance: Float[ArrayLike, ""]
    lengthscale: Float[ArrayLike, ""]
    nu: ClassVar[float] = 2.5


# ---------------------------------------------------------------------------------------------
# Squared exponential
# ---------------------------------------------------------------------------------------------


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False)
class RBF(StationaryKernel):
    r"""Squared-exponential (RBF, Gaussian) kernel.

    .. math:: k(\tau) = \sigma^2 e^{-\tau^2/(2\ell^2)}, \qquad
        k^{(n)}(\tau) = \sigma^2 (-1/\ell)^n \mathrm{He}_n(\tau/\ell) e^{-\tau^2/(2\ell^2)},
        \qquad S(\omega) = \sigma^2\sqrt{2\pi}\,\ell\, e^{-\ell^2\omega^2/2}.

    Infinitely differentiable; ``dk`` supports orders 0..4. There is no exact finite SDE;
    :meth:`sde` with ``order=N`` gives an :math:`N`-state approximation (``order=6``: error
    0.3 % of the variance; table in :meth:`sde`).

    Args:
        variance: :math:`\sigma^2 > 0`.
        lengthscale: :math:`\ell > 0`.
    """

    variance: Float[ArrayLike, ""]
    lengthscale: Float[ArrayLike, ""]

    def __post_init__(self) -> None:
        object.__setattr__(self, "variance", _scalar_param(self.variance))
        object.__setattr__(self, "lengthscale", _scalar_param(self.lengthscale))
        _check_param("variance", self.variance)
        _check_param("lengthscale", self.lengthscale)

    @property
    def max_order(self) -> int:
        return 4

    def _dk(self, tau: Array, order: int) -> Array:
        return self.variance * _se_derivs(tau, 1.0 / self.lengthscale, order)[order]

    def _spectral_density(self, omega: Array) -> Array:
        ell = self.lengthscale
        return self.variance * _SQRT_TWO_PI * ell * jnp.exp(-0.5 * (ell * omega) ** 2)

    def sde(self, order: int | None = None) -> SDE:
        r"""Approximate state-space form: an ``order``-state Taylor expansion of the spectrum.

        There is no exact finite SDE (:math:`e^{-\ell^2\omega^2/2}` is not rational in
        :math:`\omega^2`), so ``order`` must be given. Following Hartikainen & Särkkä (2010) and
        Särkkä & Solin (2019, §12.3), with :math:`u = \ell\omega`,

        .. math::
            S(\omega) = \frac{\sigma^2\sqrt{2\pi}\,\ell}{e^{u^2/2}} \approx
            S_N(\omega) = \frac{\sigma^2\sqrt{2\pi}\,\ell}{\sum_{n=0}^{N}(u^2/2)^n/n!}
            = \frac{\sigma^2\sqrt{2\pi}\,\ell}{|q(iu)|^2},

        where :math:`q` is the stable (left-half-plane roots) spectral factor of the
        denominator, leading coefficient :math:`a = (2^N N!)^{-1/2}`. The factorization and
        the unit-scale stationary covariance are computed once per :math:`N` in float64 NumPy
        and cached; :math:`\sigma^2` and :math:`\ell` enter in JAX, so the result is
        differentiable in both.

        **State.** In the derivative basis :math:`(f, f', \dots, f^{(N-1)})` the model is the
        companion SDE :math:`f^{(N)} + \sum_k b_k\ell^{k-N} f^{(k)} = w` with
        :math:`Q_c = \sigma^2\sqrt{2\pi}\,\ell^{1-2N}\,2^N N!`, whose :math:`P_\infty` spans
        :math:`\ell^{-2(N-1)}` and, even at :math:`\ell = 1`, has condition number
        :math:`2\cdot 10^4` (:math:`N = 6`) to :math:`2.5\cdot 10^{12}` (:math:`N = 12`);
        float32 ``expm`` of it fails from :math:`N = 10`. The state used here is balanced
        instead: :math:`x_i = \ell^{i-1} f^{(i-1)}/\sqrt{m_{i-1}}`, with :math:`m_j` the
        variance of the :math:`j`-th derivative of the unit-scale model (:math:`m_0 = 1`).
        Then

        .. math::
            F = F_N/\ell,\quad L = e_N,\quad Q_c = \sigma^2 q_N/\ell,\quad
            H = e_1^\top,\quad P_\infty = \sigma^2 P_N,

        with constant :math:`F_N, q_N, P_N` (:math:`F_N` is the similarity-scaled companion
        matrix, :math:`P_N` has unit diagonal but for :math:`P_N[0,0] = k_N(0)/\sigma^2` and
        condition number 12 at :math:`N = 6`, :math:`1.5\cdot 10^3` at :math:`N = 12`). The
        Lyapunov equation :math:`FP_\infty + P_\infty F^\top + LQ_cL^\top = 0` holds for every
        :math:`\ell` because :math:`\ell` cancels.

        **Accuracy** of the implied covariance :math:`k_N(\tau) = He^{F\tau}P_\infty H^\top`
        (independent of :math:`\sigma^2` and :math:`\ell`; the maximum is at :math:`\tau = 0`,
        where :math:`k_N(0) > \sigma^2` because :math:`S_N \ge S`):

        | N (states) | max abs error / variance |
        |------------|--------------------------|
        | 2          | 1.4e-1                   |
        | 4          | 1.7e-2                   |
        | 6          | 3.0e-3                   |
        | 8          | 6.0e-4                   |
        | 10         | 1.3e-4                   |
        | 12         | 2.9e-5                   |

        ``order=6`` (0.3 % of the variance, 6 states) is the recommended default; use 8–10
        where the kernel must be matched more closely.

        Args:
            order: :math:`N`, the number of states, a Python int in ``1..12``. ``None`` (the
                default) raises, because the SDE is not exact.

        Returns:
            :class:`SDE` with state dimension :math:`N`, noise dimension 1. Cost :math:`O(N^2)`
            (the cached constants cost :math:`O(N^6)` once, under a millisecond).

        Raises:
            ValueError: ``order`` is ``None`` or outside ``1..12``.
            TypeError: ``order`` is not an int.
        """
        if order is None:
            raise ValueError(
                "RBF (squared-exponential) has no exact finite-dimensional state-space (SDE) "
                "form: its spectral density sigma^2 sqrt(2 pi) ell exp(-ell^2 omega^2 / 2) is not "
                "a rational function of omega^2. Pass `order=N` (an int in "
                f"1..{_RBF_MAX_SDE_ORDER}) for the N-state Taylor approximation of the spectrum "
                "(Hartikainen & Sarkka 2010): max |k_N(tau) - k(tau)| / variance is 1.7e-2 for "
                "N=4, 3.0e-3 for N=6 (recommended), 1.3e-4 for N=10."
            )
        n = _check_rbf_sde_order(order)
        f_unit, qc_unit, p_unit = _rbf_unit_sde(n)
        variance, ell = jnp.asarray(self.variance), jnp.asarray(self.lengthscale)
        dtype = jnp.result_type(variance, ell, float)
        variance, ell = variance.astype(dtype), ell.astype(dtype)
        unit = np.eye(n)
        return SDE(
            F=jnp.asarray(f_unit, dtype) / ell,
            L=jnp.asarray(unit[:, n - 1 :], dtype),
            Qc=jnp.reshape(variance * qc_unit / ell, (1, 1)),
            H=jnp.asarray(unit[:1, :], dtype),
            Pinf=variance * jnp.asarray(p_unit, dtype),
        )


# ---------------------------------------------------------------------------------------------
# Mixtures: Gaussian (spectral mixture) and Student-t (Matérn × cosine) spectra
# ---------------------------------------------------------------------------------------------


class _Mixture(StationaryKernel):
    """Shared validation of the ``(Q,)`` component parameters."""

    _param_names: ClassVar[tuple[str, str, str]]

    def __post_init__(self) -> None:
        for name in self._param_names:
            object.__setattr__(self, name, _vector_param(getattr(self, name)))
        values = [getattr(self, n) for n in self._param_names]
        shapes = [np.shape(v) for v in values]
        for name, shape in zip(self._param_names, shapes, strict=True):
            if len(shape) != 1 or shape[0] < 1:
                raise ValueError(
                    f"`{name}` must be a 1-D array of shape (Q,) with Q >= 1 mixture components; "
                    f"got shape {shape}."
                )
        if len(set(shapes)) != 1:
            got = ", ".join(f"{n}{s}" for n, s in zip(self._param_names, shapes, strict=True))
            raise ValueError(
                f"`{self._param_names[0]}`, `{self._param_names[1]}` and "
                f"`{self._param_names[2]}` must all have the same shape (Q,); got {got}."
            )
        w, means, spread = self._param_names
        _check_param(w, getattr(self, w))
        _check_param(means, getattr(self, means), positive=False)
        _check_param(spread, getattr(self, spread))

    @property
    def num_components(self) -> int:
        """:math:`Q`, the number of mixture components (static)."""
        return int(np.shape(getattr(self, self._param_names[0]))[-1])

    @property
    def variance(self) -> Array:
        r""":math:`k(0) = \sum_q w_q`."""
        return jnp.sum(getattr(self, self._param_names[0]), axis=-1)


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False)
class SpectralMixture(_Mixture):
    r"""Spectral mixture kernel (Gaussian-mixture spectrum; Wilson & Adams 2013).

    .. math::
        k(\tau) = \sum_{q=1}^{Q} w_q\, e^{-2\pi^2\sigma_q^2\tau^2}\cos(2\pi\mu_q\tau),

    .. math::
        S(\omega) = \sum_q \frac{w_q}{2}\frac{\sqrt{2\pi}}{c_q}\left[
            e^{-(\omega - 2\pi\mu_q)^2/(2c_q^2)} + e^{-(\omega + 2\pi\mu_q)^2/(2c_q^2)}\right],
        \quad c_q = 2\pi\sigma_q,

    i.e. in cycles per unit :math:`s = \omega/2\pi` the spectrum is the symmetrised mixture
    :math:`\sum_q \frac{w_q}{2}[\mathcal N(s; \mu_q, \sigma_q^2) + \mathcal N(s; -\mu_q,
    \sigma_q^2)]`. Derivatives: Leibniz' rule on the Gaussian envelope (Hermite form) times the
    cosine; infinitely smooth, ``dk`` supports orders 0..4. No exact SDE (Gaussian envelope).

    GP-HM (Fang et al. 2024) writes the GM kernel as
    :math:`\sum_q w_q e^{-\rho_q^2\tau^2}\cos(2\pi\mu_q\tau)`, so
    :math:`\rho_q^2 = 2\pi^2\sigma_q^2`; build it with :meth:`from_rho_squared`.

    Args:
        weights: :math:`w_q > 0`, shape ``(Q,)``; :math:`k(0) = \sum_q w_q`.
        means: :math:`\mu_q` in cycles per unit of :math:`x`, shape ``(Q,)`` (any sign).
        scales: :math:`\sigma_q > 0`, spectral standard deviations in cycles per unit, ``(Q,)``.

    Cost: :math:`O(n_1 n_2 Q)` time and memory for a Gram matrix.
    """

    weights: Float[ArrayLike, " Q"]
    means: Float[ArrayLike, " Q"]
    scales: Float[ArrayLike, " Q"]
    _param_names: ClassVar[tuple[str, str, str]] = ("weights", "means", "scales")

    @classmethod
    def from_rho_squared(
        cls,
        weights: Float[ArrayLike, " Q"],
        means: Float[ArrayLike, " Q"],
        rho_sq: Float[ArrayLike, " Q"],
    ) -> SpectralMixture:
        r"""Build from the GP-HM envelope :math:`e^{-\rho_q^2\tau^2}`: :math:`\sigma_q =
        \rho_q/(\pi\sqrt 2)`.

        Args:
            weights: :math:`w_q > 0`, shape ``(Q,)``.
            means: :math:`\mu_q` (cycles per unit), shape ``(Q,)``.
            rho_sq: :math:`\rho_q^2 > 0`, shape ``(Q,)``.
        """
        rho_sq = _vector_param(rho_sq)
        _check_param("rho_sq", rho_sq)
        return cls(weights, means, jnp.sqrt(rho_sq / (2.0 * math.pi**2)))

    @property
    def rho_sq(self) -> Array:
        r""":math:`\rho_q^2 = 2\pi^2\sigma_q^2` (the GP-HM envelope rate)."""
        return 2.0 * math.pi**2 * jnp.asarray(self.scales) ** 2

    @property
    def max_order(self) -> int:
        return 4

    def _dk(self, tau: Array, order: int) -> Array:
        t = tau[..., None]
        env = _se_derivs(t, _TWO_PI * self.scales, order)
        osc = _cos_derivs(t, _TWO_PI * self.means, order)
        return jnp.sum(self.weights * _leibniz(env, osc, order), axis=-1)

    def _spectral_density(self, omega: Array) -> Array:
        w = omega[..., None]
        c = _TWO_PI * self.scales
        m = _TWO_PI * self.means
        bumps = jnp.exp(-0.5 * ((w - m) / c) ** 2) + jnp.exp(-0.5 * ((w + m) / c) ** 2)
        return jnp.sum(0.5 * self.weights * _SQRT_TWO_PI / c * bumps, axis=-1)

    def sde(self) -> SDE:
        """Not available: raises ``ValueError`` (Gaussian envelopes have no finite SDE)."""
        raise ValueError(
            "SpectralMixture has no exact finite-dimensional state-space (SDE) form: each "
            "component's Gaussian spectral bump is not a rational function of omega^2. Use "
            "StudentTMixture (Matern x cosine components, exact quasi-periodic SDE) or an "
            "approximate state-space form from `bayeslr.linalg.statespace`."
        )


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False)
class StudentTMixture(_Mixture):
    r"""Student-t mixture kernel (Matérn × cosine components; GP-HM's StM kernel).

    .. math::
        k(\tau) = \sum_{q=1}^{Q} w_q\, \gamma_{\nu, a_q}(\tau) \cos(2\pi\mu_q\tau),

    where :math:`\gamma_{\nu,a}` is the unit-variance Matérn-ν correlation with inverse
    lengthscale :math:`a` (lengthscale :math:`1/a`, rate :math:`\lambda = \sqrt{2\nu}\,a`); for
    :math:`\nu = 5/2`, :math:`\gamma(r) = (1 + \sqrt5 a r + \tfrac53 a^2 r^2) e^{-\sqrt5 a r}`
    (Fang et al. 2024). The spectrum is the symmetrised mixture of shifted Matérn spectra,

    .. math::
        S(\omega) = \sum_q \frac{w_q}{2}\left[S_{\nu,a_q}(\omega - 2\pi\mu_q)
            + S_{\nu,a_q}(\omega + 2\pi\mu_q)\right], \quad
        S_{\nu,a}(\omega) = \frac{C_\nu\lambda^{2\nu}}{(\lambda^2 + \omega^2)^{\nu+1/2}},

    each bump a Student-t density in :math:`\omega` with :math:`2\nu` degrees of freedom and scale
    :math:`a`. Derivatives: Leibniz' rule on the Matérn part times the cosine, so the supported
    orders are those of the Matérn part: 0..4 for ν = 5/2, 0..2 for ν = 3/2, 0..4 off the
    diagonal for ν = 1/2 (at :math:`\tau = 0` the average of the one-sided limits, see
    :class:`Matern12`).

    **SDE** (exact; Solin & Särkkä 2014): component :math:`q` is the Matérn SDE
    :math:`(F_M, L_M, Q_{c,M}, H_M, P_{\infty,M})` with variance :math:`w_q` composed with a
    rotation :math:`\Omega_q = \begin{pmatrix}0 & -m_q\\ m_q & 0\end{pmatrix}`,
    :math:`m_q = 2\pi\mu_q`:

    .. math::
        F_q = F_M\otimes I_2 + I_m\otimes\Omega_q,\; L_q = L_M\otimes I_2,\;
        Q_{c,q} = Q_{c,M}\otimes I_2,\; H_q = H_M\otimes(1, 0),\;
        P_{\infty,q} = P_{\infty,M}\otimes I_2,

    and the components are stacked block-diagonally (:math:`H` concatenated): state dimension
    :math:`2 Q (\nu + 1/2)`.

    Args:
        weights: :math:`w_q > 0`, shape ``(Q,)``.
        means: :math:`\mu_q` in cycles per unit of :math:`x`, shape ``(Q,)`` (any sign).
        inv_lengthscales: :math:`a_q > 0`, shape ``(Q,)`` (GP-HM's ``exp(log_ls)``).
        nu: Matérn order :math:`\nu \in \{1/2, 3/2, 5/2\}` (static; default 5/2).

    Cost: :math:`O(n_1 n_2 Q)` time and memory for a Gram matrix.
    """

    weights: Float[ArrayLike, " Q"]
    means: Float[ArrayLike, " Q"]
    inv_lengthscales: Float[ArrayLike, " Q"]
    nu: float = _static_field(default=2.5)
    _param_names: ClassVar[tuple[str, str, str]] = ("weights", "means", "inv_lengthscales")

    def __post_init__(self) -> None:
        nu = self.nu
        if isinstance(nu, bool) or not isinstance(nu, (int, float, np.integer, np.floating)):
            raise TypeError(f"`nu` must be a Python float in {_MATERN_NUS}; got {nu!r}.")
        if float(nu) not in _MATERN_NUS:
            raise ValueError(
                f"`nu` must be one of {_MATERN_NUS} (half-integer Matern orders with closed "
                f"forms and exact SDEs); got nu={nu!r}."
            )
        object.__setattr__(self, "nu", float(nu))
        super().__post_init__()

    @property
    def max_order(self) -> int:
        return _MATERN_MAX_ORDER[self.nu]

    @property
    def rates(self) -> Array:
        r""":math:`\lambda_q = \sqrt{2\nu}\, a_q`."""
        return math.sqrt(2.0 * self.nu) * self.inv_lengthscales

    def _smoothness_note(self) -> str:
        if self.nu == 1.5:
            return " with nu=1.5 (the Matern part is only C^2)"
        return ""

    def _dk(self, tau: Array, order: int) -> Array:
        t = tau[..., None]
        env = _matern_derivs(t, self.rates, self.nu, order)
        osc = _cos_derivs(t, _TWO_PI * self.means, order)
        return jnp.sum(self.weights * _leibniz(env, osc, order), axis=-1)

    def _spectral_density(self, omega: Array) -> Array:
        w = omega[..., None]
        m = _TWO_PI * self.means
        lam = self.rates
        bumps = _matern_unit_sd(w - m, lam, self.nu) + _matern_unit_sd(w + m, lam, self.nu)
        return jnp.sum(0.5 * self.weights * bumps, axis=-1)

    def sde(self) -> SDE:
        r"""Exact quasi-periodic SDE, block-diagonal over components.

        Returns:
            :class:`SDE` with state dimension :math:`D = 2Q(\nu + 1/2)`, noise dimension
            :math:`2Q`. Cost :math:`O(D^2)` memory to build.
        """
        w = jnp.asarray(self.weights)
        lam = self.rates
        m = _TWO_PI * jnp.asarray(self.means)
        base = _matern_sde_blocks(self.nu, w, lam)  # batched over q
        dtype = base.F.dtype
        order = base.F.shape[-1]
        eye2 = jnp.eye(2, dtype=dtype)
        m = m.astype(dtype)
        zero = jnp.zeros_like(m)
        omega_q = _stack2([[zero, -m], [m, zero]])  # (Q, 2, 2)
        f_blocks = _batched_kron(base.F, eye2) + _batched_kron(jnp.eye(order, dtype=dtype), omega_q)
        l_blocks = _batched_kron(base.L, eye2)
        qc_blocks = _batched_kron(base.Qc, eye2)
        p_blocks = _batched_kron(base.Pinf, eye2)
        h_blocks = _batched_kron(base.H, jnp.array([[1.0, 0.0]], dtype=dtype))  # (Q, 1, 2m)
        q = h_blocks.shape[0]
        return SDE(
            F=_block_diag(f_blocks),
            L=_block_diag(l_blocks),
            Qc=_block_diag(qc_blocks),
            H=h_blocks.reshape(1, q * h_blocks.shape[-1]),
            Pinf=_block_diag(p_blocks),
        )


# ---------------------------------------------------------------------------------------------
# Sums
# ---------------------------------------------------------------------------------------------


def _check_kernel_items(name: str, kernels: Sequence[Any]) -> None:
    """``TypeError`` naming ``name[j]`` unless every item is a :class:`StationaryKernel`."""
    for j, kern in enumerate(kernels):
        if not isinstance(kern, StationaryKernel):
            raise TypeError(
                f"`{name}[{j}]` must be a StationaryKernel (e.g. Matern52(1.0, 0.5)); got "
                f"{kern!r} of type {type(kern).__name__}."
            )


def _summands(kernel: StationaryKernel) -> tuple[StationaryKernel, ...]:
    """The components of a sum (flattening ``+``), or the kernel itself."""
    return kernel.components if isinstance(kernel, SumKernel) else (kernel,)


def _uses_sde_order(kernel: StationaryKernel) -> bool:
    """Whether ``kernel.sde`` takes an approximation ``order`` (an RBF, or a sum holding one)."""
    if isinstance(kernel, SumKernel):
        return any(_uses_sde_order(c) for c in kernel.components)
    return isinstance(kernel, RBF)


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False, init=False)
class SumKernel(StationaryKernel):
    r"""Sum of stationary kernels, :math:`k(\tau) = \sum_{j=1}^{J} k_j(\tau)`.

    The covariance of :math:`f = \sum_j f_j` with independent :math:`f_j \sim GP(0, k_j)`.
    Build it with ``+`` (``Matern32(1., 1.) + Matern52(.5, 3.)``; nested sums are flattened) or
    explicitly, ``SumKernel(k1, k2, ...)``. Every view is the sum of the components' views:
    :math:`k^{(n)} = \sum_j k_j^{(n)}` (so ``max_order`` is the smallest of the components'),
    :math:`S(\omega) = \sum_j S_j(\omega)`, and Gram and derivative Gram matrices are sums.

    **SDE.** The state is the concatenation of the components' states (dimensions
    :math:`d_j`, total :math:`D = \sum_j d_j`):

    .. math::
        F = \mathrm{blockdiag}(F_j),\; L = \mathrm{blockdiag}(L_j),\;
        Q_c = \mathrm{blockdiag}(Q_{c,j}),\; H = (H_1, \dots, H_J),\;
        P_\infty = \mathrm{blockdiag}(P_{\infty,j}),

    so :math:`He^{F\tau}P_\infty H^\top = \sum_j H_je^{F_j\tau}P_{\infty,j}H_j^\top = k(\tau)`.
    :meth:`component_slices` gives each component's block of the state: with a smoother's state
    mean :math:`m` and covariance :math:`P` (at one time), component :math:`j`'s posterior
    mean and variance are :math:`H_j m_{s_j}` and :math:`H_j P_{s_j s_j} H_j^\top`, i.e.
    :math:`H` with zeros outside the slice :math:`s_j`.

    **Rate.** When every component has a ``rate`` (the Matérn family), :attr:`rate` is the
    per-state vector :math:`(\lambda_1 1_{d_1}, \dots, \lambda_J 1_{d_J})` and
    :math:`F + \mathrm{diag}(\text{rate})` is nilpotent block by block, which is what the
    closed-form transitions of ``bayeslr.linalg.statespace`` need. Otherwise reading ``rate``
    raises :class:`AttributeError`, so ``getattr(kernel, "rate", None)`` is ``None``.

    Args:
        *components: Two or more :class:`StationaryKernel` s :math:`k_1, \dots, k_J`.

    Raises:
        ValueError: fewer than two components.
        TypeError: a component that is not a :class:`StationaryKernel`.

    Cost: the sum of the components' costs.
    """

    components: tuple[StationaryKernel, ...]

    def __init__(self, *components: StationaryKernel) -> None:
        if len(components) < 2:
            raise ValueError(
                "`components` must be at least 2 StationaryKernel arguments "
                f"(SumKernel(k1, k2, ...)); got {len(components)}: {components!r}."
            )
        _check_kernel_items("components", components)
        object.__setattr__(self, "components", tuple(components))

    @property
    def max_order(self) -> int:
        return min(c.max_order for c in self.components)

    def _smoothness_note(self) -> str:
        j = min(range(len(self.components)), key=lambda i: self.components[i].max_order)
        c = self.components[j]
        return f" (limited by components[{j}], {type(c).__name__}{c._smoothness_note()})"

    def _dk(self, tau: Array, order: int) -> Array:
        out = self.components[0]._dk(tau, order)
        for c in self.components[1:]:
            out = out + c._dk(tau, order)
        return out

    def _spectral_density(self, omega: Array) -> Array:
        out = self.components[0]._spectral_density(omega)
        for c in self.components[1:]:
            out = out + c._spectral_density(omega)
        return out

    def _component_sdes(self, order: int | None) -> list[SDE]:
        if order is not None and not _uses_sde_order(self):
            raise ValueError(
                "`order` applies only to components with an approximate SDE (RBF); got "
                f"order={order!r} for a sum of {self._names()}, which has none."
            )
        out = []
        for j, c in enumerate(self.components):
            try:
                out.append(c.sde(order) if _uses_sde_order(c) else c.sde())
            except ValueError as err:
                raise ValueError(
                    f"SumKernel.sde(): `components[{j}]` ({type(c).__name__}) has no state-space "
                    f"form with order={order!r}: {err}"
                ) from err
        return out

    def _names(self) -> str:
        return " + ".join(type(c).__name__ for c in self.components)

    def sde(self, order: int | None = None) -> SDE:
        r"""Block-diagonal SDE of the sum (see the class docstring).

        Args:
            order: Passed to the components with an approximate SDE (:meth:`RBF.sde`, which
                needs it); exact components ignore it. Must be ``None`` when there are none.

        Returns:
            :class:`SDE` with state dimension :math:`D = \sum_j d_j` and noise dimension
            :math:`\sum_j s_j`, in the dtype that the components' parameters promote to.
            Cost :math:`O(D^2)` memory to build.

        Raises:
            ValueError: a component has no SDE (its own message, naming the component), or
                ``order`` is given but no component uses it.
        """
        parts = self._component_sdes(order)
        dtype = jnp.result_type(*(p.F for p in parts))

        def stack(field: str) -> Array:
            return jax.scipy.linalg.block_diag(*(getattr(p, field).astype(dtype) for p in parts))

        return SDE(
            F=stack("F"),
            L=stack("L"),
            Qc=stack("Qc"),
            H=jnp.concatenate([p.H.astype(dtype) for p in parts], axis=1),
            Pinf=stack("Pinf"),
        )

    def _state_dims(self, order: int | None) -> tuple[int, ...]:
        parts = jax.eval_shape(lambda k: k._component_sdes(order), self)
        return tuple(p.F.shape[-1] for p in parts)

    def component_slices(self, order: int | None = None) -> tuple[slice, ...]:
        r"""The slice of the SDE state that belongs to each component.

        ``sde(order).H[:, s_j]`` is component :math:`j`'s :math:`H_j`; with a smoother's state
        mean ``m`` (shape ``(..., D)``), ``m[..., s_j] @ H[0, s_j]`` is the posterior mean of
        :math:`f_j`. Static (shapes only; nothing is computed).

        Args:
            order: As in :meth:`sde`.

        Returns:
            One ``slice`` per component, in order, tiling ``range(D)``.
        """
        out, start = [], 0
        for d in self._state_dims(order):
            out.append(slice(start, start + d))
            start += d
        return tuple(out)

    @property
    def rate(self) -> Array:
        r"""Per-state rates :math:`(\lambda_1 1_{d_1}, \dots, \lambda_J 1_{d_J})`, shape ``(D,)``.

        :math:`F + \mathrm{diag}(\text{rate})` is then nilpotent (block-diagonal with nilpotent
        blocks). Exists only when every component has a scalar (or per-state) ``rate``.

        Raises:
            AttributeError: a component has no ``rate`` (e.g. a :class:`StudentTMixture`).
        """
        rates = []
        for j, c in enumerate(self.components):
            r = getattr(c, "rate", None)
            if r is None:
                raise AttributeError(
                    f"SumKernel has no `rate`: `components[{j}]` ({type(c).__name__}) has none "
                    "(only sums of Matern kernels have closed-form transitions)."
                )
            rates.append(r)
        dims = self._state_dims(None)
        dtype = jnp.result_type(*rates, float)
        pairs = zip(rates, dims, strict=True)
        blocks = [jnp.broadcast_to(jnp.asarray(r, dtype), (d,)) for r, d in pairs]
        return jnp.concatenate(blocks)


# ---------------------------------------------------------------------------------------------
# Products over grid axes
# ---------------------------------------------------------------------------------------------


@_register_pytree
@dataclasses.dataclass(frozen=True, eq=False)
class ProductKernel:
    r"""Separable product kernel over :math:`d` axes, :math:`k(x, x') = \prod_j k_j(x_j, x'_j)`.

    On a Cartesian grid :math:`X = g_1\times\dots\times g_d` (row-major: the last axis varies
    fastest) the Gram matrix is the Kronecker product

    .. math:: K = K_1\otimes K_2\otimes\dots\otimes K_d, \qquad K_j = k_j(g_j, g_j),

    so only the factors are ever formed: :math:`O(\sum_j M_j^2)` memory instead of
    :math:`O(M^2)`, :math:`M = \prod_j M_j`. :meth:`gram`, :meth:`cross` and :meth:`diag` return
    per-axis factors; wrapping them as an operator is the job of ``bayeslr.linalg.kron``.

    Args:
        kernels: Tuple :math:`(k_1, \dots, k_d)` of 1-D :class:`StationaryKernel` s.
    """

    kernels: tuple[StationaryKernel, ...]

    def __post_init__(self) -> None:
        kernels = self.kernels
        if isinstance(kernels, list):
            kernels = tuple(kernels)
        if not isinstance(kernels, tuple) or len(kernels) == 0:
            raise ValueError(
                "`kernels` must be a non-empty tuple of StationaryKernel (one per axis); got "
                f"{kernels!r}."
            )
        _check_kernel_items("kernels", kernels)
        object.__setattr__(self, "kernels", kernels)

    @property
    def ndim(self) -> int:
        """Number of axes :math:`d` (static)."""
        return len(self.kernels)

    def _check_axes(self, name: str, axes: Any) -> tuple[Any, ...]:
        if not isinstance(axes, (tuple, list)) or len(axes) != self.ndim:
            got = f"length {len(axes)}" if isinstance(axes, (tuple, list)) else repr(type(axes))
            raise ValueError(
                f"`{name}` must be a tuple of {self.ndim} 1-D arrays (one grid axis per "
                f"kernel); got {got}."
            )
        return tuple(_as_input(f"{name}[{j}]", a) for j, a in enumerate(axes))

    def gram(
        self, axes: Sequence[Float[ArrayLike, " m"]], jitter: float | Float[ArrayLike, ""] = 0.0
    ) -> tuple[Float[Array, "m m"], ...]:
        r"""Kronecker factors :math:`(K_1 + \epsilon I, \dots, K_d + \epsilon I)` of the grid Gram.

        Args:
            axes: Grid axes :math:`(g_1, \dots, g_d)`, each 1-D of length :math:`M_j`.
            jitter: :math:`\epsilon \ge 0` added to each factor's diagonal (note that
                :math:`\otimes_j (K_j + \epsilon I)` is not :math:`K + \epsilon I`).

        Returns:
            Tuple of ``(M_j, M_j)`` matrices. Cost :math:`O(\sum_j M_j^2)`.
        """
        axes = self._check_axes("axes", axes)
        _check_param("jitter", jitter, positive=False)
        if _is_checkable(jitter):
            check_positive("jitter", jitter, allow_zero=True)
        out = []
        for kern, g in zip(self.kernels, axes, strict=True):
            kg = kern(g, g)
            out.append(kg + jitter * jnp.eye(g.shape[0], dtype=kg.dtype))
        return tuple(out)

    def cross(
        self, axes1: Sequence[Float[ArrayLike, " m1"]], axes2: Sequence[Float[ArrayLike, " m2"]]
    ) -> tuple[Float[Array, "m1 m2"], ...]:
        r"""Rectangular factors :math:`k_j(g^{(1)}_j, g^{(2)}_j)` of the grid cross-covariance.

        :math:`K(X_1, X_2) = \otimes_j k_j(g^{(1)}_j, g^{(2)}_j)` for grids
        :math:`X_1 = \times_j g^{(1)}_j`, :math:`X_2 = \times_j g^{(2)}_j`.

        Returns:
            Tuple of ``(M1_j, M2_j)`` matrices. Cost :math:`O(\sum_j M^{(1)}_j M^{(2)}_j)`.
        """
        axes1 = self._check_axes("axes1", axes1)
        axes2 = self._check_axes("axes2", axes2)
        return tuple(k(a, b) for k, a, b in zip(self.kernels, axes1, axes2, strict=True))

    def diag(
        self, axes: Sequence[Float[ArrayLike, " m"]], jitter: float | Float[ArrayLike, ""] = 0.0
    ) -> tuple[Float[Array, " m"], ...]:
        r"""Per-axis diagonals :math:`(\mathrm{diag}\,K_j + \epsilon)`; the grid diagonal is their
        Kronecker product. Cost :math:`O(\sum_j M_j)`."""
        axes = self._check_axes("axes", axes)
        _check_param("jitter", jitter, positive=False)
        if _is_checkable(jitter):
            check_positive("jitter", jitter, allow_zero=True)
        return tuple(k.diag(g) + jitter for k, g in zip(self.kernels, axes, strict=True))

    def operator(
        self,
        axes: Sequence[Float[ArrayLike, " m"]],
        noise: Any = None,
        *,
        jitter: float | Float[ArrayLike, ""] = 0.0,
        observed: Any = None,
    ):
        r"""The grid covariance as a structured operator.

        Returns :class:`~bayeslr.linalg.KroneckerOperator` of :math:`\otimes_j K_j` when
        ``noise`` is ``None``, else :class:`~bayeslr.linalg.KroneckerPlusDiagOperator` of
        :math:`\otimes_j K_j + D` (``noise``: scalar, per-axis tuple, or grid array), restricted
        to the ``observed`` cells if a mask is given. Factors come from :meth:`gram`.
        """
        from bayeslr.linalg.operators import KroneckerOperator, KroneckerPlusDiagOperator

        factors = self.gram(axes, jitter)
        if noise is None:
            if observed is not None:
                raise ValueError("`observed` needs `noise` (a masked operator is K + D on cells).")
            return KroneckerOperator(factors)
        return KroneckerPlusDiagOperator(factors, noise, observed)

    def __call__(
        self, X1: Float[ArrayLike, "n1 d"], X2: Float[ArrayLike, "n2 d"] | None = None
    ) -> Float[Array, "n1 n2"]:
        r"""Dense Gram :math:`K_{ab} = \prod_j k_j(X_{1,aj}, X_{2,bj})` for scattered points.

        Args:
            X1: Points, shape ``(n1, d)``.
            X2: Points, shape ``(n2, d)``; defaults to ``X1``.

        Returns:
            ``(n1, n2)`` matrix. Cost :math:`O(d\, n_1 n_2)`; for tests and small problems.
        """
        a = self._check_points("X1", X1)
        b = a if X2 is None else self._check_points("X2", X2)
        out = self.kernels[0](a[:, 0], b[:, 0])
        for j in range(1, self.ndim):
            out = out * self.kernels[j](a[:, j], b[:, j])
        return out

    def _check_points(self, name: str, x: Any) -> Array:
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.ndim:
            raise ValueError(f"`{name}` must have shape (n, {self.ndim}); got shape {x.shape}.")
        return x
