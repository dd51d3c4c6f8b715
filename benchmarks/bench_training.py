"""Training throughput (images/s) of teacher training and of SSWA distillation at the demo settings.

With CUDA present it also measures the paper's 227-px settings (VGG16_bn teacher, VGG16/8 student, batch
64, AMP) for comparison with the paper's ~100 s per epoch on PASCAL VOC (5717 images) with 4 TITAN Xp.

    python benchmarks/bench_training.py [--steps 5]
"""
import argparse
import time

import torch

from apnb import models as M
from apnb.config import resolve_device
from apnb.engine import StudentObjective, Supervised, TrainConfig, make_optimizer
from apnb.matching import AttributionMatching


def throughput(model, objective, x, y, steps, dev, amp):
    opt, _ = make_optimizer(model, TrainConfig(epochs=1, lr=0.01), 10)
    model.train()

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = objective(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - t)


def run(label, size, tspec, sspec, batch, steps, dev, amp):
    x = torch.randn(batch, 3, size, size, device=dev)
    y = (torch.rand(batch, tspec["num_classes"], device=dev) > 0.8).float()
    teacher = M.build(tspec).to(dev)
    student = M.build(sspec).to(dev)
    t_ips = throughput(teacher, Supervised(), x, y, steps, dev, amp)
    teacher.eval()
    s_ips = throughput(student, StudentObjective(teacher, AttributionMatching(kind="sswa")), x, y, steps, dev, amp)
    print(f"{label}: teacher training {t_ips:.0f} images/s; SSWA distillation {s_ips:.0f} images/s")
    return t_ips, s_ips


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    dev = resolve_device("auto")
    demo = dict(arch="vgg16_bn", num_classes=6, width_div=4, n_pools=3, head_pool=1)
    run(f"demo settings on {dev} (64 px, batch 64)", 64, demo, dict(demo, width_div=32), 64, a.steps, dev, False)
    if dev.type == "cuda":
        paper = dict(arch="vgg16_bn", num_classes=20, width_div=1, n_pools=5, head_pool=7)
        t_ips, s_ips = run("paper settings on CUDA (227 px, batch 64, bf16 autocast)", 227, paper,
                           dict(paper, width_div=8), 64, a.steps, dev, True)
        print(f"one VOC epoch (5717 images): teacher {5717 / t_ips:.0f} s, SSWA student {5717 / s_ips:.0f} s "
              f"(paper: ~100 s per epoch on 4 TITAN Xp)")


if __name__ == "__main__":
    main()
