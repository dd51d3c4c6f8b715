"""The training recipes: the teacher, distillation, unstructured and structured pruning and quantization,
each fine-tuned with the task (or KD) loss plus beta times an attribution-matching term (paper Eq. 2;
:mod:`apnb.matching`), and the setup every VOC notebook starts from.

Every trained network goes through the checkpoint store (:class:`apnb.store.Store`) under a hash of its
full configuration (teacher key, method, hyperparameters, seed), so the teacher is trained once and a
re-run notebook reloads what it already trained. Each network's initial weights are drawn from its recipe's
seed (:func:`apnb.models.build` with ``seed``), so a store key stands for one network whatever ran before
it; each entry is trained under its store lock (:meth:`apnb.store.Store.lock`); a trained network passes
its premise guards (:mod:`apnb.guards`) before it is returned. Every recipe returns ``(model, info)``;
``match_layers`` names the layers the regularizer matches, ``prune_layers`` the convolutions pruning removes
channels from, and ``multilabel=False`` selects the single-label (ImageNet, CIFAR) losses and metrics.

The notebooks call the recipes through the profiles' mappings: :func:`voc_setup` takes ``benchmark`` and
``teacher_recipe`` (:func:`train_teacher`); :func:`student`, :func:`structured_nets`, :func:`unstructured_net`
and :func:`quantized` take a :class:`Setup` and a recipe mapping (``matching``, ``kd``, ``structured``,
``unstructured``; the end of this module), and give the networks of the flat functions.
"""
from __future__ import annotations

import contextlib
import copy
import json
from typing import NamedTuple

import torch

from . import __version__
from . import compression as C
from . import models as M
from . import quantization as Q
from . import precision as P
from .config import resolve_device
from .data.splits import train_images, voc_data
from .engine import StudentObjective, Member, Supervised, TrainConfig, cohort_key, fit, fit_cohort
from .evaluate import LocResult, evaluate_model, prediction_metrics
from .guards import Guards, check_min, check_plateau, chance_map
from .matching import AttributionMatching, MatchingConfig
from .store import Store, config_key

METHODS = ("naive", "ewa", "swa", "sswa")


def _key(d: dict) -> dict:
    return {"apnb": __version__, **d}


def get_teacher(spec: dict, data: dict, train: dict | None, pretrain: dict | None = None, pretrained: bool = False,
                store: Store | None = None, device="auto", progress=True, multilabel: bool = True,
                guards: Guards | dict | None = None):
    """Train (or load) the full network.

    Paper: ImageNet-pretrained torchvision weights (``pretrained=True``), then fine-tuned on VOC train.
    Synthetic stand-in: ``pretrain`` epochs on the cue-free ``pretrain`` split, then ``train`` on the
    cued split. ImageNet (``multilabel=False``, cross-entropy): ``train=None`` with ``pretrained=True`` uses
    the torchvision network as it is (paper supplement B). The initial weights are drawn from the seed of
    the first phase. ``guards`` (:class:`apnb.specs.Guards`): the pretraining loss must leave its plateau
    and the mAP on val / the cue-free val copy must clear the thresholds, else :class:`PremiseError`.
    Returns ``(model, info)``; ``info`` holds the training history and its store key.
    """
    store = store or Store()
    g = Guards.of(guards)
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


def check_student(name: str, model, data: dict, guards: Guards | dict | None, device="auto") -> None:
    """A compressed network must beat chance: mAP over :func:`apnb.guards.chance_map` + ``student_over_chance``."""
    g = Guards.of(guards)
    if g.student_over_chance is None or not hasattr(data["val"], "labels"):
        return
    chance = chance_map(data["val"].labels)
    check_min(name, f"mAP (val; chance is {chance:.3f})", prediction_metrics(model, data["val"], device)["mAP"],
              chance + g.student_over_chance)


def matching_for(method: str, beta: float | None = None, p: float = 0.3, layers=("last_conv",), **opts):
    kind = {"naive": "none", "kd": "none"}.get(method, method)
    return AttributionMatching(MatchingConfig(kind=kind, beta=beta, p=p, layers=tuple(layers), **opts))


def _train_in_cohorts(store: Store, kind: str, jobs: list[dict], train_set, device, progress) -> list[dict]:
    """Load or train store entries, training the missing ones in cohorts (:func:`apnb.engine.fit_cohort`).

    Each job: ``cfg`` (its store configuration), ``model`` (built from its seed), ``objective()``, ``train``
    (a :class:`TrainConfig` dict), optional ``eval_fn``, ``name`` and ``group`` (what else must agree for
    two jobs to share batches: the architecture). Jobs with equal ``(cohort_key, group)`` train together;
    each group holds its members' store locks, taken in key order, so two processes cannot deadlock and
    never train one entry twice. Returns each job's info, in order."""
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
                locks.enter_context(store.lock(kind, jobs[i]["cfg"]))
                infos[i] = store.load(kind, jobs[i]["cfg"], jobs[i]["model"])
                if infos[i] is None:
                    todo.append(i)
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


def distill_many(teacher, teacher_key: str, jobs: list[dict], data: dict, T: float = 4.0, alpha: float = 0.9,
                 store: Store | None = None, device="auto", progress=True, guards: Guards | dict | None = None):
    """Knowledge distillation of several students from scratch with KD + matching (paper Sec. 4.1), trained
    in cohorts: the students of one seed and one architecture share every batch and one teacher pass.

    Each job is a dict of :func:`apnb.recipes.distill`'s arguments: ``student_spec``, ``method``, ``train`` and
    optionally ``beta``, ``p``, ``match_layers``, ``match_opts``, ``eval_fn``. The student's initial weights are drawn from
    ``train["seed"]``, so the students of one seed share their initialisation and data order across
    methods (paired seeds: common random numbers). A student ends exactly as :func:`apnb.recipes.distill` alone would
    make it (:func:`apnb.engine.fit_cohort`), under the same store key. Returns ``[(student, info)]``."""
    store = store or Store()
    jobs = [dict(j, train=P.keyed(j["train"], resolve_device(device))) for j in jobs]
    work = []
    for j in jobs:
        reg = matching_for(j["method"], j.get("beta"), j.get("p", 0.3), j.get("match_layers", ("last_conv",)),
                           **(j.get("match_opts") or {}))
        cfg = _key({"role": "kd", "teacher": teacher_key, "spec": j["student_spec"], "method": j["method"],
                    "match": reg.cfg.to_dict(), "train": j["train"], "T": T, "alpha": alpha})
        student = M.build(j["student_spec"], seed=j["train"].get("seed", 0))
        work.append({"cfg": cfg, "model": student, "train": j["train"], "eval_fn": j.get("eval_fn"),
                     "group": j["student_spec"],
                     "name": f"student {j['method']} /{j['student_spec'].get('width_div')} seed {j['train'].get('seed', 0)}",
                     "check": (lambda reg=reg, st=student: reg.check(st, teacher.cpu(), data["train"][0][0][None])),
                     "objective": (lambda reg=reg: StudentObjective(teacher, reg, kd=True, T=T, alpha=alpha))})
    infos = _train_in_cohorts(store, "student", work, data["train"], device, progress)
    out = []
    for w, info in zip(work, infos):
        student = w["model"].to(resolve_device(device)).eval()
        check_student(w["name"], student, data, guards, device)
        out.append((student, info))
    return out


def distill(teacher, teacher_key: str, student_spec: dict, method: str, data: dict, train: dict,
            beta: float | None = None, p: float = 0.3, match_layers=("last_conv",), match_opts: dict | None = None,
            T: float = 4.0, alpha: float = 0.9, store: Store | None = None, device="auto", progress=True,
            eval_fn=None, guards: Guards | dict | None = None):
    """Knowledge distillation of one student from scratch with KD + matching ``method`` (paper Sec. 4.1):
    :func:`apnb.recipes.distill_many` with one job. ``guards``: the student must beat chance. Returns ``(student, info)``."""
    job = {"student_spec": student_spec, "method": method, "train": train, "beta": beta, "p": p,
           "match_layers": match_layers, "match_opts": match_opts, "eval_fn": eval_fn}
    return distill_many(teacher, teacher_key, [job], data, T, alpha, store, device, progress, guards)[0]


def prune_unstructured(teacher, teacher_key: str, method: str, data: dict, train: dict, rho_w: float = 0.2,
                       iterations: int = 16, beta: float | None = None, p: float = 0.3,
                       match_layers=("last_conv",), store: Store | None = None, device="auto", progress=True,
                       callback=None, multilabel: bool = True):
    """Iterative global magnitude pruning (Han et al.) with fine-tuning (task loss + beta * matching) after
    each of ``iterations`` rounds at ``rho_w``; the regularizer applies in every round. ``callback(it, rate,
    model)`` sees the network after each round's fine-tune. Returns ``(model, info)``: ``info`` holds the
    cumulative ``rate``, the ``iterations`` and the last round's store ``key``."""
    store = store or Store()
    train = P.keyed(train, resolve_device(device))
    reg = matching_for(method, beta, p, match_layers)
    frozen_teacher = copy.deepcopy(teacher).eval()
    model = copy.deepcopy(teacher)
    extra = {} if multilabel else {"multilabel": False}
    for it in range(1, iterations + 1):
        cfg = _key({"role": "unstructured", "teacher": teacher_key, "method": method, "match": reg.cfg.to_dict(),
                    "train": train, "rho_w": rho_w, "iteration": it, **extra})
        C.prune_global_unstructured(model, rho_w)
        with store.lock("pruned", cfg):
            if store.load("pruned", cfg, model) is None:
                obj = StudentObjective(frozen_teacher, reg, kd=False, multilabel=multilabel)
                fit(model, obj, data["train"], TrainConfig(**train), store.dir("pruned", cfg) / "train.ckpt",
                    device=device, progress=progress, key=config_key(cfg))
                store.save("pruned", cfg, model, {"rate": C.cumulative_rate(rho_w, it)})
        if callback is not None:
            callback(it, C.cumulative_rate(rho_w, it), model)
    return model.eval(), {"rate": C.cumulative_rate(rho_w, iterations), "iterations": iterations,
                          "key": config_key(cfg)}


def prune_structured_many(teacher, teacher_key: str, jobs: list[dict], data: dict, rate: float = 0.7,
                          image_size: int = 227, prune_layers: list[str] | None = None,
                          store: Store | None = None, device="auto", progress=True, multilabel: bool = True):
    """One-shot l1 structured pruning (Li et al.) of the teacher, then fine-tuning of each job with task loss +
    beta * matching, in cohorts: the fine-tunes of one seed share every batch and one teacher pass.

    Each job is a dict of :func:`apnb.recipes.prune_structured`'s per-network arguments: ``method``, ``train`` and
    optionally ``beta``, ``p``, ``match_layers``, ``match_opts`` (further :class:`~apnb.specs.MatchingConfig`
    fields: center_logits, relu, per_neuron, ...) and ``eval_fn(model) -> dict`` (called after each
    fine-tuning epoch; its rows land in ``info["history"]``). Every job prunes the same teacher at the same
    ``rate`` (deterministic), so all share one architecture; ``prune_layers`` names the convolutions to prune
    (default: all). Returns ``[(model, info)]``."""
    store = store or Store()
    jobs = [dict(j, train=P.keyed(j["train"], resolve_device(device))) for j in jobs]
    frozen_teacher = copy.deepcopy(teacher).cpu().eval()
    x0 = torch.zeros(1, 3, image_size, image_size)
    extra = {} if multilabel else {"multilabel": False}
    work = []
    for j in jobs:
        reg = matching_for(j["method"], j.get("beta"), j.get("p", 0.3), j.get("match_layers", ("last_conv",)),
                           **(j.get("match_opts") or {}))
        model = copy.deepcopy(teacher).cpu()
        counts = C.prune_l1_structured(model, rate, x0, prune_layers)
        cfg = _key({"role": "structured", "teacher": teacher_key, "method": j["method"], "match": reg.cfg.to_dict(),
                    "train": j["train"], "rate": rate, "layers": prune_layers, **extra})  # key field: layers
        work.append({"cfg": cfg, "model": model, "train": j["train"], "eval_fn": j.get("eval_fn"), "counts": counts,
                     "group": {"rate": rate, "layers": prune_layers},
                     "name": f"structured {j['method']} seed {j['train'].get('seed', 0)}",
                     "check": (lambda reg=reg, m=model: reg.check(m, frozen_teacher.cpu(), x0)),
                     "objective": (lambda reg=reg: StudentObjective(frozen_teacher, reg, kd=False, multilabel=multilabel))})
    infos = _train_in_cohorts(store, "structured", work, data["train"], device, progress)
    out = []
    for w, info in zip(work, infos):
        c = w["counts"]
        info = dict(info, params_before=c[0], params_after=c[1], macs_before=c[2], macs_after=c[3])
        out.append((w["model"].eval(), info))
    return out


def prune_structured(teacher, teacher_key: str, method: str, data: dict, train: dict, rate: float = 0.7,
                     image_size: int = 227, prune_layers: list[str] | None = None, beta: float | None = None,
                     p: float = 0.3, match_layers=("last_conv",), store: Store | None = None, device="auto",
                     progress=True, multilabel: bool = True, match_opts: dict | None = None, eval_fn=None):
    """One-shot l1 structured pruning (Li et al.) then fine-tuning with task loss + beta * matching:
    :func:`apnb.recipes.prune_structured_many` with one job. Returns ``(model, info)``."""
    job = {"method": method, "train": train, "beta": beta, "p": p, "match_layers": match_layers,
           "match_opts": match_opts, "eval_fn": eval_fn}
    return prune_structured_many(teacher, teacher_key, [job], data, rate, image_size, prune_layers, store, device,
                                 progress, multilabel)[0]


def quantize(teacher, teacher_key: str, method: str, data: dict, train: dict | None, bits: int = 8,
             calib_images: int = 256, beta: float | None = None, p: float = 0.3, match_layers=("last_conv",),
             store: Store | None = None, device="auto", progress=True, seed: int = 0, multilabel: bool = True):
    """Int8 quantization of the full network (study 7; :mod:`apnb.quantization`): returns the frozen
    fake-quant network and ``info``.

    ``train=None``: PTQ, min/max calibration on ``calib_images`` training images (the first ones of a
    permutation drawn from ``seed``; not stored: it takes seconds). Otherwise QAT: the
    network is prepared with moving-average observers from those images, then fine-tuned with
    ``train`` (task loss + beta * matching ``method`` against the fp32 network, Eq. 2) and stored.
    """
    seed = train.get("seed", 0) if train else seed
    x_cal, _ = train_images(data, calib_images, seed)
    if train is None:
        if method != "naive":
            raise ValueError(f"PTQ trains nothing, so method={method!r} cannot apply: use naive, or give train= for QAT")
        q = Q.prepare(teacher, x_cal[:64], bits, "ptq")
        return Q.calibrate(q, x_cal), {"mode": "ptq", "bits": bits, "calib_images": len(x_cal)}
    store = store or Store()
    train = P.keyed(train, resolve_device(device))
    reg = matching_for(method, beta, p, match_layers)
    cfg = _key({"role": "qat", "teacher": teacher_key, "method": method, "match": reg.cfg.to_dict(), "train": train,
                "bits": bits, "calib_images": calib_images, "engine": Q.ENGINE,
                **({} if multilabel else {"multilabel": False})})
    q = Q.prepare(teacher, x_cal[:64], bits, "qat")
    with store.lock("quantized", cfg):
        info = store.load("quantized", cfg, q)
        if info is None:
            frozen_teacher = copy.deepcopy(teacher).eval()
            reg.check(q, frozen_teacher.cpu(), x_cal[:1])
            r = fit(q, StudentObjective(frozen_teacher, reg, kd=False, multilabel=multilabel), data["train"],
                    TrainConfig(**train), store.dir("quantized", cfg) / "train.ckpt", device=device,
                    progress=progress, key=config_key(cfg))
            Q.freeze(q)
            info = {"history": r.history, "seconds": r.seconds}
            store.save("quantized", cfg, q, info)
    return Q.freeze(q.cpu()), dict(info, mode="qat", bits=bits)


class Setup(NamedTuple):
    """What every VOC notebook starts from (:func:`voc_setup`): the data, the full network and where it runs."""
    data: dict
    teacher: torch.nn.Module
    info: dict  # the teacher's training history and store key
    row: dict  # its :func:`apnb.evaluate.evaluate_model` row
    loc: LocResult  # its maps, the reference of every student's cosine and l2
    spec: dict  # the teacher's model spec, as the profile gives it plus num_classes; students derive theirs
    device: torch.device
    image_size: int  # the side of the images the networks see (structured pruning traces at this size)
    eval_layer: str = "last_conv"  # the layer whose Grad-CAM maps are scored (the benchmark's)
    guards: dict | None = None  # the benchmark's premise guards, for the networks built on the teacher

    @property
    def key(self) -> str:
        """The teacher's store key, which every compressed network's key names."""
        return self.info["key"]


def teacher_spec(recipe: dict, data: dict) -> dict:
    """The model spec of a teacher mapping with the data's class count."""
    return dict(recipe["spec"], num_classes=len(data["classes"]))


def train_teacher(recipe: dict, data: dict, store: Store | None = None, device="auto", progress=True,
                  multilabel: bool = True, guards: Guards | dict | None = None):
    """:func:`get_teacher` from a profile's teacher mapping ``{spec, pretrained, pretrain, train}`` (``pretrained``
    and ``pretrain`` may be left out: no ImageNet weights, no pretraining phase). Returns ``(model, info)``."""
    return get_teacher(teacher_spec(recipe, data), data, recipe["train"], recipe.get("pretrain"),
                       recipe.get("pretrained", False), store, device, progress, multilabel, guards)


def voc_setup(benchmark: dict, teacher_recipe: dict, device="auto", store: Store | None = None) -> Setup:
    """Data, the (stored, guarded) teacher and its evaluation row: the first step of every VOC notebook.
    ``benchmark = {root, synth, image_size, eval_layer, guards}`` (the data, :func:`apnb.data.splits.voc_data`;
    the layer whose maps are scored, default ``last_conv``; the premise guards, :mod:`apnb.guards`, default
    off), ``teacher_recipe`` as :func:`train_teacher` takes it."""
    data = voc_data(benchmark["root"], benchmark["synth"], benchmark["image_size"])
    layer, guards = benchmark.get("eval_layer", "last_conv"), benchmark.get("guards")
    teacher, info = train_teacher(teacher_recipe, data, store, device, guards=guards)
    row, loc = evaluate_model(teacher, data, layer, device)
    return Setup(data, teacher, info, row, loc, teacher_spec(teacher_recipe, data), resolve_device(device),
                 benchmark["image_size"], layer, guards)


# --- the recipe dicts of the profiles ------------------------------------------------------------------------
# Every profile holds its recipes as mappings (profiles/*.yml; apnb.validate checks their fields): the
# benchmark (benchmark = {root, synth, image_size, eval_layer, guards}) and the teacher (teacher_recipe =
# {spec, pretrained, pretrain, train}) go to voc_setup; the compression recipes are
#   matching     = {layer, p, beta: {method: beta}}        the regularizer of Eq. 2 (apnb.matching)
#   kd           = {div, T, alpha, train}                   distillation (paper Sec. 4.1): width divisor of the
#                                                           student against the teacher, KD temperature and weight
#   structured   = {rate, layers, finetune}                 one-shot l1 channel pruning (Sec. 4.3)
#   unstructured = {rate, iterations, finetune}             iterative magnitude pruning (Sec. 4.2)
# The functions below take a :class:`Setup`, a recipe and ``runs``: ``(method, seed)`` pairs or :func:`job`
# dicts. Each gives exactly the networks, and the store keys, of the lower-level recipes above.


def job(method: str, seed: int, train: dict, matching: dict, beta: float | None = None, p: float | None = None,
        layers: list[str] | None = None, opts: dict | None = None, eval_fn=None) -> dict:
    """One network of a cohort, as :func:`distill_many` and :func:`prune_structured_many` take it: ``train``
    with ``seed``; ``beta`` defaults to ``matching["beta"][method]`` (None for naive), ``p`` to ``matching["p"]``
    and ``layers`` to ``[matching["layer"]]``; ``opts`` are further :class:`~apnb.specs.MatchingConfig` fields."""
    return {"method": method, "train": dict(train, seed=seed),
            "beta": matching["beta"].get(method) if beta is None else beta,
            "p": matching["p"] if p is None else p, "match_layers": list(layers or [matching["layer"]]),
            "match_opts": opts, "eval_fn": eval_fn}


def _jobs(runs, train: dict, matching: dict) -> list[dict]:
    return [r if isinstance(r, dict) else job(r[0], r[1], train, matching) for r in runs]


def students(S: Setup, kd: dict, matching: dict, runs, div: int | None = None, store: Store | None = None,
             progress: bool = False, guards: Guards | dict | None = None) -> list:
    """KD students of ``S.teacher`` (recipe ``kd``; width divisor ``div``, default ``kd["div"]``) for each run,
    trained in cohorts (:func:`distill_many`). Returns ``[(student, info)]`` in the order of ``runs``."""
    spec = student_spec(S, div or kd["div"])
    jobs = [dict(j, student_spec=spec) for j in _jobs(runs, kd["train"], matching)]
    return distill_many(S.teacher, S.key, jobs, S.data, kd["T"], kd["alpha"], store, S.device, progress, guards)


def student(S: Setup, kd: dict, matching: dict, method: str, seed: int, **kw):
    """One KD student: :func:`students` with one run. Returns ``(student, info)``."""
    return students(S, kd, matching, [(method, seed)], **kw)[0]


def structured_nets(S: Setup, structured: dict, matching: dict, runs, store: Store | None = None,
                    progress: bool = False, multilabel: bool = True) -> list:
    """The teacher pruned by recipe ``structured`` and fine-tuned for each run, in cohorts
    (:func:`prune_structured_many`). Returns ``[(model, info)]`` in the order of ``runs``."""
    return prune_structured_many(S.teacher, S.key, _jobs(runs, structured["finetune"], matching), S.data,
                                 structured["rate"], S.image_size, structured.get("layers"), store, S.device,
                                 progress, multilabel)


def structured_net(S: Setup, structured: dict, matching: dict, method: str, seed: int, **kw):
    """One structured-pruned network: :func:`structured_nets` with one run. Returns ``(model, info)``."""
    return structured_nets(S, structured, matching, [(method, seed)], **kw)[0]


def unstructured_net(S: Setup, unstructured: dict, matching: dict, method: str, seed: int, rate: float | None = None,
                     store: Store | None = None, progress: bool = False, callback=None, multilabel: bool = True):
    """The teacher pruned by recipe ``unstructured`` (``rate`` per round, default ``unstructured["rate"]``) with
    ``method``'s fine-tune after each round (:func:`prune_unstructured`). Returns ``(model, info)``."""
    j = job(method, seed, unstructured["finetune"], matching)
    return prune_unstructured(S.teacher, S.key, method, S.data, j["train"],
                              unstructured["rate"] if rate is None else rate, unstructured["iterations"], j["beta"],
                              j["p"], j["match_layers"], store, S.device, progress, callback, multilabel)


def quantized(S: Setup, method: str, seed: int, train: dict | None, matching: dict, bits: int = 8,
              calib_images: int = 256, store: Store | None = None, progress: bool = False, multilabel: bool = True):
    """:func:`quantize` of ``S.teacher``: PTQ when ``train`` is None (calibration images drawn from ``seed``),
    else QAT with ``train`` at ``seed`` and ``method``'s matching. Returns ``(model, info)``."""
    if train is None:
        return quantize(S.teacher, S.key, method, S.data, None, bits, calib_images, seed=seed, multilabel=multilabel)
    j = job(method, seed, train, matching)
    return quantize(S.teacher, S.key, method, S.data, j["train"], bits, calib_images, j["beta"], j["p"],
                    j["match_layers"], store, S.device, progress, seed, multilabel)


class StructuredStudy:
    """The fine-tunes of a study of the regularizer's design (chapter 20): one structured recipe, one matching
    recipe, and jobs that override a field of the matching (``beta``, ``p``, ``layers``, ``opts``).

    :meth:`train` trains a grid of them in cohorts (:func:`structured_nets`); :meth:`run` gives one job's
    network evaluated at ``layer`` against the teacher (:func:`apnb.evaluate.evaluate_model`), each evaluated
    once however many studies ask for it."""

    def __init__(self, S: Setup, structured: dict, matching: dict, layer: str = "last_conv",
                 store: Store | None = None):
        self.S, self.structured, self.matching, self.layer, self.store = S, structured, matching, layer, store
        self._rows: dict[str, tuple[dict, dict]] = {}

    def job(self, method: str, seed: int, eval_fn=None, **match) -> dict:
        """One fine-tune (:func:`job`) with the study's schedule; ``match`` overrides the matching recipe."""
        return job(method, seed, self.structured["finetune"], self.matching, eval_fn=eval_fn, **match)

    def train(self, jobs: list[dict], progress: bool = False) -> list:
        """Train (or load) every job, in cohorts; returns ``[(model, info)]`` in order."""
        return structured_nets(self.S, self.structured, self.matching, jobs, self.store, progress)

    def run(self, method: str, seed: int, eval_fn=None, **match) -> tuple[dict, dict]:
        """``(row, info)`` of one job, evaluated once. ``eval_fn(model) -> dict`` is called after each epoch
        of a fine-tune the store does not hold yet (its values land in ``info["history"]``, stored with the
        network); a call with one skips the cache of rows."""
        key = repr((method, seed, sorted(match.items())))
        if eval_fn is None and key in self._rows:
            return self._rows[key]
        (net, info), = self.train([self.job(method, seed, eval_fn=eval_fn, **match)])
        row, _ = evaluate_model(net, self.S.data, self.layer, self.S.device, reference=self.S.loc)
        self._rows[key] = (row, info)
        return row, info


def compared_networks(S: Setup, kd: dict, matching: dict, seed: int, methods=("naive", "sswa"),
                      structured: dict | None = None, div: int | None = None,
                      guards: Guards | dict | None = None, store: Store | None = None) -> dict:
    """The networks a qualitative comparison shows side by side: ``{"full": S.teacher}``, then for each method
    ``"KD <method>"`` (:func:`student`, width divisor ``div``, default ``kd["div"]``) and, with a ``structured``
    recipe, ``"structured <method>"`` (:func:`structured_net`), all at ``seed``."""
    nets = {"full": S.teacher}
    for m in methods:
        nets[f"KD {m}"], _ = student(S, kd, matching, m, seed, div=div, guards=guards, store=store)
        if structured is not None:
            nets[f"structured {m}"], _ = structured_net(S, structured, matching, m, seed, store=store)
    return nets


def student_spec(S: Setup, div: int) -> dict:
    """The student of width divisor ``div``: the teacher's spec with every width divided ``div`` times more."""
    return dict(S.spec, width_div=S.spec.get("width_div", 1) * div)
