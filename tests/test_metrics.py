"""bayeslr.metrics against hand-computed values."""

import numpy as np
import pytest

from bayeslr.metrics import (
    accuracy,
    categorical_nll,
    debiased_calibration_error,
    expected_calibration_error,
    nmse,
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
