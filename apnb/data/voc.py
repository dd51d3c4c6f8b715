"""PASCAL VOC 2012 loaders: multi-label classification and localization evaluation.

The same code reads real VOC 2012 and the synthetic benchmark of :mod:`apnb.data.synthetic`.

- Labels: multi-hot over the classes, built from *every* object in ``Annotations/<id>.xml``, difficult
  ones included (as the authors' ``dataset.py`` does; ``include_difficult=False`` drops objects flagged
  difficult).
- Transforms (paper supplement C.1): training ``RandomResizedCrop(size)`` + horizontal flip, evaluation
  ``Resize((size, size))``; normalisation with the paper's mean and std.
- Localization evaluation over ``ImageSets/Segmentation/val.txt``: image, label vector and the
  ``SegmentationClass`` map resized NEAREST to the input size, 255 marking void pixels.
"""
from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
PAPER_MEAN = [0.4589, 0.4355, 0.4032]
PAPER_STD = [0.2239, 0.2186, 0.2206]
VOC_COUNTS = {("Main", "train"): 5717, ("Main", "val"): 5823, ("Segmentation", "val"): 1449}
LAYOUT = "VOCdevkit/VOC2012/{Annotations,ImageSets/Main,ImageSets/Segmentation,JPEGImages,SegmentationClass}"


class DataError(ValueError):
    """Bad or missing data; the message names the path and the fix."""


def check_root(root: str | Path) -> Path:
    root = Path(root)
    if root.name != "VOC2012" and (root / "VOCdevkit" / "VOC2012").is_dir():
        root = root / "VOCdevkit" / "VOC2012"
    if not root.is_dir():
        raise DataError(f"VOC root {root} does not exist: expected the layout {LAYOUT}; "
                        f"generate the synthetic one with `apnb data synth --out DIR` or point data_root at VOC 2012")
    missing = [d for d in ["Annotations", "ImageSets/Main", "JPEGImages"] if not (root / d).is_dir()]
    if missing:
        raise DataError(f"VOC root {root} lacks {', '.join(missing)}: expected the layout {LAYOUT}; "
                        f"point data_root at the VOC2012 folder or run `apnb data synth --out DIR`")
    return root


def read_classes(root: Path) -> list[str]:
    """VOC's 20 classes, or the synthetic benchmark's class list from ``apnb_classes.txt``."""
    f = root / "apnb_classes.txt"
    return f.read_text().split() if f.exists() else list(VOC_CLASSES)


def read_split(root: Path, kind: str, split: str, check_count: bool = True) -> list[str]:
    f = root / "ImageSets" / kind / f"{split}.txt"
    if not f.exists():
        raise DataError(f"split file {f} is missing: expected ImageSets/{kind}/{split}.txt in the VOC layout")
    ids = [ln.split()[0] for ln in f.read_text().splitlines() if ln.strip()]
    if not ids:
        raise DataError(f"split file {f} is empty: list one image id per line")
    expected = VOC_COUNTS.get((kind, split))
    if check_count and expected and not (root / "apnb_classes.txt").exists() and len(ids) != expected:
        warnings.warn(f"{f} lists {len(ids)} images; PASCAL VOC 2012 has {expected}: "
                      f"check that this is the complete VOC 2012 trainval release", stacklevel=2)
    return ids


def parse_annotation(path: Path, classes: list[str], include_difficult: bool = True) -> list[int]:
    """Class indices of the objects in one VOC XML file."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise DataError(f"cannot parse annotation {path}: {e}; re-extract the VOC tarball or regenerate the data") from e
    out = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise DataError(f"unknown class {name!r} in {path}: known classes are {', '.join(classes)}; "
                            f"fix the XML or the class list (apnb_classes.txt)")
        if not include_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        out.append(classes.index(name))
    return out


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"corrupt or unreadable image {path}: {e}; re-download or regenerate it") from e


def _check_files(files: list[Path], what: str):
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise DataError(f"{len(missing)} {what} listed in the split are missing, first: {', '.join(missing[:3])}; "
                        f"re-extract the dataset or fix the split file")


def _verify_images(files: list[Path]):
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for broken files
            raise DataError(f"corrupt or unreadable image {p}: {e}; re-download or regenerate it") from e


def train_transform(size: int, mean=PAPER_MEAN, std=PAPER_STD, scale=(0.08, 1.0)):
    return T.Compose([T.ToImage(), T.RandomResizedCrop(size, scale=scale, antialias=True), T.RandomHorizontalFlip(),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def eval_transform(size: int, mean=PAPER_MEAN, std=PAPER_STD):
    return T.Compose([T.ToImage(), T.Resize((size, size), antialias=True), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(mean, std)])


class VOCClassification(Dataset):
    """Multi-label VOC classification: ``(image tensor, multi-hot float vector)``.

    ``augment`` picks the training transform; ``cache`` keeps decoded images in memory (useful for the
    small synthetic benchmark, off by default for real VOC). ``verify`` opens every image up front so
    that a corrupt file fails before training starts.
    """

    def __init__(self, root, split="train", size=227, augment=False, include_difficult=True, cache=False,
                 verify=True, crop_scale=(0.08, 1.0), limit: int | None = None):
        self.root = check_root(root)
        self.classes = read_classes(self.root)
        self.ids = read_split(self.root, "Main", split)[:limit]
        imgs = [self.root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        xmls = [self.root / "Annotations" / f"{i}.xml" for i in self.ids]
        _check_files(imgs, "images")
        _check_files(xmls, "annotations")
        if verify:
            _verify_images(imgs)
        self.images = imgs
        self.labels = torch.zeros(len(self.ids), len(self.classes))
        for j, x in enumerate(xmls):
            for c in parse_annotation(x, self.classes, include_difficult):
                self.labels[j, c] = 1
        self.transform = train_transform(size, scale=crop_scale) if augment else eval_transform(size)
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self):
        return len(self.ids)

    def _image(self, i):
        if self._cache is None:
            return load_image(self.images[i])
        if i not in self._cache:
            self._cache[i] = load_image(self.images[i])
        return self._cache[i]

    def __getitem__(self, i):
        return self.transform(self._image(i)), self.labels[i]


class VOCLocalization(Dataset):
    """Localization evaluation over ``ImageSets/Segmentation/<split>.txt``.

    Yields ``(image, label vector, class map)``; the class map (uint8, 0 background, 1..K classes, 255 void)
    is resized NEAREST to ``size x size``, the resolution at which maps are scored.
    """

    def __init__(self, root, split="val", size=227, verify=True, limit: int | None = None):
        self.root = check_root(root)
        if not (self.root / "SegmentationClass").is_dir():
            raise DataError(f"{self.root}/SegmentationClass is missing: localization needs VOC's segmentation masks")
        self.classes = read_classes(self.root)
        self.ids = read_split(self.root, "Segmentation", split)[:limit]
        self.images = [self.root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.masks = [self.root / "SegmentationClass" / f"{i}.png" for i in self.ids]
        _check_files(self.images, "images")
        _check_files(self.masks, "segmentation masks")
        if verify:
            _verify_images(self.images)
            _verify_images(self.masks)
        self.labels = torch.zeros(len(self.ids), len(self.classes))
        for j, i in enumerate(self.ids):
            for c in parse_annotation(self.root / "Annotations" / f"{i}.xml", self.classes):
                self.labels[j, c] = 1
        self.size = size
        self.transform = eval_transform(size)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        img = load_image(self.images[i])
        try:
            with Image.open(self.masks[i]) as m:
                mask = m.copy()
        except Exception as e:
            raise DataError(f"corrupt or unreadable mask {self.masks[i]}: {e}; re-extract SegmentationClass") from e
        if mask.mode not in ("P", "L"):
            raise DataError(f"mask {self.masks[i]} has mode {mask.mode}: VOC masks are palette (P) PNGs of class ids")
        if mask.size != img.size:
            raise DataError(f"mask {self.masks[i]} is {mask.size[0]}x{mask.size[1]} but its image is "
                            f"{img.size[0]}x{img.size[1]}: mask and image must match; re-extract the pair")
        mask = mask.resize((self.size, self.size), Image.NEAREST)
        return self.transform(img), self.labels[i], torch.from_numpy(np.array(mask, dtype=np.uint8))


def class_masks(cls_map: torch.Tensor, labels: torch.Tensor):
    """Per-(image, class) binary masks and valid-pixel masks from a batch of class maps.

    Returns ``(idx_img, idx_cls, masks [P,H,W] bool, void [P,H,W] bool)`` for every ground-truth class of
    every image (classes from the label vector).
    """
    idx_img, idx_cls = labels.nonzero(as_tuple=True)
    maps = cls_map[idx_img].long()
    masks = maps == (idx_cls + 1)[:, None, None]
    void = maps == 255
    return idx_img, idx_cls, masks, void
