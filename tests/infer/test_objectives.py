"""Tests for bayeslr.infer.objectives against closed forms on conjugate and discrete toys."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import Trace_ELBO
from scipy.stats import multivariate_normal

from bayeslr.infer import objectives as O
from bayeslr.infer.objectives import (
    ELBO,
    IWAE,
    STL,
    BetaELBO,
    Objective,
    RenyiELBO,
    ReweightedWakeSleep,
    linear_warmup,
    logmeanexp,
)

X = np.array([0.5, 1.2, -0.3, 0.8, 1.9])
N = X.size
POST_VAR = 1.0 / (1.0 + N)
POST_MEAN = X.sum() * POST_VAR
LOG_EVIDENCE = float(multivariate_normal(np.zeros(N), np.eye(N) + 1.0).logpdf(X))


# ---------------------------------------------------------------------------------------------
# conjugate Normal-Normal model: mu ~ N(0, 1), x_i ~ N(mu, 1); guide N(m, s)


def model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def make_guide(grad=None):
    def guide(x):
        m = numpyro.param("m", 0.0)
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("mu", dist.Normal(m, s), infer={"grad": grad} if grad else {})

    return guide


guide = make_guide()


def closed_form_beta_elbo(p, x=X, beta=1.0):
    m, s = p["m"], p["s"]
    n = x.shape[0]
    lik = jnp.sum(-0.5 * math.log(2 * math.pi) - 0.5 * ((x - m) ** 2 + s**2))
    prior = -0.5 * math.log(2 * math.pi) - 0.5 * (m**2 + s**2)
    ent = 0.5 * jnp.log(2 * math.pi * math.e * s**2)
    del n
    return lik + beta * (prior + ent)


EXACT = {"m": POST_MEAN, "s": math.sqrt(POST_VAR)}
OFF = {"m": POST_MEAN - 0.4, "s": 1.3 * math.sqrt(POST_VAR)}


def values(obj, params, keys, g=guide, x=X):
    return jax.jit(jax.vmap(lambda k: -obj.loss(k, params, model, g, x)))(keys)


def grads(obj, params, keys, g=guide, x=X):
    def one(k):
        return jax.grad(lambda p: -obj.loss(k, p, model, g, x))(params)

    return jax.jit(jax.vmap(one))(keys)


def keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def params64(p):
    return {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}


def test_logmeanexp():
    x = np.array([[0.1, -3.0], [2.0, 5.0], [-1.0, 0.0]])
    np.testing.assert_allclose(logmeanexp(x, 0), np.log(np.mean(np.exp(x), 0)), rtol=1e-6)
    np.testing.assert_allclose(logmeanexp(x, None), np.log(np.mean(np.exp(x))), rtol=1e-6)


def test_elbo_at_exact_posterior_is_log_evidence(x64):
    p = params64(EXACT)
    for obj in (ELBO(3), IWAE(4)):
        v = values(obj, p, keys(16))
        np.testing.assert_allclose(v, LOG_EVIDENCE, rtol=1e-10, atol=1e-10)
    # away from the posterior the ELBO is strictly below the evidence
    assert float(closed_form_beta_elbo(params64(OFF))) < LOG_EVIDENCE - 0.1


def test_iwae_increases_with_k_and_approaches_evidence(x64):
    p = params64(OFF)
    ks = keys(2000)
    elbo = float(closed_form_beta_elbo(p))
    np.testing.assert_allclose(np.mean(values(ELBO(), p, ks)), elbo, atol=0.05)
    means, ses = [], []
    for k in (1, 4, 16, 64):
        v = np.asarray(values(IWAE(k), p, ks))
        means.append(v.mean())
        ses.append(v.std() / math.sqrt(v.size))
    assert abs(means[0] - elbo) < 4 * ses[0] + 1e-9  # IWAE(1) is the ELBO
    for a, b, sa, sb in zip(means, means[1:], ses, ses[1:], strict=False):
        assert b > a + 2 * math.hypot(sa, sb), means
    assert means[-1] <= LOG_EVIDENCE + 4 * ses[-1]
    assert LOG_EVIDENCE - means[-1] < 0.02
    assert LOG_EVIDENCE - means[-1] < 0.1 * (LOG_EVIDENCE - elbo)


def test_renyi_alpha_to_one_matches_elbo(x64):
    p = params64(OFF)
    ks = keys(8)
    a = values(RenyiELBO(1.0 - 1e-6, 4), p, ks)
    b = values(Objective(lambda t: jnp.mean(t.log_weight), 4), p, ks)  # the ELBO, same particles
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # alpha = 0 is IWAE, sample by sample
    np.testing.assert_allclose(values(RenyiELBO(0.0, 4), p, ks), values(IWAE(4), p, ks))


def _mean_se(g):
    return {k: (float(np.mean(v)), float(np.std(v)) / math.sqrt(np.size(v))) for k, v in g.items()}


def _assert_unbiased(g, ref, n_se=4.5):
    """Means agree within n_se combined standard errors (``ref``: exact values or (mean, se))."""
    for name, (mean, se) in _mean_se(g).items():
        r, se_r = ref[name] if isinstance(ref[name], tuple) else (float(ref[name]), 0.0)
        assert abs(mean - r) < n_se * math.hypot(se, se_r) + 1e-9, (name, mean, r, se, se_r)


@pytest.mark.parametrize(
    "obj,grad,beta",
    [
        (ELBO(), None, 1.0),
        (STL(), None, 1.0),
        (ELBO(4), "reinforce", 1.0),
        (BetaELBO(0.5), None, 0.5),
    ],
    ids=["reparam", "stl", "reinforce-loo", "beta"],
)
def test_elbo_gradients_unbiased(x64, obj, grad, beta):
    p = params64(OFF)
    ref = jax.grad(lambda q: closed_form_beta_elbo(q, beta=beta))(p)
    g = grads(obj, p, keys(4000), g=make_guide(grad))
    _assert_unbiased(g, ref)
    if grad is None:  # path estimators: far below the sampling noise of the score function
        assert float(np.std(g["m"])) < 5.0


def test_stl_zero_variance_at_exact_posterior(x64):
    g = grads(STL(), params64(EXACT), keys(32))
    np.testing.assert_allclose(np.asarray(g["m"]), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(g["s"]), 0.0, atol=1e-9)


@pytest.mark.slow
def test_iwae_estimators_agree(x64):
    """IWAE reparam, DReG and score-function (VIMCO baseline) estimate the same gradient."""
    p = params64(OFF)
    ref = _mean_se(grads(IWAE(8, "dreg"), p, keys(4000, seed=7)))  # lowest variance
    assert ref["m"][1] < 2e-3
    _assert_unbiased(grads(IWAE(8), p, keys(8000, seed=1)), ref)
    _assert_unbiased(grads(IWAE(8), p, keys(4000, seed=2), g=make_guide("reinforce")), ref)
    # user-defined IWAE is the same function of the same particles
    ks = keys(4)
    user = Objective(lambda t: logmeanexp(t.log_lik + t.log_prior - t.log_guide), 8)
    for a, b in ((values(user, p, ks), values(IWAE(8), p, ks)),):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    ga, gb = grads(user, p, ks), grads(IWAE(8), p, ks)
    np.testing.assert_allclose(ga["m"], gb["m"], rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# equality with numpyro's Trace_ELBO, with plates and subsampling


def sub_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0], subsample_size=3, dim=-2) as idx:
        with numpyro.plate("d", 2, dim=-1):
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def test_elbo_matches_trace_elbo_with_subsampling():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 2)))
    p = {"m": jnp.asarray(0.3), "s": jnp.asarray(0.6)}
    for k in (1, 3):

        @jax.jit
        def both(q, key, k=k):
            a = jax.value_and_grad(lambda q: ELBO(k).loss(key, q, sub_model, guide, x))(q)
            b = jax.value_and_grad(lambda q: Trace_ELBO(k).loss(key, q, sub_model, guide, x))(q)
            return a, b

        for key in keys(3):
            (va, ga), (vb, gb) = both(p, key)
            np.testing.assert_allclose(va, vb, rtol=1e-6)
            for n in p:
                np.testing.assert_allclose(ga[n], gb[n], rtol=1e-5, atol=1e-6)


def local_model(x):
    with numpyro.plate("n", x.shape[0], subsample_size=2) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def local_guide(x):
    a = numpyro.param("a", 0.5)
    s = numpyro.param("s", math.sqrt(0.5), constraint=dist.constraints.positive)
    with numpyro.plate("n", x.shape[0], subsample_size=2) as idx:
        numpyro.sample("z", dist.Normal(a * x[idx], s))


@pytest.mark.parametrize(
    "obj",
    [ELBO(), IWAE(4), IWAE(4, "dreg"), RenyiELBO(0.5, 3), ReweightedWakeSleep(3)],
    ids=["elbo", "iwae", "dreg", "renyi", "rws"],
)
def test_subsampling_scales_to_full_data(x64, obj):
    """Local latents in a subsampled plate: at the exact per-datum posterior every bound is the
    log evidence of the minibatch, scaled by N/B; over random minibatches it averages to the
    full-data evidence sum_i log p(x_i)."""
    x = jnp.asarray(X)
    full = float(np.sum(-0.5 * np.log(2 * np.pi * 2.0) - X**2 / 4.0))
    p = params64({"a": 0.5, "s": math.sqrt(0.5)})

    def val(k):
        return -obj.loss(k, p, local_model, local_guide, x)

    v = np.asarray(jax.jit(jax.vmap(val))(keys(4000)))
    # each value is (N/B) * (sum of the 2 chosen log p(x_i)): check against the support
    per = -0.5 * np.log(2 * np.pi * 2.0) - X**2 / 4.0
    pairs = {round(N / 2 * (per[i] + per[j]), 8) for i in range(N) for j in range(N) if i != j}
    assert all(round(float(a), 8) in pairs for a in v[:50])
    se = v.std() / math.sqrt(v.size)
    assert abs(v.mean() - full) < 4.5 * se


# ---------------------------------------------------------------------------------------------
# SVI


@pytest.mark.parametrize(
    "obj,steps",
    [
        (ELBO(), 1500),
        (STL(), 1500),
        (BetaELBO(linear_warmup(200, 1.0)), 1500),
        (IWAE(4), 1500),
        (IWAE(4, "dreg"), 1500),
        (RenyiELBO(0.5, 4), 1500),
        (ReweightedWakeSleep(8), 1500),
        (Objective(lambda t: jnp.mean(t.log_weight), 2), 1500),
    ],
    ids=["elbo", "stl", "beta-warmup", "iwae", "dreg", "renyi", "rws", "user"],
)
def test_svi_recovers_conjugate_posterior(obj, steps):
    svi = O.SVI(model, guide, optax.adam(optax.cosine_decay_schedule(0.05, steps)), loss=obj)
    res = svi.run(jax.random.key(1), steps, jnp.asarray(X), progress_bar=False)
    m, s = float(res.params["m"]), float(res.params["s"])
    assert abs(m - POST_MEAN) < 0.06, (m, POST_MEAN)
    assert abs(s / math.sqrt(POST_VAR) - 1.0) < 0.12, (s, math.sqrt(POST_VAR))
    assert int(res.state.mutable_state[O.STEP_KEY]) == steps


def test_beta_one_equals_elbo_and_beta_scales_latent_terms(x64):
    p = params64(OFF)

    @jax.jit
    def both(q, key):
        a = jax.value_and_grad(lambda q: BetaELBO(1.0, 2).loss(key, q, model, guide, X))(q)
        b = jax.value_and_grad(lambda q: ELBO(2).loss(key, q, model, guide, X))(q)
        return a, b

    for key in keys(3):
        a, b = both(p, key)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
        np.testing.assert_allclose(a[1]["m"], b[1]["m"], rtol=1e-12)
    # β = 0 keeps only the likelihood term: E_q log p(x | mu), exact in expectation
    v = values(BetaELBO(0.0), p, keys(3000))
    lik = float(closed_form_beta_elbo(p, beta=0.0))
    assert abs(np.mean(v) - lik) < 4.5 * np.std(v) / math.sqrt(v.size)


def test_beta_schedule_value_is_read_from_svi_state():
    sched = linear_warmup(4, 0.6)
    obj = BetaELBO(sched)
    svi = O.SVI(model, guide, optax.adam(0.05), loss=obj)
    x = jnp.asarray(X)
    state = svi.init(jax.random.key(3), x)
    update = jax.jit(svi.update)
    for s in range(7):
        assert int(state.mutable_state[O.STEP_KEY]) == s
        _, step_key = jax.random.split(state.rng_key)
        params = svi.get_params(state)
        expected = BetaELBO(float(sched(s))).loss(step_key, params, model, guide, x)
        fixed_other = BetaELBO(float(sched(s)) + 0.1).loss(step_key, params, model, guide, x)
        state, loss = update(state, x)
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        if s >= 2:  # at init the guide equals the prior, so beta has no effect there
            assert abs(float(loss) - float(fixed_other)) > 1e-3
    assert float(sched(100)) == pytest.approx(0.6)


def test_schedule_with_plain_numpyro_svi_explains():
    svi = numpyro.infer.SVI(model, guide, optax.adam(0.05), loss=BetaELBO(linear_warmup(10)))
    with pytest.raises(ValueError, match=r"bayeslr\.infer\.objectives\.SVI"):
        svi.run(jax.random.key(0), 2, jnp.asarray(X), progress_bar=False)
    with pytest.raises(ValueError, match="running baseline"):
        ELBO(baseline="mean").loss(jax.random.key(0), EXACT, model, guide, X)


# ---------------------------------------------------------------------------------------------
# discrete latents: score function and enumeration


Y_OBS = 1.2


def bern_model(y):
    z = numpyro.sample("z", dist.Bernoulli(0.3))
    numpyro.sample("y", dist.Normal(2.0 * z, 1.0), obs=y)


def make_bern_guide(grad=None):
    def g(y):
        p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
        numpyro.sample("z", dist.Bernoulli(p), infer={"grad": grad} if grad else {})

    return g


def exact_bern_posterior():
    lp = [math.log(0.7) - 0.5 * Y_OBS**2, math.log(0.3) - 0.5 * (Y_OBS - 2.0) ** 2]
    return math.exp(lp[1]) / (math.exp(lp[0]) + math.exp(lp[1]))


@pytest.mark.parametrize(
    "obj,plain",
    [(ELBO(), False), (ELBO(4), True), (IWAE(4), True), (ReweightedWakeSleep(8), True)],
    ids=["elbo-k1-mean-baseline", "elbo-k4-loo", "iwae-vimco", "rws"],
)
def test_score_function_fits_bernoulli_latent(obj, plain):
    svi_cls = numpyro.infer.SVI if plain else O.SVI
    lr = optax.cosine_decay_schedule(0.05, 1500)
    svi = svi_cls(bern_model, make_bern_guide(), optax.adam(lr), loss=obj)
    res = svi.run(jax.random.key(0), 1500, Y_OBS, progress_bar=False)
    assert abs(float(res.params["p"]) - exact_bern_posterior()) < 0.05


def plate_bern_model(y):
    with numpyro.plate("n", 3):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("y", dist.Normal(2.0 * z, 1.0), obs=y)


def plate_bern_guide(y):
    p = numpyro.param("p", jnp.array([0.2, 0.5, 0.9]), constraint=dist.constraints.unit_interval)
    with numpyro.plate("n", 3):
        numpyro.sample("z", dist.Bernoulli(p), infer={"grad": "enum"})


def test_enumeration_is_exact(x64):
    y = jnp.array([1.2, -0.4, 2.5])
    p0 = {"p": jnp.array([0.2, 0.5, 0.9])}

    def exact(q):
        total = 0.0
        for bits in np.ndindex(2, 2, 2):
            z = jnp.asarray(bits, jnp.float64)
            log_q = jnp.sum(dist.Bernoulli(q["p"]).log_prob(z))
            log_p = jnp.sum(dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2 * z, 1).log_prob(y))
            total = total + jnp.exp(log_q) * (log_p - log_q)
        return total

    vr, gr = jax.jit(jax.value_and_grad(exact))(p0)
    ours = jax.jit(
        jax.value_and_grad(
            lambda q, key: -ELBO().loss(key, q, plate_bern_model, plate_bern_guide, y)
        )
    )
    for key in keys(3):
        v, g = ours(p0, key)
        np.testing.assert_allclose(v, vr, rtol=1e-12)
        np.testing.assert_allclose(g["p"], gr["p"], rtol=1e-10)


def test_enum_fits_bernoulli_exactly():
    svi = O.SVI(bern_model, make_bern_guide("enum"), optax.adam(0.05), loss=ELBO())
    res = svi.run(jax.random.key(0), 800, Y_OBS, progress_bar=False)
    assert abs(float(res.params["p"]) - exact_bern_posterior()) < 2e-3


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: ELBO(0), ValueError, "num_particles"),
        (lambda: IWAE(2.5), TypeError, "num_particles"),
        (lambda: IWAE(True), TypeError, "num_particles"),
        (lambda: ELBO(estimator="dreg"), ValueError, "estimator"),
        (lambda: IWAE(4, estimator="stl"), ValueError, "estimator"),
        (lambda: RenyiELBO(1.0), ValueError, "alpha"),
        (lambda: RenyiELBO(float("nan")), ValueError, "alpha"),
        (lambda: RenyiELBO("0.5"), TypeError, "alpha"),
        (lambda: Objective(3.0), TypeError, "fn"),
        (lambda: ReweightedWakeSleep(1), ValueError, "num_particles"),
        (lambda: BetaELBO(-0.1), ValueError, "beta"),
        (lambda: BetaELBO(lambda s: -1.0 + 0.0 * s), ValueError, "beta"),
        (lambda: BetaELBO("x"), TypeError, "beta"),
        (lambda: ELBO(baseline="median"), ValueError, "baseline"),
        (lambda: ELBO(1, baseline="loo"), ValueError, "loo"),
        (lambda: linear_warmup(0), ValueError, "total_steps"),
        (lambda: linear_warmup(10, -1.0), ValueError, "cap"),
    ],
)
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize(
    "obj,g,match",
    [
        (STL(), make_bern_guide(), "STL"),
        (IWAE(4, "dreg"), make_bern_guide(), "DReG"),
        (IWAE(4), make_bern_guide("enum"), "linear"),
        (ELBO(), make_bern_guide("reparam"), "has_rsample"),
        (ELBO(), make_bern_guide("magic"), "infer\\['grad'\\]"),
        (ReweightedWakeSleep(3), make_bern_guide("enum"), "enum"),
    ],
)
def test_site_errors_before_compiling(obj, g, match):
    params = {"p": 0.5}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda q: obj.loss(jax.random.key(0), q, bern_model, g, Y_OBS)).lower(params)


def test_non_scalar_fn_and_large_enum_and_missing_site():
    with pytest.raises(ValueError, match="scalar"):
        Objective(lambda t: t.log_weight, 2).loss(jax.random.key(0), OFF, model, guide, X)

    def big_guide(y):
        with numpyro.plate("n", 13):
            numpyro.sample("z", dist.Bernoulli(0.5), infer={"grad": "enum"})

    def big_model(y):
        with numpyro.plate("n", 13):
            numpyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="MAX_ENUM_CONFIGS"):
        ELBO().loss(jax.random.key(0), {}, big_model, big_guide, 0.0)

    def empty_guide(x):
        pass

    with pytest.raises(ValueError, match="not sampled by the guide"):
        ELBO().loss(jax.random.key(0), {}, model, empty_guide, X)


def test_linear_bound_from_particle_terms():
    """The base class's bound of the linear objectives: mean of a·log_lik + β(log_prior −
    log_guide) over particles (ELBO: a = β = 1; BetaELBO: β)."""
    t = O.ParticleTerms(jnp.array([1.0, 2.0]), jnp.array([0.5, 0.0]), jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(ELBO()._bound(t, None), 1.6, rtol=1e-6)
    np.testing.assert_allclose(O.BetaELBO(beta=0.5)._bound(t, None), 1.55, rtol=1e-6)
