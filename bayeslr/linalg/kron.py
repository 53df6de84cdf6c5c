r"""Kronecker-structured linear algebra.

For a covariance on a Cartesian grid with a product kernel,

.. math::

    K = K_1 \otimes K_2 \otimes \cdots \otimes K_d, \qquad K_i \in \mathbb{R}^{n_i \times n_i},
    \qquad N = \prod_i n_i,

every routine here works on the factors :math:`K_i` and on arrays shaped as the grid
``(n_1, ..., n_d)`` (optionally followed by batch axes), never forming the :math:`N \times N`
matrix. The row-major ``vec`` convention matches ``jnp.kron``: ``kron_dense(factors) @
x.reshape(-1) == kron_mv(factors, x).reshape(-1)``.

Costs (time, memory) for d factors of size :math:`n_i`:

==============================================  ===========================================
mode product / matvec                           :math:`O(N \sum_i n_i)`, :math:`O(N)`
eigendecomposition of all factors               :math:`O(\sum_i n_i^3)`
solve, logdet, :math:`y^\top A^{-1} y` of       :math:`O(\sum_i n_i^3 + N \sum_i n_i)`
:math:`A = K + \sigma^2 I` or :math:`K + \otimes_i D_i`
gradients of the above (custom JVP)             same order
missing cells (``m`` missing), exact            :math:`O(\sum_i n_i^3 + m N \sum_i n_i + m^3)`
general diagonal, preconditioned CG             :math:`O(N \sum_i n_i)` per iteration
==============================================  ===========================================

Gradients of solve and logdet are defined by a custom JVP in terms of the factors, not by
differentiating ``eigh``: the eigenvector derivative has :math:`1/(\lambda_i - \lambda_j)` terms
that are infinite for the clustered spectra of smooth kernels (an RBF on a fine grid), while the
derivative of :math:`A^{-1}y` and :math:`\log|A|` is perfectly well defined.

References: Saatçi (2012), *Scalable inference for structured Gaussian process models*, ch. 5;
Wilson et al. (2014), *Fast kernel learning for multidimensional pattern extrapolation*;
He & Joseph, *Bayesian algorithms for Kronecker-structured sparse vector recovery* (generalized
eigenproblem for diag of the SBL posterior covariance).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, ArrayLike, Float, Inexact

from bayeslr._validation import check_finite, check_positive, check_symmetric

__all__ = [
    "KronEigh",
    "KronGenEigh",
    "mode_product",
    "kron_mv",
    "kron_adjoint_mv",
    "kron_dense",
    "kron_diag",
    "kron_eigh",
    "kron_outer",
    "kron_sqrt_factors",
    "kron_solve",
    "kron_logdet",
    "kron_solve_logdet",
    "kron_inv_quad_logdet",
    "kron_masked_solve_logdet",
    "kron_cg_solve",
    "kron_sample",
    "kron_predict",
    "kron_gen_eigh",
    "kron_pencil_solve",
    "kron_pencil_inv_diag",
    "kron_pencil_logdet",
    "check_factors",
    "check_grid_array",
]

Factors = Sequence[Inexact[Array, "m n"]]
#: observation noise: a scalar variance, or one variance vector per grid axis (⊗ D_i)
Noise = ArrayLike | Sequence[ArrayLike]

# Full-precision contractions: on GPUs JAX defaults float32 matmuls to TF32 (~3 digits),
# which the structured solves below cannot afford.
_HI = jax.lax.Precision.HIGHEST


class KronEigh(NamedTuple):
    r"""Per-factor eigendecomposition :math:`K_i = Q_i \operatorname{diag}(\lambda_i) Q_i^\top`."""

    eigvals: tuple[Array, ...]
    eigvecs: tuple[Array, ...]


class KronGenEigh(NamedTuple):
    r"""Simultaneous diagonalization of :math:`\otimes_i A_i` and :math:`\otimes_i B_i`.

    ``eigvecs[i]`` is :math:`V_i` with :math:`V_i^\top A_i V_i = \operatorname{diag}(\lambda_i)`
    and :math:`V_i^\top B_i V_i = I`; ``b_logdets[i]`` is :math:`\log|B_i|`.
    """

    eigvals: tuple[Array, ...]
    eigvecs: tuple[Array, ...]
    b_logdets: tuple[Array, ...]


# --------------------------------------------------------------------------------------------
# validation (static shape checks always run; value checks only on concrete arrays)


def check_factors(name: str, factors, *, square: bool = True, symmetric: bool = False) -> None:
    """Validate a sequence of Kronecker factors.

    Raises ``ValueError`` naming ``name[i]`` when a factor is not 2-D, not square (when
    ``square``), not symmetric (when ``symmetric``, concrete values only) or not finite.
    """
    if isinstance(factors, (jax.Array, np.ndarray)) or not isinstance(factors, Sequence):
        raise TypeError(
            f"`{name}` must be a sequence (tuple or list) of 2-D arrays, one per grid axis; "
            f"got {type(factors).__name__}."
        )
    if len(factors) == 0:
        raise ValueError(f"`{name}` must contain at least one factor; got an empty sequence.")
    for i, f in enumerate(factors):
        shape = np.shape(f)
        if len(shape) != 2:
            raise ValueError(f"`{name}[{i}]` must be a 2-D matrix; got shape {shape}.")
        if square and shape[0] != shape[1]:
            raise ValueError(
                f"`{name}[{i}]` must be square (n, n) for this operation; got shape {shape}."
            )
        check_finite(f"{name}[{i}]", f)
        if symmetric and np.size(f):
            check_symmetric(f"{name}[{i}]", f)


def _as_tuple(name: str, factors) -> tuple:
    """Turn a sequence of factors into a tuple, refusing a lone array (a common slip)."""
    if isinstance(factors, (jax.Array, np.ndarray)) or not isinstance(factors, Sequence):
        raise TypeError(
            f"`{name}` must be a sequence (tuple or list) of 2-D arrays, one per grid axis; "
            f"got {type(factors).__name__}."
        )
    return tuple(factors)


def check_grid_array(name: str, x, grid_shape: tuple[int, ...], *, allow_batch=True) -> None:
    """Check that ``x`` is shaped ``(*grid_shape, *batch)`` and finite."""
    shape = np.shape(x)
    d = len(grid_shape)
    if tuple(shape[:d]) != tuple(grid_shape) or (not allow_batch and len(shape) != d):
        tail = ", *batch" if allow_batch else ""
        raise ValueError(
            f"`{name}` must have shape (*grid{tail}) with grid = {tuple(grid_shape)}; "
            f"got shape {shape}."
        )
    check_finite(name, x)


# --------------------------------------------------------------------------------------------
# products


def mode_product(x: Inexact[Array, ...], a: Inexact[Array, "m n"], mode: int) -> Array:
    r"""Mode-``mode`` product :math:`X \times_k A`: contract axis ``mode`` of ``x`` with ``a``.

    ``x`` has ``n`` entries on axis ``mode``; the result has ``m`` there. Cost :math:`O(m \cdot
    \operatorname{size}(x))`.
    """
    out = jnp.tensordot(a, x, axes=((1,), (mode,)), precision=_HI)
    return jnp.moveaxis(out, 0, mode) if mode != 0 else out


def kron_mv(factors: Factors, x: Inexact[Array, ...]) -> Array:
    r"""Kronecker matvec :math:`(A_1 \otimes \cdots \otimes A_d)\,\mathrm{vec}(X)` on a grid array.

    Args:
        factors: :math:`A_i`, each :math:`m_i \times n_i` (real or complex, rectangular allowed).
        x: array of shape ``(n_1, ..., n_d, *batch)``; trailing batch axes are carried along.

    Returns:
        Array of shape ``(m_1, ..., m_d, *batch)``. Cost :math:`O(N \sum_i m_i)`, no
        :math:`N \times N` matrix. Factors that shrink their axis are applied first.
    """
    d = len(factors)
    order = sorted(range(d), key=lambda i: factors[i].shape[0] / max(factors[i].shape[1], 1))
    for i in order:
        x = mode_product(x, factors[i], i)
    return x


def kron_adjoint_mv(factors: Factors, x: Inexact[Array, ...]) -> Array:
    r""":math:`(A_1 \otimes \cdots \otimes A_d)^H \mathrm{vec}(X)` (conjugate transpose)."""
    return kron_mv(tuple(jnp.conj(a).T for a in factors), x)


def kron_dense(factors: Factors) -> Array:
    """The dense :math:`\\otimes_i A_i` (``jnp.kron`` chain). For tests and small problems only."""
    out = factors[0]
    for a in factors[1:]:
        out = jnp.kron(out, a)
    return out


def kron_outer(vectors: Sequence[Array]) -> Array:
    r"""Outer-product grid :math:`v_1 \circ \cdots \circ v_d` (:math:`\otimes_i v_i`, reshaped)."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out[..., None] * v
    return out


def kron_diag(factors: Factors) -> Array:
    """Diagonal of :math:`\\otimes_i K_i` as a grid array: the outer product of the diagonals."""
    return kron_outer([jnp.diagonal(k) for k in factors])


# --------------------------------------------------------------------------------------------
# eigendecompositions and square roots


def _sym(k: Array) -> Array:
    return 0.5 * (k + jnp.conj(k).T)


def kron_eigh(factors: Factors) -> KronEigh:
    r"""Eigendecompose each symmetric factor: :math:`K = Q \Lambda Q^\top`, :math:`Q = \otimes Q_i`.

    Factors are symmetrized first. Cost :math:`O(\sum_i n_i^3)`. Differentiating through this
    function differentiates ``eigh`` (unstable for clustered eigenvalues); the solve/logdet
    functions below have their own stable derivative.
    """
    vals, vecs = zip(*(jnp.linalg.eigh(_sym(k)) for k in factors), strict=True)
    return KronEigh(tuple(vals), tuple(vecs))


def kron_sqrt_factors(factors: Factors, method: str = "eigh") -> tuple[Array, ...]:
    r"""Per-factor square roots :math:`R_i R_i^\top = K_i`, so :math:`\otimes R_i` is a root of K.

    ``method="eigh"`` (default) gives :math:`Q_i \Lambda_i^{1/2}` with negative round-off
    eigenvalues clipped to zero, which works for singular PSD factors (smooth kernels on dense
    grids); ``"cholesky"`` is faster but needs each factor to be numerically positive definite.
    """
    if method == "cholesky":
        return tuple(jnp.linalg.cholesky(_sym(k)) for k in factors)
    if method != "eigh":
        raise ValueError(f"`method` must be 'eigh' or 'cholesky'; got {method!r}.")
    eig = kron_eigh(factors)
    return tuple(
        q * jnp.sqrt(jnp.clip(lam, 0.0, None))[None, :]
        for lam, q in zip(eig.eigvals, eig.eigvecs, strict=True)
    )


# --------------------------------------------------------------------------------------------
# K + sigma^2 I: solve and logdet with a custom JVP


def _bcast(lam: Array, y: Array) -> Array:
    """Reshape a grid array so it broadcasts against ``y`` of shape (*grid, *batch)."""
    return lam.reshape(lam.shape + (1,) * (y.ndim - lam.ndim))


def _eig_apply(eigvecs: tuple[Array, ...], scale: Array, y: Array) -> Array:
    r""":math:`Q \operatorname{diag}(s) Q^\top y`, :math:`Q = \otimes Q_i`, scales on the grid."""
    t = kron_adjoint_mv(eigvecs, y)
    return kron_mv(eigvecs, t * _bcast(scale, t))


def _spectrum(eigvals: tuple[Array, ...], sigma2: Array) -> Array:
    return kron_outer([jnp.clip(v, 0.0, None) for v in eigvals]) + sigma2


def _letters(d: int) -> str:
    return string.ascii_letters[:d]


def _logdet_eigen_weights(eigvals, w):
    r"""Per-factor weights :math:`g_i[a] = \sum_{k: k_i = a} w_k \prod_{j \ne i} \lambda_{j, k_j}`.

    With :math:`w = 1/(\Lambda + \sigma^2)`, :math:`\partial \log|A| / \partial K_i =
    Q_i \operatorname{diag}(g_i) Q_i^\top`. Cost :math:`O(d N)`.
    """
    d = len(eigvals)
    idx = _letters(d)
    lam = [jnp.clip(v, 0.0, None) for v in eigvals]
    out = []
    for i in range(d):
        others = [j for j in range(d) if j != i]
        spec = ",".join([idx] + [idx[j] for j in others]) + "->" + idx[i]
        out.append(jnp.einsum(spec, w, *[lam[j] for j in others], precision=_HI) if others else w)
    return out


def _logdet_factor_grads(eigvals, eigvecs, w):
    r"""Gradient of :math:`\sum_k \log(\Lambda_k + \sigma^2)` w.r.t. each factor:
    :math:`G_i = Q_i \operatorname{diag}(g_i) Q_i^\top` (see :func:`_logdet_eigen_weights`)."""
    return [
        jnp.matmul(q * g[None, :], jnp.conj(q).T, precision=_HI)
        for q, g in zip(eigvecs, _logdet_eigen_weights(eigvals, w), strict=True)
    ]


@jax.custom_jvp
def _solve_logdet(factors: tuple[Array, ...], sigma2: Array, y: Array):
    eig = kron_eigh(factors)
    lam = _spectrum(eig.eigvals, sigma2)
    x = _eig_apply(eig.eigvecs, 1.0 / lam, y)
    return x, jnp.sum(jnp.log(lam))


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _solve_logdet_jvp(primals, tangents):
    factors, sigma2, y = primals
    dfactors, dsigma2, dy = tangents
    eig = kron_eigh(factors)
    lam = _spectrum(eig.eigvals, sigma2)
    w = 1.0 / lam
    x = _eig_apply(eig.eigvecs, w, y)
    logdet = jnp.sum(jnp.log(lam))

    # d(A^{-1} y) = A^{-1} (dy - dA x);  dA = sum_i K_1 ⊗ .. dK_i .. ⊗ K_d + dsigma2 I
    r = None if _is_zero(dy) else dy
    for i, dk in enumerate(dfactors):
        if _is_zero(dk):
            continue
        term = kron_mv(tuple(_sym(dk) if j == i else f for j, f in enumerate(factors)), x)
        r = -term if r is None else r - term
    if not _is_zero(dsigma2):
        r = -dsigma2 * x if r is None else r - dsigma2 * x
    dx = jnp.zeros_like(x) if r is None else _eig_apply(eig.eigvecs, w, r)

    # d log|A| = tr(A^{-1} dA) = sum_i <G_i, dK_i> + dsigma2 * sum(w)
    dlog = jnp.zeros_like(logdet)
    if any(not _is_zero(dk) for dk in dfactors):
        grads = _logdet_factor_grads(eig.eigvals, eig.eigvecs, w)
        for g, dk in zip(grads, dfactors, strict=True):
            if not _is_zero(dk):
                dlog = dlog + jnp.real(jnp.sum(jnp.conj(g) * dk))
    if not _is_zero(dsigma2):
        dlog = dlog + dsigma2 * jnp.sum(w)
    return (x, logdet), (dx, dlog)


_solve_logdet.defjvp(_solve_logdet_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _inv_quad_logdet(factors: tuple[Array, ...], sigma2: Array, y: Array):
    eig = kron_eigh(factors)
    lam = _spectrum(eig.eigvals, sigma2)
    t = kron_adjoint_mv(eig.eigvecs, y)
    axes = tuple(range(len(factors)))
    quad = jnp.sum(jnp.abs(t) ** 2 * _bcast(1.0 / lam, t), axis=axes)
    return quad, jnp.sum(jnp.log(lam))


def _inv_quad_logdet_jvp(primals, tangents):
    r"""Tangents in the eigenbasis, never through :math:`x = A^{-1}y`.

    With :math:`t = Q^\top y`, :math:`s = t / (\Lambda + \sigma^2)` and
    :math:`P_i = Q_i^\top dK_i Q_i`,
    :math:`d(y^\top A^{-1}y) = 2\langle Qs, dy\rangle - d\sigma^2 \sum s^2 -
    \sum_i s^\top(\otimes_{j\ne i}\Lambda_j \otimes P_i)s` and
    :math:`d\log|A| = d\sigma^2 \sum w + \sum_i \langle g_i, \operatorname{diag}P_i\rangle`:
    two mode products fewer per factor than differentiating the solve.
    """
    factors, sigma2, y = primals
    dfactors, dsigma2, dy = tangents
    d = len(factors)
    axes = tuple(range(d))
    eig = kron_eigh(factors)
    lam = _spectrum(eig.eigvals, sigma2)
    w = 1.0 / lam
    t = kron_adjoint_mv(eig.eigvecs, y)
    sv = t * _bcast(w, t)
    quad = jnp.sum(t * sv, axis=axes)
    logdet = jnp.sum(jnp.log(lam))
    dquad = jnp.zeros_like(quad)
    dlog = jnp.zeros_like(logdet)
    if not _is_zero(dy):
        dquad = dquad + 2.0 * jnp.sum(kron_mv(eig.eigvecs, sv) * dy, axis=axes)
    if not _is_zero(dsigma2):
        dquad = dquad - dsigma2 * jnp.sum(sv * sv, axis=axes)
        dlog = dlog + dsigma2 * jnp.sum(w)
    if any(not _is_zero(dk) for dk in dfactors):
        lam_pos = [jnp.clip(v, 0.0, None) for v in eig.eigvals]
        weights = _logdet_eigen_weights(eig.eigvals, w)
        for i, dk in enumerate(dfactors):
            if _is_zero(dk):
                continue
            q = eig.eigvecs[i]
            p_i = jnp.matmul(q.T, jnp.matmul(_sym(dk), q, precision=_HI), precision=_HI)
            others = kron_outer([jnp.ones_like(v) if j == i else v for j, v in enumerate(lam_pos)])
            dquad = dquad - jnp.sum(sv * _bcast(others, sv) * mode_product(sv, p_i, i), axis=axes)
            dlog = dlog + jnp.sum(weights[i] * jnp.diagonal(p_i))
    return (quad, logdet), (dquad, dlog)


_inv_quad_logdet.defjvp(_inv_quad_logdet_jvp, symbolic_zeros=True)


def _as_noise(noise, factors, dtype):
    """Normalize ``noise`` to ('scalar', s) or ('kron', tuple of per-axis vectors)."""
    if isinstance(noise, (tuple, list)):
        if len(noise) != len(factors):
            raise ValueError(
                f"`noise` given per axis must have one vector per factor ({len(factors)}); "
                f"got {len(noise)}."
            )
        vecs = []
        for i, (v, k) in enumerate(zip(noise, factors, strict=True)):
            if np.shape(v) != (k.shape[0],):
                raise ValueError(
                    f"`noise[{i}]` must be a vector of shape ({k.shape[0]},) matching "
                    f"`factors[{i}]`; got shape {np.shape(v)}."
                )
            check_positive(f"noise[{i}]", v)
            vecs.append(jnp.asarray(v, dtype))
        return "kron", tuple(vecs)
    if np.ndim(noise) != 0:
        raise ValueError(
            "`noise` must be a scalar variance sigma^2 or a tuple of per-axis variance vectors "
            f"(Kronecker-structured diagonal); got an array of shape {np.shape(noise)}. For a "
            "general diagonal use `kron_cg_solve`, for missing cells `kron_masked_solve_logdet`."
        )
    check_positive("noise", noise, allow_zero=True)
    return "scalar", jnp.asarray(noise, dtype)


def _result_dtype(factors, y=None):
    arrays = list(factors) + ([y] if y is not None else [])
    return jnp.result_type(*arrays)


def kron_solve_logdet(
    factors: Factors, y: Inexact[Array, ...], noise: Noise = 0.0
) -> tuple[Array, Array]:
    r"""Solve and log-determinant of :math:`A = K_1 \otimes \cdots \otimes K_d + D`.

    With :math:`K_i = Q_i \Lambda_i Q_i^\top`,

    .. math::

        A^{-1} y = Q (\Lambda + \sigma^2 I)^{-1} Q^\top y, \qquad
        \log|A| = \sum_k \log(\Lambda_k + \sigma^2),

    where :math:`Q = \otimes Q_i` and :math:`\Lambda = \otimes \Lambda_i` are never formed.
    A Kronecker-structured diagonal :math:`D = \otimes_i D_i` is handled exactly by the
    rescaling :math:`A = D^{1/2}(\otimes_i D_i^{-1/2} K_i D_i^{-1/2} + I) D^{1/2}`.

    Args:
        factors: symmetric PSD :math:`K_i` (``n_i x n_i``).
        y: right-hand side(s), shape ``(n_1, ..., n_d, *batch)``.
        noise: :math:`\sigma^2 \ge 0` (scalar), or a tuple of per-axis positive vectors
            :math:`(\operatorname{diag} D_1, \ldots)`. With :math:`\sigma^2 = 0` the factors
            must be positive definite.

    Returns:
        ``(x, logdet)`` with ``x`` shaped like ``y``. Cost :math:`O(\sum n_i^3 + N\sum n_i)`
        time, :math:`O(N + \sum n_i^2)` memory, gradients included.
    """
    factors = _as_tuple("factors", factors)
    check_factors("factors", factors, symmetric=True)
    check_grid_array("y", y, tuple(k.shape[0] for k in factors))
    dtype = _result_dtype(factors, y)
    factors = tuple(jnp.asarray(k, dtype) for k in factors)
    y = jnp.asarray(y, dtype)
    factors, sigma2, y, scale, logdet_d = _whiten_noise(factors, y, noise, dtype)
    x, logdet = _solve_logdet(factors, sigma2, y)
    return (x if scale is None else x * _bcast(scale, x)), logdet + logdet_d


def _whiten_noise(factors, y, noise, dtype):
    """Reduce K + D to K' + sigma2 I: returns (factors', sigma2, y', scale, log|D| part).

    For D = ⊗ D_i: K' = ⊗ D_i^{-1/2} K_i D_i^{-1/2}, sigma2 = 1, y' = D^{-1/2} y, and the
    solution of the original system is scale * x' with scale = D^{-1/2}.
    """
    kind, nz = _as_noise(noise, factors, jnp.real(jnp.zeros((), dtype)).dtype)
    if kind == "scalar":
        return factors, nz, y, None, jnp.zeros((), nz.dtype)
    s = [jax.lax.rsqrt(v) for v in nz]
    scaled = tuple(si[:, None] * k * si[None, :] for si, k in zip(s, factors, strict=True))
    sgrid = kron_outer(s)
    n = int(np.prod([k.shape[0] for k in factors]))
    logdet_d = sum(jnp.sum(jnp.log(v)) * (n // v.shape[0]) for v in nz)
    return scaled, jnp.ones((), nz[0].dtype), y * _bcast(sgrid, y), sgrid, logdet_d


def kron_solve(factors: Factors, y: Array, noise: Noise = 0.0) -> Array:
    r""":math:`(\otimes_i K_i + D)^{-1} y`; see :func:`kron_solve_logdet`."""
    return kron_solve_logdet(factors, y, noise)[0]


def kron_logdet(factors: Factors, noise: Noise = 0.0) -> Array:
    r""":math:`\log|\otimes_i K_i + D|`; see :func:`kron_solve_logdet`."""
    factors = _as_tuple("factors", factors)
    grid = tuple(k.shape[0] for k in factors)
    dtype = _result_dtype(factors)
    # an empty batch of right-hand sides: the quadratic-form work has size zero
    return kron_inv_quad_logdet(factors, jnp.zeros((*grid, 0), dtype), noise)[1]


def kron_inv_quad_logdet(factors: Factors, y: Array, noise: Noise = 0.0) -> tuple[Array, Array]:
    r""":math:`(y^\top A^{-1} y, \log|A|)` for :math:`A = \otimes K_i + D`.

    For ``y`` with batch axes ``(*grid, *batch)`` the quadratic form has shape ``batch``.
    Computed in the eigenbasis, :math:`y^\top A^{-1}y = \sum_k t_k^2/(\Lambda_k+\sigma^2)`
    with :math:`t = Q^\top y`, and differentiated there too (its own JVP): for a Gaussian
    log-likelihood this needs about half the mode products of :func:`kron_solve_logdet` plus
    a dot product, value and gradient alike. Same arguments and cost order.
    """
    factors = _as_tuple("factors", factors)
    check_factors("factors", factors, symmetric=True)
    check_grid_array("y", y, tuple(k.shape[0] for k in factors))
    dtype = _result_dtype(factors, y)
    if jnp.issubdtype(dtype, jnp.complexfloating):  # complex: through the solve
        x, logdet = kron_solve_logdet(factors, y, noise)
        quad = jnp.real(jnp.sum(jnp.conj(y) * x, axis=tuple(range(len(factors)))))
        return quad, logdet
    factors = tuple(jnp.asarray(k, dtype) for k in factors)
    y = jnp.asarray(y, dtype)
    factors, sigma2, y, _, logdet_d = _whiten_noise(factors, y, noise, dtype)
    quad, logdet = _inv_quad_logdet(factors, sigma2, y)
    return quad, logdet + logdet_d


# --------------------------------------------------------------------------------------------
# missing cells: exact route through the complement


def _missing_columns(grid: tuple[int, ...], missing_flat: np.ndarray, dtype) -> Array:
    """Unit vectors at the missing cells, as a grid array with one batch column each."""
    m = len(missing_flat)
    e = np.zeros((int(np.prod(grid)), m), dtype=np.dtype(dtype))
    e[missing_flat, np.arange(m)] = 1.0
    return jnp.asarray(e.reshape(grid + (m,)))


def kron_masked_solve_logdet(
    factors: Factors, y: Array, noise: Noise, observed: np.ndarray
) -> tuple[Array, Array]:
    r"""Exact solve and logdet of :math:`A_{oo} = (\otimes K_i + D)_{oo}` on observed cells only.

    With :math:`B = A^{-1}` (fast, Kronecker) and :math:`E` the columns of the identity at the
    :math:`m` missing cells,

    .. math::

        S^\top A_{oo}^{-1} S = B - B E\, B_{mm}^{-1} E^\top B, \qquad
        \log|A_{oo}| = \log|A| + \log|B_{mm}|,

    the first from the Woodbury identity (missing cells as infinite noise), the second from the
    block-determinant identity :math:`|A_{oo}| = |A|\,|(A^{-1})_{mm}|`. Everything is exact.

    Args:
        factors: symmetric PSD :math:`K_i`.
        y: grid array ``(*grid, *batch)``; its values at missing cells are ignored.
        noise: as in :func:`kron_solve_logdet` (scalar or per-axis).
        observed: concrete boolean grid mask (``True`` = observed). It must be a NumPy array:
            the number of missing cells fixes the shapes, so a new mask recompiles.

    Returns:
        ``(x, logdet)``: ``x`` is :math:`S^\top A_{oo}^{-1} y_o` on the grid (zero at missing
        cells), ``logdet`` is :math:`\log|A_{oo}|`. Cost :math:`O(\sum n_i^3 + m N \sum n_i +
        m^3)` time and :math:`O(mN)` memory: efficient while few cells are missing.
    """
    factors = _as_tuple("factors", factors)
    grid = tuple(k.shape[0] for k in factors)
    observed = _check_mask(observed, grid)
    missing = np.flatnonzero(~observed.reshape(-1))
    mask = jnp.asarray(observed.reshape(grid))
    y = jnp.where(_bcast(mask, jnp.asarray(y)), y, 0)
    if missing.size == 0:
        return kron_solve_logdet(factors, y, noise)
    dtype = _result_dtype(factors, y)
    e = _missing_columns(grid, missing, dtype)
    d = len(grid)
    cols = jnp.concatenate([y.reshape(grid + (-1,)), e], axis=-1)
    z, logdet_a = kron_solve_logdet(factors, cols, noise)
    nb = int(np.prod(y.shape[d:], dtype=int))
    by, be = z[..., :nb], z[..., nb:]  # B y, B E (grid, m)
    flat_be = be.reshape(-1, missing.size)
    b_mm = flat_be[missing]  # (m, m), SPD
    b_mm = 0.5 * (b_mm + jnp.conj(b_mm).T)
    chol = jnp.linalg.cholesky(b_mm)
    ey = by.reshape(-1, nb)[missing]  # E^T B y  (m, nb)
    coef = jax.scipy.linalg.cho_solve((chol, True), ey)
    x = by - jnp.matmul(flat_be, coef, precision=_HI).reshape(by.shape)
    x = jnp.where(_bcast(mask, x), x, 0)  # exactly zero at missing cells (round-off aside)
    logdet = logdet_a + 2.0 * jnp.sum(jnp.log(jnp.real(jnp.diagonal(chol))))
    return x.reshape(y.shape), logdet


def _check_mask(observed, grid) -> np.ndarray:
    if isinstance(observed, jax.core.Tracer):
        raise TypeError(
            "`observed` must be a concrete NumPy boolean array (it fixes the number of missing "
            "cells, hence the shapes); got a traced array. Build the mask outside `jit`."
        )
    obs = np.asarray(observed)
    if obs.dtype != np.bool_:
        raise TypeError(f"`observed` must be a boolean mask; got dtype {obs.dtype}.")
    if obs.shape != tuple(grid):
        raise ValueError(f"`observed` must have the grid shape {tuple(grid)}; got {obs.shape}.")
    if not obs.any():
        raise ValueError("`observed` must mark at least one cell as observed; all are missing.")
    return obs


# --------------------------------------------------------------------------------------------
# general diagonal: preconditioned conjugate gradients


def kron_cg_solve(
    factors: Factors,
    diag: Float[Array, ...],
    y: Array,
    *,
    tol: float | None = None,
    maxiter: int = 1000,
    observed: Array | None = None,
) -> Array:
    r"""Solve :math:`(\otimes K_i + D)\,x = y` for a general positive diagonal :math:`D`.

    Preconditioned conjugate gradients (``jax.scipy.sparse.linalg.cg``), each iteration one
    Kronecker matvec, :math:`O(N \sum n_i)`. The preconditioner is the exact inverse of
    :math:`\otimes K_i + \bar d I` with :math:`\bar d` the mean of the diagonal over observed
    cells, applied through the per-factor eigendecomposition, so heteroscedastic noise that
    varies moderately converges in a handful of iterations.

    Missing cells: pass ``observed`` (boolean grid). The system solved is then
    :math:`(S K S^\top + D_o) x_o = y_o` with :math:`x = 0` at missing cells.

    Tolerance: CG stops when :math:`\|r\|_2 \le \mathrm{tol}\,\|y\|_2`; the default ``tol`` is
    ``1e-5`` in float32 and ``1e-10`` in float64. The error in :math:`x` is bounded by
    ``tol`` times the condition number of the preconditioned system. Gradients go through
    implicit differentiation (``lax.custom_linear_solve``), i.e. a second CG solve.
    """
    factors = _as_tuple("factors", factors)
    grid = tuple(k.shape[0] for k in factors)
    check_factors("factors", factors, symmetric=True)
    check_grid_array("y", y, grid)
    check_grid_array("diag", diag, grid, allow_batch=False)
    check_positive("diag", diag)
    dtype = _result_dtype(factors, y)
    if tol is None:
        tol = 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-10
    factors = tuple(jnp.asarray(k, dtype) for k in factors)
    diag = jnp.asarray(diag, dtype)
    if observed is None:
        mask = jnp.ones(grid, bool)
    else:
        mask = jnp.asarray(_check_mask(observed, grid))
    mb = _bcast(mask, jnp.asarray(y))
    y = jnp.where(mb, y, 0).astype(dtype)
    dbar = jnp.sum(jnp.where(mask, diag, 0)) / jnp.sum(mask)
    eig = kron_eigh(factors)
    w = 1.0 / _spectrum(eig.eigvals, dbar)

    def matvec(v):
        kv = kron_mv(factors, jnp.where(mb, v, 0))
        return jnp.where(mb, kv + _bcast(diag, v) * v, v)

    def precond(v):
        pv = _eig_apply(eig.eigvecs, w, jnp.where(mb, v, 0))
        return jnp.where(mb, pv, v)

    x, _ = jax.scipy.sparse.linalg.cg(matvec, y, tol=tol, atol=0.0, maxiter=maxiter, M=precond)
    return x


# --------------------------------------------------------------------------------------------
# sampling and prediction


def kron_sample(
    key: Array,
    factors: Factors,
    sample_shape: tuple[int, ...] = (),
    *,
    method: str = "eigh",
) -> Array:
    r"""Draw :math:`f \sim \mathcal{N}(0, \otimes_i K_i)` as grid arrays.

    :math:`f = (\otimes_i R_i) z` with :math:`R_i R_i^\top = K_i` (see
    :func:`kron_sqrt_factors`) and :math:`z \sim \mathcal{N}(0, I)`. Returns shape
    ``(*sample_shape, *grid)``. Cost :math:`O(\sum n_i^3 + S N \sum n_i)`.
    """
    factors = _as_tuple("factors", factors)
    check_factors("factors", factors, symmetric=True)
    roots = kron_sqrt_factors(factors, method)
    grid = tuple(k.shape[0] for k in factors)
    n = int(np.prod(sample_shape, dtype=int))
    z = jax.random.normal(key, grid + (n,), dtype=_result_dtype(factors))
    f = kron_mv(roots, z)
    return jnp.moveaxis(f, -1, 0).reshape(tuple(sample_shape) + grid)


def kron_predict(
    factors: Factors,
    y: Array,
    noise: Noise,
    cross_factors: Factors,
    test_diag: Sequence[Array] | None = None,
    *,
    observed: np.ndarray | None = None,
) -> tuple[Array, Array | None]:
    r"""GP posterior on a (new) grid: conditional mean and marginal variance of :math:`f_*`.

    For :math:`y = f + \varepsilon`, :math:`f \sim \mathcal{N}(0, K)`,
    :math:`\varepsilon \sim \mathcal{N}(0, D)`, and test points on the grid of the cross
    factors :math:`K_{*i} = k_i(x_{*i}, x_i)` (:math:`m_i \times n_i`),

    .. math::

        \mu_* = K_* A^{-1} y, \qquad
        \operatorname{diag}\Sigma_* = \operatorname{diag}K_{**} -
        \operatorname{diag}(K_* A^{-1} K_*^\top),

    with :math:`A = K + D`, :math:`K_* = \otimes K_{*i}` and
    :math:`\operatorname{diag}(K_* A^{-1} K_*^\top) = (\otimes (K_{*i}Q_i)^{\circ 2})\,
    (\Lambda + \sigma^2)^{-1}` (exact, never forming :math:`K_*`).

    Args:
        factors: training factors :math:`K_i`.
        y: observations on the training grid, ``(*grid, *batch)`` (subtract the mean first).
        noise: scalar :math:`\sigma^2` (per-axis noise is accepted for the mean only).
        cross_factors: :math:`K_{*i}` of shape ``(m_i, n_i)``; pass the training factors to
            predict on the training grid.
        test_diag: per-axis prior variances :math:`\operatorname{diag} K_{**i}` (length
            :math:`m_i`). If ``None`` the variance is not computed and ``None`` is returned.
        observed: optional concrete boolean mask of observed training cells (exact route of
            :func:`kron_masked_solve_logdet`; variance then costs :math:`O(mM\sum n_i)`).

    Returns:
        ``(mean, var)`` on the test grid ``(m_1, ..., m_d, *batch)`` and ``(m_1, ..., m_d)``.
    """
    factors = _as_tuple("factors", factors)
    cross_factors = _as_tuple("cross_factors", cross_factors)
    grid = tuple(k.shape[0] for k in factors)
    check_factors("cross_factors", cross_factors, square=False)
    for i, (c, k) in enumerate(zip(cross_factors, factors, strict=True)):
        if c.shape[1] != k.shape[0]:
            raise ValueError(
                f"`cross_factors[{i}]` must have {k.shape[0]} columns (training points on axis "
                f"{i}); got shape {c.shape}."
            )
    if observed is None:
        alpha, _ = kron_solve_logdet(factors, y, noise)
    else:
        alpha, _ = kron_masked_solve_logdet(factors, y, noise, observed)
    mean = kron_mv(cross_factors, alpha)
    if test_diag is None:
        return mean, None
    if isinstance(noise, (tuple, list)):
        raise ValueError(
            "`noise` must be a scalar to compute the predictive variance (`test_diag` given); "
            "per-axis noise is supported for the mean only."
        )
    for i, (t, c) in enumerate(zip(test_diag, cross_factors, strict=True)):
        if np.shape(t) != (c.shape[0],):
            raise ValueError(
                f"`test_diag[{i}]` must have shape ({c.shape[0]},); got {np.shape(t)}."
            )
    dtype = _result_dtype(factors, y)
    eig = kron_eigh(tuple(jnp.asarray(k, dtype) for k in factors))
    w = 1.0 / _spectrum(eig.eigvals, jnp.asarray(noise, dtype))
    cq = tuple(
        jnp.matmul(c, q, precision=_HI) for c, q in zip(cross_factors, eig.eigvecs, strict=True)
    )
    explained = kron_mv(tuple(jnp.abs(a) ** 2 for a in cq), w)
    if observed is not None:
        obs = _check_mask(observed, grid)
        missing = np.flatnonzero(~obs.reshape(-1))
        if missing.size:
            e = _missing_columns(grid, missing, dtype)
            be = _eig_apply(eig.eigvecs, w, e)  # B E
            b_mm = be.reshape(-1, missing.size)[missing]
            chol = jnp.linalg.cholesky(0.5 * (b_mm + b_mm.T))
            kbe = kron_mv(cross_factors, be).reshape(-1, missing.size)  # K_* B E
            half = jax.scipy.linalg.solve_triangular(chol, kbe.T, lower=True)
            correction = jnp.sum(jnp.abs(half) ** 2, axis=0).reshape(explained.shape)
            explained = explained - correction
    var = kron_outer(list(test_diag)) - explained
    return mean, jnp.clip(var, 0.0, None)


# --------------------------------------------------------------------------------------------
# generalized eigenproblem of a Kronecker pencil


def kron_gen_eigh(a_factors: Factors, b_factors: Sequence[Array]) -> KronGenEigh:
    r"""Simultaneously diagonalize :math:`\otimes_i A_i` and :math:`\otimes_i B_i`.

    Per factor, with :math:`B_i = L_i L_i^\top` (Cholesky, or :math:`L_i = B_i^{1/2}` when
    ``b_factors[i]`` is a 1-D vector meaning a diagonal :math:`B_i`), the symmetric problem
    :math:`L_i^{-1} A_i L_i^{-\top} = W_i \operatorname{diag}(\lambda_i) W_i^\top` gives
    :math:`V_i = L_i^{-\top} W_i` with :math:`V_i^\top A_i V_i = \operatorname{diag}\lambda_i`
    and :math:`V_i^\top B_i V_i = I`. The Kronecker products inherit both properties, so for
    scalars :math:`\alpha, \beta`

    .. math::

        (\alpha \otimes A_i + \beta \otimes B_i)^{-1} = V \operatorname{diag}
        \big(1/(\alpha\Lambda + \beta)\big) V^\top.

    Kronecker sparse Bayesian learning uses this with :math:`A_i = \Phi_i^\top\Phi_i`,
    :math:`B_i = \Gamma_i^{-1}`, :math:`\alpha = \sigma^{-2}`, :math:`\beta = 1` to get the
    posterior covariance diagonal :math:`\operatorname{diag}((\Gamma^{-1} + \Phi^\top\Phi /
    \sigma^2)^{-1})` via :func:`kron_pencil_inv_diag`, never forming it. Cost
    :math:`O(\sum_i n_i^3)`.

    Args:
        a_factors: symmetric :math:`A_i` (``n_i x n_i``).
        b_factors: symmetric positive definite :math:`B_i`, or 1-D positive diagonals.
    """
    a_factors = _as_tuple("a_factors", a_factors)
    check_factors("a_factors", a_factors, symmetric=True)
    if len(b_factors) != len(a_factors):
        raise ValueError(
            f"`b_factors` must have one factor per `a_factors` entry ({len(a_factors)}); "
            f"got {len(b_factors)}."
        )
    vals, vecs, logdets = [], [], []
    for i, (a, b) in enumerate(zip(a_factors, b_factors, strict=True)):
        n = a.shape[0]
        if np.ndim(b) == 1:
            if np.shape(b) != (n,):
                raise ValueError(
                    f"`b_factors[{i}]` must have shape ({n},) or ({n}, {n}); got {np.shape(b)}."
                )
            check_positive(f"b_factors[{i}]", b)
            s = jax.lax.rsqrt(jnp.asarray(b))
            c = s[:, None] * _sym(a) * s[None, :]
            lam, wv = jnp.linalg.eigh(c)
            vecs.append(s[:, None] * wv)
            logdets.append(jnp.sum(jnp.log(b)))
        else:
            if np.shape(b) != (n, n):
                raise ValueError(
                    f"`b_factors[{i}]` must have shape ({n},) or ({n}, {n}); got {np.shape(b)}."
                )
            check_factors(f"b_factors[{i}]", [b], symmetric=True)
            chol = jnp.linalg.cholesky(_sym(b))
            tri = jax.scipy.linalg.solve_triangular
            c = tri(chol, tri(chol, _sym(a), lower=True).T, lower=True)  # L^-1 A L^-T
            lam, wv = jnp.linalg.eigh(_sym(c))
            vecs.append(tri(chol.T, wv, lower=False))
            logdets.append(2.0 * jnp.sum(jnp.log(jnp.diagonal(chol))))
        vals.append(lam)
    return KronGenEigh(tuple(vals), tuple(vecs), tuple(logdets))


def _pencil_spectrum(geig: KronGenEigh, alpha, beta) -> Array:
    return alpha * kron_outer(list(geig.eigvals)) + beta


def kron_pencil_solve(geig: KronGenEigh, alpha, beta, y: Array) -> Array:
    r""":math:`(\alpha \otimes A_i + \beta \otimes B_i)^{-1} y` from :func:`kron_gen_eigh`."""
    w = 1.0 / _pencil_spectrum(geig, alpha, beta)
    t = kron_mv(tuple(v.T for v in geig.eigvecs), y)
    return kron_mv(geig.eigvecs, t * _bcast(w, t))


def kron_pencil_inv_diag(geig: KronGenEigh, alpha, beta) -> Array:
    r"""Diagonal of :math:`(\alpha \otimes A_i + \beta \otimes B_i)^{-1}` as a grid array.

    :math:`\operatorname{diag}(V D V^\top) = (\otimes_i V_i^{\circ 2})\, \operatorname{diag}(D)`:
    one Kronecker matvec with the squared eigenvector factors, :math:`O(N \sum n_i)`.
    """
    w = 1.0 / _pencil_spectrum(geig, alpha, beta)
    return kron_mv(tuple(v * v for v in geig.eigvecs), w)


def kron_pencil_logdet(geig: KronGenEigh, alpha, beta) -> Array:
    r"""Log-determinant of the pencil :math:`\alpha \otimes A_i + \beta \otimes B_i`.

    :math:`\log|\otimes B_i| + \sum_k \log(\alpha\Lambda_k + \beta)`.

    Uses :math:`\log|\otimes_i B_i| = \sum_i (N / n_i) \log|B_i|`.
    """
    sizes = [v.shape[0] for v in geig.eigvecs]
    n = int(np.prod(sizes))
    b_part = sum(ld * (n // s) for ld, s in zip(geig.b_logdets, sizes, strict=True))
    return b_part + jnp.sum(jnp.log(_pencil_spectrum(geig, alpha, beta)))
