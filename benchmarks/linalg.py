#!/usr/bin/env python
r"""Kronecker GP linear algebra: solve + logdet + gradient of (K_1 ⊗ ... ⊗ K_d + σ²I).

Measures the GP marginal-likelihood terms ``f(ℓ) = yᵀA⁻¹y + log|A|`` with
``A = K_1(ℓ_1) ⊗ ... ⊗ K_d(ℓ_d) + σ²I`` and its gradient with respect to the per-axis
lengthscales ``ℓ``, as one ``jax.jit(jax.value_and_grad(f))`` (factors built inside from ``ℓ``),
for ``bayeslr.linalg.kron.kron_inv_quad_logdet`` and two peers, all in the same invocation:

* dense Cholesky in JAX (``jnp.linalg.cholesky`` + ``cho_solve`` + logdet, the same
  ``value_and_grad``), for N <= 4096 only;
* GPyTorch / linear_operator (Kronecker eigendecomposition path), run as a subprocess in the
  Python 3.11 peer venv ``.venv-peer`` (``benchmarks/peers/gpytorch_kron.py``).

Inputs are identical to the GPyTorch script: per-axis inputs ``linspace(0, 1, n_i)``, RBF factors
with lengthscale 0.1 and variance 1 plus a jitter ``1e-6·I`` on each factor, noise σ² = 0.1,
``y = numpy.random.default_rng(0).standard_normal(N)`` reshaped in C order to the grid. float64.

Usage::

    .venv/bin/python benchmarks/linalg.py            # full run -> benchmarks/results/linalg.md
    .venv/bin/python benchmarks/linalg.py --quick    # < 60 s; last stdout line: RESULT ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _early_blas_threads(argv) -> str | None:
    """``--blas-threads N`` must act before NumPy/SciPy load OpenBLAS (i.e. before JAX)."""
    for i, a in enumerate(argv):
        if a == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--blas-threads="):
            return a.split("=", 1)[1]
    return None


_BLAS_THREADS = _early_blas_threads(sys.argv[1:])
if _BLAS_THREADS is not None:
    for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _BLAS_THREADS

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

from bayeslr.linalg.kron import (
    kron_adjoint_mv,
    kron_dense,
    kron_eigh,
    kron_inv_quad_logdet,
    kron_mv,
    mode_product,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` beside this script
from _common import (
    REPO,
    RESULTS_DIR,
    CpuMonitor,
    finish,
    fmt_e,
    fmt_s,
    fmt_x,
    machine_info,
    markdown_table,
    report_targets,
    run_details,
    time_jax,
    time_jax_interleaved,
    write_markdown,
)

LENGTHSCALE = 0.1
JITTER = 1e-6
NOISE = 0.1
Y_SEED = 0
DENSE_MAX_N = 4096

FULL_SHAPES = [(32, 32), (64, 64), (128, 128), (256, 256), (512, 512), (1024, 1024), (64, 64, 64)]
QUICK_SHAPES = [(32, 32), (64, 64), (256, 256), (1024, 1024)]

PEER_PY = REPO / ".venv-peer" / "bin" / "python"
PEER = {"python": str(PEER_PY), "device": "cpu"}  # set from --peer-python/--peer-device
PEER_SCRIPT = REPO / "benchmarks" / "peers" / "gpytorch_kron.py"
PEER_MISSING = "n/a (run benchmarks/peers/setup_gpytorch.sh)"

TARGET_T_1024 = 1.0
TARGET_SPEEDUP_4096 = 100.0


def shape_str(shape) -> str:
    return "x".join(str(n) for n in shape)


def grid_label(shape) -> str:
    n = shape[0]
    return f"{n}^{len(shape)}" if all(s == n for s in shape) else shape_str(shape)


# --------------------------------------------------------------------------------------------
# problem (identical to benchmarks/peers/gpytorch_kron.py)


def make_inputs(shape):
    xs = tuple(jnp.asarray(np.linspace(0.0, 1.0, n)) for n in shape)
    n_total = math.prod(shape)
    y = jnp.asarray(np.random.default_rng(Y_SEED).standard_normal(n_total).reshape(shape))
    ell = jnp.full((len(shape),), LENGTHSCALE, dtype=jnp.float64)
    return ell, xs, y


def rbf_factors(ell, xs):
    out = []
    for i, x in enumerate(xs):
        d = x[:, None] - x[None, :]
        k = jnp.exp(-(d * d) / (2.0 * ell[i] ** 2))
        out.append(k + JITTER * jnp.eye(x.shape[0], dtype=x.dtype))
    return tuple(out)


def bayeslr_objective(ell, xs, y):
    quad, logdet = kron_inv_quad_logdet(rbf_factors(ell, xs), y, NOISE)
    return quad + logdet


def dense_objective(ell, xs, y):
    a = kron_dense(rbf_factors(ell, xs))
    a = a + NOISE * jnp.eye(a.shape[0], dtype=a.dtype)
    chol = jnp.linalg.cholesky(a)
    yv = y.reshape(-1)
    alpha = jax.scipy.linalg.cho_solve((chol, True), yv)
    return yv @ alpha + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


bayeslr_vg = jax.jit(jax.value_and_grad(bayeslr_objective))
bayeslr_v = jax.jit(bayeslr_objective)
dense_vg = jax.jit(jax.value_and_grad(dense_objective))


def max_rel_diff(value, grad, ref_value, ref_grad) -> float:
    """max over (value, grad components) of |a - b| / |b|."""
    a = np.concatenate([[float(value)], np.asarray(grad, dtype=float).ravel()])
    b = np.concatenate([[float(ref_value)], np.asarray(ref_grad, dtype=float).ravel()])
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def max_abs_diff(value, grad, ref_value, ref_grad) -> float:
    a = np.concatenate([[float(value)], np.asarray(grad, dtype=float).ravel()])
    b = np.concatenate([[float(ref_value)], np.asarray(ref_grad, dtype=float).ravel()])
    return float(np.max(np.abs(a - b)))


# --------------------------------------------------------------------------------------------
# GPyTorch peer (subprocess, Python 3.11 venv)


def run_gpytorch(shapes, repeats: int, threads: int, timeout: float):
    """Returns ({shape: record}, note). Records with an ``error`` key failed."""
    peer_py = Path(PEER["python"])
    if not (peer_py.exists() or shutil.which(str(peer_py))):
        return {}, PEER_MISSING
    cmd = [
        str(peer_py),
        str(PEER_SCRIPT),
        "--shapes",
        *[shape_str(s) for s in shapes],
        "--repeats",
        str(repeats),
        "--dtype",
        "float64",
        "--threads",
        str(threads),
        "--device",
        PEER["device"],
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        out, note = (e.stdout or ""), f"GPyTorch subprocess timed out after {timeout:.0f} s"
        if isinstance(out, bytes):
            out = out.decode()
    else:
        out, note = proc.stdout, None
        if proc.returncode != 0:
            note = f"GPyTorch subprocess failed (rc={proc.returncode}): {proc.stderr[-500:]}"
    recs = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rec = json.loads(line)
            recs[tuple(rec["shape"])] = rec
    wall = time.perf_counter() - t0
    print(f"[gpytorch] {len(recs)} shapes in {wall:.1f} s (subprocess wall)", flush=True)
    return recs, note


def peer_versions(recs) -> str | None:
    for r in recs.values():
        if "torch_version" in r:
            return (
                f"torch {r['torch_version']}, linear_operator "
                f"{r.get('linear_operator_version', '?')}, {r.get('threads', '?')} threads"
            )
    return None


# --------------------------------------------------------------------------------------------
# time breakdown at one 2-D size (public API pieces)


def breakdown(shape, repeats: int):
    ell, xs, y = make_inputs(shape)
    factors = jax.jit(rbf_factors)(ell, xs)
    eig = jax.jit(kron_eigh)(factors)
    lam = jnp.clip(eig.eigvals[0], 0.0, None)[:, None] * jnp.clip(eig.eigvals[1], 0.0, None)
    scale = 1.0 / (lam + NOISE)

    def solve(vecs, s, y):
        t = kron_adjoint_mv(vecs, y)
        return kron_mv(vecs, t * s)

    pieces = [
        ("build the RBF factors from ℓ", rbf_factors, (ell, xs)),
        ("eigh of one factor", jnp.linalg.eigh, (factors[0],)),
        ("eigh of all factors (kron_eigh)", kron_eigh, (factors,)),
        ("one mode product (n×n on axis 0)", lambda a, y: mode_product(y, a, 0), (factors[0], y)),
        ("one mode product (n×n on axis 1)", lambda a, y: mode_product(y, a, 1), (factors[0], y)),
        ("Qᵀy (kron_adjoint_mv, 2 mode products)", kron_adjoint_mv, (eig.eigvecs, y)),
        ("solve Q(Λ+σ²)⁻¹Qᵀy given eigh (4 mode products)", solve, (eig.eigvecs, scale, y)),
        (
            "Q diag(g) Qᵀ for one factor (1 n×n GEMM)",
            lambda q, g: (q * g) @ q.T,
            (eig.eigvecs[0], eig.eigvals[0]),
        ),
        ("value: yᵀA⁻¹y + log|A| (jit)", bayeslr_objective, (ell, xs, y)),
        ("grad only (jit(grad))", jax.grad(bayeslr_objective), (ell, xs, y)),
        ("value + grad (jit(value_and_grad))", jax.value_and_grad(bayeslr_objective), (ell, xs, y)),
    ]
    timings = time_jax_interleaved({name: (fn, args) for name, fn, args in pieces}, repeats=repeats)
    rows = [(name, t.median_s) for name, t in timings.items()]
    vg = timings[pieces[-1][0]].median_s
    value = timings[pieces[-3][0]].median_s
    one_mp = timings["one mode product (n×n on axis 0)"].median_s
    rows.append(("→ gradient overhead (value+grad − value)", vg - value))
    for name, t in rows:
        print(f"[breakdown {grid_label(shape)}] {name:52s} {t * 1e3:9.2f} ms", flush=True)
    table = markdown_table(
        [
            "piece (timed round-robin, medians)",
            "median (ms)",
            "share of value+grad",
            "≈ mode products",
        ],
        [(n, f"{t * 1e3:.2f}", f"{100 * t / vg:.0f}%", f"{t / one_mp:.1f}") for n, t in rows],
    )
    return table


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes, 5 repeats, < 60 s; no Markdown written unless --out",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per measurement (default 5 with --quick, 7 otherwise; at least 5)",
    )
    p.add_argument("--shapes", nargs="+", default=None, help="override grid shapes, e.g. 64x64")
    p.add_argument("--no-gpytorch", action="store_true", help="skip the GPyTorch subprocess")
    p.add_argument("--no-dense", action="store_true", help="skip the dense Cholesky peer")
    p.add_argument(
        "--peer-python",
        default=str(PEER_PY),
        help="interpreter with torch + linear_operator (default: .venv-peer/bin/python)",
    )
    p.add_argument(
        "--peer-device",
        default="cpu",
        help="torch device for the GPyTorch peer (cpu, or cuda on a GPU machine)",
    )
    p.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the pieces at the largest 2-D size (default: on in the full run)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads for the GPyTorch peer (default: all cores, as JAX)",
    )
    p.add_argument(
        "--blas-threads",
        default=None,
        metavar="N",
        help="set OPENBLAS_NUM_THREADS/MKL_NUM_THREADS=N for this process before JAX "
        "loads (LAPACK eigh runs in OpenBLAS's pool, GEMMs in XLA's; default: unset)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown output (default benchmarks/results/linalg.md in the full run)",
    )
    args = p.parse_args(argv)
    PEER.update(python=args.peer_python, device=args.peer_device)

    t_start = time.perf_counter()
    repeats = args.repeats or (5 if args.quick else 7)
    if repeats < 5:
        p.error("--repeats must be at least 5 (medians of >= 5 runs)")
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    else:
        shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    do_breakdown = (not args.quick) if args.breakdown is None else args.breakdown
    out_path = args.out or (None if args.quick else RESULTS_DIR / "linalg.md")
    info = machine_info()
    monitor = CpuMonitor()

    # GPyTorch runs as a subprocess while this process sits idle (never concurrently). The full
    # run launches it once per shape right before the JAX timings of that shape, so both see the
    # same machine load; --quick launches it once for all shapes (saves ~1.5 s import per shape).
    interleave = not args.quick and not args.no_gpytorch
    gp_recs, gp_note = {}, None
    if args.no_gpytorch:
        gp_note = "skipped (--no-gpytorch)"
    elif not interleave:
        gp_recs, gp_note = run_gpytorch(shapes, repeats, args.threads, timeout=45)

    rows, res = [], {}
    for shape in shapes:
        n_total = math.prod(shape)
        if interleave:
            recs, note = run_gpytorch([shape], repeats, args.threads, timeout=600)
            gp_recs.update(recs)
            gp_note = gp_note or note
        ell, xs, y = make_inputs(shape)
        tt = time_jax_interleaved(
            {"vg": (bayeslr_vg, (ell, xs, y)), "v": (bayeslr_v, (ell, xs, y))}, repeats=repeats
        )
        vg, v = tt["vg"], tt["v"]
        value, grad = vg.output
        r = {
            "N": n_total,
            "vg": vg.median_s,
            "v": v.median_s,
            "compile": vg.compile_s,
            "compile_v": v.compile_s,
            "value": float(value),
            "grad": np.asarray(grad),
        }
        dense = None
        if not args.no_dense and n_total <= DENSE_MAX_N:
            # compile is separated (AOT); no extra warm-up in --quick (4096² Cholesky grads
            # take seconds per call)
            dense = time_jax(dense_vg, ell, xs, y, repeats=repeats, warmup=0 if args.quick else 1)
            dv, dg = dense.output
            r["dense"] = dense.median_s
            r["rel_dense"] = max_rel_diff(value, grad, dv, dg)
        gp = gp_recs.get(tuple(shape))
        if gp is not None and "error" not in gp:
            gv = gp["inv_quad"] + gp["logdet"]
            r["gp"] = gp["median_s"]
            r["rel_gp"] = max_rel_diff(value, grad, gv, gp["grad_lengthscale"])
            r["abs_gp"] = max_abs_diff(value, grad, gv, gp["grad_lengthscale"])
        elif gp is not None:
            r["gp_error"] = gp["error"]
        res[tuple(shape)] = r
        print(
            f"[bayeslr] {grid_label(shape):>8s} N={n_total:>8d}  value+grad {vg.median_s:.4g} s  "
            f"value {v.median_s:.4g} s  compile {vg.compile_s:.2f}+{v.compile_s:.2f} s"
            + (f"  dense {dense.median_s:.4g} s" if dense else "")
            + (f"  gpytorch {r['gp']:.4g} s  rel.diff {r['rel_gp']:.1e}" if "gp" in r else ""),
            flush=True,
        )

        gp_cell = (
            fmt_s(r["gp"]) if "gp" in r else ("error" if "gp_error" in r else (gp_note or "n/a"))
        )
        rows.append(
            (
                grid_label(shape),
                f"{n_total:,}",
                fmt_s(r["vg"]),
                fmt_s(r["v"]),
                f"{r['compile']:.2f} / {r['compile_v']:.2f}",
                fmt_s(r.get("dense")) if "dense" in r else "—",
                fmt_x(r["dense"] / r["vg"]) if "dense" in r else "—",
                fmt_e(r.get("rel_dense")) if "dense" in r else "—",
                gp_cell,
                f"{r['vg'] / r['gp']:.3g}" if "gp" in r else "n/a",
                (f"{fmt_e(r['rel_gp'])} (abs {fmt_e(r['abs_gp'])})" if "gp" in r else "n/a"),
            )
        )

    headers = [
        "grid",
        "N",
        "bayeslr value+grad (s)",
        "bayeslr value-only (s)",
        "compile v+g / v (s)",
        "dense Cholesky v+g (s)",
        "speedup vs dense",
        "max rel diff vs dense",
        "GPyTorch v+g (s)",
        "ratio bayeslr/GPyTorch",
        "max rel diff vs GPyTorch (value, grad)",
    ]
    table = markdown_table(headers, rows)

    # 3) targets and RESULT values
    def get(shape, key):
        return res.get(shape, {}).get(key)

    t1024 = get((1024, 1024), "v")
    t1024_vg = get((1024, 1024), "vg")
    d64, b64 = get((64, 64), "dense"), get((64, 64), "vg")
    speedup = d64 / b64 if d64 and b64 else None
    g1024 = get((1024, 1024), "gp")
    ratio1024 = t1024_vg / g1024 if g1024 and t1024_vg else None
    slower = [grid_label(s) for s, r in res.items() if "gp" in r and r["vg"] > r["gp"]]
    have_gp = [s for s, r in res.items() if "gp" in r]

    def verdict(ok):
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    targets = [
        (
            f"N = 1024² solve+logdet (value only) < {TARGET_T_1024:g} s",
            f"{fmt_s(t1024)} s (value+grad {fmt_s(t1024_vg)} s)",
            verdict(None if t1024 is None else t1024 < TARGET_T_1024),
        ),
        (
            f">= {TARGET_SPEEDUP_4096:g}x faster than dense Cholesky at N = 4096 (value+grad)",
            fmt_x(speedup),
            verdict(None if speedup is None else speedup >= TARGET_SPEEDUP_4096),
        ),
        (
            "not slower than GPyTorch at any size (value+grad)",
            ("slower at: " + ", ".join(slower))
            if slower
            else ("faster or equal at all sizes" if have_gp else "n/a"),
            verdict(None if not have_gp else not slower),
        ),
    ]
    target_table = report_targets(targets)

    if out_path is not None:
        sections = [
            ("Solve + logdet + gradient w.r.t. lengthscales", table),
            ("Targets", target_table),
        ]
        if do_breakdown:
            shape2d = max((s for s in shapes if len(s) == 2), key=math.prod, default=None)
            if shape2d is not None:
                print()
                sections.append(
                    (
                        f"Where the time goes at {grid_label(shape2d)} (bayeslr)",
                        breakdown(shape2d, repeats),
                    )
                )
        extra = run_details(monitor, repeats)
        pv = peer_versions(gp_recs)
        extra["GPyTorch peer"] = pv or (gp_note or "n/a")
        info.update(extra)
        notes = (
            "Objective: f(ℓ) = yᵀA⁻¹y + log|A|, A = K₁(ℓ₁) ⊗ … ⊗ K_d(ℓ_d) + 0.1·I; RBF factors on "
            "linspace(0, 1, n_i), ℓ = 0.1, variance 1, jitter 1e-6·I per factor; "
            "y = default_rng(0).standard_normal(N) (C order); float64. "
            "*value+grad* = `jax.jit(jax.value_and_grad(f))` with the factors built from ℓ inside; "
            "*value-only* = `jax.jit(f)` (solve+logdet). Times: medians of the timed runs after "
            "compilation and one warm-up run; compile = `lower().compile()` for value+grad / "
            "value-only. GPyTorch: linear_operator's KroneckerProductAddedDiagLinearOperator "
            "eigen path, inv_quad_logdet + backward, same inputs, run as a subprocess in the "
            "same invocation. Dense Cholesky: N ≤ 4096 only. Relative diffs: max over the "
            "value and the gradient components. Ratio < 1 means bayeslr is faster. "
            "The machine is shared; timings carry that noise."
        )
        write_markdown(
            out_path,
            "Kronecker solve + logdet + gradient (bayeslr.linalg.kron)",
            info,
            [("", notes), *sections],
        )
        print(f"\nwrote {out_path}")

    finish(
        monitor,
        t_start,
        t_1024sq_s=t1024,
        speedup_dense_4096=speedup,
        ratio_gpytorch_1024sq=ratio1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
