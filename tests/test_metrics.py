"""bayeslr.metrics against hand-computed values."""

import numpy as np
import pytest

from bayeslr.metrics import nmse, support_recovery_rate


def test_metrics():
    x = np.array([1.0, 0.0, 2.0])
    assert nmse(x, x) == 0 and np.isclose(nmse(np.zeros(3), x), 1.0)
    s = np.array([True, True, False, False])
    assert support_recovery_rate(s, s) == 1.0
    assert np.isclose(support_recovery_rate(np.array([True, False, True, False]), s), 1 / 3)
    with pytest.raises(ValueError, match="all zeros"):
        nmse(x, np.zeros(3))
