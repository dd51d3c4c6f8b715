"""Compression methods of the paper: knowledge distillation, iterative unstructured magnitude pruning
(Han et al.), one-shot l1 structured filter pruning (Li et al.).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune


# ------------------------------------------------------------------ distillation
def kd_multilabel(s_logits, t_logits, y, T: float = 4.0, alpha: float = 0.9):
    """Hinton KD for multi-label data, as the authors' ``logit_kd``.

    Per-class binary KL between sigmoid(t/T) and sigmoid(s/T), summed over the two outcomes, times T^2,
    divided by B*C; plus ``MultiLabelSoftMarginLoss``: ``alpha * kl + (1 - alpha) * mlsm``.
    """
    ps = torch.sigmoid(s_logits / T).clamp(1e-7, 1 - 1e-7)
    pt = torch.sigmoid(t_logits / T).clamp(1e-7, 1 - 1e-7)
    kl = pt * (pt.log() - ps.log()) + (1 - pt) * ((1 - pt).log() - (1 - ps).log())
    kl = kl.sum() * T * T / s_logits.numel()
    return alpha * kl + (1 - alpha) * F.multilabel_soft_margin_loss(s_logits, y)


def kd_softmax(s_logits, t_logits, y, T: float = 4.0, alpha: float = 0.9):
    """Hinton KD for single-label data: ``alpha * T^2 KL(softmax(t/T) || softmax(s/T)) + (1-alpha) CE``."""
    kl = F.kl_div(F.log_softmax(s_logits / T, 1), F.log_softmax(t_logits / T, 1), reduction="batchmean",
                  log_target=True)
    return alpha * kl * T * T + (1 - alpha) * F.cross_entropy(s_logits, y)


def task_loss(multilabel: bool):
    return F.multilabel_soft_margin_loss if multilabel else F.cross_entropy


# ------------------------------------------------------------------ unstructured pruning
def conv_weights(model: nn.Module):
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]


def cumulative_rate(rho_w: float, iterations: int) -> float:
    """Fraction of conv weights pruned after ``iterations`` rounds at ``rho_w`` each: 1-(1-rho_w)^N."""
    return 1 - (1 - rho_w) ** iterations


def prune_global_unstructured(model: nn.Module, amount: float) -> None:
    """One round of global magnitude pruning over all Conv2d weights (``torch.nn.utils.prune``).

    ``amount`` is the fraction of the *remaining* weights to prune, so N rounds at rho_w give the
    cumulative rate :func:`cumulative_rate` (paper: 0.2 x 16 = 0.97). Masks persist as
    ``weight_mask`` buffers and are applied in every forward, so fine-tuning keeps pruned weights at 0.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount={amount}: the pruning rate must be in [0, 1)")
    prune.global_unstructured(conv_weights(model), pruning_method=prune.L1Unstructured, amount=amount)


def prune_oneshot_unstructured(model: nn.Module, rate: float) -> None:
    """One-shot global magnitude pruning to ``rate`` (the paper's ImageNet runs: 0.6 and 0.9)."""
    prune_global_unstructured(model, rate)


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero conv weights per layer, plus ``"global"``."""
    out, z, n = {}, 0, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            out[name] = float((w == 0).double().mean())
            z += int((w == 0).sum())
            n += w.numel()
    out["global"] = z / max(n, 1)
    return out


def pruned_param_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, "weight_mask")]


def reapply_pruning(model: nn.Module, names: list[str]) -> None:
    """Recreate ``weight_orig``/``weight_mask`` so that a pruned state dict can be loaded."""
    mods = dict(model.named_modules())
    for n in names:
        if not hasattr(mods[n], "weight_mask"):
            prune.identity(mods[n], "weight")


def make_permanent(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "weight_mask"):
            prune.remove(m, "weight")


# ------------------------------------------------------------------ structured pruning
def _scored_importance(scores: dict[nn.Module, torch.Tensor]):
    """A torch-pruning importance that ranks the output channels of each conv by ``scores[conv]`` (one number per
    filter, e.g. :func:`apnb.attribution.filter_relevance`) instead of by its weights."""
    import torch_pruning as tp

    class Scored(tp.importance.Importance):
        @torch.no_grad()
        def __call__(self, group):
            n = len(group[0].root_idxs)
            for item in group:
                dep, idxs = item.dep, item.idxs
                if dep.layer in scores and dep.pruning_fn == tp.pruner.function.prune_conv_out_channels:
                    imp = torch.zeros(n)
                    imp[torch.as_tensor(item.root_idxs)] = scores[dep.layer].float().cpu()[torch.as_tensor(idxs)]
                    return imp
            return None

    return Scored()


def prune_l1_structured(model: nn.Module, rate: float, example: torch.Tensor, layers: list[str] | None = None,
                        scores: dict[str, torch.Tensor] | None = None):
    """One-shot l1-norm filter pruning (Li et al.) at channel rate ``rate`` with torch-pruning (DepGraph).

    The result is a physically smaller network (BatchNorm, the next conv and the classifier are cut to
    match; residual connections in ResNet are handled by the dependency graph). Filters are ranked by
    ``sum |W|`` of each filter of that conv alone (``group_reduction="first"``, no normalisation: Li et al.),
    not torch-pruning's default group-averaged score. ``layers`` restricts pruning to those conv modules
    (the authors prune conv1_1 and conv4_1-conv5_3 of VGG16); default all convs. The final classifier is
    never pruned. ``scores`` (``{conv path: one number per filter}``) ranks the filters by those numbers instead
    of their l1 norms: the LRP relevance of :func:`apnb.attribution.filter_relevance` makes it pruning by
    explaining (Yeom et al. 2021). Returns ``(params_before, params_after, macs_before, macs_after)``.
    """
    import torch_pruning as tp

    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate={rate}: the channel pruning rate must be in (0, 1)")
    macs0, params0 = tp.utils.count_ops_and_params(model, example)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ignored = list(heads)
    if layers is not None:
        unknown = [n for n in layers if n not in convs]
        if unknown:
            raise ValueError(f"unknown conv layers {unknown}: choose among {list(convs)[:5]}...")
        ignored += [m for n, m in convs.items() if n not in layers]
    if scores is None:
        importance = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    else:
        missing = [n for n in convs if n not in scores and convs[n] not in ignored]
        if missing:
            raise ValueError(f"scores name no filter of {missing[:3]}: give one score per filter of every pruned conv")
        importance = _scored_importance({convs[n]: v for n, v in scores.items() if n in convs})
    pruner = tp.pruner.MagnitudePruner(model, example, importance=importance, pruning_ratio=rate,
                                       ignored_layers=ignored, global_pruning=False)
    pruner.step()
    macs1, params1 = tp.utils.count_ops_and_params(model, example)
    return int(params0), int(params1), int(macs0), int(macs1)
