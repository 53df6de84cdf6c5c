r"""SSVI: Bayesian neural networks trained by sparse subspace variational inference.

Li, Miao, Qiu and Zhang, "Training Bayesian Neural Networks with Sparse Subspace Variational
Inference", ICLR 2024 (arXiv 2402.11025).

**Model.** An MLP (optionally preceded by small convolutional layers) with weights
:math:`\theta \in \mathbb R^d`, prior :math:`\theta_i \sim \mathcal N(0, \sigma_p^2)` and a
categorical (classification) or Gaussian (regression) likelihood. Biases (and the regression
noise scale) are point estimates.

**Variational family.** A support :math:`\gamma \subset \{1..d\}` of fixed size
:math:`|\gamma| = s` per layer, and

.. math::

    q_{\phi,\gamma}(\theta) = \prod_{i\in\gamma} \mathcal N(\theta_i;\mu_i,\sigma_i^2)
    \prod_{i\notin\gamma} \delta_0(\theta_i),\qquad \sigma_i = \operatorname{softplus}(\rho_i).

Inactive weights are exactly zero, in training and in every posterior draw. The objective is the
β-weighted ELBO on the active coordinates,

.. math::

    \mathcal L(\phi,\gamma) = \tfrac1N\,\mathbb E_q[-\log p(\mathcal D\mid\theta)]
    + \tfrac{\beta_t}{N} \sum_{i\in\gamma}\Big[\log\tfrac{\sigma_p}{\sigma_i}
    + \tfrac{\sigma_i^2+\mu_i^2}{2\sigma_p^2} - \tfrac12\Big],

with :math:`\beta_t` a linear warm-up to ``kl_weight`` (:func:`bayeslr.infer.linear_warmup`) and
the expectation estimated with the local reparameterization trick (one noise draw per
activation: mean :math:`x\mu`, variance :math:`x^2\sigma^2`).

**Alternating optimization.** Every step is an optax step on :math:`(\mu,\rho)` (gradients and
optimizer moments masked, so inactive weights stay zero). Every :math:`\Delta T` steps, while
:math:`t < T_{end} = 0.75\,T`, the support is updated instead, per sparse layer:

1. *removal*: keep the :math:`s - n_t` active weights with the highest score,
   :math:`n_t = \lfloor \alpha_t s\rfloor`, :math:`\alpha_t = \tfrac\alpha2(1+\cos(\pi t/T_{end}))`;
   scores (``criterion``) of the folded normal :math:`|\theta|`: ``"snr_abs"`` (default,
   :math:`\mathbb E|\theta|/\operatorname{sd}|\theta|`), ``"mean_abs"`` (:math:`\mathbb
   E|\theta| = \sigma\sqrt{2/\pi}\,e^{-\mu^2/2\sigma^2}
   + \mu\,\operatorname{erf}(\mu/\sqrt2\sigma)`),
   ``"snr"`` (:math:`|\mu|/\sigma`), ``"abs_mean"`` (:math:`|\mu|`);
2. *addition*: among the weights not kept (just-removed ones included), add the :math:`n_t` with
   the largest :math:`|\partial\mathcal L/\partial\mu|` of the *dense* gradient (taken with respect
   to the effective weight :math:`\mu\odot m`, so it exists off the support). New weights start at
   :math:`\mu = 0` and :math:`\rho` = the layer's mean active :math:`\rho`; a weight removed and
   re-added keeps its values. Removal and addition use ranks, not ``top_k``, so :math:`n_t` can be
   traced and every shape is static under ``jit``.

``density=1.0`` is dense mean-field VI (no support updates); ``mask_update="static"`` keeps the
initial random support (the random-mask baseline); :meth:`SSVIPosterior.prune` prunes a trained
posterior (dense VI pruned after training).

**Cost.** A step costs about three sparse forward passes (:math:`3 f_S`); a support update adds
one dense backward pass (:math:`2 f_S + f_D`). Training FLOPs are reported analytically
(:func:`training_flops`); the arrays themselves are dense with a mask, so the *measured* time on
CPU does not fall with the density.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeslr._validation import check_int, check_real
from bayeslr.infer import Posterior, linear_warmup

__all__ = [
    "SSVI",
    "SSVIPosterior",
    "bnn_model",
    "removal_scores",
    "support_update",
    "training_flops",
    "CRITERIA",
]

CRITERIA = ("snr_abs", "mean_abs", "snr", "abs_mean")
TASKS = ("classification", "regression")
MASK_UPDATES = ("ssvi", "static")


# --------------------------------------------------------------------------------------------
# architecture


class Layer(NamedTuple):
    """One weight layer: ``kind`` is ``"dense"`` (W of shape (in, out)) or ``"conv"`` (3×3,
    HWIO, SAME padding, followed by 2×2 average pooling); ``sparse`` whether SSVI sparsifies it."""

    kind: str
    shape: tuple[int, ...]
    sparse: bool


def build_layers(
    in_features: int,
    n_out: int,
    hidden: Sequence[int] = (128, 128),
    conv: Sequence[int] = (),
    image_shape: tuple[int, int, int] | None = None,
    dense_first: bool = False,
) -> tuple[Layer, ...]:
    """The layer list of ``[conv 3×3 + pool]* -> [dense + relu]* -> dense``."""
    layers = []
    if conv:
        h, w, c = image_shape
        for ch in conv:
            layers.append(("conv", (3, 3, c, int(ch))))
            h, w, c = h // 2, w // 2, int(ch)
        fan = h * w * c
    else:
        fan = in_features
    for width in (*hidden, n_out):
        layers.append(("dense", (fan, int(width))))
        fan = int(width)
    return tuple(
        Layer(kind, shape, not (dense_first and i == 0)) for i, (kind, shape) in enumerate(layers)
    )


def _layer_forward(layer: Layer, h, W, b):
    if layer.kind == "conv":
        out = jax.lax.conv_general_dilated(
            h, W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return out + b
    return h.reshape(h.shape[0], -1) @ W + b


def _activate(layer: Layer, h):
    h = jax.nn.relu(h)
    if layer.kind == "conv":
        h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
    return h


def network_forward(layers, W, b, x, S2=None, key=None, image_shape=None):
    r"""The network's output (logits, or the regression mean) for weights ``W`` and biases ``b``.

    With ``S2`` (per-layer weight variances :math:`\sigma^2\odot m`) and ``key`` the local
    reparameterization trick: each pre-activation is :math:`x\mu + \sqrt{x^2\sigma^2 +
    10^{-8}}\,\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 1)` per example and unit.
    """
    h = x if image_shape is None else x.reshape(x.shape[0], *image_shape)
    keys = None if key is None else jax.random.split(key, len(layers))
    for i, layer in enumerate(layers):
        if layer.kind == "dense":
            h = h.reshape(h.shape[0], -1)
        m = _layer_forward(layer, h, W[i], b[i])
        if S2 is not None:
            v = _layer_forward(layer, h * h, S2[i], jnp.zeros_like(b[i]))
            m = m + jnp.sqrt(v + 1e-8) * jax.random.normal(keys[i], m.shape, m.dtype)
        h = m if i == len(layers) - 1 else _activate(layer, m)
    return h


# --------------------------------------------------------------------------------------------
# scores and the support update


def _folded_moments(mu, sigma):
    """Mean and standard deviation of |θ|, θ ~ N(μ, σ²) (folded normal), stable for |μ| ≫ σ."""
    sig = jnp.maximum(sigma, jnp.finfo(sigma.dtype).tiny)
    z = mu / sig
    mean = sig * jnp.sqrt(2.0 / jnp.pi) * jnp.exp(-0.5 * z**2) + mu * jax.scipy.special.erf(
        z / jnp.sqrt(2.0)
    )
    var = mu**2 + sig**2 - mean**2
    far = jnp.abs(z) > 8.0  # the folded normal is the normal there: |θ| ≈ |μ|, sd ≈ σ
    mean = jnp.where(far, jnp.abs(mu), mean)
    sd = jnp.where(far, sig, jnp.sqrt(jnp.maximum(var, (1e-6 * sig) ** 2)))
    return mean, sd


def removal_scores(mu, sigma, criterion: str = "snr_abs"):
    r"""Per-weight removal score (higher = kept): ``"snr_abs"`` :math:`\mathbb E|\theta| /
    \operatorname{sd}|\theta|`, ``"mean_abs"`` :math:`\mathbb E|\theta|`, ``"snr"``
    :math:`|\mu|/\sigma`, ``"abs_mean"`` :math:`|\mu|` (θ ~ N(μ, σ²)); NaN → 0."""
    if criterion not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {CRITERIA}; got {criterion!r}.")
    if criterion == "abs_mean":
        s = jnp.abs(mu)
    elif criterion == "snr":
        s = jnp.abs(mu) / jnp.maximum(sigma, jnp.finfo(sigma.dtype).tiny)
    else:
        mean, sd = _folded_moments(mu, sigma)
        s = mean if criterion == "mean_abs" else mean / sd
    return jnp.where(jnp.isfinite(s), s, 0.0)


def _ranks(score):
    """0 for the largest score, 1 for the next, …; ties by position."""
    return jnp.argsort(jnp.argsort(-score, stable=True), stable=True)


def support_update(mask, score, grad, n_prune, max_prune: int | None = None):
    r"""One removal/addition on one layer (flattened or not; shapes are kept).

    Keeps the ``s - n_prune`` active entries with the highest ``score`` (``s`` = active count),
    then adds the ``n_prune`` entries with the largest ``|grad|`` among those not kept.
    ``n_prune`` may be traced. With a static bound ``max_prune >= n_prune`` the selection uses
    two ``lax.top_k`` of size ``max_prune`` (cheap: ``max_prune`` is a fraction of ``s``);
    without it, full ranks (two double ``argsort``). Ties go to the lower index either way.

    Returns:
        ``(new_mask, kept, added)`` boolean arrays; ``new_mask`` has exactly ``s`` entries.
    """
    shape = mask.shape
    m, sc, g = mask.ravel(), score.ravel(), jnp.abs(grad.ravel())
    if max_prune is None:
        n_active = jnp.sum(m)
        keep = m & (_ranks(jnp.where(m, sc, -jnp.inf)) < n_active - n_prune)
        add = ~keep & (_ranks(jnp.where(keep, -jnp.inf, g)) < n_prune)
    else:
        k = max(int(max_prune), 1)
        take = jnp.arange(k) < n_prune
        # the n_prune lowest-scoring active entries (ties: the higher index goes first)
        _, low = jax.lax.top_k(jnp.where(m, -sc, -jnp.inf)[::-1], k)
        removed = jnp.zeros_like(m).at[m.size - 1 - low].set(take)
        keep = m & ~removed
        _, best = jax.lax.top_k(jnp.where(keep, -jnp.inf, g), k)
        add = jnp.zeros_like(m).at[best].set(take)
    return (keep | add).reshape(shape), keep.reshape(shape), add.reshape(shape)


def _cosine_fraction(t, t_end, alpha):
    return 0.5 * alpha * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t / t_end, 1.0)))


# --------------------------------------------------------------------------------------------
# the NumPyro model (for NUTS / SVI through bayeslr.infer.fit)


def bnn_model(
    x,
    y=None,
    *,
    layers: Sequence[Layer],
    masks: Sequence[Any] | None = None,
    prior_scale: float = 0.1,
    task: str = "classification",
    image_shape: tuple[int, int, int] | None = None,
):
    r"""The Bayesian network as a plain NumPyro model: ``w_<l> ~ N(0, σ_p²)`` on the active
    entries of layer ``l`` (all entries when ``masks`` is ``None``; inactive ones are exactly 0),
    ``b_<l> ~ N(0, 1)``, and ``y ~ Categorical(logits)`` or ``y ~ N(mean, noise²)`` with
    ``noise ~ HalfNormal(1)``. Usable with :func:`bayeslr.infer.fit` (NUTS or SVI) on small
    networks; :class:`SSVI` is the sparse variational fit."""
    import numpyro
    import numpyro.distributions as dist

    W, b = [], []
    for i, layer in enumerate(layers):
        m = None if masks is None else jnp.asarray(masks[i])
        n = int(np.prod(layer.shape)) if m is None else int(np.sum(np.asarray(masks[i])))
        w = numpyro.sample(f"w_{i}", dist.Normal(0.0, prior_scale).expand([n]).to_event(1))
        if m is None:
            W.append(w.reshape(layer.shape))
        else:
            W.append(jnp.zeros(layer.shape, w.dtype).at[np.nonzero(np.asarray(m))].set(w))
        b.append(
            numpyro.sample(f"b_{i}", dist.Normal(0.0, 1.0).expand([layer.shape[-1]]).to_event(1))
        )
    out = network_forward(layers, W, b, x, image_shape=image_shape)
    with numpyro.plate("data", x.shape[0]):
        if task == "classification":
            numpyro.sample("y", dist.Categorical(logits=out), obs=y)
        else:
            noise = numpyro.sample("noise", dist.HalfNormal(1.0))
            numpyro.sample("y", dist.Normal(out[:, 0], noise), obs=y)


# --------------------------------------------------------------------------------------------
# FLOPs


def _layer_flops(layer: Layer, image_hw: tuple[int, int] | None) -> tuple[float, tuple | None]:
    """Dense multiply-add FLOPs (2 per MAC) of one layer per example, and the next image size."""
    if layer.kind == "conv":
        h, w = image_hw
        return 2.0 * h * w * int(np.prod(layer.shape)), (h // 2, w // 2)
    return 2.0 * int(np.prod(layer.shape)), image_hw


def training_flops(
    layers: Sequence[Layer],
    densities: Sequence[float],
    *,
    steps: int,
    batch_size: int,
    update_every: int | None,
    update_until: int = 0,
    image_shape: tuple[int, int, int] | None = None,
) -> dict[str, float]:
    r"""Analytic training FLOPs (the RigL convention the paper's code inherits).

    Per example: :math:`f_S = \sum_l \delta_l f_l` (sparse forward, :math:`\delta_l` the layer's
    density), :math:`f_D = \sum_l f_l`. A step costs :math:`3 f_S` (forward and a backward of
    about twice the forward; the LRT's variance pass is counted in neither, as in the paper); a
    support update (every ``update_every`` steps up to ``update_until``) adds the dense gradient,
    :math:`2 f_S + f_D`.

    Returns:
        ``{"total", "per_step", "forward_sparse", "forward_dense"}``.
    """
    hw = None if image_shape is None else tuple(image_shape[:2])
    fs = fd = 0.0
    for layer, dens in zip(layers, densities, strict=True):
        f, hw = _layer_flops(layer, hw)
        fs += dens * f
        fd += f
    n_updates = 0 if not update_every else update_until // update_every
    total = batch_size * (3.0 * fs * steps + n_updates * (2.0 * fs + fd))
    return {
        "total": total,
        "per_step": total / max(steps, 1),
        "forward_sparse": fs,
        "forward_dense": fd,
    }


# --------------------------------------------------------------------------------------------
# the posterior


class SSVIPosterior(Posterior):
    r"""The fitted sparse mean-field posterior :math:`q_{\phi,\gamma}`.

    ``samples`` hold ``num_draws`` draws of the active weights of each layer (``w_<l>``, dims
    ``active_<l>``) and the point-estimated biases (``b_<l>``) for :meth:`to_arviz`; the
    ``log_likelihood`` group is the pointwise predictive log-density of the held-out set given to
    :meth:`SSVI.fit` (``validation=``; else the training set), so ``az.loo`` works on it.
    ``extra`` has ``loss`` (per step), ``support_sizes`` (active count per layer after every
    step, ``(steps, layers)``), ``active_counts``, ``initial_masks``, ``flops``
    (:func:`training_flops`) and ``steps``.
    """

    def _setup(self, *, layers, params, masks, task, n_classes, x_stats, y_stats, image_shape,
               eval_data, num_draws, seed):  # fmt: skip
        self.layers = tuple(layers)
        self.params = jax.tree.map(np.asarray, params)
        self.masks = [np.asarray(m, bool) for m in masks]
        self.task = task
        self.n_classes = n_classes
        self.x_stats = x_stats
        self.y_stats = y_stats
        self.image_shape = image_shape
        self._eval = eval_data
        self._num_draws = num_draws
        self._seed = seed
        return self

    # ---- the variational distribution --------------------------------------------------
    @property
    def mean_weights(self) -> list[np.ndarray]:
        """:math:`\\mu\\odot m` per layer (exact zeros off the support)."""
        return [mu * m for mu, m in zip(self.params["mu"], self.masks, strict=True)]

    @property
    def weight_sd(self) -> list[np.ndarray]:
        """:math:`\\sigma\\odot m` per layer."""
        return [
            np.asarray(jax.nn.softplus(rho)) * m
            for rho, m in zip(self.params["rho"], self.masks, strict=True)
        ]

    @property
    def density(self) -> float:
        """Active fraction of all weights."""
        return float(sum(m.sum() for m in self.masks) / sum(m.size for m in self.masks))

    def sample_weights(self, num_samples: int, rng_key=0) -> list[jax.Array]:
        """``num_samples`` draws of every layer's weights, ``(num_samples, *shape)``."""
        key = jax.random.PRNGKey(rng_key) if isinstance(rng_key, int) else rng_key
        mu = [jnp.asarray(w, jnp.float32) for w in self.mean_weights]
        sd = [jnp.asarray(s, jnp.float32) for s in self.weight_sd]
        return _draw_weights(key, mu, sd, [jnp.asarray(m) for m in self.masks], num_samples)

    # ---- prediction --------------------------------------------------------------------
    def _outputs(self, x, num_samples, rng_key, mean_weights):
        x = _check_features("x", x, self.x_stats[0].shape[0])
        xs = jnp.asarray((x - self.x_stats[0]) / self.x_stats[1], jnp.float32)
        b = [jnp.asarray(v) for v in self.params["bias"]]
        if mean_weights:
            W = [jnp.asarray(w, jnp.float32) for w in self.mean_weights]
            return network_forward(self.layers, W, b, xs, image_shape=self.image_shape)[None]
        Ws = self.sample_weights(num_samples, rng_key)
        return _forward_draws(self.layers, self.image_shape, Ws, b, xs)

    def predict(  # type: ignore[override]
        self, x, num_samples: int = 50, rng_key=0, mean_weights: bool = False, **_: Any
    ) -> dict[str, np.ndarray]:
        r"""Posterior predictive by Monte Carlo over ``num_samples`` weight draws.

        Classification: ``probs`` :math:`\bar p = \frac1K\sum_k \mathrm{softmax}(f(x;\theta_k))`
        (averaged probabilities, not logits), ``label`` (argmax), ``entropy`` :math:`-\sum_c
        \bar p_c\log\bar p_c` (predictive entropy, nats). Regression: ``mean`` and ``sd`` (total:
        the spread of the draws plus the noise), in the units of ``y``. ``mean_weights=True``
        uses :math:`\mu` alone (one deterministic pass).
        """
        check_int("num_samples", num_samples, minimum=1)
        out = self._outputs(x, num_samples, rng_key, mean_weights)
        if self.task == "classification":
            p = jnp.mean(jax.nn.softmax(out, axis=-1), axis=0)
            ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0), axis=-1)
            return {"probs": np.asarray(p), "label": np.asarray(jnp.argmax(p, -1)),
                    "entropy": np.asarray(ent)}  # fmt: skip
        mu_y, sd_y = self.y_stats
        f = out[..., 0]
        noise = float(np.exp(self.params["log_noise"]))
        var = jnp.var(f, axis=0) + noise**2
        return {"mean": np.asarray(jnp.mean(f, 0)) * sd_y + mu_y,
                "sd": np.asarray(jnp.sqrt(var)) * sd_y}  # fmt: skip

    def pointwise_log_likelihood(self, x, y, num_samples: int = 50, rng_key=0) -> np.ndarray:
        r""":math:`\log p(y_i\mid x_i,\theta_k)` per draw and point, ``(num_samples, n)``."""
        out = self._outputs(x, num_samples, rng_key, False)
        if self.task == "classification":
            y = _check_labels("y", y, self.n_classes, out.shape[1])
            lp = jax.nn.log_softmax(out, -1)
            return np.asarray(jnp.take_along_axis(lp, jnp.asarray(y)[None, :, None], -1)[..., 0])
        mu_y, sd_y = self.y_stats
        ys = (np.asarray(y, np.float64) - mu_y) / sd_y
        noise = float(np.exp(self.params["log_noise"]))
        z = (ys[None] - np.asarray(out[..., 0])) / noise
        return -0.5 * z**2 - np.log(noise * sd_y) - 0.5 * np.log(2 * np.pi)

    def log_likelihood(self) -> dict[str, jax.Array]:
        x, y = self._eval
        return {"y": self.pointwise_log_likelihood(x, y, self._num_draws, self._seed)[None]}

    def _has_log_likelihood(self) -> bool:
        return True

    def prune(self, density: float, criterion: str = "snr_abs") -> SSVIPosterior:
        """Dense VI pruned after training: keep the top ``density`` fraction of each sparse
        layer's active weights by ``criterion``; the rest become exactly zero."""
        density = _check_density(density)
        masks = []
        for layer, mu, sd, m in zip(self.layers, self.mean_weights, self.weight_sd, self.masks,
                                    strict=True):  # fmt: skip
            if not layer.sparse:
                masks.append(m)
                continue
            s = np.where(m, np.asarray(removal_scores(jnp.asarray(mu), jnp.asarray(sd), criterion)),
                         -np.inf)  # fmt: skip
            k = max(1, round(density * m.size))
            keep = np.zeros(m.size, bool)
            keep[np.argsort(-s.ravel(), kind="stable")[:k]] = True
            masks.append(keep.reshape(m.shape) & m)
        post = _make_posterior(self.layers, self.params, masks, self.task, self.n_classes,
                               self.x_stats, self.y_stats, self.image_shape, self._eval,
                               self._num_draws, self._seed, dict(self.extra))  # fmt: skip
        post.method = self.method + f"-pruned{density:g}"
        return post


def _make_posterior(layers, params, masks, task, n_classes, x_stats, y_stats, image_shape,
                    eval_data, num_draws, seed, extra) -> SSVIPosterior:  # fmt: skip
    key = jax.random.PRNGKey(seed)
    samples, dims = {}, {}
    for i, (mu, rho, m) in enumerate(zip(params["mu"], params["rho"], masks, strict=True)):
        idx = np.nonzero(np.asarray(m).ravel())[0]
        mu_a = np.asarray(mu).ravel()[idx]
        sd_a = np.asarray(jax.nn.softplus(jnp.asarray(rho))).ravel()[idx]
        eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (num_draws, idx.size)))
        samples[f"w_{i}"] = mu_a + sd_a * eps
        samples[f"b_{i}"] = np.broadcast_to(np.asarray(params["bias"][i]),
                                            (num_draws, np.size(params["bias"][i])))  # fmt: skip
        dims[f"w_{i}"] = [f"active_{i}"]
        dims[f"b_{i}"] = [f"unit_{i}"]
    x_eval, y_eval = eval_data
    post = SSVIPosterior.from_samples(
        samples, group_by_chain=False, method="ssvi", dims=dims,
        observed={"y": np.asarray(y_eval)}, extra=extra,
    )  # fmt: skip
    return post._setup(layers=layers, params=params, masks=masks, task=task,
                       n_classes=n_classes, x_stats=x_stats, y_stats=y_stats,
                       image_shape=image_shape, eval_data=(x_eval, y_eval),
                       num_draws=num_draws, seed=seed)  # fmt: skip


# --------------------------------------------------------------------------------------------
# input checks


def _check_density(density) -> float:
    return check_real("density", density, low=0.0, high=1.0, low_open=True)


def _check_features(name: str, x, n_features: int | None = None) -> np.ndarray:
    a = np.asarray(x, np.float64) if not hasattr(x, "toarray") else x.toarray().astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (n, features); got shape {a.shape}.")
    if n_features is not None and a.shape[1] != n_features:
        raise ValueError(
            f"`{name}` must have {n_features} features (columns), as at the fit; got {a.shape[1]}."
        )
    if not np.all(np.isfinite(a)):
        bad = int(np.sum(~np.isfinite(a)))
        raise ValueError(f"`{name}` must be finite; it has {bad} NaN/inf entries.")
    return a


def _check_labels(name: str, y, n_classes: int, n: int) -> np.ndarray:
    a = np.asarray(y)
    if a.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},) (one label per row); got {a.shape}.")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"`{name}` must hold integer class labels; got dtype {a.dtype}.")
        a = a.astype(np.int64)
    if a.min() < 0 or a.max() >= n_classes:
        raise ValueError(
            f"`{name}` labels must lie in [0, {n_classes}); got range [{a.min()}, {a.max()}]."
        )
    return a.astype(np.int32)


# --------------------------------------------------------------------------------------------
# the fit


@functools.partial(jax.jit, static_argnames=("layers", "density", "init_sd"))
def _init_weights(key, layers, density, init_sd):
    """Initial variational parameters and random supports, compiled as one program (run
    eagerly, every ``normal`` and ``permutation`` of a new shape compiled on its own: about a
    second per fit). The random streams are the eager ones, so fits are unchanged."""
    mu, rho, bias, masks = [], [], [], []
    rho0 = float(np.log(np.expm1(init_sd)))
    for layer in layers:
        k1, k2, key = jax.random.split(key, 3)
        size = math.prod(layer.shape)
        dens = density if layer.sparse else 1.0
        n_active = max(1, round(dens * size))
        perm = jax.random.permutation(k1, size)
        m = jnp.zeros(size, bool).at[perm[:n_active]].set(True).reshape(layer.shape)
        fan_in = size // layer.shape[-1]
        scale = math.sqrt(2.0 / max(1.0, dens * fan_in))  # He init on the active fan-in
        mu.append(scale * jax.random.normal(k2, layer.shape, jnp.float32) * m)
        rho.append(jnp.full(layer.shape, rho0, jnp.float32))
        bias.append(jnp.zeros((layer.shape[-1],), jnp.float32))
        masks.append(m)
    return {"mu": mu, "rho": rho, "bias": bias}, masks


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _draw_weights(key, mu, sd, masks, num_samples):
    """``(mu + sd * eps) * m`` per layer, ``num_samples`` draws, as one compiled program."""
    keys = jax.random.split(key, len(masks))
    return [
        (w + s * jax.random.normal(k, (num_samples, *w.shape), jnp.float32)) * m
        for k, w, s, m in zip(keys, mu, sd, masks, strict=True)
    ]


@functools.partial(jax.jit, static_argnames=("layers", "image_shape"))
def _forward_draws(layers, image_shape, Ws, b, xs):
    """The network's outputs under each weight draw, ``(num_samples, n, out)``; compiled once
    per architecture and shape (not once per :meth:`SSVIPosterior.predict` call)."""
    return jax.vmap(lambda W: network_forward(layers, W, b, xs, image_shape=image_shape))(Ws)


class TrainState(NamedTuple):
    params: dict
    masks: list
    opt_state: Any
    step: jax.Array


class SSVI:
    r"""Sparse subspace variational inference for a Bayesian MLP/CNN (module docstring has the
    objective and the algorithm).

    Example::

        from sklearn.datasets import load_digits
        x, y = load_digits(return_X_y=True)
        post = SSVI(density=0.1, hidden=(128, 128), epochs=100).fit(x[:1400], y[:1400])
        pred = post.predict(x[1400:])          # probs, label, entropy (MC over 50 draws)
        idata = post.to_arviz()                # active weights; log-likelihood for az.loo

    Args:
        density: :math:`s/d` of every sparse layer, in (0, 1]; 1.0 is dense mean-field VI.
        hidden: widths of the hidden dense layers.
        conv: channels of 3×3 convolutional layers (each followed by ReLU and 2×2 average
            pooling) before the dense layers; needs ``image_shape``.
        image_shape: ``(H, W, C)`` of an input row (C-order reshape), for ``conv``.
        task: ``"classification"`` (categorical likelihood) or ``"regression"`` (Gaussian, with
            a learned noise scale; ``y`` is standardized internally).
        dense_first: keep the first layer dense (the paper's code does, for a ResNet whose first
            convolution is a tiny share of the weights; in a small MLP the first layer is a large
            share, so the default sparsifies every layer and ``density`` is the overall one).
        criterion: removal score (module docstring), default ``"snr_abs"``.
        mask_update: ``"ssvi"`` (removal/addition) or ``"static"`` (the random initial support,
            the baseline).
        update_every: :math:`\Delta T`, steps between support updates (≥ 1).
        update_fraction: :math:`\alpha`, the initial removal fraction (cosine-annealed).
        update_until: :math:`T_{end}` as a fraction of all steps (support frozen after it).
        prior_scale: :math:`\sigma_p`.
        kl_weight: the final β: the KL is down-weighted, as in the paper's code (0.01 on
            CIFAR-10); 0.1 (default) gave the best dense-VI accuracy on digits (β = 1: 92 %,
            0.1: 97.5 %); warmed up linearly over ``kl_warmup`` of the steps
            (:func:`bayeslr.infer.linear_warmup`).
        kl_warmup: fraction of the steps for the warm-up (0 for none).
        init_sd: initial :math:`\sigma` of every weight.
        epochs, batch_size: passes over the data and minibatch size.
        learning_rate: peak rate of the default optimizer (Adam with cosine decay).
        optimizer: any ``optax.GradientTransformation`` instead of the default.
        num_draws: posterior draws stored for :meth:`SSVIPosterior.to_arviz`.
        seed: the random seed (initial support, weights, minibatches, LRT noise).
        progress_bar: tqdm bar over epochs.
    """

    def __init__(
        self,
        density: float = 0.1,
        *,
        hidden: Sequence[int] = (128, 128),
        conv: Sequence[int] = (),
        image_shape: tuple[int, int, int] | None = None,
        task: str = "classification",
        dense_first: bool = False,
        criterion: str = "snr_abs",
        mask_update: str = "ssvi",
        update_every: int = 50,
        update_fraction: float = 0.3,
        update_until: float = 0.75,
        prior_scale: float = 0.1,
        kl_weight: float = 0.1,
        kl_warmup: float = 0.5,
        init_sd: float = 1e-3,
        epochs: int = 100,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        optimizer: optax.GradientTransformation | None = None,
        num_draws: int = 100,
        seed: int = 0,
        progress_bar: bool = True,
    ):
        self.density = _check_density(density)
        self.hidden = tuple(check_int("hidden", h) for h in hidden)
        self.conv = tuple(check_int("conv", c) for c in conv)
        if self.conv:
            if image_shape is None or len(tuple(image_shape)) != 3:
                raise ValueError(
                    f"`image_shape` must be (H, W, C) when `conv` is given; got {image_shape!r}."
                )
            image_shape = tuple(check_int("image_shape", int(v)) for v in image_shape)
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}; got {task!r}.")
        self.task = task
        self.dense_first = bool(dense_first)
        if criterion not in CRITERIA:
            raise ValueError(f"`criterion` must be one of {CRITERIA}; got {criterion!r}.")
        self.criterion = criterion
        if mask_update not in MASK_UPDATES:
            raise ValueError(f"`mask_update` must be one of {MASK_UPDATES}; got {mask_update!r}.")
        self.mask_update = mask_update
        self.update_every = check_int("update_every", update_every, minimum=1)
        self.update_fraction = check_real("update_fraction", update_fraction, low=0.0, high=1.0)
        self.update_until = check_real("update_until", update_until, low=0.0, high=1.0)
        self.kl_warmup = check_real("kl_warmup", kl_warmup, low=0.0, high=1.0)
        self.prior_scale = check_real("prior_scale", prior_scale, low=0.0, low_open=True)
        self.kl_weight = check_real("kl_weight", kl_weight, low=0.0)
        self.init_sd = check_real("init_sd", init_sd, low=0.0, low_open=True)
        self.learning_rate = check_real("learning_rate", learning_rate, low=0.0, low_open=True)
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.optimizer = optimizer
        self.num_draws = check_int("num_draws", num_draws)
        self.seed = check_int("seed", seed, minimum=0)
        self.progress_bar = bool(progress_bar)

    # ---- pieces -------------------------------------------------------------------------
    def _init(self, layers, key, log_noise):
        params, masks = _init_weights(key, tuple(layers), self.density, self.init_sd)
        if log_noise is not None:
            params["log_noise"] = jnp.asarray(log_noise, jnp.float32)
        return params, masks

    def _kl(self, params, masks):
        sp = self.prior_scale
        total = 0.0
        for mu, rho, m in zip(params["mu"], params["rho"], masks, strict=True):
            sig = jax.nn.softplus(rho)
            kl = jnp.log(sp / sig) + (sig**2 + mu**2) / (2 * sp**2) - 0.5
            total = total + jnp.sum(jnp.where(m, kl, 0.0))
        return total

    def _nll(self, out, y, params):
        if self.task == "classification":
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out, -1), y[:, None], 1))
        s = jnp.exp(params["log_noise"])
        return jnp.mean(0.5 * ((y - out[:, 0]) / s) ** 2 + jnp.log(s) + 0.5 * jnp.log(2 * jnp.pi))

    def objective(self, params, masks, x, y, key, beta, n_data, layers, W=None):
        """Negative ELBO per data point on a minibatch (one LRT draw); ``W`` overrides the
        effective mean weights :math:`\\mu\\odot m` (for the dense gradient)."""
        W = [mu * m for mu, m in zip(params["mu"], masks, strict=True)] if W is None else W
        S2 = [jax.nn.softplus(r) ** 2 * m for r, m in zip(params["rho"], masks, strict=True)]
        out = network_forward(layers, W, params["bias"], x, S2, key, self.image_shape)
        return self._nll(out, y, params) + beta * self._kl(params, masks) / n_data

    # ---- fit ----------------------------------------------------------------------------
    def fit(self, x, y, validation: tuple[Any, Any] | None = None) -> SSVIPosterior:
        r"""Train on ``(x, y)``; returns :class:`SSVIPosterior`.

        Args:
            x: ``(n, features)`` real features (standardized internally; a scipy.sparse matrix
                is densified).
            y: ``(n,)`` integer labels in ``[0, C)`` (classification) or real targets.
            validation: optional held-out ``(x, y)`` whose pointwise log-likelihood goes into
                :meth:`~SSVIPosterior.to_arviz` (for LOO); default the training set.
        """
        from tqdm.auto import tqdm

        x = _check_features("x", x)
        n, p = x.shape
        if self.conv and p != int(np.prod(self.image_shape)):
            raise ValueError(
                f"`x` has {p} features but `image_shape` {self.image_shape} needs "
                f"{int(np.prod(self.image_shape))}."
            )
        if self.task == "classification":
            y_arr = np.asarray(y)
            n_classes = int(np.max(y_arr)) + 1 if y_arr.size and np.issubdtype(
                y_arr.dtype, np.number) and np.all(np.isfinite(y_arr)) else 0  # fmt: skip
            y = _check_labels("y", y, max(n_classes, 1), n)
            n_out, y_stats = n_classes, None
        else:
            y = np.asarray(y, np.float64)
            if y.shape != (n,) or not np.all(np.isfinite(y)):
                raise ValueError(f"`y` must be ({n},) finite targets; got shape {y.shape}.")
            y_stats = (float(y.mean()), float(y.std() or 1.0))
            y = ((y - y_stats[0]) / y_stats[1]).astype(np.float32)
            n_out, n_classes = 1, None
        if validation is not None:
            xv = _check_features("validation[0]", validation[0], p)
            yv = np.asarray(validation[1])
            if yv.shape != (xv.shape[0],):
                raise ValueError(
                    f"`validation[1]` must have shape ({xv.shape[0]},); got {yv.shape}."
                )
            if self.task == "classification":
                yv = _check_labels("validation[1]", yv, n_classes, xv.shape[0])
            eval_data = (xv, yv)
        else:
            eval_data = (x, y if self.task == "classification" else y * y_stats[1] + y_stats[0])
        if self.batch_size > n:
            raise ValueError(f"`batch_size` ({self.batch_size}) exceeds the {n} training rows.")
        sd = x.std(0)
        x_stats = (x.mean(0), np.where(sd > 0, sd, 1.0))
        xs = jnp.asarray((x - x_stats[0]) / x_stats[1], jnp.float32)
        ys = jnp.asarray(y)
        layers = build_layers(p, n_out, self.hidden, self.conv, self.image_shape, self.dense_first)

        steps_per_epoch = n // self.batch_size
        total = steps_per_epoch * self.epochs
        t_end = int(self.update_until * total)
        sparse_run = self.mask_update == "ssvi" and self.density < 1.0
        beta = (linear_warmup(max(1, int(self.kl_warmup * total)), self.kl_weight)
                if self.kl_warmup > 0 else (lambda s: self.kl_weight))  # fmt: skip
        opt = self.optimizer or optax.adam(
            optax.cosine_decay_schedule(self.learning_rate, max(total, 1), 1e-2)
        )
        key = jax.random.PRNGKey(self.seed)
        k_init, k_train = jax.random.split(key)
        params, masks = self._init(layers, k_init, 0.0 if self.task == "regression" else None)
        counts = [int(jnp.sum(m)) for m in masks]
        initial_masks = [np.asarray(m) for m in masks]
        state = TrainState(params, masks, opt.init(params), jnp.zeros((), jnp.int32))

        def pmask(masks):
            full = {"mu": masks, "rho": masks,
                    "bias": [jnp.ones(b.shape, bool) for b in params["bias"]]}  # fmt: skip
            if "log_noise" in params:
                full["log_noise"] = jnp.ones((), bool)
            return full

        def phi_step(st: TrainState, xb, yb, k):
            b_t = beta(st.step)
            val, g = jax.value_and_grad(self.objective)(st.params, st.masks, xb, yb, k, b_t, n,
                                                        layers)  # fmt: skip
            pm = pmask(st.masks)
            g = jax.tree.map(lambda a, m: a * m, g, pm)
            upd, os_ = opt.update(g, st.opt_state, st.params)
            upd = jax.tree.map(lambda a, m: a * m, upd, pm)
            new = optax.apply_updates(st.params, upd)
            new = {**new, "mu": [mu * m for mu, m in zip(new["mu"], st.masks, strict=True)]}
            return TrainState(new, st.masks, os_, st.step + 1), val

        def gamma_step(st: TrainState, xb, yb, k):
            b_t = beta(st.step)
            W = [mu * m for mu, m in zip(st.params["mu"], st.masks, strict=True)]
            val, gW = jax.value_and_grad(
                lambda W: self.objective(st.params, st.masks, xb, yb, k, b_t, n, layers, W)
            )(W)
            frac = _cosine_fraction(st.step.astype(jnp.float32), float(max(t_end, 1)),
                                    self.update_fraction)  # fmt: skip
            mu, rho, new_masks, stay = [], [], [], []
            for i, layer in enumerate(layers):
                m_old, mu_i, rho_i = st.masks[i], st.params["mu"][i], st.params["rho"][i]
                if not layer.sparse:
                    mu.append(mu_i), rho.append(rho_i), new_masks.append(m_old), stay.append(m_old)
                    continue
                score = removal_scores(mu_i, jax.nn.softplus(rho_i), self.criterion)
                n_prune = jnp.floor(frac * counts[i]).astype(jnp.int32)
                bound = math.floor(self.update_fraction * counts[i])  # α_t <= α
                m_new, kept, _ = support_update(m_old, score, gW[i], n_prune, bound)
                fresh = m_new & ~m_old
                rho_mean = jnp.sum(jnp.where(kept, rho_i, 0.0)) / jnp.maximum(jnp.sum(kept), 1)
                mu.append(jnp.where(m_new & ~fresh, mu_i, 0.0))
                rho.append(jnp.where(fresh, rho_mean, rho_i))
                new_masks.append(m_new)
                stay.append(m_new & m_old)
            params = {**st.params, "mu": mu, "rho": rho}
            # moments of weights that left or joined the support restart from zero
            os_ = optax.tree_utils.tree_map_params(
                opt, lambda a, m: a * m, st.opt_state, pmask(stay),
                transform_non_params=lambda a: a,
            )  # fmt: skip
            return TrainState(params, new_masks, os_, st.step + 1), val

        def one_step(st, batch):
            xb, yb, k = batch
            if sparse_run:
                is_update = (st.step > 0) & (st.step % self.update_every == 0) & (st.step < t_end)
                st, val = jax.lax.cond(is_update, gamma_step, phi_step, st, xb, yb, k)
            else:
                st, val = phi_step(st, xb, yb, k)
            return st, (val, jnp.stack([jnp.sum(m) for m in st.masks]))

        @jax.jit
        def epoch(st, key):
            kp, kn = jax.random.split(key)
            perm = jax.random.permutation(kp, n)[: steps_per_epoch * self.batch_size]
            idx = perm.reshape(steps_per_epoch, self.batch_size)
            keys = jax.random.split(kn, steps_per_epoch)
            return jax.lax.scan(one_step, st, (xs[idx], ys[idx], keys))

        losses, sizes = [], []
        bar = tqdm(range(self.epochs), desc=f"SSVI density={self.density:g}",
                   disable=not self.progress_bar)  # fmt: skip
        for e in bar:
            state, (vals, cnt) = epoch(state, jax.random.fold_in(k_train, e))
            vals = np.asarray(vals)
            if not np.all(np.isfinite(vals)):
                raise FloatingPointError(
                    f"SSVI loss became NaN/inf in epoch {e}; lower `learning_rate` or raise "
                    "`init_sd`."
                )
            losses.append(vals)
            sizes.append(np.asarray(cnt))
            bar.set_postfix(loss=f"{vals.mean():.4g}")
        densities = [float(c / m.size) for c, m in zip(counts, masks, strict=True)]
        flops = training_flops(
            layers, densities, steps=total, batch_size=self.batch_size,
            update_every=self.update_every if sparse_run else None, update_until=t_end,
            image_shape=self.image_shape,
        )  # fmt: skip
        post = _make_posterior(
            layers, state.params, state.masks, self.task, n_classes, x_stats, y_stats,
            self.image_shape, eval_data, self.num_draws, self.seed,
            {"loss": np.concatenate(losses), "support_sizes": np.concatenate(sizes),
             "active_counts": counts, "initial_masks": initial_masks, "flops": flops,
             "steps": total},
        )  # fmt: skip
        post.method = f"ssvi-{self.mask_update}-density{self.density:g}"
        return post
