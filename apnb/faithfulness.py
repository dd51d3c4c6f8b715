"""Faithfulness of attribution maps: ROAR, DiffROAR (with retraining) and DiffID (without).

- **ROAR** (Hooker et al.): rank the pixels of each image by its map, replace the top ``k`` % with the
  per-channel mean of the data, retrain a fresh classifier on the modified training set for each ``k`` and
  report its accuracy (or F1) on the equally modified test set; a random ranking is the baseline. A
  faithful map makes accuracy fall faster than random.
- **DiffROAR** (Shah et al.): accuracy with the top-``k`` % *kept* (the rest removed) minus accuracy with the
  bottom-``k`` % kept, each after retraining.
- **DiffID** (the LPI supplement's code, ``evaluator.py::DiffID``): no retraining. Saliency ``|map|``,
  min-max per image; for ratios r, *deletion* removes the top-r pixels and *insertion* keeps only the top
  (1-r); removed pixels take the mean of the kept values; the score is the ratio of the perturbed to the
  original target logit (and top-1 accuracy); DiffID(r) = insertion - deletion, and its area over r.
- **Pixel flipping** (Bach et al., PLoS ONE 2015; Quantus' ``PixelFlipping``): no retraining. The pixels of
  each image are flipped to the image's minimum in the order of its map, ``pixels_in_step`` at a time, and the
  target's score is read after each step; the area under that curve (trapezoids, unit spacing) is low when
  the map ranks first what the network needs. :func:`pixel_flipping` equals Quantus on a small network.

Maps are ``[N,H,W]`` at the input resolution; a pixel is removed in all colour channels.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn


def rank_mask(maps: torch.Tensor, fraction: float, top: bool = True, generator: torch.Generator | None = None):
    """Boolean ``[N,H,W]`` marking the top (or bottom) ``fraction`` of each map's pixels.

    ``maps=None`` with a generator gives the random baseline. Ties are broken by pixel index (stable sort).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction}: must be in [0, 1]")
    n, h, w = maps.shape
    k = int(round(fraction * h * w))
    flat = maps.reshape(n, -1).float()
    if generator is not None:
        flat = torch.rand(flat.shape, generator=generator).to(flat.device)
    order = torch.sort(flat, dim=1, descending=top, stable=True).indices
    m = torch.zeros_like(flat, dtype=torch.bool)
    m.scatter_(1, order[:, :k], True)
    return m.view(n, h, w)


def replace(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor | str = "kept_mean") -> torch.Tensor:
    """Copy of ``x`` [N,C,H,W] with the masked pixels replaced.

    ``fill``: a per-channel tensor [C] (ROAR: the dataset mean) or ``"kept_mean"`` (DiffID: the mean of each
    image's kept pixels, per channel).
    """
    m = mask[:, None].expand_as(x)
    if isinstance(fill, str):
        if fill != "kept_mean":
            raise ValueError(f"fill={fill!r}: a per-channel tensor or 'kept_mean'")
        keep = (~mask)[:, None].float()
        val = (x * keep).sum((2, 3)) / keep.sum((2, 3)).clamp_min(1)
    else:
        val = torch.as_tensor(fill, dtype=x.dtype, device=x.device)[None].expand(x.shape[0], -1)
    return torch.where(m, val[:, :, None, None].expand_as(x), x)


def saliency(maps: torch.Tensor) -> torch.Tensor:
    """``|map|`` min-max normalised per image (DiffID's preprocessing)."""
    a = maps.abs().flatten(1)
    lo, hi = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
    return ((a - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


@torch.no_grad()
def diffid(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
           ratios: Sequence[float] = tuple(np.round(np.arange(0.1, 1.0, 0.1), 2)), batch_size: int = 128) -> pd.DataFrame:
    """Insertion, deletion and DiffID per ratio (logit ratio and top-1 accuracy), plus the area over r."""
    model.eval()
    sal = saliency(maps)
    target = torch.as_tensor(target, device=x.device)

    def scores(xx):
        out = torch.cat([model(xx[i:i + batch_size]) for i in range(0, len(xx), batch_size)])
        return out.gather(1, target[:, None])[:, 0], (out.argmax(1) == target).float()

    base, _ = scores(x)
    rows = []
    for r in ratios:
        dele, dacc = scores(replace(x, rank_mask(sal, r, top=True)))
        ins, iacc = scores(replace(x, rank_mask(sal, 1 - r, top=False)))  # keep only the top (1-r)
        d_ratio, i_ratio = float((dele / base).mean()), float((ins / base).mean())
        rows.append({"ratio": float(r), "deletion": d_ratio, "insertion": i_ratio, "diffid": i_ratio - d_ratio,
                     "deletion_acc": float(dacc.mean()), "insertion_acc": float(iacc.mean()),
                     "diffid_acc": float(iacc.mean() - dacc.mean())})
    df = pd.DataFrame(rows)
    df.attrs["area"] = float(np.trapezoid(df.diffid, df.ratio)) if len(df) > 1 else float("nan")
    return df


def roar(make_model: Callable[[], nn.Module], train_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], None],
         score_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], float | dict],
         train: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], test: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
         fractions: Sequence[float], fill: torch.Tensor, keep: bool = False, seed: int = 0) -> pd.DataFrame:
    """ROAR (``keep=False``: remove the top-k) or its keep variant (``keep=True``: keep only the top-k).

    ``train``/``test`` are ``(x, y, maps)``; ``maps=None`` gives the random-ranking baseline. A fresh model
    from ``make_model()`` is trained with ``train_fn`` for every fraction and scored with ``score_fn``, which
    returns one number (column ``score``) or a dict of named scores (one column each).
    """
    rows = []
    for f in fractions:
        g = torch.Generator().manual_seed(seed)
        sets = []
        for x, y, maps in (train, test):
            base = maps if maps is not None else torch.zeros(x.shape[0], *x.shape[2:])
            m = rank_mask(base, f, top=True, generator=g if maps is None else None)
            sets.append((replace(x, ~m if keep else m, fill), y))
        torch.manual_seed(seed)
        model = make_model()
        train_fn(model, *sets[0])
        score = score_fn(model, *sets[1])
        rows.append({"fraction": float(f), **(score if isinstance(score, dict) else {"score": float(score)})})
    return pd.DataFrame(rows)


def diffroar(make_model, train_fn, score_fn, train, test, fractions, fill, seed: int = 0) -> pd.DataFrame:
    """DiffROAR(k) = score with the top-k % kept - score with the bottom-k % kept (both retrained).

    The random ranking (``maps=None``) draws the same mask for both sides, so its DiffROAR is 0 by
    construction and it is trained once."""
    top = roar(make_model, train_fn, score_fn, train, test, fractions, fill, keep=True, seed=seed)
    if train[2] is None and test[2] is None:
        bottom = top
    else:
        flip = lambda t: (t[0], t[1], None if t[2] is None else -t[2])
        bottom = roar(make_model, train_fn, score_fn, flip(train), flip(test), fractions, fill, keep=True, seed=seed)
    return pd.DataFrame({"fraction": top.fraction, "top_kept": top.score, "bottom_kept": bottom.score,
                         "diffroar": top.score - bottom.score})


def pixel_flipping(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                   pixels_in_step: int = 1, score: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """Pixel flipping of ``x`` ``[B,C,H,W]`` by ``maps`` ``[B,H,W]`` (highest first): every step sets the next
    ``pixels_in_step`` pixels, in all channels, to the image's minimum, and reads the ``target`` class's score
    (``softmax`` as Quantus by default, ``sigmoid`` for multi-label networks, or ``logit``). Returns the curves
    ``[B, steps]`` and their areas ``[B]`` (Quantus' ``calculate_auc``: trapezoids of unit spacing; divide by
    ``steps - 1`` for a mean score)."""
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"maps {tuple(maps.shape)}: need one [H,W] map per image of x {tuple(x.shape)}")
    b, c = x.shape[:2]
    flat = x.detach().reshape(b, c, -1).clone()
    order = torch.argsort(maps.detach().reshape(b, -1), dim=1, descending=True, stable=True)
    fill = x.detach().reshape(b, -1).min(1).values
    act = {"softmax": lambda z: z.softmax(1), "sigmoid": torch.sigmoid, "logit": lambda z: z}[score]
    rows = torch.arange(b)
    curves = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, order.shape[1], pixels_in_step):
                idx = order[:, i:i + pixels_in_step]
                flat[rows[:, None, None], torch.arange(c)[None, :, None], idx[:, None, :]] = fill[:, None, None]
                curves.append(act(model(flat.reshape(x.shape)))[rows, target].cpu())
    finally:
        model.train(was)
    curves = torch.stack(curves, 1).numpy()
    return curves, np.trapezoid(curves, dx=1, axis=1)
