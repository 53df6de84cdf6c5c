"""Posterior without any fitting: exact conjugate draws wrapped with ``Posterior.from_samples``.

Model: :math:`\\mu \\sim N(0, s_0^2)`, :math:`y_t \\sim N(\\mu, s^2)` with known :math:`s`, so
the posterior, the posterior predictive, the pointwise log-likelihood and even the exact
leave-one-out predictive densities are closed-form references.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from bayeslr.infer.posterior import Posterior, inspect_model

S0, S = 3.0, 0.5
N, DRAWS = 12, 4000


def model(t, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, S0))
    numpyro.deterministic("mu2", 2.0 * mu)
    with numpyro.plate("time", t.shape[0]):
        numpyro.sample("y", dist.Normal(mu + 0.0 * t, S), obs=y)


def exact_posterior(y):
    prec = 1 / S0**2 + len(y) / S**2
    return float(np.sum(y) / S**2 / prec), float(1 / prec)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    t = np.linspace(0.0, 1.0, N)
    y = 1.3 + S * rng.standard_normal(N)
    return t, y


@pytest.fixture(scope="module")
def post(data):
    t, y = data
    m, v = exact_posterior(y)
    draws = m + np.sqrt(v) * np.random.default_rng(0).standard_normal(DRAWS)
    return Posterior.from_samples(
        {"mu": draws, "mu2": 2 * draws},
        model,
        (t, y),
        group_by_chain=False,
        dims={"y": ["time"]},
        coords={"time": t},
        method="exact",
        extra={"note": "closed form"},
    )


def test_from_samples_adds_a_chain_axis(post):
    assert post.num_chains == 1 and post.num_draws == DRAWS
    assert post.samples["mu"].shape == (1, DRAWS)
    assert post.get_samples()["mu"].shape == (DRAWS,)
    assert post.get_samples(group_by_chain=True)["mu"].shape == (1, DRAWS)
    assert post.method == "exact" and post.extra["note"] == "closed form"
    assert "exact" in repr(post) and "mu" in repr(post)
    assert post.sample_stats == {} and post.guide is None and post.losses is None


def test_to_arviz_groups_dims_coords(post, data):
    t, y = data
    tree = post.to_arviz()
    assert set(tree.children) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
    }
    assert set(tree["posterior"].data_vars) == {"mu", "mu2"}
    assert tree["posterior"]["mu"].dims == ("chain", "draw")
    for group in ("posterior_predictive", "log_likelihood"):
        assert tree[group]["y"].dims == ("chain", "draw", "time")
    assert tree["observed_data"]["y"].dims == ("time",)
    np.testing.assert_allclose(tree["observed_data"]["time"].values, t)
    np.testing.assert_allclose(tree["observed_data"]["y"].values, y)
    assert tree.attrs["method"] == "exact"
    assert post.to_arviz() is tree  # cached


def test_log_likelihood_is_pointwise_normal_logpdf(post, data):
    _, y = data
    ll = np.asarray(post.to_arviz()["log_likelihood"]["y"].values)
    mu = post.samples["mu"]
    ref = stats.norm.logpdf(y[None, None, :], mu[..., None], S)
    np.testing.assert_allclose(ll, ref, rtol=1e-4, atol=1e-4)


def test_loo_matches_exact_leave_one_out(post, data):
    _, y = data
    loo = az.loo(post.to_arviz())
    exact = 0.0
    for i in range(N):
        m, v = exact_posterior(np.delete(y, i))
        exact += stats.norm.logpdf(y[i], m, np.sqrt(v + S**2))
    assert abs(float(loo["elpd"]) - exact) < 0.05


def test_posterior_predictive_moments(post, data):
    _, y = data
    m, v = exact_posterior(y)
    pp = np.asarray(post.to_arviz()["posterior_predictive"]["y"].values).reshape(-1, N)
    se = np.sqrt((v + S**2) / DRAWS)
    assert np.all(np.abs(pp.mean(0) - m) < 5 * se)
    np.testing.assert_allclose(pp.var(0).mean(), v + S**2, rtol=0.05)


def test_predict_at_new_inputs(post, data):
    t, y = data
    t_new = np.linspace(2.0, 3.0, 5)
    pred = post.predict(t_new)
    assert set(pred) == {"y", "mu2"}
    assert pred["y"].shape == (DRAWS, 5)
    np.testing.assert_allclose(pred["mu2"], 2 * post.get_samples()["mu"], rtol=1e-6)
    grouped = post.predict(t_new, rng_key=3, group_by_chain=True)
    assert grouped["y"].shape == (1, DRAWS, 5)
    only_y = post.predict(t_new, return_sites=["y"])
    assert set(only_y) == {"y"}
    # observed data passed to predict is redrawn, not echoed back
    redrawn = post.predict(t, y)["y"]
    assert redrawn.shape == (DRAWS, N)
    assert not np.allclose(redrawn[0], y)


def test_predict_keys(post):
    t_new = np.zeros(3)
    a = post.predict(t_new, rng_key=5)["y"]
    b = post.predict(t_new, rng_key=jax.random.PRNGKey(5))["y"]
    c = post.predict(t_new, rng_key=jax.random.key(5))["y"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, post.predict(t_new, rng_key=6)["y"])
    with pytest.raises(TypeError, match="rng_key"):
        post.predict(t_new, rng_key="seed")


def test_summary_columns_and_values(post):
    df = post.summary()
    assert list(df.index) == ["mu", "mu2"]
    for col in ("mean", "sd", "ess_bulk", "ess_tail", "r_hat"):
        assert col in df.columns
    assert any(c.startswith("hdi") and c.endswith("_lb") for c in df.columns)
    assert any(c.startswith("hdi") and c.endswith("_ub") for c in df.columns)
    mu = post.samples["mu"]
    np.testing.assert_allclose(float(df.loc["mu", "mean"]), mu.mean(), atol=1e-3)
    np.testing.assert_allclose(float(df.loc["mu", "sd"]), mu.std(), rtol=1e-2)


def test_grouped_samples_with_stats(data):
    t, y = data
    draws = np.random.default_rng(1).standard_normal((3, 50))
    stats_ = {"lp": -np.ones((3, 50)), "diverging": np.zeros((3, 50), bool)}
    post = Posterior.from_samples({"mu": draws}, model, (t, y), sample_stats=stats_)
    tree = post.to_arviz(posterior_predictive=False, log_likelihood=False)
    assert set(tree.children) == {"posterior", "sample_stats", "observed_data"}
    assert tree["sample_stats"]["lp"].shape == (3, 50)
    assert tree["posterior"].sizes["chain"] == 3


def test_without_model():
    post = Posterior.from_samples(
        {"w": np.zeros((2, 10, 4))}, observed={"y": np.arange(4.0)}, dims={"w": ["feature"]}
    )
    tree = post.to_arviz()
    assert set(tree.children) == {"posterior", "observed_data"}
    assert tree["posterior"]["w"].dims == ("chain", "draw", "feature")
    with pytest.raises(ValueError, match="model"):
        post.predict(np.zeros(3))
    with pytest.raises(ValueError, match="model"):
        post.log_likelihood()


@pytest.mark.parametrize(
    "samples, kwargs, err, match",
    [
        ({}, {}, ValueError, "at least one site"),
        ({"a": np.zeros(5)}, {}, ValueError, r"\(chain, draw"),
        ({"a": np.zeros((2, 5)), "b": np.zeros((2, 4))}, {}, ValueError, "leading"),
        ({"a": np.zeros((0, 5))}, {}, ValueError, "at least one chain"),
        ([np.zeros((2, 5))], {}, TypeError, "dict"),
        ({"a": np.zeros(())}, {"group_by_chain": False}, ValueError, r"\(draw"),
        (
            {"a": np.zeros((2, 5))},
            {"sample_stats": {"lp": np.zeros((2, 6))}},
            ValueError,
            "sample_stats",
        ),
        ({"a": np.zeros((2, 5))}, {"dims": {"a": "time"}}, TypeError, "dims"),
        ({"a": np.zeros((2, 5))}, {"coords": [1, 2]}, TypeError, "coords"),
        ({"a": np.zeros((2, 5))}, {"model": 3}, TypeError, "model"),
        ({"a": np.zeros((2, 5))}, {"group_by_chain": 1}, TypeError, "group_by_chain"),
    ],
)
def test_from_samples_rejects_bad_input(samples, kwargs, err, match):
    with pytest.raises(err, match=match):
        Posterior.from_samples(samples, **kwargs)


def test_inspect_model_sorts_sites(data):
    t, y = data
    sites = inspect_model(model, (t, y))
    assert sites["latent"] == ["mu"]
    assert sites["deterministic"] == ["mu2"]
    np.testing.assert_array_equal(sites["observed"]["y"], y)
    assert inspect_model(model, (t,))["observed"] == {}


def test_auxiliary_sites_are_not_latent():
    def reparam_model():
        numpyro.sample("aux", dist.Normal(), infer={"is_auxiliary": True})
        numpyro.sample("z", dist.Normal(jnp.zeros(2)).to_event(1))

    assert inspect_model(reparam_model)["latent"] == ["z"]
