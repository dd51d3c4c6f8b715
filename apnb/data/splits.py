"""The data a notebook works on, assembled from the loaders of :mod:`apnb.data.voc`, :mod:`apnb.data.imagenet`
and :mod:`apnb.data.cifar` (and the generator of :mod:`apnb.data.synthetic`): the VOC splits (paper
Sec. 4), the ImageNet splits with foreground masks (supplement B) and CIFAR (the LPI supplement), each a dict
of datasets with ``classes``, the ``root`` and an ``id`` that names the data in store keys; and small
``(x, y)`` tensor stacks of a split.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from ..config import resolve_path
from ..specs import DATASETS
from . import synthetic
from .cifar import load_cifar
from .imagenet import GtSegsIJCV, ImageNetS
from .voc import VOCClassification, VOCLocalization


def _data_id(root: Path, train, name: str | Path | None = None) -> dict:
    """Identifies the data in store keys: the generator's parameters, or the real dataset's path (``name``, as
    the profile gives it) and size."""
    stamp = root / "apnb_synth.json"
    return json.loads(stamp.read_text()) if stamp.exists() else {"root": str(name or root), "n_train": len(train)}


def voc_data(data_root: str, synth: dict | None, image_size: int, augment: bool = True, crop_scale=(0.5, 1.0),
             limit: int | None = None) -> dict:
    """The VOC splits: ``pretrain`` (synthetic only), ``train`` (augmented), ``train_eval``, ``val``, ``loc``.

    With ``synth`` (a dict of :class:`apnb.data.SynthConfig` fields) the synthetic benchmark is generated
    under ``data_root`` first (skipped when an identical one is there). Synthetic data is cached in memory. A
    relative ``data_root`` is resolved against the project root (:func:`apnb.config.resolve_path`), whatever
    the working directory; the store key of real data names it as given.
    """
    root = synthetic.ensure(resolve_path(data_root), "voc", **synth) if synth else resolve_path(data_root)
    cache = synth is not None
    kw = dict(size=image_size, cache=cache, limit=limit)
    d = {"root": root,
         "train": VOCClassification(root, "train", augment=augment, crop_scale=crop_scale, **kw),
         "val": VOCClassification(root, "val", **kw),
         "loc": VOCLocalization(root, "val", size=image_size, limit=limit)}
    if (root / "ImageSets/Main/pretrain.txt").exists():
        d["pretrain"] = VOCClassification(root, "pretrain", augment=augment, crop_scale=crop_scale, **kw)
    if (root / "ImageSets/Main/val_nocue.txt").exists():
        d["val_nocue"] = VOCClassification(root, "val_nocue", **kw)
        d["loc_nocue"] = VOCLocalization(root, "val_nocue", size=image_size, limit=limit)
    if (root / "ImageSets/Main/val_cueflip.txt").exists():  # val with an absent class's cue (chapter 24)
        d["val_cueflip"] = VOCClassification(root, "val_cueflip", **kw)
    d["classes"] = d["train"].classes
    d["id"] = _data_id(root, d["train"], data_root)
    d["multilabel"] = True
    return d


class _Unlabelled(torch.utils.data.Dataset):
    """(image, mask) -> (image, -1, mask): gtsegs_ijcv.mat has no ImageNet-1k labels (supplement B)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, m = self.ds[i]
        return x, -1, m


def imagenet_data(data_root: str, synth: dict | None, image_size: int, gtsegs: str | None = None,
                  limit: int | None = None) -> dict:
    """ImageNet splits: ``train`` (ImageFolder of ``<wnid>/*.JPEG``, augmented), ``val`` (top-1 accuracy) and
    ``loc`` (foreground masks).

    With ``synth`` the ImageNet-like synthetic benchmark (ImageNet-S layout) is generated under ``data_root``
    and its ``validation`` split with masks serves as ``val`` and ``loc``. With real data, ``data_root`` holds
    ``train/`` and ``val/`` in class folders and ``gtsegs`` the path of ``gtsegs_ijcv.mat`` (4276 images scored
    with the top-1 prediction's map, paper supplement B); or an ImageNet-S root with ``validation`` masks.
    A relative ``data_root`` or ``gtsegs`` is resolved against the project root, as in :func:`voc_data`.
    """
    root = synthetic.ensure(resolve_path(data_root), "imagenet", **synth) if synth else resolve_path(data_root)
    d = {"root": root, "train": ImageNetS(root, "train", size=image_size, augment=True, limit=limit)}
    if gtsegs:
        d["val"] = ImageNetS(root, "val", size=image_size, limit=limit)
        d["loc"] = _Unlabelled(GtSegsIJCV(resolve_path(gtsegs), size=image_size))
    else:
        d["val"] = d["loc"] = ImageNetS(root, "validation", size=image_size, limit=limit)
    d["classes"] = d["train"].wnids
    d["id"] = _data_id(root, d["train"], data_root)
    d["multilabel"] = False
    return d


def cifar_data(root: str, num_classes: int = 10, limit_train: int | None = None, limit_test: int | None = None) -> dict:
    """CIFAR-10/100 (python pickle batches under ``root``) as ``train`` / ``val`` tensor datasets with a store id;
    the LPI supplement's data (single label, 32 px)."""
    path = resolve_path(root)
    tr, te = load_cifar(path, True, num_classes), load_cifar(path, False, num_classes)
    if limit_train:
        tr = torch.utils.data.TensorDataset(*(t[:limit_train] for t in tr.tensors))
    if limit_test:
        te = torch.utils.data.TensorDataset(*(t[:limit_test] for t in te.tensors))
    return {"root": path, "train": tr, "val": te, "classes": list(range(num_classes)), "multilabel": False,
            "id": {"root": str(root), "cifar": num_classes, "n_train": len(tr), "n_test": len(te)}}


def load_data(benchmark: dict) -> dict:
    """The data of a profile's ``benchmark`` mapping: ``dataset`` (default ``voc``: :func:`voc_data` of ``root``,
    ``synth``, ``image_size``; ``imagenet``: :func:`imagenet_data`, with ``gtsegs``; ``cifar``:
    :func:`cifar_data` of ``root`` with ``classes``)."""
    kind = benchmark.get("dataset", "voc")
    if kind == "voc":
        return voc_data(benchmark["root"], benchmark.get("synth"), benchmark["image_size"])
    if kind == "imagenet":
        return imagenet_data(benchmark["root"], benchmark.get("synth"), benchmark["image_size"], benchmark.get("gtsegs"))
    if kind == "cifar":
        return cifar_data(benchmark["root"], benchmark.get("classes", 10))
    raise ValueError(f"benchmark.dataset={kind!r}: use one of {', '.join(DATASETS)}")


def tensors(dataset, device="cpu"):
    """Stack a (small) dataset into ``(x, y)`` tensors."""
    xs, ys = [], []
    for x, y, *_ in DataLoader(dataset, batch_size=256):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


def train_images(data: dict, n: int, seed: int | None = None):
    """``(x, y)`` tensors of ``n`` training images without augmentation (the val transform): the first ``n``,
    or ``n`` drawn with ``seed``. Works for the VOC/ImageNet datasets and for tensor datasets (CIFAR)."""
    plain = data["train"]
    if hasattr(plain, "transform") and hasattr(data["val"], "transform"):
        plain = copy.copy(plain)  # shares the image cache; only the transform differs
        plain.transform = data["val"].transform
    n = min(n, len(plain))
    idx = (torch.randperm(len(plain), generator=torch.Generator().manual_seed(seed))[:n].tolist() if seed is not None
           else list(range(n)))
    return tensors(Subset(plain, idx))
