"""The registry of matching kinds (:mod:`apnb.kinds`): one registration gives a kind its weight, its teacher
pass, its term and its checks everywhere; a store key does not change when a field is added at its default."""
import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from apnb import kinds, specs
from apnb import models as M
from apnb.config import config_key
from apnb.engine import Member, StudentObjective, TrainConfig, fit_cohort
from apnb.matching import AttributionMatching, MatchingConfig
from apnb.models import ModelError

from conftest import vgg_pair, vgg_pair_gradcam

pytestmark = pytest.mark.unit


def test_the_registry_is_the_one_list():
    assert specs.KINDS == tuple(kinds.REGISTRY)
    assert specs.DEFAULT_BETA == {k: v.beta for k, v in kinds.REGISTRY.items()}
    assert specs.COMPRESSION_METHODS == ("naive",) + tuple(k for k in kinds.REGISTRY if k != "none")
    assert [k for k, v in kinds.REGISTRY.items() if v.paper] == ["ewa", "swa", "sswa"]
    for name, k in kinds.REGISTRY.items():
        assert f"``{name}``" in kinds.__doc__, f"{name}: add its row to the table of apnb.kinds"
        assert k.teacher in kinds.TEACHER_NEEDS and k.beta >= 0 and k.source
        assert MatchingConfig(kind=name).beta == k.beta
        assert MatchingConfig(kind=name, reduction="mean").beta == k.authors_beta
    # the paper's weights (supplement C.2) and the e2KD authors' coefficient, as stated and on the one scale
    assert (specs.AUTHORS_BETA["ewa"], specs.AUTHORS_BETA["swa"], specs.AUTHORS_BETA["sswa"]) == (100.0, 50.0, 50.0)
    assert specs.AUTHORS_BETA["e2kd"] == 1.0 and specs.DEFAULT_BETA["e2kd"] == 0.5
    assert specs.DEFAULT_BETA["swa"] == pytest.approx(50 / 49) and specs.DEFAULT_BETA["ewa"] == pytest.approx(100 / 49)
    assert kinds.get("swa").image_beta(3.0, 64) == 3 / 64  # the book's earlier beta 3 on 8x8 maps
    assert kinds.get("cat_kd").image_beta(400.0, 4) == specs.DEFAULT_BETA["cat_kd"] == 100.0


def test_register_refuses_a_taken_name_and_an_unknown_need():
    with pytest.raises(ValueError, match="not taken yet"):
        kinds.register(type("Again", (kinds.Kind,), {"name": "swa"}))
    with pytest.raises(ValueError, match="teacher='pixels'"):
        kinds.register(type("Odd", (kinds.Kind,), {"name": "odd", "teacher": "pixels"}))
    assert "odd" not in kinds.REGISTRY


@pytest.fixture
def l1_kind():
    """A new kind added by one registration: SWA's maps matched by the l1 distance of the normalised maps."""

    @kinds.register
    class SWAL1(kinds.Kind):
        name, beta, teacher, source = "swa_l1", 7.0, "grads", "a test"

        def term(self, ctx, a_s, g_s, a_t, g_t):
            ms, mt = ctx.maps(a_s, g_s), ctx.maps(a_t, g_t)
            n = lambda m: m.flatten(1) / m.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)
            return (n(ms) - n(mt)).abs().sum(1).mean()

        def check(self, cfg, s, t, layer):
            return None if s[1] <= t[1] else f"{layer}: the student is wider than its teacher"

    yield "swa_l1"
    del kinds.REGISTRY["swa_l1"]


def test_a_registered_kind_works_everywhere(l1_kind):
    t, s = vgg_pair()
    x = torch.randn(3, 3, 32, 32)
    cfg = MatchingConfig(kind=l1_kind)
    assert cfg.beta == 7.0  # its default weight
    reg = AttributionMatching(cfg)
    reg.check(s, t, x[:1])
    with pytest.raises(ModelError, match="wider than its teacher"):
        reg.check(t, s, x[:1])  # its own check
    assert reg.teacher_need() == AttributionMatching(kind="swa").teacher_need()  # shares SWA's teacher pass
    _, _, loss = reg(s, x, t)
    assert loss > 0 and loss.requires_grad
    _, _, zero = reg(copy.deepcopy(t), x, t)
    assert zero.item() < 1e-6
    # in a cohort beside SWA: one teacher pass per batch
    calls = [0]
    t.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), (torch.rand(16, 5) > 0.6).float())
    tc = TrainConfig(epochs=1, lr=0.01, batch_size=8, optimizer="adamw", schedule="constant")
    fit_cohort([Member(copy.deepcopy(s), StudentObjective(t, AttributionMatching(kind=k)), tc, name=k)
                for k in ("swa", l1_kind)], data, progress=False)
    assert calls[0] == 2


def test_a_field_added_at_its_default_keeps_every_store_key():
    """Store keys hold the first store's fields and, of any field added later, only a value off its default."""
    assert set(MatchingConfig().to_dict()) == set(MatchingConfig.KEYED_ALWAYS)

    @dataclasses.dataclass
    class Later(MatchingConfig):
        temperature: float = 1.0

    for kw in ({}, {"kind": "sswa", "p": 0.5}, {"kind": "ewa", "layers": ("last_conv", "features.3")}):
        assert config_key(Later(**kw).to_dict()) == config_key(MatchingConfig(**kw).to_dict())
    assert config_key(Later(temperature=2.0).to_dict()) != config_key(MatchingConfig().to_dict())
    # a key of the first store, written out: unchanged by the registry (the first store's scale was "mean")
    assert config_key(MatchingConfig(kind="sswa", beta=50.0, p=0.3, reduction="mean").to_dict()) == config_key(
        {"kind": "sswa", "beta": 50.0, "layers": ("last_conv",), "p": 0.3, "topk": 1, "relu": True,
         "center_logits": False, "per_neuron": False, "mask": "teacher", "reduction": "mean"})


# ------------------------------------------------------------------ the methods since the paper, and the controls

def _hooked(model, pick, inputs=False):
    """Outputs (or ``inputs``) of the modules ``pick(name, module)`` selects, captured in forward order
    (independent of apnb's Tap)."""
    out, hs = [], []
    for name, m in model.named_modules():
        if pick(name, m):
            hs.append(m.register_forward_hook(lambda mod, i, o: out.append(i[0] if inputs else o)))
    return out, hs


def test_stage_ends_and_the_global_pooling_head():
    vgg = M.vgg("vgg16_bn", 6, width_div=4, n_pools=3, head_pool=1)
    # 3 of 5 pools: pool4 is dropped (stages 4 and 5 merge), pool5 is an identity
    assert M.stage_ends(vgg) == ["features.5", "features.12", "features.22", "features.41"]
    assert M.stage_ends(M.resnet34(6, width_div=8)) == ["layer1", "layer2", "layer3", "layer4"]
    assert M.linear_head(vgg) is vgg.classifier[1] and M.linear_head(M.resnet34(6, width_div=8)) is not None
    assert M.linear_head(M.vgg("vgg16_bn", 20)) is None  # the paper's VOC head: 7x7 pool, Linear(25088, 20)


def test_multi_layer_attention_transfer_equals_the_reference_formula():
    """AT (Zagoruyko & Komodakis; mdistiller's ``at_loss``): the sum over the stage ends of
    ``(normalize(mean_c A_s^2) - normalize(mean_c A_t^2))^2`` averaged over batch and positions (the authors'
    reduction); on the one scale, summed over each stage's map, so that every stage weighs the same."""
    t, s = vgg_pair()
    x = torch.randn(4, 3, 32, 32)
    reg = AttributionMatching(kind="at")
    assert reg.cfg.layers == ("stage_ends",) and reg.beta == pytest.approx(1000.0 / 49)
    assert AttributionMatching(kind="at", reduction="mean").beta == 1000.0
    image = reg(s, x, t)[2]
    _, _, loss = AttributionMatching(kind="at", reduction="mean")(s, x, t)
    ends = lambda net: {n for n, m in net.features.named_children()  # noqa: E731
                        if isinstance(m, nn.ReLU) and isinstance(net.features[int(n) + 1], (nn.MaxPool2d, nn.Identity))}
    acts = {}
    for key, net in (("t", t), ("s", s)):
        names = ends(net)
        acts[key], hs = _hooked(net.features, lambda n, m, names=names: n in names)
        with torch.no_grad():
            net(x)
        for h in hs:
            h.remove()
    at = lambda a: F.normalize(a.pow(2).mean(1).view(a.size(0), -1))  # noqa: E731
    ref = sum((at(a) - at(b)).pow(2).mean() for a, b in zip(acts["s"], acts["t"]))
    assert len(acts["t"]) == 3 and torch.allclose(loss, ref, atol=1e-7)
    assert torch.allclose(image, sum((at(a) - at(b)).pow(2).sum(1).mean() for a, b in zip(acts["s"], acts["t"])),
                          atol=1e-6)
    assert image > AttributionMatching(kind="ewa")(s, x, t)[2]  # more than the last stage alone


def test_cat_kd_equals_the_reference_formula_and_needs_its_head():
    """CAT-KD (Guo et al., CVPR 2023): class maps = last features x classifier weights; their spatial mean plus the
    bias is the logits; pooled to 2x2, normalised per map, mean squared error; no logit KD."""
    t, s = vgg_pair()
    x = torch.randn(3, 3, 32, 32)
    reg = AttributionMatching(kind="cat_kd")
    reg.check(s, t, x[:1])
    _, _, loss = AttributionMatching(kind="cat_kd", reduction="mean")(s, x, t)  # the authors' reduction
    cams = {}
    for key, net in (("t", t), ("s", s)):
        feats, hs = _hooked(net, lambda n, m: m is net.avgpool, inputs=True)  # what the global pool averages
        with torch.no_grad():
            logits = net(x)
        hs[0].remove()
        w, b = net.classifier[1].weight, net.classifier[1].bias
        cam = torch.einsum("bchw,kc->bkhw", feats[0], w)
        assert torch.allclose(cam.mean((2, 3)) + b, logits, atol=1e-5)
        pooled = F.adaptive_avg_pool2d(cam, 2).flatten(2)
        cams[key] = pooled / pooled.norm(dim=2, keepdim=True)
    assert torch.allclose(loss, F.mse_loss(cams["s"], cams["t"]), atol=1e-6)
    # on the one scale: the per-map sum over the 2 x 2 cells, averaged over images and classes
    assert torch.allclose(reg(s, x, t)[2], (cams["s"] - cams["t"]).pow(2).sum(2).mean(), atol=1e-6)
    assert not kinds.REGISTRY["cat_kd"].logit_kd and reg.beta == 100.0
    # the gradient reaches the student's classifier too (the maps are made with its weights)
    s.zero_grad()
    reg(s, x, t)[2].backward()
    assert s.classifier[1].weight.grad.abs().sum() > 0 and all(p.grad is None for p in t.parameters())
    with pytest.raises(ModelError, match="needs a global-pooling head"):
        reg.check(M.vgg("vgg16_bn", 5, width_div=32, n_pools=2, head_pool=2).eval(), t, x[:1])
    with pytest.raises(ModelError, match="not the input of its global-pooling head"):
        AttributionMatching(kind="cat_kd", layers=("conv4_3",)).check(s, t, x[:1])
    # pooled to 1x1 each map normalises to the sign of the class's mean evidence
    one = AttributionMatching(kind="cat_kd", cam_size=1)(s, x, t)[2]
    sign = lambda c: torch.sign(c.mean((2, 3)))  # noqa: E731
    assert torch.allclose(one, F.mse_loss(sign(torch.einsum("bchw,kc->bkhw", *_last(s, x))),
                                          sign(torch.einsum("bchw,kc->bkhw", *_last(t, x)))), atol=1e-6)


def _last(net, x):
    feats, hs = _hooked(net, lambda n, m: m is net.avgpool, inputs=True)
    with torch.no_grad():
        net(x)
    hs[0].remove()
    return feats[0], net.classifier[1].weight


def test_the_controls_match_a_centre_prior_and_a_shuffled_teacher():
    from apnb.evaluate import baseline_attr
    from apnb.matching import squared_normalized_l2

    t, s, x, ms, mt = vgg_pair_gradcam(4)
    gauss = baseline_attr("center")(None, torch.zeros(4, 3, *ms.shape[-2:]), None)
    centre = AttributionMatching(kind="center_prior")(s, x, t)[2]
    assert torch.allclose(centre, squared_normalized_l2(ms, gauss), atol=1e-6)
    shuffled = AttributionMatching(kind="sswa_shuffled", p=0.0)(s, x, t)[2]
    assert torch.allclose(shuffled, squared_normalized_l2(ms, mt.roll(1, 0)), atol=1e-6)
    assert shuffled > 1e-4 and AttributionMatching(kind="sswa_shuffled", p=0.0)(copy.deepcopy(t), x, t)[2] > 1e-4
    assert all(kinds.REGISTRY[k].control for k in ("center_prior", "sswa_shuffled"))


def test_a_new_field_at_its_default_left_the_keys_alone():
    """``cam_size`` came after the first store: at its default it is not in any key; off it, it is."""
    assert "cam_size" not in MatchingConfig(kind="sswa").to_dict()
    assert MatchingConfig(kind="cat_kd", cam_size=4).to_dict()["cam_size"] == 4


# ------------------------------------------------------------------ one scale for every kind

@pytest.mark.parametrize("shape", [(8, 8), (64, 64), (3, 64, 64)], ids=["8x8", "64x64", "input-gradient"])
def test_one_pair_of_maps_gives_one_loss_for_every_kind(shape):
    """The verdicts issue's one scale: for one pair of unit-normalised maps every kind's term is the same number,
    2 (1 - cos), at 8x8, at 64x64 and at the size of an input gradient; the sources' own reductions are not."""
    from apnb.matching import Batch

    g = torch.Generator().manual_seed(0)
    ms, mt = torch.rand(2, *shape, generator=g), torch.rand(2, *shape, generator=g)
    ms, mt = [m / m.flatten(1).norm(dim=1).view(-1, *[1] * len(shape)) for m in (ms, mt)]
    expect = (2 * (1 - F.cosine_similarity(ms.flatten(1), mt.flatten(1), dim=1))).mean()
    spatial = len(shape) == 2
    values, means = {}, {}
    for name, k in kinds.REGISTRY.items():
        if k.teacher == "logits" or k.control:
            continue
        if not spatial and k.teacher != "input":
            continue  # a 3-channel map is an input gradient: only the input kinds see one
        for reduction, out in (("image", values), ("mean", means)):
            reg = AttributionMatching(kind=name, p=0.0, reduction=reduction, cam_size=shape[-1])
            ctx = Batch(reg, torch.zeros(2, 3, *shape[-2:]))
            if k.needs_head:  # CAT-KD: the pair as the maps of one class, pooled to their own size
                ctx.class_maps = lambda a, who: a
                args = (ms[:, None], None, mt[:, None], None)
            elif k.teacher == "acts":  # EWA, AT: the channel mean of the squared activations
                args = (ms.sqrt()[:, None], None, mt.sqrt()[:, None], None)
            elif k.teacher == "grads":  # SWA and its kin: ReLU(1 x A)
                one = torch.ones(2, 1, *shape)
                args = (ms[:, None], one, mt[:, None], one)
            else:  # gradient AT: the input gradients themselves
                args = (ms, None, mt, None)
            out[name] = k.term(ctx, *args)
    assert values and len(values) == len(means)
    for name, v in values.items():
        assert torch.allclose(v, expect, atol=1e-5), f"{name}: {v} on the one scale, expected {expect}"
    elements = ms[0].numel()
    for name, v in means.items():  # the sources' reductions shrink with the map's elements (e2KD halves it)
        want = expect / 2 if name == "e2kd" else expect / elements
        assert torch.allclose(v, want, atol=1e-6), f"{name}: {v} under its source's reduction, expected {want}"
        assert kinds.get(name).image_beta(1.0, elements) * expect == pytest.approx(want.item(), rel=1e-5)
