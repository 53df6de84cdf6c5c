r"""The GP-HM estimator :class:`GPSolver` and its posterior :class:`GPHMPosterior` (the model
and the math are in :mod:`bayeslr.models.gphm`)."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayeslr._validation import check_int, check_real
from bayeslr.infer import loop
from bayeslr.models.base import Estimator, ModelPosterior, Prepared, Stage
from bayeslr.models.gphm.algo import (
    GPHMProblem,
    _apply_orders,
    _cross_predict,
    _fields,
    _is_uniform,
    _kernels,
    _predictive_weights,
    check_axes,
    extra_params,
    gphm_init,
    gphm_lbfgs_init,
    gphm_lbfgs_step,
    gphm_operators,
    gphm_step,
    heldout_misfits,
    init_params,
    laplace_draws,
)
from bayeslr.models.gphm.model import gphm_model
from bayeslr.models.gphm.pde import (
    PDE,
    _as_pde,
    _build_grid,
    _check_derivatives,
    _check_domain,
    _check_neumann,
    boundary_kinds,
    boundary_mask,
)

__all__ = ["GPHMPosterior", "GPSolver"]

KERNELS = ("auto", "stm", "gm")
OPTIMIZERS = ("gauss-newton", "adam")
BOUNDARY = ("multiplier", "penalty")
_HINT = "Lower `learning_rate` or raise `jitter`."
# The held-out stop rule counts a check as an improvement when the score falls by 1 %.
CHECK_REL_TOL = 0.01


@jax.jit
def _loss_at(params, problem: GPHMProblem):
    return problem.loss(params)


_draws = jax.jit(laplace_draws, static_argnums=1)
_heldout = jax.jit(heldout_misfits, static_argnums=(1, 4, 5, 6, 8))


def heldout_score(params: Sequence[dict], families: Sequence[str], problem: GPHMProblem,
                  check: dict) -> dict[str, float]:
    r"""The fit's misfits at the held-out check points (:func:`heldout_misfits`): the RMS of
    the PDE residual on the interior check grid relative to the RMS of :math:`f` there
    (``residual``), the RMS of :math:`u - g` at the check points of the boundary faces
    relative to the solution's scale, the larger of the RMS of :math:`g` and of :math:`u` on
    the check grid (``boundary``), and their sum (``score``, lower is better). A zero
    :math:`f` counts as scale 1."""
    H, B, U = _heldout(tuple(params), tuple(families), problem.axes, problem.jitter,
                    problem.uniform, problem.operator, problem.orders, check,
                    problem.neumann)  # fmt: skip
    scale = max(check["boundary_scale"], _rms(U))
    return _misfit_score(_rms(H), check["source_scale"], _rms(B), scale)


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def _misfit_score(res_rms: float, f_scale: float, bnd_rms: float, b_scale: float) -> dict:
    """``residual`` and ``boundary`` RMS relative to their scales, and their sum ``score``."""
    res = res_rms / f_scale
    bnd = bnd_rms / b_scale if b_scale > 0 else 0.0
    return {"residual": res, "boundary": bnd, "score": res + bnd}


@functools.partial(jax.jit, static_argnums=(1, 4))
def _grid_u(params, families, axes, jitter, uniform):
    r""":math:`U = \sum (\otimes_j L_j) V` over the stages on the grid."""
    zero = (0,) * len(axes)
    total = 0.0
    for p, family in zip(params, families, strict=True):
        E, _ = gphm_operators(_kernels(p, family), axes, (), jitter, uniform)
        total = total + _apply_orders(p["V"], E, (zero,))[zero]
    return total


_weights = jax.jit(_predictive_weights, static_argnums=(1, 4))


def _call(fn: Callable, x: jax.Array):
    """``fn(x)`` for a user's source or boundary function: compiled once (one XLA program
    instead of one per operation of an eager call), or called as is where it cannot be
    traced (NumPy inside)."""
    try:
        return jax.jit(fn)(x)
    except jax.errors.JAXTypeError:
        return fn(x)


def _positive(name: str, v: Any) -> float:
    return check_real(name, v, low=0.0, low_open=True)


class GPHMPosterior(ModelPosterior):
    r"""The posterior of a GP-HM fit, bound to :func:`~bayeslr.models.gphm.gphm_model`.

    The kernel parameters and precisions are their type-II MAP values (fixed arguments of the
    model, listed by :meth:`spectrum` and ``extra["kernel_params"]``); the random variable is
    the whitened grid solution ``V`` (``num_samples`` draws of
    :func:`~bayeslr.models.gphm.algo.laplace_draws`, made on first use). Contract methods:
    :meth:`predict` draws the observed sites ``pde`` (the source through the operator) and
    ``boundary``, or the solution on the grid with ``return_sites=["u"]``;
    :meth:`log_likelihood` and :meth:`to_arviz` are of the collocation data. :meth:`score` is
    not defined (a PDE has no held-out observations). The solver's answer is the posterior
    mean: :meth:`solution` anywhere in the box, :attr:`grid_values` on the grid.
    """

    @property
    def grid(self) -> tuple[np.ndarray, ...]:
        """The collocation axes."""
        return self.context["axes"]

    @property
    def settings(self) -> dict:
        """The solver settings the fit used (the PDE's defaults filled in)."""
        return dict(self.context["settings"])

    @property
    def boundary_points(self) -> np.ndarray:
        """The boundary nodes of the grid, ``(N_b, d)``, in the order of ``boundary``."""
        return _boundary_points(self.grid)

    @property
    def grid_values(self) -> np.ndarray:
        """:math:`U`, the posterior mean solution on the collocation grid, ``(M_1, ..., M_d)``."""
        if "grid_values" not in self.context:
            with jax.enable_x64(True):
                stages = self.extra["stages"]
                self.context["grid_values"] = np.asarray(_grid_u(
                    tuple(jax.tree.map(jnp.asarray, p) for p, _ in stages),
                    tuple(f for _, f in stages), tuple(jnp.asarray(a) for a in self.grid),
                    self.context["jitter"], self.context["uniform"]))  # fmt: skip
        return self.context["grid_values"].copy()

    def spectrum(self) -> list[dict[str, np.ndarray]]:
        r"""Per axis, the learned mixture sorted by weight (largest first): ``weights``
        :math:`w_q`, ``means`` :math:`\mu_q` (cycles per unit; :math:`k/2\pi` for
        :math:`\sin kx`) and ``inv_lengthscales`` (``"stm"``: :math:`a_q`; ``"gm"``:
        :math:`\rho_q^2`)."""
        params, _ = self.extra["stages"][0]
        out = []
        for lw, mu, ll in zip(params["log_w"], params["mu"], params["log_ls"], strict=True):
            w = np.exp(np.asarray(lw))
            order = np.argsort(-w)
            out.append({"weights": w[order], "means": np.asarray(mu)[order],
                        "inv_lengthscales": np.exp(np.asarray(ll))[order]})  # fmt: skip
        return out

    def solution(self, x: Any, derivative: Sequence[int] | None = None, *,
                 kernel: str | None = None, extrapolate: bool = False,
                 return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        r"""The posterior mean of :math:`u` (or :math:`\partial^{\mathbf r} u`) at ``x``: the
        GP conditional mean given the fitted grid values.

        Args:
            x: ``(n, d)`` points in the box (``(n,)`` in 1-D).
            derivative: multi-index ``r`` (one order per axis, each at most 2) or ``None`` for
                :math:`u`.
            kernel: ``None`` for the kept fit; with ``kernel="auto"`` the other family's fit
                (``"stm"`` or ``"gm"``, see ``extra["kernel_selection"]``) for comparison.
            return_std: also return the posterior standard deviation of the value at ``x``
                over the draws of the grid values (``num_samples`` of them, made on first
                use; hyperparameters at their fitted values): the spread of the conditional
                mean :math:`k_x K^{-1}U` as :math:`U` varies under the posterior (the GP's
                own conditional variance between nodes, negligible on a grid that resolves
                the solution, is not added).
            extrapolate: points outside the PDE's box raise a ``ValueError`` (the PDE says
                nothing there: the GP's mean decays to zero within a few lengthscales of the
                grid); ``True`` computes them anyway, with a warning.

        Returns:
            ``(n,)`` values. Cost :math:`O(n\,\prod_j M_j)` (the cross covariances are
            :math:`n \times M_j` per axis; the contraction is dense in the grid), plus
            :math:`O(\sum_j M_j^3 + M\sum_j M_j)` on the first call for the weights
            :math:`(\otimes_j L_j^{-\top})V`, which the posterior keeps.
        """
        d = len(self.grid)
        pts = np.asarray(x, np.float64)
        if pts.ndim == 1 and d == 1:
            pts = pts[:, None]
        if pts.ndim != 2 or pts.shape[1] != d or not np.all(np.isfinite(pts)):
            raise ValueError(f"`x` must be finite points of shape (n, {d}); got {np.shape(x)}.")
        lo = np.asarray([a[0] for a in self.grid])
        hi = np.asarray([a[-1] for a in self.grid])
        tol = 1e-9 * (hi - lo)
        outside = np.any((pts < lo - tol) | (pts > hi + tol), axis=1)
        if np.any(outside):
            box = " x ".join(f"[{a:g}, {b:g}]" for a, b in zip(lo, hi, strict=True))
            first = pts[np.argmax(outside)].tolist()
            msg = (f"`x` has {int(outside.sum())} of {len(pts)} points outside the PDE's box "
                   f"{box} (the first: {first}).")  # fmt: skip
            if not extrapolate:
                raise ValueError(msg + " The solution is defined on the box; pass "
                                 "extrapolate=True to evaluate the GP's mean there anyway.")
            warnings.warn(msg + " Evaluated by extrapolate=True: the GP's mean outside the "
                          "box is not a solution of the PDE.", UserWarning, stacklevel=2)
        r = (0,) * d if derivative is None else tuple(int(v) for v in np.atleast_1d(derivative))
        if len(r) != d or any(v < 0 or v > 2 for v in r):
            raise ValueError(
                f"`derivative` must be {d} orders in 0..2 (one per axis); got {derivative!r}."
            )
        candidates = self.extra["candidates"]
        if kernel is not None and kernel not in candidates:
            raise ValueError(f"`kernel` must be one of the families fitted, {list(candidates)}; "
                             f"got {kernel!r}.")  # fmt: skip
        kernel = self.extra["kernel"] if kernel is None else kernel
        alphas = self.context.setdefault("alphas", {})
        with jax.enable_x64(True):
            axes = tuple(jnp.asarray(a) for a in self.grid)
            total = 0.0
            for i, (params, family) in enumerate(candidates[kernel]):
                p = jax.tree.map(jnp.asarray, params)
                if (kernel, i) not in alphas:  # the per-axis Cholesky solves, once
                    alphas[kernel, i] = np.asarray(_weights(
                        p, family, axes, self.context["jitter"], self.context["uniform"]))
                total = total + _cross_predict(p, family, axes, jnp.asarray(alphas[kernel, i]),
                                               jnp.asarray(pts), r)  # fmt: skip
            if not return_std:
                return np.asarray(total)
            return np.asarray(total), self._std(pts, r, kernel)

    def _std(self, pts: np.ndarray, r, kernel: str) -> np.ndarray:
        """The spread over the posterior draws of the last stage's grid values (the earlier
        stages are fixed: their fields enter the mean only)."""
        if kernel != self.extra["kernel"]:
            raise ValueError(f"`return_std` is for the kept fit ({self.extra['kernel']!r}); the "
                             f"other family's fit ({kernel!r}) has no posterior draws.")
        if "V" not in self.samples:
            raise ValueError("`return_std` needs posterior draws: fit with num_samples > 0.")
        params, family = self.extra["stages"][-1]
        draws = np.asarray(self.samples["V"]).reshape(-1, *np.shape(params["V"]))
        axes = tuple(jnp.asarray(a) for a in self.grid)
        p = jax.tree.map(jnp.asarray, params)
        alpha = _weights({**p, "V": jnp.moveaxis(jnp.asarray(draws), 0, -1)}, family, axes,
                         self.context["jitter"], self.context["uniform"])  # fmt: skip
        vals = _cross_predict(p, family, axes, alpha, jnp.asarray(pts), r)
        return np.asarray(jnp.std(vals, axis=-1))

    def score(self, *test_data, pointwise: bool = False, **kw):
        """Not defined for GP-HM: the PDE's collocation data have no held-out counterpart."""
        raise NotImplementedError(
            "GPHMPosterior.score: a PDE solve has no held-out observations to score; compare "
            "`solution(x)` with a reference solution, or read extra['residual_rms'] and "
            "extra['boundary_rms'] (the fit's residuals on the grid)."
        )


def _boundary_points(axes) -> np.ndarray:
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return pts[boundary_mask(tuple(a.size for a in axes))]


class GPSolver(Estimator):
    r"""Solve a PDE with GP-HM (:mod:`bayeslr.models.gphm` has the model, the loss and the
    cost).

    Example::

        from bayeslr.models import GPSolver, PDE
        pde = PDE(operator=lambda u, d, x: d[(2,)], derivatives=((2,),),
                  domain=((0.0, 2 * np.pi),), boundary=lambda x: jnp.sin(20 * x[:, 0]),
                  source=lambda x: -400.0 * jnp.sin(20 * x[..., 0]))
        post = GPSolver(grid=200, freq_scale=5.0, num_steps=4000).fit(pde)
        post.solution(np.linspace(0, 2 * np.pi, 300))
        post.extra["kernel"], post.extra["heldout"]   # the family kept, its held-out score
        more = GPSolver(grid=200, num_steps=2000).fit(pde, init=post)   # continue the fit

    The eleven problems of the paper are ready-made:
    ``GPSolver().fit(pde_problem("poisson1d_sin100"))`` (see
    :func:`bayeslr.datasets.list_pde_problems`) takes the grid, :math:`F`, :math:`\lambda_b`
    and the extra-GP fraction from the problem where they are left unset.

    Args:
        grid: points per axis (int, or one int per axis; uniform, endpoints included), or 1-D
            increasing coordinate arrays per axis that start and end at the domain's bounds.
            Default: the PDE's ``defaults["grid"]``, else 100.
        kernel: ``"auto"`` (default): fit both families and keep the one with the lower
            held-out score (:func:`heldout_score`, at the midpoints between the grid nodes;
            twice the time); ``"stm"`` (Student-t mixture) or ``"gm"`` (Gaussian mixture)
            fit one.
        num_components: :math:`Q` per axis (paper: 30).
        freq_scale: :math:`F`: initial frequencies :math:`\mu = \operatorname{linspace}(0, F,
            Q)` in cycles per unit (one float or one per axis); must exceed the solution's
            frequencies (:math:`k/2\pi` for :math:`\sin kx`). Default: the PDE's, else twice
            the frequency below which 99.9 % of the source's spectrum on the grid lies, per
            axis (:func:`_spectral_scale`; 20 for a zero source).
        boundary_weight: :math:`\lambda_b` (paper: 200, advection 500); default the PDE's,
            else 200. With ``boundary="multiplier"`` (default) it only sets the scale of the
            penalty :math:`\mu = \lambda_b\tau_2` where the method of multipliers starts
            (the boundary is imposed exactly whatever its value: a 1-D test gives the same
            error at 1 and 1e4); with ``"penalty"`` it is the paper's weight, and the answer
            depends on it: with the learned precisions the boundary's share of the loss is
            about :math:`\lambda_b N_b / M`, which shrinks as the grid is refined (Allen–Cahn
            2-D with :math:`\lambda_b = 200` fails on 200² and 400², ``docs/gphm.md``).
        boundary: ``"multiplier"`` (default): the boundary data are a constraint imposed by
            the method of multipliers (augmented Lagrangian, safeguarded penalty growth,
            :func:`~bayeslr.models.gphm.algo.gphm_step`); ``"penalty"``: the paper's
            weighted likelihood with a learned precision :math:`\tau_1`.
        num_steps: optimizer steps (the paper runs :math:`10^5`–:math:`10^6` Adam steps).
        optimizer: ``"gauss-newton"`` (default): every step first minimizes over the whitened
            values :math:`V` by one Gauss–Newton step
            (:func:`~bayeslr.models.gphm.gauss_newton_step`; exact for linear operators), then
            takes an Adam step on the kernel parameters and the precisions. ``"adam"``: Adam on
            everything jointly, as the reference code does.
        dense_limit: grid size :math:`M` up to which the Gauss–Newton system is formed and
            factorized densely; above it, conjugate gradients.
        cg_steps: CG iterations per Gauss–Newton step above ``dense_limit``. CG solves for the
            step from zero, i.e. for the new :math:`V` from the current one, so a truncated
            solve is carried on by the next step. Each iteration costs one ``jvp`` and one
            ``vjp``; on large grids fewer iterations buy more steps (``poisson2d_sin100`` on
            400² reaches :math:`8.4\times10^{-3}` in 60 steps with 25 iterations and
            :math:`7.6\times10^{-3}` with 100).
        learning_rate: Adam step size, or an optax schedule (``step -> size``). A float gives
            a constant rate with ``optimizer="adam"`` (default 1e-2, the paper's) and a cosine
            decay from it to 1 % of it over the steps with ``"gauss-newton"`` (default 3e-2);
            the extra-GP stage restarts the schedule.
        lbfgs_steps: L-BFGS steps (optax, zoom line search) after Adam; 0 for none.
        extra_gp_fraction: :math:`c \in (0, 1)`: after :math:`c\,` ``num_steps`` steps freeze
            the mixture GP and fit a Matérn-5/2 GP on top; ``None`` (default) for none, or the
            PDE's value with ``"problem"``.
        jitter: relative jitter :math:`\epsilon` on each :math:`K_j`.
        steps_per_chunk: at most this many steps per compiled chunk (the progress bar and the
            NaN check run between chunks; the chunks are equal).
        check_every: steps between held-out checks (:func:`heldout_score`; the chunk length
            becomes this): the best-scoring state is kept. ``None``: no checks (the last state
            is kept). Needs callable ``source`` and ``boundary``.
        check_patience: stop a stage after this many checks without a 1 % improvement of the
            held-out score; ``None`` never stops early.
        num_samples: posterior draws of the grid values (made on first use: ``to_arviz``,
            ``predict``); 0 for the MAP solution only.
        seed: seed of the posterior draws (the fit itself is deterministic).
        progress_bar: tqdm bar over steps.

    The fit and the posterior run in float64 (inside ``jax.enable_x64``) whatever the global
    setting: the Gram matrices of hundreds of grid points per axis are far too ill-conditioned
    for float32.
    """

    model_fn = staticmethod(gphm_model)
    name = "GP-HM"
    float64 = True

    def __init__(
        self,
        grid: Any = None,
        *,
        kernel: str = "auto",
        num_components: int = 30,
        freq_scale: float | Sequence[float] | None = None,
        boundary_weight: float | None = None,
        boundary: str = "multiplier",
        num_steps: int = 10_000,
        learning_rate: float | Callable[[Any], Any] | None = None,
        optimizer: str = "gauss-newton",
        dense_limit: int = 2048,
        cg_steps: int = 100,
        lbfgs_steps: int = 0,
        extra_gp_fraction: float | str | None = None,
        jitter: float = 1e-6,
        steps_per_chunk: int = 250,
        check_every: int | None = 100,
        check_patience: int | None = 10,
        num_samples: int = 100,
        seed: int | jax.Array = 0,
        progress_bar: bool = True,
    ):
        super().__init__(seed=seed, progress_bar=progress_bar)
        self.grid = grid
        if kernel not in KERNELS:
            raise ValueError(f"`kernel` must be one of {KERNELS}; got {kernel!r}.")
        self.kernel = kernel
        self.num_components = check_int("num_components", num_components, minimum=1)
        self.freq_scale = freq_scale
        self.boundary_weight = None if boundary_weight is None else \
            _positive("boundary_weight", boundary_weight)  # fmt: skip
        if boundary not in BOUNDARY:
            raise ValueError(f"`boundary` must be one of {BOUNDARY}; got {boundary!r}.")
        self.boundary = boundary
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}; got {optimizer!r}.")
        self.optimizer = optimizer
        if learning_rate is None:
            learning_rate = 3e-2 if optimizer == "gauss-newton" else 1e-2
        self.learning_rate = (
            learning_rate if callable(learning_rate) else _positive("learning_rate", learning_rate)
        )
        self.jitter = _positive("jitter", jitter)
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.lbfgs_steps = check_int("lbfgs_steps", lbfgs_steps, minimum=0)
        self.dense_limit = check_int("dense_limit", dense_limit, minimum=0)
        self.cg_steps = check_int("cg_steps", cg_steps, minimum=1)
        self.steps_per_chunk = check_int("steps_per_chunk", steps_per_chunk, minimum=1)
        self.check_every = None if check_every is None else \
            check_int("check_every", check_every, minimum=1)  # fmt: skip
        self.check_patience = None if check_patience is None else \
            check_int("check_patience", check_patience, minimum=1)  # fmt: skip
        if extra_gp_fraction is not None and extra_gp_fraction != "problem":
            extra_gp_fraction = check_real("extra_gp_fraction", extra_gp_fraction, low=0.0,
                                           high=1.0, low_open=True, high_open=True)  # fmt: skip
        self.extra_gp_fraction = extra_gp_fraction
        self.num_samples = check_int("num_samples", num_samples, minimum=0)

    # ---- settings and data on the grid --------------------------------------------------

    def settings(self, pde: Any) -> dict:
        """The settings a fit of ``pde`` uses: this solver's, with the PDE's ``defaults`` where
        they are unset (``grid`` as the axes, ``freq_scale``, ``boundary_weight``,
        ``extra_gp_fraction``). Raises on an invalid PDE or grid."""
        pde = _as_pde(pde)
        domain = _check_domain(pde.domain)
        d = len(domain)
        orders = _check_derivatives(pde.derivatives, d)
        neumann = _check_neumann(pde.neumann, d)
        if pde.boundary is None and (neumann is None or not all(all(f) for f in neumann)):
            raise ValueError("`pde.boundary` is None but some faces have no Neumann data "
                             "(`pde.neumann`): give the Dirichlet data there.")  # fmt: skip
        defaults = pde.defaults or {}
        axes = _build_grid(defaults.get("grid", 100) if self.grid is None else self.grid,
                           domain)  # fmt: skip
        for j, a in enumerate(axes):
            need = max(idx[j] for idx in orders) + 3
            if a.size < need:
                raise ValueError(
                    f"`grid[{j}]` has {a.size} points, too few for derivatives of order "
                    f"{need - 3} along axis {j} (need at least {need})."
                )
        fs = self.freq_scale if self.freq_scale is not None else defaults.get("freq_scale")
        if fs is None:  # from the source's spectrum on the grid; else the reference's 20
            with jax.enable_x64(True):
                x = jnp.stack(jnp.meshgrid(*(jnp.asarray(a, jnp.float64) for a in axes),
                                           indexing="ij"), axis=-1)  # fmt: skip
                f = np.asarray(_source(pde, tuple(a.size for a in axes), x))
            fs = _spectral_scale(f, axes)
        fs = np.atleast_1d(np.asarray(fs, np.float64))
        if fs.ndim != 1 or fs.size not in (1, d) or not np.all(np.isfinite(fs)) or np.any(fs <= 0):
            raise ValueError(
                f"`freq_scale` must be a positive float or {d} of them (one per axis); got "
                f"{self.freq_scale!r}."
            )
        extra = self.extra_gp_fraction
        if extra == "problem":
            extra = defaults.get("extra_gp_fraction")
        lam = self.boundary_weight if self.boundary_weight is not None else \
            _positive("pde.defaults['boundary_weight']", defaults.get("boundary_weight", 200.0))
        return {"pde": pde, "orders": orders, "axes": axes,
                "freq_scale": float(fs[0]) if fs.size == 1 else tuple(float(v) for v in fs),
                "boundary_weight": float(lam), "boundary": self.boundary,
                "extra_gp_fraction": extra, "neumann": neumann}  # fmt: skip

    def boundary_points(self, pde: Any) -> np.ndarray:
        """The boundary nodes of ``pde``'s grid, ``(N_b, d)`` in C order (each node once): the
        order of an array ``pde.boundary``."""
        return _boundary_points(self.settings(pde)["axes"])

    # ---- the contract -------------------------------------------------------------------

    def prepare(self, pde: Any, init: GPHMPosterior | None = None) -> Prepared:
        r"""Validate ``pde`` (a :class:`PDE`, a :class:`bayeslr.datasets.PDEProblem` or a
        problem's name) and the grid, evaluate :math:`f` on the grid and :math:`g` on its
        boundary, and check the operator's output shape (all before compiling anything).

        ``init``: a previous fit of the same PDE on the same grid to continue
        (``fit(pde, init=post)``): its kernel family, parameters, multipliers and penalty are
        the start, and this solver's ``num_steps`` run with a fresh learning-rate schedule.
        Fits with the extra GP cannot be continued."""
        s = self.settings(pde)
        pde, orders, axes_np = s["pde"], s["orders"], s["axes"]
        shape = tuple(a.size for a in axes_np)
        dtype = jnp.float64
        axes = tuple(jnp.asarray(a, dtype) for a in axes_np)
        x = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
        neumann = s["neumann"]
        gvals = _boundary_values(pde, _boundary_points(axes_np), *boundary_kinds(shape, neumann))
        _check_operator(pde, orders, shape, x)
        f = _source(pde, shape, x)
        uniform = tuple(_is_uniform(a) for a in axes_np)
        n1 = self.num_steps
        if s["extra_gp_fraction"] is not None:
            n1 = min(max(1, round(s["extra_gp_fraction"] * self.num_steps)), self.num_steps)
        lr = self.learning_rate
        problem = GPHMProblem(
            axes=axes, source=f, boundary_values=jnp.asarray(gvals, dtype),
            boundary_weight=jnp.asarray(s["boundary_weight"], dtype),
            jitter=jnp.asarray(self.jitter, dtype),
            learning_rate=jnp.asarray(0.0 if callable(lr) else lr, dtype),
            decay_steps=jnp.asarray(max(n1, 1), dtype),
            start=init_params(shape, self.num_components, s["freq_scale"], dtype), base=None,
            operator=pde.operator, orders=orders, uniform=uniform,
            family="stm" if self.kernel == "auto" else self.kernel,
            optimizer=self.optimizer, dense_limit=self.dense_limit, cg_steps=self.cg_steps,
            schedule=lr if callable(lr) else None, neumann=neumann,
            **({} if self.boundary == "penalty" else dict(
                multiplier=jnp.zeros(gvals.shape, dtype),
                penalty=jnp.asarray(s["boundary_weight"], dtype))),
        )  # fmt: skip
        init_family = None
        if init is not None:
            problem, init_family = _continued(problem, init, axes_np, self.boundary)
        settings = {k: v for k, v in s.items() if k not in ("pde", "axes", "orders")}
        context = {"init_family": init_family, "pde": pde, "axes": axes_np,
                   "uniform": uniform, "jitter": self.jitter,
                   "check": _check_data(pde, axes_np, dtype, neumann),
                   "settings": {**settings, "grid": shape}, "n1": n1,
                   "source": np.asarray(f), "boundary_values": gvals}  # fmt: skip
        return Prepared(problem, context)

    def stages(self, prepared: Prepared):
        ctx = prepared.context
        families = ("stm", "gm") if self.kernel == "auto" else (self.kernel,)
        if ctx.get("init_family") is not None:
            families = (ctx["init_family"],)
        chains = {}
        for family in families:
            chain = yield from self._chain(prepared, family)
            chain["heldout"] = self._judge(ctx, chain)
            chains[family] = chain
        best = min(chains, key=lambda f: chains[f]["heldout"]["score"])
        ctx.update(stages=chains[best]["stages"], problem=chains[best]["problem"],
                   family=best, chain=chains[best]["results"],
                   candidates={f: c["stages"] for f, c in chains.items()},
                   selection={f: c["heldout"] for f, c in chains.items()})  # fmt: skip

    def _chain(self, prepared: Prepared, family: str):
        """The stages of one kernel family: the mixture GP (then L-BFGS), and the extra GP
        (then L-BFGS) where asked. Returns ``{"stages": [(params, family), ...], "problem",
        "results"}`` (the loop results of this chain)."""
        ctx = prepared.context
        problem = dataclasses.replace(prepared.problem, family=family)
        results = []
        common = dict(chunk_size=self.steps_per_chunk, guard=("loss",),
                      progress_fields=("loss", "res_rms", "bnd_rms"), hint=_HINT)  # fmt: skip
        def name(stage):  # "gm-mixture" under kernel="auto" (also a checkpoint file suffix)
            return f"{family}-{stage}" if self.kernel == "auto" else stage

        def carried(prob, state):  # the multipliers and the penalty go on to the next stage
            return dataclasses.replace(prob, multiplier=state.multiplier, penalty=state.penalty)

        res = yield Stage(name("mixture"), gphm_init, gphm_step, problem, ctx["n1"],
                          validation=self._validation(ctx, problem, (), (family,)),
                          **common)  # fmt: skip
        results.append(res)
        params = res.state.params
        problem = carried(problem, res.state)
        if ctx["settings"]["extra_gp_fraction"] is None and self.lbfgs_steps:
            problem = dataclasses.replace(problem, start=params)
            res = yield Stage(name("lbfgs"), gphm_lbfgs_init, gphm_lbfgs_step, problem,
                              self.lbfgs_steps, **common)  # fmt: skip
            results.append(res)
            params = res.state[0]
        stages = [(params, family)]
        if ctx["settings"]["extra_gp_fraction"] is not None:
            E, _ = gphm_operators(_kernels(params, family), problem.axes, problem.all_orders,
                                  self.jitter, problem.uniform)  # fmt: skip
            base = jax.lax.stop_gradient(_fields(params["V"], E, problem.all_orders, None))
            n2 = self.num_steps - ctx["n1"]
            problem = dataclasses.replace(
                problem, start=extra_params(params["V"].shape, params, jnp.float64), base=base,
                family="stm", decay_steps=jnp.asarray(max(n2, 1), jnp.float64),
            )  # fmt: skip
            extra = problem.start
            if n2 > 0:
                res = yield Stage(name("extra"), gphm_init, gphm_step, problem, n2,
                                  validation=self._validation(ctx, problem, (params,),
                                                              (family, "stm")),
                                  **common)  # fmt: skip
                results.append(res)
                extra = res.state.params
                problem = carried(problem, res.state)
            if self.lbfgs_steps:
                problem = dataclasses.replace(problem, start=extra)
                res = yield Stage(name("extra-lbfgs"), gphm_lbfgs_init, gphm_lbfgs_step,
                                  problem, self.lbfgs_steps, **common)  # fmt: skip
                results.append(res)
                extra = res.state[0]
            stages.append((extra, "stm"))
        return {"stages": stages, "problem": problem, "results": results}

    def _validation(self, ctx, problem, frozen, families):
        r"""The held-out stop rule of a Gauss–Newton/Adam stage: every ``check_every`` steps the
        fit is scored at the check points (:func:`heldout_score`), the best state is kept,
        and the stage stops after ``check_patience`` scores without improvement. ``None`` where
        the PDE gives no check points (array data) or ``check_every=None``."""
        check = ctx["check"]
        if check is None or self.check_every is None:
            return None

        def score(state):
            return heldout_score([*frozen, state.params], families, problem, check)["score"]

        return loop.Validation(score, every=self.check_every, patience=self.check_patience,
                               mode="min", keep_best=True, rel_tol=CHECK_REL_TOL)  # fmt: skip

    def _judge(self, ctx, chain) -> dict[str, float]:
        """The scores a chain is compared by: :func:`heldout_score` at the check points, or,
        where the PDE gives none, the same ratios on the grid the fit saw."""
        params = [p for p, _ in chain["stages"]]
        families = [f for _, f in chain["stages"]]
        if ctx["check"] is not None:
            return {**heldout_score(params, families, chain["problem"], ctx["check"]),
                    "held_out": True}  # fmt: skip
        _, parts = _loss_at(params[-1], chain["problem"])
        g = ctx["boundary_values"]
        score = _misfit_score(float(np.sqrt(parts["residual_sse"] / ctx["source"].size)),
                              _rms(ctx["source"]) or 1.0,
                              float(np.sqrt(parts["boundary_sse"] / g.size)), _rms(g) or 1.0)
        return {**score, "held_out": False}

    def posterior(self, results, prepared: Prepared) -> GPHMPosterior:
        ctx = prepared.context
        problem = ctx["problem"]
        last = ctx["stages"][-1][0]
        final_loss, parts = _loss_at(last, problem)
        M = int(np.prod(ctx["settings"]["grid"]))
        stages = [(jax.tree.map(np.asarray, p), fam) for p, fam in ctx["stages"]]
        kernel_params = {k: v for k, v in last.items() if k != "V"}
        S, key = self.num_samples, ctx["posterior_key"]

        def draws():
            v = _draws(key, S, last, problem)
            return {"V": np.asarray(v)[None]}

        d = len(ctx["axes"])
        names = [f"x_{j}" for j in range(d)]
        dims = {"V": names, "u": names, "pde": names, "boundary": ["boundary_node"]}
        coords = {n: a for n, a in zip(names, ctx["axes"], strict=True)}
        coords["boundary_node"] = np.arange(ctx["boundary_values"].size)
        # the boundary precision of the model: the paper's λ_b τ1, or the multipliers' penalty μ
        bw = problem.boundary_weight if problem.multiplier is None else \
            problem.penalty / jnp.exp(kernel_params["log_tau1"])  # fmt: skip
        kwargs = dict(kernel_params=kernel_params, family=problem.family,
                      boundary_weight=bw, jitter=problem.jitter,
                      base=problem.base, uniform=problem.uniform,
                      neumann=problem.neumann)  # fmt: skip
        args = (problem.axes, problem.operator, problem.orders, problem.source,
                problem.boundary_values)  # fmt: skip
        post = GPHMPosterior(
            draws if S else {}, estimator=self, args=args, kwargs=kwargs,
            results=ctx["chain"], context=ctx, num_draws=S or None,
            observed={"pde": ctx["source"], "boundary": ctx["boundary_values"]},
            dims=dims, coords=coords, method=f"gphm-{ctx['family']}-map-laplace",
            extra={
                "loss": np.concatenate([np.asarray(r.history["loss"]) for r in ctx["chain"]]),
                "kernel": ctx["family"],
                "boundary_penalty": (None if problem.multiplier is None
                                     else float(problem.penalty)),
                "heldout": ctx["selection"][ctx["family"]],
                "kernel_selection": ctx["selection"],
                "candidates": {f: [(jax.tree.map(np.asarray, p), fam) for p, fam in st]
                               for f, st in ctx["candidates"].items()},
                "final_loss": float(final_loss),
                "residual_rms": float(np.sqrt(parts["residual_sse"] / M)),
                "boundary_rms": float(np.sqrt(parts["boundary_sse"]
                                              / ctx["boundary_values"].size)),
                "stages": stages,
                "kernel_params": jax.tree.map(np.asarray, kernel_params),
            },
        )  # fmt: skip
        _warn_if_boundary_missed(post)
        return post


# The fit warns when the boundary RMS ends above this fraction of the solution's scale.
BOUNDARY_WARN = 1e-2


def _warn_if_boundary_missed(post: GPHMPosterior) -> None:
    g = post.context["boundary_values"]
    scale = max(float(np.sqrt(np.mean(g**2))), float(np.sqrt(np.mean(post.grid_values**2))))
    b = post.extra["boundary_rms"]
    if scale > 0 and b > BOUNDARY_WARN * scale:
        how = ("run more steps (`num_steps`)" if post.settings["boundary"] == "multiplier" else
               "use boundary='multiplier' (the default), which imposes the data exactly")
        warnings.warn(
            f"GP-HM: the fit ends with a boundary RMS of {b:.3g}, {b / scale:.1%} of the "
            f"solution's scale ({scale:.3g}): the boundary data are not met and the solution is "
            f"not to be trusted; {how}.", UserWarning, stacklevel=4)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the PDE's data on the grid


def _boundary_values(pde: PDE, pts: np.ndarray, kind: np.ndarray | None = None,
                     sign: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The boundary data at ``pts``: Dirichlet data where ``kind`` is 0 (or not given), the
    Neumann data of the face of axis ``kind - 1`` on the side of ``sign`` elsewhere."""
    n = pts.shape[0]
    kind = np.zeros(n, np.int32) if kind is None else kind
    g = pde.boundary
    if g is not None and not callable(g):
        vals = np.asarray(g, np.float64)
        if vals.shape != (n,):
            raise ValueError(f"`pde.boundary` (an array) must hold one value per boundary node "
                             f"of the grid, shape ({n},); got shape {vals.shape}.")  # fmt: skip
    else:
        vals = np.zeros(n)
        dirichlet = kind == 0
        if np.any(dirichlet):
            vals[dirichlet] = _evaluate("pde.boundary", g, pts[dirichlet])
        for (axis, side), h in (pde.neumann or {}).items():
            on = (kind == axis + 1) & (sign == (-1.0 if side == "lo" else 1.0))
            if np.any(on):
                vals[on] = _evaluate(f"pde.neumann[{(axis, side)!r}]", h, pts[on])
    if not np.all(np.isfinite(vals)):
        raise ValueError("`pde.boundary` has NaN or infinite values.")
    return vals


def _evaluate(name: str, fn: Any, pts: np.ndarray) -> np.ndarray:
    """A boundary data function (or a number) at points ``(n, d)``, checked for shape."""
    if not callable(fn):
        return np.full(pts.shape[0], float(fn))
    vals = np.asarray(_call(fn, jnp.asarray(pts, jnp.float64)), np.float64)
    if vals.shape != (pts.shape[0],):
        raise ValueError(f"`{name}` must return one value per boundary point, shape "
                         f"({pts.shape[0]},); got shape {vals.shape}.")  # fmt: skip
    return vals


def _continued(problem: GPHMProblem, init: Any, axes_np, boundary: str):
    """``problem`` started where the fit ``init`` ended, and ``init``'s kernel family."""
    if not isinstance(init, GPHMPosterior):
        raise TypeError(f"`init` must be a GPHMPosterior (a previous fit); got "
                        f"{type(init).__name__}.")  # fmt: skip
    grid = tuple(a.size for a in init.grid)
    if grid != tuple(a.size for a in axes_np) or not all(
            np.allclose(a, b) for a, b in zip(init.grid, axes_np, strict=True)):
        raise ValueError(f"`init` was fitted on a grid of shape {grid}; this fit's grid is "
                         f"{tuple(a.size for a in axes_np)} (a fit continues on its own grid).")
    if len(init.extra["stages"]) != 1:
        raise ValueError("`init` has an extra GP (extra_gp_fraction): such a fit cannot be "
                         "continued; refit with more `num_steps`.")
    if init.settings["boundary"] != boundary:
        raise ValueError(f"`init` imposed the boundary by {init.settings['boundary']!r}; this "
                         f"solver by {boundary!r}.")
    params, family = init.extra["stages"][0]
    prev = init.context["problem"]
    return dataclasses.replace(
        problem, start=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params),
        family=family,
        **({} if prev.multiplier is None else
           dict(multiplier=prev.multiplier, penalty=prev.penalty))), family  # fmt: skip


# The default F from the source: twice the frequency below which SPECTRAL_ENERGY of the
# source's (Hann-windowed, mean-removed) spectrum lies along each axis, at least
# SPECTRAL_FLOOR cycles over the axis and at most the grid's Nyquist frequency.
SPECTRAL_ENERGY = 0.999
SPECTRAL_MARGIN = 2.0
SPECTRAL_FLOOR = 2.0
DEFAULT_FREQ_SCALE = 20.0


def _spectral_scale(f: np.ndarray, axes) -> float | tuple[float, ...]:
    r"""The default :math:`F` per axis from the source on the grid: the components must start
    above the solution's frequencies, which for a linear operator are the source's, and the
    source is known before the fit. Per axis :math:`j`: the power spectrum of :math:`f` along
    :math:`j` (mean removed, Hann window against the leakage of a non-periodic signal,
    averaged over the other axes, at the mean spacing :math:`h_j`), :math:`\nu_j` the
    frequency below which ``SPECTRAL_ENERGY`` of its energy lies, and
    :math:`F_j = \min(\max(2\nu_j, 2/L_j), 1/(2h_j))` cycles per unit. A zero source (the
    solution is driven by the boundary data alone, e.g. Helmholtz) gives the reference's 20.
    """
    if not np.any(f - f.mean()):
        return DEFAULT_FREQ_SCALE
    out = []
    for j, a in enumerate(axes):
        m, length = a.size, float(a[-1] - a[0])
        h = length / (m - 1)
        g = np.moveaxis(f, j, -1).reshape(-1, m)
        g = (g - g.mean(axis=1, keepdims=True)) * np.hanning(m)
        power = np.mean(np.abs(np.fft.rfft(g, axis=1)) ** 2, axis=0)
        freqs = np.fft.rfftfreq(m, d=h)
        total = power[1:].sum()
        if total <= 0:
            out.append(SPECTRAL_FLOOR / length)
            continue
        cum = np.cumsum(power[1:]) / total
        nu = freqs[1:][np.searchsorted(cum, SPECTRAL_ENERGY)]
        out.append(float(min(max(SPECTRAL_MARGIN * nu, SPECTRAL_FLOOR / length), 0.5 / h)))
    return out[0] if len(out) == 1 else tuple(out)


def _check_data(pde: PDE, axes_np, dtype, neumann=None) -> dict | None:
    """The held-out check points and the PDE's data there (:func:`heldout_score`), or ``None``
    where ``source`` or ``boundary`` is an array (given at the grid nodes only)."""
    if not (pde.boundary is None or callable(pde.boundary)) or \
            not (pde.source is None or callable(pde.source)):  # fmt: skip
        return None
    mids = check_axes(axes_np)
    faces, pts, kinds, signs = [], [], [], []
    for j, a in enumerate(axes_np):
        for side, end in enumerate((a[:1], a[-1:])):
            face = tuple(end if i == j else m for i, m in enumerate(mids))
            faces.append(tuple(jnp.asarray(v, dtype) for v in face))
            pts.append(np.stack(np.meshgrid(*face, indexing="ij"), axis=-1).reshape(-1, len(mids)))
            on_neumann = neumann is not None and neumann[j][side]
            kinds.append(np.full(len(pts[-1]), j + 1 if on_neumann else 0, np.int32))
            signs.append(np.full(len(pts[-1]), 1.0 if side else -1.0))
    g = _boundary_values(pde, np.concatenate(pts), np.concatenate(kinds), np.concatenate(signs))
    x = jnp.stack(jnp.meshgrid(*(jnp.asarray(m, dtype) for m in mids), indexing="ij"), axis=-1)
    f = _source(pde, tuple(m.size for m in mids), x)

    f_rms = _rms(f)
    return {"axes": tuple(jnp.asarray(m, dtype) for m in mids), "source": f,
            "faces": tuple(faces), "boundary": jnp.asarray(g, dtype),
            "source_scale": f_rms if f_rms > 0 else 1.0,
            "boundary_scale": _rms(g)}  # fmt: skip


def _source(pde: PDE, shape, x: jax.Array) -> jax.Array:
    if pde.source is None:
        return jnp.zeros(shape, x.dtype)
    if callable(pde.source):
        f = jnp.asarray(_call(pde.source, x), x.dtype)
        what, bad = "`pde.source` must return f on the grid points", "returned"
    else:
        f = jnp.asarray(np.asarray(pde.source, np.float64), x.dtype)
        what, bad = "`pde.source` (an array) must hold f at the grid points", "has"
    if f.shape != shape:
        raise ValueError(f"{what}, shape {shape}; got {f.shape}.")
    if not bool(jnp.all(jnp.isfinite(f))):
        raise ValueError(f"`pde.source` {bad} NaN or infinite values on the grid.")
    return f


class _Declared(dict):
    """The derivative fields handed to a user's operator while it is checked: reading an
    undeclared multi-index, by ``[...]`` or ``.get``, raises the ``KeyError`` that
    :func:`_check_operator` turns into a message."""

    def get(self, key, default=None):
        return self[key]


def _check_operator(pde: PDE, orders, shape, x: jax.Array) -> None:
    """One evaluation where the fit starts (:math:`V = 0`: :math:`u` and every derivative
    zero), before compiling anything: the derivatives it reads, its output shape, and that it
    is finite there."""
    zero = jnp.zeros(shape, x.dtype)
    try:
        out = pde.operator(zero, _Declared({idx: zero for idx in orders}), x)
    except KeyError as e:
        raise ValueError(
            f"`pde.operator` read derivs[{e.args[0]!r}], which is not in `pde.derivatives` "
            f"{list(orders)}."
        ) from None
    if getattr(out, "shape", None) != shape:
        raise ValueError(
            f"`pde.operator` must return L[u] on the grid, shape {shape}; got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )
    if not bool(jnp.all(jnp.isfinite(out))):
        raise ValueError(
            "`pde.operator` returns NaN or infinite values at u = 0 (every derivative 0), where "
            "the fit starts: an operator undefined there (log u, 1/u, sqrt(u)) cannot be "
            "solved from it; solve for w = u - u0 with a known u0 that keeps the operator "
            "defined (put u0 in the operator, the source and the boundary data)."
        )
