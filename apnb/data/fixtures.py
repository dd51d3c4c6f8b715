"""Tiny datasets in the real formats, for running the paper's data paths without the real data.

The ``paper-dry`` profile (``profiles/paper-dry.yml``) runs every notebook at the paper's architectures,
image sizes and schedules on these few images, so that the 227-px VOC path, the ImageNet loaders with
``gtsegs_ijcv.mat`` and the CIFAR-10 batches are exercised where no GPU and no dataset is at hand. The tests
use the same writers. Each tree has the layout of the real dataset and none of the synthetic benchmark's
extras (no ``pretrain`` or ``val_nocue`` split, no ``apnb_classes.txt``), so the loaders take their
real-data branch:

- ``VOCdevkit/VOC2012``: PASCAL VOC 2012 (JPEGImages, Annotations with VOC's class names,
  ImageSets/Main and ImageSets/Segmentation, SegmentationClass as palette PNGs), ``n_classes`` of VOC's 20
  classes present, rendered by :mod:`apnb.data.synthetic`.
- ``imagenet/{train,val}/<wnid>/*.JPEG`` and ``gtsegs_ijcv.mat``: ImageNet class folders and the
  segmented images of Guillaumin et al. (IJCV 2014) in the MATLAB v7.3 (HDF5) layout of the original file,
  images stored transposed ``(C, W, H)`` and masks ``(W, H)`` behind a cell of references.
- ``cifar-10-batches-py``: CIFAR-10's python pickles (``data_batch_1..5``, ``test_batch``); class ``c`` is
  a bright square in quadrant ``c % 4``, so a classifier can learn it.

:func:`write_all` is locked and atomic like :func:`apnb.data.synthetic.ensure`.
"""
from __future__ import annotations

import json
import pickle
import re
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import synthetic

VERSION = 2


def write_voc_fixture(out: str | Path, n_classes: int = 6, n_train: int = 8, n_val: int = 4, size: int = 227,
                      seed: int = 0) -> Path:
    """A PASCAL VOC 2012 tree under ``out/VOCdevkit/VOC2012`` whose objects carry VOC's first
    ``n_classes`` class names; returns the ``VOC2012`` folder."""
    tmp = Path(out) / ".voc-render"
    root = synthetic.write_voc(tmp, classes=n_classes, n_train=n_train, n_val=n_val, n_seg=n_val, n_pretrain=0,
                               size=size, seed=seed)
    names = (root / "apnb_classes.txt").read_text().split()
    from .voc import VOC_CLASSES  # torch: only when the fixture is written

    rename = dict(zip(names, VOC_CLASSES))
    for xml in (root / "Annotations").glob("*.xml"):
        xml.write_text(re.sub(r"<name>(\w+)</name>", lambda m: f"<name>{rename.get(m[1], m[1])}</name>",
                              xml.read_text()))
    main = root / "ImageSets" / "Main"
    for f in list(main.glob("*_*.txt")):  # <class>_<split>.txt: train and val renamed, the synthetic splits dropped
        m = re.fullmatch(r"(\w+?)_(train|val)", f.stem)
        if m and m[1] in rename:
            f.rename(main / f"{rename[m[1]]}_{m[2]}.txt")
        else:
            f.unlink()
    # real VOC has neither the synthetic splits nor the class list: the loaders take their real-data branch
    for extra in ["apnb_classes.txt", "apnb_synth.json", "ImageSets/Main/pretrain.txt",
                  "ImageSets/Main/val_nocue.txt", "ImageSets/Segmentation/val_nocue.txt",
                  "ImageSets/Main/val_cueflip.txt", "ImageSets/Segmentation/val_cueflip.txt"]:
        (root / extra).unlink(missing_ok=True)
    dst = Path(out) / "VOCdevkit" / "VOC2012"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        shutil.rmtree(dst)
    root.rename(dst)
    shutil.rmtree(tmp)
    return dst


def write_gtsegs(path: str | Path, images: list[np.ndarray], masks: list[np.ndarray]) -> Path:
    """``gtsegs_ijcv.mat`` in the MATLAB v7.3 (HDF5) layout: ``/value/img`` and ``/value/gt`` hold one
    reference per image; an image is stored ``(C, W, H)``, a mask ``(W, H)`` behind a 1x1 cell."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w") as f:
        ref_dt = h5py.special_dtype(ref=h5py.Reference)
        img_refs = f.create_dataset("/value/img", (len(images), 1), dtype=ref_dt)
        gt_refs = f.create_dataset("/value/gt", (len(images), 1), dtype=ref_dt)
        for i, (img, m) in enumerate(zip(images, masks)):
            img_refs[i, 0] = f.create_dataset(f"/refs/img{i}", data=np.ascontiguousarray(img.transpose(2, 1, 0))).ref
            g = f.create_dataset(f"/refs/gt{i}", data=np.ascontiguousarray(m.T.astype(np.uint8)))
            inner = f.create_dataset(f"/refs/gtcell{i}", (1, 1), dtype=ref_dt)
            inner[0, 0] = g.ref
            gt_refs[i, 0] = inner.ref
    return path


def write_imagenet_fixture(out: str | Path, classes: int = 4, n_train: int = 8, n_val: int = 4, size: int = 224,
                           seed: int = 0) -> tuple[Path, Path]:
    """ImageNet class folders ``out/imagenet/{train,val}/<wnid>/*.JPEG`` and ``out/gtsegs_ijcv.mat`` made
    of the val images and their foreground masks; returns ``(imagenet root, mat path)``."""
    tmp = Path(out) / ".imagenet-render"
    src = synthetic.write_imagenet_like(tmp, classes=classes, n_train=n_train, n_val=n_val, size=size, seed=seed)
    dst = Path(out) / "imagenet"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copytree(src / "train", dst / "train")
    shutil.copytree(src / "validation", dst / "val")
    images, masks = [], []
    for p in sorted((src / "validation").glob("*/*.JPEG")):
        images.append(np.array(Image.open(p).convert("RGB")))
        seg = np.array(Image.open(src / "validation-segmentation" / p.parent.name / (p.stem + ".png")).convert("RGB"),
                       dtype=np.int32)
        ids = seg[..., 0] + 256 * seg[..., 1]
        masks.append(((ids > 0) & (ids != 1000)).astype(np.uint8))
    mat = write_gtsegs(Path(out) / "gtsegs_ijcv.mat", images, masks)
    shutil.rmtree(tmp)
    return dst, mat


def write_cifar_fixture(root: str | Path, n_per_batch: int = 24, n_test: int = 40, classes: int = 4,
                        seed: int = 0) -> Path:
    """CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``): uint8 rows of 3072 values and
    ``labels``; class ``c`` (of the first ``classes``) is a bright square in quadrant ``c % 4``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, classes, n)
        img = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
        for j, c in enumerate(labels):
            r, q = divmod(int(c) % 4, 2)
            img[j, :, r * 16 + 2:r * 16 + 14, q * 16 + 2:q * 16 + 14] = 250
        with open(root / name, "wb") as f:
            pickle.dump({"data": img.reshape(n, -1), "labels": labels.tolist()}, f)
    return root


def write_all(out: str | Path, **kw) -> Path:
    """Every fixture under ``out`` (VOC, ImageNet + gtsegs, CIFAR-10), unless the same version is there.

    Locked (a concurrent caller waits, then reuses the trees) and atomic: the trees are written into a
    temporary sibling that replaces ``out`` only when complete."""
    out = Path(out)
    stamp_value = {"version": VERSION, **kw}
    with synthetic._lock(out.parent / f".{out.name}-lock"):
        stamp = out / "apnb_fixtures.json"
        if stamp.exists() and json.loads(stamp.read_text()) == stamp_value:
            return out
        t = time.time()
        with synthetic._atomic_tree(out) as tmp:
            write_voc_fixture(tmp, **kw.get("voc", {}))
            write_imagenet_fixture(tmp, **kw.get("imagenet", {}))
            write_cifar_fixture(tmp / "cifar-10-batches-py", **kw.get("cifar", {}))
            (tmp / "apnb_fixtures.json").write_text(json.dumps(stamp_value, sort_keys=True) + "\n")
    print(f"apnb: wrote real-format fixtures to {out} in {time.time() - t:.1f}s")
    return out
