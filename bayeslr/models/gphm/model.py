r"""GP-HM as a plain NumPyro model function (:func:`gphm_model`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from bayeslr.models.gphm.algo import (
    _all_orders,
    _boundary_field,
    _fields,
    _kernels,
    gphm_operators,
)
from bayeslr.models.gphm.pde import MultiIndex, NeumannFaces

__all__ = ["gphm_model"]


def gphm_model(
    axes: Sequence[jax.Array],
    operator: Callable,
    orders: Sequence[MultiIndex],
    source: jax.Array | None = None,
    boundary_values: jax.Array | None = None,
    *,
    kernel_params: dict,
    family: str = "stm",
    boundary_weight: float = 200.0,
    jitter: float = 1e-6,
    base: dict | None = None,
    uniform: Sequence[bool] | None = None,
    neumann: NeumannFaces | None = None,
) -> None:
    r"""The GP-HM model of the module docstring as a NumPyro model function.

    .. math::
        V \sim \mathcal N(0, I_M),\quad U = (\otimes_j L_j) V,\quad
        f(x_i) \mid U \sim \mathcal N\big(\mathcal L[u](x_i), \tau_2^{-1}\big)\ \text{(every
        grid point)},\quad
        g_b \mid U \sim \mathcal N\big(U_b, \tau_1^{-1}\big)^{\lambda_b}\ \text{(boundary
        nodes)},

    i.e. :math:`U \sim \mathcal N(0, \otimes_j K_j)`, the source :math:`f` observed through the
    operator at the collocation points and the boundary data through a likelihood raised to
    the power :math:`\lambda_b` (``handlers.scale``). Its negative log joint in :math:`V` is
    :func:`~bayeslr.models.gphm.gphm_loss` up to terms constant in :math:`V`.

    The kernel parameters and precisions are fixed arguments (``kernel_params``: the type-II
    MAP values of the fit, as in the :class:`~bayeslr.models.GPSolver` posterior); the random
    variable is ``V``. Sites: ``V`` (latent, ``(M_1, ..., M_d)``), ``u`` (deterministic, the
    solution on the grid), ``pde`` (observed ``source``, one observation per grid point) and
    ``boundary`` (observed ``boundary_values``, one per boundary node).

    Args:
        axes: grid coordinates per axis.
        operator: ``operator(u, derivs, x) -> L[u]`` (see :class:`~bayeslr.models.PDE`).
        orders: the derivative multi-indices the operator reads.
        source: :math:`f` on the grid (observed), or ``None`` to draw it.
        boundary_values: :math:`g` at the boundary nodes (observed), or ``None`` to draw it.
        kernel_params: ``{"log_w", "log_ls", "mu"?, "log_tau1", "log_tau2"}`` (per-axis
            tuples for the kernel parameters).
        family: ``"stm"`` or ``"gm"``.
        boundary_weight: :math:`\lambda_b`.
        jitter: :math:`\epsilon`.
        base: fixed fields added to this GP's (the frozen mixture GP under the extra GP).
        uniform: per axis, whether the points are equally spaced.
        neumann: per axis, whether its ``lo``/``hi`` faces carry Neumann data: there the
            boundary site observes the outward normal derivative.
    """
    shape = tuple(int(a.shape[0]) for a in axes)
    d = len(shape)
    V = numpyro.sample("V", dist.Normal(jnp.zeros(shape, axes[0].dtype), 1.0).to_event(d))
    every = _all_orders(orders, neumann)
    E, _ = gphm_operators(_kernels(kernel_params, family), axes, every, jitter, uniform)
    fields = _fields(V, E, every, base)
    u = numpyro.deterministic("u", fields[(0,) * d])
    x = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
    Lu = operator(u, {idx: fields[idx] for idx in orders}, x)
    numpyro.sample("pde", dist.Normal(Lu, jnp.exp(-0.5 * kernel_params["log_tau2"])), obs=source)
    with handlers.scale(scale=boundary_weight):
        numpyro.sample("boundary",
                       dist.Normal(_boundary_field(fields, shape, neumann),
                                   jnp.exp(-0.5 * kernel_params["log_tau1"])),
                       obs=boundary_values)  # fmt: skip
