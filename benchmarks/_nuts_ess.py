#!/usr/bin/env python
r"""NumPyro NUTS vs BlackJAX NUTS through ``bayeslr.infer.fit``: min bulk ESS per second.

Model: Bayesian logistic regression on scikit-learn's breast-cancer data (569 tumours × 30
standardized features, binary label),

.. math::

    \beta_0 \sim \mathcal N(0, 2.5^2), \quad \beta_j \sim \mathcal N(0, 1), \quad
    y_i \sim \operatorname{Bernoulli}(\sigma(\beta_0 + x_i^\top \beta)),

31 parameters, float32. Both samplers run the same NumPyro model with the same options (diagonal
mass matrix, target acceptance 0.8, max tree depth 10, ``init_to_median``), 2 chains each
(``"nuts"``: sequential chains on CPU; ``"blackjax-nuts"``: ``vmap``-ped chains).

Metric: :math:`\min_j \mathrm{ESS}_\text{bulk}(\theta_j) / t_\text{sampling}` over the 31
parameters, ESS from ``arviz.ess`` over both chains. :math:`t_\text{sampling}` is the wall time
of the sampling phase only; warm-up is excluded (``fit`` times the two phases separately,
``Posterior.extra["timing"]``) and so is compilation: ``fit`` listens to JAX's compile events
(tracing, lowering, XLA compile) during the sampling phase and reports their total as
``sampling_compile_s``, so :math:`t_\text{sampling} =` ``sampling_s - sampling_compile_s``
for both samplers (NumPyro compiles inside ``MCMC.run``, BlackJAX on the first chunk).
The compile time is reported in its own column.

Usage::

    .venv/bin/python benchmarks/_nuts_ess.py           # full -> benchmarks/results/nuts_ess.md
    .venv/bin/python benchmarks/_nuts_ess.py --quick   # < 25 s; last stdout line: RESULT ...

``benchmarks/objectives.py`` imports :func:`run_nuts_comparison`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` beside this script
from _common import (
    RESULTS_DIR,
    CpuMonitor,
    finish,
    fmt_s,
    machine_info,
    markdown_table,
    write_markdown,
)

METHODS = ("nuts", "blackjax-nuts")
NUM_CHAINS = 2
QUICK = dict(num_warmup=200, num_samples=400)
FULL = dict(num_warmup=1000, num_samples=2000)


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Breast-cancer features (standardized, float32) and 0/1 labels."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), y.astype(np.int32)


def logistic_model(x, y=None):
    """Logistic regression with a weakly informative prior (see the module docstring)."""
    b0 = numpyro.sample("b0", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=b0 + jnp.asarray(x) @ beta), obs=y)


def _timed_fit(method: str, x, y, *, num_warmup: int, num_samples: int, seed: int):
    from numpyro.infer import init_to_median

    from bayeslr.infer.fit import fit

    t0 = time.perf_counter()
    post = fit(
        logistic_model,
        x,
        y,
        method=method,
        seed=seed,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=NUM_CHAINS,
        init_strategy=init_to_median(),
        progress_bar=False,
    )
    return post, time.perf_counter() - t0


def _min_bulk_ess(post) -> float:
    import arviz as az

    ess = az.ess(post.to_arviz(posterior_predictive=False, log_likelihood=False), method="bulk")
    return float(min(float(np.min(ess[v].values)) for v in ess.data_vars))


def _sampling_time(method: str, x, y, cfg) -> tuple:
    """Fit once; return (posterior, sampling s without compile, sampling compile s, warm-up s
    incl. its compile)."""
    post, _ = _timed_fit(method, x, y, seed=1, **cfg)
    timing = post.extra["timing"]
    compile_s = timing["sampling_compile_s"]
    return post, max(timing["sampling_s"] - compile_s, 1e-9), compile_s, timing["warmup_s"]


def run_nuts_comparison(quick: bool) -> tuple[str, dict]:
    """Run both samplers on the same model and data; return a Markdown table and the metric.

    Args:
        quick: ``True`` for the short run (< 25 s on 2 CPU cores: 200 warm-up steps and 400
            draws per chain), ``False`` for 1000 warm-up steps and 2000 draws per chain.

    Returns:
        ``(table, {"ess_per_s_numpyro": float, "ess_per_s_blackjax": float})``: bulk ESS
        (minimum over the 31 parameters) per second of sampling, warm-up and compilation
        excluded (see the module docstring for how).
    """
    cfg = QUICK if quick else FULL
    x, y = load_data()
    rows, metrics = [], {}
    for method in METHODS:
        post, t_sampling, t_compile, t_warmup = _sampling_time(method, x, y, cfg)
        ess = _min_bulk_ess(post)
        stats = post.sample_stats
        rate = ess / t_sampling
        metrics["ess_per_s_numpyro" if method == "nuts" else "ess_per_s_blackjax"] = rate
        rows.append(
            [
                f"`{method}`",
                f"{ess:.0f}",
                fmt_s(t_sampling),
                f"{rate:.4g}",
                f"{NUM_CHAINS * cfg['num_samples'] / t_sampling:.4g}",
                f"{float(np.mean(stats['n_steps'])):.1f}",
                f"{float(np.mean(stats['acceptance_rate'])):.2f}",
                int(np.sum(stats["diverging"])),
                fmt_s(t_compile),
                fmt_s(t_warmup),
            ]
        )
    headers = [
        "method",
        "min bulk ESS",
        "sampling s",
        "min ESS / s",
        "draws / s",
        "mean leapfrog steps",
        "mean accept",
        "divergences",
        "sampling compile s",
        "warm-up s (incl. compile)",
    ]
    note = (
        f"\n\n{NUM_CHAINS} chains × {cfg['num_samples']} draws after {cfg['num_warmup']} "
        "warm-up steps each, float32. Sampling time = wall time of the sampling phase minus "
        "the JAX compile time inside it (both recorded by `fit`); warm-up excluded."
    )
    return markdown_table(headers, rows) + note, metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short run; prints a RESULT line")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    monitor = CpuMonitor()
    info = machine_info({"numpyro": numpyro.__version__})
    table, metrics = run_nuts_comparison(args.quick)
    print(table, flush=True)
    if not args.quick:
        path = write_markdown(
            RESULTS_DIR / "nuts_ess.md",
            "NumPyro NUTS vs BlackJAX NUTS (through bayeslr.infer.fit)",
            info,
            [("Logistic regression, breast cancer (569 × 30)", table)],
        )
        print(f"wrote {path}", flush=True)
    finish(monitor, t_start, **metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
