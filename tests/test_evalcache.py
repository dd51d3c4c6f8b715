"""The evaluation cache (apnb.evalcache): a network scored again gives exactly what scoring it gave, and
any change to its weights, the data, the settings, the teacher's classes or the evaluation code scores it anew."""
import pandas as pd
import pytest
import torch

from apnb.data import splits as D
from apnb import evalcache as EC
from apnb import evaluate as E
from apnb import models as M

pytestmark = pytest.mark.unit
SPEC = {"arch": "vgg16_bn", "num_classes": 4, "width_div": 16, "n_pools": 2, "head_pool": 1}


@pytest.fixture
def setup(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("APNB_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("APNB_EVAL_CACHE", raising=False)
    return D.voc_data(str(synth_root), None, 32), tmp_path / "store" / "evaluations"


def _same(a, b):
    (ra, la), (rb, lb) = a, b
    assert pd.Series(ra).equals(pd.Series(rb))  # NaN equal to NaN, every value to the last bit
    assert la.pairs.equals(lb.pairs) and list(la.pairs.dtypes) == list(lb.pairs.dtypes)
    assert torch.equal(la.maps, lb.maps)
    assert (la.top1 is None) == (lb.top1 is None)
    if la.top1 is not None:
        assert all(torch.equal(x, y) for x, y in zip(la.top1, lb.top1))
    assert torch.equal(la.val_logits, lb.val_logits)


def test_hit_equals_the_scoring(setup, monkeypatch):
    data, cache = setup
    teacher, student = M.build(SPEC, seed=0), M.build(dict(SPEC, width_div=32), seed=1)
    t1 = E.evaluate_model(teacher, data, device="cpu")
    s1 = E.evaluate_model(student, data, device="cpu", reference=t1[1])
    assert len(list(cache.glob("*.pt"))) == 2
    calls, real = [], E.localization
    monkeypatch.setattr(E, "localization", lambda *a, **k: calls.append(1))  # a hit scores nothing
    t2 = E.evaluate_model(teacher, data, device="cpu")
    s2 = E.evaluate_model(student, data, device="cpu", reference=t2[1])
    assert not calls and len(list(cache.glob("*.pt"))) == 2
    _same(t1, t2)
    _same(s1, s2)
    assert {"cos", "l2", "cos_top1", "agree_top1", "kl_teacher"} <= set(s2[0])
    monkeypatch.setattr(E, "localization", real)
    # the teacher against its own maps and logits: full agreement, no divergence
    own, _ = E.evaluate_model(teacher, data, device="cpu", reference=t2[1])
    assert own["agree_top1"] == 1.0 and abs(own["kl_teacher"]) < 1e-12


def test_misses(setup):
    data, cache = setup
    net = M.build(SPEC, seed=0)
    base = EC.key(net, data, {"layer": "last_conv"})
    changed = M.build(SPEC, seed=0)
    with torch.no_grad():
        changed.features[0].weight[0, 0, 0, 0] += 1e-6
    assert EC.key(changed, data, {"layer": "last_conv"}) != base  # weights changed after loading
    assert EC.key(net, data, {"layer": "features.3"}) != base  # settings
    assert EC.key(net, data, {"layer": "last_conv"}, torch.tensor([0, 1])) != base  # the teacher's classes
    assert EC.key(net, dict(data, id={"other": 1}), {"layer": "last_conv"}) != base  # the data
    assert EC.key(net, data, {"layer": "last_conv"}) == base
    EC.code_hash.cache_clear()
    try:
        import unittest.mock as um

        with um.patch.object(EC, "CODE", EC.CODE + ("recipes.py",)):
            EC.code_hash.cache_clear()
            assert EC.key(net, data, {"layer": "last_conv"}) != base  # the evaluation code
    finally:
        EC.code_hash.cache_clear()


def test_unreadable_entry_is_scored_again(setup):
    data, cache = setup
    net = M.build(SPEC, seed=0)
    first = E.evaluate_model(net, data, device="cpu")
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(b"not a checkpoint")
    again = E.evaluate_model(net, data, device="cpu")
    _same(first, again)
    assert entry.read_bytes() != b"not a checkpoint"  # replaced


def test_off_and_other_attributions_are_not_cached(setup, monkeypatch):
    data, cache = setup
    net = M.build(SPEC, seed=0)
    E.evaluate_model(net, data, device="cpu", attr=E.baseline_attr("center"))
    monkeypatch.setenv("APNB_EVAL_CACHE", "0")
    E.evaluate_model(net, data, device="cpu")
    assert not cache.exists() or not list(cache.glob("*.pt"))
