"""NumPyro distributions that carry structure into any NumPyro model.

* :class:`KroneckerNormal` — a Gaussian on a grid with covariance
  :math:`K_1 \\otimes \\cdots \\otimes K_d + D` (optionally observed on a subset of cells);
  ``log_prob`` in :math:`O(\\sum n_i^3 + N \\sum n_i)` instead of :math:`O(N^3)`. Use it as the
  likelihood of grid data (images, spatio-temporal fields, PDE collocation grids) or as a
  structured prior. ``predict`` gives the posterior of the noise-free field.
"""

from bayeslr.distributions.kronecker import KroneckerNormal

__all__ = ["KroneckerNormal"]
