"""bayeslr: structured Bayesian models in NumPyro/JAX.

Structure (Kronecker grids, Markov time series, sparse supports, low-rank cores) is kept all the
way through inference. Subpackages, lowest layer first:

* :mod:`bayeslr.linalg` — structured linear algebra (Kronecker products, operators); no NumPyro.
* :mod:`bayeslr.gp` — stationary kernels with derivatives, spectra, SDE forms; product kernels.
* :mod:`bayeslr.distributions` — NumPyro distributions that keep the structure
  (:class:`~bayeslr.distributions.KroneckerNormal`, :class:`~bayeslr.distributions.GaussMarkovGP`).
* :mod:`bayeslr.infer` — ``fit(model, *args, method=...)`` (NumPyro NUTS, BlackJAX NUTS, SVI)
  returning a :class:`~bayeslr.infer.Posterior` with ``predict`` and ``to_arviz``; pluggable
  variational objectives.
* :mod:`bayeslr.models` — the model library (so far: :class:`~bayeslr.models.KroneckerSBL`).
* :mod:`bayeslr.metrics` — NMSE, support recovery rate.
* :mod:`bayeslr.datasets` — real data that ship offline, and synthetic generators.

Importing bayeslr computes and compiles nothing.
"""

from bayeslr import (
    _compat,  # noqa: F401  (first: see bayeslr/_compat.py)
    datasets,
    distributions,
    gp,
    infer,
    linalg,
    metrics,
    models,
)
from bayeslr.distributions import GaussMarkovGP, KroneckerNormal
from bayeslr.gp import (
    RBF,
    Matern12,
    Matern32,
    Matern52,
    ProductKernel,
    SpectralMixture,
    StudentTMixture,
    SumKernel,
)
from bayeslr.infer import Posterior, fit

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "linalg",
    "gp",
    "distributions",
    "datasets",
    "infer",
    "models",
    "metrics",
    "fit",
    "Posterior",
    "KroneckerNormal",
    "GaussMarkovGP",
    "Matern12",
    "Matern32",
    "Matern52",
    "RBF",
    "SpectralMixture",
    "StudentTMixture",
    "SumKernel",
    "ProductKernel",
]
