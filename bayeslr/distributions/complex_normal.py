r"""The circular complex normal :math:`\mathcal{CN}(\mu, \sigma^2)`, elementwise.

.. math::
    z = \mu + \sigma (a + i b)/\sqrt2,\quad a, b \sim N(0, 1), \qquad
    \log p(z) = -\log(\pi\sigma^2) - |z - \mu|^2/\sigma^2 .

The likelihood of complex measurements with circular noise (channel estimation, MIMO): the
density of the pair :math:`(\operatorname{Re} z, \operatorname{Im} z)` under independent
:math:`N(\cdot, \sigma^2/2)` components. ``log_prob`` takes complex values; ``sample`` returns
them. NUTS cannot move complex latents: use it for observed or fixed-hyperparameter sites.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import promote_shapes

__all__ = ["CircularComplexNormal"]


class CircularComplexNormal(Distribution):
    r""":math:`\mathcal{CN}(\mu, \sigma^2)` per element (module docstring).

    Args:
        loc: :math:`\mu`, complex (or real) array.
        variance: :math:`\sigma^2 > 0`, real, broadcast against ``loc``.
    """

    arg_constraints = {"variance": constraints.positive}
    support = constraints.real_vector  # complex values; NumPyro has no complex constraint
    reparametrized_params = ["loc", "variance"]

    def __init__(self, loc: ArrayLike = 0.0, variance: ArrayLike = 1.0, *, validate_args=None):
        loc = jnp.asarray(loc)
        if not jnp.iscomplexobj(loc):
            loc = loc.astype(jnp.result_type(loc.dtype, jnp.complex64))
        self.loc, self.variance = promote_shapes(loc, jnp.asarray(variance))
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(loc), jnp.shape(variance))
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        real = jnp.finfo(self.loc.dtype).dtype
        k1, k2 = jax.random.split(key)
        eps = (jax.random.normal(k1, shape, real) + 1j * jax.random.normal(k2, shape, real))
        return self.loc + jnp.sqrt(self.variance / 2.0) * eps

    def log_prob(self, value):
        d = jnp.abs(value - self.loc) ** 2
        return -jnp.log(np.pi * self.variance) - d / self.variance

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.batch_shape)
