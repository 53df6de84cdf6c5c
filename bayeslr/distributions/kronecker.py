r"""A Gaussian on a grid with Kronecker covariance plus observation noise.

.. math::

    \operatorname{vec}(Y) \sim \mathcal{N}\big(\operatorname{vec}(M),\;
    K_1 \otimes \cdots \otimes K_d + D\big),

with :math:`D = \sigma^2 I` or :math:`D = \otimes_i D_i`, optionally observed only on a subset
of cells. ``log_prob`` costs :math:`O(\sum_i n_i^3 + N \sum_i n_i)` when fully observed (the
per-factor eigendecomposition of :mod:`bayeslr.linalg.kron`); with :math:`m` missing cells it is
exact in :math:`O(\sum_i n_i^3 + m N \sum_i n_i + m^3)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike
from numpyro.distributions import Distribution, constraints
from numpyro.util import is_prng_key

from bayeslr._validation import check_finite
from bayeslr.linalg import kron
from bayeslr.linalg.kron import Noise
from bayeslr.linalg.operators import KroneckerPlusDiagOperator

__all__ = ["KroneckerNormal"]


class KroneckerNormal(Distribution):
    r"""Multivariate normal over a ``(n_1, ..., n_d)`` grid with Kronecker covariance.

    The event is the whole grid: ``event_shape == (n_1, ..., n_d)``, so a sample is shaped as
    the grid and ``obs=`` takes a grid array. Use it inside any NumPyro model (NUTS, SVI,
    ``Predictive``); gradients with respect to the factors, the noise and the mean are exact
    and cost the same order as ``log_prob``.

    Args:
        factors: per-axis covariances :math:`K_i` (symmetric PSD, ``n_i x n_i``), e.g. from
            :meth:`bayeslr.gp.ProductKernel.gram`.
        noise: observation noise :math:`\sigma^2 \ge 0` (scalar), or a tuple of per-axis
            variance vectors for :math:`D = \otimes_i D_i`. With zero noise the factors must be
            positive definite (add jitter).
        loc: mean :math:`M`, a scalar or an array of shape ``(*batch, n_1, ..., n_d)``.
        observed: optional concrete boolean grid; ``log_prob`` then scores only the observed
            cells (values at the others are ignored and may be NaN). Changing the mask
            recompiles (it fixes the number of missing cells).

    Example:
        >>> k = ProductKernel((Matern52(1.0, 0.3), RBF(1.0, 0.2)))
        >>> numpyro.sample("y", KroneckerNormal(k.gram((x1, x2)), noise=s2), obs=Y)
    """

    arg_constraints = {"loc": constraints.real}
    pytree_data_fields = ("loc", "factors", "noise")
    pytree_aux_fields = ("observed",)
    reparametrized_params = ["loc", "factors", "noise"]

    def __init__(
        self,
        factors: Sequence[Array],
        noise: Noise = 0.0,
        loc: ArrayLike = 0.0,
        observed: np.ndarray | None = None,
        *,
        validate_args: bool | None = None,
    ):
        factors = tuple(factors)
        if isinstance(noise, list):
            noise = tuple(noise)
        grid = tuple(int(np.shape(f)[0]) for f in factors)
        op = KroneckerPlusDiagOperator(factors, noise, observed)  # validates factors and noise
        if op.noise_kind == "diag":
            raise ValueError(
                "`noise` must be a scalar or a tuple of per-axis variances: a general diagonal "
                "has no exact fast log-determinant. For missing cells pass `observed=`."
            )
        d = len(grid)
        loc_shape = np.shape(loc)
        if len(loc_shape) >= d and tuple(loc_shape[len(loc_shape) - d :]) != grid:
            raise ValueError(
                f"`loc` must be a scalar or have shape (*batch, *grid) with grid = {grid}; "
                f"got shape {loc_shape}."
            )
        check_finite("loc", loc)
        self.factors = op.factors
        self.noise = noise
        self.observed = op.observed
        self.loc = loc if len(loc_shape) >= d else jnp.broadcast_to(jnp.asarray(loc), grid)
        batch_shape = tuple(np.shape(self.loc)[: np.ndim(self.loc) - d])
        super().__init__(batch_shape=batch_shape, event_shape=grid, validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def operator(self) -> KroneckerPlusDiagOperator:
        """The covariance as a :class:`~bayeslr.linalg.operators.KroneckerPlusDiagOperator`."""
        return KroneckerPlusDiagOperator(self.factors, self.noise, self.observed)

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.batch_shape + self.event_shape)

    @property
    def variance(self):
        op = KroneckerPlusDiagOperator(self.factors, self.noise)
        return jnp.broadcast_to(op.diag().reshape(self.event_shape), self.mean.shape)

    def sample(self, key, sample_shape=()):
        assert is_prng_key(key)
        op = KroneckerPlusDiagOperator(self.factors, self.noise)
        shape = tuple(sample_shape) + self.batch_shape
        eps = op.sample(key, shape).reshape(shape + self.event_shape)
        return self.loc + eps

    def log_prob(self, value):
        d = len(self.event_shape)
        r = jnp.asarray(value) - self.loc
        lead = r.shape[: r.ndim - d]
        cols = jnp.moveaxis(r.reshape((-1,) + self.event_shape), 0, -1)  # (*grid, k)
        if self.observed is None:
            quad, logdet = kron.kron_inv_quad_logdet(self.factors, cols, self.noise)
            n = math.prod(self.event_shape)
        else:
            mask = self.observed.array
            cols = jnp.where(jnp.asarray(mask)[..., None], cols, 0)
            x, logdet = kron.kron_masked_solve_logdet(self.factors, cols, self.noise, mask)
            quad = jnp.sum(cols * x, axis=tuple(range(d)))
            n = int(mask.sum())
        lp = -0.5 * (quad + logdet + n * math.log(2 * math.pi))
        return lp.reshape(lead)

    def predict(self, value, cross_factors=None, test_diag=None):
        r"""Posterior of the noise-free field :math:`F` given ``value`` :math:`=Y`.

        Returns the conditional mean :math:`M_* + K_* (K + D)^{-1}(Y - M)` and marginal
        variance on the grid of ``cross_factors`` (:math:`K_{*i} = k_i(x_{*i}, x_i)`;
        default: the training grid itself, with prior variances ``diag(K_i)``). For new points
        pass ``cross_factors`` and ``test_diag`` (per-axis prior variances at the new
        points); the mean is then that of the zero-mean field plus nothing (``loc`` is
        only added on the training grid). See :func:`bayeslr.linalg.kron.kron_predict`.
        """
        on_grid = cross_factors is None
        if on_grid:
            cross_factors = self.factors
            test_diag = [jnp.diagonal(k) for k in self.factors]
        d = len(self.event_shape)
        r = jnp.asarray(value) - self.loc
        if r.ndim != d:
            raise ValueError(
                f"`value` must be one grid array of shape {self.event_shape} for `predict`; "
                f"got shape {r.shape}."
            )
        obs = None if self.observed is None else self.observed.array
        mean, var = kron.kron_predict(
            self.factors, r, self.noise, cross_factors, test_diag, observed=obs
        )
        if on_grid:
            mean = mean + self.loc
        return mean, var
