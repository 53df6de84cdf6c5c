r"""``fit`` for every method on a Normal–Gamma model with a closed-form posterior.

Model: :math:`\tau \sim \mathrm{Gamma}(a_0, b_0)`, :math:`\mu \mid \tau \sim N(m_0, 1/(k_0\tau))`,
:math:`y_t \sim N(\mu, 1/\tau)`. Posterior: :math:`\tau \sim \mathrm{Gamma}(a_n, b_n)`,
:math:`\mu \mid \tau \sim N(m_n, 1/(k_n \tau))`, so :math:`E[\mu] = m_n`,
:math:`\mathrm{Var}[\mu] = b_n / ((a_n - 1) k_n)`, :math:`E[\tau] = a_n / b_n`.
"""

import sys
import types

import arviz as az
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, TraceMeanField_ELBO
from numpyro.infer.util import potential_energy

from bayeslr.infer.fit import EarlyStopping, fit
from bayeslr.infer.posterior import SAMPLE_STATS_NAMES

A0, B0, M0, K0 = 2.0, 2.0, 0.0, 0.5
N = 20
T = np.arange(N, dtype=np.float64)
Y = 1.0 + 0.7 * np.random.default_rng(0).standard_normal(N)
MCMC = dict(num_warmup=300, num_samples=500, num_chains=2)
MCMC_METHODS = ("nuts", "blackjax-nuts")


def ng_model(t, y=None):
    tau = numpyro.sample("tau", dist.Gamma(A0, B0))
    mu = numpyro.sample("mu", dist.Normal(M0, 1.0 / jnp.sqrt(K0 * tau)))
    numpyro.deterministic("sigma", 1.0 / jnp.sqrt(tau))
    with numpyro.plate("time", t.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0 / jnp.sqrt(tau)), obs=y)


def exact(y=Y):
    n, ybar = len(y), float(np.mean(y))
    kn = K0 + n
    mn = (K0 * M0 + n * ybar) / kn
    an = A0 + n / 2
    bn = B0 + 0.5 * float(np.sum((y - ybar) ** 2)) + K0 * n * (ybar - M0) ** 2 / (2 * kn)
    return {"mu": mn, "mu_sd": np.sqrt(bn / ((an - 1) * kn)), "tau": an / bn}


_FITS: dict = {}


def fitted(method):
    """One fit per method and test process (fits are the expensive part)."""
    if method not in _FITS:
        opts = MCMC if method in MCMC_METHODS else dict(num_steps=3000, num_samples=1000)
        _FITS[method] = fit(
            ng_model,
            T,
            Y,
            method=method,
            seed=1,
            progress_bar=False,
            dims={"y": ["time"]},
            coords={"time": T},
            **opts,
        )
    return _FITS[method]


def _mean_mcse(post, name):
    tree = post.to_arviz(posterior_predictive=False, log_likelihood=False)
    mcse = float(az.mcse(tree, var_names=[name])[name])
    return float(np.mean(post.samples[name])), mcse


# --------------------------------------------------------------------------------------------
# checks shared by the methods (helpers, so that each fit is made once per test process)


def check_arviz(post, method):
    """Groups, dims/coords and az.loo of ``post.to_arviz()``."""
    tree = post.to_arviz()
    groups = {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    if method in MCMC_METHODS:
        groups.add("sample_stats")
    assert set(tree.children) == groups, method
    chains = MCMC["num_chains"] if method in MCMC_METHODS else 1
    draws = MCMC["num_samples"] if method in MCMC_METHODS else 1000
    assert set(tree["posterior"].data_vars) == {"mu", "tau", "sigma"}
    assert dict(tree["posterior"].sizes) == {"chain": chains, "draw": draws}
    for group in ("posterior_predictive", "log_likelihood"):
        assert tree[group]["y"].dims == ("chain", "draw", "time")
        assert tree[group]["y"].shape == (chains, draws, N)
    assert tree["observed_data"]["y"].dims == ("time",)
    np.testing.assert_array_equal(tree["observed_data"]["time"].values, T)
    np.testing.assert_allclose(tree["observed_data"]["y"].values, Y)
    assert tree.attrs["method"] == method
    # sigma is a deterministic of tau in every method
    np.testing.assert_allclose(post.samples["sigma"], 1 / np.sqrt(post.samples["tau"]), rtol=1e-5)
    loo = az.loo(tree)
    assert np.isfinite(float(loo["elpd"]))
    assert float(loo["p"]) == pytest.approx(2.0, abs=1.0), method  # two parameters


def check_exact(post, method):
    ref = exact()
    for name in ("mu", "tau"):
        mean, mcse = _mean_mcse(post, name)
        assert abs(mean - ref[name]) < 4 * mcse, (method, name, mean, ref[name], mcse)
    np.testing.assert_allclose(np.std(post.samples["mu"]), ref["mu_sd"], rtol=0.15)


def check_sample_stats(post, method):
    st = post.sample_stats
    shape = (MCMC["num_chains"], MCMC["num_samples"])
    assert set(st) == set(SAMPLE_STATS_NAMES), method
    assert all(np.shape(v) == shape for v in st.values())
    assert st["diverging"].dtype == bool and not st["diverging"].any()
    acc = st["acceptance_rate"]
    assert np.all((acc >= 0) & (acc <= 1 + 1e-6)) and acc.mean() > 0.6, method
    step = st["step_size"]
    assert np.all(step > 0) and np.all(step == step[:, :1])
    depth, n = st["tree_depth"], st["n_steps"]
    assert np.all((2 ** (depth - 1) <= n) & (n <= 2**depth - 1)), method
    assert np.all(st["energy"] >= -st["lp"] - 1e-4)  # H = U + kinetic, kinetic >= 0
    # lp is the log density on the unconstrained scale (log-Jacobian of tau = exp(z) included)
    for c, d in [(0, 0), (1, 17), (0, MCMC["num_samples"] - 1)]:
        z = {"mu": post.samples["mu"][c, d], "tau": np.log(post.samples["tau"][c, d])}
        u = float(potential_energy(ng_model, (T, Y), {}, z))
        np.testing.assert_allclose(st["lp"][c, d], -u, rtol=1e-4, atol=1e-4)
    timing = post.extra["timing"]
    assert 0 <= timing["sampling_compile_s"] <= timing["sampling_s"]
    assert timing["warmup_s"] > 0


def check_predict(post):
    t_new = np.linspace(0.0, 1.0, 7)
    total = post.num_chains * post.num_draws
    pred = post.predict(t_new)
    assert pred["y"].shape == (total, 7) and pred["sigma"].shape == (total,)
    grouped = post.predict(t_new, group_by_chain=True)
    assert grouped["y"].shape == (post.num_chains, post.num_draws, 7)
    assert abs(float(np.mean(pred["y"])) - exact()["mu"]) < 0.1


def check_summary(post, method):
    df = post.summary()
    assert set(df.index) == {"mu", "tau", "sigma"}
    for col in ("mean", "sd", "ess_bulk", "ess_tail", "r_hat"):
        assert col in df.columns
    assert sum(c.startswith("hdi") for c in df.columns) == 2
    assert float(df.loc["mu", "mean"]) == pytest.approx(exact()["mu"], abs=0.1)
    if method in MCMC_METHODS:
        assert float(df.loc["mu", "r_hat"]) < 1.05
        assert float(df.loc["mu", "ess_bulk"]) > 100


# --------------------------------------------------------------------------------------------
# MCMC: one test fits both samplers (the fits dominate the run time, so they are made once)


def test_nuts_and_blackjax_nuts():
    posts = {m: fitted(m) for m in MCMC_METHODS}
    for method, post in posts.items():
        assert post.method == method and post.num_chains == MCMC["num_chains"]
        check_arviz(post, method)
        check_exact(post, method)
        check_sample_stats(post, method)
        check_summary(post, method)
    check_predict(posts["blackjax-nuts"])
    # the two samplers agree with each other within Monte Carlo error
    a, b = posts["nuts"], posts["blackjax-nuts"]
    for name in ("mu", "tau", "sigma"):
        (ma, sa), (mb, sb) = _mean_mcse(a, name), _mean_mcse(b, name)
        assert abs(ma - mb) < 4 * np.hypot(sa, sb), (name, ma, mb)


def test_blackjax_chunked_sampling_without_warmup():
    # progress_bar=True samples in 20 lax.scan chunks; with 40 draws the keys line up with the
    # single-scan run, so the draws must be identical. num_warmup=0 skips adaptation.
    opts = dict(method="blackjax-nuts", num_warmup=0, num_samples=40, num_chains=1, seed=3)
    quiet = fit(ng_model, T, Y, progress_bar=False, **opts)
    shown = fit(ng_model, T, Y, progress_bar=True, **opts)
    assert quiet.samples["mu"].shape == (1, 40)
    np.testing.assert_array_equal(quiet.samples["mu"], shown.samples["mu"])
    np.testing.assert_array_equal(quiet.sample_stats["lp"], shown.sample_stats["lp"])
    assert np.all(quiet.sample_stats["step_size"] == 1.0)


# --------------------------------------------------------------------------------------------
# SVI


def test_svi_fit():
    post = fitted("svi")
    check_arviz(post, "svi")
    check_predict(post)
    check_summary(post, "svi")
    ref = exact()
    assert post.num_chains == 1 and post.num_draws == 1000
    assert abs(np.mean(post.samples["mu"]) - ref["mu"]) < 0.05
    np.testing.assert_allclose(np.mean(post.samples["tau"]), ref["tau"], rtol=0.1)
    np.testing.assert_allclose(np.std(post.samples["mu"]), ref["mu_sd"], rtol=0.25)
    assert post.losses.shape == (3000,)
    assert post.losses[-100:].mean() < post.losses[:100].mean()
    assert post.extra["num_steps_run"] == 3000 and not post.extra["stopped_early"]
    assert set(post.params) >= {"mu_auto_loc", "tau_auto_scale"}


def test_plot_dist_runs():
    """ArviZ plotting works on an SVI posterior (matplotlib is in the dev extra)."""
    import matplotlib

    matplotlib.use("Agg")
    fig = az.plot_dist(fitted("svi").to_arviz(), var_names=["mu"])
    assert fig is not None


# --------------------------------------------------------------------------------------------
# SVI options


def test_early_stopping_stops_by_the_rule():
    rule = EarlyStopping(window=50, rtol=1e-3)
    post = fit(
        ng_model,
        T,
        Y,
        method="svi",
        num_steps=20_000,
        num_samples=10,
        early_stopping=rule,
        progress_bar=False,
    )
    losses = post.losses
    run = post.extra["num_steps_run"]
    assert post.extra["stopped_early"] and len(losses) == run < 20_000
    assert rule.should_stop(losses)
    chunk = 20_000 // 100
    assert run % chunk == 0
    # the rule did not fire at any earlier check
    assert not any(rule.should_stop(losses[:k]) for k in range(chunk, run, chunk))


def test_early_stopping_rule():
    rule = EarlyStopping(window=10, rtol=1e-3, min_steps=50)
    assert not rule.should_stop(np.ones(19))
    assert not rule.should_stop(np.ones(40))  # min_steps
    assert rule.should_stop(np.ones(50))
    assert not rule.should_stop(np.linspace(100.0, 50.0, 200))  # still falling 0.25 % / step
    noisy = 100 + np.random.default_rng(0).standard_normal(2000)
    assert EarlyStopping(window=500, rtol=2e-3).should_stop(noisy)  # noise sd 6e-4
    assert EarlyStopping(window=10, rtol=0.0, atol=0.5).should_stop(
        np.r_[np.zeros(10), 0.4 * np.ones(10)]
    )
    for bad in (dict(window=0), dict(rtol=-1.0), dict(min_steps=-1), dict(atol=float("nan"))):
        with pytest.raises(ValueError, match="early_stopping"):
            EarlyStopping(**bad)


def test_svi_chunked_progress_bar_matches_single_scan():
    # 250 steps -> chunks of 3 with a masked tail: the same trajectory as one scan
    opts = dict(method="svi", num_steps=250, num_samples=20, seed=4)
    quiet = fit(ng_model, T, Y, progress_bar=False, **opts)
    shown = fit(ng_model, T, Y, progress_bar=True, **opts)
    np.testing.assert_allclose(quiet.losses, shown.losses, rtol=1e-5)
    np.testing.assert_allclose(quiet.samples["mu"], shown.samples["mu"], rtol=1e-5)


def test_svi_custom_guide_and_loss():
    def guide(t, y=None):
        loc = numpyro.param("log_tau_loc", 0.0)
        scale = numpyro.param("log_tau_scale", 0.3, constraint=dist.constraints.positive)
        numpyro.sample("tau", dist.LogNormal(loc, scale))
        m = numpyro.param("mu_loc", 0.0)
        s = numpyro.param("mu_scale", 0.3, constraint=dist.constraints.positive)
        numpyro.sample("mu", dist.Normal(m, s))

    post = fit(
        ng_model,
        T,
        Y,
        method="svi",
        guide=guide,
        loss=TraceMeanField_ELBO(),
        optimizer=optax.adam(2e-2),
        num_steps=2000,
        num_samples=500,
        progress_bar=False,
    )
    assert post.guide is guide and set(post.params) >= {"mu_loc", "mu_scale"}
    assert set(post.samples) == {"mu", "tau", "sigma"}
    assert abs(np.mean(post.samples["mu"]) - exact()["mu"]) < 0.05
    np.testing.assert_allclose(post.samples["sigma"], 1 / np.sqrt(post.samples["tau"]), rtol=1e-5)


def test_svi_uses_the_objectives_svi_when_present(monkeypatch):
    class RecordingSVI(SVI):
        made = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            RecordingSVI.made.append(self)

    fake = types.ModuleType("bayeslr.infer.objectives")
    fake.SVI = RecordingSVI
    monkeypatch.setitem(sys.modules, "bayeslr.infer.objectives", fake)
    post = fit(ng_model, T, Y, method="svi", num_steps=20, num_samples=5, progress_bar=False)
    assert len(RecordingSVI.made) == 1 and post.extra["svi"] is RecordingSVI.made[0]


def test_svi_non_finite_loss_raises():
    with pytest.raises(FloatingPointError, match="non-finite"):
        fit(
            ng_model,
            T,
            Y,
            method="svi",
            optimizer=optax.sgd(1e30),
            num_steps=50,
            num_samples=5,
            progress_bar=False,
        )


# --------------------------------------------------------------------------------------------
# bad input, refused at the door


def _kw_model(t, y=None):
    ng_model(t, y)


def _no_latent(y):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


Y_NAN = np.where(np.arange(N) == 3, np.nan, Y)


@pytest.mark.parametrize(
    "args, kwargs, err, match",
    [
        ((T, Y), dict(method="hmc"), ValueError, "'nuts', 'blackjax-nuts', 'svi'.*'hmc'"),
        ((T, Y_NAN), {}, ValueError, r"`args\[1\]` must be finite.*1 non-finite"),
        ((T,), dict(model_kwargs={"y": Y_NAN}), ValueError, r"`model_kwargs\['y'\]`"),
        (({"t": T, "y": Y_NAN},), {}, ValueError, r"`args\[0\]\['y'\]`"),
        ((T, Y), dict(num_samples=0), ValueError, "`num_samples` must be an int >= 1; got 0"),
        ((T, Y), dict(num_chains=0), ValueError, "`num_chains` must be an int >= 1"),
        ((T, Y), dict(num_warmup=-1), ValueError, "`num_warmup` must be an int >= 0"),
        ((T, Y), dict(method="svi", num_steps=0), ValueError, "`num_steps` must be an int >= 1"),
        ((T, Y), dict(num_samples=10.0), TypeError, "`num_samples` must be an int"),
        ((T, Y), dict(num_samples=True), TypeError, "`num_samples` must be an int"),
        ((T, Y), dict(guide=lambda t, y: None), ValueError, "`guide` does not apply"),
        ((T, Y), dict(method="blackjax-nuts", loss=1), ValueError, "`loss` does not apply"),
        (
            (T, Y),
            dict(method="blackjax-nuts", chain_method="vectorized"),
            ValueError,
            "`chain_method` does not apply",
        ),
        ((T, Y), dict(method="svi", num_warmup=10), ValueError, "`num_warmup` does not apply"),
        ((T, Y), dict(target_accept=1.5), ValueError, r"`target_accept` must be .* \(0, 1\)"),
        ((T, Y), dict(chain_method="threads"), ValueError, "`chain_method`"),
        ((T, Y), dict(method="svi", early_stopping={"windw": 5}), ValueError, "windw"),
        ((T, Y), dict(method="svi", early_stopping="yes"), TypeError, "early_stopping"),
        ((T, Y), dict(dims={"y": "time"}), TypeError, "`dims`"),
        ((T, Y), dict(model_kwargs=[1]), TypeError, "`model_kwargs`"),
        ((T, Y), dict(progress_bar=None), TypeError, "`progress_bar`"),
        ((T, Y), dict(seed="a"), TypeError, "`seed` must be an int seed or a jax.random key"),
        (
            (T, Y),
            dict(method="svi", guide=lambda t, y: None, init_strategy=lambda site: None),
            ValueError,
            "`init_strategy`",
        ),
    ],
)
def test_bad_input_is_refused(args, kwargs, err, match):
    model = _kw_model if "model_kwargs" in kwargs else ng_model
    if args and isinstance(args[0], dict):
        model = lambda d: ng_model(d["t"], d["y"])  # noqa: E731
    with pytest.raises(err, match=match):
        fit(model, *args, progress_bar=kwargs.pop("progress_bar", False), **kwargs)


def test_model_without_latent_sites_is_refused():
    with pytest.raises(ValueError, match="at least one latent"):
        fit(_no_latent, Y, progress_bar=False)
    with pytest.raises(TypeError, match="`model`"):
        fit("model", Y)
