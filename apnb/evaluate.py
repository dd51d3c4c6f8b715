"""Evaluation of a network as in the paper: prediction (mAP, F1), localization (AUC, pointing game) and
teacher-student similarity (cosine, l2), each over the samples the model predicts correctly.

Localization is scored for every (image, ground-truth class) pair of ``ImageSets/Segmentation/val``; a
pair counts when the model predicts that class (``logit > 0``, the authors' rule). Pointing: ``point_acc``
is the authors' rule (first arg-max inside the mask, no tolerance: the paper's numbers), ``point_acc_tol``
the TorchRay rule with its 15 px scaled to the image size (:func:`apnb.metrics.tolerance_for`: 4 px at
64 px, 15 px at 227 px). Similarity counts the
pairs that *both* networks predict (paper Sec. 4). Maps: Grad-CAM at ``layer`` by default, or any
``apnb.attribution`` method; upsampled bilinearly to the mask size. :func:`evaluate_model` assembles one
row of the paper's Tables 2-7 from these parts; :func:`shortcut_row` adds the reliance on the context cue.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import metrics as Mt
from . import models as M
from . import evalcache as EC
from . import quantization as Q
from .attribution import attribute
from .config import resolve_device
from .data import synthetic
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
    """mAP, image-AP and F1 (multi-label) or top-1 accuracy of ``model`` on ``dataset``."""
    return _scores(*predict(model, dataset, device), multilabel)


def _scores(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> dict:
    if multilabel:
        return {"mAP": Mt.voc_map(logits, y), "image_AP": Mt.image_ap(logits, y), "F1": Mt.f1_samples(logits, y)}
    return {"top1": Mt.top1(logits, y)}


@dataclass
class LocResult:
    """Per (image, class) pair: ``pairs`` frame (img, cls, predicted, auc, hit, hit_tol, auc_void_neg) and the
    low-resolution maps ``[P,h,w]`` used for the teacher-student similarity. ``top1``: optionally the
    ``(targets [N], maps [N,h,w])`` of every val image for one class per image (see :func:`top1_maps`)."""
    pairs: pd.DataFrame
    maps: torch.Tensor
    top1: tuple | None = None
    val_logits: torch.Tensor | None = None  # the network's logits on val: a student's fidelity to its teacher

    def summary(self, strict: bool = True) -> dict:
        """Means over correctly predicted pairs. With ``strict=False`` an empty selection gives NaNs."""
        p = self.pairs[self.pairs.predicted]
        if len(p) == 0 and not strict:
            return {k: float("nan") for k in ("AUC", "point_acc", "point_acc_tol", "point_acc_classmean",
                                              "AUC_void_negative")} | {"n_pairs": 0}
        if len(p) == 0:
            raise Mt.MetricError("no correctly predicted (image, class) pair: the model predicts none of the "
                                 "ground-truth classes; train longer or check the data")
        return {"AUC": float(p.auc.mean()), "point_acc": float(p.hit.mean()), "point_acc_tol": float(p.hit_tol.mean()),
                "point_acc_classmean": float(p.groupby("cls").hit.mean().mean()),
                "AUC_void_negative": float(p.auc_void_neg.mean()), "n_pairs": int(len(p))}


def attribution_fn(method="gradcam", layer="last_conv", **options):
    """``fn(model, x, target) -> maps [B,h,w]`` for :func:`localization`."""
    if method == "gradcam":
        return lambda model, x, t: gradcam(model, x, layer, target=t)[0]
    return lambda model, x, t: attribute(model, x, t, method, **options)


def localization(model, loc_set, device="auto", batch_size=64, attr=None, tolerance: int | None = None,
                 multilabel: bool = True) -> LocResult:
    """Maps for every ground-truth (image, class) pair and their AUC / pointing-game scores.

    ``tolerance`` (px) of ``hit_tol``: default TorchRay's 15 px scaled to the mask size
    (:func:`apnb.metrics.tolerance_for`).

    ``multilabel=False``: ``loc_set`` yields (image, label, foreground mask) (ImageNet); the map of the top-1
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
        if not multilabel:
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
        tol = Mt.tolerance_for(masks.shape[-1]) if tolerance is None else tolerance
        hit_tol = Mt.pointing_hits(up, masks, tol, "first", valid)
        for k in range(len(ii)):
            rows.append({"img": offset + int(ii[k]), "cls": int(keys[k]), "target": int(cc[k]),
                         "correct": bool(correct[k]), "predicted": bool(predicted[k]) and bool(ok[k]),
                         "auc": float(auc[k]), "auc_void_neg": float(auc_neg[k]), "hit": bool(hit[k]),
                         "hit_tol": bool(hit_tol[k])})
        maps_all.append(maps)
        offset += len(x)
    return LocResult(pd.DataFrame(rows), torch.cat(maps_all))


def mass_shares(loc: LocResult, loc_set, cue) -> dict:
    """Where each map's mass lies (the "right for the right reasons" chapter): over the correctly predicted
    (image, class) pairs of ``loc``, the mean share of the ReLU'd, upsampled map's sum that falls on the
    pair's object mask (``mass_object``) and on the image's cue boxes outside every object and void pixel
    (``mass_cue``). ``cue``: boolean [N,H,W] of ``loc_set``'s images
    (:func:`apnb.data.synthetic.cue_regions`). A map that sums to 0 is left out."""
    segs = torch.stack([torch.as_tensor(loc_set[i][2]) for i in range(len(loc_set))]).long()
    cue = torch.tensor(np.asarray(cue), dtype=torch.bool)  # a copy: cue_regions returns a read-only cached array
    if cue.shape != segs.shape:
        if cue.shape[0] != segs.shape[0]:
            raise Mt.MetricError(f"{cue.shape[0]} cue masks for {segs.shape[0]} localization images: give the cue "
                                 f"regions of the same images (cue_regions(root, 'val', n=len(loc_set)))")
        cue = F.interpolate(cue[:, None].float(), size=segs.shape[-2:], mode="nearest")[:, 0].bool()
    p = loc.pairs
    if len(p) == 0:
        return {"mass_object": float("nan"), "mass_cue": float("nan")}
    img = torch.from_numpy(p.img.to_numpy(dtype=np.int64, copy=True))
    seg = segs[img]
    maps = Mt.upsample(loc.maps, seg.shape[-2:]).clamp(min=0)
    obj = seg == torch.from_numpy(p.cls.to_numpy(dtype=np.int64, copy=True))[:, None, None] + 1
    background_cue = cue[img] & (seg == 0)
    total = maps.flatten(1).sum(1)
    keep = torch.from_numpy(p.predicted.to_numpy(dtype=bool, copy=True)) & (total > 0)
    if not keep.any():
        return {"mass_object": float("nan"), "mass_cue": float("nan")}
    share = lambda m: float(((maps * m).flatten(1).sum(1)[keep] / total[keep]).mean())
    return {"mass_object": share(obj), "mass_cue": share(background_cue)}


def common_pairs(locs: dict) -> dict[str, dict]:
    """Localization of several networks on the *same* (image, class) pairs: the intersection of the pairs that
    every network in ``locs`` (name -> :class:`LocResult` on one loc set) predicts correctly. Returns, per
    name, ``AUC_common``, ``point_acc_common``, ``point_acc_tol_common`` (NaN when the intersection is empty)
    and ``n_common``. A paired difference of these compares a change of maps only, not also a change of which
    pairs are counted, as the per-network scores of :meth:`LocResult.summary` do."""
    names = list(locs)
    ref = locs[names[0]].pairs
    for n in names[1:]:
        p = locs[n].pairs
        if len(p) != len(ref) or not (p.img.to_numpy() == ref.img.to_numpy()).all() or \
                not (p.cls.to_numpy() == ref.cls.to_numpy()).all():
            raise ValueError(f"common_pairs: {n!r} was scored on other (image, class) pairs than {names[0]!r}; "
                             "score every network on the same loc set")
    keep = np.logical_and.reduce([locs[n].pairs.predicted.to_numpy(bool) for n in names])
    out = {}
    for n in names:
        p = locs[n].pairs[keep]
        empty = len(p) == 0
        out[n] = {"AUC_common": float("nan") if empty else float(p.auc.mean()),
                  "point_acc_common": float("nan") if empty else float(p.hit.mean()),
                  "point_acc_tol_common": float("nan") if empty else float(p.hit_tol.mean()),
                  "n_common": int(keep.sum())}
    return out


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


def top1_maps(model, dataset, layer="last_conv", device="auto", targets: torch.Tensor | None = None,
              batch_size=128) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps at ``layer`` (not upsampled) of one class per image of ``dataset``: ``targets`` (e.g. the
    teacher's top-1 classes), or this model's own top-1. Returns ``(targets [N], maps [N,h,w])``."""
    device = resolve_device(device)
    model.eval().to(device)
    ts, ms, off = [], [], 0
    for x, *_ in DataLoader(dataset, batch_size=batch_size):
        x = x.to(device)
        if targets is None:
            with torch.no_grad():
                t = model(x).float().argmax(1)
        else:
            t = targets[off:off + len(x)].to(device)
        ms.append(gradcam(model, x, layer, target=t)[0].float().cpu())
        ts.append(t.cpu())
        off += len(x)
    return torch.cat(ts), torch.cat(ms)


def top1_similarity(teacher_top1: tuple, student_top1: tuple) -> dict:
    """Cosine of the maps at the matching layer, for the teacher's top-1 class, over *every* val image
    (``cos_top1``). Beside the paper's cosine (pairs both networks predict, :func:`similarity`), which two
    smooth non-negative maps score high anyway, this one follows what the regularizer matches."""
    (tt, mt), (ts, ms) = teacher_top1, student_top1
    if not torch.equal(tt, ts) or mt.shape != ms.shape:
        raise Mt.MetricError("the student's top-1 maps must be taken for the teacher's top-1 classes at the same "
                             "layer resolution: pass targets=teacher_top1[0] to top1_maps")
    return {"cos_top1": float(Mt.cosine(mt, ms).mean())}


def baseline_attr(kind: str, sigma: float = 0.25, seed: int = 0):
    """Maps that look at no network, scored like any attribution (``attr=`` of :func:`localization`):
    ``center``, a centred Gaussian of standard deviation ``sigma`` x the image side, or ``random``, uniform
    noise (seeded per call). They set the floor of AUC and pointing: TorchRay reports that a centre point
    alone scores 69.6 % on VOC07 (pointing, 15 px)."""
    if kind not in ("center", "random"):
        raise ValueError(f"baseline {kind!r}: use center or random")
    gen = torch.Generator().manual_seed(seed)

    def fn(model, x, target):
        n, _, h, w = x.shape
        if kind == "random":
            return torch.rand(n, h, w, generator=gen).to(x.device)
        return Mt.centered_gaussian(h, w, sigma).expand(n, h, w).to(x.device)

    return fn


def evaluate_model(model, data: dict, layer: str = "last_conv", device="auto", attr=None,
                   reference: LocResult | None = None, multilabel: bool = True,
                   match_layer: str | None = None) -> tuple[dict, LocResult]:
    """One row of Tables 2-7: parameters, mAP, image-AP, F1, AUC, point accuracy (+ cos, l2 vs. ``reference``,
    the teacher's :class:`~apnb.evaluate.LocResult`, and the student's fidelity to it on val:
    :func:`apnb.metrics.fidelity`'s ``agree_top1`` and ``kl_teacher``). Empty selections give NaN rather than an
    error.

    On the synthetic benchmark ``mAP_nocue`` is the mAP on the same val images re-rendered without the
    context cue: the gap ``mAP - mAP_nocue`` measures how much the network relies on the shortcut. Real VOC
    has no such copy: there (multi-label data without ``val_nocue``) ``mAP_nocue`` is NaN, so tables keep
    their columns and the verdicts that need it say "no data".
    ``multilabel=False`` (ImageNet, supplement B): top-1 accuracy, and the top-1 prediction's map on every image.

    With Grad-CAM (``attr=None``), ``cos_top1`` is the cosine of the maps at ``match_layer`` (default
    ``layer``) for the teacher's top-1 class over every val image (:func:`apnb.evaluate.top1_similarity`),
    beside the paper's ``cos``.

    With Grad-CAM, the network's own part (everything but the comparison with ``reference``) is kept in the
    evaluation cache (:mod:`apnb.evalcache`): a network with the same weights, scored on the same data with
    the same settings and the same evaluation code, is read back instead of scored again."""
    grad_cam = attr is None
    attr = attr or attribution_fn("gradcam", layer)
    targets = reference.top1[0] if grad_cam and reference is not None and reference.top1 is not None else None
    key = (EC.key(model, data, {"layer": layer, "match_layer": match_layer or layer, "multilabel": multilabel},
                  targets) if grad_cam else None)
    hit = EC.get(key) if key else None
    if hit is not None:
        row, loc = hit
    else:
        loc = localization(model, data["loc"], device, attr=attr, multilabel=multilabel)
        if grad_cam:
            loc.top1 = top1_maps(model, data["val"], match_layer or layer, device, targets)
        row = {"params": M.count_params(model, nonzero=True)}
        loc.val_logits, y = predict(model, data["val"], device)
        row.update(_scores(loc.val_logits, y, multilabel))
        if "val_nocue" in data:  # the same val images without their context cue: reliance on the shortcut
            row["mAP_nocue"] = prediction_metrics(model, data["val_nocue"], device)["mAP"]
        elif multilabel:
            row["mAP_nocue"] = float("nan")
        row.update(loc.summary(strict=False))
        if key:
            EC.put(key, row, loc)
    if reference is not None:
        row.update(similarity(reference, loc, strict=False))
        if reference.top1 is not None and loc.top1 is not None:
            row.update(top1_similarity(reference.top1, loc.top1))
        if reference.val_logits is not None and loc.val_logits is not None:
            row.update(Mt.fidelity(reference.val_logits, loc.val_logits, multilabel))
    return row, loc


def shortcut_row(model, data: dict, row: dict, loc: LocResult, layer: str = "last_conv", device="auto") -> dict:
    """How much a network relies on the context cue, beside its :func:`evaluate_model` ``row`` and ``loc`` (its
    mAP, mAP_nocue and cued localization are reused, not recomputed): the "right for the right reasons" chapter.

    - ``gap_nocue`` = mAP - mAP on the val images without their cue; ``mAP_cueflip`` / ``gap_cueflip``: mAP on
      the same images with an absent class's cue (``val_cueflip``) and the drop to it;
    - ``mass_object`` / ``mass_cue``: :func:`apnb.evaluate.mass_shares` on the cued localization set;
    - ``AUC_nocue`` / ``point_acc_tol_nocue``: localization on the cue-free copy.

    Real VOC has none of these copies: every value is then NaN, so tables keep their columns."""
    out = dict.fromkeys(["gap_nocue", "mAP_cueflip", "gap_cueflip", "mass_object", "mass_cue", "AUC_nocue",
                         "point_acc_tol_nocue"], float("nan"))
    if "val_nocue" in data:
        out["gap_nocue"] = row["mAP"] - row["mAP_nocue"]
        s = localization(model, data["loc_nocue"], device, attr=attribution_fn("gradcam", layer)).summary(strict=False)
        out["AUC_nocue"], out["point_acc_tol_nocue"] = s["AUC"], s["point_acc_tol"]
    if "val_cueflip" in data:
        out["mAP_cueflip"] = prediction_metrics(model, data["val_cueflip"], device)["mAP"]
        out["gap_cueflip"] = row["mAP"] - out["mAP_cueflip"]
    if (Path(data["root"]) / "apnb_synth.json").exists():
        cue = synthetic.cue_regions(data["root"], "val", n=len(data["loc"]))
        out.update(mass_shares(loc, data["loc"], cue))
    return out


def evaluate_with_shortcuts(model, data: dict, layer: str = "last_conv", device="auto",
                            reference: LocResult | None = None) -> dict:
    """:func:`evaluate_model`'s row and :func:`shortcut_row` in one dict: one network of the "right for the
    right reasons" chapter (its cued localization is computed once and shared)."""
    row, loc = evaluate_model(model, data, layer, device, reference=reference)
    return {**row, **shortcut_row(model, data, row, loc, layer, device)}


def quantized_row(q, bits: int, data: dict, agreement_x: torch.Tensor, layer: str = "last_conv", device="auto",
                  reference: LocResult | None = None) -> dict:
    """:func:`evaluate_model`'s row of a fake-quantized network (supplement: quantization), with the deployed
    int8 network beside it at 8 bits: ``mAP_int8`` (its mAP on the val split, CPU kernels) and
    ``int8_agree_top1`` / ``int8_agree_rel`` (:func:`apnb.quantization.agreement` of the two on the images
    ``agreement_x``; ``agree_top1`` is the fake-quant network's agreement with the teacher, as for any network).

    Below 8 bits the int8 kernels do not clamp to the narrower range, so only the fake-quant network is that
    network: the three int8 values are NaN there."""
    row, _ = evaluate_model(q, data, layer, device, reference=reference)
    row.update(mAP_int8=float("nan"), int8_agree_top1=float("nan"), int8_agree_rel=float("nan"))
    if bits == 8:
        i8 = Q.to_int8(q)
        agree = Q.agreement(q, i8, agreement_x)
        row.update(mAP_int8=prediction_metrics(i8, data["val"], "cpu")["mAP"], int8_agree_top1=agree["top1"],
                   int8_agree_rel=agree["rel"])
    return row


def fidelity_row(model, teacher_logits: torch.Tensor, x: torch.Tensor, data: dict, layer: str = "last_conv",
                 device="auto", reference: LocResult | None = None) -> dict:
    """How close a network is to its teacher in outputs and in maps: ``logit_cos``, the mean cosine of its
    logits on ``x`` (one CPU batch) with ``teacher_logits`` (the teacher's on the same images), beside
    :func:`evaluate_model`'s ``AUC``, ``map_cos`` (its ``cos`` against ``reference``, NaN without one) and ``mAP``.
    Used to follow a fine-tune epoch by epoch."""
    model.eval()
    with torch.no_grad():
        lc = F.cosine_similarity(model.cpu()(x), teacher_logits, dim=1).mean().item()
    row, _ = evaluate_model(model, data, layer, device, reference=reference)
    return {"logit_cos": lc, "AUC": row["AUC"], "map_cos": row.get("cos", float("nan")), "mAP": row["mAP"]}


def evaluate_models(models: dict, data: dict, teacher_name: str = "teacher", layer: str = "last_conv",
                    device="auto", attr=None, multilabel: bool = True) -> tuple[pd.DataFrame, dict]:
    """:func:`evaluate_model` for each model, with cosine and l2 against ``teacher_name``."""
    t_row, t_loc = evaluate_model(models[teacher_name], data, layer, device, attr, multilabel=multilabel)
    rows, locs = [{"model": teacher_name, **t_row}], {teacher_name: t_loc}
    for name, m in models.items():
        if name != teacher_name:
            row, locs[name] = evaluate_model(m, data, layer, device, attr, reference=t_loc, multilabel=multilabel)
            rows.append({"model": name, **row})
    return pd.DataFrame(rows), locs


def gradcam_maps(model, x, layer="last_conv", device="auto", batch_size=128):
    """Grad-CAM maps of each image's top-1 class, upsampled to the input size: ``[N,H,W]`` on the CPU."""
    device = resolve_device(device)
    model.eval().to(device)
    out = [gradcam(model, x[i:i + batch_size].to(device), layer, upsample=True)[0].cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)
