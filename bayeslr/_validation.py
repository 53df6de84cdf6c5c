"""Input checks shared by every public entry point.

Each check raises a :class:`ValueError` (or :class:`TypeError`) whose message names the
argument, what was expected and what was given. Checks run on concrete (non-traced) values
only: under ``jit`` the values are tracers and the value checks are skipped, while shape checks,
which are static, always run. That is how bad input is caught "at the door", before compilation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

__all__ = [
    "ArgumentTypeError",
    "check_int",
    "check_real",
    "is_concrete",
    "check_finite",
    "check_positive",
    "check_square",
    "check_symmetric",
    "check_ndim",
    "as_key",
]


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``grad``/``vmap``)."""
    leaves = jax.tree_util.tree_leaves(x)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def _describe(x) -> str:
    a = np.asarray(x)
    return f"array of shape {a.shape} and dtype {a.dtype}"


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Both a ``TypeError`` and a ``ValueError``, so callers that
    catch bad input as ``ValueError`` (the library's convention for bad values) see it too."""


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """An integer (``bool`` excluded) ``>= minimum``; returns it as a Python ``int``.

    Raises:
        ArgumentTypeError: not an integer (``1.5``, ``True``, ``"3"``).
        ValueError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(
            f"`{name}` must be an int >= {minimum}; got {value!r} of type {type(value).__name__}."
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    return int(value)


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (``bool`` excluded) in the interval from ``low`` to ``high`` (closed
    unless ``low_open``/``high_open``; ``None`` for unbounded); returns it as a ``float``.

    Raises:
        ArgumentTypeError: not a real number (``"0.1"``, ``True``, ``None``).
        ValueError: NaN, infinite or outside the interval; the message names the interval.
    """
    interval = (
        ("(" if low_open or low is None else "[")
        + ("-inf" if low is None else f"{low:g}")
        + ", "
        + ("inf" if high is None else f"{high:g}")
        + (")" if high_open or high is None else "]")
    )
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(
            f"`{name}` must be a real number in {interval}; got {value!r} of type "
            f"{type(value).__name__}."
        )
    v = float(value)
    ok = np.isfinite(v)
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"`{name}` must lie in {interval}; got {value!r}.")
    return v


def check_finite(name: str, x) -> None:
    """Raise if a concrete ``x`` contains NaN or inf."""
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(
            f"`{name}` must be finite (no NaN or inf); got {_describe(a)} with {bad} non-finite "
            "value(s)."
        )


def check_positive(name: str, x, *, allow_zero: bool = False) -> None:
    """Raise if a concrete ``x`` has entries ``<= 0`` (``< 0`` with ``allow_zero``)."""
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    check_finite(name, a)
    bad = a < 0 if allow_zero else a <= 0
    if np.any(bad):
        expect = "non-negative" if allow_zero else "strictly positive"
        raise ValueError(
            f"`{name}` must be {expect}; got {_describe(a)} with minimum {float(a.min()):g}."
        )


def check_ndim(name: str, x, ndim: int | Sequence[int]) -> None:
    """Raise if ``x`` does not have one of the allowed numbers of dimensions."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    got = np.ndim(x)
    if got not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"`{name}` must be {want}; got shape {np.shape(x)}.")


def check_square(name: str, x) -> None:
    """Raise if ``x`` is not a square matrix (static check, runs under ``jit`` too)."""
    shape = np.shape(x)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"`{name}` must be a square matrix (n, n); got shape {shape}.")


def check_symmetric(name: str, x, *, rtol: float | None = None) -> None:
    """Raise if a concrete square ``x`` is not (Hermitian-)symmetric within a dtype tolerance."""
    check_square(name, x)
    if not is_concrete(x):
        return
    a = np.asarray(x)
    check_finite(name, a)
    if rtol is None:
        rtol = 1e-4 if a.dtype in (np.float32, np.complex64) else 1e-8
    scale = max(float(np.max(np.abs(a))), 1e-30)
    err = float(np.max(np.abs(a - a.conj().T)))
    if err > rtol * scale:
        raise ValueError(
            f"`{name}` must be symmetric (SPD factor expected); got a {a.shape} matrix with "
            f"max |A - A^T| = {err:.3g} (relative {err / scale:.3g} > tolerance {rtol:.1g})."
        )


def as_key(seed, name: str = "seed"):
    """An int seed or an existing key -> a raw ``jax.random.PRNGKey`` (``uint32[2]``).

    The one place bayeslr turns a user's ``seed=``/``rng_key=`` into a key: ``None`` is seed 0,
    an int (``bool`` excluded) is a seed, a typed key (``jax.random.key``) is unwrapped and a
    raw key passes through.

    Raises:
        ArgumentTypeError: anything else, naming ``name``.
    """
    import jax.numpy as jnp

    if seed is None:
        return jax.random.PRNGKey(0)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"`{name}` must be a non-negative int seed or a key; got {seed!r}.")
        return jax.random.PRNGKey(int(seed))
    if isinstance(seed, jax.Array) and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(seed)
    if isinstance(seed, (jax.Array, np.ndarray)) and np.shape(seed) == (2,) and np.issubdtype(
        np.asarray(seed).dtype, np.integer
    ):
        return jnp.asarray(seed, dtype=jnp.uint32)
    raise ArgumentTypeError(
        f"`{name}` must be an int seed or a jax.random key; got {type(seed).__name__} with "
        f"shape {np.shape(seed)}."
    )
