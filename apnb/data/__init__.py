"""Datasets: the embedded synthetic benchmark, the real PASCAL VOC / ImageNet-seg / CIFAR loaders, and
:mod:`apnb.data.splits`, which assembles them into the splits a notebook works on."""
from .synthetic import SynthConfig, ensure as ensure_synthetic, write_imagenet_like, write_voc  # noqa: F401
from .voc import (PAPER_MEAN, PAPER_STD, VOC_CLASSES, DataError, VOCClassification, VOCLocalization,  # noqa: F401
                  class_masks)
