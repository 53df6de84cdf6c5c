r"""``Posterior``: the one result type of every fit in bayeslr.

A :class:`Posterior` holds draws :math:`\theta^{(c, s)} \sim p(\theta \mid y)` (exact MCMC) or
:math:`\theta^{(s)} \sim q_\phi(\theta)` (a fitted variational guide, stored as one chain),
arranged ``(chain, draw, *site_shape)`` per site, together with the NumPyro model and the
arguments it was fitted at. From these it gives

* :meth:`Posterior.predict` — posterior predictive draws at new inputs,
  :math:`\tilde y^{(c, s)} \sim p(\tilde y \mid \theta^{(c, s)}, \tilde x)`
  (``numpyro.infer.Predictive``);
* :meth:`Posterior.to_arviz` — an ArviZ ``xarray.DataTree`` with the groups ``posterior``,
  ``sample_stats`` (MCMC), ``posterior_predictive``, ``log_likelihood`` (pointwise
  :math:`\log p(y_i \mid \theta^{(c, s)})`, via ``numpyro.infer.log_likelihood``) and
  ``observed_data``, with named dims and coords, so ``az.summary``, ``az.loo`` and the ArviZ
  plots work for every method;
* :meth:`Posterior.summary` — a pandas table (mean, sd, HDI, ESS, :math:`\hat R`).

:func:`bayeslr.infer.fit.fit` returns one; a model's own fast algorithm (EM, EP, Kalman
smoothing, …) builds one with :meth:`Posterior.from_samples`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from numpyro.handlers import seed, trace
from numpyro.primitives import Messenger

from bayeslr._validation import as_key

__all__ = ["Posterior", "inspect_model"]

#: ArviZ's names for the per-draw statistics of an MCMC sampler (``sample_stats`` group)
SAMPLE_STATS_NAMES = (
    "lp",
    "diverging",
    "acceptance_rate",
    "energy",
    "n_steps",
    "tree_depth",
    "step_size",
)


class _Unobserve(Messenger):
    """Treat the observed sample sites ``sites`` as latent: their values are drawn anew.

    ``Predictive`` returns an observed site's data unchanged; under this handler the same site
    draws :math:`y \\sim p(y \\mid \\theta)` instead, which is what a posterior predictive is.
    """

    def __init__(self, fn: Callable, sites: Sequence[str]):
        self.sites = frozenset(sites)
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.sites and msg["is_observed"]:
            msg["value"] = None
            msg["is_observed"] = False


def inspect_model(model: Callable, args: tuple = (), kwargs: Mapping | None = None) -> dict:
    """Run ``model(*args, **kwargs)`` once (eagerly, seeded) and sort its sites.

    Returns a dict with ``latent`` (names of unobserved sample sites, auxiliary sites
    excluded), ``deterministic`` (names) and ``observed`` (name → observed value as a NumPy
    array). Nothing is compiled; errors in the model surface here, at the door.
    """
    tr = trace(seed(model, rng_seed=0)).get_trace(*args, **dict(kwargs or {}))
    latent, deterministic, observed = [], [], {}
    for name, site in tr.items():
        if site["type"] == "sample":
            if site["is_observed"]:
                observed[name] = np.asarray(site["value"])
            elif not site.get("infer", {}).get("is_auxiliary", False):
                latent.append(name)
        elif site["type"] == "deterministic":
            deterministic.append(name)
    return {"latent": latent, "deterministic": deterministic, "observed": observed}


def _to_numpy_tree(d: Mapping | None) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in (d or {}).items()}


def _check_draws(name: str, draws: Mapping, lead: tuple[int, int] | None) -> tuple[int, int]:
    """Every entry of ``draws`` must start with the same ``(chain, draw)`` axes."""
    if not isinstance(draws, Mapping):
        raise TypeError(
            f"`{name}` must be a dict mapping site names to arrays; got {type(draws).__name__}."
        )
    for k, v in draws.items():
        shape = np.shape(v)
        if len(shape) < 2:
            raise ValueError(
                f"`{name}[{k!r}]` must have shape (chain, draw, *site_shape); got shape {shape}."
            )
        if lead is None:
            lead = (int(shape[0]), int(shape[1]))
        elif tuple(shape[:2]) != lead:
            raise ValueError(
                f"`{name}[{k!r}]` must have leading (chain, draw) axes {lead} like the other "
                f"draws; got shape {shape}."
            )
    if lead is None:
        raise ValueError(f"`{name}` must contain at least one site; got an empty dict.")
    if min(lead) < 1:
        raise ValueError(f"`{name}` must have at least one chain and one draw; got {lead}.")
    return lead


def _check_dims_coords(dims, coords) -> tuple[dict, dict]:
    dims = {} if dims is None else dims
    coords = {} if coords is None else coords
    if not isinstance(dims, Mapping) or not all(
        isinstance(v, Sequence) and not isinstance(v, str) and all(isinstance(d, str) for d in v)
        for v in dims.values()
    ):
        raise TypeError(
            "`dims` must map site names to lists of dimension names, e.g. "
            f"{{'y': ['time']}}; got {dims!r}."
        )
    if not isinstance(coords, Mapping):
        raise TypeError(
            "`coords` must map dimension names to coordinate values, e.g. "
            f"{{'time': t}}; got {type(coords).__name__}."
        )
    return {k: list(v) for k, v in dims.items()}, {k: np.asarray(v) for k, v in coords.items()}


class Posterior:
    r"""Posterior draws (or a fitted guide with draws from it) plus the model that made them.

    Attributes:
        samples: ``{site: array (chain, draw, *site_shape)}`` — latent and deterministic sites,
            on the constrained scale. For SVI these are :math:`S` draws from :math:`q_\phi`,
            one chain.
        sample_stats: ``{stat: array (chain, draw)}`` in ArviZ's names (``lp``, ``diverging``,
            ``acceptance_rate``, ``energy``, ``n_steps``, ``tree_depth``, ``step_size``), or
            empty where the method has none (SVI, EM, …).
        method: how the draws were made (``"nuts"``, ``"blackjax-nuts"``, ``"svi"``, or what
            :meth:`from_samples` was given).
        model, args, kwargs: the NumPyro model and the positional / keyword arguments it was
            fitted at (``None``, ``()``, ``{}`` when built from samples alone).
        guide, params: the fitted guide and its optimized parameters :math:`\phi` (SVI only).
        losses: the loss after every optimizer step (SVI only; ``None`` otherwise).
        observed: ``{site: observed value}``; by default read from the model's trace.
        dims, coords: ArviZ naming, ``dims={"y": ["time"]}``, ``coords={"time": t}``.
        extra: method-specific details (adapted step sizes, steps run, stop reason, …).

    Construct one with :func:`bayeslr.infer.fit.fit` or :meth:`from_samples`; the constructor
    itself takes the same keywords as :meth:`from_samples` plus ``guide``, ``params`` and
    ``losses`` and expects ``samples`` grouped by chain.
    """

    def __init__(
        self,
        samples: Mapping[str, Any],
        *,
        model: Callable | None = None,
        args: tuple = (),
        kwargs: Mapping | None = None,
        method: str = "custom",
        sample_stats: Mapping[str, Any] | None = None,
        observed: Mapping[str, Any] | None = None,
        dims: Mapping[str, Sequence[str]] | None = None,
        coords: Mapping[str, Any] | None = None,
        guide: Callable | None = None,
        params: Mapping[str, Any] | None = None,
        losses: Any = None,
        extra: Mapping[str, Any] | None = None,
    ):
        if model is not None and not callable(model):
            raise TypeError(
                f"`model` must be a NumPyro model function; got {type(model).__name__}."
            )
        if not isinstance(args, tuple):
            raise TypeError(
                f"`args` must be a tuple of model arguments; got {type(args).__name__}."
            )
        lead = _check_draws("samples", samples, None)
        if sample_stats:
            _check_draws("sample_stats", sample_stats, lead)
        self.samples = dict(samples)
        self.sample_stats = dict(sample_stats or {})
        self.method = str(method)
        self.model = model
        self.args = args
        self.kwargs = dict(kwargs or {})
        self.guide = guide
        self.params = params
        self.losses = None if losses is None else np.asarray(losses)
        self.dims, self.coords = _check_dims_coords(dims, coords)
        self.extra = dict(extra or {})
        self._observed = None if observed is None else _to_numpy_tree(observed)
        self._arviz_cache: dict = {}

    # ----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_samples(
        cls,
        samples: Mapping[str, Any],
        model: Callable | None = None,
        args: tuple = (),
        kwargs: Mapping | None = None,
        *,
        group_by_chain: bool = True,
        sample_stats: Mapping[str, Any] | None = None,
        observed: Mapping[str, Any] | None = None,
        dims: Mapping[str, Sequence[str]] | None = None,
        coords: Mapping[str, Any] | None = None,
        method: str = "custom",
        extra: Mapping[str, Any] | None = None,
    ) -> Posterior:
        r"""Wrap draws made by any algorithm (EM, EP, a Kalman smoother, an external sampler).

        Args:
            samples: ``{site: draws}``; with ``group_by_chain=True`` each array is
                ``(chain, draw, *site_shape)``, otherwise ``(draw, *site_shape)`` and one chain
                is added. Use the model's site names so ``predict`` and ``log_likelihood``
                can substitute them; sites the model does not have are kept in ``posterior``
                but ignored by the model.
            model: the NumPyro model the draws belong to. Without it, :meth:`predict` is
                unavailable and :meth:`to_arviz` has only ``posterior``, ``sample_stats``
                and ``observed_data`` (when ``observed`` is given).
            args, kwargs: the model's positional and keyword arguments at the fit.
            group_by_chain: whether ``samples`` (and ``sample_stats``) carry a chain axis.
            sample_stats: optional per-draw statistics, same leading axes as ``samples``.
            observed: ``{site: data}`` for ``observed_data``; by default read from the
                model's observed sites at ``args``/``kwargs``.
            dims, coords: ArviZ dimension names per variable and coordinate values.
            method: a label stored in ``Posterior.method`` and the DataTree attributes.
            extra: anything method-specific to keep (e.g. an EM log-likelihood trace).

        Example:
            A model's closed-form Gaussian posterior :math:`\mathcal N(m, L L^\top)` returned
            as a Posterior::

                draws = m + jax.random.normal(key, (1000, d)) @ L.T
                Posterior.from_samples({"w": draws}, model, (x, y), group_by_chain=False,
                                       method="em", extra={"elbo": elbo_trace})
        """
        if not isinstance(group_by_chain, bool):
            raise TypeError(f"`group_by_chain` must be a bool; got {group_by_chain!r}.")
        if not group_by_chain:
            for name, tree in (("samples", samples), ("sample_stats", sample_stats or {})):
                if not isinstance(tree, Mapping):
                    raise TypeError(
                        f"`{name}` must be a dict mapping names to arrays; "
                        f"got {type(tree).__name__}."
                    )
                for k, v in tree.items():
                    if np.ndim(v) < 1:
                        raise ValueError(
                            f"`{name}[{k!r}]` must have shape (draw, *site_shape) with "
                            f"group_by_chain=False; got shape {np.shape(v)}."
                        )
            samples = {k: np.asarray(v)[None] for k, v in samples.items()}
            if sample_stats is not None:
                sample_stats = {k: np.asarray(v)[None] for k, v in sample_stats.items()}
        return cls(
            samples,
            model=model,
            args=tuple(args),
            kwargs=kwargs,
            method=method,
            sample_stats=sample_stats,
            observed=observed,
            dims=dims,
            coords=coords,
            extra=extra,
        )

    # ----------------------------------------------------------------------------------------
    # draws

    @property
    def num_chains(self) -> int:
        return int(np.shape(next(iter(self.samples.values())))[0])

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return int(np.shape(next(iter(self.samples.values())))[1])

    def get_samples(self, group_by_chain: bool = False) -> dict[str, Any]:
        """Draws per site: ``(chain, draw, ...)`` or, by default, ``(chain * draw, ...)``."""
        if group_by_chain:
            return dict(self.samples)
        return {k: _flatten(v) for k, v in self.samples.items()}

    @property
    def observed(self) -> dict[str, np.ndarray]:
        """Observed data per site (given, or read from the model at the fit arguments)."""
        if self._observed is None:
            self._observed = (
                {}
                if self.model is None
                else inspect_model(self.model, self.args, self.kwargs)["observed"]
            )
        return self._observed

    def _require_model(self, what: str) -> Callable:
        if self.model is None:
            raise ValueError(
                f"`{what}` needs the NumPyro model; this Posterior was built without one "
                "(pass `model=` to Posterior.from_samples)."
            )
        return self.model

    def predict(
        self,
        *args,
        rng_key: jax.Array | int | None = None,
        return_sites: Sequence[str] | None = None,
        group_by_chain: bool = False,
        **kwargs,
    ) -> dict[str, jax.Array]:
        r"""Posterior predictive draws :math:`\tilde y^{(c,s)} \sim p(\tilde y \mid
        \theta^{(c,s)}, \tilde x)` at new model arguments.

        Runs ``model(*args, **kwargs)`` once per stored draw (vectorized,
        ``numpyro.infer.Predictive``) with the latent sites fixed to the draw. Observed
        sample sites are drawn anew even when data for them is passed, so
        ``predict(x_new)`` and ``predict(x, y)`` both give predictive draws of ``y``.
        Deterministic sites are recomputed at the new inputs. Cost: one model evaluation per
        draw, :math:`C \cdot S` in all.

        Args:
            *args, **kwargs: the model's arguments at the new inputs (e.g. ``x_new``).
            rng_key: a ``jax.random`` key or an int seed (default 0).
            return_sites: sites to return; default: every sample site not in the posterior
                (the observables) and every deterministic site.
            group_by_chain: return ``(chain, draw, ...)`` instead of ``(chain * draw, ...)``.

        Returns:
            ``{site: array}`` with leading ``(chain * draw,)`` or ``(chain, draw)`` axes.
        """
        from numpyro.infer import Predictive

        model = self._require_model("predict")
        key = _as_key(rng_key)
        free = _observed_names(model, args, kwargs)
        pred = Predictive(
            _Unobserve(model, free),
            posterior_samples=self.samples,
            return_sites=None if return_sites is None else list(return_sites),
            batch_ndims=2,
        )(key, *args, **kwargs)
        if group_by_chain:
            return pred
        return {k: _flatten(v) for k, v in pred.items()}

    def _training_predictive(self, rng_key, sites: list[str]) -> dict:
        """Posterior predictive draws ``(chain, draw, ...)`` of ``sites`` at the fit inputs."""
        return self.predict(*self.args, rng_key=rng_key, return_sites=sites,
                            group_by_chain=True, **self.kwargs)  # fmt: skip

    def log_likelihood(self) -> dict[str, jax.Array]:
        r"""Pointwise :math:`\log p(y_i \mid \theta^{(c,s)})` per observed site at the fit data,
        shaped ``(chain, draw, *obs_shape)`` (``numpyro.infer.log_likelihood``)."""
        from numpyro.infer import log_likelihood

        model = self._require_model("log_likelihood")
        return log_likelihood(model, self.samples, *self.args, batch_ndims=2, **self.kwargs)

    def _has_log_likelihood(self) -> bool:
        """Whether :meth:`log_likelihood` can run (the model is known; subclasses that compute
        it from their own draws override both)."""
        return self.model is not None

    # ----------------------------------------------------------------------------------------
    # ArviZ

    def to_arviz(
        self,
        *,
        posterior_predictive: bool = True,
        log_likelihood: bool = True,
        rng_key: jax.Array | int | None = None,
    ):
        r"""The fit as an ArviZ ``xarray.DataTree``.

        Groups: ``posterior`` (all stored sites), ``sample_stats`` (when the method has
        per-draw statistics), ``posterior_predictive`` (draws of every observed site at the fit
        inputs), ``log_likelihood`` (pointwise, one variable per observed site, for
        ``az.loo``/``az.waic``) and ``observed_data``. The last three need the model.
        Dimensions are named by ``dims``/``coords`` given at the fit; unnamed axes get ArviZ's
        default names (``<var>_dim_0`` …).

        Args:
            posterior_predictive: include ``posterior_predictive`` (costs one model run per
                draw).
            log_likelihood: include ``log_likelihood`` (one log-density evaluation per draw).
            rng_key: key or int seed for the posterior predictive draws (default 0).

        Returns:
            ``xarray.DataTree``; the result is cached per argument combination.

        Example::

            idata = post.to_arviz()
            az.summary(idata, var_names=["mu"]); az.loo(idata); az.plot_dist(idata)
        """
        import arviz as az

        cache_key = (posterior_predictive, log_likelihood, _key_repr(rng_key))
        if cache_key in self._arviz_cache:
            return self._arviz_cache[cache_key]
        data: dict[str, dict[str, np.ndarray]] = {"posterior": _to_numpy_tree(self.samples)}
        if self.sample_stats:
            data["sample_stats"] = _to_numpy_tree(self.sample_stats)
        observed = self.observed
        if self.model is not None and observed and posterior_predictive:
            data["posterior_predictive"] = _to_numpy_tree(
                self._training_predictive(rng_key, list(observed))
            )
        if observed and log_likelihood and self._has_log_likelihood():
            data["log_likelihood"] = _to_numpy_tree(self.log_likelihood())
        if observed:
            data["observed_data"] = observed
        used = {d for group in data.values() for var in group for d in self.dims.get(var, [])}
        coords = {k: v for k, v in self.coords.items() if k in used}
        tree = az.from_dict(
            data,
            dims={k: v for k, v in self.dims.items() if any(k in g for g in data.values())},
            coords=coords,
            attrs={"/": {"inference_library": "bayeslr", "method": self.method}},
        )
        self._arviz_cache[cache_key] = tree
        return tree

    def summary(self, var_names: Sequence[str] | None = None, **kwargs):
        r"""Posterior summary table (``arviz.summary`` on the ``posterior`` group).

        Columns: ``mean``, ``sd``, the HDI bounds (``hdi<p>_lb``, ``hdi<p>_ub``, ArviZ's default
        probability), ``ess_bulk``, ``ess_tail``, ``r_hat`` (rank-normalized split-:math:`\hat R`;
        ArviZ reports NaN for a single chain, e.g. SVI) and the MC standard errors. Extra keyword
        arguments go to ``arviz.summary`` (e.g. ``ci_prob=0.9``, ``kind="stats"``).

        Returns:
            ``pandas.DataFrame``, one row per scalar parameter.
        """
        import arviz as az

        kwargs.setdefault("ci_kind", "hdi")
        tree = self.to_arviz(posterior_predictive=False, log_likelihood=False)
        return az.summary(tree, var_names=None if var_names is None else list(var_names), **kwargs)

    def __repr__(self) -> str:
        sites = ", ".join(f"{k}: {tuple(np.shape(v)[2:])}" for k, v in self.samples.items())
        return (
            f"Posterior(method={self.method!r}, chains={self.num_chains}, "
            f"draws={self.num_draws}, sites={{{sites}}})"
        )


# --------------------------------------------------------------------------------------------
# helpers


def _flatten(v):
    shape = np.shape(v)
    return v.reshape((shape[0] * shape[1], *shape[2:]))


def _as_key(rng_key, name: str = "rng_key") -> jax.Array:
    return as_key(rng_key, name)


def _key_repr(rng_key):
    if rng_key is None or isinstance(rng_key, (int, np.integer)):
        return rng_key
    return tuple(np.asarray(_as_key(rng_key)).tolist())


def _observed_names(model: Callable, args: tuple, kwargs: Mapping) -> list[str]:
    """Names of the observed sample sites of ``model`` at these arguments."""
    return list(inspect_model(model, args, kwargs)["observed"])
