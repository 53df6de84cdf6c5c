"""KroneckerNormal against numpyro's dense MultivariateNormal, and inside NUTS/SVI."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, autoguide

from bayeslr.distributions import KroneckerNormal
from bayeslr.linalg.kron import kron_dense, kron_outer
from tests.conftest import rbf

X1, X2 = np.linspace(0, 1, 6), np.linspace(0, 1, 5)


def _factors(dtype, ls=(0.3, 0.4)):
    return tuple(
        rbf(jnp.asarray(x, dtype), l) + 1e-4 * jnp.eye(len(x), dtype=dtype)
        for x, l in zip((X1, X2), ls, strict=True)
    )


def _dense_mvn(fs, noise, loc):
    n = 30
    d = jnp.diag(kron_outer(list(noise)).reshape(-1)) if isinstance(noise, tuple) else noise
    cov = kron_dense(fs) + d * (jnp.eye(n) if not isinstance(noise, tuple) else 1.0)
    return dist.MultivariateNormal(jnp.broadcast_to(loc, (6, 5)).reshape(-1), cov)


@pytest.mark.parametrize("noise_kind", ["scalar", "axis"])
def test_log_prob_matches_dense_mvn(rng, dtype, tol, noise_kind):
    fs = _factors(dtype)
    noise = (
        jnp.asarray(0.2, dtype)
        if noise_kind == "scalar"
        else (
            jnp.asarray(rng.uniform(0.1, 0.5, 6), dtype),
            jnp.asarray(rng.uniform(0.1, 1, 5), dtype),
        )
    )
    loc = jnp.asarray(rng.standard_normal((6, 5)), dtype)
    d = KroneckerNormal(fs, noise, loc)
    assert d.event_shape == (6, 5) and d.batch_shape == ()
    ref = _dense_mvn(fs, noise, loc)
    y = jnp.asarray(rng.standard_normal((3, 6, 5)), dtype)
    lp = jax.jit(lambda d, y: d.log_prob(y))(d, y)
    assert lp.shape == (3,)
    np.testing.assert_allclose(lp, ref.log_prob(y.reshape(3, -1)), rtol=tol["rtol"], atol=1e-3)


def test_batched_loc(rng, x64):
    fs = _factors("float64")
    loc = jnp.asarray(rng.standard_normal((4, 6, 5)))
    d = KroneckerNormal(fs, 0.3, loc)
    assert d.batch_shape == (4,)
    y = jnp.asarray(rng.standard_normal((2, 4, 6, 5)))
    want = dist.MultivariateNormal(loc.reshape(4, -1), kron_dense(fs) + 0.3 * jnp.eye(30))
    np.testing.assert_allclose(d.log_prob(y), want.log_prob(y.reshape(2, 4, -1)), rtol=1e-10)
    assert d.sample(jax.random.PRNGKey(0), (7,)).shape == (7, 4, 6, 5)


def test_masked_log_prob_scores_observed_cells_only(rng, dtype, tol):
    fs = _factors(dtype)
    observed = rng.uniform(size=(6, 5)) > 0.3
    o = observed.reshape(-1)
    y = jnp.asarray(rng.standard_normal((6, 5)), dtype)
    d = KroneckerNormal(fs, 0.2, 0.5, observed=observed)
    cov = np.asarray(kron_dense(fs), np.float64) + 0.2 * np.eye(30)
    ref = dist.MultivariateNormal(0.5 * jnp.ones(o.sum()), jnp.asarray(cov[np.ix_(o, o)], dtype))
    lp = d.log_prob(jnp.where(jnp.asarray(observed), y, jnp.nan))
    np.testing.assert_allclose(lp, ref.log_prob(y.reshape(-1)[o]), rtol=tol["rtol"], atol=1e-3)


def test_log_prob_gradients_match_dense(rng, x64):
    y = jnp.asarray(rng.standard_normal((6, 5)))

    def lp(params, structured):
        ls, s2, loc = params
        fs = _factors("float64", ls)
        if structured:
            return KroneckerNormal(fs, s2, loc).log_prob(y)
        return _dense_mvn(fs, s2, loc).log_prob(y.reshape(-1))

    params = (jnp.array([0.3, 0.45]), jnp.asarray(0.2), jnp.asarray(0.1))
    g = jax.grad(lp)(params, True)
    gd = jax.grad(lp)(params, False)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gd), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sample_moments(x64):
    fs = _factors("float64")
    d = KroneckerNormal(fs, 0.2, 1.0)
    s = np.asarray(d.sample(jax.random.PRNGKey(0), (20_000,))).reshape(20_000, -1)
    cov = np.asarray(kron_dense(fs)) + 0.2 * np.eye(30)
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / 20_000)
    assert np.all(np.abs(np.cov(s.T) - cov) < 5 * se)
    assert np.all(np.abs(s.mean(0) - 1.0) < 5 * np.sqrt(np.diag(cov) / 20_000))
    np.testing.assert_allclose(d.variance.reshape(-1), np.diag(cov))


def _model(y=None):
    ls = numpyro.sample("ls", dist.LogNormal(jnp.log(0.3), 0.3).expand([2]).to_event(1))
    s2 = numpyro.sample("s2", dist.HalfNormal(0.5))
    fs = (rbf(jnp.asarray(X1), ls[0]), rbf(jnp.asarray(X2), ls[1]))
    numpyro.sample("y", KroneckerNormal(fs, s2), obs=y)


@pytest.mark.slow
def test_usable_with_nuts_and_svi():
    y = KroneckerNormal(_factors("float32"), 0.05).sample(jax.random.PRNGKey(1))
    mcmc = MCMC(NUTS(_model), num_warmup=150, num_samples=150, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), y)
    s2 = mcmc.get_samples()["s2"]
    assert np.all(np.isfinite(s2)) and mcmc.get_extra_fields()["diverging"].sum() < 10
    assert 0.005 < float(np.median(s2)) < 0.5
    draws = Predictive(_model, mcmc.get_samples())(jax.random.PRNGKey(2))["y"]
    assert draws.shape == (150, 6, 5) and np.all(np.isfinite(draws))
    svi = SVI(_model, autoguide.AutoNormal(_model), optax.adam(0.05), Trace_ELBO())
    res = svi.run(jax.random.PRNGKey(0), 200, y, progress_bar=False)
    assert np.all(np.isfinite(res.losses)) and res.losses[-20:].mean() < res.losses[:20].mean()


def test_predict_matches_dense_conditional(rng, x64):
    fs = _factors("float64")
    y = jnp.asarray(rng.standard_normal((6, 5)))
    d = KroneckerNormal(fs, 0.1, 0.3)
    mean, var = d.predict(y)
    kd = np.asarray(kron_dense(fs))
    a = kd + 0.1 * np.eye(30)
    np.testing.assert_allclose(mean.reshape(-1), 0.3 + kd @ np.linalg.solve(a, y.reshape(-1) - 0.3))
    np.testing.assert_allclose(
        var.reshape(-1), np.diag(kd - kd @ np.linalg.solve(a, kd)), atol=1e-10
    )


def test_distribution_bad_input(rng):
    fs = _factors("float32")
    with pytest.raises(ValueError, match=r"`loc`.*grid = \(6, 5\)"):
        KroneckerNormal(fs, 0.1, jnp.zeros((5, 6)))
    with pytest.raises(ValueError, match=r"`noise`.*non-negative"):
        KroneckerNormal(fs, -0.1)
    with pytest.raises(ValueError, match=r"`noise`.*general diagonal"):
        KroneckerNormal(fs, jnp.ones((6, 5)))
    with pytest.raises(ValueError, match=r"`loc`.*finite"):
        KroneckerNormal(fs, 0.1, jnp.full((6, 5), jnp.nan))
    with pytest.raises(ValueError, match=r"factors\[0\].*square"):
        KroneckerNormal((jnp.ones((6, 5)), fs[1]), 0.1)
    with pytest.raises(ValueError, match=r"`value`.*one grid array"):
        KroneckerNormal(fs, 0.1).predict(jnp.zeros((2, 6, 5)))


def test_vmap_over_hyperparameters_matches_loop(rng, x64):
    y = jnp.asarray(rng.standard_normal((6, 5)))
    observed = rng.uniform(size=(6, 5)) > 0.2

    def lp(ls, s2):
        return KroneckerNormal(_factors("float64", ls), s2, observed=observed).log_prob(y)

    ls = jnp.array([[0.2, 0.3], [0.4, 0.5], [0.3, 0.3]])
    s2 = jnp.array([0.1, 0.2, 0.3])
    batched = jax.vmap(lp)(ls, s2)
    looped = jnp.stack([lp(a, b) for a, b in zip(ls, s2, strict=True)])
    np.testing.assert_allclose(batched, looped, rtol=1e-10)
    g = jax.vmap(jax.grad(lp, argnums=(0, 1)))(ls, s2)
    assert all(np.all(np.isfinite(a)) for a in g)
