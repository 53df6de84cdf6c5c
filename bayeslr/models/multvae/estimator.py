r"""The Mult-VAE/DAE estimator (:class:`MultVAE`), its posterior (:class:`MultVAEPosterior`) and
the baselines (:class:`EASE`, :func:`popularity_scores`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayeslr._ranking import ndcg_at_k, top_k_items
from bayeslr._validation import as_key, check_int, check_real
from bayeslr.infer import loop
from bayeslr.models.base import Estimator, ModelPosterior, Prepared, Stage
from bayeslr.models.multvae.algo import (
    MultVAEProblem,
    anneal_steps_for,
    in_batches,
    max_batch_nnz,
    multvae_init,
    multvae_step,
    networks,
    normalize,
    rebuild,
    scores_compiled,
)
from bayeslr.models.multvae.model import multdae_model, multvae_model

__all__ = ["EASE", "MultVAE", "MultVAEPosterior", "popularity_scores"]

KINDS = ("vae", "dae")


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
# the posterior


class MultVAEPosterior(ModelPosterior):
    r"""A fitted Mult-VAE (or Mult-DAE), bound to :func:`multvae_model` (:func:`multdae_model`).

    The networks are those of the best validation epoch (the last without validation); they
    are fixed arguments of the model function (``post.kwargs``). For the VAE the posterior's
    random variables are the users' :math:`z_u \sim q_\phi(z_u\mid x_u)` (``samples["z"]``,
    ``(chain, draw, user, latent)`` for the training users, drawn from the amortized guide on
    first access); the DAE is a point estimate and has none. :meth:`predict` draws click
    vectors :math:`x_u \sim \operatorname{Mult}(N_u, \pi(z_u))` for new users folded in from
    their clicks; :meth:`score` is the held-out log-likelihood of held-out clicks given the
    fold-in ones (the strong-generalization protocol); :meth:`log_likelihood` and ``to_arviz``
    are of the training users. Fast paths: :meth:`scores` (item logits at the encoder mean) and
    :meth:`recommend`. ``extra``: ``loss`` (per update), ``val_ndcg`` and ``beta`` (per epoch),
    ``best_epoch``, ``epoch_time``, ``users_per_second``, ``selected_beta`` (``anneal_cap=
    "auto"``).
    """

    @property
    def kind(self) -> str:
        return self.context["kind"]

    @property
    def encoder(self):
        return self.context["encoder"]

    @property
    def decoder(self):
        return self.context["decoder"]

    @property
    def n_items(self) -> int:
        """The item count of the training catalogue."""
        return self.decoder.layers[-1].weight.shape[0]

    @property
    def args(self) -> tuple:
        """The model's arguments at the fit: the training clicks, densified on first use."""
        if self._args is None:
            self._args = (jnp.asarray(self.context["train"].toarray(), jnp.float32),)
        return self._args

    @args.setter
    def args(self, value):
        self._args = value if value else None

    @property
    def observed(self):
        return {"x": np.asarray(self.args[0])}

    # ---- fast paths
    def scores(self, user_items, batch_size: int = 2000) -> np.ndarray:
        """Scores (logits) of every item for each row of ``user_items`` (users × items clicks,
        dense or scipy.sparse), from the encoder mean; ``(users, items)``."""
        X = _check_clicks("user_items", user_items, self.n_items, allow_empty=True)
        if X.shape[0] == 0:
            return np.zeros((0, self.n_items), np.float32)
        fn = functools.partial(scores_compiled, self.encoder, self.decoder, kind=self.kind,
                               latent_dim=self.context["latent_dim"])  # fmt: skip
        return in_batches(fn, X, batch_size)

    def recommend(self, user_items, k: int = 20) -> np.ndarray:
        """The ``k`` best items per user (column indices, best first), never one the user has
        already clicked."""
        X = _check_clicks("user_items", user_items, self.n_items, allow_empty=True)
        return top_k_items(self.scores(X), k, exclude=X)

    # ---- the contract
    def _z_draws(self, fold_in) -> dict:
        """``{"z": (1, S, users, K)}`` from the amortized guide on the fold-in clicks."""
        if self.kind == "dae":
            return {}
        x = jnp.asarray(fold_in, jnp.float32)
        K = self.context["latent_dim"]
        h = jax.vmap(self.encoder)(normalize(x))
        mu, sd = h[:, :K], jnp.exp(0.5 * h[:, K:])
        S = self.context["num_samples"]
        eps = jax.random.normal(self.context["draw_key"], (S, *mu.shape))
        return {"z": np.asarray(mu + sd * eps)[None]}

    def model_inputs(self, fold_in=None, heldout=None, *, observed: bool = False):
        """``predict(fold_in)``: draws of click vectors for users with these clicks (as many
        clicks each); ``score(fold_in, heldout)``: the held-out clicks' density given the fold-in
        ones."""
        if fold_in is None:
            if observed:
                raise TypeError("`score` needs the fold-in clicks and the held-out clicks.")
            return self.args, self.kwargs
        X = _check_clicks("fold_in", fold_in, self.n_items)
        dense = np.asarray(X.toarray(), np.float32)
        kw = dict(self.kwargs)
        if self.kind == "dae":
            kw["inputs"] = jnp.asarray(dense)
        if observed:
            if heldout is None:
                raise TypeError("`score` needs the held-out clicks `heldout`.")
            H = _check_clicks("heldout", heldout, self.n_items)
            if H.shape != X.shape:
                raise ValueError(f"`heldout` {H.shape} and `fold_in` {X.shape} must match.")
            args = (jnp.asarray(H.toarray(), jnp.float32),)
        else:
            n = dense.sum(1)
            args, kw = (None,), {**kw, "total_count": jnp.asarray(n),
                                 "total_count_max": int(n.max())}  # fmt: skip
        self._fold_in = (args, dense)  # the users whose z the next draws_at(args) draws
        return args, kw

    def draws_at(self, args, kwargs):
        """The training users' draws at the fit's arguments; at the arguments
        :meth:`model_inputs` just built, :math:`z_u \\sim q_\\phi(z_u \\mid \text{fold-in})`."""
        pending = getattr(self, "_fold_in", None)
        if pending is not None and args is pending[0]:
            return self._z_draws(pending[1])
        return self.samples

    def log_likelihood(self) -> dict:
        """Per training user :math:`\\log \\operatorname{Mult}(x_u\\mid N_u, \\pi(z_u))` per draw,
        ``(chain, draw, user)`` (draws one at a time: a draw's logits are users × items)."""
        from numpyro.infer import log_likelihood

        if not self.samples:
            return super().log_likelihood()
        return log_likelihood(self.model, self.samples, *self.args, batch_ndims=2,
                              parallel=False, **self.kwargs)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the estimator


class MultVAE(Estimator):
    r"""Mult-VAE (``kind="vae"``) or Mult-DAE (``kind="dae"``) for implicit feedback (module
    docstring has the model, objective, protocol and scale-out).

    Example::

        from bayeslr.datasets import binarize, load_movielens_small, strong_generalization_split
        split = strong_generalization_split(binarize(load_movielens_small()), 100, 100)
        post = MultVAE(epochs=100).fit(split.train, validation=(split.val_in, split.val_out))
        post.recommend(split.test_in, k=20)          # item columns, best first
        post.score(split.test_in, split.test_out)    # held-out log-likelihood (nats)

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
        num_samples: draws of :math:`z_u` per user stored.
        seed: PRNG seed (initialization, shuffling, dropout, reparameterization).
        progress_bar: tqdm bar over updates.
    """

    model_fn = staticmethod(multvae_model)
    name = "Mult-VAE"

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
        num_samples: int = 50,
        seed: int = 0,
        progress_bar: bool = True,
    ):
        super().__init__(seed=seed, progress_bar=progress_bar)
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
        self.anneal_steps = None if anneal_steps is None else check_int("anneal_steps",
                                                                          anneal_steps)
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        if weight_decay is None:
            weight_decay = 0.01 / self.batch_size if kind == "dae" else 0.0
        self.weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        self.learning_rate = check_real("learning_rate", learning_rate, low=0.0, low_open=True)
        self.devices = devices
        self.num_samples = check_int("num_samples", num_samples)

    @property
    def model_function(self):
        """The model function of this kind (:func:`multvae_model` or :func:`multdae_model`)."""
        return multvae_model if self.kind == "vae" else multdae_model

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

    def prepare(self, train, validation: tuple[Any, Any] | None = None) -> Prepared:
        """Validate the training click matrix (users × items, scipy.sparse or dense) and the
        optional ``validation=(fold_in, heldout)``, whose NDCG@100 picks the epoch kept."""
        X = _check_clicks("train", train)
        n_users, n_items = X.shape
        if validation is not None:
            v_in = _check_clicks("validation[0]", validation[0], n_items)
            v_out = _check_clicks("validation[1]", validation[1], n_items)
            if v_in.shape != v_out.shape:
                raise ValueError(
                    f"`validation` fold-in {v_in.shape} and held-out {v_out.shape} differ."
                )
            validation = (v_in, v_out)
        if self.anneal_cap == "auto" and self.kind == "vae" and validation is None:
            raise ValueError("`anneal_cap='auto'` needs `validation` to select β.")
        mesh = self._mesh()
        B = min(self.batch_size, n_users)
        if mesh is not None and B % mesh.size:
            raise ValueError(f"the batch of {B} users does not split over {mesh.size} devices.")
        n_batches = math.ceil(n_users / B)
        total = n_batches * self.epochs
        k_net, k_svi, k_data = jax.random.split(as_key(self.seed), 3)
        X = X.astype(np.float32)
        X.sort_indices()
        problem = MultVAEProblem(
            indptr=jnp.asarray(X.indptr, jnp.int32), indices=jnp.asarray(X.indices, jnp.int32),
            data=jnp.asarray(X.data, jnp.float32),
            learning_rate=jnp.asarray(self.learning_rate, jnp.float32),
            cap=jnp.asarray(0.2 if self.anneal_cap == "auto" else self.anneal_cap, jnp.float32),
            anneal_steps=jnp.asarray(self.anneal_steps or anneal_steps_for(total), jnp.float32),
            weight_decay=jnp.asarray(self.weight_decay, jnp.float32), net_key=k_net,
            svi_key=k_svi, data_key=k_data, kind=self.kind, n_users=n_users, n_items=n_items,
            hidden=tuple(self.hidden), latent_dim=self.latent_dim, dropout=self.dropout,
            batch_size=B, n_batches=n_batches, max_nnz=max_batch_nnz(X, B), mesh=mesh,
        )  # fmt: skip
        return Prepared(problem, {"train": X, "validation": validation, "total": total})

    def _stage(self, name, problem, validation) -> Stage:
        val = None
        if validation is not None:
            enc, dec = networks(self.kind, problem.n_items, self.hidden, self.latent_dim,
                                problem.net_key)  # fmt: skip
            v_in, v_out = validation

            def ndcg(state):
                p = _params(state.svi)
                fn = functools.partial(scores_compiled, rebuild(enc, p["encoder$params"]),
                                       rebuild(dec, p["decoder$params"]), kind=self.kind,
                                       latent_dim=self.latent_dim)  # fmt: skip
                return ndcg_at_k(in_batches(fn, v_in), v_out, 100, exclude=v_in)

            val = loop.Validation(ndcg, every=problem.n_batches, mode="max")
        return Stage(name, multvae_init, multvae_step, problem, problem.n_batches * self.epochs,
                     chunk_size=problem.n_batches, validation=val, guard=("loss",),
                     progress_fields=("loss",), hint="Lower `learning_rate`.")  # fmt: skip

    def stages(self, prepared: Prepared):
        problem, validation = prepared.problem, prepared.context["validation"]
        if self.anneal_cap == "auto" and self.kind == "vae":
            # anneal to 1 over the run (unless anneal_steps is given); the re-run anneals at
            # the same rate and stops at the selected β, so it reaches β* where the first did
            rate = jnp.asarray(self.anneal_steps or prepared.context["total"], jnp.float32)
            first = dict_replace(problem, cap=jnp.asarray(1.0, jnp.float32), anneal_steps=rate)
            res = yield self._stage("auto", first, validation)
            best = int(np.argmax(res.validation["score"]))
            beta = float(min(1.0, res.validation["step"][best] / float(rate)))
            prepared.context["selection"] = (beta, res)
            problem = dict_replace(problem, cap=jnp.asarray(beta, jnp.float32),
                                   anneal_steps=rate)  # fmt: skip
        yield self._stage("" if self.anneal_cap != "auto" else "final", problem, validation)

    def posterior(self, results, prepared: Prepared) -> MultVAEPosterior:
        res, problem = results[-1], prepared.problem
        params = _params(res.state.svi)
        enc0, dec0 = networks(self.kind, problem.n_items, self.hidden, self.latent_dim,
                              problem.net_key)  # fmt: skip
        dec = rebuild(dec0, params["decoder$params"])
        enc = rebuild(enc0, params["encoder$params"])
        nb = problem.n_batches
        loss = res.history["loss"]
        cap = float(prepared.context.get("selection", (float(problem.cap),))[0])
        rate = float(problem.anneal_steps)
        steps = np.arange(1, len(loss) // nb + 1) * nb
        times = np.asarray(res.chunk_seconds)
        extra = {
            "loss": loss, "val_ndcg": np.asarray(res.validation.get("score", [])),
            "beta": np.zeros(len(steps)) if self.kind == "dae" else np.minimum(cap, steps / rate),
            "best_epoch": (res.best_step // nb - 1) if res.best_step else len(steps) - 1,
            "epoch_time": times,
            "users_per_second": float(nb * problem.batch_size / np.median(times))
            if times.size else None,
            "anneal_cap": cap,
        }  # fmt: skip
        if "selection" in prepared.context:
            beta, first = prepared.context["selection"]
            extra.update(selected_beta=beta, selection_val_ndcg=first.validation["score"],
                         selection_beta=np.minimum(1.0, first.validation["step"] / rate))
        ctx = {"kind": self.kind, "encoder": enc, "decoder": dec, "latent_dim": self.latent_dim,
               "train": prepared.context["train"], "num_samples": self.num_samples,
               "draw_key": jax.random.fold_in(prepared.context["posterior_key"], 1)}  # fmt: skip
        # the largest basket bounds the draws of x at the training users (multinomial sampling
        # needs a static bound)
        nmax = int(np.max(np.asarray(prepared.context["train"].sum(1))))
        if self.kind == "vae":
            kwargs = {"decoder": dec, "latent_dim": self.latent_dim, "total_count_max": nmax}
        else:
            kwargs = {"encoder": enc, "decoder": dec, "dropout": 0.0, "total_count_max": nmax}
        post = MultVAEPosterior(
            {} if self.kind == "dae" else (lambda: post._z_draws(post.args[0])),
            estimator=self, args=(), kwargs=kwargs, results=results, context=ctx,
            dims={"z": ["user", "latent"], "x": ["user", "item"]},
            method=f"mult-{self.kind}", extra=extra,
        )  # fmt: skip
        if self.kind == "dae":
            post.model = multdae_model
        return post


def _params(svi_state) -> dict:
    """The network parameters held in an SVI state (real-valued: no constraint to undo)."""
    import optax
    from numpyro.optim import optax_to_numpyro

    return optax_to_numpyro(optax.identity()).get_params(svi_state.optim_state)


def dict_replace(problem, **changes):
    """``problem`` with some data fields replaced."""
    import dataclasses

    return dataclasses.replace(problem, **changes)
