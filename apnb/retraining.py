"""The retraining benchmarks: ROAR (paper Figure 7; Hooker et al., NeurIPS 2019) and DiffROAR (the LPI
supplement), a fresh classifier trained on images with their top-ranked (or bottom-ranked) pixels replaced,
for each attribution ranking and fraction. The removal and scoring steps are :mod:`apnb.faithfulness`'s;
this module trains and scores the classifiers. Used for VOC-format data and for CIFAR."""
from __future__ import annotations

import pandas as pd
from torch.utils.data import TensorDataset

from . import evaluate as E
from . import faithfulness as Fa
from . import metrics as Mt
from . import models as M
from .engine import Supervised, TrainConfig, fit


def roar_benchmark(train_xy, test_xy, maps: dict, fractions, classifier_spec: dict, train_cfg: dict,
                   device="auto", seed: int = 0, multilabel: bool = True, kind: str = "roar") -> pd.DataFrame:
    """ROAR (paper Figure 7) or DiffROAR with retraining, on tensors: for each ranking in ``maps`` (name ->
    (train maps, test maps); ``None`` = random) and each fraction, pixels are replaced by the data mean (0
    after normalisation) and a fresh classifier (``classifier_spec``; VGG-11 in the paper) is trained and
    scored on the equally modified test set.

    ``kind="roar"``: the top fraction removed; columns ``F1`` and ``mAP`` (``multilabel``, VOC) or ``acc``
    (single label, CIFAR). ``kind="diffroar"`` (the LPI supplement): score with the top fraction kept minus
    score with the bottom fraction kept, columns ``top_kept``, ``bottom_kept``, ``diffroar`` of the mAP
    (multi-label: retrained on a few hundred images, the samples-F1 can sit near 0 at every fraction while
    the mAP still ranks) or the accuracy.
    The unmodified baseline (fraction 0) is trained once and shared by all rankings."""
    if kind not in ("roar", "diffroar"):
        raise ValueError(f"kind={kind!r}: use roar or diffroar")
    fill = train_xy[0].mean((0, 2, 3))

    def make():
        return M.build(classifier_spec, seed=seed)

    def train_fn(model, x, y):
        fit(model, Supervised(multilabel), TensorDataset(x, y), TrainConfig(**dict(train_cfg, seed=seed)), device=device,
            progress=False)

    def score_fn(model, x, y):
        logits, y = E.predict(model, TensorDataset(x, y), device)
        if multilabel:
            return {"F1": Mt.f1_samples(logits, y), "mAP": Mt.voc_map(logits, y)}
        return {"acc": float((logits.argmax(1) == y).float().mean())}

    main = "mAP" if multilabel else "acc"
    cols = ["F1", "mAP"] if multilabel else ["acc"]
    fractions = [float(f) for f in fractions]
    frames, base = [], None
    if kind == "roar" and 0.0 in fractions:  # nothing removed: the same retraining for every ranking, run once
        base = Fa.roar(make, train_fn, score_fn, (*train_xy, None), (*test_xy, None), [0.0], fill, seed=seed)
        fractions = [f for f in fractions if f != 0.0]
    for name, mm in maps.items():
        tr_maps, te_maps = mm if mm is not None else (None, None)
        if kind == "roar":
            df = Fa.roar(make, train_fn, score_fn, (*train_xy, tr_maps), (*test_xy, te_maps), fractions, fill, seed=seed)
            df = pd.concat([base, df], ignore_index=True) if base is not None else df
            frames.append(df.assign(ranking=name)[["ranking", "fraction", *cols]])
        else:
            df = Fa.diffroar(make, train_fn, lambda m, x, y: score_fn(m, x, y)[main], (*train_xy, tr_maps),
                             (*test_xy, te_maps), fractions, fill, seed=seed)
            frames.append(df.assign(ranking=name)[["ranking", "fraction", "top_kept", "bottom_kept", "diffroar"]])
    return pd.concat(frames, ignore_index=True)
