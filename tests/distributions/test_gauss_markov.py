"""GaussMarkovGP against numpyro's dense MultivariateNormal, and inside NUTS/SVI."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, autoguide

from bayeslr.distributions.gauss_markov import GaussMarkovGP
from bayeslr.gp import RBF, Matern12, Matern32, Matern52

VAR, LS = 1.3, 0.8


def _times(rng, n, span=4.0):
    t = np.cumsum(rng.exponential(1.0, n) + 1e-2)
    return span * (t - t[0]) / (t[-1] - t[0])


def _dense_logpdf(kernel_cls, t, noise, y):
    """float64 numpy reference log N(y | 0, K + R) for y of shape (..., n)."""
    with jax.enable_x64(True):
        tt = jnp.asarray(np.asarray(t, np.float64))
        K = np.asarray(kernel_cls(variance=VAR, lengthscale=LS)(tt, tt))
    C = K + np.diag(np.broadcast_to(np.asarray(noise, np.float64), K.shape[:1]))
    yf = np.asarray(y, np.float64).reshape(-1, len(C))
    quad = np.einsum("bi,bi->b", yf, np.linalg.solve(C, yf.T).T).reshape(np.shape(y)[:-1])
    return -0.5 * (quad + np.linalg.slogdet(C)[1] + len(C) * np.log(2 * np.pi)), C


def _dense_dist(kernel_cls, variance, lengthscale, t, noise):
    k = kernel_cls(variance=variance, lengthscale=lengthscale)
    K = k(t, t) + jnp.diag(jnp.broadcast_to(noise, t.shape))
    return dist.MultivariateNormal(jnp.zeros(t.shape[0], K.dtype), covariance_matrix=K)


@pytest.mark.parametrize("kernel_cls", [Matern12, Matern52], ids=lambda c: c.__name__)
def test_log_prob_matches_dense(kernel_cls, dtype, tol, rng):
    """Batched values (vmap over leading dims), per-time noise; float64 tight, float32 by tol."""
    n = 40
    t = jnp.asarray(_times(rng, n), dtype)
    r = jnp.asarray(rng.uniform(0.05, 0.5, n), dtype)
    y = jnp.asarray(rng.standard_normal((2, 3, n)), dtype)
    d = GaussMarkovGP(kernel_cls(variance=VAR, lengthscale=LS), t, r)
    assert d.event_shape == (n,) and d.batch_shape == ()
    lp = jax.jit(lambda d, y: d.log_prob(y))(d, y)
    assert lp.shape == (2, 3) and lp.dtype == jnp.dtype(dtype)
    ref, _ = _dense_logpdf(kernel_cls, t, r, y)
    rtol = 1e-10 if dtype == "float64" else tol["rtol"]
    np.testing.assert_allclose(lp, ref, rtol=rtol)
    np.testing.assert_allclose(d.variance, VAR + np.asarray(r), rtol=tol["rtol"])
    np.testing.assert_array_equal(d.mean, np.zeros(n))


def test_masked_log_prob_is_marginal(x64, rng):
    """With a mask, log_prob is the dense density of the observed entries (NaN elsewhere ok)."""
    n = 30
    t = _times(rng, n)
    y = rng.standard_normal(n)
    mask = rng.uniform(size=n) < 0.6
    d = GaussMarkovGP(Matern32(variance=VAR, lengthscale=LS), t, 0.2, mask=mask)
    lp = jax.jit(lambda d, y: d.log_prob(y))(d, np.where(mask, y, np.nan))
    ref, _ = _dense_logpdf(Matern32, t[mask], 0.2, y[mask])
    np.testing.assert_allclose(lp, ref, rtol=1e-10)


def test_gradients_match_dense(x64, rng):
    n = 25
    t = jnp.asarray(_times(rng, n))
    y = jnp.asarray(rng.standard_normal(n))

    def lp(v, ls, noise, y):
        return GaussMarkovGP(Matern32(variance=v, lengthscale=ls), t, noise).log_prob(y)

    def lp_dense(v, ls, noise, y):
        return _dense_dist(Matern32, v, ls, t, noise).log_prob(y)

    args = (jnp.asarray(VAR), jnp.asarray(LS), jnp.asarray(0.3), y)
    g = jax.jit(jax.grad(lp, argnums=(0, 1, 2, 3)))(*args)
    g_ref = jax.jit(jax.grad(lp_dense, argnums=(0, 1, 2, 3)))(*args)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_sample_moments(x64, rng):
    """Draws have mean 0 and covariance K + R within 5 standard errors."""
    n, S = 10, 20000
    t = _times(rng, n, span=2.0)
    d = GaussMarkovGP(Matern52(variance=VAR, lengthscale=LS), t, 0.3)
    s = np.asarray(jax.jit(lambda k: d.sample(k, (S,)))(jax.random.key(0)))
    assert s.shape == (S, n)
    _, cov = _dense_logpdf(Matern52, t, 0.3, np.zeros(n))
    var = np.diag(cov)
    assert np.all(np.abs(s.mean(0)) <= 5 * np.sqrt(var / S))
    emp = s.T @ s / S
    assert np.all(np.abs(emp - cov) <= 5 * np.sqrt((np.outer(var, var) + cov**2) / S))
    assert d.sample(jax.random.key(1)).shape == (n,)


def test_predict_matches_dense(x64, rng):
    n = 20
    t = _times(rng, n)
    y = rng.standard_normal(n)
    mask = rng.uniform(size=n) < 0.7
    k = Matern32(variance=VAR, lengthscale=LS)
    d = GaussMarkovGP(k, t, 0.2, mask=mask)
    new = np.array([-1.0, 0.37, t[3], 5.5])
    o = mask
    K_oo = np.asarray(k(t[o], t[o])) + 0.2 * np.eye(o.sum())
    on_data = jax.jit(lambda y: d.predict(y))(np.where(mask, y, np.nan))
    off_data = jax.jit(lambda y: d.predict(y, new))(y)
    for pts, pm in [(t, on_data), (new, off_data)]:
        K_xo = np.asarray(k(jnp.asarray(pts), jnp.asarray(t[o])))
        mean = K_xo @ np.linalg.solve(K_oo, y[o])
        var = VAR - np.sum(K_xo * np.linalg.solve(K_oo, K_xo.T).T, axis=1)
        np.testing.assert_allclose(pm.mean, mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(pm.variance, var, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match=r"`value` must be one series of shape \(20,\)"):
        d.predict(np.zeros((2, n)))


def _model(t, y=None):
    s2 = numpyro.sample("s2", dist.LogNormal(0.0, 0.5))
    ell = numpyro.sample("ell", dist.LogNormal(0.0, 0.5))
    noise = numpyro.sample("noise", dist.LogNormal(-2.0, 0.5))
    k = Matern32(variance=s2, lengthscale=ell)
    return numpyro.sample("y", GaussMarkovGP(k, t, noise), obs=y)


def _synthetic(n):
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, n))
    y = np.sin(t) + 0.2 * rng.standard_normal(n)
    return t, y


def test_svi_loss_decreases():
    t, y = _synthetic(50)
    svi = SVI(_model, autoguide.AutoNormal(_model), optax.adam(0.05), Trace_ELBO())
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), t, y)
    update = jax.jit(svi.update)
    losses = []
    for _ in range(150):
        state, loss = update(state, t, y)
        losses.append(float(loss))
    losses = np.array(losses)
    assert np.all(np.isfinite(losses)) and losses[-20:].mean() < losses[:20].mean() - 10.0
    params = svi.get_params(state)
    assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(params))


@pytest.mark.slow
def test_nuts():
    t, y = _synthetic(50)
    mcmc = MCMC(NUTS(_model), num_warmup=100, num_samples=100, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), t, y, extra_fields=("diverging",))
    samples = mcmc.get_samples()
    assert all(np.all(np.isfinite(v)) for v in samples.values())
    assert mcmc.get_extra_fields()["diverging"].sum() < 10
    # Noise sd 0.2 -> variance 0.04; the posterior median should be near it.
    assert 0.01 < float(np.median(samples["noise"])) < 0.15


def test_bad_input_raises():
    k = Matern32(variance=VAR, lengthscale=LS)
    t = np.array([0.0, 1.0, 2.5, 3.0])
    with pytest.raises(ValueError, match=r"`times` must be strictly increasing.*not sorted"):
        GaussMarkovGP(k, t[[0, 2, 1, 3]], 0.1)
    with pytest.raises(ValueError, match=r"`times`.*duplicated"):
        GaussMarkovGP(k, np.array([0.0, 1.0, 1.0, 3.0]), 0.1)
    with pytest.raises(ValueError, match=r"`times` must be finite"):
        GaussMarkovGP(k, np.array([0.0, np.inf, 2.0, 3.0]), 0.1)
    with pytest.raises(ValueError, match=r"`noise` must be strictly positive"):
        GaussMarkovGP(k, t, -0.1)
    with pytest.raises(ValueError, match=r"`noise` must be a scalar or have shape \(4,\)"):
        GaussMarkovGP(k, t, np.full(3, 0.1))
    with pytest.raises(ValueError, match=r"`mask` must be a boolean"):
        GaussMarkovGP(k, t, 0.1, mask=np.ones(4))
    with pytest.raises(ValueError, match=r"`mask` must have shape \(4,\)"):
        GaussMarkovGP(k, t, 0.1, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"no exact|sde"):
        GaussMarkovGP(RBF(variance=1.0, lengthscale=1.0), t, 0.1)
    with pytest.raises(ValueError, match=r"`parallel` must be a Python bool"):
        GaussMarkovGP(k, t, 0.1, parallel=1)
    with pytest.raises(ValueError, match=r"`value` must have shape \(\*batch, 4\)"):
        GaussMarkovGP(k, t, 0.1).log_prob(np.zeros(5))


def test_numpyro_mask_handler_and_fit_predictive(rng):
    """`Distribution.mask()` is NumPyro's method (used by handlers and `Predictive`), not
    shadowed by the data mask: `handlers.mask` works, and `fit(..., "svi")` builds its
    posterior predictive through it."""
    from numpyro import handlers

    from bayeslr.infer import fit

    t = np.sort(rng.uniform(0.0, 5.0, 40))
    y = np.sin(t) + 0.1 * rng.standard_normal(40)
    d = GaussMarkovGP(Matern32(1.0, 0.5) + Matern12(0.1, 0.05), t, 0.05)
    masked = d.mask(False)
    assert float(masked.log_prob(jnp.asarray(y))) == 0.0
    with handlers.trace() as tr, handlers.seed(rng_seed=0), handlers.mask(mask=False):
        numpyro.sample("y", d, obs=jnp.asarray(y))
    assert float(tr["y"]["fn"].log_prob(jnp.asarray(y))) == 0.0

    def model(t, y=None):
        s2 = numpyro.sample("s2", dist.HalfNormal(1.0))
        numpyro.sample("y", GaussMarkovGP(Matern32(s2, 0.5), t, 0.05), obs=y)

    post = fit(model, t, y, method="svi", num_steps=50, num_samples=20, progress_bar=False)
    pred = post.predict(t)["y"]
    assert pred.shape == (20, 40) and np.all(np.isfinite(pred))
