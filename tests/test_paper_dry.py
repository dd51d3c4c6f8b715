"""The paper profile's code paths at the paper-dry profile (227-px VOC loaders, full-width VGG16_bn with 5
pools, ResNet34, SGD multistep schedules, DataLoader workers, ImageNet folders with gtsegs_ijcv.mat), on the
real-format fixtures of :mod:`apnb.data.fixtures`, one epoch per phase.

Only the notebooks whose code paths at this profile differ from every other's run here (``PAPER_DRY``). A
line-coverage comparison of all 19 notebooks at paper-dry against the rest of the suite found 7 lines of
``apnb`` that only they reached: the gtsegs_ijcv.mat branch of ``imagenet_data`` (05, kept) and the per-neuron
map with an SSWA mask (20, now a unit test in test_matching.py). 25 came later: it alone meets a head without
global pooling for CAT-KD and prunes the paper's network by LRP relevance. The other chapters call the same library
functions as 01, 03 and 05 on the same networks; their own logic is run at the smoke profile. The CIFAR-10
pickles are read by test_fixtures_have_the_real_layouts and by 23 at smoke."""
import json

import nbformat
import pytest

from apnb import runner
from apnb.data import fixtures
from apnb.data.cifar import load_cifar
from apnb.data.imagenet import GtSegsIJCV, ImageNetS
from apnb.data.voc import VOC_CLASSES, VOCClassification, VOCLocalization

from conftest import run_one

# the notebooks run at paper-dry, and the paper-profile path each is the one to cover
PAPER_DRY = {
    "01_voc_distillation": "real VOC 2012 loaders at 227 px; full-width VGG16_bn teacher with the authors' head "
                           "(Dropout + Linear(25088, 20)) by SGD with a multistep schedule and DataLoader workers; "
                           "KD students at /4 and /8 matched at the 14x14 last conv",
    "03_structured_pruning": "torch-pruning of the paper's layer list (features.0 ... features.40, names that exist "
                             "only in full-width VGG16_bn) and the pruned network's fine-tune",
    "25_field_since_2020": "CAT-KD marked n/a on the authors' VGG16 head (no global pooling), and pruning by "
                           "explaining: the LRP relevance of every filter of full-width VGG16_bn on the paper's layer "
                           "list at 227 px",
    "05_imagenet": "ImageNet class folders and gtsegs_ijcv.mat (MATLAB v7.3) scored by the top-1 map; ResNet34 "
                   "and torchvision's VGG16_bn head at 224 px",
}


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
@pytest.mark.parametrize("stem", sorted(PAPER_DRY))
def test_notebook_runs_at_paper_dry(stem):
    rec = run_one(stem, "paper-dry", PAPER_DRY)
    assert rec["profile"] == "paper-dry" and rec["rows"]
    executed = nbformat.read(runner.runs_dir("paper-dry") / f"{stem}.ipynb", 4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    p = rec["parameters"]
    if "teacher_recipe" in p:
        spec = p["teacher_recipe"]["spec"]
        assert p["benchmark"]["synth"] is None and p["benchmark"]["image_size"] == 227
        assert spec["width_div"] == 1 and spec["n_pools"] == 5
    if stem == "05_imagenet":
        assert p["resnet_recipe"]["spec"]["arch"] == "resnet34" and p["benchmark"]["gtsegs"].endswith("gtsegs_ijcv.mat")


@pytest.mark.unit
def test_paper_dry_notebooks_are_in_the_toc():
    assert set(PAPER_DRY) <= {nb.stem for nb in runner.toc_notebooks()}


@pytest.mark.notebooks
def test_paper_dry_teacher_is_the_paper_architecture():
    """The teacher of the VOC notebooks is full-width VGG16_bn with the authors' head (Dropout + Linear(25088,
    20)): torchvision's features + 0.5 M, trained by the paper's SGD schedule."""
    rec = run_one("01_voc_distillation", "paper-dry", PAPER_DRY)
    rows = {r["metric"]: r["value"] for r in rec["rows"] if r["table"] == "teacher"}
    import torchvision

    features = sum(p.numel() for p in torchvision.models.vgg16_bn().features.parameters())  # 14.7 M, BN included
    assert rows["params"] == features + 512 * 7 * 7 * 20 + 20
    assert json.dumps(rec["parameters"]["teacher_recipe"]["train"]).count("multistep") == 1
    assert rows["mAP_nocue"] is None  # real VOC has no cue-free copy: NaN, recorded as null
