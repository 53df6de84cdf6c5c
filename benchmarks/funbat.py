#!/usr/bin/env python
r"""FunBaT: functional Bayesian Tucker decomposition vs discrete Tucker/CP and a GP regression.

Fang et al., ICLR 2024 (``../shared/papers/funbat.md`` §4, §6). Three parts (float64, CPU):

1. **Accuracy on real continuous-indexed tensors**: NASA ozone (lat x lon x month, 41,472
   entries), NCEP air temperature (time x lat x lon, 26,500 entries), kinetic fluorescence
   (measurement x emission x excitation x time, 459,046 observed entries, subsampled at random
   to ``KINETIC_N`` per seed) and an irregular point set built from NCEP (``IRREGULAR_N``
   entries, each at its own continuous time), each on two splits: random 80/20 entries
   (:func:`bayeslr.datasets.split_entries`) and *unseen coordinates* (20 % of the interior
   months / time stamps held out whole, :func:`bayeslr.datasets.split_coordinates`). FunBaT
   with **library defaults** (``FunBaT()``: rank chosen on a validation split of the training
   entries, kernels learned; nothing set by hand, nothing looks at the test entries) against
   the strongest simple peers: tensorly's masked Tucker and CP at ranks ``PEER_RANKS`` (the
   best on the test entries reported), a GP regression on the coordinates (scikit-learn, ARD
   RBF + white noise by marginal likelihood on at most ``GP_N`` training entries) and a
   per-coordinate mean. On the unseen split of the gridded data a second FunBaT is told the
   question (``FunBaT(validate_on=<held column>)``: the rank validated on held-out training
   coordinates of that column). Test RMSE, MAE, 95 % interval coverage (FunBaT, GP), fit and predict
   wall time, mean ± sd over seeds; FunBaT over the best peer per data set and split.
2. **The paper's synthetic case** (:func:`bayeslr.datasets.funbat_synthetic`, 6 random 15x15
   grids, 50/50 split; FunBaT-CP R = 1 from the paper's kernel, and FunBaT with defaults).
3. **Scaling in the number of entries**: a continuous-indexed K = 3 tensor generated here
   (500 / 500 / 1000 unique random coordinates per mode, a smooth rank-3 truth plus noise),
   FunBaT (Tucker, R = 3) at N = 1e4, 1e5, 1e6 with a fixed number of epochs: the wall time of
   ``FunBaT.fit`` (data preparation, compilation, epochs) and the seconds per epoch of the
   compiled epoch (:func:`bayeslr.models.funbat.funbat_step`, compile excluded).
4. **Prediction time** at a never-seen number of points after a first call.

``--quick``: ozone subsample (``QUICK_N`` = 4,000 entries), one seed, GP on ``GP_N_QUICK``
entries, no old-default row, 1e6 scaling row with 2 epochs. RESULT keys: ``ratio_peer_random``,
``ratio_peer_unseen`` (max over data sets of FunBaT RMSE / best peer RMSE; both for the
defaults), ``cov95_unseen``, ``t_fit_1e6_s``, ``t_predict_new_size_s``, ``rmse_ozone``,
``rmse_unseen_ozone``, and ``ratio_peer_unseen_validate_on`` (the unseen ratio of the
``validate_on`` fit).

Discrete Tucker/CP have one factor row per grid coordinate: they cannot predict at a coordinate
with no training entries. On the unseen-coordinate split they predict with the slice of the
nearest training coordinate (the same rule for any test coordinate whose slice is empty).

Usage::

    .venv/bin/python benchmarks/funbat.py            # full run -> benchmarks/results/funbat.md
    .venv/bin/python benchmarks/funbat.py --quick    # < 60 s; last stdout line: RESULT ...
    .venv/bin/python benchmarks/funbat.py --unseen-only  # unseen splits -> funbat_unseen.md
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(os.cpu_count() or 1))

import argparse
import sys
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np
import pandas as pd

from bayeslr._memory import release_compiled_code
from bayeslr.datasets import (
    funbat_synthetic,
    load_kinetic,
    load_ncep_air,
    load_ozone,
    split_coordinates,
    split_entries,
)
from bayeslr.gp import Matern32
from bayeslr.models import FunBaT
from bayeslr.models.funbat import funbat_init, funbat_step

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` beside this script
from _common import (
    RESULTS_DIR,
    CpuMonitor,
    finish,
    fmt_s,
    machine_info,
    markdown_table,
    run_details,
    write_markdown,
)

RANK = 3  # the scaling part's fixed rank
EPOCHS = 100  # FunBaT's default epoch cap (it stops earlier when the training RMSE settles)
KINETIC_N = 20_000
GP_N = 2000
GP_N_QUICK = 500
QUICK_N = 4000  # ozone entries in --quick
PEER_RANKS = (3, 5, 8)
IRREGULAR_N = 20_000
TEST_FRAC = 0.2
TL_ITER = 100  # tensorly n_iter_max
SCALE_M = (500, 500, 1000)
SCALE_EPOCHS = 5
REF = {"synthetic": (0.004, 0.002), "us_temp_cp3": (1.171, 0.732)}

METHODS = ("funbat", "funbat_validate_on", "funbat_r3_fixed", "tucker", "cp", "gp", "mean",
           "interp")
PEERS = ("tucker", "cp", "gp", "mean")
LABEL = {
    "funbat": "FunBaT, library defaults (rank auto, kernels learned)",
    "funbat_validate_on": "FunBaT, rank validated on held-out coordinates of the split's column "
    "(`validate_on=`)",
    "funbat_r3_fixed": "FunBaT, R = 3, fixed kernel (the old default)",
    "funbat_cp": "FunBaT-CP",
    "tucker": f"Tucker (tensorly, masked), best of R = {PEER_RANKS}",
    "cp": f"CP (tensorly, masked), best of R = {PEER_RANKS}",
    "gp": f"GP regression, ARD RBF (≤ {GP_N} pts)",
    "mean": "per-coordinate mean (additive main effects)",
    "interp": "each cell's series interpolated linearly along the held-out column",
}


# --------------------------------------------------------------------------------------------
# data


def datasets(quick: bool):
    """name -> (loader, held-out column for the unseen split, subsample size or None)."""
    if quick:
        return {"ozone": (load_ozone, "month", QUICK_N)}
    return {
        "ozone": (load_ozone, "month", None),
        "ncep": (load_ncep_air, "time", None),
        "kinetic": (load_kinetic, "time", KINETIC_N),
    }


def _subsample(df, n, seed):
    if n is None or len(df) <= n:
        return df
    idx = np.sort(np.random.default_rng(10_000 + seed).choice(len(df), n, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def _errors(pred, y):
    e = np.asarray(pred, np.float64) - np.asarray(y, np.float64)
    return float(np.sqrt(np.mean(e**2))), float(np.mean(np.abs(e)))


# --------------------------------------------------------------------------------------------
# methods


def run_funbat(tr, te, coords, *, cp=False, rank="auto", kernel=None, epochs=EPOCHS, **kw):
    """FunBaT fit and closed-form predictive moments at the test entries: ``(mean, sd, t_fit,
    t_predict, post)``."""
    model = FunBaT(rank, kernel, cp=cp, epochs=epochs, progress_bar=False, num_samples=1, **kw)
    t0 = time.perf_counter()
    post = model.fit(tr, coords=coords, value="value")
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = post.moments(te)
    t_pred = time.perf_counter() - t0
    pred = m["mean"].to_numpy()
    if not np.all(np.isfinite(pred)):
        print(f"  WARNING: FunBaT (cp={cp}) predicted {np.sum(~np.isfinite(pred))} NaN/inf")
    return pred, m["sd"].to_numpy(), t_fit, t_pred, post


def run_mean(tr, te, coords):
    """Additive main effects: the training mean plus, per mode, the mean deviation at the
    coordinate (linearly interpolated between training coordinates, held flat beyond them)."""
    t0 = time.perf_counter()
    y = tr["value"].to_numpy(np.float64)
    mu = y.mean()
    pred = np.full(len(te), mu)
    for c in coords:
        g = tr.groupby(c)["value"].mean()
        pred += np.interp(te[c].to_numpy(np.float64), g.index.to_numpy(np.float64),
                          g.to_numpy(np.float64) - mu)  # fmt: skip
    return pred, time.perf_counter() - t0


def run_interp(tr, te, coords, held):
    """Each cell's own series along the held-out column ``held``: the test value at an unseen
    coordinate linearly interpolated between the same cell's nearest training values below and
    above it (flat beyond them); a cell without training entries gets the per-coordinate mean.
    The simplest predictor for a missing time step of a gridded series, and a strong one."""
    t0 = time.perf_counter()
    others = [c for c in coords if c != held]
    fallback, _ = run_mean(tr, te, coords)
    pred = np.asarray(fallback, np.float64).copy()
    series = {key: g.sort_values(held) for key, g in tr.groupby(others)}
    x = te[held].to_numpy(np.float64)
    for key, rows in te.groupby(others).indices.items():  # positional rows per cell
        s = series.get(key)
        if s is not None:
            pred[rows] = np.interp(x[rows], s[held].to_numpy(np.float64),
                                   s["value"].to_numpy(np.float64))  # fmt: skip
    return pred, time.perf_counter() - t0


def run_discrete(tr, te, coords, axes, *, kind, rank=RANK):
    """tensorly masked Tucker / CP on the grid ``axes``; test entries whose coordinate has no
    training entries in a mode use the nearest training coordinate of that mode."""
    from tensorly.decomposition import parafac, tucker

    K = len(coords)
    shape = tuple(len(a) for a in axes)
    itr = np.stack([np.searchsorted(axes[k], tr[c].to_numpy()) for k, c in enumerate(coords)], 1)
    ite = np.stack([np.searchsorted(axes[k], te[c].to_numpy()) for k, c in enumerate(coords)], 1)
    for k in range(K):  # nearest training coordinate for test coordinates unseen in training
        seen = np.unique(itr[:, k])
        pos = np.clip(np.searchsorted(axes[k][seen], axes[k][ite[:, k]]), 1, len(seen) - 1)
        lo, hi = seen[pos - 1], seen[pos]
        x = axes[k][ite[:, k]]
        near = np.where(np.abs(axes[k][lo] - x) <= np.abs(axes[k][hi] - x), lo, hi)
        ite[:, k] = np.where(np.isin(ite[:, k], seen), ite[:, k], near)
    y = tr["value"].to_numpy(np.float64)
    mean, sd = float(y.mean()), float(y.std())
    tensor = np.zeros(shape)
    mask = np.zeros(shape, bool)
    tensor[tuple(itr.T)] = (y - mean) / sd
    mask[tuple(itr.T)] = True
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "tucker":
            core, factors = tucker(tensor, rank=[rank] * K, mask=mask, n_iter_max=TL_ITER)
            rec = np.einsum(
                core, list(range(K)),
                *[x for k, f in enumerate(factors) for x in (f, [K + k, k])],
                list(range(K, 2 * K)),
            )  # fmt: skip
        else:
            cpt = parafac(tensor, rank, mask=mask, n_iter_max=TL_ITER, init="random")
            import tensorly as tl

            rec = tl.cp_to_tensor(cpt)
    t_fit = time.perf_counter() - t0
    pred = np.asarray(rec)[tuple(ite.T)] * sd + mean
    return pred, t_fit


def run_gp(tr, te, coords, seed, n=GP_N):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    sub = _subsample(tr, n, seed)
    x = sub[coords].to_numpy(np.float64)
    lo, span = x.min(0), np.maximum(x.max(0) - x.min(0), 1e-12)
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF([0.2] * len(coords), (1e-3, 1e2)) + WhiteKernel(
        0.1, (1e-6, 1e1)
    )
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp.fit((x - lo) / span, sub["value"].to_numpy(np.float64))
    t_fit = time.perf_counter() - t0
    pred, sd = gp.predict((te[coords].to_numpy(np.float64) - lo) / span, return_std=True)
    return pred, sd, t_fit


# --------------------------------------------------------------------------------------------
# part 1 and 2: accuracy


def _record(pred, te, t_fit, sd=None, t_pred=None, **extra):
    rmse, mae = _errors(pred, te["value"])
    cov = None
    if sd is not None:
        z = np.abs(np.asarray(pred) - te["value"].to_numpy(np.float64)) / np.asarray(sd)
        cov = float(np.mean(z <= 1.959964))
    return dict(rmse=rmse, mae=mae, cov95=cov, t_fit=t_fit, t_pred=t_pred, **extra)


def _best_discrete(tr, te, coords, axes, kind):
    """The best of PEER_RANKS on the test entries (the peer's most favourable report)."""
    best = None
    for r in PEER_RANKS:
        pred, t = run_discrete(tr, te, coords, axes, kind=kind, rank=r)
        rec = _record(pred, te, t, rank=r)
        if best is None or rec["rmse"] < best["rmse"]:
            best = rec
    return best


def irregular_ncep(seed: int, n: int = IRREGULAR_N) -> pd.DataFrame:
    """An irregular point set from NCEP air temperature: ``n`` entries at random (lat, lon)
    grid points and random continuous times between the 6-hourly stamps (every entry its own
    time), the value interpolated linearly in time between the two stamps around it."""
    g = load_ncep_air()
    t, lat, lon = g.axes
    rng = np.random.default_rng(20_000 + seed)
    i = rng.integers(0, len(t) - 1, n)
    w = rng.uniform(0, 1, n)
    a, b = rng.integers(0, len(lat), n), rng.integers(0, len(lon), n)
    v = np.asarray(g.values)
    val = (1 - w) * v[i, a, b] + w * v[i + 1, a, b]
    keep = np.isfinite(val)
    return pd.DataFrame({"time": (t[i] + w * (t[i + 1] - t[i]))[keep], "lat": lat[a][keep],
                         "lon": lon[b][keep], "value": val[keep]})  # fmt: skip


def _split_irregular(df, seed):
    """Random 80/20 entries, and an 'unseen' split holding out every entry in 20 % of the
    interior 6-hour intervals (whole stretches of time)."""
    tr, te = split_entries(df, TEST_FRAC, seed)
    cell = np.floor(df["time"].to_numpy() * 4).astype(int)
    inner = np.unique(cell)[1:-1]
    rng = np.random.default_rng(seed)
    held = rng.choice(inner, max(1, round(TEST_FRAC * len(inner))), replace=False)
    mask = np.isin(cell, held)
    return {"random": (tr, te), "unseen": (df[~mask], df[mask])}


def part_accuracy(seeds, quick, unseen_only=False):
    recs = {}  # (dataset, split, method) -> list of records
    sizes = {}
    first = None  # the first default fit and its test entries (for the predict timing)
    gp_n = GP_N_QUICK if quick else GP_N
    todo = dict(datasets(quick))
    if not quick and not unseen_only:
        todo["ncep_irregular"] = (None, None, None)
    for name, (loader, held, n_sub) in todo.items():
        for seed in seeds:
            if loader is None:
                df, coords, axes = irregular_ncep(seed), ["time", "lat", "lon"], None
                splits = _split_irregular(df, seed)
                sizes[name] = (len(df), len(df), None)
            else:
                g = loader()
                coords, axes, full = list(g.dims), g.axes, g.to_long()
                df = _subsample(full, n_sub, seed)
                sizes[name] = (len(df), len(full), tuple(len(a) for a in g.axes))
                splits = {
                    "random": split_entries(df, TEST_FRAC, seed),
                    "unseen": split_coordinates(df, held, TEST_FRAC, seed),
                }
            for split, (tr, te) in splits.items():
                if unseen_only and split != "unseen":
                    continue
                out = {}
                pred, sd, t, tp, post = run_funbat(tr, te, coords)
                first = first or (post, te)
                out["funbat"] = _record(pred, te, t, sd, tp, rank=post.extra["rank"],
                                        epochs=sum(r.num_steps for r in post.results))  # fmt: skip
                if split == "unseen" and held is not None:
                    # the question "values at coordinates of `held` not in the data", told to
                    # the library: rank validated on held-out training coordinates of `held`
                    pred, sd, t, tp, post = run_funbat(tr, te, coords, validate_on=held)
                    out["funbat_validate_on"] = _record(pred, te, t, sd, tp,
                                                        rank=post.extra["rank"])  # fmt: skip
                if not quick and not unseen_only:
                    pred, sd, t, tp, _ = run_funbat(
                        tr, te, coords, rank=3, learn_kernel=False, epochs=50
                    )
                    out["funbat_r3_fixed"] = _record(pred, te, t, sd, tp)
                if axes is not None:
                    for kind in ("tucker", "cp"):
                        out[kind] = _best_discrete(tr, te, coords, axes, kind)
                pred, sd, t = run_gp(tr, te, coords, seed, gp_n)
                out["gp"] = _record(pred, te, t, sd)
                pred, t = run_mean(tr, te, coords)
                out["mean"] = _record(pred, te, t)
                if split == "unseen" and held is not None:
                    pred, t = run_interp(tr, te, coords, held)
                    out["interp"] = _record(pred, te, t)
                # every fit compiles its own programs; past ~65,000 memory mappings every
                # later compile fails (the full run died in the scaling part without this)
                release_compiled_code()
                for m, rec in out.items():
                    recs.setdefault((name, split, m), []).append(rec)
                    extra = f" R={rec['rank']}" if "rank" in rec else ""
                    cov = "" if rec["cov95"] is None else f" cov95 {rec['cov95']:.3f}"
                    print(
                        f"[{name} seed {seed} {split}] {m:<16s} rmse {rec['rmse']:.4g} mae "
                        f"{rec['mae']:.4g}{cov} fit {rec['t_fit']:.2f}s{extra} (train {len(tr)}, "
                        f"test {len(te)})",
                        flush=True,
                    )
    return recs, sizes, first


def part_synthetic(seeds):
    recs = {}
    kernel = Matern32(variance=0.5, lengthscale=0.1)
    for seed in seeds:
        df = funbat_synthetic(seed)
        coords = ["x", "y"]
        axes = tuple(np.unique(df[c].to_numpy()) for c in coords)
        tr, te = split_entries(df, 0.5, seed)
        for m in ("funbat_cp", "funbat", "tucker", "cp", "gp"):
            if m == "funbat_cp":  # the paper's setting (its kernel as the start)
                pred, _, t, _, _ = run_funbat(tr, te, coords, cp=True, rank=1, kernel=kernel)
            elif m == "funbat":  # library defaults
                pred, _, t, _, _ = run_funbat(tr, te, coords)
            elif m in ("tucker", "cp"):
                pred, t = run_discrete(tr, te, coords, axes, kind=m, rank=1)
            else:
                pred, _, t = run_gp(tr, te, coords, seed)
            rmse, mae = _errors(pred, te["value"])
            recs.setdefault(m, []).append((rmse, mae, t))
            print(f"[synthetic seed {seed}] {m:<9s} rmse {rmse:.3g} mae {mae:.3g}", flush=True)
    return recs


def _ms(vals, digits=4):
    v = np.asarray(vals, np.float64)
    if len(v) == 1:
        return f"{v[0]:.{digits}g}"
    return f"{v.mean():.{digits}g} ± {v.std(ddof=1):.2g}"


def accuracy_table(recs, sizes, name):
    rows = []
    for split in ("random", "unseen"):
        for m in METHODS:
            rs = recs.get((name, split, m))
            if not rs:
                continue
            label = LABEL[m]
            if m in ("tucker", "cp") and split == "unseen":
                label += " — nearest training slice"
            if "rank" in rs[0]:
                label += " (R: " + ", ".join(str(r["rank"]) for r in rs) + ")"
            covs = [r["cov95"] for r in rs if r["cov95"] is not None]
            tp = [r["t_pred"] for r in rs if r["t_pred"] is not None]
            rows.append((
                split, label, len(rs), _ms([r["rmse"] for r in rs]), _ms([r["mae"] for r in rs]),
                _ms(covs, 3) if covs else "—", fmt_s(float(np.median([r["t_fit"] for r in rs]))),
                fmt_s(float(np.median(tp))) if tp else "—",
            ))  # fmt: skip
    n, n_full, shape = sizes[name]
    grid = f"on a {' x '.join(map(str, shape))} grid" if shape else "each at its own time"
    head = (
        f"N = {n:,} entries (of {n_full:,}) {grid}; {100 * (1 - TEST_FRAC):.0f}/"
        f"{100 * TEST_FRAC:.0f} splits.\n\n"
    )
    return head + markdown_table(
        ["split", "method", "seeds", "RMSE", "MAE", "95 % coverage", "fit (median, s)",
         "predict (median, s)"], rows,
    )  # fmt: skip


def ratio_rows(recs, names, method="funbat"):
    """Per data set and split: FunBaT's (``method``) mean RMSE over the best peer's (mean
    RMSE per peer, the best peer per data set and split)."""
    out = {}
    for name in names:
        for split in ("random", "unseen"):
            f = recs.get((name, split, method))
            if not f:
                continue
            peers = {p: np.mean([r["rmse"] for r in recs[(name, split, p)]])
                     for p in PEERS if (name, split, p) in recs}  # fmt: skip
            best = min(peers, key=peers.get)
            out[(name, split)] = (float(np.mean([r["rmse"] for r in f])), best, peers[best])
    return out


# --------------------------------------------------------------------------------------------
# part 3: scaling in N


def scale_tensor(n, seed=0):
    """A continuous-indexed K = 3 tensor: random unique coordinates per mode, a smooth rank-3
    truth sum_r prod_k f_kr(x_k) plus N(0, 0.1^2) noise at n random index tuples."""
    rng = np.random.default_rng(seed)
    ticks = [np.sort(rng.uniform(0.0, 1.0, m)) for m in SCALE_M]
    idx = np.stack([rng.integers(0, m, n) for m in SCALE_M], 1)
    x = np.stack([ticks[k][idx[:, k]] for k in range(3)], 1)
    f = 0.0
    for r in range(3):
        f = f + np.prod(
            [np.sin(2 * np.pi * (r + 1) * x[:, k] / (k + 1) + r + k) for k in range(3)], axis=0
        )
    y = f + 0.1 * rng.standard_normal(n)
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "value": y})


def part_scale(ns, epochs):
    out = []
    for n in ns:
        release_compiled_code()
        df = scale_tensor(n)
        coords = ["x1", "x2", "x3"]
        model = FunBaT(RANK, epochs=epochs, progress_bar=False, num_samples=1, restarts=1)
        t0 = time.perf_counter()
        post = model.fit(df, coords=coords, value="value")
        t_fit = time.perf_counter() - t0
        # per-epoch time of the compiled epoch (compile excluded)
        prepared = model.prepare(df, coords, "value")
        problem = prepared.problem
        state = funbat_init(jax.random.key(0), problem)

        def epoch(st, problem=problem):
            return funbat_step(None, st, problem)

        t0 = time.perf_counter()
        compiled = jax.jit(epoch).lower(state).compile()
        t_compile = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            state, _ = jax.block_until_ready(compiled(state))
            times.append(time.perf_counter() - t0)
        rec = {
            "n": n,
            "t_fit": t_fit,
            "t_epoch": float(np.median(times)),
            "t_compile": t_compile,
            "train_rmse": float(post.extra["train_rmse"][-1]),
            "m": tuple(len(t) for t in prepared.context["ticks"]),
        }
        out.append(rec)
        print(
            f"[scale] N={n:,}: fit ({epochs} epochs) {t_fit:.2f} s, {rec['t_epoch']:.3g} s/epoch "
            f"(compile {t_compile:.2f} s), train rmse {rec['train_rmse']:.3g} (noise sd 0.1)",
            flush=True,
        )
    return out


def scale_table(scale, epochs):
    rows = []
    base = scale[0]
    for r in scale:
        rows.append(
            (
                f"{r['n']:,}",
                " / ".join(map(str, r["m"])),
                fmt_s(r["t_fit"]),
                fmt_s(r["t_epoch"]),
                f"{1e6 * r['t_epoch'] / r['n']:.3g}",
                f"{r['t_epoch'] / base['t_epoch']:.3g}x for {r['n'] / base['n']:.0f}x entries",
                f"{r['t_compile']:.2f}",
                f"{r['train_rmse']:.3g}",
            )
        )
    return markdown_table(
        [
            "N",
            "unique coords per mode",
            f"FunBaT.fit, {epochs} epochs (s, wall)",
            "s / epoch (compiled)",
            "µs / entry / epoch",
            "epoch time ratio",
            "compile (s)",
            "train RMSE (noise sd 0.1)",
        ],
        rows,
    )


# --------------------------------------------------------------------------------------------


def part_predict_time(post, te):
    """Wall time of closed-form moments and of predictive draws at a never-seen number of
    points, after a first call (the compiled prediction is reused within a size bucket), on
    the first data set's default fit (random split, first seed)."""
    out = {}
    for name, call, (n1, n2) in (("moments", post.moments, (1000, 777)),
                                 ("predict", post.predict, (500, 333))):  # fmt: skip
        t0 = time.perf_counter()
        jax.block_until_ready(call(te.iloc[:n1]))
        out[f"{name}_first"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(call(te.iloc[:n2]))
        out[f"{name}_new"] = time.perf_counter() - t0
    return out


def _ok(b: bool) -> str:
    return "met" if b else "not met"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed, ozone subsample, < 60 s")
    p.add_argument("--seeds", type=int, default=None, help="seeds per data set (5 / 1)")
    p.add_argument("--out", type=Path, default=None, help="Markdown output (full run default)")
    p.add_argument("--unseen-only", action="store_true",
                   help="only the unseen-coordinate splits of the gridded data sets (FunBaT "
                   "defaults, validate_on and the peers): -> results/funbat_unseen.md")
    args = p.parse_args(argv)
    if args.unseen_only:
        return main_unseen(args)
    q = args.quick
    t_start = time.perf_counter()
    seeds = list(range(args.seeds or (1 if q else 5)))
    out_path = args.out or (None if q else RESULTS_DIR / "funbat.md")
    info = machine_info()
    monitor = CpuMonitor()

    recs, sizes, first = part_accuracy(seeds, q)
    syn = None if q else part_synthetic(seeds)
    scale_ns = (10**6,) if q else (10**4, 10**5, 10**6)
    scale_epochs = 2 if q else SCALE_EPOCHS
    scale = part_scale(scale_ns, scale_epochs)

    names = [n for n in (*datasets(q), "ncep_irregular") if any(k[0] == n for k in recs)]
    ratios = ratio_rows(recs, names)
    ratios_vo = ratio_rows(recs, names, "funbat_validate_on")
    pred_t = part_predict_time(*first)
    t1e6 = next((r["t_fit"] for r in scale if r["n"] == 10**6), None)
    covs = [r["cov95"] for (n, sp, m), rs in recs.items() if sp == "unseen" and m == "funbat"
            for r in rs]  # fmt: skip

    interp = {  # FunBaT (defaults) over each cell's interpolated series, unseen splits
        n: np.mean([r["rmse"] for r in recs[(n, "unseen", "funbat")]])
        / np.mean([r["rmse"] for r in recs[(n, "unseen", "interp")]])
        for n in names if (n, "unseen", "interp") in recs
    }

    def worst(split):
        v = [f / p for (n, sp), (f, _, p) in ratios.items() if sp == split]
        return float(max(v)) if v else None

    result = dict(
        ratio_peer_random=worst("random"),
        ratio_peer_unseen=worst("unseen"),
        ratio_peer_unseen_validate_on=max(
            [f / p for (f, _, p) in ratios_vo.values()], default=None),
        ratio_interp_unseen=max(interp.values(), default=None),
        cov95_unseen=float(np.mean(covs)),
        t_fit_1e6_s=t1e6,
        t_predict_new_size_s=pred_t["moments_new"],
        rmse_ozone=float(np.mean([r["rmse"] for r in recs[("ozone", "random", "funbat")]])),
        rmse_unseen_ozone=float(np.mean([r["rmse"] for r in recs[("ozone", "unseen", "funbat")]])),
    )
    print("\nFunBaT (defaults) / best peer, RMSE:")
    for (n, sp), (f, b, pr) in ratios.items():
        print(f"  {n:<15s} {sp:<7s} FunBaT {f:.4g} vs {b} {pr:.4g}: ratio {f / pr:.3f}")
    for (n, sp), (f, b, pr) in ratios_vo.items():
        print(f"  {n:<15s} {sp:<7s} FunBaT validate_on {f:.4g} vs {b} {pr:.4g}: ratio "
              f"{f / pr:.3f}")
    for n, v in interp.items():
        print(f"  {n:<15s} unseen  FunBaT / each cell's series interpolated: ratio {v:.3f}")
    print(f"predict timings: {pred_t}", flush=True)

    if out_path is not None:
        targets = [
            ("ratio_peer_random (max over data sets)", "≤ 1.0",
             f"{result['ratio_peer_random']:.3f}",
             _ok(result["ratio_peer_random"] <= 1.0)),
            ("ratio_peer_unseen (max over data sets)", "≤ 1.0",
             f"{result['ratio_peer_unseen']:.3f}",
             _ok(result["ratio_peer_unseen"] <= 1.0)),
            ("ratio_peer_unseen with validate_on=<column> (max over gridded data sets)",
             "≤ 1.0", f"{result['ratio_peer_unseen_validate_on']:.3f}",
             _ok(result["ratio_peer_unseen_validate_on"] <= 1.0)),
            ("not an issue target: FunBaT (defaults) / each cell's series interpolated "
             "linearly, unseen split (max over gridded data sets; the stronger simple peer "
             "there)", "≤ 1.0", f"{result['ratio_interp_unseen']:.3f} ("
             + ", ".join(f"{n} {v:.3f}" for n, v in interp.items()) + ")",
             _ok(result["ratio_interp_unseen"] <= 1.0)),
            ("cov95_unseen (mean over data sets, seeds)", "0.90–0.99",
             f"{result['cov95_unseen']:.3f}",
             _ok(0.9 <= result["cov95_unseen"] <= 0.99)),
            ("t_fit_1e6_s", "< 300 s", f"{t1e6:.1f} s ({scale_epochs} epochs, R = {RANK})",
             _ok(t1e6 < 300)),
            ("t_predict_new_size_s (moments)", "< 1 s", f"{pred_t['moments_new']:.3f} s "
             f"(first call {pred_t['moments_first']:.2f} s; predict draws: first "
             f"{pred_t['predict_first']:.2f} s, new size {pred_t['predict_new']:.2f} s)",
             _ok(pred_t["moments_new"] < 1)),
        ]  # fmt: skip
        ratio_md = markdown_table(
            ["data set", "split", "FunBaT", "FunBaT RMSE", "best peer", "peer RMSE", "ratio"],
            [(n, sp, "defaults", f"{f:.4g}", LABEL[b], f"{pr:.4g}", f"{f / pr:.3f}")
             for (n, sp), (f, b, pr) in ratios.items()]
            + [(n, sp, f"validate_on='{datasets(q)[n][1]}'", f"{f:.4g}", LABEL[b], f"{pr:.4g}",
                f"{f / pr:.3f}") for (n, sp), (f, b, pr) in ratios_vo.items()],
        )  # fmt: skip
        targets_md = markdown_table(["target", "goal", "measured", "met"], targets)
        print("\nTargets:")
        for row in targets:
            print(f"  [{row[3]}] {row[0]}: {row[2]}", flush=True)
        details = run_details(monitor, len(seeds))
        details["repeats"] = f"{len(seeds)} seeds per data set and split (seeds {seeds})"
        details["FunBaT"] = (
            "library defaults, nothing set by hand: `FunBaT()` — rank chosen on a random 10 % "
            "validation split of the training entries (candidates 3/5/8, growing while the "
            "validation RMSE gains 1 %), every mode's lengthscale learned (type-II MAP on its "
            "Kalman evidence; kernel variances stay 1, the scale lives in the core), then "
            "checked on held-out coordinates of its mode (x1, 2, 4, 8; the longer ones kept "
            "if the validation RMSE does not rise by more than 1 %), stop when the training "
            "RMSE settles "
            f"(≤ {EPOCHS} epochs per stage), 3 random starts. Intervals: mean ± 1.96 sd of "
            "`post.moments` (noise included). The 'old default' row is R = 3 with the fixed "
            "Matérn-3/2 (1, 0.1) kernel and 50 epochs. On the unseen splits of the gridded "
            "data a second FunBaT row is told the question: `FunBaT(validate_on=<column>)` "
            "validates the rank on held-out interior coordinates of that column of the "
            "training data (never on test); the defaults validate on random entries. Not run "
            "on ncep_irregular, whose time coordinates are all distinct (the two validations "
            "nearly coincide there)"
        )
        details["discrete baselines"] = (
            "tensorly masked `tucker(rank=[R]*K, mask=)` and `parafac(R, mask=, "
            f"init='random')`, n_iter_max={TL_ITER}, ranks {PEER_RANKS} (the best on the test "
            "entries is reported: the peers' most favourable number), on the native grid, "
            "values standardized with the training mean/sd; unobserved cells are imputed by "
            "the ALS. They have no factor row for a coordinate without training entries: on "
            "the unseen split they predict with the nearest training coordinate's slice"
        )
        details["GP baseline"] = (
            f"scikit-learn GaussianProcessRegressor, Constant x anisotropic RBF + White, "
            f"normalize_y, hyperparameters by marginal likelihood (1 optimizer start), on "
            f"≤ {GP_N} random training entries; coordinates scaled to [0, 1]; intervals from "
            "its predictive sd (noise included)"
        )
        details["per-coordinate mean"] = (
            "training mean plus each mode's mean deviation at the coordinate, linearly "
            "interpolated between training coordinates (flat beyond them)"
        )
        details["each cell's series interpolated"] = (
            "unseen splits of the gridded data: the same cell's training values along the "
            "held-out column, linearly interpolated at the held-out coordinate (flat beyond "
            "the first/last); cells without training entries get the per-coordinate mean. Not "
            "among the issue's peers (so not in ratio_peer_unseen): reported as "
            "ratio_interp_unseen"
        )
        details["irregular point set"] = (
            f"ncep_irregular: {IRREGULAR_N:,} entries of NCEP air temperature at random grid "
            "(lat, lon) and random continuous times between the 6-hourly stamps (value "
            "interpolated linearly in time), so every entry has its own time coordinate; "
            "'unseen' holds out every entry in 20 % of the interior 6-hour intervals. No grid: "
            "no Tucker/CP"
        )
        details["predict timing"] = (
            "the first default fit (ozone, random split, seed 0); `moments` on 1,000 test "
            "entries, then on 777 (a size never seen): the second call's wall time is "
            "t_predict_new_size_s; the same for `predict` (posterior-predictive draws, "
            "num_samples=1 stored draw) on 500 then 333"
        )
        details["fit time"] = (
            "wall time of one fit call; for FunBaT it includes data preparation and JAX "
            "compilation (a fresh jit per fit)"
        )
        details["kinetic"] = (
            f"random subsample of {KINETIC_N:,} observed entries per seed; the `measurement` "
            "mode (sample number) is a label, used as a coordinate like the others"
        )
        syn_rows = [
            (
                LABEL[m].split(", best of")[0]
                + (", R = 1" if m in ("tucker", "cp", "funbat_cp") else ""),
                len(syn[m]),
                _ms([r[0] for r in syn[m]], 3),
                _ms([r[1] for r in syn[m]], 3),
                fmt_s(float(np.median([r[2] for r in syn[m]]))),
            )
            for m in ("funbat_cp", "funbat", "tucker", "cp", "gp")
        ]
        syn_rows.append(
            ("paper reference: FunBaT-CP, R = 1 (notebook, single fold)", 1, "0.004", "0.002", "—")
        )
        sections = [
            ("Run details", "\n".join(f"- {k}: {v}" for k, v in details.items())),
            ("Targets", targets_md),
            ("FunBaT (defaults) against the best peer, RMSE (mean over seeds)", ratio_md),
            (
                "Context: the paper's numbers (other data)",
                "From `shared/papers/funbat.md` §4 (the authors' notebook outputs, single fold, "
                "**not the data sets above**): synthetic FunBaT-CP R = 1 test RMSE 0.004 / MAE "
                "0.002; US-Temp (248 US cities x year, °F) FunBaT-CP R = 3 RMSE 1.171 / MAE "
                "0.732. The paper's own real data (BeijingAir, US-Temp) are not available "
                "offline.",
            ),
        ]
        for name in names:
            sections.append((name, accuracy_table(recs, sizes, name)))
        sections += [
            (
                "Synthetic case (paper §4: y = u1(x) u2(y), 6 grids 15x15, 50/50 split)",
                markdown_table(["method", "seeds", "RMSE", "MAE", "fit (median, s)"], syn_rows)
                + "\n\nFunBaT-CP: R = 1 started from the paper's Matérn-3/2 (variance 0.5, "
                "lengthscale 0.1), kernels learned from there; FunBaT: library defaults. "
                "Discrete Tucker/CP: R = 1 on the 90 x 90 grid of unique coordinates (each "
                "15 x 15 grid fills its own block).",
            ),
            (
                f"Scaling in the number of entries (FunBaT Tucker, R = {RANK}, K = 3)",
                scale_table(scale, scale_epochs)
                + f"\n\nSynthetic continuous-indexed tensor generated in the script: "
                f"{' / '.join(map(str, SCALE_M))} random unique coordinates per mode, smooth "
                "rank-3 truth, noise sd 0.1, entries at random index tuples. 'FunBaT.fit' is "
                "the user-facing call (standardizing, indexing, jit compile, "
                f"{scale_epochs} epochs); 's / epoch' is the median of 3 calls of the "
                "AOT-compiled epoch.",
            ),
        ]
        write_markdown(out_path, "FunBaT benchmark", info, sections)
        print(f"wrote {out_path}", flush=True)

    finish(monitor, t_start, **result)
    return 0


def main_unseen(args) -> int:
    """The unseen-coordinate splits alone (a shorter rerun of part 1 after a change that only
    touches them): the same seeds, splits and methods as the full run."""
    t_start = time.perf_counter()
    seeds = list(range(args.seeds or 5))
    out_path = args.out or RESULTS_DIR / "funbat_unseen.md"
    info, monitor = machine_info(), CpuMonitor()
    recs, sizes, _ = part_accuracy(seeds, False, unseen_only=True)
    names = list(datasets(False))
    rows, worst = [], {}
    for method in ("funbat", "funbat_validate_on"):
        for (n, _sp), (f, b, pr) in ratio_rows(recs, names, method).items():
            rows.append((n, LABEL[method], f"{f:.4g}", LABEL[b], f"{pr:.4g}", f"{f / pr:.3f}"))
            worst[method] = max(worst.get(method, 0.0), f / pr)
            print(f"  {n:<8s} {method:<18s} {f:.4g} vs {b} {pr:.4g}: ratio {f / pr:.3f}")
    covs = [r["cov95"] for (n, sp, m), rs in recs.items() if m == "funbat" for r in rs]
    result = dict(ratio_peer_unseen=worst["funbat"],
                  ratio_peer_unseen_validate_on=worst["funbat_validate_on"],
                  cov95_unseen_gridded=float(np.mean(covs)))  # fmt: skip
    details = run_details(monitor, len(seeds))
    details["what"] = ("the unseen-coordinate splits of `benchmarks/funbat.py` alone (20 % of "
                       "the interior months / time stamps held out whole), the same seeds, "
                       "methods and peers as the full run; no irregular set")  # fmt: skip
    sections = [("Run details", "\n".join(f"- {k}: {v}" for k, v in details.items())),
                ("FunBaT against the best peer, unseen coordinates, RMSE (mean over seeds)",
                 markdown_table(["data set", "FunBaT", "RMSE", "best peer", "peer RMSE",
                                 "ratio"], rows))]  # fmt: skip
    sections += [(n, accuracy_table(recs, sizes, n)) for n in names]
    write_markdown(out_path, "FunBaT benchmark: unseen coordinates", info, sections)
    print(f"wrote {out_path}", flush=True)
    finish(monitor, t_start, **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
