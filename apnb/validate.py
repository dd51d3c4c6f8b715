"""Notebook parameters checked before the kernel starts, with the library's own dataclasses.

:func:`check` is called by the runner on the merged parameters of a notebook (profile + overrides) and
raises :class:`ParameterError` with one line naming the notebook, the parameter, its value and the allowed
range, in well under a second: before any data is generated or any network trained. The rules are not
copied here: each value is handed to the class the library builds from it (:class:`TrainConfig`,
:class:`MatchingConfig`, :class:`SynthConfig`, :class:`Guards`, the model builders).
"""
from __future__ import annotations

import glob
import math
import os

from .config import resolve_path
from .data.synthetic import SynthConfig
from .specs import (ARCH_OPTIONS, ATTRIBUTION_METHODS, COMPRESSION_METHODS, DATASETS, PAPER_WEIGHT_METHODS, Guards,
                    MatchingConfig, TrainConfig)


class ParameterError(ValueError):
    """A notebook parameter that the library would reject."""


def _train(v):
    if v is None:
        return
    if not isinstance(v, dict):
        raise ValueError("must be a mapping of TrainConfig fields (epochs, lr, optimizer, schedule, ...)")
    unknown = sorted(set(v) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}")
    TrainConfig(**v)


def _spec(v):
    if not isinstance(v, dict) or "arch" not in v:
        raise ValueError("must be a mapping with arch (vgg16_bn, vgg11_bn, resnet34, preact_resnet18) and its options")
    if v["arch"] not in ARCH_OPTIONS:
        raise ValueError(f"unknown arch {v['arch']!r} (use one of {', '.join(ARCH_OPTIONS)})")
    allowed = set(ARCH_OPTIONS[v["arch"]])
    unknown = sorted(set(v) - allowed - {"arch"})
    if unknown:
        raise ValueError(f"unknown options {unknown} for {v['arch']} (allowed: {sorted(allowed)})")
    wd = v.get("width_div", 1)
    if not (isinstance(wd, int) and wd >= 1):
        raise ValueError("width_div must be an integer >= 1")
    if "n_pools" in v and not 1 <= v["n_pools"] <= 5:
        raise ValueError("n_pools must be in [1, 5]")


def _num(v) -> float:
    """``v`` as a float when it is a number (an int or a float, not a bool or a string), else a ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number, not {type(v).__name__} {v!r}")
    return float(v)


def _p(v):
    MatchingConfig(kind="sswa", p=_num(v))


def _ps(v):
    for x in v:
        _p(x)


def _beta(v):
    if isinstance(v, dict):
        for kind, b in v.items():
            MatchingConfig(kind=kind, beta=b)
    elif v is not None:
        MatchingConfig(kind="sswa", beta=_num(v))


def _betas(v):
    for b in v:
        _beta(_num(b))


def _synth(v):
    if not v:
        return
    unknown = sorted(set(v) - set(SynthConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown SynthConfig fields {unknown}")
    # without n_seg the set is an ImageNet-like one (no VOC segmentation split to check against n_val)
    SynthConfig(**v).validate("voc" if "n_seg" in v else "imagenet")


def _guards(v):
    Guards.of(v)


def _seeds(v):
    if not (isinstance(v, list) and v and all(isinstance(s, int) and s >= 0 for s in v)):
        raise ValueError("must be a non-empty list of integers >= 0")


def _prob(v):
    if not 0.0 <= _num(v) < 1.0:
        raise ValueError("must be in [0, 1)")


def _fractions(v):
    for f in v:
        if not 0.0 <= _num(f) < 1.0:
            raise ValueError("every fraction must be in [0, 1)")


def _pos_int(v):
    if not (isinstance(v, int) and v >= 1):
        raise ValueError("must be an integer >= 1")


def cuda_present() -> bool:
    """Whether this machine shows a CUDA (or ROCm) device, read from ``/dev`` and ``CUDA_VISIBLE_DEVICES``
    without importing torch; :func:`apnb.config.resolve_device` asks torch itself later."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def _device(v):
    if not (v == "auto" or str(v).split(":")[0] in ("cpu", "cuda", "mps")):
        raise ValueError("must be auto, cpu or cuda[:N]")
    if str(v).startswith("cuda") and not cuda_present():
        raise ValueError("this machine has no CUDA device (no /dev/nvidia*): use auto or cpu")


def _methods_in(registry: tuple[str, ...], what: str):
    def rule(v):
        if not (isinstance(v, list) and v and all(isinstance(m, str) for m in v)):
            raise ValueError(f"must be a non-empty list of {what} ({', '.join(registry)})")
        bad = [m for m in v if m not in registry]
        if bad:
            raise ValueError(f"unknown {what} {bad}: use {', '.join(registry)}")
    return rule


# a method may also be a kind at its paper's weight (``sswa@paper``), beside the rule's weight
_COMPRESSION = _methods_in(COMPRESSION_METHODS + PAPER_WEIGHT_METHODS, "compression methods")
_ATTRIBUTION = _methods_in(ATTRIBUTION_METHODS, "attribution methods")


def _count(v):
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        raise ValueError("must be an integer >= 0 (0: off)")


def _divs(v):
    if not (isinstance(v, list) and v and all(isinstance(d, int) and d >= 1 for d in v)):
        raise ValueError("must be a non-empty list of integers >= 1 (width divisors)")


def _recipe(fields: dict, required: tuple[str, ...]):
    """A recipe mapping (:mod:`apnb.recipes`): exactly ``fields``' names, ``required`` present, each checked."""
    def rule(v):
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping of {', '.join(fields)}")
        unknown, missing = sorted(set(v) - set(fields)), [k for k in required if k not in v]
        if unknown or missing:
            raise ValueError(f"unknown fields {unknown} / missing fields {missing} (fields: {', '.join(fields)})")
        for k, x in v.items():
            try:
                fields[k](x)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{k}: {e}") from None
    return rule


def _criterion(v):
    if v not in ("l1", "lrp"):
        raise ValueError("must be l1 (filters by their weights' l1 norm) or lrp (by their LRP relevance)")


def _dataset(v):
    if v not in DATASETS:
        raise ValueError(f"must be one of {', '.join(DATASETS)} (apnb.data.splits.load_data)")


def _layer(v):
    if not (isinstance(v, str) and v):
        raise ValueError("must be a layer name (last_conv, last_pool, conv4_3 or a module path)")


def _layers(v):
    if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        raise ValueError("must be null (every convolution) or a list of module paths")


def _path(v):
    if v is not None and not (isinstance(v, str) and v):
        raise ValueError("must be a path (a string) or null")


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("must be true or false")


def _positive(v):
    if not _num(v) > 0:
        raise ValueError("must be > 0")


def _unit(v):
    if not 0.0 <= _num(v) <= 1.0:
        raise ValueError("must be in [0, 1]")


RULES = {
    "betas": _betas, "ps": _ps,
    # a chapter's compression methods (naive or a registered matching kind, apnb.kinds) and attribution methods
    "methods": _COMPRESSION, "structured_methods": _COMPRESSION, "qat_methods": _COMPRESSION,
    # the field chapter: the distilled students' methods, the methods fine-tuned after pruning by explaining, and
    # whether a student without KD is trained; its images for Score-CAM, the randomisation check and pixel flipping
    "kd_methods": _COMPRESSION, "pxp_methods": _COMPRESSION, "no_kd": _bool, "n_scrutiny": _count,
    "flip_steps": _pos_int,
    "attr_methods": _ATTRIBUTION,
    "lpi_methods": _ATTRIBUTION,
    "seeds": _seeds, "sweep_seeds": _seeds, "gradat_seeds": _seeds, "design_seeds": _seeds, "ptq_seeds": _seeds,
    "qat_seeds": _seeds, "fractions": _fractions, "ratios": _fractions,
    "image_size": _pos_int, "student_divs": _divs, "roar_div": _pos_int, "device": _device,
    # the benchmark: the data (a folder, generated first when ``synth`` holds SynthConfig fields; the input
    # size; for the ImageNet chapter the segmentation masks' file), the layer whose maps are scored, and the
    # premise guards every network trained on it must pass (apnb.guards)
    "benchmark": _recipe({"root": _path, "synth": _synth, "image_size": _pos_int, "gtsegs": _path,
                          "eval_layer": _layer, "guards": _guards, "dataset": _dataset},
                         ("root", "synth", "image_size", "eval_layer", "guards")),
    "matching": _recipe({"layer": _layer, "p": _p, "beta": _beta}, ("layer", "p", "beta")),
    "kd": _recipe({"div": _pos_int, "T": _positive, "alpha": _unit, "train": _train}, ("div", "T", "alpha", "train")),
    # the pruning criterion: l1 (Li et al., the paper) or lrp (pruning by explaining, Yeom et al. 2021)
    "structured": _recipe({"rate": _prob, "layers": _layers, "finetune": _train, "criterion": _criterion,
                           "reference_images": _pos_int}, ("rate", "finetune")),
    # 05 prunes one-shot at each of its ``rates``: its recipe may leave the rate out
    "unstructured": _recipe({"rate": _prob, "iterations": _pos_int, "finetune": _train}, ("iterations", "finetune")),
}


# a teacher (:func:`apnb.recipes.setup`): the network, ImageNet initialisation, the cue-free
# pretraining phase (synthetic data only) and the training on the cued split
_TEACHER = _recipe({"spec": _spec, "pretrained": _bool, "pretrain": _train, "train": _train}, ("spec", "train"))


def _rule(name: str, default=None):
    if name in RULES:
        return RULES[name]
    if name.endswith("_recipe"):
        return _TEACHER
    if name.endswith(("_train", "_pretrain", "_finetune")) and not name.startswith("n_"):
        return _train
    if name.endswith("_spec"):
        return _spec
    return None


def _non_finite(value, where: str):
    """The first non-finite float inside ``value`` (nested mappings and lists), as ``(path, value)``."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, x in items:
        hit = _non_finite(x, f"{where}.{k}" if isinstance(value, dict) else f"{where}[{k}]")
        if hit:
            return hit
    return None


def check(notebook: str, params: dict, declared: dict | None = None) -> None:
    """Validate ``params`` of ``notebook`` (``declared``: the defaults of its parameters cell); raise
    :class:`ParameterError` (one line) on the first bad value."""
    declared = declared or {}
    for name, value in params.items():
        hit = _non_finite(value, name)
        if hit:
            raise ParameterError(f"{notebook}: parameter {hit[0]} = {hit[1]} is not a finite number: give a finite "
                                 f"value")
        rule = _rule(name, declared.get(name))
        if rule is None:
            continue
        try:
            rule(value)
        except (ValueError, TypeError) as e:
            raise ParameterError(f"{notebook}: parameter {name} = {value!r} is invalid: {e}") from None
    bench = params.get("benchmark") or {}
    if bench.get("root") and not bench.get("synth") and not resolve_path(bench["root"]).exists():
        raise ParameterError(f"{notebook}: parameter benchmark.root = {bench['root']!r} does not exist (with synth "
                             f"off, the real dataset must be there: see the reproduce page)")
    if bench.get("gtsegs") and not resolve_path(bench["gtsegs"]).exists():
        raise ParameterError(f"{notebook}: parameter benchmark.gtsegs = {bench['gtsegs']!r} does not exist: give "
                             f"the path of the file or null")
    if (str(params.get("dataset", "")).startswith("cifar") and params.get("cifar_root")
            and not resolve_path(params["cifar_root"]).exists()):
        raise ParameterError(f"{notebook}: parameter cifar_root = {params['cifar_root']!r} does not exist: put the "
                             f"CIFAR python batches there")
    kd = params.get("kd")
    if isinstance(kd, dict) and "student_divs" in params and kd.get("div") not in params["student_divs"]:
        raise ParameterError(f"{notebook}: parameter kd.div = {kd.get('div')} must be one of student_divs "
                             f"{params['student_divs']}")
