r"""KroSBL as a plain NumPyro model function (:func:`krosbl_model`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from bayeslr.linalg.kron import kron_mv, kron_outer
from bayeslr.models.krosbl.algo import _check_problem

__all__ = ["krosbl_model", "HYPERPRIORS"]

HYPERPRIORS = ("lognormal", "halfcauchy")
_HI = jax.lax.Precision.HIGHEST


def _sum_to_zero_basis(n: int) -> np.ndarray:
    r"""Orthonormal basis :math:`H` (``n x (n-1)``) of :math:`\{v : \sum_k v_k = 0\}`."""
    # the first n-1 columns of the centring matrix I - 11ᵀ/n are independent and sum to zero
    q, _ = np.linalg.qr((np.eye(n) - 1.0 / n)[:, : n - 1])
    return q


def _check_fixed(name, value, shape, frames):
    want = shape if frames is None else (frames, *shape)
    if np.shape(value) != want:
        raise ValueError(f"`{name}` must have shape {want}; got {np.shape(value)}.")
    a = np.asarray(value) if not isinstance(value, jax.core.Tracer) else None
    if a is not None and (not np.all(np.isfinite(a)) or np.any(a < 0)):
        raise ValueError(f"`{name}` must be finite and non-negative (prior variances).")


def krosbl_model(
    y: ArrayLike | None,
    factors: Sequence[ArrayLike],
    *,
    gammas: Sequence[ArrayLike] | None = None,
    gamma: ArrayLike | None = None,
    noise: float | ArrayLike | None = None,
    hyperprior: str = "lognormal",
    log_scale: float = 3.0,
) -> None:
    r"""The KroSBL model as a NumPyro model function.

    .. math::
        y \mid x, \sigma \sim \mathcal N\big((A_1\otimes\cdots\otimes A_I)x, \sigma^2 I\big),
        \quad x = \sqrt{\gamma}\circ z,\ z \sim \mathcal N(0, I_N), \quad
        \gamma = \gamma_1 \otimes \cdots \otimes \gamma_I,

    (circular complex normals :math:`\mathcal{CN}` for complex data). :math:`Ax` is computed by
    mode products (:func:`bayeslr.linalg.kron.kron_mv`); :math:`A` is never formed.

    **Empirical Bayes** (the posterior :class:`~bayeslr.models.KroneckerSBL` returns): with
    ``gammas`` (the factors :math:`\gamma_i`) or ``gamma`` (an unstructured :math:`\gamma`) and
    ``noise`` given, :math:`\gamma` and :math:`\sigma^2` are fixed arguments — the type-II
    maximum-likelihood values of the EM — and the only random variable is :math:`z` (so
    :math:`x`). Zeros in :math:`\gamma` (pruned atoms) give :math:`x_j = 0`.

    **Full Bayes** (``gammas=None``, ``gamma=None``; real data only), for NUTS or SVI through
    :func:`bayeslr.infer.fit` on small problems. The scale ambiguity
    :math:`(c\gamma_1) \otimes (\gamma_2/c)` is removed: for :math:`i < I`,
    :math:`\log\gamma_i = H_i u_i` with :math:`H_i` an orthonormal basis of :math:`\{v: \sum_k
    v_k = 0\}` and :math:`u_i \sim \mathcal N(0, s^2 I_{N_i-1})`; the last factor carries the
    scale, :math:`\log\gamma_I[k] \sim \mathcal N(\log g_0, s^2)` (``"lognormal"``) or
    :math:`\sqrt{\gamma_I[k]} \sim \text{HalfCauchy}(\sqrt{g_0})` (``"halfcauchy"``), with
    :math:`s` = ``log_scale`` and :math:`g_0 = M\,\overline{|y|^2} / \prod_i\|A_i\|_F^2` (the
    constant :math:`\gamma` that explains the energy of ``y``: a data-dependent centring).
    :math:`x = \sqrt\gamma \circ z` is non-centred (funnel-free for the many near-zero
    entries). ``noise=None`` samples :math:`\sigma \sim \text{HalfNormal}(\operatorname{sd}(y))`.

    Sites: ``z`` (``(N_1, ..., N_I)``), deterministic ``x`` (``(N,)``, row-major as
    ``jnp.kron``), observed ``y`` (``(M,)``, one term per measurement); full Bayes adds
    ``u_0 .. u_{I-2}``, ``gamma_last`` (or ``lam_last``), deterministic ``gamma_0 ..
    gamma_{I-1}`` and ``sigma``. A batch ``y`` of shape ``(F, M)`` (frames sharing the
    dictionaries) gives every site a leading ``F`` axis.

    Args:
        y: observations ``(M,)`` or ``(F, M)``; ``None`` to draw them (needs ``gammas`` or
            ``gamma``).
        factors: dictionaries :math:`A_i` (``M_i x N_i``), :math:`I \ge 2`.
        gammas: fixed prior variance factors, ``(N_i,)`` each (``(F, N_i)`` for frames).
        gamma: fixed unstructured prior variances ``(N,)`` (``(F, N)``), instead of ``gammas``.
        noise: the noise variance :math:`\sigma^2 > 0` (a scalar or one per frame), or ``None``
            to sample :math:`\sigma`.
        hyperprior: ``"lognormal"`` or ``"halfcauchy"`` (full Bayes).
        log_scale: :math:`s > 0` (full Bayes).

    Raises:
        ValueError: complex data without fixed ``gammas``/``gamma``, bad ``hyperprior`` or
            ``log_scale``, shapes inconsistent with the dictionaries.

    Cost: one log-density gradient is :math:`O(N\sum_i M_i)`; NUTS is practical for :math:`N`
    up to a few thousand.
    """
    import numpyro
    import numpyro.distributions as dist

    from bayeslr.distributions import CircularComplexNormal

    if hyperprior not in HYPERPRIORS:
        raise ValueError(f"`hyperprior` must be one of {HYPERPRIORS}; got {hyperprior!r}.")
    if not (isinstance(log_scale, (int, float)) and np.isfinite(log_scale) and log_scale > 0):
        raise ValueError(f"`log_scale` must be a finite positive float; got {log_scale!r}.")
    if gammas is not None and gamma is not None:
        raise ValueError("give `gammas` (Kronecker factors) or `gamma` (unstructured), not both.")
    fixed = gammas is not None or gamma is not None
    y, factors, frames, dtype = _resolve_data(y, factors, gammas, gamma, noise, fixed)
    complex_data = jnp.issubdtype(dtype, jnp.complexfloating)
    if complex_data and not fixed:
        raise ValueError(
            "krosbl_model samples gamma for real data only: complex `y` or `factors` need fixed "
            "`gammas`/`gamma` (as KroneckerSBL fits them by EM); got dtype "
            f"{jnp.result_type(dtype)}."
        )
    rdt = jnp.finfo(dtype).dtype
    ms = tuple(a.shape[0] for a in factors)
    ns = tuple(a.shape[1] for a in factors)
    n, m = int(np.prod(ns)), int(np.prod(ms))
    lead = () if frames is None else (frames,)
    if fixed:
        full = _fixed_gamma(gammas, gamma, ns, frames, rdt)
    else:
        full = _sampled_gamma(y, factors, ns, lead, rdt, hyperprior, log_scale)
    shape = lead + ns
    if complex_data:
        z = numpyro.sample("z", CircularComplexNormal(jnp.zeros(shape, dtype), 1.0).to_event(
            len(shape)))  # fmt: skip
    else:
        z = numpyro.sample("z", dist.Normal(jnp.zeros(shape, rdt), 1.0).to_event(len(shape)))
    xg = jnp.sqrt(full).astype(dtype) * z
    numpyro.deterministic("x", xg.reshape(lead + (n,)))
    var = _noise_variance(y, noise, lead, m, rdt)
    var = jnp.reshape(var, np.shape(var) + (1,)) if frames and np.ndim(var) else var
    mean = (jax.vmap(lambda v: kron_mv(factors, v))(xg) if frames else kron_mv(factors, xg))
    mean = mean.reshape(lead + (m,))
    with numpyro.plate("obs", m, dim=-1):
        if frames:
            with numpyro.plate("frame", frames, dim=-2):
                _observe(y, mean, var, complex_data)
        else:
            _observe(y, mean, var, complex_data)


def _resolve_data(y, factors, gammas, gamma, noise, fixed):
    """Checked ``(y, factors, frames, dtype)``; with ``y=None`` the shapes come from gamma."""
    if not isinstance(factors, Sequence) or isinstance(factors, str):
        raise TypeError(f"`factors` must be a sequence of 2-D dictionaries; got {factors!r}.")
    if y is not None:
        y, factors, batched = _check_problem(y, factors, 1.0 if noise is not None else None)
        return y, factors, (y.shape[0] if batched else None), y.dtype
    if not fixed:
        raise ValueError("`y=None` (drawing y) needs fixed `gammas` or `gamma`.")
    lead = np.shape(gammas[0])[:-1] if gammas is not None else np.shape(gamma)[:-1]
    frames = lead[0] if lead else None
    m = int(np.prod([np.shape(a)[0] for a in factors]))
    dtype = jnp.result_type(*factors, jnp.float32)
    probe = jnp.zeros((m,) if frames is None else (frames, m), dtype)
    _, factors, _ = _check_problem(probe, factors, 1.0)
    return None, factors, frames, dtype


def _fixed_gamma(gammas, gamma, ns, frames, rdt):
    """The full prior-variance tensor ``lead + ns`` from fixed ``gammas`` or ``gamma``."""
    if gammas is not None:
        if len(gammas) != len(ns):
            raise ValueError(f"`gammas` must hold {len(ns)} factors; got {len(gammas)}.")
        for i, (g, k) in enumerate(zip(gammas, ns, strict=True)):
            _check_fixed(f"gammas[{i}]", g, (k,), frames)
        gs = [jnp.asarray(g, rdt) for g in gammas]
        return jax.vmap(kron_outer)(gs) if frames else kron_outer(gs)
    n = int(np.prod(ns))
    _check_fixed("gamma", gamma, (n,), frames)
    lead = () if frames is None else (frames,)
    return jnp.asarray(gamma, rdt).reshape(lead + ns)


def _sampled_gamma(y, factors, ns, lead, rdt, hyperprior, log_scale):
    """Full Bayes: sample the identifiable factors of gamma (see :func:`krosbl_model`)."""
    import numpyro
    import numpyro.distributions as dist

    ev = len(lead)  # the frame axis is part of every latent site's event
    m = int(np.prod([a.shape[0] for a in factors]))
    yy = y.reshape(lead + (m,))
    afro = jnp.prod(jnp.stack([jnp.sum(a**2) for a in factors]))
    g0 = m * jnp.mean(yy**2, axis=-1) / afro  # (F,) or ()
    gs = []
    for i, k in enumerate(ns[:-1]):
        if k == 1:
            gs.append(jnp.ones(lead + (1,), rdt))
            continue
        basis = jnp.asarray(_sum_to_zero_basis(k), rdt)
        u = numpyro.sample(f"u_{i}", dist.Normal(jnp.zeros(lead + (k - 1,), rdt),
                                                 log_scale).to_event(1 + ev))  # fmt: skip
        gs.append(jnp.exp(jnp.einsum("kj,...j->...k", basis, u, precision=_HI)))
    loc = jnp.broadcast_to(jnp.asarray(g0)[..., None], lead + (ns[-1],))
    if hyperprior == "lognormal":
        g_last = numpyro.sample(
            "gamma_last", dist.LogNormal(jnp.log(loc), log_scale).to_event(1 + ev)
        )
    else:
        lam = numpyro.sample("lam_last", dist.HalfCauchy(jnp.sqrt(loc)).to_event(1 + ev))
        g_last = lam**2
    gs.append(g_last)
    for i, g in enumerate(gs):
        numpyro.deterministic(f"gamma_{i}", g)
    return jax.vmap(kron_outer)(gs) if lead else kron_outer(gs)


def _noise_variance(y, noise, lead, m, rdt):
    """The noise variance: the fixed ``noise`` (checked) or ``sigma**2`` with sigma sampled."""
    import numpyro
    import numpyro.distributions as dist

    if noise is None:
        yy = y.reshape(lead + (m,))
        scale = jnp.std(yy, axis=-1) + jnp.finfo(rdt).tiny
        sigma = numpyro.sample("sigma", dist.HalfNormal(scale).to_event(len(lead)))
        return sigma**2
    if not isinstance(noise, jax.core.Tracer) and not np.all(np.asarray(noise) > 0):
        raise ValueError(f"`noise` must be a positive variance (or None); got {noise!r}.")
    return jnp.asarray(noise, rdt)


def _observe(y, mean, var, complex_data):
    import numpyro
    import numpyro.distributions as dist

    from bayeslr.distributions import CircularComplexNormal

    if complex_data:
        numpyro.sample("y", CircularComplexNormal(mean, var), obs=y)
    else:
        numpyro.sample("y", dist.Normal(mean, jnp.sqrt(var)), obs=y)
