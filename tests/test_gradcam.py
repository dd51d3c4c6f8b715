"""Grad-CAM (:mod:`apnb.gradcam`) against captum, by hand, and without side effects on the network."""
import pytest
import torch
import torch.nn.functional as F

from apnb import models as M
from apnb.gradcam import gradcam

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("arch", ["vgg16_bn", "resnet34"])
def test_gradcam_equals_captum(arch):
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = M.vgg(arch, 7) if arch == "vgg16_bn" else M.resnet34(7)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    target = torch.tensor([0, 3, 6])
    layer_name = M.layer_alias(model, "last_conv")
    ours, _ = gradcam(model, x, "last_conv", target)
    ref = LayerGradCam(model, M.get_module(model, layer_name)).attribute(x, target=target, relu_attributions=True)
    assert torch.allclose(ours, ref[:, 0], atol=1e-5, rtol=1e-4)


def test_gradcam_leaves_model_unchanged(small_vgg):
    small_vgg.train()
    n_hooks = sum(len(m._forward_hooks) for m in small_vgg.modules())
    flags = [p.requires_grad for p in small_vgg.parameters()]
    gradcam(small_vgg, torch.randn(2, 3, 32, 32))
    assert small_vgg.training
    assert sum(len(m._forward_hooks) for m in small_vgg.modules()) == n_hooks
    assert [p.requires_grad for p in small_vgg.parameters()] == flags
    assert all(p.grad is None for p in small_vgg.parameters())


def test_weighted_maps_by_hand():
    """Eq. 5's pooled weights and the per-neuron map sum_c A*dA, each with SSWA's channel mask (Eq. 6), against
    the formulas written out; a masked channel contributes nothing."""
    from apnb.gradcam import weighted_maps

    g = torch.Generator().manual_seed(0)
    a, d = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    pooled = sum(d[:, c].mean((1, 2))[:, None, None] * mask[:, c, None, None] * a[:, c] for c in range(3))
    neuron = sum(a[:, c] * d[:, c] * mask[:, c, None, None] for c in range(3))
    assert torch.allclose(weighted_maps(a, d, relu=False, weights_mask=mask), pooled, atol=1e-6)
    assert torch.allclose(weighted_maps(a, d, relu=False, per_neuron=True, weights_mask=mask), neuron, atol=1e-6)
    assert torch.allclose(weighted_maps(a, d, per_neuron=True, weights_mask=mask), F.relu(neuron), atol=1e-6)
    assert torch.allclose(weighted_maps(a, d, per_neuron=True), F.relu((a * d).sum(1)), atol=1e-6)
