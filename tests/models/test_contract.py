"""The model contract, checked the same way for every estimator (``CASES``).

Each case gives a small fit: the estimator (built from a seed), its training and test data in
the model's own format, a direct Monte Carlo held-out lpd written out by hand for the model, the
training data with a NaN, and the module-level step function its stage runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from numpyro.handlers import seed, trace
from scipy.special import logsumexp

from bayeslr.models import FunBaT, KroneckerSBL
from bayeslr.models.base import Estimator, ModelPosterior
from bayeslr.models.ssvi import SSVI
from tests.conftest import compile_records


@dataclasses.dataclass
class Case:
    make: Callable[[int], Estimator]  # seed -> estimator
    train: tuple
    test: tuple
    direct_lpd: Callable[[ModelPosterior, tuple], float]
    nan_train: tuple
    step_module: str  # where the stage's step function is looked up
    step_name: str
    compare: Callable[[ModelPosterior], Any]  # what must equal after a resumed fit
    scores: bool = True  # whether the model has held-out data to score


# ---- KroSBL ---------------------------------------------------------------------------------


def _krosbl_case():
    from bayeslr.datasets import kronecker_sparse_problem

    prob = kronecker_sparse_problem(0, n=(6, 5), m=(4, 4), k=2, snr_db=20.0)
    a = [np.asarray(f) for f in prob.factors]
    s2 = float(prob.sigma2)
    clean = np.kron(a[0], a[1]) @ np.asarray(prob.x)
    rng = np.random.default_rng(1)
    y_test = clean + np.sqrt(s2) * rng.standard_normal(clean.shape)  # a new noise draw
    y_nan = np.asarray(prob.y).copy()
    y_nan[2] = np.nan

    def direct(post, test):
        (y,) = test[:1]
        A = np.kron(a[0], a[1])
        x = post.samples["x"].reshape(-1, A.shape[1])
        noise = float(post.kwargs["noise"])
        ll = scipy.stats.norm.logpdf(y[None], x @ A.T, np.sqrt(noise))  # (S, M)
        return float(np.sum(logsumexp(ll, axis=0) - np.log(len(x))))

    return Case(
        make=lambda s: KroneckerSBL(noise=s2, num_samples=40, seed=s),
        train=(np.asarray(prob.y), a), test=(y_test,), direct_lpd=direct,
        nan_train=(y_nan, a), step_module="bayeslr.models.krosbl.estimator",
        step_name="krosbl_step", compare=lambda p: p.mean,
    )  # fmt: skip


# ---- FunBaT ---------------------------------------------------------------------------------


def _funbat_case():
    from bayeslr.datasets import funbat_synthetic, split_entries
    from bayeslr.gp import Matern32

    df = funbat_synthetic(0, n_grids=1, grid=8, noise_sd=0.05)
    train, test = split_entries(df, 0.25, seed=0)
    bad = train.copy()
    bad.iloc[3, bad.columns.get_loc("value")] = np.nan

    def direct(post, test_data):
        (tdf,) = test_data
        (idx, ticks, _), _ = post.model_inputs(tdf, observed=True)
        draws = post.draws_at((idx, ticks, None), post.kwargs)
        u = [np.asarray(draws[f"u_{k}"]).reshape(-1, *draws[f"u_{k}"].shape[2:])
             for k in range(2)]  # fmt: skip
        idx = np.asarray(idx)
        f = np.sum(u[0][:, :, idx[:, 0]] * u[1][:, :, idx[:, 1]], axis=1)  # CP, (S, n)
        c, s = post.context["y_mean"], post.context["y_sd"]
        tau = np.asarray(post.samples["tau"]).reshape(-1, 1)
        ll = scipy.stats.norm.logpdf(tdf["value"].to_numpy()[None], c + s * f, s / np.sqrt(tau))
        return float(np.sum(logsumexp(ll, axis=0) - np.log(ll.shape[0])))

    kw = dict(rank=1, cp=True, kernel=Matern32(0.5, 0.2), epochs=12, restarts=1,
              num_samples=40, progress_bar=False, damping_u=0.3)  # fmt: skip
    return Case(
        make=lambda s: FunBaT(seed=s, **kw), train=(train, ["x", "y"], "value"), test=(test,),
        direct_lpd=direct, nan_train=(bad, ["x", "y"], "value"),
        step_module="bayeslr.models.funbat.estimator", step_name="funbat_step",
        compare=lambda p: np.asarray(p.state.mu[0]),
    )  # fmt: skip


# ---- SSVI -----------------------------------------------------------------------------------


def _ssvi_case():
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, te = perm[:140], perm[140:]
    bad = x[tr].copy()
    bad[5, 2] = np.nan

    def direct(post, test):
        xt, yt = test
        # the network at every stored weight draw, by hand from the model's sites
        from bayeslr.models.ssvi import network_forward

        kw = post.kwargs
        xs = (xt - np.asarray(kw["x_loc"])) / np.asarray(kw["x_scale"])
        lls = []
        S = post.num_draws
        for s in range(S):
            W = []
            for i, (layer, m) in enumerate(zip(kw["layers"], kw["masks"], strict=True)):
                w = np.zeros(layer.shape, np.float32)
                w[np.nonzero(m)] = post.samples[f"w_{i}"][0, s]
                W.append(jnp.asarray(w))
            b = [jnp.asarray(v) for v in kw["biases"]]
            out = np.asarray(network_forward(kw["layers"], W, b, jnp.asarray(xs, jnp.float32)))
            lp = out - logsumexp(out, axis=1, keepdims=True)
            lls.append(lp[np.arange(len(yt)), yt])
        ll = np.stack(lls)
        return float(np.sum(logsumexp(ll, axis=0) - np.log(S)))

    # init_sd 0.1 and 16 units: with the default 1e-3 a few epochs leave the weight draws equal
    # to float32 precision, and with 8 units a point whose hidden ReLUs are all off has the same
    # log-likelihood under every draw (the biases are point estimates): PSIS-LOO then has no
    # spread to work with
    kw = dict(hidden=(16,), epochs=4, batch_size=20, update_every=3, num_samples=30,
              init_sd=0.1, progress_bar=False)  # fmt: skip
    return Case(
        make=lambda s: SSVI(0.5, seed=s, **kw), train=(x[tr], y[tr]), test=(x[te], y[te]),
        direct_lpd=direct, nan_train=(bad, y[tr]), step_module="bayeslr.models.ssvi.estimator",
        step_name="ssvi_step", compare=lambda p: p.mean_weights[0],
    )  # fmt: skip


# ---- Mult-VAE -------------------------------------------------------------------------------


def _multvae_case():
    from bayeslr.datasets import binarize, load_movielens_small, strong_generalization_split
    from bayeslr.models import MultVAE

    r = load_movielens_small()
    n = r["movieId"].value_counts()
    # the movies rated at least 50 times (453 items, not 5,710): posterior predictive draws
    # of every training click cost seconds per 10M values
    r = r[r["movieId"].isin(n.index[n >= 50])]
    s = strong_generalization_split(binarize(r), 50, 50, seed=1)
    bad = s.train.copy().astype(np.float64)
    bad.data[0] = np.nan

    def direct(post, test):
        fold_in, heldout = (t.toarray().astype(np.float32) for t in test)
        z = post._z_draws(fold_in)["z"][0]  # (S, users, K): the guide's draws
        logits = np.asarray(jax.vmap(jax.vmap(post.decoder))(jnp.asarray(z)))
        logp = logits - logsumexp(logits, axis=-1, keepdims=True)
        n = heldout.sum(1)
        coef = scipy.special.gammaln(n + 1) - scipy.special.gammaln(heldout + 1).sum(1)
        ll = (heldout[None] * logp).sum(-1) + coef  # (S, users)
        return float(np.sum(logsumexp(ll, axis=0) - np.log(ll.shape[0])))

    kw = dict(hidden=[32], latent_dim=8, epochs=2, batch_size=100, num_samples=30,
              progress_bar=False)  # fmt: skip
    return Case(
        make=lambda sd: MultVAE(seed=sd, **kw), train=(s.train,), test=(s.test_in, s.test_out),
        direct_lpd=direct, nan_train=(bad,), step_module="bayeslr.models.multvae.estimator",
        step_name="multvae_step", compare=lambda p: p.scores(s.test_in),
    )  # fmt: skip


# ---- GP-HM ----------------------------------------------------------------------------------


def _gphm_case():
    from bayeslr.models import PDE, GPSolver

    k = 1.0
    pde = PDE(operator=lambda u, d, x: d[(2,)], derivatives=((2,),),
              domain=((0.0, 2 * np.pi),), boundary=lambda x: jnp.sin(k * x[:, 0]),
              source=lambda x: -(k**2) * jnp.sin(k * x[..., 0]), name="sin")  # fmt: skip
    bad = dataclasses.replace(pde, boundary=np.array([0.0, np.nan]))
    kw = dict(grid=20, num_components=4, freq_scale=1.0, num_steps=30, steps_per_chunk=10,
              kernel="stm", check_every=10, num_samples=40, progress_bar=False)  # fmt: skip
    return Case(
        make=lambda s: GPSolver(seed=s, **kw), train=(pde,), test=(), direct_lpd=None,
        nan_train=(bad,), step_module="bayeslr.models.gphm.estimator", step_name="gphm_step",
        compare=lambda p: p.grid_values, scores=False,
    )  # fmt: skip


CASES = {"krosbl": _krosbl_case, "funbat": _funbat_case, "ssvi": _ssvi_case,
         "multvae": _multvae_case, "gphm": _gphm_case}  # fmt: skip
_built: dict = {}


def case(name) -> Case:
    if name not in _built:
        _built[name] = CASES[name]()
    return _built[name]


_fits: dict = {}


def fitted(name, s=0):
    if (name, s) not in _fits:
        c = case(name)
        with jax.enable_x64(True):
            _fits[(name, s)] = post = c.make(s).fit(*c.train)
        if name == "multvae":  # the one case whose posterior predictive is too large to keep:
            post.MAX_GROUP_SIZE = 5_000_000  # 30 x 526 x 453 = 7.1M values (on all items, 96M)
    return _fits[(name, s)]


@pytest.fixture(params=sorted(CASES))
def name(request, x64):
    return request.param


def test_posterior_is_bound_to_the_model_function(name):
    post = fitted(name)
    est = type(post.estimator)
    assert post.model is est.model_fn
    assert isinstance(post, ModelPosterior)
    tr = trace(seed(post.model, 0)).get_trace(*post.args, **post.kwargs)
    for site, draws in post.samples.items():
        assert site in tr, (site, sorted(tr))
        assert np.shape(draws)[2:] == np.shape(tr[site]["value"]), site
        assert tr[site]["type"] in ("sample", "deterministic")
    latent = {k for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    assert latent <= set(post.samples), latent - set(post.samples)


def test_predict_means_posterior_predictive_draws_of_the_observed_sites(name):
    post = fitted(name)
    pred = post.predict()
    assert isinstance(pred, dict) and set(pred) == set(post.observed)
    S = post.num_chains * post.num_draws
    for site, obs in post.observed.items():
        assert isinstance(pred[site], np.ndarray)
        assert pred[site].shape == (S, *np.shape(obs)), site
    # at new inputs too, with the same type and meaning
    new = post.predict(*case(name).test[: 1 if name != "krosbl" else 0])
    assert set(new) == set(post.observed) and all(v.shape[0] == S for v in new.values())


def test_arviz_has_training_log_likelihood_with_named_dims(name):
    post = fitted(name)
    S = post.num_chains * post.num_draws
    big = S * sum(np.size(v) for v in post.observed.values()) > post.MAX_GROUP_SIZE
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dt = post.to_arviz()
    want = {"posterior", "log_likelihood", "observed_data"}
    assert want <= set(dt.children)
    # posterior predictive draws of every observed value, unless they would not fit in memory
    assert ("posterior_predictive" in dt.children) == (not big)
    assert any("posterior_predictive" in str(w.message) for w in caught) == big
    for group in ("posterior", "log_likelihood", "observed_data"):
        for var in dt[group].data_vars:
            dims = dt[group][var].dims
            assert not any("_dim_" in d for d in dims), (group, var, dims)
    tr = trace(seed(post.model, 0)).get_trace(*post.args, **post.kwargs)
    for site in post.observed:  # one term per observation: an entry, a measurement, a basket
        assert dt["log_likelihood"][site].shape[2:] == tuple(tr[site]["fn"].batch_shape)
    assert set(dt["posterior"].data_vars) <= set(post.samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k on small data
        for site in post.observed:  # per observed site (GP-HM has two: pde and boundary)
            assert np.isfinite(az.loo(dt, var_name=site).elpd), site


def test_score_is_the_monte_carlo_held_out_lpd(name):
    post = fitted(name)
    c = case(name)
    if not c.scores:
        with pytest.raises(NotImplementedError, match="no held-out"):
            post.score(*c.test)
        return
    got = post.score(*c.test)
    want = c.direct_lpd(post, c.test)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_nan_data_is_refused_before_compilation(name, caplog):
    c = case(name)
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True), pytest.raises(ValueError, match=r"finite|NaN"):
            c.make(0).fit(*c.nan_train)
    finally:
        logger.removeHandler(handler)
    assert not [m for m in handler.messages if "_chunk_impl" in m or "_init_" in m]


def test_a_nan_loss_is_caught_by_the_shared_guard(name, monkeypatch):
    import importlib

    c = case(name)
    mod = importlib.import_module(c.step_module)
    real = getattr(mod, c.step_name)

    def poisoned(key, state, problem):
        new, info = real(key, state, problem)
        return new, {k: v * jnp.nan if jnp.issubdtype(v.dtype, jnp.inexact) else v
                     for k, v in info.items()}  # fmt: skip

    monkeypatch.setattr(mod, c.step_name, poisoned)
    with pytest.raises(FloatingPointError, match=r"became non-finite at step 1 of"):
        c.make(0).fit(*c.train)


def test_a_second_fit_with_another_seed_does_not_recompile(name):
    c = case(name)
    fitted(name, 0)
    again, compiled = compile_records(lambda: c.make(1).fit(*c.train))
    assert not compiled, compiled
    assert isinstance(again, ModelPosterior)


class Kill(RuntimeError):
    pass


def test_checkpoint_kill_resume_equals_an_uninterrupted_fit(name, tmp_path):
    c = case(name)
    full = fitted(name, 0)
    path = tmp_path / "fit.npz"
    calls = []

    def kill(status):
        calls.append(status.step)
        if len(calls) == 1 and status.step < status.num_steps:
            raise Kill

    est = c.make(0)
    est.progress_bar = True  # chunks of the fit between which it is killed
    with pytest.raises(Kill):
        est.fit(*c.train, checkpoint=path, callback=kill)
    assert path.exists()
    resumed = est.fit(*c.train, checkpoint=path)
    assert resumed.results[-1].resumed_from == calls[0]
    np.testing.assert_allclose(np.asarray(c.compare(resumed)), np.asarray(c.compare(full)),
                               rtol=1e-6, atol=1e-9)  # fmt: skip
    for k, v in full.history.items():
        np.testing.assert_allclose(resumed.history[k], v, rtol=1e-6, atol=1e-9)

