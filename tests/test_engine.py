import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from apnb import compression as C
from apnb import models as M
from apnb.kinds import REGISTRY
from apnb.engine import StudentObjective, Supervised, TrainConfig, fit, load_checkpoint
from apnb.store import Store
from apnb.matching import AttributionMatching
from apnb.models import ModelError

pytestmark = pytest.mark.unit


def _data(n=48, k=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), (torch.rand(n, k, generator=g) > 0.6).float())


def _net(div=16):
    torch.manual_seed(0)
    return M.vgg("vgg16_bn", 4, width_div=div, n_pools=2, head_pool=1)


CFG = dict(epochs=3, lr=0.05, batch_size=16, schedule="cosine", seed=3)


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


def test_deterministic_cpu_runs(tmp_path):
    outs = []
    for _ in range(2):
        m = _net()
        fit(m, Supervised(), _data(), TrainConfig(**CFG), progress=False)
        outs.append(torch.cat([p.flatten() for p in m.parameters()]))
    assert torch.equal(outs[0], outs[1])


KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys, torch
    sys.path.insert(0, {root!r})
    from tests.test_engine import _data, _net, CFG
    from apnb.engine import StudentObjective, TrainConfig, fit
    from apnb.matching import AttributionMatching
    teacher = _net(8)
    calls = [0]
    class Killer(StudentObjective):
        def __call__(self, model, x, y):
            calls[0] += 1
            if calls[0] == 5:  # epoch 2, step 2 (3 steps per epoch)
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(model, x, y)
    m = _net()
    fit(m, Killer(teacher, AttributionMatching(kind="sswa")), _data(), TrainConfig(**CFG), {ckpt!r}, progress=False)
''')


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(root=root, ckpt=str(ckpt))], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    assert load_checkpoint(ckpt)["epoch"] == 1
    teacher = _net(8)
    resumed = _net()
    res = fit(resumed, StudentObjective(teacher, AttributionMatching(kind="sswa")), _data(), TrainConfig(**CFG), ckpt, progress=False)
    assert res.resumed_from == 1
    full = _net()
    fit(full, StudentObjective(_net(8), AttributionMatching(kind="sswa")), _data(), TrainConfig(**CFG), progress=False)
    for a, b in zip(resumed.state_dict().values(), full.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_nan_guard_keeps_checkpoint(tmp_path):
    class Bomb(Supervised):
        n = 0
        def __call__(self, model, x, y):
            Bomb.n += 1
            loss, logs = super().__call__(model, x, y)
            return (loss * float("nan") if Bomb.n == 5 else loss), logs
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(FloatingPointError, match="epoch 2 step 2.*last good checkpoint"):
        fit(_net(), Bomb(), _data(), TrainConfig(**CFG), ckpt, progress=False)
    assert load_checkpoint(ckpt)["epoch"] == 1


def test_wrong_architecture_checkpoint(tmp_path):
    m = _net()
    fit(m, Supervised(), _data(16), TrainConfig(epochs=1, lr=0.01, batch_size=16), tmp_path / "a.ckpt", progress=False)
    with pytest.raises(ModelError, match="does not fit this architecture"):
        load_checkpoint(tmp_path / "a.ckpt", _net(8))
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_bad_train_config():
    with pytest.raises(ValueError, match="lr > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="warp")


def test_unstructured_pruning_rates_and_resume(tmp_path):
    m = _net()
    for it in range(1, 4):
        C.prune_global_unstructured(m, 0.2)
        assert C.sparsity(m)["global"] == pytest.approx(C.cumulative_rate(0.2, it), abs=1e-3)
    assert C.cumulative_rate(0.2, 16) == pytest.approx(0.9718, abs=1e-4)
    fit(m, Supervised(), _data(16), TrainConfig(epochs=1, lr=0.05, batch_size=16), tmp_path / "p.ckpt", progress=False)
    assert C.sparsity(m)["global"] == pytest.approx(0.488, abs=1e-3)  # masks hold during fine-tuning
    fresh = _net()
    load_checkpoint(tmp_path / "p.ckpt", fresh)
    assert C.sparsity(fresh)["global"] == pytest.approx(0.488, abs=1e-3)
    per_layer = C.sparsity(m)
    assert set(per_layer) >= {"features.0", "global"}
    st = Store(tmp_path / "store")
    saved = torch.load(st.save("pruned", {"a": 1}, m), weights_only=True)["model"]
    assert saved["features.0.weight_mask"].dtype == torch.bool  # masks stored at a quarter of their float size
    again = _net()
    st.load("pruned", {"a": 1}, again)
    assert again.features[0].weight_mask.dtype == torch.float32
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.eval()(x), m.eval()(x))


def test_structured_pruning_is_physical():
    m = _net(8)
    p0, p1, mac0, mac1 = C.prune_l1_structured(m, 0.5, torch.zeros(1, 3, 32, 32))
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert convs[0].out_channels == 4 and convs[-1].out_channels == 32
    assert p1 < 0.4 * p0 and mac1 < 0.4 * mac0
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    # l1 criterion: the kept filters of the first conv are those with the largest l1 norms
    ref = _net(8)
    norms = ref.features[0].weight.abs().sum((1, 2, 3))
    kept = norms.topk(4).values.sort().values
    assert torch.allclose(m.features[0].weight.abs().sum((1, 2, 3)).sort().values, kept)


def test_structured_resnet34_residuals():
    r = M.resnet34(5)
    p0, p1, *_ = C.prune_l1_structured(r, 0.1, torch.zeros(1, 3, 64, 64))
    assert p1 < p0 and r(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_store_roundtrip(tmp_path):
    st = Store(tmp_path)
    m = _net()
    assert st.load("teacher", {"a": 1}, _net()) is None
    st.save("teacher", {"a": 1}, m, {"note": "x"})
    m2 = _net(16)
    assert st.load("teacher", {"a": 1}, m2) == {"note": "x"}
    assert st.load("teacher", {"a": 2}, _net()) is None


def test_store_save_drops_superseded_resume_checkpoints(tmp_path):
    st = Store(tmp_path)
    d = st.dir("teacher", {"a": 1})
    (d / "train.ckpt").write_bytes(b"x")
    (d / "pretrain.ckpt").write_bytes(b"x")
    st.save("teacher", {"a": 1}, _net())
    assert sorted(f.name for f in d.iterdir()) == ["cfg.json", "final.pt"]


def test_full_disk_is_one_clear_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """torch.save reports a short write as 'unexpected pos A vs B'; with the disk (nearly) full that becomes a
    DiskFullError naming the path and the free space, and neither the target nor a temporary file is left."""
    import shutil
    from apnb import config as cfgmod

    def short_write(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 32813120 vs 32813008")

    monkeypatch.setattr(torch, "save", short_write)  # apnb.config imports torch on first use
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 3 << 20))
    target = tmp_path / "final.pt"
    with pytest.raises(cfgmod.DiskFullError, match=r"no space left writing .*final.pt \(3 MiB free\)"):
        cfgmod.atomic_torch_save({"w": 1}, target)
    assert list(tmp_path.iterdir()) == []
    # the same error with room to spare is not a disk problem: it is shown as it is
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos") as e:
        cfgmod.atomic_torch_save({"w": 1}, target)
    assert not isinstance(e.value, cfgmod.DiskFullError)


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


@pytest.mark.parametrize("kind", [k for k, v in REGISTRY.items() if v.paper])  # the paper's EWA, SWA, SSWA
def test_bf16_autocast_matching_double_backward(kind):
    """A bf16 training step (``TrainConfig.precision``) runs under bf16 autocast (``fit``); SWA/SSWA differentiate through a gradient
    (the student's Grad-CAM weights). On the CPU, the same autocast region runs the double backward, gives
    the fp32 matching term to within bf16's precision, and student gradients that point where the fp32 ones
    do (cosine 0.99 for SWA/SSWA, 0.90 for EWA, measured), none for the teacher. The dropout masks of the
    student's head are seeded alike in both runs."""
    torch.manual_seed(0)
    teacher = M.vgg("vgg16_bn", num_classes=5, width_div=16, n_pools=2, head_pool=1).eval()
    student = M.vgg("vgg16_bn", num_classes=5, width_div=32, n_pools=2, head_pool=1).train()
    x, y = torch.randn(4, 3, 32, 32), (torch.rand(4, 5) > 0.5).float()
    grads, match = {}, {}
    for amp in (False, True):
        obj = StudentObjective(teacher, AttributionMatching(kind=kind, beta=10.0, p=0.3), kd=True)
        obj.reseed(0)
        torch.manual_seed(1)  # the same dropout masks
        student.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, logs = obj(student, x, y)
        assert torch.isfinite(loss) and float(logs["match"]) > 0
        match[amp] = float(logs["match"])
        loss.backward()
        grads[amp] = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
        assert torch.isfinite(grads[amp]).all() and grads[amp].abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert match[True] == pytest.approx(match[False], rel=0.02)
    assert F.cosine_similarity(grads[False], grads[True], dim=0) > 0.85
