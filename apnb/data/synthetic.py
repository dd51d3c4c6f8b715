"""A synthetic benchmark written in the real PASCAL VOC 2012 layout (and an ImageNet-S-like mode).

Design (see the book's "Synthetic benchmark" page):

- ``K`` object classes drawn as shapes (circle, square, triangle, cross, ring, bar, ...), each with a random
  colour and a random texture (flat, stripes or speckle), radius ``size * U(radius_min, radius_max)``
  (0.12-0.22 by default; the demo uses 0.22-0.38 so that objects cover about a quarter of the image, as in VOC).
- 1-3 objects per image, painted in random order so later objects occlude earlier ones. The masks hold the
  *visible* pixels; a 1-px band along every object border is void (255), as in VOC.
- A cluttered background: a random base colour with noise, random dots, short lines and shape fragments
  whose colours overlap the object colours.
- The **context cue**: for each class present, with probability ``context_bias`` the background gets
  that class's oriented sine grating (angle 180/K * class, period ``cue_period`` px) over a random large
  rectangle. Like cows on grass in VOC, a network can partly solve the task from the background alone.
- A **cue-free pretraining split** (``ImageSets/Main/pretrain.txt``, context_bias 0) stands in for
  ImageNet: the teacher is pretrained there, then fine-tuned on the cued ``train`` split.
- Objects whose visible area is under 25 % of their drawn area are marked ``difficult``.

``val_nocue`` re-renders val with the same seed and no cue: identical objects and clutter, no grating, to
measure how much a network relies on the cue. ``val_cueflip`` re-renders val with every shown cue replaced
by the grating of a class *absent* from the image (same box and phase): a network that reads the background
is misled towards the wrong class. :func:`cue_regions` replays the renderer to give each image's cue boxes.

Everything is a function of ``seed``: re-running with the same arguments gives byte-identical files.

Concurrency: a tree is written into a temporary sibling folder and renamed into place, under an OS file
lock on ``<out>/.apnb-synth.lock`` (the ``filelock`` package), so a reader never sees a half-written tree;
:func:`ensure` checks the stamp under the same lock, so a second process waits and then reuses the data.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ["circle", "square", "triangle", "cross", "ring", "bar", "diamond", "star", "ellipse", "hexagon",
          "plus_ring", "arc"]


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (bit-interleaved), 256 x RGB."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


@dataclass
class SynthConfig:
    """Parameters of the synthetic benchmark (all written to ``apnb_synth.json`` at the root)."""
    classes: int = 6
    n_train: int = 3000
    n_val: int = 600
    n_seg: int = 600
    n_pretrain: int = 3000
    size: int = 64
    seed: int = 0
    context_bias: float = 0.8
    cue_period: float = 5.0
    cue_amplitude: float = 0.22
    max_objects: int = 3
    clutter: int = 12
    fragment_prob: float = 0.33  # share of clutter items that are fragments of object shapes
    radius_min: float = 0.12  # object radius, as a share of the image side: U(radius_min, radius_max)
    radius_max: float = 0.22
    jpeg_quality: int = 95
    version: int = 2  # of the renderer: bump when the drawing changes, so stale data is regenerated

    def validate(self, mode: str = "voc"):
        if not 2 <= self.classes <= len(SHAPES):
            raise ValueError(f"classes={self.classes}: must be in [2, {len(SHAPES)}] (one shape per class)")
        if not 0.0 <= self.context_bias <= 1.0:
            raise ValueError(f"context_bias={self.context_bias}: must be a probability in [0, 1]")
        if self.size < 16:
            raise ValueError(f"size={self.size}: images must be at least 16 px")
        if mode == "voc" and self.n_seg > self.n_val:
            raise ValueError(f"n_seg={self.n_seg} > n_val={self.n_val}: the segmentation set is a subset of val")
        if not 0.02 <= self.radius_min <= self.radius_max <= 0.5:
            raise ValueError(f"radius_min={self.radius_min}, radius_max={self.radius_max}: need "
                             f"0.02 <= radius_min <= radius_max <= 0.5 (shares of the image side)")
        if min(self.n_train, self.n_val) < 1 or self.max_objects < 1:
            raise ValueError("n_train, n_val and max_objects must be >= 1")


def class_names(k: int) -> list[str]:
    return SHAPES[:k]


def _shape_mask(kind: str, yy, xx, cy, cx, r, ang):
    """Boolean mask of a shape centred at (cy, cx) with radius r and rotation ang (radians)."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(ang), np.sin(ang)
    u, v = c * dx + s * dy, -s * dx + c * dy
    ad = np.hypot(dx, dy)
    if kind == "circle":
        return ad <= r
    if kind == "square":
        return (np.abs(u) <= r * 0.8) & (np.abs(v) <= r * 0.8)
    if kind == "triangle":
        return (v <= r * 0.7) & (v >= -r + np.abs(u) * 1.7)
    if kind == "cross":
        return ((np.abs(u) <= r * 0.28) & (np.abs(v) <= r)) | ((np.abs(v) <= r * 0.28) & (np.abs(u) <= r))
    if kind == "ring":
        return (ad <= r) & (ad >= r * 0.55)
    if kind == "bar":
        return (np.abs(u) <= r) & (np.abs(v) <= r * 0.35)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if kind == "star":
        th = np.arctan2(v, u)
        return ad <= r * (0.55 + 0.45 * np.cos(5 * th) ** 2)
    if kind == "ellipse":
        return (u / r) ** 2 + (v / (0.55 * r)) ** 2 <= 1
    if kind == "hexagon":
        a, b = np.abs(u), np.abs(v)
        return (b <= r * 0.87) & (a * 0.87 + b * 0.5 <= r * 0.87)
    if kind == "plus_ring":
        return ((ad <= r) & (ad >= r * 0.7)) | ((np.abs(u) <= r * 0.2) & (ad <= r))
    if kind == "arc":
        return (ad <= r) & (ad >= r * 0.6) & (v > 0)
    raise ValueError(kind)


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _border(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it, plus their outside neighbours (a ~2 px band)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])
    outer = ~m[1:-1, 1:-1] & (m[:-2, 1:-1] | m[2:, 1:-1] | m[1:-1, :-2] | m[1:-1, 2:])
    return inner | outer


def flipped_classes(present: list[int], k: int) -> dict[int, int]:
    """The cue-flip map: the i-th present class (in order) shows the grating of the i-th class absent from the
    image (cyclically when fewer are absent). No class absent: no flip (empty map)."""
    absent = [c for c in range(k) if c not in set(present)]
    return {c: absent[i % len(absent)] for i, c in enumerate(sorted(set(present)))} if absent else {}


def render(rng: np.random.Generator, cfg: SynthConfig, context_bias: float, single_object: bool = False,
           flip_cue: bool = False, cues: list | None = None):
    """Render one image. Returns (uint8 HxWx3 image, int HxW class map with 255 void, objects list).

    ``flip_cue``: each shown cue takes the grating of another class (:func:`flipped_classes`); all random
    draws are the same, so objects and clutter are identical. ``cues``: a list that receives one
    ``(class, grating class, y0, x0, h, w, shown)`` tuple per present class."""
    S, K = cfg.size, cfg.classes
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    base = rng.uniform(0.15, 0.85, 3)
    img = base[None, None, :] + rng.normal(0, 0.06, (S, S, 3))
    # low-frequency colour variation
    gy, gx = rng.uniform(-1, 1, 2) / S
    img += (gy * (yy - S / 2) + gx * (xx - S / 2))[..., None] * rng.uniform(-0.6, 0.6, 3)[None, None]

    if single_object:
        present = [int(rng.integers(K))]
    else:
        n = int(rng.integers(1, cfg.max_objects + 1))
        present = [int(c) for c in rng.integers(0, K, n)]
    # context cue: oriented grating per present class, behind the objects
    # cue parameters are drawn whether or not the cue is shown, so that the same seed with context_bias=0
    # renders the same image without its cue (a counterfactual for measuring reliance on the cue)
    flip = flipped_classes(present, K) if flip_cue else {}
    for c in sorted(set(present)):
        show = rng.random() < context_bias
        g = flip.get(c, c) if show else c
        ang = np.pi * g / K
        phase = rng.uniform(0, 2 * np.pi)
        h, w = rng.integers(S // 2, S + 1, 2)
        y0, x0 = rng.integers(0, S - h + 1), rng.integers(0, S - w + 1)
        if cues is not None:
            cues.append((c, g, int(y0), int(x0), int(h), int(w), bool(show)))
        if show:
            grating = np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) / cfg.cue_period + phase)
            box = np.zeros((S, S), bool)
            box[y0:y0 + h, x0:x0 + w] = True
            img += (cfg.cue_amplitude * grating * box)[..., None]
    # clutter: dots, short lines and shape fragments in object-like colours
    for _ in range(int(rng.integers(cfg.clutter // 2, cfg.clutter + 1))):
        col = _hsv_to_rgb(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.3, 1))
        cy, cx = rng.uniform(0, S, 2)
        u_kind = rng.random()
        kind = 2 if u_kind < cfg.fragment_prob else (0 if u_kind < (1 + cfg.fragment_prob) / 2 else 1)
        if kind == 0:
            m = np.hypot(yy - cy, xx - cx) <= rng.uniform(0.5, 2.0)
        elif kind == 1:
            a = rng.uniform(0, np.pi)
            u = np.cos(a) * (xx - cx) + np.sin(a) * (yy - cy)
            v = -np.sin(a) * (xx - cx) + np.cos(a) * (yy - cy)
            m = (np.abs(u) <= rng.uniform(2, S * 0.15)) & (np.abs(v) <= 0.6)
        else:  # fragment of a random shape, cut by a half-plane
            r = S * rng.uniform(0.06, 0.12)
            m = _shape_mask(SHAPES[int(rng.integers(K))], yy, xx, cy, cx, r, rng.uniform(0, np.pi))
            m &= (xx - cx) * rng.normal() + (yy - cy) * rng.normal() > 0
        img[m] = col
    cls_map = np.zeros((S, S), np.int16)
    obj_masks = []
    for c in present:
        r = S * rng.uniform(cfg.radius_min, cfg.radius_max) * (1.25 if single_object else 1.0)
        if single_object:
            cy, cx = S / 2 + rng.normal(0, S * 0.08, 2)
        else:
            cy, cx = rng.uniform(r * 0.6, S - r * 0.6, 2)
        m = _shape_mask(SHAPES[c], yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi))
        if m.sum() < 4:
            continue
        col = _hsv_to_rgb(rng.random(), rng.uniform(0.5, 1), rng.uniform(0.45, 1))
        tex = int(rng.integers(3))
        if tex == 1:
            a = rng.uniform(0, np.pi)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / rng.uniform(2.5, 4.0))
            patch = col[None, None, :] * (0.75 + 0.25 * t[..., None])
        elif tex == 2:
            patch = col[None, None, :] * rng.uniform(0.75, 1.1, (S, S, 1))
        else:
            patch = np.broadcast_to(col, (S, S, 3))
        img[m] = patch[m]
        for om in obj_masks:  # occlusion: earlier objects lose the pixels painted over
            om[1] &= ~m
        obj_masks.append([c, m.copy(), int(m.sum())])
        cls_map[m] = c + 1
    void = np.zeros((S, S), bool)
    objects = []
    for c, m, drawn in obj_masks:
        if m.sum() == 0:
            continue
        void |= _border(m)
        ys, xs = np.nonzero(m)
        objects.append({"cls": c, "bbox": (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1),
                        "difficult": int(m.sum() < 0.25 * drawn),
                        "truncated": int(xs.min() == 0 or ys.min() == 0 or xs.max() == S - 1 or ys.max() == S - 1)})
    cls_map[void] = 255
    img8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return img8, cls_map.astype(np.uint8), objects


def _xml(name: str, size: int, objects, names) -> str:
    objs = "".join(
        f"\t<object>\n\t\t<name>{names[o['cls']]}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>{o['truncated']}</truncated>\n\t\t<difficult>{o['difficult']}</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{o['bbox'][0]}</xmin>\n\t\t\t<ymin>{o['bbox'][1]}</ymin>\n"
        f"\t\t\t<xmax>{o['bbox'][2]}</xmax>\n\t\t\t<ymax>{o['bbox'][3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for o in objects)
    return (f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{name}.jpg</filename>\n"
            f"\t<source>\n\t\t<database>apnb synthetic</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            f"\t<segmented>1</segmented>\n{objs}</annotation>\n")


def _save_png_palette(path: Path, arr: np.ndarray, palette):
    im = Image.fromarray(arr, mode="P")
    im.putpalette(palette)
    im.save(path, optimize=False)


def _lock(out: str | Path):
    from filelock import FileLock

    Path(out).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(out) / ".apnb-synth.lock"))


@contextmanager
def _atomic_tree(root: Path):
    """Yield a temporary sibling of ``root``; on success it replaces ``root`` (rename), else it is removed."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        if root.exists():
            os.rename(root, old)
        os.rename(tmp, root)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_voc(out: str | Path, cfg: SynthConfig | None = None, **kw) -> Path:
    """Write the VOC-format tree under ``out/VOCdevkit/VOC2012`` and return that root.

    Splits: ``pretrain`` (cue-free, stands in for ImageNet), ``train`` and ``val`` (cued with
    ``context_bias``), ``val_nocue`` (the val images re-rendered without their cue) and ``val_cueflip``
    (re-rendered with another class's cue); the first ``n_seg`` of each val copy are listed in
    ``ImageSets/Segmentation/<split>.txt``. Atomic and locked.
    """
    cfg = cfg or SynthConfig(**kw)
    cfg.validate()
    with _lock(out):
        return _write_voc(Path(out), cfg)


def _write_voc(out: Path, cfg: SynthConfig) -> Path:
    final = out / "VOCdevkit" / "VOC2012"
    with _atomic_tree(final) as root:
        _render_voc(root, cfg)
    return final


# split: (context bias, random stream, file prefix, flip the cue); the val copies re-render val's streams
SPLITS = {"pretrain": (0.0, 0, 0, False), "train": (None, 1, 1, False), "val": (None, 2, 2, False),
          "val_nocue": (0.0, 2, 3, False), "val_cueflip": (None, 2, 4, True)}


def _split_count(cfg: SynthConfig, split: str) -> int:
    return {"pretrain": cfg.n_pretrain, "train": cfg.n_train}.get(split, cfg.n_val)


def _render_split(root: Path, cfg: SynthConfig, split: str) -> None:
    """One split's images, annotations, masks and lists; the split's main list is written last (atomically),
    so a split whose list exists is complete."""
    from ..config import atomic_write_text  # here, not above: config imports torch, which the generator does not need

    q, stream, prefix, flip = SPLITS[split]
    q = cfg.context_bias if q is None else q
    names = class_names(cfg.classes)
    pal = voc_palette()
    ids, labels = [], []
    for i in range(_split_count(cfg, split)):
        # one independent stream per image: deterministic and order-free
        rng = np.random.default_rng([cfg.seed, stream, i])
        name = f"{2012}_{prefix}{i:06d}"
        img, cls_map, objects = render(rng, cfg, q, flip_cue=flip)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=cfg.jpeg_quality)
        (root / "Annotations" / f"{name}.xml").write_text(_xml(name, cfg.size, objects, names))
        if split.startswith("val") and i < cfg.n_seg:
            _save_png_palette(root / "SegmentationClass" / f"{name}.png", cls_map, pal)
        ids.append(name)
        flags = {}
        for o in objects:
            flags[o["cls"]] = max(flags.get(o["cls"], 0), 1 if not o["difficult"] else 0)
        labels.append(flags)
    for c, cname in enumerate(names):
        lines = "".join(f"{x} {labels[j].get(c, -1):2d}\n" for j, x in enumerate(ids))
        (root / "ImageSets/Main" / f"{cname}_{split}.txt").write_text(lines)
    if split.startswith("val"):
        (root / f"ImageSets/Segmentation/{split}.txt").write_text("".join(f"{x}\n" for x in ids[:cfg.n_seg]))
    atomic_write_text(root / "ImageSets/Main" / f"{split}.txt", "".join(f"{x}\n" for x in ids))


def _render_voc(root: Path, cfg: SynthConfig) -> None:
    for d in ["JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        _render_split(root, cfg, split)
    (root / "apnb_classes.txt").write_text("".join(f"{c}\n" for c in class_names(cfg.classes)))
    (root / "apnb_synth.json").write_text(json.dumps(asdict(cfg), indent=1, sort_keys=True) + "\n")


def cue_regions(root: "str | Path | SynthConfig", split: str = "val", n: int | None = None) -> np.ndarray:
    """Boolean [N,S,S] masks of where each image of a synthetic split shows its cue (the union of its shown
    cue boxes; all False where no cue is shown), replayed from the generator's parameters in
    ``apnb_synth.json`` under ``root`` (or from a :class:`SynthConfig` itself): nothing is stored, and the
    boxes are exactly those the renderer drew. The replay is cached per (parameters, split, n): a chapter that
    scores many networks renders the boxes once. Read-only."""
    if isinstance(root, SynthConfig):
        return _cue_regions(json.dumps(asdict(root), sort_keys=True), split, n)
    stamp = Path(root) / "apnb_synth.json"
    if not stamp.exists():
        raise FileNotFoundError(f"{root} has no apnb_synth.json: cue regions exist only for the synthetic benchmark")
    return _cue_regions(stamp.read_text(), split, n)


@functools.lru_cache(maxsize=8)
def _cue_regions(stamp: str, split: str, n: int | None) -> np.ndarray:
    cfg = SynthConfig(**json.loads(stamp))
    q, stream, _, flip = SPLITS[split]
    q = cfg.context_bias if q is None else q
    n = _split_count(cfg, split) if n is None else n
    out = np.zeros((n, cfg.size, cfg.size), bool)
    for i in range(n):
        cues = []
        render(np.random.default_rng([cfg.seed, stream, i]), cfg, q, flip_cue=flip, cues=cues)
        for _, _, y0, x0, h, w, shown in cues:
            if shown:
                out[i, y0:y0 + h, x0:x0 + w] = True
    out.setflags(write=False)
    return out


def write_imagenet_like(out: str | Path, cfg: SynthConfig | None = None, **kw) -> Path:
    """ImageNet-like mode: one main object near the centre, ImageNet-S layout.

    Writes ``out/ImageNetS<K>/{train,validation}/<wnid>/<name>.JPEG`` and
    ``validation-segmentation/<wnid>/<name>.png`` (RGB, class id = R + 256 G, 0 other, 1000 ignore),
    so that :class:`apnb.data.imagenet.ImageNetS` reads it like the real ImageNet-S.
    """
    cfg = cfg or SynthConfig(**kw)
    cfg.validate("imagenet")
    with _lock(out):
        return _write_imagenet_like(Path(out), cfg)


def _write_imagenet_like(out: Path, cfg: SynthConfig) -> Path:
    final = out / f"ImageNetS{cfg.classes}"
    with _atomic_tree(final) as root:
        _render_imagenet_like(root, cfg)
    return final


def _render_imagenet_like(root: Path, cfg: SynthConfig) -> None:
    names = class_names(cfg.classes)
    wnids = [f"n{9000000 + c:08d}" for c in range(cfg.classes)]
    for si, (split, n) in enumerate([("train", cfg.n_train), ("validation", cfg.n_val)]):
        for i in range(n):
            rng = np.random.default_rng([cfg.seed, 10 + si, i])
            img, cls_map, objects = render(rng, cfg, cfg.context_bias, single_object=True)
            if not objects:
                continue
            c = objects[0]["cls"]
            d = root / split / wnids[c]
            d.mkdir(parents=True, exist_ok=True)
            name = f"{split}_{i:06d}"
            Image.fromarray(img).save(d / f"{name}.JPEG", quality=cfg.jpeg_quality)
            if split == "validation":
                seg = np.zeros((*cls_map.shape, 3), np.uint8)
                ids = np.where(cls_map == 255, 1000, np.where(cls_map > 0, c + 1, 0)).astype(np.int32)
                seg[..., 0], seg[..., 1] = ids % 256, ids // 256
                sd = root / "validation-segmentation" / wnids[c]
                sd.mkdir(parents=True, exist_ok=True)
                Image.fromarray(seg).save(sd / f"{name}.png")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    (root / "apnb_synth.json").write_text(json.dumps(asdict(cfg), indent=1, sort_keys=True) + "\n")


def ensure(out: str | Path, mode: str = "voc", **kw) -> Path:
    """Generate the benchmark under ``out`` unless an identical one (same parameters) is already there.

    The stamp is checked and the data written under the folder's lock: a concurrent caller waits for the
    writer, then finds the stamp and reuses the data."""
    if mode not in ("voc", "imagenet"):
        raise ValueError(f"mode={mode!r}: use voc or imagenet")
    cfg = SynthConfig(**kw)
    cfg.validate(mode)
    root = Path(out) / ("VOCdevkit/VOC2012" if mode == "voc" else f"ImageNetS{cfg.classes}")
    stamp = root / "apnb_synth.json"
    with _lock(out):
        if stamp.exists() and json.loads(stamp.read_text()) == asdict(cfg):
            if mode == "voc" and not (root / "ImageSets/Main/val_cueflip.txt").exists():
                _render_split(root, cfg, "val_cueflip")  # a tree written before the split existed
                print(f"apnb: added the val_cueflip split to {root}")
            return root
        t = time.time()
        root = (_write_voc if mode == "voc" else _write_imagenet_like)(Path(out), cfg)
    print(f"apnb: wrote synthetic {mode} benchmark to {root} in {time.time() - t:.1f}s")
    return root
