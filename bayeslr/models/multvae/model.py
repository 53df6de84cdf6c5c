r"""Mult-VAE and Mult-DAE as plain NumPyro model functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bayeslr.models.multvae.algo import dropout as _dropout
from bayeslr.models.multvae.algo import normalize

__all__ = ["multdae_model", "multvae_guide", "multvae_model"]


def _multinomial(N, logits, nmax, normalized: bool):
    return ClickMultinomial(N, logits, nmax, normalized=normalized)


def _clicks(x, total_count, total_count_max):
    """The observed clicks' distribution parameters: ``N_u`` from ``x`` or ``total_count``."""
    if x is not None:
        return x.shape[0], jnp.sum(x, axis=-1), total_count_max
    if total_count is None:
        raise ValueError("`total_count` (clicks per user) is needed to draw x (x=None).")
    n = jnp.asarray(total_count)
    return n.shape[0], n, total_count_max


def multvae_model(x, *, decoder, latent_dim: int, total_count=None, total_count_max=None,
                  normalized: bool = True):  # fmt: skip
    r"""Mult-VAE's generative model for users × items clicks ``x``: :math:`z_u \sim
    \mathcal N(0, I_K)`, :math:`x_u \sim \operatorname{Mult}(N_u, \operatorname{softmax}
    (f_\theta(z_u)))`. The model every :class:`~bayeslr.models.MultVAE` posterior belongs to.

    Args:
        x: ``(users, items)`` click counts, or ``None`` to draw them (then ``total_count``
            :math:`N_u` per user is needed, and ``total_count_max`` bounds it for sampling).
        decoder: the decoder network :math:`f_\theta` (an equinox module, registered as
            ``numpyro.contrib.module.eqx_module("decoder", ...)``).
        latent_dim: :math:`K`.
        normalized: include the multinomial coefficient in the density (the training objective
            leaves it out: it does not depend on the parameters).

    Sites: ``z`` ``(users, K)`` (plate ``users``), observed ``x`` (a multinomial per user).
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    n, N, nmax = _clicks(x, total_count, total_count_max)
    dec = eqx_module("decoder", decoder)
    with numpyro.plate("users", n):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([latent_dim]).to_event(1))
        logits = jax.vmap(dec)(z)
        numpyro.sample("x", _multinomial(N, logits, nmax, normalized), obs=x)


def multvae_guide(x, *, encoder, latent_dim: int, dropout: float = 0.5):
    r"""The amortized guide :math:`q_\phi(z_u\mid x_u)`: ℓ2-normalize, dropout (training), the
    encoder MLP, then :math:`\mathcal N(\mu, \operatorname{diag} e^{\log\sigma^2})`."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    enc = eqx_module("encoder", encoder)
    h = normalize(x)
    if dropout > 0:
        h = _dropout(numpyro.prng_key(), h, dropout)
    out = jax.vmap(enc)(h)
    mu, logvar = out[:, :latent_dim], out[:, latent_dim:]
    with numpyro.plate("users", x.shape[0]):
        numpyro.sample("z", dist.Normal(mu, jnp.exp(0.5 * logvar)).to_event(1))


def multdae_model(x, *, encoder, decoder, dropout: float = 0.5, weight_decay: float = 0.0,
                  inputs=None, total_count=None, total_count_max=None,
                  normalized: bool = True):  # fmt: skip
    r"""Mult-DAE as a NumPyro model without latent variables: :math:`x_u \sim
    \operatorname{Mult}(N_u, \operatorname{softmax}(f(g(\operatorname{dropout}(\tilde
    x_u)))))`, minus :math:`\lambda\sum\|W\|^2` on the weights (a ``numpyro.factor``).

    ``inputs`` are the rows the autoencoder reads (default ``x``; the fold-in clicks when ``x``
    is the held-out part or ``None``).
    """
    import numpyro
    from numpyro.contrib.module import eqx_module

    n, N, nmax = _clicks(x, total_count, total_count_max)
    src = x if inputs is None else inputs
    enc = eqx_module("encoder", encoder)
    dec = eqx_module("decoder", decoder)
    h = _dropout(numpyro.prng_key(), normalize(src), dropout) if dropout > 0 else normalize(src)
    logits = jax.vmap(lambda v: dec(jnp.tanh(enc(v))))(h)
    with numpyro.plate("users", n):
        numpyro.sample("x", _multinomial(N, logits, nmax, normalized), obs=x)
    if not isinstance(weight_decay, (int, float)) or weight_decay:  # traced, or non-zero
        sq = sum(jnp.sum(layer.weight**2) for net in (enc, dec) for layer in net.layers)
        numpyro.factor("weight_decay", -weight_decay * sq)




class ClickMultinomial(dist.Distribution):
    r""":math:`\operatorname{Mult}(N, \operatorname{softmax}(\text{logits}))` over the items, per
    user, for click vectors.

    ``log_prob`` is :math:`\sum_i x_i \log\pi_i` plus, with ``normalized`` (default), the
    coefficient :math:`\log N! - \sum_i \log x_i!` (the training objective leaves it out: it
    has no parameter, and its ``gammaln`` over users × items is most of the step's cost).
    ``sample`` inverts the CDF of :math:`\pi` at ``total_count_max`` uniforms per user, so its
    memory is users × ``total_count_max`` (NumPyro's multinomial draws a Gumbel per item and
    click: users × items × clicks).
    """

    arg_constraints = {}
    pytree_data_fields = ("total_count", "logits")
    pytree_aux_fields = ("total_count_max", "normalized")

    def __init__(self, total_count, logits, total_count_max=None, *, normalized: bool = True):
        self.total_count = jnp.asarray(total_count)
        self.logits = jnp.asarray(logits)
        self.total_count_max = total_count_max
        self.normalized = normalized
        super().__init__(self.logits.shape[:-1], self.logits.shape[-1:])

    @property
    def support(self):
        return dist.constraints.multinomial(self.total_count)

    def log_prob(self, value):
        ll = jnp.sum(value * jax.nn.log_softmax(self.logits, axis=-1), axis=-1)
        if self.normalized:
            gl = jax.scipy.special.gammaln
            ll = ll + gl(jnp.sum(value, -1) + 1) - jnp.sum(gl(value + 1), -1)
        return ll

    def sample(self, key, sample_shape=()):
        if self.total_count_max is None:
            raise ValueError("drawing clicks needs `total_count_max` (the largest basket).")
        n_max = int(self.total_count_max)
        n_items = self.logits.shape[-1]
        shape = sample_shape + self.batch_shape
        cdf = jnp.cumsum(jax.nn.softmax(self.logits, axis=-1), axis=-1)
        cdf = jnp.broadcast_to(cdf, shape + (n_items,)).reshape(-1, n_items)
        u = jax.random.uniform(key, (cdf.shape[0], n_max)) * cdf[:, -1:]
        idx = jax.vmap(jnp.searchsorted)(cdf, u)
        n = jnp.broadcast_to(self.total_count, shape).reshape(-1, 1)
        take = (jnp.arange(n_max) < n).astype(self.logits.dtype)
        counts = jax.vmap(lambda i, w: jnp.zeros(n_items, w.dtype).at[i].add(w))(
            jnp.minimum(idx, n_items - 1), take)  # fmt: skip
        return counts.reshape(shape + (n_items,))
