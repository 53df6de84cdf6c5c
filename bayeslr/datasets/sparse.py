r"""Seeded synthetic sparse-recovery problems with Kronecker-structured dictionaries.

Two generators, both returning plain NumPy arrays (float64 / complex128) so any solver can use
them, and both exactly reproducible from a seed:

* :func:`kronecker_sparse_problem`: the synthetic setup of He & Joseph (IEEE TSP 2024, §V):
  :math:`y = (A_1 \otimes \cdots \otimes A_I)x + n` with i.i.d. Gaussian dictionaries and a
  Kronecker-supported :math:`x = x_1 \otimes \cdots \otimes x_I`.
* :func:`irs_mimo_problem`: uplink channel estimation through an intelligent reflecting surface
  (IRS), the paper's application, where the cascaded channel is a Kronecker-sparse vector on a
  grid of angles with clustered (block-sparse) factors.

Ordering: vectors of length :math:`N = \prod N_i` are the row-major (C-order) flattening of the
grid :math:`(N_1, \ldots, N_I)`, which is the ordering of ``numpy.kron(A_1, ..., A_I)``.

Metrics for these problems live in :mod:`bayeslr.metrics` (``nmse``, ``support_recovery_rate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bayeslr._validation import check_int

__all__ = [
    "IRSMIMOProblem",
    "KroneckerSparseProblem",
    "angle_dictionary",
    "irs_mimo_problem",
    "kron_apply",
    "kronecker_sparse_problem",
]


# --------------------------------------------------------------------------------------------
# helpers


def _rng(key_or_seed) -> np.random.Generator:
    """A NumPy generator from an int seed, a ``numpy.random.Generator`` or a JAX PRNG key."""
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed
    if isinstance(key_or_seed, (bool, np.bool_)):
        raise TypeError(
            "`key_or_seed` must be an int seed, a numpy Generator or a JAX key; got a bool."
        )
    if isinstance(key_or_seed, (int, np.integer)):
        if key_or_seed < 0:
            raise ValueError(f"`key_or_seed` must be a non-negative int seed; got {key_or_seed}.")
        return np.random.default_rng(int(key_or_seed))
    try:  # a JAX key (typed or raw uint32); imported lazily so NumPy-only users need no JAX
        import jax

        data = np.asarray(
            jax.random.key_data(key_or_seed)
            if jax.dtypes.issubdtype(getattr(key_or_seed, "dtype", None), jax.dtypes.prng_key)
            else key_or_seed
        )
    except Exception as err:
        raise TypeError(
            "`key_or_seed` must be an int seed, a numpy Generator or a JAX PRNG key; got "
            f"{type(key_or_seed).__name__}."
        ) from err
    if data.dtype != np.uint32 or data.size < 2:
        raise TypeError(
            "`key_or_seed` must be an int seed, a numpy Generator or a JAX PRNG key; got an "
            f"array of dtype {data.dtype} and shape {data.shape}."
        )
    return np.random.default_rng([int(v) for v in data.ravel()])


def _normal(rng: np.random.Generator, shape, is_complex: bool) -> np.ndarray:
    """N(0, 1) or circular CN(0, 1) (real and imaginary parts of variance 1/2)."""
    if is_complex:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2.0)
    return rng.standard_normal(shape)


def _noise_var(signal: np.ndarray, snr_db: float) -> float:
    r""":math:`\sigma^2 = \|s\|^2 / (M \cdot 10^{\mathrm{SNR}/10})` (0 for an infinite SNR)."""
    if np.isposinf(snr_db):
        return 0.0
    return float(np.sum(np.abs(signal) ** 2) / (signal.size * 10.0 ** (snr_db / 10.0)))


def _check_snr(snr_db) -> float:
    if isinstance(snr_db, bool) or not isinstance(snr_db, (int, float, np.floating, np.integer)):
        raise TypeError(f"`snr_db` must be a real number (dB); got {type(snr_db).__name__}.")
    v = float(snr_db)
    if np.isnan(v) or np.isneginf(v):
        raise ValueError(f"`snr_db` must be finite or +inf (noiseless); got {v}.")
    return v


def _check_sizes(name: str, v, length: int | None = None) -> tuple[int, ...]:
    try:
        t = tuple(int(a) for a in v)
    except TypeError as err:
        raise TypeError(f"`{name}` must be a sequence of positive ints; got {v!r}.") from err
    if any(a < 1 for a in t) or any(int(a) != a for a in v):
        raise ValueError(f"`{name}` must hold positive ints; got {v!r}.")
    if length is not None and len(t) != length:
        raise ValueError(f"`{name}` must have {length} entries (one per factor); got {len(t)}.")
    return t


def kron_apply(factors: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    r""":math:`(A_1 \otimes \cdots \otimes A_I)\,x` by mode products, never forming the product.

    The NumPy twin of :func:`bayeslr.linalg.kron.kron_mv`: the generators build data in NumPy
    float64/complex128 (exact SNRs) without depending on JAX's global x64 flag.

    Args:
        factors: matrices :math:`A_i` of shape ``(M_i, N_i)``.
        x: vector of length :math:`\prod N_i` (C order) or an array of shape ``(N_1, ..., N_I)``.

    Returns:
        The product, flattened to length :math:`\prod M_i`. Cost :math:`O(\sum_i M_i \cdot
        \prod_{l \ge i} N_l \prod_{l < i} M_l)`.
    """
    ns = tuple(a.shape[1] for a in factors)
    t = np.asarray(x).reshape(ns)
    for i, a in enumerate(factors):
        t = np.moveaxis(np.tensordot(a, t, axes=((1,), (i,))), 0, i)
    return t.reshape(-1)


# --------------------------------------------------------------------------------------------
# synthetic Kronecker-sparse recovery


@dataclass(frozen=True)
class KroneckerSparseProblem:
    r"""A Kronecker-structured sparse recovery problem :math:`y = (\otimes_i A_i)x + n`.

    Attributes:
        factors: dictionaries :math:`A_i`, ``(M_i, N_i)`` each.
        x: the true vector, ``(N,)`` (C-order flattening of the ``(N_1, ..., N_I)`` grid).
        y: observations, ``(M,)``.
        sigma2: noise variance :math:`\sigma^2` (real part and imaginary part each carry
            :math:`\sigma^2/2` in the complex case); 0 when noiseless.
        support: boolean ``(N,)``, the true support :math:`S = \otimes_i S_i`.
        x_factors: the factor vectors :math:`x_i` with :math:`x = \otimes_i x_i`.
        factor_supports: boolean masks :math:`S_i` (``(N_i,)`` each).
        snr_db: the requested SNR.
    """

    factors: tuple[np.ndarray, ...]
    x: np.ndarray
    y: np.ndarray
    sigma2: float
    support: np.ndarray
    x_factors: tuple[np.ndarray, ...]
    factor_supports: tuple[np.ndarray, ...]
    snr_db: float

    @property
    def signal(self) -> np.ndarray:
        r"""The noiseless measurement :math:`Ax` (by mode products)."""
        return kron_apply(self.factors, self.x)


def kronecker_sparse_problem(
    key_or_seed,
    n: Sequence[int] = (15, 15, 15),
    m: Sequence[int] = (8, 12, 15),
    k: int | Sequence[int] = 3,
    snr_db: float = 25.0,
    complex: bool = False,
    normalize_columns: bool = False,
) -> KroneckerSparseProblem:
    r"""The paper's synthetic Kronecker-sparse problem (He & Joseph 2024, §V defaults).

    .. math::
        y = (A_1 \otimes \cdots \otimes A_I)\,x + n, \quad x = x_1 \otimes \cdots \otimes x_I,
        \quad \sigma^2 = \frac{\|Ax\|^2}{M \cdot 10^{\mathrm{SNR}/10}},

    with :math:`A_i` of i.i.d. :math:`\mathcal N(0,1)` entries (:math:`\mathcal{CN}(0,1)` when
    ``complex``), each :math:`x_i` having :math:`k_i` non-zeros at uniformly random positions with
    :math:`\mathcal N(0,1)` (:math:`\mathcal{CN}(0,1)`) values, so :math:`\|x\|_0 = \prod_i k_i`
    and the support is :math:`S = S_1 \otimes \cdots \otimes S_I`; and
    :math:`n \sim \mathcal N(0, \sigma^2 I)` (:math:`\mathcal{CN}`). The SNR is the realised
    one, :math:`\|Ax\|^2/(M\sigma^2)`, exactly as requested.

    Args:
        key_or_seed: int seed, ``numpy.random.Generator`` or JAX PRNG key. The same seed gives
            the same problem.
        n: factor widths :math:`N_i` (:math:`I \ge 1` factors; the paper: ``(15, 15, 15)``).
        m: factor heights :math:`M_i` (the paper: ``(8, 12, 15)``, :math:`M/N = 0.43`).
        k: non-zeros per factor, an int or one per factor, :math:`1 \le k_i \le N_i`.
        snr_db: SNR in dB; ``float("inf")`` gives noiseless data (``sigma2 = 0``).
        complex: complex dictionaries, values and noise.
        normalize_columns: scale each column of every :math:`A_i` to unit norm (the paper does
            not; off by default).

    Returns:
        :class:`KroneckerSparseProblem`. Memory :math:`O(M + N + \sum_i M_iN_i)`; the dense
        :math:`A` is never formed.

    Raises:
        ValueError: mismatched ``n``/``m``, ``k`` out of range, NaN or :math:`-\infty` SNR.
        TypeError: a bad seed or non-integer sizes.
    """
    n = _check_sizes("n", n)
    m = _check_sizes("m", m, len(n))
    ks = _check_sizes("k", (k,) * len(n) if np.ndim(k) == 0 else k, len(n))
    if any(ki > ni for ki, ni in zip(ks, n, strict=True)):
        raise ValueError(f"`k` must satisfy 1 <= k_i <= N_i; got k={ks} with n={n}.")
    snr_db = _check_snr(snr_db)
    rng = _rng(key_or_seed)
    is_complex = bool(complex)

    factors = []
    for mi, ni in zip(m, n, strict=True):
        a = _normal(rng, (mi, ni), is_complex)
        if normalize_columns:
            nrm = np.linalg.norm(a, axis=0)
            a = a / np.where(nrm > 0, nrm, 1.0)
        factors.append(a)
    x_factors, supports = [], []
    for ni, ki in zip(n, ks, strict=True):
        idx = rng.choice(ni, size=ki, replace=False)
        xi = np.zeros(ni, dtype=np.complex128 if is_complex else np.float64)
        xi[idx] = _normal(rng, ki, is_complex)
        xi[idx] = np.where(xi[idx] == 0, 1.0, xi[idx])  # a drawn exact zero would shrink S
        x_factors.append(xi)
        supports.append(xi != 0)
    x = x_factors[0]
    s = supports[0]
    for xi, si in zip(x_factors[1:], supports[1:], strict=True):
        x = np.kron(x, xi)
        s = np.kron(s, si).astype(bool)
    ax = kron_apply(factors, x)
    sigma2 = _noise_var(ax, snr_db)
    y = ax + np.sqrt(sigma2) * _normal(rng, ax.shape, is_complex)
    return KroneckerSparseProblem(
        factors=tuple(factors),
        x=x,
        y=y,
        sigma2=sigma2,
        support=s,
        x_factors=tuple(x_factors),
        factor_supports=tuple(supports),
        snr_db=snr_db,
    )


# --------------------------------------------------------------------------------------------
# IRS-MIMO uplink channel estimation


def angle_dictionary(n_antennas: int, grid: int) -> np.ndarray:
    r"""Steering-vector dictionary of a uniform linear array on a spatial-frequency grid.

    Column :math:`g = 1..G`: :math:`\frac{1}{\sqrt n}\exp\!\big(j\pi(\tfrac{2(g-1)}{G} - 1)
    \,[0, 1, \ldots, n-1]^T\big)`, i.e. spatial frequencies :math:`u_g = 2(g-1)/G - 1 \in
    [-1, 1)` (half-wavelength spacing, :math:`u = \sin\vartheta`).

    Returns:
        ``(n_antennas, grid)`` complex128 array with unit-norm columns.
    """
    u = 2.0 * np.arange(grid) / grid - 1.0
    return np.exp(1j * np.pi * np.outer(np.arange(n_antennas), u)) / np.sqrt(n_antennas)


@dataclass(frozen=True)
class IRSMIMOProblem:
    r"""IRS-aided MIMO uplink channel estimation as a 3-factor Kronecker-sparse problem.

    The received pilots are the grid ``(P, T, N_BS)`` (IRS pattern, pilot slot, BS antenna),
    flattened in C order to :math:`y` of length :math:`M = P\,T\,N_{BS}`, with
    :math:`y = (A_1 \otimes A_2 \otimes A_3)x + n` (see :func:`irs_mimo_problem`).

    Attributes:
        factors: ``(A_1, A_2, A_3)``: ``(P, G)`` IRS, ``(T, G)`` MS (pilots), ``(N_BS, G)`` BS.
        x: the true sparse vector, ``(G**3,)`` complex, :math:`x = x_1 \otimes x_2 \otimes x_3`.
        y: observations ``(M,)`` complex.
        sigma2: noise variance of :math:`\mathcal{CN}(0, \sigma^2 I)`.
        support: boolean ``(G**3,)`` true support.
        x_factors: :math:`(x_1, x_2, x_3)`; :math:`x_1` and :math:`x_3` have 3-point clusters.
        factor_supports: boolean masks of the :math:`x_i`.
        channel_factors: ``(A_1, \bar D_{MS}, D_{BS})``: the cascaded channels are
            ``kron_apply(channel_factors, x)`` reshaped to ``(P, N_MS, N_BS)``.
        channel: the true cascaded channels :math:`H_2\operatorname{diag}(\theta_p)H_1`,
            ``(P, N_BS, N_MS)``, computed from :math:`H_1, H_2` directly.
        h1: MS-to-IRS channel :math:`H_1`, ``(N_IRS, N_MS)``.
        h2: IRS-to-BS channel :math:`H_2`, ``(N_BS, N_IRS)``.
        pilots: :math:`X`, ``(N_MS, T)`` QPSK.
        patterns: :math:`\Theta`, ``(N_IRS, P)``, entries :math:`\pm 1/\sqrt{N_{IRS}}`.
        snr_db: the requested SNR.
    """

    factors: tuple[np.ndarray, np.ndarray, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    sigma2: float
    support: np.ndarray
    x_factors: tuple[np.ndarray, np.ndarray, np.ndarray]
    factor_supports: tuple[np.ndarray, np.ndarray, np.ndarray]
    channel_factors: tuple[np.ndarray, np.ndarray, np.ndarray]
    channel: np.ndarray
    h1: np.ndarray
    h2: np.ndarray
    pilots: np.ndarray
    patterns: np.ndarray
    snr_db: float

    def cascaded_channel(self, x_hat) -> np.ndarray:
        r"""Cascaded channels :math:`\hat H_p` implied by an estimate :math:`\hat x`.

        :math:`\hat H_p[r, k] = \sum_{g} A_1[p, g_1]\,\bar D_{MS}[k, g_2]\,D_{BS}[r, g_3]\,
        \hat x[g]`, returned as ``(P, N_BS, N_MS)``.
        """
        x_hat = np.asarray(x_hat)
        if x_hat.shape != self.x.shape:
            raise ValueError(f"`x_hat` must have shape {self.x.shape}; got {x_hat.shape}.")
        shape = tuple(a.shape[0] for a in self.channel_factors)
        return kron_apply(self.channel_factors, x_hat).reshape(shape).transpose(0, 2, 1)

    def channel_nmse(self, x_hat) -> float:
        r"""NMSE of the cascaded channel, averaged over the :math:`P` IRS patterns.

        :math:`\frac1P\sum_p \|\hat H_p - H_p\|_F^2/\|H_p\|_F^2` (the paper's IRS metric).
        """
        h_hat = self.cascaded_channel(x_hat)
        err = np.sum(np.abs(h_hat - self.channel) ** 2, axis=(1, 2))
        return float(np.mean(err / np.sum(np.abs(self.channel) ** 2, axis=(1, 2))))


def _cluster(rng, grid: int, width: int) -> np.ndarray:
    start = int(rng.integers(0, grid - width + 1))
    return np.arange(start, start + width)


def irs_mimo_problem(
    seed,
    snr_db: float = 20.0,
    *,
    n_ms: int = 6,
    n_bs: int = 16,
    n_irs: int = 256,
    grid: int = 18,
    n_pilots: int = 3,
    n_patterns: int = 6,
    cluster: int = 3,
) -> IRSMIMOProblem:
    r"""IRS-aided uplink MIMO channel estimation (He & Joseph 2024, §VI; the notes' sizes).

    Geometry (half-wavelength ULAs, dictionaries of :func:`angle_dictionary` on :math:`G`
    spatial frequencies :math:`u_g = 2(g-1)/G - 1`): an MS with :math:`N_{MS}` antennas, an IRS
    of :math:`N_{IRS}` elements (modelled as a ULA, as the reference dictionaries are), a BS with
    :math:`N_{BS}` antennas. On-grid channels with :math:`\mathcal{CN}(0,1)` gains,

    .. math::
        H_1 = \sum_{a=1}^{3} \alpha_a\, d_{IRS}(\phi_a)\, d_{MS}(\psi)^H, \qquad
        H_2 = \sum_{b=1}^{3} \beta_b\, d_{BS}(\omega_b)\, d_{IRS}(\xi)^H,

    one MS angle of departure :math:`\psi`, one IRS angle of departure :math:`\xi`, and
    3-point clusters of adjacent grid angles for the IRS angle of arrival :math:`\phi_a` and the
    BS angle of arrival :math:`\omega_b`. With IRS patterns :math:`\theta_p \in \{\pm
    1/\sqrt{N_{IRS}}\}^{N_{IRS}}` (:math:`p = 1..P`) and QPSK pilots :math:`X \in
    \mathbb C^{N_{MS}\times T}` (entries :math:`(\pm1 \pm j)/\sqrt{2 N_{MS}}`), the BS receives
    :math:`Y_p = H_2\operatorname{diag}(\theta_p)H_1X + N_p`. Because
    :math:`\bar d_{IRS}(\xi) \circ d_{IRS}(\phi) = c_{(\phi - \xi) \bmod G}` with
    :math:`c_g = \bar d_{IRS}(u_1) \circ d_{IRS}(u_g)` (spatial frequencies are 2-periodic and
    :math:`G` is even), the received grid ``(P, T, N_BS)`` is

    .. math::
        y = (A_1 \otimes A_2 \otimes A_3)\,x + n, \quad A_1 = \Theta^T C,\ A_2 = X^T \bar
        D_{MS},\ A_3 = D_{BS}, \quad x = x_1 \otimes x_2 \otimes x_3,

    with :math:`x_1[(\phi_a - \xi) \bmod G] = \alpha_a` (a 3-point cluster), :math:`x_2 =
    e_\psi` and :math:`x_3[\omega_b] = \beta_b` (a 3-point cluster): factors 1 and 3 are
    block-sparse. The IRS-AoA cluster is placed so that its cascaded indices do not wrap around
    the grid, so both clusters are contiguous runs of ``cluster`` indices. Noise
    :math:`\mathcal{CN}(0, \sigma^2)` with
    :math:`\sigma^2 = \|Ax\|^2/(M\cdot 10^{\mathrm{SNR}/10})`.

    Defaults give :math:`N = 18^3 = 5832`, :math:`M = 6\cdot3\cdot16 = 288`. The metric is the
    NMSE of the cascaded channels :math:`H_2\operatorname{diag}(\theta_p)H_1`
    (:meth:`IRSMIMOProblem.channel_nmse`); since every path is on the grid, they are exactly
    linear in :math:`x` (``channel_factors``).

    Args:
        seed: int seed, ``numpy.random.Generator`` or JAX PRNG key.
        snr_db: SNR in dB (``inf``: noiseless).
        n_ms, n_bs, n_irs: antennas at the MS, BS and IRS elements.
        grid: angle grid size :math:`G` (even, ``>= cluster``).
        n_pilots: pilot slots :math:`T`.
        n_patterns: IRS patterns :math:`P`.
        cluster: width of the IRS-AoA and BS-AoA clusters.

    Returns:
        :class:`IRSMIMOProblem`.

    Raises:
        ValueError: odd ``grid``, ``cluster > grid``, non-positive sizes.
    """
    sizes = dict(
        n_ms=n_ms, n_bs=n_bs, n_irs=n_irs, grid=grid, n_pilots=n_pilots, n_patterns=n_patterns,
        cluster=cluster,
    )  # fmt: skip
    for name, v in sizes.items():
        check_int(name, v, minimum=1)
    if grid % 2:
        raise ValueError(
            f"`grid` must be even (cascaded IRS angles then fall on the grid); got {grid}."
        )
    if cluster > grid:
        raise ValueError(f"`cluster` must be <= `grid`; got cluster={cluster}, grid={grid}.")
    snr_db = _check_snr(snr_db)
    rng = _rng(seed)

    d_ms = angle_dictionary(n_ms, grid)
    d_bs = angle_dictionary(n_bs, grid)
    d_irs = angle_dictionary(n_irs, grid)
    c_irs = np.conj(d_irs[:, :1]) * d_irs  # c_g = conj(d(u_1)) ∘ d(u_g), (n_irs, G)

    # angles (grid indices) and gains
    psi = int(rng.integers(grid))  # MS AoD
    xi = int(rng.integers(grid))  # IRS AoD
    casc = _cluster(rng, grid, cluster)  # cascaded IRS indices (phi - xi) mod G: no wrap
    phi = (casc + xi) % grid  # IRS AoA cluster (adjacent in 2-periodic spatial frequency)
    omega = _cluster(rng, grid, cluster)  # BS AoA cluster
    alpha = _normal(rng, cluster, True)
    beta = _normal(rng, cluster, True)

    h1 = np.outer(d_irs[:, phi] @ alpha, np.conj(d_ms[:, psi]))  # (n_irs, n_ms)
    h2 = np.outer(d_bs[:, omega] @ beta, np.conj(d_irs[:, xi]))  # (n_bs, n_irs)

    signs = rng.choice([-1.0, 1.0], (2, n_ms, n_pilots))
    qpsk = signs[0] + 1j * signs[1]
    pilots = qpsk / np.sqrt(2.0 * n_ms)
    patterns = rng.choice([-1.0, 1.0], (n_irs, n_patterns)) / np.sqrt(n_irs)

    # physical model: Y_p = H2 diag(theta_p) H1 X, stacked as (P, T, N_BS)
    channel = np.einsum("ri,ip,ik->prk", h2, patterns, h1)  # (P, N_BS, N_MS)
    signal = np.einsum("prk,kt->ptr", channel, pilots).reshape(-1)

    a1 = patterns.T @ c_irs
    a2 = pilots.T @ np.conj(d_ms)
    a3 = d_bs
    x1 = np.zeros(grid, np.complex128)
    x1[casc] = alpha
    x2 = np.zeros(grid, np.complex128)
    x2[psi] = 1.0
    x3 = np.zeros(grid, np.complex128)
    x3[omega] = beta
    x = np.kron(np.kron(x1, x2), x3)
    supports = (x1 != 0, x2 != 0, x3 != 0)
    support = np.kron(np.kron(supports[0], supports[1]), supports[2]).astype(bool)

    sigma2 = _noise_var(signal, snr_db)
    y = signal + np.sqrt(sigma2) * _normal(rng, signal.shape, True)
    return IRSMIMOProblem(
        factors=(a1, a2, a3),
        x=x,
        y=y,
        sigma2=sigma2,
        support=support,
        x_factors=(x1, x2, x3),
        factor_supports=supports,
        channel_factors=(a1, np.conj(d_ms), d_bs),
        channel=channel,
        h1=h1,
        h2=h2,
        pilots=pilots,
        patterns=patterns,
        snr_db=snr_db,
    )
