"""The model parameter randomisation test (apnb.sanity) against Quantus' MPRT and on hand cases."""
import numpy as np
import pytest
import torch

from apnb import models as M
from apnb import sanity
from apnb.attribution import attribute

pytestmark = pytest.mark.unit


def _net():
    torch.manual_seed(0)
    net = M.vgg("vgg16_bn", 4, width_div=32, n_pools=2, head_pool=1)
    net.train()
    for _ in range(2):
        net(torch.randn(8, 3, 32, 32))
    return net.eval()


def _saliency(model, x, target):
    return attribute(model, x, target, "saliency")


def test_the_cascade_equals_quantus_mprt():
    """Layer for layer and image for image, the rank correlations are Quantus' (MPRT, top-down cascade, the maps
    compared as they are)."""
    import quantus  # installed by the Makefile (--no-deps: see there)
    net, x, t = _net(), torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 3])
    ours = sanity.parameter_randomisation(net, x, t, _saliency, seed=42)
    metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, layer_order="top_down",
                          seed=42, abs=False, normalise=False, disable_warnings=True)
    explain = lambda model, inputs, targets, **kw: _saliency(  # noqa: E731
        model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()
    theirs = metric(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None, explain_func=explain,
                    device="cpu")
    theirs = theirs[0] if isinstance(theirs, list) else theirs
    layers = [k for k in theirs if k != "original"]
    assert layers == list(dict.fromkeys(ours.layer)) == sanity.randomisable_layers(net)[::-1]
    for name in layers:
        np.testing.assert_allclose(ours[ours.layer == name].spearman.to_numpy(), theirs[name], atol=1e-6)


def test_hand_cases():
    net, x, t = _net(), torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # a map that ignores the network survives every randomisation; the network's own maps do not
    fixed = sanity.parameter_randomisation(net, x, t, lambda m, xx, tt: xx.sum(1).abs(), layers=3)
    assert (fixed.spearman > 0.999).all()
    df = sanity.parameter_randomisation(net, x, t, _saliency)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the model is left as it was
    summ = sanity.randomisation_summary(df)
    assert list(summ.step) == list(range(1, len(sanity.randomisable_layers(net)) + 1))
    assert summ["mean"].iloc[-1] < 0.5 and summ["kept_0.5"].iloc[-1] < 1
    np.testing.assert_allclose(sanity.spearman_rows(np.array([[1.0, 2, 3], [1, 2, 3]]), np.array([[2.0, 4, 9], [3, 2, 1]])),
                               [1.0, -1.0])
