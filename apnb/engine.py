"""One ``fit`` for teacher training, distillation and pruning fine-tune, plus the checkpoint store.

- SGD (momentum, weight decay) with a multistep (paper), cosine or one-cycle schedule; AMP (bf16) on CUDA.
- The objective is pluggable: :class:`Supervised` or :class:`Compress` (KD and/or task loss plus the
  attribution-matching regularizer of :mod:`apnb.matching`).
- Atomic checkpoints every epoch (model, optimizer, scheduler, RNG states, pruning masks, history).
  A killed run resumes from its last checkpoint and ends with the same result: each epoch reseeds every
  RNG from ``(seed, epoch)``, so nothing depends on how many epochs ran in this process.
- A checkpoint names the run it belongs to (``run_key``: the store key plus the training configuration and
  the library version); resuming from a checkpoint of another run is refused with a one-line error.
- The store takes an OS file lock per entry (:meth:`Store.lock`, the ``filelock`` package): a second process
  asking for the same network waits, then loads it instead of training it again; the lock dies with its
  process, so a killed trainer blocks nothing.
- A NaN or inf loss stops the run with epoch and step named; the last good checkpoint is kept.
- ``torchrun``: with ``WORLD_SIZE`` > 1 in the environment, :func:`setup_distributed` starts the
  process group and ``fit`` wraps the model in DistributedDataParallel with a DistributedSampler; the
  global batch is split across processes and only rank 0 writes checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import compression as C
from .config import atomic_torch_save, resolve_device, store_dir
from .matching import AttributionMatching
from .models import ModelError


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "sgd"  # sgd (the paper) | adamw (CPU demo profiles: converges in fewer steps)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "multistep"  # multistep | cosine | onecycle | constant
    milestones: tuple = ()
    gamma: float = 0.1
    batch_size: int = 64
    seed: int = 0
    num_workers: int = 0
    amp: bool = True
    clip_grad: float | None = None

    def __post_init__(self):
        self.milestones = tuple(self.milestones)
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"epochs={self.epochs}, lr={self.lr}, batch_size={self.batch_size}: need epochs >= 0, "
                             f"lr > 0 and batch_size >= 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: use sgd or adamw")
        if self.schedule not in ("multistep", "cosine", "onecycle", "constant"):
            raise ValueError(f"schedule={self.schedule!r}: use multistep, cosine, onecycle or constant")


# ------------------------------------------------------------------ objectives
class Supervised:
    """Task loss only: multi-label soft margin (VOC) or cross-entropy."""

    def __init__(self, multilabel: bool = True):
        self.loss = C.task_loss(multilabel)

    def __call__(self, model, x, y):
        loss = self.loss(model(x), y)
        return loss, {"loss": loss.detach()}


class Compress:
    """Student objective: (KD or task loss) + beta * matching (paper Eq. 2).

    ``kd=True``: Hinton KD against the teacher's logits (multi-label: :func:`apnb.compression.kd_multilabel`).
    ``kd=False`` (pruning fine-tune, as the authors): task loss + beta * matching.
    """

    def __init__(self, teacher: nn.Module | None, matching: AttributionMatching | None = None, kd: bool = True,
                 T: float = 4.0, alpha: float = 0.9, multilabel: bool = True):
        self.teacher = teacher
        self.matching = matching or AttributionMatching(kind="none")
        self.kd, self.T, self.alpha, self.multilabel = kd, T, alpha, multilabel
        self.task = C.task_loss(multilabel)
        if kd and teacher is None:
            raise ValueError("kd=True needs a teacher")
        if teacher is not None:
            teacher.eval()

    def reseed(self, seed: int):
        self.matching.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model, x, y):
        need_t = self.kd or self.matching.kind != "none"
        s_logits, t_logits, match = self.matching(model, x, self.teacher if need_t else None, y, self.task)
        if self.kd:
            kd = C.kd_multilabel if self.multilabel else C.kd_softmax
            base = kd(s_logits, t_logits, y, self.T, self.alpha)
        else:
            base = self.task(s_logits, y)
        loss = base + self.matching.beta * match
        return loss, {"loss": loss.detach(), "task": base.detach(), "match": match.detach()}


# ------------------------------------------------------------------ distributed
def setup_distributed() -> tuple[int, int]:
    """Start the process group when launched by torchrun (gloo on CPU, nccl on CUDA). Returns (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------ helpers
def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def make_optimizer(model, cfg: TrainConfig, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.schedule == "multistep":
        sch = torch.optim.lr_scheduler.MultiStepLR(opt, [m * steps_per_epoch for m in cfg.milestones], cfg.gamma)
    elif cfg.schedule == "cosine":
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * steps_per_epoch))
    elif cfg.schedule == "onecycle":
        sch = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(8, cfg.epochs * steps_per_epoch),
                                                  pct_start=0.25)
    else:
        sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return opt, sch


def load_checkpoint(path, model: nn.Module | None = None, map_location="cpu") -> dict:
    """Load with ``weights_only=True``; optionally into ``model`` with a clear error on a mismatch."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train first or fix the path")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); delete it and re-run") from e
    if model is not None:
        load_state(model, ck["model"], ck.get("pruned", []), str(path))
    return ck


def load_state(model: nn.Module, state: dict, pruned: list[str], where: str = "checkpoint"):
    C.reapply_pruning(model, pruned)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shape = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shape:
        detail = (f"shape {shape[0][0]}: checkpoint {shape[0][1]} vs model {shape[0][2]}" if shape
                  else f"missing keys {missing[:2]}, unexpected keys {extra[:2]}")
        raise ModelError(f"{where} does not fit this architecture ({detail}): build the model with the spec "
                         f"the checkpoint was saved with (ckpt['spec'])")
    model.load_state_dict(state)
    for m in model.modules():  # recompute masked weights now, not at the next forward
        if hasattr(m, "weight_mask"):
            m.weight = m.weight_orig * m.weight_mask


@dataclass
class FitResult:
    history: list = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    resumed_from: int = 0


def run_key(cfg: TrainConfig, key: str | None = None) -> str:
    """Identity of one training run: the store key (or None) + the training configuration + apnb's version."""
    from . import __version__

    return config_key({"key": key, "train": asdict(cfg), "apnb": __version__})


def fit(model: nn.Module, objective: Callable, train_set: Dataset, cfg: TrainConfig, ckpt: str | Path | None = None,
        eval_fn: Callable[[nn.Module], dict] | None = None, device="auto", progress: bool = True,
        stop_after_epoch: int | None = None, key: str | None = None) -> FitResult:
    """Train ``model`` in place on ``train_set`` with ``objective``; resume from ``ckpt`` when it exists.

    ``eval_fn(model) -> dict`` runs after every epoch (history). ``stop_after_epoch`` ends the call early
    (used by tests to simulate an interruption). ``key``: the store key of the network; the checkpoint
    records :func:`run_key` and a checkpoint of another run is never resumed.
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    rank, world = setup_distributed()
    model.to(device)
    if isinstance(objective, Compress) and objective.teacher is not None:
        objective.teacher.to(device)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    local_bs = cfg.batch_size // world
    # one sampler for 1 or N processes: the permutation depends on (seed, epoch) only, and rank r takes
    # every N-th index, so N processes with batch B/N see exactly the global batches of one process
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    gen = torch.Generator()
    loader = DataLoader(train_set, batch_size=local_bs, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, generator=gen, persistent_workers=False)
    steps = len(loader)
    if steps == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {cfg.batch_size}")
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt, sch = make_optimizer(model, cfg, steps)
    res = FitResult()
    start = 0
    ckpt = Path(ckpt) if ckpt else None
    rkey = run_key(cfg, key)
    if ckpt is not None and ckpt.exists():
        ck = load_checkpoint(ckpt)
        if ck.get("run_key") != rkey:
            raise ModelError(f"checkpoint {ckpt} belongs to another training run (its run key "
                             f"{ck.get('run_key', 'none: an older apnb')} != {rkey}: other configuration or code "
                             f"version); delete it to restart this run: rm {ckpt}")
        load_state(model, ck["model"], ck.get("pruned", []), str(ckpt))
        opt.load_state_dict(ck["optimizer"])
        sch.load_state_dict(ck["scheduler"])
        start = res.resumed_from = int(ck["epoch"])
        res.history = json.loads(ck["history"])
    use_amp = cfg.amp and device.type == "cuda"
    t0, seen = time.time(), 0
    for epoch in range(start, cfg.epochs):
        es = _epoch_seed(cfg.seed, epoch)
        seed_all(es)
        gen.manual_seed(es)
        sampler.set_epoch(epoch)
        if hasattr(objective, "reseed"):
            objective.reseed(es)
        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0, leave=False)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, logs = objective(net, x, y)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at epoch {epoch + 1} step {step + 1}: training stopped; the last "
                    f"good checkpoint is kept{' at ' + str(ckpt) if ckpt else ''}; lower lr or beta")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            sch.step()
            seen += x.shape[0] * world
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        row = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}}
        if eval_fn is not None:
            model.eval()
            row.update(eval_fn(model))
        res.history.append(row)
        if progress and rank == 0:
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if ckpt is not None and rank == 0:
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sch.state_dict(),
                               "epoch": epoch + 1, "history": json.dumps(res.history),
                               "pruned": C.pruned_param_names(model),
                               "spec": json.dumps(getattr(model, "apnb_spec", {})), "run_key": rkey}, ckpt)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    res.seconds = time.time() - t0
    res.images_per_s = seen / max(res.seconds, 1e-9)
    model.eval()
    return res


# ------------------------------------------------------------------ checkpoint store
def config_key(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    """Checkpoints keyed by a hash of their configuration, so that a teacher is trained once and reused.

    ``store.path(kind, cfg)`` is ``<root>/<kind>-<hash>/model.pt``; ``cfg.json`` beside it records the
    configuration. Finished models are saved with ``save``; ``load`` returns None when absent.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else store_dir() / "checkpoints"

    def dir(self, kind: str, cfg: dict) -> Path:
        d = self.root / f"{kind}-{config_key(cfg)}"
        d.mkdir(parents=True, exist_ok=True)
        from .config import atomic_write_text

        atomic_write_text(d / "cfg.json", json.dumps(cfg, indent=1, sort_keys=True, default=str))
        return d

    def lock(self, kind: str, cfg: dict, timeout: float = -1):
        """An exclusive OS lock on one entry (``<root>/<kind>-<hash>.lock``), held while the entry is loaded
        or trained: a second process waits, then finds the finished network. ``fcntl`` locks are released
        by the kernel when their process dies, so a killed trainer leaves nothing that blocks."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{kind}-{config_key(cfg)}.lock"), timeout=timeout)

    def save(self, kind: str, cfg: dict, model: nn.Module, extra: dict | None = None) -> Path:
        p = self.dir(kind, cfg) / "final.pt"
        atomic_torch_save({"model": model.state_dict(), "pruned": C.pruned_param_names(model),
                           "spec": json.dumps(getattr(model, "apnb_spec", {})),
                           "extra": json.dumps(extra or {}, default=str)}, p)
        return p

    def load(self, kind: str, cfg: dict, model: nn.Module) -> dict | None:
        p = self.root / f"{kind}-{config_key(cfg)}" / "final.pt"
        if not p.exists():
            return None
        ck = load_checkpoint(p, model)
        return json.loads(ck.get("extra", "{}"))
