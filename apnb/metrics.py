"""Metrics of the paper (Sec. 4, supplement C.3), as batched tensor code.

Prediction: per-class VOC mAP (all-point interpolated AP, VOC 2010+ devkit), the per-image AP average
the authors' ``compute_mAP`` reports (labelled "image-AP"), sample-averaged F1 at the authors' decision
rule (``logit > 0.5``), top-1 accuracy.

Localization (maps vs. class masks): rank-based ROC-AUC with tie handling, void pixels excluded by
default (the authors count them as negative: ``void="negative"``); the pointing game with a 0 or 15 px
tolerance, first or any tied maximum, sample- or class-mean. The authors' accumulation bug in
``pointacc_labels`` (later classes scored against the union of earlier masks) is *not* reproduced.

Maps are upsampled to the mask resolution by bilinear interpolation (``align_corners=False``), masks
are resized NEAREST: see :func:`upsample`.

Similarity (C.3): ``cos = <Mt, Ms> / (||Mt|| ||Ms||)`` and ``l2 = || Ms/||Ms|| - Mt/||Mt|| ||_2`` per
sample (so 0 <= l2 <= 2), averaged over the (image, class) pairs both networks predict correctly.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class MetricError(ValueError):
    """Inputs that make a metric undefined; the message says what to change."""


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of ``[N,h,w]`` maps to ``size`` (the documented rule)."""
    if maps.shape[-2:] == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


# ---------------------------------------------------------------- prediction
def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """All-point interpolated AP per column (VOC 2010+): area under the monotone precision envelope.

    Columns without positives give NaN.
    """
    scores, labels = torch.as_tensor(scores).double(), torch.as_tensor(labels).double()
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices
    t = labels.gather(0, order)
    tp = t.cumsum(0)
    fp = (1 - t).cumsum(0)
    npos = t.sum(0)
    rec = tp / npos.clamp_min(1)
    prec = tp / (tp + fp)
    # precision envelope: running max from the end
    env = prec.flip(0).cummax(0).values.flip(0)
    drec = torch.cat([rec[:1], rec[1:] - rec[:-1]], 0)
    ap = (drec * env).sum(0)
    return torch.where(npos > 0, ap, torch.full_like(ap, float("nan")))


def voc_map(scores, labels) -> float:
    """Standard per-class VOC mAP (mean over classes with at least one positive)."""
    ap = average_precision(scores, labels)
    return float(ap[~ap.isnan()].mean())


def image_ap(scores, labels) -> float:
    """The authors' "mAP": AP of each image's class ranking (sklearn), averaged over images."""
    from sklearn.metrics import average_precision_score

    s, y = np.asarray(scores), np.asarray(labels)
    keep = y.sum(1) > 0
    return float(np.mean([average_precision_score(y[i], s[i]) for i in np.nonzero(keep)[0]]))


def f1_samples(logits, labels, threshold: float = 0.5) -> float:
    """Sample-averaged F1 with the authors' rule ``logit > threshold`` (0.5 on the raw logit)."""
    pred = (torch.as_tensor(logits) > threshold).double()
    y = torch.as_tensor(labels).double()
    tp = (pred * y).sum(1)
    denom = pred.sum(1) + y.sum(1)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))
    return float(f1.mean())


def top1(logits, labels) -> float:
    return float((torch.as_tensor(logits).argmax(1) == torch.as_tensor(labels)).double().mean())


# ---------------------------------------------------------------- localization
def _auc_rows_numpy(s, y, v):
    """Exact rank AUC of a few rows on the CPU: one integer sort per row (see :func:`roc_auc`)."""
    big = np.iinfo(np.int64).max
    s = np.ascontiguousarray(s, dtype=np.float32) + np.float32(0.0)  # -0.0 becomes +0.0 (a tie, as in sklearn)
    b = s.view(np.int32).astype(np.int64)
    b ^= (b >> 31) & 0x7FFFFFFF  # order-preserving integer key of a float32 (negatives flipped)
    key = (b << 1) | y  # label in the lowest bit: within a tie, negatives sort before positives
    key[~v] = big  # excluded pixels sort last and are ignored
    key.sort(axis=1)
    ok = key != big
    lab = (key & 1).astype(bool) & ok
    neg = ~lab & ok
    cn = np.cumsum(neg, axis=1, dtype=np.int64)  # negatives at or before each position
    val = key >> 1
    start = np.zeros(key.shape, np.int64)  # first position of each tie group
    start[:, 1:] = np.where(val[:, 1:] != val[:, :-1], np.arange(1, key.shape[1]), 0)
    np.maximum.accumulate(start, axis=1, out=start)
    below = np.take_along_axis(cn - neg, start, axis=1)  # negatives strictly below the tie group
    u = ((cn + below) * lab).sum(1) / 2.0  # Mann-Whitney U: below + half of the tied negatives
    return u / (lab.sum(1) * neg.sum(1).astype(np.float64))


def roc_auc(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None,
            chunk: int = 4) -> torch.Tensor:
    """Rank-based ROC-AUC of each map's pixels against its binary mask: ``[N]`` (float64).

    Equal to ``sklearn.metrics.roc_auc_score`` (ties count one half: the Mann-Whitney U statistic).
    ``valid`` marks the pixels that count; excluded (void) pixels take no part. Rows with no positive or
    no negative pixel raise :class:`MetricError`.

    On the CPU each row is one integer sort (float32 bits made order-preserving, label in the lowest bit),
    done in chunks of ``chunk`` rows on two threads; on a GPU, one batched ``torch.sort`` with average ranks.
    ``benchmarks/bench_auc.py`` compares both with a per-map scikit-learn loop.
    """
    y = masks.flatten(1).bool()
    v = torch.ones_like(y) if valid is None else valid.flatten(1).bool()
    if maps.flatten(1).shape != y.shape or y.shape != v.shape:
        raise MetricError(f"map {tuple(maps.shape)} and mask {tuple(masks.shape)} differ in shape: upsample the "
                          f"maps to the mask size first (apnb.metrics.upsample)")
    pos = (y & v).sum(1).double()
    neg = (~y & v).sum(1).double()
    if bool(((pos == 0) | (neg == 0)).any()):
        bad = int(((pos == 0) | (neg == 0)).nonzero()[0])
        raise MetricError(f"row {bad}: the mask has {int(pos[bad])} positive and {int(neg[bad])} negative valid "
                          f"pixels; ROC-AUC needs both (an all-void or empty mask cannot be scored)")
    if maps.device.type == "cpu" and maps.dtype != torch.float64:
        from concurrent.futures import ThreadPoolExecutor

        s = maps.detach().flatten(1).float().numpy()
        yn, vn = y.numpy(), v.numpy()
        with ThreadPoolExecutor(2) as ex:  # numpy releases the GIL in sort and the elementwise passes
            parts = ex.map(lambda i: _auc_rows_numpy(s[i:i + chunk], yn[i:i + chunk], vn[i:i + chunk]),
                           range(0, len(s), chunk))
            return torch.from_numpy(np.concatenate(list(parts)))
    s = maps.detach().flatten(1).double()
    s = torch.where(v, s, torch.full_like(s, float("inf")))
    srt = s.sort(1).values.contiguous()
    lo = torch.searchsorted(srt, s.contiguous(), right=False).double()
    hi = torch.searchsorted(srt, s.contiguous(), right=True).double()
    rank = (lo + hi + 1) / 2  # 1-based average rank among valid pixels
    rank_pos = torch.where(y & v, rank, torch.zeros_like(rank)).sum(1)
    return ((rank_pos - pos * (pos + 1) / 2) / (pos * neg)).cpu()


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0, ties: str = "first",
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pointing game hits ``[N]`` bool: the map's maximum lies in the mask (Zhang et al.).

    ``tolerance`` (px): a hit when the mask touches the open disc of that radius around the maximum,
    i.e. a mask pixel at distance strictly less than ``tolerance`` (TorchRay's rule, ``PointingGame`` in
    ``torchray/benchmark/pointing_game.py``, 15 px at about 224 px; :func:`tolerance_for` scales it to
    other image sizes). ``ties``: ``first`` = the first arg-max in row-major order (the authors), ``any`` = any
    pixel tied for the maximum (Quantus). Void pixels (``valid`` False) never count as mask.
    """
    if maps.shape != masks.shape:
        raise MetricError(f"map {tuple(maps.shape)} and mask {tuple(masks.shape)} differ in shape: upsample the "
                          f"maps to the mask size first (apnb.metrics.upsample)")
    if ties not in ("first", "any"):
        raise ValueError(f"ties={ties!r}: use first or any")
    m = masks.bool() if valid is None else masks.bool() & valid.bool()
    if tolerance > 0:
        r = int(tolerance)
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disc = ((yy ** 2 + xx ** 2) < r * r).to(maps.device, torch.float32)
        m = F.conv2d(m[:, None].float(), disc[None, None], padding=r)[:, 0] > 0
    flat = maps.flatten(1)
    if ties == "first":
        idx = flat.argmax(1)
        return m.flatten(1).gather(1, idx[:, None])[:, 0]
    is_max = flat == flat.max(1, keepdim=True).values
    return (is_max & m.flatten(1)).any(1)


def tolerance_for(image_size: int, reference_px: float = 15.0, reference_size: int = 224) -> int:
    """The pointing tolerance scaled to ``image_size``: TorchRay's 15 px at 224 px, times ``image_size / 224``
    (4 px at 64 px, 15 px at the paper's 227 px)."""
    return int(round(reference_px * image_size / reference_size))


def pointing_accuracy(hits: torch.Tensor, classes: torch.Tensor | None = None, average: str = "sample") -> float:
    """Mean of hits (``sample``) or the mean of per-class accuracies (``class``, as TorchRay)."""
    hits = hits.double()
    if average == "sample":
        return float(hits.mean())
    if average != "class" or classes is None:
        raise ValueError("average='class' needs the class of each hit")
    return float(torch.stack([hits[classes == c].mean() for c in classes.unique()]).mean())


# ---------------------------------------------------------------- similarity
def cosine(mt: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity of flattened maps (supplement C.3)."""
    return F.cosine_similarity(mt.flatten(1).double(), ms.flatten(1).double(), dim=1, eps=1e-12)


def normalized_l2(mt: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
    """Per-sample ``|| ms/||ms|| - mt/||mt|| ||_2`` (supplement C.3)."""
    a = F.normalize(mt.flatten(1).double(), dim=1)
    b = F.normalize(ms.flatten(1).double(), dim=1)
    return (b - a).norm(dim=1)


def fidelity(t_logits: torch.Tensor, s_logits: torch.Tensor, multilabel: bool = True) -> dict:
    """How far a student agrees with its teacher on the same images, beside its accuracy (Stanton et al., "Does
    knowledge distillation really work?", NeurIPS 2021): ``agree_top1``, the share of images whose top-1 class
    is the teacher's, and ``kl_teacher``, the predictive KL divergence KL(teacher || student): for multi-label
    outputs the mean over images and classes of the KL between the two sigmoid (Bernoulli) outputs, for
    single-label ones the mean over images of the KL between the two softmax outputs."""
    t, s = t_logits.double(), s_logits.double()
    agree = float((t.argmax(1) == s.argmax(1)).double().mean())
    if multilabel:
        # KL(Bern(p) || Bern(q)) = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q)), in log-sigmoids
        p = torch.sigmoid(t)
        kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
        return {"agree_top1": agree, "kl_teacher": float(kl.mean())}
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")
    return {"agree_top1": agree, "kl_teacher": float(kl)}


def centered_gaussian(h: int, w: int, sigma: float = 0.25, device=None, dtype=torch.float32) -> torch.Tensor:
    """A ``[h, w]`` Gaussian centred on the map, standard deviation ``sigma`` x each side: the centre baseline of
    :func:`apnb.evaluate.baseline_attr` and the target of the ``center_prior`` control (:mod:`apnb.kinds`)."""
    yy = torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2
    xx = torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2
    return torch.exp(-(yy[:, None] ** 2 / (sigma * h) ** 2 + xx[None, :] ** 2 / (sigma * w) ** 2) / 2)
