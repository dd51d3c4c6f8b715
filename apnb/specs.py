"""The library's configuration dataclasses and the names of what it can build, without torch.

A notebook's parameters are checked (:mod:`apnb.validate`) before its kernel starts, and that check must
answer in well under two seconds: it may not import torch or torchvision (about 7 s on a laptop CPU). So
the classes the check hands each value to live here, and the modules that use them re-export them:
:class:`TrainConfig` (:mod:`apnb.engine`), :class:`MatchingConfig` with the kinds of Eq. (1)-(6)
(:mod:`apnb.matching`), :class:`Guards` (:mod:`apnb.guards`). The architecture options and the method
names below are the ones :mod:`apnb.models`, :mod:`apnb.recipes` and :mod:`apnb.attribution` accept;
``tests/test_specs.py`` checks that they agree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from . import kinds as _kinds

# ------------------------------------------------------------------ training (apnb.engine)

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "sgd"  # sgd (the paper) | adamw (CPU demo profiles: converges in fewer steps)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "multistep"  # multistep | cosine | onecycle | constant
    milestones: tuple = ()
    gamma: float = 0.1
    batch_size: int = 64
    seed: int = 0
    num_workers: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto: bf16 only where it is faster (apnb.precision)
    clip_grad: float | None = None

    def __post_init__(self):
        self.milestones = tuple(self.milestones)
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"epochs={self.epochs}, lr={self.lr}, batch_size={self.batch_size}: need epochs >= 0, "
                             f"lr > 0 and batch_size >= 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: use sgd or adamw")
        if self.schedule not in ("multistep", "cosine", "onecycle", "constant"):
            raise ValueError(f"schedule={self.schedule!r}: use multistep, cosine, onecycle or constant")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: use {', '.join(PRECISIONS)}")


# ------------------------------------------------------------------ attribution matching (apnb.matching)

# the registered kinds (apnb.kinds, torch-free): their names and default weights on the one scale
KINDS = tuple(_kinds.REGISTRY)
DEFAULT_BETA = {k: v.beta for k, v in _kinds.REGISTRY.items()}
AUTHORS_BETA = {k: v.authors_beta for k, v in _kinds.REGISTRY.items()}


@dataclass
class MatchingConfig:
    kind: str = "none"
    beta: float | None = None
    layers: tuple = ("last_conv",)
    p: float = 0.3
    topk: int = 1
    relu: bool = True
    center_logits: bool = False
    per_neuron: bool = False
    mask: str = "teacher"
    reduction: str = "image"  # the one scale, 2 (1 - cos) per image (apnb.kinds); "mean": the sources' own
    cam_size: int = 2  # CAT-KD: the side its class activation maps are average-pooled to (the authors' default)

    def __post_init__(self):
        if isinstance(self.layers, str):
            self.layers = (self.layers,)
        self.layers = tuple(self.layers)
        kind = _kinds.get(self.kind)  # the live registry: a kind registered later is known here too
        if self.reduction not in ("image", "mean"):
            raise ValueError(f"reduction={self.reduction!r}: use image (one scale for every kind, 2 (1 - cos) per "
                             f"image) or mean (each source's own reduction, the paper's beta's)")
        if self.beta is None:
            self.beta = kind.beta if self.reduction == "image" else kind.authors_beta
        if kind.layers:  # a kind that matches where its method says (attention transfer: the stage ends)
            self.layers = tuple(kind.layers)
        if not self.beta >= 0:
            raise ValueError(f"beta={self.beta}: the regularizer weight must be >= 0")
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"p={self.p}: the SSWA drop probability must be in [0, 1)")
        if self.topk < 1:
            raise ValueError(f"topk={self.topk}: match at least the top-1 class")
        if self.mask not in ("teacher", "both", "independent"):
            raise ValueError(f"mask={self.mask!r}: use teacher, both or independent")
        if not (isinstance(self.cam_size, int) and self.cam_size >= 1):
            raise ValueError(f"cam_size={self.cam_size}: the pooled class maps need a side of at least 1")
        if not self.layers:
            raise ValueError("layers is empty: name at least one layer, e.g. last_conv")

    # the fields every store key has held since the first store (apnb.store): a field added after them enters
    # a key only where it differs from its default, so adding one leaves every stored network's key as it is
    KEYED_ALWAYS = ("kind", "beta", "layers", "p", "topk", "relu", "center_logits", "per_neuron", "mask", "reduction")

    def to_dict(self):
        """The configuration as its store key holds it (see ``KEYED_ALWAYS``). A kind without a matching term
        (naive) keys the first store's ``reduction``, "mean": the scale changes nothing in its objective, so its
        networks keep their keys."""
        defaults = {f.name: f.default for f in fields(self)}
        out = {k: v for k, v in asdict(self).items() if k in self.KEYED_ALWAYS or v != defaults[k]}
        if _kinds.get(self.kind).teacher == "logits":
            out["reduction"] = "mean"
        return out


# a compression method of a chapter (``methods``, ``structured_methods``, ``qat_methods``): ``naive`` (no
# matching term) or a registered matching kind (apnb.kinds; apnb.recipes.Job.matching)
COMPRESSION_METHODS = ("naive",) + tuple(k for k in KINDS if k != "none")
# ``<kind>@paper``: the same kind at the weight its paper states, on the one scale (Kind.beta), beside the
# weight the book's rule chose (the recipe's ``matching.beta``); the verdicts issue's second row per method
AT_PAPER = "@paper"
PAPER_WEIGHT_METHODS = tuple(k + AT_PAPER for k in KINDS if k != "none")


def split_method(name: str) -> tuple[str, bool]:
    """``("sswa", True)`` for ``"sswa@paper"``, ``("sswa", False)`` for ``"sswa"``."""
    return (name[: -len(AT_PAPER)], True) if name.endswith(AT_PAPER) else (name, False)

# ------------------------------------------------------------------ premise guards (apnb.guards)


@dataclass
class Guards:
    plateau: float | None = 0.8
    teacher_map: float | None = None
    teacher_map_nocue: float | None = None
    student_over_chance: float | None = 0.05

    def __post_init__(self):
        for k, v in asdict(self).items():
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"guards.{k}={v}: must be in [0, 1] or null (off)")

    @classmethod
    def of(cls, g: "Guards | dict | None") -> "Guards":
        if isinstance(g, Guards):
            return g
        if g is None:
            return cls(None, None, None, None)
        unknown = sorted(set(g) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"guards: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**g)


# ------------------------------------------------------------------ networks and attributions

# the options of each architecture's builder in apnb.models (vgg, resnet34, PreActResNet), ``arch`` aside
ARCH_OPTIONS = {
    "vgg16_bn": ("num_classes", "width_div", "n_pools", "head_pool", "dropout", "head"),
    "vgg11_bn": ("num_classes", "width_div", "n_pools", "head_pool", "dropout", "head"),
    "resnet34": ("num_classes", "width_div", "maxpool"),
    "preact_resnet18": ("num_classes", "width_div"),
}

# the kinds of data a benchmark mapping names (apnb.data.splits.load_data)
DATASETS = ("voc", "imagenet", "cifar")

# apnb.attribution.attribute's methods
ATTRIBUTION_METHODS = ("gradcam", "ebp", "lrp", "rap", "saliency", "inputgrad", "ig", "eg", "agi", "lpi", "occlusion",
                       "scorecam", "ablationcam", "gradcampp")
