r"""Batch inference from model specs: the engine behind ``bayeslr run``.

A **spec** is a TOML file describing one job, or a grid of jobs (a sweep)::

    [job]
    model = "ssvi"            # funbat | krosbl | gphm | ssvi | multvae
    name = "ssvi-digits"      # optional; default: the file name
    seed = 0

    [data]                    # what to fit: a bundled loader, a generator or a local path
    loader = "digits"

    [model]                   # keyword arguments of the model class: SSVI(...), GPSolver(...)
    density = 0.1
    epochs = 50

    [output]
    plots = true              # the model's standard figures as PNG

    [sweep]                   # optional: the Cartesian product of these lists, one job each
    "model.density" = [0.05, 0.1]
    "job.seed" = [0, 1]

:func:`load_specs` reads and validates every file before any work and raises
:class:`SpecError` listing every problem (file, key, what was expected, what was given);
:func:`expand` turns a spec into jobs with stable ids; :func:`run_job` fits one job and writes,
in ``<out>/<job id>/``: ``posterior.nc`` (the ArviZ ``DataTree``), ``metrics.json``, ``job.log``
and PNG plots. Every file is written to a temporary name and renamed, and ``metrics.json`` is
written last: a job directory without it is unfinished and is redone on the next run; one with
it is skipped unless ``force``. :func:`run_jobs` runs jobs serially, in ``jobs`` processes or on
a Dask cluster (``scheduler=``) with the same outputs.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import json
import logging
import os
import re
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SpecError", "Job", "load_specs", "expand", "run_job", "run_jobs", "MODELS",
           "shipped_specs"]  # fmt: skip

TABLES = ("job", "data", "model", "output", "sweep")
# allowed keys: key -> (type or tuple of types, required)
JOB_KEYS = {"model": (str, True), "name": (str, False), "seed": (int, False),
            "description": (str, False)}  # fmt: skip
OUTPUT_KEYS = {"plots": (bool, False), "netcdf": (bool, False)}


class SpecError(ValueError):
    """One or more problems in the specs; ``problems`` lists ``"file: key: message"`` lines."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Job:
    """One fit: the spec's tables with a sweep point applied, and where it came from."""

    id: str
    model: str
    seed: int
    data: dict
    model_kwargs: dict
    output: dict
    source: str
    sweep_point: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "model": self.model, "seed": self.seed, "data": self.data,
                "model_kwargs": self.model_kwargs, "output": self.output,
                "source": self.source, "sweep_point": self.sweep_point}  # fmt: skip


# --------------------------------------------------------------------------------------------
# the five models: data keys, constructors, runners


@dataclass
class JobData:
    """What a model's reader makes of a job's ``[data]``: the arguments of the estimator's
    ``fit``, the held-out data for ``post.score`` (``None`` where a model has none), and the
    model's own metrics and figures of the fitted posterior."""

    fit: tuple
    evaluate: Callable[[Any], tuple[dict, dict]]  # posterior -> (metrics, {name: figure})
    test: tuple | None = None
    fit_kwargs: dict = field(default_factory=dict)


@dataclass
class ModelEntry:
    cls: Callable[[], type]  # lazy: importing a model imports JAX
    data_keys: dict  # key -> (type or tuple of types, required)
    check_data: Callable[[dict], list[str]]
    read: Callable[[Job], JobData]
    seeded: str | None = "seed"  # the constructor keyword that takes job.seed


def _run_model(job: Job) -> tuple[Any, dict, dict]:
    """The one runner: read the data, ``fit``, the model's metrics, and ``test_lpd`` (the
    held-out log predictive density ``post.score``, nats) where the model has held-out data."""
    entry = MODELS[job.model]
    data = entry.read(job)
    post = _construct(job.model, entry, job.data, job.model_kwargs).fit(*data.fit,
                                                                         **data.fit_kwargs)
    metrics, figs = data.evaluate(post)
    if data.test is not None:
        metrics["test_lpd"] = float(post.score(*data.test))
    return post, metrics, figs


def _choices(key: str, value, allowed) -> list[str]:
    return [] if value in allowed else [f"data.{key}: expected one of {sorted(allowed)}; got "
                                        f"{value!r}"]  # fmt: skip


def _path_or_loader(d: dict, loaders) -> list[str]:
    if ("loader" in d) == ("path" in d):
        return ["data: give exactly one of `loader` (a bundled data set) or `path` (a local file)"]
    if "loader" in d:
        return _choices("loader", d["loader"], loaders)
    return [] if Path(d["path"]).expanduser().is_file() else [
        f"data.path: no file at {d['path']!r}"]  # fmt: skip


# ---- SSVI


def _ssvi_check(d):
    from bayeslr.datasets import BNN_DATASETS

    return _choices("loader", d.get("loader"), BNN_DATASETS)


def _ssvi_read(job: Job) -> JobData:
    from bayeslr.datasets import load_bnn_dataset

    d = load_bnn_dataset(job.data["loader"], float(job.data.get("test_size", 0.2)), job.seed)
    return JobData(fit=(d.x_train, d.y_train), test=(d.x_test, d.y_test),
                   evaluate=lambda post: _ssvi_evaluate(post, d))  # fmt: skip


def _ssvi_evaluate(post, d):
    from bayeslr.metrics import (
        accuracy,
        categorical_nll,
        debiased_calibration_error,
        expected_calibration_error,
    )

    pred = post.predict_summary(d.x_test)
    figs = {}
    if d.task == "classification":
        p = pred["probs"]
        metrics = {"accuracy": accuracy(p, d.y_test), "nll": categorical_nll(p, d.y_test),
                   "ece": expected_calibration_error(p, d.y_test),
                   "debiased_l2_ce": debiased_calibration_error(p, d.y_test)}  # fmt: skip
        figs["reliability"] = lambda ax: _reliability(ax, p, d.y_test)
    else:
        err = pred["mean"] - d.y_test
        metrics = {"rmse": float(np.sqrt(np.mean(err**2))),
                   "nlpd": float(-np.mean(_normal_logpdf(d.y_test, pred["mean"], pred["sd"])))}
        figs["predicted_vs_true"] = lambda ax: _scatter(ax, d.y_test, pred["mean"], pred["sd"])
    metrics.update(density=post.density, train_flops=post.extra["flops"]["total"])
    return metrics, figs


# ---- Mult-VAE

MULTVAE_LOADERS = ("movielens-small", "ml-100k")


def _multvae_check(d):
    return _path_or_loader(d, MULTVAE_LOADERS)


def _multvae_read(job: Job) -> JobData:
    from bayeslr import datasets as ds

    if "path" in job.data:
        ratings = ds.load_movielens_ratings(Path(job.data["path"]).expanduser())
    else:
        ratings = {"movielens-small": ds.load_movielens_small,
                   "ml-100k": ds.load_ml100k}[job.data["loader"]]()  # fmt: skip
    clicks = ds.binarize(ratings, min_rating=float(job.data.get("min_rating", 4.0)))
    s = ds.strong_generalization_split(clicks, int(job.data.get("n_val", 100)),
                                       int(job.data.get("n_test", 100)), seed=job.seed)  # fmt: skip
    return JobData(fit=(s.train,), fit_kwargs={"validation": (s.val_in, s.val_out)},
                   test=(s.test_in, s.test_out),
                   evaluate=lambda post: _multvae_evaluate(post, s))  # fmt: skip


def _multvae_evaluate(post, s):
    from bayeslr.metrics import ndcg_at_k, recall_at_k

    scores = post.scores(s.test_in)
    kw = dict(exclude=s.test_in)
    metrics = {"ndcg100": ndcg_at_k(scores, s.test_out, 100, **kw),
               "recall20": recall_at_k(scores, s.test_out, 20, **kw),
               "recall50": recall_at_k(scores, s.test_out, 50, **kw),
               "best_epoch": int(post.extra["best_epoch"]) + 1}  # fmt: skip
    val = post.extra["val_ndcg"]
    figs = {"val_ndcg": lambda ax: (ax.plot(np.arange(1, len(val) + 1), val),
                                    ax.set(xlabel="epoch", ylabel="validation NDCG@100"))}
    return metrics, figs


# ---- GP-HM


def _gphm_check(d):
    from bayeslr.datasets import list_pde_problems

    return _choices("problem", d.get("problem"), list_pde_problems())


def _gphm_read(job: Job) -> JobData:
    from bayeslr.datasets import pde_problem

    problem = pde_problem(job.data["problem"])
    # a PDE solve has no held-out observations: no test_lpd
    return JobData(fit=(problem,), evaluate=lambda post: _gphm_evaluate(post, problem))


def _gphm_evaluate(post, problem):
    xt, ut = (np.asarray(a) for a in problem.test_points())
    u_hat = post.solution(xt)
    metrics = {"rel_l2": float(np.linalg.norm(u_hat - ut) / np.linalg.norm(ut)),
               "residual_rms": post.extra["residual_rms"],
               "boundary_rms": post.extra["boundary_rms"]}  # fmt: skip

    def solution(ax):
        if xt.ndim == 1 or xt.shape[1] == 1:
            order = np.argsort(xt.ravel())
            ax.plot(xt.ravel()[order], ut[order], "k", lw=1, label="exact")
            ax.plot(xt.ravel()[order], u_hat[order], "--", label="GP-HM")
            ax.legend()
        else:
            n = round(np.sqrt(len(ut)))
            im = ax.imshow(np.abs(u_hat - ut).reshape(n, n), origin="lower")
            ax.figure.colorbar(im, ax=ax, label="|error|")
        ax.set_title(problem.name)

    return metrics, {"solution": solution}


# ---- KroSBL

KROSBL_DATA = {"generator": (str, True), "n": (list, False), "m": (list, False),
               "k": (int, False), "snr_db": ((int, float), False)}  # fmt: skip


def _krosbl_check(d):
    return _choices("generator", d.get("generator"), ("kronecker-sparse",))


def _krosbl_read(job: Job) -> JobData:
    from bayeslr.datasets import kronecker_sparse_problem

    kw = {k: job.data[k] for k in ("n", "m", "k", "snr_db") if k in job.data}
    prob = kronecker_sparse_problem(job.seed, **kw)
    # held out: a second measurement of the same x with a new noise draw
    from bayeslr.linalg.kron import kron_mv

    factors = [np.asarray(f) for f in prob.factors]
    x = np.asarray(prob.x).reshape([f.shape[1] for f in factors])
    clean = np.asarray(kron_mv(factors, x)).reshape(-1)
    rng = np.random.default_rng([job.seed, 1])
    test = (clean + np.sqrt(float(prob.sigma2)) * rng.standard_normal(clean.shape),)
    return JobData(fit=(prob.y, prob.factors), test=test,
                   evaluate=lambda post: _krosbl_evaluate(post, prob))  # fmt: skip


def _krosbl_evaluate(post, prob):
    from bayeslr.metrics import nmse, support_recovery_rate

    mean, support = np.asarray(post.extra["mean"]), np.asarray(post.extra["support"])
    metrics = {"nmse": nmse(mean, np.asarray(prob.x)),
               "support_recovery": support_recovery_rate(support, np.asarray(prob.support)),
               "n_iter": int(post.extra["n_iter"])}  # fmt: skip

    def support_plot(ax):
        idx = np.arange(mean.size)
        ax.stem(idx[np.asarray(prob.support)], np.asarray(prob.x)[np.asarray(prob.support)],
                linefmt="k-", markerfmt="ko", basefmt=" ", label="true")  # fmt: skip
        ax.plot(idx[support], mean[support], "rx", label="recovered")
        ax.set(xlabel="coefficient", ylabel="x")
        ax.legend()

    return metrics, {"support": support_plot}


# ---- FunBaT

FUNBAT_LOADERS = ("ozone", "ncep-air", "kinetic")


def _funbat_check(d):
    probs = _path_or_loader(d, FUNBAT_LOADERS)
    if "path" in d and not ({"coords", "value"} <= set(d)):
        probs.append("data: a `path` needs `coords` (list of column names) and `value`")
    return probs


def _funbat_read(job: Job) -> JobData:
    import pandas as pd

    from bayeslr import datasets as ds

    if "path" in job.data:
        df = pd.read_csv(Path(job.data["path"]).expanduser())
        coords, value = list(job.data["coords"]), job.data["value"]
    else:
        grid = {"ozone": ds.load_ozone, "ncep-air": ds.load_ncep_air,
                "kinetic": ds.load_kinetic}[job.data["loader"]]()  # fmt: skip
        df = grid.to_long()
        value = "value"
        coords = [c for c in df.columns if c != value]
    train, test = ds.split_entries(df, float(job.data.get("test_frac", 0.2)), seed=job.seed)
    return JobData(fit=(train, coords, value), test=(test,),
                   evaluate=lambda post: _funbat_evaluate(post, test, value))  # fmt: skip


def _funbat_evaluate(post, test, value):
    pred = np.asarray(post.moments(test)["mean"])
    err = pred - test[value].to_numpy()
    metrics = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}
    figs = {"predicted_vs_true": lambda ax: _scatter(ax, test[value].to_numpy(), pred, None)}
    return metrics, figs


def _kernel(spec: dict):
    from bayeslr import gp

    names = {"matern12": "Matern12", "matern32": "Matern32", "matern52": "Matern52"}
    name = spec.get("name", "matern32")
    if name not in names:
        raise ValueError(f"model.kernel.name: expected one of {sorted(names)}; got {name!r}")
    return getattr(gp, names[name])(float(spec.get("variance", 1.0)),
                                    float(spec.get("lengthscale", 0.3)))  # fmt: skip


MODELS: dict[str, ModelEntry] = {
    "ssvi": ModelEntry(lambda: _import("SSVI"), {"loader": (str, True),
                       "test_size": (float, False)}, _ssvi_check, _ssvi_read),
    "multvae": ModelEntry(lambda: _import("MultVAE"), {
        "loader": (str, False), "path": (str, False), "n_val": (int, False),
        "n_test": (int, False), "min_rating": ((int, float), False)},
        _multvae_check, _multvae_read),
    "gphm": ModelEntry(lambda: _import("GPSolver"), {"problem": (str, True)}, _gphm_check,
                       _gphm_read, seeded=None),
    "krosbl": ModelEntry(lambda: _import("KroneckerSBL"), KROSBL_DATA, _krosbl_check,
                         _krosbl_read),
    "funbat": ModelEntry(lambda: _import("FunBaT"), {
        "loader": (str, False), "path": (str, False), "coords": (list, False),
        "value": (str, False), "test_frac": (float, False)}, _funbat_check, _funbat_read,
        seeded=None),
}


def _import(name: str):
    import bayeslr.models as m

    return getattr(m, name)


# --------------------------------------------------------------------------------------------
# specs: read, validate, expand


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _check_table(where: str, table: dict, allowed: dict) -> list[str]:
    out = []
    for key, value in table.items():
        if key not in allowed:
            out.append(f"{where}.{key}: unknown key; allowed: {sorted(allowed)}")
            continue
        t = allowed[key][0]
        if isinstance(value, bool) and t is not bool:
            out.append(f"{where}.{key}: expected {_type_name(t)}; got a bool ({value!r})")
        elif t is float and isinstance(value, int):
            continue
        elif not isinstance(value, t):
            out.append(f"{where}.{key}: expected {_type_name(t)}; got {type(value).__name__} "
                       f"({value!r})")  # fmt: skip
    for key, (_, required) in allowed.items():
        if required and key not in table:
            out.append(f"{where}.{key}: required key is missing")
    return out


def _construct(model: str, entry: ModelEntry, data: dict, kwargs: dict):
    """Build the model object as the run will (validates every option; compiles nothing)."""
    cls = entry.cls()
    if model == "gphm":
        solver = cls(**kwargs)
        from bayeslr.datasets import pde_problem

        solver.settings(pde_problem(data["problem"]))  # the grid and frequencies, checked
        return solver
    if model == "funbat" and isinstance(kwargs.get("kernel"), dict):
        kwargs = {**kwargs, "kernel": _kernel(kwargs["kernel"])}
    return cls(**kwargs)


def _check_model_kwargs(entry: ModelEntry, kwargs: dict, model: str, data: dict) -> list[str]:
    cls = entry.cls()
    params = inspect.signature(cls.__init__).parameters
    skip = {"self", "pde"}
    allowed = [p for p in params if p not in skip and params[p].kind not in (
        inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]  # fmt: skip
    out = [f"model.{k}: unknown option of {cls.__name__}; allowed: {sorted(allowed)}"
           for k in kwargs if k not in allowed]  # fmt: skip
    if out:
        return out
    try:
        _construct(model, entry, data, kwargs)
    except (TypeError, ValueError) as err:
        msg = str(err)
        key = re.search(r"`(\w+)`", msg)
        out.append(f"model.{key.group(1) if key else '?'}: {msg}")
    return out


def _read(path: Path) -> tuple[dict | None, list[str]]:
    if not path.is_file():
        return None, [f"{path}: no such spec file"]
    try:
        return tomllib.loads(path.read_text()), []
    except tomllib.TOMLDecodeError as err:
        return None, [f"{path}: not valid TOML: {err}"]


def load_specs(paths: Sequence[str | os.PathLike]) -> list[Job]:
    """Read, validate and expand every spec; raise :class:`SpecError` with every problem found
    (nothing is run when any spec is bad)."""
    problems, jobs = [], []
    for p in map(Path, paths):
        spec, errs = _read(p)
        if errs:
            problems += errs
            continue
        errs = _validate(spec)
        if errs:
            problems += [f"{p}: {e}" for e in errs]
            continue
        jobs += expand(spec, p)
    ids = [j.id for j in jobs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(f"job ids collide across specs: {dup} (give each spec a distinct "
                        "`job.name`)")  # fmt: skip
    if problems:
        raise SpecError(problems)
    return jobs


def _validate(spec: dict) -> list[str]:
    out = [f"[{t}]: unknown table; allowed: {list(TABLES)}" for t in spec if t not in TABLES]
    for t in TABLES:
        if t in spec and not isinstance(spec[t], dict):
            out.append(f"{t}: expected a table; got {type(spec[t]).__name__}")
    if out:
        return out
    job = spec.get("job", {})
    out += _check_table("job", job, JOB_KEYS)
    model = job.get("model")
    if model not in MODELS:
        return out + [f"job.model: expected one of {sorted(MODELS)}; got {model!r}"]
    entry = MODELS[model]
    data = spec.get("data", {})
    out += _check_table("data", data, entry.data_keys)
    out += _check_table("output", spec.get("output", {}), OUTPUT_KEYS)
    if not out:
        out += entry.check_data(data)
    sweep = spec.get("sweep", {})
    for key, values in sweep.items():
        table, _, name = key.partition(".")
        if table not in ("job", "data", "model") or not name:
            out.append(f"sweep.{key}: keys are 'job.<key>', 'data.<key>' or 'model.<key>'")
        elif not isinstance(values, list) or not values:
            out.append(f"sweep.{key}: expected a non-empty list of values; got {values!r}")
    if out:
        return out
    # every sweep point's model options must construct
    for point in _sweep_points(sweep):
        kw = dict(spec.get("model", {}))
        kw.update({k.split(".", 1)[1]: v for k, v in point.items() if k.startswith("model.")})
        pdata = {**data, **{k[5:]: v for k, v in point.items() if k.startswith("data.")}}
        errs = _check_model_kwargs(entry, _with_seed(entry, kw, job.get("seed", 0)), model,
                                   pdata)  # fmt: skip
        out += [e + (f" (sweep point {point})" if point else "") for e in errs]
        if errs:
            break
    return out


def _with_seed(entry: ModelEntry, kw: dict, seed: int) -> dict:
    if entry.seeded and entry.seeded not in kw:
        kw = {**kw, entry.seeded: seed}
    return kw


def _sweep_points(sweep: dict) -> list[dict]:
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweep.values())]


def _slug(v) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(v)).strip("-")


def expand(spec: dict, source: str | os.PathLike = "<spec>") -> list[Job]:
    """The jobs of a (validated) spec: one per sweep point, ids ``<name>`` or
    ``<name>__<key>=<value>__…`` (stable, file-system safe)."""
    job = spec.get("job", {})
    model = job["model"]
    entry = MODELS[model]
    name = job.get("name") or Path(source).stem
    out = []
    for point in _sweep_points(spec.get("sweep", {})):
        seed = int(point.get("job.seed", job.get("seed", 0)))
        data = {**spec.get("data", {}), **{k[5:]: v for k, v in point.items()
                                           if k.startswith("data.")}}  # fmt: skip
        kw = {**spec.get("model", {}), **{k[6:]: v for k, v in point.items()
                                          if k.startswith("model.")}}  # fmt: skip
        jid = _slug(name) + "".join(f"__{_slug(k.split('.', 1)[1])}={_slug(v)}"
                                    for k, v in point.items())  # fmt: skip
        out.append(Job(jid, model, seed, data, _with_seed(entry, kw, seed),
                       {"plots": True, "netcdf": True, **spec.get("output", {})}, str(source),
                       point))  # fmt: skip
    return out


def shipped_specs(root: str | os.PathLike | None = None) -> list[Path]:
    """The specs in the top-level ``models/`` folder (of ``root``, the current directory, or
    the source checkout this package is installed from)."""
    here = Path(__file__).resolve().parents[1]
    for base in [Path(root)] if root else [Path.cwd(), here]:
        if (base / "models").is_dir():
            return sorted((base / "models").glob("*.toml"))
    return []


# --------------------------------------------------------------------------------------------
# running


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def run_job(job: Job | dict, out: str | os.PathLike, force: bool = False,
            progress: bool = True) -> dict:  # fmt: skip
    """Fit one job and write its outputs to ``<out>/<job.id>/`` (module docstring). Returns a
    summary ``{"id", "model", "status" ("done" | "skipped" | "failed"), "seconds", "metrics",
    "error"}``; a failure is logged to ``job.log`` and reported, not raised."""
    job = Job(**job) if isinstance(job, dict) else job
    d = Path(out) / job.id
    d.mkdir(parents=True, exist_ok=True)
    done = d / "metrics.json"
    if done.exists() and not force:
        return {"id": job.id, "model": job.model, "status": "skipped", "seconds": 0.0,
                "metrics": json.loads(done.read_text())["metrics"], "error": None}  # fmt: skip
    done.unlink(missing_ok=True)
    log = logging.getLogger(f"bayeslr.batch.{job.id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    t0 = time.perf_counter()
    status, metrics, error = "done", {}, None
    try:
        log.info("job %s: model %s, seed %d, data %s, options %s", job.id, job.model, job.seed,
                 job.data, job.model_kwargs)  # fmt: skip
        if "progress_bar" in inspect.signature(MODELS[job.model].cls().__init__).parameters:
            job.model_kwargs.setdefault("progress_bar", progress)
        with _captured_warnings(log):
            post, metrics, figs = _run_model(job)
        metrics = _jsonable(metrics)
        log.info("metrics %s", metrics)
        if job.output.get("netcdf", True):
            tree = post.to_arviz()
            _atomic_write(d / "posterior.nc", lambda p: tree.to_netcdf(p, engine="h5netcdf"))
        if job.output.get("plots", True):
            _write_plots(d, figs, log)
    except Exception as err:  # a failed job is reported, the others go on
        status, error = "failed", f"{type(err).__name__}: {err}"
        log.error("failed: %s\n%s", error, traceback.format_exc())
    seconds = time.perf_counter() - t0
    from bayeslr._memory import release_compiled_code

    release_compiled_code()  # a runner fits job after job in one process
    log.info("%s in %.1f s", status, seconds)
    log.removeHandler(handler)
    _atomic_write(d / "job.log", lambda p: p.write_text(buf.getvalue()))
    if status == "done":
        record = {"job": job.to_dict(), "metrics": metrics, "seconds": seconds}
        _atomic_write(done, lambda p: p.write_text(json.dumps(_jsonable(record), indent=2)))
    return {"id": job.id, "model": job.model, "status": status, "seconds": seconds,
            "metrics": metrics, "error": error}  # fmt: skip


@contextlib.contextmanager
def _captured_warnings(log):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        yield
    for w in caught:
        log.warning("%s: %s", w.category.__name__, w.message)


def _write_plots(d: Path, figs: dict, log) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'bayeslr[batch]')")
        return
    for name, draw in figs.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        draw(ax)
        _atomic_write(d / f"{name}.png", lambda p, fig=fig: fig.savefig(p, format="png", dpi=110,
                                                                        bbox_inches="tight"))
        plt.close(fig)


def run_jobs(jobs: Sequence[Job], out: str | os.PathLike, *, force: bool = False,
             n_jobs: int = 1, scheduler: str | Any | None = None,
             progress: bool = True) -> list[dict]:  # fmt: skip
    """Run ``jobs`` serially (``n_jobs=1``), in ``n_jobs`` worker processes, or on a Dask
    distributed cluster (``scheduler``: an address such as ``"tcp://host:8786"`` or a
    ``distributed.Client``). Outputs are written by job id, so workers never share a file."""
    Path(out).mkdir(parents=True, exist_ok=True)
    args = [j.to_dict() for j in jobs]
    if scheduler is not None:
        from distributed import Client

        client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        try:
            futures = client.map(run_job, args, out=str(out), force=force, progress=False,
                                 pure=False)  # fmt: skip
            return client.gather(futures)
        finally:
            if client is not scheduler:
                client.close()
    if n_jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(run_job, args, [str(out)] * len(args), [force] * len(args),
                                 [False] * len(args)))  # fmt: skip
    return [run_job(a, out, force, progress) for a in args]


def _normal_logpdf(y, mu, sd):
    return -0.5 * ((y - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def _reliability(ax, p, y, bins: int = 10):
    conf, correct = p.max(1), (p.argmax(1) == y)
    idx = np.clip((conf * bins).astype(int), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    keep = n > 0
    ax.plot(np.bincount(idx, conf, bins)[keep] / n[keep],
            np.bincount(idx, correct, bins)[keep] / n[keep], "o-")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="confidence", ylabel="accuracy", title="reliability")


def _scatter(ax, y, mean, sd):
    if sd is None:
        ax.plot(y, mean, ".", alpha=0.4)
    else:
        ax.errorbar(y, mean, yerr=sd, fmt=".", alpha=0.4)
    lo, hi = float(np.min(y)), float(np.max(y))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="true", ylabel="predicted")
