import numpy as np
import pandas as pd
import pytest

from bayeslr.datasets import (
    funbat_synthetic,
    funbat_u1,
    funbat_u2,
    load_kinetic,
    load_ncep_air,
    load_ozone,
    split_coordinates,
    split_entries,
)


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


# ---------------------------------------------------------------------------------------------
# NCEP air temperature


def test_ncep_air_grid_shape_coordinates_and_values():
    d = load_ncep_air()
    assert d.values.shape == (20, 25, 53) and d.dims == ("time", "lat", "lon")
    # time in days since the first stamp, 6-hourly; lat increasing (flipped from the file)
    np.testing.assert_allclose(d.coords["time"], np.arange(20) * 0.25)
    np.testing.assert_allclose(d.coords["lat"][[0, -1]], [15.0, 75.0])
    np.testing.assert_allclose(d.coords["lon"][[0, -1]], [200.0, 330.0])
    for d_name in d.dims:
        assert d.coords[d_name].dtype == np.float64 and np.all(np.diff(d.coords[d_name]) > 0)
    # raw int16 counts x scale_factor 0.01 (read independently from the file): the file's
    # air[0, 0, 0] = 25189 is (lat 75, lon 200), air[0, -1, 0] = 29800 is (lat 15, lon 200)
    np.testing.assert_allclose(d.values[0, -1, 0], 251.89)
    np.testing.assert_allclose(d.values[0, 0, 0], 298.00)
    np.testing.assert_allclose(d.values[5, 14, 20], 250.89)  # file air[5, 10, 20]: lat 50, lon 250
    assert np.all(np.isfinite(d.values)) and 200 < d.values.min() and d.values.max() < 320
    # in February the south of the domain is warmer than the arctic edge
    assert d.values[:, 0].mean() > d.values[:, -1].mean() + 20
    long = d.to_long()
    assert len(long) == 20 * 25 * 53 and list(long.columns) == ["time", "lat", "lon", "value"]
    row = long[(long.time == 1.25) & (long.lat == 50.0) & (long.lon == 250.0)]
    np.testing.assert_allclose(row.value.iloc[0], 250.89)


# ---------------------------------------------------------------------------------------------
# kinetic fluorescence


def test_kinetic_shape_ticks_and_missing_cells():
    import tensorly.datasets

    raw = tensorly.datasets.load_kinetic()
    d = load_kinetic()
    assert d.values.shape == (64, 12, 10, 60)
    assert d.dims == ("measurement", "emission", "excitation", "time")
    np.testing.assert_allclose(d.coords["measurement"][[0, -1]], [1, 64])
    np.testing.assert_allclose(d.coords["emission"][[0, -1]], [472.0, 554.5])
    np.testing.assert_allclose(d.coords["excitation"][[0, -1]], [362.0, 416.0])
    np.testing.assert_allclose(d.coords["time"][[0, -1]], [1 / 3, 20.0])
    missing = raw.missing_values_position
    assert int(missing.sum()) == 1754
    np.testing.assert_array_equal(np.isnan(d.values), missing)
    np.testing.assert_array_equal(d.values[~missing], raw.tensor[~missing])
    assert d.values[0, 0, 0, 0] == raw.tensor[0, 0, 0, 0] and d.values[27, 5, 5, 30] == 1339.0


def test_kinetic_to_long_drops_missing_cells():
    d = load_kinetic()
    n_observed = int(np.isfinite(d.values).sum())
    long = d.to_long()
    assert len(long) == n_observed == 64 * 12 * 10 * 60 - 1754
    assert list(long.columns) == ["measurement", "emission", "excitation", "time", "value"]
    assert long["value"].notna().all() and list(long.index) == list(range(n_observed))
    # sample 28 holds 1,561 of the missing cells
    assert (long.measurement == 28).sum() == 12 * 10 * 60 - 1561
    # a cell tensorly marks missing (index (4, 9, 3, 22)) is not a row
    e, x, t = d.coords["emission"][9], d.coords["excitation"][3], d.coords["time"][22]
    sel = (long.measurement == 5) & (long.emission == e) & (long.excitation == x) & (long.time == t)
    assert not sel.any()
    full = d.to_long(dropna=False)
    assert len(full) == d.values.size and int(full["value"].isna().sum()) == 1754


# ---------------------------------------------------------------------------------------------
# FunBaT synthetic case


def test_funbat_true_functions_closed_form():
    x = np.array([0.0, 0.125, 0.5, 1 / 3])
    np.testing.assert_allclose(funbat_u1(x), [0.0, 0.5 * np.sqrt(0.5), 0.0, -0.375], atol=1e-15)
    y = np.array([0.0, 1 / 3, 1.0])
    np.testing.assert_allclose(funbat_u2(y), [0.0, np.exp(-2 / 3), -np.exp(-2.0)], atol=1e-15)
    import jax.numpy as jnp

    np.testing.assert_allclose(np.asarray(funbat_u1(jnp.asarray(x))), funbat_u1(x), atol=1e-6)


def test_funbat_synthetic_grids_values_and_seed():
    df = funbat_synthetic(seed=3)
    assert list(df.columns) == ["x", "y", "value"] and len(df) == 6 * 15 * 15
    assert df.x.nunique() == 90 and df.y.nunique() == 90
    assert df.x.between(0, 1).all() and df.y.between(0, 1).all()
    # exact at noise 0
    np.testing.assert_array_equal(df.value, funbat_u1(df.x.to_numpy()) * funbat_u2(df.y.to_numpy()))
    # each block of grid**2 rows is a sorted grid x sorted grid product, x slowest
    block = df.iloc[:225]
    gx = block.x.to_numpy().reshape(15, 15)
    gy = block.y.to_numpy().reshape(15, 15)
    assert np.all(gx == gx[:, :1]) and np.all(np.diff(gx[:, 0]) > 0)
    assert np.all(gy == gy[:1, :]) and np.all(np.diff(gy[0]) > 0)
    # reproducible by seed, different across seeds
    pd.testing.assert_frame_equal(df, funbat_synthetic(seed=3))
    assert not np.allclose(df.x, funbat_synthetic(seed=4).x)
    small = funbat_synthetic(0, n_grids=2, grid=4)
    assert len(small) == 2 * 16


def test_funbat_synthetic_noise():
    clean = funbat_synthetic(1, n_grids=20, grid=15)
    noisy = funbat_synthetic(1, n_grids=20, grid=15, noise_sd=0.1)
    pd.testing.assert_frame_equal(clean[["x", "y"]], noisy[["x", "y"]])
    resid = (noisy.value - clean.value).to_numpy()
    assert abs(resid.std() - 0.1) < 0.005 and abs(resid.mean()) < 0.005


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"seed": -1}, ValueError, "`seed`"),
        ({"seed": 1.5}, TypeError, "`seed`"),
        ({"seed": 0, "n_grids": 0}, ValueError, "`n_grids`"),
        ({"seed": 0, "grid": 2.0}, TypeError, "`grid`"),
        ({"seed": 0, "noise_sd": -0.1}, ValueError, "`noise_sd`.*>= 0.*-0.1"),
        ({"seed": 0, "noise_sd": "0.1"}, TypeError, "`noise_sd`"),
    ],
)
def test_funbat_synthetic_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        funbat_synthetic(**kwargs)


# ---------------------------------------------------------------------------------------------
# split protocols


def _table(n=100):
    return pd.DataFrame(
        {"t": np.repeat(np.arange(n // 10, dtype=float), 10), "v": np.arange(n, dtype=float)},
        index=np.arange(n) + 1000,
    )


def test_split_entries_disjoint_covering_and_sized():
    df = _table()
    train, test = split_entries(df, test_frac=0.2, seed=1)
    assert len(test) == 20 and len(train) == 80
    assert set(train.index).isdisjoint(test.index)
    assert sorted([*train.index, *test.index]) == list(df.index)
    pd.testing.assert_frame_equal(pd.concat([train, test]).sort_index(), df)
    assert list(test.index) == sorted(test.index)  # original row order kept
    # reproducible by seed, different across seeds
    assert list(split_entries(df, 0.2, seed=1)[1].index) == list(test.index)
    assert list(split_entries(df, 0.2, seed=2)[1].index) != list(test.index)
    # tiny tables keep both parts non-empty
    tr, te = split_entries(df.iloc[:3], test_frac=0.01)
    assert (len(tr), len(te)) == (2, 1)


def test_split_coordinates_holds_out_interior_values():
    df = load_ncep_air().to_long()
    train, test = split_coordinates(df, "time", test_frac=0.2, seed=0)
    held = np.unique(test.time)
    assert len(held) == 4  # 20 % of 20 time stamps
    assert not train.time.isin(held).any()
    assert len(train) + len(test) == len(df) and set(train.index).isdisjoint(test.index)
    assert len(test) == 4 * 25 * 53
    # the first and last time stamps stay in training: held-out values are interior
    assert {0.0, 4.75} <= set(train.time) and held.min() > 0.0 and held.max() < 4.75
    # different seeds hold out different stamps; all interior values can be drawn
    seen = set()
    for seed in range(40):
        seen |= set(np.unique(split_coordinates(df, "lat", 0.2, seed=seed)[1].lat))
    assert 15.0 not in seen and 75.0 not in seen and len(seen) == 23
    # at most all interior values, at least one
    tr, te = split_coordinates(_table(), "t", test_frac=0.99)
    assert set(np.unique(tr.t)) == {0.0, 9.0} and len(np.unique(te.t)) == 8
    tr, te = split_coordinates(_table(30), "t", test_frac=0.01)
    assert list(np.unique(te.t)) == [1.0]


def test_split_errors():
    df = _table()
    with pytest.raises(ValueError, match=r"`column`.*'lat'.*available columns: \['t', 'v'\]"):
        split_coordinates(df, "lat")
    for frac in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"`test_frac`.*\(0, 1\)"):
            split_entries(df, test_frac=frac)
        with pytest.raises(ValueError, match=r"`test_frac`.*\(0, 1\)"):
            split_coordinates(df, "t", test_frac=frac)
    with pytest.raises(TypeError, match="`test_frac`"):
        split_entries(df, test_frac="0.2")
    with pytest.raises(TypeError, match=r"`df`.*DataFrame.*ndarray"):
        split_entries(df.to_numpy())
    with pytest.raises(ValueError, match=r"`df`.*at least 2 rows.*got 1"):
        split_entries(df.iloc[:1])
    with pytest.raises(ValueError, match=r"at least 3 unique values.*got 2"):
        split_coordinates(df.iloc[:20], "t")
    bad = df.assign(t=df.t.where(df.v != 5))
    with pytest.raises(ValueError, match=r"`df\['t'\]`.*1 NaN"):
        split_coordinates(bad, "t")
