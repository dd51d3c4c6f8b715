"""Attribution matching regularizers: the general Eq. (1)-(2) and its instances EWA, SWA, SSWA.

Eq. (1): ``M = V(sum_c U_c T(A_c))``; Eq. (2): ``L = L_task + beta * sum_{j in I} || M_s/||M_s|| - M_t/||M_t|| ||^2``.

The kinds (EWA, SWA, SSWA, the authors' coded SSWA, gradient AT, e2KD, ...) are registered in
:mod:`apnb.kinds`, each with its weight, its teacher need and its term; this module runs the teacher and the
student and hands each kind's term the primitives below (:class:`Batch`). Nothing here names a kind.

**e2KD is Eq. 2 with three differences.** Per sample, ``1 - cos(a, b) = 1/2 || a/||a|| - b/||b|| ||^2``, so
e2KD's loss is the SWA term of Eq. 2 with (i) a per-sample reduction (the squared distance summed over
the map, halved, averaged over the batch, against the authors' mean over B x H x W), (ii) maps bilinearly
resized to the input size before the comparison, and (iii) its own weight: 1 in the e2KD authors' code
(``explanation_loss_coef``, m-parchami/GoodTeachersExplain), against SWA's 50. The B-cos networks of that
paper are not used here.

**One scale for every kind** (``reduction="image"``, the default). Every kind's term is the per-image sum of
the squared differences of unit-norm maps, ``|| m_s/||m_s|| - m_t/||m_t|| ||^2 = 2 (1 - cos)``, averaged over
the batch: it does not depend on the map's size, so one beta means the same for every kind and every layer
(:mod:`apnb.kinds`). ``reduction="mean"`` is each source's own reduction: the squared difference averaged over
B x H x W elements, as the authors' ``cal_l2loss`` and attention transfer's ``at_loss`` do (the paper's beta,
100 for EWA and 50 for SWA/SSWA in supplement C.2, assumes it: beta 50 on the 7x7 pool5 maps is 50/49 on the
one scale, and beta 3 on 8x8 maps is 3/64), e2KD's ``mean (1 - cos)`` and CAT-KD's mean over B x K x s x s.

Options (reviewers' questions, authors' code): several ``layers``; ``topk`` classes; ``relu=False``
(V = identity); ``center_logits``; ``per_neuron`` (sum_c A * dA instead of pooled weights);
``mask`` = ``teacher`` (Eq. 6: the teacher's importance weights are masked), ``both`` (the same mask
on the student, needs equal channel counts) or ``independent`` (a separate draw for the student).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gradcam import Tap, frozen, target_scores, weighted_maps
from .metrics import centered_gaussian
from .models import ModelError, layer_paths, linear_head
from .kinds import get as kind_of
from .specs import DEFAULT_BETA, KINDS, MatchingConfig  # noqa: F401  (torch-free, for the parameter check)


def reduce_squared(d: torch.Tensor, map_dims: int, reduction: str = "image") -> torch.Tensor:
    """Reduce the squared differences ``d`` of unit-norm maps, whose last ``map_dims`` dimensions are one map:
    ``image`` sums over each map and averages over the rest (the one scale, ``2 (1 - cos)`` per map), ``mean``
    averages over every element (the authors' reduction)."""
    if reduction == "mean":
        return d.mean()
    return d.sum(tuple(range(d.dim() - map_dims, d.dim()))).mean()


def squared_normalized_l2(ms: torch.Tensor, mt: torch.Tensor, reduction: str = "image") -> torch.Tensor:
    """The matching term of Eq. 2: ``|| ms/||ms|| - mt/||mt|| ||^2`` per sample (``[B, ...]``, all but the batch
    dimension one map), on the one scale (``image``: per sample, ``2 (1 - cos)``, averaged over the batch) or
    the authors' (``mean`` over every element). Squared, and (student, teacher) in that order; the evaluation's
    distance :func:`apnb.metrics.normalized_l2` (Table 2's l2) is the unsquared per-sample norm, (teacher,
    student)."""
    d = (F.normalize(ms.flatten(1), dim=1) - F.normalize(mt.flatten(1), dim=1)).pow(2)
    return reduce_squared(d, 1, reduction)


def cosine_distance(ms: torch.Tensor, mt: torch.Tensor, size: tuple[int, int] | None = None,
                    reduction: str = "mean") -> torch.Tensor:
    """e2KD's explanation loss after resizing both [B,h,w] maps to ``size`` (bilinear; the e2KD authors resize to
    the input): ``mean_b (1 - cos(ms_b, mt_b))`` under its authors' reduction (``mean``), ``2 (1 - cos)`` on the
    one scale (``image``), which is :func:`squared_normalized_l2` of the resized maps."""
    if size is not None and tuple(ms.shape[-2:]) != tuple(size):
        ms = F.interpolate(ms[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        mt = F.interpolate(mt[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if reduction == "image":
        return squared_normalized_l2(ms, mt, "image")
    return (1 - F.cosine_similarity(ms.flatten(1), mt.flatten(1), dim=1, eps=1e-12)).mean()



def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def class_maps(a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class activation maps ``[B,K,H,W]``: feature map ``a`` under a classifier's weights ``[K,C]`` as a 1x1
    convolution, no bias (CAT-KD's maps; their spatial mean plus the bias is the logits of a global-pooling
    head)."""
    return F.conv2d(a, weight[:, :, None, None].to(a.dtype))


class Batch:
    """What a kind's term (:meth:`apnb.kinds.Kind.term`) works with on one batch: the configuration, the input
    size, and the primitives of Eq. (1)-(6): Grad-CAM-style maps, Eq. 2's distance, e2KD's cosine distance and
    the SSWA masks (drawn from the regularizer's generator, recorded in ``last_masks``)."""

    def __init__(self, reg: "AttributionMatching", x: torch.Tensor, student: nn.Module | None = None,
                 teacher: nn.Module | None = None):
        self.cfg, self.reg, self.input_size = reg.cfg, reg, tuple(x.shape[-2:])
        self.nets = {"student": student, "teacher": teacher}

    def maps(self, a, g, mask=None):
        """Eq. 1 with pooled gradient weights (Grad-CAM; ``per_neuron``/``relu`` from the configuration)."""
        return weighted_maps(a, g, self.cfg.relu, self.cfg.per_neuron, mask)

    def l2(self, ms, mt):
        """Eq. 2's squared distance of the normalised maps ``[B, ...]``, on the configured scale."""
        return squared_normalized_l2(ms, mt, self.cfg.reduction)

    def cosine(self, ms, mt, size=None):
        """e2KD's cosine distance after resizing to ``size``, on the configured scale."""
        return cosine_distance(ms, mt, size, self.cfg.reduction)

    def reduce(self, d, map_dims: int):
        """Squared differences of unit-norm maps (the last ``map_dims`` dimensions one map) on the configured
        scale (:func:`reduce_squared`)."""
        return reduce_squared(d, map_dims, self.cfg.reduction)

    def bernoulli(self, b, c):
        return self.reg._bernoulli(b, c)

    def coded(self, b, c):
        return self.reg._coded(b, c)

    def class_maps(self, a, who: str):
        """The class activation maps ``[B,K,H,W]`` of ``a`` under the ``who`` network's global-pooling classifier
        (its weights as a 1x1 convolution, no bias; :func:`apnb.models.linear_head`): their spatial mean plus
        the bias is that network's logits. The teacher's weights are taken without gradient."""
        head = linear_head(_unwrap(self.nets[who]))
        return class_maps(a, head.weight if who == "student" else head.weight.detach())

    def pool(self, m, side: int):
        """Average-pool maps ``[B,K,H,W]`` to ``side`` x ``side``."""
        return F.adaptive_avg_pool2d(m, side)

    def unit(self, m):
        """Each map of ``[B,K,H,W]`` scaled to unit l2 norm (CAT-KD's normalisation)."""
        return F.normalize(m.flatten(2), dim=2).view_as(m)

    def center(self, m):
        """A centred Gaussian of the shape of maps ``[B,H,W]``, standard deviation a quarter of each side (the
        book's centre baseline, :func:`apnb.evaluate.baseline_attr`)."""
        return centered_gaussian(*m.shape[-2:], device=m.device, dtype=m.dtype).expand_as(m)


class AttributionMatching:
    """The pluggable regularizer. One call runs the teacher and the student on a batch::

        reg = AttributionMatching(kind="sswa", p=0.3)
        reg.check(student, teacher, x[:1])            # clear errors before any long compute
        s_logits, t_logits, match = reg(student, x, teacher, y)
        loss = task_loss(s_logits, t_logits, y) + reg.beta * match

    ``match`` is the un-weighted sum over layers of Eq. 2's term (averaged over the top-k classes).
    Targets are the teacher's top-k logits. The teacher gets no gradient and no graph before the layer.
    What runs is decided by the kind's declared teacher need (:mod:`apnb.kinds`), never by its name.
    """

    def __init__(self, cfg: MatchingConfig | None = None, generator: torch.Generator | None = None, **kw):
        self.cfg = cfg if cfg is not None else MatchingConfig(**kw)
        self.generator = generator
        self.last_masks: list[torch.Tensor] = []
        self._device = torch.device("cpu")

    @property
    def beta(self):
        return self.cfg.beta

    @property
    def kind(self):
        return self.cfg.kind

    @property
    def spec(self):
        """The registered kind (:class:`apnb.kinds.Kind`)."""
        return kind_of(self.cfg.kind)

    @property
    def needs_teacher_maps(self):
        return self.spec.teacher in ("acts", "grads")

    @property
    def active(self) -> bool:
        """Whether there is a matching term at all (naive compression has none)."""
        return self.spec.teacher != "logits"

    def check(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor):
        """Resolve layers and verify map shapes on a tiny batch (eval mode, no grad); raises ModelError."""
        if not self.needs_teacher_maps:
            return
        if teacher is None:
            raise ModelError(f"matching kind {self.cfg.kind!r} needs a teacher network")
        shapes, paths = {}, {}
        for name, net in (("student", student), ("teacher", teacher)):
            paths[name] = layer_paths(net, self.cfg.layers)
            if self.spec.needs_head:
                self._check_head(name, net, x)
            was = net.training
            net.eval()
            try:
                with torch.no_grad(), Tap(net, self.cfg.layers) as tap:
                    net(x[:1])
                shapes[name] = [tuple(tap.acts[n].shape) for n in tap.layers]
            finally:
                net.train(was)
        if len(paths["student"]) != len(paths["teacher"]):
            raise ModelError(f"layers {self.cfg.layers}: the student has {len(paths['student'])} of them and the "
                             f"teacher {len(paths['teacher'])}; match networks of the same family")
        for (s, t, layer) in zip(shapes["student"], shapes["teacher"], paths["teacher"]):
            if s[2:] != t[2:]:
                raise ModelError(f"layer {layer!r}: student map {s[2:]} and teacher map {t[2:]} differ in size; "
                                 f"match layers of equal spatial resolution")
            problem = self.spec.check(self.cfg, s, t, layer)
            if problem:
                raise ModelError(problem)

    def _check_head(self, name: str, net: nn.Module, x: torch.Tensor):
        """A kind that makes class maps needs a global-pooling head, and the matched layer must be its input: the
        spatial mean of the class maps plus the bias must give the network's logits."""
        head = linear_head(_unwrap(net))
        if head is None:
            raise ModelError(f"matching kind {self.cfg.kind!r} needs a global-pooling head (average pool to 1x1, then "
                             f"one Linear layer) and the {name} has another: no class activation maps, so mark "
                             f"this method n/a for this network")
        was = net.training
        net.eval()
        try:
            with torch.no_grad(), Tap(net, self.cfg.layers[-1:]) as tap:
                logits = net(x[:1])
            a = tap.acts[tap.layers[0]]
            if not torch.allclose(class_maps(a, head.weight).mean((2, 3)) + head.bias, logits, atol=1e-4, rtol=1e-3):
                raise ModelError(f"matching kind {self.cfg.kind!r}: layer {self.cfg.layers[-1]!r} of the {name} is "
                                 f"not the input of its global-pooling head; match the last feature map (last_conv)")
        finally:
            net.train(was)

    # -- masks ---------------------------------------------------------------------------------------
    def _bernoulli(self, b, c, device="cpu"):
        keep = torch.rand(b, c, generator=self.generator, device="cpu") >= self.cfg.p
        m = keep.to(device=self._device, dtype=torch.float32)
        self.last_masks.append(m)
        return m

    def _coded(self, b, c, device="cpu"):
        n_drop = int(c * self.cfg.p)
        perm = torch.randperm(c, generator=self.generator)[:n_drop]
        m = torch.ones(c)
        m[perm] = 0
        m = m.to(self._device)[None].expand(b, c)
        self.last_masks.append(m)
        return m

    # -- the regularizer --------------------------------------------------------------------------
    def teacher_need(self) -> tuple | None:
        """What this regularizer needs from the teacher on a batch, as a hashable key: members of a cohort
        (:func:`apnb.engine.fit_cohort`) with equal keys share one teacher pass. ``None``: logits only (or a
        pass of its own: ``"input"`` kinds)."""
        cfg, need = self.cfg, self.spec.teacher
        if need not in ("acts", "grads"):
            return None
        return (tuple(cfg.layers), 0 if need == "acts" else cfg.topk, cfg.center_logits)

    def teacher_pass(self, teacher: nn.Module, x: torch.Tensor, cache: dict | None = None):
        """The teacher's side of Eq. 2 on a batch: ``(logits, acts, grads, target)``, all detached.

        The graph is cut at the layer and the teacher's parameters are frozen, so the teacher gets no
        gradient and nothing before the layer is recorded. ``cache`` (one dict per batch) shares the result
        among regularizers with the same :meth:`apnb.matching.AttributionMatching.teacher_need`, and the
        ``"acts"`` kinds (EWA) read any pass at their layers: one teacher pass serves a whole cohort of naive KD,
        EWA, SWA and SSWA members."""
        need = self.teacher_need()
        if cache is not None and need in cache:
            return cache[need]
        if cache is not None and need is not None and need[1] == 0:
            # activations alone: a pass at the same layers for a "grads" kind holds them, computed in the same
            # way (fit_cohort steps the members that need gradients first)
            hit = next((v for k, v in cache.items() if k is not None and k[0] == need[0]), None)
            if hit is not None:
                return hit
        if need is None:
            with torch.no_grad():
                out = (teacher(x).detach(), None, None, None)
        else:
            layers, topk, center = need
            with torch.enable_grad(), frozen(teacher), Tap(teacher, layers, detach=True) as tt:
                t_logits = teacher(x)
                t_acts = [tt.acts[n] for n in tt.layers]
                target = t_logits.topk(max(topk, 1), dim=1).indices  # [B,k]
                t_grads = []
                for k in range(topk):
                    g = torch.autograd.grad(target_scores(t_logits, target[:, k], center), t_acts,
                                            retain_graph=k < topk - 1)
                    t_grads.append([gi.detach() for gi in g])
            out = (t_logits.detach(), [a.detach() for a in t_acts], t_grads, target)
        if cache is not None:
            cache[need] = out
        return out

    def __call__(self, student: nn.Module, x: torch.Tensor, teacher: nn.Module | None = None,
                 y: torch.Tensor | None = None, task_loss=None, cache: dict | None = None):
        """Returns ``(student_logits, teacher_logits or None, match_loss)``; ``cache``: see
        :meth:`apnb.matching.AttributionMatching.teacher_pass`."""
        self.last_masks = []
        self._device = x.device
        need = self.spec.teacher
        if need == "logits":
            s_logits = student(x)
            t_logits = None
            if teacher is not None:  # any pass of the same teacher on this batch has the logits
                t_logits = next(iter(cache.values()))[0] if cache else self.teacher_pass(teacher, x, cache)[0]
            return s_logits, t_logits, x.new_zeros(())
        if need == "input":
            return self._input_part(student, teacher, x, y, task_loss)
        t_logits, t_acts, t_grads, target = self.teacher_pass(teacher, x, cache)
        # the student's maps need gradients even when called under torch.no_grad (e.g. for evaluation)
        with torch.enable_grad():
            return self._student_part(student, x, t_logits, t_acts, t_grads, target, teacher)

    def _student_part(self, student, x, t_logits, t_acts, t_grads, target, teacher=None):
        cfg, kind, ctx = self.cfg, self.spec, Batch(self, x, student, teacher)
        with Tap(student, cfg.layers) as st:
            s_logits = student(x)
        s_acts = [st.acts[n] for n in st.layers]
        if kind.teacher == "acts":
            return s_logits, t_logits, sum(kind.term(ctx, a_s, None, a_t, None) for a_s, a_t in zip(s_acts, t_acts))
        loss = x.new_zeros(())
        for k in range(cfg.topk):
            s_grads = torch.autograd.grad(target_scores(s_logits, target[:, k], cfg.center_logits), s_acts,
                                          create_graph=True, retain_graph=True)
            for a_s, g_s, a_t, g_t in zip(s_acts, s_grads, t_acts, t_grads[k]):
                loss = loss + kind.term(ctx, a_s, g_s, a_t, g_t)
        return s_logits, t_logits, loss / cfg.topk

    def _input_part(self, student, teacher, x, y, task_loss):
        """The ``"input"`` kinds (gradient AT): the input gradients ``dL/dx`` of teacher and student go to the
        kind's term (Zagoruyko & Komodakis)."""
        if y is None or task_loss is None:
            raise ValueError(f"{self.cfg.kind} needs labels y and the task loss function")
        xt = x.detach().requires_grad_(True)
        with torch.enable_grad(), frozen(teacher):
            t_logits = teacher(xt)
            j_t, = torch.autograd.grad(task_loss(t_logits, y), xt)
        xs = x.detach().requires_grad_(True)
        s_logits = student(xs)
        j_s, = torch.autograd.grad(task_loss(s_logits, y), xs, create_graph=True)
        return s_logits, t_logits.detach(), self.spec.term(Batch(self, x), j_s, None, j_t.detach(), None)
