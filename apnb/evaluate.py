"""Evaluation of a network as in the paper: prediction (mAP, F1), localization (AUC, pointing game) and
teacher-student similarity (cosine, l2), each over the samples the model predicts correctly.

Localization is scored for every (image, ground-truth class) pair of ``ImageSets/Segmentation/val``; a
pair counts when the model predicts that class (``logit > 0``, the authors' rule). Similarity counts the
pairs that *both* networks predict (paper Sec. 4). Maps: Grad-CAM at ``layer`` by default, or any
``apnb.attribution`` method; upsampled bilinearly to the mask size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from . import metrics as Mt
from .config import resolve_device
from .data.voc import class_masks
from .gradcam import gradcam


@torch.no_grad()
def predict(model, dataset, device="auto", batch_size=128):
    device = resolve_device(device)
    model.eval().to(device)
    outs, ys = [], []
    for x, y, *_ in DataLoader(dataset, batch_size=batch_size):
        outs.append(model(x.to(device)).float().cpu())
        ys.append(torch.as_tensor(y))
    return torch.cat(outs), torch.cat(ys)


def prediction_metrics(model, dataset, device="auto", multilabel=True) -> dict:
    logits, y = predict(model, dataset, device)
    if multilabel:
        return {"mAP": Mt.voc_map(logits, y), "image_AP": Mt.image_ap(logits, y), "F1": Mt.f1_samples(logits, y)}
    return {"top1": Mt.top1(logits, y)}


@dataclass
class LocResult:
    """Per (image, class) pair: ``pairs`` frame (img, cls, predicted, auc, hit, hit15, auc_void_neg) and the
    low-resolution maps ``[P,h,w]`` used for the teacher-student similarity."""
    pairs: pd.DataFrame
    maps: torch.Tensor

    def summary(self, strict: bool = True) -> dict:
        """Means over correctly predicted pairs. With ``strict=False`` an empty selection gives NaNs."""
        p = self.pairs[self.pairs.predicted]
        if len(p) == 0 and not strict:
            return {k: float("nan") for k in ("AUC", "point_acc", "point_acc_15px", "point_acc_classmean",
                                              "AUC_void_negative")} | {"n_pairs": 0}
        if len(p) == 0:
            raise Mt.MetricError("no correctly predicted (image, class) pair: the model predicts none of the "
                                 "ground-truth classes; train longer or check the data")
        return {"AUC": float(p.auc.mean()), "point_acc": float(p.hit.mean()), "point_acc_15px": float(p.hit15.mean()),
                "point_acc_classmean": float(p.groupby("cls").hit.mean().mean()),
                "AUC_void_negative": float(p.auc_void_neg.mean()), "n_pairs": int(len(p))}


def attribution_fn(method="gradcam", layer="last_conv", **options):
    """``fn(model, x, target) -> maps [B,h,w]`` for :func:`localization`."""
    if method == "gradcam":
        return lambda model, x, t: gradcam(model, x, layer, target=t)[0]
    from .attribution import attribute

    return lambda model, x, t: attribute(model, x, t, method, **options)


def localization(model, loc_set, device="auto", batch_size=64, attr=None, tolerance=15,
                 single_label=False) -> LocResult:
    """Maps for every ground-truth (image, class) pair and their AUC / pointing-game scores.

    ``single_label``: ``loc_set`` yields (image, label, foreground mask) (ImageNet); the map of the top-1
    prediction is scored on every image, right or wrong (paper supplement B: the segmentation set's labels
    are not ImageNet-1k classes), so ``predicted`` is true for every scorable image; ``cls`` holds the label
    (-1 when unknown), ``target`` the top-1 class whose map was scored and ``correct`` whether they agree.
    """
    device = resolve_device(device)
    model.eval().to(device)
    attr = attr or attribution_fn()
    rows, maps_all, offset = [], [], 0
    for batch in DataLoader(loc_set, batch_size=batch_size):
        x, lab, seg = batch
        x = x.to(device)
        with torch.no_grad():
            logits = model(x).float().cpu()
        if single_label:
            ii = torch.arange(len(x))
            cc = logits.argmax(1)
            masks, void = seg == 1, seg == 255
            correct = cc == torch.as_tensor(lab)
            predicted = torch.ones(len(x), dtype=torch.bool)
            keys = torch.as_tensor(lab)
        else:
            ii, cc, masks, void = class_masks(seg, lab)
            predicted = logits[ii, cc] > 0
            correct, keys = predicted, cc
        maps = attr(model, x[ii.to(device)], cc.to(device)).float().cpu()
        up = Mt.upsample(maps, masks.shape[-2:])
        valid = ~void
        ok = (masks & valid).flatten(1).any(1) & (~masks & valid).flatten(1).any(1)
        auc = torch.full((len(ii),), float("nan"), dtype=torch.float64)
        auc_neg = auc.clone()
        if ok.any():
            auc[ok] = Mt.roc_auc(up[ok], masks[ok], valid[ok])
            auc_neg[ok] = Mt.roc_auc(up[ok], masks[ok] & valid[ok])  # void counted as negative (authors)
        hit = Mt.pointing_hits(up, masks, 0, "first", valid)
        hit15 = Mt.pointing_hits(up, masks, tolerance, "first", valid)
        for k in range(len(ii)):
            rows.append({"img": offset + int(ii[k]), "cls": int(keys[k]), "target": int(cc[k]),
                         "correct": bool(correct[k]), "predicted": bool(predicted[k]) and bool(ok[k]),
                         "auc": float(auc[k]), "auc_void_neg": float(auc_neg[k]), "hit": bool(hit[k]),
                         "hit15": bool(hit15[k])})
        maps_all.append(maps)
        offset += len(x)
    return LocResult(pd.DataFrame(rows), torch.cat(maps_all))


def similarity(teacher: LocResult, student: LocResult, strict: bool = True) -> dict:
    """Cosine and normalized l2 of the maps over pairs both networks predict (supplement C.3)."""
    if len(teacher.pairs) != len(student.pairs) or not (teacher.pairs[["img", "cls"]].values
                                                        == student.pairs[["img", "cls"]].values).all():
        raise Mt.MetricError("teacher and student were evaluated on different (image, class) pairs: use the same "
                             "localization set and attribution target")
    both = torch.tensor((teacher.pairs.predicted & student.pairs.predicted).to_numpy(copy=True))
    if not both.any() and not strict:
        return {"cos": float("nan"), "l2": float("nan"), "n_both": 0}
    if not both.any():
        raise Mt.MetricError("no pair is predicted correctly by both networks: nothing to compare")
    mt, ms = teacher.maps[both], student.maps[both]
    if mt.shape[-2:] != ms.shape[-2:]:
        size = tuple(np.maximum(mt.shape[-2:], ms.shape[-2:]))
        mt, ms = Mt.upsample(mt, size), Mt.upsample(ms, size)
    return {"cos": float(Mt.cosine(mt, ms).mean()), "l2": float(Mt.normalized_l2(mt, ms).mean()),
            "n_both": int(both.sum())}
