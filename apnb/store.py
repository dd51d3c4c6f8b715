"""The checkpoint store: every trained network under a hash of its configuration (``<root>/<kind>-<hash>``),
so that a teacher or a student is trained once and reused by every notebook that asks for the same recipe.
Writes are atomic and each entry has its own OS lock (two processes sharing a store wait for each other).
A store this process cannot write (a class's shared, read-only copy) serves the networks it holds without
taking locks, and a network it lacks is one :class:`StoreError` line before any training starts."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch.nn as nn

from . import compression as C
from . import records
from .config import atomic_torch_save, atomic_write_text, config_key, store_dir
from .engine import load_checkpoint, saved_state

__all__ = ["Store", "StoreError", "config_key"]


class StoreError(RuntimeError):
    """The store cannot give or keep a network (read-only and lacking it); the message names the fix."""


class Store:
    """Checkpoints keyed by a hash of their configuration, so that a teacher is trained once and reused.

    ``store.path(kind, cfg)`` is ``<root>/<kind>-<hash>/model.pt``; ``cfg.json`` beside it records the
    configuration. Finished models are saved with ``save``, which then deletes the entry's resume checkpoints
    (``*.ckpt``); ``load`` returns None when absent.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else store_dir() / "checkpoints"

    def entry(self, kind: str, cfg: dict) -> str:
        """The entry's folder name, ``<kind>-<hash>`` (what a run record lists under ``store.entries``)."""
        return f"{kind}-{config_key(cfg)}"

    def writable(self) -> bool:
        """Whether this process can add entries (the root, or the first folder above it that exists, is writable)."""
        p = self.root
        while not p.exists() and p != p.parent:
            p = p.parent
        return os.access(p, os.W_OK | os.X_OK)

    def dir(self, kind: str, cfg: dict) -> Path:
        d = self.root / f"{kind}-{config_key(cfg)}"
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "cfg.json", json.dumps(cfg, indent=1, sort_keys=True, default=str))
        return d

    def lock(self, kind: str, cfg: dict, timeout: float = -1):
        """An exclusive OS lock on one entry (``<root>/<kind>-<hash>.lock``), held while the entry is loaded
        or trained: a second process waits, then finds the finished network. ``fcntl`` locks are released
        by the kernel when their process dies, so a killed trainer leaves nothing that blocks."""
        if not self.writable():
            if (self.root / self.entry(kind, cfg) / "final.pt").exists():
                return contextlib.nullcontext()  # read-only: nothing can change the finished entry under us
            raise StoreError(f"the store {self.root} is read-only and lacks {kind} {self.entry(kind, cfg)}: point "
                             f"APNB_STORE at a writable folder (the networks it lacks are trained there), or ask "
                             f"its owner to build this profile into it")
        return self.entry_lock(self.entry(kind, cfg), timeout)

    def entry_lock(self, entry: str, timeout: float = -1):
        """The OS lock of the entry named ``entry`` (``<root>/<entry>.lock``), for a writable store."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{entry}.lock"), timeout=timeout)

    def save(self, kind: str, cfg: dict, model: nn.Module, extra: dict | None = None) -> Path:
        p = self.dir(kind, cfg) / "final.pt"
        atomic_torch_save({"model": saved_state(model), "pruned": C.pruned_param_names(model),
                           "spec": json.dumps(getattr(model, "apnb_spec", {})),
                           "extra": json.dumps(extra or {}, default=str)}, p)
        for resume in p.parent.glob("*.ckpt"):  # superseded: they hold optimizer state, 2-3x the network
            resume.unlink(missing_ok=True)
        records.tally("trained", self.entry(kind, cfg))
        return p

    def load(self, kind: str, cfg: dict, model: nn.Module) -> dict | None:
        p = self.root / f"{kind}-{config_key(cfg)}" / "final.pt"
        if not p.exists():
            return None
        ck = load_checkpoint(p, model)
        records.tally("loaded", self.entry(kind, cfg))
        return json.loads(ck.get("extra", "{}"))
