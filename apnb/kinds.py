"""The matching kinds of Eq. (1)-(6) and after, each one class registered once (zennit's manner).

A kind declares everything the library needs to know about it:

- ``beta``: its default weight on the book's one scale (below), and ``authors_beta``: the weight its source
  states under the source's own reduction (the paper's supplement C.2, or the method's authors);
- ``teacher``: what it needs from the teacher on each batch, which is also the key by which the members of a
  cohort share one teacher pass (:meth:`apnb.matching.AttributionMatching.teacher_need`): ``"logits"``
  (nothing beyond the logits), ``"acts"`` (activations at the matched layers), ``"grads"`` (activations and
  the gradients of the top-k logits: Grad-CAM's ingredients) or ``"input"`` (the input gradient of the task
  loss, which needs a pass of its own);
- ``term(ctx, a_s, g_s, a_t, g_t)``: its student-side term at one layer (and, for ``"grads"``, one target
  class), written over the regularizer's primitives (``ctx``: :class:`apnb.matching.Batch`), so that this
  module needs no torch and the parameter check (:mod:`apnb.validate`) stays fast;
- ``check(cfg, student_shape, teacher_shape, layer)``: a one-line error for a pair of networks it cannot
  match, beyond the equal map sizes every map-matching kind needs;
- ``logit_kd``: whether distillation keeps Hinton's logit term beside it (a method that drops it says so);
- ``layers``: where the method matches whatever the recipe's layer says (attention transfer: the stage ends);
- ``needs_head``: it needs a global-pooling head (CAT-KD's class activation maps), checked before training;
- ``control``: it matches something other than the teacher's map of the same image (a control of the book).

=================  ======================  ==================================================  ===========================
kind               teacher                 maps and distance                                   source
=================  ======================  ==================================================  ===========================
``none``           logits                  no matching term: naive compression                 paper's baseline
``ewa``            acts                    ``mean_c A_c^2``; Eq. 2's normalised l2             Eq. 3; attention transfer
                                                                                               at one layer (Zagoruyko &
                                                                                               Komodakis, ICLR 2017)
``swa``            grads                   ``ReLU(sum_c u_c A_c)``, u = pooled dy_t/dA         Eq. 4-5 (Grad-CAM)
``sswa``           grads                   as swa, ``U_c = R_c u_c``, R_c ~ Bern(1-p)          Eq. 6, masks i.i.d. per
                                                                                               sample and channel
``sswa_coded``     grads                   as swa, a fixed fraction p of the teacher's         the authors' code (not
                                           channels zeroed, the same for the whole batch       Eq. 6)
``grad_at``        input                   the input gradient of the task loss                 Zagoruyko & Komodakis'
                                                                                               gradient AT
``e2kd``           grads                   as swa, resized to the input; ``1 - cos``           Parchami-Araghi et al.,
                                                                                               ECCV 2024 (e2KD)
``at``             acts                    as ewa, at the end of every stage (``stage_ends``)  Zagoruyko & Komodakis,
                                                                                               ICLR 2017 (AT)
``cat_kd``         acts                    the class activation maps of all classes (features  Guo et al., CVPR 2023
                                           x classifier weights), pooled to ``cam_size``,      (CAT-KD); no logit KD
                                           normalised per map, mean squared error
``center_prior``   grads                   control: the student's SWA map against a centred    this book (a control)
                                           Gaussian, not the teacher's map
``sswa_shuffled``  grads                   control: as sswa, against the teacher's map of the  this book (a control)
                                           next image in the batch
=================  ======================  ==================================================  ===========================

**One scale for every kind** (``reduction="image"``, the default; :class:`apnb.matching.Batch`): every term is
the per-image sum of the squared differences of unit-norm maps, ``|| m_s/||m_s|| - m_t/||m_t|| ||^2 =
2 (1 - cos)``, averaged over the batch (and over CAT-KD's classes), so it lies in [0, 4] whatever the size of
the map: a beta means the same for EWA at 8x8, for e2KD at the input size and for gradient AT on 3x64x64
input gradients. ``reduction="mean"`` is each source's own reduction (the paper's and attention transfer's
mean over B x H x W elements, e2KD's ``mean (1 - cos)``, CAT-KD's mean over B x K x s x s), under which
``authors_beta`` is stated; :meth:`Kind.image_beta` converts a weight from it. The defaults on the one scale
are the sources' weights converted at the paper's map (7x7 at pool5): beta 50 for SWA becomes 50/49.

**Adding a kind** is one class here with ``@register`` and one test (``CONTRIBUTING.md``): the regularizer,
the parameter check, the store key, the cohorts and the kind lists of the tests all read this registry.
"""
from __future__ import annotations

TEACHER_NEEDS = ("logits", "acts", "grads", "input")


class Kind:
    """A matching kind: its name, default weight, teacher need and term. Subclass and ``@register``."""

    name: str = ""
    authors_beta: float = 0.0  # as its source states it, under the source's reduction ("mean")
    source_elements: int = 49  # the elements of the map that weight was stated on (the paper's 7 x 7 pool5)
    beta: float = 0.0  # on the one scale (reduction "image"): image_beta(authors_beta, source_elements) unless set
    teacher: str = "logits"
    logit_kd: bool = True
    source: str = ""
    paper: bool = False  # one of the paper's regularizers (EWA, SWA, SSWA)
    layers: tuple | None = None  # where the method matches, whatever the recipe's layer (None: the recipe's)
    needs_head: bool = False  # needs a global-pooling head whose classifier makes class maps (CAT-KD)
    control: bool = False  # a control: matches something other than the teacher's own map of the image

    def term(self, ctx, a_s, g_s, a_t, g_t):
        """Eq. 2's term at one layer: student activations ``a_s`` and gradients ``g_s`` (None unless ``teacher
        == "grads"``), the teacher's ``a_t`` and ``g_t``. ``"input"`` kinds get the input gradients as
        ``a_s`` and ``a_t``."""
        raise NotImplementedError

    def check(self, cfg, student_shape: tuple, teacher_shape: tuple, layer: str) -> str | None:
        """An error message when this pair of activation shapes ``[B,C,H,W]`` cannot be matched, else None."""
        return None

    def image_beta(self, beta: float, elements: int) -> float:
        """The weight on the one scale that gives the same objective as ``beta`` under the source's reduction
        (``"mean"``), for maps of ``elements`` elements per image (H x W; C x H x W for input gradients): the
        mean over the map's elements is the per-image sum divided by their number. (Multi-layer AT: per stage.)"""
        return beta / elements



REGISTRY: dict[str, Kind] = {}


def register(cls: type[Kind]) -> type[Kind]:
    """Class decorator: add one instance of ``cls`` to :data:`REGISTRY` under ``cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"matching kind {cls.name!r}: a kind needs a name not taken yet")
    if cls.teacher not in TEACHER_NEEDS:
        raise ValueError(f"matching kind {cls.name!r}: teacher={cls.teacher!r}, use one of {TEACHER_NEEDS}")
    kind = cls()
    if "beta" not in cls.__dict__:  # the source's weight on the one scale
        kind.beta = kind.image_beta(kind.authors_beta, kind.source_elements)
    REGISTRY[cls.name] = kind
    return cls


def get(name: str) -> Kind:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown matching kind {name!r}: use one of {', '.join(REGISTRY)}") from None


@register
class Naive(Kind):
    """No matching term (naive compression): the objective is KD or the task loss alone."""
    name, beta, teacher, source = "none", 0.0, "logits", "the paper's baseline"


@register
class EWA(Kind):
    """Eq. 3: the channel mean of the squared activations, matched by Eq. 2's normalised l2 (attention transfer
    at one layer)."""
    name, authors_beta, teacher, source = "ewa", 100.0, "acts", "Eq. 3"
    paper = True

    def term(self, ctx, a_s, g_s, a_t, g_t):
        return ctx.l2(a_s.pow(2).mean(1), a_t.pow(2).mean(1))


@register
class SWA(Kind):
    """Eq. 4-5: Grad-CAM maps of the teacher's top class, matched by Eq. 2's normalised l2."""
    name, authors_beta, teacher, source = "swa", 50.0, "grads", "Eq. 4-5"
    paper = True

    def term(self, ctx, a_s, g_s, a_t, g_t):
        return ctx.l2(ctx.maps(a_s, g_s), ctx.maps(a_t, g_t))


@register
class SSWA(Kind):
    """Eq. 6: SWA with the teacher's channel weights masked by Bernoulli(1-p) draws, i.i.d. per sample and
    channel; ``mask="both"`` puts the same mask on the student, ``"independent"`` a draw of its own."""
    name, authors_beta, teacher, source = "sswa", 50.0, "grads", "Eq. 6"
    paper = True

    def term(self, ctx, a_s, g_s, a_t, g_t):
        b, c_t = a_t.shape[:2]
        tmask = ctx.bernoulli(b, c_t)
        mask = ctx.cfg.mask
        smask = tmask if mask == "both" else ctx.bernoulli(b, a_s.shape[1]) if mask == "independent" else None
        return ctx.l2(ctx.maps(a_s, g_s, smask), ctx.maps(a_t, g_t, tmask))

    def check(self, cfg, student_shape, teacher_shape, layer):
        if cfg.mask == "both" and student_shape[1] != teacher_shape[1]:
            return (f"mask='both' shares SSWA masks but the student has {student_shape[1]} channels and the "
                    f"teacher {teacher_shape[1]} at {layer!r}; use mask='teacher' or 'independent'")
        return None


@register
class SSWACoded(Kind):
    """The authors' code: a fixed fraction p of the teacher's channels zeroed, the same for the whole batch
    (not Eq. 6)."""
    name, authors_beta, teacher, source = "sswa_coded", 50.0, "grads", "the authors' code"

    def term(self, ctx, a_s, g_s, a_t, g_t):
        return ctx.l2(ctx.maps(a_s, g_s), ctx.maps(a_t, g_t, ctx.coded(*a_t.shape[:2])))


@register
class GradAT(Kind):
    """Gradient-based attention transfer: the input gradients of the task loss, matched by Eq. 2's l2. No source
    weight for this setting: SSWA's, on the one scale (under the mean reduction over 3 x H x W input elements the
    same number would be hundreds of times weaker)."""
    name, teacher, source = "grad_at", "input", "Zagoruyko & Komodakis, ICLR 2017"
    authors_beta = 50.0

    def term(self, ctx, a_s, g_s, a_t, g_t):
        return ctx.l2(a_s, a_t)


@register
class E2KD(Kind):
    """Explanation-enhanced KD: SWA's maps resized to the input size, ``mean_b (1 - cos)`` under its authors'
    reduction; weight 1 as in the e2KD authors' code (``explanation_loss_coef``), 1/2 on the one scale, where the
    term is ``2 (1 - cos)``."""
    name, authors_beta, teacher, source = "e2kd", 1.0, "grads", "Parchami-Araghi et al., ECCV 2024"

    def image_beta(self, beta, elements):
        return beta / 2  # mean (1 - cos) is half the per-image sum of squared differences of unit maps

    def term(self, ctx, a_s, g_s, a_t, g_t):
        return ctx.cosine(ctx.maps(a_s, g_s), ctx.maps(a_t, g_t), ctx.input_size)


@register
class AT(Kind):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) in its multi-layer form: EWA's map, the channel mean
    of the squared activations, normalised and matched by Eq. 2's l2 at the end of every stage, summed over the
    stages (mdistiller's ``at_loss``). Weight 1000 under the mean reduction as mdistiller's AT (the original code
    weighs beta/2 with beta = 1000); that reduction weighs each stage by one over its map's elements, so on the
    one scale the default is the weight of the last stage at the paper's 7x7, 1000/49, and every stage weighs
    the same."""
    name, authors_beta, teacher, source = "at", 1000.0, "acts", "Zagoruyko & Komodakis, ICLR 2017"
    layers = ("stage_ends",)

    def term(self, ctx, a_s, g_s, a_t, g_t):
        return ctx.l2(a_s.pow(2).mean(1), a_t.pow(2).mean(1))


@register
class CATKD(Kind):
    """Class attention transfer (Guo et al., CVPR 2023; GzyAftermath/CAT-KD): the class activation maps of every
    class, the last feature map times the classifier's weights as a 1x1 convolution, average-pooled to
    ``cam_size`` (2 by default), normalised per map and matched by the mean squared error; the task loss beside
    it and no logit KD term, as the authors' CAT-KD. Weight 400 and normalised maps, the authors' defaults
    (their per-dataset configs turn the normalisation off and weigh 0.5 to 4.5); their mean over B x K x s x s
    is the one scale's per-map sum, averaged over B x K, divided by s x s, so 400 is 100 at s = 2. Needs a
    global-pooling head."""
    name, authors_beta, teacher, source = "cat_kd", 400.0, "acts", "Guo et al., CVPR 2023"
    source_elements = 4  # the authors' cam_size 2
    logit_kd, needs_head = False, True

    def term(self, ctx, a_s, g_s, a_t, g_t):
        side = ctx.cfg.cam_size
        ms = ctx.unit(ctx.pool(ctx.class_maps(a_s, "student"), side))
        mt = ctx.unit(ctx.pool(ctx.class_maps(a_t, "teacher"), side))
        return ctx.reduce((ms - mt).pow(2), 2)


@register
class CenterPrior(Kind):
    """A control: the student's SWA map (the teacher's top class) matched by Eq. 2's l2 to a centred Gaussian
    (standard deviation a quarter of the map's side), not to the teacher's map. Does the regularizer teach only
    a centre prior? Weight: SWA's."""
    name, authors_beta, teacher, source = "center_prior", 50.0, "grads", "a control of this book"
    control = True

    def term(self, ctx, a_s, g_s, a_t, g_t):
        ms = ctx.maps(a_s, g_s)
        return ctx.l2(ms, ctx.center(ms))


@register
class SSWAShuffled(Kind):
    """A control: SSWA against the teacher's map of the next image in the batch (the batch rolled by one), so the
    student learns the teacher's kind of map but not the map of its own image. Weight: SSWA's."""
    name, authors_beta, teacher, source = "sswa_shuffled", 50.0, "grads", "a control of this book"
    control = True

    def term(self, ctx, a_s, g_s, a_t, g_t):
        b, c_t = a_t.shape[:2]
        mt = ctx.maps(a_t, g_t, ctx.bernoulli(b, c_t))
        return ctx.l2(ctx.maps(a_s, g_s), mt.roll(1, 0))
