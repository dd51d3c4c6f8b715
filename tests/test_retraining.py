"""Retraining benchmarks (:mod:`apnb.retraining`): ROAR and DiffROAR on CIFAR batches with a PreActResNet-18."""
import numpy as np
import pytest
import torch
from apnb.data import splits as D
from apnb import recipes as R
from apnb import retraining
from apnb.attribution import attribute
from apnb.store import Store

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """CIFAR-10 python batches where class c is a bright square in quadrant c % 4 (learnable, localised)."""
    from apnb.data.fixtures import write_cifar_fixture

    return write_cifar_fixture(tmp_path_factory.mktemp("cifar-10-batches-py"))


def test_cifar_roar_and_diffroar(cifar_root, tmp_path):
    data = D.cifar_data(str(cifar_root), 10)
    assert len(data["train"]) == 120 and len(data["val"]) == 40
    spec = {"arch": "preact_resnet18", "num_classes": 10, "width_div": 16}
    train = {"epochs": 6, "lr": 0.01, "optimizer": "adamw", "schedule": "onecycle", "batch_size": 20, "seed": 0}
    assert data["multilabel"] is False  # CIFAR: cross-entropy and top-1, read from the data
    model = R.setup({}, {"spec": spec, "train": train}, "cpu", Store(tmp_path), data=data).teacher
    tr, te = D.train_images(data, 120), D.tensors(data["val"])
    with torch.no_grad():
        assert (model(te[0]).argmax(1) == te[1]).float().mean() > 0.5  # the explained model learned the squares
    maps = {"inputgrad": tuple(attribute(model, x, y, "inputgrad") for x, y in (tr, te)), "random": None}
    clf = {"arch": "preact_resnet18", "num_classes": 10, "width_div": 16}
    r = retraining.roar_benchmark(tr, te, maps, [0.0, 0.9], clf, train, "cpu", multilabel=False, kind="roar")
    assert list(r.columns) == ["ranking", "fraction", "acc"] and r.acc.between(0, 1).all()
    assert len(r) == 4 and r[r.fraction == 0].acc.nunique() == 1  # the unmodified baseline is shared
    d = retraining.roar_benchmark(tr, te, maps, [0.1], clf, train, "cpu", multilabel=False, kind="diffroar")
    assert list(d.columns) == ["ranking", "fraction", "top_kept", "bottom_kept", "diffroar"]
    assert np.allclose(d.diffroar, d.top_kept - d.bottom_kept)
    assert float(d[d.ranking == "random"].diffroar.iloc[0]) == 0.0
    with pytest.raises(ValueError, match="kind="):
        retraining.roar_benchmark(tr, te, maps, [0.1], clf, train, "cpu", kind="road")
