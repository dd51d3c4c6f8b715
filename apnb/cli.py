"""The ``apnb`` command: run notebooks, build the book, generate data."""
from __future__ import annotations

import argparse
import sys

import yaml


def _kv(pairs):
    out = {}
    for k, v in pairs or []:
        out[k] = yaml.safe_load(v)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="apnb", description="Attribution preservation in network compression: "
                                 "run the book's notebooks, build the book, generate data.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="execute a notebook (or --all) with papermill at a profile into build/runs/<profile>")
    r.add_argument("notebook", nargs="?", help="path of the notebook, e.g. notebooks/01_voc_distillation.ipynb")
    r.add_argument("--all", action="store_true", help="every notebook listed in _toc.yml")
    r.add_argument("--list", action="store_true", help="list the notebooks of the book and exit")
    r.add_argument("--profile", default="demo", help="smoke, demo or paper (profiles/<name>.yml); default demo")
    r.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="override one parameter (YAML value), repeatable")
    r.add_argument("--force", action="store_true", help="re-run even if nothing changed")
    r.add_argument("--seeds", type=int, nargs="+", help="fan out one job per seed (with --executor)")
    r.add_argument("--executor", choices=["local", "slurm"],
                   help="submit the grid of notebooks x seeds as independent submitit jobs (local processes or "
                        "Slurm array jobs) instead of running here, one after the other")
    r.add_argument("--partition", help="Slurm partition")
    r.add_argument("--gpus", type=int, default=1, help="GPUs per Slurm job (default 1)")
    r.add_argument("--cpus", type=int, default=8, help="CPUs per Slurm job (default 8)")
    r.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit per job in minutes")
    r.add_argument("--parallelism", type=int, default=16, help="Slurm array jobs running at once")
    r.add_argument("--no-wait", action="store_true", help="submit and return without waiting for the jobs")

    b = sub.add_parser("book", help="execute all notebooks at a profile and build the HTML book (jupyter-book -W)")
    b.add_argument("--profile", default="demo")
    b.add_argument("--no-run", action="store_true", help="only render what build/runs/<profile> holds")
    b.add_argument("--force", action="store_true", help="re-execute every notebook")

    c = sub.add_parser("course", help="write student notebooks (cells tagged 'solution' removed) into OUT")
    c.add_argument("out")

    k = sub.add_parser("calibrate", help="calibrate the embedded benchmark on the paper's premises "
                       "(profiles/calibrate.yml -> its record, read by the book's calibration page)")
    k.add_argument("--plan", default="profiles/calibrate.yml")
    k.add_argument("--step", action="append", help="run only the step(s) of this name")

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="write the synthetic benchmark (VOC 2012 layout, or ImageNet-S layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--mode", choices=["voc", "imagenet"], default="voc")
    s.add_argument("--classes", type=int, default=6)
    s.add_argument("--n-train", type=int, default=3000)
    s.add_argument("--n-val", type=int, default=600)
    s.add_argument("--n-seg", type=int, default=600)
    s.add_argument("--n-pretrain", type=int, default=3000)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--context-bias", type=float, default=0.8, help="probability of the class-correlated cue")
    s.add_argument("--cue-period", type=float, default=5.0)
    s.add_argument("--max-objects", type=int, default=3)
    s.add_argument("--radius-min", type=float, default=0.12, help="object radius, share of the image side")
    s.add_argument("--radius-max", type=float, default=0.22)

    args = ap.parse_args(argv)
    from . import runner

    try:
        if args.cmd == "run":
            if args.list:
                for nb in runner.toc_notebooks():
                    print(nb.relative_to(runner.repo_root()))
                return 0
            if args.executor:
                from . import batch

                nbs = runner.toc_notebooks() if args.all else [args.notebook] if args.notebook else []
                if not nbs:
                    r.error("give a notebook path or --all")
                jobs = batch.plan(nbs, args.profile, args.seeds, _kv(args.p))
                ex = batch.executor(args.executor, partition=args.partition, gpus=args.gpus, cpus=args.cpus,
                                    timeout_min=args.timeout_min, parallelism=args.parallelism)
                batch.submit(jobs, ex, wait=not args.no_wait)
            elif args.seeds:
                r.error("--seeds fans out jobs: add --executor local (or slurm); for one run use -p seeds '[0, 1]'")
            elif args.all:
                runner.run_all(args.profile, _kv(args.p), args.force)
            elif args.notebook:
                runner.run_notebook(args.notebook, args.profile, _kv(args.p), args.force)
            else:
                r.error("give a notebook path or --all")
        elif args.cmd == "book":
            index = runner.build_book(args.profile, run=not args.no_run, force=args.force)
            print(f"apnb: book built: {index}")
        elif args.cmd == "calibrate":
            from . import calibration

            calibration.run(calibration.load_plan(args.plan), args.step)
        elif args.cmd == "course":
            from .course import write_course

            for p in write_course(args.out, runner.toc_notebooks()):
                print(p)
        elif args.cmd == "data" and args.data_cmd == "synth":
            from .data import synthetic

            kw = dict(classes=args.classes, n_train=args.n_train, n_val=args.n_val, n_seg=min(args.n_seg, args.n_val),
                      n_pretrain=args.n_pretrain, size=args.size, seed=args.seed, context_bias=args.context_bias,
                      cue_period=args.cue_period, max_objects=args.max_objects, radius_min=args.radius_min,
                      radius_max=args.radius_max)
            # locked and atomic: a concurrent run into the same folder waits, then reuses the identical tree
            print(synthetic.ensure(args.out, args.mode, **kw))
    except (runner.RunError, ValueError, FileNotFoundError) as e:
        print(f"apnb: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
