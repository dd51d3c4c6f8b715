"""Batch execution: the grid of notebooks x seeds as independent jobs, on one box or a Slurm cluster.

``apnb run --all --profile paper --seeds 0 1 2 --executor local|slurm`` submits one job per (notebook,
seed) through submitit: Slurm array jobs (partition, GPUs, time limit, array parallelism) or local
processes (submitit's ``LocalExecutor``). A notebook without a ``seeds`` parameter is one job. Each job
runs :func:`apnb.runner.run_notebook` with ``seeds=[s]`` into ``build/runs/<profile>/seed-<s>/`` (with ``-p``
overrides, under :func:`apnb.runner.output_dir`); its trained networks land in the shared checkpoint store.

Re-submitting is cheap: a finished job is skipped (its stamp matches) and every network a job already
trained is reloaded from the store, so only what is missing runs again. ``apnb book --profile <p>``
then renders the collected runs: it executes each notebook once with all the seeds, and every network
comes from the store.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import runner


@dataclass
class Job:
    notebook: str
    profile: str
    overrides: dict
    out_dir: str

    @property
    def label(self) -> str:
        s = self.overrides.get("seeds")
        return f"{Path(self.notebook).name}" + (f" (seed {s[0]})" if s else "")


def plan(notebooks, profile: str, seeds=None, overrides: dict | None = None) -> list[Job]:
    """One :class:`Job` per (notebook, seed); notebooks without a ``seeds`` parameter once."""
    jobs = []
    for nb in notebooks:
        nb = Path(nb)
        declared = runner.notebook_parameters(nb)
        if seeds and "seeds" in declared:
            for s in seeds:
                jobs.append(Job(str(nb), profile, {**(overrides or {}), "seeds": [s]},
                                str(runner.output_dir(profile, overrides) / f"seed-{s}")))
        else:  # with -p overrides, beside the profile's records (runner.output_dir), never over them
            jobs.append(Job(str(nb), profile, dict(overrides or {}), str(runner.output_dir(profile, overrides))))
    runner.prepare_fixtures(profile)  # once, before the jobs: the checks below look for the data
    for j in jobs:  # bad parameters fail here, before anything is submitted
        runner.params_for(Path(j.notebook), profile, j.overrides)
    return jobs


def run_job(job: Job) -> str:
    """The function each submitted job runs (module level, so submitit can pickle it)."""
    return str(runner.run_notebook(job.notebook, job.profile, job.overrides, out_dir=Path(job.out_dir)))


def executor(kind: str = "local", folder: str | Path | None = None, partition: str | None = None, gpus: int = 1,
             cpus: int = 8, timeout_min: int = 24 * 60, parallelism: int = 16, mem_gb: int | None = None):
    """A submitit executor: ``local`` (processes on this machine) or ``slurm`` (array jobs)."""
    import submitit

    folder = Path(folder or runner.repo_root() / "build" / "jobs" / "%j")
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout_min)
        ex.apnb_parallelism = parallelism  # submitit starts local jobs at once; submit() keeps this many running
        return ex
    if kind != "slurm":
        raise ValueError(f"executor {kind!r}: use local or slurm")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(timeout_min=timeout_min, gpus_per_node=gpus, cpus_per_task=cpus, slurm_array_parallelism=parallelism)
    if partition:
        params["slurm_partition"] = partition
    if mem_gb:
        params["mem_gb"] = mem_gb
    ex.update_parameters(**params)
    return ex


def submit(jobs: list[Job], ex, wait: bool = True, log=print, poll_s: float = 1.0):
    """Submit ``jobs`` as one array; with ``wait``, collect them and raise one error naming every failure.

    A local executor runs at most its ``parallelism`` jobs at once: the next job starts when one ends (so
    submitting returns only when the last job has started). Jobs that need the same network share it
    through the store's entry locks: the first trains it, the others wait and load it."""
    limit = getattr(ex, "apnb_parallelism", None)
    if limit and len(jobs) > limit:
        handles = []
        for j in jobs:
            while sum(not h.done() for h in handles) >= limit:
                time.sleep(poll_s)
            handles.append(ex.submit(run_job, j))
    else:
        handles = ex.map_array(run_job, jobs)
    for j, h in zip(jobs, handles):
        log(f"apnb: submitted {j.label} [{j.profile}] as job {h.job_id}")
    if not wait:
        return handles
    failed = []
    for j, h in zip(jobs, handles):
        try:
            log(f"apnb: finished {j.label}: {h.result()}")
        except Exception as e:  # submitit re-raises the job's error with its log
            msg = str(e).strip().splitlines()
            cause = next((line for line in reversed(msg) if "RunError" in line or "Error" in line), msg[-1] if msg else "")
            failed.append(f"{j.notebook} ({j.label}): {cause.strip()}")
    if failed:
        raise runner.RunError(f"{len(failed)} of {len(jobs)} jobs failed:\n  " + "\n  ".join(failed))
    return handles
