r"""Structured linear algebra in JAX: pure functions on arrays and pytrees, no NumPyro.

Use this layer when a covariance has structure that dense algebra throws away:

* :mod:`bayeslr.linalg.kron` — a product kernel on a Cartesian grid gives
  :math:`K = K_1 \otimes \cdots \otimes K_d`. Mode products and matvecs cost
  :math:`O(N \sum n_i)`; solve/logdet of :math:`K + \sigma^2 I` (or a Kronecker diagonal)
  :math:`O(\sum n_i^3 + N \sum n_i)` through per-factor eigendecompositions, with stable
  gradients; missing cells exactly (complement route) or by preconditioned CG; the
  Kronecker generalized eigenproblem for sparse Bayesian learning.
* :mod:`bayeslr.linalg.statespace` — a Matérn-type GP on sorted, irregular times is a
  linear-Gaussian state-space model: Kalman filter, RTS smoother and log marginal likelihood in
  :math:`O(n d^3)`, sequential (``lax.scan``) or parallel (``lax.associative_scan``) by a static
  ``parallel`` flag; per-time noise, missing observations and vector observations.
* :mod:`bayeslr.linalg.psd` — one jitter rule (:func:`default_jitter`, :math:`\sqrt{\epsilon}` of
  the dtype) and one guarded Cholesky (:func:`psd_cholesky`) for every positive definite matrix.
* :mod:`bayeslr.linalg.nnls` — jittable non-negative least squares (Lawson–Hanson).
* :mod:`bayeslr.linalg.toeplitz` — Toeplitz matrices from their lags (stationary Grams on
  equally spaced points); :mod:`bayeslr.linalg.cg` — CG that probes whether a preconditioner
  helps before committing to it.
* :mod:`bayeslr.linalg.operators` — the operator protocol (``matvec``, ``solve``, ``logdet``,
  ``diag``, ``sqrt_matvec``/``sample``, ``to_dense``) with dense, Kronecker,
  Kronecker-plus-diagonal and state-space (Gauss–Markov GP) implementations. Models hold an
  operator and never branch on structure.

Grid arrays are shaped ``(n_1, ..., n_d, *batch)``; flattening is row-major, matching
``jnp.kron``. Nothing here enables float64: pass float64 arrays (after
``jax.config.update("jax_enable_x64", True)``) where float32 loses the answer.
"""

from bayeslr.linalg import statespace
from bayeslr.linalg.kron import (
    KronEigh,
    KronGenEigh,
    kron_adjoint_mv,
    kron_cg_solve,
    kron_dense,
    kron_diag,
    kron_eigh,
    kron_gen_eigh,
    kron_inv_quad_logdet,
    kron_logdet,
    kron_masked_solve_logdet,
    kron_mv,
    kron_outer,
    kron_pencil_inv_diag,
    kron_pencil_logdet,
    kron_pencil_solve,
    kron_predict,
    kron_sample,
    kron_solve,
    kron_solve_logdet,
    kron_sqrt_factors,
    mode_product,
)
from bayeslr.linalg.nnls import nnls
from bayeslr.linalg.operators import (
    DenseOperator,
    KroneckerOperator,
    KroneckerPlusDiagOperator,
    LinearOperator,
    StateSpaceOperator,
    StaticMask,
)
from bayeslr.linalg.psd import default_jitter, psd_cholesky, symmetrize
from bayeslr.linalg.statespace import (
    FilterResult,
    PosteriorMarginals,
    SmootherResult,
    StateSpaceModel,
    kalman_filter,
    rts_smoother,
)

__all__ = [
    "KronEigh",
    "KronGenEigh",
    "mode_product",
    "kron_mv",
    "kron_adjoint_mv",
    "kron_dense",
    "kron_diag",
    "kron_outer",
    "kron_eigh",
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
    "LinearOperator",
    "DenseOperator",
    "KroneckerOperator",
    "KroneckerPlusDiagOperator",
    "StateSpaceOperator",
    "StaticMask",
    "statespace",
    "StateSpaceModel",
    "FilterResult",
    "SmootherResult",
    "PosteriorMarginals",
    "kalman_filter",
    "rts_smoother",
    "default_jitter",
    "psd_cholesky",
    "symmetrize",
    "nnls",
]
