"""Keeping a long-lived process clear of the kernel's limit on memory mappings.

Every program XLA compiles stays in JAX's caches, its JIT-linked machine code mapped into the
process, until the process ends. A process that compiles thousands of distinct programs (a
batch runner fitting many jobs, a test worker) reaches ``vm.max_map_count`` (65,530 mappings
by default on Linux), and from then on every compilation fails with "LLVM compilation error:
Cannot allocate memory" and unrelated allocations with ``MemoryError``.
"""

from __future__ import annotations

import gc

import jax

MAX_MAPS = 16_000  # a quarter of Linux's default vm.max_map_count


def memory_maps() -> int:
    """How many memory mappings this process holds (0 where ``/proc`` is not there)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def release_compiled_code(max_maps: int = MAX_MAPS) -> bool:
    """Drop JAX's compiled programs when this process holds more than ``max_maps`` mappings.

    Returns whether it did. Only the recompilation of what later work shares is lost."""
    if memory_maps() <= max_maps:
        return False
    jax.clear_caches()
    gc.collect()
    return True
