"""Tests for bayeslr.gp.kernels against autodiff, numerical Fourier transforms and dense twins."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads
from scipy.integrate import simpson

from bayeslr.gp import (
    RBF,
    SDE,
    Matern12,
    Matern32,
    Matern52,
    ProductKernel,
    SpectralMixture,
    StudentTMixture,
    SumKernel,
)

# Factories, so that hyperparameters are built inside the dtype context of each test.
KERNELS = {
    "matern12": lambda: Matern12(1.3, 0.7),
    "matern32": lambda: Matern32(0.8, 0.6),
    "matern52": lambda: Matern52(1.1, 0.9),
    "rbf": lambda: RBF(0.9, 0.5),
    "sm": lambda: SpectralMixture([0.7, 0.4], [0.3, 1.1], [0.25, 0.15]),
    "stm12": lambda: StudentTMixture([0.7, 0.4], [0.3, 1.1], [1.2, 0.8], nu=0.5),
    "stm32": lambda: StudentTMixture([0.7, 0.4], [0.3, 1.1], [1.2, 0.8], nu=1.5),
    "stm52": lambda: StudentTMixture([0.7, 0.4], [0.3, 1.1], [1.2, 0.8]),
    "sum": lambda: Matern32(0.8, 0.6) + Matern52(1.1, 0.9) + RBF(0.5, 1.5),
    "sum_sde": lambda: SumKernel(
        Matern12(0.3, 2.0), Matern32(0.8, 0.6), StudentTMixture([0.7], [0.3], [1.2])
    ),
}
MAX_ORDER = {
    "matern12": 4,
    "matern32": 2,
    "matern52": 4,
    "rbf": 4,
    "sm": 4,
    "stm12": 4,
    "stm32": 2,
    "stm52": 4,
    "sum": 2,
    "sum_sde": 2,
}
SMOOTH = {"rbf", "sm"}  # no |tau| anywhere: autodiff is valid at tau = 0 too
ROUGH = {"matern12", "stm12", "sum_sde"}  # kink at 0: odd derivatives jump, Grams not PSD
# exact SDEs and their state dimensions
STATE_DIM = {
    "matern12": 1,
    "matern32": 2,
    "matern52": 3,
    "stm12": 4,
    "stm32": 8,
    "stm52": 12,
    "sum_sde": 1 + 2 + 6,
}
WITH_SDE = list(STATE_DIM)
# max_tau |k_N(tau) - k(tau)| / variance of RBF.sde(order=N), as documented in RBF.sde
RBF_SDE_ERROR = {2: 1.407e-1, 4: 1.701e-2, 6: 2.994e-3, 8: 6.003e-4, 10: 1.284e-4, 12: 2.852e-5}


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    if request.param == "float64":
        with jax.enable_x64(True):
            yield jnp.float64
    else:
        with jax.enable_x64(False):
            yield jnp.float32


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _tol(dtype) -> float:
    return 2e-4 if dtype == jnp.float32 else 1e-9


def _assert_close(got, ref, dtype, rtol_scale: float = 1.0, err_msg: str = ""):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = max(float(np.max(np.abs(ref))), 1e-12)
    tol = _tol(dtype) * rtol_scale
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale, err_msg=err_msg)


def _nth_derivative(f, n, argnums=0):
    """n-th elementwise derivative by nested forward-mode autodiff (tangent of ones).

    Valid when output entry ``[a, b, ...]`` depends on the differentiated argument only through
    its own entry (true for ``k(tau)`` and for ``kernel(x1, x2)`` in either argument).
    """
    for _ in range(n):

        def f(*args, f=f):
            tangents = [jnp.zeros_like(a) for a in args]
            tangents[argnums] = jnp.ones_like(args[argnums])
            return jax.jvp(f, args, tuple(tangents))[1]

    return f


# ---------------------------------------------------------------------------------------------
# Closed-form derivatives
# ---------------------------------------------------------------------------------------------


def test_max_order_is_documented():
    for name, factory in KERNELS.items():
        assert factory().max_order == MAX_ORDER[name], name


@pytest.mark.parametrize("name", list(KERNELS))
def test_dk_matches_autodiff(name, dtype):
    kern = KERNELS[name]()
    taus = [-1.7, -0.45, 0.3, 0.85, 2.2] + ([0.0] if name in SMOOTH else [])
    tau = jnp.asarray(taus, dtype)
    orders = range(kern.max_order + 1)

    @jax.jit
    def reference(t):
        return [_nth_derivative(kern.k, n)(t) for n in orders]

    for n, ref in zip(orders, reference(tau), strict=True):
        got = kern.dk(tau, n)
        assert got.dtype == dtype and got.shape == tau.shape
        _assert_close(got, ref, dtype, err_msg=f"order {n}")


@pytest.mark.parametrize("name", list(KERNELS))
def test_dk_at_zero_is_the_limit(name, x64):
    """Closed forms are continuous at 0; for kinked kernels the value is the one-sided average."""
    kern = KERNELS[name]()
    h = 1e-7
    scale = 1.0 + max(abs(float(kern.dk(0.0, n))) for n in range(MAX_ORDER[name] + 1))
    for n in range(MAX_ORDER[name] + 1):
        at0 = float(kern.dk(0.0, n))
        plus, minus = float(kern.dk(h, n)), float(kern.dk(-h, n))
        assert abs(at0 - 0.5 * (plus + minus)) < 1e-5 * scale, (n, at0, plus, minus)
        if name in ROUGH and n % 2 == 1:
            assert at0 == 0.0 and abs(plus) > 0.1  # the documented jump: k^(n)(0+) = -k^(n)(0-)
        else:
            assert abs(plus - minus) < 1e-5 * scale, (n, plus, minus)


def test_known_values_at_zero(x64):
    v, ell = 1.1, 0.9
    m32, m52, rbf, m12 = Matern32(v, ell), Matern52(v, ell), RBF(v, ell), Matern12(v, ell)
    np.testing.assert_allclose(-m32.dk(0.0, 2), 3 * v / ell**2, rtol=1e-12)
    np.testing.assert_allclose(-m52.dk(0.0, 2), 5 * v / (3 * ell**2), rtol=1e-12)
    np.testing.assert_allclose(m52.dk(0.0, 4), 25 * v / ell**4, rtol=1e-12)
    np.testing.assert_allclose(-rbf.dk(0.0, 2), v / ell**2, rtol=1e-12)
    np.testing.assert_allclose(rbf.dk(0.0, 4), 3 * v / ell**4, rtol=1e-12)
    for n in range(5):
        want = 0.0 if n % 2 else v / ell**n
        np.testing.assert_allclose(m12.dk(0.0, n), want, rtol=1e-12)
    # GP-HM's check of the StM diagonal of K^{xx}: -sum_q w_q (5 a_q^2 / 3 + m_q^2).
    w, mu, a = np.array([0.7, 0.4]), np.array([0.3, 1.1]), np.array([1.2, 0.8])
    stm = StudentTMixture(w, mu, a)
    x = jnp.linspace(0.0, 1.0, 4)
    want = -np.sum(w * (5 * a**2 / 3 + (2 * np.pi * mu) ** 2))
    np.testing.assert_allclose(np.diag(stm.d_xx(x, x)), want, rtol=1e-12)


def test_stm_and_gm_match_gphm_formulas(x64):
    w, mu, a = np.array([0.7, 0.4]), np.array([0.3, 1.1]), np.array([1.2, 0.8])
    tau = np.linspace(-2.0, 2.0, 41)
    r = np.abs(tau)[:, None]
    gamma = (1 + np.sqrt(5) * a * r + 5 / 3 * a**2 * r**2) * np.exp(-np.sqrt(5) * a * r)
    want = np.sum(w * gamma * np.cos(2 * np.pi * mu * tau[:, None]), axis=1)
    np.testing.assert_allclose(StudentTMixture(w, mu, a, nu=2.5).k(tau), want, rtol=1e-12)

    rho_sq = np.array([0.5, 2.0])
    gm = SpectralMixture.from_rho_squared(w, mu, rho_sq)
    want = np.sum(
        w * np.exp(-rho_sq * tau[:, None] ** 2) * np.cos(2 * np.pi * mu * tau[:, None]), 1
    )
    np.testing.assert_allclose(gm.k(tau), want, rtol=1e-12)
    np.testing.assert_allclose(gm.rho_sq, rho_sq, rtol=1e-12)


@pytest.mark.parametrize("name", list(KERNELS))
def test_gram_derivatives_match_autodiff(name, x64):
    """Sign conventions and plumbing of the Gram derivatives (dk itself is tested per dtype)."""
    dtype = jnp.float64
    kern = KERNELS[name]()
    x1 = jnp.asarray([-0.9, -0.2, 0.35, 1.4], dtype)
    # Coincident points only where autodiff through the kernel is valid there.
    x2 = jnp.asarray([-0.5, 0.1, 0.8] + ([0.35] if name in SMOOTH else []), dtype)

    pairs = [(i, j) for i in range(3) for j in range(3) if i + j <= kern.max_order]

    @jax.jit
    def reference(a, b):
        out = []
        for i, j in pairs:
            f = _nth_derivative(_nth_derivative(kern.__call__, i, argnums=0), j, argnums=1)
            out.append(f(a, b))
        return out

    named = {
        (0, 0): "__call__",
        (1, 0): "d_x",
        (0, 1): "d_xp",
        (1, 1): "d_x_xp",
        (2, 0): "d_xx",
        (2, 2): "d_xx_xpxp",
    }

    @jax.jit
    def closed_form(k, a, b):
        generic = [k.derivative(a, b, i, j) for i, j in pairs]
        return generic, {ij: getattr(k, m)(a, b) for ij, m in named.items() if ij in pairs}

    generic, by_name = closed_form(kern, x1, x2)
    for (i, j), ref, got in zip(pairs, reference(x1, x2), generic, strict=True):
        assert got.shape == (4, x2.shape[0]) and got.dtype == dtype
        _assert_close(got, ref, dtype, err_msg=f"order ({i}, {j})")
        if (i, j) in by_name:
            _assert_close(by_name[(i, j)], ref, dtype, err_msg=named[(i, j)])


# ---------------------------------------------------------------------------------------------
# Spectral densities and state-space forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KERNELS))
def test_spectral_density_is_fourier_transform(name, x64):
    """S(w) = int k(t) e^{-iwt} dt = 2 int_0^inf k(t) cos(wt) dt (k is even)."""
    kern = KERNELS[name]()
    tau = np.linspace(0.0, 60.0, 120_001)
    k = np.asarray(kern.k(tau))
    omegas = np.array([0.0, 0.5, 1.7, 2 * np.pi * 0.3, 4.0, 2 * np.pi * 1.1, 9.0])
    ref = 2.0 * simpson(k[None, :] * np.cos(np.outer(omegas, tau)), x=tau, axis=1)
    got = np.asarray(kern.spectral_density(omegas))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8 * np.max(np.abs(ref)))
    # the inverse transform at 0: k(0) = (1/2pi) int S
    w = np.linspace(-400.0, 400.0, 400_001)
    if name not in ROUGH:  # 1/w^2 tails converge too slowly for this check
        k0 = simpson(np.asarray(kern.spectral_density(w)), x=w) / (2 * np.pi)
        np.testing.assert_allclose(k0, kern.k(0.0), rtol=1e-5)


def test_spectral_density_dtype(dtype):
    for factory in KERNELS.values():
        s = factory().spectral_density(jnp.linspace(0.0, 3.0, 5, dtype=dtype))
        assert s.dtype == dtype and bool(jnp.all(s > 0))


@pytest.mark.parametrize("name", WITH_SDE)
def test_sde_reproduces_kernel(name, dtype):
    kern = KERNELS[name]()
    sde = jax.jit(lambda k: k.sde())(kern)
    assert isinstance(sde, SDE) and all(a.dtype == dtype for a in sde)
    if dtype == jnp.float64:  # eager twin
        for a, b in zip(kern.sde(), sde, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    F, L, Qc, H, P = sde
    d = F.shape[0]
    assert d == STATE_DIM[name]
    assert L.shape == (d, Qc.shape[0]) and H.shape == (1, d) and P.shape == (d, d)
    # Pinf solves the Lyapunov equation F P + P F^T + L Qc L^T = 0 and is SPD
    # residual in NumPy at the array's precision (jnp matmuls would use TF32 on GPUs)
    F_, L_, Qc_, P_ = (np.asarray(a) for a in (F, L, Qc, P))
    noise = L_ @ Qc_ @ L_.T
    lyap = F_ @ P_ + P_ @ F_.T + noise
    assert float(np.max(np.abs(lyap))) < _tol(dtype) * float(np.max(np.abs(noise)))
    _assert_psd(P, dtype)
    # and the output covariance H expm(F tau) Pinf H^T is k(tau)
    # (reference matrix exponential in float64 SciPy: jax's expm costs ~1 s to compile per shape)
    taus = [0.0, 0.2, 0.7, 1.5, 3.0]
    F64, P64, H64 = (np.asarray(a, np.float64) for a in (F, P, H))
    cov = [(H64 @ scipy.linalg.expm(F64 * t) @ P64 @ H64.T)[0, 0] for t in taus]
    _assert_close(cov, kern.k(jnp.asarray(taus, dtype)), dtype, rtol_scale=10.0)


@pytest.mark.parametrize("name", ["rbf", "sm", "sum"])
def test_sde_unavailable(name):
    with pytest.raises(ValueError, match="state-space"):
        KERNELS[name]().sde()


# ---------------------------------------------------------------------------------------------
# Gram matrices: symmetry, PSD, dtype, jit, gradients
# ---------------------------------------------------------------------------------------------


def _assert_psd(mat, dtype):
    mat = np.asarray(mat, dtype=np.float64)
    n = mat.shape[0]
    eps = float(jnp.finfo(dtype).eps)
    scale = float(np.max(np.abs(mat)))
    np.testing.assert_allclose(mat, mat.T, rtol=0, atol=10 * eps * scale)
    lam_min = float(np.linalg.eigvalsh(0.5 * (mat + mat.T))[0])
    assert lam_min >= -10 * n * eps * scale, lam_min


@pytest.mark.parametrize("name", list(KERNELS))
def test_gram_symmetric_psd(name, dtype):
    kern = KERNELS[name]()
    x = jnp.asarray(np.sort(np.random.default_rng(0).uniform(-3, 3, 40)), dtype)
    K = kern(x, x)
    assert K.shape == (40, 40) and K.dtype == dtype
    _assert_psd(K, dtype)
    _assert_close(kern(x), K, dtype)
    _assert_close(kern.diag(x), jnp.diagonal(K), dtype)
    if name in ROUGH:
        return
    # joint covariance of (f, f') -- and of (f, f', f'') where k is C^4 -- is PSD
    orders = range(3 if kern.max_order >= 4 else 2)
    joint = jnp.block([[kern.derivative(x, x, i, j) for j in orders] for i in orders])
    _assert_psd(joint, dtype)


@pytest.mark.parametrize("name", list(KERNELS))
def test_jit_and_grad_through_kernel_pytree(name, dtype):
    kern = KERNELS[name]()
    x = jnp.linspace(-1.0, 1.0, 6, dtype=dtype)
    eager = kern(x, x)
    _assert_close(jax.jit(lambda k: k(x, x))(kern), eager, dtype)
    _assert_close(jax.jit(lambda k: k.d_x_xp(x, x))(kern), kern.d_x_xp(x, x), dtype)
    grads = jax.grad(lambda k: jnp.sum(k(x, x) ** 2))(kern)
    assert type(grads) is type(kern)
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # JAX rebuilds the pytree with sentinels and with values that would fail validation
    treedef = jax.tree_util.tree_structure(kern)
    treedef.unflatten([object()] * treedef.num_leaves)
    negated = jax.tree.map(lambda v: -v, kern)
    assert type(negated) is type(kern)


@pytest.mark.parametrize("name", list(KERNELS))
def test_check_grads_hyperparameters(name, x64):
    kern = KERNELS[name]()
    leaves, treedef = jax.tree_util.tree_flatten(kern)
    leaves = [jnp.asarray(v, jnp.float64) for v in leaves]
    x = jnp.linspace(-1.0, 1.0, 4)
    order = min(2, kern.max_order)

    def f(*params):
        k = treedef.unflatten(params)
        return jnp.concatenate([k(x, x), k.derivative(x, x, order, 0)])

    check_grads(jax.jit(f), tuple(leaves), order=1, modes=["rev"], eps=1e-6)


def test_kernel_built_inside_jit_and_grad():
    x = jnp.linspace(0.0, 1.0, 5)
    # negative values under jit are tracers: no validation, no error
    jax.jit(lambda ell: Matern52(1.0, ell)(x, x))(-1.0)
    g = jax.grad(lambda ell: jnp.sum(RBF(1.0, ell)(x, x)))(0.5)
    assert float(g) > 0
    g = jax.grad(lambda w: jnp.sum(StudentTMixture(w, jnp.ones(2), jnp.ones(2))(x)))(jnp.ones(2))
    assert g.shape == (2,)


def test_float32_default_and_weak_hyperparameters():
    x = jnp.linspace(0.0, 1.0, 3)
    assert Matern52(1.0, 1.0)(x, x).dtype == jnp.float32
    assert StudentTMixture([1.0], [0.5], [2.0]).d_xx(x, x).dtype == jnp.float32
    with jax.enable_x64(True):
        x64 = jnp.linspace(0.0, 1.0, 3, dtype=jnp.float64)
        assert Matern52(1.0, 1.0)(x64, x64).dtype == jnp.float64
        assert Matern52(1.0, 1.0)(x64.astype(jnp.float32), x64.astype(jnp.float32)).dtype == (
            jnp.float32
        )


# ---------------------------------------------------------------------------------------------
# Product kernels over grids
# ---------------------------------------------------------------------------------------------


def _grid_points(axes):
    mesh = np.meshgrid(*[np.asarray(a) for a in axes], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _kron(factors):
    out = np.ones((1, 1))
    for f in factors:
        out = np.kron(out, np.asarray(f, dtype=np.float64))
    return out


def test_product_kernel_factors_match_dense(dtype):
    pk = ProductKernel((Matern52(1.2, 0.7), RBF(0.8, 0.4), KERNELS["stm52"]()))
    assert pk.ndim == 3
    axes = tuple(jnp.linspace(0.0, 1.0, n, dtype=dtype) for n in (3, 4, 2))
    axes2 = tuple(jnp.linspace(-0.3, 1.2, n, dtype=dtype) for n in (2, 3, 5))
    X, X2 = (jnp.asarray(_grid_points(a), dtype) for a in (axes, axes2))

    @jax.jit
    def compute(pk, axes, axes2, X, X2):
        return (
            pk(X, X),
            pk(X, X2),
            pk.gram(axes),
            pk.gram(axes, jitter=1e-3),
            pk.cross(axes, axes2),
            pk.diag(axes),
        )

    dense, dense_cross, factors, jittered, cross, diags = compute(pk, axes, axes2, X, X2)
    assert dense.shape == (24, 24) and dense.dtype == dtype and dense_cross.shape == (24, 30)
    assert [f.shape for f in factors] == [(3, 3), (4, 4), (2, 2)]
    _assert_close(_kron(factors), dense, dtype)
    _assert_close(_kron(cross), dense_cross, dtype)
    _assert_close(_kron([d[:, None] for d in diags])[:, 0], np.diag(dense), dtype)
    for f, g in zip(factors, jittered, strict=True):
        assert g.dtype == dtype
        _assert_close(g - f, 1e-3 * np.eye(f.shape[0]), dtype, rtol_scale=10)
    _assert_psd(dense, dtype)
    # eager twin of one factor, to cover the un-jitted path
    _assert_close(pk.gram(axes)[0], factors[0], dtype)


def test_product_kernel_is_a_pytree():
    pk = ProductKernel([Matern32(1.0, 0.5), Matern12(2.0, 0.3)])
    axes = (jnp.linspace(0.0, 1.0, 3), jnp.linspace(0.0, 2.0, 4))
    eager = pk.gram(axes, jitter=1e-4)
    jitted = jax.jit(lambda k: k.gram(axes, jitter=1e-4))(pk)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda k: sum(jnp.sum(f) for f in k.gram(axes)))(pk)
    assert isinstance(g, ProductKernel) and len(jax.tree_util.tree_leaves(g)) == 4


def test_check_grads_product_kernel(x64):
    axes = (jnp.linspace(0.0, 1.0, 3), jnp.linspace(0.0, 2.0, 3))

    def f(ell1, ell2, w):
        pk = ProductKernel((Matern52(1.0, ell1), StudentTMixture(w, jnp.array([0.5]), ell2)))
        return _stack_factors(pk.gram(axes, jitter=1e-6))

    args = (jnp.asarray(0.6), jnp.asarray([1.3]), jnp.asarray([0.9]))
    check_grads(jax.jit(f), args, order=1, modes=["rev"], eps=1e-6)


def _stack_factors(factors):
    return jnp.concatenate([f.ravel() for f in factors])


# ---------------------------------------------------------------------------------------------
# Sums of kernels
# ---------------------------------------------------------------------------------------------


def _matern_sum():
    return Matern12(1.3, 0.7) + Matern32(0.8, 0.6) + Matern52(1.1, 0.9)


def test_sum_is_the_sum_of_its_components(dtype):
    parts = (Matern32(0.8, 0.6), RBF(0.5, 1.5), KERNELS["stm52"]())
    kern = parts[0] + parts[1] + parts[2]
    assert isinstance(kern, SumKernel) and kern.components == parts  # `+` flattens
    assert kern.max_order == 2
    x1 = jnp.asarray([-0.9, -0.2, 0.35, 1.4], dtype)
    x2 = jnp.asarray([-0.5, 0.1, 0.35], dtype)

    def views(k):
        grams = [k.derivative(x1, x2, i, j) for i in range(3) for j in range(3) if i + j <= 2]
        tau = x1[:, None] - x2[None, :]
        return grams, k.diag(x1), k.spectral_density(x1 * 4.0), k.dk(tau, 2)

    # one compilation for the sum and its parts (the named Gram methods are tested generically)
    got, *refs = jax.jit(lambda ks: [views(k) for k in ks])((kern, *parts))
    for leaf, *ref_leaves in zip(
        jax.tree.leaves(got), *(jax.tree.leaves(r) for r in refs), strict=True
    ):
        assert leaf.dtype == dtype
        _assert_close(leaf, sum(np.asarray(r, np.float64) for r in ref_leaves), dtype)
    # eager twin, and the sum as a ProductKernel factor
    _assert_close(kern(x1, x2), got[0][0], dtype)
    pk = ProductKernel((kern, Matern52(1.0, 0.5)))
    axes = (x1, x2)
    _assert_close(pk.gram(axes)[0], kern(x1, x1), dtype)


def test_sum_flattening_and_nesting():
    a, b, c, d = Matern12(1.0, 1.0), Matern32(1.0, 1.0), Matern52(1.0, 1.0), RBF(1.0, 1.0)
    assert (a + b).components == (a, b)
    assert ((a + b) + (c + d)).components == (a, b, c, d)
    assert (a + (b + c)).components == (a, b, c)
    nested = SumKernel(SumKernel(a, b), c)  # explicit nesting is kept, and still works
    assert len(nested.components) == 2 and nested.max_order == 2
    x = jnp.linspace(0.0, 1.0, 4)
    np.testing.assert_allclose(nested(x), (a + b + c)(x), rtol=1e-6)
    np.testing.assert_allclose(nested.rate, (a + b + c).rate, rtol=1e-6)
    assert nested.component_slices() == (slice(0, 3), slice(3, 6))


def test_sum_pytree_jit_vmap():
    kern = _matern_sum()
    leaves, treedef = jax.tree_util.tree_flatten(kern)
    assert len(leaves) == 6
    rebuilt = treedef.unflatten(leaves)
    assert isinstance(rebuilt, SumKernel) and [type(c) for c in rebuilt.components] == [
        Matern12,
        Matern32,
        Matern52,
    ]
    x = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_allclose(rebuilt(x), kern(x), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda k: k(x))(kern), kern(x), rtol=1e-5, atol=1e-6)
    # built inside vmap, with batched lengthscales
    ells = jnp.asarray([0.5, 1.0, 2.0])
    grams = jax.vmap(lambda ell: (Matern32(1.0, ell) + RBF(0.5, 2.0 * ell))(x))(ells)
    for g, ell in zip(grams, ells, strict=True):
        ref = Matern32(1.0, float(ell))(x) + RBF(0.5, 2.0 * float(ell))(x)
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    rates = jax.vmap(lambda ell: (Matern32(1.0, ell) + Matern12(1.0, ell)).rate)(ells)
    np.testing.assert_allclose(rates[:, 0], math.sqrt(3.0) / ells, rtol=1e-6)
    np.testing.assert_allclose(rates[:, 2], 1.0 / ells, rtol=1e-6)


def test_sum_gradient_is_sum_of_component_gradients(x64):
    parts = (Matern32(0.8, 0.6), Matern52(1.1, 0.9), KERNELS["stm52"]())
    kern = SumKernel(*parts)
    x = jnp.linspace(-1.0, 1.0, 5)

    def loss(k):
        return jnp.sum(jnp.sin(k(x, x))) + jnp.sum(k.d_x_xp(x, x) ** 2)

    g = jax.grad(loss)(kern)
    assert isinstance(g, SumKernel)

    # d/dtheta_j of F(sum_i K_i) = F'(K) : dK_j/dtheta_j: component j's gradient with the others
    # frozen, checked by central finite differences on each leaf
    leaves, treedef = jax.tree_util.tree_flatten(kern)
    leaves = [jnp.asarray(v, jnp.float64) for v in leaves]
    grads = jax.tree_util.tree_leaves(g)
    loss_of_leaves = jax.jit(lambda ls: loss(treedef.unflatten(ls)))
    for i, (v, gv) in enumerate(zip(leaves, grads, strict=True)):
        v = np.asarray(v, np.float64)
        for idx in np.ndindex(v.shape):
            h = 1e-6 * max(1.0, abs(float(v[idx])))
            up, dn = v.copy(), v.copy()
            up[idx] += h
            dn[idx] -= h
            f_up = loss_of_leaves(leaves[:i] + [jnp.asarray(up)] + leaves[i + 1 :])
            f_dn = loss_of_leaves(leaves[:i] + [jnp.asarray(dn)] + leaves[i + 1 :])
            fd = (float(f_up) - float(f_dn)) / (2 * h)
            np.testing.assert_allclose(np.asarray(gv)[idx], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "build,exc,match",
    [
        (lambda: SumKernel(Matern32(1.0, 1.0)), ValueError, r"at least 2.*got 1"),
        (lambda: SumKernel(), ValueError, r"`components`.*got 0"),
        (lambda: SumKernel(Matern32(1.0, 1.0), "rbf"), TypeError, r"`components\[1\]`.*str"),
        (
            lambda: SumKernel(ProductKernel((RBF(1.0, 1.0),)), Matern12(1.0, 1.0)),
            TypeError,
            r"`components\[0\]`.*ProductKernel",
        ),
        (lambda: Matern32(1.0, 1.0) + 1.0, TypeError, "unsupported operand"),
        (lambda: (Matern32(1.0, 1.0) + RBF(1.0, 1.0)).dk(0.1, 3), ValueError, "Matern32"),
    ],
)
def test_sum_bad_input(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_sum_sde_is_block_diagonal_and_reproduces_kernel(dtype):
    kern = _matern_sum()
    sde = jax.jit(lambda k: k.sde())(kern)
    assert all(a.dtype == dtype for a in sde)
    F, L, Qc, H, P = (np.asarray(a, np.float64) for a in sde)
    assert F.shape == (6, 6) and L.shape == (6, 3) and Qc.shape == (3, 3) and H.shape == (1, 6)
    slices = kern.component_slices()
    assert slices == (slice(0, 1), slice(1, 3), slice(3, 6))
    for j, (comp, sl) in enumerate(zip(kern.components, slices, strict=True)):
        ref = comp.sde()
        _assert_close(F[sl, sl], ref.F, dtype)
        _assert_close(P[sl, sl], ref.Pinf, dtype)
        _assert_close(H[:, sl], ref.H, dtype)
        _assert_close(L[sl, j : j + 1], ref.L, dtype)
        _assert_close(Qc[j, j], ref.Qc[0, 0], dtype)
        off = np.ones(6, bool)
        off[sl] = False
        assert not np.any(F[sl][:, off]) and not np.any(P[sl][:, off])
    noise = L @ Qc @ L.T
    lyap = F @ P + P @ F.T + noise
    assert float(np.max(np.abs(lyap))) < 10 * _tol(dtype) * float(np.max(np.abs(noise)))
    _assert_psd(P, dtype)
    taus = np.linspace(0.0, 4.0, 17)
    cov = [(H @ scipy.linalg.expm(F * t) @ P @ H.T)[0, 0] for t in taus]
    ref = np.asarray(kern.k(jnp.asarray(taus, dtype)), np.float64)
    atol = 1e-10 if dtype == jnp.float64 else 1e-5
    np.testing.assert_allclose(cov, ref, rtol=0, atol=atol)
    # H_j padded with zeros picks out component j
    for comp, sl in zip(kern.components, slices, strict=True):
        Hj = np.zeros_like(H)
        Hj[:, sl] = H[:, sl]
        cov_j = [(Hj @ scipy.linalg.expm(F * t) @ P @ Hj.T)[0, 0] for t in taus]
        np.testing.assert_allclose(cov_j, comp.k(taus), rtol=0, atol=atol)


def test_sum_rate_vector_makes_f_nilpotent(dtype):
    kern = _matern_sum()
    rate = kern.rate
    assert rate.shape == (6,) and rate.dtype == dtype
    comps = kern.components
    want = [comps[0].rate] + [comps[1].rate] * 2 + [comps[2].rate] * 3
    _assert_close(rate, want, dtype)
    F = np.asarray(kern.sde().F, np.float64)
    N = F + np.diag(np.asarray(rate, np.float64))
    # nilpotent block by block: the largest block has 3 states
    assert np.max(np.abs(np.linalg.matrix_power(N, 3))) < 100 * _tol(dtype) * np.max(np.abs(F)) ** 3
    assert np.max(np.abs(np.linalg.matrix_power(N, 2))) > 0.1  # and not trivially so
    np.testing.assert_allclose(jax.jit(lambda k: k.rate)(kern), rate, rtol=1e-6)


def test_sum_rate_absent_without_matern_rates():
    stm = StudentTMixture([0.7], [0.3], [1.2])
    kern = Matern32(1.0, 1.0) + stm
    assert getattr(kern, "rate", None) is None
    with pytest.raises(AttributeError, match=r"`components\[1\]` \(StudentTMixture\)"):
        _ = kern.rate
    assert getattr(Matern32(1.0, 1.0) + RBF(1.0, 1.0), "rate", None) is None
    # the SDE is exact all the same
    sde = kern.sde()
    assert sde.F.shape == (2 + 6, 2 + 6)
    assert kern.component_slices() == (slice(0, 2), slice(2, 8))


def test_sum_sde_with_rbf_and_errors(x64):
    kern = Matern12(1.0, 0.5) + RBF(0.7, 2.0)
    with pytest.raises(ValueError, match=r"`components\[1\]` \(RBF\).*order=N"):
        kern.sde()
    with pytest.raises(ValueError, match=r"`components\[0\]` \(SpectralMixture\)"):
        (KERNELS["sm"]() + Matern12(1.0, 1.0)).sde()
    with pytest.raises(ValueError, match="`order` applies only"):
        _matern_sum().sde(order=6)
    with pytest.raises(ValueError, match="order"):
        kern.sde(order=0)
    F, _, Qc, H, P = kern.sde(order=6)
    assert F.shape == (7, 7) and Qc.shape == (2, 2)
    assert kern.component_slices(6) == (slice(0, 1), slice(1, 7))
    taus = np.linspace(0.0, 6.0, 13)
    cov = [(H @ scipy.linalg.expm(np.asarray(F) * t) @ P @ H.T)[0, 0] for t in taus]
    assert np.max(np.abs(np.asarray(cov) - kern.k(taus))) < 1.01 * RBF_SDE_ERROR[6] * 0.7


# ---------------------------------------------------------------------------------------------
# Approximate state-space form of the RBF kernel
# ---------------------------------------------------------------------------------------------


def _rbf_sde_covariance(sde, dt, n):
    """H expm(F tau) Pinf H^T at tau = 0, dt, ..., (n - 1) dt (float64, one expm)."""
    F, P, H = (np.asarray(a, np.float64) for a in (sde.F, sde.Pinf, sde.H))
    step = scipy.linalg.expm(F * dt)
    col, out = P @ H[0], []
    for _ in range(n):
        out.append(H[0] @ col)
        col = step @ col
    return np.array(out)


@pytest.mark.parametrize("order", [2, 6, 10])
def test_rbf_sde_lyapunov_and_covariance(order, dtype):
    variance, ell = 1.3, 0.4
    kern = RBF(variance, ell)
    sde = jax.jit(lambda k: k.sde(order))(kern)
    assert isinstance(sde, SDE) and all(a.dtype == dtype for a in sde)
    F, L, Qc, H, P = (np.asarray(a) for a in sde)
    assert F.shape == (order, order) and L.shape == (order, 1) and Qc.shape == (1, 1)
    np.testing.assert_array_equal(H, np.eye(order)[:1])
    np.testing.assert_array_equal(L, np.eye(order)[:, -1:])
    if dtype == jnp.float64:
        for a, b in zip(kern.sde(order), sde, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    noise = L @ Qc @ L.T
    lyap = F @ P + P @ F.T + noise
    assert float(np.max(np.abs(lyap))) < 10 * _tol(dtype) * float(np.max(np.abs(noise)))
    _assert_psd(P, dtype)
    assert np.all(np.linalg.eigvals(F.astype(np.float64)).real < 0)  # stable
    taus = np.arange(161) * 0.05 * ell
    err = np.abs(_rbf_sde_covariance(sde, 0.05 * ell, 161) - np.asarray(kern.k(taus), np.float64))
    assert err.max() <= variance * RBF_SDE_ERROR[order] * 1.01 + 10 * _tol(dtype), err.max()
    assert err.max() >= variance * RBF_SDE_ERROR[order] * 0.99  # it is an approximation
    assert np.argmax(err) == 0  # worst at tau = 0, as documented


def test_rbf_sde_error_table_and_decrease(x64):
    """The documented table, independent of variance and lengthscale; error falls with N."""
    errors = []
    for order in sorted(RBF_SDE_ERROR):
        for variance, ell in [(1.0, 1.0), (2.5, 0.03), (0.2, 40.0)]:
            kern = RBF(variance, ell)
            taus = np.arange(201) * 0.05 * ell
            cov = _rbf_sde_covariance(kern.sde(order), 0.05 * ell, 201)
            err = np.max(np.abs(cov - np.asarray(kern.k(taus)))) / variance
            np.testing.assert_allclose(err, RBF_SDE_ERROR[order], rtol=2e-3)
        errors.append(err)
    assert all(b < a / 3 for a, b in itertools.pairwise(errors))


def _sde_spectral_density(sde, omegas):
    """Qc |H (i w I - F)^{-1} L|^2 for each w."""
    F, L, Qc, H = sde.F, sde.L, sde.Qc, sde.H
    eye = jnp.eye(F.shape[0], dtype=F.dtype)
    transfer = jax.vmap(lambda w: H @ jnp.linalg.solve(1j * w * eye - F, L.astype(complex)))
    t = transfer(omegas)[:, 0, 0]
    return Qc[0, 0] * jnp.abs(t) ** 2


@pytest.mark.parametrize("order", [1, 3, 6, 12])
def test_rbf_sde_spectral_density_is_taylor(order, x64):
    variance, ell = 0.7, 0.3
    sde = RBF(variance, ell).sde(order)
    omegas = jnp.asarray([0.0, 0.5, 2.0, 3.3, 7.0, 15.0, 40.0])
    u2 = (ell * omegas) ** 2 / 2.0
    taylor = sum(u2**n / math.factorial(n) for n in range(order + 1))
    want = variance * math.sqrt(2.0 * math.pi) * ell / taylor
    F, L, Qc, H = (np.asarray(a) for a in (sde.F, sde.L, sde.Qc, sde.H))
    resolvent = np.linalg.inv(1j * np.asarray(omegas)[:, None, None] * np.eye(order) - F)
    got = Qc[0, 0] * np.abs((H @ resolvent @ L)[:, 0, 0]) ** 2
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_rbf_sde_gradients(x64):
    omegas = jnp.asarray([0.0, 1.0, 4.0])

    def f(variance, ell):
        sde = RBF(variance, ell).sde(6)
        return jnp.concatenate([_sde_spectral_density(sde, omegas), sde.Pinf.ravel()])

    args = (jnp.asarray(1.3), jnp.asarray(0.4))
    check_grads(jax.jit(f), args, order=1, modes=["rev"], eps=1e-6)
    g = jax.grad(lambda ell: jnp.sum(RBF(1.0, ell).sde(8).F ** 2))(0.5)
    assert bool(jnp.isfinite(g)) and float(g) < 0  # F ~ 1/ell


@pytest.mark.parametrize(
    "order,exc,match",
    [
        (None, ValueError, r"Pass `order=N`.*3\.0e-3 for N=6"),
        (0, ValueError, r"`order` must be an int in 1\.\.12.*got order=0"),
        (13, ValueError, r"`order` must be an int in 1\.\.12.*got order=13"),
        (6.0, TypeError, r"`order` must be a Python int.*float"),
        (True, TypeError, r"`order` must be a Python int.*bool"),
    ],
)
def test_rbf_sde_bad_order(order, exc, match):
    with pytest.raises(exc, match=match):
        RBF(1.0, 1.0).sde(order)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: Matern52(1.0, -1.0), "lengthscale"),
        (lambda: Matern32(0.0, 1.0), "variance"),
        (lambda: Matern12(1.0, jnp.asarray(-0.5)), "lengthscale"),
        (lambda: RBF(1.0, math.nan), "lengthscale"),
        (lambda: RBF(-2.0, 1.0), "variance"),
        (lambda: SpectralMixture([1.0, -0.1], [0.0, 1.0], [1.0, 1.0]), "weights"),
        (lambda: SpectralMixture([1.0, 0.1], [0.0, 1.0], [1.0, 0.0]), "scales"),
        (lambda: SpectralMixture([1.0, 0.1], [0.0, math.nan], [1.0, 1.0]), "means"),
        (lambda: SpectralMixture([1.0, 0.1], [0.0], [1.0, 1.0]), "means"),
        (lambda: SpectralMixture.from_rho_squared([1.0], [0.0], [-1.0]), "rho_sq"),
        (lambda: StudentTMixture([1.0], [0.0], [-1.0]), "inv_lengthscales"),
        (lambda: StudentTMixture([1.0], [0.0], [1.0], nu=1.0), "nu"),
        (lambda: StudentTMixture(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2))), "weights"),
        (lambda: ProductKernel(()), "kernels"),
    ],
)
def test_bad_hyperparameters(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_orders_and_inputs():
    m32 = Matern32(1.0, 1.0)
    x = jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="order"):
        m32.dk(0.3, 3)
    with pytest.raises(ValueError, match="order_x"):
        m32.d_xx_xpxp(x, x)
    with pytest.raises(ValueError, match="order"):
        StudentTMixture([1.0], [0.0], [1.0], nu=1.5).dk(0.3, 4)
    with pytest.raises(ValueError, match="order"):
        RBF(1.0, 1.0).dk(0.3, 5)
    with pytest.raises(ValueError, match="order"):
        m32.dk(0.3, -1)
    with pytest.raises(TypeError, match="order"):
        m32.dk(0.3, 1.0)
    with pytest.raises(ValueError, match="x1"):
        m32(jnp.ones((2, 2)), x)
    with pytest.raises(ValueError, match="x2"):
        m32(x, jnp.array([0.0, jnp.nan]))
    pk = ProductKernel((m32, m32))
    with pytest.raises(ValueError, match="axes"):
        pk.gram((x,))
    with pytest.raises(ValueError, match="jitter"):
        pk.gram((x, x), jitter=-1.0)
    with pytest.raises(ValueError, match="X1"):
        pk(jnp.ones((3, 3)), jnp.ones((3, 2)))
    with pytest.raises(TypeError, match="kernels"):
        ProductKernel((m32, "rbf"))


def test_product_kernel_operator_matches_dense_product():
    from bayeslr.gp import RBF, Matern52, ProductKernel
    from bayeslr.linalg import KroneckerOperator, KroneckerPlusDiagOperator

    k = ProductKernel((Matern52(1.3, 0.4), RBF(0.7, 0.2)))
    axes = (jnp.linspace(0, 1, 4), jnp.linspace(0, 2, 3))
    pts = jnp.stack([g.reshape(-1) for g in jnp.meshgrid(*axes, indexing="ij")], axis=-1)
    op = k.operator(axes)
    assert isinstance(op, KroneckerOperator)
    np.testing.assert_allclose(op.to_dense(), k(pts), rtol=1e-5, atol=1e-6)
    op = k.operator(axes, noise=0.1)
    assert isinstance(op, KroneckerPlusDiagOperator)
    np.testing.assert_allclose(op.to_dense(), k(pts) + 0.1 * jnp.eye(12), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="observed"):
        k.operator(axes, observed=np.ones((4, 3), bool))
