"""The operator protocol: every implementation against its dense twin, under jit.

A new operator adds a constructor to ``CASES``; the shared tests below then check it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeslr.gp import RBF, Matern12, Matern32, Matern52, StudentTMixture
from bayeslr.linalg import (
    DenseOperator,
    KroneckerOperator,
    KroneckerPlusDiagOperator,
    LinearOperator,
    StateSpaceOperator,
)
from bayeslr.linalg import statespace as ss
from bayeslr.linalg.kron import kron_dense
from tests.conftest import spd

SIZES = (4, 3, 2)


def _factors(rng, dtype):
    return tuple(jnp.asarray(spd(rng, n, dtype)) for n in SIZES)


def _observed(rng):
    return np.random.default_rng(7).uniform(size=SIZES) > 0.3


def _times(rng, n, dtype):
    """Irregular, strictly increasing times (gaps 0.05 to 0.6)."""
    return jnp.asarray(np.cumsum(rng.uniform(0.05, 0.6, n)), dtype)


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
    "statespace": lambda rng, dt: StateSpaceOperator(Matern32(1.0, 0.7), _times(rng, 12, dt), 0.3),
    "statespace hetero": lambda rng, dt: StateSpaceOperator(
        Matern52(0.8, 1.2), _times(rng, 12, dt), jnp.asarray(rng.uniform(0.2, 1, 12), dt)
    ),
    "statespace quasi-periodic": lambda rng, dt: StateSpaceOperator(
        StudentTMixture([1.0], [0.4], [1.0], nu=1.5), _times(rng, 12, dt), 0.3
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


# ---------------------------------------------------------------------------------------------
# StateSpaceOperator
# ---------------------------------------------------------------------------------------------


def _clustered_times(rng, n):
    """Sorted times mixing tight clusters (gaps ~1e-3) and long jumps (gaps ~3)."""
    gaps = np.where(rng.uniform(size=n) < 0.3, rng.uniform(1e-3, 3e-3, n), rng.uniform(0.05, 3, n))
    return np.cumsum(gaps)


@pytest.mark.parametrize(
    "kernel",
    [
        Matern12(1.3, 0.4),
        Matern32(0.7, 1.1),
        Matern52(1.0, 2.0),
        StudentTMixture([1.0, 0.5], [0.3, 1.2], [1.0, 2.0], nu=2.5),
    ],
    ids=lambda k: type(k).__name__,
)
def test_statespace_matvec_irregular_times_multi_rhs(kernel, rng, dtype, tol):
    t = _clustered_times(rng, 150)
    r = rng.uniform(0.1, 0.5, 150)
    op = StateSpaceOperator(kernel, jnp.asarray(t, dtype), jnp.asarray(r, dtype))
    assert op.dtype == jnp.dtype(dtype) and op.shape == (150, 150)
    with jax.enable_x64(True):  # float64 twin from the kernel's closed form at the same times
        t64 = np.asarray(op.times, np.float64)
        k64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), kernel)
        dense = np.asarray(k64(t64, t64)) + np.diag(np.asarray(op.noise, np.float64))
    v = rng.standard_normal((150, 4))
    ref = dense @ v
    mv = jax.jit(lambda op, v: op.matvec(v))(op, jnp.asarray(v, dtype))
    assert mv.shape == (150, 4)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(mv, ref, rtol=tol["rtol"], atol=tol["atol"] * scale)
    # the lower (forward) and strictly upper (backward) recursions are checked separately
    e_first, e_last = np.eye(150)[:, 0], np.eye(150)[:, -1]
    np.testing.assert_allclose(
        op.matvec(jnp.asarray(e_first, dtype)), dense[:, 0], rtol=tol["rtol"], atol=tol["atol"]
    )
    np.testing.assert_allclose(
        op.matvec(jnp.asarray(e_last, dtype)), dense[:, -1], rtol=tol["rtol"], atol=tol["atol"]
    )


def test_statespace_large_irregular_solve_logdet_cholesky(rng, x64):
    t = _clustered_times(rng, 200)
    r = rng.uniform(0.05, 0.5, 200)
    kernel = Matern52(1.5, 0.8)
    op = StateSpaceOperator(kernel, t, r)
    dense = np.asarray(kernel(t, t)) + np.diag(r)
    v = rng.standard_normal((200, 3))
    np.testing.assert_allclose(op.solve(v), np.linalg.solve(dense, v), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(op.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)
    # the innovations root is lower triangular with positive diagonal: the Cholesky factor
    root = np.asarray(op.sqrt_matvec(jnp.eye(200)))
    np.testing.assert_allclose(root, np.linalg.cholesky(dense), rtol=1e-8, atol=1e-10)
    # and inv_quad_logdet is the Kalman log marginal likelihood
    quad, logdet = op.inv_quad_logdet(v[:, 0])
    lml = ss.log_marginal_likelihood(kernel, t, v[:, 0], r)
    np.testing.assert_allclose(-0.5 * (quad + logdet + 200 * np.log(2 * np.pi)), lml, rtol=1e-10)


def test_statespace_grad_inv_quad_logdet_matches_dense(rng, x64):
    t = jnp.asarray(_clustered_times(rng, 60))
    v = jnp.asarray(rng.standard_normal((60, 2)))
    kernel = Matern32(jnp.asarray(1.2), jnp.asarray(0.6))
    noise = jnp.asarray(rng.uniform(0.1, 0.4, 60))

    def loss(make):
        def f(kernel, times, noise):
            quad, logdet = make(kernel, times, noise).inv_quad_logdet(v)
            return jnp.sum(quad) + logdet

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    def dense(kernel, times, noise):
        return DenseOperator(kernel(times, times) + jnp.diag(noise))

    val, (gk, gt, gn) = loss(StateSpaceOperator)(kernel, t, noise)
    val_d, (gk_d, gt_d, gn_d) = loss(dense)(kernel, t, noise)
    np.testing.assert_allclose(val, val_d, rtol=1e-10)
    np.testing.assert_allclose(gk.variance, gk_d.variance, rtol=1e-8)
    np.testing.assert_allclose(gk.lengthscale, gk_d.lengthscale, rtol=1e-8)
    np.testing.assert_allclose(gn, gn_d, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gt, gt_d, rtol=1e-7, atol=1e-8)
    assert np.abs(np.asarray(gk.lengthscale)) > 1e-3  # the comparison is not vacuous


def test_statespace_bad_input(rng):
    t = jnp.asarray(np.arange(12.0))
    k = Matern32(1.0, 1.0)
    with pytest.raises(ValueError, match=r"`noise` must be strictly positive.*minimum -1"):
        StateSpaceOperator(k, t, -1.0)
    with pytest.raises(ValueError, match=r"`noise` must be strictly positive.*minimum 0"):
        StateSpaceOperator(k, t, jnp.arange(12.0))  # one zero variance
    shape_msg = r"`noise` must be a scalar or have shape \(12,\).*got shape "
    with pytest.raises(ValueError, match=shape_msg + r"\(13,\)"):
        StateSpaceOperator(k, t, jnp.ones(13))
    with pytest.raises(ValueError, match=shape_msg + r"\(12, 1\)"):
        StateSpaceOperator(k, t, jnp.ones((12, 1)))
    with pytest.raises(ValueError, match=r"`noise` must be finite"):
        StateSpaceOperator(k, t, jnp.full(12, jnp.nan))
    with pytest.raises(ValueError, match=r"`times` must be strictly increasing"):
        StateSpaceOperator(k, t[::-1], 0.1)
    with pytest.raises(ValueError, match=r"`times` must be 1-D"):
        StateSpaceOperator(k, t[:, None], 0.1)
    with pytest.raises(ValueError, match=r"no exact finite-dimensional state-space"):
        StateSpaceOperator(RBF(1.0, 1.0), t, 0.1)
    op = StateSpaceOperator(k, t, 0.1)
    with pytest.raises(ValueError, match=r"`v` must have shape \(12,\)"):
        op.solve(jnp.ones(11))
    with pytest.raises(ValueError, match=r"`z` must have shape \(12,\)"):
        op.sqrt_matvec(jnp.ones((12, 2, 1)))
