r"""``fit``: one front door from a NumPyro model and its data to a :class:`Posterior`.

.. code-block:: python

    post = fit(model, x, y, method="nuts")            # NumPyro NUTS
    post = fit(model, x, y, method="blackjax-nuts")   # BlackJAX NUTS, same model
    post = fit(model, x, y, method="svi", loss=IWAE(num_particles=8))
    post.to_arviz()                                   # ArviZ DataTree, az.loo works

Methods:

==================  =======================================================================
``"nuts"``          NumPyro's NUTS (``numpyro.infer.MCMC``), Stan-style window adaptation
                    of step size and (diagonal or dense) mass matrix
``"blackjax-nuts"`` BlackJAX NUTS with ``blackjax.window_adaptation`` on the potential of the
                    same NumPyro model (``numpyro.infer.util.initialize_model``: unconstrained
                    parameters, log-Jacobians included); chains are ``vmap``-ped, draws are
                    mapped back with the model's ``postprocess_fn``
``"svi"``           stochastic variational inference: maximize a variational objective
                    (default :math:`\mathrm{ELBO}(\phi) = \mathbb E_{q_\phi}[\log p(y,\theta)
                    - \log q_\phi(\theta)]`) over a guide :math:`q_\phi` (default
                    ``AutoNormal``) with an optax optimizer, then draw from :math:`q_\phi`
==================  =======================================================================

Model arguments are positional (``*args``) or go in ``model_kwargs=``; every other keyword is
an option of ``fit``, so a model keyword can never be mistaken for an option.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayeslr._validation import check_finite, check_int
from bayeslr.infer.posterior import Posterior, _as_key, _check_dims_coords, inspect_model

__all__ = ["fit", "EarlyStopping", "METHODS"]

#: the valid values of ``fit(method=...)``
METHODS = ("nuts", "blackjax-nuts", "svi")

_MCMC_OPTIONS = (
    "num_warmup",
    "num_chains",
    "target_accept",
    "max_tree_depth",
    "dense_mass",
    "chain_method",
)
_SVI_OPTIONS = ("guide", "loss", "optimizer", "num_steps", "early_stopping")

#: how often the progress bar / early-stopping rule looks at the state (chunks per run)
_NUM_CHUNKS = 100
_NUM_MCMC_CHUNKS = 20


@dataclass(frozen=True)
class EarlyStopping:
    r"""Stop SVI when the smoothed loss stops changing.

    With losses :math:`\ell_1, \dots, \ell_t` and window :math:`w`, the smoothed loss is the
    window mean :math:`\bar\ell_t = \frac1w \sum_{i=t-w+1}^{t} \ell_i`. The fit stops at the
    first check :math:`t \ge \max(2w, \text{min\_steps})` with

    .. math::

        |\bar\ell_t - \bar\ell_{t-w}| \le \text{rtol} \cdot |\bar\ell_{t-w}| + \text{atol},

    i.e. the mean loss of the last window differs from the window before by less than a
    relative ``rtol`` (plus an absolute ``atol`` for losses near zero). Checks happen after
    every chunk of :math:`\lceil \text{num\_steps} / 100 \rceil` steps. The window mean
    averages out the Monte Carlo noise of a stochastic objective: its noise is
    :math:`\sigma_\ell \sqrt{2 / w}` on the difference, so choose ``w`` large enough that this
    is below ``rtol`` times the loss.

    Args:
        window: :math:`w`, steps per smoothing window (>= 1).
        rtol: relative tolerance (>= 0).
        atol: absolute tolerance (>= 0).
        min_steps: never stop before this many steps (>= 0).
    """

    window: int = 100
    rtol: float = 1e-3
    atol: float = 0.0
    min_steps: int = 0

    def __post_init__(self):
        check_int("early_stopping.window", self.window, minimum=1)
        check_int("early_stopping.min_steps", self.min_steps, minimum=0)
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(
                    f"`early_stopping.{name}` must be a non-negative number; got {v!r}."
                )

    def should_stop(self, losses: np.ndarray) -> bool:
        """Apply the rule to the loss history ``losses`` (1-D, oldest first)."""
        t, w = len(losses), self.window
        if t < max(2 * w, self.min_steps):
            return False
        recent = float(np.mean(losses[t - w : t]))
        previous = float(np.mean(losses[t - 2 * w : t - w]))
        return abs(recent - previous) <= self.rtol * abs(previous) + self.atol


def fit(
    model: Callable,
    *args,
    method: str = "nuts",
    seed: int | jax.Array = 0,
    num_samples: int = 1000,
    num_warmup: int | None = None,
    num_chains: int | None = None,
    target_accept: float | None = None,
    max_tree_depth: int | None = None,
    dense_mass: bool | None = None,
    chain_method: str | None = None,
    init_strategy: Callable | None = None,
    guide: Callable | None = None,
    loss: Any = None,
    optimizer: Any = None,
    num_steps: int | None = None,
    early_stopping: bool | EarlyStopping | Mapping | None = None,
    progress_bar: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    check_data: bool = True,
) -> Posterior:
    r"""Fit a NumPyro model by MCMC or SVI and return a :class:`Posterior`.

    ``model(*args, **model_kwargs)`` is a NumPyro model with observed sites (``obs=``); the
    target is :math:`p(\theta \mid y) \propto p(y \mid \theta)\, p(\theta)`.

    Args:
        model: the NumPyro model function.
        *args: positional model arguments (data arrays, sizes, …).
        method: ``"nuts"``, ``"blackjax-nuts"`` or ``"svi"`` (see the module docstring).
        seed: int seed or ``jax.random`` key; the whole fit is reproducible from it.
        num_samples: posterior draws per chain (MCMC) or draws from the fitted guide (SVI);
            default 1000.
        num_warmup: MCMC only; adaptation steps per chain, discarded (default 1000).
        num_chains: MCMC only; independent chains (default 1). ``"blackjax-nuts"``
            ``vmap``-s them; ``"nuts"`` runs them per ``chain_method``.
        target_accept: MCMC only; target mean acceptance probability of the step-size
            adaptation, in (0, 1) (default 0.8).
        max_tree_depth: MCMC only; NUTS trees have at most :math:`2^{\text{depth}} - 1`
            leapfrog steps (default 10).
        dense_mass: MCMC only; adapt a dense instead of a diagonal mass matrix (default
            False).
        chain_method: ``"nuts"`` only; ``"parallel"`` (one device per chain),
            ``"sequential"`` or ``"vectorized"``. Default: parallel when there are enough
            devices, else sequential.
        init_strategy: a NumPyro init strategy (``numpyro.infer.init_to_median()``, …) for the
            MCMC start or the autoguide's initial location; NumPyro's default
            (``init_to_uniform``) when None.
        guide: SVI only; a guide function or autoguide (default
            ``numpyro.infer.autoguide.AutoNormal(model)``).
        loss: SVI only; a ``numpyro.infer.ELBO`` instance such as ``Trace_ELBO()`` (default)
            or an objective from :mod:`bayeslr.infer.objectives`.
        optimizer: SVI only; an optax ``GradientTransformation`` or a ``numpyro.optim``
            optimizer (default ``optax.adam(1e-2)``).
        num_steps: SVI only; maximum optimizer steps (default 5000).
        early_stopping: SVI only; ``True`` for :class:`EarlyStopping` defaults, a dict of its
            fields, an :class:`EarlyStopping`, or None/False to always run ``num_steps``.
        progress_bar: show progress (NumPyro's bar for ``"nuts"``; a tqdm bar updated per
            chunk of a ``lax.scan`` for ``"blackjax-nuts"`` and ``"svi"``).
        model_kwargs: keyword arguments of the model.
        dims, coords: ArviZ names, e.g. ``dims={"y": ["time"]}``, ``coords={"time": t}``; used
            by :meth:`Posterior.to_arviz`.
        check_data: refuse floating-point model arguments with NaN or inf (default True).
            Set False for models that encode missing values as NaN themselves.

    Returns:
        :class:`Posterior` with draws shaped ``(chain, draw, ...)``; SVI gives one chain of
        ``num_samples`` guide draws plus ``guide``, ``params`` and ``losses``.

    Raises:
        ValueError: unknown ``method``; NaN/inf in a model argument; counts below 1; an option
            that does not belong to ``method`` (e.g. ``guide=`` with NUTS); a model without
            latent sites. All raised before anything is compiled.

    Cost: MCMC is :math:`(\text{num\_warmup} + \text{num\_samples}) \times \text{chains}`
    NUTS transitions of up to :math:`2^{\text{max\_tree\_depth}}` gradient evaluations each;
    SVI is ``num_steps`` gradient steps of the objective, then ``num_samples`` guide draws.
    """
    if not callable(model):
        raise TypeError(f"`model` must be a NumPyro model function; got {type(model).__name__}.")
    if method not in METHODS:
        valid = ", ".join(repr(m) for m in METHODS)
        raise ValueError(f"`method` must be one of {valid}; got {method!r}.")
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(
            f"`model_kwargs` must be a dict of the model's keyword arguments; "
            f"got {type(model_kwargs).__name__}."
        )
    kwargs = dict(model_kwargs or {})
    if not isinstance(progress_bar, bool):
        raise TypeError(f"`progress_bar` must be a bool; got {progress_bar!r}.")
    if check_data:
        check_model_data(args, kwargs)
    check_int("num_samples", num_samples, minimum=1)
    given = {
        "num_warmup": num_warmup,
        "num_chains": num_chains,
        "target_accept": target_accept,
        "max_tree_depth": max_tree_depth,
        "dense_mass": dense_mass,
        "chain_method": chain_method,
        "guide": guide,
        "loss": loss,
        "optimizer": optimizer,
        "num_steps": num_steps,
        "early_stopping": early_stopping,
    }
    foreign = _SVI_OPTIONS if method != "svi" else _MCMC_OPTIONS
    if method == "blackjax-nuts":
        foreign = (*foreign, "chain_method")
    wrong = [name for name in foreign if given[name] is not None]
    if wrong:
        names = ", ".join(f"`{n}`" for n in wrong)
        raise ValueError(
            f"{names} {'does' if len(wrong) == 1 else 'do'} not apply to method={method!r}; "
            f"got {', '.join(f'{n}={given[n]!r}' for n in wrong)}."
        )
    if method == "svi" and guide is not None and init_strategy is not None:
        raise ValueError(
            "`init_strategy` sets the initial location of the default AutoNormal guide; with "
            f"`guide=` given, initialize the guide itself (got init_strategy={init_strategy!r})."
        )
    key = _as_key(seed, "seed")
    common = dict(model=model, args=tuple(args), kwargs=kwargs, dims=dims, coords=coords)
    _check_dims_coords(dims, coords)  # naming errors before anything is compiled
    sites = inspect_model(model, tuple(args), kwargs)
    if not sites["latent"]:
        raise ValueError(
            "`model` must have at least one latent sample site to infer; got a model whose "
            f"sample sites are all observed ({', '.join(sites['observed']) or 'none'})."
        )

    if method == "svi":
        check_int("num_steps", 5000 if num_steps is None else num_steps, minimum=1)
        return _fit_svi(
            key,
            sites=sites,
            guide=guide,
            loss=loss,
            optimizer=optimizer,
            num_steps=5000 if num_steps is None else num_steps,
            num_samples=num_samples,
            early_stopping=_as_early_stopping(early_stopping),
            init_strategy=init_strategy,
            progress_bar=progress_bar,
            **common,
        )

    num_warmup = 1000 if num_warmup is None else num_warmup
    num_chains = 1 if num_chains is None else num_chains
    target_accept = 0.8 if target_accept is None else target_accept
    max_tree_depth = 10 if max_tree_depth is None else max_tree_depth
    dense_mass = False if dense_mass is None else dense_mass
    check_int("num_warmup", num_warmup, minimum=0)
    check_int("num_chains", num_chains, minimum=1)
    check_int("max_tree_depth", max_tree_depth, minimum=1)
    if not isinstance(target_accept, (int, float)) or not 0 < target_accept < 1:
        raise ValueError(f"`target_accept` must be a number in (0, 1); got {target_accept!r}.")
    if not isinstance(dense_mass, bool):
        raise TypeError(f"`dense_mass` must be a bool; got {dense_mass!r}.")
    mcmc = dict(
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        target_accept=float(target_accept),
        max_tree_depth=max_tree_depth,
        dense_mass=dense_mass,
        init_strategy=init_strategy,
        progress_bar=progress_bar,
    )
    if method == "nuts":
        if chain_method not in (None, "parallel", "sequential", "vectorized"):
            raise ValueError(
                "`chain_method` must be 'parallel', 'sequential' or 'vectorized'; "
                f"got {chain_method!r}."
            )
        return _fit_numpyro_nuts(key, chain_method=chain_method, **mcmc, **common)
    return _fit_blackjax_nuts(key, **mcmc, **common)


# --------------------------------------------------------------------------------------------
# validation


def check_model_data(args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if a floating-point model argument holds NaN or inf.

    Every leaf of ``args`` and ``kwargs`` (pytrees are walked) that is a float or complex
    array/scalar is checked; the error names it as ``args[i]…`` or ``model_kwargs['k']…``.
    Integer, boolean and non-array arguments pass through.
    """
    leaves = [
        (f"args[{i}]{jax.tree_util.keystr(path)}", leaf)
        for i, a in enumerate(args)
        for path, leaf in jax.tree_util.tree_flatten_with_path(a)[0]
    ] + [
        (f"model_kwargs[{k!r}]{jax.tree_util.keystr(path)}", leaf)
        for k, v in kwargs.items()
        for path, leaf in jax.tree_util.tree_flatten_with_path(v)[0]
    ]
    for name, leaf in leaves:
        if isinstance(leaf, (float, complex)) or (
            hasattr(leaf, "dtype") and np.dtype(leaf.dtype).kind in "fc"
        ):
            check_finite(name, leaf)


def _as_early_stopping(value) -> EarlyStopping | None:
    if value is None or value is False:
        return None
    if value is True:
        return EarlyStopping()
    if isinstance(value, EarlyStopping):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - set(EarlyStopping.__dataclass_fields__)
        if unknown:
            raise ValueError(
                "`early_stopping` keys must be among window, rtol, atol, min_steps; "
                f"got {sorted(unknown)}."
            )
        return EarlyStopping(**value)
    raise TypeError(
        "`early_stopping` must be True/False/None, a dict or an EarlyStopping; "
        f"got {type(value).__name__}."
    )


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True)


class _CompileClock:
    """Seconds JAX spent tracing, lowering and compiling while the context was open.

    Listens to JAX's compile time-span events (``/jax/core/compile/*``) and measures the union
    of their intervals (nested traces overlap, so spans are merged, not summed). Used to report
    the sampling time of an MCMC phase with compilation taken out.
    """

    def __enter__(self):
        self._spans: list[tuple[float, float]] = []
        jax.monitoring.register_event_time_span_listener(self._listen)
        return self

    def _listen(self, event: str, start: float, end: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            self._spans.append((start, end))

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_time_span_listener(self._listen)
        return False

    @property
    def seconds(self) -> float:
        total, cur_start, cur_end = 0.0, None, None
        for start, end in sorted(self._spans):
            if cur_end is None or start > cur_end:
                if cur_end is not None:
                    total += cur_end - cur_start
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        return total + (0.0 if cur_end is None else cur_end - cur_start)


# --------------------------------------------------------------------------------------------
# NumPyro NUTS


def _fit_numpyro_nuts(
    key,
    *,
    model,
    args,
    kwargs,
    dims,
    coords,
    num_warmup,
    num_samples,
    num_chains,
    target_accept,
    max_tree_depth,
    dense_mass,
    init_strategy,
    chain_method,
    progress_bar,
) -> Posterior:
    from numpyro.infer import MCMC, NUTS

    if chain_method is None:
        parallel_ok = num_chains > 1 and jax.local_device_count() >= num_chains
        chain_method = "parallel" if parallel_ok else "sequential"
    kernel_kw = {} if init_strategy is None else {"init_strategy": init_strategy}
    kernel = NUTS(
        model,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        dense_mass=dense_mass,
        **kernel_kw,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress_bar,
    )
    fields = ("diverging", "accept_prob", "energy", "num_steps", "potential_energy")
    fields = (*fields, "adapt_state.step_size")
    # warm-up and sampling as two calls (NumPyro's own API) so each phase is timed
    k_warm, k_sample = jax.random.split(key)
    t0 = time.perf_counter()
    if num_warmup > 0:
        mcmc.warmup(k_warm, *args, extra_fields=fields, **kwargs)
        jax.block_until_ready(mcmc.post_warmup_state)
    t1 = time.perf_counter()
    with _CompileClock() as clock:
        mcmc.run(k_sample, *args, extra_fields=fields, **kwargs)
        jax.block_until_ready(mcmc.last_state)
    timing = {
        "warmup_s": t1 - t0,
        "sampling_s": time.perf_counter() - t1,
        "sampling_compile_s": clock.seconds,
    }
    samples = mcmc.get_samples(group_by_chain=True)
    ex = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    n_steps = ex["num_steps"].astype(np.int64)
    stats = {
        "lp": -ex["potential_energy"],
        "diverging": ex["diverging"].astype(bool),
        "acceptance_rate": ex["accept_prob"],
        "energy": ex["energy"],
        "n_steps": n_steps,
        # a tree of depth d has between 2^(d-1) and 2^d - 1 leapfrog steps
        "tree_depth": np.ceil(np.log2(n_steps + 1)).astype(np.int64),
        "step_size": ex["adapt_state.step_size"],
    }
    return Posterior(
        samples,
        sample_stats=stats,
        method="nuts",
        extra={
            "mcmc": mcmc,
            "chain_method": chain_method,
            "num_warmup": num_warmup,
            "timing": timing,
        },
        model=model,
        args=args,
        kwargs=kwargs,
        dims=dims,
        coords=coords,
    )


# --------------------------------------------------------------------------------------------
# BlackJAX NUTS


def _fit_blackjax_nuts(
    key,
    *,
    model,
    args,
    kwargs,
    dims,
    coords,
    num_warmup,
    num_samples,
    num_chains,
    target_accept,
    max_tree_depth,
    dense_mass,
    init_strategy,
    progress_bar,
) -> Posterior:
    r"""BlackJAX NUTS on :math:`\log p(y, T(z)) + \log|\det J_T(z)|` in unconstrained space.

    ``initialize_model`` gives the potential :math:`U(z) = -\log p(y, T(z)) - \log|J_T(z)|`,
    one initial point per chain and ``postprocess_fn`` (:math:`z \mapsto` constrained latent
    and deterministic sites). Each chain adapts its own step size and mass matrix with
    ``blackjax.window_adaptation`` (chains ``vmap``-ped), then samples in chunks of a
    ``lax.scan`` so the progress bar can update between chunks.
    """
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn
    from numpyro.infer.util import initialize_model

    k_init, k_warm, k_sample = jax.random.split(key, 3)
    init_kw = {} if init_strategy is None else {"init_strategy": init_strategy}
    info = initialize_model(
        jax.random.split(k_init, num_chains),
        model,
        model_args=args,
        model_kwargs=kwargs,
        **init_kw,
    )
    potential_fn, postprocess_fn = info.potential_fn, info.postprocess_fn
    z0 = info.param_info.z  # batched: (num_chains, ...) per site

    def logdensity(z):
        return -potential_fn(z)

    nuts_kw = {"max_num_doublings": max_tree_depth}
    flat_dim = sum(int(np.prod(np.shape(v)[1:])) for v in jax.tree_util.tree_leaves(z0))
    bar = _progress(num_warmup + num_samples, "blackjax-nuts (warm-up)", progress_bar)
    t0 = time.perf_counter()
    if num_warmup > 0:
        warmup = blackjax.window_adaptation(
            blackjax.nuts,
            logdensity,
            is_mass_matrix_diagonal=not dense_mass,
            target_acceptance_rate=target_accept,
            adaptation_info_fn=get_filter_adapt_info_fn(),
            **nuts_kw,
        )

        def adapt(k, z):
            (state, params), _ = warmup.run(k, z, num_steps=num_warmup)
            return state, params["step_size"], params["inverse_mass_matrix"]

        states, step_size, inv_mass = jax.jit(jax.vmap(adapt))(
            jax.random.split(k_warm, num_chains), z0
        )
    else:
        states = jax.vmap(lambda z: blackjax.nuts.init(z, logdensity))(z0)
        dtype = jax.tree_util.tree_leaves(z0)[0].dtype
        step_size = jnp.ones((num_chains,), dtype)
        eye = jnp.ones((flat_dim,), dtype) if not dense_mass else jnp.eye(flat_dim, dtype=dtype)
        inv_mass = jnp.broadcast_to(eye, (num_chains, *eye.shape))
    jax.block_until_ready(states)
    t_warm = time.perf_counter() - t0
    bar.update(num_warmup)
    bar.set_description("blackjax-nuts (sampling)")

    def one_chain(k, state, eps, imm):
        state, step_info = blackjax.nuts(logdensity, eps, imm, **nuts_kw).step(k, state)
        stats = {
            "lp": state.logdensity,
            "diverging": step_info.is_divergent,
            "acceptance_rate": step_info.acceptance_rate,
            "energy": step_info.energy,
            "n_steps": step_info.num_integration_steps,
            "tree_depth": step_info.num_trajectory_expansions,
        }
        return state, (postprocess_fn(state.position), stats)

    def run_chunk(states, keys):  # keys: (chunk, chains, 2)
        def body(states, ks):
            return jax.vmap(one_chain)(ks, states, step_size, inv_mass)

        return jax.lax.scan(body, states, keys)

    num_chunks = min(_NUM_MCMC_CHUNKS, num_samples) if progress_bar else 1
    chunk = math.ceil(num_samples / num_chunks)
    keys = jax.random.split(k_sample, num_chunks * chunk * num_chains).reshape(
        num_chunks, chunk, num_chains, -1
    )
    run_chunk = jax.jit(run_chunk)
    t0 = time.perf_counter()
    draws, stats = [], []
    with _CompileClock() as clock:
        for c in range(num_chunks):
            states, (d, s) = run_chunk(states, keys[c])
            draws.append(d)
            stats.append(s)
            bar.update(min(chunk, num_samples - c * chunk))
        jax.block_until_ready(states)
    t_sample = time.perf_counter() - t0
    bar.close()

    def stack(parts):  # (chunk, chains, ...) pieces -> (chains, draw, ...)
        whole = np.concatenate([np.asarray(p) for p in parts], axis=0)[:num_samples]
        return np.swapaxes(whole, 0, 1)

    samples = jax.tree.map(lambda *p: stack(p), *draws)
    sample_stats = jax.tree.map(lambda *p: stack(p), *stats)
    sample_stats["diverging"] = sample_stats["diverging"].astype(bool)
    sample_stats["step_size"] = np.broadcast_to(
        np.asarray(step_size)[:, None], (num_chains, num_samples)
    ).copy()
    return Posterior(
        samples,
        sample_stats=sample_stats,
        method="blackjax-nuts",
        extra={
            "step_size": np.asarray(step_size),
            "inverse_mass_matrix": np.asarray(inv_mass),
            "num_warmup": num_warmup,
            "timing": {
                "warmup_s": t_warm,
                "sampling_s": t_sample,
                "sampling_compile_s": clock.seconds,
            },
        },
        model=model,
        args=args,
        kwargs=kwargs,
        dims=dims,
        coords=coords,
    )


# --------------------------------------------------------------------------------------------
# SVI


def _svi_class():
    """``bayeslr.infer.objectives.SVI`` when that module defines one, else NumPyro's ``SVI``.

    The bayeslr subclass keeps objective state (e.g. the step of a β-annealing schedule) in the
    SVI state, so it must drive the optimization whenever it exists.
    """
    try:
        objectives = importlib.import_module("bayeslr.infer.objectives")
    except ModuleNotFoundError as err:
        if err.name != "bayeslr.infer.objectives":
            raise
        objectives = None
    cls = getattr(objectives, "SVI", None)
    if cls is not None:
        return cls
    from numpyro.infer import SVI

    return SVI


def _fit_svi(
    key,
    *,
    model,
    args,
    kwargs,
    dims,
    coords,
    sites,
    guide,
    loss,
    optimizer,
    num_steps,
    num_samples,
    early_stopping,
    init_strategy,
    progress_bar,
) -> Posterior:
    r"""Run SVI in ``lax.scan`` chunks, with a tqdm bar and early stopping between chunks.

    Each chunk is one compiled ``lax.scan`` of ``chunk`` steps; the last chunk masks the steps
    past ``num_steps`` with ``lax.cond`` so a single executable serves every chunk.
    """
    import optax
    from numpyro.infer import Predictive, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    if guide is None:
        guide = AutoNormal(
            model, **({} if init_strategy is None else {"init_loc_fn": init_strategy})
        )
    elif not callable(guide):
        raise TypeError(f"`guide` must be a guide function or autoguide; got {guide!r}.")
    loss = Trace_ELBO() if loss is None else loss
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    svi = _svi_class()(model, guide, optimizer, loss=loss)

    k_init, k_draw = jax.random.split(key)
    state = svi.init(k_init, *args, **kwargs)
    use_chunks = progress_bar or early_stopping is not None
    chunk = math.ceil(num_steps / _NUM_CHUNKS) if use_chunks else num_steps

    def step(s):
        return svi.update(s, *args, **kwargs)

    loss_dtype = jax.eval_shape(step, state)[1].dtype

    def run_chunk(state, n_valid):
        def body(s, i):
            return jax.lax.cond(
                i < n_valid, step, lambda s: (s, jnp.full((), jnp.nan, loss_dtype)), s
            )

        return jax.lax.scan(body, state, jnp.arange(chunk))

    run_chunk = jax.jit(run_chunk)
    bar = _progress(num_steps, "svi", progress_bar)
    history: list[np.ndarray] = []
    done, stopped_early = 0, False
    while done < num_steps:
        n = min(chunk, num_steps - done)
        state, chunk_losses = run_chunk(state, n)
        chunk_losses = np.asarray(chunk_losses)[:n]
        if not np.all(np.isfinite(chunk_losses)):
            bad = done + int(np.argmin(np.isfinite(chunk_losses))) + 1
            bar.close()
            raise FloatingPointError(
                f"SVI loss became non-finite at step {bad} of {num_steps}; try a smaller "
                "learning rate (`optimizer=optax.adam(1e-3)`), a better `init_strategy`, or "
                "check the model's support."
            )
        history.append(chunk_losses)
        done += n
        bar.update(n)
        if progress_bar:
            bar.set_postfix(loss=f"{float(np.mean(chunk_losses)):.4g}")
        if early_stopping is not None and early_stopping.should_stop(np.concatenate(history)):
            stopped_early = True
            break
    bar.close()
    losses = np.concatenate(history)
    params = svi.get_params(state)
    return_sites = sites["latent"] + sites["deterministic"]
    draws = Predictive(
        model, guide=guide, params=params, num_samples=num_samples, return_sites=return_sites
    )(k_draw, *args, **kwargs)
    samples = {k: np.asarray(v)[None] for k, v in draws.items()}
    return Posterior(
        samples,
        method="svi",
        guide=guide,
        params=params,
        losses=losses,
        extra={
            "svi": svi,
            "svi_state": state,
            "num_steps_run": int(done),
            "stopped_early": stopped_early,
            "early_stopping": early_stopping,
        },
        model=model,
        args=args,
        kwargs=kwargs,
        dims=dims,
        coords=coords,
    )
