"""Batch inference: spec validation (each kind of error), an end-to-end run whose outputs reopen
with ArviZ, resume, an interrupted job redone, parallel and Dask runs equal to serial, the CLI."""

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bayeslr.batch import SpecError, load_specs, run_jobs
from bayeslr.cli import app

SSVI = """
[job]
model = "ssvi"
name = "tiny-ssvi"
seed = 0
[data]
loader = "wine"
[model]
density = 0.5
hidden = [8]
epochs = 3
batch_size = 16
num_samples = 10
"""
KROSBL = """
[job]
model = "krosbl"
name = "tiny-krosbl"
[data]
generator = "kronecker-sparse"
n = [6, 6]
m = [4, 5]
k = 2
snr_db = 30.0
[model]
num_samples = 10
[sweep]
"job.seed" = [0, 1]
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path, text):
    with pytest.raises(SpecError) as err:
        load_specs([write(tmp_path, "bad.toml", text)])
    return "\n".join(err.value.problems)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s + "\n[extra]\nx = 1\n", "[extra]: unknown table"),
        (lambda s: s.replace('seed = 0', 'seed = "zero"'), "job.seed: expected int; got str"),
        (lambda s: s.replace('model = "ssvi"', 'model = "gan"'), "job.model: expected one of"),
        (lambda s: s.replace('loader = "wine"', 'loader = "cifar"'), "data.loader: expected"),
        (lambda s: s.replace('loader = "wine"', 'loader = "wine"\nfoo = 1'),
         "data.foo: unknown key"),
        (lambda s: s.replace("density = 0.5", "density = 2.0"), "model.density: `density` must"),
        (lambda s: s.replace("density = 0.5", "dropout = 0.5"),
         "model.dropout: unknown option of SSVI"),
        (lambda s: s.replace('[data]\nloader = "wine"', "[data]"), "data.loader: required"),
        (lambda s: s + '\n[sweep]\n"model.density" = 0.1\n', "sweep.model.density: expected"),
        (lambda s: s.replace("[job]", "[job"), "not valid TOML"),
    ],
)
def test_spec_errors_name_the_file_and_key(tmp_path, edit, expected):
    text = problems(tmp_path, edit(textwrap.dedent(SSVI)))
    assert "bad.toml" in text and expected in text, text


def test_missing_data_file_and_collisions(tmp_path):
    text = problems(tmp_path, """
        [job]
        model = "multvae"
        [data]
        path = "/nonexistent/ratings.csv"
    """)
    assert "data.path: no file at" in text
    a, b = write(tmp_path, "a.toml", SSVI), write(tmp_path, "b.toml", SSVI)
    with pytest.raises(SpecError, match="collide"):
        load_specs([a, b])
    with pytest.raises(SpecError, match="no such spec file"):
        load_specs([tmp_path / "missing.toml"])


def test_sweep_expands_with_stable_ids(tmp_path):
    jobs = load_specs([write(tmp_path, "k.toml", KROSBL)])
    assert [j.id for j in jobs] == ["tiny-krosbl__seed=0", "tiny-krosbl__seed=1"]
    assert [j.seed for j in jobs] == [0, 1] and jobs[1].model_kwargs["seed"] == 1


def test_end_to_end_resume_interrupted_parallel_and_dask(tmp_path):
    import arviz as az

    specs = [write(tmp_path, "s.toml", SSVI), write(tmp_path, "k.toml", KROSBL)]
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", *map(str, specs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "tiny-ssvi" in res.output and "accuracy=" in res.output
    for jid in ("tiny-ssvi", "tiny-krosbl__seed=0", "tiny-krosbl__seed=1"):
        d = out / jid
        tree = az.from_netcdf(d / "posterior.nc")
        assert "posterior" in tree.children
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["job"]["id"] == jid and metrics["metrics"]
        # the one runner adds the held-out log predictive density (post.score) to every model
        # that has held-out data
        assert np.isfinite(metrics["metrics"]["test_lpd"])
        assert (d / "job.log").read_text().count("done in") == 1
        assert list(d.glob("*.png"))
        assert not list(d.glob(".*.tmp"))
    assert "log_likelihood" in az.from_netcdf(out / "tiny-ssvi" / "posterior.nc").children
    # resume: nothing is redone
    stamp = (out / "tiny-ssvi" / "metrics.json").stat().st_mtime_ns
    jobs = load_specs(specs)
    again = run_jobs(jobs, out, progress=False)
    assert {r["status"] for r in again} == {"skipped"}
    assert (out / "tiny-ssvi" / "metrics.json").stat().st_mtime_ns == stamp
    # a job killed mid-write (outputs but no metrics.json) is redone; --force redoes all
    (out / "tiny-ssvi" / "metrics.json").unlink()
    (out / "tiny-ssvi" / "posterior.nc").write_bytes(b"half a file")
    redo = run_jobs(jobs, out, progress=False)
    assert [r["status"] for r in redo] == ["done", "skipped", "skipped"]
    az.from_netcdf(out / "tiny-ssvi" / "posterior.nc")
    serial = run_jobs(jobs[1:], out, force=True, progress=False)
    assert {r["status"] for r in serial} == {"done"}
    # the same KroSBL jobs in worker processes and on a Dask cluster match that serial run (one
    # test with the above: a separate one fitted its own serial run, cold, for the reference)
    from distributed import Client, LocalCluster

    jobs = jobs[1:]
    par = run_jobs(jobs, tmp_path / "par", n_jobs=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        dask = run_jobs(jobs, tmp_path / "dask", scheduler=client)
    for other in (par, dask):
        assert [r["id"] for r in other] == [r["id"] for r in serial]
        for a, b in zip(serial, other, strict=True):
            assert a["status"] == b["status"] == "done"
            assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-6)
    assert (tmp_path / "dask" / "tiny-krosbl__seed=1" / "posterior.nc").exists()


def test_cli_help_models_and_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["--help"]).exit_code == 0
    assert "--scheduler" in runner.invoke(app, ["run", "--help"]).output
    root = Path(__file__).resolve().parents[1]
    res = runner.invoke(app, ["models", "--root", str(root)])
    assert res.exit_code == 0, res.output
    for name in ("ssvi-digits", "multvae-movielens", "krosbl-synthetic", "gphm-poisson-1d",
                 "funbat-ozone"):  # fmt: skip
        assert name in res.output
    bad = write(tmp_path, "bad.toml", SSVI.replace("density = 0.5", "density = 0.0"))
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "model.density" in res.output
    assert not (tmp_path / "o").exists()


def test_shipped_specs_validate():
    root = Path(__file__).resolve().parents[1]
    jobs = load_specs(sorted((root / "models").glob("*.toml")))
    assert {j.model for j in jobs} == {"ssvi", "multvae", "krosbl", "gphm", "funbat"}
    assert os.path.basename(jobs[0].source).endswith(".toml")
