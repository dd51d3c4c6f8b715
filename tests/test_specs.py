"""The torch-free configuration classes (:mod:`apnb.specs`) agree with the library, and refuse bad values."""
import pytest

from apnb.specs import MatchingConfig

pytestmark = pytest.mark.unit


def test_the_torch_free_classes_agree_with_the_library():
    import inspect

    from apnb import attribution, models, recipes, specs

    builders = {"vgg16_bn": models.vgg, "vgg11_bn": models.vgg, "resnet34": models.resnet34,
                "preact_resnet18": models.PreActResNet}
    assert set(specs.ARCH_OPTIONS) == set(models.VGG_CFG) | {"resnet34", "preact_resnet18"}
    for arch, fn in builders.items():
        assert set(specs.ARCH_OPTIONS[arch]) == set(inspect.signature(fn).parameters) - {"arch"}, arch
    assert specs.ATTRIBUTION_METHODS == attribution.METHODS
    assert set(recipes.METHODS) <= set(specs.COMPRESSION_METHODS)
    for m in specs.COMPRESSION_METHODS:
        recipes.Job(m, 0, {}).matching()  # each is a matching the library builds


@pytest.mark.parametrize("kw,msg", [(dict(kind="sswa", p=1.0), "drop probability"), (dict(kind="swa", beta=-1), "beta"),
                                    (dict(kind="xyz"), "unknown matching kind"), (dict(kind="swa", topk=0), "top-1")])
def test_bad_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        MatchingConfig(**kw)
