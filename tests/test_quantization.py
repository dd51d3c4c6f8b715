"""Int8 quantization (study 7): the fake-quant network is differentiable, matches the int8 kernels, and
keeps the float network's layer names; QAT networks round-trip through the store."""
import pytest
import torch
from apnb.data import splits as D
from apnb import recipes as R
from apnb import gradcam as G
from apnb import matching
from apnb import models as M
from apnb import quantization as Q
from apnb.store import Store

pytestmark = pytest.mark.unit


@pytest.fixture
def net_and_x(small_vgg, synth_root):
    data = D.voc_data(str(synth_root), None, 32)
    x, _ = D.tensors(data["val"])
    small_vgg.eval()
    with torch.no_grad():  # give BN non-trivial statistics so that folding matters
        for m in small_vgg.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return small_vgg, x


def test_fake_quant_matches_int8_kernels(net_and_x):
    net, x = net_and_x
    q = Q.calibrate(Q.prepare(net, x[:8], 8, "ptq"), x)
    i8 = Q.to_int8(q)
    assert any(type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized") for m in i8.modules())
    a = Q.agreement(q, i8, x)
    assert a["rel"] < 0.02 and a["top1"] == 1.0
    with torch.no_grad():  # and 8 bits stay close to the float network
        assert torch.allclose(q(x), net(x), atol=0.05 * float(net(x).abs().max()))


def test_quantized_row_adds_the_int8_network_at_8_bits(net_and_x, synth_root):
    """:func:`apnb.evaluate.quantized_row`: the fake-quant network's evaluation row, and at 8 bits the int8
    network's mAP and its agreement with the fake-quant twin; below 8 bits those three are NaN."""
    import math

    from apnb import evaluate as E

    _, x = net_and_x
    data = D.voc_data(str(synth_root), None, 32)
    torch.manual_seed(0)
    net = M.vgg("vgg16_bn", len(data["classes"]), width_div=16, n_pools=2, head_pool=1).eval()
    q = Q.calibrate(Q.prepare(net, x[:8], 8, "ptq"), x)
    row = E.quantized_row(q, 8, data, x, "last_conv", "cpu")
    ref, _ = E.evaluate_model(q, data, "last_conv", "cpu")
    assert {k: row[k] for k in ref} == ref
    i8 = Q.to_int8(q)
    assert row["mAP_int8"] == E.prediction_metrics(i8, data["val"], "cpu")["mAP"]
    a = Q.agreement(q, i8, x)
    assert row["int8_agree_top1"] == a["top1"] and row["int8_agree_rel"] == a["rel"]
    q4 = Q.calibrate(Q.prepare(net, x[:8], 4, "ptq"), x)
    row4 = E.quantized_row(q4, 4, data, x, "last_conv", "cpu")
    assert all(math.isnan(row4[k]) for k in ("mAP_int8", "int8_agree_top1", "int8_agree_rel")) and not math.isnan(row4["mAP"])


def test_layer_names_and_gradcam_survive_fusion(net_and_x):
    net, x = net_and_x
    q = Q.calibrate(Q.prepare(net, x[:8], 8, "ptq"), x)
    assert M.layer_alias(q, "last_conv") == M.layer_alias(net, "last_conv")
    mq, _ = G.gradcam(q, x, "last_conv", target=torch.zeros(len(x), dtype=torch.long))
    mf, _ = G.gradcam(net, x, "last_conv", target=torch.zeros(len(x), dtype=torch.long))
    assert mq.shape == mf.shape
    cos = torch.nn.functional.cosine_similarity(mq.flatten(1), mf.flatten(1), dim=1)
    keep = mf.flatten(1).norm(dim=1) > 1e-6
    assert cos[keep].mean() > 0.9
    # 3 bits deform the maps more than 8 do
    q3 = Q.calibrate(Q.prepare(net, x[:8], 3, "ptq"), x)
    m3, _ = G.gradcam(q3, x, "last_conv", target=torch.zeros(len(x), dtype=torch.long))
    cos3 = torch.nn.functional.cosine_similarity(m3.flatten(1), mf.flatten(1), dim=1)
    assert cos3[keep].mean() < cos[keep].mean()


def test_matching_loss_is_differentiable_through_fake_quant(net_and_x):
    net, x = net_and_x
    q = Q.prepare(net, x[:8], 8, "qat").train()
    reg = matching.AttributionMatching(kind="sswa", beta=50.0, p=0.3, generator=torch.Generator().manual_seed(0))
    _, _, loss = reg(q, x[:4], net.eval(), None, None)
    loss.backward()
    grads = [p.grad for p in q.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_qat_is_stored_and_reloaded(synth_root, tmp_path):
    data = D.voc_data(str(synth_root), None, 32)
    torch.manual_seed(0)
    teacher = M.vgg("vgg16_bn", num_classes=4, width_div=16, n_pools=2, head_pool=1).eval()
    train = {"epochs": 1, "lr": 1e-3, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    S = R.Setup(data, teacher, {"key": "t"}, store=Store(tmp_path))
    matching = {"layer": "last_conv", "p": 0.3, "beta": {"swa": 5.0}}
    q1, info = R.quantized(S, train, matching, ("swa", 0), bits=8, calib_images=16)
    assert info["mode"] == "qat" and len(info["history"]) == 1
    q2, _ = R.quantized(S, train, matching, ("swa", 0), bits=8, calib_images=16)
    x, _ = D.tensors(data["val"])
    with torch.no_grad():
        assert torch.equal(q1(x), q2(x))
    assert all(int(m.observer_enabled) == 0 for m in q2.modules() if isinstance(m, torch.ao.quantization.FakeQuantize))
    a = Q.agreement(q2, Q.to_int8(q2), x)
    assert a["rel"] < 0.02


def test_bad_quantization_requests(small_vgg, synth_root):
    with pytest.raises(ValueError, match="bits=1"):
        Q.qconfig(1)
    with pytest.raises(M.ModelError, match="VGG"):
        Q.prepare(M.resnet34(4, width_div=16), torch.zeros(1, 3, 32, 32))
    data = D.voc_data(str(synth_root), None, 32)
    with pytest.raises(ValueError, match="PTQ trains nothing"):
        R.quantized(R.Setup(data, small_vgg, {"key": "t"}), None, {"layer": "last_conv", "p": 0.3, "beta": {}},
                    ("sswa", 0))
