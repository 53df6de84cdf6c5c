r"""FunBaT's algorithm: conditional moment matching with a Kalman smoother per mode, as pure
functions (the model and the math are in :mod:`bayeslr.models.funbat`)."""
from __future__ import annotations

import dataclasses
import functools
import math
import string
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from bayeslr.linalg.statespace import gaussian_sites_log_evidence, smooth_gaussian_sites

__all__ = [
    "EntryGroups",
    "FunBaTData",
    "FunBaTFit",
    "FunBaTProblem",
    "FunBaTState",
    "KernelLearning",
    "entry_groups",
    "fitted_kernels",
    "funbat_data",
    "funbat_epoch",
    "funbat_init",
    "funbat_step",
    "held_out_means",
]

_HI = jax.lax.Precision.HIGHEST
_AX = string.ascii_lowercase
_AX2 = string.ascii_uppercase


# --------------------------------------------------------------------------------------------
# data: long table -> integer indices on unique sorted coordinates


@dataclasses.dataclass(frozen=True)
class FunBaTData:
    """Entries of a continuous-indexed tensor on the unique sorted coordinates of each mode.

    Attributes:
        idx: ``(N, K)`` int, ``ticks[k][idx[n, k]]`` is entry ``n``'s coordinate in mode ``k``.
        y: ``(N,)`` values (standardized when built by :class:`FunBaT`).
        ticks: per mode, the strictly increasing unique coordinates ``(M_k,)`` (scaled).
    """

    idx: np.ndarray
    y: np.ndarray
    ticks: tuple[np.ndarray, ...]


def funbat_data(coords: np.ndarray, y: np.ndarray, decimals: int | None = None) -> FunBaTData:
    r"""Index entries by the unique sorted coordinates of each mode.

    Args:
        coords: ``(N, K)`` float coordinates.
        y: ``(N,)`` values.
        decimals: round coordinates to this many decimals before ``unique`` (near-ties from
            floating point become one coordinate), or ``None`` to keep them exact.

    Returns:
        :class:`FunBaTData`. Repeated full coordinate tuples stay separate observations.
    """
    coords = np.asarray(coords, np.float64)
    y = np.asarray(y)
    if coords.ndim != 2 or coords.shape[1] < 1:
        raise ValueError(f"`coords` must be a 2-D array (N, K); got shape {coords.shape}.")
    if y.shape != (coords.shape[0],):
        raise ValueError(
            f"`y` must be 1-D with one value per row of `coords` ({coords.shape[0]}); got shape "
            f"{y.shape}."
        )
    for name, a in (("coords", coords), ("y", y)):
        if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            raise ValueError(f"`{name}` must be finite numbers; got NaN/inf or {a.dtype}.")
    if decimals is not None:
        coords = np.round(coords, decimals)
    ticks, idx = [], []
    for k in range(coords.shape[1]):
        u, inv = np.unique(coords[:, k], return_inverse=True)
        ticks.append(u)
        idx.append(inv.reshape(-1))
    return FunBaTData(np.stack(idx, axis=1).astype(np.int32), y, tuple(ticks))


def size_bucket(n: int) -> int:
    """The padded size of ``n`` entries or coordinates of a fit: the next power of two (at
    least 16) up to 1024, above that the next multiple of :math:`2^{b-4}` (:math:`b` the bit
    length of ``n``: at most 1/8 more). Fits whose sizes share buckets share compiled steps."""
    n = int(n)
    if n <= 1024:
        return max(16, 1 << max(0, n - 1).bit_length())
    g = 1 << (n.bit_length() - 4)
    return -(-n // g) * g


def padded(data: FunBaTData) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    r"""``data`` padded to :func:`size_bucket` sizes: ``(idx, y, weight, ticks)``.

    Padding entries have weight 0 (index 0, value 0): they send no messages
    (:func:`funbat_epoch`). Padding coordinates follow each mode's last one at unit-range
    steps and carry no entries: zero-precision sites after the data, which change neither the
    smoothed posterior at the real coordinates nor the mode's evidence. So the padded fit is
    the fit, at shapes that other fits of similar size share.
    """
    n, K = data.idx.shape
    n_pad = size_bucket(n)
    idx = np.zeros((n_pad, K), np.int32)
    idx[:n] = data.idx
    y = np.zeros(n_pad, np.asarray(data.y).dtype)
    y[:n] = data.y
    weight = np.zeros(n_pad)
    weight[:n] = 1.0
    ticks = []
    for t in data.ticks:
        step = max(float(t[-1] - t[0]), 1.0)
        extra = size_bucket(t.size) - t.size
        ticks.append(np.concatenate([t, t[-1] + step * np.arange(1, extra + 1)]))
    return idx, y, weight, tuple(ticks)


def unpadded(state: FunBaTState, sizes: Sequence[int]) -> FunBaTState:
    """The message-passing state at the real coordinates (``sizes[k]`` of mode ``k``)."""
    def cut(xs):
        return tuple(x[:m] for x, m in zip(xs, sizes, strict=True))

    return state._replace(mu=cut(state.mu), cov=cut(state.cov), lam=cut(state.lam),
                          eta=cut(state.eta))  # fmt: skip


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["at", "parent"], meta_fields=["order"]
)
@dataclasses.dataclass(frozen=True)
class EntryGroups:
    r"""Nested prefix groups of the entries, for :math:`\sum_n \otimes_k E[u^k u^{k\top}]_n`
    in :math:`O(\sum_j G_j R^{2(K-j)})` instead of :math:`O(N R^{2K})`.

    With the modes taken in ``order`` :math:`\pi`, level :math:`j` groups the entries by
    their coordinates in modes :math:`\pi_0..\pi_j` (:math:`G_j` unique prefixes; on a grid
    :math:`G_0 = M_{\pi_0} \ll N`).

    Attributes:
        at: per level :math:`j = 0..K-2` the coordinate index of each group in mode
            :math:`\pi_j`, ``(G_j,)``.
        parent: per level :math:`j = 0..K-2` the level-:math:`j` group of each item one level
            down: of each level-:math:`(j+1)` group, and at the last level of each entry
            ``(N,)``.
        order: static: :math:`\pi`, the modes by increasing number of coordinates.
    """

    at: tuple[Array, ...]
    parent: tuple[Array, ...]
    order: tuple[int, ...]


def entry_groups(idx: np.ndarray, sizes: Sequence[int], first: int | None = None) -> EntryGroups:
    """:class:`EntryGroups` of the ``(N, K)`` coordinate indices ``idx`` (host side, padded to
    :func:`size_bucket` sizes with empty groups, which sum to zero): the modes by increasing
    ``sizes``, or mode ``first`` and then the others by size."""
    idx = np.asarray(idx)
    K = idx.shape[1]
    order = tuple(int(k) for k in np.argsort(np.asarray(sizes), kind="stable"))
    if first is not None:
        order = (first, *(k for k in order if k != first))
    at, parent = [], []
    below = None  # the prefix tuples of the level under construction's children
    for j in range(K - 2, -1, -1):  # the deepest level first: its children are the entries
        keys = idx[:, order[: j + 1]] if below is None else below[:, : j + 1]
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        g = size_bucket(uniq.shape[0])
        at_j = np.zeros(g, np.int32)
        at_j[: uniq.shape[0]] = uniq[:, j]
        par = np.zeros(keys.shape[0] if below is None else size_bucket(keys.shape[0]), np.int32)
        par[: keys.shape[0]] = inv.reshape(-1)
        at.insert(0, at_j)
        parent.insert(0, par)
        below = uniq
    return EntryGroups(tuple(map(jnp.asarray, at)), tuple(map(jnp.asarray, parent)), order)


def _prefix_sums(m2u, idx, w, groups: EntryGroups) -> Array:
    r"""Per level-0 group :math:`g` (one coordinate of mode :math:`\pi_0`),
    :math:`\sum_{n \in g} w_n \otimes_{j \ge 1} E[u^{\pi_j}u^{\pi_j\top}]_{i_{\pi_j}(n)}`:
    ``(G_0, R, R, ..., R, R)``, the pair of axes of :math:`\pi_1` first."""
    order = groups.order
    K = len(order)
    last = order[-1]
    acc = w[:, None, None] * m2u[last][idx[:, last]]  # (N, R, R): the entries' last factor
    for j in range(K - 2, -1, -1):
        acc = jax.ops.segment_sum(acc, groups.parent[j], num_segments=groups.at[j].shape[0])
        if j:
            acc = jnp.einsum("grs,g...->grs...", m2u[order[j]][groups.at[j]], acc, precision=_HI)
    return acc


def _grouped_second_moment(m2u, idx, w, groups: EntryGroups, R: int) -> Array:
    r""":math:`\sum_n w_n \otimes_k E[u^k u^{k\top}]_{i_k(n)}` as ``(R^K, R^K)`` (rows the
    :math:`R^K` core index, columns its copy), summed up the prefix groups of ``groups``."""
    order = groups.order
    K = len(order)
    acc = _prefix_sums(m2u, idx, w, groups)
    m2_first = m2u[order[0]][groups.at[0]]
    total = jnp.einsum("grs,g...->rs...", m2_first, acc, precision=_HI)
    # axes (r_{pi0}, s_{pi0}, r_{pi1}, s_{pi1}, ...)
    rows = [2 * order.index(k) for k in range(K)]
    P = math.prod(core_shape(R, K))
    return jnp.transpose(total, rows + [r + 1 for r in rows]).reshape(P, P)


# --------------------------------------------------------------------------------------------
# the EP state and one epoch


class FunBaTState(NamedTuple):
    r"""State of the message-passing fit (per mode :math:`k`: tuples over modes).

    Attributes:
        mu: posterior means of :math:`u^k` at the unique coordinates, ``(M_k, R)`` each.
        cov: posterior covariances :math:`S^k_j`, ``(M_k, R, R)`` each.
        lam, eta: damped message sums per unique coordinate, ``(M_k, R, R)`` and ``(M_k, R)``.
        core_mean, core_cov: :math:`\bar w` ``(R^K,)`` and :math:`\Sigma_W` ``(R^K, R^K)``
            (CP: the fixed superdiagonal and zeros).
        core_lam, core_eta: damped core message sums.
        tau_a, tau_b: :math:`q(\tau) = \operatorname{Gamma}(a, b)`.
    """

    mu: tuple[Array, ...]
    cov: tuple[Array, ...]
    lam: tuple[Array, ...]
    eta: tuple[Array, ...]
    core_mean: Array
    core_cov: Array
    core_lam: Array
    core_eta: Array
    tau_a: Array
    tau_b: Array


def _second_moments(mu, cov):
    return cov + mu[..., :, None] * mu[..., None, :]


def core_shape(rank: int | Sequence[int], K: int) -> tuple[int, ...]:
    """The core's shape :math:`(R_1, \\dots, R_K)` of a rank (one int for every mode, or one
    per mode)."""
    return (int(rank),) * K if isinstance(rank, (int, np.integer)) else tuple(map(int, rank))


def _superdiagonal(R: int, K: int, dtype) -> Array:
    w = np.zeros((R,) * K)
    w[(np.arange(R),) * K] = 1.0
    return jnp.asarray(w.reshape(-1), dtype)


def _mode_messages(k, mus, m2s, core, R, K, cp):
    """Per-entry :math:`a_n = \\bar W_{(k)}E[z]` ``(N, R)`` and :math:`B_n` ``(N, R, R)``."""
    others = [j for j in range(K) if j != k]
    if cp:
        a = jnp.prod(jnp.stack([mus[j] for j in others]), axis=0)
        b = jnp.prod(jnp.stack([m2s[j] for j in others]), axis=0)
        return a, b
    w = core.reshape(core_shape(R, K))
    i1 = "".join("r" if j == k else _AX[j] for j in range(K))
    i2 = "".join("s" if j == k else _AX2[j] for j in range(K))
    a = jnp.einsum(
        f"{i1}," + ",".join(f"n{_AX[j]}" for j in others) + "->nr",
        w,
        *[mus[j] for j in others],
        precision=_HI,
    )
    b = jnp.einsum(
        f"{i1},{i2}," + ",".join(f"n{_AX[j]}{_AX2[j]}" for j in others) + "->nrs",
        w,
        w,
        *[m2s[j] for j in others],
        precision=_HI,
    )
    return a, b


def _grouped_mode_precision(k, m2u, idx, w, core, groups: EntryGroups, R, K) -> Array:
    r"""Tucker's message precision of mode :math:`k` summed per coordinate,
    :math:`\sum_{n: i_k(n) = i} w_n B_n` ``(M_k, R, R)`` with :math:`B_n = \bar W_{(k)}
    (\otimes_{j \ne k} E[u^ju^{j\top}]_n) \bar W_{(k)}^\top` (the same as the per-entry
    form), from the prefix sums of ``groups`` (mode :math:`k` first): :math:`O(M_k R^{2K-1})`
    after the sums instead of :math:`O(N R^{2K-1})`."""
    order = groups.order
    acc = _prefix_sums(m2u, idx, w, groups)
    wk = core.reshape(core_shape(R, K))
    i1 = "".join("r" if j == k else _AX[j] for j in range(K))
    i2 = "".join("s" if j == k else _AX2[j] for j in range(K))
    ia = "g" + "".join(_AX[j] + _AX2[j] for j in order[1:])
    lam = jnp.einsum(f"{i1},{i2},{ia}->grs", wk, wk, acc, precision=_HI,
                     optimize="optimal")  # fmt: skip
    return jax.ops.segment_sum(lam, groups.at[0], num_segments=m2u[k].shape[0])


def _mode_mean_message(k, mus, core, R, K):
    """Per-entry :math:`a_n = \\bar W_{(k)}E[z]` ``(N, R)`` (Tucker)."""
    others = [j for j in range(K) if j != k]
    w = core.reshape(core_shape(R, K))
    i1 = "".join("r" if j == k else _AX[j] for j in range(K))
    return jnp.einsum(
        f"{i1}," + ",".join(f"n{_AX[j]}" for j in others) + "->nr",
        w,
        *[mus[j] for j in others],
        precision=_HI,
    )


def _entry_means(mus, K):
    """:math:`E[z_n] = \\otimes_k E[u^k]_n`, ``(N, R^K)``."""
    ez = jnp.einsum(",".join(f"n{_AX[j]}" for j in range(K)) + "->n" + _AX[:K], *mus, precision=_HI)
    return ez.reshape(ez.shape[0], -1)


def _entry_moments(mus, m2s, R, K):
    """:math:`E[z_n]` ``(N, R^K)`` and :math:`\\sum_n E[z_nz_n^\\top]` ``(R^K, R^K)``."""
    ez = _entry_means(mus, K)
    ezz = jnp.einsum(
        ",".join(f"n{_AX[j]}{_AX2[j]}" for j in range(K)) + "->" + _AX[:K] + _AX2[:K],
        *m2s,
        precision=_HI,
    )
    P = math.prod(core_shape(R, K))
    return ez, ezz.reshape(P, P)


def funbat_epoch(
    state: FunBaTState,
    idx: Array,
    y: Array,
    ticks: Sequence[Array],
    kernels: Sequence[Any],
    *,
    cp: bool,
    damping: tuple[float, float, float],
    a0: float = 1.0,
    b0: float = 1.0,
    parallel: bool = False,
    weight: Array | None = None,
    groups: Sequence[EntryGroups] | None = None,
) -> tuple[FunBaTState, Array]:
    r"""One epoch of FunBaT's message passing (module docstring): every mode, then the core
    (Tucker only), then the noise. Pure and jittable (``cp``, ``damping``, ``a0``, ``b0``
    static).

    Args:
        state: the current :class:`FunBaTState`.
        idx: ``(N, K)`` int indices of each entry's coordinate in each mode.
        y: ``(N,)`` values.
        ticks: per mode, the unique sorted coordinates ``(M_k,)``.
        kernels: per mode, the kernel of the latent functions (exact SDE).
        cp: FunBaT-CP (fixed superdiagonal core).
        damping: :math:`(\rho_U, \rho_W, \rho_\tau)`, the weight of the *old* message.
        a0, b0: Gamma prior of :math:`\tau`.
        parallel: run each mode's smoother as an associative scan (:math:`O(\log M_k)`
            depth, for accelerators) instead of ``lax.scan``.
        weight: ``(N,)`` 0/1 weights of the entries (``None``: all 1). An entry of weight 0
            sends no message and does not count in the noise or the error: the epoch equals
            the epoch without it, at the same array shapes (so a validation split and the fit
            on all entries share one compiled step).
        groups: per mode :math:`k`, :func:`entry_groups` of ``idx`` with mode :math:`k`
            first (Tucker): the modes' message precisions and the core's precision
            :math:`\sum_n E[z_nz_n^\top]` summed up nested prefix groups instead of entry by
            entry (on a grid :math:`O(N R^2 + \dots + M_k R^{2K})` instead of
            :math:`O(N R^{2K})`; exact). ``None``: the per-entry sums.

    Returns:
        ``(new_state, train_mse)`` where ``train_mse`` is the (weighted) mean squared error of
        the posterior-mean prediction on the training entries after the update.
    """
    rho_u, rho_w, rho_t = damping
    K = idx.shape[1]
    R = tuple(m.shape[1] for m in state.mu)  # the rank of every mode
    P = math.prod(R)  # core size
    w = jnp.ones_like(y) if weight is None else jnp.asarray(weight, y.dtype)
    n = jnp.sum(w)
    wy = w * y
    e_tau = state.tau_a / state.tau_b
    mu, cov, lam, eta = list(state.mu), list(state.cov), list(state.lam), list(state.eta)
    # per-entry moments of every mode; after a mode's update only its own are refreshed
    mus = [mu[j][idx[:, j]] for j in range(K)]
    m2s = [_second_moments(mu[j], cov[j])[idx[:, j]] for j in range(K)]
    for k in range(K):
        m_k = mu[k].shape[0]
        if groups is None or cp:
            a, b = _mode_messages(k, mus, m2s, state.core_mean, R, K, cp)
            lam_sum = jax.ops.segment_sum(w[:, None, None] * b, idx[:, k], num_segments=m_k)
        else:
            a = _mode_mean_message(k, mus, state.core_mean, R, K)
            m2u = [_second_moments(mu[j], cov[j]) for j in range(K)]
            lam_sum = _grouped_mode_precision(k, m2u, idx, w, state.core_mean, groups[k], R, K)
        lam_new = e_tau * lam_sum
        eta_new = e_tau * jax.ops.segment_sum(wy[:, None] * a, idx[:, k], num_segments=m_k)
        lam[k] = rho_u * lam[k] + (1.0 - rho_u) * lam_new
        eta[k] = rho_u * eta[k] + (1.0 - rho_u) * eta_new
        mu[k], cov[k] = smooth_gaussian_sites(
            kernels[k], ticks[k], lam[k], eta[k], parallel=parallel
        )
        mus[k] = mu[k][idx[:, k]]
        m2s[k] = _second_moments(mu[k], cov[k])[idx[:, k]]

    core_mean, core_cov = state.core_mean, state.core_cov
    core_lam, core_eta = state.core_lam, state.core_eta
    if cp:
        f = jnp.sum(jnp.prod(jnp.stack(mus), axis=0), axis=1)
        f2 = jnp.sum(jnp.prod(jnp.stack(m2s), axis=0), axis=(1, 2))
        sq = jnp.sum(w * (y**2 - 2.0 * y * f + f2))
    else:
        if groups is None:
            ez, ezz = _entry_moments(mus, [w[:, None, None] * m2s[0], *m2s[1:]], R, K)
        else:
            ez = _entry_means(mus, K)
            m2u = [_second_moments(mu[j], cov[j]) for j in range(K)]
            first = min(range(K), key=lambda j: mu[j].shape[0])  # the fewest level-0 groups
            ezz = _grouped_second_moment(m2u, idx, w, groups[first], R)
        core_lam = rho_w * core_lam + (1.0 - rho_w) * e_tau * ezz
        core_eta = rho_w * core_eta + (1.0 - rho_w) * e_tau * (wy @ ez)
        prec = core_lam + jnp.eye(P, dtype=core_lam.dtype)
        chol = jnp.linalg.cholesky(0.5 * (prec + prec.T))
        core_cov = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(P, dtype=prec.dtype))
        core_cov = 0.5 * (core_cov + core_cov.T)
        core_mean = core_cov @ core_eta
        f = ez @ core_mean
        eww = core_cov + jnp.outer(core_mean, core_mean)
        sq = jnp.sum(wy * y) - 2.0 * jnp.dot(wy, f) + jnp.sum(eww * ezz)
    tau_a = (a0 + 0.5 * n).astype(state.tau_b.dtype)
    tau_b = rho_t * state.tau_b + (1.0 - rho_t) * (b0 + 0.5 * jnp.maximum(sq, 0.0))
    new = FunBaTState(
        tuple(mu), tuple(cov), tuple(lam), tuple(eta), core_mean, core_cov, core_lam, core_eta,
        tau_a, tau_b,
    )  # fmt: skip
    return new, jnp.sum(w * (y - f) ** 2) / jnp.maximum(n, 1.0)


# --------------------------------------------------------------------------------------------
# per-mode kernel learning: type-II MAP on the Kalman evidence of the current site messages


def kernel_leaves(kernel: Any) -> Array:
    r"""The kernel's hyperparameters (its pytree leaves: variances, lengthscales, ...) as one
    vector, the parameters that :class:`KernelLearning` learns on the log scale. A leaf with
    several values (a mixture's ``weights``, ``means``, ...) contributes each of them."""
    return jnp.concatenate([jnp.ravel(jnp.asarray(v)) for v in jax.tree_util.tree_leaves(kernel)])


def kernel_leaf_names(kernel: Any) -> tuple[str, ...]:
    """The name of each hyperparameter of :func:`kernel_leaves` (``"variance"``,
    ``"lengthscale"``, ...; a sum kernel repeats them per component, a leaf with several values
    once per value)."""
    return tuple(
        getattr(path[-1], "name", str(path[-1]))
        for path, v in jax.tree_util.tree_flatten_with_path(kernel)[0]
        for _ in range(int(np.size(v)))
    )


def kernel_with(kernel: Any, log_theta: Array) -> Any:
    """``kernel`` with its hyperparameters (:func:`kernel_leaves`) set to ``exp(log_theta)``."""
    leaves, treedef = jax.tree_util.tree_flatten(kernel)
    vals = jnp.exp(log_theta)
    out, start = [], 0
    for v in leaves:
        v = jnp.asarray(v)
        out.append(vals[start:start + v.size].reshape(v.shape).astype(v.dtype))
        start += v.size
    return jax.tree_util.tree_unflatten(treedef, out)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["lr", "prior_loc", "prior_scale", "mask"],
    meta_fields=["steps", "start", "max_sites"],
)
@dataclasses.dataclass(frozen=True)
class KernelLearning:
    r"""Per-mode kernel hyperparameters by type-II MAP inside the message passing.

    Before each epoch (from epoch ``start`` on), every mode :math:`k` takes ``steps`` Adam
    steps on its log hyperparameters :math:`\theta_k = \log(\sigma^2_k, \ell_k, \dots)`
    against

    .. math::
        -\log Z_k(\theta_k) + \tfrac12\|(\theta_k - \theta^0_k)/s\|^2,

    where :math:`\log Z_k` is the log normalizer of the mode's :math:`R` GPs under its current
    Gaussian site messages :math:`(\Lambda^k_j, \eta^k_j)`
    (:func:`bayeslr.linalg.statespace.gaussian_sites_log_evidence`, a Kalman filter,
    :math:`O(M_k)`). With the sites fixed this is expectation propagation's type-II objective
    (its gradient in :math:`\theta_k` is that of the EP evidence at a fixed point); the
    log-normal prior around the initial kernel :math:`\theta^0_k` with scale :math:`s` keeps
    a mode with few coordinates from collapsing its lengthscale.

    Attributes:
        lr: Adam step size (data: a new value does not recompile).
        prior_loc: per mode the prior mean :math:`\theta^0_k` ``(P_k,)`` (log scale).
        prior_scale: :math:`s`, the prior sd on the log scale.
        mask: per mode ``(P_k,)``, 1 for a hyperparameter that is learned, 0 for one that is
            kept (its gradient is zeroed).
        steps, start: static: Adam steps per epoch, first epoch that learns (the first
            epochs settle the messages of a random start).
        max_sites: static: a mode with more coordinates than this learns on every
            :math:`s`-th of them (the exact evidence of a strided subset of its sites, over the
            whole range): the Kalman evidence and its gradient are a sequential scan, so an
            irregular mode with :math:`10^4` coordinates would otherwise cost seconds per
            epoch.
    """

    lr: Array
    prior_loc: tuple[Array, ...]
    prior_scale: Array
    mask: tuple[Array, ...]
    steps: int = 5
    start: int = 3
    max_sites: int = 1024


def _learn_kernel(kernel, ticks, lam, eta, theta, opt_state, learning: KernelLearning, loc, mask):
    tx = optax.adam(learning.lr)

    def loss(th):
        log_z = gaussian_sites_log_evidence(kernel_with(kernel, th), ticks, lam, eta)
        return -log_z + 0.5 * jnp.sum(((th - loc) / learning.prior_scale) ** 2)

    def body(carry, _):
        th, st = carry
        g = jax.grad(loss)(th) * mask
        upd, st = tx.update(g, st, th)
        return (optax.apply_updates(th, upd), st), None

    (theta, opt_state), _ = jax.lax.scan(body, (theta, opt_state), None, length=learning.steps)
    return theta, opt_state


def _learning_sites(problem, ep, k: int, max_sites: int):
    """Mode ``k``'s coordinates and site messages for its kernel's evidence: all of them, or
    for a mode with more than ``max_sites`` coordinates every :math:`s`-th
    (:math:`s = \\lceil M_k / \\text{max\\_sites}\\rceil`): the exact evidence of a strided
    subset of the sites, spanning the mode's whole range."""
    t, lam, eta = problem.ticks[k], ep.lam[k], ep.eta[k]
    m = t.shape[0]
    if m > max_sites:
        s = -(-m // max_sites)
        t, lam, eta = t[::s], lam[::s], eta[::s]
    return t, lam, eta


def _vmap_groups(kernels, lengths, ranks=None) -> list[list[int]]:
    """Modes learned together under one ``vmap``: the same kernel pytree structure and rank,
    and lengths within a factor 4 (shorter ones are padded to the longest of their group)."""
    groups: list[list[int]] = []
    by_tree: dict[Any, list[int]] = {}
    for k, kern in enumerate(kernels):
        rank = None if ranks is None else ranks[k]
        by_tree.setdefault((jax.tree_util.tree_structure(kern), rank), []).append(k)
    for members in by_tree.values():
        members = sorted(members, key=lambda k: lengths[k])
        current = [members[0]]
        for k in members[1:]:
            if lengths[k] <= 4 * lengths[current[0]]:
                current.append(k)
            else:
                groups.append(current)
                current = [k]
        groups.append(current)
    return groups


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def _learn_kernels(problem, ep, learning, theta, opt):
    """:func:`_learn_kernel` for every mode, on :func:`_learning_sites`. Modes of one
    :func:`_vmap_groups` group are learned together under ``vmap`` (one compiled copy instead
    of one per mode): their sites are padded to the group's longest with zero-precision sites
    after the last coordinate, which add exactly nothing to the evidence."""
    K = len(theta)
    sites = [_learning_sites(problem, ep, k, learning.max_sites) for k in range(K)]
    th, op = list(theta), list(opt)
    for members in _vmap_groups(problem.kernels, [x[0].shape[0] for x in sites],
                                [x[1].shape[1] for x in sites]):  # fmt: skip
        if len(members) == 1:
            k = members[0]
            th[k], op[k] = _learn_kernel(
                problem.kernels[k], *sites[k], th[k], op[k], learning, learning.prior_loc[k],
                learning.mask[k],
            )  # fmt: skip
            continue
        m = max(sites[k][0].shape[0] for k in members)

        def pad(k, m=m):
            t, lam, eta = sites[k]
            extra = m - t.shape[0]
            t = jnp.concatenate([t, t[-1] + jnp.arange(1, extra + 1, dtype=t.dtype)])
            lam = jnp.concatenate([lam, jnp.zeros((extra, *lam.shape[1:]), lam.dtype)])
            eta = jnp.concatenate([eta, jnp.zeros((extra, *eta.shape[1:]), eta.dtype)])
            return t, lam, eta

        ticks, lam, eta = (jnp.stack(a) for a in zip(*(pad(k) for k in members), strict=True))
        new_th, new_op = jax.vmap(
            lambda kern, t, la, et, th, op, loc, mask: _learn_kernel(
                kern, t, la, et, th, op, learning, loc, mask
            )
        )(_stack([problem.kernels[k] for k in members]), ticks, lam, eta,
          jnp.stack([th[k] for k in members]), _stack([op[k] for k in members]),
          jnp.stack([learning.prior_loc[k] for k in members]),
          jnp.stack([learning.mask[k] for k in members]))  # fmt: skip
        for i, k in enumerate(members):
            th[k] = new_th[i]
            op[k] = jax.tree_util.tree_map(lambda a, i=i: a[i], new_op)
    return tuple(th), tuple(op)


class FunBaTFit(NamedTuple):
    r"""State of :func:`funbat_step`: the message passing and the kernels' hyperparameters.

    Attributes:
        ep: the message-passing state (:class:`FunBaTState`).
        log_theta: per mode the log hyperparameters of its kernel ``(P_k,)``
            (:func:`kernel_leaves`); fixed when the problem does not learn them.
        opt: per mode the Adam state of ``log_theta``.
        epoch: epochs run.
        mse: the training mean squared errors of the last ``window`` epochs (``inf`` before).
    """

    ep: FunBaTState
    log_theta: tuple[Array, ...]
    opt: tuple[Any, ...]
    epoch: Array
    mse: Array


def fitted_kernels(problem: FunBaTProblem, state: FunBaTFit) -> tuple[Any, ...]:
    """Per mode the kernel at the state's hyperparameters."""
    return tuple(kernel_with(k, t) for k, t in zip(problem.kernels, state.log_theta, strict=True))


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "idx", "y", "ticks", "kernels", "counts", "damping", "a0", "b0", "y_scale", "learning",
        "weight", "groups",
    ],
    meta_fields=["rank", "cp", "parallel", "window", "warmup"],
)
@dataclasses.dataclass(frozen=True)
class FunBaTProblem:
    r"""The message passing's data: entries on the unique sorted coordinates of each mode.

    Attributes:
        idx: ``(N, K)`` indices of each entry's coordinate per mode; ``y``: ``(N,)`` values
            (standardized by the estimator).
        ticks: per mode the unique sorted (scaled) coordinates ``(M_k,)``.
        kernels: per mode the kernel of the latent functions (exact SDE).
        counts: per mode the number of (weight-1) entries at each coordinate ``(M_k,)``.
        damping: :math:`(\rho_U, \rho_W, \rho_\tau)`; ``a0``, ``b0``: the Gamma prior of
            :math:`\tau`; ``y_scale``: the standardization scale (for the error in data units).
        learning: the kernel learning (:class:`KernelLearning`), or ``None`` to keep
            ``kernels`` fixed.
        rank, cp, parallel: static: :math:`R` (an int, or per mode :math:`(R_1, \dots, R_K)`
            for Tucker), FunBaT-CP, associative-scan smoothers.
        window: static: epochs over which ``rmse_change`` (the stopping statistic) is taken.
        warmup: static: epochs at the start during which :math:`q(\tau)` is held at a noise of
            a tenth of the values' variance (:func:`funbat_step`); 0: none.
        weight: ``(N,)`` 0/1 entry weights (:func:`funbat_epoch`): the estimator holds a
            validation split out with weight 0, so that the fit on all entries afterwards has
            the same shapes and reuses the compiled step. ``None``: all 1.
        groups: per mode, :func:`entry_groups` of ``idx`` with that mode first (Tucker's
            precisions by nested prefix sums), or ``None`` for the per-entry sums.
    """

    idx: Array
    y: Array
    ticks: tuple[Array, ...]
    kernels: tuple[Any, ...]
    counts: tuple[Array, ...]
    damping: Array
    a0: Array
    b0: Array
    y_scale: Array
    learning: KernelLearning | None
    rank: int | tuple[int, ...]
    cp: bool
    parallel: bool
    window: int = 5
    weight: Array | None = None
    warmup: int = 0
    groups: tuple[EntryGroups, ...] | None = None


def funbat_init(key: Array, problem: FunBaTProblem, restart=0) -> FunBaTFit:
    r"""Initial state: :math:`\mu \sim U(0, 1)`, :math:`S = I`, messages :math:`10^{-3} I`
    per entry (summed per coordinate), core mean :math:`U(0, 1)` (CP: the superdiagonal),
    :math:`E[\tau] = 1`, the problem's kernels. Every start (``restart``) draws its own from
    ``key``."""
    dtype = problem.y.dtype
    K = problem.idx.shape[1]
    ranks = core_shape(problem.rank, K)
    keys = jax.random.split(key, K + 1)
    mu, cov, lam, eta = [], [], [], []
    for k, rank in enumerate(ranks):
        eye = jnp.eye(rank, dtype=dtype)
        m_k = problem.ticks[k].shape[0]
        counts = problem.counts[k].astype(dtype)
        mu.append(jax.random.uniform(keys[k], (m_k, rank), dtype))
        cov.append(jnp.broadcast_to(eye, (m_k, rank, rank)))
        lam.append(1e-3 * counts[:, None, None] * eye)
        eta.append(jnp.zeros((m_k, rank), dtype))
    size = math.prod(ranks)
    if problem.cp:
        core_mean = _superdiagonal(ranks[0], K, dtype)
        core_cov = jnp.zeros((size, size), dtype)
    else:
        core_mean = jax.random.uniform(keys[K], (size,), dtype)
        core_cov = jnp.eye(size, dtype=dtype)
    ep = FunBaTState(
        tuple(mu), tuple(cov), tuple(lam), tuple(eta), core_mean, core_cov,
        jnp.zeros((size, size), dtype), jnp.zeros((size,), dtype),
        jnp.asarray(1.0, dtype), jnp.asarray(1.0, dtype),
    )  # fmt: skip
    theta = tuple(jnp.log(kernel_leaves(k)).astype(dtype) for k in problem.kernels)
    opt = tuple(optax.adam(1.0).init(t) for t in theta)  # the state does not hold the step
    mse = jnp.full((problem.window,), jnp.inf, dtype)
    return FunBaTFit(ep, theta, opt, jnp.asarray(0, jnp.int32), mse)


def _balance_scales(ep: FunBaTState, counts: Sequence[Array]) -> FunBaTState:
    r"""Tucker's scale moved into the core: :math:`W \times_k u^k` is unchanged by
    :math:`u^k_r \to u^k_r / c_{kr}`, :math:`W \to W \times_k \operatorname{diag}(c_k)`, and
    the message passing does not pin :math:`c` (it drifts with the start; latent functions
    three times the prior's sd beside a core near zero were seen). With
    :math:`c_{kr}^2` the mean of :math:`E[(u^k_r)^2]` over the mode's coordinates that hold
    data, every latent function gets unit mean square, as its unit-variance prior says, so far
    from the data (where :math:`u^k` returns to that prior) the predictive spread is the
    fitted signal's. Every message and moment is transformed exactly with it (sites
    :math:`\Lambda \to C\Lambda C`, :math:`\eta \to C\eta`; the core's messages by
    :math:`D^{-1}` with :math:`D = \otimes_k C_k`)."""
    mus, covs, lams, etas, cs = [], [], [], [], []
    for mu, cov, lam, eta, cnt in zip(ep.mu, ep.cov, ep.lam, ep.eta, counts, strict=True):
        w = (cnt > 0).astype(mu.dtype)[:, None]
        m2 = mu**2 + jnp.diagonal(cov, axis1=1, axis2=2)
        c = jnp.sqrt(jnp.sum(w * m2, axis=0) / jnp.maximum(jnp.sum(w), 1.0))
        c = jnp.clip(c, 1e-3, 1e3)
        cc = c[:, None] * c[None, :]
        mus.append(mu / c)
        covs.append(cov / cc)
        lams.append(lam * cc)
        etas.append(eta * c)
        cs.append(c)
    d = functools.reduce(jnp.kron, cs)
    dd = d[:, None] * d[None, :]
    return ep._replace(
        mu=tuple(mus), cov=tuple(covs), lam=tuple(lams), eta=tuple(etas),
        core_mean=ep.core_mean * d, core_cov=ep.core_cov * dd, core_lam=ep.core_lam / dd,
        core_eta=ep.core_eta / d,
    )  # fmt: skip


WARMUP_SNR = 10.0  # signal-to-noise variance ratio that q(tau) is held at while warming up


def _warm_noise(ep: FunBaTState, problem: FunBaTProblem) -> FunBaTState:
    r""":math:`q(\tau)` held at mean :math:`\text{WARMUP\_SNR} / \operatorname{var}(y)` (the
    noise a tenth of the values' variance), with the shape of a posterior over :math:`n`
    entries, during the first ``problem.warmup`` epochs."""
    y = problem.y
    w = jnp.ones_like(y) if problem.weight is None else problem.weight
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w * y) / n
    var = jnp.maximum(jnp.sum(w * (y - mean) ** 2) / n, jnp.finfo(y.dtype).tiny)
    tau_a = (problem.a0 + 0.5 * n).astype(ep.tau_b.dtype)
    return ep._replace(tau_a=tau_a, tau_b=(tau_a * var / WARMUP_SNR).astype(ep.tau_b.dtype))


def funbat_step(key: Array, state: FunBaTFit, problem: FunBaTProblem):
    r"""One step of :func:`bayeslr.infer.loop.run`: the kernels' hyperparameters
    (:class:`KernelLearning`, when the problem learns them) on the current messages, then one
    epoch (:func:`funbat_epoch`) with the new kernels. In the first ``problem.warmup`` epochs
    the noise is held at a tenth of the values' variance before the epoch (:func:`_warm_noise`):
    from a random start the first fit explains little, and a noise estimated from it makes
    every message weak, which on sparse data (ozone with 8 % of its cells observed) is a fixed
    point the message passing does not leave (training RMSE stuck at 83 % of the values' sd).

    ``info``: ``train_rmse`` (the training error of the posterior mean after the epoch, in data
    units), ``change`` (:math:`\max_k\|\mu^k_{new} - \mu^k\|/\|\mu^k\|`) and
    ``rmse_change``, the spread :math:`(\max - \min)/\min` of the training RMSE over the
    last ``window`` epochs (``inf`` until ``window`` epochs have run): the stopping statistic.
    """
    ep, theta, opt = state.ep, state.log_theta, state.opt
    learning = problem.learning
    if learning is not None:

        def learn(carry):
            return _learn_kernels(problem, ep, learning, *carry)

        theta, opt = jax.lax.cond(state.epoch >= learning.start, learn, lambda c: c, (theta, opt))
    kernels = tuple(kernel_with(k, t) for k, t in zip(problem.kernels, theta, strict=True))
    if problem.warmup:
        ep = jax.lax.cond(state.epoch < problem.warmup, _warm_noise, lambda e, _: e, ep, problem)
    d = problem.damping
    new, mse = funbat_epoch(
        ep, problem.idx, problem.y, problem.ticks, kernels, cp=problem.cp,
        damping=(d[0], d[1], d[2]), a0=problem.a0, b0=problem.b0, parallel=problem.parallel,
        weight=problem.weight, groups=problem.groups,
    )  # fmt: skip
    if not problem.cp:
        new = _balance_scales(new, problem.counts)
    window = jnp.concatenate([state.mse[1:], mse[None]])
    rmse = jnp.sqrt(window)
    lo = jnp.min(rmse)
    spread = jnp.where(
        jnp.all(jnp.isfinite(rmse)), (jnp.max(rmse) - lo) / jnp.maximum(lo, 1e-12), jnp.inf
    )
    info = {"train_rmse": jnp.sqrt(mse) * problem.y_scale,
            "change": _relative_change(ep.mu, new.mu), "rmse_change": spread}  # fmt: skip
    return FunBaTFit(new, theta, opt, state.epoch + 1, window), info


# --------------------------------------------------------------------------------------------
# prediction


def _relative_change(old: Sequence[Array], new: Sequence[Array]) -> Array:
    r""":math:`\max_k \|\mu^k_{new} - \mu^k_{old}\| / \|\mu^k_{old}\|` over modes."""
    rel = [
        jnp.linalg.norm(b - a) / (jnp.linalg.norm(a) + jnp.finfo(a.dtype).tiny)
        for a, b in zip(old, new, strict=True)
    ]
    return jnp.max(jnp.stack(rel))


_smooth_sites_jit = jax.jit(smooth_gaussian_sites, static_argnames=("parallel",))


@functools.partial(jax.jit, static_argnames=("folds", "parallel"))
def held_out_means(kernel, log_factors, stretched, ticks, lam, eta, fold, folds, parallel=False):
    r"""Cross-validated posterior means of one mode's latent functions at its coordinates.

    The coordinates are split into ``folds`` folds (``fold[j]`` in ``0 .. folds-1``, or
    ``-1`` for a coordinate never held out); the coordinates of fold :math:`q` get the mean of
    the smoother run on the site messages of all the others (the held-out sites set to zero
    precision), i.e. what the mode's state-space posterior predicts at a coordinate without
    data. This is done for every stretch of the kernel in ``log_factors``: the hyperparameters
    flagged in ``stretched`` (the lengthscales) multiplied by :math:`e^{f}`.

    Args:
        kernel: the mode's kernel (exact SDE).
        log_factors: ``(F,)`` log stretch factors (0: the kernel as it is).
        stretched: ``(P,)`` 0/1 over :func:`kernel_leaves`, the leaves multiplied.
        ticks, lam, eta: the mode's coordinates ``(M,)`` and site messages ``(M, R, R)``,
            ``(M, R)``.
        fold: ``(M,)`` int fold of each coordinate.
        folds: static: the number of folds.
        parallel: associative-scan smoothers.

    Returns:
        ``(F, M, R)``: per factor, each held-out coordinate's mean from the other folds (a
        coordinate of fold ``-1`` gets fold 0's smoother, which saw its site).
    """
    theta = jnp.log(kernel_leaves(kernel))
    rows = jnp.arange(ticks.shape[0])
    pick = jnp.clip(fold, 0, folds - 1)

    def per_factor(log_f):
        kern = kernel_with(kernel, theta + log_f * stretched)

        def per_fold(q):
            keep = (fold != q).astype(lam.dtype)
            mean, _ = smooth_gaussian_sites(
                kern, ticks, lam * keep[:, None, None], eta * keep[:, None], parallel=parallel
            )
            return mean

        means = jax.vmap(per_fold)(jnp.arange(folds))  # (folds, M, R)
        return means[pick, rows]

    return jax.lax.map(per_factor, log_factors)


def bucket(n: int, smallest: int = 64) -> int:
    """The padded size of ``n`` query points: the next power of two, at least ``smallest``
    (a new number of points then reuses a compiled prediction unless it crosses a bucket)."""
    return max(smallest, 1 << max(0, int(n) - 1).bit_length())


def _mode_posterior_at(kernel, ticks, lam, eta, new, parallel=False):
    """Posterior of the mode's :math:`R` functions at coordinates ``new`` (any order, any
    place): merge ``new`` into the training grid as zero-precision sites and smooth. The grid
    is padded to a :func:`bucket` size with zero-precision sites after its end (they change
    nothing before them), so the smoother compiles once per bucket, not per query size."""
    ticks = np.asarray(ticks)
    grid = np.union1d(ticks, new)
    at_train = np.searchsorted(grid, ticks)
    at_new = np.searchsorted(grid, new)
    size = bucket(grid.shape[0])
    step = max(float(grid[-1] - grid[0]), 1.0)
    grid = np.concatenate([grid, grid[-1] + step * np.arange(1, size - grid.shape[0] + 1)])
    R = lam.shape[1]
    lam_g = jnp.zeros((size, R, R), lam.dtype).at[at_train].set(lam)
    eta_g = jnp.zeros((size, R), eta.dtype).at[at_train].set(eta)
    mean, cov = _smooth_sites_jit(
        kernel, jnp.asarray(grid, lam.dtype), lam_g, eta_g, parallel=parallel
    )
    return np.asarray(mean)[at_new], np.asarray(cov)[at_new]  # gathered on the host: no shape



def _mean_of_entries(mus, core_mean, cp):
    r"""Posterior mean of entries, :math:`\bar w^\top(\otimes_k\mu^k_n)` (CP: the sum over
    components of the products), from per-mode means at their coordinates ``(n, R_k)``."""
    K = len(mus)
    if cp:
        return jnp.sum(jnp.prod(jnp.stack(mus), axis=0), axis=1)
    w = core_mean.reshape(tuple(m.shape[1] for m in mus))
    return jnp.einsum(
        _AX[:K] + "," + ",".join(f"n{_AX[j]}" for j in range(K)) + "->n", w, *mus, precision=_HI
    )


_entry_mean_jit = jax.jit(_mean_of_entries, static_argnames=("cp",))


@functools.partial(jax.jit, static_argnames=("cp",))
def _predict_entries(mus, covs, core_mean, core_cov, e_tau, cp):
    """Predictive mean and variance of entries from per-mode moments at their coordinates."""
    K = len(mus)
    R = tuple(m.shape[1] for m in mus)
    m2s = [_second_moments(m, c) for m, c in zip(mus, covs, strict=True)]
    mean = _mean_of_entries(mus, core_mean, cp)
    if cp:
        second = jnp.sum(jnp.prod(jnp.stack(m2s), axis=0), axis=(1, 2))
    else:
        eww = (core_cov + jnp.outer(core_mean, core_mean)).reshape(R + R)
        second = jnp.einsum(
            _AX[:K] + _AX2[:K] + "," + ",".join(f"n{_AX[j]}{_AX2[j]}" for j in range(K)) + "->n",
            eww,
            *m2s,
            precision=_HI,
        )
    var = jnp.maximum(second - mean**2, 0.0) + 1.0 / e_tau
    return mean, var
