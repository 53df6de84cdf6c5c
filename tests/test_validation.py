import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeslr import _validation as v


def test_messages_name_argument_expectation_and_value():
    with pytest.raises(ValueError, match=r"`ls` must be strictly positive.*minimum -1"):
        v.check_positive("ls", np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"`s2` must be non-negative"):
        v.check_positive("s2", -0.5, allow_zero=True)
    v.check_positive("s2", 0.0, allow_zero=True)
    with pytest.raises(ValueError, match=r"`y` must be finite.*2 non-finite"):
        v.check_finite("y", np.array([np.nan, 1.0, np.inf]))
    with pytest.raises(ValueError, match=r"`K` must be a square matrix.*\(2, 3\)"):
        v.check_square("K", np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`K` must be symmetric"):
        v.check_symmetric("K", np.array([[1.0, 0.5], [0.0, 1.0]]))
    v.check_symmetric("K", np.eye(3))
    with pytest.raises(ValueError, match=r"`x` must be 1-D or 2-D; got shape \(\)"):
        v.check_ndim("x", 3.0, (1, 2))


def test_value_checks_skip_tracers_but_shape_checks_do_not():
    @jax.jit
    def f(x):
        v.check_positive("x", x)  # skipped: traced
        v.check_finite("x", x)
        return x * 2

    assert float(f(jnp.asarray(-1.0))) == -2.0
    with pytest.raises(ValueError, match="square"):
        jax.jit(lambda k: v.check_square("K", k))(jnp.zeros((2, 3)))
    assert v.is_concrete(np.ones(2))
    seen = []
    jax.jit(lambda x: seen.append(v.is_concrete(x)) or x)(1.0)
    assert seen == [False]


def test_check_int():
    """Integers (numpy ones too) pass and come back as int; bools, floats and strings are an
    ArgumentTypeError (a TypeError and a ValueError); values below the minimum a ValueError."""
    assert v.check_int("k", np.int64(3)) == 3 and type(v.check_int("k", np.int64(3))) is int
    assert v.check_int("k", 0, minimum=0) == 0
    for bad in (True, 1.5, "3", None):
        with pytest.raises(v.ArgumentTypeError, match="`k` must be an int >= 1"):
            v.check_int("k", bad)
    assert issubclass(v.ArgumentTypeError, TypeError)
    assert issubclass(v.ArgumentTypeError, ValueError)
    with pytest.raises(ValueError, match=r"`k` must be an int >= 2; got 1\."):
        v.check_int("k", 1, minimum=2)


def test_check_real_intervals_and_types():
    from bayeslr._validation import ArgumentTypeError, check_real

    assert check_real("a", 1) == 1.0 and isinstance(check_real("a", np.float32(0.5)), float)
    assert check_real("a", 0.0, low=0.0) == 0.0
    with pytest.raises(ValueError, match=r"`a` must lie in \(0, 1\]; got 0.0"):
        check_real("a", 0.0, low=0.0, high=1.0, low_open=True)
    with pytest.raises(ValueError, match=r"`a` must lie in \[0, 1\); got 1"):
        check_real("a", 1, low=0.0, high=1.0, high_open=True)
    with pytest.raises(ValueError, match=r"\[0, inf\)"):
        check_real("a", float("nan"), low=0.0)
    for bad in (True, "0.1", None):
        with pytest.raises(ArgumentTypeError, match="`a` must be a real number"):
            check_real("a", bad)
