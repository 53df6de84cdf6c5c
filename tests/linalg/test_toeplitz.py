"""toeplitz_from_lags against scipy.linalg.toeplitz, in float32 and float64, jitted, with
gradients; cg_probe against a direct solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from bayeslr.linalg.cg import cg_probe
from bayeslr.linalg.toeplitz import toeplitz_from_lags


def _dense(vals):
    m = (vals.shape[0] + 1) // 2
    # column k, row i holds lag i - k: the first column is lags 0..m-1, the first row 0..-(m-1)
    return scipy.linalg.toeplitz(vals[m - 1:], vals[m - 1::-1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("m", [1, 2, 7])
def test_toeplitz_matches_scipy_jitted_with_gradients(x64, rng, dtype, m):
    vals = rng.standard_normal(2 * m - 1)
    got = jax.jit(toeplitz_from_lags)(jnp.asarray(vals, dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, _dense(vals), rtol=1e-6)
    w = rng.standard_normal((m, m))
    g = jax.grad(lambda v: jnp.sum(toeplitz_from_lags(v) * w))(jnp.asarray(vals, dtype))
    # d/d lag l of sum_ik T_ik w_ik = sum of w over the diagonal i - k = l
    want = [np.trace(w, offset=-(l)) for l in range(-(m - 1), m)]
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def test_toeplitz_refuses_even_lengths():
    with pytest.raises(ValueError, match="odd length"):
        toeplitz_from_lags(jnp.zeros(4))


@pytest.mark.parametrize("good_precond", [True, False])
def test_cg_probe_solves_with_either_preconditioner(x64, rng, good_precond):
    n = 30
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = jnp.asarray(q @ np.diag(np.logspace(0, 3, n)) @ q.T)
    b = jnp.asarray(rng.standard_normal(n))
    Ainv = jnp.linalg.inv(A)
    d = jnp.asarray(rng.uniform(0.1, 10.0, n))  # an SPD but uninformed diagonal preconditioner
    precond = (lambda x: Ainv @ x) if good_precond else (lambda x: d * x)
    x = jax.jit(lambda bb: cg_probe(lambda v: A @ v, bb, precond, 200))(b)
    np.testing.assert_allclose(A @ x, b, atol=1e-6)
