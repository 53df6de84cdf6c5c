#!/usr/bin/env python
r"""State-space GP: Matérn-3/2 log marginal likelihood + gradient, O(n) Kalman filter vs peers.

Measures ``f(θ) = log N(y | 0, K(θ) + σ_n² I)`` with ``θ = (log ℓ, log σ², log σ_n²)`` and its
gradient as one ``jax.jit(jax.value_and_grad(f))`` for irregularly spaced sorted times, for

* ``bayeslr.linalg.statespace.log_marginal_likelihood`` with the sequential Kalman filter
  (``lax.scan``) and the parallel one (``parallel=True``, ``lax.associative_scan``);
* tinygp's quasiseparable solver (``tinygp.kernels.quasisep.Matern32`` +
  ``tinygp.GaussianProcess(kernel, t, diag=σ_n²).log_probability(y)``), at every n;
* a dense Cholesky in JAX (``bayeslr`` Gram matrix + ``jnp.linalg.cholesky``), n <= 4000 only.

All run in the same invocation on identical inputs. The model is the same in every library:
``k(τ) = σ² (1 + √3|τ|/ℓ) exp(-√3|τ|/ℓ)``; bayeslr ``Matern32(variance=σ², lengthscale=ℓ)``,
tinygp ``quasisep.Matern32(scale=ℓ, sigma=σ)`` (tinygp's ``sigma`` is the standard deviation,
``k = sigma² ...``), noise variance σ_n² (bayeslr ``noise``, tinygp ``diag``).

Inputs: ``t = cumsum(Exponential(1) gaps)`` (seed 0), ``y = sin(2π t / 50) + 0.3·N(0, 1)``
(seed 1), ℓ = 5, σ² = 1, σ_n² = 0.1, float64.

Usage::

    .venv/bin/python benchmarks/statespace.py           # full -> benchmarks/results/statespace.md
    .venv/bin/python benchmarks/statespace.py --quick   # < 60 s; last stdout line: RESULT ...
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

from bayeslr.gp import Matern32
from bayeslr.linalg.statespace import (
    from_kernel,
    kalman_filter,
    log_marginal_likelihood,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` beside this script
from _common import (
    RESULTS_DIR,
    CpuMonitor,
    Timing,
    finish,
    fmt_e,
    fmt_s,
    machine_info,
    markdown_table,
    report_targets,
    run_details,
    time_jax,
    write_markdown,
)

try:
    import tinygp
    from tinygp import GaussianProcess
    from tinygp.kernels import quasisep
except ImportError:  # pragma: no cover
    tinygp = None

LENGTHSCALE = 5.0
VARIANCE = 1.0
NOISE = 0.1
PERIOD = 50.0
T_SEED, Y_SEED = 0, 1
DENSE_MAX_N = 4000

FULL_SIZES = [1_000, 4_000, 10_000, 100_000, 1_000_000]
QUICK_SIZES = [1_000, 10_000, 100_000]
QUICK_1E6_BUDGET_S = 25.0  # --quick adds n = 1e6 (sequential) only if started before this
TARGET_RATIO_1E5 = 1.0
TARGET_REL_ERR = 1e-6


# --------------------------------------------------------------------------------------------
# problem


def make_inputs(n: int):
    gaps = np.random.default_rng(T_SEED).exponential(1.0, n)
    t = np.cumsum(gaps)
    y = np.sin(2.0 * np.pi * t / PERIOD) + 0.3 * np.random.default_rng(Y_SEED).standard_normal(n)
    theta = np.array([math.log(LENGTHSCALE), math.log(VARIANCE), math.log(NOISE)])
    return jnp.asarray(theta), jnp.asarray(t), jnp.asarray(y)


def _kernel(theta):
    return Matern32(variance=jnp.exp(theta[1]), lengthscale=jnp.exp(theta[0]))


def bayeslr_seq(theta, t, y):
    return log_marginal_likelihood(_kernel(theta), t, y, jnp.exp(theta[2]), parallel=False)


def bayeslr_par(theta, t, y):
    return log_marginal_likelihood(_kernel(theta), t, y, jnp.exp(theta[2]), parallel=True)


def tinygp_lml(theta, t, y):
    k = quasisep.Matern32(scale=jnp.exp(theta[0]), sigma=jnp.exp(0.5 * theta[1]))
    return GaussianProcess(k, t, diag=jnp.exp(theta[2])).log_probability(y)


def dense_lml(theta, t, y):
    a = _kernel(theta)(t) + jnp.exp(theta[2]) * jnp.eye(t.shape[0], dtype=t.dtype)
    chol = jnp.linalg.cholesky(a)
    alpha = jax.scipy.linalg.cho_solve((chol, True), y)
    n = t.shape[0]
    return (
        -0.5 * (y @ alpha) - jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * n * math.log(2 * math.pi)
    )


METHODS = {
    "seq": bayeslr_seq,
    "par": bayeslr_par,
    "tinygp": tinygp_lml,
    "dense": dense_lml,
}


def compile_and_time(fn, args, repeats: int, warmup: int = 1) -> tuple[Timing, float | None]:
    """``time_jax`` on an AOT-compiled ``jit(value_and_grad(fn))``; also returns the XLA temp
    buffer size (bytes) from ``Compiled.memory_analysis()`` (None where unavailable)."""
    jitted = jax.jit(jax.value_and_grad(fn))
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = None
    try:
        ma = compiled.memory_analysis()
        mem = float(ma.temp_size_in_bytes) if ma is not None else None
    except Exception:  # pragma: no cover - backend without memory stats
        mem = None
    tm = time_jax(compiled, *args, repeats=repeats, warmup=warmup, jit=False)
    tm.compile_s = compile_s
    return tm, mem


def rel_err(out, ref) -> float:
    """max over (value, gradient components) of |a - b| / |b|."""
    a = np.concatenate([[float(out[0])], np.asarray(out[1], dtype=float).ravel()])
    b = np.concatenate([[float(ref[0])], np.asarray(ref[1], dtype=float).ravel()])
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def fmt_mb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.3g}"


# --------------------------------------------------------------------------------------------
# where the time goes


def breakdown(n: int, repeats: int) -> str:
    """Time the pieces of the sequential bayeslr path at size n: model construction
    (``from_kernel``: ``expm`` per gap + Q), the filter on a prebuilt model, and both
    together, value-only and value+grad, next to tinygp."""
    theta, t, y = make_inputs(n)

    def build(theta, t):
        m = from_kernel(_kernel(theta), t)
        return jnp.sum(m.transitions) + jnp.sum(m.process_covs)

    model = jax.jit(lambda th, t: from_kernel(_kernel(th), t))(theta, t)

    def filt(model, y, theta):
        return kalman_filter(model, y, jnp.exp(theta[2])).log_likelihood

    def filt_vg(model, y, theta):  # gradient w.r.t. the (A, Q) arrays and the noise
        return jax.value_and_grad(filt, argnums=(0, 2))(model, y, theta)

    pieces = [
        ("model build (expm + Q), value", jax.jit(build), (theta, t)),
        ("model build, value+grad", jax.jit(jax.value_and_grad(build)), (theta, t)),
        ("filter (scan) on prebuilt model, value", jax.jit(filt), (model, y, theta)),
        (
            "filter on prebuilt model, value+grad (w.r.t. A, Q, noise)",
            jax.jit(filt_vg),
            (model, y, theta),
        ),
        ("full sequential, value", jax.jit(bayeslr_seq), (theta, t, y)),
        ("full sequential, value+grad", jax.jit(jax.value_and_grad(bayeslr_seq)), (theta, t, y)),
    ]
    if tinygp is not None:
        pieces += [
            ("tinygp, value", jax.jit(tinygp_lml), (theta, t, y)),
            ("tinygp, value+grad", jax.jit(jax.value_and_grad(tinygp_lml)), (theta, t, y)),
        ]
    rows = []
    for label, fn, args in pieces:
        tm = time_jax(fn, *args, repeats=repeats)
        print(
            f"  [breakdown n={n:,}] {label}: {tm.median_s:.4g} s (compile {tm.compile_s:.2f} s)",
            flush=True,
        )
        rows.append((label, fmt_s(tm.median_s), f"{tm.compile_s:.2f}"))
    return markdown_table([f"piece (n = {n:,})", "median (s)", "compile (s)"], rows)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="n = 1e3, 1e4, 1e5 (+ 1e6 sequential if time allows), no parallel; < 60 s; no file",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs (>= 5; default 5/7)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="override the n list")
    p.add_argument("--no-parallel", action="store_true", help="skip bayeslr parallel=True")
    p.add_argument("--out", default=None, help="Markdown output (default: full run only)")
    p.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the pieces (model build vs scan) at n = 1e5 (default: full run only)",
    )
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    repeats = args.repeats or (5 if args.quick else 7)
    if repeats < 5:
        p.error("--repeats must be at least 5 (medians of >= 5 runs)")
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    out_path = args.out or (None if args.quick else RESULTS_DIR / "statespace.md")
    do_breakdown = (not args.quick) if args.breakdown is None else args.breakdown
    # --quick skips the parallel form: its compile alone takes ~25-40 s per size on 2 cores.
    par_sizes = set() if (args.no_parallel or args.quick) else set(sizes)
    info = machine_info(
        {
            "tinygp": tinygp.__version__
            if tinygp is not None
            else "not installed (pip install tinygp)"
        }
    )
    monitor = CpuMonitor()

    res, rows = {}, []
    res_1e6_quick: dict = {}
    for n in sizes:
        theta, t, y = make_inputs(n)
        xs = (theta, t, y)
        r: dict = {"n": n}
        todo = ["seq"]
        if n in par_sizes:
            todo.append("par")
        if tinygp is not None:
            todo.append("tinygp")
        if n <= DENSE_MAX_N:
            todo.append("dense")
        for name in todo:
            tm, mem = compile_and_time(METHODS[name], xs, repeats)
            r[name] = tm.median_s
            r[name + "_compile"] = tm.compile_s
            r[name + "_mem"] = mem
            r[name + "_out"] = (float(tm.output[0]), np.asarray(tm.output[1]))
            print(
                f"n={n:>9,} {name:>6s}: v+g {tm.median_s:.4g} s  compile {tm.compile_s:.2f} s  "
                f"XLA temp {fmt_mb(mem)} MiB  value {float(tm.output[0]):.10g}",
                flush=True,
            )
        errs_t, errs_d = [], []
        for name in ("seq", "par"):
            if name not in r:
                continue
            if "tinygp" in r:
                r[name + "_err_t"] = rel_err(r[name + "_out"], r["tinygp_out"])
                errs_t.append(r[name + "_err_t"])
            if "dense" in r:
                r[name + "_err_d"] = rel_err(r[name + "_out"], r["dense_out"])
                errs_d.append(r[name + "_err_d"])
        if "tinygp" in r and "dense" in r:
            r["tinygp_err_d"] = rel_err(r["tinygp_out"], r["dense_out"])
        r["err_t"] = max(errs_t) if errs_t else None
        r["err_d"] = max(errs_d) if errs_d else None
        res[n] = r
        if args.quick and n == sizes[-1] and time.perf_counter() - t_start < QUICK_1E6_BUDGET_S:
            # t_1e6_s in --quick: the sequential form only (compile + 5 runs, no warm-up call)
            theta6, t6_, y6 = make_inputs(1_000_000)
            tm, mem = compile_and_time(bayeslr_seq, (theta6, t6_, y6), repeats, warmup=0)
            res_1e6_quick.update(seq=tm.median_s, seq_compile=tm.compile_s)
            print(
                f"n=1,000,000    seq: v+g {tm.median_s:.4g} s  compile {tm.compile_s:.2f} s  "
                f"XLA temp {fmt_mb(mem)} MiB (quick: t_1e6_s only)",
                flush=True,
            )

        def ratio(name, r=r):
            return r[name] / r["tinygp"] if name in r and "tinygp" in r else None

        r["ratio_seq"], r["ratio_par"] = ratio("seq"), ratio("par")
        compile_cell = f"{r['seq_compile']:.2f} / " + (
            f"{r['par_compile']:.2f}" if "par" in r else "—"
        )
        err_cell = f"{fmt_e(r['err_t'])} / " + (
            fmt_e(r["err_d"]) if r["err_d"] is not None else "—"
        )
        if "tinygp_err_d" in r:
            err_cell += f" (tinygp vs dense {fmt_e(r['tinygp_err_d'])})"
        mem_cell = " / ".join(
            fmt_mb(r.get(k + "_mem")) if k in r else "—" for k in ("seq", "par", "tinygp", "dense")
        )
        rows.append(
            (
                f"{n:,}",
                fmt_s(r["seq"]),
                fmt_s(r.get("par")) if "par" in r else "—",
                compile_cell,
                fmt_s(r.get("tinygp")) if "tinygp" in r else "n/a",
                f"{r['ratio_seq']:.3g}" if r["ratio_seq"] is not None else "n/a",
                f"{r['ratio_par']:.3g}" if r["ratio_par"] is not None else "—",
                fmt_s(r.get("dense")) if "dense" in r else "—",
                err_cell,
                mem_cell,
            )
        )

    headers = [
        "n",
        "bayeslr seq v+g (s)",
        "bayeslr par v+g (s)",
        "compile seq / par (s)",
        "tinygp v+g (s)",
        "ratio seq/tinygp",
        "ratio par/tinygp",
        "dense Cholesky v+g (s)",
        "max rel err vs tinygp / vs dense (value+grad)",
        "XLA temp memory seq / par / tinygp / dense (MiB)",
    ]
    table = markdown_table(headers, rows)
    print()
    print(table)

    # targets and RESULT values
    def best(n):
        r = res.get(n)
        if r is None:
            return None, None
        cands = [(r[k], k) for k in ("seq", "par") if k in r]
        return min(cands)

    t5, form5 = best(100_000)
    ratio5 = t5 / res[100_000]["tinygp"] if t5 is not None and "tinygp" in res[100_000] else None
    t6, _ = best(1_000_000)
    if t6 is None and res_1e6_quick:
        t6 = res_1e6_quick["seq"]
    errs = [r["err_t"] for r in res.values() if r["err_t"] is not None]
    max_err = max(errs) if errs else None

    def verdict(ok):
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    targets = [
        (
            f"time ratio bayeslr/tinygp <= {TARGET_RATIO_1E5:g} at n = 1e5 (value+grad, best form)",
            "n/a"
            if ratio5 is None
            else f"{ratio5:.3g} ({form5}: {fmt_s(t5)} s vs tinygp "
            f"{fmt_s(res[100_000]['tinygp'])} s)",
            verdict(None if ratio5 is None else ratio5 <= TARGET_RATIO_1E5),
        ),
        (
            f"value and gradient agree with tinygp to {TARGET_REL_ERR:g} relative (all n)",
            fmt_e(max_err),
            verdict(None if max_err is None else max_err <= TARGET_REL_ERR),
        ),
    ]
    target_table = report_targets(targets)

    if out_path is not None:
        sections = [
            ("Log marginal likelihood + gradient (Matérn-3/2)", table),
            ("Targets", target_table),
        ]
        if do_breakdown and 100_000 in res:
            print("\nbreakdown:")
            sections.append(
                (
                    "Where the time goes (sequential bayeslr, n = 100,000)",
                    breakdown(100_000, repeats),
                )
            )
        info.update(run_details(monitor, repeats))
        notes = (
            "Objective: log N(y | 0, K + σ_n² I), Matérn-3/2 k(τ) = σ²(1 + √3|τ|/ℓ)e^{-√3|τ|/ℓ}, "
            "ℓ = 5, σ² = 1, σ_n² = 0.1; gradient w.r.t. (log ℓ, log σ², log σ_n²). Times "
            "t = cumsum of Exponential(1) gaps (seed 0), y = sin(2πt/50) + 0.3·N(0,1) (seed 1); "
            "float64. bayeslr: `log_marginal_likelihood(Matern32(σ², ℓ), t, y, σ_n², "
            "parallel=...)`; tinygp: `GaussianProcess(quasisep.Matern32(scale=ℓ, sigma=σ), t, "
            "diag=σ_n²).log_probability(y)`; dense: bayeslr Gram matrix + `jnp.linalg.cholesky`, "
            f"n ≤ {DENSE_MAX_N:,}. Every cell is `jax.jit(jax.value_and_grad(f))`, compiled AOT "
            "(`lower().compile()`, compile time separate), one warm-up call, then the median of "
            "the timed runs. Ratios < 1 mean bayeslr is faster. Relative errors: max over the "
            "value and the 3 gradient components of |a − b|/|b|, over the bayeslr forms measured. "
            "Memory: XLA's temporary buffer size of the compiled value+grad executable "
            "(`Compiled.memory_analysis().temp_size_in_bytes`; inputs/outputs excluded) — it "
            "grows linearly in n for the O(n) methods, quadratically for dense. The machine is "
            "shared (2 cores); timings carry that noise."
        )
        write_markdown(
            out_path,
            "State-space GP log marginal likelihood + gradient (bayeslr.linalg.statespace)",
            info,
            [("", notes), *sections],
        )
        print(f"\nwrote {out_path}")

    finish(monitor, t_start, ratio_tinygp_1e5=ratio5, t_1e6_s=t6, max_rel_err=max_err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
