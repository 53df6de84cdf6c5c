"""Tiny-matrix products (broadcast-sum route) against NumPy, every shape case and dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeslr.linalg._small import matmul, matvec

SHAPES = [
    ((5,), (5,)),  # vector . vector
    ((6, 5), (5,)),  # matrix @ vector
    ((5,), (5, 7)),  # vector @ matrix
    ((4, 4), (4, 4)),
    ((3, 5, 6), (3, 6, 4)),  # batched
    ((2, 2), (2, 2)),  # inline-dot size: jnp.matmul route
    ((16, 16), (16, 3)),  # too large: jnp.matmul route
    ((12, 12), (12,)),
]


@pytest.mark.parametrize(("sa", "sb"), SHAPES, ids=[f"{a}@{b}" for a, b in SHAPES])
def test_matmul_matches_numpy(sa, sb, rng, dtype, tol):
    a = rng.standard_normal(sa).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)
    got = jax.jit(matmul)(jnp.asarray(a), jnp.asarray(b))
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert got.dtype == dtype
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=tol["rtol"], atol=tol["atol"])


@pytest.mark.parametrize("d", [2, 5, 12, 20])
def test_matvec_batched_and_gradient(d, rng, x64):
    a = jnp.asarray(rng.standard_normal((7, d, d)))
    x = jnp.asarray(rng.standard_normal((7, d)))
    np.testing.assert_allclose(matvec(a, x), np.einsum("nij,nj->ni", a, x), rtol=1e-12)
    g = jax.grad(lambda a: jnp.sum(matvec(a, x) ** 2))(a)
    ref = 2 * np.einsum("ni,nj->nij", np.einsum("nij,nj->ni", a, x), x)
    np.testing.assert_allclose(g, ref, rtol=1e-12)
