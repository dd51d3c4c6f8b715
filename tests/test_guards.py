"""Premise guards (:mod:`apnb.guards`) and seeded initialisation; the guards of every recipe are tested in
``test_recipes.py``."""

import pytest
import torch
from apnb import guards as G
from apnb import metrics as Mt
from apnb import models as M

pytestmark = pytest.mark.unit
SPEC = {"arch": "vgg16_bn", "width_div": 16, "n_pools": 2, "head_pool": 1}


def test_build_seeded_is_independent_of_history_and_leaves_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = M.build(dict(SPEC, num_classes=4), seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.rand(1000)  # whatever ran before
    b = M.build(dict(SPEC, num_classes=4), seed=5)
    c = M.build(dict(SPEC, num_classes=4), seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_plateau_ratio_and_check():
    flat = [{"phase": "pretrain", "loss": v} for v in (0.65, 0.61, 0.61, 0.61, 0.60)]
    learns = [{"phase": "pretrain", "loss": v} for v in (0.68, 0.60, 0.50, 0.40, 0.33)]
    assert G.plateau_ratio(flat) == pytest.approx(0.60 / 0.65)
    assert G.plateau_ratio(learns) == pytest.approx(0.33 / 0.68)
    G.check_plateau("teacher", learns, 0.8, "pretrain")
    with pytest.raises(G.PremiseError, match=r"^teacher: the pretrain loss never left its plateau \(last/first = 0.92 > 0.8"):
        G.check_plateau("teacher", flat, 0.8, "pretrain")
    G.check_plateau("teacher", flat, None, "pretrain")  # switched off


def test_chance_map_matches_random_scores():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(4000, 5, generator=g) < torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])).float()
    scores = torch.rand(4000, 5, generator=g)
    assert G.chance_map(y) == pytest.approx(0.3, abs=0.01)
    assert Mt.voc_map(scores, y) == pytest.approx(G.chance_map(y), abs=0.02)


def test_guards_validate():
    with pytest.raises(ValueError, match="guards.plateau=3"):
        G.Guards.of({"plateau": 3})
    with pytest.raises(ValueError, match="unknown keys"):
        G.Guards.of({"platoo": 0.5})
    assert G.Guards.of(None).plateau is None
