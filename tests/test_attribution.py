import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from apnb import models as M
from apnb.attribution import METHODS, agi, attribute, attribute_batches, lpi, lpi_references, rap_layer

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
    opts = {"eg": {"baselines": torch.randn(4, 3, 32, 32), "n_samples": 4},
            "agi": {"n_steps": 3, "n_targets": 2},
            "lpi": {"references": lpi_references(net, torch.randn(12, 3, 32, 32), 1, 3), "n_alphas": 2}}.get(method, {})
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


def _relu_net(bias=True):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 4, bias=bias))
    net.train()
    net(torch.randn(16, 3, 8, 8))
    return net.eval()


@pytest.mark.parametrize("arch", ["seq", "vgg", "resnet34"])
def test_rap_conserves_relevance_and_separates_signs(arch, net):
    model = {"seq": _relu_net(), "vgg": net, "resnet34": M.resnet34(4).eval()}[arch]
    size = {"seq": 8, "vgg": 32, "resnet34": 64}[arch]
    x = torch.randn(2, 3, size, size)
    x[:, :, :2] = 0.0  # exactly-zero inputs: RAP gives them no relevance
    t = torch.tensor([1, 3])
    rel = attribute(model, x, t, "rap")
    with torch.no_grad():
        logit = model(x)[[0, 1], [1, 3]]
    # conservation (RAP's uniform shifting): the input relevance sums to the target logit
    assert torch.allclose(rel.flatten(1).sum(1), logit, rtol=1e-3, atol=1e-3)
    # both signs: relevant pixels positive, pixels of little influence negative (unlike LRP alpha1-beta0)
    assert (rel > 0).any() and (rel < 0).any()
    assert (rel[:, :2] == 0).all()


def test_rap_layer_hand_case():
    # one linear layer with two outputs; hidden-layer rule worked by hand
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.5, 0.0]]))
    x = torch.tensor([[1.0, 2.0, 1.0]])
    r = torch.tensor([[3.0, 1.0]])
    # output 0: contributions (1, -2, 2): z+ = 3, |z-| = 2 -> 3*(1,0,2)/3 + 3*(0,2,0)/5 = (1, 1.2, 2)
    # output 1: contributions (0.5, 1, 0): z+ = 1.5 -> 1*(0.5,1,0)/1.5 = (1/3, 2/3, 0)
    c = torch.tensor([[1 + 1 / 3, 1.2 + 2 / 3, 2.0]])
    excess = c.sum() - r.sum()  # 1.2, shared by the three non-zero inputs
    assert torch.allclose(rap_layer(lin, x, r), c - excess / 3, atol=1e-6)
    # output layer: signed contributions, the logit's total kept
    out = rap_layer(lin, x, torch.tensor([[1.0, 0.0]]), output_layer=True)
    assert torch.allclose(out, torch.tensor([[1.0, -2.0, 2.0]]))


def test_agi_one_step_by_hand():
    model = _relu_net()
    x = torch.randn(1, 3, 8, 8)
    y, j = 0, 2
    std = torch.tensor([0.5, 0.5, 0.5]).view(1, -1, 1, 1)
    ours = agi(model, x, torch.tensor([y]), eps=0.01, n_steps=1, n_targets=1, mean=[0.5] * 3, std=[0.5] * 3, seed=0)
    others = [c for c in range(4) if c != y]
    j = others[torch.randperm(3, generator=torch.Generator().manual_seed(0))[0].item()]
    xx = x.clone().requires_grad_(True)
    p = model(xx).softmax(1)
    if p.argmax(1).item() == j:
        pytest.skip("already predicted as the adversarial class")
    g_adv = torch.autograd.grad(p[0, j], xx, retain_graph=True)[0]
    g_lab = torch.autograd.grad(p[0, y], xx)[0]
    step = (torch.clamp(x + 0.01 / std * g_adv.sign(), -1, 1) - x)
    assert torch.allclose(ours, -g_lab * step, atol=1e-6)


def test_lpi_references_and_completeness():
    model = _relu_net()
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 3, 8, 8, generator=g)
    refs = lpi_references(model, train, n_clusters=2, n_refs=3)
    assert refs.images.shape == (2, 3, 3, 8, 8)
    assert torch.allclose(refs.density.sum(1), torch.ones(2))
    assert torch.equal(refs.images, train[refs.index])  # the references are training images
    x = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([1, 2])
    # with many path points the map sums to f(x) - sum_j rho_j f(x'_j) (completeness of each local path)
    a = lpi(model, x, t, refs, n_alphas=1, alphas=torch.linspace(0.0005, 0.9995, 1000).expand(2, 3, 1000))
    with torch.no_grad():
        cl = torch.cdist(model(x), refs.centroids).argmin(1)
        for b in range(2):
            base = (refs.density[cl[b]] * model(refs.images[cl[b]])[:, t[b]]).sum()
            gap = model(x[b:b + 1])[0, t[b]] - base
            assert abs(a[b].sum().item() - gap.item()) < 0.02 * abs(gap.item()) + 1e-3
    # each reference's gradient is taken on its own path (a per-reference loop gives the same map)
    al = torch.rand(2, 3, 2, generator=g)
    a = lpi(model, x, t, refs, alphas=al, internal_batch_size=1)
    b = 0
    manual = torch.zeros_like(x[0])
    for j in range(3):
        ref = refs.images[cl[b], j]
        for i in range(2):
            p = (ref + al[b, j, i] * (x[b] - ref)).unsqueeze(0).requires_grad_(True)
            grad = torch.autograd.grad(model(p)[0, t[b]], p)[0][0]
            manual += refs.density[cl[b], j] * (x[b] - ref) * grad / 2
    assert torch.allclose(a[b], manual, atol=1e-5)


def test_lpi_bad_input():
    model = _relu_net()
    with pytest.raises(ValueError, match="cannot give"):
        lpi_references(model, torch.randn(5, 3, 8, 8), 2, 3)
    with pytest.raises(ValueError, match="needs references"):
        attribute(model, torch.randn(1, 3, 8, 8), 0, "lpi")


def test_occlusion_on_a_linear_model_by_hand():
    # f(x) = sum(w * x): occluding a non-overlapping 2x2 patch (all 3 channels) removes exactly its
    # contribution; captum gives that difference to every occluded element (each is occluded once), so the
    # channel-summed map is 3 x the patch's contribution at each of its pixels
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2, bias=False))
    x = torch.randn(1, 3, 4, 4)
    maps = attribute(lin, x, torch.tensor([1]), "occlusion", window=2, stride=2)
    contrib = (lin[1].weight[1].view(3, 4, 4) * x[0]).detach()
    patch = contrib.sum(0).view(2, 2, 2, 2).sum((1, 3))  # [2,2] patch totals
    expected = 3 * patch.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.allclose(maps[0], expected, atol=1e-5)


def test_expected_gradients_do_not_depend_on_the_global_generator(net):
    """captum's GradientShap draws from numpy's global generator: the map must come from ``seed`` alone, and
    the caller's generator must be left where it was."""
    import numpy as np

    x, base, t = torch.randn(2, 3, 32, 32), torch.randn(6, 3, 32, 32), torch.tensor([1, 3])
    np.random.seed(1)
    a = attribute(net, x, t, "eg", baselines=base, n_samples=4)
    after = np.random.random()
    np.random.seed(1)
    np.random.random(), np.random.random()  # a different state going in
    b = attribute(net, x, t, "eg", baselines=base, n_samples=4)
    assert torch.equal(a, b)
    np.random.seed(1)
    attribute(net, x, t, "eg", baselines=base, n_samples=4)
    assert np.random.random() == after  # restored
    c = attribute(net, x, t, "eg", baselines=base, n_samples=4, seed=5)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", ["gradcam", "saliency", "eg"])
def test_attribute_batches_is_attribute_batch_by_batch(net, method):
    """:func:`apnb.attribution.attribute_batches` over 5 images in batches of 2 gives, batch for batch, the
    maps of :func:`~apnb.attribution.attribute`, options included (EG's baselines and seed)."""
    x, t = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    opts = {"eg": {"baselines": torch.randn(6, 3, 32, 32), "n_samples": 3}}.get(method, {})
    out = attribute_batches(net, x, t, method, 2, **opts)
    ref = torch.cat([attribute(net, x[i:i + 2], t[i:i + 2], method, **opts) for i in (0, 2, 4)])
    assert out.shape == (5, 32, 32) and torch.equal(out, ref)
    if method == "saliency":  # the per-image map does not depend on the batch it is in
        assert torch.allclose(out, attribute(net, x, t, method), atol=1e-6)


def test_filter_relevance_is_activation_times_gradient_under_lrp0():
    """Pruning by explaining ranks filters by the LRP relevance that reaches their output maps. Under LRP-0 (an
    epsilon rule with epsilon ~ 0) in a bias-free ReLU network, the relevance of a tensor is the tensor times the
    gradient of the target logit: the hand reference, from autograd alone."""
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass
    from zennit.types import Activation, Convolution

    from apnb.attribution import filter_relevance

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(5 * 6 * 6, 3, bias=False)).eval()
    x = torch.rand(7, 3, 6, 6)
    target = net(x).argmax(1)
    lrp0 = LayerMapComposite(layer_map=[(Activation, Pass()), (Convolution, Epsilon(1e-12)), (nn.Linear, Epsilon(1e-12))])
    rel = filter_relevance(net, x, target, composite=lrp0, batch=3)
    acts = {}
    hs = [net[i].register_forward_hook(lambda m, inp, out, k=i: acts.__setitem__(str(k), out)) for i in (0, 2)]
    y = net(x).gather(1, target[:, None]).sum()
    for h in hs:
        h.remove()
    grads = torch.autograd.grad(y, [acts["0"], acts["2"]])
    for k, g in zip(("0", "2"), grads):
        assert torch.allclose(rel[k], (acts[k] * g).sum((0, 2, 3)).detach(), atol=1e-5), k
    assert all(p.requires_grad for p in net.parameters())  # the network is left as it was


def test_filter_relevance_of_a_vgg_with_the_librarys_lrp():
    """On a VGG with BatchNorm (merged by zennit's canonizer), alpha1-beta0 relevance: one non-negative number per
    filter of every conv, the BatchNorm statistics untouched."""
    from apnb.attribution import filter_relevance

    net = M.vgg("vgg16_bn", 4, width_div=16, n_pools=2, head_pool=1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(6, 3, 32, 32)
    rel = filter_relevance(net, x, net(x).argmax(1))
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(rel) == convs and all(rel[n].shape == (dict(net.named_modules())[n].out_channels,) for n in convs)
    assert all((r >= -1e-6).all() for r in rel.values()) and rel[convs[-1]].sum() > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _minmax(a):
    a = a - a.min()
    return a / (1e-7 + a.max())


def test_the_grad_cam_package_agrees_with_apnb_gradcam(net):
    """The grad-cam package (jacobgil/pytorch-grad-cam), whose Score-CAM, Ablation-CAM and Grad-CAM++ the book
    uses, computes Grad-CAM as :func:`apnb.gradcam.gradcam` does: the same maps once put through the package's
    scaling (min-max per image, OpenCV's bilinear resize to the input, min-max again)."""
    import cv2
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from apnb.gradcam import gradcam

    x, t = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 4])
    with pgc.GradCAM(model=net, target_layers=[net.get_submodule(M.layer_paths(net, ["last_conv"])[0])]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t])
    ours, _ = gradcam(net, x, "last_conv", t, upsample=False)
    ours = np.stack([_minmax(cv2.resize(np.float32(_minmax(o.detach().numpy())), (32, 32))) for o in ours])
    assert np.abs(ours - theirs).max() < 1e-5


def test_score_cam_by_hand(net, capsys):
    """Score-CAM (Wang et al. 2020) written out here: each channel of the last conv map, upsampled to the input
    (bilinear, corners aligned) and min-max scaled, masks the input; the softmax over channels of the target's
    logit on the masked inputs weighs the channels; ReLU of the weighted sum, scaled as the package scales."""
    import cv2

    from apnb.gradcam import Tap

    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    maps = attribute(net, x, t, "scorecam")
    with torch.no_grad(), Tap(net, "last_conv") as tap:
        net(x)
        acts = tap.acts[tap.layers[0]]
        up = F.interpolate(acts, size=(32, 32), mode="bilinear", align_corners=True)
        lo, hi = up.flatten(2).min(2)[0][..., None, None], up.flatten(2).max(2)[0][..., None, None]
        up = (up - lo) / (hi - lo + 1e-8)
        want = []
        for b in range(2):
            scores = net(x[b][None] * up[b][:, None])[:, t[b]]
            w = torch.softmax(scores, 0)
            cam = torch.relu((w[:, None, None] * acts[b]).sum(0)).numpy()
            want.append(_minmax(cv2.resize(np.float32(_minmax(cam)), (32, 32))))
    assert np.abs(maps.numpy() - np.stack(want)).max() < 1e-5
    assert capsys.readouterr().err == ""  # the package's progress bars do not reach the page
