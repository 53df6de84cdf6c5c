"""The shared training driver: chunks, stop rules, restarts, NaN guard, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeslr.infer import loop
from tests.conftest import compile_records


def init(key, problem, restart):
    # restart 0 starts at zero, the others at a random point
    x0 = 3.0 * jax.random.normal(key, problem["target"].shape)
    return {"x": jnp.where(restart == 0, 0.0, x0), "t": jnp.zeros((), jnp.int32)}


def step(key, state, problem):
    x = state["x"]
    new = x - problem["lr"] * (x - problem["target"]) + problem["noise"] * jax.random.normal(
        key, x.shape
    )
    loss = 0.5 * jnp.sum((new - problem["target"]) ** 2)
    change = jnp.linalg.norm(new - x) / (jnp.linalg.norm(x) + 1e-12)
    return {"x": new, "t": state["t"] + 1}, {"loss": loss, "change": change}


def bad_step(key, state, problem):
    new, info = step(key, state, problem)
    nan = jnp.where(state["t"] >= 6, jnp.nan, 1.0)
    return new, {**info, "loss": info["loss"] * nan}


def problem(lr=0.3, noise=0.01, n=4):
    return {"target": jnp.arange(1.0, n + 1.0), "lr": jnp.asarray(lr), "noise": jnp.asarray(noise)}


KEY = jax.random.PRNGKey(3)


def test_chunking_does_not_change_the_run():
    p = problem()
    one = loop.run(init, step, p, KEY, 50, progress=False)
    many = loop.run(init, step, p, KEY, 50, chunk_size=7, progress=False)
    st, hist, n, stopped = jax.jit(
        lambda p: loop.scan_steps(init, step, p, KEY, 50)
    )(p)
    assert one.num_steps == many.num_steps == int(n) == 50 and not bool(stopped)
    np.testing.assert_array_equal(one.history["loss"], many.history["loss"])
    np.testing.assert_array_equal(one.history["loss"], np.asarray(hist["loss"]))
    np.testing.assert_array_equal(np.asarray(one.state["x"]), np.asarray(st["x"]))
    assert one.stop_reason == "max_steps" and not one.converged


def test_tolerance_stops_inside_the_chunk_and_tol_is_data():
    p = problem(noise=0.0)
    res = loop.run(init, step, p, KEY, 500, stop=loop.Tolerance("change", 1e-3), chunk_size=100,
                   progress=False)  # fmt: skip
    ch = res.history["change"]
    assert res.stop_reason == "tolerance" and res.converged
    assert ch[-1] <= 1e-3 and np.all(ch[:-1] > 1e-3)
    assert res.num_steps == len(ch) < 100
    # another tolerance and another seed: the same executable
    again, compiled = compile_records(
        loop.run, init, step, problem(noise=0.0, lr=0.2), jax.random.PRNGKey(9), 500,
        stop=loop.Tolerance("change", 1e-5), chunk_size=100, progress=False,
    )
    assert not [c for c in compiled if "_chunk_impl" in c], compiled
    assert again.history["change"][-1] <= 1e-5


def test_until_rule():
    res = loop.run(init, step, problem(noise=0.0), KEY, 200,
                   stop=loop.Until(lambda info: info["loss"] < 0.1), progress=False)  # fmt: skip
    assert res.stop_reason == "until" and res.history["loss"][-1] < 0.1
    assert np.all(res.history["loss"][:-1] >= 0.1)


def test_nan_guard_names_the_field_and_the_step():
    with pytest.raises(FloatingPointError, match=r"toy: `loss` became non-finite at step 7 of 40"):
        loop.run(init, bad_step, problem(), KEY, 40, chunk_size=4, desc="toy", progress=False,
                 hint="Lower `lr`.")  # fmt: skip
    with pytest.raises(FloatingPointError, match="Lower `lr`"):
        loop.run(init, bad_step, problem(), KEY, 40, desc="toy", progress=False, hint="Lower `lr`.")
    # a field left out of the guard may be NaN
    res = loop.run(init, bad_step, problem(), KEY, 10, guard=("change",), progress=False)
    assert np.isnan(res.history["loss"][-1])


def test_restarts_vmapped_and_screened():
    p = problem(noise=0.0, lr=0.05)
    full = loop.run(init, step, p, KEY, 30, restarts=loop.Restarts(4, score="loss"),
                    progress=False)  # fmt: skip
    assert full.restart_scores.shape == (4,)
    assert full.best_restart == int(np.argmin(full.restart_scores))
    assert full.history["loss"][-1] == pytest.approx(full.restart_scores[full.best_restart])
    # callable score on the state
    by_state = loop.run(init, step, p, KEY, 30, progress=False, restarts=loop.Restarts(
        4, score=lambda s, prob: jnp.sum((s["x"] - prob["target"]) ** 2)))  # fmt: skip
    assert by_state.best_restart == full.best_restart
    # screen-then-continue, vmapped or one after another: the same choice and the same run
    kw = dict(progress=False, chunk_size=4)
    a = loop.run(init, step, p, KEY, 30, restarts=loop.Restarts(4, "loss", screen_steps=5), **kw)
    b = loop.run(init, step, p, KEY, 30,
                 restarts=loop.Restarts(4, "loss", screen_steps=5, vmap=False), **kw)  # fmt: skip
    assert a.best_restart == b.best_restart and a.num_steps == b.num_steps == 30
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(a.restart_scores, b.restart_scores, rtol=1e-6)
    # a restart that goes NaN loses instead of failing the fit
    res = loop.run(init, bad_step, problem(), KEY, 4, restarts=loop.Restarts(3, "loss"),
                   progress=False)  # fmt: skip
    assert np.all(np.isfinite(res.restart_scores))
    with pytest.raises(FloatingPointError, match="non-finite at step 7"):
        loop.run(init, bad_step, problem(), KEY, 12, restarts=loop.Restarts(3, "loss"),
                 progress=False)  # fmt: skip


class Crash(RuntimeError):
    pass


def test_checkpoint_kill_resume_equals_uninterrupted(tmp_path):
    p = problem()
    full = loop.run(init, step, p, KEY, 40, chunk_size=8, progress=False)
    path = tmp_path / "fit.npz"

    def crash(status):
        if status.step >= 16:
            raise Crash

    with pytest.raises(Crash):
        loop.run(init, step, p, KEY, 40, chunk_size=8, progress=False, checkpoint=path,
                 callback=crash)  # fmt: skip
    assert path.exists() and not list(tmp_path.glob(".*.tmp"))
    resumed = loop.run(init, step, p, KEY, 40, chunk_size=8, progress=False, checkpoint=path)
    assert resumed.resumed_from == 16 and resumed.num_steps == 40
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])
    np.testing.assert_array_equal(np.asarray(resumed.state["x"]), np.asarray(full.state["x"]))
    # a finished checkpoint resumes to the same result without running
    again = loop.run(init, step, p, KEY, 40, chunk_size=8, progress=False, checkpoint=path)
    np.testing.assert_array_equal(again.history["loss"], full.history["loss"])
    # a checkpoint of another problem is refused by name
    with pytest.raises(ValueError, match="different fit"):
        loop.run(init, step, problem(n=5), KEY, 40, chunk_size=8, progress=False,
                 checkpoint=path)  # fmt: skip
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a bayeslr checkpoint"):
        loop.run(init, step, p, KEY, 4, progress=False, checkpoint=tmp_path / "junk.npz")


def test_checkpoint_with_screened_restarts_and_validation(tmp_path):
    p = problem(noise=0.05, lr=0.1)
    seen = []

    def score(state):
        seen.append(1)
        return -float(jnp.sum((state["x"] - p["target"]) ** 2))

    kw = dict(progress=False, restarts=loop.Restarts(3, "loss", screen_steps=4),
              validation=loop.Validation(score, every=5))  # fmt: skip
    full = loop.run(init, step, p, KEY, 30, **kw)
    assert full.validation["step"].tolist() == [9, 14, 19, 24, 29, 30]
    assert full.best_step == full.validation["step"][np.argmax(full.validation["score"])]
    path = tmp_path / "ck.npz"
    with pytest.raises(Crash):
        loop.run(init, step, p, KEY, 30, checkpoint=path,
                 callback=lambda s: (_ for _ in ()).throw(Crash) if s.step >= 19 else None, **kw)
    resumed = loop.run(init, step, p, KEY, 30, checkpoint=path, **kw)
    assert resumed.best_restart == full.best_restart
    np.testing.assert_array_equal(resumed.validation["score"], full.validation["score"])
    np.testing.assert_array_equal(np.asarray(resumed.state["x"]), np.asarray(full.state["x"]))


def test_validation_patience_keeps_the_best_state():
    p = problem(noise=0.0)
    scores = iter([1.0, 3.0, 2.0, 2.5, 0.0, 9.0])
    res = loop.run(init, step, p, KEY, 60, progress=False,
                   validation=loop.Validation(lambda s: next(scores), every=10, patience=2))
    assert res.stop_reason == "patience" and res.best_step == 20
    assert res.validation["score"].tolist() == [1.0, 3.0, 2.0, 2.5]
    ref = loop.run(init, step, p, KEY, 20, progress=False)
    np.testing.assert_array_equal(np.asarray(res.state["x"]), np.asarray(ref.state["x"]))


def test_patience_counts_improvements_above_rel_tol_and_keeps_the_best():
    # 3.0 -> 3.1 -> 3.12 -> 3.13: each better, none by 5 %: patience 2 stops at the third
    # score, and the kept state is still the best one (step 40, not the last improvement mark)
    p = problem(noise=0.0)
    scores = iter([3.0, 3.1, 3.12, 3.13, 9.0])
    res = loop.run(init, step, p, KEY, 60, progress=False,
                   validation=loop.Validation(lambda s: next(scores), every=10, patience=3,
                                              rel_tol=0.05))  # fmt: skip
    assert res.stop_reason == "patience" and res.best_step == 40
    assert res.validation["score"].tolist() == [3.0, 3.1, 3.12, 3.13]
    with pytest.raises(ValueError, match="rel_tol"):
        loop.Validation(lambda s: 0.0, every=1, rel_tol=-1.0)


def test_bad_settings_are_named():
    p = problem()
    with pytest.raises(ValueError, match="`num_steps`"):
        loop.run(init, step, p, KEY, 0, progress=False)
    with pytest.raises(ValueError, match=r"Tolerance\.field"):
        loop.run(init, step, p, KEY, 5, stop=loop.Tolerance("nope", 1e-3), progress=False)
    with pytest.raises(ValueError, match="progress_fields"):
        loop.run(init, step, p, KEY, 5, progress_fields=("nope",), progress=False)
    with pytest.raises(ValueError, match="`guard`"):
        loop.run(init, step, p, KEY, 5, guard=("nope",), progress=False)
    with pytest.raises(ValueError, match="checkpoint"):
        loop.run(init, step, p, KEY, 5, restarts=loop.Restarts(2, "loss"), checkpoint="x.npz",
                 progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="`tol`"):
        loop.Tolerance("loss", -1.0)
