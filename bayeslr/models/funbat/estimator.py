r"""The FunBaT estimator (:class:`FunBaT`) and its posterior (:class:`FunBaTPosterior`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import scipy.stats

from bayeslr._validation import as_key, check_int, check_real
from bayeslr.gp.kernels import Matern12, Matern32, Matern52
from bayeslr.infer import loop
from bayeslr.models.base import Estimator, ModelPosterior, Prepared, Stage
from bayeslr.models.funbat.algo import (
    FunBaTProblem,
    KernelLearning,
    _entry_mean_jit,
    _mode_posterior_at,
    _predict_entries,
    bucket,
    core_shape,
    entry_groups,
    fitted_kernels,
    funbat_data,
    funbat_init,
    funbat_step,
    held_out_means,
    kernel_leaf_names,
    kernel_leaves,
    padded,
    unpadded,
)
from bayeslr.models.funbat.model import funbat_model

__all__ = ["FunBaT", "FunBaTPosterior"]


LENGTHSCALE_FOLDS = 5  # folds of the held-out-coordinate check of every lengthscale
LENGTHSCALE_MAX_ENTRIES = 20_000  # entries scored per mode in that check (a random subset)
_KERNELS = {"matern12": Matern12, "matern32": Matern32, "matern52": Matern52}


def _parse_kernel(kernel: Any) -> Any:
    """A kernel object, or its name (``"matern12"``, ``"matern32"``, ``"matern52"``, any case)
    with variance 1 and lengthscale 0.1 (on the unit-scaled coordinates)."""
    if isinstance(kernel, str):
        name = kernel.lower().replace("-", "").replace("_", "").replace("/", "").replace(" ", "")
        name = {"matern1": "matern12", "matern3": "matern32", "matern5": "matern52"}.get(name, name)
        if name not in _KERNELS:
            raise ValueError(
                f"`kernel` given by name must be one of {sorted(_KERNELS)}; got {kernel!r}."
            )
        return _KERNELS[name](variance=1.0, lengthscale=0.1)
    return kernel


def _as_float(col: pd.Series) -> np.ndarray:
    """A coordinate column as float64: numbers as they are, datetimes as days since
    1970-01-01 (the unit of ``lengthscale`` in ``post.extra`` for such a column)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        if getattr(col.dt, "tz", None) is not None:
            col = col.dt.tz_convert("UTC").dt.tz_localize(None)
        days = (col - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
        return days.to_numpy(np.float64, na_value=np.nan)
    return col.to_numpy(np.float64)


def _check_frame(df, coords, value) -> tuple[list[str], str]:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"`df` must be a pandas DataFrame in long format (coordinate columns plus a value "
            f"column); got {type(df).__name__}."
        )
    if isinstance(coords, (str, bytes)) or not isinstance(coords, (Sequence, pd.Index, np.ndarray)):
        raise TypeError(
            f"`coords` must be a sequence of column names (list, tuple, pd.Index, array); got "
            f"{coords!r}."
        )
    coords = [c.item() if isinstance(c, np.generic) else c for c in coords]
    if len(coords) < 2:
        raise ValueError(
            f"`coords` must name at least 2 coordinate columns (a tensor has K >= 2 modes); "
            f"got {coords!r}."
        )
    if len(set(coords)) != len(coords):
        raise ValueError(f"`coords` must not repeat a column; got {coords!r}.")
    if not isinstance(value, str):
        raise TypeError(f"`value` must be a column name; got {value!r}.")
    if value in coords:
        raise ValueError(
            f"`value` column {value!r} is also in `coords` {coords!r}: the target would be an "
            "input (a leak); name the coordinate columns only."
        )
    for col in [*coords, value]:
        if col not in df.columns:
            raise ValueError(
                f"column {col!r} (from `coords`/`value`) is not in `df`; its columns are "
                f"{list(df.columns)}."
            )
        dt_ok = col != value and pd.api.types.is_datetime64_any_dtype(df[col])
        if not dt_ok and (
            not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])
        ):
            raise TypeError(
                f"column {col!r} must be numeric{' or datetime' if col != value else ''} "
                f"(continuous coordinates and values); got dtype {df[col].dtype}."
            )
        bad = int((~np.isfinite(_as_float(df[col]))).sum())
        if bad:
            raise ValueError(
                f"column {col!r} must be finite; got {bad} NaN/inf/NaT of {len(df)} rows (drop "
                "or impute them first)."
            )
    if len(df) < 2:
        raise ValueError(f"`df` must hold at least 2 entries; got {len(df)}.")
    return coords, value


class FunBaTPosterior(ModelPosterior):
    r"""The posterior of a FunBaT fit, bound to :func:`funbat_model`.

    ``samples`` hold draws of the model's sites: ``u_<k>`` (``(R, M_k)``: the :math:`R` latent
    functions of mode :math:`k` at its training coordinates, drawn marginally per coordinate as
    the message-passing posterior factorizes), ``W`` (Tucker) and ``tau``. :meth:`predict`
    draws ``y`` at the training entries or at new coordinates (where the functions are drawn
    from their state-space posterior there); :meth:`score` is the held-out log predictive
    density. Fast paths from the fitted Gaussian messages: :meth:`moments` (predictive mean and
    variance in closed form) and :meth:`latent` (the functions of one mode, with sd).
    """

    # ---- host-side context of the fit
    @property
    def columns(self) -> tuple[str, ...]:
        return self.context["columns"]

    @property
    def state(self):
        """The final message-passing state (:class:`~bayeslr.models.funbat.FunBaTState`)."""
        return self.context["state"]

    def _scaled(self, k, values):
        lo, span = self.context["scale"][k]
        return (np.asarray(values, np.float64) - lo) / span

    def _coordinates(self, new) -> np.ndarray:
        cols = self.columns
        if isinstance(new, pd.DataFrame):
            missing = [c for c in cols if c not in new.columns]
            if missing:
                raise ValueError(
                    f"`new` lacks the coordinate columns {missing}; it has {list(new.columns)}."
                )
            x = np.stack([_as_float(new[c]) for c in cols], axis=1)
        else:
            x = np.asarray(new, np.float64)
            if x.ndim != 2 or x.shape[1] != len(cols):
                raise ValueError(
                    f"`new` must be a DataFrame or an array (m, {len(cols)}); got shape "
                    f"{x.shape}."
                )
        if not np.all(np.isfinite(x)):
            raise ValueError("`new` coordinates must be finite; got NaN/inf.")
        return x

    def model_inputs(self, new=None, *, observed: bool = False):
        """:func:`funbat_model`'s arguments at the entries of ``new`` (a DataFrame with the
        coordinate columns, and the value column when scoring; or an ``(m, K)`` array to
        predict): every mode's grid is the training coordinates merged with the new ones."""
        if new is None:
            if observed:
                raise TypeError("`score` needs test entries (a DataFrame with the value column).")
            return (self.args[0], self.args[1], None), self.kwargs
        x = self._coordinates(new)
        y = None
        if observed:
            value = self.context["value"]
            if not isinstance(new, pd.DataFrame) or value not in new.columns:
                raise ValueError(f"`score` needs a DataFrame with the value column {value!r}.")
            y = new[value].to_numpy(np.float64)
            if not np.all(np.isfinite(y)):
                raise ValueError(f"column {value!r} of the test data must be finite.")
        ticks, idx = [], []
        dtype = self.args[1][0].dtype
        for k, train in enumerate(self.context["ticks"]):
            grid = np.union1d(train, self._scaled(k, x[:, k]))
            ticks.append(jnp.asarray(grid, dtype))
            idx.append(np.searchsorted(grid, self._scaled(k, x[:, k])))
        args = (jnp.asarray(np.stack(idx, axis=1), jnp.int32), tuple(ticks),
                None if y is None else jnp.asarray(y, dtype))  # fmt: skip
        return args, self.kwargs

    def draws_at(self, args, kwargs):
        """Draws of ``u_<k>`` on the merged grids of ``args``: the stored draws at training
        coordinates, fresh marginal draws from the state-space posterior at new ones."""
        ticks = args[1]
        if all(t is s for t, s in zip(ticks, self.args[1], strict=True)):
            return self.samples
        out = dict(self.samples)
        S = self.num_chains * self.num_draws
        key = self.context["draw_key"]
        for k, grid in enumerate(ticks):
            grid = np.asarray(grid)
            train = np.asarray(self.context["ticks"][k])
            at_train = np.searchsorted(grid, train.astype(grid.dtype))  # the grid's dtype
            fresh = np.setdiff1d(np.arange(grid.size), at_train)
            stored = np.asarray(self.samples[f"u_{k}"])  # (C, D, R, M_k)
            R = stored.shape[2]
            u = np.zeros(stored.shape[:3] + (grid.size,), stored.dtype)
            u[..., at_train] = stored
            if fresh.size:
                mean, cov = _mode_posterior_at(
                    self.context["kernels"][k], train, self.state.lam[k], self.state.eta[k],
                    grid[fresh], self.context["parallel"],
                )  # fmt: skip
                z = _host_rng(jax.random.fold_in(key, k)).standard_normal((S, fresh.size, R))
                d = (mean + np.einsum("mij,smj->smi", _psd_root(cov), z)).astype(mean.dtype)
                u[..., fresh] = np.swapaxes(d, -1, -2).reshape(
                    stored.shape[:2] + (R, fresh.size))  # fmt: skip
            out[f"u_{k}"] = u
        return out

    # ---- fast paths
    def latent(self, column: str, values: Any = None) -> dict[str, np.ndarray]:
        r"""Posterior mean and sd of the :math:`R` latent functions of one mode.

        Args:
            column: the coordinate column (mode).
            values: a scalar or 1-D sequence of coordinates (original units; datetimes for a
                datetime column) to evaluate at; default the training ticks. Any values:
                between the ticks (state-space interpolation), before or after them
                (extrapolation to the prior).

        Returns:
            ``{"coord": (m,), "mean": (m, R), "sd": (m, R)}`` (``coord`` in the fit's float
            units: days since 1970-01-01 for a datetime column). The scale of each
            :math:`u^k_r` is not identified (it trades off against the core and the other
            modes); the product that :meth:`moments` returns is.
        """
        if column not in self.columns:
            raise ValueError(f"`column` must be one of {list(self.columns)}; got {column!r}.")
        k = self.columns.index(column)
        lo, span = self.context["scale"][k]
        ticks = self.context["ticks"][k]
        if values is None:
            vals = ticks * span + lo
        else:
            raw = np.asarray(values)
            if raw.ndim > 1:
                raise ValueError(
                    f"`values` must be a scalar or 1-D (coordinates of the one mode {column!r}); "
                    f"got shape {raw.shape}."
                )
            raw = np.atleast_1d(raw)
            if np.issubdtype(raw.dtype, np.datetime64) or raw.dtype == object:
                vals = _as_float(pd.Series(pd.to_datetime(raw)))
            else:
                vals = raw.astype(np.float64)
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"`values` must be finite; got {vals!r}.")
        mean, cov = _mode_posterior_at(
            self.context["kernels"][k], ticks, self.state.lam[k], self.state.eta[k],
            self._scaled(k, vals), self.context["parallel"],
        )  # fmt: skip
        sd = np.sqrt(np.maximum(np.diagonal(np.asarray(cov), axis1=1, axis2=2), 0.0))
        return {"coord": vals, "mean": np.asarray(mean), "sd": sd}

    def moments(self, new: Any, *, noise: bool = True,
                interval: float | None = None) -> pd.DataFrame:  # fmt: skip
        r"""Predictive mean and variance of entries at (possibly unseen) coordinates, in closed
        form from the fitted messages:

        .. math::
            E[y_*] = \bar w^\top(\otimes_k\mu^k_*), \quad \operatorname{var}[y_*] =
            \operatorname{tr}((\Sigma_W + \bar w\bar w^\top)\otimes_k E[u^k_*u^{k\top}_*]) -
            E[y_*]^2 + 1/E[\tau],

        in the units of the value column. Any coordinates: between and beyond the training
        ones of any mode, or of all modes at once. Compiled once per size bucket (the query is
        padded to a power of two, at least 64).

        Args:
            new: a DataFrame with the coordinate columns (others are ignored), or an array
                ``(m, K)`` in the order of ``coords`` at the fit.
            noise: include the observation noise :math:`1/E[\tau]` (the predictive of a new
                measurement) or not (the variance of the latent value :math:`f_*`).
            interval: a probability such as ``0.95``: add columns ``lower`` and ``upper``,
                the central interval of a normal with these moments.

        Returns:
            DataFrame with columns ``mean``, ``variance`` and ``sd`` (and ``lower``,
            ``upper``), index of ``new``.
        """
        if not isinstance(noise, bool):
            raise TypeError(f"`noise` must be a bool; got {noise!r}.")
        if interval is not None:
            interval = check_real("interval", interval, low=0, high=1, low_open=True,
                                  high_open=True)  # fmt: skip
        x = self._coordinates(new)
        index = new.index if isinstance(new, pd.DataFrame) else None
        n = x.shape[0]
        pad = bucket(n) - n  # padded with the first entry: one compiled step per bucket
        mus, covs = [], []
        for k in range(len(self.columns)):
            uniq, inv = np.unique(self._scaled(k, x[:, k]), return_inverse=True)
            m, c = _mode_posterior_at(
                self.context["kernels"][k], self.context["ticks"][k], self.state.lam[k],
                self.state.eta[k], uniq, self.context["parallel"],
            )  # fmt: skip
            inv = np.concatenate([inv.reshape(-1), np.zeros(pad, inv.dtype)])
            mus.append(m[inv])
            covs.append(c[inv])
        s = self.state
        mean, var = _predict_entries(mus, covs, s.core_mean, s.core_cov, s.tau_a / s.tau_b,
                                     self.context["cp"])  # fmt: skip
        y_mean, y_sd = self.context["y_mean"], self.context["y_sd"]
        mean = np.asarray(mean)[:n] * y_sd + y_mean
        var = np.asarray(var)[:n]
        if not noise:  # the latent part was clipped at 0 before the noise was added
            var = np.maximum(var - float(s.tau_b / s.tau_a), 0.0)
        var = var * y_sd**2
        out = pd.DataFrame({"mean": mean, "variance": var, "sd": np.sqrt(var)}, index=index)
        if interval is not None:
            z = float(scipy.stats.norm.ppf(0.5 + interval / 2))
            out["lower"], out["upper"] = mean - z * out["sd"], mean + z * out["sd"]
        return out


class FunBaT(Estimator):
    r"""Functional Bayesian Tucker decomposition (module docstring), fitted by message passing.

    Example::

        from bayeslr.datasets import load_ozone, split_entries
        from bayeslr.models import FunBaT

        df = load_ozone().to_long()      # columns lat, lon, month, value
        df = df[df["month"] < 6].sample(1500, random_state=0)
        train, test = split_entries(df, test_frac=0.2, seed=0)
        post = FunBaT(rank=3).fit(train, coords=["lat", "lon", "month"], value="value")
        post.moments(test.head())        # predictive mean, variance, sd (closed form)
        post.predict(test.head())["y"]   # posterior predictive draws, (draws, 5)
        post.latent("month")             # the 3 latent functions of time, with sd
        post.score(test)                 # held-out log predictive density
        post.to_arviz()                  # u_0.., W, tau; log_likelihood of y for az.loo

    Args:
        rank: :math:`R`, the same in every mode, or ``"auto"``: chosen on a validation split
            of the training entries (a fraction ``validation``, at random, or the entries at
            whole coordinates of the column ``validate_on``): the candidates
            ``rank_candidates`` are fitted in increasing order on the rest, growing while the
            validation RMSE improves by at least 1 %; the best one then continues on all
            training entries from its state (``post.extra["rank_scores"]`` holds the
            validation RMSE of each rank tried, in data units). Candidates with a Tucker core
            of more than ``max_core`` elements (:math:`R^K`) are skipped. Or, for Tucker, one
            rank per mode :math:`(R_1, \dots, R_K)` (core :math:`R_1\times\dots\times R_K`;
            e.g. a low rank on a mode you will extrapolate in). A mode never gets more
            components than it has unique coordinates (the core holds the rest);
            ``post.extra["mode_ranks"]`` reports the ranks fitted.
        kernel: kernel of the latent functions (exact SDE: Matérn 1/2, 3/2, 5/2, ...), one for
            every mode or a sequence with one per mode; lengthscales refer to the scaled
            coordinates (see ``scale``). Default Matérn 3/2 with variance 1 and lengthscale 0.1.
        cp: FunBaT-CP (fixed superdiagonal core) instead of Tucker.
        epochs: message-passing epochs (the paper runs a fixed number: 100–200).
        damping_u, damping_core, damping_noise: weight of the old message
            (:math:`\rho_U, \rho_W, \rho_\tau`; the paper's PM2.5 setting 0.5, 0.9, 0.6).
        a0, b0: Gamma prior of the noise precision :math:`\tau`.
        scale: ``"unit"`` maps each mode's coordinates to [0, 1] by the training min and max
            (new coordinates use the same map, so they may fall outside [0, 1]); ``None``
            keeps them.
        standardize: z-score the values (predictions are returned in the original units).
        decimals: round coordinates before finding unique ones (``None``: exact).
        num_samples: posterior draws stored (of ``u_<k>``, ``W`` and ``tau``).
        seed: seed of the initialization and the draws.
        progress_bar: show a tqdm bar over epochs.
        restarts: random starts (:math:`\mu, \bar w \sim U(0, 1)`), each run for
            ``screen_epochs``; the one with the lowest training error continues to ``epochs``.
            Message passing can settle in a poor fixed point from an unlucky start (on NCEP air
            temperature, one split in three stalled at twice the usual training error with a
            single start); it shows within a few epochs.
        screen_epochs: epochs per start before choosing.
        tol: stop before ``epochs`` when the training RMSE has settled: its relative spread
            :math:`(\max - \min)/\min` over the last ``window`` epochs falls to ``tol`` or
            below (0: always run ``epochs``). ``converged`` and ``epochs_run`` in
            ``post.extra`` report it.
        window: epochs of that spread (at least 2).
        noise_warmup: epochs at the start of each fit in which the noise is held at a tenth of
            the values' variance before it is estimated. From a random start the first fit
            explains little; a noise estimated from it weakens every message, and on sparse
            data the message passing stays there (ozone with 8 % of the cells observed: test
            RMSE 8.76 without warm-up, the training RMSE stuck at 8.5 for 100 epochs; 4.19
            with it). 0 estimates the noise from the first epoch.
        learn_kernel: learn every mode's kernel hyperparameters but its variance (lengthscale,
            period, ...) by type-II MAP on the mode's Kalman evidence between epochs
            (:class:`~bayeslr.models.funbat.KernelLearning`); ``kernel`` is then the starting
            point and the centre of a log-normal prior. The variances stay where ``kernel``
            sets them (1 by default): the scale of :math:`W \times_k u^k` trades off against
            the core and the other modes, so a learned variance is not identified and inflates
            the predictive variance at unseen coordinates; with unit-variance functions the
            scale lives in the core and the noise, and far from the data the band tends to the
            spread of the fitted signal. ``False`` keeps ``kernel`` fixed; a sequence of names
            learns exactly those (``("variance", "lengthscale")`` learns both).
        kernel_steps, kernel_lr: Adam steps per epoch and step size (log scale).
        kernel_start: first epoch that learns (the messages of a random start settle first).
        kernel_max_sites: a mode with more unique coordinates than this (irregular data)
            learns its kernel on the exact evidence of every :math:`s`-th coordinate's sites,
            :math:`s = \lceil M_k / \text{kernel\_max\_sites}\rceil` (the evidence's gradient
            is a sequential Kalman scan: seconds per epoch at :math:`10^4` coordinates).
        kernel_prior_scale: sd of the log-normal prior on each hyperparameter (log scale).
        rank_candidates, validation, max_core: the choice of ``rank="auto"`` (above).
        validate_on: ``None`` (default): ``rank="auto"`` validates on random entries, the
            question "what is the value at a coordinate combination not observed". A
            coordinate column (``"month"``): it holds out whole interior coordinates of that
            column instead (a fraction ``validation`` of them), the question "what happens at
            a month not in the data". The two can disagree: a high rank fits fine detail that
            helps the first and hurts the second (on ozone, R = 8 is best on random entries and
            R = 3 on held-out months). With irregular coordinates (every entry its own) the two
            splits nearly coincide.
        lengthscale_factors: with ``rank="auto"``, after the rank is chosen, every mode whose
            lengthscale is learned checks it on held-out coordinates: its interior coordinates
            are split into 5 folds, each fold's data dropped in turn and predicted by the mode's
            smoother from the rest, with the learned lengthscale times each factor, and the
            first factor within 1 % of the best RMSE is taken
            (``post.extra["lengthscale_scores"]``: column -> factor -> RMSE). The evidence only
            sees the coordinates that hold data and can settle on a lengthscale too short to
            carry the functions across a missing one (NCEP air temperature every 6 hours). The
            fit then continues on the validation split with the longer lengthscales held fixed,
            and keeps them for the fit on all entries only if the validation RMSE is not worse
            by more than 1 % (a longer lengthscale can smooth away detail that the entries at
            observed coordinates need: ozone's months): ``post.extra["lengthscale_check"]``
            holds the factors, the validation RMSE before and after, and whether they were
            kept. The first factor must be 1 (the learned value); ``(1.0,)`` turns the check
            off.
        parallel: run the per-mode smoothers as associative scans (:math:`O(\log M_k)` depth;
            worth it on accelerators with many unique coordinates).

    Duplicate entries (the same coordinates more than once) are kept as separate observations.
    """

    model_fn = staticmethod(funbat_model)
    name = "FunBaT"

    def __init__(
        self,
        rank: int | str = "auto",
        kernel: Any = None,
        *,
        cp: bool = False,
        epochs: int = 100,
        damping_u: float = 0.5,
        damping_core: float = 0.9,
        damping_noise: float = 0.6,
        a0: float = 1.0,
        b0: float = 1.0,
        scale: str | None = "unit",
        standardize: bool = True,
        decimals: int | None = None,
        num_samples: int = 200,
        seed: int = 0,
        progress_bar: bool = True,
        restarts: int = 3,
        screen_epochs: int = 10,
        tol: float = 1e-3,
        window: int = 5,
        parallel: bool = False,
        learn_kernel: bool | Sequence[str] = True,
        kernel_steps: int = 5,
        kernel_lr: float = 0.05,
        kernel_start: int = 3,
        kernel_max_sites: int = 1024,
        kernel_prior_scale: float = 1.5,
        rank_candidates: Sequence[int] = (3, 5, 8),
        validation: float = 0.1,
        max_core: int = 1024,
        validate_on: str | None = None,
        noise_warmup: int = 3,
        lengthscale_factors: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    ):
        self.rank = _check_rank(rank, cp)
        self.rank_candidates = _check_candidates(rank_candidates)
        self.validation = check_real("validation", validation, low=0, high=0.5, low_open=True,
                                     high_open=True)  # fmt: skip
        self.validate_on = _check_validate_on(validate_on, self.rank)
        self.lengthscale_factors = _check_factors(lengthscale_factors)
        self.max_core = check_int("max_core", max_core, minimum=1)
        self.epochs = check_int("epochs", epochs, minimum=1)
        super().__init__(seed=seed, progress_bar=progress_bar)
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.restarts = check_int("restarts", restarts, minimum=1)
        self.screen_epochs = check_int("screen_epochs", screen_epochs, minimum=1)
        self.tol = check_real("tol", tol, low=0)
        self.window = check_int("window", window, minimum=2)
        self.noise_warmup = check_int("noise_warmup", noise_warmup, minimum=0)
        self.kernel_steps = check_int("kernel_steps", kernel_steps, minimum=1)
        self.kernel_start = check_int("kernel_start", kernel_start, minimum=0)
        self.kernel_max_sites = check_int("kernel_max_sites", kernel_max_sites, minimum=2)
        self.kernel_lr = check_real("kernel_lr", kernel_lr, low=0, low_open=True)
        self.kernel_prior_scale = check_real("kernel_prior_scale", kernel_prior_scale, low=0,
                                             low_open=True)  # fmt: skip
        self.damping = tuple(check_real(n, v, low=0, high=1, high_open=True) for n, v in (
            ("damping_u", damping_u), ("damping_core", damping_core),
            ("damping_noise", damping_noise)))  # fmt: skip
        self.a0, self.b0 = (check_real(n, v, low=0, low_open=True) for n, v in (("a0", a0),
                                                                                ("b0", b0)))
        if scale not in ("unit", None):
            raise ValueError(f"`scale` must be 'unit' or None; got {scale!r}.")
        flags = (("cp", cp), ("standardize", standardize), ("parallel", parallel))
        for name, v in flags:
            if not isinstance(v, bool):
                raise TypeError(f"`{name}` must be a bool; got {v!r}.")
        if decimals is not None:
            check_int("decimals", decimals, minimum=0)
        self.kernel = Matern32(variance=1.0, lengthscale=0.1) if kernel is None else kernel
        self.cp = cp
        self.scale = scale
        self.standardize = standardize
        self.decimals = decimals
        self.parallel = parallel
        self.learn_kernel = _check_learn_kernel(learn_kernel)

    def _kernels(self, K: int) -> tuple[Any, ...]:
        ks = self.kernel
        if isinstance(ks, Sequence) and not isinstance(ks, str):
            if len(ks) != K:
                raise ValueError(
                    f"`kernel` must be one kernel or one per mode ({K} here); got {len(ks)}."
                )
            ks = tuple(_parse_kernel(k) for k in ks)
        else:
            ks = (_parse_kernel(ks),) * K
        for i, k in enumerate(ks):
            where = "" if len(set(map(id, ks))) == 1 else f"[{i}]"
            if not hasattr(k, "sde"):
                raise TypeError(
                    f"`kernel`{where} must have an exact state-space form (a `sde()` method, e.g. "
                    f"Matern32) or be one of {sorted(_KERNELS)}; got {type(k).__name__}."
                )
            if self.learn_kernel:
                leaves = np.asarray(kernel_leaves(k), np.float64)
                if not np.all(leaves > 0):
                    raise ValueError(
                        f"`kernel`{where} has hyperparameters {leaves.tolist()}; learning them "
                        "(learn_kernel=True) needs all positive (they are learned on the log "
                        "scale). Pass learn_kernel=False to keep them fixed."
                    )
        if self.learn_kernel and self.learn_kernel is not True:
            # per-mode kernels may differ: a name must belong to at least one of them
            names = {n for k in ks for n in kernel_leaf_names(k)}
            unknown = set(self.learn_kernel) - names
            if unknown:
                which = ("`kernel` does not have" if len(set(map(id, ks))) == 1
                         else "no mode's `kernel` has")  # fmt: skip
                raise ValueError(
                    f"`learn_kernel` names {sorted(unknown)}, which {which}; "
                    f"its hyperparameters are {sorted(names)}."
                )
        return ks

    def prepare(self, df: pd.DataFrame, coords: Sequence[str], value: str) -> Prepared:
        r"""Validate a long-format table of a continuous-indexed tensor.

        Args:
            df: one row per observed entry.
            coords: the :math:`K \ge 2` coordinate columns (numeric, finite); each needs at
                least 2 distinct values.
            value: the value column (numeric, finite).

        Raises:
            TypeError, ValueError: naming the column or argument.
        """
        coords, value = _check_frame(df, coords, value)
        K = len(coords)
        if self.validate_on is not None and self.validate_on not in coords:
            raise ValueError(f"`validate_on` must be one of the coordinate columns {list(coords)}"
                             f"; got {self.validate_on!r}.")  # fmt: skip
        kernels = self._kernels(K)
        raw = np.stack([_as_float(df[c]) for c in coords], axis=1)
        if self.decimals is not None:
            raw = np.round(raw, self.decimals)
        scale = []
        for k, col in enumerate(coords):
            lo, hi = float(raw[:, k].min()), float(raw[:, k].max())
            if hi <= lo:
                raise ValueError(
                    f"column {col!r} has a single distinct coordinate ({lo:g}); a mode needs at "
                    "least 2 to carry a function."
                )
            scale.append((lo, hi - lo) if self.scale == "unit" else (0.0, 1.0))
        x = np.stack([(raw[:, k] - lo) / span for k, (lo, span) in enumerate(scale)], axis=1)
        y = df[value].to_numpy(np.float64)
        y_mean = float(y.mean()) if self.standardize else 0.0
        y_sd = float(y.std()) if self.standardize else 1.0
        if y_sd <= 0:
            raise ValueError(f"column {value!r} is constant; there is nothing to decompose.")
        data = funbat_data(x, (y - y_mean) / y_sd)
        dtype = jnp.result_type(float)
        ranks = self._ranks([t.size for t in data.ticks])
        idx, y_pad, weight, ticks = padded(data)  # bucket sizes: similar fits share compiles
        problem = FunBaTProblem(
            idx=jnp.asarray(idx), y=jnp.asarray(y_pad, dtype),
            ticks=tuple(jnp.asarray(t, dtype) for t in ticks), kernels=kernels,
            counts=tuple(jnp.asarray(np.bincount(data.idx[:, k], minlength=t.size))
                         for k, t in enumerate(ticks)),
            damping=jnp.asarray(self.damping, dtype), a0=jnp.asarray(self.a0, dtype),
            b0=jnp.asarray(self.b0, dtype), y_scale=jnp.asarray(y_sd, dtype),
            learning=self._learning(kernels, dtype),
            rank=self._mode_ranks(ranks[0], [t.size for t in data.ticks]), cp=self.cp,
            parallel=self.parallel, window=self.window, weight=jnp.asarray(weight, dtype),
            warmup=self.noise_warmup,
            groups=None if self.cp else tuple(
                entry_groups(idx, [t.size for t in ticks], first=k) for k in range(K)),
        )  # fmt: skip
        context = {"columns": tuple(coords), "value": value, "y": y, "ticks": data.ticks,
                   "idx": data.idx,
                   "scale": tuple(scale), "y_mean": y_mean, "y_sd": y_sd, "kernels": kernels,
                   "cp": self.cp, "parallel": self.parallel, "ranks": ranks}  # fmt: skip
        if len(ranks) > 1:
            context["selection"] = self._validation_split(problem, data, coords)
        return Prepared(problem, context)

    def _learning(self, kernels, dtype) -> KernelLearning | None:
        if not self.learn_kernel:
            return None
        return KernelLearning(
            lr=jnp.asarray(self.kernel_lr, dtype),
            prior_loc=tuple(jnp.log(kernel_leaves(k)).astype(dtype) for k in kernels),
            prior_scale=jnp.asarray(self.kernel_prior_scale, dtype),
            mask=tuple(jnp.asarray([self._learns(n) for n in kernel_leaf_names(k)], dtype)
                       for k in kernels),
            steps=self.kernel_steps, start=self.kernel_start, max_sites=self.kernel_max_sites,
        )  # fmt: skip

    def _learns(self, name: str) -> bool:
        """Whether the hyperparameter ``name`` is learned: ``learn_kernel=True`` learns all but
        the variances (the latent functions keep unit prior variance, so the scale of the
        decomposition lives in the core and the noise: identified, and calibrated at unseen
        coordinates); a sequence learns exactly the names in it."""
        if self.learn_kernel is True:
            return name != "variance"
        return bool(self.learn_kernel) and name in self.learn_kernel

    def _mode_ranks(self, rank, sizes):
        """The problem's rank of a candidate: CP one int; Tucker per mode, each at most the
        mode's number of coordinates (a rank above it adds nothing the core cannot hold)."""
        if self.cp:
            return rank
        return tuple(min(r, m) for r, m in zip(core_shape(rank, len(sizes)), sizes, strict=True))

    def _ranks(self, sizes) -> tuple:
        """The ranks to fit: ``(rank,)``, or the candidates of ``rank="auto"`` whose Tucker core
        fits ``max_core``."""
        K = len(sizes)
        if isinstance(self.rank, tuple) and len(self.rank) != K:
            raise ValueError(f"`rank` per mode must have {K} entries (one per coordinate "
                             f"column); got {self.rank!r}.")  # fmt: skip
        if self.rank != "auto":
            return (self.rank,)
        ranks = tuple(r for r in self.rank_candidates
                      if self.cp or math.prod(self._mode_ranks(r, sizes)) <= self.max_core)
        if not ranks:
            raise ValueError(
                f"rank='auto': every candidate in rank_candidates={self.rank_candidates} has a "
                f"Tucker core R^{K} over max_core={self.max_core}; lower the candidates, raise "
                "`max_core`, or pass cp=True."
            )
        return ranks

    def _validation_split(self, problem: FunBaTProblem, data, coords) -> dict[str, Any]:
        """The problem with a validation set carved out: its entries get weight 0 (they send no
        messages), so the coordinates, every array's shape and the compiled step are those of
        the fit on all entries that follows. A random fraction ``validation`` of the entries,
        or with ``validate_on`` every entry at a random fraction of that column's interior
        coordinates (the first and last stay, so validation interpolates as at unseen
        coordinates: their functions there come from the smoother alone)."""
        n = data.y.shape[0]
        seed = np.asarray(jax.random.key_data(as_key(self.seed))).ravel()
        rng = np.random.default_rng(seed.astype(np.uint64))
        if self.validate_on is None:
            perm = rng.permutation(n)
            n_val = max(1, round(self.validation * n))
            val, fit = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        else:
            k = list(coords).index(self.validate_on)
            inner = np.unique(data.idx[:, k])[1:-1]
            if inner.size < 1:
                raise ValueError(
                    f"`validate_on`={self.validate_on!r} needs at least 3 distinct coordinates "
                    f"in that column to hold interior ones out; got {inner.size + 2}."
                )
            hold = rng.choice(inner, min(inner.size, max(1, round(self.validation * (
                inner.size + 2)))), replace=False)  # fmt: skip
            mask = np.isin(data.idx[:, k], hold)
            val, fit = np.flatnonzero(mask), np.flatnonzero(~mask)
        counts = tuple(jnp.asarray(np.bincount(data.idx[fit, k], minlength=t.shape[0]))
                       for k, t in enumerate(problem.ticks))  # fmt: skip
        weight = np.zeros(problem.y.shape[0])  # the padding entries keep weight 0
        weight[fit] = 1.0
        sub = dataclasses.replace(
            problem, counts=counts, weight=jnp.asarray(weight, problem.y.dtype)
        )
        return {"problem": sub, "idx": data.idx[val], "y": np.asarray(data.y)[val]}

    def stages(self, prepared: Prepared):
        ctx = prepared.context
        ranks = ctx["ranks"]
        sizes = [t.size for t in ctx["ticks"]]
        ctx["rank"] = ranks[0]
        if len(ranks) == 1:
            yield self._stage("", prepared.problem, funbat_init, self.restarts)
            ctx["rank_scores"] = {}
            return
        sel = ctx["selection"]
        scores, states, prev = {}, {}, None
        for r in ranks:
            res = yield self._stage(
                f"rank {r}", dataclasses.replace(sel["problem"], rank=self._mode_ranks(r, sizes)),
                funbat_init, self.restarts,
            )  # fmt: skip
            scores[r], states[r] = self._validation_rmse(res.state.ep, sel, ctx), res.state
            if prev is not None and scores[r] > 0.99 * scores[prev]:
                break  # the step up gained less than 1 %
            prev = r
        ctx["rank_scores"] = scores
        best = _first_within(scores)
        ctx["rank"] = best
        problem = dataclasses.replace(prepared.problem, rank=self._mode_ranks(best, sizes))
        state = states[best]
        sub = dataclasses.replace(sel["problem"], rank=problem.rank)
        factors = self._choose_lengthscales(sub, state, ctx)
        if any(f != 1.0 for f in factors):
            # the longer lengthscales continue on the validation split, held fixed, and are
            # kept only if the validation entries do not lose more than 1 % by them
            held, learning = self._hold_lengthscales(sub, state, factors)
            start = held._replace(mse=jnp.full_like(held.mse, jnp.inf))
            res = yield self._stage(
                "lengthscales " + ", ".join(f"{c} x{f:g}" for c, f in zip(
                    ctx["columns"], factors, strict=True) if f != 1.0),
                dataclasses.replace(sub, learning=learning),
                lambda key, problem, restart=0: start, 1,
                # it starts from a settled state: a quarter of the budget re-settles it
                epochs=min(self.epochs, max(self._min_epochs(), self.epochs // 4)),
            )  # fmt: skip
            score = self._validation_rmse(res.state.ep, sel, ctx)
            kept = score <= 1.01 * scores[best]
            ctx["lengthscale_check"] = {
                "factors": dict(zip(ctx["columns"], factors, strict=True)),
                "validation_rmse": (scores[best], score), "kept": kept,
            }  # fmt: skip
            if kept:
                state, problem = res.state, dataclasses.replace(problem, learning=learning)
        start = state._replace(mse=jnp.full_like(state.mse, jnp.inf))
        yield self._stage(
            f"rank {best}, all entries", problem, lambda key, problem, restart=0: start, 1,
        )  # fmt: skip

    def _stretchable(self, kernel) -> np.ndarray:
        """0/1 over the kernel's leaves: the learned lengthscales (what the held-out check
        stretches); all zero when none is learned."""
        names = kernel_leaf_names(kernel)
        return np.asarray([n == "lengthscale" and self._learns(n) for n in names], float)

    def _choose_lengthscales(self, problem, fit, ctx) -> tuple[float, ...]:
        r"""Per mode, the factor on its learned lengthscale, chosen on held-out coordinates.

        The Kalman evidence of a mode's sites learns a lengthscale for the coordinates that
        hold data, and nothing in it asks how the functions behave between them: where a
        column is densely sampled and carries short-range detail (NCEP air temperature every
        6 hours) it settles on a lengthscale that follows the detail, and the functions fall
        back towards the prior mean within a step or two of the data. So, on the state just
        fitted, each mode's interior coordinates are split into ``LENGTHSCALE_FOLDS`` folds;
        every fold's sites are dropped in turn and the mode's smoother predicts its functions
        there from the rest (:func:`~bayeslr.models.funbat.algo.held_out_means`), with the
        learned :math:`\ell` times each of ``lengthscale_factors``; the entries at those
        coordinates (the fitted ones, at most ``LENGTHSCALE_MAX_ENTRIES``) are predicted with
        the other modes and the core as fitted, and the first factor whose RMSE is within 1 %
        of the best is taken (``post.extra["lengthscale_scores"]``: column -> factor -> RMSE
        in data units). No refit: one smoother per fold and factor; :meth:`stages` then checks
        the factors on the validation split.
        """
        K = len(ctx["columns"])
        factors, scores = [1.0] * K, {}
        if problem.learning is None or len(self.lengthscale_factors) < 2:
            ctx["lengthscale_scores"] = scores
            return tuple(factors)
        ep = fit.ep
        kernels = fitted_kernels(problem, fit)
        idx = np.asarray(problem.idx)
        w = np.ones(idx.shape[0]) if problem.weight is None else np.asarray(problem.weight)
        y = np.asarray(problem.y)
        seed = np.asarray(jax.random.key_data(as_key(self.seed))).ravel()
        rng = np.random.default_rng(np.append(seed, 11).astype(np.uint64))
        log_f = jnp.log(jnp.asarray(self.lengthscale_factors, y.dtype))
        for k, col in enumerate(ctx["columns"]):
            stretched = self._stretchable(kernels[k])
            inner = np.arange(1, ctx["ticks"][k].size - 1)
            if not stretched.any() or inner.size < 2 * LENGTHSCALE_FOLDS:
                continue
            fold = np.full(problem.ticks[k].shape[0], -1)
            fold[inner] = rng.permutation(inner.size) % LENGTHSCALE_FOLDS
            means = held_out_means(
                kernels[k], log_f, jnp.asarray(stretched, y.dtype), problem.ticks[k],
                ep.lam[k], ep.eta[k], jnp.asarray(fold), LENGTHSCALE_FOLDS, self.parallel,
            )  # fmt: skip
            rows = np.flatnonzero((w > 0) & (fold[idx[:, k]] >= 0))
            if rows.size == 0:  # every entry at an interior coordinate is held for validation
                continue
            if rows.size > LENGTHSCALE_MAX_ENTRIES:
                rows = np.sort(rng.choice(rows, LENGTHSCALE_MAX_ENTRIES, replace=False))
            n = rows.size
            sel = np.concatenate([rows, np.full(bucket(n) - n, rows[0])])  # one compile/bucket
            mus = [ep.mu[j][idx[sel, j]] for j in range(K)]
            scores[col] = {}
            for i, f in enumerate(self.lengthscale_factors):
                mus[k] = means[i][idx[sel, k]]
                pred = np.asarray(_entry_mean_jit(mus, ep.core_mean, ctx["cp"]))[:n]
                rmse = np.sqrt(np.mean((pred - y[rows]) ** 2)) * ctx["y_sd"]
                scores[col][f] = float(rmse)
            factors[k] = _first_within(scores[col])
        ctx["lengthscale_scores"] = scores
        return tuple(factors)

    def _hold_lengthscales(self, problem, fit, factors):
        """The fit state with each mode's learned lengthscales multiplied by its factor, and
        the kernel learning with those held fixed (their gradient masked; the mode's Adam
        state restarted, so no momentum moves them)."""
        learning = problem.learning
        theta, opt, masks = list(fit.log_theta), list(fit.opt), list(learning.mask)
        for k, f in enumerate(factors):
            if f == 1.0:
                continue
            on = jnp.asarray(self._stretchable(problem.kernels[k]), theta[k].dtype)
            theta[k] = theta[k] + math.log(f) * on
            masks[k] = masks[k] * (1.0 - on)
            opt[k] = optax.adam(1.0).init(theta[k])
        fixed = dataclasses.replace(learning, mask=tuple(masks))
        return fit._replace(log_theta=tuple(theta), opt=tuple(opt)), fixed

    def _min_epochs(self) -> int:
        """Epochs before the stopping rule may fire (warm-ups, then a full window)."""
        return max(self.window + (self.kernel_start if self.learn_kernel else 0),
                   self.noise_warmup + self.window)  # fmt: skip

    def _stage(self, name, problem, init, restarts, epochs=None) -> Stage:
        epochs = self.epochs if epochs is None else epochs
        screen = min(self.screen_epochs, epochs)
        rs = None
        if restarts > 1:
            rs = loop.Restarts(restarts, "train_rmse", screen_steps=screen, vmap=False)
        return Stage(
            name, init, funbat_step, problem, epochs,
            stop=loop.Tolerance("rmse_change", self.tol, min_steps=self._min_epochs())
            if self.tol > 0 else None,
            restarts=rs, progress_fields=("train_rmse",), guard=("train_rmse",),
            hint="Raise the damping or check the kernel lengthscales.",
            key=as_key(self.seed),
        )  # fmt: skip

    @staticmethod
    def _validation_rmse(ep, sel, ctx) -> float:
        """RMSE (data units) of the posterior mean at the held-out validation entries."""
        idx = sel["idx"]
        mus = [ep.mu[k][idx[:, k]] for k in range(idx.shape[1])]
        covs = [ep.cov[k][idx[:, k]] for k in range(idx.shape[1])]
        mean, _ = _predict_entries(mus, covs, ep.core_mean, ep.core_cov, ep.tau_a / ep.tau_b,
                                   ctx["cp"])  # fmt: skip
        return float(np.sqrt(np.mean((np.asarray(mean) - sel["y"]) ** 2)) * ctx["y_sd"])

    def posterior(self, results, prepared: Prepared) -> FunBaTPosterior:
        res = results[-1]
        ranks = tuple(m.shape[1] for m in res.state.ep.mu)
        rank = ranks[0] if len(set(ranks)) == 1 else ranks
        problem = dataclasses.replace(prepared.problem, rank=rank)
        kernels = fitted_kernels(problem, res.state)
        ctx = {**prepared.context, "kernels": kernels}
        state = unpadded(res.state.ep, [t.size for t in ctx["ticks"]])
        key = ctx["posterior_key"]
        samples, dims, coords = self._draws(key, state, ctx)
        kwargs = dict(rank=rank, kernel=kernels, cp=self.cp, a0=self.a0, b0=self.b0,
                      y_loc=ctx["y_mean"], y_scale=ctx["y_sd"])  # fmt: skip
        y = jnp.asarray(ctx["y"], problem.y.dtype)
        ticks = tuple(jnp.asarray(t, problem.y.dtype) for t in ctx["ticks"])
        screened = np.asarray(res.restart_scores) if res.restart_scores is not None else \
            np.zeros(0)  # fmt: skip
        return FunBaTPosterior(
            samples, estimator=self, args=(jnp.asarray(ctx["idx"]), ticks, y), kwargs=kwargs,
            results=results, context={**ctx, "state": state,
                                      "draw_key": jax.random.fold_in(key, 7)},
            observed={"y": ctx["y"]}, dims={**dims, "y": ["entry"], "f": ["entry"]},
            coords=coords, method=f"funbat-{'cp' if self.cp else 'tucker'}-ep",
            extra={
                "train_rmse": np.asarray(res.history["train_rmse"]), "restart_rmse": screened,
                "epochs_run": res.num_steps, "rank": ctx["rank"], "mode_ranks": ranks,
                "rank_scores": dict(ctx.get("rank_scores", {})),
                "lengthscale_scores": dict(ctx.get("lengthscale_scores", {})),
                "lengthscale_check": dict(ctx.get("lengthscale_check", {})),
                "converged": res.stop_reason == "tolerance",
                "tau": float(state.tau_a / state.tau_b),
                "kernels": dict(zip(ctx["columns"], kernels, strict=True)),
                **self._hyper_summary(kernels, ctx),
            },
        )  # fmt: skip

    @staticmethod
    def _hyper_summary(kernels, ctx) -> dict[str, dict[str, float]]:
        """Fitted lengthscales in the coordinates' own units and kernel variances (in units of
        the standardized values), per column, for kernels that have them."""
        out = {"lengthscale": {}, "kernel_variance": {}}
        for k, (col, kern) in enumerate(zip(ctx["columns"], kernels, strict=True)):
            if hasattr(kern, "lengthscale"):
                out["lengthscale"][col] = float(kern.lengthscale) * ctx["scale"][k][1]
            if hasattr(kern, "variance"):
                out["kernel_variance"][col] = float(kern.variance)
        return out

    def _draws(self, key, state, ctx):
        """Draws of the sites from the fitted Gaussian messages and :math:`q(\tau)`, on the
        host (a NumPy generator seeded by ``key``: no per-shape compilation of random ops)."""
        S, K = self.num_samples, len(ctx["columns"])
        R = tuple(m.shape[1] for m in state.mu)  # per mode
        rng = _host_rng(key)
        samples, dims, cmap = {}, {}, {}
        for k, col in enumerate(ctx["columns"]):
            mu = np.asarray(state.mu[k])
            root = _psd_root(state.cov[k])
            z = rng.standard_normal((S, *mu.shape))
            draws = (mu + np.einsum("mij,smj->smi", root, z)).astype(mu.dtype)  # (S, M_k, R)
            samples[f"u_{k}"] = np.swapaxes(draws, -1, -2)[None]
            dims[f"u_{k}"] = [f"rank_{k}", col]
            lo, span = ctx["scale"][k]
            cmap[col] = ctx["ticks"][k] * span + lo
            cmap[f"rank_{k}"] = np.arange(R[k])
        if not self.cp:
            w_mean = np.asarray(state.core_mean)
            z = rng.standard_normal((S, math.prod(R)))
            w = w_mean + z @ _psd_root(state.core_cov).T
            samples["W"] = w.astype(w_mean.dtype).reshape(1, S, *R)
            dims["W"] = [f"rank_{k}" for k in range(K)]
        tau_b = np.asarray(state.tau_b)
        tau = rng.gamma(float(state.tau_a), 1.0, S) / float(tau_b)
        samples["tau"] = tau.astype(tau_b.dtype)[None]
        return samples, dims, cmap


def _first_within(scores: dict, rel: float = 0.01):
    """The first key (the smallest rank or factor: keys are tried in increasing order) whose
    validation RMSE is within ``rel`` of the best."""
    low = min(scores.values())
    return next(k for k in scores if scores[k] <= (1 + rel) * low)


def _psd_root(cov) -> np.ndarray:
    r"""A square root :math:`L` with :math:`LL^\top = \Sigma` of (batched) posterior covariances
    in float64 on the host, by eigendecomposition with the round-off negative eigenvalues of a
    float32 smoother clipped to 0 (where a Cholesky, even with a :math:`\sqrt{\epsilon}` jitter,
    returns NaN)."""
    c = np.asarray(cov, np.float64)
    lam, vec = np.linalg.eigh(0.5 * (c + np.swapaxes(c, -1, -2)))
    return vec * np.sqrt(np.maximum(lam, 0.0))[..., None, :]


def _host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (the same key, the same draws)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(as_key(key))).ravel()
                                 .astype(np.uint64))  # fmt: skip


def _check_rank(rank: Any, cp: bool) -> str | int | tuple[int, ...]:
    """``"auto"``, a positive int, or (Tucker) one positive int per mode."""
    if isinstance(rank, str) and rank == "auto":
        return "auto"
    if isinstance(rank, (Sequence, np.ndarray)) and not isinstance(rank, str):
        if cp:
            raise ValueError(f"`rank` per mode needs Tucker (cp=False); got {rank!r} with "
                             "cp=True, whose core is superdiagonal.")  # fmt: skip
        if len(rank) < 2:
            raise ValueError(f"`rank` per mode must give one rank per mode; got {rank!r}.")
        return tuple(check_int(f"rank[{i}]", r, minimum=1) for i, r in enumerate(rank))
    if isinstance(rank, str):
        raise ValueError(f"`rank` must be a positive int, one per mode or 'auto'; got "
                         f"{rank!r}.")  # fmt: skip
    return check_int("rank", rank, minimum=1)


def _check_candidates(rank_candidates: Any) -> tuple[int, ...]:
    """A non-empty increasing sequence of positive ints."""
    if isinstance(rank_candidates, (str, int)) or not isinstance(rank_candidates, Sequence) \
            or not rank_candidates:  # fmt: skip
        raise TypeError(
            f"`rank_candidates` must be a non-empty sequence of ints; got {rank_candidates!r}."
        )
    cands = [check_int("rank_candidates[i]", r, minimum=1) for r in rank_candidates]
    if cands != sorted(set(cands)):
        raise ValueError(f"`rank_candidates` must be increasing; got {rank_candidates!r}.")
    return tuple(cands)


def _check_learn_kernel(learn_kernel: Any) -> bool | tuple[str, ...]:
    """A bool, or a sequence of hyperparameter names (kept as a tuple)."""
    if isinstance(learn_kernel, str) or not isinstance(learn_kernel, (bool, Sequence)) or (
            not isinstance(learn_kernel, bool) and not all(isinstance(n, str)
                                                           for n in learn_kernel)):  # fmt: skip
        raise TypeError(
            "`learn_kernel` must be a bool or a sequence of hyperparameter names such as "
            f"('lengthscale',); got {learn_kernel!r}."
        )
    return learn_kernel if isinstance(learn_kernel, bool) else tuple(learn_kernel)


def _check_factors(factors: Any) -> tuple[float, ...]:
    """Positive finite factors, the first 1 (the learned lengthscale itself)."""
    try:
        out = tuple(float(f) for f in factors)
    except (TypeError, ValueError):
        raise TypeError(f"`lengthscale_factors` must be a sequence of positive numbers; got "
                        f"{factors!r}.") from None  # fmt: skip
    if not out or out[0] != 1.0 or not all(np.isfinite(f) and f > 0 for f in out):
        raise ValueError(f"`lengthscale_factors` must be positive and finite and start with 1.0 "
                         f"(the learned lengthscale); got {factors!r}.")  # fmt: skip
    if len(set(out)) != len(out):
        raise ValueError(f"`lengthscale_factors` must not repeat a factor; got {factors!r}.")
    return out


def _check_validate_on(validate_on: Any, rank: Any) -> str | None:
    """``None`` or a column name, the latter only where ``rank="auto"`` has a rank to choose."""
    if validate_on is not None and not isinstance(validate_on, str):
        raise TypeError(f"`validate_on` must be a coordinate column name or None; got "
                        f"{validate_on!r}.")  # fmt: skip
    if validate_on is not None and rank != "auto":
        raise ValueError(f"`validate_on` chooses the rank of rank='auto'; got rank={rank!r}, "
                         "which leaves nothing to choose.")  # fmt: skip
    return validate_on
