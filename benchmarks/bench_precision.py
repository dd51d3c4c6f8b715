"""Precision and threading on the machine at hand, measured side by side in one run:

- the bf16/fp32 time ratio of one training step of the demo teacher (VGG16_bn/4, batch 32, 64 px) and of
  a KD + SSWA student step (its /2 student, the demo's main student), under ``torch.autocast`` as
  :func:`apnb.engine.fit` runs it;
- the time of two one-thread worker processes, side by side, against one two-thread process doing the
  same steps one after the other (fp32 student steps, build and warm-up excluded): below 1 means
  side-by-side workers pay;
- the precision ``auto`` picks here (:mod:`apnb.precision`), and whether the measurement agrees with it.

    python benchmarks/bench_precision.py [--steps 3]

Name the CPU (printed first) beside any figure quoted from it.
"""
import argparse
import multiprocessing as mp
import time

import torch

from apnb import models as M
from apnb import precision as P
from apnb import work
from apnb.engine import StudentObjective, Supervised, TrainConfig, make_optimizer
from apnb.matching import AttributionMatching

TEACHER = dict(arch="vgg16_bn", num_classes=6, width_div=4, n_pools=3, head_pool=1)
STUDENT = dict(TEACHER, width_div=8)
BATCH, SIZE = 32, 64


def cpu_name() -> str:
    return f"{work.cpu_name()}, bf16 arithmetic (amx_bf16 or avx512_bf16) {'yes' if P.cpu_has_bf16() else 'no'}"


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), (torch.rand(BATCH, 6, generator=g) > 0.7).float()


def _setup(which: str, precision: str):
    x, y = _batch()
    if which == "teacher":
        model, obj = M.build(TEACHER, seed=0), Supervised()
    else:
        teacher = M.build(TEACHER, seed=0).eval()
        model, obj = M.build(STUDENT, seed=1), StudentObjective(teacher, AttributionMatching(kind="sswa", beta=3.0))
    opt, _ = make_optimizer(model, TrainConfig(epochs=1, lr=0.01), 10)
    model.train()

    def one():
        with P.autocast(precision, "cpu"):
            loss, _ = obj(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()  # warm-up
    return one


def step_time(which: str, precision: str, steps: int) -> float:
    """Seconds per training step of ``which`` (teacher | student) at ``precision``, after one warm-up step."""
    one = _setup(which, precision)
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t) / steps


def _worker(steps: int, barrier, q):
    torch.set_num_threads(1)
    one = _setup("student", "fp32")
    barrier.wait()  # both workers built and warmed up: time only the steps, side by side
    t = time.perf_counter()
    for _ in range(steps):
        one()
    q.put(time.perf_counter() - t)


def workers_ratio(steps: int) -> tuple[float, float]:
    """(seconds of two 1-thread workers running ``steps`` student steps each side by side, seconds of one
    2-thread process running the same 2 x ``steps`` steps)."""
    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(2)
    ps = [ctx.Process(target=_worker, args=(steps, barrier, q)) for _ in range(2)]
    for p in ps:
        p.start()
    side = max(q.get() for _ in ps)
    for p in ps:
        p.join()
    torch.set_num_threads(2)
    return side, 2 * steps * step_time("student", "fp32", steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    a = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"cpu: {cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    ratios = {}
    for which in ("teacher", "student"):
        t32 = step_time(which, "fp32", a.steps)
        t16 = step_time(which, "bf16", a.steps)
        ratios[which] = t16 / t32
        label = "teacher step (VGG16_bn/4)" if which == "teacher" else "KD+SSWA student step (VGG16_bn/8)"
        print(f"{label}, batch {BATCH}, {SIZE} px: fp32 {t32 * 1e3:.0f} ms, bf16 {t16 * 1e3:.0f} ms, "
              f"bf16/fp32 {ratios[which]:.2f}")
    side, one = workers_ratio(4 * a.steps)
    print(f"two 1-thread workers side by side {side:.2f} s, one 2-thread process {one:.2f} s (the same "
          f"2 x {4 * a.steps} fp32 student steps): ratio {side / one:.2f}")
    auto = P.resolve("auto", "cpu")
    faster = "bf16" if ratios["teacher"] < 1 and ratios["student"] < 1 else "fp32"
    print(f"auto picks {auto} here; measured faster: {faster}"
          + ("" if auto == faster else " (they disagree: set precision explicitly in the profile)"))


if __name__ == "__main__":
    main()
