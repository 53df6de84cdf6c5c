"""Import-order workarounds for dependencies (imported first by ``bayeslr/__init__``).

ArviZ (``arviz_base``) registers a lazy stand-in for ``numpyro`` in ``sys.modules`` when it is
imported before NumPyro. Importing ``numpyro.distributions`` through that stand-in leaves the
real package's ``numpyro.distributions.distribution`` attribute unset, and ``numpyro.factor``
(used for every constrained site under NUTS) then raises ``AttributeError`` — so
``import arviz`` followed by ``import bayeslr`` broke NUTS. Touching an attribute loads NumPyro
for real before any bayeslr module imports its submodules.
"""

import numpyro

numpyro.distributions  # noqa: B018  (loads a lazily registered numpyro)
