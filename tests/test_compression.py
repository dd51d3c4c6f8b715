"""Compression (:mod:`apnb.compression`): the multi-label KD loss by hand, unstructured and structured pruning."""
import math

import pytest
import torch
import torch.nn as nn

from apnb import compression as C
from apnb import models as M
from apnb.engine import Supervised, TrainConfig, fit, load_checkpoint
from apnb.store import Store

from conftest import tiny_data, tiny_net

pytestmark = pytest.mark.unit




def test_kd_multilabel_hand_value():
    s = torch.tensor([[0.0, 2.0]])
    t = torch.tensor([[1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    T, a = 2.0, 0.9
    kl = 0
    for sv, tv in [(0.0, 1.0), (2.0, -1.0)]:
        ps, pt = 1 / (1 + math.exp(-sv / T)), 1 / (1 + math.exp(-tv / T))
        kl += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    kl = kl * T * T / 2
    mlsm = -(math.log(1 / (1 + math.exp(-0.0))) + math.log(1 - 1 / (1 + math.exp(-2.0)))) / 2
    assert C.kd_multilabel(s, t, y, T, a).item() == pytest.approx(a * kl + (1 - a) * mlsm, rel=1e-5)


def test_unstructured_pruning_rates_and_resume(tmp_path):
    m = tiny_net()
    for it in range(1, 4):
        C.prune_global_unstructured(m, 0.2)
        assert C.sparsity(m)["global"] == pytest.approx(C.cumulative_rate(0.2, it), abs=1e-3)
    assert C.cumulative_rate(0.2, 16) == pytest.approx(0.9718, abs=1e-4)
    fit(m, Supervised(), tiny_data(16), TrainConfig(epochs=1, lr=0.05, batch_size=16), tmp_path / "p.ckpt", progress=False)
    assert C.sparsity(m)["global"] == pytest.approx(0.488, abs=1e-3)  # masks hold during fine-tuning
    fresh = tiny_net()
    load_checkpoint(tmp_path / "p.ckpt", fresh)
    assert C.sparsity(fresh)["global"] == pytest.approx(0.488, abs=1e-3)
    per_layer = C.sparsity(m)
    assert set(per_layer) >= {"features.0", "global"}
    st = Store(tmp_path / "store")
    saved = torch.load(st.save("pruned", {"a": 1}, m), weights_only=True)["model"]
    assert saved["features.0.weight_mask"].dtype == torch.bool  # masks stored at a quarter of their float size
    again = tiny_net()
    st.load("pruned", {"a": 1}, again)
    assert again.features[0].weight_mask.dtype == torch.float32
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.eval()(x), m.eval()(x))


def test_structured_pruning_is_physical():
    m = tiny_net(8)
    p0, p1, mac0, mac1 = C.prune_l1_structured(m, 0.5, torch.zeros(1, 3, 32, 32))
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert convs[0].out_channels == 4 and convs[-1].out_channels == 32
    assert p1 < 0.4 * p0 and mac1 < 0.4 * mac0
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    # l1 criterion: the kept filters of the first conv are those with the largest l1 norms
    ref = tiny_net(8)
    norms = ref.features[0].weight.abs().sum((1, 2, 3))
    kept = norms.topk(4).values.sort().values
    assert torch.allclose(m.features[0].weight.abs().sum((1, 2, 3)).sort().values, kept)


def test_structured_resnet34_residuals():
    r = M.resnet34(5)
    p0, p1, *_ = C.prune_l1_structured(r, 0.1, torch.zeros(1, 3, 64, 64))
    assert p1 < p0 and r(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_scored_pruning_with_l1_scores_is_l1_pruning_and_keeps_the_top_scored_filters():
    """``scores=``: a ranking of the filters given from outside (pruning by explaining). With the l1 norms as
    scores it is l1 pruning to the bit; with other scores the filters kept are the top-scored ones, in order."""
    import copy

    net = M.vgg("vgg16_bn", 4, width_div=16, n_pools=2, head_pool=1).eval()
    x0 = torch.zeros(1, 3, 32, 32)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    l1 = {n: m.weight.detach().abs().sum((1, 2, 3)) for n, m in convs.items()}
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    assert C.prune_l1_structured(a, 0.5, x0) == C.prune_l1_structured(b, 0.5, x0, scores=l1)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    g = torch.Generator().manual_seed(0)
    rnd = {n: torch.rand(m.out_channels, generator=g) for n, m in convs.items()}
    c = copy.deepcopy(net)
    C.prune_l1_structured(c, 0.5, x0, scores=rnd)
    first = next(iter(convs))
    kept = rnd[first].topk(dict(c.named_modules())[first].out_channels).indices.sort().values
    assert torch.equal(dict(c.named_modules())[first].weight, convs[first].weight[kept])
    with pytest.raises(ValueError, match="scores name no filter"):
        C.prune_l1_structured(copy.deepcopy(net), 0.5, x0, scores={first: rnd[first]})
