"""``bayeslr``: the command line. ``bayeslr run SPEC …`` fits model specs as batch jobs
(:mod:`bayeslr.batch`); ``bayeslr models`` lists the shipped specs.

Exit codes: 0 every job done or skipped; 1 some job failed (the others still ran); 2 bad usage
or invalid specs (nothing was run). Errors go to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="bayeslr: structured Bayesian models. Batch inference from model specs (TOML).",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def run(
    specs: Annotated[list[Path], typer.Argument(help="Spec files (TOML), e.g. models/*.toml.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs"),
    force: Annotated[bool, typer.Option(help="Redo jobs that already finished.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Parallel processes.")] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (tcp://host:8786): run the jobs there."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and list the jobs; fit nothing.")] = False,
) -> None:
    """Validate every spec, then fit each job and write, per job, OUT/<job id>/:
    posterior.nc (ArviZ DataTree), metrics.json, job.log and PNG plots. Finished jobs are
    skipped unless --force; a job interrupted mid-way is redone."""
    from bayeslr.batch import SpecError, load_specs, run_jobs

    try:
        job_list = load_specs(specs)
    except SpecError as err:
        typer.echo(f"error: {len(err.problems)} problem(s) in the specs; nothing was run:",
                   err=True)  # fmt: skip
        for p in err.problems:
            typer.echo(f"  {p}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{len(job_list)} job(s) from {len(specs)} spec(s) -> {out}")
    if dry_run:
        for j in job_list:
            typer.echo(f"  {j.id}  ({j.model}, seed {j.seed})")
        return
    results = run_jobs(job_list, out, force=force, n_jobs=jobs, scheduler=scheduler)
    typer.echo(_summary(results))
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        typer.echo(f"error: job {r['id']} failed: {r['error']} (see {out / r['id'] / 'job.log'})",
                   err=True)  # fmt: skip
    if failed:
        raise typer.Exit(1)


@app.command()
def models(
    root: Annotated[Path | None, typer.Option(help="Project folder holding models/.")] = None,
) -> None:
    """List the shipped model specs (the top-level models/ folder) and their jobs."""
    from bayeslr.batch import load_specs, shipped_specs

    paths = shipped_specs(root)
    if not paths:
        typer.echo("error: no models/ folder found (run from the project folder or pass --root)",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    for p in paths:
        jobs = load_specs([p])
        typer.echo(f"{p}  model={jobs[0].model}  jobs={len(jobs)}")


def _summary(results: list[dict]) -> str:
    rows = [("job", "model", "status", "seconds", "metrics")]
    for r in results:
        m = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in (r["metrics"] or {}).items())  # fmt: skip
        rows.append((r["id"], r["model"], r["status"], f"{r['seconds']:.1f}", m))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  "
                     + row[4] for row in rows)  # fmt: skip


def main() -> None:  # the console script
    sys.exit(app())


if __name__ == "__main__":
    main()
