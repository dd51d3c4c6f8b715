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
