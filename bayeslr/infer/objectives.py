r"""Pluggable variational objectives for NumPyro's ``SVI``.

Every objective here subclasses :class:`numpyro.infer.ELBO`, so it plugs into SVI unchanged::

    svi = numpyro.infer.SVI(model, guide, optax.adam(1e-3), loss=IWAE(num_particles=8))

With :math:`K` particles :math:`z_k \sim q_\phi(z)` and log-weights
:math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k)`, the bounds (to be *maximized*; the
``loss`` is their negative) are

.. math::

    \mathcal{L}_{\mathrm{ELBO}} &= \tfrac1K \textstyle\sum_k \log w_k, \\
    \mathcal{L}_{\beta} &= \tfrac1K \textstyle\sum_k \big[\log p(x \mid z_k)
        - \beta\,(\log q(z_k) - \log p(z_k))\big], \\
    \mathcal{L}_{\mathrm{IWAE}} &= \log \tfrac1K \textstyle\sum_k w_k, \qquad
    \mathcal{L}_{\alpha} = \tfrac{1}{1-\alpha} \log \tfrac1K \textstyle\sum_k w_k^{1-\alpha}.

One shared base, :class:`VariationalObjective`, traces the model and guide once per particle
(vectorized with ``vmap`` over the particles), splits the log-densities into the per-particle
record :class:`ParticleTerms` (``log_lik``, ``log_prior``, ``log_guide``), and returns a
*surrogate* loss whose value is the bound and whose gradient is the chosen estimator
(DiCE-style ``stop_gradient`` algebra). The gradient estimator is chosen **per guide site**,
independent of the objective, from ``infer={"grad": ...}`` on the guide's ``sample`` site:

==============  ==============================================================================
``"reparam"``   path derivative through ``rsample`` (the default where ``fn.has_rsample``)
``"reinforce"`` score function :math:`(\mathcal L - b)\nabla\log q(z)` with a baseline :math:`b`
                (the default for sites without ``rsample``, e.g. Bernoulli, Categorical)
``"enum"``      exact sum over the site's (joint) support, weights :math:`q(z)` differentiated
                exactly; linear objectives (ELBO, β-ELBO) only; opt-in (cost = support size)
==============  ==============================================================================

Baselines for score-function sites (``baseline=``): ``"loo"`` — leave-one-out over particles,
:math:`b_k = \mathcal L(\text{particle } k \text{ replaced by the mean of the others})` (VIMCO,
Mnih & Rezende 2016), stateless, needs :math:`K \ge 2`; ``"mean"`` — a bias-corrected exponential
running mean of :math:`\mathcal L` kept in the SVI state (needs :class:`SVI` from this module);
``None``; ``"auto"`` (default) — ``"loo"`` if :math:`K \ge 2`, else ``"mean"`` when the SVI state
carries it, else none. The learning signal is the whole particle's bound (not Rao–Blackwellized).

**State.** Objectives that need state (a β schedule, the running-mean baseline) keep a step
counter and the baseline in ``SVIState.mutable_state`` under :data:`STEP_KEY` and
:data:`BASELINE_KEY`. NumPyro's ``SVI.init`` only creates mutable state for
``numpyro.mutable`` sites, so use :class:`SVI` (a thin ``numpyro.infer.SVI`` subclass whose
``init`` seeds both entries); a stateful objective used with plain ``numpyro.infer.SVI`` raises a
``ValueError`` saying so. The step is part of the state, hence correct under ``jit``/``scan``.

**Minibatching.** Every log-density carries its site ``scale`` (``numpyro.plate(...,
subsample_size=B)`` sets :math:`N/B`). Linear objectives sum the scaled terms. Non-linear ones
(IWAE, Rényi, :class:`Objective`, RWS, DReG) are evaluated *per datum* along plates that enclose
every sample site (as ``numpyro.infer.RenyiELBO`` does): the bound is
:math:`\tfrac{N}{B}\sum_{i\in\text{batch}} \mathcal L(t_i)`, unbiased for the full-data sum of
per-datum bounds; all particles see the same minibatch. Subsampled plates that do not enclose
every site enter through their scaled
log-densities (the usual minibatch approximation for multi-sample bounds).

Cost per step: :math:`K` model + guide evaluations (``vmap``-ed); STL adds one guide evaluation,
DReG one guide and one model evaluation; ``"enum"`` multiplies by the joint support size
:math:`C \le` :data:`MAX_ENUM_CONFIGS`.

References: Burda, Grosse & Salakhutdinov (2016), *Importance weighted autoencoders*; Li &
Turner (2016), *Rényi divergence variational inference*; Roeder, Wu & Duvenaud (2017),
*Sticking the landing*; Tucker, Lawson, Gu & Maddison (2019), *Doubly reparameterized gradient
estimators*; Bornschein & Bengio (2015), *Reweighted wake-sleep*; Higgins et al. (2017),
*β-VAE*; Liang et al. (2018), *Variational autoencoders for collaborative filtering*; Foerster
et al. (2018), *DiCE*; Becker et al. (2024), *Probabilistic programming with programmable
variational inference*.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.infer
from jax import random
from jax.lax import stop_gradient
from jax.scipy.special import logsumexp
from jaxtyping import Array, ArrayLike
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.primitives import Messenger

from bayeslr._validation import check_int

__all__ = [
    "STEP_KEY",
    "BASELINE_KEY",
    "MAX_ENUM_CONFIGS",
    "ParticleTerms",
    "VariationalObjective",
    "ELBO",
    "STL",
    "BetaELBO",
    "LinearWarmup",
    "linear_warmup",
    "Objective",
    "RenyiELBO",
    "IWAE",
    "ReweightedWakeSleep",
    "SVI",
    "logmeanexp",
]

#: key of the step counter (int32 number of completed updates) in ``SVIState.mutable_state``
STEP_KEY = "_bayeslr_objective_step"
#: key of the running-mean score-function baseline in ``SVIState.mutable_state``
BASELINE_KEY = "_bayeslr_objective_baseline"
_STATE_KEYS = (STEP_KEY, BASELINE_KEY)
#: largest joint support enumerated by ``infer={"grad": "enum"}`` sites (per particle)
MAX_ENUM_CONFIGS = 4096
_GRAD_MODES = ("reparam", "reinforce", "enum")
_BASELINES = ("auto", "loo", "mean", None)


def logmeanexp(x: ArrayLike, axis: int | None = 0) -> Array:
    r""":math:`\log \frac1n \sum_i e^{x_i}` along ``axis`` (stable, via ``logsumexp``).

    Args:
        x: array of log-values.
        axis: the axis to reduce (``None``: all entries); ``n`` is its length.

    Returns:
        ``logsumexp(x, axis) - log(n)``.
    """
    x = jnp.asarray(x)
    n = x.size if axis is None else x.shape[axis]
    return logsumexp(x, axis=axis) - jnp.log(n).astype(x.dtype)


class ParticleTerms(NamedTuple):
    r"""Per-particle log-densities handed to a user objective (each of shape ``(K,)``).

    Attributes:
        log_lik: :math:`\log p(x \mid z_k)`, the observed sites of the model (scaled).
        log_prior: :math:`\log p(z_k)`, the latent sites of the model (scaled).
        log_guide: :math:`\log q(z_k)`, the sites of the guide (scaled).
    """

    log_lik: Array
    log_prior: Array
    log_guide: Array

    @property
    def log_weight(self) -> Array:
        r""":math:`\log w_k = \log p(x, z_k) - \log q(z_k)`."""
        return self.log_lik + self.log_prior - self.log_guide


# ----------------------------------------------------------------------------------------------
# argument checks (at construction, before anything is traced)


def _check_num_particles(num_particles, minimum: int = 1) -> int:
    return check_int("num_particles", num_particles, minimum=minimum)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}; got {value!r}.")


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    return float(value)


def _is_concrete(x) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(x))


# ----------------------------------------------------------------------------------------------
# tracing helpers


class _StopSampleGradient(Messenger):
    """Stop the gradient through the sampled value of the named latent sites (score-function
    and wake-sleep sites), as ``numpyro.infer.util._without_rsample_stop_gradient`` does for
    non-reparameterizable ones."""

    def __init__(self, names):
        self.names = frozenset(names)
        super().__init__()

    def postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in self.names:
            msg["value"] = stop_gradient(msg["value"])
            msg["intermediates"] = None


def _log_prob(site) -> Array:
    """Unscaled log-density of a traced sample site (masking is inside ``fn``)."""
    if site["intermediates"]:
        return site["fn"].log_prob(site["value"], site["intermediates"])
    return site["fn"].log_prob(site["value"])


def _scaled(site, lp: Array) -> Array:
    scale = site["scale"]
    return lp if scale is None else scale * lp


def _reduce(lp: Array, plate_dims: tuple[int, ...]) -> Array:
    """Sum ``lp`` over every axis except the per-datum plate dims (negative ints)."""
    lp = jnp.asarray(lp)
    if not plate_dims:
        return jnp.sum(lp)
    axes = tuple(i for i in range(lp.ndim) if (i - lp.ndim) not in plate_dims)
    return jnp.sum(lp, axis=axes)


def _latent(site) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def _stop(tree):
    return jax.tree.map(stop_gradient, tree)


class _Plan(NamedTuple):
    """What a probe trace of the model and guide tells the objective (per ``loss`` call)."""

    modes: dict  # guide latent site -> "reparam" | "reinforce" | "enum"
    guide_params: frozenset
    model_params: frozenset
    plate_dims: tuple  # per-datum plate dims (non-linear objectives), else ()
    plate_scale: float  # product of N/B over those plates
    enum_values: dict  # enum site -> (C, *value_shape) array of joint configurations


# ----------------------------------------------------------------------------------------------
# the shared base


class VariationalObjective(numpyro.infer.ELBO):
    r"""Base of every objective here: tracing, particles, per-site estimators, state.

    Subclasses set ``linear`` (the bound is an average of per-particle terms, so enumeration
    and the plain sum over minibatch terms apply), ``path`` (``"standard"``, ``"stl"``,
    ``"dreg"`` or ``"rws"``: how the guide gradient is formed) and implement
    :meth:`_bound`.

    Args:
        num_particles: :math:`K`, a Python int >= 1 (static).
        vectorize_particles: ``True`` (``vmap``), ``False`` (``lax.map``) or a callable
            ``(fn, keys) -> out`` (as in ``numpyro.infer.ELBO``).
        baseline: for score-function sites: ``"auto"``, ``"loo"``, ``"mean"`` or ``None``
            (see the module docstring).
        baseline_decay: :math:`\rho \in [0, 1)` of the running mean
            :math:`b \leftarrow \rho b + (1-\rho)\mathcal L`, read bias-corrected as
            :math:`b / (1 - \rho^n)` after :math:`n` updates.

    Raises:
        TypeError: ``num_particles`` not an int.
        ValueError: ``num_particles < 1``, an unknown ``baseline``, ``"loo"`` with one
            particle, or ``baseline_decay`` outside ``[0, 1)``.
    """

    linear = True
    path = "standard"
    can_infer_discrete = True

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
        *,
        baseline: str | None = "auto",
        baseline_decay: float = 0.9,
    ):
        num_particles = _check_num_particles(num_particles)
        _check_choice("baseline", baseline, _BASELINES)
        if baseline == "loo" and num_particles < 2:
            raise ValueError(
                f"`baseline='loo'` (leave-one-out) needs `num_particles >= 2`; got "
                f"num_particles={num_particles}."
            )
        decay = _check_real("baseline_decay", baseline_decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`baseline_decay` must be in [0, 1); got {baseline_decay!r}.")
        self.baseline = baseline
        self.baseline_decay = decay
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)

    # -- state ---------------------------------------------------------------------------------

    def needs_state(self) -> bool:
        """True when this objective cannot run without the step/baseline SVI state."""
        return self.baseline == "mean"

    def init_state(self) -> dict[str, Array]:
        """The entries :class:`SVI` adds to ``mutable_state``: step 0 and baseline 0."""
        return {
            STEP_KEY: jnp.zeros((), jnp.int32),
            BASELINE_KEY: jnp.zeros((), jnp.result_type(float)),
        }

    def _missing_state_error(self) -> ValueError:
        return ValueError(
            f"{type(self).__name__} keeps a step counter / running baseline in the SVI state "
            f"(`mutable_state['{STEP_KEY}']`), which `numpyro.infer.SVI.init` does not create. "
            "Use `bayeslr.infer.objectives.SVI` (same signature as `numpyro.infer.SVI`), or seed "
            "`svi_state.mutable_state` with `loss.init_state()` yourself."
        )

    # -- numpyro.infer.ELBO interface ------------------------------------------------------------

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        """Negative bound (a surrogate whose gradient is the estimator); stateless call."""
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)[
            "loss"
        ]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        """Negative bound and the updated mutable state (step + 1, new running baseline, and
        the values of ``numpyro.mutable`` sites of the first particle)."""
        has_state = STEP_KEY in param_map
        if not has_state and self.needs_state():
            raise self._missing_state_error()
        params = {k: v for k, v in param_map.items() if k not in _STATE_KEYS}
        step = param_map[STEP_KEY] if has_state else None
        run_b = param_map[BASELINE_KEY] if has_state else None
        baseline = self.baseline
        if baseline == "auto":
            baseline = "loo" if self.num_particles >= 2 else ("mean" if has_state else None)
        if baseline == "mean":
            n = step.astype(run_b.dtype)
            b_hat = jnp.where(
                step > 0, run_b / (1.0 - self.baseline_decay**n), jnp.zeros_like(run_b)
            )
        else:
            b_hat = None

        if not self.linear:
            # one minibatch for all particles: subsample indices from a shared plate key
            plate_key, rng_key = random.split(rng_key)
            hide = ["sample", "prng_key", "control_flow"]
            model = seed(model, plate_key, hide_types=hide)
            guide = seed(guide, plate_key, hide_types=hide)
        plan = self._probe(rng_key, params, model, guide, args, kwargs)
        terms, mutable = self._particles(rng_key, plan, params, model, guide, args, kwargs)
        value, surrogate, signal = self._estimate(terms, plan, baseline, b_hat, step)
        loss = -(stop_gradient(value) + surrogate - stop_gradient(surrogate))
        loss = self._guard(loss, step)

        new_state = dict(mutable) if mutable else {}
        if has_state:
            d = self.baseline_decay
            new_b = d * run_b + (1.0 - d) * stop_gradient(signal).astype(run_b.dtype)
            new_state[STEP_KEY] = step + 1
            new_state[BASELINE_KEY] = new_b.astype(run_b.dtype)
        return {"loss": loss, "mutable_state": new_state or None}

    def _guard(self, loss, step):
        return loss

    # -- probe: site classification, before any particle runs -----------------------------------

    def _probe(self, rng_key, params, model, guide, args, kwargs) -> _Plan:
        mk, gk = random.split(rng_key)
        gtr = trace(substitute(seed(guide, gk), data=params)).get_trace(*args, **kwargs)
        mtr = trace(substitute(replay(seed(model, mk), gtr), data=params)).get_trace(
            *args, **kwargs
        )
        for name, site in mtr.items():
            if _latent(site) and name not in gtr:
                raise ValueError(
                    f"model latent site '{name}' is not sampled by the guide; "
                    f"{type(self).__name__} needs every latent site of the model in the guide "
                    "(model-side enumeration is `numpyro.infer.TraceEnum_ELBO`'s job)."
                )
        modes = {}
        for name, site in gtr.items():
            if not _latent(site):
                continue
            fn = site["fn"]
            req = (site.get("infer") or {}).get("grad")
            if req is None:
                mode = "reparam" if fn.has_rsample else "reinforce"
            elif req not in _GRAD_MODES:
                raise ValueError(
                    f"guide site '{name}': `infer['grad']` must be one of {list(_GRAD_MODES)}; "
                    f"got {req!r}."
                )
            elif req == "reparam" and not fn.has_rsample:
                raise ValueError(
                    f"guide site '{name}': `infer['grad']='reparam'` but its distribution "
                    f"{type(fn).__name__} has no reparameterized sampler (has_rsample=False); "
                    "use 'reinforce' or, for a discrete site, 'enum'."
                )
            elif req == "enum" and not fn.has_enumerate_support:
                raise ValueError(
                    f"guide site '{name}': `infer['grad']='enum'` needs a distribution with "
                    f"enumerable support; got {type(fn).__name__}."
                )
            else:
                mode = req
            self._check_site(name, mode, fn)
            modes[name] = mode

        plate_dims, plate_scale = (), 1.0
        if not self.linear:
            plate_dims, plate_scale = _common_plates(mtr)
        enum_values = _enum_configs(gtr, [n for n, m in modes.items() if m == "enum"])
        return _Plan(
            modes=modes,
            guide_params=frozenset(n for n, s in gtr.items() if s["type"] == "param"),
            model_params=frozenset(n for n, s in mtr.items() if s["type"] == "param"),
            plate_dims=plate_dims,
            plate_scale=plate_scale,
            enum_values=enum_values,
        )

    def _check_site(self, name: str, mode: str, fn) -> None:
        """Raise when this objective's estimator cannot handle a site's gradient mode."""
        if self.path in ("stl", "dreg") and mode != "reparam":
            label = {"stl": "STL (sticking the landing)", "dreg": "DReG"}[self.path]
            raise ValueError(
                f"{label} needs every guide site reparameterized; guide site '{name}' "
                f"({type(fn).__name__}) uses '{mode}'. Use the plain estimator "
                "(estimator='reparam'), which handles it by score function or enumeration."
            )
        if mode == "enum" and not self.linear:
            raise ValueError(
                f"guide site '{name}': `infer['grad']='enum'` is exact only for objectives "
                f"linear in the particles (ELBO, BetaELBO); {type(self).__name__} is not. "
                "Use 'reinforce' for this site."
            )

    # -- particles -------------------------------------------------------------------------------

    def _particles(self, rng_key, plan, params, model, guide, args, kwargs):
        """Run all particles; returns (dict of (K, C, *B) arrays, mutable of particle 0)."""
        stop_names = [n for n, m in plan.modes.items() if m == "reinforce"]
        if self.path == "rws":
            stop_names = list(plan.modes)
        stop_names = frozenset(stop_names)
        score_names = frozenset(
            n for n, m in plan.modes.items() if m == "reinforce" and self.path != "rws"
        )
        enum_names = frozenset(plan.enum_values)
        dims = plan.plate_dims
        inv_scale = 1.0 / plan.plate_scale

        def body(key, enum_vals):
            mk, gk = random.split(key)
            g = seed(guide, gk)
            if enum_vals:
                g = substitute(g, data=enum_vals)
            with _StopSampleGradient(stop_names):
                gtr = trace(substitute(g, data=params)).get_trace(*args, **kwargs)
            m = substitute(replay(seed(model, mk), gtr), data=params)
            mtr = trace(m).get_trace(*args, **kwargs)
            zero = jnp.zeros(())
            lik = prior = lguide = score = log_pi = zero
            for site in mtr.values():
                if site["type"] != "sample":
                    continue
                r = _reduce(_scaled(site, _log_prob(site)), dims)
                if site["is_observed"]:
                    lik = lik + r
                else:
                    prior = prior + r
            for name, site in gtr.items():
                if site["type"] != "sample":
                    continue
                lp = _log_prob(site)
                lguide = lguide + _reduce(_scaled(site, lp), dims)
                if name in score_names:
                    score = score + _reduce(lp - stop_gradient(lp), dims)
                if name in enum_names:
                    log_pi = log_pi + jnp.sum(lp)
            out = {
                "lik": lik * inv_scale,
                "prior": prior * inv_scale,
                "guide": lguide * inv_scale,
                "score": score,
                "log_pi": log_pi,
            }
            if self.path in ("stl", "dreg"):
                extra = self._path_terms(gk, mk, gtr, plan, params, model, guide, args, kwargs)
                out.update({k: v * inv_scale for k, v in extra.items()})
            mutable = {
                n: s["value"] for tr in (gtr, mtr) for n, s in tr.items() if s["type"] == "mutable"
            }
            return out, mutable

        if plan.enum_values:

            def particle(key):
                out, mut = jax.vmap(lambda v: body(key, v))(plan.enum_values)
                return out, jax.tree.map(lambda x: x[0], mut)

        else:

            def particle(key):
                out, mut = body(key, None)
                return jax.tree.map(lambda x: x[None], out), mut

        if self.num_particles == 1:
            out, mut = particle(rng_key)
            out = jax.tree.map(lambda x: x[None], out)
        else:
            keys = random.split(rng_key, self.num_particles)
            out, mut = self.vectorize_particles_fn(particle, keys)
            mut = jax.tree.map(lambda x: x[0], mut)
        return out, mut

    def _path_terms(self, gk, mk, gtr, plan, params, model, guide, args, kwargs):
        """STL/DReG: the guide log-density at the sampled (live) z with stopped guide
        parameters; DReG also the model log-density with stopped model parameters (z live) and
        with live model parameters at stopped z."""
        dims = plan.plate_dims
        zs = {n: s["value"] for n, s in gtr.items() if _latent(s)}
        p_phi_stop = {k: _stop(v) if k in plan.guide_params else v for k, v in params.items()}
        gtr2 = trace(substitute(seed(guide, gk), data={**p_phi_stop, **zs})).get_trace(
            *args, **kwargs
        )
        out = {"guide_stop": _sum_sites(gtr2, dims)}
        if self.path == "dreg":
            p_theta_stop = {k: _stop(v) if k in plan.model_params else v for k, v in params.items()}
            m1 = substitute(replay(seed(model, mk), gtr), data=p_theta_stop)
            out["lp_phi"] = _sum_sites(trace(m1).get_trace(*args, **kwargs), dims)
            m2 = substitute(seed(model, mk), data={**params, **_stop(zs)})
            out["lp_theta"] = _sum_sites(trace(m2).get_trace(*args, **kwargs), dims)
        return out

    # -- estimators --------------------------------------------------------------------------------

    def _estimate(self, terms, plan, baseline, b_hat, step):
        """Returns (bound value, surrogate with the estimator's gradient, baseline signal)."""
        if self.linear:
            return self._estimate_linear(terms, baseline, b_hat, step)
        return self._estimate_nonlinear(terms, plan, baseline, b_hat, step)

    def _linear_coeffs(self, step):
        """(weight of log p(x|z), weight of log p(z) - log q(z)) of a linear objective."""
        return 1.0, 1.0

    def _estimate_linear(self, terms, baseline, b_hat, step):
        a, beta = self._linear_coeffs(step)
        guide = terms["guide_stop"] if self.path == "stl" else terms["guide"]
        f = a * terms["lik"] + beta * (terms["prior"] - guide)  # (K, C)
        f_value = a * terms["lik"] + beta * (terms["prior"] - terms["guide"])
        pi = jnp.exp(terms["log_pi"])  # (K, C), 1 without enumeration
        per_particle = jnp.sum(pi * f, axis=1)  # (K,)
        value = jnp.mean(jnp.sum(jax.lax.stop_gradient(pi) * f_value, axis=1))
        surrogate = jnp.mean(per_particle)
        k = self.num_particles
        if baseline == "loo":
            v = stop_gradient(per_particle)
            b = (jnp.sum(v) - v) / (k - 1)
        elif baseline == "mean":
            b = jnp.broadcast_to(b_hat, (k,))
        else:
            b = jnp.zeros((k,))
        signal = stop_gradient(f - b[:, None]) / k
        surrogate = surrogate + jnp.sum(stop_gradient(pi) * signal * terms["score"])
        return value, surrogate, value

    def _estimate_nonlinear(self, terms, plan, baseline, b_hat, step):
        t = {k: v[:, 0] for k, v in terms.items()}  # drop the (trivial) config axis
        k = self.num_particles
        batch = jnp.broadcast_shapes(*(v.shape[1:] for v in t.values()))

        def per_datum(v):  # (K, *b) -> (K, nB), b right-aligned with the batch shape
            v = v.reshape(k, *(1,) * (len(batch) - v.ndim + 1), *v.shape[1:])
            return jnp.broadcast_to(v, (k, *batch)).reshape(k, -1)

        flat = {n: per_datum(v) for n, v in t.items()}
        scale = plan.plate_scale
        per_datum = jax.vmap(lambda c: self._bound_and_grad(c, step), in_axes=1)(flat)
        value_i, sur_i = per_datum  # (nB,)
        value = scale * jnp.sum(value_i)
        surrogate = scale * jnp.sum(sur_i)
        signal = jnp.mean(value_i)
        if self.path != "rws" and any(m == "reinforce" for m in plan.modes.values()):
            if baseline == "loo":
                b = jax.vmap(lambda c: self._loo(c, step), in_axes=1, out_axes=1)(flat)
            elif baseline == "mean":
                b = jnp.broadcast_to(b_hat, flat["lik"].shape)
            else:
                b = jnp.zeros_like(flat["lik"])
            learn = stop_gradient(value_i[None, :] - b)  # (K, nB)
            surrogate = surrogate + scale * jnp.sum(learn * flat["score"])
        return value, surrogate, signal

    def _bound_and_grad(self, c, step):
        """Per datum (columns ``c`` of shape (K,)): (bound value, surrogate)."""
        bound = self._bound(ParticleTerms(c["lik"], c["prior"], c["guide"]), step)
        return bound, bound

    def _loo(self, c, step):
        """Leave-one-out baselines b_k: the bound with particle k replaced by the mean of the
        other particles' terms (all fields)."""
        k = self.num_particles

        def replaced(j):
            rec = []
            for n in ("lik", "prior", "guide"):
                x = stop_gradient(c[n])
                mean_others = (jnp.sum(x) - x[j]) / (k - 1)
                rec.append(x.at[j].set(mean_others))
            return self._bound(ParticleTerms(*rec), step)

        return jax.vmap(replaced)(jnp.arange(k))

    def _bound(self, t: ParticleTerms, step) -> Array:
        r"""The bound to maximize from the per-particle terms. Default: the linear bound
        :math:`\frac1K\sum_k [a \log p(x|z_k) + \beta(\log p(z_k) - \log q(z_k))]` with
        ``(a, β) = _linear_coeffs(step)`` (the ELBO, or the β-ELBO); the non-linear objectives
        override it."""
        a, beta = self._linear_coeffs(step)
        return jnp.mean(a * t.log_lik + beta * (t.log_prior - t.log_guide))


def _sum_sites(tr, dims) -> Array:
    total = jnp.zeros(())
    for site in tr.values():
        if site["type"] == "sample":
            total = total + _reduce(_scaled(site, _log_prob(site)), dims)
    return total


def _common_plates(model_trace) -> tuple[tuple[int, ...], float]:
    """Plates enclosing every sample site of the model (per-datum dims) and their N/B scale."""
    stacks = [
        {f for f in site["cond_indep_stack"]}
        for site in model_trace.values()
        if site["type"] == "sample"
    ]
    if not stacks:
        return (), 1.0
    common = set.intersection(*stacks)
    scale = 1.0
    for frame in common:
        size = model_trace[frame.name]["args"][0]
        if size > frame.size:
            scale *= size / frame.size
    return tuple(sorted(f.dim for f in common)), scale


def _enum_configs(guide_trace, names) -> dict:
    """All joint values of the ``"enum"`` guide sites: ``{name: (C, *value_shape)}``."""
    if not names:
        return {}
    supports, sizes, shapes = [], [], []
    for name in names:
        fn = guide_trace[name]["fn"]
        sup = fn.enumerate_support(expand=False)
        m = sup.shape[0]
        event = tuple(fn.event_shape)
        batch = tuple(jnp.shape(guide_trace[name]["value"]))[: -len(event) or None]
        supports.append(jnp.reshape(sup, (m, *event)))
        sizes.append((m, int(np.prod(batch, dtype=int))))
        shapes.append((batch, event))
    log_c = sum(n * math.log(m) for m, n in sizes)
    if log_c > math.log(MAX_ENUM_CONFIGS) + 1e-9:
        desc = ", ".join(f"'{n}': {m}^{k}" for n, (m, k) in zip(names, sizes, strict=True))
        raise ValueError(
            f"`infer['grad']='enum'` sites have a joint support of {desc} configurations, more "
            f"than MAX_ENUM_CONFIGS={MAX_ENUM_CONFIGS}; use 'reinforce' for the larger sites."
        )
    grids = [range(m) for m, n in sizes for _ in range(n)]
    idx = np.array(list(itertools.product(*grids)), dtype=np.int32).reshape(-1, len(grids))
    out, off = {}, 0
    for name, sup, (_m, n), (batch, event) in zip(names, supports, sizes, shapes, strict=True):
        vals = sup[idx[:, off : off + n]]  # (C, n, *event)
        out[name] = jnp.reshape(vals, (idx.shape[0], *batch, *event))
        off += n
    return out


# ----------------------------------------------------------------------------------------------
# linear objectives


class ELBO(VariationalObjective):
    r"""The evidence lower bound :math:`\mathcal L = \frac1K\sum_k [\log p(x, z_k) - \log q(z_k)]`.

    With reparameterized sites and ``estimator="reparam"`` the value and gradient equal
    ``numpyro.infer.Trace_ELBO`` for the same key. Score-function and enumerated sites
    (``infer={"grad": ...}``) are handled per site (module docstring).

    ``estimator="stl"`` is *sticking the landing* (Roeder et al. 2017): :math:`\log q_\phi(z)`
    is evaluated with stopped :math:`\phi` while :math:`z = g_\phi(\epsilon)` stays live, so the
    guide gradient is the path derivative
    :math:`\nabla_\phi\mathcal L = \nabla_z[\log p(x,z) - \log q_{\bar\phi}(z)]\,\partial_\phi z`
    (the zero-mean score term is dropped: zero variance at the exact posterior). Model
    parameters get the usual gradient. All guide sites must be reparameterized.

    Args:
        num_particles: :math:`K`.
        estimator: ``"reparam"`` (plain) or ``"stl"``.
        vectorize_particles, baseline, baseline_decay: see :class:`VariationalObjective`.

    Raises:
        ValueError: unknown ``estimator``; bad ``num_particles``/``baseline``.
    """

    def __init__(
        self,
        num_particles: int = 1,
        estimator: str = "reparam",
        vectorize_particles: bool | Callable = True,
        *,
        baseline: str | None = "auto",
        baseline_decay: float = 0.9,
    ):
        _check_choice("estimator", estimator, ("reparam", "stl"))
        self.estimator = estimator
        self.path = "stl" if estimator == "stl" else "standard"
        self.can_infer_discrete = estimator != "stl"
        super().__init__(
            num_particles,
            vectorize_particles,
            baseline=baseline,
            baseline_decay=baseline_decay,
        )


class STL(ELBO):
    """``ELBO(estimator="stl")``: the sticking-the-landing estimator (Roeder et al. 2017)."""

    def __init__(self, num_particles: int = 1, vectorize_particles: bool | Callable = True):
        super().__init__(num_particles, "stl", vectorize_particles)


class LinearWarmup:
    r"""KL-annealing schedule :math:`\beta(s) = \min(\text{cap}, s / \text{total\_steps})`.

    Args:
        total_steps: steps to reach ``cap`` (Mult-VAE anneals over the first ~200k updates).
        cap: the largest β, ``>= 0`` (Mult-VAE: 0.2).

    Raises:
        ValueError: ``total_steps`` not a positive int; ``cap`` negative or not finite.
    """

    def __init__(self, total_steps: int, cap: float = 1.0):
        total_steps = check_int("total_steps", total_steps, minimum=1)
        cap = _check_real("cap", cap)
        if cap < 0:
            raise ValueError(f"`cap` must be >= 0; got {cap}.")
        self.total_steps = int(total_steps)
        self.cap = cap

    def __call__(self, step) -> Array:
        return jnp.minimum(self.cap, jnp.asarray(step) / self.total_steps)

    def __repr__(self) -> str:
        return f"LinearWarmup(total_steps={self.total_steps}, cap={self.cap:g})"


def linear_warmup(total_steps: int, cap: float = 1.0) -> LinearWarmup:
    r"""The schedule :math:`\beta(s) = \min(\text{cap}, s/\text{total\_steps})` (see
    :class:`LinearWarmup`)."""
    return LinearWarmup(total_steps, cap)


class BetaELBO(ELBO):
    r"""β-weighted ELBO: :math:`\mathbb E_q[\log p(x\mid z)] - \beta\,(\mathbb E_q[\log q(z)]
    - \mathbb E_q[\log p(z)])` (Higgins et al. 2017; KL annealing in Mult-VAE).

    Latent-site log-densities (model prior and guide) are multiplied by β, observed sites are
    not. ``beta`` is a float, or a schedule ``step -> β`` (e.g. :func:`linear_warmup`) that is
    evaluated at the SVI state's step counter :math:`s` (the number of completed updates), so
    the β used by the ``s``-th ``svi.update`` is ``schedule(s)``. A schedule needs
    :class:`SVI` from this module (it seeds the counter); plain ``numpyro.infer.SVI`` raises a
    ``ValueError`` saying so.

    Negative β is rejected: a float at construction; a schedule at step 0 at construction and
    at the seeded step in :meth:`SVI.init`, and wherever it is evaluated on a concrete step
    (:meth:`beta_at`). Inside a jitted update the step is traced, so a schedule that turns
    negative later makes the loss NaN (visibly) instead of raising.

    Args:
        beta: β >= 0, or a callable ``step -> β`` (jax-traceable).
        num_particles, estimator, vectorize_particles, baseline, baseline_decay: see
            :class:`ELBO`.

    Raises:
        TypeError: ``beta`` neither a real number nor callable.
        ValueError: a negative or non-finite β.
    """

    def __init__(
        self,
        beta: float | Callable = 1.0,
        num_particles: int = 1,
        estimator: str = "reparam",
        vectorize_particles: bool | Callable = True,
        *,
        baseline: str | None = "auto",
        baseline_decay: float = 0.9,
    ):
        if callable(beta):
            self.schedule = beta
            self.beta = None
            self.beta_at(0)
        else:
            self.schedule = None
            self.beta = _check_real("beta", beta)
            if self.beta < 0:
                raise ValueError(f"`beta` must be >= 0; got {beta!r}.")
        super().__init__(
            num_particles,
            estimator,
            vectorize_particles,
            baseline=baseline,
            baseline_decay=baseline_decay,
        )

    def needs_state(self) -> bool:
        return self.schedule is not None or super().needs_state()

    def beta_at(self, step) -> Array | float:
        """β at ``step`` (checked >= 0 when ``step`` and the result are concrete)."""
        if self.schedule is None:
            return self.beta
        b = self.schedule(jnp.asarray(step, jnp.int32))
        if _is_concrete(b) and _is_concrete(step):
            bv = float(np.asarray(b))
            if not (math.isfinite(bv) and bv >= 0):
                raise ValueError(
                    f"`beta` schedule must return a finite value >= 0; got {bv!r} at step "
                    f"{int(np.asarray(step))}."
                )
        return b

    def _linear_coeffs(self, step):
        if self.schedule is None:
            return 1.0, self.beta
        return 1.0, self.beta_at(step)

    def _guard(self, loss, step):
        if self.schedule is None or step is None:
            return loss
        b = self.beta_at(step)
        return jnp.where(b >= 0, loss, jnp.nan)


# ----------------------------------------------------------------------------------------------
# non-linear objectives


class Objective(VariationalObjective):
    r"""A user-defined objective: ``fn(t) -> scalar bound to maximize``.

    ``t`` is a :class:`ParticleTerms` whose fields have shape ``(K,)`` (one entry per
    particle; per datum along plates that enclose every site, see the module docstring), e.g.
    the IWAE bound::

        Objective(lambda t: logmeanexp(t.log_lik + t.log_prior - t.log_guide), num_particles=8)

    The base traces, vectorizes and differentiates: reparameterized sites by autodiff through
    ``fn``, score-function sites by :math:`\sum_k (\mathcal L - b_k)\nabla \log q(z_k)`.
    ``fn`` must be jax-traceable; enumeration (``"enum"``) is not available (``fn`` need not
    be linear).

    Args:
        fn: callable ``ParticleTerms -> scalar``.
        num_particles, vectorize_particles, baseline, baseline_decay: see
            :class:`VariationalObjective`.

    Raises:
        TypeError: ``fn`` not callable.
        ValueError: ``fn`` returns a non-scalar (at the first trace).
    """

    linear = False

    def __init__(
        self,
        fn: Callable[[ParticleTerms], Array],
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
        *,
        baseline: str | None = "auto",
        baseline_decay: float = 0.9,
    ):
        if not callable(fn):
            raise TypeError(f"`fn` must be callable (ParticleTerms -> scalar); got {fn!r}.")
        self.fn = fn
        super().__init__(
            num_particles,
            vectorize_particles,
            baseline=baseline,
            baseline_decay=baseline_decay,
        )

    def _bound(self, t, step):
        out = jnp.asarray(self.fn(t))
        if out.shape != ():
            raise ValueError(
                f"`fn` must return a scalar bound; got shape {out.shape} for particle terms of "
                f"shape {t.log_lik.shape}."
            )
        return out


class RenyiELBO(Objective):
    r"""Rényi-α bound :math:`\frac{1}{1-\alpha}\log\frac1K\sum_k w_k^{1-\alpha}` (Li & Turner
    2016): α = 0 is IWAE, α → 1 approaches the ELBO, α < 1 is a tighter bound than the ELBO.

    Unlike ``numpyro.infer.RenyiELBO`` this handles score-function sites (with baselines) and
    minibatching through the shared base.

    Args:
        alpha: the order α, a finite real number ≠ 1.
        num_particles, vectorize_particles, baseline, baseline_decay: see
            :class:`VariationalObjective`.

    Raises:
        TypeError: ``alpha`` not a real number.
        ValueError: ``alpha == 1`` (use :class:`ELBO`) or not finite.
    """

    def __init__(
        self,
        alpha: float = 0.0,
        num_particles: int = 8,
        vectorize_particles: bool | Callable = True,
        *,
        baseline: str | None = "auto",
        baseline_decay: float = 0.9,
    ):
        alpha = _check_real("alpha", alpha)
        if alpha == 1.0:
            raise ValueError("`alpha` must differ from 1 (α = 1 is the ELBO: use `ELBO`).")
        self.alpha = alpha
        super().__init__(
            self._renyi,
            num_particles,
            vectorize_particles,
            baseline=baseline,
            baseline_decay=baseline_decay,
        )

    def _renyi(self, t):
        s = 1.0 - self.alpha
        return logmeanexp(s * t.log_weight) / s


class IWAE(RenyiELBO):
    r"""Importance-weighted bound :math:`\log\frac1K\sum_k w_k` (Burda et al. 2016).

    ``estimator="reparam"``: autodiff of the bound (self-normalized weights :math:`\tilde w_k`
    on :math:`\nabla\log w_k`); score-function sites get a leave-one-out (VIMCO) baseline.

    ``estimator="dreg"`` (Tucker et al. 2019): guide parameters get
    :math:`\sum_k \tilde w_k^2\,\partial_{z_k}\log w_k\,\partial_\phi z_k` — the score term
    dropped (its expectation is zero) and the remaining one doubly reparameterized — via the
    surrogate :math:`\sum_k \bar{\tilde w}_k^{\,2}\,[\log p_{\bar\theta}(x, z_k) - \log
    q_{\bar\phi}(z_k)]`; model parameters get the usual :math:`\sum_k \tilde w_k
    \nabla_\theta\log p_\theta(x, \bar z_k)` (bars: ``stop_gradient``). All guide sites must be
    reparameterized. Parameters are split by where their ``param`` site appears (guide trace vs
    model trace).

    Args:
        num_particles: :math:`K`.
        estimator: ``"reparam"`` or ``"dreg"``.
        vectorize_particles, baseline, baseline_decay: see :class:`VariationalObjective`.

    Raises:
        ValueError: unknown ``estimator``; bad ``num_particles``.
    """

    def __init__(
        self,
        num_particles: int = 8,
        estimator: str = "reparam",
        vectorize_particles: bool | Callable = True,
        *,
        baseline: str | None = "auto",
        baseline_decay: float = 0.9,
    ):
        _check_choice("estimator", estimator, ("reparam", "dreg"))
        self.estimator = estimator
        self.path = "dreg" if estimator == "dreg" else "standard"
        self.can_infer_discrete = estimator != "dreg"
        super().__init__(
            0.0,
            num_particles,
            vectorize_particles,
            baseline=baseline,
            baseline_decay=baseline_decay,
        )

    def _bound_and_grad(self, c, step):
        if self.path != "dreg":
            return super()._bound_and_grad(c, step)
        log_w = c["lik"] + c["prior"] - c["guide"]
        value = logmeanexp(log_w)
        w = stop_gradient(jax.nn.softmax(log_w))
        phi_part = jnp.sum(w**2 * (c["lp_phi"] - c["guide_stop"]))
        theta_part = jnp.sum(w * c["lp_theta"])
        return value, phi_part + theta_part


class ReweightedWakeSleep(VariationalObjective):
    r"""Reweighted wake-sleep (Bornschein & Bengio 2015), as one surrogate loss.

    With self-normalized weights :math:`\tilde w_k \propto p_\theta(x, z_k)/q_\phi(z_k)` and
    :math:`z_k` sampled with *stopped* gradients (so any guide site works: discrete,
    continuous, reparameterized or not):

    * wake-θ (model): :math:`\nabla_\theta \approx \sum_k \tilde w_k\nabla_\theta\log
      p_\theta(x, z_k)` — the IWAE gradient;
    * wake-φ (guide): :math:`\nabla_\phi \approx \sum_k \tilde w_k\nabla_\phi\log q_\phi(z_k)`,
      a self-normalized estimate of :math:`-\nabla_\phi\,\mathrm{KL}(p(z\mid x)\,\|\,q_\phi)`.

    The reported loss is the negative IWAE bound. Biased for finite :math:`K` (consistent as
    :math:`K\to\infty`); :math:`K \ge 2`.

    Args:
        num_particles: :math:`K \ge 2`.
        vectorize_particles: see :class:`VariationalObjective`.

    Raises:
        ValueError: ``num_particles < 2``.
    """

    linear = False
    path = "rws"

    def __init__(self, num_particles: int = 8, vectorize_particles: bool | Callable = True):
        _check_num_particles(num_particles, minimum=2)
        super().__init__(num_particles, vectorize_particles, baseline=None)

    def _check_site(self, name, mode, fn):
        if mode == "enum":
            raise ValueError(
                f"guide site '{name}': ReweightedWakeSleep samples every site (any "
                "distribution works); `infer['grad']='enum'` is not supported — drop it."
            )

    def _bound_and_grad(self, c, step):
        log_p = c["lik"] + c["prior"]
        log_w = log_p - c["guide"]
        w = stop_gradient(jax.nn.softmax(log_w))
        return logmeanexp(log_w), jnp.sum(w * (log_p + c["guide"]))


# ----------------------------------------------------------------------------------------------
# SVI that seeds the objective's state


class SVI(numpyro.infer.SVI):
    r"""``numpyro.infer.SVI`` whose :meth:`init` also seeds the objective's state.

    For a :class:`VariationalObjective` loss, ``mutable_state`` gains
    ``{STEP_KEY: 0, BASELINE_KEY: 0.0}``; each ``update`` passes them to
    ``loss_with_mutable_state`` (merged into ``param_map``, gradient stopped, as NumPyro does
    for ``numpyro.mutable`` sites) and stores the returned step + 1 and running baseline. With
    any other loss it behaves exactly like ``numpyro.infer.SVI``.
    """

    def init(self, rng_key, *args, init_params=None, **kwargs):
        state = super().init(rng_key, *args, init_params=init_params, **kwargs)
        if not isinstance(self.loss, VariationalObjective):
            return state
        extra = self.loss.init_state()
        if isinstance(self.loss, BetaELBO):
            self.loss.beta_at(extra[STEP_KEY])
        mutable = dict(state.mutable_state or {})
        mutable.update(extra)
        return state._replace(mutable_state=mutable)
