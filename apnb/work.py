"""What a run computed, counted as it runs, and what the machine can do.

Inside ``apnb run`` (``$APNB_RECORD`` set) one global forward hook counts the multiply-accumulates (MACs) of
every convolution and linear layer that runs, whoever runs it: a student's step, the teacher's pass of a
cohort, Grad-CAM, LRP or an ablation. A pass run under autograd (its output requires a gradient) is
counted with its backward, taken as twice the forward (the input and the weight gradients), so

    FLOP = 2 x (MACs of passes without gradient + 3 x MACs of passes with gradient).

That is the usual convention (Kaplan et al. 2020, "Scaling laws for neural language models", arXiv
2001.08361: 6 FLOP per parameter and token for training); it leaves out batch norm, activations, the
double backward of SWA/SSWA and the partial backward of Grad-CAM (counted as a full one). Work done inside
:func:`apnb.engine.fit` and :func:`apnb.engine.fit_cohort` is ``train``, the rest ``eval``. The counts go to
the run record's ``work`` header (:func:`apnb.records.log` and :func:`apnb.records.tally` carry them), in
TFLOP, so each chapter's record holds what it computed.

:func:`machine_rate` measures what this machine reaches on the demo teacher's training step (one second,
all cores, fp32, counted by the same hook), the yardstick of ``apnb book``'s plan and of the execution page.
"""
from __future__ import annotations

import contextlib
import os
import time

__all__ = ["enable", "enabled", "from_env", "phase", "take", "pending", "flop", "machine_rate", "cpu_name",
           "chapter_plan", "book_plan", "plan_lines"]

_COUNTS = {"train": [0, 0], "eval": [0, 0]}  # phase -> [MACs without gradient, MACs with gradient]
_STATE = {"phase": "eval", "handle": None}


def _hook(module, inputs, output):
    import torch
    import torch.nn as nn

    if not isinstance(output, torch.Tensor):
        return
    if isinstance(module, nn.Conv2d):
        macs = output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    elif isinstance(module, nn.Linear):
        macs = output.numel() * module.in_features
    else:
        return
    _COUNTS[_STATE["phase"]][1 if output.requires_grad else 0] += macs


def enable() -> None:
    """Start counting in this process (once); the counts go to the run record with its next write
    (:func:`apnb.records.log`, :func:`apnb.records.tally`, and the end of every fit)."""
    if _STATE["handle"] is not None:
        return
    from torch.nn.modules.module import register_module_forward_hook

    _STATE["handle"] = register_module_forward_hook(_hook)


def enabled() -> bool:
    return _STATE["handle"] is not None


@contextlib.contextmanager
def phase(name: str):
    """Count the work inside the block as ``name`` (``train`` or ``eval``)."""
    before = _STATE["phase"]
    _STATE["phase"] = name
    try:
        yield
    finally:
        _STATE["phase"] = before


def flop(no_grad_macs: int, grad_macs: int) -> float:
    """FLOP of passes with these MACs: 2 per MAC, a pass with gradient three times (forward and backward)."""
    return 2.0 * (no_grad_macs + 3 * grad_macs)


def pending() -> dict:
    """TFLOP counted since the last :func:`take`, per phase (without resetting)."""
    return {f"{p}_tflop": flop(*c) / 1e12 for p, c in _COUNTS.items()}


def take() -> dict:
    """TFLOP counted since the last call, per phase (``train_tflop``, ``eval_tflop``), and reset."""
    out = pending()
    for c in _COUNTS.values():
        c[0] = c[1] = 0
    return out


def machine_rate(spec: dict | None = None, batch: int = 32, image_size: int = 64, seconds: float = 1.0,
                 precision: str = "fp32", device="cpu") -> float:
    """GFLOP/s this machine reaches on one training step of ``spec`` (default: the demo teacher, VGG16_bn with
    widths /4 and 3 pools, 6 classes) at ``batch`` x ``image_size`` px, with all the threads torch uses,
    timed for about ``seconds`` after one warm-up step and counted by this module's hook."""
    import torch

    from . import models as M
    from . import precision as P
    from .config import resolve_device
    from .engine import Supervised, TrainConfig, make_optimizer

    dev = resolve_device(device)
    spec = spec or {"arch": "vgg16_bn", "num_classes": 6, "width_div": 4, "n_pools": 3, "head_pool": 1}
    model = M.build(spec, seed=0).to(dev).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=g).to(dev)
    y = (torch.rand(batch, spec.get("num_classes", 6), generator=g) > 0.7).float().to(dev)
    opt, _ = make_optimizer(model, TrainConfig(epochs=1, lr=1e-3), 10)
    obj = Supervised()
    prec = P.resolve(precision, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        with P.autocast(prec, dev):
            loss, _ = obj(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    saved = {k: list(v) for k, v in _COUNTS.items()}
    had = enabled()
    enable()
    try:
        step()
        sync()
        for c in _COUNTS.values():
            c[0] = c[1] = 0
        t0 = time.perf_counter()
        while True:
            step()
            sync()
            if time.perf_counter() - t0 >= seconds:
                break
        dt = time.perf_counter() - t0
        total = sum(flop(*c) for c in _COUNTS.values())
    finally:
        for k, v in saved.items():  # the measurement is not the run's work
            _COUNTS[k][:] = v
        if not had:
            _STATE["handle"].remove()
            _STATE["handle"] = None
    return total / dt / 1e9


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s, from ``/proc/cpuinfo``), its ISA level as torch sees it, and the
    threads torch uses."""
    import torch

    name = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def from_env() -> None:
    """Enable counting when this process runs a notebook for ``apnb run`` (``$APNB_RECORD`` set)."""
    from .records import ENV

    if ENV in os.environ:
        enable()


# ------------------------------------------------------------------ the book's plan


def chapter_plan(nb, profile: str, store_root) -> dict:
    """What ``nb`` still has to compute at ``profile``, from its last run record: nothing when its run is
    current; its evaluation, plus its training when a network it used is missing from the store, when the
    run is stale; unknown (``tflop`` None) without a record that counts work."""
    import json

    from . import runner

    rec_path = runner.runs_dir(profile) / f"{nb.stem}.results.json"
    row = {"notebook": nb.stem, "state": "new", "tflop": None, "recorded_tflop": None, "recorded_s": None}
    if not rec_path.exists():
        return row
    try:
        rec = json.loads(rec_path.read_text())
    except ValueError:
        return row
    w = rec.get("work")
    if w is not None:
        row["recorded_tflop"] = w.get("train_tflop", 0.0) + w.get("eval_tflop", 0.0)
    row["recorded_s"] = rec.get("wall_time_s")
    if runner.is_current(nb, profile):
        return dict(row, state="current", tflop=0.0)
    if w is None:
        return dict(row, state="stale")
    missing = [e for e in rec.get("store", {}).get("entries", []) if not (store_root / e / "final.pt").exists()]
    todo = w.get("eval_tflop", 0.0) + (w.get("train_tflop", 0.0) if missing else 0.0)
    return dict(row, state="stale", tflop=todo)


def book_plan(profile: str, rate_gflops: float, notebooks=None) -> list[dict]:
    """:func:`chapter_plan` of every notebook of the book, with its expected minutes at ``rate_gflops``."""
    from . import runner
    from .config import store_dir

    rows = [chapter_plan(nb, profile, store_dir() / "checkpoints") for nb in (notebooks or runner.toc_notebooks())]
    for r in rows:
        r["minutes"] = None if r["tflop"] is None else r["tflop"] * 1e3 / rate_gflops / 60
    return rows


def plan_lines(rows: list[dict], rate_gflops: float, cpu: str) -> list[str]:
    """The printed plan: one line per chapter and the total, last."""
    out = []
    for r in rows:
        if r["tflop"] is None and r["state"] == "stale":
            what = "unknown: its last run record predates the counting of work"
        elif r["tflop"] is None:
            what = "unknown: no run record yet (known after the first build)"
        elif r["state"] == "current":
            what = "current: nothing to compute"
        else:
            what = f"{r['tflop']:8.2f} TFLOP  {r['minutes']:6.1f} min"
        out.append(f"  {r['notebook']:<28} {what}")
    known = [r for r in rows if r["tflop"] is not None]
    total = sum(r["tflop"] for r in known)
    unknown = len(rows) - len(known)
    if unknown:
        out.append(f"  ({unknown} of {len(rows)} chapters unknown: the total below leaves them out)")
    out.append(f"plan: {total:.2f} TFLOP, {total * 1e3 / rate_gflops / 60:.1f} min at {rate_gflops:.0f} GFLOP/s ({cpu})")
    return out
