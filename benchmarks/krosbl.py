#!/usr/bin/env python
r"""KroSBL: Kronecker-structured sparse Bayesian learning vs classic SBL and scikit-learn ARD.

Three parts, all in one invocation (float64, CPU):

1. **The paper's synthetic setup** (He & Joseph, IEEE TSP 2024; ``../shared/papers/krosbl.md``
   §4): :math:`y = (A_1\otimes A_2\otimes A_3)x + n`, :math:`N_i = 15` (N = 3375),
   :math:`M = 8\cdot12\cdot15 = 1440`, 3 non-zeros per factor (27 in all), i.i.d. N(0,1)
   dictionaries drawn anew each trial, SNR 5…30 dB, known σ²
   (:func:`bayeslr.datasets.kronecker_sparse_problem`). Methods: SVD-KroSBL, AM-KroSBL and
   classic SBL (``method="sbl"``, dense E-step) from :mod:`bayeslr.models.krosbl`, and
   scikit-learn's ``ARDRegression`` on the dense 1440×3375 A (no intercept, defaults otherwise)
   at 25 dB on a few trials. Metrics: NMSE = ‖x̂−x‖²/‖x‖² (mean and median over trials),
   support recovery rate SRR = |Ŝ∩S|/|Ŝ∪S| with the model's own support estimate
   (``KroSBLResult.support``: the posterior rule |μ_j|/sd_j > 3 decided per factor; for ARD,
   the non-zero coefficients), wall time per trial (one jitted call; compile excluded and
   reported; median over trials).
2. **Scale**: N = 64³ = 262,144 unknowns, dictionaries 32×64, 32×64, 64×64 (M = 65,536 = N/4),
   27 non-zeros, 25 dB: SVD-KroSBL fit time (median of repeated fits, compile reported apart)
   and NMSE. Dense SBL would need the 65,536×262,144 A (137 GB in float64) and is not run.
3. **IRS-MIMO channel estimation** (:func:`bayeslr.datasets.irs_mimo_problem`: 6 MS, 16 BS
   antennas, 256 IRS elements, G = 18, N = 5832, M = 288, complex): NMSE of the cascaded channel
   in dB (10·log10 of the mean over trials) vs SNR 4…20 dB for SVD-KroSBL, AM-KroSBL and the
   pattern-coupled PC-KroSBL (``coupling=``, when the installed ``krosbl_em`` has it), beside
   the reference table of the notes.

Usage::

    .venv/bin/python benchmarks/krosbl.py            # full run -> benchmarks/results/krosbl.md
    .venv/bin/python benchmarks/krosbl.py --quick    # < 60 s; last stdout line: RESULT ...
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

from bayeslr.datasets import irs_mimo_problem, kron_apply, kronecker_sparse_problem
from bayeslr.metrics import nmse, support_recovery_rate
from bayeslr.models.krosbl import krosbl_em

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` beside this script
from _common import (
    RESULTS_DIR,
    CpuMonitor,
    finish,
    fmt_e,
    fmt_s,
    fmt_x,
    machine_info,
    markdown_table,
    run_details,
    write_markdown,
)

SYN = dict(n=(15, 15, 15), m=(8, 12, 15), k=3)
SNRS = (5, 10, 15, 20, 25, 30)
REF_SNR = 25
BIG = dict(n=(64, 64, 64), m=(32, 32, 64), k=3, snr_db=25.0)
IRS_SNRS = (4, 8, 12, 16, 20)
PC_BETA = 0.8
PC_PRUNE = (1e-2, 1e-1, 1e-2)  # the reference's per-factor thresholds for PC-KroSBL
IRS_MAX_ITER = 1000  # AM and PC-KroSBL need 200-1000 EM iterations here (150 stops them early)
RESTARTS = 16  # the extra SVD-KroSBL row at 25 dB

TARGET_NMSE = 1e-3
TARGET_T = 0.05
TARGET_SPEEDUP = 100.0
REF_SRR = 0.84
TARGET_T_BIG = 30.0

# the notes' reference (the authors' algorithm re-run in numpy, means; 9-10 trials, cSBL 3)
REF_SYN = {
    "svd": {5: (1.4e-2, 0.47, 0.35), 15: (1.4e-3, 0.79, 0.23), 25: (3.9e-4, 0.84, 0.21)},
    "am": {5: (1.5e-1, 0.03, 2.6), 15: (4.9e-3, 0.53, 1.7), 25: (1.7e-3, 0.68, 0.8)},
    "sbl": {15: (1.0e-2, 0.46, 15.0), 25: (2.0e-3, 0.62, 13.0)},
}
# the notes' IRS table (the authors' MATLAB result files, 50 trials), NMSE dB at 4..20 dB
REF_IRS = {
    "PC-KroSBL β=0.8": (-5.1, -8.8, -13.1, -20.5, -25.3, "27 / 7.4"),
    "PC-KroSBL β=0.5": (-4.9, -8.5, -12.2, -19.5, -22.2, "28 / 5.4"),
    "SVD-KroSBL": (-2.2, -5.2, -7.1, -9.1, -9.8, "30 / 5.7"),
    "AM-KroSBL": (-1.5, -4.9, -7.1, -8.6, -11.6, "44 / 11.9"),
    "cSBL": (-0.2, -1.4, -3.3, -6.4, -8.4, "63 / 9.0"),
    "PC-SBL": (0.0, 0.1, -0.4, -2.2, -4.3, "88 / 46"),
}
LABEL = {
    "svd": "SVD-KroSBL",
    "svd_r": f"SVD-KroSBL, restarts={RESTARTS}",
    "am": "AM-KroSBL",
    "sbl": "classic SBL",
    "pc": "PC-KroSBL",
}


# --------------------------------------------------------------------------------------------
# a compiled fit per (method, shapes)


class Fitter:
    """``jax.jit(partial(krosbl_em, method=..., **opts))`` compiled ahead of time once per input
    shape (y, factors and the noise variance are traced, the options static)."""

    def __init__(self, method: str, **opts):
        self.fn = jax.jit(functools.partial(krosbl_em, method=method, **opts))
        self.compiled = {}
        self.compile_s = {}

    def __call__(self, y, factors, sigma2):
        y = jnp.asarray(y)
        factors = tuple(jnp.asarray(a) for a in factors)
        s2 = jnp.asarray(sigma2, jnp.float64)
        key = (y.shape, y.dtype, tuple((a.shape, a.dtype) for a in factors))
        if key not in self.compiled:
            t0 = time.perf_counter()
            self.compiled[key] = self.fn.lower(y, factors, noise=s2).compile()
            self.compile_s[key] = time.perf_counter() - t0
            jax.block_until_ready(self.compiled[key](y, factors, noise=s2))  # warm-up
        t0 = time.perf_counter()
        res = jax.block_until_ready(self.compiled[key](y, factors, noise=s2))
        return res, time.perf_counter() - t0

    @property
    def compile_total(self) -> float:
        return sum(self.compile_s.values())


def _seed(part: int, snr: float, trial: int) -> int:
    return part * 1_000_000 + round(snr) * 1000 + trial


# --------------------------------------------------------------------------------------------
# part 1: the paper's synthetic setup


ARD_MAX_ITER = [300]  # scikit-learn's default; --ard-max-iter


def run_ard(p):
    """scikit-learn ARDRegression on the dense real A (no intercept); returns (coef, seconds)."""
    from sklearn.linear_model import ARDRegression

    a = p.factors[0]
    for f in p.factors[1:]:
        a = np.kron(a, f)
    t0 = time.perf_counter()
    model = ARDRegression(fit_intercept=False, max_iter=ARD_MAX_ITER[0]).fit(a, p.y)
    return model.coef_, time.perf_counter() - t0, getattr(model, "n_iter_", None)


def part_synthetic(trials: int, sbl_trials: int, sbl_snrs, ard_trials: int):
    fitters = {
        "svd": Fitter("svd"),
        "am": Fitter("am"),
        "sbl": Fitter("sbl"),
        "svd_r": Fitter("svd", restarts=RESTARTS),
    }
    recs = {m: {s: [] for s in SNRS} for m in fitters}
    for snr in SNRS:
        for t in range(trials):
            p = kronecker_sparse_problem(_seed(1, snr, t), snr_db=snr, **SYN)
            for method in ("svd", "am"):
                res, dt = fitters[method](p.y, p.factors, p.sigma2)
                recs[method][snr].append(_score(res, p, dt))
            if snr in sbl_snrs and t < sbl_trials:
                res, dt = fitters["sbl"](p.y, p.factors, p.sigma2)
                recs["sbl"][snr].append(_score(res, p, dt))
            if snr == REF_SNR:
                res, dt = fitters["svd_r"](p.y, p.factors, p.sigma2)
                recs["svd_r"][snr].append(_score(res, p, dt))
        line = "  ".join(
            f"{m} nmse {np.mean([r['nmse'] for r in recs[m][snr]]):.2e} "
            f"srr {np.mean([r['srr'] for r in recs[m][snr]]):.2f} "
            f"t {np.median([r['t'] for r in recs[m][snr]]):.3g}s"
            for m in fitters
            if recs[m][snr]
        )
        print(f"[synthetic] {snr:>2d} dB  {line}", flush=True)

    ard = []
    for t in range(ard_trials):
        p = kronecker_sparse_problem(_seed(1, REF_SNR, t), snr_db=REF_SNR, **SYN)
        coef, dt, n_iter = run_ard(p)
        svd = recs["svd"][REF_SNR][t]
        ard.append(
            {
                "nmse": nmse(coef, p.x),
                "srr": support_recovery_rate(coef != 0, p.support),
                "t": dt,
                "n_iter": n_iter,
                "svd_nmse": svd["nmse"],
                "svd_t": svd["t"],
            }
        )
        print(
            f"[ARD] trial {t}: {dt:.1f} s, nmse {ard[-1]['nmse']:.2e} "
            f"(SVD-KroSBL on the same data {svd['nmse']:.2e} in {svd['t']:.3g} s)",
            flush=True,
        )
    compile_s = {m: f.compile_total for m, f in fitters.items()}
    return recs, ard, compile_s


def _score(res, p, dt):
    return {
        "nmse": nmse(np.asarray(res.mean), p.x),
        "srr": support_recovery_rate(np.asarray(res.support), p.support),
        "t": dt,
        "n_iter": int(res.n_iter),
    }


def synthetic_table(recs) -> str:
    rows = []
    for snr in SNRS:
        for m in ("svd", "svd_r", "am", "sbl"):
            rs = recs[m][snr]
            if not rs:
                continue
            ref = REF_SYN.get(m, {}).get(snr)
            rows.append(
                (
                    snr,
                    LABEL[m],
                    len(rs),
                    fmt_e(float(np.mean([r["nmse"] for r in rs]))),
                    fmt_e(float(np.median([r["nmse"] for r in rs]))),
                    f"{np.mean([r['srr'] for r in rs]):.3f}",
                    fmt_s(float(np.median([r["t"] for r in rs]))),
                    f"{np.mean([r['n_iter'] for r in rs]):.0f}",
                    "—" if ref is None else f"{ref[0]:.1e} / {ref[1]:.2f} / {ref[2]:g} s",
                )
            )
    return markdown_table(
        [
            "SNR (dB)",
            "method",
            "trials",
            "NMSE mean",
            "NMSE median",
            "SRR mean",
            "time / trial (median, s)",
            "EM iters (mean)",
            "reference NMSE / SRR / time",
        ],
        rows,
    )


# --------------------------------------------------------------------------------------------
# part 2: scale


def part_scale(repeats: int):
    p = kronecker_sparse_problem(_seed(2, BIG["snr_db"], 0), **BIG)
    fit = Fitter("svd")
    times = []
    res = None
    for _ in range(repeats):
        res, dt = fit(p.y, p.factors, p.sigma2)
        times.append(dt)
    out = {
        "N": p.x.size,
        "M": p.y.size,
        "t": float(np.median(times)),
        "times": times,
        "compile": fit.compile_total,
        "nmse": nmse(np.asarray(res.mean), p.x),
        "srr": support_recovery_rate(np.asarray(res.support), p.support),
        "n_iter": int(res.n_iter),
        "resid": float(
            np.linalg.norm(kron_apply(p.factors, np.asarray(res.mean)) - p.y) / np.linalg.norm(p.y)
        ),
    }
    print(
        f"[scale] N={out['N']:,} M={out['M']:,}: fit {out['t']:.3g} s (compile "
        f"{out['compile']:.2f} s), nmse {out['nmse']:.2e}, srr {out['srr']:.2f}, "
        f"{out['n_iter']} iters",
        flush=True,
    )
    return out


# --------------------------------------------------------------------------------------------
# part 3: IRS-MIMO


def part_irs(trials: int):
    fitters = {
        "svd": Fitter("svd", max_iter=IRS_MAX_ITER),
        "am": Fitter("am", max_iter=IRS_MAX_ITER),
        "pc": Fitter(
            "am", coupling=(PC_BETA, None, PC_BETA), prune=PC_PRUNE, max_iter=IRS_MAX_ITER
        ),
    }
    pc_note = (
        f"AM with coupling=({PC_BETA}, None, {PC_BETA}) (IRS-AoA and BS-AoA factors coupled) "
        f"and the reference's per-factor prune={PC_PRUNE}; every IRS method runs with "
        f"max_iter={IRS_MAX_ITER}"
    )
    recs = {m: {s: [] for s in IRS_SNRS} for m in fitters}
    for snr in IRS_SNRS:
        for t in range(trials):
            p = irs_mimo_problem(_seed(3, snr, t), float(snr))
            for m, fit in fitters.items():
                res, dt = fit(p.y, p.factors, p.sigma2)
                recs[m][snr].append(
                    {
                        "nmse": p.channel_nmse(np.asarray(res.mean)),
                        "nmse_x": nmse(np.asarray(res.mean), p.x),
                        "t": dt,
                        "n_iter": int(res.n_iter),
                    }
                )
        print(
            f"[IRS] {snr:>2d} dB  " + "  ".join(f"{m} {_db(recs[m][snr]):.1f} dB" for m in fitters),
            flush=True,
        )
    return recs, pc_note, {m: f.compile_total for m, f in fitters.items()}


def _db(rs, key="nmse") -> float:
    return 10 * math.log10(float(np.mean([r[key] for r in rs])))


def _db_median(rs, key="nmse") -> float:
    return 10 * math.log10(float(np.median([r[key] for r in rs])))


def irs_table(recs, trials: int) -> str:
    rows = []
    for m in ("pc", "svd", "am"):
        label = f"{LABEL[m]} β={PC_BETA} (bayeslr)" if m == "pc" else f"{LABEL[m]} (bayeslr)"
        t_lo = float(np.median([r["t"] for r in recs[m][IRS_SNRS[0]]]))
        t_hi = float(np.median([r["t"] for r in recs[m][IRS_SNRS[-1]]]))
        rows.append(
            (
                label,
                *[f"{_db(recs[m][s]):.1f} ({_db_median(recs[m][s]):.1f})" for s in IRS_SNRS],
                f"{t_lo:.3g} / {t_hi:.3g}",
            )
        )
    for name, vals in REF_IRS.items():
        rows.append((f"{name} (reference)", *[f"{v:+.1f}" for v in vals[:5]], vals[5]))
    headers = ["method", *[f"{s} dB" for s in IRS_SNRS], "time / run at 4 / 20 dB (s)"]
    return (
        markdown_table(headers, rows)
        + f"\n\nbayeslr rows: {trials} trials per SNR, NMSE of the cascaded channels "
        "H₂diag(θ_p)H₁ averaged over the 6 IRS patterns, then over trials, in dB (in "
        "brackets: the median over trials; a gap between the two means a few trials failed "
        "badly)."
    )


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few trials, no ARD, < 60 s")
    p.add_argument("--trials", type=int, default=None, help="trials per SNR (default 50 / 3)")
    p.add_argument(
        "--sbl-trials",
        type=int,
        default=None,
        help="classic-SBL trials at 5, 15 and 25 dB (default 2 / 0)",
    )
    p.add_argument(
        "--ard-trials", type=int, default=None, help="ARDRegression trials at 25 dB (default 1 / 0)"
    )
    p.add_argument(
        "--ard-max-iter",
        type=int,
        default=300,
        help="ARDRegression max_iter (scikit-learn default 300; a cap makes ARD faster)",
    )
    p.add_argument("--irs-trials", type=int, default=None, help="IRS trials per SNR (50 / 3)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed fits at N = 262,144 (default 5 / 3)"
    )
    p.add_argument("--out", type=Path, default=None, help="Markdown output (full run default)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    ARD_MAX_ITER[0] = args.ard_max_iter
    q = args.quick
    trials = args.trials or (3 if q else 50)
    sbl_trials = args.sbl_trials if args.sbl_trials is not None else (0 if q else 2)
    ard_trials = args.ard_trials if args.ard_trials is not None else (0 if q else 1)
    irs_trials = args.irs_trials or (3 if q else 50)
    repeats = args.repeats or (3 if q else 5)
    sbl_snrs = (5, 15, 25)
    out_path = args.out or (None if q else RESULTS_DIR / "krosbl.md")
    info = machine_info()
    monitor = CpuMonitor()

    recs, ard, compile_syn = part_synthetic(trials, sbl_trials, sbl_snrs, ard_trials)
    big = part_scale(repeats)
    irs, pc_note, compile_irs = part_irs(irs_trials)

    svd25 = recs["svd"][REF_SNR]
    nmse_svd = float(np.mean([r["nmse"] for r in svd25]))
    nmse_restarts = float(np.mean([r["nmse"] for r in recs["svd_r"][REF_SNR]]))
    srr_svd = float(np.mean([r["srr"] for r in svd25]))
    t_trial = float(np.median([r["t"] for r in svd25]))
    speedup, ard_note = None, "ARD skipped (--quick or --ard-trials 0)"
    if ard:
        t_ard = float(np.median([r["t"] for r in ard]))
        t_svd = float(np.median([r["svd_t"] for r in ard]))
        ard_nmse = float(np.mean([r["nmse"] for r in ard]))
        svd_nmse = float(np.mean([r["svd_nmse"] for r in ard]))
        speedup = t_ard / t_svd
        ard_note = (
            f"on the same {len(ard)} trials: SVD-KroSBL NMSE {svd_nmse:.2e} "
            f"{'<=' if svd_nmse <= ard_nmse else '>'} ARD NMSE {ard_nmse:.2e}"
        )
        if svd_nmse > ard_nmse:
            ard_note += " (SVD-KroSBL is NOT at equal-or-better NMSE here)"
    pc_db = _db(irs["pc"][IRS_SNRS[-1]])

    result = dict(
        nmse_svd_25db=nmse_svd,
        srr_svd_25db=srr_svd,
        t_trial_s=t_trial,
        speedup_ard=speedup,
        t_262k_s=big["t"],
        nmse_db_pc_20db=pc_db,
    )
    print(f"speedup_ard: {ard_note}", flush=True)
    print(f"PC-KroSBL: {pc_note}", flush=True)

    if out_path is not None:
        details = run_details(monitor, trials)
        details["repeats"] = (
            f"{trials} trials per SNR (SVD/AM), classic SBL {sbl_trials} per SNR, ARD "
            f"{ard_trials} at 25 dB, IRS {irs_trials} per SNR, {repeats} fits at N = 262,144"
        )
        ard_rows = [
            (
                i,
                fmt_s(r["t"]),
                str(r["n_iter"]),
                fmt_e(r["nmse"]),
                f"{r['srr']:.3f}",
                fmt_s(r["svd_t"]),
                fmt_e(r["svd_nmse"]),
                fmt_x(r["t"] / r["svd_t"]),
            )
            for i, r in enumerate(ard)
        ]
        targets = [
            ("SVD-KroSBL NMSE at 25 dB (mean)", f"<= {TARGET_NMSE:g}", fmt_e(nmse_svd),
             _ok(nmse_svd <= TARGET_NMSE)),
            (f"the same with restarts={RESTARTS}", f"<= {TARGET_NMSE:g}", fmt_e(nmse_restarts),
             _ok(nmse_restarts <= TARGET_NMSE)),
            ("SVD-KroSBL time per trial (median, 25 dB)", f"< {TARGET_T} s", fmt_s(t_trial),
             _ok(t_trial < TARGET_T)),
            ("speedup vs ARDRegression at equal or better NMSE", f">= {TARGET_SPEEDUP:g}x",
             fmt_x(speedup), "n/a" if speedup is None else _ok(
                 speedup >= TARGET_SPEEDUP and "NOT" not in ard_note)),
            ("SVD-KroSBL SRR at 25 dB (mean)", f"> {REF_SRR}", f"{srr_svd:.3f}",
             _ok(srr_svd > REF_SRR)),
            ("fit at N = 262,144", f"< {TARGET_T_BIG:g} s", fmt_s(big["t"]),
             _ok(big["t"] < TARGET_T_BIG)),
            ("PC-KroSBL NMSE at 20 dB (IRS)", "reference -25.3 dB",
             f"{pc_db:.1f} dB", _ok(pc_db <= -25.3)),
        ]  # fmt: skip
        big_table = markdown_table(
            ["N", "M", "fit (median, s)", "compile (s)", "EM iters", "NMSE", "SRR", "‖y−Aμ‖/‖y‖"],
            [
                (
                    f"{big['N']:,}",
                    f"{big['M']:,}",
                    fmt_s(big["t"]),
                    f"{big['compile']:.2f}",
                    big["n_iter"],
                    fmt_e(big["nmse"]),
                    f"{big['srr']:.3f}",
                    fmt_e(big["resid"]),
                )
            ],
        )
        compile_line = (
            ", ".join(f"{LABEL[m]} {s:.2f} s" for m, s in compile_syn.items() if s > 0)
            + "; IRS: "
            + ", ".join(f"{LABEL[m]} {s:.2f} s" for m, s in compile_irs.items())
        )
        sections = [
            ("Run details", "\n".join(f"- {k}: {v}" for k, v in details.items())),
            (
                "Targets",
                markdown_table(["target", "goal", "measured", "met"], targets),
            ),
            (
                "1. Synthetic setup (N = 3375, M = 1440, 27 non-zeros)",
                synthetic_table(recs)
                + "\n\nTimes exclude compilation (one AOT compile per method and shape: "
                + compile_line
                + "). Classic SBL is the dense-E-step baseline (M×M Cholesky per iteration), "
                f"run on {sbl_trials} trials at 5, 15 and 25 dB only (seconds per trial). The "
                "reference column is the notes' numpy re-run of the authors' algorithm "
                "(≤ 10 trials, fixed-threshold support) on another machine.",
            ),
            (
                "ARDRegression (scikit-learn, dense A, 25 dB)",
                (
                    markdown_table(
                        [
                            "trial",
                            "ARD time (s)",
                            "ARD iters",
                            "ARD NMSE",
                            "ARD SRR",
                            "SVD-KroSBL time (s)",
                            "SVD-KroSBL NMSE",
                            "ratio",
                        ],
                        ard_rows,
                    )
                    if ard_rows
                    else "not run"
                )
                + f"\n\nspeedup_ard = median ARD time / median SVD-KroSBL time, {ard_note}. "
                "ARD's support is its non-zero coefficients (pruned at threshold_lambda = 1e4); "
                f"max_iter = {ARD_MAX_ITER[0]} (scikit-learn's default is 300).",
            ),
            ("2. Scale: N = 64³, M = 32·32·64 = N/4, 25 dB, SVD-KroSBL", big_table),
            (
                "3. IRS-MIMO channel estimation (N = 5832, M = 288, complex)",
                irs_table(irs, irs_trials) + f"\n\nPC-KroSBL: {pc_note}.",
            ),
            (
                "Notes",
                "- Support estimate: the library's posterior rule (|μ_j|/sd_j > 3, decided per "
                "factor and combined as a Kronecker product), not the reference's fixed "
                "1e-3·max|x̂| threshold after pruning.\n"
                "- Pruning: the library defaults (1e-5 of max γ_i for SVD, 1e-3 for SBL, 1e-2 "
                "for AM), at every SNR and in the IRS case too (the reference's IRS SVD code "
                "prunes only at ≥ 25 dB); PC-KroSBL uses the reference's per-factor "
                f"{PC_PRUNE}.\n"
                f"- The restarts row runs {RESTARTS} EM starts (vmapped) and keeps the lowest "
                "final objective; the mean NMSE of every method is dominated by the few trials "
                "(1-3 of 50) that end in a local minimum with a wrong support on the 8×15 factor "
                "(the oracle γ has a clearly lower objective there).\n"
                "- IRS: our generator (bayeslr.datasets.irs_mimo_problem) models the IRS as a "
                "ULA with cascaded on-grid angles; the reference's MATLAB generator differs "
                "(its SVD and AM rows are 10-20 dB worse than ours at 20 dB), so the reference "
                "rows are context, not a same-data comparison.\n"
                "- Noise variance known (σ² = ‖Ax‖²/(M·SNR)), as in the paper's main "
                "experiments; every trial draws new dictionaries (synthetic) or new angles, "
                "gains, pilots and IRS patterns (IRS).\n"
                "- The machine is shared; see the CPU share above.",
            ),
        ]
        path = write_markdown(out_path, "KroSBL benchmark", info, sections)
        print(f"wrote {path}", flush=True)
    finish(monitor, t_start, **result)
    return 0


def _ok(flag: bool) -> str:
    return "yes" if flag else "no"


if __name__ == "__main__":
    raise SystemExit(main())
