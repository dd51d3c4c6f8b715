"""Premise guards: every trained network checks what the next step assumes before anything is built on it.

The paper's argument stands on two premises (see the book's calibration page): the full network localizes
the objects (an ImageNet-initialised VGG16 in the paper, Table 2: AUC 88.8, pointing 80.2), and a naive
compressed network keeps its accuracy. A network that failed to train would make every later number
meaningless, so a failed check stops the run with one line naming the network, the number and the
threshold (:class:`PremiseError`). Thresholds come from the profile (the ``guards`` field of its
``benchmark``); ``None`` or a missing key switches one check off.

- ``plateau``: the pretraining (or training) loss must leave its first plateau: the mean loss of the last
  epoch at most ``plateau`` x the highest loss of the first two epochs (a teacher whose loss sat at 0.61
  from epoch 2 to 12 gives 0.95; one that learns gives about 0.5);
- ``teacher_map_nocue``: the teacher's mAP on the cue-free val copy (it uses the objects);
- ``teacher_map``: its mAP on val;
- ``student_over_chance``: a compressed network's mAP must exceed the mAP of chance-level scores (the mean
  positive rate of each class, :func:`chance_map`) by this margin.
"""
from __future__ import annotations

import torch

from .specs import Guards  # noqa: F401  (torch-free, for the parameter check)


class PremiseError(RuntimeError):
    """A trained network does not reach what the steps built on it assume. ``reason``: what it missed, without the
    network's name or the advice (a chapter's list of networks below the guard shows it); default the message."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def plateau_ratio(history: list[dict], phase: str | None = None) -> float:
    """Last-epoch loss over the highest loss of the first two epochs (of ``phase`` when given)."""
    h = [r for r in history if phase is None or r.get("phase") == phase]
    losses = [float(r["loss"]) for r in h if "loss" in r]
    if len(losses) < 2:
        return float("nan")
    return losses[-1] / max(losses[:2])


def check_plateau(name: str, history: list[dict], threshold: float | None, phase: str | None = None) -> None:
    if threshold is None:
        return
    r = plateau_ratio(history, phase)
    if r == r and r > threshold:  # NaN (a single epoch) cannot be judged
        h = [x for x in history if phase is None or x.get("phase") == phase]
        raise PremiseError(f"{name}: the {phase or 'training'} loss never left its plateau (last/first = {r:.2f} > "
                           f"{threshold}; loss {h[0]['loss']:.3f} -> {h[-1]['loss']:.3f}): train longer, lower the "
                           f"lr or check the data")


def check_min(name: str, metric: str, value: float, threshold: float | None) -> None:
    if threshold is not None and not value >= threshold:
        reason = f"{metric} = {value:.3f} is below the required {threshold:.3f}"
        raise PremiseError(f"{name}: {reason}; nothing can be built on this network (see the calibration page)", reason)


def chance_map(labels: torch.Tensor) -> float:
    """Expected mAP of scores unrelated to the image (labels 0/1, ``[N, K]``): each class's AP is then its
    positive rate; the mean over classes with a positive, as :func:`apnb.metrics.voc_map`."""
    y = torch.as_tensor(labels).double()
    rates = y.mean(0)
    return float(rates[y.sum(0) > 0].mean())
