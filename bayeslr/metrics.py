r"""Metrics shared by the models, the benchmarks and the examples.

* :func:`nmse` — normalised mean squared error :math:`\|\hat x - x\|^2 / \|x\|^2`;
* :func:`support_recovery_rate` — Jaccard index of estimated and true supports;
* :func:`accuracy`, :func:`categorical_nll` — of predicted class probabilities;
* :func:`expected_calibration_error` — the standard top-label ECE with equal-width bins;
* :func:`debiased_calibration_error` — the debiased :math:`\ell_2` marginal (class-wise)
  calibration error of Kumar, Liang and Ma (2019) with equal-mass bins;
* :func:`ndcg_at_k`, :func:`recall_at_k` — top-k ranking metrics of recommenders with binary
  relevance, exactly as in Liang et al. (2018) (Recall@k normalized by
  :math:`\min(k, |I_u|)`), optionally excluding already-seen items from the ranking.

Plain NumPy on concrete arrays (results, not traced values).
"""

from __future__ import annotations

import itertools

import numpy as np

from bayeslr._ranking import ndcg_at_k, recall_at_k, top_k_items

__all__ = [
    "nmse",
    "support_recovery_rate",
    "accuracy",
    "categorical_nll",
    "expected_calibration_error",
    "debiased_calibration_error",
    "ndcg_at_k",
    "recall_at_k",
    "top_k_items",
]


def nmse(x_hat, x) -> float:
    r"""Normalised mean squared error :math:`\|\hat x - x\|^2 / \|x\|^2` (real or complex)."""
    x_hat, x = np.asarray(x_hat), np.asarray(x)
    if x_hat.shape != x.shape:
        raise ValueError(f"`x_hat` has shape {x_hat.shape} but `x` has shape {x.shape}.")
    den = float(np.sum(np.abs(x) ** 2))
    if den == 0:
        raise ValueError("`x` is all zeros: the NMSE is undefined.")
    return float(np.sum(np.abs(x_hat - x) ** 2) / den)


def support_recovery_rate(s_hat, s) -> float:
    r"""Support recovery rate :math:`|\hat S \cap S| / |\hat S \cup S|` (Jaccard index).

    Args:
        s_hat, s: boolean masks of one shape (estimated and true support).

    Returns:
        A value in [0, 1]; 1 when both supports are empty.
    """
    s_hat, s = np.asarray(s_hat, bool), np.asarray(s, bool)
    if s_hat.shape != s.shape:
        raise ValueError(f"`s_hat` has shape {s_hat.shape} but `s` has shape {s.shape}.")
    union = int(np.sum(s_hat | s))
    return 1.0 if union == 0 else float(np.sum(s_hat & s) / union)


def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"`probs` must be (n, classes); got shape {p.shape}.")
    if y.shape != (p.shape[0],):
        raise ValueError(f"`labels` must have shape ({p.shape[0]},); got {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"`labels` must be integers in [0, {p.shape[1]}).")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1 + 1e-6:
        raise ValueError("`probs` must be probabilities in [0, 1].")
    return p, y


def accuracy(probs, labels) -> float:
    """Fraction of rows whose arg-max class is the label."""
    p, y = _probs_labels(probs, labels)
    return float(np.mean(np.argmax(p, 1) == y))


def categorical_nll(probs, labels, eps: float = 1e-12) -> float:
    r"""Mean negative log-likelihood :math:`-\frac1n\sum_i \log \max(p_{i,y_i}, \epsilon)`."""
    p, y = _probs_labels(probs, labels)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], eps))))


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
    r"""Top-label ECE with ``num_bins`` equal-width confidence bins (Guo et al. 2017):

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{n}\,|\mathrm{acc}_b - \mathrm{conf}_b|,

    :math:`\mathrm{conf} = \max_c p_c`; bin :math:`b` holds confidences in
    :math:`((b-1)/B, b/B]`.
    """
    p, y = _probs_labels(probs, labels)
    conf = p.max(1)
    correct = (np.argmax(p, 1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
    gap = np.bincount(idx, conf - correct, minlength=num_bins)
    return float(np.sum(np.abs(gap)) / len(y))


def debiased_calibration_error(probs, labels, num_bins: int = 15) -> float:
    r"""Debiased :math:`\ell_2` marginal calibration error (Kumar, Liang and Ma, "Verified
    Uncertainty Calibration", NeurIPS 2019; ``get_calibration_error`` of their
    ``uncertainty-calibration`` package with its defaults ``p=2, debias=True,
    mode="marginal"``, the metric the SSVI code reports as "ECE").

    Per class :math:`k`: sort :math:`p_{\cdot k}` into ``num_bins`` equal-mass bins (sizes
    differing by at most one, edges halfway between neighbouring groups, as in release 0.1.4 of
    that package; checked against it to 1e-15 on random inputs); with
    :math:`\bar p_b`, :math:`\bar y_b` the bin means of the probability and of
    :math:`1[y = k]`,

    .. math:: \widehat{CE}_k^2 = \max\Big(0, \sum_b \frac{n_b}{n}\Big[(\bar p_b -
        \bar y_b)^2 - \frac{\bar y_b(1-\bar y_b)}{n_b - 1}\Big]\Big)

    (bins with fewer than two points contribute 0), and the result is
    :math:`\big(\frac1K\sum_k \widehat{CE}_k^2\big)^{1/2}`. The subtracted term removes the
    upward bias of the plug-in estimate from the label noise within a bin.
    """
    p, y = _probs_labels(probs, labels)
    n = len(y)
    total = 0.0
    for k in range(p.shape[1]):
        pk = p[:, k]
        order = np.sort(pk)
        groups = np.array_split(order, min(num_bins, n))
        edges = [(a[-1] + b[0]) / 2.0 for a, b in itertools.pairwise(groups)]
        edges = np.unique(np.asarray([*edges, 1.0]))
        idx = np.searchsorted(edges, pk)  # bin i holds (edges[i-1], edges[i]]
        yk = (y == k).astype(np.float64)
        sq = 0.0
        for b in np.unique(idx):
            sel = idx == b
            nb = int(sel.sum())
            if nb < 2:
                continue
            ybar = yk[sel].mean()
            sq += nb / n * ((pk[sel].mean() - ybar) ** 2 - ybar * (1 - ybar) / (nb - 1))
        total += max(sq, 0.0)
    return float(np.sqrt(total / p.shape[1]))
