"""Releasing compiled code in long-lived processes (bayeslr/_memory.py)."""

import sys

import jax
import jax.numpy as jnp
import pytest

from bayeslr._memory import memory_maps, release_compiled_code
from tests.conftest import compile_records


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_release_drops_compiled_programs_only_past_the_limit():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    f(jnp.ones(7))
    assert memory_maps() > 10
    assert not release_compiled_code(max_maps=10**9)
    _, logs = compile_records(f, jnp.ones(7))
    assert logs == []  # still cached
    assert release_compiled_code(max_maps=0)
    out, logs = compile_records(f, jnp.ones(7))
    assert logs and float(out[0]) == pytest.approx(3 * float(jnp.sin(1.0)) + 1)
