"""bayeslr: structured Bayesian models in NumPyro/JAX (work in progress)."""

__version__ = "0.1.0.dev0"
