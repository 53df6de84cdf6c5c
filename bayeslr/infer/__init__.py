"""Inference: pluggable variational objectives, one ``fit`` front door, ``Posterior``.

* :mod:`bayeslr.infer.objectives` — variational objectives, each a ``numpyro.infer.ELBO``
  subclass usable as ``SVI(..., loss=...)``: :class:`ELBO`, :class:`STL`, :class:`BetaELBO`
  (with :func:`linear_warmup`), :class:`IWAE` (reparameterized or DReG), :class:`RenyiELBO`,
  :class:`ReweightedWakeSleep` and user-defined :class:`Objective`; per-site reparameterized,
  score-function and enumeration estimators. :class:`ObjectiveSVI` (``numpyro.infer.SVI`` that
  seeds the objectives' state: the β-schedule step and the running baselines).
* :mod:`bayeslr.infer.fit` — ``fit(model, *args, method=...) -> Posterior`` with NumPyro NUTS,
  BlackJAX NUTS or SVI.
* :mod:`bayeslr.infer.posterior` — :class:`Posterior`: draws or a fitted guide, ``predict``,
  ``summary`` and ``to_arviz`` (an ArviZ ``DataTree``).
"""

from bayeslr.infer.fit import METHODS, EarlyStopping, fit
from bayeslr.infer.objectives import (
    ELBO,
    IWAE,
    STL,
    BetaELBO,
    LinearWarmup,
    Objective,
    ParticleTerms,
    RenyiELBO,
    ReweightedWakeSleep,
    VariationalObjective,
    linear_warmup,
    logmeanexp,
)
from bayeslr.infer.objectives import SVI as ObjectiveSVI
from bayeslr.infer.posterior import Posterior, inspect_model

__all__ = [
    "fit",
    "METHODS",
    "EarlyStopping",
    "Posterior",
    "inspect_model",
    "ELBO",
    "STL",
    "BetaELBO",
    "IWAE",
    "RenyiELBO",
    "Objective",
    "ReweightedWakeSleep",
    "VariationalObjective",
    "ParticleTerms",
    "ObjectiveSVI",
    "LinearWarmup",
    "linear_warmup",
    "logmeanexp",
]
