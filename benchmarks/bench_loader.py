"""Does the VOC loader (with workers) deliver batches faster than a demo training step consumes them?

Prints batches/s of the augmented training loader (num_workers = 0 and 2, JPEG decoding every time, no
cache) and of the demo teacher's training step on random tensors of the same shape.

    python benchmarks/bench_loader.py [--data build/data/synth-voc --size 64 --batch 64]
"""
import argparse
import time

import torch
from torch.utils.data import DataLoader

from apnb import models as M
from apnb.data import VOCClassification, ensure_synthetic
from apnb.engine import Supervised, TrainConfig, make_optimizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="build/data/synth-voc")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20)
    a = ap.parse_args()
    root = ensure_synthetic(a.data, "voc", n_train=1500, n_val=400, n_seg=400, n_pretrain=1500, size=a.size)
    ds = VOCClassification(root, "train", size=a.size, augment=True, cache=False, verify=False)
    for workers in (0, 2):
        dl = DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=workers, drop_last=True)
        it = iter(dl)
        next(it)
        t = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        print(f"loader, {workers} workers: {a.batches / (time.perf_counter() - t):.1f} batches/s")
    model = M.vgg("vgg16_bn", len(ds.classes), width_div=4, n_pools=3, head_pool=1).train()
    opt, _ = make_optimizer(model, TrainConfig(epochs=1, lr=0.01), 10)
    obj = Supervised()
    x, y = torch.randn(a.batch, 3, a.size, a.size), (torch.rand(a.batch, len(ds.classes)) > 0.7).float()
    obj(model, x, y)[0].backward()
    t = time.perf_counter()
    n = 5
    for _ in range(n):
        loss, _ = obj(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"demo teacher training step: {n / (time.perf_counter() - t):.1f} batches/s")


if __name__ == "__main__":
    main()
