"""The registry of matching kinds (:mod:`apnb.kinds`): one registration gives a kind its weight, its teacher
pass, its term and its checks everywhere; a store key does not change when a field is added at its default."""
import copy
import dataclasses

import pytest
import torch

from apnb import kinds, specs
from apnb import models as M
from apnb.config import config_key
from apnb.engine import Member, StudentObjective, TrainConfig, fit_cohort
from apnb.matching import AttributionMatching, MatchingConfig
from apnb.models import ModelError

pytestmark = pytest.mark.unit


def _pair():
    torch.manual_seed(0)
    t = M.vgg("vgg16_bn", 5, width_div=16, n_pools=2, head_pool=1).eval()
    s = M.vgg("vgg16_bn", 5, width_div=32, n_pools=2, head_pool=1).eval()
    return t, s


def test_the_registry_is_the_one_list():
    assert specs.KINDS == tuple(kinds.REGISTRY)
    assert specs.DEFAULT_BETA == {k: v.beta for k, v in kinds.REGISTRY.items()}
    assert specs.COMPRESSION_METHODS == ("naive",) + tuple(k for k in kinds.REGISTRY if k != "none")
    assert [k for k, v in kinds.REGISTRY.items() if v.paper] == ["ewa", "swa", "sswa"]
    for name, k in kinds.REGISTRY.items():
        assert f"``{name}``" in kinds.__doc__, f"{name}: add its row to the table of apnb.kinds"
        assert k.teacher in kinds.TEACHER_NEEDS and k.beta >= 0 and k.source
        assert MatchingConfig(kind=name).beta == k.beta
    # the paper's weights (supplement C.2) and the e2KD authors' coefficient
    assert (specs.DEFAULT_BETA["ewa"], specs.DEFAULT_BETA["swa"], specs.DEFAULT_BETA["sswa"]) == (100.0, 50.0, 50.0)
    assert specs.DEFAULT_BETA["e2kd"] == 1.0


def test_register_refuses_a_taken_name_and_an_unknown_need():
    with pytest.raises(ValueError, match="not taken yet"):
        kinds.register(type("Again", (kinds.Kind,), {"name": "swa"}))
    with pytest.raises(ValueError, match="teacher='pixels'"):
        kinds.register(type("Odd", (kinds.Kind,), {"name": "odd", "teacher": "pixels"}))
    assert "odd" not in kinds.REGISTRY


@pytest.fixture
def l1_kind():
    """A new kind added by one registration: SWA's maps matched by the l1 distance of the normalised maps."""

    @kinds.register
    class SWAL1(kinds.Kind):
        name, beta, teacher, source = "swa_l1", 7.0, "grads", "a test"

        def term(self, ctx, a_s, g_s, a_t, g_t):
            ms, mt = ctx.maps(a_s, g_s), ctx.maps(a_t, g_t)
            n = lambda m: m.flatten(1) / m.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)
            return (n(ms) - n(mt)).abs().sum(1).mean()

        def check(self, cfg, s, t, layer):
            return None if s[1] <= t[1] else f"{layer}: the student is wider than its teacher"

    yield "swa_l1"
    del kinds.REGISTRY["swa_l1"]


def test_a_registered_kind_works_everywhere(l1_kind):
    t, s = _pair()
    x = torch.randn(3, 3, 32, 32)
    cfg = MatchingConfig(kind=l1_kind)
    assert cfg.beta == 7.0  # its default weight
    reg = AttributionMatching(cfg)
    reg.check(s, t, x[:1])
    with pytest.raises(ModelError, match="wider than its teacher"):
        reg.check(t, s, x[:1])  # its own check
    assert reg.teacher_need() == AttributionMatching(kind="swa").teacher_need()  # shares SWA's teacher pass
    _, _, loss = reg(s, x, t)
    assert loss > 0 and loss.requires_grad
    _, _, zero = reg(copy.deepcopy(t), x, t)
    assert zero.item() < 1e-6
    # in a cohort beside SWA: one teacher pass per batch
    calls = [0]
    t.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), (torch.rand(16, 5) > 0.6).float())
    tc = TrainConfig(epochs=1, lr=0.01, batch_size=8, optimizer="adamw", schedule="constant")
    fit_cohort([Member(copy.deepcopy(s), StudentObjective(t, AttributionMatching(kind=k)), tc, name=k)
                for k in ("swa", l1_kind)], data, progress=False)
    assert calls[0] == 2


def test_a_field_added_at_its_default_keeps_every_store_key():
    """Store keys hold the first store's fields and, of any field added later, only a value off its default."""
    assert set(MatchingConfig().to_dict()) == set(MatchingConfig.KEYED_ALWAYS)

    @dataclasses.dataclass
    class Later(MatchingConfig):
        temperature: float = 1.0

    for kw in ({}, {"kind": "sswa", "p": 0.5}, {"kind": "ewa", "layers": ("last_conv", "features.3")}):
        assert config_key(Later(**kw).to_dict()) == config_key(MatchingConfig(**kw).to_dict())
    assert config_key(Later(temperature=2.0).to_dict()) != config_key(MatchingConfig().to_dict())
    # a key of the first store, written out: unchanged by the registry
    assert config_key(MatchingConfig(kind="sswa", beta=50.0, p=0.3).to_dict()) == config_key(
        {"kind": "sswa", "beta": 50.0, "layers": ("last_conv",), "p": 0.3, "topk": 1, "relu": True,
         "center_logits": False, "per_neuron": False, "mask": "teacher", "reduction": "mean"})
