"""Differentiable Grad-CAM at named layers (Selvaraju et al.; paper Eq. 4-5).

``M = V(sum_c u_c A_c)`` with ``u_c = mean_{h,w} d y_t / d A_{h,w,c}`` and V = ReLU.

How the cost is kept down:

- Activations are captured by forward hooks that live only inside a ``with`` block (:class:`Tap`), so the
  model leaves every call as it entered (same mode, no hooks).
- ``d y_t / d A`` is taken with ``torch.autograd.grad(y_t, A)``: autograd runs only the part of the graph
  between the logits and ``A`` (the network *after* the layer), and with ``create_graph=True`` the double
  backward of the matching loss also only touches that part plus the path to the parameters. The authors
  instead call ``out.backward(create_graph=True)`` through the whole student; ``benchmarks/`` compares.
- For a frozen teacher, ``Tap(detach=True)`` cuts the graph at the layer, so nothing before it is
  recorded and no parameter gradient is ever built.

The channel weight is the spatial *mean* of the gradient, as in Grad-CAM and captum's ``LayerGradCam``.
The authors' code uses the spatial *sum*; after the normalisation of Eq. 2 the loss is the same.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import ModelError, get_module, layer_alias, layer_paths


class Tap:
    """Capture the outputs of named modules during a forward pass; hooks removed on exit.

    With ``detach=True`` the *first* captured output (in forward order) is replaced by a detached leaf that
    requires grad: the graph before it is not recorded, but gradients with respect to every captured
    activation can still be taken (later layers stay connected to the first).
    """

    def __init__(self, model: nn.Module, layers, detach: bool = False):
        if isinstance(model, nn.parallel.DistributedDataParallel):  # hook the wrapped module's layers
            model = model.module
        self.model = model
        self.layers = layer_paths(model, layers)
        self.detach = detach
        self.acts: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        mods = dict(self.model.named_modules())
        for name in self.layers:
            self._handles.append(mods[name].register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name):
        def fn(module, inp, out):
            if not torch.is_tensor(out) or out.dim() != 4:
                raise ModelError(f"layer {name!r} outputs {tuple(out.shape) if torch.is_tensor(out) else type(out)}:"
                                 f" attribution matching needs a [B,C,H,W] feature map (pick a conv/pool layer)")
            if self.detach and not self.acts:
                out = out.detach().requires_grad_(True)
            self.acts[name] = out
            return out
        return fn

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def __getitem__(self, name):
        return self.acts[layer_alias(self.model, name)]


@contextmanager
def frozen(model: nn.Module):
    """Temporarily set ``requires_grad=False`` on every parameter (restored on exit)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


@contextmanager
def mode(model: nn.Module, train: bool):
    was = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(was)


def target_scores(logits: torch.Tensor, target: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Sum over the batch of the target logits (``target`` [B] or [B,k]); optionally centred logits."""
    if center:
        logits = logits - logits.mean(1, keepdim=True)
    t = target if target.dim() == 2 else target[:, None]
    return logits.gather(1, t).sum()


def weighted_maps(acts, grads, relu=True, per_neuron=False, weights_mask=None):
    """Collapse ``A`` with Grad-CAM channel weights (Eq. 5), or per neuron as ``sum_c A*dA`` (reviewer 1).

    ``weights_mask`` [B,C] multiplies the channel weights (SSWA's Bernoulli masks, Eq. 6).
    """
    if per_neuron:
        m = acts * grads
        if weights_mask is not None:
            m = m * weights_mask[:, :, None, None]
        m = m.sum(1)
    else:
        u = grads.mean((2, 3))
        if weights_mask is not None:
            u = u * weights_mask
        m = torch.einsum("bc,bchw->bhw", u, acts)
    return F.relu(m) if relu else m


def gradcam(model: nn.Module, x: torch.Tensor, layer: str = "last_conv", target: torch.Tensor | None = None,
            relu: bool = True, create_graph: bool = False, upsample: bool = False, center: bool = False):
    """Grad-CAM maps ``[B,h,w]`` (or ``[B,H,W]`` with ``upsample``) and the logits.

    ``target`` defaults to the model's own top-1 class. With ``create_graph`` the maps are differentiable
    with respect to the parameters; otherwise the graph before the layer is not recorded at all. The
    model's mode is not changed: call it in the mode you want (eval for evaluation).
    """
    ctx = Tap(model, layer, detach=not create_graph)
    with torch.enable_grad(), ctx:
        if create_graph:
            logits = model(x)
        else:
            with frozen(model):
                logits = model(x)
        acts = ctx.acts[ctx.layers[0]]
        if target is None:
            target = logits.argmax(1)
        g, = torch.autograd.grad(target_scores(logits, target, center), acts, create_graph=create_graph)
        maps = weighted_maps(acts, g, relu=relu)
    if not create_graph:
        maps, logits = maps.detach(), logits.detach()
    if upsample:
        maps = F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return maps, logits
