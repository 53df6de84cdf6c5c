import numpy as np
import pytest

from bayeslr.datasets import (
    angle_dictionary,
    irs_mimo_problem,
    kron_apply,
    kronecker_sparse_problem,
)


def _dense(factors):
    out = factors[0]
    for a in factors[1:]:
        out = np.kron(out, a)
    return out


def _realised_snr_db(p):
    ax = kron_apply(p.factors, p.x)
    return 10 * np.log10(np.sum(np.abs(ax) ** 2) / (ax.size * p.sigma2))


@pytest.mark.parametrize("is_complex", [False, True])
def test_kronecker_problem_shapes_support_and_snr(is_complex):
    p = kronecker_sparse_problem(3, complex=is_complex, snr_db=17.0)
    assert [a.shape for a in p.factors] == [(8, 15), (12, 15), (15, 15)]
    assert p.x.shape == (3375,) and p.y.shape == (1440,) and p.support.shape == (3375,)
    assert np.iscomplexobj(p.y) == is_complex and np.iscomplexobj(p.factors[0]) == is_complex
    # Kronecker support with exactly k = 3 non-zeros per factor, x = x1 ⊗ x2 ⊗ x3
    assert [int(s.sum()) for s in p.factor_supports] == [3, 3, 3]
    assert p.support.sum() == 27 and np.array_equal(p.support, p.x != 0)
    grid = p.support.reshape(15, 15, 15)
    outer = np.einsum("i,j,k->ijk", *p.factor_supports)
    assert np.array_equal(grid, outer)
    np.testing.assert_allclose(p.x, np.kron(np.kron(*p.x_factors[:2]), p.x_factors[2]))
    # SNR = ||Ax||^2 / (M σ^2) exactly as requested
    np.testing.assert_allclose(_realised_snr_db(p), 17.0, rtol=1e-12)
    # the drawn noise has the stated variance (1440 samples: within ~4 standard errors)
    resid = p.y - p.signal
    assert abs(np.mean(np.abs(resid) ** 2) / p.sigma2 - 1) < 4 * np.sqrt(2 / 1440)


def test_kronecker_problem_reproducible_and_seed_dependent():
    a, b = kronecker_sparse_problem(7), kronecker_sparse_problem(7)
    c = kronecker_sparse_problem(8)
    assert np.array_equal(a.y, b.y) and np.array_equal(a.factors[1], b.factors[1])
    assert not np.array_equal(a.y, c.y)
    jax = pytest.importorskip("jax")
    k1 = kronecker_sparse_problem(jax.random.PRNGKey(5))
    k2 = kronecker_sparse_problem(jax.random.PRNGKey(5))
    assert np.array_equal(k1.y, k2.y)
    assert not np.array_equal(k1.y, kronecker_sparse_problem(jax.random.PRNGKey(6)).y)


def test_kronecker_problem_options_and_noiseless():
    p = kronecker_sparse_problem(0, n=(4, 5), m=(3, 4), k=(1, 2), snr_db=float("inf"))
    assert p.sigma2 == 0.0 and p.support.sum() == 2
    np.testing.assert_allclose(p.y, _dense(p.factors) @ p.x, atol=1e-12)
    q = kronecker_sparse_problem(0, n=(6, 6), m=(4, 4), normalize_columns=True)
    for a in q.factors:
        np.testing.assert_allclose(np.linalg.norm(a, axis=0), 1.0)


@pytest.mark.parametrize("is_complex", [False, True])
def test_kron_apply_equals_dense_kron(is_complex):
    p = kronecker_sparse_problem(1, n=(5, 4, 6), m=(3, 5, 2), k=2, complex=is_complex)
    np.testing.assert_allclose(kron_apply(p.factors, p.x), _dense(p.factors) @ p.x, atol=1e-12)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(120)
    np.testing.assert_allclose(kron_apply(p.factors, v), _dense(p.factors) @ v, atol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="k"):
        kronecker_sparse_problem(0, n=(3, 3), m=(2, 2), k=4)
    with pytest.raises(ValueError, match="`m`"):
        kronecker_sparse_problem(0, n=(3, 3), m=(2, 2, 2))
    with pytest.raises(ValueError, match="snr_db"):
        kronecker_sparse_problem(0, snr_db=float("nan"))
    with pytest.raises(TypeError, match="key_or_seed"):
        kronecker_sparse_problem("seed")
    with pytest.raises(ValueError, match="grid"):
        irs_mimo_problem(0, grid=17)


def test_angle_dictionary_columns():
    d = angle_dictionary(16, 18)
    assert d.shape == (16, 18)
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0)
    # first column is u = -1: alternating signs / sqrt(16)
    np.testing.assert_allclose(d[:, 0], (-1.0) ** np.arange(16) / 4.0, atol=1e-12)


def test_irs_problem_sizes_structure_and_physics():
    p = irs_mimo_problem(11, snr_db=12.0)
    assert [a.shape for a in p.factors] == [(6, 18), (3, 18), (16, 18)]
    assert p.x.shape == (5832,) and p.y.shape == (288,) and np.iscomplexobj(p.y)
    assert p.h1.shape == (256, 6) and p.h2.shape == (16, 256) and p.channel.shape == (6, 16, 6)
    # pilots QPSK scaled 1/sqrt(6); IRS patterns ±1/sqrt(256)
    np.testing.assert_allclose(np.abs(p.pilots), 1 / np.sqrt(6))
    np.testing.assert_allclose(np.abs(p.patterns), 1 / 16)
    # clustered (3 adjacent) IRS factor and BS factor, single MS atom; Kronecker support of 9
    s1, s2, s3 = p.factor_supports
    assert s2.sum() == 1 and p.support.sum() == 9
    for s in (s1, s3):
        idx = np.flatnonzero(s)
        assert len(idx) == 3 and np.array_equal(np.diff(idx), [1, 1])
    np.testing.assert_allclose(_realised_snr_db(p), 12.0, rtol=1e-12)
    # the physical received signal H2 diag(θ_p) H1 X equals the Kronecker model A x
    q = irs_mimo_problem(11, snr_db=float("inf"))
    np.testing.assert_allclose(q.y, kron_apply(q.factors, q.x), atol=1e-14)
    np.testing.assert_allclose(q.y, _dense(q.factors) @ q.x, atol=1e-14)
    # ... and the cascaded channel is linear in x through channel_factors
    np.testing.assert_allclose(p.cascaded_channel(p.x), p.channel, atol=1e-14)
    assert p.channel_nmse(p.x) < 1e-20
    assert np.isclose(p.channel_nmse(np.zeros_like(p.x)), 1.0)
    # reproducible by seed
    assert np.array_equal(irs_mimo_problem(11, snr_db=12.0).y, p.y)
    assert not np.array_equal(irs_mimo_problem(12, snr_db=12.0).y, p.y)
