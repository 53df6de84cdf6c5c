"""SSVI: scores against the folded normal, the support update on hand-built cases, the LRT against
weight sampling, the sparsity invariants through training, dense VI at density 1, the static-mask
baseline on real data, ArviZ output and bad input."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import train_test_split

from bayeslr.models.ssvi import (
    SSVI,
    Layer,
    bnn_model,
    build_layers,
    gaussian_kl,
    network_forward,
    removal_scores,
    ssvi_objective,
    support_update,
    training_flops,
)
from bayeslr.models.ssvi.algo import _init_weights
from tests.conftest import compile_records


@functools.cache
def digits():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


@functools.cache
def small_fit(density=0.1, mask_update="ssvi", epochs=15, seed=0):
    xtr, _, ytr, _ = digits()
    solver = SSVI(density, hidden=(32,), epochs=epochs, update_every=5, mask_update=mask_update,
                  num_samples=100, seed=seed, progress_bar=False)  # fmt: skip
    return solver, solver.fit(xtr, ytr)


# ---- scores --------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.0, 0.3, -1.0, 5.0, -40.0])
def test_folded_normal_scores_match_scipy(dtype, tol, mu):
    sigma = 0.7
    ref = scipy.stats.foldnorm(c=abs(mu) / sigma, scale=sigma)
    m, s = jnp.asarray([mu], dtype), jnp.asarray([sigma], dtype)
    np.testing.assert_allclose(removal_scores(m, s, "mean_abs")[0], ref.mean(), **tol)
    np.testing.assert_allclose(removal_scores(m, s, "snr_abs")[0], ref.mean() / ref.std(),
                               rtol=max(tol["rtol"], 1e-6))  # fmt: skip
    np.testing.assert_allclose(removal_scores(m, s, "snr")[0], abs(mu) / sigma, **tol)
    np.testing.assert_allclose(removal_scores(m, s, "abs_mean")[0], abs(mu), **tol)


def test_scores_finite_at_zero_sigma_and_differentiable():
    mu, sig = jnp.array([0.0, 1.0, 0.0]), jnp.array([0.0, 0.0, 1.0])
    for c in ("snr_abs", "mean_abs", "snr", "abs_mean"):
        assert np.all(np.isfinite(removal_scores(mu, sig, c)))
    g = jax.grad(lambda m: removal_scores(m, jnp.ones(3), "snr_abs").sum())(
        jnp.array([0.1, 2, 9.0])
    )
    assert np.all(np.isfinite(g))


# ---- the support update --------------------------------------------------------------------


def test_support_update_hand_built():
    mask = jnp.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    score = jnp.array([4.0, 1.0, 3.0, 2.0, 99.0, 99.0, 99.0, 99.0])  # inactive scores ignored
    grad = jnp.array([0.0, 0.5, 0.0, 8.0, -9.0, 0.1, 0.2, -0.3])
    new, kept, added = jax.jit(support_update)(mask, score, grad, jnp.int32(2))
    # remove the two lowest-scoring active (1, 3); add the two largest |grad| among the rest,
    # the just-removed 3 included: 4 (|-9|) and 3 (8)
    np.testing.assert_array_equal(kept, [1, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(added, [0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(new, [1, 0, 1, 1, 1, 0, 0, 0])
    same, _, none = support_update(mask, score, grad, 0)
    np.testing.assert_array_equal(same, mask)
    assert not np.any(none)


def test_support_update_top_k_path_equals_ranks(rng):
    for n_prune in (0, 1, 5, 12):
        mask = jnp.asarray(rng.random(200) < 0.3)
        score = jnp.asarray(rng.random(200))
        grad = jnp.asarray(rng.standard_normal(200))
        ranks = support_update(mask, score, grad, n_prune)
        topk = jax.jit(support_update, static_argnums=4)(mask, score, grad, n_prune, 12)
        for a, b in zip(ranks, topk, strict=True):
            np.testing.assert_array_equal(a, b)
    # ties: both paths remove the higher index among equal scores and add the lower index
    mask = jnp.array([1, 1, 1, 0, 0], bool)
    tie = jnp.array([1.0, 1.0, 2.0, 0.0, 0.0])
    g = jnp.array([0.0, 0.0, 0.0, 3.0, 3.0])
    for out in (support_update(mask, tie, g, 1), support_update(mask, tie, g, 1, 2)):
        np.testing.assert_array_equal(out[0], [1, 0, 1, 1, 0])


def test_support_update_keeps_the_count(rng):
    for n_prune in (0, 1, 7, 30):
        mask = jnp.asarray(rng.random((8, 16)) < 0.25)
        s = int(mask.sum())
        score = jnp.asarray(rng.random((8, 16)))
        grad = jnp.asarray(rng.standard_normal((8, 16)))
        new, _, _ = support_update(mask, score, grad, min(n_prune, s))
        assert int(new.sum()) == s


# ---- the network and the LRT ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_lrt_moments_match_weight_sampling(kind):
    rng = np.random.default_rng(1)
    if kind == "dense":
        layers = (Layer("dense", (5, 3), True),)
        x, shape = rng.standard_normal((4, 5)).astype(np.float32), None
    else:
        layers = (Layer("conv", (3, 3, 1, 2), True),)
        x, shape = rng.standard_normal((4, 16)).astype(np.float32), (4, 4, 1)
    w_shape = layers[0].shape
    mu = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    sd = jnp.asarray(0.5 * rng.random(w_shape), jnp.float32)
    b = [jnp.zeros(w_shape[-1])]
    # one layer, no activation after it: LRT draws and weight draws share mean and variance
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    lrt = jax.vmap(lambda k: network_forward(layers, [mu], b, x, [sd**2], k, shape))(keys)
    ws = mu + sd * jax.random.normal(jax.random.PRNGKey(1), (20000, *w_shape))
    direct = jax.vmap(lambda w: network_forward(layers, [w], b, x, image_shape=shape))(ws)
    np.testing.assert_allclose(lrt.mean(0), direct.mean(0), atol=0.05)
    np.testing.assert_allclose(lrt.var(0), direct.var(0), rtol=0.05, atol=0.02)
    exact_mean = network_forward(layers, [mu], b, x, image_shape=shape)
    np.testing.assert_allclose(direct.mean(0), exact_mean, atol=0.05)


def test_build_layers_shapes():
    layers = build_layers(64, 10, hidden=(20,), conv=(4, 6), image_shape=(8, 8, 1))
    assert [layer.shape for layer in layers] == [(3, 3, 1, 4), (3, 3, 4, 6), (2 * 2 * 6, 20),
                                                 (20, 10)]  # fmt: skip
    assert [layer.sparse for layer in layers] == [True] * 4
    assert not build_layers(5, 2, hidden=(3,), dense_first=True)[0].sparse


def test_training_flops_hand_computed():
    layers = (Layer("dense", (10, 4), True), Layer("dense", (4, 2), True))
    out = training_flops(layers, [0.5, 1.0], steps=10, batch_size=2, update_every=5,
                         update_until=10)  # fmt: skip
    fs, fd = 0.5 * 80 + 16, 80 + 16
    assert out["forward_sparse"] == fs and out["forward_dense"] == fd
    assert out["total"] == 2 * (3 * fs * 10 + 2 * (2 * fs + fd))


# ---- the objective at density 1 is dense mean-field VI -------------------------------------


def test_kl_is_the_masked_gaussian_kl():
    import numpyro.distributions as dist

    layers = build_layers(6, 3, hidden=(4,))
    params, masks = _init_weights(jax.random.PRNGKey(0), layers, 0.5, 1e-3)
    params["rho"] = [r + 0.3 * jax.random.normal(jax.random.PRNGKey(i), r.shape)
                     for i, r in enumerate(params["rho"])]  # fmt: skip
    full = [jnp.ones_like(m) for m in masks]
    ref = sum(
        dist.kl_divergence(dist.Normal(mu, jax.nn.softplus(rho)), dist.Normal(0.0, 0.3)).sum()
        for mu, rho in zip(params["mu"], params["rho"], strict=True)
    )
    np.testing.assert_allclose(gaussian_kl(params, full, 0.3), ref, rtol=1e-5)
    ref_sparse = sum(
        jnp.where(m, dist.kl_divergence(dist.Normal(mu, jax.nn.softplus(rho)),
                                        dist.Normal(0.0, 0.3)), 0.0).sum()
        for mu, rho, m in zip(params["mu"], params["rho"], masks, strict=True)
    )  # fmt: skip
    np.testing.assert_allclose(gaussian_kl(params, masks, 0.3), ref_sparse, rtol=1e-5)
    assert ref_sparse < ref


def test_density_one_is_dense_mean_field_vi():
    """At density 1 every weight is active and never leaves, and the objective is the dense
    mean-field negative ELBO per point: its data term (LRT) matches the expected negative
    log-likelihood of :func:`bnn_model` under sampled weights (NumPyro's log_likelihood), and its
    KL is the full Gaussian KL (test above)."""
    from numpyro.infer import log_likelihood

    _, post = small_fit(1.0)
    assert all(m.all() for m in post.masks)
    np.testing.assert_array_equal(post.extra["support_sizes"],
                                  np.broadcast_to([m.size for m in post.masks],
                                                  post.extra["support_sizes"].shape))  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.integers(0, 3, 6).astype(np.int32)
    layers = build_layers(4, 3, hidden=(5,))
    params, masks = _init_weights(jax.random.PRNGKey(1), layers, 1.0, 0.3)
    params["bias"] = [0.1 * jnp.arange(b.size, dtype=jnp.float32) for b in params["bias"]]
    keys = jax.random.split(jax.random.PRNGKey(2), 4000)
    lrt = jax.vmap(lambda k: ssvi_objective(params, masks, x, y, k, 0.0, 6, layers))(keys)
    sd = [jax.nn.softplus(r) for r in params["rho"]]
    draws = {f"w_{i}": (mu + s * jax.random.normal(jax.random.PRNGKey(10 + i), (4000, *mu.shape)))
             .reshape(4000, -1) for i, (mu, s) in enumerate(zip(params["mu"], sd, strict=True))}
    draws.update({f"b_{i}": jnp.broadcast_to(b, (4000, b.size))
                  for i, b in enumerate(params["bias"])})  # fmt: skip
    ll = log_likelihood(bnn_model, draws, x, y, layers=layers)["y"]
    np.testing.assert_allclose(lrt.mean(), -ll.mean(), rtol=0.03)


# ---- sparsity invariants through training --------------------------------------------------


def test_active_set_constant_and_inactive_weights_zero():
    _solver, post = small_fit(0.1)
    sizes = post.extra["support_sizes"]
    assert sizes.shape[0] == post.extra["steps"]
    np.testing.assert_array_equal(sizes, np.broadcast_to(post.extra["active_counts"], sizes.shape))
    for m, w, sd in zip(post.masks, post.mean_weights, post.weight_sd, strict=True):
        assert np.all(w[~m] == 0.0) and np.all(sd[~m] == 0.0)
    for m, draws in zip(post.masks, post.sample_weights(5), strict=True):
        assert np.all(np.asarray(draws)[:, ~m] == 0.0)
    assert abs(post.density - 0.1) < 0.01
    # the support moved (the static baseline's does not)
    moved = [np.mean(a != b) for a, b in zip(post.masks, post.extra["initial_masks"], strict=True)]
    assert max(moved) > 0
    _, static = small_fit(0.1, "static")
    for a, b in zip(static.masks, static.extra["initial_masks"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_ssvi_beats_a_static_random_mask_on_digits():
    xtr, xte, ytr, yte = digits()
    acc = {}
    for mode in ("ssvi", "static"):
        accs = []
        for seed in (0, 1):
            post = SSVI(0.05, hidden=(64,), epochs=40, update_every=20, mask_update=mode,
                        seed=seed, progress_bar=False).fit(xtr, ytr)  # fmt: skip
            accs.append(np.mean(post.predict_summary(xte)["label"] == yte))
        acc[mode] = np.mean(accs)
    assert acc["ssvi"] > acc["static"] + 0.01, acc
    assert acc["ssvi"] > 0.85, acc


# ---- prediction, ArviZ, pruning, regression, CNN, NumPyro model ---------------------------


def test_predict_and_arviz():
    import arviz as az

    _solver, post = small_fit(0.1)
    _, xte, _, yte = digits()
    pred = post.predict_summary(xte, num_samples=10)
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, rtol=1e-5)
    assert np.all(pred["entropy"] >= 0) and np.all(pred["entropy"] <= np.log(10) + 1e-6)
    assert np.mean(pred["label"] == yte) > 0.5
    # a second call of the same shape reuses the compiled draws and forward pass
    again, compiled = compile_records(post.predict_summary, xte, num_samples=10)
    assert not compiled, compiled
    np.testing.assert_array_equal(again["probs"], pred["probs"])
    # posterior predictive draws of the labels: their frequencies are the averaged probabilities
    draws = post.predict(xte)["y"]
    assert draws.shape == (100, len(yte)) and draws.dtype.kind == "i"
    freq = np.mean(draws[:, :, None] == np.arange(10), axis=0)
    ref = post.predict_summary(xte, num_samples=100)["probs"]
    assert np.mean(np.abs(freq - ref)) < 0.03
    tree = post.to_arviz()
    w0 = tree.posterior["w_0"]
    assert w0.dims == ("chain", "draw", "active_0") and w0.shape[-1] == post.masks[0].sum()
    assert set(tree.posterior.data_vars) == {f"w_{i}" for i in range(len(post.layers))}
    _, _, ytr, _ = digits()
    assert tree.log_likelihood["y"].shape == (1, 100, len(ytr))  # the training data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k on a few points
        loo = az.loo(tree)
    assert np.isfinite(loo.elpd) and loo.n_data_points == len(ytr)
    lpd = post.score(xte, yte)
    assert np.isfinite(lpd) and lpd > len(yte) * np.log(0.1)  # better than a uniform guess


def test_prune_keeps_the_top_fraction():
    _, post = small_fit(1.0)
    pruned = post.prune(0.2)
    for _layer, m in zip(pruned.layers, pruned.masks, strict=True):
        assert m.sum() == round(0.2 * m.size)
    assert abs(pruned.density - 0.2) < 0.01
    assert all(np.all(w[~m] == 0) for w, m in zip(pruned.mean_weights, pruned.masks, strict=True))


def test_regression_on_diabetes():
    x, y = load_diabetes(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    post = SSVI(0.2, task="regression", hidden=(32,), epochs=60, progress_bar=False).fit(xtr, ytr)
    pred = post.predict_summary(xte)
    r2 = 1 - np.mean((pred["mean"] - yte) ** 2) / np.var(yte)
    assert r2 > 0.3, r2
    assert np.all(pred["sd"] > 0)
    assert post.score(xte, yte, pointwise=True)["y"].shape == (len(yte),)
    draws = post.predict(xte)["y"]
    np.testing.assert_allclose(draws.mean(0), pred["mean"], atol=4 * pred["sd"].max() / 10)


def test_small_cnn_trains():
    xtr, xte, ytr, yte = digits()
    post = SSVI(0.3, conv=(4,), hidden=(32,), image_shape=(8, 8, 1), epochs=10,
                progress_bar=False).fit(xtr, ytr)  # fmt: skip
    assert post.layers[0].kind == "conv"
    assert np.mean(post.predict_summary(xte, num_samples=5)["label"] == yte) > 0.6


def test_bnn_model_is_a_numpyro_model():
    from numpyro import handlers

    layers = build_layers(3, 2, hidden=(4,))
    masks = [np.eye(3, 4, dtype=bool), np.ones((4, 2), bool)]
    x = jnp.ones((5, 3))
    tr = handlers.trace(handlers.seed(bnn_model, 0)).get_trace(
        x, jnp.zeros(5, jnp.int32), layers=layers, masks=masks
    )
    assert tr["w_0"]["value"].shape == (3,) and tr["w_1"]["value"].shape == (8,)
    assert np.isfinite(float(tr["y"]["fn"].log_prob(tr["y"]["value"]).sum()))


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(density=0.0), "density"),
        (dict(density=1.5), "density"),
        (dict(update_every=0), "update_every"),
        (dict(criterion="magnitude"), "criterion"),
        (dict(conv=(4,)), "image_shape"),
        (dict(kl_weight=-1.0), "kl_weight"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SSVI(**kwargs)


def test_bad_data():
    xtr, xte, ytr, yte = digits()
    s = SSVI(0.5, hidden=(8,), epochs=1, progress_bar=False)
    with pytest.raises(ValueError, match="`y` labels"):
        s.fit(xtr, np.where(ytr == 3, -1, ytr))
    bad = xtr.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="`x` must be finite"):
        s.fit(bad, ytr)
    with pytest.raises(ValueError, match="shape"):
        s.fit(xtr, ytr[:-1])
    _, post = small_fit(0.1)
    with pytest.raises(ValueError, match="`y` labels"):
        post.score(xte, yte + 5)
    with pytest.raises(ValueError, match="64 features"):
        post.predict(xte[:, :10])
