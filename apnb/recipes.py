"""The training recipes: the teacher, distillation, unstructured and structured pruning and quantization,
each fine-tuned with the task (or KD) loss plus beta times an attribution-matching term (paper Eq. 2;
:mod:`apnb.matching`).

One public function per recipe, all in one argument order: the :class:`Setup`, the profile's recipe mapping,
the matching mapping, the runs (``(method, seed)`` pairs or :class:`Job` objects), then options.

- :func:`setup` ``(benchmark, teacher_recipe, device)``: the data, the stored and guarded teacher and its row;
  the first step of every chapter (VOC, ImageNet-like or CIFAR data);
- :func:`students` ``(S, kd, matching, runs)``: knowledge distillation (Sec. 4.1), in cohorts;
- :func:`unstructured_net` ``(S, unstructured, matching, run)``: iterative magnitude pruning with a fine-tune
  after each round (Sec. 4.2);
- :func:`structured_nets` ``(S, structured, matching, runs)``: one-shot l1 channel pruning and its fine-tunes
  (Sec. 4.3), in cohorts;
- :func:`quantized` ``(S, qat, matching, run)``: PTQ (``qat=None``) or QAT at 8 or 4 bits (study 7);
- :func:`compared_networks` ``(S, kd, matching, seed)``: the networks a qualitative figure shows side by side;
- :class:`StructuredStudy`: a grid of structured fine-tunes of the matching's design (chapter 20);
- :func:`job` and :class:`Job`: one network of a recipe (method, seed, overrides).

The recipe mappings (``profiles/*.yml``; :mod:`apnb.validate` checks their fields)::

    benchmark    = {root, synth, image_size, eval_layer, guards, dataset, gtsegs}   the data and premise guards
    teacher      = {spec, pretrained, pretrain, train}                              the full network
    matching     = {layer, p, beta: {method: beta}}                                 the regularizer of Eq. 2
    kd           = {div, T, alpha, train}                                           distillation (Sec. 4.1)
    structured   = {rate, layers, finetune}                                         one-shot l1 pruning (Sec. 4.3)
    unstructured = {rate, iterations, finetune}                                     iterative pruning (Sec. 4.2)

A :class:`Setup` carries what every recipe needs and none is handed back to it: the data (which records
whether it is ``multilabel``), the teacher and its store key, the device, the input size, the scored layer,
the premise guards and the store. Every trained network goes through the checkpoint store
(:class:`apnb.store.Store`) under a hash of its configuration (teacher key, method, hyperparameters, seed),
so a re-run reloads what it trained; each entry is trained under its store lock; each network's initial
weights are drawn from its recipe's seed (:func:`apnb.models.build`); and every trained network, teacher,
student, pruned fine-tune or QAT network, passes its premise guards (:mod:`apnb.guards`) before it is returned
(PTQ trains nothing: its loss of accuracy is a result, not a failed premise).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import __version__
from . import compression as C
from . import models as M
from . import quantization as Q
from . import precision as P
from .config import resolve_device
from .data.splits import load_data, train_images
from .engine import Member, StudentObjective, Supervised, TrainConfig, cohort_key, fit, fit_cohort
from .attribution import filter_relevance
from .evaluate import LocResult, evaluate_model, prediction_metrics
from .guards import Guards, PremiseError, check_min, check_plateau, chance_map
from .kinds import get as kind_of
from .matching import AttributionMatching, MatchingConfig
from .specs import split_method
from .store import Store, config_key

METHODS = ("naive", "ewa", "swa", "sswa")


def _key(d: dict) -> dict:
    return {"apnb": __version__, **d}


# ------------------------------------------------------------------------------------------------ the setup
@dataclass
class Setup:
    """What every chapter starts from (:func:`setup`) and every recipe reads: nothing here is passed again."""
    data: dict  # the splits, ``classes``, ``id`` and ``multilabel`` (apnb.data.splits)
    teacher: torch.nn.Module
    info: dict  # the teacher's training history and store key
    row: dict | None = None  # its :func:`apnb.evaluate.evaluate_model` row (None: data without masks, CIFAR)
    loc: LocResult | None = None  # its maps, the reference of every student's cosine and l2
    spec: dict = field(default_factory=dict)  # the teacher's model spec with num_classes; students derive theirs
    device: torch.device = torch.device("cpu")
    image_size: int = 227  # the side of the images the networks see (structured pruning traces at this size)
    eval_layer: str = "last_conv"  # the layer whose Grad-CAM maps are scored (the benchmark's)
    guards: Guards | dict | None = None  # the benchmark's premise guards, for every network built on the teacher
    store: Store | None = None  # the checkpoint store (None: $APNB_STORE, default build/store)
    started: float = field(default_factory=time.time)  # when the chapter began (setup's call): its wall time

    @property
    def key(self) -> str:
        """The teacher's store key, which every compressed network's key names."""
        return self.info["key"]

    @property
    def multilabel(self) -> bool:
        """VOC (multi-label soft margin, mAP) or single-label (cross-entropy, top-1): the data's own record."""
        return self.data.get("multilabel", True)

    def evaluate(self, model, **kw) -> tuple[dict, LocResult]:
        """:func:`apnb.evaluate.evaluate_model` of ``model`` at the scored layer, against the teacher's maps."""
        return evaluate_model(model, self.data, self.eval_layer, self.device, reference=self.loc,
                              multilabel=self.multilabel, **kw)


def setup(benchmark: dict, teacher_recipe: dict, device="auto", store: Store | None = None, *,
          data: dict | None = None, evaluate: bool = True, progress: bool = False) -> Setup:
    """The data (:func:`apnb.data.splits.load_data` of ``benchmark``, unless ``data`` is given: a second
    teacher on the same data), the teacher of ``teacher_recipe`` ``{spec, pretrained, pretrain, train}``
    (trained once, stored, guarded by ``benchmark["guards"]``) and, with ``evaluate`` and data with masks,
    its row and maps at ``benchmark["eval_layer"]`` (default ``last_conv``)."""
    started = time.time()
    dev = resolve_device(device)
    data = data if data is not None else load_data(benchmark)
    spec = dict(teacher_recipe["spec"], num_classes=len(data["classes"]))
    guards = benchmark.get("guards")
    teacher, info = _teacher(spec, data, teacher_recipe.get("train"), teacher_recipe.get("pretrain"),
                             teacher_recipe.get("pretrained", False), store=store, device=dev, progress=progress,
                             guards=guards)
    S = Setup(data, teacher, info, spec=spec, device=dev, image_size=benchmark.get("image_size", 227),
              eval_layer=benchmark.get("eval_layer", "last_conv"), guards=guards, store=store, started=started)
    if evaluate and "loc" in data:
        S.row, S.loc = evaluate_model(teacher, data, S.eval_layer, dev, multilabel=S.multilabel)
    return S


def student_spec(S: Setup, div: int) -> dict:
    """The student of width divisor ``div``: the teacher's spec with every width divided ``div`` times more."""
    return dict(S.spec, width_div=S.spec.get("width_div", 1) * div)


# ------------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """One network of a recipe: its method (``naive`` or a matching kind, :mod:`apnb.kinds`) and seed, its
    training schedule (``train``, seed included), the matching's weight, drop probability and layers, further
    :class:`~apnb.specs.MatchingConfig` fields (``opts``), whether distillation keeps the logit KD term
    (``kd``; None: the kind's own default), the student's architecture (``spec``; None: the teacher's at the
    recipe's width divisor) and ``eval_fn(model) -> dict``, called after each epoch of a fine-tune the store
    does not hold yet. ``label``: how a chapter names it (``sswa@paper``: SSWA at its paper's weight); the
    store key knows only the method and the weight."""
    method: str
    seed: int
    train: dict
    beta: float | None = None
    p: float = 0.3
    layers: tuple = ("last_conv",)
    opts: dict | None = None
    kd: bool | None = None
    spec: dict | None = None
    eval_fn: Callable | None = None
    label: str | None = None

    def matching(self) -> AttributionMatching:
        """The regularizer of this job (``naive`` is the kind ``none``)."""
        kind = {"naive": "none", "kd": "none"}.get(self.method, self.method)
        return AttributionMatching(MatchingConfig(kind=kind, beta=self.beta, p=self.p, layers=tuple(self.layers),
                                                  **(self.opts or {})))

    @property
    def logit_kd(self) -> bool:
        return kind_of(self.matching().kind).logit_kd if self.kd is None else self.kd


def job(method: str, seed: int, train: dict, matching: dict, beta: float | None = None, p: float | None = None,
        layers: list[str] | None = None, opts: dict | None = None, eval_fn=None, kd: bool | None = None) -> Job:
    """One network of a recipe: ``train`` at ``seed``; ``beta`` defaults to ``matching["beta"][method]`` (None for
    naive: the kind's default), ``p`` to ``matching["p"]`` and ``layers`` to ``[matching["layer"]]``. A method
    ``<kind>@paper`` is the kind at the weight its paper states, on the one scale (the ``beta`` of its
    :class:`apnb.kinds.Kind`), labelled so."""
    kind, at_paper = split_method(method)
    if beta is None:
        beta = kind_of(kind).beta if at_paper else matching["beta"].get(kind)
    return Job(kind, seed, dict(train, seed=seed), beta, matching["p"] if p is None else p,
               tuple(layers or [matching["layer"]]), opts, kd, None, eval_fn, label=method)


def _jobs(runs, train: dict, matching: dict) -> list[Job]:
    return [r if isinstance(r, Job) else job(r[0], r[1], train, matching) for r in runs]


# ------------------------------------------------------------------------------------------------ recipes
def students(S: Setup, kd: dict, matching: dict, runs, div: int | None = None, progress: bool = False,
             guard: str = "raise") -> list:
    """Knowledge distillation of students from scratch with KD + matching (paper Sec. 4.1), one per run, trained
    in cohorts: the students of one seed and one architecture share every batch and one teacher pass (each ends
    exactly as it would alone, under the same store key). ``kd = {div, T, alpha, train}``; ``div`` overrides
    the width divisor. The students of one seed share their initialisation and data order across methods
    (paired seeds). Returns ``[(student, info)]`` in the order of ``runs``.

    Every student must beat chance (the premise guard). ``guard="raise"`` (default) stops at the first that does
    not, with a :class:`~apnb.guards.PremiseError`; ``guard="report"`` returns ``(None, info)`` for it instead,
    ``info["premise_error"]`` saying why, so that a chapter can list it and score nothing on it (01's students
    of other sizes, trained at the weight the rule chose for the main size)."""
    _guard_mode(guard)
    spec = student_spec(S, div or kd["div"])
    jobs = [j if j.spec else dataclasses.replace(j, spec=spec) for j in _jobs(runs, kd["train"], matching)]
    return _distill(S, jobs, T=kd["T"], alpha=kd["alpha"], progress=progress, guard=guard)


def structured_nets(S: Setup, structured: dict, matching: dict, runs, progress: bool = False,
                    guard: str = "raise") -> list:
    """One-shot structured pruning (``structured = {rate, layers, finetune, criterion, reference_images}``) of the
    teacher, then a fine-tune with task loss + beta * matching for each run, in cohorts. ``criterion``: ``l1``
    (default; Li et al.: filters ranked by their weights' l1 norm) or ``lrp`` (pruning by explaining, Yeom et
    al. 2021: by the LRP relevance that reaches each filter on ``reference_images`` training images, default
    64, for the teacher's top-1 class; :func:`apnb.attribution.filter_relevance`). Every run prunes the same teacher at
    the same rate (deterministic), so all share one architecture; ``layers`` names the convolutions to prune
    (default: all). Returns ``[(model, info)]`` in the order of ``runs``; ``info`` holds the parameter and MAC
    counts before and after. ``guard``: as :func:`students` (``"report"`` returns ``(None, info)`` with
    ``info["premise_error"]`` for a network that does not beat chance)."""
    _guard_mode(guard)
    return _prune_structured(S, _jobs(runs, structured["finetune"], matching), rate=structured["rate"],
                             prune_layers=structured.get("layers"), criterion=structured.get("criterion", "l1"),
                             reference_images=structured.get("reference_images", 64), progress=progress,
                             guard=guard)


def unstructured_net(S: Setup, unstructured: dict, matching: dict, run, rate: float | None = None,
                     callback=None, progress: bool = False):
    """Iterative global magnitude pruning (Han et al.; ``unstructured = {rate, iterations, finetune}``) with a
    fine-tune (task loss + beta * matching) after each round at ``rate`` (default ``unstructured["rate"]``).
    ``run``: ``(method, seed)`` or a :class:`Job`. ``callback(it, rate, model)`` sees the network after each
    round. Returns ``(model, info)``: the cumulative ``rate``, the ``iterations`` and the last round's ``key``."""
    j, = _jobs([run], unstructured["finetune"], matching)
    return _prune_unstructured(S, j, rho_w=unstructured["rate"] if rate is None else rate,
                               iterations=unstructured["iterations"], callback=callback, progress=progress)


def quantized(S: Setup, qat: dict | None, matching: dict, run, bits: int = 8, calib_images: int = 256,
              progress: bool = False):
    """Quantization of the teacher (study 7; :mod:`apnb.quantization`) to ``bits``: PTQ when ``qat`` is None
    (min/max calibration on ``calib_images`` training images drawn from the run's seed; only ``naive``), else
    QAT with schedule ``qat`` and the run's matching against the fp32 network (Eq. 2). Returns ``(model,
    info)``: the frozen fake-quant network."""
    j, = _jobs([run], qat or {}, matching)
    return _quantize(S, j, qat is not None, bits=bits, calib_images=calib_images, progress=progress)


def compared_networks(S: Setup, kd: dict, matching: dict, seed: int, methods=("naive", "sswa"),
                      structured: dict | None = None, div: int | None = None) -> dict:
    """The networks a qualitative comparison shows side by side: ``{"full": S.teacher}``, then for each method
    ``"KD <method>"`` (:func:`students`, width divisor ``div``, default ``kd["div"]``) and, with a ``structured``
    recipe, ``"structured <method>"`` (:func:`structured_nets`), all at ``seed``."""
    nets = {"full": S.teacher}
    kds = students(S, kd, matching, [(m, seed) for m in methods], div=div)
    pruned = structured_nets(S, structured, matching, [(m, seed) for m in methods]) if structured else None
    for i, m in enumerate(methods):
        nets[f"KD {m}"] = kds[i][0]
        if pruned is not None:
            nets[f"structured {m}"] = pruned[i][0]
    return nets


class StructuredStudy:
    """The fine-tunes of a study of the regularizer's design (chapter 20): one structured recipe, one matching
    recipe, and jobs that override a field of the matching (``beta``, ``p``, ``layers``, ``opts``).

    :meth:`train` trains a grid of them in cohorts (:func:`structured_nets`); :meth:`run` gives one job's
    network evaluated at ``layer`` (default: the Setup's scored layer) against the teacher
    (:func:`apnb.evaluate.evaluate_model`), each evaluated once however many studies ask for it."""

    def __init__(self, S: Setup, structured: dict, matching: dict, layer: str | None = None):
        self.S, self.structured, self.matching = S, structured, matching
        self.layer = layer or S.eval_layer
        self._rows: dict[str, tuple[dict, dict]] = {}

    def job(self, method: str, seed: int, eval_fn=None, **match) -> Job:
        """One fine-tune (:func:`job`) with the study's schedule; ``match`` overrides the matching recipe."""
        return job(method, seed, self.structured["finetune"], self.matching, eval_fn=eval_fn, **match)

    def train(self, jobs: list[Job], progress: bool = False) -> list:
        """Train (or load) every job, in cohorts; returns ``[(model, info)]`` in order."""
        return structured_nets(self.S, self.structured, self.matching, jobs, progress)

    def run(self, method: str, seed: int, eval_fn=None, **match) -> tuple[dict, dict]:
        """``(row, info)`` of one job, evaluated once. ``eval_fn(model) -> dict`` is called after each epoch
        of a fine-tune the store does not hold yet (its values land in ``info["history"]``, stored with the
        network); a call with one skips the cache of rows."""
        key = repr((method, seed, sorted(match.items())))
        if eval_fn is None and key in self._rows:
            return self._rows[key]
        (net, info), = self.train([self.job(method, seed, eval_fn=eval_fn, **match)])
        row, _ = evaluate_model(net, self.S.data, self.layer, self.S.device, reference=self.S.loc,
                                multilabel=self.S.multilabel)
        self._rows[key] = (row, info)
        return row, info


# ------------------------------------------------------------------------------------------------ the core
# Called by keyword from the recipes above. Each builds its store configuration exactly as the first store
# did (a field that came later, such as ``multilabel`` or ``kd``, enters a key only off its default).

def _teacher(spec: dict, data: dict, train: dict | None, pretrain: dict | None, pretrained: bool, *,
             store: Store | None, device, progress: bool, guards: Guards | dict | None):
    """Train (or load) the full network.

    Paper: ImageNet-pretrained torchvision weights (``pretrained=True``), then fine-tuned on VOC train.
    Synthetic stand-in: ``pretrain`` epochs on the cue-free ``pretrain`` split, then ``train`` on the
    cued split. Single-label data (ImageNet, CIFAR; cross-entropy): ``train=None`` with ``pretrained=True`` uses
    the torchvision network as it is (paper supplement B). The initial weights are drawn from the seed of
    the first phase. ``guards``: the pretraining loss must leave its plateau and the mAP on val / the
    cue-free val copy must clear the thresholds, else :class:`apnb.guards.PremiseError`."""
    store = store or Store()
    g = Guards.of(guards)
    multilabel = data.get("multilabel", True)
    train, pretrain = P.keyed(train, resolve_device(device)), P.keyed(pretrain, resolve_device(device))
    cfg = _key({"role": "teacher", "spec": spec, "train": train, "pretrain": pretrain, "pretrained": pretrained,
                "data": data["id"], **({} if multilabel else {"multilabel": False})})
    key = config_key(cfg)
    seed = (pretrain or train or {}).get("seed", 0)
    with store.lock("teacher", cfg):
        model = M.build(spec, seed=seed)
        info = store.load("teacher", cfg, model)
        if info is None:
            if pretrained:
                M.load_imagenet_weights(model, spec["arch"])
            hist = []
            d = store.dir("teacher", cfg)
            if pretrain:
                if "pretrain" not in data:
                    raise ValueError("pretrain epochs requested but the data has no ImageSets/Main/pretrain.txt split")
                r = fit(model, Supervised(multilabel), data["pretrain"], TrainConfig(**pretrain), d / "pretrain.ckpt",
                        device=device, progress=progress, key=key)
                hist += [{"phase": "pretrain", **h} for h in r.history]
                check_plateau("teacher", hist, g.plateau, "pretrain")
            if not train and not pretrained:
                raise ValueError("the teacher needs train=<epochs, lr, ...> unless pretrained=True")
            ips = None
            if train:
                r = fit(model, Supervised(multilabel), data["train"], TrainConfig(**train), d / "train.ckpt",
                        device=device, progress=progress, key=key)
                hist += [{"phase": "train", **h} for h in r.history]
                ips = r.images_per_s
            info = {"history": hist, "key": key, "images_per_s": ips}
            store.save("teacher", cfg, model, info)
    model = model.to(resolve_device(device)).eval()
    check_plateau("teacher", info["history"], g.plateau, "pretrain" if pretrain else "train")
    if multilabel and (g.teacher_map is not None or g.teacher_map_nocue is not None):
        check_min("teacher", "mAP (val)", prediction_metrics(model, data["val"], device)["mAP"], g.teacher_map)
        if "val_nocue" in data:
            check_min("teacher", "mAP_nocue (cue-free val)",
                      prediction_metrics(model, data["val_nocue"], device)["mAP"], g.teacher_map_nocue)
    return model, info


def _guard(S: Setup, name: str, model, device=None) -> None:
    """A compressed network must beat chance: mAP over :func:`apnb.guards.chance_map` + ``student_over_chance``
    (multi-label data; single-label data has no chance-level mAP to clear). ``device``: default the Setup's
    (a fake-quant network is checked where it is returned, on the CPU)."""
    g = Guards.of(S.guards)
    if g.student_over_chance is None or not S.multilabel or not hasattr(S.data["val"], "labels"):
        return
    chance = chance_map(S.data["val"].labels)
    mAP = prediction_metrics(model, S.data["val"], device or S.device)["mAP"]
    check_min(name, f"mAP (val; chance is {chance:.3f})", mAP, chance + g.student_over_chance)


def _guard_mode(guard: str) -> None:
    if guard not in ("raise", "report"):
        raise ValueError(f"guard={guard!r}: use raise or report")


def _guarded(S: Setup, name: str, model, info: dict, guard: str) -> tuple:
    """``(model, info)`` when ``model`` passes :func:`_guard`; else, with ``guard="report"``, ``(None, info)``
    with the one-line ``premise_error`` and its ``premise_reason`` (:attr:`apnb.guards.PremiseError.reason`), and
    with ``guard="raise"`` the :class:`~apnb.guards.PremiseError`."""
    try:
        _guard(S, name, model)
    except PremiseError as e:
        if guard == "raise":
            raise
        return None, {**info, "premise_error": str(e), "premise_reason": e.reason}
    return model, info


def _extra(S: Setup) -> dict:
    return {} if S.multilabel else {"multilabel": False}


def _train_in_cohorts(store: Store, kind: str, jobs: list[dict], train_set, device, progress) -> list[dict]:
    """Load or train store entries, training the missing ones in cohorts (:func:`apnb.engine.fit_cohort`).

    Each job: ``cfg`` (its store configuration), ``model`` (built from its seed), ``objective()``, ``train``
    (a :class:`TrainConfig` dict), optional ``eval_fn``, ``name`` and ``group`` (what else must agree for
    two jobs to share batches: the architecture). Jobs with equal ``(cohort_key, group)`` train together;
    each group takes its members' store locks in key order, so two processes cannot deadlock and never train
    one entry twice. A member the store already holds is loaded under its lock and released at once: only the
    entries a cohort trains stay locked while it trains, so another process that needs a finished network of
    the same cohort reads it without waiting. Returns each job's info, in order."""
    infos: list[dict | None] = [None] * len(jobs)
    first: dict[str, int] = {}  # a configuration asked for twice is trained once
    groups: dict = {}
    for i, j in enumerate(jobs):
        if first.setdefault(config_key(j["cfg"]), i) != i:
            continue
        g = (cohort_key(TrainConfig(**j["train"])), json.dumps(j.get("group"), sort_keys=True, default=str))
        groups.setdefault(g, []).append(i)
    for idx in groups.values():
        idx = sorted(idx, key=lambda i: config_key(jobs[i]["cfg"]))
        with contextlib.ExitStack() as locks:
            todo = []
            for i in idx:
                held = contextlib.ExitStack()
                held.enter_context(store.lock(kind, jobs[i]["cfg"]))
                infos[i] = store.load(kind, jobs[i]["cfg"], jobs[i]["model"])
                if infos[i] is None:
                    todo.append(i)
                    locks.enter_context(held.pop_all())  # held until the cohort has saved it
                else:
                    held.close()  # finished: nobody trains it again
            for i in todo:  # clear errors before any long compute
                if "check" in jobs[i]:
                    jobs[i]["check"]()
            members = [Member(jobs[i]["model"], jobs[i]["objective"](), TrainConfig(**jobs[i]["train"]),
                              store.dir(kind, jobs[i]["cfg"]) / "train.ckpt", config_key(jobs[i]["cfg"]),
                              jobs[i].get("eval_fn"), jobs[i].get("name", kind)) for i in todo]
            if len(members) == 1:  # alone: fit itself (torchrun-capable); a cohort gives the same network
                m = members[0]
                results = [fit(m.model, m.objective, train_set, m.cfg, m.ckpt, eval_fn=m.eval_fn, device=device,
                               progress=progress, key=m.key)]
            else:
                results = fit_cohort(members, train_set, device=device, progress=progress)
            for i, r in zip(todo, results):
                infos[i] = {"history": r.history, "images_per_s": r.images_per_s, "seconds": r.seconds,
                            "cohort": r.cohort}
                store.save(kind, jobs[i]["cfg"], jobs[i]["model"], infos[i])
    for i, j in enumerate(jobs):
        if infos[i] is None:  # a repeat of an earlier job
            infos[i] = store.load(kind, j["cfg"], j["model"])
    return infos


def _distill(S: Setup, jobs: list[Job], *, T: float, alpha: float, progress: bool, guard: str = "raise") -> list:
    """Distillation of every job's student (``job.spec``) from ``S.teacher``, in cohorts (see :func:`students`)."""
    store, device = S.store or Store(), S.device
    work = []
    for j in jobs:
        train = P.keyed(j.train, resolve_device(device))
        reg, logit_kd = j.matching(), j.logit_kd
        cfg = _key({"role": "kd", "teacher": S.key, "spec": j.spec, "method": j.method, "match": reg.cfg.to_dict(),
                    "train": train, "T": T, "alpha": alpha, **_extra(S), **({} if logit_kd else {"kd": False})})
        student = M.build(j.spec, seed=train.get("seed", 0))
        work.append({"cfg": cfg, "model": student, "train": train, "eval_fn": j.eval_fn, "group": j.spec,
                     "name": f"student {j.label or j.method} /{j.spec.get('width_div')} seed {train.get('seed', 0)}",
                     "check": (lambda reg=reg, st=student: reg.check(st, S.teacher.cpu(), S.data["train"][0][0][None])),
                     "objective": (lambda reg=reg, k=logit_kd: StudentObjective(S.teacher, reg, kd=k, T=T, alpha=alpha,
                                                                                 multilabel=S.multilabel))})
    infos = _train_in_cohorts(store, "student", work, S.data["train"], device, progress)
    out = []
    for w, info in zip(work, infos):
        student = w["model"].to(resolve_device(device)).eval()
        out.append(_guarded(S, w["name"], student, info, guard))
    return out


def _prune_structured(S: Setup, jobs: list[Job], *, rate: float, prune_layers: list[str] | None,
                      criterion: str = "l1", reference_images: int = 64, progress: bool,
                      guard: str = "raise") -> list:
    """One-shot structured pruning of ``S.teacher`` and each job's fine-tune, in cohorts (see
    :func:`structured_nets`)."""
    store, device = S.store or Store(), S.device
    frozen_teacher = copy.deepcopy(S.teacher).cpu().eval()
    x0 = torch.zeros(1, 3, S.image_size, S.image_size)
    if criterion not in ("l1", "lrp"):
        raise ValueError(f"structured.criterion={criterion!r}: use l1 or lrp")
    scores, how = None, {}
    if criterion == "lrp":  # one relevance ranking of the teacher's filters serves every job
        x_ref, _ = train_images(S.data, reference_images, 0)
        with torch.no_grad():
            target = frozen_teacher(x_ref).argmax(1)
        scores = filter_relevance(copy.deepcopy(frozen_teacher), x_ref, target)
        how = {"criterion": "lrp", "reference_images": len(x_ref)}
    work = []
    for j in jobs:
        train = P.keyed(j.train, resolve_device(device))
        reg = j.matching()
        model = copy.deepcopy(S.teacher).cpu()
        counts = C.prune_l1_structured(model, rate, x0, prune_layers, scores)
        cfg = _key({"role": "structured", "teacher": S.key, "method": j.method, "match": reg.cfg.to_dict(),
                    "train": train, "rate": rate, "layers": prune_layers, **_extra(S), **how})  # key field: layers
        work.append({"cfg": cfg, "model": model, "train": train, "eval_fn": j.eval_fn, "counts": counts,
                     "group": {"rate": rate, "layers": prune_layers, **how},
                     "name": f"structured {j.label or j.method} seed {train.get('seed', 0)}",
                     "check": (lambda reg=reg, m=model: reg.check(m, frozen_teacher.cpu(), x0)),
                     "objective": (lambda reg=reg: StudentObjective(frozen_teacher, reg, kd=False,
                                                                   multilabel=S.multilabel))})
    infos = _train_in_cohorts(store, "structured", work, S.data["train"], device, progress)
    out = []
    for w, info in zip(work, infos):
        c = w["counts"]
        info = dict(info, params_before=c[0], params_after=c[1], macs_before=c[2], macs_after=c[3])
        out.append(_guarded(S, w["name"], w["model"].eval(), info, guard))
    return out


def _prune_unstructured(S: Setup, j: Job, *, rho_w: float, iterations: int, callback, progress: bool):
    """Iterative global magnitude pruning of ``S.teacher`` at ``rho_w`` per round with ``j``'s fine-tune after each
    of ``iterations`` rounds (see :func:`unstructured_net`); the regularizer applies in every round."""
    store, device = S.store or Store(), S.device
    train = P.keyed(j.train, resolve_device(device))
    reg = j.matching()
    frozen_teacher = copy.deepcopy(S.teacher).eval()
    model = copy.deepcopy(S.teacher)
    for it in range(1, iterations + 1):
        cfg = _key({"role": "unstructured", "teacher": S.key, "method": j.method, "match": reg.cfg.to_dict(),
                    "train": train, "rho_w": rho_w, "iteration": it, **_extra(S)})
        C.prune_global_unstructured(model, rho_w)
        with store.lock("pruned", cfg):
            if store.load("pruned", cfg, model) is None:
                obj = StudentObjective(frozen_teacher, reg, kd=False, multilabel=S.multilabel)
                fit(model, obj, S.data["train"], TrainConfig(**train), store.dir("pruned", cfg) / "train.ckpt",
                    device=device, progress=progress, key=config_key(cfg))
                store.save("pruned", cfg, model, {"rate": C.cumulative_rate(rho_w, it)})
        if callback is not None:
            callback(it, C.cumulative_rate(rho_w, it), model)
    model = model.eval()
    _guard(S, f"unstructured {j.method} seed {train.get('seed', 0)}", model)
    return model, {"rate": C.cumulative_rate(rho_w, iterations), "iterations": iterations, "key": config_key(cfg)}


def _quantize(S: Setup, j: Job, qat: bool, *, bits: int, calib_images: int, progress: bool):
    """PTQ (``qat=False``: min/max calibration on ``calib_images`` training images, the first ones of a permutation
    drawn from the job's seed; not stored, it takes seconds) or QAT (the network prepared with moving-average
    observers from those images, fine-tuned with the job's schedule and matching against the fp32 network,
    stored) of ``S.teacher`` (see :func:`quantized`)."""
    device = S.device
    x_cal, _ = train_images(S.data, calib_images, j.seed)
    name = f"{'QAT' if qat else 'PTQ'} {j.method} int{bits} seed {j.seed}"
    if not qat:
        if j.method != "naive":
            raise ValueError(f"PTQ trains nothing, so method={j.method!r} cannot apply: use naive, or give a qat "
                             f"schedule for QAT")
        q = Q.prepare(S.teacher, x_cal[:64], bits, "ptq")
        # not guarded: PTQ trains nothing, and what it costs in accuracy is what chapter 22 measures
        return Q.calibrate(q, x_cal), {"mode": "ptq", "bits": bits, "calib_images": len(x_cal)}
    store = S.store or Store()
    train = P.keyed(j.train, resolve_device(device))
    reg = j.matching()
    cfg = _key({"role": "qat", "teacher": S.key, "method": j.method, "match": reg.cfg.to_dict(), "train": train,
                "bits": bits, "calib_images": calib_images, "engine": Q.ENGINE, **_extra(S)})
    q = Q.prepare(S.teacher, x_cal[:64], bits, "qat")
    with store.lock("quantized", cfg):
        info = store.load("quantized", cfg, q)
        if info is None:
            frozen_teacher = copy.deepcopy(S.teacher).eval()
            reg.check(q, frozen_teacher.cpu(), x_cal[:1])
            r = fit(q, StudentObjective(frozen_teacher, reg, kd=False, multilabel=S.multilabel), S.data["train"],
                    TrainConfig(**train), store.dir("quantized", cfg) / "train.ckpt", device=device,
                    progress=progress, key=config_key(cfg))
            Q.freeze(q)
            info = {"history": r.history, "seconds": r.seconds}
            store.save("quantized", cfg, q, info)
    q = Q.freeze(q.cpu())
    _guard(S, name, q, "cpu")
    return q, dict(info, mode="qat", bits=bits)


