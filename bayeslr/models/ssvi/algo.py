r"""SSVI's algorithm: the network, the sparse mean-field objective, the support updates and the
training step, as pure functions (the model and the math are in :mod:`bayeslr.models.ssvi`)."""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

__all__ = [
    "CRITERIA",
    "Layer",
    "SSVIProblem",
    "SSVIState",
    "build_layers",
    "gaussian_kl",
    "network_forward",
    "removal_scores",
    "ssvi_init",
    "ssvi_objective",
    "ssvi_step",
    "support_update",
    "training_flops",
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
# the fit


def _init_weights_impl(key, layers, density, init_sd):
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


_init_weights = jax.jit(_init_weights_impl, static_argnames=("layers", "density", "init_sd"))


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


# --------------------------------------------------------------------------------------------
# the objective and the training step (bayeslr.infer.loop drives it)


def gaussian_kl(params, masks, prior_scale):
    r""":math:`\sum_{i\in\gamma}\mathrm{KL}(N(\mu_i, \sigma_i^2)\,\|\,N(0, \sigma_p^2))` over the
    active weights of every layer."""
    sp = prior_scale
    total = 0.0
    for mu, rho, m in zip(params["mu"], params["rho"], masks, strict=True):
        sig = jax.nn.softplus(rho)
        kl = jnp.log(sp / sig) + (sig**2 + mu**2) / (2 * sp**2) - 0.5
        total = total + jnp.sum(jnp.where(m, kl, 0.0))
    return total


def _nll(out, y, params, task):
    if task == "classification":
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out, -1), y[:, None], 1))
    s = jnp.exp(params["log_noise"])
    return jnp.mean(0.5 * ((y - out[:, 0]) / s) ** 2 + jnp.log(s) + 0.5 * jnp.log(2 * jnp.pi))


def ssvi_objective(params, masks, x, y, key, beta, n_data, layers, *, task="classification",
                   prior_scale=0.1, image_shape=None, W=None):  # fmt: skip
    r"""The negative β-ELBO per data point on a minibatch (one local-reparameterization draw);
    ``W`` overrides the effective mean weights :math:`\mu\odot m` (for the dense gradient)."""
    W = [mu * m for mu, m in zip(params["mu"], masks, strict=True)] if W is None else W
    S2 = [jax.nn.softplus(r) ** 2 * m for r, m in zip(params["rho"], masks, strict=True)]
    out = network_forward(layers, W, params["bias"], x, S2, key, image_shape)
    return _nll(out, y, params, task) + beta * gaussian_kl(params, masks, prior_scale) / n_data


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["x", "y", "learning_rate", "kl_weight", "prior_scale", "init_key", "train_key"],
    meta_fields=["layers", "task", "density", "init_sd", "criterion", "sparse_run",
                 "update_every", "update_fraction", "t_end", "counts", "batch_size",
                 "steps_per_epoch", "total_steps", "warmup_steps", "image_shape", "optimizer"],
)  # fmt: skip
@dataclasses.dataclass(frozen=True)
class SSVIProblem:
    r"""SSVI's data (standardized ``x``, labels or standardized targets ``y``) and settings.

    Data (new values reuse the compiled step): ``learning_rate`` (the peak of the default
    schedule), ``kl_weight`` (the final β), ``prior_scale`` (:math:`\sigma_p`) and the keys of the
    initialization and of the minibatches. Static: the architecture, the support schedule and
    the step counts; ``optimizer`` is a user's optax transformation (``None``: Adam with a
    cosine decay from ``learning_rate`` to 1 % of it).
    """

    x: Array
    y: Array
    learning_rate: Array
    kl_weight: Array
    prior_scale: Array
    init_key: Array
    train_key: Array
    layers: tuple
    task: str
    density: float
    init_sd: float
    criterion: str
    sparse_run: bool
    update_every: int
    update_fraction: float
    t_end: int
    counts: tuple
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    image_shape: tuple | None
    optimizer: Any


class SSVIState(NamedTuple):
    """Training state: variational parameters, supports, optimizer state, the step counter and
    the current epoch's minibatch indices and noise keys."""

    params: dict
    masks: list
    opt_state: Any
    step: jax.Array
    batches: jax.Array  # (steps_per_epoch, batch_size)
    keys: jax.Array  # (steps_per_epoch, 2)


def _optimizer(problem: SSVIProblem):
    if problem.optimizer is not None:
        return problem.optimizer
    sched = optax.cosine_decay_schedule(problem.learning_rate, max(problem.total_steps, 1), 1e-2)
    return optax.adam(sched)


def _epoch_batches(problem: SSVIProblem, epoch):
    """Minibatch indices and noise keys of an epoch: ``fold_in(train_key, epoch)`` split into a
    permutation key and the per-step keys."""
    n, B, spe = problem.x.shape[0], problem.batch_size, problem.steps_per_epoch
    kp, kn = jax.random.split(jax.random.fold_in(problem.train_key, epoch))
    perm = jax.random.permutation(kp, n)[: spe * B]
    return perm.reshape(spe, B), jax.random.split(kn, spe)


def ssvi_init(key, problem: SSVIProblem, restart=0) -> SSVIState:
    """Initial weights and random supports (from ``problem.init_key``), the optimizer state and
    the first epoch's minibatches."""
    params, masks = _init_weights_impl(problem.init_key, problem.layers, problem.density,
                                       problem.init_sd)  # fmt: skip
    if problem.task == "regression":
        params["log_noise"] = jnp.zeros((), jnp.float32)
    batches, keys = _epoch_batches(problem, 0)
    return SSVIState(params, masks, _optimizer(problem).init(params), jnp.zeros((), jnp.int32),
                     batches, keys)  # fmt: skip


def _param_mask(params, masks):
    full = {"mu": masks, "rho": masks, "bias": [jnp.ones(b.shape, bool) for b in params["bias"]]}
    if "log_noise" in params:
        full["log_noise"] = jnp.ones((), bool)
    return full


def _beta(problem: SSVIProblem, step):
    if problem.warmup_steps <= 0:
        return problem.kl_weight
    return jnp.minimum(problem.kl_weight, step / problem.warmup_steps)


def _objective(problem, params, masks, xb, yb, k, beta, W=None):
    return ssvi_objective(params, masks, xb, yb, k, beta, problem.x.shape[0], problem.layers,
                          task=problem.task, prior_scale=problem.prior_scale,
                          image_shape=problem.image_shape, W=W)  # fmt: skip


def _phi_step(problem, st: SSVIState, xb, yb, k):
    """An optax step on the active :math:`(\\mu, \\rho)` (gradients and moments masked)."""
    opt = _optimizer(problem)
    val, g = jax.value_and_grad(lambda p: _objective(problem, p, st.masks, xb, yb, k,
                                                     _beta(problem, st.step)))(st.params)
    pm = _param_mask(st.params, st.masks)
    g = jax.tree.map(lambda a, m: a * m, g, pm)
    upd, os_ = opt.update(g, st.opt_state, st.params)
    upd = jax.tree.map(lambda a, m: a * m, upd, pm)
    new = optax.apply_updates(st.params, upd)
    new = {**new, "mu": [mu * m for mu, m in zip(new["mu"], st.masks, strict=True)]}
    return st._replace(params=new, opt_state=os_, step=st.step + 1), val


def _gamma_step(problem, st: SSVIState, xb, yb, k):
    """A support update: removal by score, addition by the dense gradient (module docstring)."""
    opt = _optimizer(problem)
    W = [mu * m for mu, m in zip(st.params["mu"], st.masks, strict=True)]
    val, gW = jax.value_and_grad(lambda W: _objective(problem, st.params, st.masks, xb, yb, k,
                                                      _beta(problem, st.step), W))(W)
    frac = _cosine_fraction(st.step.astype(jnp.float32), float(max(problem.t_end, 1)),
                            problem.update_fraction)  # fmt: skip
    mu, rho, new_masks, stay = [], [], [], []
    for i, layer in enumerate(problem.layers):
        m_old, mu_i, rho_i = st.masks[i], st.params["mu"][i], st.params["rho"][i]
        if not layer.sparse:
            mu.append(mu_i), rho.append(rho_i), new_masks.append(m_old), stay.append(m_old)
            continue
        score = removal_scores(mu_i, jax.nn.softplus(rho_i), problem.criterion)
        n_prune = jnp.floor(frac * problem.counts[i]).astype(jnp.int32)
        bound = math.floor(problem.update_fraction * problem.counts[i])  # α_t <= α
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
        opt, lambda a, m: a * m, st.opt_state, _param_mask(st.params, stay),
        transform_non_params=lambda a: a,
    )  # fmt: skip
    return st._replace(params=params, masks=new_masks, opt_state=os_, step=st.step + 1), val


def ssvi_step(key, st: SSVIState, problem: SSVIProblem):
    """One minibatch step: a support update every ``update_every`` steps before ``t_end``, else
    an optax step; a new epoch's minibatches are drawn at its first step.

    ``info``: ``loss`` (the minibatch negative ELBO per point) and ``active`` (the support size
    per layer after the step).
    """
    spe = problem.steps_per_epoch
    j = st.step % spe
    batches, keys = jax.lax.cond(
        (j == 0) & (st.step > 0), lambda: _epoch_batches(problem, st.step // spe),
        lambda: (st.batches, st.keys),
    )  # fmt: skip
    st = st._replace(batches=batches, keys=keys)
    rows = batches[j]
    xb, yb, k = problem.x[rows], problem.y[rows], keys[j]
    if problem.sparse_run:
        is_update = (st.step > 0) & (st.step % problem.update_every == 0) & (
            st.step < problem.t_end)  # fmt: skip
        st, val = jax.lax.cond(is_update, functools.partial(_gamma_step, problem),
                               functools.partial(_phi_step, problem), st, xb, yb, k)
    else:
        st, val = _phi_step(problem, st, xb, yb, k)
    return st, {"loss": val, "active": jnp.stack([jnp.sum(m) for m in st.masks])}
