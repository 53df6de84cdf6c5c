r"""FunBaT as a plain NumPyro model function (:func:`funbat_model`)."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bayeslr.gp.kernels import Matern32
from bayeslr.models.funbat.algo import core_shape

__all__ = ["funbat_model"]

_HI = jax.lax.Precision.HIGHEST
_AX = string.ascii_lowercase


def funbat_model(
    idx: Any,
    ticks: Sequence[Any],
    y: Any = None,
    *,
    rank: int | Sequence[int],
    kernel: Any = None,
    cp: bool = False,
    a0: float = 1.0,
    b0: float = 1.0,
    y_loc: float = 0.0,
    y_scale: float = 1.0,
    jitter: float = 1e-6,
) -> None:
    r"""FunBaT as a NumPyro model: the model every :class:`~bayeslr.models.FunBaT` posterior
    belongs to, and the same prior and likelihood for NUTS or SVI on small tensors.

    .. math::
        u^k_r(t^k_{1:M_k}) \sim GP(0, \kappa_k), \quad \operatorname{vec}W \sim N(0, I), \quad
        \tau \sim \operatorname{Gamma}(a_0, b_0), \\
        y_n \sim N\big(c + s\,\operatorname{vec}(W)^\top\otimes_k u^k(t^k_{i_{nk}}),\;
        s^2\tau^{-1}\big),

    each GP prior a :class:`~bayeslr.distributions.GaussMarkovGP` over the mode's unique
    coordinates (a Kalman-filter density, :math:`O(M_k)`) with a ``jitter`` (times the kernel
    variance) in place of its observation noise. :math:`c` = ``y_loc`` and :math:`s` =
    ``y_scale`` put the standardized model (the paper's, :math:`c = 0, s = 1`) in the units of
    the data; the estimator sets them to the training mean and standard deviation.

    Args:
        idx: ``(N, K)`` int indices of each entry's coordinate in each mode.
        ticks: per mode, the strictly increasing unique coordinates.
        y: ``(N,)`` observations, or ``None`` to sample them.
        rank: :math:`R`, or per mode :math:`(R_1, \dots, R_K)` (Tucker; the core is then
            :math:`R_1 \times \dots \times R_K`).
        kernel: one kernel for every mode or one per mode (default Matérn 3/2, 1, 0.1).
        cp: FunBaT-CP (superdiagonal core, no ``W`` site).
        a0, b0: Gamma prior of :math:`\tau`.
        y_loc, y_scale: :math:`c, s` (above).
        jitter: relative jitter of the GP priors.

    Sites: ``u_<k>`` (``(R_k, M_k)``, plate ``rank_<k>``), ``W`` (``(R_1, ..., R_K)``,
    Tucker), ``tau``,
    deterministic ``f`` (the entry means, data units), observed ``y`` (plate ``entry``).
    """
    import numpyro
    import numpyro.distributions as dist

    from bayeslr.distributions import GaussMarkovGP

    K = len(ticks)
    ranks = core_shape(rank, K)
    if len(ranks) != K or (cp and len(set(ranks)) > 1):
        raise ValueError(
            f"`rank` must be an int or one per mode ({K}), equal for cp=True; got {rank!r}."
        )
    if kernel is None:
        kernel = Matern32(variance=1.0, lengthscale=0.1)
    kernels = tuple(kernel) if isinstance(kernel, Sequence) else (kernel,) * K
    idx = jnp.asarray(idx)
    us = []
    for k in range(K):
        var = jnp.asarray(getattr(kernels[k], "variance", 1.0))
        with numpyro.plate(f"rank_{k}", ranks[k]):
            u = numpyro.sample(
                f"u_{k}", GaussMarkovGP(kernels[k], jnp.asarray(ticks[k]), jitter * var)
            )
        us.append(u.T[idx[:, k]])  # (N, R)
    if cp:
        f = jnp.sum(jnp.prod(jnp.stack(us), axis=0), axis=1)
    else:
        w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand(ranks).to_event(K))
        f = jnp.einsum(
            _AX[:K] + "," + ",".join(f"n{_AX[j]}" for j in range(K)) + "->n", w, *us,
            precision=_HI,
        )  # fmt: skip
    tau = numpyro.sample("tau", dist.Gamma(a0, b0))
    f = y_loc + y_scale * f
    numpyro.deterministic("f", f)
    with numpyro.plate("entry", idx.shape[0]):
        numpyro.sample("y", dist.Normal(f, y_scale / jnp.sqrt(tau)), obs=y)
