"""State-space GP (Kalman filter / RTS smoother) against the dense GP, both dtypes and forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

from bayeslr.gp import RBF, Matern12, Matern32, Matern52
from bayeslr.linalg import statespace as ss
from tests.conftest import TOL

KERNELS = [Matern12, Matern32, Matern52]
VAR, LS = 1.3, 0.8


def _data(rng, n, *, span=None, frac_observed=0.7):
    """Irregular sorted times (gaps from tiny to large), per-time noise, data and a mask."""
    span = n / 10.0 if span is None else span
    gaps = rng.exponential(1.0, n) ** 2 + 1e-3
    t = np.cumsum(gaps)
    t = span * (t - t[0]) / (t[-1] - t[0] + 1e-12)
    r = rng.uniform(0.05, 0.5, n)
    y = np.sin(t) + rng.standard_normal(n) * np.sqrt(r)
    mask = rng.uniform(size=n) < frac_observed
    mask[0] = mask[-1] = True
    return t, y, r, mask


def _dense(kernel_cls, t, y, r, mask):
    """Dense float64 reference: log N(y_o | 0, K_oo + R_o) and posterior marginals of f."""
    with jax.enable_x64(True):
        k = kernel_cls(variance=VAR, lengthscale=LS)
        K = np.asarray(k(jnp.asarray(t, jnp.float64), jnp.asarray(t, jnp.float64)))
    o = np.asarray(mask)
    Koo = K[np.ix_(o, o)] + np.diag(r[o])
    c = np.linalg.cholesky(Koo)
    alpha = np.linalg.solve(c.T, np.linalg.solve(c, y[o]))
    ll = -0.5 * y[o] @ alpha - np.log(np.diag(c)).sum() - 0.5 * o.sum() * np.log(2 * np.pi)
    Kxo = K[:, o]
    mean = Kxo @ alpha
    v = np.linalg.solve(c, Kxo.T)
    var = np.diag(K) - np.sum(v * v, axis=0)
    return ll, mean, var


def _fit_impl(kernel, t, y, r, mask, parallel):
    model = ss.from_kernel(kernel, t)
    fr = ss.kalman_filter(model, y, r, mask=mask, parallel=parallel)
    return fr, ss.rts_smoother(model, fr, parallel=parallel)


_fit = jax.jit(_fit_impl, static_argnames="parallel")


# ------------------------------------------------------------------ against the dense GP


# Every kernel in both forms in float64 (n = 500); in float32 (n = 100) every kernel
# sequentially and the 3-state Matérn 5/2 in parallel (each parallel compile costs seconds).
DENSE_CASES = [(k, p, "float64") for k in KERNELS for p in (False, True)] + [
    (Matern12, False, "float32"),
    (Matern32, False, "float32"),
    (Matern52, False, "float32"),
    (Matern52, True, "float32"),
]


@pytest.mark.parametrize(
    ("kernel_cls", "parallel", "dtype"),
    DENSE_CASES,
    ids=[f"{d}-{k.__name__}-{'par' if p else 'seq'}" for k, p, d in DENSE_CASES],
)
def test_matches_dense_gp(kernel_cls, parallel, dtype, rng):
    """Log-likelihood and smoothed f-marginals equal the dense GP, with and without a mask."""
    with jax.enable_x64(dtype == "float64"):
        _check_dense(kernel_cls, parallel, dtype, rng)


def _check_dense(kernel_cls, parallel, dtype, rng):
    n = 500 if dtype == "float64" else 100
    t, y, r, mask = _data(rng, n)
    kernel = kernel_cls(variance=VAR, lengthscale=LS)
    args = [jnp.asarray(a, dtype) for a in (t, y, r)]
    if dtype == "float64":
        rtol_ll, rtol_m, atol_m = 1e-8, 1e-7, 1e-8
    else:
        rtol_ll, rtol_m, atol_m = 2e-3, 2e-3, 2e-3
    for m in (np.ones(n, bool), mask):
        fr, sr = _fit(kernel, *args, jnp.asarray(m), parallel)
        assert fr.log_likelihood.dtype == jnp.dtype(dtype)
        ll_ref, mean_ref, var_ref = _dense(kernel_cls, t, y, r, m)
        np.testing.assert_allclose(float(fr.log_likelihood), ll_ref, rtol=rtol_ll)
        np.testing.assert_allclose(sr.means[:, 0], mean_ref, rtol=rtol_m, atol=atol_m)
        np.testing.assert_allclose(sr.covs[:, 0, 0], var_ref, rtol=rtol_m, atol=atol_m)
        if parallel and dtype == "float64":
            # State moments (all components, not only f) agree with the sequential form.
            fs, ss_ = _fit(kernel, *args, jnp.asarray(m), False)
            for a, b in [(fs.means, fr.means), (fs.covs, fr.covs)]:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
            for a, b in [(ss_.means, sr.means), (ss_.covs, sr.covs)]:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
        # Smoothed covariances are symmetric PSD; the last smoothed state is the filtered one.
        covs = np.asarray(sr.covs, np.float64)
        np.testing.assert_array_equal(covs, np.swapaxes(covs, -1, -2))
        assert np.all(np.linalg.eigvalsh(covs) > -TOL[dtype]["atol"])
        np.testing.assert_allclose(sr.means[-1], fr.means[-1], rtol=1e-6)


@pytest.mark.parametrize("parallel", [False, True], ids=["seq", "par"])
def test_single_time_and_scalar_noise(x64, parallel):
    """n = 1 is N(y | 0, σ² + r); a scalar noise equals the same per-time vector."""
    kernel = Matern32(variance=VAR, lengthscale=LS)
    ll = ss.log_marginal_likelihood(kernel, [0.3], [0.7], 0.2, parallel=parallel)
    ref = -0.5 * (np.log(2 * np.pi * (VAR + 0.2)) + 0.49 / (VAR + 0.2))
    np.testing.assert_allclose(ll, ref, rtol=1e-12)
    pm = ss.posterior_marginals(kernel, [0.3], [0.7], 0.2, parallel=parallel)
    np.testing.assert_allclose(pm.mean, [VAR / (VAR + 0.2) * 0.7], rtol=1e-12)
    np.testing.assert_allclose(pm.variance, [VAR * 0.2 / (VAR + 0.2)], rtol=1e-12)
    t = np.array([0.0, 0.5, 2.0])
    y = np.array([0.1, -0.4, 0.3])
    a = ss.log_marginal_likelihood(kernel, t, y, 0.3, parallel=parallel)
    b = ss.log_marginal_likelihood(kernel, t, y, np.full(3, 0.3), parallel=parallel)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_missing_values_are_ignored(x64, rng):
    """Masked entries may hold NaN; they change neither the likelihood nor the posterior."""
    t, y, r, mask = _data(rng, 40)
    kernel = Matern12(variance=VAR, lengthscale=LS)
    y_nan = np.where(mask, y, np.nan)
    a = ss.log_marginal_likelihood(kernel, t, y_nan, r, mask=mask)
    b = ss.log_marginal_likelihood(kernel, t[mask], y[mask], r[mask])
    np.testing.assert_allclose(a, b, rtol=1e-10)
    pm = ss.posterior_marginals(kernel, t, y_nan, r, mask=mask)
    assert np.all(np.isfinite(pm.mean)) and np.all(np.isfinite(pm.variance))


# ------------------------------------------------------------------ discretization


@pytest.mark.parametrize("kernel_cls", KERNELS, ids=lambda c: c.__name__)
def test_discretize_reproduces_kernel(kernel_cls, x64):
    """H A(Δ) P∞ Hᵀ = k(Δ), A(0) = I, Q(0) = 0, Q(Δ) PSD and → P∞ for large Δ."""
    kernel = kernel_cls(variance=VAR, lengthscale=LS)
    sde = kernel.sde()
    dt = jnp.array([0.0, 1e-3, 0.1, 0.7, 3.0, 50.0])
    A, Q = ss.discretize(sde, dt)
    H, P = np.asarray(sde.H), np.asarray(sde.Pinf)
    cov = np.einsum("ij,njk,kl,ml->n", H, A, P, H)
    np.testing.assert_allclose(cov, kernel.dk(dt), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A[0], np.eye(P.shape[0]), atol=1e-14)
    np.testing.assert_allclose(Q[0], 0.0, atol=1e-14)
    np.testing.assert_allclose(Q[-1], P, rtol=1e-8, atol=1e-10)
    assert np.all(np.linalg.eigvalsh(np.asarray(Q)) > -1e-12)


# ------------------------------------------------------------------ gradients


def _lml_fn(kernel_cls, t, y, mask, parallel):
    def f(variance, lengthscale, noise):
        k = kernel_cls(variance=variance, lengthscale=lengthscale)
        return ss.log_marginal_likelihood(k, t, y, noise, mask=mask, parallel=parallel)

    return f


def _dense_lml(kernel_cls, t, y, mask):
    o = np.asarray(mask)

    def f(variance, lengthscale, noise):
        k = kernel_cls(variance=variance, lengthscale=lengthscale)
        K = k(t[o], t[o]) + jnp.diag(noise[o])
        return jax.scipy.stats.multivariate_normal.logpdf(y[o], jnp.zeros(o.sum()), K)

    return f


@pytest.mark.parametrize("parallel", [False, True], ids=["seq", "par"])
def test_gradients_match_dense(x64, rng, parallel):
    t, y, r, mask = _data(rng, 25)
    args = (jnp.asarray(VAR), jnp.asarray(LS), jnp.asarray(r))
    kf = _lml_fn(Matern32, t, y, mask, parallel)
    g = jax.jit(jax.grad(kf, argnums=(0, 1, 2)))(*args)
    g_ref = jax.grad(_dense_lml(Matern32, t, y, mask), argnums=(0, 1, 2))(*args)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    # Masked-out noise entries get zero gradient.
    np.testing.assert_array_equal(np.asarray(g[2])[~mask], 0.0)


@pytest.mark.parametrize("kernel_cls", [Matern12, Matern52], ids=lambda c: c.__name__)
def test_check_grads(kernel_cls, x64, rng):
    t, y, r, mask = _data(rng, 12)
    f = jax.jit(_lml_fn(kernel_cls, t, y, mask, False))
    check_grads(f, (VAR, LS, jnp.asarray(r)), order=1, modes=["fwd", "rev"])


# ------------------------------------------------------------------ jit and vmap


def _series_impl(lengthscale, t, y, r, m, parallel):
    k = Matern52(variance=VAR, lengthscale=lengthscale)
    fr, sr = _fit_impl(k, t, y, r, m, parallel)
    return fr.log_likelihood, sr.means[:, 0], sr.covs[:, 0, 0]


_series = jax.jit(_series_impl, static_argnames="parallel")
_series_batch = jax.jit(jax.vmap(_series_impl, in_axes=(0, 0, 0, 0, 0, None)), static_argnums=5)


@pytest.mark.parametrize("parallel", [False, True], ids=["seq", "par"])
def test_vmap_over_series(x64, rng, parallel):
    """A batch of series (own times, data, noise, masks, lengthscales) equals a loop."""
    b, n = 3, 30
    data = [_data(rng, n) for _ in range(b)]
    T, Y, R, M = (np.stack(z) for z in zip(*data, strict=True))
    ls = np.array([0.5, 1.0, 2.0])
    batched = _series_batch(ls, T, Y, R, M, parallel)
    for i in range(b):
        single = _series(ls[i], T[i], Y[i], R[i], M[i], parallel=False)
        for a, c in zip(batched, single, strict=True):
            np.testing.assert_allclose(a[i], c, rtol=1e-8, atol=1e-10)


def test_float32_stays_float32(rng):
    t, y, r, _ = _data(rng, 20)
    with jax.enable_x64(False):
        k = Matern32(variance=VAR, lengthscale=LS)
        pm = ss.posterior_marginals(k, t, y, r)
        assert pm.mean.dtype == jnp.float32 and pm.variance.dtype == jnp.float32
        assert np.all(np.asarray(pm.variance) > 0)


# ------------------------------------------------------------------ bad input at the door


def test_bad_input_raises():
    k = Matern32(variance=VAR, lengthscale=LS)
    t = np.array([0.0, 1.0, 2.5, 3.0])
    y = np.array([0.1, 0.2, -0.3, 0.4])
    lml = ss.log_marginal_likelihood
    with pytest.raises(ValueError, match=r"`times` must be strictly increasing.*not sorted"):
        lml(k, t[[0, 2, 1, 3]], y, 0.1)
    with pytest.raises(ValueError, match=r"`times`.*duplicated value 2\.5"):
        lml(k, np.array([0.0, 1.0, 2.5, 2.5]), y, 0.1)
    with pytest.raises(ValueError, match=r"`times` must be finite"):
        lml(k, np.array([0.0, np.nan, 2.5, 3.0]), y, 0.1)
    with pytest.raises(ValueError, match=r"`times` must be 1-D"):
        lml(k, t[None], y, 0.1)
    with pytest.raises(ValueError, match=r"`y` must be finite"):
        lml(k, t, np.array([0.1, np.inf, 0.0, 0.0]), 0.1)
    with pytest.raises(ValueError, match=r"`y \(observed entries\)` must be finite"):
        lml(k, t, np.array([0.1, np.nan, 0.0, 0.0]), 0.1, mask=np.array([1, 1, 0, 1], bool))
    with pytest.raises(ValueError, match=r"`y` must have one value per time, shape \(4,\)"):
        lml(k, t, y[:3], 0.1)
    with pytest.raises(ValueError, match=r"`noise` must be strictly positive"):
        lml(k, t, y, np.array([0.1, 0.0, 0.1, 0.1]))
    with pytest.raises(ValueError, match=r"`noise` must be strictly positive"):
        lml(k, t, y, -1.0)
    with pytest.raises(ValueError, match=r"`noise` must be a scalar or have shape \(4,\)"):
        lml(k, t, y, np.full(3, 0.1))
    with pytest.raises(ValueError, match=r"`mask` must be a boolean"):
        lml(k, t, y, 0.1, mask=np.ones(4))
    with pytest.raises(ValueError, match=r"`mask` must have shape \(4,\)"):
        lml(k, t, y, 0.1, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"`parallel` must be a Python bool"):
        lml(k, t, y, 0.1, parallel=jnp.array(True))
    with pytest.raises(ValueError, match=r"no exact|SDE|sde"):
        lml(RBF(variance=1.0, lengthscale=1.0), t, y, 0.1)


def test_duplicates_after_float32_rounding_raise():
    """Distinct float64 times that round to one float32 value are duplicates, never NaN."""
    t = np.array([0.0, 1.0, 1.0 + 1e-9, 2.0])
    with jax.enable_x64(False):
        k = Matern12(variance=VAR, lengthscale=LS)
        with pytest.raises(ValueError, match=r"`times`.*duplicated"):
            ss.log_marginal_likelihood(k, t, np.zeros(4), 0.1)


def test_traced_times_skip_value_checks_but_keep_shapes(x64):
    """Under jit only static checks run (shape mismatch still raises at trace time)."""
    k = Matern12(variance=VAR, lengthscale=LS)
    f = jax.jit(lambda t, y: ss.log_marginal_likelihood(k, t, y, 0.1))
    assert np.isfinite(f(jnp.arange(4.0), jnp.zeros(4)))
    with pytest.raises(ValueError, match=r"`y` must have one value per time"):
        f(jnp.arange(4.0), jnp.zeros(5))


# ------------------------------------------------------------------ sampling (prior, FFBS)


def _gram(kernel_cls, t):
    with jax.enable_x64(True):
        k = kernel_cls(variance=VAR, lengthscale=LS)
        tt = jnp.asarray(t, jnp.float64)
        return np.asarray(k(tt, tt))


def _dense_posterior(K, y, r, mask, K_new=None, k_new_diag=None):
    """Dense posterior of f at the data times (full covariance), or marginals at new times."""
    o = np.asarray(mask)
    Koo = K[np.ix_(o, o)] + np.diag(np.broadcast_to(r, (len(o),))[o])
    if K_new is None:
        Kxo = K[:, o]
        mean = Kxo @ np.linalg.solve(Koo, y[o])
        cov = K - Kxo @ np.linalg.solve(Koo, Kxo.T)
        return mean, cov
    Kxo = K_new[:, o]
    mean = Kxo @ np.linalg.solve(Koo, y[o])
    var = k_new_diag - np.sum(Kxo * np.linalg.solve(Koo, Kxo.T).T, axis=1)
    return mean, var


def _assert_moments(samples, mean, cov, z=5.0):
    """Empirical mean and covariance within ``z`` standard errors of the reference."""
    s = np.asarray(samples, np.float64)
    S = s.shape[0]
    var = np.diag(cov)
    se_mean = np.sqrt(np.maximum(var, 0) / S)
    assert np.all(np.abs(s.mean(0) - mean) <= z * se_mean + 1e-12), np.max(
        np.abs(s.mean(0) - mean) / (se_mean + 1e-300)
    )
    c = s - mean  # centred at the true mean: cov estimator has variance (Σii Σjj + Σij²)/S
    emp = c.T @ c / S
    se_cov = np.sqrt((np.outer(var, var) + cov**2) / S)
    ratio = np.abs(emp - cov) / (se_cov + 1e-300)
    assert np.all(np.abs(emp - cov) <= z * se_cov + 1e-12), ratio.max()


def test_sample_prior_moments(x64, rng):
    """Forward simulation has mean 0 and covariance K (the kernel Gram), to 5 standard errors."""
    t, _, _, _ = _data(rng, 12, span=3.0)
    model = ss.from_kernel(Matern52(variance=VAR, lengthscale=LS), t)
    f = jax.jit(ss.sample_prior, static_argnums=2)(jax.random.key(0), model, (20000,))
    assert f.shape == (20000, 12) and f.dtype == jnp.float64
    _assert_moments(f, np.zeros(12), _gram(Matern52, t))


@pytest.mark.parametrize("parallel", [False, True], ids=["seq", "par"])
def test_sample_posterior_moments(x64, rng, parallel):
    """FFBS draws match the dense posterior mean and full covariance (masked data)."""
    t, y, r, mask = _data(rng, 12, span=3.0)
    y_nan = np.where(mask, y, np.nan)
    model = ss.from_kernel(Matern32(variance=VAR, lengthscale=LS), t)
    draw = jax.jit(
        lambda key, y: ss.sample_posterior(
            key, model, y, r, mask=mask, sample_shape=(20000,), parallel=parallel
        )
    )
    f = draw(jax.random.key(1), y_nan)
    assert f.shape == (20000, 12)
    mean, cov = _dense_posterior(_gram(Matern32, t), y, r, mask)
    _assert_moments(f, mean, cov)


def test_sample_shapes_and_float32(rng):
    """sample_shape is prepended; float32 stays float32 and finite; tiny gaps do not NaN."""
    t = np.array([0.0, 1e-6, 0.5, 0.5 + 1e-5, 2.0])
    y = np.array([0.1, 0.2, -0.3, 0.0, 0.4])
    with jax.enable_x64(False):
        model = ss.from_kernel(Matern52(variance=VAR, lengthscale=LS), t)
        a = jax.jit(lambda k, m: ss.sample_prior(k, m, (2, 3)))(jax.random.key(2), model)
        b = jax.jit(lambda k, m: ss.sample_posterior(k, m, y, 0.1))(jax.random.key(3), model)
    assert a.shape == (2, 3, 5) and b.shape == (5,)
    for z in (a, b):
        assert z.dtype == jnp.float32 and np.all(np.isfinite(z))
    with pytest.raises(ValueError, match=r"`sample_shape` must"):
        ss.sample_prior(jax.random.key(0), model, 3)
    with pytest.raises(ValueError, match=r"`y` must have one value per time"):
        ss.sample_posterior(jax.random.key(0), model, y[:3], 0.1)


# ------------------------------------------------------------------ prediction at new times


def _new_times(t):
    """Before the first, after the last, interleaved, equal to data times, repeated, unsorted."""
    inner = 0.5 * (t[1:4] + t[:3])
    return np.concatenate([[t[-1] + 2.0, t[0] - 1.5, t[0] - 0.1], inner, t[[5, 0, -1, 5]]])


def _check_predict(kernel_cls, dtype, rng, parallel, n=30):
    t, y, r, mask = _data(rng, n, span=n / 7.5)
    new = _new_times(t)
    kernel = kernel_cls(variance=VAR, lengthscale=LS)
    args = [np.asarray(a, dtype) for a in (t, y, r, new)]
    pm = jax.jit(
        lambda y, r: ss.predict(kernel, args[0], y, r, args[3], mask=mask, parallel=parallel)
    )(args[1], args[2])
    assert pm.mean.shape == (len(new),) and pm.mean.dtype == jnp.dtype(dtype)
    with jax.enable_x64(True):
        k = kernel_cls(variance=VAR, lengthscale=LS)
        t64, n64 = jnp.asarray(t, jnp.float64), jnp.asarray(new, jnp.float64)
        K, Kn = np.asarray(k(t64, t64)), np.asarray(k(n64, t64))
    mean, var = _dense_posterior(K, y, r, mask, Kn, np.full(len(new), VAR))
    tl = dict(rtol=1e-8, atol=1e-9) if dtype == "float64" else dict(rtol=3e-3, atol=3e-3)
    np.testing.assert_allclose(pm.mean, mean, **tl)
    np.testing.assert_allclose(pm.variance, var, **tl)
    assert np.all(np.asarray(pm.variance) >= 0)
    # A new time repeated, or equal to a data time, gives identical answers.
    np.testing.assert_array_equal(pm.mean[-4], pm.mean[-1])
    np.testing.assert_array_equal(pm.variance[-4], pm.variance[-1])


PREDICT_CASES = [
    (Matern12, "float64"),
    (Matern52, "float64"),
    (Matern32, "float32"),
    (Matern52, "float32"),
]


@pytest.mark.parametrize(
    ("kernel_cls", "dtype"), PREDICT_CASES, ids=[f"{d}-{k.__name__}" for k, d in PREDICT_CASES]
)
def test_predict_matches_dense(kernel_cls, dtype, rng):
    """New times before, after, between and at the data times equal the dense GP."""
    with jax.enable_x64(dtype == "float64"):
        _check_predict(kernel_cls, dtype, rng, parallel=False)


def test_predict_parallel_matches_dense(x64, rng):
    """The parallel form (small n: each associative-scan level costs compile time)."""
    _check_predict(Matern32, "float64", rng, parallel=True, n=8)


def test_predict_traced_data_and_bad_input(x64, rng):
    """y, noise and kernel may be traced (times closed over); traced or bad times raise."""
    t, y, r, mask = _data(rng, 10)
    new = np.array([-0.5, 0.33, 5.0])

    def mean_sum(ls, y, noise):
        k = Matern32(variance=VAR, lengthscale=ls)
        return ss.predict(k, t, y, noise, new, mask=mask).mean.sum()

    g = jax.jit(jax.grad(mean_sum, argnums=(0, 1, 2)))(LS, y, r)
    assert all(np.all(np.isfinite(a)) for a in g)
    np.testing.assert_array_equal(np.asarray(g[1])[~mask], 0.0)
    k = Matern32(variance=VAR, lengthscale=LS)
    with pytest.raises(ValueError, match=r"`times` and `new_times` must be concrete"):
        jax.jit(lambda tt: ss.predict(k, tt, y, r, new).mean)(t)
    with pytest.raises(ValueError, match=r"`new_times` must be finite"):
        ss.predict(k, t, y, r, np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match=r"`new_times` must be 1-D"):
        ss.predict(k, t, y, r, new[None])
    with pytest.raises(ValueError, match=r"`new_times` must hold at least one"):
        ss.predict(k, t, y, r, np.zeros(0))
    with pytest.raises(ValueError, match=r"`times` must be strictly increasing"):
        ss.predict(k, t[::-1], y, r, new)
    with pytest.raises(ValueError, match=r"no exact|sde"):
        ss.predict(RBF(variance=1.0, lengthscale=1.0), t, y, r, new)


@pytest.mark.parametrize("kern", [Matern12, Matern32, Matern52])
def test_closed_form_matern_transition_equals_expm(kern, x64):
    dt = jnp.array([0.0, 1e-4, 0.3, 1.7, 25.0])

    def transitions(ell, closed):
        k = kern(1.3, ell)
        return ss.discretize(k.sde(), dt, rate=k.rate if closed else None)

    for closed_a, ref_a in zip(transitions(0.7, True), transitions(0.7, False), strict=True):
        np.testing.assert_allclose(closed_a, ref_a, rtol=1e-10, atol=1e-12)
    g1 = jax.grad(lambda l: jnp.sum(transitions(l, True)[1]))(0.7)
    g2 = jax.grad(lambda l: jnp.sum(transitions(l, False)[1]))(0.7)
    np.testing.assert_allclose(g1, g2, rtol=1e-8)
    # from_kernel takes the closed form for the Matérn family
    times = jnp.cumsum(dt + 0.1)
    model = ss.from_kernel(kern(1.3, 0.7), times)
    ref = ss.discretize(kern(1.3, 0.7).sde(), jnp.diff(times))[0]
    np.testing.assert_allclose(model.transitions[1:], ref, rtol=1e-10, atol=1e-12)


def test_closed_form_rejects_a_rate_that_is_not_matern(x64):
    sde = Matern32(1.0, 0.5).sde()
    with pytest.raises(ValueError, match=r"rate.*nilpotent"):
        ss.discretize(sde, jnp.array([0.1, 0.2]), rate=1.0)


# ------------------------------------------------------------------ vector observations


def _dense_value_and_slope(kernel, t):
    """Dense joint covariance of (f(t_k), f'(t_k)), interleaved as (n, 2) -> 2n."""
    with jax.enable_x64(True):
        tt = jnp.asarray(t, jnp.float64)
        blocks = [[kernel.derivative(tt, tt, i, j) for j in range(2)] for i in range(2)]
    n = len(t)
    K = np.zeros((n, 2, n, 2))
    for i in range(2):
        for j in range(2):
            K[:, i, :, j] = np.asarray(blocks[i][j])
    return K.reshape(2 * n, 2 * n)


@pytest.mark.parametrize("parallel", [False, True], ids=["seq", "par"])
def test_vector_observations_match_dense(parallel, x64, rng):
    """H = I on a Matérn-3/2 state observes (f, f') per time: the filter's log-likelihood and
    the smoothed marginals equal the dense joint GP with derivative covariance blocks, with
    missing single components and per-component noise."""
    n = 40
    t, _, _, _ = _data(rng, n, span=6.0)
    k = Matern32(variance=VAR, lengthscale=LS)
    K = _dense_value_and_slope(k, t)
    r = rng.uniform(0.05, 0.3, (n, 2))
    f = np.linalg.cholesky(K + 1e-9 * np.eye(2 * n)) @ rng.standard_normal(2 * n)
    y = f.reshape(n, 2) + np.sqrt(r) * rng.standard_normal((n, 2))
    mask = rng.uniform(size=(n, 2)) < 0.7
    mask[0] = True
    y_nan = np.where(mask, y, np.nan)
    model = ss.from_kernel(k, t, H=jnp.eye(2))
    fr = ss.kalman_filter(model, y_nan, r, mask=mask, parallel=parallel)
    o = mask.reshape(-1)
    ll_ref, mean_ref, var_ref = _dense_from_joint(K, y.reshape(-1), r.reshape(-1), o)
    np.testing.assert_allclose(fr.log_likelihood, ll_ref, rtol=1e-9)
    sr = ss.rts_smoother(model, fr, parallel=parallel)
    np.testing.assert_allclose(sr.means.reshape(-1), mean_ref, rtol=1e-7, atol=1e-9)
    covs = np.asarray(sr.covs)
    np.testing.assert_allclose(
        np.stack([covs[:, 0, 0], covs[:, 1, 1]], 1).reshape(-1), var_ref, rtol=1e-7, atol=1e-9
    )
    # a mask of whole time steps (n,) is the same as masking both components
    rows = mask.all(axis=1)
    rows[0] = True
    a = ss.kalman_filter(model, y, r, mask=rows, parallel=parallel).log_likelihood
    b = ss.kalman_filter(model, y, r, mask=np.repeat(rows[:, None], 2, 1), parallel=parallel)
    np.testing.assert_allclose(a, b.log_likelihood, rtol=1e-12)


def _dense_from_joint(K, y, r, o):
    Koo = K[np.ix_(o, o)] + np.diag(r[o])
    c = np.linalg.cholesky(Koo)
    alpha = np.linalg.solve(c.T, np.linalg.solve(c, y[o]))
    ll = -0.5 * y[o] @ alpha - np.log(np.diag(c)).sum() - 0.5 * o.sum() * np.log(2 * np.pi)
    mean = K[:, o] @ alpha
    v = np.linalg.solve(c, K[:, o].T)
    return ll, mean, np.diag(K) - np.sum(v * v, axis=0)


def test_vector_observation_of_one_row_equals_scalar(x64, rng):
    """A (1, d) H given explicitly reproduces the scalar filter; a (2, d) H with the second row
    never observed reproduces it too (the missing component adds nothing)."""
    t, y, r, _ = _data(rng, 30)
    k = Matern52(variance=VAR, lengthscale=LS)
    ref = ss.log_marginal_likelihood(k, t, y, r)
    m1 = ss.from_kernel(k, t, H=jnp.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(ss.kalman_filter(m1, y, r).log_likelihood, ref, rtol=1e-12)
    H2 = jnp.array([[1.0, 0.0, 0.0], [0.3, 1.0, 0.0]])
    Y = np.stack([y, np.full_like(y, np.nan)], 1)
    mask = np.stack([np.ones_like(y, bool), np.zeros_like(y, bool)], 1)
    m2 = ss.from_kernel(k, t, H=H2)
    for parallel in (False, True):
        ll = ss.kalman_filter(m2, Y, np.stack([r, r], 1), mask=mask, parallel=parallel)
        np.testing.assert_allclose(ll.log_likelihood, ref, rtol=1e-10)
    draws = ss.sample_posterior(jax.random.key(0), m2, Y, 0.1, mask=mask, sample_shape=(3,))
    assert draws.shape == (3, 30, 2)
    assert ss.sample_prior(jax.random.key(1), m2, (4,)).shape == (4, 30, 2)


def test_vector_observation_bad_input(x64, rng):
    t, y, _, _ = _data(rng, 10)
    k = Matern32(variance=VAR, lengthscale=LS)
    with pytest.raises(ValueError, match=r"`H` must be a measurement matrix of shape \(p, 2\)"):
        ss.from_kernel(k, t, H=jnp.eye(3))
    model = ss.from_kernel(k, t, H=jnp.eye(2))
    with pytest.raises(ValueError, match=r"`y` must have one vector of 2 values per time"):
        ss.kalman_filter(model, y, 0.1)
    with pytest.raises(ValueError, match=r"`noise` must be a scalar or have shape \(10,\) or"):
        ss.kalman_filter(model, np.zeros((10, 2)), np.ones((10, 3)))
    with pytest.raises(ValueError, match=r"`mask` must have shape \(10,\) or \(10, 2\)"):
        ss.kalman_filter(model, np.zeros((10, 2)), 0.1, mask=np.ones((10, 3), bool))
    scalar = ss.from_kernel(k, t)
    with pytest.raises(ValueError, match=r"`noise` must be a scalar or have shape \(10,\)"):
        ss.kalman_filter(scalar, y, np.ones((10, 2)))


# ------------------------------------------------------------------ sums and approximate RBF


@pytest.mark.parametrize("parallel", [False, True], ids=["seq", "par"])
def test_sum_kernel_matches_dense(parallel, x64, rng):
    """A sum of Matérn kernels (block-diagonal SDE, per-state closed-form rates) gives the
    dense GP's log-likelihood and posterior; the closed form equals the expm transition."""
    t, y, r, mask = _data(rng, 120)
    k = Matern32(variance=VAR, lengthscale=LS) + Matern12(variance=0.4, lengthscale=3.0)
    assert np.asarray(k.rate).shape == (3,)
    K = np.asarray(k(jnp.asarray(t), jnp.asarray(t)))
    ll_ref, mean_ref, var_ref = _dense_from_joint(K, y, r, mask)
    ll = ss.log_marginal_likelihood(k, t, y, r, mask=mask, parallel=parallel)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-9)
    pm = ss.posterior_marginals(k, t, y, r, mask=mask, parallel=parallel)
    np.testing.assert_allclose(pm.mean, mean_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pm.variance, var_ref, rtol=1e-7, atol=1e-9)
    dt = jnp.diff(jnp.asarray(t))
    closed = ss.discretize(k.sde(), dt, rate=k.rate)
    expm = ss.discretize(k.sde(), dt)
    np.testing.assert_allclose(closed[0], expm[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(closed[1], expm[1], rtol=1e-9, atol=1e-12)


def test_sum_kernel_component_posterior(x64, rng):
    """The smoother state of a sum holds each component: H_j padded by zeros reads its
    posterior mean, which equals the dense K_j (K + R)^{-1} y, and the parts add up."""
    t, y, r, _ = _data(rng, 60)
    k1, k2 = Matern52(variance=VAR, lengthscale=LS), Matern12(variance=0.3, lengthscale=0.2)
    k = k1 + k2
    model = ss.from_kernel(k, t)
    sr = ss.rts_smoother(model, ss.kalman_filter(model, y, r))
    H = np.asarray(model.H)[0]
    tt = jnp.asarray(t)
    alpha = np.linalg.solve(np.asarray(k(tt, tt)) + np.diag(r), y)
    parts = []
    for sl, kj in zip(k.component_slices(), (k1, k2), strict=True):
        hj = np.zeros_like(H)
        hj[sl] = H[sl]
        part = np.asarray(sr.means) @ hj
        np.testing.assert_allclose(part, np.asarray(kj(tt, tt)) @ alpha, rtol=1e-7, atol=1e-9)
        parts.append(part)
    np.testing.assert_allclose(parts[0] + parts[1], np.asarray(sr.means) @ H, rtol=1e-12)


def test_approximate_rbf_state_space(x64, rng):
    """RBF(...).sde(order=N) through from_sde: the filter equals the dense GP of the implied
    (approximate) covariance exactly, and the exact RBF GP within the approximation error."""
    t, y, r, _ = _data(rng, 80, span=6.0)
    k = RBF(variance=VAR, lengthscale=LS)
    sde = k.sde(order=6)
    model = ss.from_sde(sde, t)
    ll = ss.kalman_filter(model, y, r).log_likelihood
    F, P, h = np.asarray(sde.F), np.asarray(sde.Pinf), np.asarray(sde.H)[0]
    tau = np.abs(t[:, None] - t[None, :])
    K_approx = np.vectorize(lambda s: h @ scipy.linalg.expm(F * s) @ P @ h)(tau)
    ll_approx, _, _ = _dense_from_joint(K_approx, y, r, np.ones(len(t), bool))
    np.testing.assert_allclose(ll, ll_approx, rtol=1e-8)
    K_exact = np.asarray(k(jnp.asarray(t), jnp.asarray(t)))
    ll_exact, _, _ = _dense_from_joint(K_exact, y, r, np.ones(len(t), bool))
    assert abs(float(ll) - ll_exact) / abs(ll_exact) < 1e-2


# ---------------------------------------------------------------------------------------------
# Gaussian site potentials on R independent GPs


def _dense_sites(kernel, t, lam, eta):
    n, R = eta.shape
    with jax.enable_x64(True):
        K = np.asarray(kernel(jnp.asarray(t, jnp.float64), jnp.asarray(t, jnp.float64)))
    # state ordered (time, component): prior blockdiag over components
    prior = np.zeros((n * R, n * R))
    for r in range(R):
        prior[r::R, r::R] = K
    site = scipy.linalg.block_diag(*lam)
    cov = np.linalg.inv(np.linalg.inv(prior) + site)
    mean = cov @ eta.reshape(-1)
    covs = np.stack([cov[k * R : (k + 1) * R, k * R : (k + 1) * R] for k in range(n)])
    return mean.reshape(n, R), covs


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel_cls", [Matern12, Matern32])
def test_smooth_gaussian_sites_matches_dense(rng, dtype, kernel_cls, parallel):
    n, R = 9, 3
    t = np.sort(rng.uniform(0.0, 3.0, n))
    b = rng.standard_normal((n, R, 2))
    lam = b @ np.swapaxes(b, 1, 2)  # rank-2 site precisions: singular on purpose
    lam[4] = 0.0  # a site with no information (a prediction point)
    eta = rng.standard_normal((n, R))
    eta[4] = 0.0
    kernel = kernel_cls(variance=1.3, lengthscale=0.7)
    want_m, want_c = _dense_sites(kernel, t, lam, eta)
    with jax.enable_x64(dtype == "float64"):
        fn = jax.jit(functools.partial(ss.smooth_gaussian_sites, parallel=parallel))
        mean, cov = fn(kernel, t.astype(dtype), lam.astype(dtype), eta.astype(dtype))
        assert mean.dtype == jnp.dtype(dtype)
    tol = {k: 10 * v for k, v in TOL[dtype].items()}
    np.testing.assert_allclose(np.asarray(mean), want_m, **tol)
    np.testing.assert_allclose(np.asarray(cov), want_c, **tol)


def test_smooth_gaussian_sites_gradient_and_errors(x64, rng):
    n, R = 6, 2
    t = np.linspace(0.0, 1.0, n)
    lam = np.tile(np.eye(R), (n, 1, 1)) * 2.0
    eta = rng.standard_normal((n, R))

    def loss(e, ls):
        mean, cov = ss.smooth_gaussian_sites(Matern32(1.0, ls), t, lam, e)
        return jnp.sum(mean**2) + jnp.sum(cov)

    check_grads(jax.jit(loss), (jnp.asarray(eta), 0.5), order=1, modes=["rev"])

    def loss_par(e):
        mean, cov = ss.smooth_gaussian_sites(Matern12(1.0, 0.5), t[:3], lam[:3], e, parallel=True)
        return jnp.sum(mean**2) + jnp.sum(cov)

    check_grads(jax.jit(loss_par), (jnp.asarray(eta[:3]),), order=1, modes=["rev"])
    with pytest.raises(ValueError, match="parallel"):
        ss.smooth_gaussian_sites(Matern12(1.0, 1.0), t, lam, eta, parallel="yes")
    with pytest.raises(ValueError, match="`precision` must have shape"):
        ss.smooth_gaussian_sites(Matern12(1.0, 1.0), t, lam[:-1], eta)
    with pytest.raises(ValueError, match="`shift` must have shape"):
        ss.smooth_gaussian_sites(Matern12(1.0, 1.0), t, lam, eta[:, :1])
    with pytest.raises(ValueError, match="strictly increasing"):
        ss.smooth_gaussian_sites(Matern12(1.0, 1.0), t[::-1], lam, eta)


def _dense_site_evidence(kernel, t, lam, eta):
    n, R = eta.shape
    with jax.enable_x64(True):
        K = np.asarray(kernel(jnp.asarray(t, jnp.float64), jnp.asarray(t, jnp.float64)))
    prior = np.zeros((n * R, n * R))
    for r in range(R):
        prior[r::R, r::R] = K
    site = scipy.linalg.block_diag(*lam)
    e = eta.reshape(-1)
    G = np.eye(n * R) + prior @ site
    _, logdet = np.linalg.slogdet(G)
    return -0.5 * logdet + 0.5 * e @ (prior @ np.linalg.solve(np.eye(n * R) + site @ prior, e))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel_cls", [Matern12, Matern32])
def test_gaussian_sites_log_evidence_matches_dense(rng, dtype, kernel_cls):
    n, R = 9, 3
    t = np.sort(rng.uniform(0.0, 3.0, n))
    b = rng.standard_normal((n, R, 2))
    lam = b @ np.swapaxes(b, 1, 2)  # singular site precisions
    lam[4] = 0.0
    eta = rng.standard_normal((n, R))
    eta[4] = 0.0
    kernel = kernel_cls(variance=1.3, lengthscale=0.7)
    want = _dense_site_evidence(kernel, t, lam, eta)
    with jax.enable_x64(dtype == "float64"):
        got = jax.jit(ss.gaussian_sites_log_evidence)(
            kernel, t.astype(dtype), lam.astype(dtype), eta.astype(dtype)
        )
        assert got.dtype == jnp.dtype(dtype)
    rtol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(float(got), want, rtol=rtol, atol=10 * rtol)


def test_gaussian_sites_log_evidence_gradient_and_errors(x64, rng):
    n, R = 7, 2
    t = np.linspace(0.0, 1.0, n)
    b = rng.standard_normal((n, R, R))
    lam = b @ np.swapaxes(b, 1, 2) + 0.1 * np.eye(R)
    eta = rng.standard_normal((n, R))

    def fn(log_ls, log_var):
        k = Matern32(jnp.exp(log_var), jnp.exp(log_ls))
        return ss.gaussian_sites_log_evidence(k, t, lam, eta)

    check_grads(jax.jit(fn), (np.log(0.3), np.log(1.5)), order=1, modes=["rev"])
    # the gradient is the dense twin's (finite differences of the dense formula)
    g = jax.grad(fn)(np.log(0.3), 0.0)
    h = 1e-6
    dense = [_dense_site_evidence(Matern32(1.0, np.exp(np.log(0.3) + s)), t, lam, eta)
             for s in (h, -h)]  # fmt: skip
    np.testing.assert_allclose(float(g), (dense[0] - dense[1]) / (2 * h), rtol=1e-5)
    with pytest.raises(ValueError, match="`precision` must have shape"):
        ss.gaussian_sites_log_evidence(Matern12(1.0, 1.0), t, lam[:-1], eta)
    with pytest.raises(ValueError, match="`shift` must have shape"):
        ss.gaussian_sites_log_evidence(Matern12(1.0, 1.0), t, lam, eta[:, :1])
    with pytest.raises(ValueError, match="strictly increasing"):
        ss.gaussian_sites_log_evidence(Matern12(1.0, 1.0), t[::-1], lam, eta)
