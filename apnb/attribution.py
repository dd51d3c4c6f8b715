"""One API for the attribution methods of the paper's Tables 8-10 and the LPI supplement.

``attribute(model, x, target, method, **options) -> maps [B,H,W]`` at input resolution.

==================  =====================================================================================
method              implementation
==================  =====================================================================================
``gradcam``         :func:`apnb.gradcam.gradcam` at ``layer`` (default ``last_conv``), bilinear upsampling
``ebp``             Excitation Backprop: zennit's ``ExcitationBackprop`` composite, relevance initialised
                    with the one-hot target; BatchNorm folded into the convs by zennit's canonizers
``lrp``             LRP alpha1-beta0: zennit ``AlphaBeta(1, 0)`` on conv/linear, relevance initialised with
                    the target logit (the authors' ``relprop(R=output*grad_out, alpha=1)``), BN folded
``saliency``        ``|d y_t / d x|`` (captum ``Saliency``), max over channels
``inputgrad``       ``x * d y_t / d x`` (captum ``InputXGradient``)
``ig``              Integrated Gradients, black baseline (captum), ``n_steps`` (default 32)
``eg``              Expected Gradients: captum ``GradientShap`` with ``stdevs=0`` and training images as
                    baselines (``baselines`` option, required), ``n_samples`` (default 16)
==================  =====================================================================================

Pixel maps (all but Grad-CAM) are summed over the colour channels. Every method leaves the model as it
found it: same mode, no hooks, no parameter gradients, BatchNorm unfolded.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gradcam import frozen, gradcam

METHODS = ("gradcam", "ebp", "lrp", "saliency", "inputgrad", "ig", "eg")


def _canonizers(model):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    if hasattr(model, "layer4"):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def _zennit(model, x, target, composite, init: str):
    from zennit.attribution import Gradient

    with torch.enable_grad(), frozen(model):
        with Gradient(model=model, composite=composite) as attributor:
            xx = x.detach().clone().requires_grad_(True)
            out = model(xx)
            onehot = F.one_hot(target, out.shape[1]).to(out.dtype)
            grad_out = onehot * out.detach() if init == "logit" else onehot
            out2, rel = attributor(xx, grad_out)
    return rel.sum(1).detach()


def _lrp_composite(model):
    from zennit.composites import LayerMapComposite
    from zennit.rules import AlphaBeta, Norm, Pass
    from zennit.types import Activation, AvgPool, Convolution

    return LayerMapComposite(layer_map=[(Activation, Pass()), (Convolution, AlphaBeta(1.0, 0.0)),
                                        (nn.Linear, AlphaBeta(1.0, 0.0)), (AvgPool, Norm())],
                             canonizers=_canonizers(model))


def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str = "gradcam", **options):
    """Attribution maps ``[B,H,W]`` of ``target`` classes for inputs ``x``. ``model`` should be in eval mode."""
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}: use one of {', '.join(METHODS)}")
    target = torch.as_tensor(target, device=x.device).long()
    if target.dim() == 0:
        target = target.expand(len(x))
    was = model.training
    try:
        if method == "gradcam":
            maps, _ = gradcam(model, x, options.get("layer", "last_conv"), target, upsample=True)
            return maps
        if method == "ebp":
            from zennit.composites import ExcitationBackprop

            return _zennit(model, x, target, ExcitationBackprop(canonizers=_canonizers(model)), "prob")
        if method == "lrp":
            return _zennit(model, x, target, _lrp_composite(model), "logit")
        from captum.attr import GradientShap, InputXGradient, IntegratedGradients, Saliency

        with torch.enable_grad(), frozen(model):
            xx = x.detach().clone().requires_grad_(True)
            if method == "saliency":
                a = Saliency(model).attribute(xx, target=target, abs=True)
                return a.amax(1).detach()
            if method == "inputgrad":
                a = InputXGradient(model).attribute(xx, target=target)
            elif method == "ig":
                a = IntegratedGradients(model).attribute(xx, baselines=torch.zeros_like(xx), target=target,
                                                         n_steps=options.get("n_steps", 32),
                                                         internal_batch_size=options.get("internal_batch_size", 64))
            else:  # eg
                base = options.get("baselines")
                if base is None:
                    raise ValueError("method 'eg' needs baselines=<a tensor of training images>")
                a = GradientShap(model).attribute(xx, baselines=base.to(x.device), target=target, stdevs=0.0,
                                                  n_samples=options.get("n_samples", 16))
            return a.sum(1).detach()
    finally:
        model.train(was)
        for p in model.parameters():
            p.grad = None
