"""The pipelines the notebooks orchestrate: data, teacher, distillation, pruning, evaluation.

Every trained network goes through the checkpoint store (:class:`apnb.store.Store`) under a hash of its
full configuration (teacher key, method, hyperparameters, seed), so the teacher is trained once and a
re-run notebook reloads what it already trained. Each network's initial weights are drawn from its recipe's
seed (:func:`apnb.models.build` with ``seed``), so a store key stands for one network whatever ran before
it; each entry is trained under its store lock (:meth:`apnb.store.Store.lock`); a trained network passes
its premise guards (:mod:`apnb.guards`) before it is returned.
"""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from . import compression as C
from . import evaluate as E
from . import models as M
from .config import resolve_device, store_dir
from .data import synthetic
from .data.voc import VOCClassification, VOCLocalization
from .engine import Compress, Member, Supervised, TrainConfig, cohort_key, fit, fit_cohort
from .store import Store, config_key
from .guards import Guards, check_min, check_plateau, chance_map
from .matching import AttributionMatching, MatchingConfig

METHODS = ("naive", "ewa", "swa", "sswa")


def _data_id(root: Path, train) -> dict:
    """Identifies the data in store keys: the generator's parameters, or the real dataset's path and size."""
    stamp = root / "apnb_synth.json"
    return json.loads(stamp.read_text()) if stamp.exists() else {"root": str(root), "n_train": len(train)}


def voc_data(data_root: str, synth: dict | None, image_size: int, augment: bool = True, crop_scale=(0.5, 1.0),
             limit: int | None = None) -> dict:
    """The VOC splits: ``pretrain`` (synthetic only), ``train`` (augmented), ``train_eval``, ``val``, ``loc``.

    With ``synth`` (a dict of :class:`apnb.data.SynthConfig` fields) the synthetic benchmark is generated
    under ``data_root`` first (skipped when an identical one is there). Synthetic data is cached in memory.
    """
    root = synthetic.ensure(data_root, "voc", **synth) if synth else Path(data_root)
    cache = synth is not None
    kw = dict(size=image_size, cache=cache, limit=limit)
    d = {"root": root,
         "train": VOCClassification(root, "train", augment=augment, crop_scale=crop_scale, **kw),
         "val": VOCClassification(root, "val", **kw),
         "loc": VOCLocalization(root, "val", size=image_size, limit=limit)}
    if (root / "ImageSets/Main/pretrain.txt").exists():
        d["pretrain"] = VOCClassification(root, "pretrain", augment=augment, crop_scale=crop_scale, **kw)
    if (root / "ImageSets/Main/val_nocue.txt").exists():
        d["val_nocue"] = VOCClassification(root, "val_nocue", **kw)
        d["loc_nocue"] = VOCLocalization(root, "val_nocue", size=image_size, limit=limit)
    if (root / "ImageSets/Main/val_cueflip.txt").exists():  # val with an absent class's cue (chapter 24)
        d["val_cueflip"] = VOCClassification(root, "val_cueflip", **kw)
    d["classes"] = d["train"].classes
    d["id"] = _data_id(root, d["train"])
    return d


class _Unlabelled(torch.utils.data.Dataset):
    """(image, mask) -> (image, -1, mask): gtsegs_ijcv.mat has no ImageNet-1k labels (supplement B)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, m = self.ds[i]
        return x, -1, m


def imagenet_data(data_root: str, synth: dict | None, image_size: int, gtsegs: str | None = None,
                  limit: int | None = None) -> dict:
    """ImageNet splits: ``train`` (ImageFolder of ``<wnid>/*.JPEG``, augmented), ``val`` (top-1 accuracy) and
    ``loc`` (foreground masks).

    With ``synth`` the ImageNet-like synthetic benchmark (ImageNet-S layout) is generated under ``data_root``
    and its ``validation`` split with masks serves as ``val`` and ``loc``. With real data, ``data_root`` holds
    ``train/`` and ``val/`` in class folders and ``gtsegs`` the path of ``gtsegs_ijcv.mat`` (4276 images scored
    with the top-1 prediction's map, paper supplement B); or an ImageNet-S root with ``validation`` masks.
    """
    from .data.imagenet import GtSegsIJCV, ImageNetS

    root = synthetic.ensure(data_root, "imagenet", **synth) if synth else Path(data_root)
    d = {"root": root, "train": ImageNetS(root, "train", size=image_size, augment=True, limit=limit)}
    if gtsegs:
        d["val"] = ImageNetS(root, "val", size=image_size, limit=limit)
        d["loc"] = _Unlabelled(GtSegsIJCV(gtsegs, size=image_size))
    else:
        d["val"] = d["loc"] = ImageNetS(root, "validation", size=image_size, limit=limit)
    d["classes"] = d["train"].wnids
    d["id"] = _data_id(root, d["train"])
    return d


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
    the first phase. ``guards`` (:class:`apnb.guards.Guards`): the pretraining loss must leave its plateau
    and the mAP on val / the cue-free val copy must clear the thresholds, else :class:`PremiseError`.
    Returns ``(model, info)``; ``info`` holds the training history and its store key.
    """
    store = store or Store()
    g = Guards.of(guards)
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
        check_min("teacher", "mAP (val)", E.prediction_metrics(model, data["val"], device)["mAP"], g.teacher_map)
        if "val_nocue" in data:
            check_min("teacher", "mAP_nocue (cue-free val)",
                      E.prediction_metrics(model, data["val_nocue"], device)["mAP"], g.teacher_map_nocue)
    return model, info


def check_student(name: str, model, data: dict, guards: Guards | dict | None, device="auto") -> None:
    """A compressed network must beat chance: mAP over :func:`apnb.guards.chance_map` + ``student_over_chance``."""
    g = Guards.of(guards)
    if g.student_over_chance is None or not hasattr(data["val"], "labels"):
        return
    chance = chance_map(data["val"].labels)
    check_min(name, f"mAP (val; chance is {chance:.3f})", E.prediction_metrics(model, data["val"], device)["mAP"],
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

    Each job is a dict of :func:`apnb.experiments.distill`'s arguments: ``student_spec``, ``method``, ``train`` and optionally
    ``beta``, ``p``, ``layers``, ``match_opts``, ``eval_fn``. The student's initial weights are drawn from
    ``train["seed"]``, so the students of one seed share their initialisation and data order across
    methods (paired seeds: common random numbers). A student ends exactly as :func:`apnb.experiments.distill` alone would
    make it (:func:`apnb.engine.fit_cohort`), under the same store key. Returns ``[(student, info)]``."""
    store = store or Store()
    work = []
    for j in jobs:
        reg = matching_for(j["method"], j.get("beta"), j.get("p", 0.3), j.get("layers", ("last_conv",)),
                           **(j.get("match_opts") or {}))
        cfg = _key({"role": "kd", "teacher": teacher_key, "spec": j["student_spec"], "method": j["method"],
                    "match": reg.cfg.to_dict(), "train": j["train"], "T": T, "alpha": alpha})
        student = M.build(j["student_spec"], seed=j["train"].get("seed", 0))
        work.append({"cfg": cfg, "model": student, "train": j["train"], "eval_fn": j.get("eval_fn"),
                     "group": j["student_spec"],
                     "name": f"student {j['method']} /{j['student_spec'].get('width_div')} seed {j['train'].get('seed', 0)}",
                     "check": (lambda reg=reg, st=student: reg.check(st, teacher.cpu(), data["train"][0][0][None])),
                     "objective": (lambda reg=reg: Compress(teacher, reg, kd=True, T=T, alpha=alpha))})
    infos = _train_in_cohorts(store, "student", work, data["train"], device, progress)
    out = []
    for w, info in zip(work, infos):
        student = w["model"].to(resolve_device(device)).eval()
        check_student(w["name"], student, data, guards, device)
        out.append((student, info))
    return out


def distill(teacher, teacher_key: str, student_spec: dict, method: str, data: dict, train: dict,
            beta: float | None = None, p: float = 0.3, layers=("last_conv",), match_opts: dict | None = None,
            T: float = 4.0, alpha: float = 0.9, store: Store | None = None, device="auto", progress=True,
            eval_fn=None, guards: Guards | dict | None = None):
    """Knowledge distillation of one student from scratch with KD + matching ``method`` (paper Sec. 4.1):
    :func:`apnb.experiments.distill_many` with one job. ``guards``: the student must beat chance. Returns ``(student, info)``."""
    job = {"student_spec": student_spec, "method": method, "train": train, "beta": beta, "p": p, "layers": layers,
           "match_opts": match_opts, "eval_fn": eval_fn}
    return distill_many(teacher, teacher_key, [job], data, T, alpha, store, device, progress, guards)[0]


def prune_unstructured(teacher, teacher_key: str, method: str, data: dict, train: dict, rho_w: float = 0.2,
                       iterations: int = 16, beta: float | None = None, p: float = 0.3, layers=("last_conv",),
                       store: Store | None = None, device="auto", progress=True, callback=None,
                       multilabel: bool = True):
    """Iterative global magnitude pruning (Han et al.) with fine-tuning (task loss + beta * matching) after
    each of ``iterations`` rounds at ``rho_w``; the regularizer applies in every round. ``callback(it, rate,
    model)`` sees the network after each round's fine-tune. Returns the final model."""
    store = store or Store()
    reg = matching_for(method, beta, p, layers)
    frozen_teacher = copy.deepcopy(teacher).eval()
    model = copy.deepcopy(teacher)
    extra = {} if multilabel else {"multilabel": False}
    for it in range(1, iterations + 1):
        cfg = _key({"role": "unstructured", "teacher": teacher_key, "method": method, "match": reg.cfg.to_dict(),
                    "train": train, "rho_w": rho_w, "iteration": it, **extra})
        C.prune_global_unstructured(model, rho_w)
        with store.lock("pruned", cfg):
            if store.load("pruned", cfg, model) is None:
                obj = Compress(frozen_teacher, reg, kd=False, multilabel=multilabel)
                fit(model, obj, data["train"], TrainConfig(**train), store.dir("pruned", cfg) / "train.ckpt",
                    device=device, progress=progress, key=config_key(cfg))
                store.save("pruned", cfg, model, {"rate": C.cumulative_rate(rho_w, it)})
        if callback is not None:
            callback(it, C.cumulative_rate(rho_w, it), model)
    return model.eval()


def prune_structured_many(teacher, teacher_key: str, jobs: list[dict], data: dict, rate: float = 0.7,
                          image_size: int = 227, layers: list[str] | None = None, store: Store | None = None,
                          device="auto", progress=True, multilabel: bool = True):
    """One-shot l1 structured pruning (Li et al.) of the teacher, then fine-tuning of each job with task loss +
    beta * matching, in cohorts: the fine-tunes of one seed share every batch and one teacher pass.

    Each job is a dict of :func:`apnb.experiments.prune_structured`'s per-network arguments: ``method``, ``train`` and
    optionally ``beta``, ``p``, ``match_layers``, ``match_opts`` (further :class:`~apnb.matching.MatchingConfig`
    fields: center_logits, relu, per_neuron, ...) and ``eval_fn(model) -> dict`` (called after each
    fine-tuning epoch; its rows land in ``info["history"]``). Every job prunes the same teacher at the same
    ``rate`` (deterministic), so all share one architecture. Returns ``[(model, info)]``."""
    store = store or Store()
    frozen_teacher = copy.deepcopy(teacher).cpu().eval()
    x0 = torch.zeros(1, 3, image_size, image_size)
    extra = {} if multilabel else {"multilabel": False}
    work = []
    for j in jobs:
        reg = matching_for(j["method"], j.get("beta"), j.get("p", 0.3), j.get("match_layers", ("last_conv",)),
                           **(j.get("match_opts") or {}))
        model = copy.deepcopy(teacher).cpu()
        counts = C.prune_l1_structured(model, rate, x0, layers)
        cfg = _key({"role": "structured", "teacher": teacher_key, "method": j["method"], "match": reg.cfg.to_dict(),
                    "train": j["train"], "rate": rate, "layers": layers, **extra})
        work.append({"cfg": cfg, "model": model, "train": j["train"], "eval_fn": j.get("eval_fn"), "counts": counts,
                     "group": {"rate": rate, "layers": layers},
                     "name": f"structured {j['method']} seed {j['train'].get('seed', 0)}",
                     "check": (lambda reg=reg, m=model: reg.check(m, frozen_teacher.cpu(), x0)),
                     "objective": (lambda reg=reg: Compress(frozen_teacher, reg, kd=False, multilabel=multilabel))})
    infos = _train_in_cohorts(store, "structured", work, data["train"], device, progress)
    out = []
    for w, info in zip(work, infos):
        c = w["counts"]
        info = dict(info, params_before=c[0], params_after=c[1], macs_before=c[2], macs_after=c[3])
        out.append((w["model"].eval(), info))
    return out


def prune_structured(teacher, teacher_key: str, method: str, data: dict, train: dict, rate: float = 0.7,
                     image_size: int = 227, layers: list[str] | None = None, beta: float | None = None,
                     p: float = 0.3, match_layers=("last_conv",), store: Store | None = None, device="auto",
                     progress=True, multilabel: bool = True, match_opts: dict | None = None, eval_fn=None):
    """One-shot l1 structured pruning (Li et al.) then fine-tuning with task loss + beta * matching:
    :func:`apnb.experiments.prune_structured_many` with one job. Returns ``(model, info)``."""
    job = {"method": method, "train": train, "beta": beta, "p": p, "match_layers": match_layers,
           "match_opts": match_opts, "eval_fn": eval_fn}
    return prune_structured_many(teacher, teacher_key, [job], data, rate, image_size, layers, store, device,
                                 progress, multilabel)[0]


def evaluate_model(model, data: dict, layer: str = "last_conv", device="auto", attr=None,
                   reference: E.LocResult | None = None, single_label: bool = False,
                   match_layer: str | None = None) -> tuple[dict, E.LocResult]:
    """One row of Tables 2-7: parameters, mAP, image-AP, F1, AUC, point accuracy (+ cos, l2 vs. ``reference``,
    the teacher's :class:`~apnb.evaluate.LocResult`). Empty selections give NaN rather than an error.

    On the synthetic benchmark ``mAP_nocue`` is the mAP on the same val images re-rendered without the
    context cue: the gap ``mAP - mAP_nocue`` measures how much the network relies on the shortcut. Real VOC
    has no such copy: there (multi-label data without ``val_nocue``) ``mAP_nocue`` is NaN, so tables keep
    their columns and the verdicts that need it say "no data".
    ``single_label`` (ImageNet, supplement B): top-1 accuracy, and the top-1 prediction's map on every image.

    With Grad-CAM (``attr=None``), ``cos_top1`` is the cosine of the maps at ``match_layer`` (default
    ``layer``) for the teacher's top-1 class over every val image (:func:`apnb.evaluate.top1_similarity`),
    beside the paper's ``cos``."""
    grad_cam = attr is None
    attr = attr or E.attribution_fn("gradcam", layer)
    loc = E.localization(model, data["loc"], device, attr=attr, single_label=single_label)
    if grad_cam:
        targets = reference.top1[0] if reference is not None and reference.top1 is not None else None
        loc.top1 = E.top1_maps(model, data["val"], match_layer or layer, device, targets)
    row = {"params": M.count_params(model, nonzero=True)}
    row.update(E.prediction_metrics(model, data["val"], device, multilabel=not single_label))
    if "val_nocue" in data:  # the same val images without their context cue: reliance on the shortcut
        row["mAP_nocue"] = E.prediction_metrics(model, data["val_nocue"], device)["mAP"]
    elif not single_label:
        row["mAP_nocue"] = float("nan")
    row.update(loc.summary(strict=False))
    if reference is not None:
        row.update(E.similarity(reference, loc, strict=False))
        if reference.top1 is not None and loc.top1 is not None:
            row.update(E.top1_similarity(reference.top1, loc.top1))
    return row, loc


def shortcut_row(model, data: dict, row: dict, loc: E.LocResult, layer: str = "last_conv", device="auto") -> dict:
    """How much a network relies on the context cue, beside its :func:`evaluate_model` ``row`` and ``loc`` (its
    mAP, mAP_nocue and cued localization are reused, not recomputed): the "right for the right reasons" chapter.

    - ``gap_nocue`` = mAP - mAP on the val images without their cue; ``mAP_cueflip`` / ``gap_cueflip``: mAP on
      the same images with an absent class's cue (``val_cueflip``) and the drop to it;
    - ``mass_object`` / ``mass_cue``: :func:`apnb.evaluate.mass_shares` on the cued localization set;
    - ``AUC_nocue`` / ``point_acc_tol_nocue``: localization on the cue-free copy.

    Real VOC has none of these copies: every value is then NaN, so tables keep their columns."""
    out = dict.fromkeys(["gap_nocue", "mAP_cueflip", "gap_cueflip", "mass_object", "mass_cue", "AUC_nocue",
                         "point_acc_tol_nocue"], float("nan"))
    if "val_nocue" in data:
        out["gap_nocue"] = row["mAP"] - row["mAP_nocue"]
        s = E.localization(model, data["loc_nocue"], device, attr=E.attribution_fn("gradcam", layer)).summary(strict=False)
        out["AUC_nocue"], out["point_acc_tol_nocue"] = s["AUC"], s["point_acc_tol"]
    if "val_cueflip" in data:
        out["mAP_cueflip"] = E.prediction_metrics(model, data["val_cueflip"], device)["mAP"]
        out["gap_cueflip"] = row["mAP"] - out["mAP_cueflip"]
    if (Path(data["root"]) / "apnb_synth.json").exists():
        cue = synthetic.cue_regions(data["root"], "val", n=len(data["loc"]))
        out.update(E.mass_shares(loc, data["loc"], cue))
    return out


def evaluate_models(models: dict, data: dict, teacher_name: str = "teacher", layer: str = "last_conv",
                    device="auto", attr=None, single_label: bool = False) -> tuple[pd.DataFrame, dict]:
    """:func:`evaluate_model` for each model, with cosine and l2 against ``teacher_name``."""
    t_row, t_loc = evaluate_model(models[teacher_name], data, layer, device, attr, single_label=single_label)
    rows, locs = [{"model": teacher_name, **t_row}], {teacher_name: t_loc}
    for name, m in models.items():
        if name != teacher_name:
            row, locs[name] = evaluate_model(m, data, layer, device, attr, reference=t_loc, single_label=single_label)
            rows.append({"model": name, **row})
    return pd.DataFrame(rows), locs


def voc_setup(data_root, synth, image_size, teacher_spec, teacher_train, teacher_pretrain=None, pretrained=False,
              eval_layer="last_conv", device="auto", guards: Guards | dict | None = None, store: Store | None = None):
    """Data, the (stored, guarded) teacher and its evaluation row: the first step of every VOC notebook."""
    data = voc_data(data_root, synth, image_size)
    spec = dict(teacher_spec, num_classes=len(data["classes"]))
    teacher, info = get_teacher(spec, data, teacher_train, teacher_pretrain, pretrained, device=device, guards=guards,
                                store=store)
    row, loc = evaluate_model(teacher, data, eval_layer, device)
    return data, teacher, info, row, loc


def tensors(dataset, device="cpu"):
    """Stack a (small) dataset into ``(x, y)`` tensors."""
    from torch.utils.data import DataLoader

    xs, ys = [], []
    for x, y, *_ in DataLoader(dataset, batch_size=256):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


def train_images(data: dict, n: int, seed: int | None = None):
    """``(x, y)`` tensors of ``n`` training images without augmentation (the val transform): the first ``n``,
    or ``n`` drawn with ``seed``. Works for the VOC/ImageNet datasets and for tensor datasets (CIFAR)."""
    from torch.utils.data import Subset

    plain = data["train"]
    if hasattr(plain, "transform") and hasattr(data["val"], "transform"):
        plain = copy.copy(plain)  # shares the image cache; only the transform differs
        plain.transform = data["val"].transform
    n = min(n, len(plain))
    idx = (torch.randperm(len(plain), generator=torch.Generator().manual_seed(seed))[:n].tolist() if seed is not None
           else list(range(n)))
    return tensors(Subset(plain, idx))


def gradcam_maps(model, x, layer="last_conv", device="auto", batch_size=128):
    """Grad-CAM maps of each image's top-1 class, upsampled to the input size: ``[N,H,W]`` on the CPU."""
    from .gradcam import gradcam as _gc

    device = resolve_device(device)
    model.eval().to(device)
    out = [_gc(model, x[i:i + batch_size].to(device), layer, upsample=True)[0].cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def roar_voc(train_xy, test_xy, maps: dict, fractions, classifier_spec: dict, train_cfg: dict, device="auto",
             seed: int = 0, multilabel: bool = True, kind: str = "roar") -> pd.DataFrame:
    """ROAR (paper Figure 7) or DiffROAR with retraining, on tensors: for each ranking in ``maps`` (name ->
    (train maps, test maps); ``None`` = random) and each fraction, pixels are replaced by the data mean (0
    after normalisation) and a fresh classifier (``classifier_spec``; VGG-11 in the paper) is trained and
    scored on the equally modified test set.

    ``kind="roar"``: the top fraction removed; columns ``F1`` and ``mAP`` (``multilabel``, VOC) or ``acc``
    (single label, CIFAR). ``kind="diffroar"`` (the LPI supplement): score with the top fraction kept minus
    score with the bottom fraction kept, columns ``top_kept``, ``bottom_kept``, ``diffroar`` of the mAP
    (multi-label: retrained on a few hundred images, the samples-F1 can sit near 0 at every fraction while
    the mAP still ranks) or the accuracy.
    The unmodified baseline (fraction 0) is trained once and shared by all rankings."""
    from torch.utils.data import TensorDataset

    from . import faithfulness as Fa
    from . import metrics as Mt

    if kind not in ("roar", "diffroar"):
        raise ValueError(f"kind={kind!r}: use roar or diffroar")
    fill = train_xy[0].mean((0, 2, 3))

    def make():
        return M.build(classifier_spec, seed=seed)

    def train_fn(model, x, y):
        fit(model, Supervised(multilabel), TensorDataset(x, y), TrainConfig(**dict(train_cfg, seed=seed)), device=device,
            progress=False)

    def score_fn(model, x, y):
        logits, y = E.predict(model, TensorDataset(x, y), device)
        if multilabel:
            return {"F1": Mt.f1_samples(logits, y), "mAP": Mt.voc_map(logits, y)}
        return {"acc": float((logits.argmax(1) == y).float().mean())}

    main = "mAP" if multilabel else "acc"
    cols = ["F1", "mAP"] if multilabel else ["acc"]
    fractions = [float(f) for f in fractions]
    frames, base = [], None
    if kind == "roar" and 0.0 in fractions:  # nothing removed: the same retraining for every ranking, run once
        base = Fa.roar(make, train_fn, score_fn, (*train_xy, None), (*test_xy, None), [0.0], fill, seed=seed)
        fractions = [f for f in fractions if f != 0.0]
    for name, mm in maps.items():
        tr_maps, te_maps = mm if mm is not None else (None, None)
        if kind == "roar":
            df = Fa.roar(make, train_fn, score_fn, (*train_xy, tr_maps), (*test_xy, te_maps), fractions, fill, seed=seed)
            df = pd.concat([base, df], ignore_index=True) if base is not None else df
            frames.append(df.assign(ranking=name)[["ranking", "fraction", *cols]])
        else:
            df = Fa.diffroar(make, train_fn, lambda m, x, y: score_fn(m, x, y)[main], (*train_xy, tr_maps),
                             (*test_xy, te_maps), fractions, fill, seed=seed)
            frames.append(df.assign(ranking=name)[["ranking", "fraction", "top_kept", "bottom_kept", "diffroar"]])
    return pd.concat(frames, ignore_index=True)


def cifar_data(root: str, num_classes: int = 10, limit_train: int | None = None, limit_test: int | None = None) -> dict:
    """CIFAR-10/100 (python pickle batches under ``root``) as ``train`` / ``val`` tensor datasets with a store id;
    the LPI supplement's data (single label, 32 px)."""
    from .data.cifar import load_cifar

    tr, te = load_cifar(root, True, num_classes), load_cifar(root, False, num_classes)
    if limit_train:
        tr = torch.utils.data.TensorDataset(*(t[:limit_train] for t in tr.tensors))
    if limit_test:
        te = torch.utils.data.TensorDataset(*(t[:limit_test] for t in te.tensors))
    return {"root": Path(root), "train": tr, "val": te, "classes": list(range(num_classes)),
            "id": {"root": str(root), "cifar": num_classes, "n_train": len(tr), "n_test": len(te)}}


def quantize(teacher, teacher_key: str, method: str, data: dict, train: dict | None, bits: int = 8,
             calib_images: int = 256, beta: float | None = None, p: float = 0.3, layers=("last_conv",),
             store: Store | None = None, device="auto", progress=True, seed: int = 0, multilabel: bool = True):
    """Int8 quantization of the full network (study 7; :mod:`apnb.quantization`): returns the frozen
    fake-quant network and ``info``.

    ``train=None``: PTQ, min/max calibration on ``calib_images`` training images (the first ones of a
    permutation drawn from ``seed``; not stored: it takes seconds). Otherwise QAT: the
    network is prepared with moving-average observers from those images, then fine-tuned with
    ``train`` (task loss + beta * matching ``method`` against the fp32 network, Eq. 2) and stored.
    """
    from . import quantization as Q

    seed = train.get("seed", 0) if train else seed
    x_cal, _ = train_images(data, calib_images, seed)
    if train is None:
        if method != "naive":
            raise ValueError(f"PTQ trains nothing, so method={method!r} cannot apply: use naive, or give train= for QAT")
        q = Q.prepare(teacher, x_cal[:64], bits, "ptq")
        return Q.calibrate(q, x_cal), {"mode": "ptq", "bits": bits, "calib_images": len(x_cal)}
    store = store or Store()
    reg = matching_for(method, beta, p, layers)
    cfg = _key({"role": "qat", "teacher": teacher_key, "method": method, "match": reg.cfg.to_dict(), "train": train,
                "bits": bits, "calib_images": calib_images, "engine": Q.ENGINE,
                **({} if multilabel else {"multilabel": False})})
    q = Q.prepare(teacher, x_cal[:64], bits, "qat")
    with store.lock("quantized", cfg):
        info = store.load("quantized", cfg, q)
        if info is None:
            frozen_teacher = copy.deepcopy(teacher).eval()
            reg.check(q, frozen_teacher.cpu(), x_cal[:1])
            r = fit(q, Compress(frozen_teacher, reg, kd=False, multilabel=multilabel), data["train"],
                    TrainConfig(**train), store.dir("quantized", cfg) / "train.ckpt", device=device,
                    progress=progress, key=config_key(cfg))
            Q.freeze(q)
            info = {"history": r.history, "seconds": r.seconds}
            store.save("quantized", cfg, q, info)
    return Q.freeze(q.cpu()), dict(info, mode="qat", bits=bits)
