import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from apnb import faithfulness as Fa

pytestmark = pytest.mark.unit


def test_rank_mask_and_replace_hand_case():
    maps = torch.tensor([[[0.9, 0.1], [0.5, 0.2]]])
    m = Fa.rank_mask(maps, 0.5)
    assert m.tolist() == [[[True, False], [True, False]]]
    assert Fa.rank_mask(maps, 0.25, top=False).tolist() == [[[False, True], [False, False]]]
    x = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: 0 1 2 3, channel 1: 4 5 6 7
    out = Fa.replace(x, m, fill=torch.tensor([-1.0, -2.0]))
    assert out[0, 0].tolist() == [[-1.0, 1.0], [-1.0, 3.0]] and out[0, 1].tolist() == [[-2.0, 5.0], [-2.0, 7.0]]
    kept = Fa.replace(x, m, "kept_mean")  # kept pixels of channel 0 are 1 and 3
    assert kept[0, 0].tolist() == [[2.0, 1.0], [2.0, 3.0]]
    with pytest.raises(ValueError, match="fraction"):
        Fa.rank_mask(maps, 1.5)


class Linear(nn.Module):
    """y = sum of the pixels of channel 0 weighted by w: the true importance of each pixel is w."""
    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        s = (x[:, 0] * self.w).flatten(1).sum(1)
        return torch.stack([s, -s], 1)


def test_diffid_rewards_faithful_maps():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(8, 8, generator=g)
    x = torch.rand(16, 3, 8, 8, generator=g) + 0.5
    model = Linear(w)
    target = torch.zeros(16, dtype=torch.long)
    good = Fa.diffid(model, x, target, (x[:, 0] * w))
    rand = Fa.diffid(model, x, target, torch.rand(16, 8, 8, generator=g))
    assert good.attrs["area"] > 0.1
    assert good.attrs["area"] > rand.attrs["area"] + 0.1
    assert (good.deletion <= 1.0 + 1e-6).all()


def test_roar_with_a_tiny_classifier():
    # the label is decided by the bright pixel's position; a map that marks that pixel is faithful
    g = torch.Generator().manual_seed(0)
    n = 200
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 4, 4, generator=g) * 0.1
    x[torch.arange(n), 0, 0, 3 * y] += 1.0
    maps = x[:, 0].clone()

    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))

    def train(model, xx, yy):
        opt = torch.optim.Adam(model.parameters(), 0.05)
        for _ in range(100):
            opt.zero_grad()
            F.cross_entropy(model(xx), yy).backward()
            opt.step()

    def score(model, xx, yy):
        return float((model(xx).argmax(1) == yy).float().mean())

    tr, te = (x[:150], y[:150], maps[:150]), (x[150:], y[150:], maps[150:])
    fill = torch.tensor([0.05])
    faithful = Fa.roar(make, train, score, tr, te, [0.1], fill)
    random = Fa.roar(make, train, score, (x[:150], y[:150], None), (x[150:], y[150:], None), [0.1], fill)
    assert faithful.score[0] < 0.7 and random.score[0] > 0.8  # removing the marked pixel destroys the signal
    d = Fa.diffroar(make, train, score, tr, te, [0.1], fill)
    assert d.diffroar[0] > 0.3


def test_pixel_flipping_equals_quantus():
    """Curve for curve, pixel flipping equals Quantus' PixelFlipping (softmax scores, the image's minimum as the
    fill, a map broadcast over the channels, no normalisation); a map that ranks the evidence first scores lower
    than its reverse."""
    import quantus  # installed by the Makefile (--no-deps: see there)

    from apnb import models as M
    from apnb.attribution import attribute
    from apnb.faithfulness import pixel_flipping

    torch.manual_seed(0)
    net = M.vgg("vgg16_bn", 4, width_div=32, n_pools=2, head_pool=1).eval()
    # 12 x 12: Quantus wants its step (24 = 3 channels x 8 pixels) to divide H x W
    x, t = torch.randn(3, 3, 12, 12), torch.tensor([0, 2, 3])
    maps = attribute(net, x, t, "saliency") + 1e-6 * torch.rand(3, 12, 12)  # no ties
    curves, auc = pixel_flipping(net, x, t, maps, pixels_in_step=8)
    metric = quantus.PixelFlipping(features_in_step=3 * 8, normalise=False, abs=False, disable_warnings=True)
    theirs = metric(model=net, x_batch=x.numpy(), y_batch=t.numpy(),
                    a_batch=maps[:, None].numpy().repeat(3, 1), device="cpu", softmax=True)
    np.testing.assert_allclose(curves, np.array(theirs), atol=1e-5)
    # Quantus' own area calls np.trapz, which numpy 2.4 no longer has: the same trapezoids on its curves
    np.testing.assert_allclose(auc, np.trapezoid(np.array(theirs), dx=1, axis=1), atol=1e-4)
    # a hand case: a network that reads only the top-left pixel's red value
    class One(torch.nn.Module):
        def forward(self, z):
            return torch.stack([z[:, 0, 0, 0], -z[:, 0, 0, 0]], 1)

    z = torch.ones(1, 3, 4, 4)
    z[0, 0, 0, 0] = 5.0
    good = torch.zeros(1, 4, 4)
    good[0, 0, 0] = 1.0
    c_good, a_good = pixel_flipping(One(), z, torch.tensor([0]), good, score="logit")
    c_bad, a_bad = pixel_flipping(One(), z, torch.tensor([0]), -good, score="logit")
    assert c_good[0, 0] == 1.0 and c_bad[0, -2] == 5.0 and a_good[0] < a_bad[0]
    with pytest.raises(ValueError, match="one \\[H,W\\] map per image"):
        pixel_flipping(One(), z, torch.tensor([0]), good[0])
