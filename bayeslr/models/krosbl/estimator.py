r"""The KroSBL estimator (:class:`KroneckerSBL`) and its posterior (:class:`KroSBLPosterior`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from bayeslr._validation import check_int
from bayeslr.models.base import Estimator, ModelPosterior, Prepared, Stage
from bayeslr.models.krosbl.algo import (
    KROSBL_STOP,
    KroSBLResult,
    _check_coupling_method,
    _check_options,
    _check_problem,
    _finalize,
    krosbl_init,
    krosbl_problem,
    krosbl_sample,
    krosbl_step,
)
from bayeslr.models.krosbl.model import krosbl_model

__all__ = ["KroneckerSBL", "KroSBLPosterior"]


class KroSBLPosterior(ModelPosterior):
    r"""The posterior of :math:`x` given the type-II ML :math:`\gamma` and :math:`\sigma^2`.

    ``samples`` hold draws of ``z`` and ``x`` of :func:`krosbl_model` (Matheron's rule,
    :func:`krosbl_sample`); the fitted :math:`\gamma` and :math:`\sigma^2` are the model's
    fixed arguments (``post.kwargs``: ``gammas`` or ``gamma``, ``noise``). Fast paths: the exact
    posterior :attr:`mean` and :attr:`var` of :math:`x`, the :attr:`support` estimate, and
    :attr:`result` (the :class:`KroSBLResult`).
    """

    @property
    def result(self) -> KroSBLResult:
        return self.context["result"]

    @property
    def mean(self) -> np.ndarray:
        r"""The exact posterior mean :math:`\mu` of :math:`x`, ``([F,] N)``."""
        return np.asarray(self.result.mean)

    @property
    def var(self) -> np.ndarray:
        r"""The exact marginal posterior variances :math:`\operatorname{diag}\Sigma`."""
        return np.asarray(self.result.var)

    @property
    def support(self) -> np.ndarray:
        """The support estimate (boolean, ``([F,] N)``; the posterior rule of the model docs)."""
        return np.asarray(self.result.support)

    def model_inputs(self, y=None, factors=None, *, observed: bool = False):
        """``predict(factors=None)``: draws of ``y`` at the fitted (or new) dictionaries;
        ``score(y, factors=None)``: the held-out density of new measurements ``y``."""
        factors = self.args[1] if factors is None else factors
        if observed:
            if y is None:
                raise TypeError("`score` needs the test measurements `y`.")
            y, factors, _ = _check_problem(y, factors, 1.0)
            if np.shape(y) != np.shape(self.args[0]):
                raise ValueError(
                    f"`y` must have the shape of the fitted measurements, {np.shape(self.args[0])} "
                    f"(the posterior of x is per frame); got {np.shape(y)}."
                )
            return (y, factors), self.kwargs
        if y is not None:
            raise TypeError(
                "`predict` draws new measurements y; pass new dictionaries as `factors=` (or "
                "nothing for the fitted ones). To score measurements use `post.score(y)`."
            )
        _, factors, _ = _check_problem(jnp.zeros(np.shape(self.args[0]), jnp.result_type(
            *factors, jnp.float32)), factors, 1.0)  # fmt: skip
        return (None, factors), self.kwargs


class KroneckerSBL(Estimator):
    r"""Kronecker-structured sparse Bayesian learning, fitted by EM with a factored E-step
    (:mod:`bayeslr.models.krosbl` has the model and the algorithm).

    Example::

        import jax; jax.config.update("jax_enable_x64", True)
        post = KroneckerSBL(method="svd", noise=sigma2).fit(y, [A1, A2, A3])
        post.mean, post.support         # exact posterior mean of x, support estimate
        post.predict()["y"]             # posterior predictive draws of y
        post.to_arviz()                 # z, x; log_likelihood of y for az.loo

    Args:
        method: ``"svd"`` (default), ``"am"`` or ``"sbl"`` (see :func:`krosbl_em`).
        noise: known noise variance :math:`\sigma^2 > 0`, or ``None`` to learn it.
        prune: relative pruning threshold, one for all factors or one per factor (``None``:
            ``1e-5`` for SVD, ``1e-2`` for AM, ``1e-3`` for SBL).
        max_iter: maximum EM iterations (default 150).
        tol: relative change of :math:`\otimes\gamma` at which EM stops (default ``1e-4``).
        support_z: threshold :math:`z` of the support rule (default 3).
        num_samples: posterior draws of :math:`x` stored (Matheron's rule).
        am_sweeps, am_tol, power_iters: M-step controls (see :func:`krosbl_em`).
        coupling: pattern coupling per factor (PC-KroSBL; ``None``, a float
            :math:`\beta\in[0,1)` or one :math:`\beta`/``None`` per factor); needs
            ``method="am"``.
        restarts: EM starts, the lowest final objective kept per frame (see :func:`krosbl_em`).
        seed: seed of the random starts and the posterior draws.
        progress_bar: a bar over EM iterations (off by default: a fit takes milliseconds).
    """

    model_fn = staticmethod(krosbl_model)
    name = "KroSBL"

    def __init__(
        self,
        method: str = "svd",
        noise: float | None = None,
        prune: float | Sequence[float] | None = None,
        max_iter: int = 150,
        tol: float = 1e-4,
        support_z: float = 3.0,
        num_samples: int = 100,
        am_sweeps: int = 10,
        am_tol: float = 1e-4,
        power_iters: int = 10,
        seed: int = 0,
        coupling: float | Sequence[float | None] | None = None,
        restarts: int = 1,
        progress_bar: bool = False,
    ):
        super().__init__(seed=seed, progress_bar=progress_bar)
        _check_options(method, prune, max_iter, tol, am_sweeps, am_tol, power_iters, support_z)
        _check_coupling_method(coupling, method)
        self.method, self.noise, self.prune = method, noise, prune
        self.max_iter, self.tol, self.support_z = int(max_iter), float(tol), float(support_z)
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.am_sweeps, self.am_tol, self.power_iters = am_sweeps, am_tol, power_iters
        self.coupling = coupling
        self.restarts = check_int("restarts", restarts, minimum=1)

    def _coupled(self) -> bool:
        c = self.coupling
        return c is not None and (not isinstance(c, Sequence) or any(b is not None for b in c))

    def prepare(self, y: ArrayLike, factors: Sequence[ArrayLike]) -> Prepared:
        r"""Validate the data of :math:`y = (A_1 \otimes \cdots \otimes A_I)x + n`.

        Args:
            y: ``(M,)`` measurements, or ``(F, M)``: ``F`` frames sharing the dictionaries, each
                with its own :math:`x` and EM.
            factors: dictionaries :math:`A_i` (``M_i x N_i``), :math:`I \ge 2`, real or complex
                (complex ``y`` needs complex dictionaries).
        """
        problem, batched = krosbl_problem(
            y, factors, method=self.method, noise=self.noise, prune=self.prune, tol=self.tol,
            am_sweeps=self.am_sweeps, am_tol=self.am_tol, power_iters=self.power_iters,
            coupling=self.coupling, restarts=self.restarts,
        )  # fmt: skip
        y, factors, _ = _check_problem(y, factors, self.noise)
        return Prepared(problem, {"y": y, "factors": factors, "batched": batched})

    def stages(self, prepared: Prepared):
        yield Stage(
            "", krosbl_init, krosbl_step, prepared.problem, self.max_iter, stop=KROSBL_STOP,
            progress_fields=("max_change",), guard=("objective",),
            hint="Check the dictionaries' scaling, or pass a larger known `noise`.",
        )  # fmt: skip

    def posterior(self, results, prepared: Prepared) -> KroSBLPosterior:
        res_loop = results[-1]
        ctx = prepared.context
        y, factors, batched = ctx["y"], ctx["factors"], ctx["batched"]
        frames = y.shape[0] if batched else 1
        res = _finalize(res_loop.state, prepared.problem, res_loop.history,
                        jnp.asarray(self.support_z), frames=frames, restarts=self.restarts)
        _warn_unconverged(res, self.max_iter, self.tol)
        rows = range(frames)
        key = ctx["posterior_key"]
        zs, xs = [], []
        for b in rows:
            key, sub = jax.random.split(key)
            gs = None if self.method == "sbl" else tuple(g[b] for g in res.gammas)
            yb = y[b] if batched else y
            x = krosbl_sample(sub, yb, factors, res.gamma[b], res.sigma2[b], self.num_samples,
                              gammas=gs)  # fmt: skip
            xs.append(np.asarray(x))
            zs.append(_whiten(jax.random.fold_in(sub, 1), np.asarray(x), np.asarray(res.gamma[b])))
        ns = tuple(a.shape[1] for a in factors)
        x = np.stack(xs, axis=1) if batched else xs[0]
        z = np.stack(zs, axis=1) if batched else zs[0]
        z = z.reshape(z.shape[: 1 + batched] + ns)
        lead = ["frame"] if batched else []
        pick = (lambda a: a) if batched else (lambda a: a[0])
        res = jax.tree.map(pick, res)
        if self.method == "sbl":
            fixed = {"gamma": np.asarray(res.gamma)}
        else:
            fixed = {"gammas": tuple(np.asarray(g) for g in res.gammas)}
        n_iter = np.atleast_1d(np.asarray(res.n_iter))
        hist_c = [np.asarray(np.atleast_2d(res.gamma_change)[b, : n_iter[b]]) for b in rows]
        hist_o = [np.asarray(np.atleast_2d(res.objective)[b, : n_iter[b]]) for b in rows]
        return KroSBLPosterior(
            {"z": z[None], "x": x[None]},
            estimator=self, args=(y, factors), kwargs={**fixed, "noise": np.asarray(res.sigma2)},
            results=results, context={"result": res},
            dims={"z": [*lead, *(f"coef_{i}" for i in range(len(ns)))], "x": [*lead, "coef"],
                  "y": [*lead, "obs"]},
            method=f"krosbl-{'pc-' if self._coupled() else ''}{self.method}",
            extra={
                "mean": np.asarray(res.mean), "var": np.asarray(res.var),
                "support": np.asarray(res.support), "gamma": np.asarray(res.gamma),
                "gammas": tuple(np.asarray(g) for g in res.gammas),
                "sigma2": np.asarray(res.sigma2), "n_iter": np.asarray(res.n_iter),
                "converged": np.asarray(res.converged),
                "gamma_change": hist_c if batched else hist_c[0],
                "objective": hist_o if batched else hist_o[0],
            },
        )  # fmt: skip


def _whiten(key, x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    r""":math:`z = x/\sqrt\gamma` of the non-centred model; where :math:`\gamma_j = 0` (a pruned
    atom) :math:`x_j = 0` whatever :math:`z_j`, whose posterior is then its prior, drawn here."""
    pos = gamma > 0
    z = np.asarray(jax.random.normal(key, x.shape, np.finfo(x.real.dtype).dtype))
    if np.iscomplexobj(x):
        z2 = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), x.shape, z.dtype))
        z = (z + 1j * z2) / np.sqrt(2.0)
    safe = np.sqrt(np.where(pos, gamma, 1.0))
    return np.where(pos, x / safe, z).astype(x.dtype)


def _warn_unconverged(res: KroSBLResult, max_iter: int, tol: float) -> None:
    conv = np.atleast_1d(np.asarray(res.converged))
    if conv.all():
        return
    which = "" if conv.size == 1 else f" for {int((~conv).sum())} of {conv.size} frames"
    warnings.warn(
        f"KroSBL EM stopped at max_iter={max_iter}{which} before the relative change of γ fell "
        f"below tol={tol}; the estimate may be far from converged (AM and PC-KroSBL often need "
        "several hundred iterations): raise `max_iter`.",
        RuntimeWarning,
        stacklevel=4,
    )
