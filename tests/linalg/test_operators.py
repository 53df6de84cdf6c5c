"""The operator protocol: every implementation against its dense twin, under jit.

A new operator adds a constructor to ``CASES``; the shared tests below then check it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeslr.linalg import (
    DenseOperator,
    KroneckerOperator,
    KroneckerPlusDiagOperator,
    LinearOperator,
)
from bayeslr.linalg.kron import kron_dense
from tests.conftest import spd

SIZES = (4, 3, 2)


def _factors(rng, dtype):
    return tuple(jnp.asarray(spd(rng, n, dtype)) for n in SIZES)


def _observed(rng):
    return np.random.default_rng(7).uniform(size=SIZES) > 0.3


CASES = {
    "dense": lambda rng, dt: DenseOperator(jnp.asarray(spd(rng, 12, dt))),
    "kron": lambda rng, dt: KroneckerOperator(_factors(rng, dt)),
    "kron+scalar": lambda rng, dt: KroneckerPlusDiagOperator(_factors(rng, dt), 0.3),
    "kron+axis": lambda rng, dt: KroneckerPlusDiagOperator(
        _factors(rng, dt), tuple(jnp.asarray(rng.uniform(0.2, 1, n), dt) for n in SIZES)
    ),
    "kron+scalar masked": lambda rng, dt: KroneckerPlusDiagOperator(
        _factors(rng, dt), 0.3, _observed(rng)
    ),
    "kron+axis masked": lambda rng, dt: KroneckerPlusDiagOperator(
        _factors(rng, dt),
        tuple(jnp.asarray(rng.uniform(0.2, 1, n), dt) for n in SIZES),
        _observed(rng),
    ),
}


@pytest.fixture(params=list(CASES))
def case(request, rng, dtype):
    op = CASES[request.param](rng, dtype)
    return request.param, op, np.asarray(op.to_dense(), np.float64)


def test_matvec_solve_logdet_diag(case, rng, dtype, tol):
    _, op, dense = case
    n = op.shape[0]
    assert dense.shape == (n, n) and isinstance(op, LinearOperator)
    v = jnp.asarray(rng.standard_normal((n, 2)), dtype)
    f = jax.jit(lambda op, v: (op.matvec(v), op.solve(v), op.logdet(), op.diag()))
    mv, sv, ld, dg = f(op, v)
    v64 = np.asarray(v, np.float64)
    np.testing.assert_allclose(mv, dense @ v64, **tol)
    np.testing.assert_allclose(sv, np.linalg.solve(dense, v64), **tol)
    np.testing.assert_allclose(ld, np.linalg.slogdet(dense)[1], **tol)
    np.testing.assert_allclose(dg, np.diag(dense), **tol)
    np.testing.assert_allclose(op @ v[:, 0], dense @ v64[:, 0], **tol)
    quad, ld2 = op.inv_quad_logdet(v)
    np.testing.assert_allclose(quad, np.sum(v64 * np.linalg.solve(dense, v64), 0), **tol)
    np.testing.assert_allclose(ld2, ld, **tol)


def test_sqrt_and_sample_moments(case, tol):
    name, op, dense = case
    n = op.shape[0]
    if "masked" not in name:
        root = np.asarray(op.sqrt_matvec(jnp.eye(n)))
        np.testing.assert_allclose(root @ root.T, dense, atol=10 * tol["atol"])
    s = np.asarray(op.sample(jax.random.PRNGKey(3), (30_000,)))
    assert s.shape == (30_000, n)
    se = np.sqrt((dense**2 + np.outer(np.diag(dense), np.diag(dense))) / 30_000)
    assert np.all(np.abs(np.cov(s.T) - dense) < 5 * se)
    assert np.all(np.abs(s.mean(0)) < 5 * np.sqrt(np.diag(dense) / 30_000))


def test_pytree_roundtrip_and_no_retrace(case):
    _, op, _ = case
    leaves, treedef = jax.tree_util.tree_flatten(op)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    traces = []

    @jax.jit
    def f(op):
        traces.append(1)
        return op.logdet()

    f(op)
    op2 = jax.tree_util.tree_unflatten(treedef, [leaf * 1.5 for leaf in leaves])
    f(op2)
    assert len(traces) == 1


def test_rectangular_complex_kronecker(rng):
    fs = (
        jnp.asarray(rng.standard_normal((2, 4)) + 1j * rng.standard_normal((2, 4))),
        jnp.asarray(rng.standard_normal((5, 3))),
    )
    op = KroneckerOperator(fs)
    assert op.shape == (10, 12)
    dense = np.kron(np.asarray(fs[0]), np.asarray(fs[1]))
    v, w = rng.standard_normal(12), rng.standard_normal(10)
    np.testing.assert_allclose(op.matvec(jnp.asarray(v)), dense @ v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(op.rmatvec(jnp.asarray(w)), dense.conj().T @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(op.to_dense(), dense, rtol=1e-6)
    with pytest.raises(ValueError, match="square factors"):
        op.logdet()


def test_general_diagonal_solve_by_cg_and_logdet_refused(rng, x64):
    fs = _factors(rng, "float64")
    d = jnp.asarray(rng.uniform(0.1, 0.5, SIZES))
    op = KroneckerPlusDiagOperator(fs, d)
    dense = np.asarray(kron_dense(fs)) + np.diag(np.asarray(d).reshape(-1))
    v = rng.standard_normal(24)
    np.testing.assert_allclose(op.solve(jnp.asarray(v)), np.linalg.solve(dense, v), rtol=1e-7)
    np.testing.assert_allclose(op.to_dense(), dense)
    with pytest.raises(ValueError, match="general diagonal has no exact fast log-determinant"):
        op.logdet()


def test_operator_bad_input(rng):
    fs = _factors(rng, "float32")
    with pytest.raises(ValueError, match=r"`v` must have shape \(24,\)"):
        KroneckerPlusDiagOperator(fs, 0.1).solve(jnp.ones(23))
    with pytest.raises(ValueError, match=r"noise.*non-negative"):
        KroneckerPlusDiagOperator(fs, -1.0)
    with pytest.raises(ValueError, match=r"`noise`.*grid = \(4, 3, 2\)"):
        KroneckerPlusDiagOperator(fs, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"matrix.*symmetric"):
        DenseOperator(jnp.asarray([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="observed"):
        KroneckerPlusDiagOperator(fs, 0.1, np.ones((4, 3), bool))
