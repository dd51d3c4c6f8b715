"""The ImageNet pipeline of supplement B: data, slim ResNet34, top-1 maps scored on every image."""
import pytest
import torch
from torchvision.models.resnet import ResNet
from apnb import evaluate as E
from apnb.data import splits as D
from apnb import recipes as R
from apnb import models as M

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("inet")
    return D.imagenet_data(root, {"classes": 3, "n_train": 12, "n_val": 10, "size": 32, "seed": 0}, 32)


def test_imagenet_data_splits(data):
    x, c = data["train"][0]
    assert x.shape == (3, 32, 32) and isinstance(c, int)
    x, c, m = data["loc"][0]
    assert m.shape == (32, 32) and set(m.unique().tolist()) <= {0, 1, 255}
    assert len(data["classes"]) == 3 and data["id"]["classes"] == 3


def test_top1_map_scored_on_every_image(data):
    torch.manual_seed(0)
    net = M.build({"arch": "resnet34", "num_classes": 3, "width_div": 16, "maxpool": False}).eval()
    loc = E.localization(net, data["loc"], "cpu", multilabel=False)
    p = loc.pairs
    assert len(p) == len(data["loc"])  # one row per image, right or wrong
    with torch.no_grad():
        logits = torch.stack([net(data["loc"][i][0][None])[0] for i in range(len(data["loc"]))])
    assert (p.target.values == logits.argmax(1).numpy()).all()  # the map of the top-1 prediction
    labels = [data["loc"][i][1] for i in range(len(data["loc"]))]
    assert (p.cls.values == labels).all()
    assert (p.correct.values == (logits.argmax(1).numpy() == labels)).all()
    assert p.predicted.all()  # scored whether right or wrong (supplement B)
    # similarity pairs the two networks' top-1 maps image by image
    net2 = M.build({"arch": "resnet34", "num_classes": 3, "width_div": 16, "maxpool": False}).eval()
    sim = E.similarity(loc, E.localization(net2, data["loc"], "cpu", multilabel=False))
    assert sim["n_both"] == len(p) and -1 <= sim["cos"] <= 1


def test_slim_resnet34_is_a_torchvision_resnet():
    m = M.build({"arch": "resnet34", "num_classes": 5, "width_div": 4, "maxpool": False})
    assert isinstance(m, ResNet) and m.layer4[-1].conv2.out_channels == 128
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    assert M.build(m.apnb_spec).apnb_spec == m.apnb_spec
    full = M.resnet34(10)
    assert full.layer4[-1].conv2.out_channels == 512 and "width_div" not in full.apnb_spec


def test_torchvision_vgg_head():
    m = M.vgg("vgg16_bn", 7, width_div=16, n_pools=2, head_pool=1, head="torchvision")
    assert [type(l).__name__ for l in m.classifier][::3] == ["Linear", "Linear", "Linear"]
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(M.ModelError, match="head='x'"):
        M.vgg("vgg16_bn", 7, head="x")


def test_teacher_needs_training_or_weights(data, tmp_path):
    from apnb.store import Store

    with pytest.raises(ValueError, match="needs train="):
        R.setup({}, {"spec": {"arch": "vgg16_bn", "width_div": 16, "n_pools": 2, "head_pool": 1}, "train": None}, "cpu",
                Store(tmp_path / "store"), data=data)
