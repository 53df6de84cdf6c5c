"""Shared fixtures: float32/float64 parametrization with dtype-aware tolerances.

float64 is enabled only inside the ``dtype`` fixture's context (``jax.enable_x64``), never
globally, so the library is exercised exactly as users run it in both precisions.
"""

import os

# The suite compiles thousands of small XLA programs and runs each a few times, so compilation
# is most of its time: LLVM's lighter optimisation roughly halves it (a few tests' programs run
# slower; the results agree to rounding). Set here, before JAX starts its backend, so the
# worker and example subprocesses inherit it; a user's own XLA_FLAGS keep their values.
_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_flags] + [f for f in _FAST_COMPILE if f.split("=")[0] not in _flags]
).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bayeslr._memory import release_compiled_code  # noqa: E402

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


@pytest.fixture(autouse=True)
def _release_compiled_code():
    """A pytest worker runs hundreds of tests in one process: drop JAX's compiled programs
    whenever they crowd the process's memory mappings (:mod:`bayeslr._memory`), or a worker
    reaches the kernel's limit midway through the suite and every later compilation fails."""
    yield
    release_compiled_code()


# Test files whose tests run longest (whole fits, examples in subprocesses, batch runs): run
# first, so that the two workers do not end with one of them alone on a long test.
HEAVY_FIRST = ("tests/test_examples.py", "tests/test_batch.py", "tests/models/")


def pytest_collection_modifyitems(config, items):
    def weight(item):
        path = item.nodeid.split("::")[0]
        return next((i for i, p in enumerate(HEAVY_FIRST) if path.startswith(p)), len(HEAVY_FIRST))

    items.sort(key=weight)  # stable: each file's tests keep their order


# One persistent compilation cache for the whole session, shared by the workers and the example
# subprocesses: many fits build their jitted functions afresh (the in-memory cache is keyed by
# the function object), so identical programs compile again and again across tests; keyed by
# the program itself, the cache turns those into loads (the GP-HM and KroSBL tests: 210 s ->
# 139 s on 2 workers). A fresh directory each session, removed at the end: nothing carries over
# between runs. A user's own JAX_COMPILATION_CACHE_DIR is used as it is and kept.
def pytest_configure(config):
    import tempfile

    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controlling process; the workers
        d = tempfile.mkdtemp(prefix="bayeslr-test-jax-cache-")  # and examples inherit it
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._bayeslr_jax_cache = d
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))  # fmt: skip


def pytest_unconfigure(config):
    import shutil

    d = getattr(config, "_bayeslr_jax_cache", None)
    if d is not None:
        shutil.rmtree(d, ignore_errors=True)
