import numpy as np

from bayeslr.datasets import load_ozone


def test_ozone_grid_shape_coordinates_and_values():
    d = load_ozone()
    assert d.values.shape == (24, 24, 72) and d.dims == ("lat", "lon", "month")
    np.testing.assert_allclose(d.coords["lat"][[0, -1]], [-21.2, 36.2])
    np.testing.assert_allclose(d.coords["lon"][[0, -1]], [-113.8, -56.2])
    assert np.all(np.diff(d.coords["lon"]) > 0) and np.all(np.isfinite(d.values))
    # column '-111.3.1' is (lon -111.3, month 1) and row 0 is lat -21.2: the documented layout
    assert d.values[0, 1, 0] == 260 and d.values[2, 1, 0] == 254
    # ozone in Dobson units lies in a physical range
    assert 200 < d.values.min() and d.values.max() < 400
    long = d.to_long()
    assert len(long) == 24 * 24 * 72 and list(long.columns) == ["lat", "lon", "month", "value"]
    row = long[(long.lat == -16.2) & (long.lon == -111.3) & (long.month == 0)]
    assert float(row.value.iloc[0]) == 254
