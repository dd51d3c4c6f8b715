import hashlib
import pickle
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from apnb.data import DataError, VOCClassification, VOCLocalization, write_voc
from apnb.data.cifar import load_cifar
from apnb.data.imagenet import GtSegsIJCV, ImageNetS
from apnb.data.synthetic import write_imagenet_like

pytestmark = pytest.mark.unit


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_byte_identical(tmp_path):
    kw = dict(classes=3, n_train=6, n_val=4, n_seg=3, n_pretrain=2, size=32, seed=7)
    a = write_voc(tmp_path / "a", **kw)
    b = write_voc(tmp_path / "b", **kw)
    c = write_voc(tmp_path / "c", **{**kw, "seed": 8})
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def _cueflip_tree(tmp_path, **extra):
    kw = dict(classes=6, n_train=4, n_val=24, n_seg=24, n_pretrain=2, size=48, seed=3, context_bias=1.0, **extra)
    return write_voc(tmp_path / "cf", **kw), kw


def test_cueflip_split_is_deterministic_and_changes_only_the_cue(tmp_path):
    from apnb.data import synthetic as S

    root, kw = _cueflip_tree(tmp_path)
    again = write_voc(tmp_path / "again", **kw)
    files = lambda r: sorted(p for p in r.rglob("*") if p.is_file() and "_4" in p.name)  # prefix 4: val_cueflip
    assert [p.name for p in files(root)] == [p.name for p in files(again)] and files(root)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files(root), files(again)))
    val = (root / "ImageSets/Main/val.txt").read_text().split()
    flip = (root / "ImageSets/Main/val_cueflip.txt").read_text().split()
    assert len(flip) == len(val) == 24
    cues = S.cue_regions(root, "val")
    assert cues.shape == (24, 48, 48) and cues.any(axis=(1, 2)).all()  # context_bias 1: every image shows a cue
    assert (S.cue_regions(root, "val_nocue") == 0).all()
    assert (S.cue_regions(root, "val_cueflip") == cues).all()  # the same boxes, another grating
    cfg = S.SynthConfig(**kw)
    changed = 0
    for i, (a, b) in enumerate(zip(val, flip)):
        # labels, masks and annotations are those of the val image
        assert np.array_equal(np.array(Image.open(root / "SegmentationClass" / f"{a}.png")),
                              np.array(Image.open(root / "SegmentationClass" / f"{b}.png")))
        assert ET.parse(root / "Annotations" / f"{a}.xml").getroot().findall("object")[0].findtext("name") == \
            ET.parse(root / "Annotations" / f"{b}.xml").getroot().findall("object")[0].findtext("name")
        # pixels, before JPEG: identical outside the cue boxes, and each shown cue is an absent class's grating
        rec = []
        ia, ma, _ = S.render(np.random.default_rng([cfg.seed, 2, i]), cfg, 1.0, cues=rec)
        ib, mb, _ = S.render(np.random.default_rng([cfg.seed, 2, i]), cfg, 1.0, flip_cue=True)
        assert np.array_equal(ma, mb)
        diff = (ia != ib).any(-1)
        assert not diff[~cues[i]].any()
        assert not diff[(ma > 0) & (ma < 255)].any()  # the objects are painted over the cue: untouched
        present = sorted({c for c, *_ in rec})
        flipped = S.flipped_classes(present, cfg.classes)
        assert set(flipped) == set(present) and not set(flipped.values()) & set(present)
        changed += diff.any()
    assert changed >= 20


def test_flipped_classes_hand_cases():
    from apnb.data.synthetic import flipped_classes

    assert flipped_classes([0, 1, 3], 6) == {0: 2, 1: 4, 3: 5}
    assert flipped_classes([2, 2], 4) == {2: 0}
    assert flipped_classes([0, 1, 2], 4) == {0: 3, 1: 3, 2: 3}  # one class absent: every cue shows it
    assert flipped_classes([0, 1], 2) == {}  # nothing absent: nothing to flip


def test_tree_without_the_cueflip_split_gets_it_added(tmp_path):
    from apnb.data import synthetic as S

    kw = dict(classes=3, n_train=4, n_val=6, n_seg=6, n_pretrain=2, size=32, seed=2)
    root = S.ensure(tmp_path / "d", **kw)
    full = _digest(root)
    for p in list(root.rglob("*_4*")) + [root / "ImageSets/Main/val_cueflip.txt", root / "ImageSets/Segmentation/val_cueflip.txt"]:
        p.unlink()  # as a tree written before the split existed
    assert S.ensure(tmp_path / "d", **kw) == root
    assert _digest(root) == full


def test_layout_and_split_files(synth_root):
    for d in ["JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"]:
        assert (synth_root / d).is_dir()
    train = (synth_root / "ImageSets/Main/train.txt").read_text().split()
    flags = dict(ln.split() for ln in (synth_root / "ImageSets/Main/circle_train.txt").read_text().splitlines())
    assert set(flags) == set(train) and set(flags.values()) <= {"1", "-1", "0"}
    seg = (synth_root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(seg) == 12 and all((synth_root / "SegmentationClass" / f"{i}.png").exists() for i in seg)
    assert Image.open(synth_root / "SegmentationClass" / f"{seg[0]}.png").mode == "P"


def test_multihot_equals_xml(synth_root):
    ds = VOCClassification(synth_root, "train", size=32)
    for j, i in enumerate(ds.ids):
        names = {o.findtext("name") for o in ET.parse(synth_root / "Annotations" / f"{i}.xml").getroot().iter("object")}
        assert {ds.classes[c] for c in ds.labels[j].nonzero()[:, 0].tolist()} == names


def test_masks_align_with_objects_and_void(synth_root):
    classes = (synth_root / "apnb_classes.txt").read_text().split()
    n_void = 0
    for i in (synth_root / "ImageSets/Segmentation/val.txt").read_text().split():
        m = np.array(Image.open(synth_root / "SegmentationClass" / f"{i}.png"))
        objs = list(ET.parse(synth_root / "Annotations" / f"{i}.xml").getroot().iter("object"))
        in_xml = {classes.index(o.findtext("name")) + 1 for o in objs}
        in_mask = set(np.unique(m).tolist()) - {0, 255}
        assert in_mask <= in_xml  # a fully occluded object can vanish from the mask, never the reverse
        for o in objs:
            c = classes.index(o.findtext("name")) + 1
            b = o.find("bndbox")
            x0, y0, x1, y1 = (int(b.findtext(k)) - 1 for k in ("xmin", "ymin", "xmax", "ymax"))
            ys, xs = np.nonzero(m == c)
            if len(ys) and len(objs) == 1:  # single object: class pixels lie inside its box
                assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
        # void band separates objects from the background: no class pixel touches background 4-neighbours
        cls = (m > 0) & (m < 255)
        bg = m == 0
        assert not (cls[1:, :] & bg[:-1, :]).any() and not (cls[:, 1:] & bg[:, :-1]).any()
        n_void += int((m == 255).sum())
    assert n_void > 0


def test_localization_loader(synth_root):
    ds = VOCLocalization(synth_root, size=24)
    x, y, m = ds[0]
    assert x.shape == (3, 24, 24) and m.shape == (24, 24) and m.dtype == torch.uint8
    assert set(m.unique().tolist()) <= {0, 255} | set(range(1, 5))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_root_message(tmp_path):
    with pytest.raises(DataError, match="apnb data synth"):
        VOCClassification(tmp_path / "nowhere")


def test_wrong_layout_message(tmp_path):
    (tmp_path / "VOC2012").mkdir()
    with pytest.raises(DataError, match="lacks Annotations"):
        VOCClassification(tmp_path / "VOC2012")


def test_split_lists_missing_files(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path / "VOC2012")
    with open(root / "ImageSets/Main/train.txt", "a") as f:
        f.write("ghost_1\nghost_2\n")
    with pytest.raises(DataError, match="2 images listed.*ghost_1"):
        VOCClassification(root, "train")


def test_corrupt_image(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path / "VOC2012")
    first = (root / "ImageSets/Main/train.txt").read_text().split()[0]
    (root / "JPEGImages" / f"{first}.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=f"corrupt or unreadable image .*{first}"):
        VOCClassification(root, "train")


def test_mask_size_mismatch(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path / "VOC2012")
    first = (root / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    p = root / "SegmentationClass" / f"{first}.png"
    im = Image.open(p)
    im.resize((20, 20)).save(p)
    with pytest.raises(DataError, match="mask .* is 20x20 but its image is 32x32"):
        VOCLocalization(root)[0]


def test_unknown_class(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path / "VOC2012")
    first = (root / "ImageSets/Main/train.txt").read_text().split()[0]
    x = root / "Annotations" / f"{first}.xml"
    x.write_text(x.read_text().replace("<name>", "<name>zebra", 1))
    with pytest.raises(DataError, match="unknown class 'zebra.*"):
        VOCClassification(root, "train")


def test_real_voc_count_warning(synth_root, tmp_path):
    root = _copy(synth_root, tmp_path / "VOC2012")
    (root / "apnb_classes.txt").unlink()  # now it looks like real VOC: 20 classes, count checked
    for x in (root / "Annotations").glob("*.xml"):
        t = x.read_text()
        for k, v in {"circle": "cat", "square": "dog", "triangle": "bus", "cross": "cow"}.items():
            t = t.replace(f"<name>{k}</name>", f"<name>{v}</name>")
        x.write_text(t)
    with pytest.warns(UserWarning, match="PASCAL VOC 2012 has 5717"):
        ds = VOCClassification(root, "train")
    assert ds.labels.shape[1] == 20


def test_imagenet_s_layout(tmp_path):
    root = write_imagenet_like(tmp_path, classes=5, n_train=10, n_val=8, size=32, seed=1)
    val = ImageNetS(root, "validation", size=32)
    x, c, m = val[0]
    assert x.shape == (3, 32, 32) and 0 <= c < 5 and set(m.unique().tolist()) <= {0, 1, 255} and (m == 1).any()
    assert isinstance(ImageNetS(root, "train", size=32)[0][1], int)


def test_gtsegs_hdf5_fixture(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "gtsegs_ijcv.mat"
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (3, 40, 30), dtype=np.uint8) for _ in range(2)]  # stored transposed (C,W,H)
    gts = [(rng.random((40, 30)) > 0.5).astype(np.uint8) for _ in range(2)]  # (W,H)
    with h5py.File(p, "w") as f:
        ref_dt = h5py.special_dtype(ref=h5py.Reference)
        img_refs = f.create_dataset("/value/img", (2, 1), dtype=ref_dt)
        gt_refs = f.create_dataset("/value/gt", (2, 1), dtype=ref_dt)
        for i in range(2):
            d = f.create_dataset(f"/refs/img{i}", data=imgs[i])
            img_refs[i, 0] = d.ref
            g = f.create_dataset(f"/refs/gt{i}", data=gts[i])
            inner = f.create_dataset(f"/refs/gtcell{i}", (1, 1), dtype=ref_dt)
            inner[0, 0] = g.ref
            gt_refs[i, 0] = inner.ref
    ds = GtSegsIJCV(p, size=30)
    assert len(ds) == 2
    x, m = ds[1]
    assert x.shape == (3, 30, 30) and m.shape == (30, 30)
    with pytest.raises(DataError, match="does not exist"):
        GtSegsIJCV(tmp_path / "missing.mat")


def test_cifar_pickles(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}, f)
    tr = load_cifar(tmp_path, train=True)
    assert tr.tensors[0].shape == (20, 3, 32, 32) and tr.tensors[1].tolist()[:4] == [0, 1, 2, 9]
    with pytest.raises(DataError, match="missing"):
        load_cifar(tmp_path, num_classes=100)


def test_cli_synth_takes_a_profiles_settings(tmp_path, capsys):
    """`apnb data synth --profile P` writes exactly the data the profile's notebooks use (every SynthConfig
    field is a flag; flags override the profile)."""
    import json

    from apnb import cli, runner

    synth = runner.load_profile("smoke")["defaults"]["benchmark"]["synth"]
    assert cli.main(["data", "synth", "--profile", "smoke", "--out", str(tmp_path / "a")]) in (0, None)
    stamp = json.loads((tmp_path / "a/VOCdevkit/VOC2012/apnb_synth.json").read_text())
    assert {k: stamp[k] for k in synth} == synth
    cli.main(["data", "synth", "--profile", "smoke", "--out", str(tmp_path / "b"), "--fragment-prob", "0.5",
              "--seed", "4"])
    stamp = json.loads((tmp_path / "b/VOCdevkit/VOC2012/apnb_synth.json").read_text())
    assert stamp["fragment_prob"] == 0.5 and stamp["seed"] == 4 and stamp["n_train"] == synth["n_train"]
    assert cli.main(["data", "synth", "--profile", "paper"]) == 2
    assert "reads real data" in capsys.readouterr().err
