"""The checks that need a GPU, in one run, with one summary (``benchmarks/gpu_check.sh`` calls this).

1. Every notebook at the ``paper-dry`` profile on CUDA; its recipes say ``precision: auto``, as the paper
   profile's do, so they train in bf16 autocast there (``apnb.precision``).
2. With two or more GPUs, the DDP test (torchrun, one process per GPU, nccl); with one, it says so.
3. Notebooks 00 and 01 at the ``demo`` profile on CUDA, timed (the store then holds the demo teacher and the
   01 students, trained on this GPU).
4. One epoch of the paper profile's teacher (VGG16_bn, 227 px, batch 128) and of an SSWA student (VGG16/8,
   batch 64), estimated from timed steps on 5717 images (PASCAL VOC 2012 train), against the paper's roughly
   100 s per epoch on 4 TITAN Xp (the paper's supplement C).

Any failure stops the check with a non-zero status after printing the summary so far.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
summary: list[tuple[str, str, float]] = []


def _step(name: str, fn) -> None:
    t = time.time()
    try:
        detail = fn() or "ok"
    except Exception as e:  # noqa: BLE001 - every failure is reported in the summary, then the check fails
        summary.append((name, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        time.time() - t))
        _print_summary()
        sys.exit(1)
    summary.append((name, detail, time.time() - t))
    print(f"gpu_check: {name}: {detail} ({time.time() - t:.0f} s)", flush=True)


def _print_summary() -> None:
    print("\n==== gpu_check summary ====")
    print(f"device: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}")
    for name, detail, s in summary:
        print(f"{name:<44} {s:7.0f} s  {detail}")


def paper_dry() -> str:
    from apnb import runner

    nbs = runner.toc_notebooks()
    for nb in nbs:
        runner.run_notebook(nb, "paper-dry", force=True)
    from apnb import precision as P

    return f"{len(nbs)} notebooks, training in {P.resolve('auto', torch.device('cuda'))}"


def ddp() -> str:
    if torch.cuda.device_count() < 2:
        return "skipped: one GPU (nccl needs one GPU per process)"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_ddp.py"], cwd=ROOT)
    if r.returncode:
        raise RuntimeError("tests/test_ddp.py failed")
    return "passed"


def demo(stem: str):
    def run() -> str:
        from apnb import runner

        runner.run_notebook(ROOT / "notebooks" / f"{stem}.ipynb", "demo", force=True)
        return "ran"
    return run


def paper_epochs() -> str:
    from apnb import models as M
    from apnb.engine import StudentObjective, Supervised, TrainConfig, make_optimizer
    from apnb.matching import AttributionMatching

    dev = torch.device("cuda")
    tspec = dict(arch="vgg16_bn", num_classes=20, width_div=1, n_pools=5, head_pool=7)

    def per_image(model, obj, batch, steps=8):
        x = torch.randn(batch, 3, 227, 227, device=dev)
        y = (torch.rand(batch, 20, device=dev) > 0.9).float()
        opt, _ = make_optimizer(model, TrainConfig(epochs=1, lr=0.01), 10)
        model.train()

        def one():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = obj(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        one()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            one()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / (steps * batch)

    teacher = M.build(tspec, seed=0).to(dev)
    t_img = per_image(teacher, Supervised(), 128)
    teacher.eval()
    student = M.build(dict(tspec, width_div=8), seed=1).to(dev)
    s_img = per_image(student, StudentObjective(teacher, AttributionMatching(kind="sswa", beta=50.0)), 64)
    return (f"one VOC epoch (5717 images, bf16): teacher {5717 * t_img:.0f} s, SSWA student {5717 * s_img:.0f} s "
            f"(paper: about 100 s per epoch on 4 TITAN Xp)")


def main() -> None:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: run this on a GPU machine (it checks what only CUDA runs)",
              file=sys.stderr)
        sys.exit(2)
    os.chdir(ROOT)
    _step("every notebook at paper-dry on CUDA", paper_dry)
    _step("DDP (torchrun, nccl)", ddp)
    _step("00_synthetic_benchmark at demo on CUDA", demo("00_synthetic_benchmark"))
    _step("01_voc_distillation at demo on CUDA", demo("01_voc_distillation"))
    _step("paper profile: one epoch, estimated", paper_epochs)
    _print_summary()


if __name__ == "__main__":
    main()
