r"""Structured covariance operators: one protocol, several structures.

Every operator :math:`A` (``n x n``, symmetric positive definite unless stated) offers

=====================  =======================================================================
``matvec(v)``          :math:`A v` for ``v`` of shape ``(n,)`` or ``(n, k)``
``solve(v)``           :math:`A^{-1} v`
``logdet()``           :math:`\log|A|`
``inv_quad_logdet(v)`` :math:`(v^\top A^{-1} v, \log|A|)`, sharing one factorization
``diag()``             :math:`\operatorname{diag}(A)`
``sqrt_matvec(z)``     :math:`R z` with :math:`R R^\top = A`
``sample(key, shape)`` draws from :math:`\mathcal{N}(0, A)`, shape ``(*shape, n)``
``to_dense()``         the dense matrix (tests and small problems only)
=====================  =======================================================================

Operators are pytrees: arrays are leaves (so ``jit`` does not retrace when hyperparameters
change), structural information (grid shape, a missing-cell mask) is static. Models hold an
operator and never branch on its structure.

Implementations: :class:`DenseOperator` (Cholesky, the reference twin),
:class:`KroneckerOperator` (:math:`\otimes_i K_i`, rectangular/complex factors allowed for
``matvec``/``rmatvec``), :class:`KroneckerPlusDiagOperator` (:math:`\otimes_i K_i + D`,
optionally restricted to observed cells) and :class:`StateSpaceOperator`
(:math:`K + \operatorname{diag}(r)` of a Gauss–Markov GP at sorted times: ``matvec`` by the
semiseparable structure of :math:`K`, ``solve``/``logdet``/``sqrt_matvec`` by the Kalman filter
of :mod:`bayeslr.linalg.statespace`, all in :math:`O(n d^3)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from bayeslr._validation import check_finite, check_ndim, check_positive
from bayeslr.linalg import kron, statespace
from bayeslr.linalg._small import matmul

__all__ = [
    "LinearOperator",
    "DenseOperator",
    "KroneckerOperator",
    "KroneckerPlusDiagOperator",
    "StateSpaceOperator",
    "StaticMask",
]

# Full-precision contractions: on GPUs JAX defaults float32 matmuls to TF32 (~3 digits).
_HI = jax.lax.Precision.HIGHEST


_mm = matmul  # tiny per-step products stay fused inside lax.scan (see linalg._small)


class StaticMask:
    """A hashable wrapper of a concrete boolean array, usable as static pytree aux data."""

    def __init__(self, array):
        self.array = np.asarray(array, dtype=bool)
        self.array.setflags(write=False)
        self._key = (self.array.shape, self.array.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, StaticMask) and self._key == other._key

    def __repr__(self) -> str:
        return f"StaticMask(shape={self.array.shape}, observed={int(self.array.sum())})"


class LinearOperator:
    """Base class of the operator protocol (see the module docstring)."""

    @property
    def shape(self) -> tuple[int, int]:
        raise AttributeError  # pragma: no cover - defined by subclasses

    @property
    def dtype(self):
        raise AttributeError  # pragma: no cover

    def inv_quad_logdet(self, v: Array) -> tuple[Array, Array]:
        x = self.solve(v)
        return jnp.sum(jnp.conj(v) * x, axis=0).real, self.logdet()

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        n = self.shape[0]
        z = jax.random.normal(key, (n, int(np.prod(sample_shape, dtype=int))), self.dtype)
        return jnp.moveaxis(self.sqrt_matvec(z), -1, 0).reshape(tuple(sample_shape) + (n,))

    def __matmul__(self, v: Array) -> Array:
        return self.matvec(v)

    def _check_vec(self, name: str, v, n: int | None = None) -> None:
        n = self.shape[1] if n is None else n
        if np.ndim(v) not in (1, 2) or np.shape(v)[0] != n:
            raise ValueError(f"`{name}` must have shape ({n},) or ({n}, k); got {np.shape(v)}.")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseOperator(LinearOperator):
    """A dense SPD matrix, factorized by Cholesky: the reference twin of every operator."""

    matrix: Array

    def __post_init__(self):
        if isinstance(self.matrix, (jax.Array, np.ndarray)):
            kron.check_factors("matrix", [self.matrix], symmetric=True)

    @property
    def shape(self):
        return tuple(self.matrix.shape)

    @property
    def dtype(self):
        return self.matrix.dtype

    def _chol(self):
        return jnp.linalg.cholesky(0.5 * (self.matrix + jnp.conj(self.matrix).T))

    def matvec(self, v):
        return jnp.matmul(self.matrix, v, precision=jax.lax.Precision.HIGHEST)

    def solve(self, v):
        self._check_vec("v", v)
        return jax.scipy.linalg.cho_solve((self._chol(), True), v)

    def logdet(self):
        return 2.0 * jnp.sum(jnp.log(jnp.real(jnp.diagonal(self._chol()))))

    def diag(self):
        return jnp.diagonal(self.matrix)

    def sqrt_matvec(self, z):
        return jnp.matmul(self._chol(), z, precision=jax.lax.Precision.HIGHEST)

    def to_dense(self):
        return self.matrix


def _flat_to_grid(v: Array, grid: tuple[int, ...]) -> Array:
    return v.reshape(grid + v.shape[1:])


def _grid_to_flat(x: Array, d: int) -> Array:
    return x.reshape((-1,) + x.shape[d:])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KroneckerOperator(LinearOperator):
    r""":math:`A = A_1 \otimes \cdots \otimes A_d` with :math:`A_i` of shape ``(m_i, n_i)``.

    ``matvec``/``rmatvec`` accept any real or complex rectangular factors, :math:`O(N\sum n_i)`.
    ``solve``, ``logdet``, ``sqrt_matvec`` need square symmetric positive definite factors:
    :math:`A^{-1} = \otimes A_i^{-1}` by per-factor Cholesky and
    :math:`\log|A| = \sum_i (N/n_i) \log|A_i|`, :math:`O(\sum n_i^3 + N \sum n_i)`.
    """

    factors: tuple[Array, ...]

    def __post_init__(self):
        if all(isinstance(f, (jax.Array, np.ndarray)) for f in self.factors):
            kron.check_factors("factors", self.factors, square=False)

    @property
    def out_grid(self) -> tuple[int, ...]:
        return tuple(f.shape[0] for f in self.factors)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(f.shape[1] for f in self.factors)

    @property
    def shape(self):
        return (int(np.prod(self.out_grid)), int(np.prod(self.grid)))

    @property
    def dtype(self):
        return jnp.result_type(*self.factors)

    def _require_square(self, what: str):
        if self.out_grid != self.grid:
            raise ValueError(
                f"`{what}` needs square factors; this operator has factor shapes "
                f"{[tuple(f.shape) for f in self.factors]}."
            )

    def matvec(self, v):
        self._check_vec("v", v)
        x = kron.kron_mv(self.factors, _flat_to_grid(v, self.grid))
        return _grid_to_flat(x, len(self.factors))

    def rmatvec(self, v):
        r""":math:`A^H v` (adjoint)."""
        self._check_vec("v", v, self.shape[0])
        x = kron.kron_adjoint_mv(self.factors, _flat_to_grid(v, self.out_grid))
        return _grid_to_flat(x, len(self.factors))

    def _chols(self):
        self._require_square("solve/logdet/sqrt")
        return tuple(jnp.linalg.cholesky(0.5 * (f + jnp.conj(f).T)) for f in self.factors)

    def solve(self, v):
        self._check_vec("v", v)
        eye_solves = tuple(
            jax.scipy.linalg.cho_solve((c, True), jnp.eye(c.shape[0], dtype=c.dtype))
            for c in self._chols()
        )
        x = kron.kron_mv(eye_solves, _flat_to_grid(v, self.grid))
        return _grid_to_flat(x, len(self.factors))

    def logdet(self):
        n = self.shape[0]
        return sum(
            2.0 * jnp.sum(jnp.log(jnp.real(jnp.diagonal(c)))) * (n // c.shape[0])
            for c in self._chols()
        )

    def diag(self):
        self._require_square("diag")
        return kron.kron_diag(self.factors).reshape(-1)

    def sqrt_matvec(self, z):
        self._require_square("sqrt_matvec")
        x = kron.kron_mv(kron.kron_sqrt_factors(self.factors), _flat_to_grid(z, self.grid))
        return _grid_to_flat(x, len(self.factors))

    def to_dense(self):
        return kron.kron_dense(self.factors)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KroneckerPlusDiagOperator(LinearOperator):
    r""":math:`A = K_1 \otimes \cdots \otimes K_d + D`, optionally restricted to observed cells.

    ``noise`` sets :math:`D` and the route:

    * a scalar :math:`\sigma^2` or a tuple of per-axis vectors (:math:`D = \otimes_i D_i`): exact
      eigen route, ``solve``/``logdet`` in :math:`O(\sum n_i^3 + N \sum n_i)`;
    * a grid-shaped array (general diagonal: heteroscedastic noise): ``solve`` by preconditioned
      CG (:func:`~bayeslr.linalg.kron.kron_cg_solve`, tolerance documented there); ``logdet``
      has no exact fast route and raises.

    ``observed`` (a concrete boolean grid) restricts :math:`A` to the observed cells:
    the operator then acts on vectors of length ``n_obs`` (observed cells in row-major grid
    order) and uses the exact complement route of
    :func:`~bayeslr.linalg.kron.kron_masked_solve_logdet` (scalar or per-axis noise).
    """

    factors: tuple[Array, ...]
    noise: Any
    observed: StaticMask | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __init__(self, factors, noise=0.0, observed=None):
        factors = tuple(factors)
        if observed is not None and not isinstance(observed, StaticMask):
            grid = tuple(np.shape(f)[0] for f in factors)
            observed = StaticMask(kron._check_mask(observed, grid))
        if isinstance(noise, list):
            noise = tuple(noise)
        if isinstance(noise, (int, float)) and not isinstance(noise, bool):
            noise = jnp.asarray(noise, jnp.result_type(*factors) if factors else None)
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "noise", noise)
        object.__setattr__(self, "observed", observed)
        if all(isinstance(f, (jax.Array, np.ndarray)) for f in factors):
            kron.check_factors("factors", factors, symmetric=True)
            if self.noise_kind == "diag":
                kron.check_grid_array("noise", noise, self.grid, allow_batch=False)
                check_positive("noise", noise)
            elif self.noise_kind == "scalar":
                check_positive("noise", noise, allow_zero=True)
            else:
                kron._as_noise(noise, factors, jnp.float32)

    @property
    def noise_kind(self) -> str:
        if isinstance(self.noise, tuple):
            return "kron"
        return "scalar" if np.ndim(self.noise) == 0 else "diag"

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(f.shape[0] for f in self.factors)

    @property
    def shape(self):
        n = int(self.observed.array.sum()) if self.observed is not None else int(np.prod(self.grid))
        return (n, n)

    @property
    def dtype(self):
        return jnp.result_type(*self.factors)

    # grid <-> operator space (the observed cells when masked)
    def _to_grid(self, v):
        if self.observed is None:
            return _flat_to_grid(v, self.grid)
        idx = np.flatnonzero(self.observed.array.reshape(-1))
        full = jnp.zeros((int(np.prod(self.grid)),) + v.shape[1:], v.dtype).at[idx].set(v)
        return _flat_to_grid(full, self.grid)

    def _from_grid(self, x):
        flat = _grid_to_flat(x, len(self.grid))
        if self.observed is None:
            return flat
        return flat[np.flatnonzero(self.observed.array.reshape(-1))]

    def _diag_grid(self):
        if self.noise_kind == "kron":
            return kron.kron_outer(list(self.noise))
        if self.noise_kind == "scalar":
            return jnp.full(self.grid, self.noise, self.dtype)
        return jnp.asarray(self.noise)

    def matvec(self, v):
        self._check_vec("v", v)
        x = self._to_grid(v)
        kx = kron.kron_mv(self.factors, x)
        return self._from_grid(kx + kron._bcast(self._diag_grid(), x) * x)

    def _solve_logdet(self, v):
        x = self._to_grid(v)
        if self.observed is None:
            return kron.kron_solve_logdet(self.factors, x, self.noise)
        return kron.kron_masked_solve_logdet(self.factors, x, self.noise, self.observed.array)

    def solve(self, v):
        self._check_vec("v", v)
        check_finite("v", v)
        if self.noise_kind == "diag":
            obs = None if self.observed is None else self.observed.array
            x = kron.kron_cg_solve(self.factors, self.noise, self._to_grid(v), observed=obs)
            return self._from_grid(x)
        return self._from_grid(self._solve_logdet(v)[0])

    def _require_exact(self, what):
        if self.noise_kind == "diag":
            raise ValueError(
                f"`{what}` of K + D needs `noise` to be a scalar or per-axis (Kronecker) "
                "variances; a general diagonal has no exact fast log-determinant (its solve "
                "uses CG). Pass missing cells as `observed=` instead of infinite noise, or use "
                "DenseOperator for small grids."
            )

    def logdet(self):
        self._require_exact("logdet")
        if self.observed is None:
            return kron.kron_logdet(self.factors, self.noise)
        zeros = jnp.zeros((self.shape[0],), self.dtype)
        return self._solve_logdet(zeros)[1]

    def inv_quad_logdet(self, v):
        self._require_exact("inv_quad_logdet")
        self._check_vec("v", v)
        x, logdet = self._solve_logdet(v)
        return jnp.sum(jnp.conj(v) * self._from_grid(x), axis=0).real, logdet

    def diag(self):
        d = kron.kron_diag(self.factors) + self._diag_grid()
        return self._from_grid(d)

    def sqrt_matvec(self, z):
        r"""Symmetric root :math:`A^{1/2} z` via the per-factor eigendecomposition (full grid)."""
        if self.observed is not None:
            raise ValueError(
                "`sqrt_matvec` of a masked operator has no Kronecker form; use `sample`, which "
                "draws on the full grid and keeps the observed cells."
            )
        self._require_exact("sqrt_matvec")
        self._check_vec("z", z)
        x = _flat_to_grid(z, self.grid)
        if self.noise_kind == "kron":
            s = kron.kron_outer([jnp.sqrt(v) for v in self.noise])
            inv = [jax.lax.rsqrt(v) for v in self.noise]
            scaled = tuple(
                a[:, None] * k * a[None, :] for a, k in zip(inv, self.factors, strict=True)
            )
            eig = kron.kron_eigh(scaled)
            root = jnp.sqrt(kron._spectrum(eig.eigvals, 1.0))
            return _grid_to_flat(
                kron._bcast(s, x) * kron._eig_apply(eig.eigvecs, root, x), len(self.grid)
            )
        eig = kron.kron_eigh(self.factors)
        root = jnp.sqrt(kron._spectrum(eig.eigvals, jnp.asarray(self.noise, self.dtype)))
        return _grid_to_flat(kron._eig_apply(eig.eigvecs, root, x), len(self.grid))

    def sample(self, key, sample_shape=()):
        k1, k2 = jax.random.split(key)
        f = kron.kron_sample(k1, self.factors, tuple(sample_shape))
        eps = jax.random.normal(k2, f.shape, f.dtype) * jnp.sqrt(self._diag_grid())
        y = (f + eps).reshape(tuple(sample_shape) + (-1,))
        if self.observed is None:
            return y
        return y[..., np.flatnonzero(self.observed.array.reshape(-1))]

    def to_dense(self):
        a = kron.kron_dense(self.factors) + jnp.diag(self._diag_grid().reshape(-1))
        if self.observed is None:
            return a
        idx = np.flatnonzero(self.observed.array.reshape(-1))
        return a[np.ix_(idx, idx)]


def _columns(v: Array) -> Array:
    """``v`` as an ``(n, k)`` matrix (a vector becomes one column)."""
    return v[:, None] if v.ndim == 1 else v


def _promote(v: Any, dtype: Any) -> Array:
    """``v`` as an array of at least ``dtype`` (never downcast)."""
    v = jnp.asarray(v)
    return v.astype(jnp.result_type(v, dtype))


def _like(x: Array, v: Array) -> Array:
    """Undo :func:`_columns`: drop the column axis again when ``v`` was a vector."""
    return x[:, 0] if jnp.ndim(v) == 1 else x


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True, init=False, eq=False)
class StateSpaceOperator(LinearOperator):
    r""":math:`A = K + \operatorname{diag}(r)` of a Gauss–Markov GP at sorted times in :math:`O(n)`.

    :math:`K_{ij} = k(t_i - t_j)` for a stationary kernel with an exact state-space form
    (``kernel.sde()``: Matérn 1/2, 3/2, 5/2, Student-t mixture) at strictly increasing
    :math:`t_1 < \dots < t_n`, and noise variances :math:`r_k > 0`. With the discretized model of
    :func:`~bayeslr.linalg.statespace.from_kernel` (:math:`A_1 = 0`, :math:`A_k =
    e^{F(t_k - t_{k-1})}`, :math:`P_\infty` = ``process_covs[0]``, :math:`h = H^\top`) and
    :math:`\Phi_{ij} = A_i A_{i-1} \cdots A_{j+1}` (:math:`\Phi_{jj} = I`), the kernel is
    semiseparable:

    .. math:: K_{ij} = h^\top \Phi_{ij} P_\infty h \ (i \ge j), \qquad
        K_{ij} = h^\top P_\infty \Phi_{ji}^\top h \ (i < j).

    ``matvec`` (:math:`O(n d^2 k)`, no filter)
        Forward :math:`s_i = A_i s_{i-1} + P_\infty h\, v_i` (:math:`s_0 = 0`) gives the lower
        triangle with the diagonal, :math:`\sum_{j \le i} K_{ij} v_j = h^\top s_i`; backward
        :math:`u_i = A_{i+1}^\top (u_{i+1} + h\, v_{i+1})` (:math:`u_n = 0`) gives the strict
        upper triangle, :math:`\sum_{j > i} K_{ij} v_j = h^\top P_\infty u_i`. Then
        :math:`(A v)_i = h^\top s_i + h^\top P_\infty u_i + r_i v_i`.

    Innovations factorization (one Kalman covariance pass, :math:`O(n d^3)`)
        The predicted covariances :math:`P_k^- = A_k P_{k-1} A_k^\top + Q_k` (from the filtered
        :math:`P_k` of :func:`~bayeslr.linalg.statespace.kalman_filter`), innovation variances
        :math:`S_k = h^\top P_k^- h + r_k` and gains :math:`g_k = P_k^- h / S_k` do not depend
        on the data. The innovations map :math:`W: y \mapsto e`,

        .. math:: m_k^- = A_k m_{k-1}, \quad e_k = y_k - h^\top m_k^-, \quad
            m_k = m_k^- + g_k e_k \quad (m_0 = 0),

        is unit lower triangular and whitens: :math:`A = L D L^\top` with :math:`L = W^{-1}`,
        :math:`D = \operatorname{diag}(S)`. Hence, each in :math:`O(n d^3 + n d^2 k)`:

        * ``logdet``: :math:`\log|A| = \sum_k \log S_k`;
        * ``inv_quad_logdet``: :math:`v^\top A^{-1} v = \sum_k e_k^2 / S_k` with :math:`e = W v`,
          sharing the pass with the log-determinant;
        * ``solve``: :math:`A^{-1} v = W^\top D^{-1} W v`, the transpose by the backward
          (adjoint) recursion :math:`x_k = w_k + g_k^\top \lambda_k`,
          :math:`\lambda_{k-1} = A_k^\top (\lambda_k - h\, x_k)` (:math:`\lambda_n = 0`,
          :math:`w = D^{-1} W v`). This equals :math:`R^{-1}(v - E[f \mid y = v])` (the
          smoother form) without its cancellation for small noise;
        * ``sqrt_matvec``: :math:`L D^{1/2} z`, the innovations form run as a generator,
          :math:`y_k = h^\top A_k m_{k-1} + \sqrt{S_k} z_k`,
          :math:`m_k = A_k m_{k-1} + g_k \sqrt{S_k} z_k`. It is lower triangular with positive
          diagonal, i.e. the Cholesky factor of :math:`A`; ``sample`` maps
          :math:`z \sim N(0, I)` through it.

    ``diag``: :math:`k(0) + r_k`, :math:`O(n)`. ``to_dense``: the kernel Gram matrix plus
    :math:`\operatorname{diag}(r)`, :math:`O(n^2)` (tests and small problems only).

    Every method takes ``v`` of shape ``(n,)`` or ``(n, k)`` (columns are carried together
    through one ``lax.scan``), is jittable and differentiable with respect to the kernel
    hyperparameters, ``times``, ``noise`` and ``v``. ``solve``, ``logdet``, ``inv_quad_logdet``
    and ``sqrt_matvec`` each run the covariance pass once; call ``inv_quad_logdet`` rather than
    ``solve`` and ``logdet`` separately to share it. The recursions are sequential
    (:math:`O(n)` depth).

    Pytree: the kernel's hyperparameters, ``times`` and ``noise`` are the leaves (cast to one
    floating dtype at construction); the :class:`~bayeslr.linalg.statespace.StateSpaceModel` is
    derived from them on use (:attr:`model`), so the operator and its dense twin can never
    disagree.

    Args:
        kernel: A kernel with an exact SDE, e.g. ``Matern32(variance, lengthscale)``.
        times: Strictly increasing times, shape ``(n,)``; never sorted silently.
        noise: Noise variances :math:`r_k > 0`: a scalar or shape ``(n,)``.

    Raises:
        ValueError: ``noise`` not a scalar or ``(n,)``, or not strictly positive (when
            concrete); ``times`` not 1-D, non-finite, unsorted or duplicated; a kernel without
            an exact SDE (from :func:`~bayeslr.linalg.statespace.from_kernel`).
    """

    kernel: Any
    times: Array
    noise: Array

    def __init__(self, kernel: Any, times: Any, noise: Any):
        t = jnp.asarray(times)
        check_ndim("times", t, 1)
        r = jnp.asarray(noise)
        if r.ndim not in (0, 1) or (r.ndim == 1 and r.shape != t.shape):
            raise ValueError(
                f"`noise` must be a scalar or have shape ({t.shape[0]},) (one variance per time); "
                f"got shape {r.shape}."
            )
        check_positive("noise", noise)
        dtype = jnp.result_type(t, r, *jax.tree_util.tree_leaves(kernel))
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.promote_types(dtype, jnp.float32)
        kernel = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), kernel)
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "times", t.astype(dtype))
        object.__setattr__(self, "noise", r.astype(dtype))
        # validates `times` (sorted, distinct, finite) and `kernel` (exact SDE) at the door
        statespace.from_kernel(kernel, self.times)

    # -- pytree ---------------------------------------------------------------------------------

    _fields: ClassVar[tuple[str, ...]] = ("kernel", "times", "noise")

    def tree_flatten_with_keys(self):
        return [(jax.tree_util.GetAttrKey(f), getattr(self, f)) for f in self._fields], None

    def tree_flatten(self):
        return tuple(getattr(self, f) for f in self._fields), None

    @classmethod
    def tree_unflatten(cls, aux: None, children) -> StateSpaceOperator:
        # Bypass __init__: JAX rebuilds pytrees from tracers, sentinels and cotangents.
        obj = object.__new__(cls)
        for f, c in zip(cls._fields, children, strict=True):
            object.__setattr__(obj, f, c)
        return obj

    # -- structure ------------------------------------------------------------------------------

    @property
    def shape(self):
        n = self.times.shape[0]
        return (n, n)

    @property
    def dtype(self):
        return self.times.dtype

    @property
    def model(self) -> statespace.StateSpaceModel:
        """The discretized :class:`~bayeslr.linalg.statespace.StateSpaceModel` at ``times``."""
        return statespace.from_kernel(self.kernel, self.times)

    def _r(self) -> Array:
        return jnp.broadcast_to(self.noise, (self.shape[0],))

    def _innovations(self) -> tuple[Array, Array, Array, Array]:
        r"""``(A, h, S, g)``: transitions, :math:`h = H^\top`, innovation variances, gains."""
        model = self.model
        r = self._r()
        covs = statespace.kalman_filter(model, jnp.zeros_like(r), r).covs
        A, h = model.transitions, model.H[0]
        p_prev = jnp.concatenate([jnp.zeros_like(covs[:1]), covs[:-1]], axis=0)
        pp = _mm(_mm(A, p_prev), jnp.swapaxes(A, -1, -2)) + model.process_covs
        ph = _mm(pp, h)
        s = _mm(ph, h) + r
        return A, h, s, ph / s[:, None]

    # -- protocol -------------------------------------------------------------------------------

    def matvec(self, v):
        self._check_vec("v", v)
        x = _columns(_promote(v, self.dtype))
        model = self.model
        A, h = model.transitions, model.H[0]
        ph = _mm(model.process_covs[0], h)  # P_inf h

        def lower(s, inp):
            a, vi = inp
            s = _mm(a, s) + ph[:, None] * vi
            return s, _mm(h, s)

        def upper(u, inp):
            a, vi = inp  # A_{i+1}, v_{i+1}
            u = _mm(a.T, u + h[:, None] * vi)
            return u, _mm(ph, u)

        zero = jnp.zeros((h.shape[0], x.shape[1]), x.dtype)
        _, lo = jax.lax.scan(lower, zero, (A, x))
        _, up = jax.lax.scan(upper, zero, (A[1:], x[1:]), reverse=True)
        up = jnp.concatenate([up, jnp.zeros_like(x[:1])], axis=0)
        return _like(lo + up + self._r()[:, None] * x, v)

    @staticmethod
    def _whiten(A: Array, h: Array, g: Array, x: Array) -> Array:
        """Innovations :math:`e = W x` of the columns of ``x`` (``(n, k)``)."""

        def step(m, inp):
            a, gk, xk = inp
            mp = _mm(a, m)
            e = xk - _mm(h, mp)
            return mp + gk[:, None] * e, e

        _, e = jax.lax.scan(step, jnp.zeros((h.shape[0], x.shape[1]), x.dtype), (A, g, x))
        return e

    def solve(self, v):
        self._check_vec("v", v)
        x = _columns(_promote(v, self.dtype))
        A, h, s, g = self._innovations()
        w = self._whiten(A, h, g, x) / s[:, None]

        def adjoint(lam, inp):
            a, gk, wk = inp
            xk = wk + _mm(gk, lam)
            return _mm(a.T, lam - h[:, None] * xk), xk

        lam0 = jnp.zeros((h.shape[0], x.shape[1]), x.dtype)
        _, out = jax.lax.scan(adjoint, lam0, (A, g, w), reverse=True)
        return _like(out, v)

    def logdet(self):
        return jnp.sum(jnp.log(self._innovations()[2]))

    def inv_quad_logdet(self, v):
        self._check_vec("v", v)
        x = _columns(_promote(v, self.dtype))
        A, h, s, g = self._innovations()
        e = self._whiten(A, h, g, x)
        quad = jnp.sum(e * e / s[:, None], axis=0)
        return (quad[0] if jnp.ndim(v) == 1 else quad), jnp.sum(jnp.log(s))

    def diag(self):
        return self.kernel.diag(self.times) + self._r()

    def sqrt_matvec(self, z):
        r"""Lower-triangular root :math:`L D^{1/2} z` (the Cholesky factor of :math:`A`)."""
        self._check_vec("z", z)
        x = _columns(_promote(z, self.dtype))
        A, h, s, g = self._innovations()

        def step(m, inp):
            a, gk, ek = inp
            mp = _mm(a, m)
            return mp + gk[:, None] * ek, _mm(h, mp) + ek

        e = jnp.sqrt(s)[:, None] * x
        _, y = jax.lax.scan(step, jnp.zeros((h.shape[0], x.shape[1]), x.dtype), (A, g, e))
        return _like(y, z)

    def to_dense(self):
        return self.kernel(self.times, self.times) + jnp.diag(self._r())
