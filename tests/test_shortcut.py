"""The "right for the right reasons" measures: where a map's mass lies, and the cue-split scores."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from apnb import evaluate as E
from apnb.data import splits as D
from apnb.data import synthetic

pytestmark = pytest.mark.unit


def test_mass_shares_hand_case():
    seg = torch.zeros(4, 4, dtype=torch.long)
    seg[:2, :2] = 1  # class 0 in the top-left corner
    seg[2, 0] = 255  # a void pixel: neither object nor background cue
    cue = np.zeros((1, 4, 4), bool)
    cue[0, :, 1:] = True  # cue box: columns 1-3 (it overlaps the object in column 1)
    loc_set = [(torch.zeros(3, 4, 4), torch.tensor([1.0]), seg)]
    maps = torch.stack([torch.ones(4, 4),  # uniform: object 4/16, background cue 12 - 2 (object) = 10/16
                        torch.ones(4, 4),  # not predicted: left out
                        torch.zeros(4, 4)])  # sums to 0: left out
    pairs = pd.DataFrame({"img": [0, 0, 0], "cls": [0, 0, 0], "predicted": [True, False, True]})
    out = E.mass_shares(E.LocResult(pairs, maps), loc_set, cue)
    assert out["mass_object"] == pytest.approx(4 / 16) and out["mass_cue"] == pytest.approx(10 / 16)
    # all mass on the object; a negative value counts as 0 (ReLU)
    m = torch.full((4, 4), -1.0)
    m[:2, :2] = 2.0
    out = E.mass_shares(E.LocResult(pairs.iloc[:1], m[None]), loc_set, cue)
    assert out == {"mass_object": pytest.approx(1.0), "mass_cue": pytest.approx(0.0)}
    with pytest.raises(Exception, match="cue masks for 1 localization images"):
        E.mass_shares(E.LocResult(pairs, maps), loc_set, np.zeros((2, 4, 4), bool))


def test_shortcut_row_on_the_synthetic_benchmark(synth_root):
    from apnb.models import vgg

    data = D.voc_data(str(synth_root), None, 32)
    assert {"val_nocue", "val_cueflip"} <= set(data)
    torch.manual_seed(0)
    model = vgg("vgg16_bn", num_classes=len(data["classes"]), width_div=16, n_pools=2, head_pool=1)
    row, loc = E.evaluate_model(model, data, "last_conv", "cpu")
    sc = E.shortcut_row(model, data, row, loc, "last_conv", "cpu")
    assert sc["gap_nocue"] == pytest.approx(row["mAP"] - row["mAP_nocue"])
    assert sc["gap_cueflip"] == pytest.approx(row["mAP"] - sc["mAP_cueflip"])
    assert sc["mAP_cueflip"] == pytest.approx(E.prediction_metrics(model, data["val_cueflip"], "cpu")["mAP"])
    for k in ("mass_object", "mass_cue"):
        assert math.isnan(sc[k]) or 0.0 <= sc[k] <= 1.0
    assert not math.isnan(sc["mAP_cueflip"])
    cue = synthetic.cue_regions(synth_root, "val", n=len(data["loc"]))
    assert cue.shape[0] == len(data["loc"]) and cue.any()
    both = E.evaluate_with_shortcuts(model, data, "last_conv", "cpu")
    assert pd.Series(both).equals(pd.Series({**row, **sc}))  # NaN equal to NaN, and the same keys in order
