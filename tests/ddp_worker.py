"""Launched by tests/test_ddp.py through ``torchrun --nproc_per_node N``: trains a small net and saves it."""
import sys

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from apnb.engine import StudentObjective, TrainConfig, fit
from apnb.matching import AttributionMatching


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def data():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 3, 16, 16, generator=g), (torch.rand(64, 4, generator=g) > 0.5).float())


def main(out):
    torch.manual_seed(5)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    student = make()
    obj = StudentObjective(teacher, AttributionMatching(kind="swa", layers=("3",)), kd=True)
    fit(student, obj, data(), TrainConfig(epochs=2, lr=0.05, batch_size=16, schedule="cosine", seed=0),
        device="cpu", progress=False)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(student.state_dict(), out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
