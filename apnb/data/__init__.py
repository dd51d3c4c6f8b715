"""Datasets: the embedded synthetic benchmark, the real PASCAL VOC / ImageNet-seg / CIFAR loaders, and
:mod:`apnb.data.splits`, which assembles them into the splits a notebook works on.

The names below are imported on first use (PEP 562), so that ``apnb.data.synthetic`` and
``apnb.data.fixtures`` load without torch (the parameter check must not import it)."""
from importlib import import_module

_FROM = {"SynthConfig": "synthetic", "ensure_synthetic": ("synthetic", "ensure"), "write_imagenet_like": "synthetic",
         "write_voc": "synthetic", "PAPER_MEAN": "voc", "PAPER_STD": "voc", "VOC_CLASSES": "voc", "DataError": "voc",
         "VOCClassification": "voc", "VOCLocalization": "voc", "class_masks": "voc"}
__all__ = sorted(_FROM)


def __getattr__(name):
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    mod, attr = _FROM[name] if isinstance(_FROM[name], tuple) else (_FROM[name], name)
    return getattr(import_module(f".{mod}", __name__), attr)
