r"""The one training driver: a pure ``step`` run in equal compiled chunks.

Every iterative fit in bayeslr (EM, message passing, Gauss–Newton, SVI, minibatch training) is
written as two pure functions in the style of BlackJAX,

.. code-block:: python

    state = init(key, problem, restart)          # restart: 0, 1, ... (a traced int)
    state, info = step(key, state, problem)      # info: a dict of scalars (or small arrays)

where ``problem`` is a pytree holding the data and every setting that may change between fits
without a new compilation (seeds, tolerances, learning rates: arrays), and whose static
configuration (shapes, flags, method names) lives in its tree structure. :func:`run` drives
them:

* **chunks** — the steps run inside one jitted ``lax.while_loop`` of at most ``chunk_size``
  steps; every chunk has the same length, so a fit compiles once per problem structure, and a
  second fit with another seed or learning rate reuses the executable. The per-step ``info``
  is written to fixed-size buffers and comes back as the ``history``.
* **a stop rule** — :class:`Tolerance` (``info[field] <= tol``, checked inside the compiled
  loop, so a chunk ends at the step that converged) or :class:`Until` (any predicate on
  ``info``); :class:`Validation` scores the state on held-out data between chunks, keeps the
  best state and stops after ``patience`` evaluations without improvement.
* **restarts** — :class:`Restarts`: ``num`` starts, all run to the end side by side
  (``vmap``) or each for ``screen_steps`` steps before the best one continues alone
  ("screen-then-continue"); the best is the lowest ``score``.
* **one NaN/inf guard** — the ``guard`` fields of ``info`` are checked at every step inside
  the loop; the fit stops at the first non-finite value and :func:`run` raises one
  :class:`FloatingPointError` naming the fit, the field, the step and the model's advice.
* **progress** — a tqdm bar over steps whose postfix shows the last value of the
  ``progress`` fields of ``info``.
* **checkpoints** — ``checkpoint=path`` writes ``(state, step, history, …)`` after every
  ``checkpoint_every`` chunks as a NumPy ``.npz`` (no pickle) to a temporary file renamed into
  place, and a later :func:`run` with the same path and problem resumes from it. Step ``t``
  always uses the key ``fold_in(base, t)``, so a resumed fit equals an uninterrupted one.

:func:`scan_steps` is the same loop as one pure function (no host work), for use under
``jit``/``vmap`` (e.g. :func:`bayeslr.models.krosbl.krosbl_em`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayeslr._validation import check_int, check_real

__all__ = [
    "Tolerance",
    "Until",
    "Validation",
    "Restarts",
    "LoopResult",
    "LoopStatus",
    "run",
    "scan_steps",
    "step_key",
]


# --------------------------------------------------------------------------------------------
# rules


@dataclass(frozen=True)
class Tolerance:
    r"""Stop at the first step :math:`t \ge` ``min_steps`` with ``info[field] <= tol``.

    ``tol`` is data (a new value does not recompile); ``field`` names a scalar of ``info``
    (a relative parameter change, a gradient norm, …).
    """

    field: str
    tol: float
    min_steps: int = 1

    def __post_init__(self):
        if not isinstance(self.field, str):
            raise TypeError(f"`Tolerance.field` must be an info field name; got {self.field!r}.")
        check_real("tol", self.tol, low=0.0)
        check_int("Tolerance.min_steps", self.min_steps, minimum=0)


@dataclass(frozen=True)
class Until:
    """Stop at the first step where ``predicate(info)`` is true (a JAX boolean, traced)."""

    predicate: Callable[[Mapping[str, jax.Array]], jax.Array]

    def __post_init__(self):
        if not callable(self.predicate):
            raise TypeError(f"`until` must be a callable of info; got {self.predicate!r}.")


@dataclass(frozen=True)
class Validation:
    r"""Score the state on held-out data every ``every`` steps (between chunks, on the host).

    Args:
        score: ``score(state) -> float``; higher is better with ``mode="max"``.
        every: steps between evaluations (the chunk length is set to it).
        patience: stop after this many evaluations without improvement (``None``: never stop).
        mode: ``"max"`` or ``"min"``.
        keep_best: return the best-scoring state rather than the last.
        rel_tol: what counts as an improvement for ``patience``: a score better than the one
            at the last improvement by more than this fraction of its magnitude (0: any
            strictly better score). The best state is kept whatever the margin.
    """

    score: Callable[[Any], float]
    every: int
    patience: int | None = None
    mode: str = "max"
    keep_best: bool = True
    rel_tol: float = 0.0

    def __post_init__(self):
        check_real("Validation.rel_tol", self.rel_tol, low=0.0)
        if not callable(self.score):
            raise TypeError(f"`Validation.score` must be callable; got {self.score!r}.")
        check_int("Validation.every", self.every, minimum=1)
        if self.patience is not None:
            check_int("Validation.patience", self.patience, minimum=1)
        if self.mode not in ("max", "min"):
            raise ValueError(f"`Validation.mode` must be 'max' or 'min'; got {self.mode!r}.")

    def better(self, a: float, b: float | None) -> bool:
        if b is None:
            return True
        return a > b if self.mode == "max" else a < b

    def improved(self, a: float, b: float | None) -> bool:
        """Whether ``a`` improves on ``b`` by more than ``rel_tol`` (for ``patience``)."""
        if b is None:
            return True
        margin = self.rel_tol * abs(b)
        return a > b + margin if self.mode == "max" else a < b - margin


@dataclass(frozen=True)
class Restarts:
    r"""Several starts; the one with the lowest ``score`` is kept.

    Args:
        num: number of starts (``init`` is called with ``restart = 0 .. num - 1``).
        score: the name of an ``info`` field (its value at the last step run), or a function
            ``score(state, problem) -> scalar`` (traced). Lower is better; a non-finite score
            loses.
        screen_steps: ``None``: every start runs to the end; an int: every start runs this many
            steps, then only the best continues.
        vmap: run the starts side by side with ``jax.vmap`` (one compilation of the batched
            step); ``False`` runs them one after another through the un-batched executable
            (no extra compilation; only with ``screen_steps``).
    """

    num: int
    score: str | Callable[[Any, Any], jax.Array]
    screen_steps: int | None = None
    vmap: bool = True

    def __post_init__(self):
        check_int("restarts", self.num, minimum=1)
        if not (isinstance(self.score, str) or callable(self.score)):
            raise TypeError(
                f"`Restarts.score` must be an info field or a callable; got {self.score!r}."
            )
        if self.screen_steps is not None:
            check_int("screen_steps", self.screen_steps, minimum=1)
        elif not self.vmap and self.num > 1:
            raise ValueError(
                "`Restarts(vmap=False)` runs the starts one after another only for screening; "
                "give `screen_steps` or use vmap=True."
            )


@dataclass
class LoopStatus:
    """What a ``callback`` sees after every chunk."""

    step: int
    num_steps: int
    state: Any
    history: dict[str, np.ndarray]


@dataclass
class LoopResult:
    r"""The outcome of :func:`run`.

    Attributes:
        state: the final state (the best one under :class:`Validation` with ``keep_best``).
        history: ``{field: array (steps_run, ...)}``, one entry per step of the kept run
            (under screening: the best start's screening steps, then the continuation).
        num_steps: steps run (of the kept run).
        stop_reason: ``"max_steps"``, ``"tolerance"``, ``"until"`` or ``"patience"``.
        restart_scores: the score of every start (``None`` without :class:`Restarts`).
        best_restart: the index of the kept start.
        validation: ``{"step": (k,), "score": (k,)}`` per evaluation (empty without one),
            ``best_step`` the step of the kept state.
        seconds: wall time of the run, compilation included.
        resumed_from: the step a checkpoint resumed at (0 for a fresh run).
        chunk_seconds: wall time of every chunk of the single run (the first includes the
            compilation).
    """

    state: Any
    history: dict[str, np.ndarray]
    num_steps: int
    stop_reason: str
    restart_scores: np.ndarray | None = None
    best_restart: int = 0
    validation: dict[str, np.ndarray] = field(default_factory=dict)
    best_step: int | None = None
    seconds: float = 0.0
    resumed_from: int = 0
    chunk_seconds: list = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Whether a stop rule (not the step budget) ended the run."""
        return self.stop_reason in ("tolerance", "until")


def step_key(base: jax.Array, t) -> jax.Array:
    """The key of step ``t``: ``fold_in(base, t)`` (independent of how steps are chunked)."""
    return jax.random.fold_in(base, t)


# --------------------------------------------------------------------------------------------
# the compiled chunk


def _stop_spec(stop):
    """The static part of a stop rule (its kind and field or predicate; ``tol`` is data)."""
    if stop is None:
        return None
    if isinstance(stop, Tolerance):
        return ("tolerance", stop.field)
    if isinstance(stop, Until):
        return ("until", stop.predicate)
    raise TypeError(f"`stop` must be a Tolerance, an Until or None; got {stop!r}.")


def _stop_fn(spec):
    if spec is None:
        return None
    kind, what = spec
    if kind == "tolerance":

        def fn(info, t, hyper):
            return (info[what] <= hyper["tol"]) & (t + 1 >= hyper["min_steps"])

        return fn

    def fn(info, t, hyper):
        return jnp.asarray(what(info), bool)

    return fn


def _reason(spec) -> str:
    return spec[0]


def _finite(info, guard):
    ok = jnp.asarray(True)
    for name in guard:
        v = info[name]
        if jnp.issubdtype(jnp.result_type(v), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(v))
    return ok


def _guard_fields(info_shape: Mapping, guard) -> tuple[str, ...]:
    if guard is None:
        return tuple(
            k for k, v in info_shape.items() if jnp.issubdtype(v.dtype, jnp.inexact)
        )
    missing = [g for g in guard if g not in info_shape]
    if missing:
        raise ValueError(f"`guard` names fields {missing} that `info` does not have "
                         f"({sorted(info_shape)}).")  # fmt: skip
    return tuple(guard)


def _select(flag, new, old):
    """Per-leaf ``where(flag, new, old)``, ``flag`` broadcast from the leading axes."""

    def one(a, b):
        f = jnp.reshape(flag, flag.shape + (1,) * (a.ndim - flag.ndim))
        return jnp.where(f, a, b)

    return jax.tree.map(one, new, old)


def _chunk_impl(step, stop_spec, guard, vmapped, length, state, problem, base_keys, start, n_valid,
                hyper, stopped):  # fmt: skip
    """Up to ``length`` steps ``start .. start + n_valid - 1`` in a ``while_loop``.

    Returns ``(state, stopped, buffers, ran, bad)``: ``buffers`` the info of every step
    (``(length, ...)``; zeros where no step ran), ``ran`` whether each step ran (``(length,)``,
    or ``(length, R)`` vmapped), ``bad`` the first step index with a non-finite guard field
    (``length`` when none; per start when vmapped).
    """
    stop_fn = _stop_fn(stop_spec)

    def one(key, st):
        return step(key, st, problem)

    if vmapped:
        keys_at = jax.vmap(step_key, (0, None))
        do_step = jax.vmap(one)
    else:
        keys_at = step_key
        do_step = one
    info_shape = jax.eval_shape(do_step, keys_at(base_keys, start), state)[1]
    buffers = jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), info_shape)
    lead = stopped.shape
    ran0 = jnp.zeros((length, *lead), bool)
    bad0 = jnp.full(lead, length, jnp.int32)

    def cond(carry):
        i, _, stopped, _, _, bad = carry
        return (i < n_valid) & ~jnp.all(stopped | (bad < length))

    def body(carry):
        i, st, stopped, buf, ran, bad = carry
        t = start + i
        new, info = do_step(keys_at(base_keys, t), st)
        if vmapped:
            ok = jax.vmap(lambda inf: _finite(inf, guard))(info)
            done = (jax.vmap(lambda inf: stop_fn(inf, t, hyper))(info) if stop_fn is not None
                    else jnp.zeros(lead, bool))  # fmt: skip
            active = ~stopped & (bad == length)
            st = _select(active & ok, new, st)  # finished or failed starts stay where they are
        else:
            ok = _finite(info, guard)
            done = stop_fn(info, t, hyper) if stop_fn is not None else jnp.asarray(False)
            active = jnp.asarray(True)  # the loop condition has excluded the other cases
            st = new
        buf = jax.tree.map(lambda b, v: b.at[i].set(v), buf, info)
        ran = ran.at[i].set(active)
        bad = jnp.where(active & ~ok, i, bad)
        stopped = stopped | (active & ok & done)
        return i + 1, st, stopped, buf, ran, bad

    init = (jnp.asarray(0, jnp.int32), state, stopped, buffers, ran0, bad0)
    _, state, stopped, buffers, ran, bad = jax.lax.while_loop(cond, body, init)
    return state, stopped, buffers, ran, bad


_chunk = jax.jit(_chunk_impl, static_argnums=(0, 1, 2, 3, 4))


def _hyper(stop) -> dict:
    if isinstance(stop, Tolerance):
        return {"tol": jnp.asarray(stop.tol), "min_steps": jnp.asarray(stop.min_steps, jnp.int32)}
    return {}


def _init_one_impl(init, key, problem, restart):
    return init(key, problem, restart)


def _init_many_impl(init, keys, problem, restarts):
    return jax.vmap(init, (0, None, 0))(keys, problem, restarts)


_init_one = jax.jit(_init_one_impl, static_argnums=0)
_init_many = jax.jit(_init_many_impl, static_argnums=0)


def _base_keys(k_steps, num):
    return jax.vmap(lambda r: jax.random.fold_in(k_steps, r))(jnp.arange(num))


def _score_values(score, states, problem, last: dict, vmapped: bool):
    """Restart scores: ``last[score]`` for a field name, else ``score(state, problem)``."""
    if isinstance(score, str):
        return jnp.asarray(last[score])
    if vmapped:
        return jax.vmap(lambda st: score(st, problem))(states)
    return score(states, problem)


def _probe(step, problem, base, state, vmapped):
    def fn(k, s):
        return step(k, s, problem)

    return jax.eval_shape(jax.vmap(fn) if vmapped else fn, base, state)[1]


# --------------------------------------------------------------------------------------------
# pure driver (no host work)


def scan_steps(
    init: Callable,
    step: Callable,
    problem: Any,
    key: jax.Array,
    num_steps: int,
    *,
    stop: Tolerance | Until | None = None,
    restarts: Restarts | None = None,
    guard: Sequence[str] | None = None,
) -> tuple[Any, dict, jax.Array, jax.Array]:
    r""":func:`run` as one pure function, for use under ``jit``/``vmap``: the same keys, steps
    and stop rule, no progress bar, checkpoint or validation, and a non-finite guard field
    ends the run (the state stays at the last finite step) instead of raising.

    Returns:
        ``(state, history, num_steps_run, stopped)``; ``history`` has ``num_steps`` rows (zeros
        past ``num_steps_run``); with ``restarts`` (all to the end, vmapped) it is the best
        start's. ``stopped``: whether the stop rule ended the run.
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    spec, hyper = _stop_spec(stop), _hyper(stop)
    k_init, k_steps = jax.random.split(key)
    R = 1 if restarts is None else restarts.num
    if R == 1:
        state = init(jax.random.split(k_init, 1)[0], problem, jnp.asarray(0))
        base = _base_keys(k_steps, 1)[0]
        g = _guard_fields(_probe(step, problem, base, state, False), guard)
        state, stopped, buf, ran, _ = _chunk_impl(step, spec, g, False, num_steps, state, problem,
                                                  base, 0, num_steps, hyper, jnp.asarray(False))
        return state, buf, jnp.sum(ran), stopped
    if restarts.screen_steps is not None or not restarts.vmap:
        raise ValueError("`scan_steps` runs restarts side by side to the end only (no "
                         "`screen_steps`, vmap=True).")  # fmt: skip
    states = _init_many_impl(init, jax.random.split(k_init, R), problem, jnp.arange(R))
    base = _base_keys(k_steps, R)
    g = _guard_fields(_probe(step, problem, base, states, True), guard)
    states, stopped, buf, ran, bad = _chunk_impl(step, spec, g, True, num_steps, states, problem,
                                                 base, 0, num_steps, hyper, jnp.zeros((R,), bool))
    n_ran = jnp.sum(ran, axis=0)
    last = jax.tree.map(lambda b: b[jnp.maximum(n_ran - 1, 0), jnp.arange(R)], buf)
    sc = _score_values(restarts.score, states, problem, last, True)
    best = jnp.argmin(jnp.where(jnp.isfinite(sc) & (bad == num_steps), sc, jnp.inf))
    state = jax.tree.map(lambda a: a[best], states)
    return state, jax.tree.map(lambda b: b[:, best], buf), n_ran[best], stopped[best]


# --------------------------------------------------------------------------------------------
# checkpoints (NumPy .npz, no pickle)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _save_checkpoint(path: Path, meta: dict, trees: dict, arrays: dict) -> None:
    """Write the pytrees ``trees``, the plain ``arrays`` and the JSON-able ``meta`` to ``path``
    atomically (a temporary file in the same folder, then ``os.replace``)."""
    out, meta = {}, {**meta, "trees": {}}
    for name, tree in trees.items():
        leaves, treedef = jax.tree.flatten(tree)
        kinds = []
        for i, leaf in enumerate(leaves):
            if _is_key(leaf):
                kinds.append(str(jax.random.key_impl(leaf)))
                leaf = jax.random.key_data(leaf)
            else:
                kinds.append("")
            out[f"tree/{name}/{i}"] = np.asarray(leaf)
        meta["trees"][name] = {"treedef": str(treedef), "keys": kinds}
    for name, a in arrays.items():
        out[f"array/{name}"] = np.asarray(a)
    out["meta"] = np.asarray(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path, templates: dict) -> tuple[dict, dict, dict]:
    """``(meta, trees, arrays)`` of a checkpoint whose trees match ``templates`` (structure,
    shapes and dtypes; a tree the file lacks is left out of ``trees``)."""

    def different(what):
        return ValueError(f"`checkpoint` {str(path)!r} was written by a different fit ({what}); "
                          "remove it or pass another path.")  # fmt: skip

    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"`checkpoint` {str(path)!r} is not a bayeslr checkpoint: {err}") from None
    with z:
        if "meta" not in z.files:
            raise ValueError(f"`checkpoint` {str(path)!r} is not a bayeslr checkpoint.")
        meta = json.loads(str(z["meta"]))
        trees = {}
        for name, template in templates.items():
            info = meta["trees"].get(name)
            if info is None:
                continue
            leaves, treedef = jax.tree.flatten(template)
            if info["treedef"] != str(treedef):
                raise different(f"its {name} has another structure")
            new = []
            for i, (ref, kind) in enumerate(zip(leaves, info["keys"], strict=True)):
                a = z[f"tree/{name}/{i}"]
                ref = np.asarray(jax.random.key_data(ref) if _is_key(ref) else ref)
                if a.shape != ref.shape or a.dtype != ref.dtype:
                    raise different(f"{name} leaf {i} is {a.shape} {a.dtype}, this fit's is "
                                    f"{ref.shape} {ref.dtype}")  # fmt: skip
                leaf = jnp.asarray(a)
                new.append(jax.random.wrap_key_data(leaf, impl=kind) if kind else leaf)
            trees[name] = jax.tree.unflatten(treedef, new)
        arrays = {f[6:]: z[f] for f in z.files if f.startswith("array/")}
    return meta, trees, arrays


# --------------------------------------------------------------------------------------------
# the host driver


def _fmt(v) -> str:
    a = np.asarray(v, np.float64)
    return f"{float(np.mean(a)):.4g}"


def _concat(rows: list[dict]) -> dict[str, np.ndarray]:
    if not rows:
        return {}
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


class _Runner:
    """The pieces one :func:`run` shares: the compiled chunk, the bar, the error message."""

    def __init__(self, step, problem, stop, guard, chunk, num_steps, desc, fields, bar, hint):
        self.step, self.problem, self.stop = step, problem, stop
        self.spec, self.hyper = _stop_spec(stop), _hyper(stop)
        self.guard, self.chunk, self.num_steps = guard, chunk, num_steps
        self.desc, self.fields, self.bar, self.hint = desc, tuple(fields), bar, hint
        self.chunk_seconds: list[float] = []

    def chunk_call(self, state, base, start, n, stopped, vmapped):
        out = _chunk(self.step, self.spec, self.guard, vmapped, self.chunk, state, self.problem,
                     base, jnp.asarray(start, jnp.int32), jnp.asarray(n, jnp.int32), self.hyper,
                     stopped)  # fmt: skip
        state, stopped, buf, ran, bad = out
        return state, stopped, jax.tree.map(np.asarray, buf), np.asarray(ran), np.asarray(bad)

    def fail(self, t: int, row: Mapping):
        bad = [k for k in self.guard if not np.all(np.isfinite(np.asarray(row[k])))]
        name = bad[0] if bad else self.guard[0]
        raise FloatingPointError(
            f"{self.desc}: `{name}` became non-finite at step {t + 1} of {self.num_steps}; the "
            f"fit stopped there. {self.hint}".rstrip()
        )

    def show(self, n: int, last: Mapping | None, extra: Mapping | None = None):
        self.bar.update(n)
        post = {} if last is None else {k: _fmt(last[k]) for k in self.fields}
        post.update(extra or {})
        if post:
            self.bar.set_postfix(post)

    def reason(self) -> str:
        return _reason(self.spec) if self.spec is not None else "max_steps"


def _run_batch(r: _Runner, states, base, R: int, n_total: int):
    """Every start side by side for ``n_total`` steps (vmapped chunks). Returns
    ``(states, rows (steps, R, ...), n_ran (R,), stopped (R,), bad (R,): first bad step or -1)``."""
    stopped = jnp.zeros((R,), bool)
    rows, rans, done = [], [], 0
    bad = np.full(R, -1)
    while done < n_total and not np.all(np.asarray(stopped) | (bad >= 0)):
        n = min(r.chunk, n_total - done)
        states, stopped, buf, ran, b = r.chunk_call(states, base, done, n, stopped, True)
        bad = np.where((bad < 0) & (b < r.chunk), done + b, bad)
        rows.append({k: v[:n] for k, v in buf.items()})
        rans.append(ran[:n])
        done += n
        last = {k: v[n - 1] for k, v in buf.items()}
        r.show(n * R, last)
    return states, _concat(rows), np.concatenate(rans).sum(axis=0), np.asarray(stopped), bad


def _run_one(r: _Runner, state, base, start: int, stop_at: int, *, raise_on_bad: bool = True,
             after_chunk: Callable | None = None):  # fmt: skip
    """One start from step ``start`` to ``stop_at``; ``after_chunk(step, state, rows,
    stopped)`` runs after every chunk and may return True to end the run. Returns
    ``(state, rows, steps_run, stopped, bad_step or None)``."""
    rows, t, stopped = [], start, False
    while t < stop_at and not stopped:
        n = min(r.chunk, stop_at - t)
        t0 = time.perf_counter()
        new, stp, buf, ran, b = r.chunk_call(state, base, t, n, jnp.asarray(False), False)
        r.chunk_seconds.append(time.perf_counter() - t0)
        k = int(ran.sum())
        if int(b) < r.chunk:
            if raise_on_bad:
                r.fail(t + int(b), {f: v[int(b)] for f, v in buf.items()})
            rows.append({f: v[: int(b) + 1] for f, v in buf.items()})
            return state, _concat(rows), t - start + int(b), False, t + int(b)
        state, stopped = new, bool(stp)
        rows.append({f: v[:k] for f, v in buf.items()})
        t += k
        r.show(k, {f: v[k - 1] for f, v in buf.items()} if k else None)
        if after_chunk is not None and after_chunk(t, state, rows, stopped):
            break
    return state, _concat(rows), t - start, stopped, None


def _pick(states, i):
    return jax.tree.map(lambda a: a[i], states)


def _best(r, restarts, states, rows, n_ran, bad, vmapped_states=True):
    """The index of the best start (lowest finite score); raises when every start failed."""
    R = len(n_ran)
    last = {k: v[np.maximum(n_ran - 1, 0), np.arange(R)] for k, v in rows.items()}
    sc = np.asarray(_score_values(restarts.score, states, r.problem, last, vmapped_states),
                    np.float64)  # fmt: skip
    sc = np.where(np.isfinite(sc) & (bad < 0), sc, np.inf)
    if not np.any(np.isfinite(sc)):
        i = int(np.argmax(bad >= 0))
        t = int(bad[i])
        r.fail(t, {k: v[min(t, len(v) - 1), i] for k, v in rows.items()})
    return int(np.argmin(sc)), sc


def run(
    init: Callable,
    step: Callable,
    problem: Any,
    key: jax.Array,
    num_steps: int,
    *,
    stop: Tolerance | Until | None = None,
    restarts: Restarts | None = None,
    validation: Validation | None = None,
    chunk_size: int | None = None,
    guard: Sequence[str] | None = None,
    progress: bool = True,
    progress_fields: Sequence[str] = (),
    desc: str = "fit",
    hint: str = "",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    callback: Callable[[LoopStatus], None] | None = None,
) -> LoopResult:
    r"""Run ``init``/``step`` for up to ``num_steps`` steps (module docstring).

    Args:
        init: ``init(key, problem, restart) -> state``, jittable (``restart`` is traced).
        step: ``step(key, state, problem) -> (state, info)``, pure and jittable. Pass a
            function defined once (module level), not a new closure per fit: it is a static
            argument of the compiled chunk, so a new function compiles anew.
        problem: the data and data-like settings, a pytree (static settings in its structure).
        key: a ``jax.random.PRNGKey``; split into the ``init`` keys and the step keys.
        num_steps: the step budget (>= 1).
        stop: :class:`Tolerance` or :class:`Until`, checked inside the compiled loop.
        restarts: :class:`Restarts`.
        validation: :class:`Validation` (the chunk length becomes its ``every``).
        chunk_size: steps per compiled chunk; default all steps in one chunk when nothing happens
            between chunks (no bar, checkpoint or callback), else ``ceil(num_steps / 20)``.
        guard: the ``info`` fields that must stay finite (default: every floating field).
        progress: show a tqdm bar; ``progress_fields`` are the ``info`` fields in its postfix.
        desc: the fit's name, for the bar and the error message.
        hint: advice appended to the non-finite error (e.g. "Lower `learning_rate`.").
        checkpoint: a file; written after every ``checkpoint_every`` chunks of the (final)
            single run and resumed from when it exists (it must come from the same problem
            structure). Restarts that all run to the end side by side are not checkpointed.
        callback: ``callback(LoopStatus)`` after every chunk of the single run, after the
            checkpoint is written; an exception it raises ends the fit.

    Returns:
        :class:`LoopResult`.

    Raises:
        FloatingPointError: a guard field became NaN/inf (in every start, with restarts).
        ValueError: bad settings, or a checkpoint from a different fit.
    """
    t0 = time.perf_counter()
    num_steps = check_int("num_steps", num_steps, minimum=1)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable; got {callback!r}.")
    if restarts is not None and not isinstance(restarts, Restarts):
        raise TypeError(f"`restarts` must be a Restarts; got {restarts!r}.")
    if validation is not None and not isinstance(validation, Validation):
        raise TypeError(f"`validation` must be a Validation; got {validation!r}.")
    R = 1 if restarts is None else restarts.num
    screen = None if R == 1 else restarts.screen_steps
    screen = None if screen is None else min(screen, num_steps)
    vmapped = R > 1 and restarts.vmap
    if R > 1 and screen is None and checkpoint is not None:
        raise ValueError("`checkpoint` needs a single run to resume: with restarts that all run "
                         "to the end, give `screen_steps` or no checkpoint.")  # fmt: skip
    if validation is not None:
        chunk = validation.every
    elif chunk_size is not None:
        chunk = check_int("chunk_size", chunk_size, minimum=1)
    elif progress or checkpoint is not None or callback is not None:
        chunk = math.ceil(num_steps / min(num_steps, 20))
    else:
        chunk = num_steps
    chunk = min(chunk, num_steps)
    k_init, k_steps = jax.random.split(key)
    base = _base_keys(k_steps, R)
    init_keys = jax.random.split(k_init, R)
    if vmapped:
        states = _init_many(init, init_keys, problem, jnp.arange(R))
        probe = _probe(step, problem, base, states, True)
    else:
        states = [_init_one(init, init_keys[i], problem, jnp.asarray(i)) for i in range(R)]
        probe = _probe(step, problem, base[0], states[0], False)
    g = _guard_fields(probe, guard)
    missing = [f for f in progress_fields if f not in probe]
    if missing:
        raise ValueError(f"`progress_fields` {missing} are not info fields ({sorted(probe)}).")
    if isinstance(stop, Tolerance) and stop.field not in probe:
        raise ValueError(f"`Tolerance.field` {stop.field!r} is not an info field "
                         f"({sorted(probe)}).")  # fmt: skip
    if isinstance(restarts, Restarts) and isinstance(restarts.score, str) and \
            restarts.score not in probe:  # fmt: skip
        raise ValueError(f"`Restarts.score` {restarts.score!r} is not an info field "
                         f"({sorted(probe)}).")  # fmt: skip
    total = num_steps if screen is None else num_steps + (R - 1) * screen
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not progress, leave=True)
    r = _Runner(step, problem, stop, g, chunk, num_steps, desc, progress_fields, bar, hint)
    try:
        if R > 1 and screen is None:
            states, rows, n_ran, stopped, bad = _run_batch(r, states, base, R, num_steps)
            best, sc = _best(r, restarts, states, rows, n_ran, bad)
            hist = {k: v[: n_ran[best], best] for k, v in rows.items()}
            reason = r.reason() if stopped[best] else "max_steps"
            return LoopResult(_pick(states, best), hist, int(n_ran[best]), reason, sc, best,
                              seconds=time.perf_counter() - t0)  # fmt: skip
        path = None if checkpoint is None else Path(checkpoint)
        template = _pick(states, 0) if vmapped else states[0]
        if path is not None and path.exists():
            return _resume(r, path, template, base, validation, checkpoint_every, callback, t0,
                           total)  # fmt: skip
        sc, best, prefix, start = None, 0, {}, 0
        if R > 1:  # screen every start, continue the best
            if vmapped:
                states, rows, n_ran, stopped, bad = _run_batch(r, states, base, R, screen)
                best, sc = _best(r, restarts, states, rows, n_ran, bad)
                state, prefix = _pick(states, best), {k: v[: n_ran[best], best]
                                                      for k, v in rows.items()}  # fmt: skip
                start, done = int(n_ran[best]), bool(stopped[best])
            else:
                runs = [_run_one(r, s, base[i], 0, screen, raise_on_bad=False)
                        for i, s in enumerate(states)]  # fmt: skip
                n_ran = np.asarray([x[2] for x in runs])
                bad = np.asarray([-1 if x[4] is None else x[4] for x in runs])
                width = max(len(next(iter(x[1].values()), [])) for x in runs)
                rows = {k: np.stack([_pad(x[1][k], width) for x in runs], axis=1)
                        for k in runs[0][1]}  # fmt: skip
                stacked = jax.tree.map(lambda *a: jnp.stack(a), *[x[0] for x in runs])
                best, sc = _best(r, restarts, stacked, rows, n_ran, bad)
                state, prefix, start, done, _ = runs[best]
            if done:
                return LoopResult(state, prefix, start, r.reason(), sc, best,
                                  seconds=time.perf_counter() - t0)  # fmt: skip
        else:
            state = states[0]
        return _single(r, state, base[best], start, prefix, sc, best, validation, path,
                       checkpoint_every, callback, t0, resumed=0, vstate=None)  # fmt: skip
    finally:
        bar.close()


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out


def _single(r, state, base, start, prefix, sc, best, validation, path, every, callback, t0, *,
            resumed, vstate):  # fmt: skip
    """The single run from ``start``, with validation, checkpoints and the callback."""
    v = vstate or {"steps": [], "scores": [], "best": None, "best_step": None, "since": 0,
                   "mark": None, "best_state": None, "stopped_by": None}  # fmt: skip
    v.setdefault("mark", v["best"])  # a checkpoint written before rel_tol existed
    hist_rows = [prefix] if prefix else []
    count = [0]

    def after_chunk(t, st, rows, stopped):
        count[0] += 1
        end = False
        if validation is not None:
            s = float(validation.score(st))
            v["steps"].append(int(t))
            v["scores"].append(s)
            if validation.better(s, v["best"]):
                v.update(best=s, best_step=int(t))
                if validation.keep_best:
                    v["best_state"] = jax.tree.map(np.asarray, st)
            if validation.improved(s, v["mark"]):
                v.update(mark=s, since=0)
            else:
                v["since"] += 1
            last = {f: a[-1] for f, a in rows[-1].items() if len(a)}
            r.show(0, last if len(last) == len(rows[-1]) else None, {"val": f"{s:.4g}"})
            if validation.patience is not None and v["since"] >= validation.patience:
                v["stopped_by"] = "patience"
                end = True
        hist = _concat(hist_rows + rows)
        if path is not None and (count[0] % every == 0 or end or stopped or t >= r.num_steps):
            _write(path, st, hist, t, sc, best, v)
        if callback is not None:
            callback(LoopStatus(int(t), r.num_steps, st, hist))
        return end

    state, rows, _, stopped, _ = _run_one(r, state, base, start, r.num_steps,
                                          after_chunk=after_chunk)  # fmt: skip
    hist = _concat(hist_rows + ([rows] if rows else []))
    reason = v["stopped_by"] or (r.reason() if stopped else "max_steps")
    vinfo, best_step = {}, None
    if validation is not None:
        vinfo = {"step": np.asarray(v["steps"], np.int64), "score": np.asarray(v["scores"])}
        best_step = v["best_step"]
        if validation.keep_best and v["best_state"] is not None:
            state = jax.tree.map(jnp.asarray, v["best_state"])
    n_total = len(next(iter(hist.values()))) if hist else 0
    return LoopResult(state, hist, n_total, reason, sc, best, vinfo, best_step,
                      time.perf_counter() - t0, resumed, list(r.chunk_seconds))  # fmt: skip


def _write(path, state, hist, t, sc, best, v):
    trees = {"state": state}
    if v["best_state"] is not None:
        trees["best"] = jax.tree.map(jnp.asarray, v["best_state"])
    meta = {"step": int(t), "best_restart": int(best),
            "restart_scores": None if sc is None else [float(x) for x in sc],
            "validation": {k: v[k] for k in ("steps", "scores", "best", "best_step", "since",
                                             "mark")},
            "history_fields": list(hist)}  # fmt: skip
    _save_checkpoint(path, meta, trees, {f"history/{k}": a for k, a in hist.items()})


def _resume(r, path, template, base, validation, every, callback, t0, total):
    meta, trees, arrays = _load_checkpoint(path, {"state": template, "best": template})
    if "state" not in trees:
        raise ValueError(f"`checkpoint` {str(path)!r} holds no state; remove it.")
    t = int(meta["step"])
    hist = {k: arrays[f"history/{k}"] for k in meta["history_fields"]}
    sc = None if meta["restart_scores"] is None else np.asarray(meta["restart_scores"])
    best = int(meta["best_restart"])
    v = {**meta["validation"], "best_state": None, "stopped_by": None}
    if "best" in trees:
        v["best_state"] = jax.tree.map(np.asarray, trees["best"])
    r.bar.update(t + (total - r.num_steps))
    return _single(r, trees["state"], base[best], t, hist, sc, best, validation, path, every,
                   callback, t0, resumed=t, vstate=v)  # fmt: skip
