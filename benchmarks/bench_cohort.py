"""Cohort training against one-by-one training, measured side by side in one run.

One grid of the demo's main student size (4 methods x 3 seeds of KD students, the demo profile's data,
teacher architecture, student schedule and beta) is trained twice into two empty stores: one student at a
time (:func:`apnb.recipes.students` with one run per call, as a loop over the grid would), then as cohorts
(:func:`apnb.recipes.students` with the whole grid: the students of one seed share each batch and one teacher
pass).
The teacher has the demo architecture with its seeded initial weights, untrained: the cost of a step does
not depend on what the teacher has learned. Both runs must give the same networks; the script checks it.
With ``--grid structured`` the grid is that of notebook 03 instead: the teacher l1-pruned at the demo
rate, fine-tuned with each method (:func:`apnb.recipes.structured_nets`); there the pruned
network is much cheaper than the teacher, so the shared teacher pass is most of each step. The last line
is the ratio:

    cohort speedup: X.XXx (one-by-one A s, cohort B s, 12 students)

    python benchmarks/bench_cohort.py [--grid kd|structured] [--epochs 2] [--seeds 0 1 2]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml
from apnb.data import splits as D
from apnb import recipes as R
from apnb import models as M
from apnb.store import Store

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=["kd", "structured"], default="kd")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    p = yaml.safe_load((ROOT / "profiles/demo.yml").read_text())["defaults"]
    bench = p["benchmark"]
    data = D.voc_data(str(ROOT / bench["root"]), bench["synth"], bench["image_size"])
    tspec = dict(p["teacher_recipe"]["spec"], num_classes=len(data["classes"]))
    teacher = M.build(tspec, seed=0).eval()  # an untrained teacher: the timing, not the networks, is measured
    setup = lambda store: R.Setup(data, teacher, {"key": "bench"}, spec=tspec, image_size=bench["image_size"],
                                  store=store)
    if a.grid == "kd":
        kd = p["kd"]
        kd = dict(kd, train=dict(kd["train"], epochs=a.epochs))
        train = kd["train"]
        jobs = [R.job(m, s, train, p["matching"]) for s in a.seeds for m in R.METHODS]
        what = f"KD students VGG16/{kd['div']}-style (width/{tspec['width_div'] * kd['div']})"

        def one(j, store):
            return R.students(setup(store), kd, p["matching"], [j])[0][0]

        def many(store):
            return [m for m, _ in R.students(setup(store), kd, p["matching"], jobs)]
    else:
        structured = dict(p["structured"], finetune=dict(p["structured"]["finetune"], epochs=a.epochs))
        train = structured["finetune"]
        jobs = [R.job(m, s, train, p["matching"]) for s in a.seeds for m in R.METHODS]
        what = f"structured fine-tunes of the teacher pruned at rho_c={structured['rate']}"

        def one(j, store):
            return R.structured_nets(setup(store), structured, p["matching"], [j])[0][0]

        def many(store):
            return [m for m, _ in R.structured_nets(setup(store), structured, p["matching"], jobs)]
    print(f"{len(jobs)} networks: {what}, methods {', '.join(R.METHODS)} x seeds {a.seeds}, {a.epochs} epochs of "
          f"{len(data['train']) // train['batch_size']} batches of {train['batch_size']}; "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        t = time.perf_counter()
        alone = [one(j, Store(d1)) for j in jobs]
        t_alone = time.perf_counter() - t
        t = time.perf_counter()
        cohort = many(Store(d2))
        t_cohort = time.perf_counter() - t
    same = all(torch.equal(u, v) for a_, b_ in zip(alone, cohort)
               for u, v in zip(a_.state_dict().values(), b_.state_dict().values()))
    n = len(jobs)
    print(f"one by one: {t_alone / n:.1f} s per network; cohort: {t_cohort / n:.1f} s per network; "
          f"identical networks: {same}")
    if not same:
        raise SystemExit("cohort and one-by-one training gave different networks")
    unit = "students" if a.grid == "kd" else "networks"
    print(f"cohort speedup: {t_alone / t_cohort:.2f}x (one-by-one {t_alone:.0f} s, cohort {t_cohort:.0f} s, {n} {unit})")


if __name__ == "__main__":
    main()
