#!/usr/bin/env python
"""GPyTorch / linear_operator peer benchmark: exact Kronecker GP "solve + logdet + grad".

Runs under the Python 3.11 peer venv (``.venv-peer``, see ``setup_gpytorch.sh``);
imports only torch, numpy and linear_operator (NOT bayeslr), so the JAX benchmark can
call it as a subprocess and parse one JSON object per line from stdout.

Usage
-----
    .venv-peer/bin/python benchmarks/peers/gpytorch_kron.py \
        --shapes 32x32 64x64 1024x1024 64x64x64 --repeats 5 --dtype float64 --threads 2

Problem definition (build identical inputs on the JAX side to compare values)
----------------------------------------------------------------------------
For a grid shape ``(n_1, ..., n_d)`` with ``N = n_1 * ... * n_d``:

* per-axis inputs ``x^(i) = linspace(0, 1, n_i)`` (endpoints included, i.e.
  ``np.linspace(0.0, 1.0, n_i)``), in ``dtype``;
* lengthscales ``ell = [0.1] * d`` (one per axis; a torch leaf tensor with
  ``requires_grad=True``, dtype ``dtype``); signal variance 1 (not a parameter);
* per-axis RBF factor
      ``K_i[a, b] = exp(-(x_a - x_b)^2 / (2 * ell_i^2)) + 1e-6 * delta_ab``
  (the jitter 1e-6*I is added to EACH factor, before the Kronecker product);
* ``K = K_1 ⊗ K_2 ⊗ ... ⊗ K_d``  (K_1 is the slowest-varying / axis-0 factor, so
  row index of K == C-order (row-major) flattening of the grid index
  ``(i_1, ..., i_d)``, i.e. ``y.reshape(n_1, ..., n_d)`` puts axis i on dim i-1);
* noise ``sigma^2 = 0.1`` (constant, not a parameter):  ``A = K + 0.1 * I_N``;
* target ``y = numpy.random.default_rng(0).standard_normal(N)`` (generated in
  float64, then cast to ``dtype``; a fresh generator per shape).

Reported values (NOTE: no 0.5 factors, no constant term; this is not the NLL):

* ``inv_quad = y^T A^{-1} y``
* ``logdet   = log det A``
* ``grad_lengthscale = d(inv_quad + logdet)/d ell``  (length d)

Timed operation (per repeat, everything from the leaf lengthscale on):
build the d dense factors from ``ell`` -> ``KroneckerProductLinearOperator`` ->
``KroneckerProductAddedDiagLinearOperator(K, ConstantDiagLinearOperator(0.1, N))`` ->
``inv_quad_logdet(inv_quad_rhs=y, logdet=True)`` -> ``(inv_quad + logdet).backward()``.
One (instrumented, untimed) warm-up run, then ``--repeats`` timed runs
(``time.perf_counter``); median and all times reported.

Which code path linear_operator takes (read from linear_operator 0.6.1 source)
-----------------------------------------------------------------------------
* ``KroneckerProductAddedDiagLinearOperator.__init__`` sets
  ``_diag_is_constant = isinstance(diag, ConstantDiagLinearOperator)``; we build the
  noise term explicitly as a ``ConstantDiagLinearOperator`` (``K.add_diagonal(scalar)``
  would do the same) and assert the flag.
* ``KPADLO.inv_quad_logdet`` splits into
  - inv_quad: ``LinearOperator.inv_quad`` -> ``functions/_inv_quad.InvQuad`` whose
    ``_solve`` helper goes to DENSE CHOLESKY of the N x N matrix if
    ``fast_computations.solves`` OR ``fast_computations.log_prob`` is off, OR
    ``N <= max_cholesky_size`` (default 800); otherwise it calls
    ``KPADLO._solve``, which for a constant diagonal does the exact
    eigen-solve ``Q (Λ + σ²)^{-1} Q^T y`` with ``Q = ⊗ Q_i``, ``Λ = ⊗ Λ_i`` from
    per-factor ``torch.linalg.eigh`` (``KroneckerProductLinearOperator.diagonalization``
    hard-codes ``method="symeig"``; in float64 via ``_linalg_dtype_symeig``).
    Its gradient (``InvQuad.backward``) uses ``_bilinear_derivative`` (autograd
    through the Kronecker matmul), not CG.
  - logdet: ``KPADLO._logdet`` with constant diag = ``sum(log(⊗Λ_i + σ²))`` from
    per-factor ``_symeig(eigenvectors=True)`` (differentiable through eigh).
  So, unlike what one might guess, ``fast_computations(log_prob=False, solves=False)``
  would be WRONG here (it forces a dense O(N^3) Cholesky). We therefore keep
  ``fast_computations`` all ON (explicitly) and set ``max_cholesky_size(0)`` so the
  Kronecker eigendecomposition path is taken for every N (no CG / Lanczos is ever
  reached on this path: the Kronecker operator is never evaluated densely).
* The warm-up run is instrumented (wrappers counting torch.linalg.eigh,
  torch.linalg.cholesky(_ex), psd_safe_cholesky, linear_cg, lanczos_tridiag and the
  KPADLO._solve/_logdet constant-diag branches); the counts are reported in
  ``path_check`` and the script errors if any Cholesky/CG/Lanczos call happened
  or the eigen path was not used. Expected: 2*d eigh calls (d in _solve, d in _logdet).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback

import linear_operator
import numpy as np
import torch
from linear_operator import settings as lo_settings
from linear_operator.operators import (
    ConstantDiagLinearOperator,
    DenseLinearOperator,
    KroneckerProductAddedDiagLinearOperator,
    KroneckerProductLinearOperator,
)

LENGTHSCALE = 0.1
VARIANCE = 1.0
JITTER = 1e-6
NOISE = 0.1
Y_SEED = 0

PATH_DESC = (
    "exact Kronecker eigendecomposition: KroneckerProductAddedDiagLinearOperator with "
    "ConstantDiagLinearOperator noise -> per-factor torch.linalg.eigh; inv_quad via "
    "KPADLO._solve (Q (Λ+σ²)^-1 Q^T y, grad via _bilinear_derivative), logdet via "
    "KPADLO._logdet (sum log(⊗Λ_i+σ²)); fast_computations all on, max_cholesky_size=0; "
    "no Cholesky/CG/Lanczos"
)


def parse_shape(s: str) -> tuple[int, ...]:
    return tuple(int(p) for p in s.lower().split("x"))


DEVICE = torch.device("cpu")  # set by --device


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(shape, dtype):
    xs = [torch.from_numpy(np.linspace(0.0, 1.0, n)).to(DEVICE, dtype) for n in shape]
    N = math.prod(shape)
    y = torch.from_numpy(np.random.default_rng(Y_SEED).standard_normal(N)).to(DEVICE, dtype)
    return xs, y


def build_operator(xs, lengthscale, noise):
    factors = []
    for i, x in enumerate(xs):
        d = x.unsqueeze(-1) - x.unsqueeze(-2)
        k = VARIANCE * torch.exp(-(d * d) / (2.0 * lengthscale[i] ** 2))
        k = k + JITTER * torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
        factors.append(DenseLinearOperator(k))
    K = KroneckerProductLinearOperator(*factors)
    N = K.shape[-1]
    D = ConstantDiagLinearOperator(noise.reshape(1), diag_shape=N)
    A = KroneckerProductAddedDiagLinearOperator(K, D)
    assert A._diag_is_constant, "fast constant-diagonal path not selected"
    return A


def one_run(xs, y, lengthscale, noise):
    lengthscale.grad = None
    A = build_operator(xs, lengthscale, noise)
    inv_quad, logdet = A.inv_quad_logdet(inv_quad_rhs=y, logdet=True)
    (inv_quad + logdet).backward()
    _sync()
    return inv_quad.detach(), logdet.detach(), lengthscale.grad.detach().clone()


class PathProbe:
    """Temporarily wraps linalg entry points and counts calls (warm-up run only)."""

    def __init__(self):
        import linear_operator.operators._linear_operator as lo_base
        import linear_operator.utils as lo_utils
        import linear_operator.utils.lanczos as lo_lanczos
        from linear_operator.operators import (
            kronecker_product_added_diag_linear_operator as kpadlo_mod,
        )

        self.counts = {
            "eigh": 0,
            "cholesky": 0,
            "psd_safe_cholesky": 0,
            "linear_cg": 0,
            "lanczos_tridiag": 0,
            "kpadlo_solve_constdiag": 0,
            "kpadlo_solve_other": 0,
            "kpadlo_logdet_constdiag": 0,
            "kpadlo_logdet_other": 0,
        }
        c = self.counts
        self._restore = []

        def patch(obj, name, key):
            orig = getattr(obj, name)

            def wrapped(*a, **k):
                c[key] += 1
                return orig(*a, **k)

            setattr(obj, name, wrapped)
            self._restore.append((obj, name, orig))

        patch(torch.linalg, "eigh", "eigh")
        patch(torch.linalg, "cholesky", "cholesky")
        patch(torch.linalg, "cholesky_ex", "cholesky")
        patch(lo_base, "psd_safe_cholesky", "psd_safe_cholesky")
        patch(lo_utils, "linear_cg", "linear_cg")
        patch(lo_lanczos, "lanczos_tridiag", "lanczos_tridiag")

        cls = kpadlo_mod.KroneckerProductAddedDiagLinearOperator
        for meth, tag in (("_solve", "solve"), ("_logdet", "logdet")):
            orig = getattr(cls, meth)

            def wrapped(self_, *a, _orig=orig, _tag=tag, **k):
                c[f"kpadlo_{_tag}_{'constdiag' if self_._diag_is_constant else 'other'}"] += 1
                return _orig(self_, *a, **k)

            setattr(cls, meth, wrapped)
            self._restore.append((cls, meth, orig))

    def restore(self):
        for obj, name, orig in reversed(self._restore):
            setattr(obj, name, orig)
        self._restore = []


def bench_shape(shape, repeats, dtype):
    N = math.prod(shape)
    rec = {
        "shape": list(shape),
        "N": N,
        "dtype": str(dtype).replace("torch.", ""),
        "torch_version": torch.__version__,
        "linear_operator_version": linear_operator.__version__,
        "threads": torch.get_num_threads(),
        "device": str(DEVICE),
    }
    try:
        xs, y = make_inputs(shape, dtype)
        lengthscale = torch.full(
            (len(shape),), LENGTHSCALE, dtype=dtype, device=DEVICE, requires_grad=True
        )
        noise = torch.tensor(NOISE, dtype=dtype, device=DEVICE)

        probe = PathProbe()
        try:
            one_run(xs, y, lengthscale, noise)  # warm-up (instrumented)
        finally:
            probe.restore()
        c = probe.counts
        bad = {
            k: c[k]
            for k in (
                "cholesky",
                "psd_safe_cholesky",
                "linear_cg",
                "lanczos_tridiag",
                "kpadlo_solve_other",
                "kpadlo_logdet_other",
            )
            if c[k]
        }
        if (
            bad
            or c["kpadlo_solve_constdiag"] < 1
            or c["kpadlo_logdet_constdiag"] < 1
            or c["eigh"] < 1
        ):
            raise RuntimeError(f"unexpected linear_operator path: {c}")

        times, res = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = one_run(xs, y, lengthscale, noise)
            times.append(time.perf_counter() - t0)
        inv_quad, logdet, grad = res
        rec.update(
            median_s=statistics.median(times),
            times_s=times,
            inv_quad=float(inv_quad),
            logdet=float(logdet),
            grad_lengthscale=[float(g) for g in grad],
            path=PATH_DESC,
            path_check=c,
        )
    except Exception as e:
        rec.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=3))
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", required=True, help="grid shapes like 64x64 or 64x64x64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    with (
        lo_settings.fast_computations(covar_root_decomposition=True, log_prob=True, solves=True),
        lo_settings.max_cholesky_size(0),
    ):
        for s in args.shapes:
            print(json.dumps(bench_shape(parse_shape(s), args.repeats, dtype)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
