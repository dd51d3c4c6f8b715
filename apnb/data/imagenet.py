"""ImageNet with segmentation masks: Guillaumin/Kuettel/Ferrari ``gtsegs_ijcv.mat`` and ImageNet-S.

Neither carries ImageNet-1k labels usable for scoring a given class's map, so (paper supplement B) the
map of the top-1 *prediction* is scored against the foreground mask of every image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .voc import DataError, eval_transform, load_image, train_transform, _check_files


class GtSegsIJCV(Dataset):
    """Reader for the MATLAB v7.3 (HDF5) file ``gtsegs_ijcv.mat`` (4276 images, binary foreground masks).

    Image ``i``: ``f[f['/value/img'][i,0]]`` transposed (2,1,0) to HxWx3; mask
    ``f[f[f['/value/gt'][i,0]][0,0]]`` transposed (1,0). Yields ``(image, mask)`` with mask 1 = object.
    """

    def __init__(self, path, size=224):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist: download gtsegs_ijcv.mat (Guillaumin et al.) "
                            f"and pass its path")
        try:
            self._f = h5py.File(self.path, "r")
            self.n = self._f["/value/img"].shape[0]
        except (OSError, KeyError) as e:
            raise DataError(f"{self.path} is not the HDF5 gtsegs_ijcv.mat file ({e}): expected /value/img "
                            f"and /value/gt datasets") from e
        self.size = size
        self.transform = eval_transform(size, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        f = self._f
        img = np.array(f[f["/value/img"][i, 0]]).transpose(2, 1, 0).astype(np.uint8)
        mask = np.array(f[f[f["/value/gt"][i, 0]][0, 0]]).transpose(1, 0)
        if mask.shape != img.shape[:2]:
            raise DataError(f"{self.path} item {i}: mask {mask.shape} differs from image {img.shape[:2]}")
        m = Image.fromarray((mask > 0).astype(np.uint8)).resize((self.size, self.size), Image.NEAREST)
        return self.transform(Image.fromarray(img)), torch.from_numpy(np.array(m, dtype=np.uint8))


class ImageNetS(Dataset):
    """ImageNet-S layout (``validation`` + ``validation-segmentation``) or ImageFolder ``train``.

    ``split='train'`` yields ``(image, class index)``; ``split='validation'`` yields
    ``(image, class index, mask)`` with mask 1 on the image's class pixels, 0 elsewhere and 255 on ignore
    (id 1000) pixels. Class id in the PNG = R + 256 G, 0 other.
    """

    def __init__(self, root, split="validation", size=224, augment=False, limit=None):
        self.root = Path(root)
        if not (self.root / split).is_dir():
            raise DataError(f"{self.root / split} does not exist: expected ImageNetS*/{{train,validation,"
                            f"validation-segmentation}}/<wnid>/...; run `apnb data synth --mode imagenet --out DIR`")
        self.wnids = sorted(p.name for p in (self.root / split).iterdir() if p.is_dir())
        self.samples = [(p, c) for c, w in enumerate(self.wnids) for p in sorted((self.root / split / w).glob("*.JPEG"))]
        self.samples = self.samples[:limit]
        if not self.samples:
            raise DataError(f"no *.JPEG images under {self.root / split}/<wnid>/")
        self.split = split
        self.size = size
        self.with_masks = split == "validation"  # ImageNet-S masks; "train" and "val" are plain class folders
        if self.with_masks:
            self.masks = [self.root / "validation-segmentation" / p.parent.name / (p.stem + ".png") for p, _ in self.samples]
            _check_files(self.masks, "segmentation masks")
        self.transform = train_transform(size) if augment else eval_transform(size)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        p, c = self.samples[i]
        img = load_image(p)
        if not self.with_masks:
            return self.transform(img), c
        seg = np.array(Image.open(self.masks[i]).convert("RGB"), dtype=np.int32)
        if seg.shape[:2] != (img.size[1], img.size[0]):
            raise DataError(f"mask {self.masks[i]} is {seg.shape[1]}x{seg.shape[0]} but its image is "
                            f"{img.size[0]}x{img.size[1]}: re-extract the pair")
        ids = seg[..., 0] + 256 * seg[..., 1]
        m = np.where(ids == 1000, 255, (ids > 0).astype(np.uint8)).astype(np.uint8)
        m = np.array(Image.fromarray(m).resize((self.size, self.size), Image.NEAREST))
        return self.transform(img), c, torch.from_numpy(m)
