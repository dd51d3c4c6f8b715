"""Cohort training against one-by-one training, measured side by side in one run.

One grid of the demo's main student size (4 methods x 3 seeds of KD students, the demo profile's data,
teacher architecture, student schedule and beta) is trained twice into two empty stores: one student at a
time (:func:`apnb.experiments.distill`, as a loop over the grid would), then as cohorts
(:func:`apnb.experiments.distill_many`: the students of one seed share each batch and one teacher pass).
The teacher has the demo architecture with its seeded initial weights, untrained: the cost of a step does
not depend on what the teacher has learned. Both runs must give the same networks; the script checks it.
The last line is the ratio:

    cohort speedup: X.XXx (one-by-one A s, cohort B s, 12 students)

    python benchmarks/bench_cohort.py [--epochs 2] [--seeds 0 1 2]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from apnb import experiments as X
from apnb import models as M
from apnb.engine import Store

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    p = yaml.safe_load((ROOT / "profiles/demo.yml").read_text())["defaults"]
    data = X.voc_data(str(ROOT / p["data_root"]), p["synth"], p["image_size"])
    tspec = dict(p["teacher_spec"], num_classes=len(data["classes"]))
    teacher = M.build(tspec, seed=0).eval()
    sspec = dict(tspec, width_div=tspec["width_div"] * p["main_div"])
    train = dict(p["student_train"], epochs=a.epochs)
    jobs = [{"student_spec": sspec, "method": m, "train": dict(train, seed=s), "beta": p["beta"].get(m)}
            for s in a.seeds for m in X.METHODS]
    kw = dict(T=p["kd_T"], alpha=p["kd_alpha"], device="cpu", progress=False)
    print(f"{len(jobs)} students: VGG16/{p['main_div']}-style (width/{sspec['width_div']}), methods "
          f"{', '.join(X.METHODS)} x seeds {a.seeds}, {a.epochs} epochs of {len(data['train']) // train['batch_size']}"
          f" batches of {train['batch_size']}; {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        t = time.perf_counter()
        alone = [X.distill(teacher, "bench", j["student_spec"], j["method"], data, j["train"], beta=j["beta"],
                           store=Store(d1), **kw)[0] for j in jobs]
        t_alone = time.perf_counter() - t
        t = time.perf_counter()
        cohort = [m for m, _ in X.distill_many(teacher, "bench", jobs, data, store=Store(d2), **kw)]
        t_cohort = time.perf_counter() - t
    same = all(torch.equal(u, v) for a_, b_ in zip(alone, cohort)
               for u, v in zip(a_.state_dict().values(), b_.state_dict().values()))
    n = len(jobs)
    print(f"one by one: {t_alone / n:.1f} s per student; cohort: {t_cohort / n:.1f} s per student; "
          f"identical networks: {same}")
    if not same:
        raise SystemExit("cohort and one-by-one training gave different networks")
    print(f"cohort speedup: {t_alone / t_cohort:.2f}x (one-by-one {t_alone:.0f} s, cohort {t_cohort:.0f} s, {n} students)")


if __name__ == "__main__":
    main()
