r"""The model contract: one :class:`Estimator` base and one :class:`ModelPosterior`.

Every model in :mod:`bayeslr.models` is built the same way:

1. **a plain NumPyro model function** — the class attribute :attr:`Estimator.model_fn`
   (``funbat_model``, ``krosbl_model``, …). It is the model: NUTS, SVI, ``Predictive`` and
   BlackJAX run on it through :func:`bayeslr.infer.fit`, and every posterior a model's own fast
   algorithm returns is a posterior *of this function*: its draws use the function's sample
   sites, with the function's shapes.
2. **a pure algorithm** — ``init(key, problem, restart) -> state`` and
   ``step(key, state, problem) -> (state, info)`` (EM, message passing, Gauss–Newton, SVI),
   driven by the one training loop :func:`bayeslr.infer.loop.run`: compiled chunks, a stop rule,
   restarts, the NaN guard, the progress bar and checkpoints are the loop's, never the model's.
3. **an estimator** — a subclass of :class:`Estimator` whose constructor takes the options,
   whose :meth:`~Estimator.prepare` validates the data (every check before anything compiles)
   and builds the ``problem``, whose :meth:`~Estimator.stages` says what the loop runs, and
   whose :meth:`~Estimator.posterior` turns the loop's result into a :class:`ModelPosterior`.
   ``fit`` is the base's and no model overrides it.

:class:`ModelPosterior` is always bound to the model function and the arguments it was fitted
at, so its methods mean the same for every model:

* :meth:`~ModelPosterior.predict` — posterior predictive draws of the model's observed sites,
  ``{site: array (draws, ...)}``, at the training inputs or at new ones;
* :meth:`~ModelPosterior.log_likelihood` — pointwise :math:`\log p(y_i \mid \theta^{(s)})` of
  the **training** data, with named dimensions;
* :meth:`~ModelPosterior.score` — the held-out log predictive density of test data,
  :math:`\sum_i \log \frac1S \sum_s p(\tilde y_i \mid \theta^{(s)})`, for model comparison on
  data the fit never saw (PSIS-LOO, ``az.loo``, is for the training data only);
* :meth:`~ModelPosterior.to_arviz` — a ``DataTree`` with ``posterior`` (random variables only),
  ``posterior_predictive``, ``log_likelihood`` and ``observed_data``.

Each model's fast paths (a predictive mean in closed form, recommendations, a spectrum, class
probabilities) have names of their own on its posterior subclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bayeslr._validation import as_key
from bayeslr.infer import loop
from bayeslr.infer.posterior import Posterior, _Unobserve

__all__ = ["Estimator", "ModelPosterior", "Prepared", "Stage"]


@dataclasses.dataclass
class Prepared:
    """What :meth:`Estimator.prepare` returns: the loop's ``problem`` and host-side context.

    Attributes:
        problem: the pytree the algorithm reads (arrays; static settings in its structure).
        context: anything the posterior needs that is not an array of the algorithm (column
            names, scalings, the original data).
    """

    problem: Any
    context: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Stage:
    """One run of the training loop (the arguments of :func:`bayeslr.infer.loop.run`)."""

    name: str
    init: Callable
    step: Callable
    problem: Any
    num_steps: int
    stop: loop.Tolerance | loop.Until | None = None
    restarts: loop.Restarts | None = None
    validation: loop.Validation | None = None
    chunk_size: int | None = None
    guard: Sequence[str] | None = None
    progress_fields: Sequence[str] = ()
    hint: str = ""
    key: Any = None


class Estimator:
    """Base class of every bayeslr model (module docstring).

    Subclasses set :attr:`model_fn` (the NumPyro model function, as a ``staticmethod``) and
    implement :meth:`prepare`, :meth:`stages` and :meth:`posterior`; they never define ``fit``.

    Args:
        seed: the seed of the whole fit (initialization, minibatches, posterior draws); an int
            or a ``jax.random`` key. It is data: a new seed reuses the compiled steps.
        progress_bar: show a tqdm bar over the steps of each stage.
    """

    #: the plain NumPyro model function of this model
    model_fn: ClassVar[Callable]
    #: the model's name in progress bars and messages
    name: ClassVar[str] = "model"
    #: run the fit and the posterior's computations in float64 whatever the global setting
    #: (GP-HM: Gram matrices of hundreds of points per axis are too ill-conditioned in float32)
    float64: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} defines `fit`; models implement prepare/stages/posterior and "
                "inherit Estimator.fit."
            )

    def __init__(self, *, seed: int | jax.Array = 0, progress_bar: bool = True):
        as_key(seed)  # a bad seed is refused here, not at fit time
        self.seed = seed
        if not isinstance(progress_bar, bool):
            raise TypeError(f"`progress_bar` must be a bool; got {progress_bar!r}.")
        self.progress_bar = progress_bar

    # ---- what a model implements ------------------------------------------------------

    def prepare(self, *data, **kwargs) -> Prepared:  # pragma: no cover - abstract
        """Validate the data (naming the argument, the expected and the given) and build the
        problem. Runs before anything is compiled."""
        raise NotImplementedError

    def stages(self, prepared: Prepared) -> Generator[Stage, loop.LoopResult, None]:
        """Yield the :class:`Stage` s to run; each ``yield`` returns that stage's
        :class:`~bayeslr.infer.loop.LoopResult`."""
        raise NotImplementedError  # pragma: no cover - abstract
        yield  # pragma: no cover

    def posterior(self, results: list[loop.LoopResult], prepared: Prepared) -> ModelPosterior:
        """Turn the loop's results into the model's :class:`ModelPosterior`."""
        raise NotImplementedError  # pragma: no cover - abstract

    # ---- the one fit --------------------------------------------------------------------

    def fit(self, *data: Any, checkpoint: str | os.PathLike | None = None,
            callback: Callable[[loop.LoopStatus], None] | None = None,
            **kwargs: Any) -> ModelPosterior:  # fmt: skip
        """Fit the model to ``data`` (the arguments of :meth:`prepare`) and return its posterior.

        Args:
            *data: the model's data (see its ``prepare``).
            **kwargs: keyword data of the model's ``prepare``.
            checkpoint: a file path: the training state is written there (atomically, NumPy
                ``.npz``) as the fit goes, and a later ``fit`` with the same path and data
                resumes from it and ends where an uninterrupted fit would. A fit with several
                stages writes ``<path>.<stage>`` per stage after the first.
            callback: ``callback(status)`` after every compiled chunk
                (:class:`bayeslr.infer.loop.LoopStatus`: ``step``, ``state``, ``history``).

        Returns:
            the model's :class:`ModelPosterior`.
        """
        with _precision(self):
            return self._fit(data, kwargs, checkpoint, callback)

    def _fit(self, data, kwargs, checkpoint, callback) -> ModelPosterior:
        prepared = self.prepare(*data, **kwargs)
        key = as_key(self.seed)
        k_fit, k_post = jax.random.split(key)
        prepared.context.setdefault("posterior_key", k_post)
        gen = self.stages(prepared)
        results: list[loop.LoopResult] = []
        try:
            stage = next(gen)
            while True:
                path = _stage_path(checkpoint, len(results), stage.name)
                k_stage = jax.random.fold_in(k_fit, len(results)) if stage.key is None else \
                    stage.key  # fmt: skip
                result = loop.run(
                    stage.init, stage.step, stage.problem, k_stage, stage.num_steps,
                    stop=stage.stop, restarts=stage.restarts, validation=stage.validation,
                    chunk_size=stage.chunk_size, guard=stage.guard, progress=self.progress_bar,
                    progress_fields=stage.progress_fields,
                    desc=f"{self.name}" + (f" ({stage.name})" if stage.name else ""),
                    hint=stage.hint, checkpoint=path, callback=callback,
                )  # fmt: skip
                results.append(result)
                stage = gen.send(result)
        except StopIteration:
            pass
        return self.posterior(results, prepared)

    def __repr__(self) -> str:
        params = inspect.signature(type(self).__init__).parameters
        shown = [f"{p}={getattr(self, p)!r}" for p in params
                 if p != "self" and hasattr(self, p)]  # fmt: skip
        return f"{type(self).__name__}({', '.join(shown)})"


def _precision(estimator):
    """``jax.enable_x64(True)`` for an estimator that computes in float64, else nothing."""
    import contextlib

    return jax.enable_x64(True) if getattr(estimator, "float64", False) else \
        contextlib.nullcontext()  # fmt: skip


def _stage_path(checkpoint, index: int, name: str):
    if checkpoint is None:
        return None
    from pathlib import Path

    p = Path(checkpoint)
    return p if index == 0 else p.with_name(f"{p.name}.{name or index}")


class ModelPosterior(Posterior):
    r"""A fitted model's posterior, bound to its NumPyro model function (module docstring).

    Attributes (beyond :class:`~bayeslr.infer.Posterior`'s):
        estimator: the estimator that made it (its options).
        results: the :class:`~bayeslr.infer.loop.LoopResult` of every stage (histories, steps
            run, stop reasons).
        context: the estimator's host-side context of the fit (scalings, names).

    Subclasses convert a model's own data into model arguments (:meth:`model_inputs`) and,
    where the draws depend on the inputs (new coordinates, new users), adapt the draws
    (:meth:`draws_at`).
    """

    #: draws x observations above which ``to_arviz`` leaves out ``posterior_predictive``
    #: (and ``log_likelihood``), with a warning: the arrays would not fit in memory
    MAX_GROUP_SIZE = 50_000_000

    def __init__(self, samples, *, estimator: Estimator, args: tuple = (),
                 kwargs: Mapping | None = None, results: Sequence[loop.LoopResult] = (),
                 context: Mapping | None = None, num_draws: int | None = None,
                 **rest):  # fmt: skip
        lazy = callable(samples)
        empty = not lazy and not samples
        # a placeholder passes the base class's checks; lazy draws are made on first use, and a
        # model without latent variables (a point estimate) has one "draw" of nothing
        placeholder = {"_": np.zeros((1, 1 if num_draws is None else num_draws))}
        super().__init__(placeholder if lazy or empty else samples,
                         model=type(estimator).model_fn, args=tuple(args), kwargs=kwargs,
                         **rest)  # fmt: skip
        self._sample_fn = samples if lazy else None
        self._samples = None if lazy else ({} if empty else self._samples)
        self._lead = (1, 1) if empty else None
        self.estimator = estimator
        self.results = list(results)
        self.context = dict(context or {})

    @property
    def samples(self) -> dict:
        """Posterior draws ``{site: (chain, draw, ...)}`` (made on first access for models whose
        draws are expensive to store, e.g. one latent vector per user)."""
        if self._samples is None:
            with _precision(self.estimator):
                self._samples = {k: np.asarray(v) for k, v in self._sample_fn().items()}
        return self._samples

    @samples.setter
    def samples(self, value):
        self._samples = value

    @property
    def num_chains(self) -> int:
        return self._lead[0] if self._lead else super().num_chains

    @property
    def num_draws(self) -> int:
        return self._lead[1] if self._lead else super().num_draws

    # ---- what a model's posterior implements --------------------------------------------

    def model_inputs(self, *data, observed: bool = False, **kw) -> tuple[tuple, dict]:
        """The model function's ``(args, kwargs)`` at new ``data`` (the model's own format:
        a DataFrame, feature rows, a click matrix). With ``observed=False`` the observed values
        are ``None`` (prediction), else they are the data's (scoring). The default accepts no
        data and returns the fit's arguments."""
        if data or kw:
            raise TypeError(f"{type(self).__name__}.predict takes no new data.")
        return self.args, self.kwargs

    def draws_at(self, args: tuple, kwargs: dict) -> dict:
        """Posterior draws ``(chain, draw, ...)`` for the model at ``args``/``kwargs``; by
        default the stored ones (inputs that do not change the latent sites' shapes)."""
        return self.samples

    # ---- the contract -------------------------------------------------------------------

    def predict(self, *data: Any, rng_key: int | jax.Array | None = None,
                return_sites: Sequence[str] | None = None, group_by_chain: bool = False,
                **kw: Any) -> dict[str, np.ndarray]:  # fmt: skip
        r"""Posterior predictive draws :math:`\tilde y^{(s)} \sim p(\tilde y \mid \theta^{(s)},
        \tilde x)` of the model's observed sites, at the training inputs (no ``data``) or at
        new ones (the model's own data format; see its ``model_inputs``).

        Args:
            *data: new inputs, in the format the model's ``fit`` takes (without the values to
                predict).
            **kw: keyword inputs of the model's ``model_inputs``.
            rng_key: int seed or key (default 0).
            return_sites: sites to return (default: the observed sites).
            group_by_chain: keep ``(chain, draw)`` instead of one ``draw`` axis.

        Returns:
            ``{site: np.ndarray (draws, *site_shape)}``: the same type and meaning for every
            model.
        """
        with _precision(self.estimator):
            args, kwargs = self.model_inputs(*data, observed=False, **kw)
            sites = list(self.observed) if return_sites is None else list(return_sites)
            out = self._predictive(args, kwargs, sites, rng_key)
        if group_by_chain:
            return out
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in out.items()}

    def _predictive(self, args, kwargs, sites, rng_key) -> dict[str, np.ndarray]:
        from numpyro.infer import Predictive

        draws = self.draws_at(args, kwargs)
        key = as_key(rng_key, "rng_key")
        model = _Unobserve(self.model, sites)
        if not draws:  # no latent variables: one draw of the observables
            pred = Predictive(model, num_samples=1, return_sites=sites)(key, *args, **kwargs)
            return {k: np.asarray(v)[None] for k, v in pred.items()}
        pred = Predictive(model, posterior_samples=draws, return_sites=sites,
                          batch_ndims=2)(key, *args, **kwargs)  # fmt: skip
        return {k: np.asarray(v) for k, v in pred.items()}

    def _training_predictive(self, rng_key, sites):
        return self._predictive(self.args, self.kwargs, sites, rng_key)

    def log_likelihood(self) -> dict[str, jax.Array]:
        r"""Pointwise :math:`\log p(y_i \mid \theta^{(c,s)})` of the training data per observed
        site, ``(chain, draw, *points)`` (a point is one observation: an entry, a user's basket)."""
        samples = self.samples
        with _precision(self.estimator):
            return _log_likelihood(self.model, samples, self.args, self.kwargs)

    def score(self, *test_data: Any, pointwise: bool = False,
              **kw: Any) -> float | dict[str, np.ndarray]:  # fmt: skip
        r"""Held-out log predictive density of test data,

        .. math::
            \mathrm{lpd} = \sum_i \log \frac{1}{S} \sum_{s=1}^S p(\tilde y_i \mid
            \theta^{(s)}, \tilde x_i),

        by Monte Carlo over the stored draws (all chains). Use it to compare models on data the
        fit never saw; ``az.loo`` on :meth:`to_arviz` estimates the same for the training data.

        Args:
            *test_data: the test data, in the format of the model's ``fit``.
            **kw: keyword inputs of the model's ``model_inputs``.
            pointwise: return ``{site: (n_i,)}`` per observation instead of the total.

        Returns:
            the total lpd (float, nats), or the pointwise values.
        """
        with _precision(self.estimator):
            args, kwargs = self.model_inputs(*test_data, observed=True, **kw)
            draws = self.draws_at(args, kwargs)
            ll = _log_likelihood(self.model, draws, args, kwargs)
        per = {}
        for site, v in ll.items():
            v = np.asarray(v, np.float64)
            flat = v.reshape(-1, *v.shape[2:])
            m = np.max(flat, axis=0)
            per[site] = m + np.log(np.mean(np.exp(flat - m), axis=0))
        if pointwise:
            return per
        return float(sum(np.sum(p) for p in per.values()))

    def to_arviz(self, *, posterior_predictive: bool = True, log_likelihood: bool = True,
                 rng_key=None):  # fmt: skip
        """The fit as an ArviZ ``DataTree`` (see :meth:`bayeslr.infer.Posterior.to_arviz`). The
        ``posterior`` group holds only random variables (none for a point estimate such as
        Mult-DAE); ``posterior_predictive`` is left out, with a warning, when its draws ×
        observed values exceed :attr:`MAX_GROUP_SIZE`, and ``log_likelihood`` likewise."""
        with _precision(self.estimator):
            return self._to_arviz(posterior_predictive, log_likelihood, rng_key)

    def _to_arviz(self, posterior_predictive, log_likelihood, rng_key):
        import warnings

        S = self.num_chains * self.num_draws
        values, points = self._observed_sizes()
        for group, size, on in (("posterior_predictive", S * values, posterior_predictive),
                                ("log_likelihood", S * points, log_likelihood)):  # fmt: skip
            if on and size > self.MAX_GROUP_SIZE:
                warnings.warn(
                    f"to_arviz: {group} would hold {size:,} values (> MAX_GROUP_SIZE "
                    f"{self.MAX_GROUP_SIZE:,}) and is left out; lower num_samples or raise "
                    f"{type(self).__name__}.MAX_GROUP_SIZE.",
                    UserWarning,
                    stacklevel=3,
                )
                if group == "posterior_predictive":
                    posterior_predictive = False
                else:
                    log_likelihood = False
        if self.samples:
            return super().to_arviz(posterior_predictive=posterior_predictive,
                                    log_likelihood=log_likelihood, rng_key=rng_key)  # fmt: skip
        return self._point_estimate_tree(posterior_predictive, log_likelihood, rng_key)

    def _observed_sizes(self) -> tuple[int, int]:
        """Observed values, and observation points (the batch shape of each observed site)."""
        from numpyro.handlers import seed, substitute, trace

        draw = {k: np.asarray(v)[0, 0] for k, v in self.samples.items()}
        tr = trace(seed(substitute(self.model, draw), 0)).get_trace(*self.args, **self.kwargs)
        obs = [v for v in tr.values() if v["type"] == "sample" and v["is_observed"]]
        values = sum(int(np.size(v["value"])) for v in obs)
        points = sum(int(np.prod(v["fn"].batch_shape)) for v in obs)
        return values, points

    def _point_estimate_tree(self, posterior_predictive, log_likelihood, rng_key):
        import arviz as az

        data = {"observed_data": dict(self.observed)}
        if posterior_predictive:
            data["posterior_predictive"] = self._training_predictive(rng_key, list(self.observed))
        if log_likelihood:
            data["log_likelihood"] = {k: np.asarray(v) for k, v in self.log_likelihood().items()}
        return az.from_dict(data, dims={k: v for k, v in self.dims.items()
                                        if any(k in g for g in data.values())},
                            coords=self.coords,
                            attrs={"/": {"inference_library": "bayeslr", "method": self.method}})

    def _has_log_likelihood(self) -> bool:
        return True

    # ---- conveniences -------------------------------------------------------------------

    @property
    def history(self) -> dict[str, np.ndarray]:
        """The per-step ``info`` of the last stage (e.g. ``loss``)."""
        return self.results[-1].history if self.results else {}

    @property
    def converged(self) -> bool:
        """Whether the last stage ended by its stop rule rather than its step budget."""
        return bool(self.results) and self.results[-1].converged

    def __repr__(self) -> str:
        sites = ", ".join(f"{k}: {tuple(np.shape(v)[2:])}" for k, v in self.samples.items())
        return (f"{type(self).__name__}(model={getattr(self.model, '__name__', self.model)}, "
                f"method={self.method!r}, draws={self.num_chains * self.num_draws}, "
                f"sites={{{sites}}})")  # fmt: skip


def _log_likelihood(model, samples, args, kwargs) -> dict:
    """Pointwise log-likelihood of the observed sites per draw, ``(chain, draw, *points)``;
    draws one at a time (``lax.map``) when the vectorized form would be large, and the single
    "draw" of a model without latent variables."""
    from numpyro.handlers import seed, trace
    from numpyro.infer import log_likelihood

    if not samples:
        tr = trace(seed(model, 0)).get_trace(*args, **kwargs)
        return {k: jnp.asarray(v["fn"].log_prob(v["value"]))[None, None] for k, v in tr.items()
                if v["type"] == "sample" and v["is_observed"]}  # fmt: skip
    size = sum(int(np.size(v)) for v in samples.values())
    return log_likelihood(model, samples, *args, batch_ndims=2, parallel=size < 10_000_000,
                          **kwargs)  # fmt: skip
