"""CIFAR-10/100 from the standard python pickle batches (for the LPI supplement's faithfulness metrics)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .voc import DataError

CIFAR_MEAN = {10: [0.4914, 0.4822, 0.4465], 100: [0.5071, 0.4865, 0.4409]}
CIFAR_STD = {10: [0.2470, 0.2435, 0.2616], 100: [0.2673, 0.2564, 0.2762]}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: a batch is a dict of lists, strings, bytes, ints and one
    numpy uint8 array, so the only globals it may name are numpy's array reconstructors and dtypes. Any other
    global (``os.system``, ``builtins.eval``...) is refused, so a tampered file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch holds only plain data and "
                                     f"numpy arrays")


def _unpickle(p: Path):
    if not p.exists():
        raise DataError(f"{p} is missing: expected the python-version CIFAR batches "
                        f"(cifar-10-batches-py/data_batch_1..5,test_batch or cifar-100-python/train,test)")
    try:
        with open(p, "rb") as f:
            d = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"cannot read {p} as a CIFAR pickle batch: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"cannot read {p} as a CIFAR pickle batch: it holds a {type(d).__name__}, not a dict")
    return d


def load_cifar(root, train=True, num_classes=10, normalize=True) -> TensorDataset:
    """``TensorDataset(images [N,3,32,32] float, labels [N] long)`` from the pickle batches under ``root``."""
    root = Path(root)
    if num_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        key = "labels"
    elif num_classes == 100:
        files, key = (["train"] if train else ["test"]), "fine_labels"
    else:
        raise ValueError(f"num_classes={num_classes}: CIFAR has 10 or 100 classes")
    xs, ys = [], []
    for f in files:
        d = _unpickle(root / f)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[key], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs)).float() / 255
    if normalize:
        m = torch.tensor(CIFAR_MEAN[num_classes])[:, None, None]
        s = torch.tensor(CIFAR_STD[num_classes])[:, None, None]
        x = (x - m) / s
    return TensorDataset(x, torch.from_numpy(np.concatenate(ys)))
