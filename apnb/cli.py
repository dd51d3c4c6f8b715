"""The ``apnb`` command: run notebooks, build the book, generate data."""
from __future__ import annotations

import argparse
import sys

from . import literals


class UsageError(ValueError):
    """A command line that cannot be carried out; the message names the fix."""


def _kv(pairs):
    """The ``-p KEY VALUE`` pairs as plain data (:func:`apnb.literals.load`: a tag or a syntax error is one
    line naming the option)."""
    out = {}
    for k, v in pairs or []:
        if not all(part.isidentifier() for part in k.split(".")):
            raise UsageError(f"-p {k}: not a parameter name (NAME or NAME.FIELD[.FIELD...])")
        out[k] = literals.load(v, f"-p {k}", k)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="apnb", description="Attribution preservation in network compression: "
                                 "run the book's notebooks, build the book, generate data.")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error instead of its one line")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="execute a notebook (or --all) with papermill at a profile into build/runs/<profile>")
    r.add_argument("notebook", nargs="?", help="path of the notebook, e.g. notebooks/01_voc_distillation.ipynb")
    r.add_argument("--all", action="store_true", help="every notebook listed in _toc.yml")
    r.add_argument("--list", action="store_true", help="list the notebooks of the book and exit")
    r.add_argument("--profile", default="demo", help="smoke, demo or paper (profiles/<name>.yml); default demo")
    r.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="override one parameter (YAML value), repeatable; KEY recipe.field (e.g. matching.p) "
                        "replaces one field of a recipe mapping")
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
    b.add_argument("--plan", action="store_true", help="measure the machine, print what each chapter still has "
                                                       "to compute (TFLOP, expected minutes) and exit")

    c = sub.add_parser("course", help="the course: student notebooks with autograded checks (otter-grader)")
    csub = c.add_subparsers(dest="course_cmd", required=True)
    cb = csub.add_parser("build", help="write OUT/student (solutions removed, checks kept) and OUT/autograder")
    cb.add_argument("out", help="the folder (relative paths: under the project root); a non-empty folder that "
                                "an earlier build did not create is refused unless --force")
    cb.add_argument("--force", action="store_true", help="build into a non-empty folder that apnb did not create; "
                                                         "only its student/ and autograder/ are replaced")
    cg = csub.add_parser("grade", help="grade every submitted notebook under SUBMISSIONS; one row per exercise")
    cg.add_argument("submissions")
    cg.add_argument("--autograder", default="build/course/autograder",
                    help="OUT/autograder of `apnb course build OUT` (default build/course/autograder)")
    cg.add_argument("--out", help="the CSV of scores (default SUBMISSIONS/scores.csv)")
    cg.add_argument("--timeout", type=float, default=600, help="seconds one submission may take (default 600)")
    cg.add_argument("--memory-gb", type=float, default=4, help="memory one submission may use (default 4 GiB)")
    cg.add_argument("--no-sandbox", action="store_true",
                    help="grade without isolation (only for submissions you trust; see the README's trust model)")

    st = sub.add_parser("store", help="the checkpoint store: hand its networks to another machine as one bundle")
    stsub = st.add_subparsers(dest="store_cmd", required=True)
    se = stsub.add_parser("export", help="write BUNDLE: the networks a profile's run records list, the records and "
                                         "a manifest of SHA-256 sums and versions")
    se.add_argument("bundle", help="the archive to write (.tar, or .tar.gz to compress; relative: under the project root)")
    se.add_argument("--profile", default="demo", help="whose run records (build/runs/<profile>) list the networks")
    si = stsub.add_parser("import", help="check BUNDLE whole (sums, version, paths, weights) and add its networks "
                                         "to the store ($APNB_STORE); a refused bundle changes nothing")
    si.add_argument("bundle")

    k = sub.add_parser("calibrate", help="calibrate the embedded benchmark on the paper's premises "
                       "(profiles/calibrate.yml -> its record, read by the book's calibration page)")
    k.add_argument("--plan", default="profiles/calibrate.yml")
    k.add_argument("--step", action="append", help="run only the step(s) of this name")

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="write the synthetic benchmark (VOC 2012 layout, or ImageNet-S layout)",
                        description="Every SynthConfig field is a flag (defaults: SynthConfig's). --profile takes "
                                    "a profile's benchmark (its synth settings and root), so `apnb data synth "
                                    "--profile demo` writes exactly the demo data; flags given as well override them.")
    s.add_argument("--out", help="the folder (default: the profile's benchmark.root with --profile)")
    s.add_argument("--mode", choices=["voc", "imagenet"], default="voc")
    s.add_argument("--profile", help="take the synth settings and root of this profile's benchmark (05_imagenet's "
                                     "for --mode imagenet)")
    from dataclasses import fields

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["data", "synth"]:  # SynthConfig's module imports torch: only for this command
        from .data.synthetic import SynthConfig

        for f in fields(SynthConfig):
            if f.name != "version":
                s.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                               help=f"SynthConfig.{f.name} (default {f.default})")

    args = ap.parse_args(argv)
    try:
        return _dispatch(args, r, s)
    except KeyboardInterrupt:
        what = f" {args.notebook}" if getattr(args, "notebook", None) else ""
        print(f"apnb: interrupted{what}: networks finished so far are kept in the store, and training resumes "
              f"from its last epoch checkpoint: run the same command again", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug or not _reported(e):
            raise
        print(f"apnb: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


def _reported(e: BaseException) -> bool:
    """Whether ``e`` is an error ``apnb`` explains in one line (a bad input, a missing file, a full disk, a
    failed premise) rather than a defect, whose traceback is shown."""
    from .runner import RunError

    names = {"PremiseError", "StoreError", "BundleError", "CourseError", "DataError", "ModelError", "DiskFullError"}
    return isinstance(e, (RunError, UsageError, ValueError, OSError)) or type(e).__name__ in names


def _dispatch(args, r, s) -> int:
    from . import runner

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
        index = runner.build_book(args.profile, run=not args.no_run, force=args.force, plan_only=args.plan)
        if index is not None:
            print(f"apnb: book built: {index}")
    elif args.cmd == "store":
        from . import bundle
        from .config import resolve_path

        if args.store_cmd == "export":
            m = bundle.export(resolve_path(args.bundle), args.profile)
            print(f"apnb: wrote {resolve_path(args.bundle)}: {len(m['entries'])} networks, {len(m['records'])} run "
                  f"records (apnb {m['apnb']}, torch {m['torch']})")
        else:
            r_ = bundle.import_bundle(resolve_path(args.bundle))
            print(f"apnb: imported {len(r_['added'])} networks ({len(r_['present'])} already in the store) and "
                  f"{r_['evaluations']} kept scores; run records in {r_['records']}")
    elif args.cmd == "calibrate":
        from . import calibration

        calibration.run(calibration.load_plan(args.plan), args.step)
    elif args.cmd == "course" and args.course_cmd == "build":
        from . import course
        from .config import resolve_path

        for p in course.build(resolve_path(args.out), runner.toc_notebooks(), force=args.force).values():
            print(p)
    elif args.cmd == "course":
        from . import course
        from .config import resolve_path

        table = course.grade(resolve_path(args.submissions), resolve_path(args.autograder),
                             resolve_path(args.out) if args.out else None, timeout=args.timeout,
                             memory_gb=args.memory_gb, sandbox=not args.no_sandbox)
        wide = table.pivot_table(index="submission", columns="exercise", values="score", aggfunc="sum")
        print(wide.to_string())
    elif args.cmd == "data" and args.data_cmd == "synth":
        from dataclasses import fields

        from .config import resolve_path
        from .data import synthetic

        kw, out = {}, args.out
        if args.profile:
            stem = "05_imagenet" if args.mode == "imagenet" else None
            prof = runner.load_profile(args.profile)
            p = {**prof["defaults"], **((prof["notebooks"].get(stem) or {}) if stem else {})}
            bench = p.get("benchmark") or {}
            if not bench.get("synth"):
                raise runner.RunError(f"profile {args.profile!r} has no synth settings for --mode {args.mode} "
                                      f"(it reads real data)")
            kw, out = dict(bench["synth"]), out or str(resolve_path(bench["root"]))
        if not out:
            s.error("give --out DIR or --profile NAME")
        kw.update({f.name: getattr(args, f.name) for f in fields(synthetic.SynthConfig)
                   if f.name != "version" and getattr(args, f.name) is not None})
        if args.mode == "voc" and "n_val" in kw and "n_seg" not in kw:
            kw["n_seg"] = min(kw["n_val"], synthetic.SynthConfig.n_seg)
        # locked and atomic: a concurrent run into the same folder waits, then reuses the identical tree
        print(synthetic.ensure(out, args.mode, **kw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
