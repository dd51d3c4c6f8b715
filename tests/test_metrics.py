import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from apnb import metrics as Mt

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # integer-key CPU path / torch.sort path
def test_auc_equals_sklearn_random_and_ties(dtype):
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(20, 15, 15, generator=g)  # negative values too
    maps[10:] = (maps[10:] * 4).round() / 4  # heavy ties
    maps[15] = -maps[15].abs() * 0.0  # -0.0 and +0.0 must tie
    maps[15, :3] = 0.0
    masks = torch.rand(20, 15, 15, generator=g) > 0.7
    ours = Mt.roc_auc(maps.to(dtype), masks, chunk=3)
    ref = [roc_auc_score(masks[i].flatten().numpy(), maps[i].flatten().numpy()) for i in range(20)]
    assert ours.dtype == torch.float64 and np.allclose(ours.numpy(), ref, atol=1e-6)


def test_auc_excludes_void_pixels():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(5, 12, 12, generator=g)
    masks = torch.rand(5, 12, 12, generator=g) > 0.6
    valid = torch.rand(5, 12, 12, generator=g) > 0.2
    ours = Mt.roc_auc(maps, masks, valid)
    assert torch.allclose(ours, Mt.roc_auc(maps.double(), masks, valid))
    for i in range(5):
        v = valid[i].flatten().numpy()
        ref = roc_auc_score(masks[i].flatten().numpy()[v], maps[i].flatten().numpy()[v])
        assert abs(ours[i].item() - ref) < 1e-6


def test_auc_bad_input():
    with pytest.raises(Mt.MetricError, match="differ in shape"):
        Mt.roc_auc(torch.rand(1, 4, 4), torch.ones(1, 5, 5, dtype=torch.bool))
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 0, 0] = True
    with pytest.raises(Mt.MetricError, match="all-void"):
        Mt.roc_auc(torch.rand(1, 4, 4), m, valid=torch.zeros(1, 4, 4, dtype=torch.bool))


def test_pointing_game_hand_cases():
    maps = torch.zeros(3, 5, 5)
    masks = torch.zeros(3, 5, 5, dtype=torch.bool)
    maps[0, 1, 1] = 1; masks[0, 1, 1] = True                    # hit
    maps[1, 4, 4] = 1; masks[1, 0, 0] = True                    # miss
    maps[2, 0, 0] = 1; maps[2, 3, 3] = 1; masks[2, 3, 3] = True  # tie: first max misses, any max hits
    assert Mt.pointing_hits(maps, masks).tolist() == [True, False, False]
    assert Mt.pointing_hits(maps, masks, ties="any").tolist() == [True, False, True]
    # tolerance (TorchRay's open disc): at tolerance 2 a mask pixel at distance exactly 2 from the maximum
    # (4,4) -> (2,4) is a miss, one at distance 1 (3,4) a hit; at tolerance 3, (2,4) is a hit
    masks2 = masks.clone(); masks2[1, 2, 4] = True
    assert Mt.pointing_hits(maps[1:2], masks2[1:2], tolerance=2).tolist() == [False]
    assert Mt.pointing_hits(maps[1:2], masks2[1:2], tolerance=3).tolist() == [True]
    masks3 = masks.clone(); masks3[1, 3, 4] = True
    assert Mt.pointing_hits(maps[1:2], masks3[1:2], tolerance=2).tolist() == [True]
    assert Mt.pointing_hits(maps[1:2], masks[1:2], tolerance=2).tolist() == [False]
    # void pixels never count as the mask
    assert Mt.pointing_hits(maps[:1], masks[:1], valid=~masks[:1]).tolist() == [False]


def test_pointing_multiclass_and_class_mean():
    # one image, two classes: each class scored against its own mask (no accumulation across classes)
    cls_map = torch.tensor([[1, 1, 0], [0, 2, 2], [0, 0, 0]])
    maps = torch.stack([torch.tensor([[0, 0, 0], [0, 1.0, 0], [0, 0, 0]])] * 2)  # max on a class-2 pixel
    masks = torch.stack([cls_map == 1, cls_map == 2])
    hits = Mt.pointing_hits(maps, masks)
    assert hits.tolist() == [False, True]
    assert Mt.pointing_accuracy(torch.tensor([True, True, False, True]), torch.tensor([0, 0, 0, 1]), "class") == \
        pytest.approx((2 / 3 + 1) / 2)


def test_ap_map_and_f1():
    g = np.random.default_rng(0)
    y = (g.random((50, 6)) > 0.6).astype(int)
    s = y * 0.5 + g.random((50, 6))
    ours = Mt.average_precision(torch.tensor(s), torch.tensor(y)).numpy()
    ref = np.array([average_precision_score(y[:, c], s[:, c]) for c in range(6)])
    assert np.all(ours >= ref - 1e-9)  # the interpolated envelope is never below sklearn's step AP
    # when precision is monotone the two agree exactly
    y1, s1 = np.array([1, 1, 0, 1, 0, 0]), np.array([.9, .8, .7, .6, .5, .4])
    hand = (1 + 1 + 3 / 4) / 3  # precision at each positive: 1, 1, 3/4
    assert Mt.average_precision(torch.tensor(s1)[:, None], torch.tensor(y1)[:, None]).item() == pytest.approx(hand)
    assert Mt.f1_samples(torch.tensor(s), torch.tensor(y), 0.5) == pytest.approx(
        f1_score(y, s > 0.5, average="samples", zero_division=1.0))


def test_similarity():
    a = torch.rand(4, 6, 6)
    assert torch.allclose(Mt.cosine(a, 3 * a), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(Mt.normalized_l2(a, 2 * a), torch.zeros(4, dtype=torch.float64), atol=1e-7)
    b = torch.zeros(1, 2, 1); b[0, 0] = 1
    c = torch.zeros(1, 2, 1); c[0, 1] = 1
    assert Mt.normalized_l2(b, c).item() == pytest.approx(2 ** 0.5)


def test_pointing_tolerance_boundary_15px():
    """At 15 px, a pixel at distance exactly 15 (a (9, 12) offset: 81 + 144 = 225) is outside the disc, one
    at 14.87 (a (10, 10) offset: 200) inside; the disc holds the offsets with dy^2 + dx^2 < 225."""
    S = 41
    maps = torch.zeros(1, S, S)
    maps[0, 20, 20] = 1
    on = torch.zeros(1, S, S, dtype=torch.bool)
    on[0, 20 + 9, 20 + 12] = True
    inside = torch.zeros(1, S, S, dtype=torch.bool)
    inside[0, 20 + 10, 20 + 10] = True  # 200 < 225
    assert Mt.pointing_hits(maps, on, tolerance=15).tolist() == [False]
    assert Mt.pointing_hits(maps, on, tolerance=16).tolist() == [True]
    assert Mt.pointing_hits(maps, inside, tolerance=15).tolist() == [True]
    # count the disc by scoring every single-pixel mask
    hits = 0
    for dy in range(-16, 17):
        for dx in range(-16, 17):
            m = torch.zeros(1, S, S, dtype=torch.bool)
            m[0, 20 + dy, 20 + dx] = True
            hits += int(Mt.pointing_hits(maps, m, tolerance=15).item())
    assert hits == sum(1 for dy in range(-15, 16) for dx in range(-15, 16) if dy * dy + dx * dx < 225)


def test_tolerance_for_image_size():
    assert Mt.tolerance_for(224) == 15
    assert Mt.tolerance_for(227) == 15
    assert Mt.tolerance_for(64) == 4


def test_fidelity_by_hand():
    """Top-1 agreement and the predictive KL of a student to its teacher (Stanton et al., NeurIPS 2021), against
    the formulas written out in numpy: Bernoulli KL per class for sigmoid outputs, categorical KL for softmax."""
    import numpy as np

    from apnb.metrics import fidelity

    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    p, q = 1 / (1 + np.exp(-t.numpy().astype(float))), 1 / (1 + np.exp(-s.numpy().astype(float)))
    bern = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).mean()
    out = fidelity(t, s)
    assert out["kl_teacher"] == pytest.approx(bern, rel=1e-9)
    assert out["agree_top1"] == pytest.approx(float((t.argmax(1) == s.argmax(1)).float().mean()))
    pt, ps = torch.softmax(t.double(), 1).numpy(), torch.softmax(s.double(), 1).numpy()
    assert fidelity(t, s, multilabel=False)["kl_teacher"] == pytest.approx((pt * np.log(pt / ps)).sum(1).mean(), rel=1e-9)
    same = fidelity(t, t)
    assert same["agree_top1"] == 1.0 and abs(same["kl_teacher"]) < 1e-12
