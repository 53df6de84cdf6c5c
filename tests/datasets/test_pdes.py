"""Manufactured-solution PDE problems: the residual vanishes at the exact solution.

The reference derivatives here come from forward-mode autodiff (nested ``jax.jvp`` of the vector
``exact`` along a coordinate direction), independent of the library's reverse-mode
``jax.grad`` path, and one case is checked against a hand-computed source.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeslr.datasets import PDE_PROBLEMS, PDEProblem, list_pde_problems, pde_problem

NAMES = list_pde_problems()

# (N, F, iterations, domain, dim, operator) from the paper notes' table.
EXPECTED = {
    "poisson1d_sin100": (400, 20, 100_000, [(0, 2 * math.pi)], "poisson"),
    "poisson1d_xsin200": (900, 50, 100_000, [(0, 2 * math.pi)], "poisson"),
    "poisson1d_sin6cos100": (400, 20, 100_000, [(0, 2 * math.pi)], "poisson"),
    "poisson1d_multiscale": (900, 30, 1_000_000, [(0, 1)], "poisson"),
    "poisson1d_sin500": (400, 100, 1_000_000, [(0, 1)], "poisson"),
    "allencahn1d_sin100": (400, 20, 100_000, [(0, 2 * math.pi)], "allen_cahn"),
    "allencahn1d_sin6cos100": (400, 20, 100_000, [(0, 2 * math.pi)], "allen_cahn"),
    "poisson2d_sin100": (400, 20, 1_000_000, [(0, 2 * math.pi)] * 2, "poisson"),
    "poisson2d_sin6cos20": (200, 20, 1_000_000, [(0, 2 * math.pi)] * 2, "poisson"),
    "allencahn2d_multiscale": (400, 30, 3_000_000, [(0, 1)] * 2, "allen_cahn"),
    # F along x is 2, not the notes' 40: see the docstring of bayeslr.datasets.pdes.advection.
    "advection": (200, (2.0, 40.0), 1_000_000, [(0, 1)] * 2, "advection"),
}


def _directional(h, e):
    return lambda z: jax.jvp(h, (z,), (e,))[1]


def _jvp_derivative(f, x, alpha):
    """d^alpha f at points x (..., d) by nested forward-mode jvp along unit directions."""
    g = f
    for axis, order in enumerate(alpha):
        e = jnp.zeros_like(x).at[..., axis].set(1.0)
        for _ in range(order):
            g = _directional(g, e)
    return g(x)


def _reference_operator(p: PDEProblem, u, d):
    """L[u] written out by hand per operator, independent of the library's formula."""
    if p.operator_name == "advection":
        return 200.0 * d[(1, 0)] + d[(0, 1)]
    lap = d[(2,)] if p.dim == 1 else d[(2, 0)] + d[(0, 2)]
    return lap + u**3 - u if p.operator_name == "allen_cahn" else lap


def _small_mesh(p: PDEProblem, n: int):
    return p.mesh(p.grid(n))


def test_registry_matches_the_notes_table():
    assert NAMES == list(EXPECTED)
    assert set(PDE_PROBLEMS) == set(EXPECTED)
    for name, (n, f, iters, domain, op) in EXPECTED.items():
        p = pde_problem(name)
        assert p.name == name
        assert p.grid_size == n and p.freq_scale == f and p.iterations == iters
        assert p.operator_name == op and p.dim == len(domain)
        np.testing.assert_allclose(np.array(p.domain), np.array(domain, dtype=float))
        assert p.boundary_weight == (500.0 if op == "advection" else 200.0)
    assert pde_problem("advection").beta == 200.0
    assert pde_problem("poisson1d_multiscale").extra_gp_fraction == 0.5
    assert pde_problem("poisson1d_sin500").extra_gp_fraction == 0.01
    assert pde_problem("poisson1d_sin100").extra_gp_fraction is None


def test_derivative_multi_indices():
    assert pde_problem("poisson1d_sin100").derivatives == ((2,),)
    assert pde_problem("allencahn1d_sin100").derivatives == ((2,),)
    assert pde_problem("poisson2d_sin100").derivatives == ((2, 0), (0, 2))
    assert pde_problem("allencahn2d_multiscale").derivatives == ((2, 0), (0, 2))
    assert pde_problem("advection").derivatives == ((1, 0), (0, 1))


@pytest.mark.parametrize("name", NAMES)
def test_residual_vanishes_at_exact_solution(x64, name):
    p = pde_problem(name)
    x = _small_mesh(p, 37 if p.dim == 1 else 17)  # 41 would alias sin(100x) to 0
    assert x.dtype == jnp.float64
    u = p.exact(x)
    derivs = {a: _jvp_derivative(p.exact, x, a) for a in p.derivatives}
    h = jax.jit(p.residual)(u, derivs, x)  # jit: same numbers as eager, compiled once, faster
    f = jax.jit(p.source)(x)
    assert h.shape == u.shape == f.shape == x.shape[:-1]
    f_ref = _reference_operator(p, u, derivs)
    scale = max(float(jnp.max(jnp.abs(f))), float(jnp.max(jnp.abs(derivs[p.derivatives[0]]))))
    assert float(jnp.max(jnp.abs(h))) <= 1e-11 * scale
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-11 * scale)
    if p.operator_name != "advection":
        assert float(jnp.max(jnp.abs(f))) > 1.0  # a non-trivial source
    # the residual does see a wrong solution
    wrong = {a: d + 1.0 for a, d in derivs.items()}
    assert float(jnp.min(jnp.abs(p.residual(u, wrong, x)))) > 0.5
    # and the library's own exact derivatives agree with the forward-mode ones
    mine = jax.jit(p.exact_derivatives)(x)
    for a in p.derivatives:
        np.testing.assert_allclose(mine[a], derivs[a], rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("name", ["poisson1d_sin500", "allencahn2d_multiscale"])
def test_source_matches_finite_differences(x64, name):
    # central second differences of `exact`, an independent numerical reference
    p = pde_problem(name)
    x = _small_mesh(p, 9)[1:-1] if p.dim == 1 else _small_mesh(p, 7)[1:-1, 1:-1]
    h = 1e-5  # truncation ~ k^2 h^2 / 12 = 2e-6 relative for k = 500
    u = p.exact(x)
    derivs = {}
    for a in p.derivatives:
        axis = a.index(2)
        e = jnp.zeros(p.dim).at[axis].set(h)
        derivs[a] = (p.exact(x + e) - 2 * u + p.exact(x - e)) / h**2
    fd = p.apply_operator(u, derivs)
    scale = float(jnp.max(jnp.abs(fd)))
    np.testing.assert_allclose(p.source(x), fd, atol=2e-5 * scale)


def test_hand_computed_poisson_sin100(x64):
    p = pde_problem("poisson1d_sin100")
    (g,) = p.grid()
    x = g[:, None]
    np.testing.assert_allclose(p.exact(x), np.sin(100 * np.asarray(g)), rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        p.source(x), -1e4 * np.sin(100 * np.asarray(g)), rtol=1e-10, atol=1e-8
    )
    # residual of the exact u with the hand-computed u_xx is zero
    u = jnp.sin(100 * g)
    h = p.residual(u, {(2,): -1e4 * u}, x)
    assert float(jnp.max(jnp.abs(h))) < 1e-8


def test_hand_computed_allen_cahn_and_advection(x64):
    p = pde_problem("allencahn1d_sin100")
    x = jnp.linspace(0.1, 6.0, 11)[:, None]
    s = np.sin(100 * np.asarray(x[:, 0]))
    np.testing.assert_allclose(p.source(x), -1e4 * s + s * (s**2 - 1), rtol=1e-10, atol=1e-8)
    q = pde_problem("advection")
    pts = q.mesh(q.grid(13))
    np.testing.assert_array_equal(q.source(pts), 0.0)
    r = pde_problem("poisson2d_sin100")
    pts = r.mesh(r.grid(9))
    sx, sy = np.sin(100 * np.asarray(pts[..., 0])), np.sin(100 * np.asarray(pts[..., 1]))
    np.testing.assert_allclose(r.source(pts), -2e4 * sx * sy, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_grid_endpoints_and_default_size(name):
    p = pde_problem(name)
    axes = p.grid()
    assert len(axes) == p.dim
    for a, (lo, hi) in zip(axes, p.domain, strict=True):
        assert a.shape == (p.grid_size,)
        np.testing.assert_allclose([a[0], a[-1]], [lo, hi], rtol=1e-6)
        np.testing.assert_allclose(np.diff(np.asarray(a)), (hi - lo) / (p.grid_size - 1), rtol=1e-4)
    (b,) = p.grid(5)[:1]
    assert b.shape == (5,)


def test_boundary_1d(x64):
    p = pde_problem("poisson1d_sin500")
    pts, vals = p.boundary(p.grid(11))
    assert pts.shape == (2, 1) and vals.shape == (2,)
    np.testing.assert_allclose(pts[:, 0], [0.0, 1.0])
    expected = [np.sin(0.0) - 2 * 0.25, np.sin(500.0) - 2 * 0.25]
    np.testing.assert_allclose(vals, expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["poisson2d_sin6cos20", "advection"])
def test_boundary_2d_all_four_edges(x64, name):
    p = pde_problem(name)
    gx, gy = p.grid(7)[0], jnp.linspace(p.domain[1][0], p.domain[1][1], 5)
    pts, vals = p.boundary((gx, gy))
    assert pts.shape == (2 * 5 + 2 * 7, 2) and vals.shape == (24,)
    (x0, x1), (y0, y1) = p.domain
    on_edge = (
        np.isclose(pts[:, 0], x0)
        | np.isclose(pts[:, 0], x1)
        | np.isclose(pts[:, 1], y0)
        | np.isclose(pts[:, 1], y1)
    )
    assert on_edge.all()
    # order: x = x0 (all y), x = x1 (all y), y = y0 (all x), y = y1 (all x)
    np.testing.assert_allclose(pts[:5, 0], x0)
    np.testing.assert_allclose(pts[:5, 1], gy)
    np.testing.assert_allclose(pts[5:10, 0], x1)
    np.testing.assert_allclose(pts[10:17, 1], y0)
    np.testing.assert_allclose(pts[10:17, 0], gx)
    np.testing.assert_allclose(pts[17:, 1], y1)
    # corners counted twice: 4 distinct corners, each appearing twice
    uniq, counts = np.unique(np.round(np.asarray(pts), 12), axis=0, return_counts=True)
    assert len(uniq) == 24 - 4 and sorted(counts)[-4:] == [2, 2, 2, 2]
    np.testing.assert_allclose(vals, p.exact(pts), rtol=1e-12)
    if name == "advection":  # the final time t = 1 is on the boundary
        np.testing.assert_allclose(vals[17:], np.sin(np.asarray(gx) - 200.0), atol=1e-12)


@pytest.mark.parametrize("name", ["poisson1d_xsin200", "poisson2d_sin100"])
def test_test_points(x64, name):
    p = pde_problem(name)
    pts, vals = p.test_points()
    assert pts.shape == (300**p.dim, p.dim) and vals.shape == (300**p.dim,)
    np.testing.assert_allclose(pts.min(axis=0), [lo for lo, _ in p.domain], atol=1e-12)
    np.testing.assert_allclose(pts.max(axis=0), [hi for _, hi in p.domain], rtol=1e-12)
    np.testing.assert_allclose(vals, p.exact(pts), rtol=1e-12)
    if p.dim == 2:  # C order: first axis slowest
        assert float(pts[1, 0]) == float(pts[0, 0]) and float(pts[1, 1]) > float(pts[0, 1])
    small, _ = p.test_points(4)
    assert small.shape == (4**p.dim, p.dim)


def test_relative_l2():
    truth = jnp.array([3.0, 4.0])
    assert float(PDEProblem.relative_l2(truth, truth)) == 0.0
    np.testing.assert_allclose(PDEProblem.relative_l2(jnp.array([3.0, 3.0]), truth), 0.2)
    with pytest.raises(ValueError, match="same shape"):
        PDEProblem.relative_l2(jnp.zeros(3), truth)


def test_exact_is_traceable():
    p = pde_problem("allencahn2d_multiscale")
    x = p.mesh(p.grid(4))
    np.testing.assert_allclose(jax.jit(p.exact)(x), p.exact(x), rtol=1e-6)
    assert jax.vmap(p.exact)(x).shape == (4, 4)


def test_errors():
    with pytest.raises(ValueError, match="poisson1d_sin100") as err:
        pde_problem("poisson3d")
    assert "'poisson3d'" in str(err.value) and "advection" in str(err.value)
    with pytest.raises(TypeError, match="`name`"):
        pde_problem(3)
    p = pde_problem("poisson2d_sin100")
    with pytest.raises(ValueError, match="`n`"):
        p.grid(1)
    with pytest.raises(TypeError, match="`n`"):
        p.test_points(2.5)
    with pytest.raises(ValueError, match="`grid_axes`"):
        p.boundary((jnp.zeros(3),))
    with pytest.raises(ValueError, match=r"`grid_axes\[1\]`"):
        p.boundary((jnp.zeros(3), jnp.zeros((2, 2))))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        p.exact(jnp.zeros((4, 3)))
    x = p.mesh(p.grid(3))
    with pytest.raises(ValueError, match=r"missing \[\(0, 2\)\]"):
        p.residual(jnp.zeros((3, 3)), {(2, 0): jnp.zeros((3, 3))}, x)
    with pytest.raises(ValueError, match="`x` must have shape"):
        p.residual(jnp.zeros((3, 2)), {}, x)
