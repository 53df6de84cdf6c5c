r"""Mult-VAE's algorithm: the networks, minibatches densified from CSR inside the compiled step,
and the annealed β-ELBO step (:class:`bayeslr.infer.ObjectiveSVI`) for
:func:`bayeslr.infer.loop.run`. The model and the math are in :mod:`bayeslr.models.multvae`."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

__all__ = [
    "MultVAEProblem",
    "MultVAEState",
    "anneal_steps_for",
    "densify_rows",
    "multinomial_log_likelihood",
    "multvae_init",
    "multvae_step",
    "multvae_svi",
    "networks",
]

# the notebook anneals over 200,000 updates in a 200-epoch ML-20M run of 273 batches per epoch
NOTEBOOK_ANNEAL_FRACTION = 200_000 / (200 * 273)


# --------------------------------------------------------------------------------------------
# networks


def _mlp(sizes: Sequence[int], key, dtype=jnp.float32):
    """An equinox MLP with tanh between layers (none after the last), Glorot-uniform weights and
    biases ~ truncated N(0, 0.001²), as in the authors' notebook."""
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        key, kw, kb, kl = jax.random.split(key, 4)
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        lin = eqx.nn.Linear(fan_in, fan_out, key=kl, dtype=dtype)
        w = jax.random.uniform(kw, (fan_out, fan_in), dtype, -lim, lim)
        b = 1e-3 * jax.random.truncated_normal(kb, -2.0, 2.0, (fan_out,), dtype)
        lin = eqx.tree_at(lambda m: (m.weight, m.bias), lin, (w, b))
        layers.append(lin)
    return _MLP(tuple(layers))


class _MLP(eqx.Module):
    """Linear layers with tanh between them (none after the last)."""

    layers: tuple

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jnp.tanh(x)
        return x


def networks(kind: str, n_items: int, hidden: Sequence[int], latent_dim: int, key):
    """``(encoder, decoder)``: VAE [I-h-2K] / [K-h-I], DAE [I-h-K] / [K-h-I]."""
    k1, k2 = jax.random.split(key)
    out = 2 * latent_dim if kind == "vae" else latent_dim
    enc = _mlp([n_items, *hidden, out], k1)
    dec = _mlp([latent_dim, *list(hidden)[::-1], n_items], k2)
    return enc, dec


def normalize(x):
    """Rows scaled to unit :math:`\\ell_2` norm (empty rows stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def dropout(key, x, rate):
    if rate <= 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def scores(encoder, decoder, x, kind: str, latent_dim: int):
    """Item scores (logits) of a batch of click rows: the decoder at the encoder mean (VAE), or
    the autoencoder's reconstruction (DAE); no dropout, no sampling."""
    h = normalize(x)
    if kind == "dae":
        return jax.vmap(lambda v: decoder(jnp.tanh(encoder(v))))(h)
    return jax.vmap(decoder)(jax.vmap(encoder)(h)[:, :latent_dim])


@eqx.filter_jit
def scores_compiled(encoder, decoder, x, kind: str, latent_dim: int):
    """:func:`scores`, compiled once per network structure and batch shape."""
    return scores(encoder, decoder, x, kind, latent_dim)


def in_batches(fn, X, batch_size: int = 2000) -> np.ndarray:
    """``fn`` on the rows of the CSR ``X``, densified ``batch_size`` rows at a time."""
    out = [np.asarray(fn(jnp.asarray(X[i : i + batch_size].toarray(), jnp.float32)))
           for i in range(0, X.shape[0], batch_size)]  # fmt: skip
    return np.concatenate(out)


def multinomial_log_likelihood(logits, x, normalized: bool = False):
    r""":math:`\log \operatorname{Mult}(x\mid N, \operatorname{softmax}(\text{logits}))` per row.

    ``normalized=False`` drops the multinomial coefficient, which does not depend on the
    parameters: :math:`\sum_i x_i \log\pi_i`. ``normalized=True`` adds
    :math:`\log N! - \sum_i \log x_i!`.
    """
    ll = jnp.sum(x * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    if normalized:
        n = jnp.sum(x, axis=-1)
        ll = ll + jax.scipy.special.gammaln(n + 1) - jnp.sum(jax.scipy.special.gammaln(x + 1), -1)
    return ll


def anneal_steps_for(total_steps: int, fraction: float = NOTEBOOK_ANNEAL_FRACTION) -> int:
    """:math:`T_a` rescaled to a run of ``total_steps`` updates: the notebook's 200,000 updates
    over a 54,600-update ML-20M run is ``fraction`` = 3.66 run lengths to reach β = 1."""
    return max(1, round(fraction * total_steps))


# --------------------------------------------------------------------------------------------
# minibatches from CSR, inside the compiled step


def densify_rows(indptr, indices, data, rows, n_items: int, max_nnz: int):
    r"""The dense ``(len(rows), n_items)`` block of the CSR matrix ``(indptr, indices, data)``.

    The clicks of the rows are gathered into a fixed-size buffer of ``max_nnz`` entries (at least
    the clicks of the ``len(rows)`` busiest users, so every batch fits) and scattered into the
    block: static shapes, no host round trip. Cost :math:`O(\text{max\_nnz} + B\,I)`.
    """
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    cum = jnp.cumsum(lens)
    p = jnp.arange(max_nnz)
    b = jnp.minimum(jnp.searchsorted(cum, p, side="right"), rows.shape[0] - 1)
    valid = p < cum[-1]
    src = jnp.where(valid, starts[b] + p - (cum[b] - lens[b]), 0)
    vals = jnp.where(valid, data[src], 0.0)
    out = jnp.zeros((rows.shape[0], n_items), data.dtype)
    return out.at[b, indices[src]].add(vals)


def max_batch_nnz(X, batch_size: int) -> int:
    """The clicks of the ``batch_size`` busiest users of the CSR ``X``: a bound for any batch."""
    n = np.diff(X.indptr)
    return max(1, int(np.sort(n)[::-1][:batch_size].sum()))


# --------------------------------------------------------------------------------------------
# the training step


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["indptr", "indices", "data", "learning_rate", "cap", "anneal_steps",
                 "weight_decay", "net_key", "svi_key", "data_key"],
    meta_fields=["kind", "n_users", "n_items", "hidden", "latent_dim", "dropout", "batch_size",
                 "n_batches", "max_nnz", "mesh"],
)  # fmt: skip
@dataclasses.dataclass(frozen=True)
class MultVAEProblem:
    r"""The click matrix (CSR arrays) and the settings of one Mult-VAE/DAE fit.

    Data (new values reuse the compiled step): the CSR arrays, the Adam ``learning_rate``, the
    annealing cap and length (:math:`\beta_t = \min(\text{cap}, t/T_a)`), the DAE's
    ``weight_decay`` and the keys (networks, SVI, shuffling). Static: the architecture, the batch
    layout and the device ``mesh`` (``None``: the default device).
    """

    indptr: Array
    indices: Array
    data: Array
    learning_rate: Array
    cap: Array
    anneal_steps: Array
    weight_decay: Array
    net_key: Array
    svi_key: Array
    data_key: Array
    kind: str
    n_users: int
    n_items: int
    hidden: tuple
    latent_dim: int
    dropout: float
    batch_size: int
    n_batches: int
    max_nnz: int
    mesh: Any


class MultVAEState(NamedTuple):
    """The SVI state (parameters, Adam moments, the annealing step, the RNG key) and the
    current epoch's minibatch rows."""

    svi: Any
    batches: Array  # (n_batches, batch_size) user rows
    t: Array  # updates done


def multvae_svi(problem: MultVAEProblem):
    """The :class:`bayeslr.infer.ObjectiveSVI` of the problem (built at trace time)."""
    from bayeslr.infer import ELBO, BetaELBO, ObjectiveSVI
    from bayeslr.models.multvae.model import multdae_model, multvae_guide, multvae_model

    enc, dec = networks(problem.kind, problem.n_items, problem.hidden, problem.latent_dim,
                        problem.net_key)  # fmt: skip
    opt = optax.adam(problem.learning_rate)
    K = problem.latent_dim
    if problem.kind == "vae":

        def model(x):
            return multvae_model(x, decoder=dec, latent_dim=K, normalized=False)

        def guide(x):
            return multvae_guide(x, encoder=enc, latent_dim=K, dropout=problem.dropout)

        cap, steps = problem.cap, problem.anneal_steps
        loss = BetaELBO(beta=lambda s: jnp.minimum(cap, s / steps))
        return _unconstrained(ObjectiveSVI(model, guide, opt, loss=loss))

    def dae(x):
        # the objective sums over a batch's users, the notebook averages: λ·B keeps the ratio
        return multdae_model(x, encoder=enc, decoder=dec, dropout=problem.dropout,
                             weight_decay=problem.weight_decay * x.shape[0],
                             normalized=False)  # fmt: skip

    return _unconstrained(ObjectiveSVI(dae, _empty_guide, opt, loss=ELBO()))


def _unconstrained(svi):
    """``svi`` ready for ``update`` without ``init``: ``init`` only records the parameters'
    constraints, and the networks' weights have none (the step builds a new SVI object at every
    trace, so it cannot carry what an earlier ``init`` recorded)."""
    svi.constrain_fn = dict
    return svi


def _empty_guide(*args, **kwargs):
    return None


def _epoch_rows(problem: MultVAEProblem, epoch):
    """The epoch's user rows: a permutation (``fold_in(data_key, epoch)``), the last batch filled
    up from its start so every batch has one shape."""
    U, B, nb = problem.n_users, problem.batch_size, problem.n_batches
    perm = jax.random.permutation(jax.random.fold_in(problem.data_key, epoch), U)
    perm = jnp.concatenate([perm, perm[: nb * B - U]])
    return perm.reshape(nb, B)


def _batch(problem: MultVAEProblem, rows):
    x = densify_rows(problem.indptr, problem.indices, problem.data, rows, problem.n_items,
                     problem.max_nnz)  # fmt: skip
    if problem.mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        x = jax.lax.with_sharding_constraint(x, NamedSharding(problem.mesh, PartitionSpec("batch")))
    return x


def multvae_init(key, problem: MultVAEProblem, restart=0) -> MultVAEState:
    """The networks (``net_key``), the SVI state (``svi_key``) and the first epoch's rows."""
    svi = multvae_svi(problem)
    state = svi.init(problem.svi_key, _batch(problem, jnp.arange(problem.batch_size)))
    return MultVAEState(state, _epoch_rows(problem, 0), jnp.zeros((), jnp.int32))


def multvae_step(key, state: MultVAEState, problem: MultVAEProblem):
    """One SVI update on one minibatch of users; ``info``: ``loss`` (per user)."""
    nb = problem.n_batches
    t = state.t
    j = t % nb
    batches = jax.lax.cond((j == 0) & (t > 0), lambda: _epoch_rows(problem, t // nb),
                           lambda: state.batches)  # fmt: skip
    svi_state, loss = multvae_svi(problem).update(state.svi, _batch(problem, batches[j]))
    return MultVAEState(svi_state, batches, t + 1), {"loss": loss / problem.batch_size}


def score_fn(kind: str, latent_dim: int, encoder, decoder):
    """``score(params, x)``: item scores under the SVI parameters ``params``."""
    enc_static = eqx.partition(encoder, eqx.is_inexact_array)[1]
    dec_static = eqx.partition(decoder, eqx.is_inexact_array)[1]

    def score(params, x):
        enc = eqx.combine(params["encoder$params"], enc_static)
        dec = eqx.combine(params["decoder$params"], dec_static)
        return scores(enc, dec, x, kind, latent_dim)

    return score


def rebuild(net, params):
    """The network ``net`` with the arrays ``params`` (numpy or JAX)."""
    static = eqx.partition(net, eqx.is_inexact_array)[1]
    return eqx.combine(jax.tree.map(jnp.asarray, params), static)
