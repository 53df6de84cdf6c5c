"""Shared fixtures: float32/float64 parametrization with dtype-aware tolerances.

float64 is enabled only inside the ``dtype`` fixture's context (``jax.enable_x64``), never
globally, so the library is exercised exactly as users run it in both precisions.
"""

import jax
import numpy as np
import pytest

TOL = {"float32": dict(rtol=2e-3, atol=2e-4), "float64": dict(rtol=1e-8, atol=1e-10)}


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    with jax.enable_x64(request.param == "float64"):
        yield request.param


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def tol(dtype):
    return TOL[dtype]


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


def spd(rng, n, dtype="float64", cond=10.0):
    """A random symmetric positive definite matrix with eigenvalues in [1/cond, 1]."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.geomspace(1.0 / cond, 1.0, n)
    return ((q * lam) @ q.T).astype(dtype)


def rbf(x, lengthscale):
    import jax.numpy as jnp

    return jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / lengthscale**2)


def compile_records(fn, *args, **kwargs):
    """Call ``fn`` with JAX's compile logging on; return ``(result, messages)``, the log lines
    of every XLA compilation the call triggered (empty when all of it was cached)."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            out = fn(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    return out, [r.getMessage() for r in records if "compil" in r.getMessage().lower()]
