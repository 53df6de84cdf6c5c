"""Kronecker routines against their dense twins (jnp.kron, dense Cholesky), both dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from bayeslr.linalg import kron as K
from tests.conftest import TOL, rbf, spd

# ------------------------------------------------------------------ products (hypothesis)


@st.composite
def rect_factors(draw):
    d = draw(st.integers(2, 4))
    shapes = [(draw(st.integers(1, 7)), draw(st.integers(1, 7))) for _ in range(d)]
    complex_ = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return shapes, complex_, seed


# each example's new shapes compile afresh: 15 draws still span 2-4 factors of sizes 1-7
@settings(max_examples=15, deadline=None)
@given(rect_factors())
def test_kron_mv_and_adjoint_match_dense(case):
    shapes, complex_, seed = case
    rng = np.random.default_rng(seed)

    def draw(shape):
        a = rng.standard_normal(shape)
        return a + 1j * rng.standard_normal(shape) if complex_ else a

    factors = [jnp.asarray(draw(s)) for s in shapes]
    dense = np.asarray(K.kron_dense(factors))  # reference in NumPy: no TF32 on GPUs
    x = jnp.asarray(draw(tuple(n for _, n in shapes) + (2,)))
    got = K.kron_mv(factors, x).reshape(-1, 2)
    np.testing.assert_allclose(got, dense @ np.asarray(x).reshape(-1, 2), rtol=1e-4, atol=1e-4)
    z = jnp.asarray(draw(tuple(m for m, _ in shapes)))
    got = K.kron_adjoint_mv(factors, z).reshape(-1)
    np.testing.assert_allclose(
        got, dense.conj().T @ np.asarray(z).reshape(-1), rtol=1e-4, atol=1e-4
    )


@settings(max_examples=12, deadline=None)  # as above: 12 draws of 2-4 sizes in 1-7
@given(
    sizes=st.lists(st.integers(1, 7), min_size=2, max_size=4),
    noise=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_solve_logdet_and_gen_eigh_hypothesis_shapes(sizes, noise, seed):
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        fs = [jnp.asarray(spd(rng, n)) for n in sizes]
        y = jnp.asarray(rng.standard_normal(sizes))
        a = np.asarray(K.kron_dense(fs)) + noise * np.eye(int(np.prod(sizes)))
        x, logdet = K.kron_solve_logdet(fs, y, noise)
        np.testing.assert_allclose(
            x.reshape(-1), np.linalg.solve(a, np.asarray(y).reshape(-1)), rtol=1e-8, atol=1e-10
        )
        np.testing.assert_allclose(logdet, np.linalg.slogdet(a)[1], rtol=1e-9, atol=1e-9)
        bs = [jnp.asarray(rng.uniform(0.5, 2.0, n)) for n in sizes]
        geig = K.kron_gen_eigh(fs, bs)
        pencil = np.asarray(K.kron_dense(fs)) + np.diag(np.asarray(K.kron_outer(bs)).reshape(-1))
        np.testing.assert_allclose(
            K.kron_pencil_inv_diag(geig, 1.0, 1.0).reshape(-1),
            np.diag(np.linalg.inv(pencil)),
            rtol=1e-8,
            atol=1e-10,
        )


def test_mode_product_matches_unfolding(rng):
    x = jnp.asarray(rng.standard_normal((3, 4, 5)))
    a = jnp.asarray(rng.standard_normal((6, 4)))
    got = K.mode_product(x, a, 1)
    want = np.einsum("mj,ijk->imk", a, x)
    assert got.shape == (3, 6, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_kron_diag_and_outer(rng):
    fs = [jnp.asarray(spd(rng, n, "float32")) for n in (3, 4)]
    np.testing.assert_allclose(K.kron_diag(fs).reshape(-1), jnp.diag(K.kron_dense(fs)), 1e-6)


# ------------------------------------------------------------------ solve / logdet


def _problem(rng, sizes, dtype):
    fs = [jnp.asarray(spd(rng, n, dtype)) for n in sizes]
    y = jnp.asarray(rng.standard_normal((*sizes, 2)).astype(dtype))
    return fs, y


def _dense_noise(noise, sizes):
    if isinstance(noise, tuple):
        return jnp.diag(K.kron_outer(list(noise)).reshape(-1))
    return noise * jnp.eye(int(np.prod(sizes)))


@pytest.mark.parametrize("sizes", [(4, 3), (3, 2, 4), (2, 3, 2, 2)])
@pytest.mark.parametrize("noise_kind", ["scalar", "kron"])
def test_solve_logdet_match_dense(rng, dtype, tol, sizes, noise_kind):
    fs, y = _problem(rng, sizes, dtype)
    if noise_kind == "scalar":
        noise = jnp.asarray(0.3, dtype)
    else:
        noise = tuple(jnp.asarray(rng.uniform(0.2, 1.0, n).astype(dtype)) for n in sizes)
    a = K.kron_dense(fs) + _dense_noise(noise, sizes)
    x, logdet = jax.jit(K.kron_solve_logdet)(fs, y, noise)
    assert x.dtype == jnp.dtype(dtype) and x.shape == y.shape
    np.testing.assert_allclose(x.reshape(-1, 2), np.linalg.solve(a, y.reshape(-1, 2)), **tol)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(a)[1], **tol)
    quad, logdet2 = K.kron_inv_quad_logdet(fs, y, noise)
    want = np.einsum("ik,ik->k", y.reshape(-1, 2), np.linalg.solve(a, y.reshape(-1, 2)))
    np.testing.assert_allclose(quad, want, **tol)
    np.testing.assert_allclose(K.kron_logdet(fs, noise), logdet2, **tol)
    np.testing.assert_allclose(K.kron_solve(fs, y, noise), x, **tol)


def test_zero_noise_uses_factors_only(rng, x64):
    fs, y = _problem(rng, (3, 4), "float64")
    x, logdet = K.kron_solve_logdet(fs, y, 0.0)
    a = K.kron_dense(fs)
    np.testing.assert_allclose(x.reshape(-1, 2), np.linalg.solve(a, y.reshape(-1, 2)), 1e-9)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(a)[1], 1e-9)


# ------------------------------------------------------------------ gradients


def _nlml_terms(ls, s2, y, structured=True):
    xs = [jnp.linspace(0.0, 1.0, n, dtype=y.dtype) for n in y.shape]
    fs = [rbf(x, ls[i]) + 1e-6 * jnp.eye(len(x), dtype=y.dtype) for i, x in enumerate(xs)]
    if structured:
        q, ld = K.kron_inv_quad_logdet(fs, y, s2)
        return q + ld
    a = K.kron_dense(fs) + s2 * jnp.eye(y.size, dtype=y.dtype)
    c = jnp.linalg.cholesky(a)
    v = jax.scipy.linalg.solve_triangular(c, y.reshape(-1), lower=True)
    return v @ v + 2 * jnp.sum(jnp.log(jnp.diag(c)))


@pytest.mark.parametrize("sizes", [(5, 4), (4, 3, 3)])
def test_gradients_match_dense(rng, dtype, sizes):
    y = jnp.asarray(rng.standard_normal(sizes).astype(dtype))
    ls = jnp.asarray(np.linspace(0.3, 0.6, len(sizes)).astype(dtype))
    s2 = jnp.asarray(0.2, dtype)
    f = jax.jit(jax.value_and_grad(_nlml_terms, argnums=(0, 1, 2)))
    val, grads = f(ls, s2, y)
    val_d, grads_d = jax.value_and_grad(
        lambda *a: _nlml_terms(*a, structured=False), argnums=(0, 1, 2)
    )(ls, s2, y)
    t = TOL[dtype] if dtype == "float64" else dict(rtol=5e-3, atol=5e-3)
    np.testing.assert_allclose(val, val_d, **t)
    for g, gd in zip(grads, grads_d, strict=True):
        np.testing.assert_allclose(g, gd, rtol=t["rtol"], atol=t["atol"] * np.abs(gd).max())


def test_check_grads_fwd_and_rev(rng, x64):
    y = jnp.asarray(rng.standard_normal((4, 3, 2)))
    ls = jnp.array([0.4, 0.5, 0.7])
    check_grads(_nlml_terms, (ls, 0.3, y), order=1, modes=["fwd", "rev"])

    def per_axis(roots, v0, v1):
        fs = [r @ r.T + 0.1 * jnp.eye(r.shape[0]) for r in roots]
        return K.kron_inv_quad_logdet(fs, y[..., 0].T, (v0, v1))

    roots = (jnp.asarray(rng.standard_normal((3, 3))), jnp.asarray(rng.standard_normal((4, 4))))
    check_grads(per_axis, (roots, jnp.full(3, 0.3), jnp.full(4, 0.6)), order=1, modes=["rev"])


def test_second_order_on_well_conditioned_case(rng, x64):
    fs = (jnp.asarray(spd(rng, 3, cond=3)), jnp.asarray(spd(rng, 2, cond=3)))
    y = jnp.asarray(rng.standard_normal((3, 2)))
    roots = tuple(jnp.linalg.cholesky(f) for f in fs)

    def f(roots, s2):
        return sum(K.kron_inv_quad_logdet([r @ r.T for r in roots], y, s2))

    check_grads(f, (roots, 0.5), order=2, modes=["rev"])


def test_gradient_stable_for_degenerate_spectrum(x64):
    """An RBF with a long lengthscale has clustered ~0 eigenvalues: eigh's own derivative is
    infinite there, ours must stay finite and equal to the dense gradient."""
    y = jnp.ones((30, 30))
    ls = jnp.array([2.0, 3.0])
    g = jax.grad(_nlml_terms)(ls, 1e-2, y)
    g_dense = jax.grad(lambda ls: _nlml_terms(ls, 1e-2, y, structured=False))(ls)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, g_dense, rtol=1e-5)


# ------------------------------------------------------------------ missing cells


@pytest.mark.parametrize("noise_kind", ["scalar", "kron"])
def test_masked_route_matches_dense_submatrix(rng, dtype, tol, noise_kind):
    sizes = (4, 3, 3)
    fs, y = _problem(rng, sizes, dtype)
    noise = (
        jnp.asarray(0.3, dtype)
        if noise_kind == "scalar"
        else tuple(jnp.asarray(rng.uniform(0.2, 1.0, n).astype(dtype)) for n in sizes)
    )
    observed = rng.uniform(size=sizes) > 0.35
    o = observed.reshape(-1)
    a = (K.kron_dense(fs) + _dense_noise(noise, sizes))[np.ix_(o, o)]
    x, logdet = jax.jit(lambda fs, y, noise: K.kron_masked_solve_logdet(fs, y, noise, observed))(
        fs, y, noise
    )
    xo = x.reshape(-1, 2)
    np.testing.assert_allclose(xo[o], np.linalg.solve(a, y.reshape(-1, 2)[o]), **tol)
    assert np.all(xo[~o] == 0)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(a)[1], **tol)


def test_masked_route_gradients_and_jit(rng, x64):
    observed = rng.uniform(size=(5, 4)) > 0.3
    o = observed.reshape(-1)
    y = jnp.asarray(rng.standard_normal((5, 4)))

    def f(ls, structured=True):
        xs = [jnp.linspace(0, 1, n) for n in (5, 4)]
        fs = [rbf(x, ls[i]) for i, x in enumerate(xs)]
        if structured:
            x, ld = K.kron_masked_solve_logdet(fs, y, 0.1, observed)
            return jnp.sum(y * x) + ld
        a = (K.kron_dense(fs) + 0.1 * jnp.eye(20))[np.ix_(o, o)]
        yo = y.reshape(-1)[o]
        return yo @ jnp.linalg.solve(a, yo) + jnp.linalg.slogdet(a)[1]

    ls = jnp.array([0.3, 0.5])
    np.testing.assert_allclose(jax.jit(f)(ls), f(ls, False), rtol=1e-9)
    np.testing.assert_allclose(jax.grad(f)(ls), jax.grad(lambda l: f(l, False))(ls), rtol=1e-7)


def test_masked_nan_at_missing_cells_is_ignored(rng, x64):
    fs, y = _problem(rng, (3, 4), "float64")
    observed = np.ones((3, 4), bool)
    observed[1, 2] = False
    y_nan = y.at[1, 2].set(jnp.nan)
    x1, l1 = K.kron_masked_solve_logdet(fs, y_nan, 0.2, observed)
    x2, l2 = K.kron_masked_solve_logdet(fs, y, 0.2, observed)
    np.testing.assert_allclose(x1, x2)
    assert np.isfinite(l1) and l1 == l2


# ------------------------------------------------------------------ general diagonal: PCG


def test_cg_solve_general_diagonal(rng, dtype):
    sizes = (5, 4, 3)
    fs, y = _problem(rng, sizes, dtype)
    diag = jnp.asarray(rng.uniform(0.05, 0.6, sizes).astype(dtype))
    a = K.kron_dense(fs) + jnp.diag(diag.reshape(-1))
    x = jax.jit(K.kron_cg_solve)(fs, diag, y)
    want = np.linalg.solve(np.asarray(a, np.float64), np.asarray(y, np.float64).reshape(-1, 2))
    t = dict(rtol=1e-3, atol=1e-3) if dtype == "float32" else dict(rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(x.reshape(-1, 2), want, **t)
    observed = rng.uniform(size=sizes) > 0.3
    o = observed.reshape(-1)
    x = K.kron_cg_solve(fs, diag, y, observed=observed).reshape(-1, 2)
    y64 = np.asarray(y, np.float64).reshape(-1, 2)[o]
    want = np.linalg.solve(np.asarray(a, np.float64)[np.ix_(o, o)], y64)
    np.testing.assert_allclose(x[o], want, **t)
    assert np.all(np.asarray(x[~o]) == 0)


def test_cg_gradient_by_implicit_differentiation(rng, x64):
    sizes = (4, 3)
    diag = jnp.asarray(rng.uniform(0.1, 0.5, sizes))
    y = jnp.asarray(rng.standard_normal(sizes))

    def f(ls, structured=True):
        fs = [rbf(jnp.linspace(0, 1, n), ls[i]) for i, n in enumerate(sizes)]
        if structured:
            return jnp.sum(y * K.kron_cg_solve(fs, diag, y))
        a = K.kron_dense(fs) + jnp.diag(diag.reshape(-1))
        return y.reshape(-1) @ jnp.linalg.solve(a, y.reshape(-1))

    ls = jnp.array([0.3, 0.4])
    np.testing.assert_allclose(jax.grad(f)(ls), jax.grad(lambda l: f(l, False))(ls), rtol=1e-6)


# ------------------------------------------------------------------ sampling, prediction


@pytest.mark.parametrize("method", ["eigh", "cholesky"])
def test_sample_covariance(rng, x64, method):
    fs = [jnp.asarray(spd(rng, n)) for n in (3, 2)]
    s = K.kron_sample(jax.random.PRNGKey(0), fs, (40_000,), method=method)
    assert s.shape == (40_000, 3, 2)
    cov = np.cov(np.asarray(s).reshape(40_000, -1).T)
    want = np.asarray(K.kron_dense(fs))
    se = np.sqrt((want**2 + np.outer(np.diag(want), np.diag(want))) / 40_000)
    assert np.all(np.abs(cov - want) < 5 * se + 1e-12)
    roots = K.kron_sqrt_factors(fs, method)
    np.testing.assert_allclose(K.kron_dense(roots) @ K.kron_dense(roots).T, want, atol=1e-12)


def test_predict_matches_dense_conditional(rng, dtype):
    x1, x2 = np.linspace(0, 1, 6), np.linspace(0, 1, 5)
    t1, t2 = np.array([0.05, 0.5, 1.2]), np.array([0.33, 0.9])
    k = lambda a, b, ls: np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / ls**2)  # noqa: E731
    fs = [jnp.asarray(k(x1, x1, 0.3), dtype), jnp.asarray(k(x2, x2, 0.4), dtype)]
    cross = [jnp.asarray(k(t1, x1, 0.3), dtype), jnp.asarray(k(t2, x2, 0.4), dtype)]
    y = jnp.asarray(rng.standard_normal((6, 5)), dtype)
    mean, var = K.kron_predict(fs, y, 0.1, cross, [jnp.ones(3, dtype), jnp.ones(2, dtype)])
    a = np.kron(k(x1, x1, 0.3), k(x2, x2, 0.4)) + 0.1 * np.eye(30)
    ks = np.kron(k(t1, x1, 0.3), k(t2, x2, 0.4))
    t = TOL[dtype] if dtype == "float64" else dict(rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(mean.reshape(-1), ks @ np.linalg.solve(a, y.reshape(-1)), **t)
    np.testing.assert_allclose(var.reshape(-1), 1 - np.diag(ks @ np.linalg.solve(a, ks.T)), **t)
    observed = rng.uniform(size=(6, 5)) > 0.4
    o = observed.reshape(-1)
    mean, var = K.kron_predict(
        fs, y, 0.1, cross, [jnp.ones(3, dtype), jnp.ones(2, dtype)], observed=observed
    )
    ao, kso = a[np.ix_(o, o)], ks[:, o]
    np.testing.assert_allclose(mean.reshape(-1), kso @ np.linalg.solve(ao, y.reshape(-1)[o]), **t)
    np.testing.assert_allclose(var.reshape(-1), 1 - np.diag(kso @ np.linalg.solve(ao, kso.T)), **t)


# ------------------------------------------------------------------ generalized eigenproblem


@pytest.mark.parametrize("b_kind", ["diag", "full"])
def test_gen_eigh_sbl_posterior_diag(rng, dtype, b_kind):
    """diag((Γ⁻¹ + ΦᵀΦ/σ²)⁻¹) of Kronecker SBL without forming the N x N matrix."""
    phis = [rng.standard_normal((4, 5)), rng.standard_normal((3, 4)), rng.standard_normal((2, 2))]
    gam = [rng.uniform(0.2, 2.0, p.shape[1]) for p in phis]
    a_f = [jnp.asarray(p.T @ p, dtype) for p in phis]
    b_f = [jnp.asarray(1 / g if b_kind == "diag" else np.diag(1 / g), dtype) for g in gam]
    geig = K.kron_gen_eigh(a_f, b_f)
    s2 = 0.3
    phi = np.asarray(K.kron_dense([jnp.asarray(p) for p in phis]))
    prec = np.diag(1 / K.kron_outer([jnp.asarray(g) for g in gam]).reshape(-1)) + phi.T @ phi / s2
    sigma = np.linalg.inv(prec)
    t = TOL[dtype] if dtype == "float64" else dict(rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(
        K.kron_pencil_inv_diag(geig, 1 / s2, 1.0).reshape(-1), np.diag(sigma), **t
    )
    np.testing.assert_allclose(
        K.kron_pencil_logdet(geig, 1 / s2, 1.0), np.linalg.slogdet(prec)[1], **t
    )
    v = rng.standard_normal((5, 4, 2)).astype(dtype)
    np.testing.assert_allclose(
        K.kron_pencil_solve(geig, 1 / s2, 1.0, jnp.asarray(v)).reshape(-1),
        sigma @ v.reshape(-1),
        **t,
    )
    for a, b, vec, lam in zip(a_f, b_f, geig.eigvecs, geig.eigvals, strict=True):
        bm = jnp.diag(b) if b.ndim == 1 else b
        np.testing.assert_allclose(vec.T @ bm @ vec, np.eye(len(lam)), atol=50 * t["atol"])
        np.testing.assert_allclose(vec.T @ a @ vec, np.diag(lam), atol=100 * t["atol"])


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_named_errors(rng):
    good = [jnp.asarray(spd(rng, 3, "float32")), jnp.asarray(spd(rng, 2, "float32"))]
    y = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match=r"factors\[1\].*square"):
        K.kron_solve([good[0], jnp.zeros((2, 3))], y, 0.1)
    nonsym = good[0].at[0, 1].add(1.0)
    with pytest.raises(ValueError, match=r"factors\[0\].*symmetric"):
        K.kron_solve([nonsym, good[1]], y, 0.1)
    with pytest.raises(ValueError, match=r"`y`.*\(3, 2\)"):
        K.kron_solve(good, jnp.zeros((2, 3)), 0.1)
    with pytest.raises(ValueError, match=r"`y`.*finite"):
        K.kron_solve(good, y.at[0, 0].set(jnp.nan), 0.1)
    with pytest.raises(ValueError, match=r"factors\[0\].*finite"):
        K.kron_solve([good[0].at[0, 0].set(jnp.inf), good[1]], y, 0.1)
    with pytest.raises(ValueError, match=r"`noise`.*non-negative"):
        K.kron_solve(good, y, -0.1)
    with pytest.raises(ValueError, match=r"noise\[1\].*shape \(2,\)"):
        K.kron_solve(good, y, (jnp.ones(3), jnp.ones(3)))
    with pytest.raises(ValueError, match=r"noise\[0\].*strictly positive"):
        K.kron_solve(good, y, (jnp.zeros(3), jnp.ones(2)))
    with pytest.raises(ValueError, match=r"`noise`.*general diagonal"):
        K.kron_solve(good, y, jnp.ones((3, 2)))
    with pytest.raises(TypeError, match="sequence"):
        K.kron_solve(good[0], y, 0.1)
    with pytest.raises(ValueError, match=r"observed.*at least one"):
        K.kron_masked_solve_logdet(good, y, 0.1, np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match=r"observed.*grid shape"):
        K.kron_masked_solve_logdet(good, y, 0.1, np.ones((2, 3), bool))
    with pytest.raises(TypeError, match=r"observed.*traced"):
        jax.jit(lambda m: K.kron_masked_solve_logdet(good, y, 0.1, m))(np.ones((3, 2), bool))
    with pytest.raises(ValueError, match=r"cross_factors\[0\].*3 columns"):
        K.kron_predict(good, y, 0.1, [jnp.ones((2, 4)), jnp.ones((1, 2))])
    with pytest.raises(ValueError, match=r"b_factors\[1\].*strictly positive"):
        K.kron_gen_eigh(good, [jnp.ones(3), -jnp.ones(2)])
    with pytest.raises(ValueError, match="method"):
        K.kron_sqrt_factors(good, "svd")


def test_checks_skip_values_under_jit_but_keep_shapes(rng):
    good = [jnp.asarray(spd(rng, 3, "float32")), jnp.asarray(spd(rng, 2, "float32"))]
    f = jax.jit(lambda fs, y, s: K.kron_solve(fs, y, s))
    assert np.all(np.isfinite(f(good, jnp.ones((3, 2)), 0.1)))
    with pytest.raises(ValueError, match="square"):
        f([good[0], jnp.zeros((2, 3))], jnp.ones((3, 2)), 0.1)
