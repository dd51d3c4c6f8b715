import copy

import pytest
import torch
import torch.nn as nn

from apnb import models as M
from apnb.attribution import METHODS, attribute

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = M.vgg("vgg16_bn", 5, width_div=16, n_pools=2, head_pool=1)
    m.train()
    for _ in range(2):  # give BatchNorm non-trivial statistics
        m(torch.randn(8, 3, 32, 32))
    return m.eval()


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_model_unchanged(net, method):
    x = torch.randn(2, 3, 32, 32)
    ref = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        out0 = net(x)
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    opts = {"baselines": torch.randn(4, 3, 32, 32), "n_samples": 4} if method == "eg" else {}
    maps = attribute(net, x, torch.tensor([1, 3]), method, **opts)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    with torch.no_grad():
        assert torch.allclose(net(x), out0, atol=1e-6)
    assert not net.training
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == hooks
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert all(p.grad is None for p in net.parameters())


def test_resnet34_ebp_and_lrp():
    torch.manual_seed(0)
    r = M.resnet34(4).eval()
    x = torch.randn(1, 3, 64, 64)
    for method in ("ebp", "lrp"):
        assert attribute(r, x, torch.tensor([2]), method).shape == (1, 64, 64)


def test_lrp_alpha1_beta0_conserves_relevance():
    # a BN-free ReLU network with zero biases: LRP alpha1-beta0 relevance sums to the target logit when every
    # layer has positive contributions (the RAP/LRP conservation property)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3, bias=False))
    with torch.no_grad():
        net[0].weight.abs_()
        net[3].weight.abs_()
    x = torch.rand(2, 3, 8, 8)
    rel = attribute(net, x, torch.tensor([0, 2]), "lrp")
    out = net(x)
    assert torch.allclose(rel.flatten(1).sum(1), out[[0, 1], [0, 2]], rtol=1e-4)
    assert (rel >= -1e-7).all()  # alpha1-beta0: no negative relevance


def test_ig_completeness(net):
    x = torch.randn(1, 3, 32, 32)
    t = torch.tensor([2])
    maps = attribute(net, x, t, "ig", n_steps=128)
    with torch.no_grad():
        gap = net(x)[0, 2] - net(torch.zeros_like(x))[0, 2]
    assert abs(maps.sum().item() - gap.item()) < 0.05 * abs(gap.item()) + 1e-3


def test_unknown_method(net):
    with pytest.raises(ValueError, match="unknown attribution method 'foo'"):
        attribute(net, torch.randn(1, 3, 32, 32), 0, "foo")
