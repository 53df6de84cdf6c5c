r"""Mult-VAE and Mult-DAE: variational and denoising autoencoders for collaborative filtering.

Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for Collaborative Filtering",
WWW 2018 (arXiv 1802.05814).

**Model.** User :math:`u` has a binary click vector :math:`x_u \in \{0,1\}^I` with
:math:`N_u = \sum_i x_{ui}` clicks;

.. math::

    z_u \sim \mathcal N(0, I_K),\qquad \pi(z_u) = \operatorname{softmax}(f_\theta(z_u)),\qquad
    x_u \sim \operatorname{Mult}(N_u, \pi(z_u)),

with the decoder :math:`f_\theta` an MLP ([K-600-I] by default, tanh between layers). The
amortized guide is :math:`q_\phi(z_u\mid x_u) = \mathcal N(\mu_\phi(\tilde x_u),
\operatorname{diag}\sigma^2_\phi(\tilde x_u))`, where :math:`\tilde x_u` is :math:`x_u`
normalized to unit :math:`\ell_2` norm and, in training, passed through dropout (keep 0.5). The
encoder is [I-600-2K]. Training maximizes the β-ELBO

.. math::

    \mathcal L_\beta(u) = \mathbb E_q[\log p_\theta(x_u\mid z_u)]
    - \beta\,\mathrm{KL}(q_\phi(z_u\mid x_u)\,\|\,p(z_u)),

with :math:`\beta_t = \min(\text{cap}, t/T_a)` annealed over updates
(:class:`bayeslr.infer.BetaELBO` with :func:`bayeslr.infer.linear_warmup`, through
:class:`bayeslr.infer.ObjectiveSVI`; the KL is the objective's one-sample estimate). Adam
(1e-3), minibatches of 500 users. Scores for a user are :math:`f_\theta(\mu_\phi(\tilde x_u))`
(no sampling, no dropout).

**Mult-DAE** (``kind="dae"``) is the same code without the latent variable: :math:`\pi =
\operatorname{softmax}(f_\theta(g_\phi(\operatorname{dropout}(\tilde x_u))))`, [I-200-I], loss
:math:`-\log p(x_u) + \lambda\sum\|W\|^2` with :math:`\lambda = 0.01/B`.

**Protocol.** Strong generalization (:func:`bayeslr.datasets.strong_generalization_split`):
the model is trained on training users; held-out users are folded in (their 80 % input clicks
are encoded), the other 20 % are ranked among all items, with the fold-in items excluded. The
checkpoint kept is the epoch with the best validation NDCG@100.

**Scale-out.** ``devices=`` trains data-parallel over JAX devices with ``jax.sharding``: each
minibatch is sharded along users, parameters and optimizer state are replicated, and the
jitted SVI step runs as one SPMD program (gradients are all-reduced by XLA). Inputs are
``scipy.sparse`` CSR matrices, densified one minibatch at a time.

**Checkpoints.** ``checkpoint=path`` writes the whole training state (SVI state with parameters,
optimizer moments and the annealing step, the RNG key, the epoch, the best parameters so far and
the histories) atomically after every epoch; a later ``fit`` with the same path resumes where
it stopped and ends where an uninterrupted run would.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeslr._validation import check_int, check_real
from bayeslr.infer import Posterior, linear_warmup

__all__ = [
    "MultVAE",
    "MultVAEPosterior",
    "EASE",
    "multvae_model",
    "multvae_guide",
    "multdae_model",
    "multinomial_log_likelihood",
    "popularity_scores",
    "anneal_steps_for",
]

KINDS = ("vae", "dae")
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


def _scores(encoder, decoder, x, kind: str, latent_dim: int):
    """Item scores (logits) of a batch of click rows: the decoder at the encoder mean (VAE), or
    the autoencoder's reconstruction (DAE); no dropout, no sampling."""
    h = _normalize(x)
    if kind == "dae":
        return jax.vmap(lambda v: decoder(jnp.tanh(encoder(v))))(h)
    return jax.vmap(decoder)(jax.vmap(encoder)(h)[:, :latent_dim])


@eqx.filter_jit
def _scores_compiled(encoder, decoder, x, kind: str, latent_dim: int):
    """:func:`_scores`, compiled once per network structure and batch shape (``kind`` and
    ``latent_dim`` are static)."""
    return _scores(encoder, decoder, x, kind, latent_dim)


def _in_batches(fn, X, batch_size: int = 2000) -> np.ndarray:
    """``fn`` on the rows of the CSR ``X``, densified ``batch_size`` rows at a time."""
    out = [np.asarray(fn(jnp.asarray(X[i : i + batch_size].toarray(), jnp.float32)))
           for i in range(0, X.shape[0], batch_size)]  # fmt: skip
    return np.concatenate(out)


def _normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _dropout(key, x, rate):
    if rate <= 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


# --------------------------------------------------------------------------------------------
# likelihood and the NumPyro model / guide


def multinomial_log_likelihood(logits, x, normalized: bool = False):
    r""":math:`\log \operatorname{Mult}(x\mid N, \operatorname{softmax}(\text{logits}))` per row.

    ``normalized=False`` (the training objective) drops the multinomial coefficient, which does
    not depend on the parameters: :math:`\sum_i x_i \log\pi_i`. ``normalized=True`` adds
    :math:`\log N! - \sum_i \log x_i!`.
    """
    ll = jnp.sum(x * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    if normalized:
        n = jnp.sum(x, axis=-1)
        ll = ll + jax.scipy.special.gammaln(n + 1) - jnp.sum(jax.scipy.special.gammaln(x + 1), -1)
    return ll


def multvae_model(x, *, decoder, latent_dim: int):
    r"""Mult-VAE's generative model for a minibatch ``x`` (users × items): :math:`z_u \sim
    \mathcal N(0, I)`, :math:`x_u \sim \operatorname{Mult}(N_u, \operatorname{softmax}(f_\theta
    (z_u)))`; ``decoder`` is registered with ``numpyro.contrib.module.eqx_module``. The observed
    site ``x`` contributes :func:`multinomial_log_likelihood` (without the coefficient)."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    dec = eqx_module("decoder", decoder)
    with numpyro.plate("users", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([latent_dim]).to_event(1))
        logits = jax.vmap(dec)(z)
        numpyro.factor("x", multinomial_log_likelihood(logits, x))


def multvae_guide(x, *, encoder, latent_dim: int, dropout: float = 0.5):
    r"""The amortized guide :math:`q_\phi(z_u\mid x_u)`: ℓ2-normalize, dropout (training), the
    encoder MLP, then :math:`\mathcal N(\mu, \operatorname{diag} e^{\log\sigma^2})`."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    enc = eqx_module("encoder", encoder)
    h = _normalize(x)
    if dropout > 0:
        h = _dropout(numpyro.prng_key(), h, dropout)
    out = jax.vmap(enc)(h)
    mu, logvar = out[:, :latent_dim], out[:, latent_dim:]
    with numpyro.plate("users", x.shape[0]):
        numpyro.sample("z", dist.Normal(mu, jnp.exp(0.5 * logvar)).to_event(1))


def multdae_model(x, *, encoder, decoder, dropout: float = 0.5, weight_decay: float = 0.0):
    r"""Mult-DAE as a NumPyro model without latent variables: the multinomial log-likelihood of
    the reconstruction of the corrupted input, minus :math:`\lambda\sum\|W\|^2` on the weights
    (a ``numpyro.factor``)."""
    import numpyro
    from numpyro.contrib.module import eqx_module

    enc = eqx_module("encoder", encoder)
    dec = eqx_module("decoder", decoder)
    h = _dropout(numpyro.prng_key(), _normalize(x), dropout) if dropout > 0 else _normalize(x)
    logits = jax.vmap(lambda v: dec(jnp.tanh(enc(v))))(h)
    numpyro.factor("x", jnp.sum(multinomial_log_likelihood(logits, x)))
    if weight_decay:
        sq = sum(jnp.sum(layer.weight**2) for net in (enc, dec) for layer in net.layers)
        numpyro.factor("weight_decay", -weight_decay * sq)


def _empty_guide(*args, **kwargs):
    return None


# --------------------------------------------------------------------------------------------
# baselines


def popularity_scores(train, n_users: int):
    """Item popularity (training click counts), the same ranking for every user."""
    counts = np.asarray(train.sum(0)).ravel().astype(np.float64)
    return np.broadcast_to(counts, (n_users, counts.size))


class EASE:
    r"""EASE (Steck 2019): the closed-form item–item model :math:`P = (X^\top X + \lambda I)^{-1}`,
    :math:`B_{ij} = -P_{ij}/P_{jj}` (:math:`B_{ii} = 0`), scores :math:`xB`. Cost
    :math:`O(I^3)` time, :math:`O(I^2)` memory (float64)."""

    def __init__(self, lam: float = 500.0):
        self.lam = check_real("lam", lam, low=0.0, low_open=True)
        self.B = None

    def fit(self, train) -> EASE:
        X = _check_clicks("train", train)
        G = (X.T @ X).toarray().astype(np.float64)
        G[np.diag_indices_from(G)] += self.lam
        P = np.linalg.inv(G)
        B = -P / np.diag(P)[None, :]
        B[np.diag_indices_from(B)] = 0.0
        self.B = B
        return self

    def predict(self, user_items) -> np.ndarray:
        if self.B is None:
            raise RuntimeError("EASE.predict before fit.")
        X = _check_clicks("user_items", user_items, self.B.shape[0], allow_empty=True)
        return np.asarray(X @ self.B)


# --------------------------------------------------------------------------------------------
# checks


def _check_clicks(name: str, m, n_items: int | None = None, allow_empty: bool = False):
    import scipy.sparse as sp

    X = sp.csr_matrix(m) if not sp.issparse(m) else m.tocsr()
    if X.ndim != 2:
        raise ValueError(f"`{name}` must be a (users, items) matrix; got shape {X.shape}.")
    if n_items is not None and X.shape[1] != n_items:
        raise ValueError(
            f"`{name}` must have {n_items} item columns (the training catalogue); got "
            f"{X.shape[1]}."
        )
    data = X.data
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
        raise ValueError(f"`{name}` must hold non-negative finite click counts.")
    if not allow_empty:
        empty = np.asarray(X.getnnz(axis=1)) == 0
        if empty.any():
            raise ValueError(
                f"`{name}` has {int(empty.sum())} users without clicks (rows "
                f"{np.nonzero(empty)[0][:5].tolist()}...); drop them first."
            )
    return X


def anneal_steps_for(total_steps: int, fraction: float = NOTEBOOK_ANNEAL_FRACTION) -> int:
    """:math:`T_a` rescaled to a run of ``total_steps`` updates: the notebook's 200,000 updates
    over a 54,600-update ML-20M run is ``fraction`` = 3.66 run lengths to reach β = 1."""
    return max(1, round(fraction * total_steps))


# --------------------------------------------------------------------------------------------
# the posterior


class MultVAEPosterior(Posterior):
    r"""A fitted Mult-VAE (or Mult-DAE): the encoder and decoder at the best validation epoch.

    :meth:`predict` scores all items for new users by fold-in; :meth:`recommend` ranks them
    with the fold-in items excluded. ``samples`` hold draws of :math:`z_u \sim q_\phi(z_u\mid
    x_u)` for the validation users (dims ``user``, ``latent``; VAE only), and
    ``log_likelihood`` their held-out clicks' multinomial log-likelihood per draw, so
    ``az.loo`` compares models across users. ``extra``: ``loss`` (per update), ``val_ndcg``
    and ``beta`` (per epoch), ``best_epoch``, ``epoch_time``, ``users_per_second``,
    ``selected_beta`` (with ``anneal_cap="auto"``).
    """

    def _setup(self, *, kind, encoder, decoder, latent_dim, eval_data, num_draws, seed):
        self.kind = kind
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self._eval = eval_data
        self._num_draws = num_draws
        self._seed = seed
        return self

    @property
    def n_items(self) -> int:
        """The item count of the training catalogue."""
        return self.decoder.layers[-1].weight.shape[0]

    def predict(self, user_items, batch_size: int = 2000, **_: Any) -> np.ndarray:  # type: ignore[override]
        """Scores (logits) of every item for each row of ``user_items`` (users × items clicks,
        dense or scipy.sparse), from the encoder mean; ``(users, items)``."""
        X = _check_clicks("user_items", user_items, self.n_items, allow_empty=True)
        if X.shape[0] == 0:
            return np.zeros((0, self.n_items), np.float32)
        kind, latent = self.kind, self.latent_dim
        fn = functools.partial(_scores_compiled, self.encoder, self.decoder, kind=kind,
                               latent_dim=latent)  # fmt: skip
        return _in_batches(fn, X, batch_size)

    def recommend(self, user_items, k: int = 20) -> np.ndarray:
        """The ``k`` best items per user (column indices, best first), never one the user has
        already clicked (:func:`bayeslr.metrics.top_k_items`)."""
        from bayeslr.metrics import top_k_items

        X = _check_clicks("user_items", user_items, self.n_items, allow_empty=True)
        return top_k_items(self.predict(X), k, exclude=X)

    def log_likelihood(self) -> dict[str, jax.Array]:
        x_out = self._eval[1]
        z = jnp.asarray(self.samples["z"][0])  # (draw, user, latent)
        logits = jax.vmap(jax.vmap(self.decoder))(z)
        out = jnp.asarray(x_out.toarray(), jnp.float32)
        return {"x": np.asarray(multinomial_log_likelihood(logits, out[None]))[None]}

    def _has_log_likelihood(self) -> bool:
        return self.kind == "vae" and self._eval is not None


# --------------------------------------------------------------------------------------------
# the fit


class MultVAE:
    r"""Mult-VAE (``kind="vae"``) or Mult-DAE (``kind="dae"``) for implicit feedback (module
    docstring has the model, objective, protocol and scale-out).

    Example::

        from bayeslr.datasets import binarize, load_movielens_small, strong_generalization_split
        split = strong_generalization_split(binarize(load_movielens_small()), 100, 100)
        post = MultVAE(epochs=100).fit(split.train, validation=(split.val_in, split.val_out))
        post.recommend(split.test_in, k=20)

    Args:
        kind: ``"vae"`` or ``"dae"``.
        hidden: encoder hidden widths (decoder mirrored); default [600] (VAE) / [] (DAE).
        latent_dim: :math:`K` (VAE: 200) or the DAE's bottleneck (200).
        dropout: input dropout rate (0.5: keep probability 0.5).
        anneal_cap: the largest β (0.2, the notebook's), or ``"auto"``: anneal to 1 over the
            run, take β at the epoch of best validation NDCG@100, then train again at the same
            annealing rate, capped there.
        anneal_steps: :math:`T_a`; default :func:`anneal_steps_for` the run length.
        weight_decay: DAE :math:`\lambda` (default 0.01 / ``batch_size``); VAE: 0.
        epochs, batch_size, learning_rate: Adam on minibatches of users (every epoch visits
            every user; the last batch is filled up from the start of the permutation so all
            batches have one shape).
        devices: ``None`` (default device), an int (the first n devices) or a list of devices:
            data-parallel training with ``jax.sharding`` (``batch_size`` must divide evenly).
        checkpoint: a path; the training state is saved there after every epoch and a fit is
            resumed from it when it exists.
        num_draws: draws of :math:`z_u` for :meth:`MultVAEPosterior.to_arviz`.
        seed: PRNG seed (initialization, shuffling, dropout, reparameterization).
        progress_bar: tqdm bar over epochs.
    """

    def __init__(
        self,
        kind: str = "vae",
        *,
        hidden: Sequence[int] | None = None,
        latent_dim: int = 200,
        dropout: float = 0.5,
        anneal_cap: float | str = 0.2,
        anneal_steps: int | None = None,
        weight_decay: float | None = None,
        epochs: int = 200,
        batch_size: int = 500,
        learning_rate: float = 1e-3,
        devices: int | Sequence[Any] | None = None,
        checkpoint: str | os.PathLike | None = None,
        num_draws: int = 50,
        seed: int = 0,
        progress_bar: bool = True,
    ):
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}.")
        self.kind = kind
        hidden = ([600] if kind == "vae" else []) if hidden is None else list(hidden)
        self.hidden = [check_int("hidden", h) for h in hidden]
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.dropout = check_real("dropout", dropout, low=0.0, high=1.0, high_open=True)
        if anneal_cap != "auto":
            anneal_cap = check_real("anneal_cap", anneal_cap, low=0.0, high=1.0)
        self.anneal_cap = anneal_cap
        self.anneal_steps = (
            None if anneal_steps is None else check_int("anneal_steps", anneal_steps)
        )
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        if weight_decay is None:
            weight_decay = 0.01 / self.batch_size if kind == "dae" else 0.0
        self.weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        self.learning_rate = check_real("learning_rate", learning_rate, low=0.0, low_open=True)
        self.devices = devices
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.num_draws = check_int("num_draws", num_draws)
        self.seed = check_int("seed", seed, minimum=0)
        self.progress_bar = bool(progress_bar)

    # ---- pieces -------------------------------------------------------------------------
    def networks(self, n_items: int, key):
        """``(encoder, decoder)`` equinox MLPs for ``n_items`` items."""
        k1, k2 = jax.random.split(key)
        if self.kind == "vae":
            enc = _mlp([n_items, *self.hidden, 2 * self.latent_dim], k1)
            dec = _mlp([self.latent_dim, *self.hidden[::-1], n_items], k2)
        else:
            enc = _mlp([n_items, *self.hidden, self.latent_dim], k1)
            dec = _mlp([self.latent_dim, *self.hidden[::-1], n_items], k2)
        return enc, dec

    def _mesh(self):
        if self.devices is None:
            return None
        devs = jax.devices()[: self.devices] if isinstance(self.devices, int) else list(
            self.devices)  # fmt: skip
        if isinstance(self.devices, int) and len(devs) < self.devices:
            raise ValueError(
                f"`devices`={self.devices} but only {len(jax.devices())} JAX devices exist."
            )
        if self.batch_size % len(devs):
            raise ValueError(
                f"`batch_size` ({self.batch_size}) must be a multiple of the {len(devs)} devices."
            )
        return jax.sharding.Mesh(np.asarray(devs), ("batch",))

    def svi(self, encoder, decoder, total_steps: int, cap: float, anneal_steps: int | None = None):
        """The :class:`bayeslr.infer.ObjectiveSVI` that trains the networks (β-ELBO with linear
        annealing for the VAE; the plain log-likelihood plus weight decay for the DAE)."""
        from bayeslr.infer import ELBO, BetaELBO, ObjectiveSVI

        opt = optax.adam(self.learning_rate)
        if self.kind == "vae":
            steps = anneal_steps or self.anneal_steps or anneal_steps_for(total_steps)
            loss = BetaELBO(beta=linear_warmup(steps, cap))

            def model(x):
                return multvae_model(x, decoder=decoder, latent_dim=self.latent_dim)

            def guide(x):
                return multvae_guide(
                    x, encoder=encoder, latent_dim=self.latent_dim, dropout=self.dropout
                )

            return ObjectiveSVI(model, guide, opt, loss=loss)

        def dae(x):
            # the objective sums over a batch's users, the notebook averages: λ·B keeps the ratio
            return multdae_model(
                x, encoder=encoder, decoder=decoder, dropout=self.dropout,
                weight_decay=self.weight_decay * x.shape[0],
            )  # fmt: skip

        return ObjectiveSVI(dae, _empty_guide, opt, loss=ELBO())

    # ---- fit ----------------------------------------------------------------------------
    def fit(self, train, validation: tuple[Any, Any] | None = None) -> MultVAEPosterior:
        """Train on the ``train`` click matrix (users × items, scipy.sparse or dense); with
        ``validation=(fold_in, heldout)`` keep the epoch of best NDCG@100 on it (else the last)."""
        X = _check_clicks("train", train)
        n_items = X.shape[1]
        if validation is not None:
            v_in = _check_clicks("validation[0]", validation[0], n_items)
            v_out = _check_clicks("validation[1]", validation[1], n_items)
            if v_in.shape != v_out.shape:
                raise ValueError(
                    f"`validation` fold-in {v_in.shape} and held-out {v_out.shape} differ."
                )
            validation = (v_in, v_out)
        if self.anneal_cap == "auto" and self.kind == "vae":
            if validation is None:
                raise ValueError("`anneal_cap='auto'` needs `validation` to select β.")
            # anneal to 1 over the run (unless anneal_steps is given); the re-run anneals at the
            # same rate and stops at the selected β, so it reaches β* where the first run did
            rate = self.anneal_steps or math.ceil(X.shape[0] / min(self.batch_size, X.shape[0])
                                                  ) * self.epochs  # fmt: skip
            first = self._train(X, validation, cap=1.0, tag="auto", anneal_steps=rate)
            best = int(np.argmax(first["val_ndcg"]))
            beta = float(first["beta"][best])
            out = self._train(X, validation, cap=beta, tag="final", anneal_steps=rate)
            out["extra"]["selected_beta"] = beta
            out["extra"]["selection_val_ndcg"] = first["val_ndcg"]
            out["extra"]["selection_beta"] = first["beta"]
        else:
            cap = 0.2 if self.anneal_cap == "auto" else float(self.anneal_cap)
            out = self._train(X, validation, cap=cap, tag="final")
        return self._posterior(out, validation)

    def _train(self, X, validation, cap: float, tag: str, anneal_steps: int | None = None) -> dict:
        from tqdm.auto import tqdm

        from bayeslr.metrics import ndcg_at_k

        n_users, n_items = X.shape
        B = min(self.batch_size, n_users)
        n_batches = math.ceil(n_users / B)
        total = n_batches * self.epochs
        key = jax.random.PRNGKey(self.seed)
        k_net, k_svi, k_data = jax.random.split(key, 3)
        encoder, decoder = self.networks(n_items, k_net)
        t_anneal = anneal_steps or self.anneal_steps or anneal_steps_for(total)
        svi = self.svi(encoder, decoder, total, cap, t_anneal)
        mesh = self._mesh()
        if mesh is not None and B % mesh.size:
            raise ValueError(f"the batch of {B} users does not split over {mesh.size} devices.")
        shard_x = None if mesh is None else jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec("batch"))  # fmt: skip
        replicated = None if mesh is None else jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec())  # fmt: skip

        def batch(idx):
            xb = np.asarray(X[idx].toarray(), np.float32)
            return jax.device_put(xb, shard_x) if shard_x is not None else jnp.asarray(xb)

        ckpt = None if self.checkpoint is None else self.checkpoint.with_name(
            f"{self.checkpoint.name}.{tag}") if tag == "auto" else self.checkpoint  # fmt: skip
        state, start, hist, best = None, 0, {"loss": [], "val_ndcg": [], "beta": [],
                                             "epoch_time": []}, None  # fmt: skip
        if ckpt is not None and ckpt.exists():
            saved = _load(ckpt)
            if saved["shape"] != (n_users, n_items) or saved["kind"] != self.kind:
                raise ValueError(
                    f"`checkpoint` {str(ckpt)!r} is from a different run ({saved['kind']}, "
                    f"shape {saved['shape']}); remove it or pass another path."
                )
            state, start, hist, best = saved["state"], saved["epoch"], saved["hist"], saved["best"]
            state = jax.tree.map(jnp.asarray, state)
        fresh = svi.init(k_svi, batch(np.arange(B)))  # also sets up svi (constraints)
        if state is None:
            state = fresh
        else:
            state = jax.tree.unflatten(jax.tree.structure(fresh), jax.tree.leaves(state))
        if replicated is not None:
            state = jax.device_put(state, replicated)
        update = jax.jit(svi.update)
        score = jax.jit(self._score_fn(encoder, decoder))
        bar = tqdm(range(start, self.epochs), desc=f"Mult-{self.kind.upper()}",
                   initial=start, total=self.epochs, disable=not self.progress_bar)  # fmt: skip
        for epoch in bar:
            t0 = time.perf_counter()
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_data, epoch), n_users))
            perm = np.concatenate([perm, perm[: n_batches * B - n_users]])
            losses = np.empty(n_batches)
            for b in range(n_batches):
                state, loss = update(state, batch(perm[b * B : (b + 1) * B]))
                losses[b] = float(loss)
            if not np.all(np.isfinite(losses)):
                raise FloatingPointError(
                    f"Mult-{self.kind.upper()} loss became NaN in epoch {epoch}; lower "
                    "`learning_rate`."
                )
            hist["epoch_time"].append(time.perf_counter() - t0)
            hist["loss"].append(losses / B)
            params = svi.get_params(state)
            step = (epoch + 1) * n_batches
            beta = 0.0 if self.kind == "dae" else float(linear_warmup(t_anneal, cap)(step))
            hist["beta"].append(beta)
            if validation is not None:
                s = _in_batches(functools.partial(score, params), validation[0])
                ndcg = ndcg_at_k(s, validation[1], 100, exclude=validation[0])
                hist["val_ndcg"].append(ndcg)
                if best is None or ndcg > best["ndcg"]:
                    best = {"ndcg": ndcg, "epoch": epoch,
                            "params": jax.tree.map(np.asarray, params)}  # fmt: skip
                bar.set_postfix(loss=f"{losses.mean() / B:.4g}", ndcg100=f"{ndcg:.4f}")
            else:
                best = {"ndcg": None, "epoch": epoch, "params": jax.tree.map(np.asarray, params)}
                bar.set_postfix(loss=f"{losses.mean() / B:.4g}")
            if ckpt is not None:
                _save(ckpt, {"state": jax.tree.map(np.asarray, state), "epoch": epoch + 1,
                             "hist": hist, "best": best, "shape": (n_users, n_items),
                             "kind": self.kind})  # fmt: skip
        bar.close()
        if best is None:  # resumed a finished run
            raise RuntimeError("nothing trained: the checkpoint holds no parameters.")

        def rebuild(net, name):
            static = eqx.partition(net, eqx.is_inexact_array)[1]
            return eqx.combine(jax.tree.map(jnp.asarray, best["params"][name]), static)

        enc, dec = rebuild(encoder, "encoder$params"), rebuild(decoder, "decoder$params")
        times = np.asarray(hist["epoch_time"])
        extra = {
            "loss": np.concatenate(hist["loss"]) if hist["loss"] else np.zeros(0),
            "val_ndcg": np.asarray(hist["val_ndcg"]),
            "beta": np.asarray(hist["beta"]),
            "best_epoch": best["epoch"],
            "epoch_time": times,
            "users_per_second": float(n_batches * B / np.median(times)) if times.size else None,
            "anneal_cap": cap,
        }
        return {"encoder": enc, "decoder": dec, "extra": extra, "val_ndcg": extra["val_ndcg"],
                "beta": extra["beta"]}  # fmt: skip

    def _score_fn(self, encoder, decoder):
        latent, kind = self.latent_dim, self.kind
        enc_static = eqx.partition(encoder, eqx.is_inexact_array)[1]
        dec_static = eqx.partition(decoder, eqx.is_inexact_array)[1]

        def score(params, x):
            enc = eqx.combine(params["encoder$params"], enc_static)
            dec = eqx.combine(params["decoder$params"], dec_static)
            return _scores(enc, dec, x, kind, latent)

        return score

    def _posterior(self, out, validation) -> MultVAEPosterior:
        enc, dec = out["encoder"], out["decoder"]
        samples, dims, observed = {}, {}, None
        if self.kind == "vae" and validation is not None:
            x_in = jnp.asarray(validation[0].toarray(), jnp.float32)
            h = jax.vmap(enc)(_normalize(x_in))
            mu, sd = h[:, : self.latent_dim], jnp.exp(0.5 * h[:, self.latent_dim :])
            eps = jax.random.normal(jax.random.PRNGKey(self.seed + 1),
                                    (self.num_draws, *mu.shape))  # fmt: skip
            samples["z"] = np.asarray(mu + sd * eps)
            dims["z"] = ["user", "latent"]
            observed = {"x": validation[1].toarray()}
        else:  # the DAE has no latent variable: its "posterior" is the point estimate's score
            samples["best_val_ndcg"] = np.full((1,), np.nan if not len(out["val_ndcg"]) else
                                               float(np.max(out["val_ndcg"])))  # fmt: skip
        post = MultVAEPosterior.from_samples(
            samples, group_by_chain=False, method=f"mult-{self.kind}", dims=dims,
            observed=observed, extra=out["extra"],
        )  # fmt: skip
        return post._setup(kind=self.kind, encoder=enc, decoder=dec, latent_dim=self.latent_dim,
                           eval_data=validation if self.kind == "vae" else None,
                           num_draws=self.num_draws, seed=self.seed)  # fmt: skip


def _save(path: Path, obj) -> None:
    """Pickle ``obj`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``), so an interrupted write never leaves a partial checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)
