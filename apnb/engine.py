"""One ``fit`` for teacher training, distillation and pruning fine-tune (the store of finished networks is
:mod:`apnb.store`).

- SGD (momentum, weight decay) with a multistep (paper), cosine or one-cycle schedule; fp32, or bf16 autocast
  where ``TrainConfig.precision`` asks for it (:mod:`apnb.precision`).
- The objective is pluggable: :class:`Supervised` or :class:`StudentObjective` (KD and/or task loss plus the
  attribution-matching regularizer of :mod:`apnb.matching`).
- Atomic checkpoints every epoch (model, optimizer, scheduler, RNG states, pruning masks, history).
  A killed run resumes from its last checkpoint and ends with the same result: each epoch reseeds every
  RNG from ``(seed, epoch)``, so nothing depends on how many epochs ran in this process.
- A checkpoint names the run it belongs to (``run_key``: the store key plus the training configuration and
  the library version); resuming from a checkpoint of another run is refused with a one-line error.
- The store takes an OS file lock per entry (:meth:`apnb.store.Store.lock`, the ``filelock`` package): a second process
  asking for the same network waits, then loads it instead of training it again; the lock dies with its
  process, so a killed trainer blocks nothing.
- :func:`fit_cohort` trains several networks in lockstep on shared batches with one teacher pass per batch
  (a grid of methods at one seed); each ends exactly as :func:`fit` alone would make it.
- A NaN or inf loss stops the run with epoch and step named; the last good checkpoint is kept.
- ``torchrun``: with ``WORLD_SIZE`` > 1 in the environment, :func:`setup_distributed` starts the
  process group and ``fit`` wraps the model in DistributedDataParallel with a DistributedSampler; the
  global batch is split across processes and only rank 0 writes checkpoints.
"""
from __future__ import annotations

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
from . import records
from . import precision as P
from . import work
from .config import atomic_torch_save, config_key, resolve_device
from .matching import AttributionMatching
from .models import ModelError
from .specs import TrainConfig  # noqa: F401  (torch-free, for the parameter check)

work.from_env()  # inside `apnb run`: count what every network computes (apnb.work)


# ------------------------------------------------------------------ objectives
class Supervised:
    """Task loss only: multi-label soft margin (VOC) or cross-entropy."""

    def __init__(self, multilabel: bool = True):
        self.loss = C.task_loss(multilabel)

    def __call__(self, model, x, y):
        loss = self.loss(model(x), y)
        return loss, {"loss": loss.detach()}


class StudentObjective:
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

    def teacher_need(self):
        """Key of the teacher pass this objective needs (``False``: none); see
        :meth:`apnb.matching.AttributionMatching.teacher_pass`."""
        if not (self.kd or self.matching.active):
            return False
        return self.matching.teacher_need()

    def __call__(self, model, x, y, cache: dict | None = None):
        need_t = self.kd or self.matching.active
        s_logits, t_logits, match = self.matching(model, x, self.teacher if need_t else None, y, self.task, cache)
        if self.kd:
            kd = C.kd_multilabel if self.multilabel else C.kd_softmax
            base = kd(s_logits, t_logits, y, self.T, self.alpha)
        else:
            base = self.task(s_logits, y)
        loss = base + self.matching.beta * match
        return loss, {"loss": loss.detach(), "task": base.detach(), "match": match.detach()}


Compress = StudentObjective  # its former name, kept for old imports


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


def saved_state(model: nn.Module) -> dict:
    """``model.state_dict()`` with pruning masks (``*.weight_mask``, 0/1) as bool: a quarter of their float32
    size, which matters for the paper's unstructured VGG16 (its masks are as large as its weights)."""
    return {k: (v.bool() if k.endswith("weight_mask") else v) for k, v in model.state_dict().items()}


def load_state(model: nn.Module, state: dict, pruned: list[str], where: str = "checkpoint"):
    C.reapply_pruning(model, pruned)
    own = model.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.dtype == torch.bool else v) for k, v in state.items()}
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
    cohort: int = 1  # networks trained together (fit_cohort); seconds is then the cohort's time per network


def _resume(model: nn.Module, opt, sch, cfg: TrainConfig, ckpt, key: str | None):
    """Load ``ckpt`` into model, optimizer and scheduler when it exists and belongs to this run (else a one-line
    error). Returns ``(FitResult, start epoch, ckpt path or None, run key)``."""
    res, start = FitResult(), 0
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
    return res, start, ckpt, rkey


def _save(model: nn.Module, opt, sch, epoch: int, history: list, rkey: str, ckpt: Path):
    """The atomic end-of-epoch checkpoint that :func:`_resume` reads."""
    atomic_torch_save({"model": saved_state(model), "optimizer": opt.state_dict(), "scheduler": sch.state_dict(),
                       "epoch": epoch, "history": json.dumps(history), "pruned": C.pruned_param_names(model),
                       "spec": json.dumps(getattr(model, "apnb_spec", {})), "run_key": rkey}, ckpt)


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
    records :func:`run_key` and a checkpoint of another run is never resumed. Its work is counted as
    training (:mod:`apnb.work`).
    """
    with work.phase("train"):
        res = _fit(model, objective, train_set, cfg, ckpt, eval_fn, device, progress, stop_after_epoch, key)
    records.add_work()
    return res


def _fit(model, objective, train_set, cfg, ckpt, eval_fn, device, progress, stop_after_epoch, key) -> FitResult:
    from tqdm.auto import tqdm

    device = resolve_device(device)
    rank, world = setup_distributed()
    model.to(device)
    if isinstance(objective, StudentObjective) and objective.teacher is not None:
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
    res, start, ckpt, rkey = _resume(model, opt, sch, cfg, ckpt, key)
    prec = P.resolve(cfg.precision, device)
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
            with P.autocast(prec, device):
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
            _save(model, opt, sch, epoch + 1, res.history, rkey, ckpt)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    res.seconds = time.time() - t0
    res.images_per_s = seen / max(res.seconds, 1e-9)
    model.eval()
    return res


# ------------------------------------------------------------------ cohorts
@dataclass
class Member:
    """One network of a cohort: what :func:`apnb.engine.fit` takes for it, and a name for messages."""
    model: nn.Module
    objective: Callable
    cfg: TrainConfig
    ckpt: str | Path | None = None
    key: str | None = None
    eval_fn: Callable[[nn.Module], dict] | None = None
    name: str = "member"


def _rng_state(device) -> tuple:
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _same_state(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and (a[1] is None or torch.equal(a[1], b[1]))


def cohort_key(cfg: TrainConfig) -> tuple:
    """Members may share batches only when these agree: the seed fixes the data order and the augmentation,
    and one precision gives the teacher pass they share."""
    return (cfg.seed, cfg.batch_size, cfg.num_workers, cfg.precision)


def fit_cohort(members: list[Member], train_set: Dataset, device="auto", progress: bool = True,
               stop_after_epoch: int | None = None) -> list[FitResult]:
    """Train several networks in lockstep on the same batches: each batch is loaded once and each distinct
    teacher pass (KD logits, the layer activations for EWA, the Grad-CAM gradients for SWA/SSWA) runs once
    for the whole cohort (:meth:`apnb.matching.AttributionMatching.teacher_pass`).

    Every member keeps its own optimizer, schedule, SSWA mask generator, checkpoint (the file and format of
    :func:`apnb.engine.fit`, so either resumes the other's) and epoch: a member whose checkpoint is ahead
    skips the epochs it has. **A member ends exactly as it would alone** with :func:`apnb.engine.fit`: the
    data order and augmentation depend on ``(seed, epoch)`` only, and each member's step starts from the
    global RNG state that the batch left, as it would alone, so its dropout masks are its own run's. That
    needs every member to draw the same amount of randomness per step (one architecture, one dropout); a
    member that does not is refused with a one-line error. Members must share ``seed``, ``batch_size``,
    ``num_workers`` and ``precision`` (:func:`apnb.engine.cohort_key`). One process only (under torchrun, use
    :func:`apnb.engine.fit`). ``seconds`` of each result is the cohort's wall time per member."""
    with work.phase("train"):
        out = _fit_cohort(members, train_set, device, progress, stop_after_epoch)
    records.add_work()
    return out


def _fit_cohort(members, train_set, device, progress, stop_after_epoch) -> list[FitResult]:
    from tqdm.auto import tqdm

    if not members:
        return []
    device = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("fit_cohort runs in one process; under torchrun train each network with fit")
    keys = {cohort_key(m.cfg) for m in members}
    if len(keys) > 1:
        raise ValueError(f"cohort members differ in (seed, batch_size, num_workers, precision): {sorted(keys)}; "
                         f"group them with engine.cohort_key")
    cfg0 = members[0].cfg
    sampler = DistributedSampler(train_set, 1, 0, shuffle=True, seed=cfg0.seed, drop_last=True)
    gen = torch.Generator()
    loader = DataLoader(train_set, batch_size=cfg0.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg0.num_workers, generator=gen, persistent_workers=False)
    steps = len(loader)
    if steps == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {cfg0.batch_size}")
    states = []
    for m in members:
        m.model.to(device)
        if getattr(m.objective, "teacher", None) is not None:
            m.objective.teacher.to(device)
        opt, sch = make_optimizer(m.model, m.cfg, steps)
        res, start, ckpt, rkey = _resume(m.model, opt, sch, m.cfg, m.ckpt, m.key)
        states.append({"m": m, "opt": opt, "sch": sch, "res": res, "start": start, "ckpt": ckpt, "rkey": rkey,
                       "seen": 0})
    # members whose objective needs the most of a teacher pass step first (gradients, then activations, then
    # logits), so that the others reuse their pass (AttributionMatching.teacher_pass)
    def _order(st):
        need = getattr(st["m"].objective, "teacher_need", lambda: False)()
        return (need in (None, False), -need[1] if isinstance(need, tuple) else 0)

    order = sorted(states, key=_order)
    prec = {id(st["m"]): P.resolve(st["m"].cfg.precision, device) for st in states}
    last = max(m.cfg.epochs for m in members)
    first = min(st["start"] for st in states)
    t_start = time.time()
    for epoch in range(first, last):
        active = [st for st in order if st["start"] <= epoch < st["m"].cfg.epochs]
        if not active:
            continue
        es = _epoch_seed(cfg0.seed, epoch)
        seed_all(es)
        gen.manual_seed(es)
        sampler.set_epoch(epoch)
        for st in active:
            if hasattr(st["m"].objective, "reseed"):
                st["m"].objective.reseed(es)
            st["m"].model.train()
            st["sums"] = {}
        bar = tqdm(loader, desc=f"cohort of {len(active)}: epoch {epoch + 1}/{last}", disable=not progress,
                   leave=False)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            caches: dict[int, dict] = {}  # one per teacher: the teacher passes of this batch
            before, after = _rng_state(device), None
            for st in active:
                m = st["m"]
                _set_rng_state(before, device)
                cache = caches.setdefault(id(getattr(m.objective, "teacher", None)), {})
                with P.autocast(prec[id(m)], device):
                    loss, logs = (m.objective(m.model, x, y, cache=cache) if hasattr(m.objective, "teacher_need")
                                  else m.objective(m.model, x, y))
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"{m.name}: non-finite loss {loss.item()} at epoch {epoch + 1} step {step + 1}: training "
                        f"stopped; the last good checkpoint is kept{' at ' + str(st['ckpt']) if st['ckpt'] else ''}; "
                        f"lower lr or beta")
                st["opt"].zero_grad(set_to_none=True)
                loss.backward()
                if m.cfg.clip_grad:
                    nn.utils.clip_grad_norm_(m.model.parameters(), m.cfg.clip_grad)
                st["opt"].step()
                st["sch"].step()
                st["seen"] += x.shape[0]
                for k, v in logs.items():
                    st["sums"][k] = st["sums"].get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
                now = _rng_state(device)
                if after is None:
                    after = now
                elif not _same_state(after, now):
                    raise ValueError(f"{m.name} draws different randomness per step than {active[0]['m'].name} "
                                     f"(another architecture or dropout): train it in its own cohort")
            _set_rng_state(after, device)
        for st in active:
            m = st["m"]
            row = {"epoch": epoch + 1, **{k: v / steps for k, v in st["sums"].items()}}
            if m.eval_fn is not None:
                m.model.eval()
                row.update(m.eval_fn(m.model))
            st["res"].history.append(row)
            if progress:
                print(m.name, " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            if st["ckpt"] is not None:
                _save(m.model, st["opt"], st["sch"], epoch + 1, st["res"].history, st["rkey"], st["ckpt"])
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    wall = time.time() - t_start
    out = []
    for st in states:
        st["m"].model.eval()
        res = st["res"]
        res.cohort = len(states)
        res.seconds = wall / len(states)  # the cohort's time per member: loading and teacher passes are shared
        res.images_per_s = st["seen"] / max(res.seconds, 1e-9)
        out.append(res)
    return out
