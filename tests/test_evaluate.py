"""The evaluation rows (:mod:`apnb.evaluate`): the top-1 map similarity, the baseline maps and the fidelity row."""
import math

import pandas as pd
import pytest
import torch

from apnb import evaluate as E
from apnb import metrics as Mt
from apnb import models as M
from apnb import recipes as R
from apnb.data import splits as D
from apnb.store import Store

pytestmark = pytest.mark.unit
SPEC = {"arch": "vgg16_bn", "width_div": 16, "n_pools": 2, "head_pool": 1}


def test_top1_similarity_and_baselines(synth_root, small_vgg):
    data = D.voc_data(str(synth_root), None, 32)
    net = M.build(dict(SPEC, num_classes=len(data["classes"])), seed=0)
    t = E.top1_maps(net, data["val"], device="cpu")
    assert E.top1_similarity(t, t)["cos_top1"] == pytest.approx(1.0)
    other = M.build(dict(SPEC, num_classes=len(data["classes"])), seed=1)
    s = E.top1_maps(other, data["val"], device="cpu", targets=t[0])
    assert torch.equal(s[0], t[0])
    c = E.top1_similarity(t, s)["cos_top1"]
    # hand reference: the mean of per-image cosines
    ref = torch.nn.functional.cosine_similarity(t[1].flatten(1).double(), s[1].flatten(1).double(), dim=1).mean()
    assert c == pytest.approx(float(ref), abs=1e-9)
    with pytest.raises(Mt.MetricError, match="teacher's top-1"):
        E.top1_similarity(t, E.top1_maps(other, data["val"], device="cpu", targets=(t[0] + 1) % len(data["classes"])))
    # the centred Gaussian peaks at the centre and is symmetric; the random map is seeded
    x = torch.zeros(2, 3, 32, 32)
    g = E.baseline_attr("center")(None, x, None)
    assert g.shape == (2, 32, 32) and torch.allclose(g, g.flip(-1)) and torch.allclose(g, g.flip(-2))
    assert g[0].flatten().argmax() // 32 in (15, 16)
    r1, r2 = E.baseline_attr("random", seed=3)(None, x, None), E.baseline_attr("random", seed=3)(None, x, None)
    assert torch.equal(r1, r2)
    with pytest.raises(ValueError, match="use center or random"):
        E.baseline_attr("corner")
    row, _ = E.evaluate_model(net, data, device="cpu", attr=E.baseline_attr("random"))
    assert 0.0 <= row["AUC"] <= 1.0 or row["AUC"] != row["AUC"]


def _setup(root, train, store):
    return R.setup({"root": str(root), "synth": None, "image_size": 32}, {"spec": SPEC, "train": train},
                   device="cpu", store=store)


def test_fidelity_row_of_the_teacher_itself_and_of_another_network(tmp_path, synth_root):
    """:func:`apnb.evaluate.fidelity_row`: the teacher against itself has logit and map cosine 1 and its own AUC
    and mAP; another network's logit cosine is the mean of torch's per-image cosines."""
    tr = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    S = _setup(synth_root, tr, Store(tmp_path))
    x, _ = D.tensors(S.data["val"])
    with torch.no_grad():
        t_logits = S.teacher.eval()(x)
    own = E.fidelity_row(S.teacher, t_logits, x, S.data, "last_conv", "cpu", S.loc)
    assert own["logit_cos"] == pytest.approx(1.0, abs=1e-5)
    self_ref, _ = E.evaluate_model(S.teacher, S.data, "last_conv", "cpu", reference=S.loc)
    # (a one-epoch teacher may predict no pair: its AUC and map cosine are then NaN, NaN equal to NaN here)
    assert pd.Series([own[k] for k in ("AUC", "map_cos", "mAP")]).equals(pd.Series([self_ref[k] for k in ("AUC", "cos", "mAP")]))
    assert own["mAP"] == S.row["mAP"] and not math.isnan(own["mAP"])
    assert math.isnan(own["map_cos"]) or own["map_cos"] == pytest.approx(1.0, abs=1e-5)
    other = M.build(S.spec, seed=7).eval()
    with torch.no_grad():
        expected = torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(other(x), t_logits)]).mean()
    row = E.fidelity_row(other, t_logits, x, S.data, "last_conv", "cpu", S.loc)
    assert row["logit_cos"] == pytest.approx(expected.item(), abs=1e-5) and row["logit_cos"] < 0.999
    ref, _ = E.evaluate_model(other, S.data, "last_conv", "cpu", reference=S.loc)
    assert pd.Series([row["map_cos"], row["AUC"]]).equals(pd.Series([ref["cos"], ref["AUC"]]))
    assert math.isnan(E.fidelity_row(other, t_logits, x, S.data, "last_conv", "cpu")["map_cos"])  # no reference
