r"""Gaussian-process building blocks: stationary kernels and their structure.

A stationary kernel is a function of the lag :math:`\tau = x - x'` only. Every 1-D kernel here
gives the same four views of one covariance, so the model that uses it can pick the structure
that makes inference fast:

* **values and derivatives:** Gram matrices ``kernel(x1, x2)`` and derivative Gram matrices
  ``d_x``, ``d_xp``, ``d_x_xp``, ``d_xx``, ``d_xx_xpxp`` and ``derivative(x1, x2, i, j)``
  :math:`= \partial_x^i\partial_{x'}^j k`. These are the cross-covariances a linear differential
  operator needs (GP PDE solvers such as GP-HM). They are computed from closed-form
  :math:`k^{(n)}(\tau)` (``dk``), not by autodiff;
* **spectrum:** ``spectral_density(omega)``, with
  :math:`S(\omega) = \int k(\tau) e^{-i\omega\tau} d\tau` in angular frequency, for spectral
  initialisation, random features and Whittle-type likelihoods;
* **state space:** ``sde()`` gives the exact linear SDE :math:`(F, L, Q_c, H, P_\infty)` where one
  exists (``RBF.sde(order=N)``: an :math:`N`-state approximation). With it,
  ``bayeslr.linalg.statespace`` runs a Kalman filter in :math:`O(N)` instead of the
  :math:`O(N^3)` dense solve;
* **grids:** :class:`ProductKernel` multiplies 1-D kernels across the axes of a Cartesian grid
  and returns the per-axis Gram factors :math:`K_1, \dots, K_d`. Its covariance is the
  Kronecker product :math:`K_1\otimes\dots\otimes K_d`, and ``bayeslr.linalg.kron`` solves with
  it in :math:`O(\sum_j M_j^3 + M\sum_j M_j)`.

Which kernel to use
-------------------
* :class:`Matern52`: the default smooth kernel. Sample paths are twice differentiable, the
  derivative Gram matrices go up to :math:`\partial_x^2\partial_{x'}^2`, and it has an exact
  3-state SDE.
* :class:`Matern32`: for rougher signals. Paths are once differentiable, derivatives go up to
  second order in :math:`\tau` only, and the SDE has 2 states.
* :class:`Matern12`: the Ornstein–Uhlenbeck / exponential kernel. Paths are continuous but not
  differentiable, and the SDE has 1 state. Its derivatives exist only off the diagonal.
* :class:`RBF`: very smooth signals. It has every derivative but no exact SDE: use it on grids or
  with dense solves, or with the approximate SDE ``sde(order=6)`` (6 states, covariance error
  0.3 % of the variance).
* :class:`SpectralMixture`: Gaussian-mixture spectrum (Wilson & Adams 2013). Use it for
  periodic, quasi-periodic or high-frequency structure with unknown frequencies. It has no
  exact SDE.
* :class:`StudentTMixture`: Student-t (Matérn) mixture spectrum, made of Matérn × cosine
  components. It is GP-HM's StM kernel, for high-frequency and multi-scale solutions. It has
  heavier spectral tails than the spectral mixture and an exact quasi-periodic SDE.
* :class:`SumKernel` (``k1 + k2``): independent additive components, e.g. a trend plus a rough
  part. Its SDE stacks the components' SDEs block-diagonally.
* :class:`ProductKernel`: one 1-D kernel per grid axis, for Kronecker-structured models
  (GP-HM on collocation grids, spatio-temporal grids).

All kernels are immutable pytrees with hyperparameters in natural units. They can be passed
through and built inside ``jit``, ``grad`` and ``vmap``. See :mod:`bayeslr.gp.kernels` for the
conventions.
"""

from bayeslr.gp.kernels import (
    RBF,
    SDE,
    Matern12,
    Matern32,
    Matern52,
    ProductKernel,
    SpectralMixture,
    StationaryKernel,
    StudentTMixture,
    SumKernel,
)

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
