"""Training precision: ``fp32``, ``bf16`` (``torch.autocast`` with bfloat16; the weights and the optimizer
stay fp32) or ``auto``.

``auto`` picks bf16 only where a training step is faster in it: on CUDA with bf16 support, and on a CPU
with bf16 arithmetic, AMX (``amx_bf16``: Intel Sapphire Rapids and later) or AVX-512 BF16 (``avx512_bf16``:
AMD Zen 4 and later, Intel Cooper Lake), as ``/proc/cpuinfo`` lists them. Everywhere else it picks fp32:
on a CPU with AVX2 only, oneDNN emulates bf16 and the demo teacher's step was measured 16x slower in it.
Measured with ``benchmarks/bench_precision.py``, which prints the ratios on the machine at hand beside what
``auto`` picks: teacher step bf16/fp32 0.62 and KD+SSWA student step 0.78 on a 2-core AMD EPYC with
``avx512_bf16``; for the demo teacher's step on one thread, 0.36 on an Intel Xeon with AMX and 16 on an
AMD EPYC with AVX2 only.

Only training runs in bf16. Attribution maps, metrics, ROC-AUC and the pointing game are computed in fp32
(:mod:`apnb.evaluate` never autocasts). A bf16 network is a different recipe: its store key holds
``precision: bf16`` (:func:`keyed`), so it is never loaded in place of the fp32 network, and an fp32
network's key is the one it had before this option existed.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from .specs import PRECISIONS

__all__ = ["PRECISIONS", "cpu_has_bf16", "resolve", "keyed", "autocast"]


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively: ``amx_bf16`` or ``avx512_bf16`` among the flags of
    ``/proc/cpuinfo``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and {"amx_bf16", "avx512_bf16"} & set(line.split())
               for line in text.splitlines())


def resolve(precision: str, device) -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device`` (a ``torch.device`` or its name)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use {', '.join(PRECISIONS)}")
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    cuda_bf16 = dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if cuda_bf16 or (dev.type == "cpu" and cpu_has_bf16()) else "fp32"
    if precision == "bf16" and dev.type == "cuda" and not cuda_bf16:
        raise ValueError("precision=bf16 on a GPU without bfloat16 support: use precision fp32 (or auto)")
    return precision


def keyed(train: dict | None, device) -> dict | None:
    """``train`` as the store keys it and training reads it: ``precision`` resolved for ``device``, and left
    out when it resolves to fp32 (the default), so that an fp32 network keeps the key it always had."""
    if train is None or "precision" not in train:
        return train
    p = resolve(train["precision"], device)
    out = {k: v for k, v in train.items() if k != "precision"}
    return out if p == "fp32" else {**out, "precision": p}


def autocast(precision: str, device):
    """The context a training step runs in: bf16 autocast for ``bf16``, nothing for ``fp32``."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return torch.autocast(dev.type, dtype=torch.bfloat16)
