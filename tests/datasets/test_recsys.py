"""Click data: binarization rules and checks, a user's own MovieLens file, the split."""

import numpy as np
import pandas as pd
import pytest

from bayeslr.datasets import (
    binarize,
    load_movielens_ratings,
    load_movielens_small,
    strong_generalization_split,
)

RATINGS = pd.DataFrame({
    "userId": [1] * 6 + [2] * 5 + [3] * 2,
    "movieId": [10, 11, 12, 13, 14, 15, 10, 11, 12, 13, 16, 10, 11],
    "rating": [5, 4, 4.5, 4, 4, 3.5, 4, 4, 5, 4, 4, 5, 5],
})  # fmt: skip


def test_binarize_rules():
    c = binarize(RATINGS)
    # user 1: five ratings >= 4 (3.5 is not a click); user 2: five; user 3: two (dropped)
    assert c.user_ids.tolist() == [1, 2]
    assert c.matrix.shape == (2, 6) and c.matrix.nnz == 10
    assert set(c.item_ids.tolist()) == {10, 11, 12, 13, 14, 16}
    assert binarize(RATINGS, min_rating=3.5).matrix[0].nnz == 6


def test_binarize_bad_input():
    dup = pd.concat([RATINGS, RATINGS.iloc[:1]])
    with pytest.raises(ValueError, match="repeated"):
        binarize(dup)
    assert binarize(dup, duplicates="merge").matrix.nnz == 10
    bad = RATINGS.copy()
    bad.loc[0, "rating"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        binarize(bad)
    with pytest.raises(ValueError, match="columns"):
        binarize(RATINGS.rename(columns={"rating": "score"}))
    with pytest.raises(ValueError, match="nothing left"):
        binarize(RATINGS, min_user_clicks=50)


def test_own_movielens_files(tmp_path):
    csv = tmp_path / "ratings.csv"
    RATINGS.assign(timestamp=0).to_csv(csv, index=False)
    pd.testing.assert_frame_equal(load_movielens_ratings(csv)[list(RATINGS)], RATINGS)
    dat = tmp_path / "ratings.dat"
    dat.write_text("".join(f"{u}::{m}::{r:g}::0\n" for u, m, r in RATINGS.to_numpy()))
    got = load_movielens_ratings(dat)
    np.testing.assert_allclose(got[list(RATINGS)].to_numpy(float), RATINGS.to_numpy(float))
    with pytest.raises(FileNotFoundError, match="path"):
        load_movielens_ratings(tmp_path / "missing.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_movielens_ratings(tmp_path / "other.csv")


def test_movielens_small_and_split_sizes():
    df = load_movielens_small()
    assert len(df) == 100_004 and df["userId"].nunique() == 671
    c = binarize(df)
    s = strong_generalization_split(c, 50, 60, seed=3)
    assert s.train.shape[0] == c.matrix.shape[0] - 110
    assert s.val_in.shape[0] <= 50 and s.test_in.shape[0] <= 60
    with pytest.raises(ValueError, match="n_val"):
        strong_generalization_split(c, 0, 10)
    with pytest.raises(ValueError, match="must leave training users"):
        strong_generalization_split(c, 400, 400)


def test_ml100k_loader_or_its_install_hint():
    import importlib.util

    from bayeslr.datasets import load_ml100k

    if importlib.util.find_spec("recbole") is None:
        with pytest.raises(ImportError, match="--no-deps recbole"):
            load_ml100k()
    else:
        df = load_ml100k()
        assert df.shape == (100_000, 4) and df["userId"].nunique() == 943
        assert set(df["rating"].unique()) == {1, 2, 3, 4, 5}
