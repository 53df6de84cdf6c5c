"""The BNN loaders: shapes, label ranges, stratified fixed-seed splits, bad names."""

import numpy as np
import pytest

from bayeslr.datasets import BNN_DATASETS, load_bnn_dataset

SHAPES = {"digits": (1797, 64), "breast_cancer": (569, 30), "wine": (178, 13),
          "mnist5k": (5000, 784), "diabetes": (442, 10), "concrete": (992, 8),
          "boston": (506, 13)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BNN_DATASETS))
def test_loader(name):
    d = load_bnn_dataset(name, test_size=0.25, seed=3)
    n, p = SHAPES[name]
    assert d.x_train.shape[1] == d.x_test.shape[1] == p == len(d.feature_names)
    assert d.x_train.shape[0] + d.x_test.shape[0] == n
    assert abs(d.x_test.shape[0] - 0.25 * n) <= 1
    assert np.all(np.isfinite(d.x_train)) and np.all(np.isfinite(d.y_train))
    if d.task == "classification":
        assert d.y_train.dtype == np.int32 and d.y_train.min() == 0
        assert d.y_train.max() == d.n_classes - 1
        # stratified: class shares agree between the two parts
        share = lambda y: np.bincount(y, minlength=d.n_classes) / y.size  # noqa: E731
        np.testing.assert_allclose(share(d.y_train), share(d.y_test), atol=0.03)
    again = load_bnn_dataset(name, test_size=0.25, seed=3)
    np.testing.assert_array_equal(again.x_test, d.x_test)


def test_loader_bad_input():
    with pytest.raises(ValueError, match="`name`"):
        load_bnn_dataset("cifar10")
    with pytest.raises(ValueError, match="`test_size`"):
        load_bnn_dataset("digits", test_size=1.5)
