"""apnb.scrutiny: one network's Score-CAM localization, randomisation check and pixel flipping, each equal to
what its own function gives on the same images, and read back from the evaluation cache."""
import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from apnb.data import splits as D
from apnb import models as M
from apnb import scrutiny
from apnb.attribution import attribute
from apnb.evaluate import localization
from apnb.faithfulness import pixel_flipping
from apnb.gradcam import gradcam
from apnb.sanity import parameter_randomisation

pytestmark = pytest.mark.unit


def _net(n_classes):
    net = M.build({"arch": "vgg16_bn", "num_classes": n_classes, "width_div": 32, "n_pools": 2, "head_pool": 1},
                  seed=0)
    net.train()
    with torch.no_grad():
        for _ in range(2):  # BatchNorm statistics off their initial values, so that randomising them changes maps
            net(torch.randn(8, 3, 32, 32))
    return net.eval()


def test_first_pairs_take_each_images_first_present_class(synth_root):
    data = D.voc_data(str(synth_root), None, 32)
    x, t = scrutiny.first_pairs(data["loc"], 5)
    assert x.shape == (5, 3, 32, 32)
    for i in range(5):
        _, lab, seg = data["loc"][i]
        present = [c for c in range(len(lab)) if lab[c] and (torch.as_tensor(seg) == c + 1).any()]
        assert int(t[i]) == present[0]


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_scrutinise_equals_its_parts_and_is_cached(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("APNB_STORE", str(tmp_path / "store"))
    data = D.voc_data(str(synth_root), None, 32)
    net = _net(len(data["classes"]))
    n = 4
    row, loc = scrutiny.scrutinise(net, data, n_images=n, flip_steps=4)

    sub = Subset(data["loc"], range(n))
    ref = localization(net, sub, "cpu", attr=lambda m, x, t: attribute(m, x, t, "scorecam")).summary(strict=False)
    assert row["AUC_scorecam"] == pytest.approx(ref["AUC"])
    assert row["point_acc_tol_scorecam"] == pytest.approx(ref["point_acc_tol"])
    assert len(loc.pairs) == len(localization(net, sub, "cpu").pairs)

    x, t = scrutiny.first_pairs(data["loc"], n)
    explain = lambda m, xx, tt: gradcam(m, xx, "last_conv", tt, upsample=True)[0]
    rnd = parameter_randomisation(net, x, t, explain, seed=0).fillna({"spearman": 0.0})
    steps = rnd.groupby("step").spearman.mean()
    assert row["rand_top"] == pytest.approx(steps.iloc[0])
    assert row["rand_all"] == pytest.approx(steps.iloc[-1])
    assert row["rand_pass"] == (row["rand_all"] < 0.5)

    maps = explain(net, x, t).detach()
    curves, area = pixel_flipping(net, x, t, maps, pixels_in_step=32 * 32 // 4, score="sigmoid")
    assert curves.shape[1] == 4
    assert row["pf_gradcam"] == pytest.approx(np.mean(area) / 3)
    assert 0 <= row["pf_random"] <= 1

    # the second call is read from the evaluation cache: nothing is scored again
    monkeypatch.setattr(scrutiny, "localization", lambda *a, **k: pytest.fail("scored again"))
    again, loc2 = scrutiny.scrutinise(net, data, n_images=n, flip_steps=4)
    assert again == row
    assert torch.equal(loc2.maps, loc.maps)
