"""The networks (:mod:`apnb.models`): the paper's parameter counts and the ImageNet weights."""
import pytest
import torch

from apnb import models as M
from apnb.gradcam import gradcam
from apnb.models import ModelError

pytestmark = pytest.mark.unit


def test_pretrained_weights_absent_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="not found.*pretrained: false"):
        M.load_imagenet_weights(M.vgg("vgg16_bn", 20), "vgg16_bn")


@pytest.mark.parametrize("arch", ["vgg16_bn", "resnet34"])
def test_pretrained_weights_load_from_the_torch_cache(tmp_path, monkeypatch, arch):
    """A torchvision state dict in the torch cache (random weights of the real file's names and shapes, as
    ``torch.save`` writes it) is copied into the paper's networks: every feature tensor, and the classifier
    only where the head is torchvision's 1000-class one."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    tv = getattr(torchvision.models, arch)()
    path = M.torch_cache_weights(arch)
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    ref = tv.state_dict()
    if arch == "vgg16_bn":
        voc = M.load_imagenet_weights(M.vgg("vgg16_bn", 20), arch).state_dict()
        feats = [k for k in ref if k.startswith("features.")]
        assert feats and all(torch.equal(voc[k], ref[k]) for k in feats)
        assert voc["classifier.1.weight"].shape == (20, 25088)  # the VOC head stays as initialised
        full = M.load_imagenet_weights(M.vgg("vgg16_bn", 1000, head="torchvision"), arch).state_dict()
    else:
        full = M.load_imagenet_weights(M.resnet34(1000), arch).state_dict()
    assert all(torch.equal(full[k], v) for k, v in ref.items())


def test_paper_parameter_counts():
    assert M.count_params(M.vgg("vgg16_bn", 20)) == 15_224_916  # paper: 15.22M
    assert round(M.count_params(M.vgg("vgg16_bn", 20, width_div=8)) / 1e6, 2) == 0.29  # paper: 0.29M


def test_preact_resnet18():
    m = M.build({"arch": "preact_resnet18", "num_classes": 10})
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(11.17e6, rel=0.01)  # PreActResNet-18
    slim = M.build({"arch": "preact_resnet18", "num_classes": 4, "width_div": 8}).eval()
    assert M.layer_alias(slim, "last_conv") == "relu"
    maps, logits = gradcam(slim, torch.randn(2, 3, 32, 32), "last_conv")
    assert maps.shape == (2, 4, 4) and logits.shape == (2, 4)
