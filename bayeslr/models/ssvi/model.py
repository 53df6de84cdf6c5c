r"""The Bayesian network as a plain NumPyro model function (:func:`bnn_model`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from bayeslr.models.ssvi.algo import Layer, network_forward

__all__ = ["bnn_model"]


def bnn_model(
    x,
    y=None,
    *,
    layers: Sequence[Layer],
    masks: Sequence[Any] | None = None,
    prior_scale: float = 0.1,
    task: str = "classification",
    image_shape: tuple[int, int, int] | None = None,
    biases: Sequence[Any] | None = None,
    noise: float | None = None,
    x_loc: Any = 0.0,
    x_scale: Any = 1.0,
    y_loc: float = 0.0,
    y_scale: float = 1.0,
):
    r"""The Bayesian network as a NumPyro model: the model every :class:`~bayeslr.models.SSVI`
    posterior belongs to, and the same network for NUTS or SVI on small problems.

    .. math::
        w_l \sim \mathcal N(0, \sigma_p^2)\ \text{(active entries of layer } l\text{)}, \quad
        \tilde x = (x - c_x)/s_x, \quad
        y \sim \operatorname{Categorical}(\operatorname{softmax} f(\tilde x; w, b))
        \ \text{or}\ \mathcal N(c_y + s_y f(\tilde x; w, b),\ s_y^2\sigma^2).

    Args:
        x: ``(n, features)`` inputs (in data units; standardized inside by ``x_loc``,
            ``x_scale``).
        y: ``(n,)`` labels or targets, or ``None`` to draw them.
        layers: the architecture (:func:`~bayeslr.models.ssvi.build_layers`).
        masks: per layer a boolean support; ``w_<l>`` holds the active entries in
            ``np.nonzero`` order (inactive ones are exactly 0). ``None``: every entry.
        prior_scale: :math:`\sigma_p`.
        task: ``"classification"`` or ``"regression"``.
        image_shape: ``(H, W, C)`` of an input row, for convolutional layers.
        biases: fixed biases per layer (the point estimates SSVI fits); ``None`` samples
            ``b_<l> ~ N(0, 1)``.
        noise: regression only: the fixed noise variance :math:`\sigma^2` (standardized units);
            ``None`` samples ``sigma ~ HalfNormal(1)`` (its square root).
        x_loc, x_scale, y_loc, y_scale: the standardization :math:`c_x, s_x, c_y, s_y`.

    Sites: ``w_<l>`` (``(active_l,)``), ``b_<l>`` and ``sigma`` when not fixed, observed ``y``
    (plate ``data``).
    """
    import numpyro
    import numpyro.distributions as dist

    W, b = [], []
    for i, layer in enumerate(layers):
        m = None if masks is None else np.asarray(masks[i])
        n = int(np.prod(layer.shape)) if m is None else int(np.sum(m))
        w = numpyro.sample(f"w_{i}", dist.Normal(0.0, prior_scale).expand([n]).to_event(1))
        if m is None:
            W.append(w.reshape(*w.shape[:-1], *layer.shape))
        else:
            W.append(jnp.zeros(layer.shape, w.dtype).at[np.nonzero(m)].set(w))
        if biases is None:
            b.append(numpyro.sample(
                f"b_{i}", dist.Normal(0.0, 1.0).expand([layer.shape[-1]]).to_event(1)))
        else:
            b.append(jnp.asarray(biases[i], jnp.float32))
    xs = ((jnp.asarray(x) - jnp.asarray(x_loc)) / jnp.asarray(x_scale)).astype(jnp.float32)
    out = network_forward(layers, W, b, xs, image_shape=image_shape)
    if task == "regression":
        if noise is None:
            sd = numpyro.sample("sigma", dist.HalfNormal(1.0))
        else:
            sd = jnp.sqrt(jnp.asarray(noise, jnp.float32))
    with numpyro.plate("data", x.shape[0]):
        if task == "classification":
            numpyro.sample("y", dist.Categorical(logits=out), obs=y)
        else:
            numpyro.sample("y", dist.Normal(y_loc + y_scale * out[:, 0], y_scale * sd), obs=y)
