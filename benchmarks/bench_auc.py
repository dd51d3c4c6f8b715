"""Batched rank ROC-AUC (apnb.metrics.roc_auc) against a per-map scikit-learn loop: 1449 maps at 227x227.

Prints both times, the speed-up (target >= 20x) and the largest difference between the two (same numbers).

    python benchmarks/bench_auc.py [--n 1449 --size 227]
"""
import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from apnb.metrics import roc_auc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1449)
    ap.add_argument("--size", type=int, default=227)
    ap.add_argument("--chunk", type=int, default=256)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(a.n, a.size, a.size, generator=g)
    maps = (maps * 64).round() / 64  # ties, as in upsampled low-resolution maps
    yy, xx = torch.meshgrid(torch.arange(a.size), torch.arange(a.size), indexing="ij")
    c = torch.randint(40, a.size - 40, (a.n, 2), generator=g)
    masks = ((yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2) < 35 ** 2
    t = time.perf_counter()
    ours = torch.cat([roc_auc(maps[i:i + a.chunk], masks[i:i + a.chunk]) for i in range(0, a.n, a.chunk)])
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = np.array([roc_auc_score(masks[i].flatten().numpy(), maps[i].flatten().numpy()) for i in range(a.n)])
    t_ref = time.perf_counter() - t
    print(f"{a.n} maps at {a.size}x{a.size}: batched {t_ours:.2f}s, sklearn loop {t_ref:.2f}s, "
          f"speed-up {t_ref / t_ours:.1f}x (target >= 20x), max |diff| {np.abs(ours.numpy() - ref).max():.2e}")


if __name__ == "__main__":
    main()
