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
                    baselines (``baselines`` option, required), ``n_samples`` (default 16); captum draws the
                    baselines and path points from numpy's global generator, so each call seeds it with
                    ``seed`` (default 0) and restores it after: a map does not depend on what ran before
``rap``             Relative Attributing Propagation (Nam et al., AAAI 2020), our implementation as zennit
                    hooks: :class:`RAPHook` (BatchNorm folded by zennit's canonizers, ResNet additions split
                    by the same rule)
``agi``             Adversarial Gradient Integration (Pan et al. 2021): :func:`agi`
``lpi``             Local Path Integration (the LPI supplement): :func:`lpi_references` + :func:`lpi`
``occlusion``       captum ``Occlusion``: a ``window`` x ``window`` patch (default input/8) set to 0 (the mean
                    after normalisation), moved by ``stride`` (default window/2): non-differentiable
``scorecam``        Score-CAM (Wang et al., CVPR-W 2020), masking-based: each channel of ``layer``, upsampled
                    and normalised, masks the input and weighs the channel by the target's score (the
                    ``grad-cam`` package, jacobgil/pytorch-grad-cam; maps min-max scaled per image)
``ablationcam``     Ablation-CAM (Desai & Ramaswamy, WACV 2020): each channel weighed by the score drop when
                    it is zeroed (``grad-cam``)
``gradcampp``       Grad-CAM++ (Chattopadhay et al., WACV 2018): second-order channel weights (``grad-cam``)
==================  =====================================================================================

Pixel maps (all but the CAMs) are summed over the colour channels. The ``grad-cam`` package's CAMs are
min-max scaled per image and resized with OpenCV, which leaves AUC and pointing (rank and argmax) as they are. Every method leaves the model as it
found it: same mode, no hooks, no parameter gradients, BatchNorm unfolded.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from zennit.core import Hook

from .data.voc import PAPER_MEAN, PAPER_STD
from .gradcam import frozen, gradcam, mode

METHODS = ("gradcam", "ebp", "lrp", "rap", "saliency", "inputgrad", "ig", "eg", "agi", "lpi", "occlusion", "scorecam",
           "ablationcam", "gradcampp")
# the methods taken from the grad-cam package (pytorch_grad_cam), by its class names
CAM_VARIANTS = {"scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "gradcampp": "GradCAMPlusPlus"}


def cam_variant(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, layer: str = "last_conv",
                batch_size: int = 32) -> torch.Tensor:
    """Score-CAM, Ablation-CAM or Grad-CAM++ maps ``[B,H,W]`` at input resolution from the ``grad-cam`` package
    (its ``batch_size`` masked inputs per forward pass), for ``target`` classes at ``layer``."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from .models import layer_paths

    module = model.get_submodule(layer_paths(model, [layer])[0])
    # the package draws a tqdm bar per image on stderr: no progress bar reaches a page
    with getattr(pgc, CAM_VARIANTS[method])(model=model, target_layers=[module]) as cam, \
            contextlib.redirect_stderr(io.StringIO()):
        cam.batch_size = batch_size
        maps = cam(input_tensor=x.detach(), targets=[ClassifierOutputTarget(int(t)) for t in target])
    return torch.from_numpy(maps).to(x.device)


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


def filter_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite=None,
                     batch: int = 32) -> dict[str, torch.Tensor]:
    """The LRP relevance of every conv filter (Yeom et al., "Pruning by explaining", Pattern Recognition 2021;
    revisited by Hatefi et al., PXP, 2024): the relevance that reaches each filter's output map, summed over its
    positions and over the reference images ``x``, for the classes ``target`` (relevance initialised with the
    target logit). ``composite``: a zennit composite, default this library's LRP alpha1-beta0 (BatchNorm merged
    into the convs by zennit's canonizers). Returns ``{conv path: relevance [C_out]}``; filters that carry
    nothing the explanation uses score 0. Used by :func:`apnb.compression.prune_l1_structured` (``scores=``)."""
    from zennit.attribution import Gradient

    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    rel = {n: torch.zeros(m.out_channels) for n, m in convs.items()}
    composite = composite if composite is not None else _lrp_composite(model)

    def keep(name):
        def hook(module, inp, out):
            # after zennit's own hooks: the gradient that reaches this tensor is the relevance of the map
            out.register_hook(lambda g: rel.__setitem__(name, rel[name] + g.detach().sum((0, 2, 3)).cpu()))
        return hook

    with torch.enable_grad(), frozen(model), mode(model, False):
        with Gradient(model=model, composite=composite) as attributor:
            handles = [m.register_forward_hook(keep(n)) for n, m in convs.items()]
            try:
                for i in range(0, len(x), batch):
                    xx = x[i:i + batch].detach().clone().requires_grad_(True)
                    out = model(xx)
                    onehot = F.one_hot(target[i:i + batch], out.shape[1]).to(out.dtype)
                    attributor(xx, onehot * out.detach())
            finally:
                for h in handles:
                    h.remove()
    return rel


# ---------------------------------------------------------------------------------------------------------
# RAP: Relative Attributing Propagation (Nam, Gur, Choi, Wolf, Lee, AAAI 2020)
# ---------------------------------------------------------------------------------------------------------
def _safe_div(a, b):
    return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.zeros_like(a))


def _linear_terms(module, xp, xn):
    """Split a linear layer's contributions ``z_ij = x_i w_ij`` into positive and negative parts.

    Returns two lists of ``(z, input)`` pairs, each ``z`` linear in its input with non-negative
    coefficients: the positive parts (x+ w+, x- w-) and the magnitudes of the negative parts (x+ |w-|, x- |w+|).
    Modules without weights (zennit's ``Sum`` in a ResNet block) have unit weights.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        w = module.weight.detach()
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        if isinstance(module, nn.Conv2d):
            def lin(inp, ww):
                return F.conv2d(inp, ww, None, module.stride, module.padding, module.dilation, module.groups)
        else:
            def lin(inp, ww):
                return F.linear(inp, ww)
        return [(lin(xp, wp), xp), (lin(xn, wn), xn)], [(-lin(xp, wn), xp), (-lin(xn, wp), xn)]
    dim = module.dim  # zennit's Sum; summed directly (calling the module would re-enter its hooks)
    return [(xp.sum(dim), xp)], [(-xn.sum(dim), xn)]


def _spread(terms, share, like):
    """``sum_j z_ij * share_j`` for every input i, through the gradient of each linear term."""
    out = torch.zeros_like(like)
    for z, inp in terms:
        out = out + inp.detach() * torch.autograd.grad(z, inp, share, retain_graph=True)[0]
    return out


def rap_layer(module: nn.Module, x: torch.Tensor, relevance: torch.Tensor, output_layer: bool = False):
    """One layer of RAP: the relevance ``[B, ...]`` at the module's output mapped to its input ``x``.

    * Output layer (the classifier's last linear layer): the signed contributions ``x_i w_it`` of the target
      logit, the bias shared in proportion to the absolute contributions, so the sum is the logit.
    * Every other layer, positive and negative relevance alike (RAP's *absolute influence*): each output's
      relevance goes to the inputs that raise it in proportion to their positive contributions, and in
      addition to the inputs that lower it in proportion to their share of the total absolute contribution.
    * *Uniform shifting*: the excess over the incoming total is then subtracted evenly from every input with
      non-zero relevance, so each layer conserves the total (RAP's conservation rule) while inputs of little
      influence turn negative. Inputs that are exactly zero (inactive neurons) keep zero relevance.

    This follows the algorithm of Nam et al. (Sec. 3) and the arithmetic of the reference implementation
    (wjNam/Relative_Attributing_Propagation); it is written from the description, not copied. Deliberate
    difference: the reference splits the output-layer bias by the positive/negative totals; we share it by
    absolute contribution (same total, no division by a near-zero logit).
    """
    x = x.detach()
    r = relevance.detach()
    xp = x.clamp(min=0).requires_grad_(True)
    xn = x.clamp(max=0).requires_grad_(True)
    with torch.enable_grad():
        pos, neg = _linear_terms(module, xp, xn)
        zp = sum(z for z, _ in pos).detach()
        zn = sum(z for z, _ in neg).detach()
        if output_layer:
            b = getattr(module, "bias", None)
            b = torch.zeros_like(zp) if b is None else b.detach().view(1, -1, *([1] * (zp.dim() - 2))).expand_as(zp)
            s = _safe_div(r, zp - zn + b)
            c = _spread(pos, s, x) - _spread(neg, s, x) + _spread(pos + neg, _safe_div(s * b, zp + zn), x)
        else:
            c = _spread(pos, _safe_div(r, zp), x) + _spread(neg, _safe_div(r, zp + zn), x)
    nz = c != 0
    excess = c.flatten(1).sum(1) - r.flatten(1).sum(1)
    count = nz.flatten(1).sum(1).clamp(min=1)
    shape = (-1,) + (1,) * (c.dim() - 1)
    return c - (excess / count).view(shape) * nz


class RAPHook(Hook):
    """zennit hook applying :func:`rap_layer` to a Conv2d, Linear or ResNet ``Sum`` module."""

    def __init__(self, output_layer: bool = False):
        super().__init__()
        self.output_layer = output_layer

    def copy(self):
        return RAPHook(self.output_layer)

    def forward(self, module, input, output):
        self.stored_tensors["input"] = input

    def backward(self, module, grad_input, grad_output):
        rel = rap_layer(module, self.stored_tensors["input"][0], grad_output[0], self.output_layer)
        return tuple(rel if g is not None and g.shape == rel.shape else None for g in grad_input)


def _rap_composite(model):
    from zennit.core import Composite
    from zennit.layer import Sum
    from zennit.rules import Norm, Pass
    from zennit.types import Activation, AvgPool

    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("RAP needs a final nn.Linear classifier layer")

    def module_map(ctx, name, module):
        if isinstance(module, (nn.Conv2d, nn.Linear, Sum)):
            return RAPHook(output_layer=(name == last[-1]))
        if isinstance(module, Activation):
            return Pass()
        if isinstance(module, AvgPool):
            return Norm()
        return None  # max-pooling, flatten, dropout: relevance follows the gradient (the winner / identity)

    return Composite(module_map=module_map, canonizers=_canonizers(model))


# ---------------------------------------------------------------------------------------------------------
# AGI: Adversarial Gradient Integration (Pan, Li, Zhu, IJCAI 2021)
# ---------------------------------------------------------------------------------------------------------
def agi(model, x, target, eps: float = 0.05, n_steps: int = 20, n_targets: int = 20, mean=None, std=None,
        seed: int = 0):
    """AGI maps ``[B,C,H,W]``: for each false class j, walk ``x_{t+1} = clip(x_t + eps*sign(grad p_j(x_t)))``
    until the prediction becomes j (at most ``n_steps``), accumulating ``-grad p_y(x_t) * (x_{t+1} - x_t)``;
    sum over the classes (``p`` = softmax of the logits, y = explained class).

    ``eps`` is in [0,1] pixel units and the walk stays in the valid image range; the model's input is
    ``(pixel - mean) / std`` (default: the VOC mean/std of ``apnb.data``). ``n_targets`` false classes are
    drawn at random (all of them when there are fewer). Deliberate difference from pd90506/AGI: their step
    restarts from the original image at every iteration (``x_0 + eps*sign(...)``); we follow the paper's
    path, each step starting where the last ended.
    """
    dev = x.device
    mean = torch.tensor(PAPER_MEAN if mean is None else mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(PAPER_STD if std is None else std, device=dev).view(1, -1, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    with torch.no_grad():
        n_cls = model(x[:1]).shape[1]
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(x)
    for b in range(len(x)):
        y = int(target[b])
        others = [c for c in range(n_cls) if c != y]
        if n_targets < len(others):
            others = [others[i] for i in torch.randperm(len(others), generator=g)[:n_targets].tolist()]
        k = len(others)
        xt = x[b:b + 1].detach().repeat(k, 1, 1, 1)
        adv = torch.tensor(others, device=dev)
        active = torch.ones(k, dtype=torch.bool, device=dev)
        acc = torch.zeros_like(xt)
        for _ in range(n_steps):
            xt.requires_grad_(True)
            logits = model(xt)
            active = active & (logits.argmax(1) != adv)
            if not bool(active.any()):
                break
            p = logits.softmax(1)
            g_adv = torch.autograd.grad(p.gather(1, adv[:, None]).sum(), xt, retain_graph=True)[0]
            g_lab = torch.autograd.grad(p[:, y].sum(), xt)[0]
            step = (eps / std) * g_adv.sign() * active.view(-1, 1, 1, 1)
            nxt = torch.max(torch.min(xt.detach() + step, hi), lo)
            acc = acc - g_lab * (nxt - xt.detach())
            xt = nxt
        out[b] = acc.sum(0)
    return out


# ---------------------------------------------------------------------------------------------------------
# LPI: Local Path Integration (the LPI supplement and ypeiyu/LPI)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class LPIReferences:
    """References of LPI, chosen in the logit space of the trained classifier.

    ``centroids [C,K]``: coarse KMeans centroids of the training logits; ``images [C,R,...]``: for each coarse
    cluster, the training image nearest to each of its R sub-centroids; ``density [C,R]``: sub-cluster size /
    cluster size (sums to 1 per cluster); ``index [C,R]``: the training-set index of each reference.
    """
    centroids: torch.Tensor
    images: torch.Tensor
    density: torch.Tensor
    index: torch.Tensor


def lpi_references(model, images: torch.Tensor, n_clusters: int = 1, n_refs: int = 20, seed: int = 0,
                   batch_size: int = 64) -> LPIReferences:
    """KMeans (scikit-learn) over the logits of ``images`` (training images): ``n_clusters`` coarse clusters
    (the paper uses 1 or 11), ``n_refs`` sub-clusters in each (10 or 20). The densities are computed once
    here (the LPI code reloads them per cluster and stores references shifted by one batch; neither is
    reproduced)."""
    from sklearn.cluster import KMeans

    if n_clusters < 1 or n_refs < 1:
        raise ValueError(f"n_clusters={n_clusters}, n_refs={n_refs}: both must be >= 1")
    with torch.no_grad(), mode(model, False):
        logits = torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).cpu()
    if len(images) < n_clusters * n_refs:
        raise ValueError(f"{len(images)} training images cannot give {n_clusters} x {n_refs} LPI references: "
                         f"pass more images or lower n_clusters / n_refs")
    z = logits.double().numpy()
    coarse = KMeans(n_clusters, n_init=4, random_state=seed).fit(z)
    refs, dens, idx = [], [], []
    for c in range(n_clusters):
        members = (coarse.labels_ == c).nonzero()[0]
        if len(members) < n_refs:
            raise ValueError(f"coarse cluster {c} has {len(members)} images, fewer than n_refs={n_refs}: "
                             f"lower n_clusters or n_refs")
        sub = KMeans(n_refs, n_init=4, random_state=seed).fit(z[members])
        d2 = ((z[members][:, None, :] - sub.cluster_centers_[None]) ** 2).sum(-1)  # [members, R]
        nearest = members[d2.argmin(0)]
        counts = torch.bincount(torch.as_tensor(sub.labels_), minlength=n_refs).double()
        idx.append(torch.as_tensor(nearest))
        refs.append(images[torch.as_tensor(nearest)].cpu())
        dens.append((counts / counts.sum()).float())
    return LPIReferences(torch.tensor(coarse.cluster_centers_, dtype=torch.float32), torch.stack(refs),
                         torch.stack(dens), torch.stack(idx))


def lpi(model, x, target, references: LPIReferences, n_alphas: int = 5, seed: int = 0, alphas=None,
        internal_batch_size: int = 64):
    """LPI maps ``[B,C,H,W]``: ``sum_j rho_j (x - x'_j) * mean_i grad f_y(x'_j + alpha_i (x - x'_j))`` over the
    references of the coarse cluster nearest to ``x``'s logits, ``alpha_i ~ U(0.01, 0.99)`` (``n_alphas``
    per reference; or pass ``alphas [B,R,k]``), ``f_y`` the raw target logit.

    The notes' formula carries an extra constant ``1/R``; we drop it, so the map is a density-weighted
    expectation and satisfies completeness against ``sum_j rho_j f_y(x'_j)`` (tested). Constants do not change
    any ranking metric. Each reference's gradient is taken at its own path point (the LPI code pairs
    gradients with the wrong reference; not reproduced).
    """
    dev = x.device
    with torch.no_grad():
        z = model(x)
    cl = torch.cdist(z.float(), references.centroids.to(dev)).argmin(1)
    R = references.images.shape[1]
    if alphas is None:
        g = torch.Generator().manual_seed(seed)
        alphas = 0.01 + 0.98 * torch.rand(len(x), R, n_alphas, generator=g)
    alphas = alphas.to(dev, x.dtype)
    out = torch.zeros_like(x)
    for b in range(len(x)):
        ref = references.images[cl[b]].to(dev)  # [R, C, H, W]
        rho = references.density[cl[b]].to(dev)
        diff = x[b:b + 1] - ref  # [R, ...]
        pts = (ref[:, None] + alphas[b][:, :, None, None, None] * diff[:, None]).flatten(0, 1)  # [R*k, ...]
        grads = []
        for i in range(0, len(pts), internal_batch_size):
            p = pts[i:i + internal_batch_size].detach().requires_grad_(True)
            grads.append(torch.autograd.grad(model(p)[:, int(target[b])].sum(), p)[0])
        grad = torch.cat(grads).view(R, alphas.shape[2], *x.shape[1:]).mean(1)
        out[b] = (rho.view(-1, 1, 1, 1) * diff * grad).sum(0)
    return out


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
        if method in CAM_VARIANTS:
            return cam_variant(model, x, target, method, options.get("layer", "last_conv"),
                               options.get("cam_batch_size", 32))
        if method == "ebp":
            from zennit.composites import ExcitationBackprop

            return _zennit(model, x, target, ExcitationBackprop(canonizers=_canonizers(model)), "prob")
        if method == "lrp":
            return _zennit(model, x, target, _lrp_composite(model), "logit")
        if method == "rap":
            return _zennit(model, x, target, _rap_composite(model), "logit")
        if method in ("agi", "lpi"):
            with torch.enable_grad(), frozen(model):
                if method == "agi":
                    keys = ("eps", "n_steps", "n_targets", "mean", "std", "seed")
                    a = agi(model, x.detach(), target, **{k: v for k, v in options.items() if k in keys})
                else:
                    if options.get("references") is None:
                        raise ValueError("method 'lpi' needs references=apnb.attribution.lpi_references(model, "
                                         "<training images>)")
                    keys = ("references", "n_alphas", "seed", "alphas", "internal_batch_size")
                    a = lpi(model, x.detach(), target, **{k: v for k, v in options.items() if k in keys})
            return a.sum(1).detach()
        from captum.attr import GradientShap, InputXGradient, IntegratedGradients, Occlusion, Saliency

        if method == "occlusion":
            w = int(options.get("window", max(1, x.shape[-1] // 8)))
            st = int(options.get("stride", max(1, w // 2)))
            with torch.no_grad():
                a = Occlusion(model).attribute(x.detach(), sliding_window_shapes=(x.shape[1], w, w),
                                               strides=(x.shape[1], st, st), baselines=0.0, target=target,
                                               perturbations_per_eval=options.get("perturbations_per_eval", 16))
            return a.sum(1).detach()

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
                state = np.random.get_state()
                np.random.seed(int(options.get("seed", 0)))
                try:
                    a = GradientShap(model).attribute(xx, baselines=base.to(x.device), target=target, stdevs=0.0,
                                                      n_samples=options.get("n_samples", 16))
                finally:
                    np.random.set_state(state)
            return a.sum(1).detach()
    finally:
        model.train(was)
        for p in model.parameters():
            p.grad = None


def attribute_batches(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str = "gradcam",
                      batch_size: int = 64, **options) -> torch.Tensor:
    """:func:`attribute` over ``x`` in batches of ``batch_size`` (memory), concatenated: ``[N,H,W]``."""
    target = torch.as_tensor(target).long()
    return torch.cat([attribute(model, x[i:i + batch_size], target[i:i + batch_size], method, **options)
                      for i in range(0, len(x), batch_size)])
