r"""The SSVI estimator (:class:`SSVI`) and its posterior (:class:`SSVIPosterior`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeslr._validation import as_key, check_int, check_real
from bayeslr.models.base import Estimator, ModelPosterior, Prepared, Stage
from bayeslr.models.ssvi.algo import (
    CRITERIA,
    SSVIProblem,
    _draw_weights,
    _forward_draws,
    _init_weights,
    build_layers,
    network_forward,
    removal_scores,
    ssvi_init,
    ssvi_step,
    training_flops,
)
from bayeslr.models.ssvi.model import bnn_model

__all__ = ["SSVI", "SSVIPosterior"]

TASKS = ("classification", "regression")
MASK_UPDATES = ("ssvi", "static")

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


class SSVIPosterior(ModelPosterior):
    r"""The fitted sparse mean-field posterior :math:`q_{\phi,\gamma}`, bound to
    :func:`bnn_model`.

    ``samples`` hold draws of the active weights of each layer (``w_<l>``, dims ``active_<l>``);
    the point-estimated biases (and the regression noise variance) are the model's fixed
    arguments (``post.kwargs``). :meth:`predict` draws ``y`` (labels or targets) through the
    model; :meth:`log_likelihood` and ``to_arviz()`` are of the **training** data (for
    ``az.loo``); :meth:`score` is the held-out log predictive density. Fast paths:
    :meth:`predict_summary` (averaged probabilities, labels and entropy, or mean and sd),
    :meth:`predict_proba`, the weights' :attr:`mean_weights`, :attr:`weight_sd`,
    :meth:`sample_weights` and :meth:`prune`. ``extra`` has ``loss`` (per step),
    ``support_sizes`` (active count per layer after every step), ``active_counts``,
    ``initial_masks``, ``flops`` (:func:`training_flops`) and ``steps``.
    """

    @property
    def layers(self):
        return self.kwargs["layers"]

    @property
    def masks(self) -> list[np.ndarray]:
        return [np.asarray(m, bool) for m in self.kwargs["masks"]]

    @property
    def task(self) -> str:
        return self.kwargs["task"]

    @property
    def mean_weights(self) -> list[np.ndarray]:
        r""":math:`\mu\odot m` per layer (exact zeros off the support)."""
        return [np.asarray(mu) * m for mu, m in zip(self.params["mu"], self.masks, strict=True)]

    @property
    def weight_sd(self) -> list[np.ndarray]:
        r""":math:`\sigma\odot m` per layer."""
        return [np.asarray(jax.nn.softplus(jnp.asarray(rho))) * m
                for rho, m in zip(self.params["rho"], self.masks, strict=True)]  # fmt: skip

    @property
    def density(self) -> float:
        """Active fraction of all weights."""
        return float(sum(m.sum() for m in self.masks) / sum(m.size for m in self.masks))

    def sample_weights(self, num_samples: int, rng_key=0) -> list[jax.Array]:
        """``num_samples`` draws of every layer's weights, ``(num_samples, *shape)``."""
        mu = [jnp.asarray(w, jnp.float32) for w in self.mean_weights]
        sd = [jnp.asarray(s, jnp.float32) for s in self.weight_sd]
        return _draw_weights(as_key(rng_key, "rng_key"), mu, sd,
                             [jnp.asarray(m) for m in self.masks], num_samples)  # fmt: skip

    def model_inputs(self, x=None, y=None, *, observed: bool = False):
        """:func:`bnn_model`'s arguments at new inputs ``x`` (and labels or targets ``y`` when
        scoring)."""
        if x is None:
            if observed:
                raise TypeError("`score` needs test inputs `x` and their `y`.")
            return (self.args[0], None), self.kwargs
        xs = _check_features("x", x, self.args[0].shape[1])
        if observed:
            if y is None:
                raise TypeError("`score` needs the test labels or targets `y`.")
            y = self._check_y("y", y, xs.shape[0])
        elif y is not None:
            raise TypeError("`predict` draws y; pass only `x` (to score labels use `score`).")
        return (jnp.asarray(xs, jnp.float32), None if y is None else jnp.asarray(y)), self.kwargs

    def _check_y(self, name, y, n):
        if self.task == "classification":
            return _check_labels(name, y, self.layers[-1].shape[-1], n)
        y = np.asarray(y, np.float64)
        if y.shape != (n,) or not np.all(np.isfinite(y)):
            raise ValueError(f"`{name}` must be ({n},) finite targets; got shape {y.shape}.")
        return y.astype(np.float32)

    def _outputs(self, x, num_samples, rng_key, mean_weights):
        (xs, _), kw = self.model_inputs(x)
        xs = ((xs - jnp.asarray(kw["x_loc"])) / jnp.asarray(kw["x_scale"])).astype(jnp.float32)
        b = [jnp.asarray(v) for v in kw["biases"]]
        if mean_weights:
            W = [jnp.asarray(w, jnp.float32) for w in self.mean_weights]
            return network_forward(self.layers, W, b, xs, image_shape=kw["image_shape"])[None]
        Ws = self.sample_weights(num_samples, rng_key)
        return _forward_draws(self.layers, kw["image_shape"], Ws, b, xs)

    def predict_summary(self, x, num_samples: int = 50, rng_key=0,
                        mean_weights: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
        r"""The predictive distribution summarized, by Monte Carlo over ``num_samples`` weight
        draws.

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
        kw = self.kwargs
        f = out[..., 0]
        var = jnp.var(f, axis=0) + kw["noise"]
        return {"mean": np.asarray(jnp.mean(f, 0)) * kw["y_scale"] + kw["y_loc"],
                "sd": np.asarray(jnp.sqrt(var)) * kw["y_scale"]}  # fmt: skip

    def predict_proba(self, x, num_samples: int = 50, rng_key=0) -> np.ndarray:
        """Classification: the averaged class probabilities ``(n, classes)``."""
        if self.task != "classification":
            raise ValueError("`predict_proba` is for classification; use `predict_summary`.")
        return self.predict_summary(x, num_samples, rng_key)["probs"]

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
        post = self.estimator._posterior_from(self.params, masks, self.args, self.kwargs,
                                              self.results, dict(self.extra))  # fmt: skip
        post.method = self.method + f"-pruned{density:g}"
        return post


class SSVI(Estimator):
    r"""Sparse subspace variational inference for a Bayesian MLP/CNN (module docstring has the
    objective and the algorithm).

    Example::

        from sklearn.datasets import load_digits
        x, y = load_digits(return_X_y=True)
        post = SSVI(density=0.1, hidden=(128, 128), epochs=100).fit(x[:1400], y[:1400])
        post.predict_summary(x[1400:])         # probs, label, entropy (MC over 50 draws)
        post.predict(x[1400:])["y"]            # posterior predictive draws of the labels
        post.score(x[1400:], y[1400:])         # held-out log predictive density
        idata = post.to_arviz()                # active weights; log_likelihood of the training y

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
        num_samples: posterior draws of the active weights stored.
        seed: the random seed (initial support, weights, minibatches, LRT noise).
        progress_bar: tqdm bar over the steps.
    """

    model_fn = staticmethod(bnn_model)
    name = "SSVI"

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
        num_samples: int = 100,
        seed: int = 0,
        progress_bar: bool = True,
    ):
        super().__init__(seed=seed, progress_bar=progress_bar)
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
        self.num_samples = check_int("num_samples", num_samples)

    def prepare(self, x, y) -> Prepared:
        r"""Validate the training data.

        Args:
            x: ``(n, features)`` real features (standardized internally; a scipy.sparse matrix
                is densified).
            y: ``(n,)`` integer labels in ``[0, C)`` (classification) or real targets.
        """
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
            n_out, y_stats, y_data = n_classes, (0.0, 1.0), y
        else:
            y = np.asarray(y, np.float64)
            if y.shape != (n,) or not np.all(np.isfinite(y)):
                raise ValueError(f"`y` must be ({n},) finite targets; got shape {y.shape}.")
            y_stats = (float(y.mean()), float(y.std() or 1.0))
            y_data = y.astype(np.float32)
            y = ((y - y_stats[0]) / y_stats[1]).astype(np.float32)
            n_out = 1
        if self.batch_size > n:
            raise ValueError(f"`batch_size` ({self.batch_size}) exceeds the {n} training rows.")
        sd = x.std(0)
        x_stats = (x.mean(0), np.where(sd > 0, sd, 1.0))
        xs = jnp.asarray((x - x_stats[0]) / x_stats[1], jnp.float32)
        layers = build_layers(p, n_out, self.hidden, self.conv, self.image_shape, self.dense_first)
        spe = n // self.batch_size
        total = spe * self.epochs
        k_init, k_train = jax.random.split(as_key(self.seed))
        counts = tuple(max(1, round((self.density if layer.sparse else 1.0)
                                    * math.prod(layer.shape))) for layer in layers)  # fmt: skip
        problem = SSVIProblem(
            x=xs, y=jnp.asarray(y), learning_rate=jnp.asarray(self.learning_rate, jnp.float32),
            kl_weight=jnp.asarray(self.kl_weight, jnp.float32),
            prior_scale=jnp.asarray(self.prior_scale, jnp.float32), init_key=k_init,
            train_key=k_train, layers=layers, task=self.task, density=self.density,
            init_sd=self.init_sd, criterion=self.criterion,
            sparse_run=self.mask_update == "ssvi" and self.density < 1.0,
            update_every=self.update_every, update_fraction=self.update_fraction,
            t_end=int(self.update_until * total), counts=counts, batch_size=self.batch_size,
            steps_per_epoch=spe, total_steps=total,
            warmup_steps=max(1, int(self.kl_warmup * total)) if self.kl_warmup > 0 else 0,
            image_shape=self.image_shape, optimizer=self.optimizer,
        )  # fmt: skip
        context = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y_data),
                   "x_stats": x_stats, "y_stats": y_stats}  # fmt: skip
        return Prepared(problem, context)

    def stages(self, prepared: Prepared):
        p = prepared.problem
        yield Stage(
            "", ssvi_init, ssvi_step, p, p.total_steps, chunk_size=p.steps_per_epoch,
            guard=("loss",), progress_fields=("loss",),
            hint="Lower `learning_rate` or raise `init_sd`.",
        )  # fmt: skip

    def posterior(self, results, prepared: Prepared) -> SSVIPosterior:
        res, p, ctx = results[-1], prepared.problem, prepared.context
        initial_masks = _init_weights(p.init_key, p.layers, p.density, p.init_sd)[1]
        st = res.state
        densities = [float(c / math.prod(layer.shape)) for c, layer in zip(p.counts, p.layers,
                                                                              strict=True)]
        flops = training_flops(
            p.layers, densities, steps=p.total_steps, batch_size=self.batch_size,
            update_every=self.update_every if p.sparse_run else None, update_until=p.t_end,
            image_shape=self.image_shape,
        )  # fmt: skip
        extra = {"loss": res.history["loss"], "support_sizes": res.history["active"],
                 "active_counts": list(p.counts),
                 "initial_masks": [np.asarray(m) for m in initial_masks], "flops": flops,
                 "steps": p.total_steps}  # fmt: skip
        x_loc, x_scale = ctx["x_stats"]
        y_loc, y_scale = ctx["y_stats"]
        kwargs = dict(layers=p.layers, prior_scale=self.prior_scale, task=self.task,
                      image_shape=self.image_shape,
                      noise=float(np.exp(2 * st.params["log_noise"])) if self.task ==
                      "regression" else None,
                      x_loc=jnp.asarray(x_loc, jnp.float32), x_scale=jnp.asarray(x_scale,
                                                                               jnp.float32),
                      y_loc=y_loc, y_scale=y_scale)  # fmt: skip
        post = self._posterior_from(jax.tree.map(np.asarray, st.params), st.masks,
                                    (ctx["x"], ctx["y"]), kwargs, results, extra)  # fmt: skip
        post.method = f"ssvi-{self.mask_update}-density{self.density:g}"
        return post

    def _posterior_from(self, params, masks, args, kwargs, results, extra) -> SSVIPosterior:
        """The posterior of the variational parameters ``params`` on the supports ``masks``:
        ``num_samples`` draws of the active weights of every layer."""
        key = jax.random.PRNGKey(self.seed) if isinstance(self.seed, int) else as_key(self.seed)
        masks = [np.asarray(m, bool) for m in masks]
        samples, dims = {}, {}
        for i, (mu, rho, m) in enumerate(zip(params["mu"], params["rho"], masks, strict=True)):
            idx = np.nonzero(m.ravel())[0]
            mu_a = np.asarray(mu).ravel()[idx]
            sd_a = np.asarray(jax.nn.softplus(jnp.asarray(rho))).ravel()[idx]
            eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i),
                                               (self.num_samples, idx.size)))  # fmt: skip
            samples[f"w_{i}"] = (mu_a + sd_a * eps)[None]
            dims[f"w_{i}"] = [f"active_{i}"]
        kwargs = {**kwargs, "masks": masks,
                  "biases": [np.asarray(b) for b in params["bias"]]}  # fmt: skip
        return SSVIPosterior(
            samples, estimator=self, args=args, kwargs=kwargs, results=results,
            params=params, observed={"y": np.asarray(args[1])},
            dims={**dims, "y": ["data"]}, method="ssvi", extra=extra,
        )  # fmt: skip
