"""Networks of the paper: VGG16_bn with the VOC head, width-divided students, VGG-11, ResNet34.

- ``vgg16_bn`` with the authors' VOC head: ``avgpool(7) -> Dropout -> Linear(512*7*7, K)`` (the authors
  replace torchvision's 3-layer classifier by Dropout + Linear(25088, 20)). With K=20 this has
  15,224,916 parameters, the paper's "15.22M".
- Students VGG16/2, /4, /8: every channel width divided by 2, 4, 8 (``width_div``).
- CPU-sized variants use the same code with ``width_div`` (e.g. 4 for the demo teacher), small inputs and
  ``n_pools`` < 5 so that the last conv map stays 8x8 at 64 px; ``head_pool`` is the avgpool output size
  (7 in the paper, 1 = global average pooling for small inputs).
- All ReLUs are built with ``inplace=False`` so that a hooked activation is never overwritten.

Layer names are module paths (``features.42``); :func:`layer_alias` resolves ``last_conv`` (the ReLU
after the last conv, the paper's conv5_3) and ``last_pool`` (pool5, the authors' training layer).
"""
from __future__ import annotations

import collections
import copy
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models import resnet34 as tv_resnet34
from torchvision.models.vgg import VGG, cfgs

VGG_CFG = {"vgg11_bn": cfgs["A"], "vgg16_bn": cfgs["D"]}
TV_WEIGHTS = {"vgg16_bn": "vgg16_bn-6c64b313.pth", "vgg11_bn": "vgg11_bn-6002323d.pth",
              "resnet34": "resnet34-b627a593.pth"}


class ModelError(ValueError):
    """A bad model specification or checkpoint."""


def _vgg_features(cfg, width_div: int, n_pools: int) -> nn.Sequential:
    pools_seen, layers, c_in = 0, [], 3
    n_total = sum(1 for v in cfg if v == "M")
    for v in cfg:
        if v == "M":
            pools_seen += 1
            # drop the *last* (n_total - n_pools) pools for small inputs
            if pools_seen <= n_pools or pools_seen == n_total:
                layers.append(nn.MaxPool2d(2, 2) if pools_seen <= n_pools else nn.Identity())
            continue
        c = max(1, int(v) // width_div)
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=False)]
        c_in = c
    return nn.Sequential(*layers)


def vgg(arch="vgg16_bn", num_classes=20, width_div=1, n_pools=5, head_pool=7, dropout=0.5, head="voc") -> VGG:
    """torchvision VGG with BatchNorm, channel widths divided by ``width_div`` and the paper's VOC head.

    ``head="torchvision"`` keeps torchvision's 3-layer ImageNet classifier instead (the ImageNet experiments
    of supplement B prune the ImageNet VGG16 itself)."""
    if arch not in VGG_CFG:
        raise ModelError(f"unknown VGG arch {arch!r}: use one of {sorted(VGG_CFG)}")
    if width_div < 1 or not 1 <= n_pools <= 5:
        raise ModelError(f"width_div={width_div}, n_pools={n_pools}: need width_div >= 1 and 1 <= n_pools <= 5")
    feats = _vgg_features(VGG_CFG[arch], width_div, n_pools)
    m = VGG(feats, num_classes=num_classes, init_weights=True)
    c_last = max(1, 512 // width_div)
    m.avgpool = nn.AdaptiveAvgPool2d(head_pool)
    if head == "torchvision":
        m.classifier = nn.Sequential(nn.Linear(c_last * head_pool * head_pool, 4096), nn.ReLU(False), nn.Dropout(dropout),
                                     nn.Linear(4096, 4096), nn.ReLU(False), nn.Dropout(dropout), nn.Linear(4096, num_classes))
    elif head == "voc":
        m.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_last * head_pool * head_pool, num_classes))
        nn.init.normal_(m.classifier[1].weight, 0, 0.01)
        nn.init.zeros_(m.classifier[1].bias)
    else:
        raise ModelError(f"head={head!r}: use voc or torchvision")
    m.apnb_spec = dict(arch=arch, num_classes=num_classes, width_div=width_div, n_pools=n_pools,
                       head_pool=head_pool, dropout=dropout, **({"head": head} if head != "voc" else {}))
    return m


def resnet34(num_classes=1000, width_div: int = 1, maxpool: bool = True) -> nn.Module:
    """torchvision's ResNet34; ``width_div`` > 1 divides every stage width (64..512) for CPU-sized runs,
    ``maxpool=False`` drops the stem's max-pooling so that a 64 px input still gives a 4x4 last conv map.

    The slim variant is still a torchvision ``ResNet`` of ``BasicBlock`` s (same module names, so zennit's
    ResNet canonizer and torch-pruning treat it like the real one).
    """
    if width_div == 1:
        m = tv_resnet34(num_classes=num_classes)
    else:
        from torchvision.models.resnet import BasicBlock, ResNet

        m = ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)
        w = [max(64 // width_div, 4), max(128 // width_div, 4), max(256 // width_div, 4), max(512 // width_div, 4)]
        m.inplanes = w[0]
        m.conv1 = nn.Conv2d(3, w[0], kernel_size=7, stride=2, padding=3, bias=False)
        m.bn1 = nn.BatchNorm2d(w[0])
        m.layer1 = m._make_layer(BasicBlock, w[0], 3)
        m.layer2 = m._make_layer(BasicBlock, w[1], 4, stride=2)
        m.layer3 = m._make_layer(BasicBlock, w[2], 6, stride=2)
        m.layer4 = m._make_layer(BasicBlock, w[3], 3, stride=2)
        m.fc = nn.Linear(w[3], num_classes)
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    if not maxpool:
        m.maxpool = nn.Identity()
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    m.apnb_spec = dict(arch="resnet34", num_classes=num_classes, **({"width_div": width_div} if width_div != 1 else {}),
                       **({"maxpool": False} if not maxpool else {}))
    return m


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity mappings"): BN-ReLU-conv twice plus the shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(c_out), nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None)

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return out + sc


class PreActResNet(nn.Module):
    """PreActResNet-18 for 32 px CIFAR images, the network of the LPI supplement's ROAR/DiffROAR runs.

    A 3x3 stem (no max-pooling), four stages of two :class:`PreActBlock` (widths 64..512, divided by
    ``width_div``), a final BN-ReLU (``relu``, the last-conv layer for Grad-CAM), global average pooling and
    a linear layer. torchvision has no pre-activation ResNet, hence this small definition.
    """

    def __init__(self, num_classes: int = 10, width_div: int = 1):
        super().__init__()
        w = [max(c // width_div, 4) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        stages, c_in = [], w[0]
        for i, c in enumerate(w):
            stages.append(nn.Sequential(PreActBlock(c_in, c, 1 if i == 0 else 2), PreActBlock(c, c)))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn, self.relu = nn.BatchNorm2d(w[3]), nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.apnb_spec = dict(arch="preact_resnet18", num_classes=num_classes,
                              **({"width_div": width_div} if width_div != 1 else {}))

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(self.relu(self.bn(x))), 1))


# A seeded build is a function of (spec, seed): small networks are kept, and a later build of the same pair
# is a copy (identical tensors). Building a VGG costs about 1 s whatever its width, since torchvision's
# constructor first makes and initialises its 25088x4096 ImageNet classifier, and every student of one seed
# shares one initialisation.
_BUILT: "collections.OrderedDict[tuple, nn.Module]" = collections.OrderedDict()
_CACHE_ENTRIES, _CACHE_MAX_PARAMS = 16, 5_000_000


def build(spec: dict, seed: int | None = None) -> nn.Module:
    """Build from a spec dict (``arch`` plus the keyword arguments of :func:`vgg` or :func:`resnet34`).

    ``seed``: the initial weights are drawn from a generator seeded with it, inside a forked RNG, so a
    network's initialisation is a function of its recipe's seed alone, whatever ran before it in the
    process, and the global RNG is left as it was. ``None`` draws from the global RNG (legacy).
    """
    if seed is not None:
        key = (json.dumps(spec, sort_keys=True, default=str), int(seed))
        if key in _BUILT:
            _BUILT.move_to_end(key)
            return copy.deepcopy(_BUILT[key])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = build(spec, None)
        if count_params(model) <= _CACHE_MAX_PARAMS:
            _BUILT[key] = copy.deepcopy(model)
            while len(_BUILT) > _CACHE_ENTRIES:
                _BUILT.popitem(last=False)
        return model
    spec = dict(spec)
    arch = spec.pop("arch", None)
    if arch in VGG_CFG:
        return vgg(arch, **spec)
    if arch == "resnet34":
        return resnet34(**spec)
    if arch == "preact_resnet18":
        return PreActResNet(**spec)
    raise ModelError(f"unknown arch {arch!r}: use vgg16_bn, vgg11_bn, resnet34 or preact_resnet18")


def torch_cache_weights(arch: str) -> Path:
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return hub / TV_WEIGHTS[arch]


def load_imagenet_weights(model: nn.Module, arch: str) -> nn.Module:
    """Copy ImageNet-pretrained torchvision weights (from the local torch cache) into ``model``.

    Tensors are copied where name and shape match: the features always; the classifier only for a
    1000-class torchvision head (``vgg(..., head="torchvision")``, ``resnet34(1000)``), the VOC head stays as
    initialised. Stops with a clear message when the file is absent: never falls back silently to random
    initialisation.
    """
    if arch not in TV_WEIGHTS:
        raise ModelError(f"no pretrained torchvision weights known for {arch!r}")
    path = torch_cache_weights(arch)
    if not path.exists():
        raise ModelError(f"pretrained weights {path} not found: copy torchvision's {TV_WEIGHTS[arch]} into "
                         f"the torch cache (TORCH_HOME/hub/checkpoints) or set pretrained: false in the profile")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith(("features", "layer")) for k in keep):
        raise ModelError(f"weights {path} do not fit {arch} at this width: pretrained weights need width_div=1")
    model.load_state_dict(keep, strict=False)
    return model


def layer_alias(model: nn.Module, name: str) -> str:
    """Resolve ``last_conv`` / ``last_pool`` / ``conv5_3`` / ``pool5`` / ``conv4_3`` (VGG16) to a module path.

    At the CPU sizes (``n_pools`` < 5) the pool5 slot is an ``Identity``: ``last_pool`` is then the same
    tensor as ``last_conv``, and conv4_3 has conv5_3's resolution."""
    names = dict(model.named_modules())
    if name in names:
        return name
    aliases = getattr(model, "apnb_layer_aliases", None)  # set by apnb.quantization.QuantReady
    if aliases and name in aliases:
        return aliases[name]
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential):
        idx = list(range(len(feats)))
        convs = [i for i in idx if isinstance(feats[i], nn.Conv2d)]
        if name in ("last_conv", "conv5_3"):
            after = [i for i in idx if i > convs[-1] and isinstance(feats[i], nn.ReLU)]
            return f"features.{after[0]}"
        if name in ("last_pool", "pool5"):
            return f"features.{len(feats) - 1}"
        if name == "conv4_3" and len(convs) >= 4:  # VGG16: the last conv of block 4, the 4th conv from the end
            after = [i for i in idx if i > convs[-4] and isinstance(feats[i], nn.ReLU)]
            return f"features.{after[0]}"
    elif isinstance(model, PreActResNet) and name in ("last_conv", "last_pool"):
        return "relu"  # the final BN-ReLU after the last block
    elif hasattr(model, "layer4") and name in ("last_conv", "last_pool"):
        return "layer4"
    raise ModelError(f"unknown layer {name!r}: use a module path such as {list(names)[1:4]} or last_conv / last_pool")


def stage_ends(model: nn.Module) -> list[str]:
    """The module paths at the ends of a network's stages, where attention transfer matches (Zagoruyko &
    Komodakis): in a VGG, the ReLU before each pooling slot of ``features`` (a pool dropped at the CPU sizes
    merges two stages); in a ResNet, ``layer1`` to ``layer4``."""
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential):
        ends = [i - 1 for i in range(1, len(feats)) if isinstance(feats[i], (nn.MaxPool2d, nn.Identity))
                and isinstance(feats[i - 1], nn.ReLU)]
        return [f"features.{i}" for i in ends]
    names = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, n)]
    if names:
        return names
    raise ModelError(f"{type(model).__name__}: no stages known for 'stage_ends'; name the layers instead")


def layer_paths(model: nn.Module, names) -> list[str]:
    """:func:`layer_alias` of each name, with ``stage_ends`` expanded into :func:`stage_ends`."""
    out = []
    for n in ([names] if isinstance(names, str) else names):
        out += stage_ends(model) if n == "stage_ends" else [layer_alias(model, n)]
    return out


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The classifier of a global-pooling head (global average pool, optional dropout, one Linear layer), whose
    weights turn the last feature map into class activation maps (CAT-KD); None for any other head (the paper
    profile's VGG16 pools to 7x7 before its Linear(25088, K))."""
    pool = getattr(model, "avgpool", None)
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or pool.output_size not in (1, (1, 1)):
        return None
    head = getattr(model, "classifier", None) or getattr(model, "fc", None)
    if isinstance(head, nn.Sequential):
        layers = [m for m in head if not isinstance(m, nn.Dropout)]
        head = layers[0] if len(layers) == 1 else None
    return head if isinstance(head, nn.Linear) else None


def get_module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[layer_alias(model, name)]


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Parameter count; with ``nonzero`` only non-zero weights (after pruning masks are applied)."""
    if nonzero:
        return int(sum((p != 0).sum().item() for p in _effective_params(model)))
    return int(sum(p.numel() for p in _effective_params(model)))


def _effective_params(model):
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if name.endswith("_orig"):
                yield getattr(mod, name[:-5])
            else:
                yield p


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass (conv and linear layers), via forward hooks."""
    total = [0]

    def hook(m, i, o):
        if isinstance(m, nn.Conv2d):
            total[0] += o.numel() // o.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in hs:
            h.remove()
        model.train(was)
    return total[0]
