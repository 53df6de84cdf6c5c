r"""A Gauss–Markov (state-space) Gaussian process over sorted times, scored by the Kalman filter.

.. math::

    y = f(t) + e, \qquad f \sim \mathcal{GP}(0, k), \qquad e_k \sim N(0, r_k),
    \qquad y \sim N\big(0,\; K + \operatorname{diag}(r)\big),

for a stationary kernel :math:`k` with an exact state-space form (Matérn 1/2, 3/2, 5/2,
Student-t mixture; ``kernel.sde()``). ``log_prob`` runs the Kalman filter of
:mod:`bayeslr.linalg.statespace` in :math:`O(n d^3)` time and :math:`O(n d^2)` memory instead
of the :math:`O(n^3)` dense Cholesky (:math:`d` the state dimension); ``sample`` simulates the
SDE forward and adds the noise; :meth:`GaussMarkovGP.predict` gives the posterior of the
noise-free :math:`f` at any times by the Kalman filter and RTS smoother.

References:
    Hartikainen & Särkkä (2010), *Kalman filtering and smoothing solutions to temporal Gaussian
    process regression models*; Särkkä & García-Fernández (2021), *Temporal parallelization of
    Bayesian smoothers*.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike
from numpyro.distributions import Distribution, constraints
from numpyro.util import is_prng_key

from bayeslr.linalg import statespace as ss

__all__ = ["GaussMarkovGP"]

_HI = jax.lax.Precision.HIGHEST


class GaussMarkovGP(Distribution):
    r"""Zero-mean GP observations :math:`y \sim N(0, K + \operatorname{diag}(r))` at sorted times.

    The event is the whole series: ``event_shape == (n,)``, so ``obs=`` takes an ``(n,)`` array
    (or ``(*batch, n)`` for independent series with the same times and hyperparameters, scored
    by ``vmap``). Use it inside any NumPyro model (NUTS, SVI, ``Predictive``); gradients with
    respect to the kernel hyperparameters, the noise and the data are exact and cost the same
    order as ``log_prob``.

    Args:
        kernel: A kernel with an exact SDE (``kernel.sde()``), e.g. ``Matern32(s2, ell)``;
            its hyperparameters may be traced (sampled or optimised).
        times: Strictly increasing times :math:`t_1 < \dots < t_n`, shape ``(n,)``. They are
            never sorted silently: sort ``times`` and the data together.
        noise: Observation-noise variances :math:`r_k > 0`, scalar or shape ``(n,)``.
        mask: Optional concrete boolean ``(n,)``, true where observed. ``log_prob`` is then the
            marginal density of the observed entries (values at the others are ignored and may
            be NaN); ``sample`` still draws all ``n`` entries. Stored as the attribute
            ``observed`` (``Distribution.mask()`` is NumPyro's masking method).
        parallel: Static Python bool; ``True`` runs the filter by ``lax.associative_scan``
            (:math:`O(\log n)` depth, for long series on accelerators).

    Example:
        >>> k = Matern32(variance=numpyro.sample("s2", dist.HalfNormal()), lengthscale=ell)
        >>> numpyro.sample("y", GaussMarkovGP(k, t, noise=sigma2), obs=y)

    Raises:
        ValueError: ``times`` not 1-D, non-finite, unsorted or duplicated; ``noise`` of the wrong
            shape or not positive; ``mask`` not boolean ``(n,)``; a kernel without ``sde()``;
            ``parallel`` not a bool.
    """

    arg_constraints: dict[str, Any] = {}
    pytree_data_fields = ("kernel", "times", "noise", "observed")
    pytree_aux_fields = ("parallel",)
    reparametrized_params = ["kernel", "noise"]
    support = constraints.real_vector

    def __init__(
        self,
        kernel: Any,
        times: ArrayLike,
        noise: ArrayLike,
        *,
        mask: ArrayLike | None = None,
        parallel: bool = False,
        validate_args: bool | None = None,
    ):
        if not hasattr(kernel, "sde"):
            raise ValueError(
                f"`kernel` must have an exact state-space form (a `sde()` method, e.g. a Matérn "
                f"kernel); got {type(kernel).__name__}."
            )
        kernel.sde()  # raises ValueError for kernels without an exact SDE (RBF, ...)
        if not isinstance(parallel, bool):
            raise ValueError(f"`parallel` must be a Python bool (static); got {parallel!r}.")
        t = ss._check_times(times)
        n = t.shape[0]
        noise_arr = ss._check_noise(noise, n)
        if mask is not None:
            m = jnp.asarray(mask)
            if m.dtype != jnp.bool_:
                raise ValueError(
                    f"`mask` must be a boolean array (True = observed); got dtype {m.dtype}."
                )
            if m.shape != (n,):
                raise ValueError(f"`mask` must have shape ({n},); got shape {m.shape}.")
            mask = m
        self.kernel = kernel
        self.times = t
        self.noise = noise_arr
        self.observed = mask  # not `.mask`: that is numpyro.Distribution.mask(), used by handlers
        self.parallel = parallel
        super().__init__(batch_shape=(), event_shape=(n,), validate_args=validate_args)

    @property
    def model(self) -> ss.StateSpaceModel:
        """The discretized :class:`~bayeslr.linalg.statespace.StateSpaceModel` at ``times``."""
        return ss.from_kernel(self.kernel, self.times)

    @property
    def mean(self):
        return jnp.zeros_like(self.variance)

    @property
    def variance(self):
        r""":math:`k(0) + r_k = H P_\infty H^\top + r_k`."""
        sde = self.kernel.sde()
        h = jnp.asarray(sde.H)[0]
        k0 = jnp.dot(h, jnp.dot(jnp.asarray(sde.Pinf), h, precision=_HI), precision=_HI)
        return jnp.broadcast_to(k0 + self.noise, self.event_shape)

    def sample(self, key, sample_shape=()):
        r"""Draw :math:`y = f + e` with :math:`f` by forward simulation
        (:func:`~bayeslr.linalg.statespace.sample_prior`), :math:`e_k \sim N(0, r_k)`.
        Cost :math:`O(S n d^2 + n d^3)`."""
        assert is_prng_key(key)
        k_f, k_e = jax.random.split(key)
        model = self.model
        f = ss.sample_prior(k_f, model, tuple(sample_shape))
        e = jax.random.normal(k_e, f.shape, f.dtype)
        return f + jnp.sqrt(self.noise.astype(f.dtype)) * e

    def log_prob(self, value):
        r""":math:`\log N(y_o \mid 0, K_{oo} + R_o)` by the Kalman filter, ``value`` of shape
        ``(*batch, n)`` (leading dimensions ``vmap``-ed). Cost :math:`O(n d^3)` per series."""
        value = jnp.asarray(value)
        n = self.event_shape[0]
        if value.ndim < 1 or value.shape[-1] != n:
            raise ValueError(
                f"`value` must have shape (*batch, {n}) (one value per time); got shape "
                f"{value.shape}."
            )
        lead = value.shape[:-1]

        def one(y):
            return ss.log_marginal_likelihood(
                self.kernel, self.times, y, self.noise, mask=self.observed, parallel=self.parallel
            )

        flat = value.reshape((-1, n))
        return jax.vmap(one)(flat).reshape(lead)

    def predict(
        self, value: ArrayLike, new_times: ArrayLike | None = None
    ) -> ss.PosteriorMarginals:
        r"""Posterior mean and variance of the noise-free :math:`f` given ``value`` :math:`= y`.

        At the data times (``new_times=None``) this is
        :func:`~bayeslr.linalg.statespace.posterior_marginals`; at other (concrete) times
        :func:`~bayeslr.linalg.statespace.predict`, which merges them into the time grid as
        missing observations. Both are the dense :math:`K_{*o}(K_{oo} + R)^{-1} y_o` and
        :math:`k(0) - \operatorname{diag}(K_{*o}(K_{oo} + R)^{-1} K_{o*})`, in :math:`O(n)`.

        Args:
            value: One series, shape ``(n,)``.
            new_times: Optional prediction times, shape ``(m,)``.

        Returns:
            :class:`~bayeslr.linalg.statespace.PosteriorMarginals` ``(mean, variance)``.
        """
        value = jnp.asarray(value)
        n = self.event_shape[0]
        if value.shape != (n,):
            raise ValueError(
                f"`value` must be one series of shape ({n},) for `predict`; got shape "
                f"{value.shape}."
            )
        if new_times is None:
            return ss.posterior_marginals(
                self.kernel,
                self.times,
                value,
                self.noise,
                mask=self.observed,
                parallel=self.parallel,
            )
        return ss.predict(
            self.kernel,
            self.times,
            value,
            self.noise,
            new_times,
            mask=self.observed,
            parallel=self.parallel,
        )
