r"""Top-k ranking primitives (plain NumPy), below the models: the models rank with them
(validation NDCG, recommendations) and :mod:`bayeslr.metrics` re-exports them.

* :func:`top_k_items` — the ``k`` best columns per row, already-seen items excluded;
* :func:`ndcg_at_k`, :func:`recall_at_k` — binary-relevance ranking metrics as in Liang et al.
  (2018).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ndcg_at_k", "recall_at_k", "top_k_items"]


def _dense_rows(name: str, m, shape=None) -> np.ndarray:
    a = m.toarray() if hasattr(m, "toarray") else np.asarray(m)
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        raise ValueError(f"`{name}` must be (users, items) of shape {shape}; got {a.shape}.")
    return a


def _top_k_hits(scores, heldout, k: int, exclude=None):
    s = np.array(_dense_rows("scores", scores), dtype=np.float64)
    n_items = s.shape[1]
    h = _dense_rows("heldout", heldout, s.shape) > 0
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_items:
        raise ValueError(f"`k` must be an int in [1, {n_items}] (the item count); got {k!r}.")
    if np.isnan(s).any():
        raise ValueError("`scores` contain NaN; a ranking of NaN scores is undefined.")
    n_rel = h.sum(1)
    if np.any(n_rel == 0):
        bad = np.nonzero(n_rel == 0)[0][:5].tolist()
        raise ValueError(
            f"{int(np.sum(n_rel == 0))} users have no held-out items (rows {bad}...); the metric "
            "is undefined for them: drop them first."
        )
    return np.take_along_axis(h, top_k_items(s, k, exclude), 1), n_rel


def top_k_items(scores, k: int, exclude=None) -> np.ndarray:
    """Per row, the columns of the ``k`` largest ``scores``, best first (ties: lower column
    first); entries where ``exclude > 0`` (already-seen items) rank last. ``(users, k)``."""
    s = np.array(_dense_rows("scores", scores), dtype=np.float64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= s.shape[1]:
        raise ValueError(f"`k` must be an int in [1, {s.shape[1]}] (the item count); got {k!r}.")
    if exclude is not None:
        s[_dense_rows("exclude", exclude, s.shape) > 0] = -np.inf
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def ndcg_at_k(scores, heldout, k: int = 100, exclude=None, reduce: bool = True):
    r"""NDCG@k with binary relevance (Liang et al. 2018):

    .. math:: \mathrm{DCG@}k = \sum_{r=1}^{k}\frac{1[\omega(r)\in I_u]}{\log_2(r+1)},\quad
        \mathrm{NDCG@}k = \frac{\mathrm{DCG@}k}{\sum_{r=1}^{\min(k,|I_u|)} 1/\log_2(r+1)}.

    Args:
        scores: ``(users, items)`` predicted scores (higher ranks first).
        heldout: ``(users, items)`` held-out clicks :math:`I_u` (dense or scipy.sparse; > 0 is
            relevant). Every user needs at least one.
        k: cut-off, at most the item count.
        exclude: optional ``(users, items)`` already-seen items (the fold-in), ranked last.
        reduce: mean over users (default) or the per-user values.
    """
    hits, n_rel = _top_k_hits(scores, heldout, k, exclude)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ disc
    idcg = np.cumsum(disc)[np.minimum(n_rel, k) - 1]
    out = dcg / idcg
    return float(out.mean()) if reduce else out


def recall_at_k(scores, heldout, k: int = 20, exclude=None, reduce: bool = True):
    r"""Recall@k as in Liang et al. (2018): :math:`\sum_{r\le k} 1[\omega(r)\in I_u] /
    \min(k, |I_u|)` (so a perfect ranking scores 1 even when :math:`|I_u| > k`). Arguments as
    :func:`ndcg_at_k`."""
    hits, n_rel = _top_k_hits(scores, heldout, k, exclude)
    out = hits.sum(1) / np.minimum(n_rel, k)
    return float(out.mean()) if reduce else out
