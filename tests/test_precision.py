"""Training precision (apnb.precision): what ``auto`` picks, that an fp32 network keeps its store key and a
bf16 one gets its own, that bf16 training runs through fit and fit_cohort, and that members of different
precision never share a cohort."""
import pytest
import torch
from torch.utils.data import TensorDataset

from apnb import models as M
from apnb import precision as P
from apnb import recipes
from apnb.engine import Member, Supervised, TrainConfig, cohort_key, fit, fit_cohort
from apnb.store import Store, config_key

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")


def test_resolve(monkeypatch):
    assert P.resolve("fp32", CPU) == "fp32" and P.resolve("bf16", "cpu") == "bf16"
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: False)
    assert P.resolve("auto", CPU) == "fp32"  # AVX2 only: bf16 is emulated, 16x slower
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    assert P.resolve("auto", CPU) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve("auto", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="without bfloat16 support"):
        P.resolve("bf16", torch.device("cuda"))
    with pytest.raises(ValueError, match="use fp32, bf16, auto"):
        P.resolve("fp16", CPU)
    with pytest.raises(ValueError, match="precision='fp16'"):
        TrainConfig(precision="fp16")


def test_cpu_has_bf16_reads_the_flags():
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    assert P.cpu_has_bf16() == ("amx_bf16" in flags or "avx512_bf16" in flags)


def test_store_keys(monkeypatch):
    """fp32 (given or resolved from auto) leaves the key as it was before precision existed; bf16 changes it."""
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: False)
    train = {"epochs": 2, "lr": 0.01, "seed": 0}
    key = lambda t: config_key(recipes._key({"role": "kd", "train": t}))  # noqa: E731
    assert P.keyed(None, CPU) is None and P.keyed(train, CPU) == train
    assert key(P.keyed({**train, "precision": "fp32"}, CPU)) == key(train)
    assert key(P.keyed({**train, "precision": "auto"}, CPU)) == key(train)
    assert P.keyed({**train, "precision": "bf16"}, CPU) == {**train, "precision": "bf16"}
    assert key(P.keyed({**train, "precision": "bf16"}, CPU)) != key(train)
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)  # the same profile on a bf16 CPU: its own networks
    assert key(P.keyed({**train, "precision": "auto"}, CPU)) == key({**train, "precision": "bf16"})


def _data(n=16, k=4, size=8):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), (torch.rand(n, k, generator=g) > 0.6).float())


def _net():
    return M.build({"arch": "preact_resnet18", "num_classes": 4, "width_div": 32}, seed=0)


CFG = dict(epochs=1, lr=0.01, optimizer="adamw", schedule="constant", batch_size=8, seed=1)


def test_fp32_is_the_default_and_bf16_trains(monkeypatch):
    """precision fp32 trains bit for bit as before (no autocast region); bf16 trains in autocast on the CPU
    (each step's forward runs in bfloat16: the weights stay fp32 and change, and differ from fp32's)."""
    nets = {}
    for name, extra in (("default", {}), ("fp32", {"precision": "fp32"}), ("bf16", {"precision": "bf16"})):
        m = _net()
        fit(m, Supervised(), _data(), TrainConfig(**CFG, **extra), progress=False, device="cpu")
        nets[name] = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert torch.equal(nets["default"], nets["fp32"])
    assert nets["bf16"].dtype == torch.float32 and torch.isfinite(nets["bf16"]).all()
    assert not torch.equal(nets["bf16"], nets["fp32"])
    assert torch.nn.functional.cosine_similarity(nets["bf16"], nets["fp32"], dim=0) > 0.99

    seen = []
    orig = P.autocast
    monkeypatch.setattr(P, "autocast", lambda prec, dev: (seen.append(prec), orig(prec, dev))[1])
    fit(_net(), Supervised(), _data(), TrainConfig(**CFG, precision="bf16"), progress=False, device="cpu")
    assert seen and set(seen) == {"bf16"}


def test_cohort_keeps_precisions_apart():
    a, b = TrainConfig(**CFG), TrainConfig(**CFG, precision="bf16")
    assert cohort_key(a) != cohort_key(b)
    with pytest.raises(ValueError, match="precision"):
        fit_cohort([Member(_net(), Supervised(), a), Member(_net(), Supervised(), b)], _data(), device="cpu",
                   progress=False)
    # a bf16 cohort trains each member as fit alone would
    alone = _net()
    fit(alone, Supervised(), _data(), b, progress=False, device="cpu")
    m1, m2 = _net(), _net()
    fit_cohort([Member(m1, Supervised(), b), Member(m2, Supervised(), TrainConfig(**CFG, precision="bf16"))],
               _data(), device="cpu", progress=False)
    for m in (m1, m2):
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), alone.parameters()))


def test_teacher_recipe_keys_the_precision(tmp_path, monkeypatch):
    """The teacher recipe resolves the precision before keying: auto on a CPU without bf16 arithmetic is the fp32 network, in
    the same store entry as a recipe that never named a precision."""
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: False)
    data = {"id": "t", "train": _data(), "val": _data(), "classes": list(range(4))}
    spec = {"arch": "preact_resnet18", "width_div": 32}
    st = Store(tmp_path / "s")
    teacher = lambda train: recipes.setup({}, {"spec": spec, "train": train}, "cpu", st, data=data).info  # noqa: E731
    i1, i2 = teacher(dict(CFG)), teacher(dict(CFG, precision="auto"))
    assert i1["key"] == i2["key"] and len(list(st.root.glob("teacher-*/final.pt"))) == 1
    i3 = teacher(dict(CFG, precision="bf16"))
    assert i3["key"] != i1["key"]
