import copy

import pytest
import torch
import torch.nn.functional as F

from apnb.gradcam import Tap
from apnb.matching import AttributionMatching, MatchingConfig, cosine_distance, squared_normalized_l2
from apnb.kinds import REGISTRY
from apnb.models import ModelError

from conftest import vgg_pair, vgg_pair_gradcam

pytestmark = pytest.mark.unit

TERMS = [k for k, v in REGISTRY.items() if v.teacher != "logits"]  # every registered kind with a matching term
Y = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 1]], dtype=torch.float64)


def test_ewa_equals_attention_transfer():
    t, s = vgg_pair()
    x = torch.randn(4, 3, 32, 32)
    _, _, loss = AttributionMatching(kind="ewa", reduction="mean")(s, x, t)
    _, _, image = AttributionMatching(kind="ewa")(s, x, t)
    with Tap(t, "last_conv") as tt, Tap(s, "last_conv") as ts:
        t(x), s(x)
    at = lambda a: F.normalize(a.pow(2).mean(1).view(a.size(0), -1))  # szagoruyko/attention-transfer utils.at
    d = (at(ts.acts[ts.layers[0]]) - at(tt.acts[tt.layers[0]])).pow(2)
    assert torch.allclose(loss, d.mean(), atol=1e-7)  # at_loss: the mean over B x H x W
    assert torch.allclose(image, d.sum(1).mean(), atol=1e-6)  # the one scale: the per-image sum
    assert torch.allclose(image, loss * d.shape[1], atol=1e-6)


def test_swa_map_is_gradcam():
    t, s, x, ms, mt = vgg_pair_gradcam()
    _, _, loss = AttributionMatching(kind="swa")(s, x, t)
    assert torch.allclose(loss, squared_normalized_l2(ms, mt), atol=1e-6)


def test_e2kd_is_one_minus_cosine_of_resized_gradcam_and_half_eq2():
    """e2KD (Parchami-Araghi et al. 2024): mean_b (1 - cos) of the top-1 Grad-CAM maps resized to the input under
    its authors' reduction; per sample that is 1/2 || a/|a| - b/|b| ||^2, so on the one scale it is 2 (1 - cos),
    Eq. 2's term with the per-image reduction, and its authors' weight 1 is 1/2 there."""
    t, s, x, ms, mt = vgg_pair_gradcam()
    up = lambda m: F.interpolate(m[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    a, b = up(ms).flatten(1), up(mt).flatten(1)
    direct = (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()  # by hand, not F.cosine_similarity
    _, _, loss = AttributionMatching(kind="e2kd", reduction="mean")(s, x, t)
    _, _, image = AttributionMatching(kind="e2kd")(s, x, t)
    assert torch.allclose(loss, direct, atol=1e-6)
    assert torch.allclose(image, 2 * direct, atol=1e-6)
    assert torch.allclose(image, squared_normalized_l2(up(ms), up(mt)), atol=1e-6)
    assert torch.allclose(cosine_distance(ms, mt), 0.5 * squared_normalized_l2(ms, mt), atol=1e-6)
    assert MatchingConfig(kind="e2kd", reduction="mean").beta == 1.0  # the e2KD authors' explanation_loss_coef
    assert MatchingConfig(kind="e2kd").beta == 0.5  # the same objective on the one scale
    # the resizing matters: on the 8x8 maps themselves the loss is another number
    assert not torch.allclose(cosine_distance(ms, mt), loss, atol=1e-4)
    # the weight converts, and with it the objective: beta * loss is the same on either scale
    assert torch.allclose(0.5 * image, 1.0 * loss, atol=1e-6)


@pytest.mark.parametrize("kind", TERMS)
def test_gradient_matches_finite_differences(kind):
    t, s = vgg_pair(1, double=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    params = [p for p in s.parameters()]
    w = s.features[0].weight  # check one parameter tensor fully, by central differences
    def loss_fn():
        reg = AttributionMatching(kind=kind, p=0.4, generator=torch.Generator().manual_seed(5))
        return reg(s, x, t, Y[:2], F.multilabel_soft_margin_loss)[2]
    loss = loss_fn()
    g, = torch.autograd.grad(loss, w)
    eps = 1e-6
    idx = [(0, 0, 0, 0), (0, 1, 1, 2), (1, 2, 2, 1)]
    for i in idx:
        with torch.no_grad():
            w[i] += eps
        up = loss_fn().item()
        with torch.no_grad():
            w[i] -= 2 * eps
        down = loss_fn().item()
        with torch.no_grad():
            w[i] += eps
        fd = (up - down) / (2 * eps)
        assert abs(fd - g[i].item()) <= 1e-5 * max(1.0, abs(fd)), (kind, i, fd, g[i].item())


def test_sswa_p0_equals_swa_and_drop_rate():
    t, s = vgg_pair()
    x = torch.randn(4, 3, 32, 32)
    a = AttributionMatching(kind="swa")(s, x, t)[2]
    b = AttributionMatching(kind="sswa", p=0.0)(s, x, t)[2]
    assert torch.allclose(a, b, atol=1e-7)
    reg = AttributionMatching(kind="sswa", p=0.3, generator=torch.Generator().manual_seed(0))
    drops = []
    for _ in range(20):
        reg(s, x, t)
        drops.append(1 - reg.last_masks[0].mean().item())
    assert abs(sum(drops) / len(drops) - 0.3) < 0.03
    # i.i.d. per sample: rows differ
    assert not torch.equal(reg.last_masks[0][0], reg.last_masks[0][1])


def test_coded_variant_same_mask_for_batch():
    t, s = vgg_pair()
    reg = AttributionMatching(kind="sswa_coded", p=0.25)
    reg(s, torch.randn(3, 3, 32, 32), t)
    m = reg.last_masks[0]
    assert torch.equal(m[0], m[2]) and int((m[0] == 0).sum()) == int(m.shape[1] * 0.25)


@pytest.mark.parametrize("kind", [k for k in TERMS if not REGISTRY[k].control])  # a control matches another map
def test_zero_loss_when_student_is_teacher(kind):
    t, _ = vgg_pair()
    s = copy.deepcopy(t)
    # the authors' coded SSWA masks the teacher alone: only at p=0 does it compare like with like
    p = 0.0 if kind == "sswa_coded" else 0.3
    _, _, loss = AttributionMatching(kind=kind, p=p, mask="both")(s, torch.randn(3, 3, 32, 32), t, Y.float(),
                                                                  F.multilabel_soft_margin_loss)
    assert loss.item() < 1e-10


def test_teacher_gets_no_gradient_and_hooks_removed():
    t, s = vgg_pair()
    t.train()
    s.train()
    reg = AttributionMatching(kind="sswa", topk=2, center_logits=True)
    s_logits, t_logits, loss = reg(s, torch.randn(3, 3, 32, 32), t)
    (loss + s_logits.sum()).backward()
    assert all(p.grad is None for p in t.parameters())
    assert all(p.requires_grad for p in t.parameters())
    assert any(p.grad is not None for p in s.parameters())
    assert t.training and s.training
    assert sum(len(m._forward_hooks) for m in list(t.modules()) + list(s.modules())) == 0


@pytest.mark.parametrize("opts", [dict(per_neuron=True), dict(relu=False), dict(layers=("last_conv", "features.20")),
                                  dict(reduction="mean"), dict(mask="independent")])
def test_options_run(opts):
    t, s = vgg_pair()
    kind = "sswa" if "mask" in opts else "swa"
    _, _, loss = AttributionMatching(kind=kind, **opts)(s, torch.randn(2, 3, 32, 32), t)
    assert torch.isfinite(loss) and loss > 0


def test_grad_at():
    t, s = vgg_pair()
    y = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.float32)
    x = torch.randn(2, 3, 32, 32)
    _, _, loss = AttributionMatching(kind="grad_at")(s, x, t, y, F.multilabel_soft_margin_loss)
    # the value: 2 (1 - cos) per image of the input gradients of the task loss, computed here on their own
    grads = []
    for net in (s, t):
        xi = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.multilabel_soft_margin_loss(net(xi), y), xi)[0].flatten(1))
    cos = F.cosine_similarity(grads[0], grads[1], dim=1)
    assert torch.allclose(loss, (2 * (1 - cos)).mean(), atol=1e-5)
    # the scale: on the one scale it does not shrink with the 3 x 32 x 32 elements of an input gradient
    _, _, mean = AttributionMatching(kind="grad_at", reduction="mean")(s, x, t, y, F.multilabel_soft_margin_loss)
    assert torch.allclose(mean * 3 * 32 * 32, loss, rtol=1e-4)
    loss.backward()
    assert all(p.grad is None for p in t.parameters())


def test_unknown_layer_and_flat_layer():
    t, s = vgg_pair()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ModelError, match="unknown layer 'conv99'"):
        AttributionMatching(kind="swa", layers=("conv99",)).check(s, t, x)
    with pytest.raises(ModelError, match="needs a \\[B,C,H,W\\] feature map"):
        AttributionMatching(kind="swa", layers=("classifier.1",)).check(s, t, x)
    with pytest.raises(ModelError, match="mask='both'"):
        AttributionMatching(kind="sswa", mask="both").check(s, t, x)
