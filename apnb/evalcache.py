"""The evaluation cache: what :func:`apnb.evaluate.evaluate_model` computed for one network (its row of
Tables 2-7 and its :class:`~apnb.evaluate.LocResult`, the teacher comparison aside) kept in the store, so that
a network scored once is never scored again, in another chapter or in a re-run after a change elsewhere.

The key is a SHA-256 of

- the network's weights and buffers as they are (every tensor's name, dtype, shape and bytes), not a name
  or a store key: a network changed after it was loaded (pruned, quantized, fine-tuned) gets a key of its own;
- the data: its identity in store keys (``data["id"]``), the length of every split and the image shape;
- the settings (layers, multi-label or not) and the classes the top-1 maps are taken for (the teacher's);
- the source of every module the evaluation runs (:data:`CODE`): a change to a metric re-scores everything.

Entries are ``<store>/evaluations/<key>.pt``, written atomically and read with ``weights_only=True``; an
entry that does not read is scored again and replaced. ``APNB_EVAL_CACHE=0`` turns the cache off. Real data
is identified by its path and sizes: edit its files in place and the cache does not see it (nor do the
store's keys); set ``APNB_EVAL_CACHE=0`` or remove ``<store>/evaluations`` then.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import torch

from . import records
from .config import atomic_torch_save, store_dir

__all__ = ["key", "get", "put", "CODE", "enabled", "code_hash", "fingerprint"]

PKG = Path(__file__).resolve().parent
CODE = ("evaluate.py", "metrics.py", "models.py", "attribution.py", "gradcam.py", "quantization.py",
        "compression.py", "evalcache.py", "data/*.py")


def enabled() -> bool:
    return os.environ.get("APNB_EVAL_CACHE", "1") != "0"


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    h = hashlib.sha256()
    for pattern in CODE:
        for p in sorted(PKG.glob(pattern)):
            h.update(p.relative_to(PKG).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the network's class and every tensor of its state dict (name, dtype, shape, bytes)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (num_batches_tracked) as one element
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def _data_key(data: dict) -> dict:
    from torch.utils.data import Dataset

    splits = {k: len(v) for k, v in sorted(data.items()) if isinstance(v, Dataset)}
    shape = tuple(data["val"][0][0].shape) if "val" in data and len(data["val"]) else None
    return {"id": data.get("id"), "splits": splits, "shape": shape}


def key(model, data: dict, settings: dict, targets: torch.Tensor | None = None) -> str | None:
    """The cache key of scoring ``model`` on ``data`` with ``settings``; None when the cache is off or the data
    has no identity."""
    if not enabled() or data.get("id") is None:
        return None
    tgt = None if targets is None else hashlib.sha256(targets.cpu().to(torch.int64).numpy().tobytes()).hexdigest()
    blob = json.dumps({"net": fingerprint(model), "data": _data_key(data), "settings": settings, "targets": tgt,
                       "code": code_hash()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _path(k: str) -> Path:
    return store_dir() / "evaluations" / f"{k}.pt"


def put(k: str, row: dict, loc) -> None:
    """Keep ``row`` and ``loc`` under ``k`` (nothing when the store cannot be written)."""
    p = _path(k)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if not os.access(p.parent, os.W_OK):
        return
    cols, obj_cols = {}, {}
    for c in loc.pairs.columns:
        v = loc.pairs[c]
        if v.dtype.kind in "biuf":
            cols[c] = torch.from_numpy(v.to_numpy().copy())
        else:
            obj_cols[c] = json.dumps(v.tolist(), default=str)
    atomic_torch_save({"row": json.dumps(row), "columns": list(loc.pairs.columns), "numeric": cols,
                       "other": obj_cols, "maps": loc.maps, "top1": list(loc.top1) if loc.top1 is not None else None,
                       "val_logits": loc.val_logits}, p)


def get(k: str):
    """``(row, LocResult)`` kept under ``k``, or None."""
    from .evaluate import LocResult

    p = _path(k)
    if not p.exists():
        return None
    try:
        e = torch.load(p, map_location="cpu", weights_only=True)
        data = {c: (e["numeric"][c].numpy() if c in e["numeric"] else json.loads(e["other"][c]))
                for c in e["columns"]}
        loc = LocResult(pd.DataFrame(data, columns=e["columns"]), e["maps"],
                        tuple(e["top1"]) if e["top1"] is not None else None, e.get("val_logits"))
        row = json.loads(e["row"])
    except Exception:  # noqa: BLE001 - an unreadable entry is scored again and replaced
        return None
    records.tally("evaluations reused")
    return row, loc
