"""bayeslr.metrics against hand-computed values."""

import numpy as np
import pytest

from bayeslr.metrics import (
    accuracy,
    categorical_nll,
    debiased_calibration_error,
    expected_calibration_error,
    ndcg_at_k,
    nmse,
    recall_at_k,
    support_recovery_rate,
)


def test_metrics():
    x = np.array([1.0, 0.0, 2.0])
    assert nmse(x, x) == 0 and np.isclose(nmse(np.zeros(3), x), 1.0)
    s = np.array([True, True, False, False])
    assert support_recovery_rate(s, s) == 1.0
    assert np.isclose(support_recovery_rate(np.array([True, False, True, False]), s), 1 / 3)
    with pytest.raises(ValueError, match="all zeros"):
        nmse(x, np.zeros(3))


def test_classification_metrics_hand_computed():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 0])
    assert accuracy(p, y) == 0.5
    assert np.isclose(categorical_nll(p, y), -np.mean(np.log([0.9, 0.2, 0.7, 0.45])))
    # four confidences in four different bins: mean of |correct - confidence|
    assert np.isclose(expected_calibration_error(p, y), (0.1 + 0.8 + 0.3 + 0.55) / 4)
    # one bin for confidences .9 and .85 (both correct): |1 - .875| over 2 of 2 points
    q = np.array([[0.9, 0.1], [0.85, 0.15]])
    assert np.isclose(expected_calibration_error(q, np.array([0, 0])), 0.125)


def test_debiased_calibration_error_hand_computed():
    # constant p = .2 for class 1, half the labels 1: per class (.3)^2 - .5*.5/3
    p = np.tile([0.8, 0.2], (4, 1))
    y = np.array([1, 1, 0, 0])
    assert np.isclose(debiased_calibration_error(p, y, num_bins=1), np.sqrt(0.09 - 0.25 / 3))
    # two bins per class, no label noise within a bin: the plug-in value
    p = np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 3)
    y = np.zeros(6, int)
    assert np.isclose(debiased_calibration_error(p, y, num_bins=2), np.sqrt(0.41))
    # perfectly calibrated coin flips: the bias correction takes it to 0 (plug-in: > 0)
    p = np.full((6, 2), 0.5)
    assert debiased_calibration_error(p, np.array([0, 1, 0, 1, 1, 0]), num_bins=1) == 0.0
    with pytest.raises(ValueError, match="labels"):
        debiased_calibration_error(p, np.array([0, 1, 0, 1, 1, 2]))


def test_ranking_metrics_hand_computed():
    import scipy.sparse as sp

    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    held = np.array([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0]])
    # user 0: hits at ranks 2 and 5; user 1: item 0 is ranked last (5)
    d = 1 / np.log2(np.arange(2, 7))
    ndcg0 = (d[1] + d[4]) / (d[0] + d[1])
    assert np.isclose(ndcg_at_k(scores, held, k=5, reduce=False)[0], ndcg0)
    assert np.isclose(ndcg_at_k(scores, sp.csr_matrix(held), k=5), (ndcg0 + d[4] / d[0]) / 2)
    # k = 2: user 0 has one hit of min(2, 2); user 1 none
    np.testing.assert_allclose(recall_at_k(scores, held, k=2, reduce=False), [0.5, 0.0])
    # Recall@1 divides by min(1, |I_u|) = 1, not |I_u| = 2
    np.testing.assert_allclose(recall_at_k(scores, held, k=1, reduce=False), [0.0, 0.0])
    perfect = np.array([[0, 1, 0, 0, 1.0], [1, 0, 0, 0, 0]])
    assert recall_at_k(perfect, held, k=1) == 1.0 and ndcg_at_k(perfect, held, k=5) == 1.0
    # excluding seen items: user 0's item 0 drops to the bottom, so its held-out item 1 is
    # ranked first; user 1's item 4 drops, item 0 moves up to rank 4
    seen = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_allclose(recall_at_k(scores, held, k=1, exclude=seen, reduce=False),
                               [1.0, 0.0])  # fmt: skip
    assert np.isclose(ndcg_at_k(scores, held, k=5, exclude=seen, reduce=False)[1], d[3] / d[0])
    with pytest.raises(ValueError, match="`k`"):
        ndcg_at_k(scores, held, k=6)
    with pytest.raises(ValueError, match="no held-out items"):
        recall_at_k(scores, np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]), k=2)
