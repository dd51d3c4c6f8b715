"""Every notebook at the paper-dry profile: the paper profile's code paths (227-px VOC loaders, full-width
VGG16_bn with 5 pools, ResNet34, SGD multistep schedules, ImageNet folders with gtsegs_ijcv.mat, CIFAR-10
batches), on the real-format fixtures of :mod:`apnb.data.fixtures`, one epoch per phase."""
import json

import nbformat
import pytest

from apnb import runner
from apnb.data import fixtures
from apnb.data.cifar import load_cifar
from apnb.data.imagenet import GtSegsIJCV, ImageNetS
from apnb.data.voc import VOC_CLASSES, VOCClassification, VOCLocalization

NOTEBOOKS = runner.toc_notebooks()


@pytest.mark.unit
def test_paper_dry_extends_the_paper_profile():
    paper, dry = runner.load_profile("paper"), runner.load_profile("paper-dry")
    # the architectures, image size and optimizer family are the paper's, not restated
    assert dry["defaults"]["teacher_recipe"]["spec"] == paper["defaults"]["teacher_recipe"]["spec"]
    assert dry["defaults"]["benchmark"]["image_size"] == paper["defaults"]["benchmark"]["image_size"]
    assert dry["defaults"]["matching"] == paper["defaults"]["matching"]
    # the recipes are the paper's but for their schedules (one epoch, one round)
    for recipe, fields in [("kd", ("div", "T", "alpha")), ("structured", ("rate", "layers")), ("unstructured", ("rate",))]:
        for f in fields:
            assert dry["defaults"][recipe][f] == paper["defaults"][recipe][f], (recipe, f)
    for net in ("vgg_recipe", "resnet_recipe"):
        assert dry["notebooks"]["05_imagenet"][net]["spec"] == paper["notebooks"]["05_imagenet"][net]["spec"], net
        assert dry["notebooks"]["05_imagenet"][net]["pretrained"] is False and paper["notebooks"]["05_imagenet"][net]["pretrained"]
    assert dry["defaults"]["kd"]["train"].get("optimizer", "sgd") == "sgd"
    assert dry["defaults"]["teacher_recipe"]["pretrained"] is False and paper["defaults"]["teacher_recipe"]["pretrained"]
    assert dry["fixtures"]


@pytest.mark.unit
def test_fixtures_have_the_real_layouts(tmp_path):
    out = fixtures.write_all(tmp_path / "fx")
    voc = out / "VOCdevkit" / "VOC2012"
    assert not (voc / "apnb_classes.txt").exists() and not (voc / "ImageSets/Main/val_nocue.txt").exists()
    with pytest.warns(UserWarning, match="PASCAL VOC 2012 has"):
        ds = VOCClassification(voc, "train", size=227)
    assert ds.classes == VOC_CLASSES and ds.labels.shape[1] == 20 and ds[0][0].shape == (3, 227, 227)
    with pytest.warns(UserWarning):
        x, y, m = VOCLocalization(voc, "val", size=227)[0]
    assert m.shape == (227, 227)
    assert len(ImageNetS(out / "imagenet", "val", size=224)) == len(GtSegsIJCV(out / "gtsegs_ijcv.mat", size=224))
    x, m = GtSegsIJCV(out / "gtsegs_ijcv.mat", size=224)[0]
    assert x.shape == (3, 224, 224) and 0 < float(m.float().mean()) < 1
    assert load_cifar(out / "cifar-10-batches-py", train=True).tensors[0].shape[1:] == (3, 32, 32)
    stamp = (out / "apnb_fixtures.json").read_text()
    assert fixtures.write_all(tmp_path / "fx") == out and (out / "apnb_fixtures.json").read_text() == stamp


@pytest.mark.notebooks
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_paper_dry(nb, paper_dry_runs):
    rec = paper_dry_runs[nb.stem]
    assert rec["profile"] == "paper-dry" and rec["rows"]
    executed = nbformat.read(runner.runs_dir("paper-dry") / nb.name, 4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    p = rec["parameters"]
    if "teacher_recipe" in p and p["benchmark"]["synth"] is None and nb.stem != "23_lpi_benchmarks":
        spec = p["teacher_recipe"]["spec"]
        assert p["benchmark"]["image_size"] == 227 and spec["width_div"] == 1 and spec["n_pools"] == 5


@pytest.mark.notebooks
def test_paper_dry_teacher_is_the_paper_architecture(paper_dry_runs):
    """The teacher of the VOC notebooks is full-width VGG16_bn with the authors' head (Dropout + Linear(25088,
    20)): torchvision's features + 0.5 M, trained by the paper's SGD schedule."""
    rows = {r["metric"]: r["value"] for r in paper_dry_runs["01_voc_distillation"]["rows"] if r["table"] == "teacher"}
    import torchvision

    features = sum(p.numel() for p in torchvision.models.vgg16_bn().features.parameters())  # 14.7 M, BN included
    assert rows["params"] == features + 512 * 7 * 7 * 20 + 20
    assert json.dumps(paper_dry_runs["01_voc_distillation"]["parameters"]["teacher_recipe"]["train"]).count("multistep") == 1
    assert rows["mAP_nocue"] is None  # real VOC has no cue-free copy: NaN, recorded as null
