"""NumPyro distributions that carry structure into any NumPyro model.

* :class:`KroneckerNormal` — a Gaussian on a grid with covariance
  :math:`K_1 \\otimes \\cdots \\otimes K_d + D` (optionally observed on a subset of cells);
  ``log_prob`` in :math:`O(\\sum n_i^3 + N \\sum n_i)` instead of :math:`O(N^3)`. Use it as the
  likelihood of grid data (images, spatio-temporal fields, PDE collocation grids) or as a
  structured prior. ``predict`` gives the posterior of the noise-free field.
* :class:`GaussMarkovGP` — a Matérn-type GP over sorted, irregular times whose ``log_prob`` runs
  the Kalman filter in :math:`O(n)`; ``sample`` simulates the SDE; ``predict`` gives the
  posterior of :math:`f` at any times. Use it for long time series and as the per-mode prior of
  continuous-indexed tensor models.
* :class:`CircularComplexNormal` — :math:`\\mathcal{CN}(\\mu, \\sigma^2)` per element, the
  likelihood of complex measurements with circular noise (channel estimation).
"""

from bayeslr.distributions.complex_normal import CircularComplexNormal
from bayeslr.distributions.gauss_markov import GaussMarkovGP
from bayeslr.distributions.kronecker import KroneckerNormal

__all__ = ["KroneckerNormal", "GaussMarkovGP", "CircularComplexNormal"]
