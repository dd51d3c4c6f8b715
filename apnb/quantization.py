"""Int8 quantization of the VGG networks with ``torch.ao`` (eager mode): study 7 of the book.

The paper says its framework applies to any compression (Sec. 3) but tests only distillation and pruning.
Here the full network itself is quantized, two ways, with and without the matching regularizer:

- **PTQ** (post-training quantization): conv-bn-relu triples are fused, observers (min/max) are calibrated
  on training images in eval mode, nothing is trained.
- **QAT** (quantization-aware training): the fused network is fine-tuned with fake quantization in the
  forward pass and the straight-through estimator in the backward pass (moving-average min/max observers,
  BatchNorm statistics frozen), with the task loss, or with task loss + beta * matching against the fp32
  network (Eq. 2).

Two forms of the same quantized network are kept:

- the **fake-quant network** (:func:`prepare`): float tensors rounded to the int8 grid at every weight and
  activation. It is differentiable, so Grad-CAM (and the matching loss) run on it unchanged. Its gradient
  through each rounding is the straight-through estimate (zero outside the clamping range), so a Grad-CAM
  map of a quantized network is the int8 activation weighted by this estimate: there is no exact gradient
  of a step function to take.
- the **int8 network** (:func:`to_int8`, ``torch.ao.quantization.convert``): real quantized kernels, CPU
  only. :func:`agreement` checks that the fake-quant network computes what the int8 network computes; the
  book reports the deployed network's mAP from it.

``bits`` < 8 gives the fake-quant network fewer levels (activations in [0, 2^b - 1], weights symmetric in
[-(2^(b-1) - 1), 2^(b-1) - 1]). That network *is* the low-precision network; its :func:`to_int8` is not,
because the int8 kernels requantize every output to the full 8-bit range instead of clamping to 2^b levels
(measured: up to a third of the logit range apart after QAT at 4 bits), so check agreement at 8 bits only.
The int8 kernels are oneDNN's (or qnnpack's where oneDNN is missing). On the x86/fbgemm engine the
activations get 7 bits at ``bits=8`` (``reduce_range``, as torch's own x86 qconfig).
"""
from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn as nn
from torch.ao import quantization as tq

from .models import ModelError, layer_alias

# oneDNN by default: after QAT, fbgemm's kernels (torch's "x86" default) disagreed with the fake-quant network
# on the demo teacher while onednn and qnnpack agreed (benchmarks/check_qengines.py); $APNB_QENGINE overrides.
_SUPPORTED = torch.backends.quantized.supported_engines
ENGINE = os.environ.get("APNB_QENGINE") or next(e for e in ("onednn", "qnnpack", "x86", "fbgemm") if e in _SUPPORTED)


class QuantReady(nn.Module):
    """A torchvision VGG between ``QuantStub`` and ``DeQuantStub``, with the same module paths.

    ``features.<i>`` keeps its index after fusion (the BN and ReLU slots become ``Identity``), so the
    layer names ``last_conv`` / ``last_pool`` of the float network are resolved once, before fusion, and
    stored in ``apnb_layer_aliases`` (read by :func:`apnb.models.layer_alias`).
    """

    def __init__(self, vgg: nn.Module):
        super().__init__()
        if not isinstance(getattr(vgg, "features", None), nn.Sequential):
            raise ModelError("quantization supports the VGG networks (features/avgpool/classifier); got "
                             f"{type(vgg).__name__}: use arch vgg16_bn or vgg11_bn")
        self.apnb_layer_aliases = {n: layer_alias(vgg, n) for n in ("last_conv", "last_pool", "conv5_3", "pool5", "conv4_3")}
        self.apnb_spec = dict(getattr(vgg, "apnb_spec", {}))
        self.quant = tq.QuantStub()
        self.features, self.avgpool, self.classifier = vgg.features, vgg.avgpool, vgg.classifier
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.avgpool(self.features(self.quant(x)))
        return self.dequant(self.classifier(torch.flatten(x, 1)))


def qconfig(bits: int = 8, mode: str = "qat", engine: str | None = None) -> tq.QConfig:
    """Fake-quant qconfig: per-tensor affine activations, per-channel symmetric weights.

    ``mode="ptq"``: plain min/max observers (calibration); ``"qat"``: moving-average min/max (training).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: use 2..8 (int8 storage)")
    if mode not in ("ptq", "qat"):
        raise ValueError(f"mode={mode!r}: use ptq or qat")
    act_max = 2 ** bits - 1
    if bits == 8 and (engine or ENGINE) in ("x86", "fbgemm"):
        act_max = 127  # reduce_range: 7-bit activations on x86, as torch.ao's default x86 qconfig
    w_max = 2 ** (bits - 1) - 1
    act_obs = tq.MinMaxObserver if mode == "ptq" else tq.MovingAverageMinMaxObserver
    w_obs = tq.PerChannelMinMaxObserver if mode == "ptq" else tq.MovingAveragePerChannelMinMaxObserver
    act = tq.FakeQuantize.with_args(observer=act_obs, quant_min=0, quant_max=act_max, dtype=torch.quint8,
                                    qscheme=torch.per_tensor_affine)
    wt = tq.FakeQuantize.with_args(observer=w_obs, quant_min=-w_max, quant_max=w_max, dtype=torch.qint8,
                                   qscheme=torch.per_channel_symmetric, ch_axis=0)
    return tq.QConfig(activation=act, weight=wt)


def _fusion_groups(features: nn.Sequential) -> list[list[str]]:
    groups = []
    for i in range(len(features) - 2):
        if (isinstance(features[i], nn.Conv2d) and isinstance(features[i + 1], nn.BatchNorm2d)
                and isinstance(features[i + 2], nn.ReLU)):
            groups.append([f"features.{i}", f"features.{i + 1}", f"features.{i + 2}"])
    return groups


def prepare(model: nn.Module, example: torch.Tensor, bits: int = 8, mode: str = "qat",
            engine: str | None = None) -> QuantReady:
    """The fake-quant network of a float VGG (a copy; ``model`` is not changed).

    Fuses conv-bn-relu, inserts fake quantization (``prepare_qat``) and runs one forward pass on
    ``example``, a batch of real images: every observer buffer gets its final shape (a stored state dict
    can then be loaded) and QAT starts from these images' ranges. BatchNorm statistics are frozen.
    Observers stay on: calibrate (PTQ) or train (QAT), then call :func:`freeze`. ``engine``: the int8
    kernels it is meant for (default :data:`ENGINE`; fbgemm/x86 get 7-bit activations).
    """
    engine = engine or ENGINE
    if engine not in _SUPPORTED:
        raise RuntimeError(f"quantized engine {engine!r} (APNB_QENGINE) is not in this torch build: use one of {_SUPPORTED}")
    torch.backends.quantized.engine = engine
    q = QuantReady(copy.deepcopy(model).cpu().train())
    tq.fuse_modules_qat(q, _fusion_groups(q.features), inplace=True)
    q.qconfig = qconfig(bits, mode, engine)
    tq.prepare_qat(q, inplace=True)
    q.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
    q.eval()
    with torch.no_grad():
        q(example.cpu())
    q.apnb_spec = dict(q.apnb_spec, quant={"bits": bits, "mode": mode})
    q.apnb_engine = engine
    return q


def freeze(q: nn.Module) -> nn.Module:
    """Observers off, fake quantization on: the network now computes with fixed int8 parameters."""
    q.apply(tq.disable_observer)
    q.apply(tq.enable_fake_quant)
    return q.eval()


@torch.no_grad()
def calibrate(q: nn.Module, x: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """PTQ: observe the activation and weight ranges on images ``x`` in eval mode, then :func:`freeze`."""
    if len(x) == 0:
        raise ValueError("calibration needs at least one image")
    q.eval().cpu()
    q.apply(tq.enable_observer)
    q.apply(tq.disable_fake_quant)  # observe the float network's ranges
    for i in range(0, len(x), batch_size):
        q(x[i:i + batch_size])
    return freeze(q)


def to_int8(q: nn.Module) -> nn.Module:
    """The deployed int8 network (real quantized kernels, CPU) of a frozen fake-quant network, for the
    engine it was prepared for."""
    torch.backends.quantized.engine = getattr(q, "apnb_engine", ENGINE)
    with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated in favour of torchao (2.13)
        warnings.simplefilter("ignore", UserWarning)
        return tq.convert(copy.deepcopy(q).cpu().eval(), inplace=False)


@torch.no_grad()
def agreement(q: nn.Module, int8: nn.Module, x: torch.Tensor, batch_size: int = 128) -> dict:
    """How closely the fake-quant network reproduces the int8 network on ``x``.

    ``max_abs``: largest logit difference; ``rel``: that over the logits' range; ``top1``: fraction of images
    with the same top-1 class.
    """
    q = q.eval().cpu()
    a = torch.cat([q(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    b = torch.cat([int8(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    diff = (a - b).abs().max().item()
    return {"max_abs": diff, "rel": diff / max((b.max() - b.min()).item(), 1e-12),
            "top1": (a.argmax(1) == b.argmax(1)).float().mean().item()}
