"""Shared helpers for the benchmark scripts in ``benchmarks/``.

Conventions every benchmark follows (see the individual scripts):

* times are medians of ``>= 5`` runs *after* compilation; the compile time of a jitted function
  (``lower(...).compile()``) is measured and reported separately (:func:`time_jax`);
* every output is synchronised with ``jax.block_until_ready`` before the clock stops;
* the full run writes a Markdown table under ``benchmarks/results/`` (:func:`write_markdown`);
* ``--quick`` ends with one machine-readable line ``RESULT key=value ...`` as the LAST line of
  stdout (:func:`print_result`).

This module imports JAX lazily (inside :func:`time_jax`, :func:`machine_info`) so it can also be
used from scripts that only time non-JAX code.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


@dataclass
class Timing:
    """Result of a timed function: median/all run times (s), compile time (s), last output."""

    median_s: float
    times_s: list[float]
    compile_s: float | None = None
    output: Any = field(default=None, repr=False)

    @property
    def min_s(self) -> float:
        return min(self.times_s)


def _block(x):
    import jax

    return jax.block_until_ready(x)


def time_jax(fn: Callable, *args, repeats: int = 5, warmup: int = 1, jit: bool = True) -> Timing:
    """Time a JAX function: compile once (timed separately), warm up, then ``repeats`` runs.

    ``fn`` may be a plain function (it is wrapped in ``jax.jit``) or an already jitted one.
    Compile time is ``jitted.lower(*args).compile()``; the compiled executable is then called
    ``warmup`` times untimed and ``repeats`` times timed, each call followed by
    ``jax.block_until_ready``. Returns the median of the timed runs.
    """
    import jax

    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1; got {repeats}.")
    call = fn
    compile_s = None
    if jit:
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        t0 = time.perf_counter()
        call = jitted.lower(*args).compile()
        compile_s = time.perf_counter() - t0
    out = None
    for _ in range(warmup):
        out = _block(call(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _block(call(*args))
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times, compile_s, out)


def time_jax_interleaved(
    named: dict[str, tuple[Callable, tuple]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """Time several JAX functions round-robin (one run of each per round), so slow drifts in
    machine load hit all of them alike. ``named`` maps a label to ``(fn, args)``; each ``fn`` is
    jitted and compiled first (compile time kept per label)."""
    import jax

    compiled, compile_s, outs = {}, {}, {}
    for name, (fn, args) in named.items():
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        t0 = time.perf_counter()
        compiled[name] = jitted.lower(*args).compile()
        compile_s[name] = time.perf_counter() - t0
        for _ in range(warmup):
            outs[name] = _block(compiled[name](*args))
    times: dict[str, list[float]] = {name: [] for name in named}
    for _ in range(repeats):
        for name, (_, args) in named.items():
            t0 = time.perf_counter()
            outs[name] = _block(compiled[name](*args))
            times[name].append(time.perf_counter() - t0)
    return {
        name: Timing(statistics.median(ts), ts, compile_s[name], outs.get(name))
        for name, ts in times.items()
    }


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Median wall time of ``fn()`` (outputs are passed through ``jax.block_until_ready`` if
    JAX is imported; otherwise returned as is)."""
    block = _block if "jax" in sys.modules else (lambda x: x)
    out = None
    for _ in range(warmup):
        out = block(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn())
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times, None, out)


# --------------------------------------------------------------------------------------------
# how busy the machine was (the benchmark machines are shared)


class CpuMonitor:
    """CPU time used by *other* processes while a benchmark ran (Linux ``/proc/stat``).

    ``share()`` is (busy ticks of the whole machine - CPU time of this process and its waited-for
    children) / (wall time x cores): 0 on an otherwise idle machine, 1 when other processes kept
    every core busy. ``None`` where ``/proc/stat`` is unavailable.
    """

    def __init__(self):
        self._t0 = time.perf_counter()
        self._busy0 = _busy_seconds()
        self._own0 = _own_cpu_seconds()

    def share(self) -> float | None:
        busy1 = _busy_seconds()
        if busy1 is None or self._busy0 is None:
            return None
        wall = time.perf_counter() - self._t0
        other = (busy1 - self._busy0) - (_own_cpu_seconds() - self._own0)
        return max(0.0, other) / max(wall * (os.cpu_count() or 1), 1e-9)


def report_targets(targets: Sequence[Sequence[str]]) -> str:
    """Print ``(target, measured, status)`` rows as ``[status] target: measured`` lines and return
    them as the results file's markdown table."""
    print("\nTargets:")
    for name, measured, status in targets:
        print(f"  [{status}] {name}: {measured}")
    return markdown_table(["target", "measured", "status"], targets)


def run_details(monitor: CpuMonitor, repeats: int) -> dict[str, str]:
    """The run facts every results file records: repeats and the other processes' CPU share."""
    other = monitor.share()
    return {
        "repeats": str(repeats),
        "CPU used by other processes during the run": "n/a"
        if other is None
        else f"{100 * other:.0f}% of all cores",
    }


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


# --------------------------------------------------------------------------------------------
# formatting


def fmt_s(t: float | None, digits: int = 3) -> str:
    """Seconds with ``digits`` significant figures (``'n/a'`` for None/NaN)."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "n/a"
    return f"{t:.{digits}g}"


def fmt_x(r: float | None, digits: int = 3) -> str:
    """A ratio or speedup like ``12.3x`` (``4,690x`` from 1000 up)."""
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "n/a"
    if abs(r) >= 10**digits:
        return f"{r:,.0f}x"
    return f"{r:.{digits}g}x"


def fmt_e(v: float | None, digits: int = 1) -> str:
    """A small number such as a relative error, e.g. ``3.2e-12``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}e}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (cells are ``str()``-ed, ``|`` escaped)."""

    def cell(v) -> str:
        return str(v).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command that ran this script, relative to the repository root when possible."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(REPO))
    except ValueError:
        pass
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(REPO))
    except ValueError:
        exe_s = "python"
    return " ".join(shlex.quote(a) for a in [exe_s, *argv])


def machine_info(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Machine and software description for result headers."""
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
    }
    if "jax" in sys.modules:
        import jax
        import jaxlib

        info["jax"] = jax.__version__
        info["jaxlib"] = jaxlib.__version__
        info["jax backend"] = jax.default_backend()
        info["jax x64"] = str(jax.config.jax_enable_x64)
    for var in ("XLA_FLAGS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        info[var] = os.environ.get(var, "unset")
    try:
        info["load average (1 min, at start)"] = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        pass
    if extra:
        info.update(extra)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_markdown(
    path: str | Path,
    title: str,
    info: dict[str, str],
    sections: Sequence[tuple[str, str]],
    command: str | None = None,
) -> Path:
    """Write a results page: title, a bullet list of ``info``, the command, then sections.

    ``sections`` is a sequence of ``(heading, body)`` pairs (body: Markdown, e.g. a table).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    parts += [f"- **{k}**: {v}" for k, v in info.items()]
    parts += ["", "Command:", "", "```", command or command_line(), "```", ""]
    for heading, body in sections:
        if heading:
            parts += [f"## {heading}", ""]
        parts += [body.rstrip(), ""]
    path.write_text("\n".join(parts))
    return path


def result_line(**values: Any) -> str:
    """``RESULT key=value ...`` (floats with 6 significant figures, None as ``nan``)."""

    def fmt(v) -> str:
        if v is None:
            return "nan"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v).replace(" ", "_")

    return "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def print_result(**values: Any) -> None:
    """Print the ``RESULT`` line (call it last) and flush stdout."""
    print(result_line(**values), flush=True)


def finish(monitor: CpuMonitor, t_start: float, **result: Any) -> None:
    """End a benchmark run: report the load from other processes, the wall time, then the
    ``RESULT`` line (always last)."""
    other = monitor.share()
    if other is not None:
        print(f"other processes used {100 * other:.0f}% of the CPU during the run", flush=True)
    print(f"total wall {time.perf_counter() - t_start:.1f} s", flush=True)
    print_result(**result)
