"""What a reviewer asks of a compressed network's maps beyond its Grad-CAM AUC (the chapter "The field since
2020"), one row per network:

- **a masking-based map**: Score-CAM (Wang et al., CVPR-W 2020; the ``grad-cam`` package through
  :func:`apnb.attribution.attribute`) scored like Grad-CAM, AUC and pointing, on the first ``n_images`` images
  of the localization set (``AUC_scorecam``, ``point_acc_tol_scorecam``). The paper's meta-review asked whether
  matching Grad-CAM preserves what a perturbation-based method sees;
- **the model parameter randomisation test** (Adebayo et al., NeurIPS 2018), cascading from the top layer
  (:func:`apnb.sanity.parameter_randomisation`, equal to Quantus' MPRT): the mean Spearman correlation of each
  image's Grad-CAM map with its map under the trained weights after the top layer is re-initialised
  (``rand_top``) and after every layer is (``rand_all``). A map that keeps a correlation of 0.5 or more with
  every weight randomised does not depend on what the network learned: ``rand_pass`` is ``rand_all < 0.5``. A
  map that becomes constant (all zero after the ReLU) has no rank correlation: it is counted as 0, a map that
  did change;
- **pixel flipping** (Bach et al., PLoS ONE 2015; :func:`apnb.faithfulness.pixel_flipping`, equal to Quantus'
  PixelFlipping): pixels removed in the order of the upsampled Grad-CAM map, highest first, in ``flip_steps``
  equal steps, and the target class's sigmoid (softmax for single-label data) read after each; ``pf_gradcam`` is
  the mean score along the curve (the area over ``steps - 1``: lower is a map that finds the evidence sooner)
  and ``pf_random`` the same for a random order of the same pixels (the floor a map has to beat).

Targets are each image's first ground-truth class present in its segmentation (one pair per image). No
retraining is involved (ROAR is chapter 06's). A row is kept in the evaluation cache (:mod:`apnb.evalcache`)
under the network's weights, the data and the source of this module and the two it calls, so a network is
scrutinised once.
"""
from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from . import evalcache as EC
from .attribution import attribute
from .config import resolve_device
from .evaluate import LocResult, localization
from .faithfulness import pixel_flipping
from .gradcam import gradcam
from .sanity import parameter_randomisation

__all__ = ["scrutinise", "first_pairs", "SOURCES", "COLUMNS"]

SOURCES = ("scrutiny.py", "sanity.py", "faithfulness.py")
COLUMNS = ("AUC_scorecam", "point_acc_tol_scorecam", "rand_top", "rand_all", "rand_pass", "pf_gradcam", "pf_random")


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((Path(__file__).resolve().parent / name).read_bytes())
    return h.hexdigest()[:16]


def first_pairs(loc_set, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_images`` images of ``loc_set`` that hold an object, and each one's first class present in
    its segmentation (single-label sets: its label): ``(x [n,C,H,W], target [n])``."""
    xs, ts = [], []
    for i in range(len(loc_set)):
        x, lab, seg = loc_set[i]
        seg = torch.as_tensor(seg)
        lab = torch.as_tensor(lab)
        if lab.ndim == 0:  # single-label (ImageNet): the label, where the foreground mask holds an object
            present = [int(lab)] if bool((seg == 1).any()) else []
        else:
            present = [c for c in range(len(lab)) if bool(lab[c]) and bool((seg == c + 1).any())]
        if present:
            xs.append(torch.as_tensor(x))
            ts.append(present[0])
        if len(xs) == n_images:
            break
    if not xs:
        raise ValueError("scrutiny: no image of the localization set holds an object")
    return torch.stack(xs), torch.tensor(ts)


def scrutinise(model, data: dict, layer: str = "last_conv", device="auto", n_images: int = 64,
               flip_steps: int = 32, multilabel: bool = True, seed: int = 0) -> tuple[dict, LocResult]:
    """One network's row (see the module's docstring) and its Score-CAM :class:`~apnb.evaluate.LocResult` on
    the first ``n_images`` localization images (for :func:`apnb.evaluate.common_pairs` across networks)."""
    settings = {"what": "scrutiny", "layer": layer, "n_images": n_images, "flip_steps": flip_steps,
                "multilabel": multilabel, "seed": seed, "src": _source_hash()}
    key = EC.key(model, data, settings)
    hit = EC.get(key) if key else None
    if hit is not None:
        return hit
    device = resolve_device(device)
    model.eval().to(device)
    sub = Subset(data["loc"], range(min(n_images, len(data["loc"]))))
    score_cam = lambda m, x, t: attribute(m, x, t, "scorecam", layer=layer)
    loc = localization(model, sub, device, attr=score_cam, multilabel=multilabel)
    s = loc.summary(strict=False)
    row = {"AUC_scorecam": s["AUC"], "point_acc_tol_scorecam": s["point_acc_tol"]}

    x, t = first_pairs(data["loc"], n_images)
    x, t = x.to(device), t.to(device)
    explain = lambda m, xx, tt: gradcam(m, xx, layer, tt, upsample=True)[0]
    with warnings.catch_warnings():  # a constant map has no rank correlation: counted as 0 below
        warnings.simplefilter("ignore")
        rnd = parameter_randomisation(model, x, t, explain, seed=seed)
    rnd["spearman"] = rnd.spearman.fillna(0.0)
    by_step = rnd.groupby("step").spearman.mean()
    row.update(rand_top=float(by_step.iloc[0]), rand_all=float(by_step.iloc[-1]))
    row["rand_pass"] = bool(row["rand_all"] < 0.5)

    maps = explain(model, x, t).detach()
    per_step = max(1, maps[0].numel() // flip_steps)
    score = "sigmoid" if multilabel else "softmax"
    curves, area = pixel_flipping(model, x, t, maps, pixels_in_step=per_step, score=score)
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(maps.shape, generator=g).to(maps.device)
    _, area_r = pixel_flipping(model, x, t, noise, pixels_in_step=per_step, score=score)
    steps = curves.shape[1]
    row.update(pf_gradcam=float(np.mean(area) / (steps - 1)), pf_random=float(np.mean(area_r) / (steps - 1)))
    if key:
        EC.put(key, row, loc)
    return row, loc
