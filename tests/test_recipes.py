"""The recipes (:mod:`apnb.recipes`): one Setup that carries the data, the teacher, the guards and the store;
one function per recipe; the store keys of the first store; every trained network guarded."""
import dataclasses
import json
import re

import pandas as pd
import pytest
import torch

from apnb import __version__
from apnb import evaluate as E
from apnb import guards as G
from apnb import kinds
from apnb import recipes as R
from apnb.config import config_key
from apnb.data import splits as D
from apnb.store import Store

pytestmark = pytest.mark.unit
SPEC = {"arch": "vgg16_bn", "width_div": 16, "n_pools": 2, "head_pool": 1}
TR = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
FT = {"epochs": 1, "lr": 0.005, "optimizer": "adamw", "schedule": "constant", "batch_size": 8}
MATCHING = {"layer": "last_conv", "p": 0.5, "beta": {"sswa": 2.0}}


def _setup(root, store, train=TR, guards=None):
    """:func:`apnb.recipes.setup` on the 4-class test data (no synth), at 32 px, on the CPU."""
    return R.setup({"root": str(root), "synth": None, "image_size": 32, "guards": guards},
                   {"spec": SPEC, "train": train}, device="cpu", store=store)


def _entries(root):
    """The store's entries: ``kind-key`` of every saved network."""
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("final.pt"))


def _same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


def test_setup_carries_the_data_the_teacher_and_its_row(tmp_path, synth_root):
    S = _setup(synth_root, Store(tmp_path))
    assert S.key == S.info["key"] and len(S.data["classes"]) == 4 and S.image_size == 32 and S.multilabel
    assert S.spec == dict(SPEC, num_classes=4) and S.device == torch.device("cpu") and S.data["multilabel"] is True
    ref, _ = E.evaluate_model(S.teacher, S.data, device="cpu")
    assert pd.Series(S.row).equals(pd.Series(ref)) and S.loc.maps.shape[0] == len(S.loc.pairs)  # NaN equal to NaN
    # a second setup is the same store entry, not a second network; without evaluation it has no row
    again = R.setup({"root": str(synth_root), "synth": None, "image_size": 32}, {"spec": SPEC, "train": TR}, "cpu",
                    Store(tmp_path), data=S.data, evaluate=False)
    assert again.key == S.key and again.row is None and _same(again.teacher, S.teacher)
    assert len(list(tmp_path.rglob("final.pt"))) == 1
    with pytest.raises(ValueError, match="benchmark.dataset='mnist': use one of voc, imagenet, cifar"):
        D.load_data({"dataset": "mnist", "root": "x"})


def test_the_recipes_keep_the_store_keys_of_the_first_store(tmp_path, synth_root):
    """Each recipe's store key, written out as the first store wrote it: moving the recipes to one API, the
    registry of kinds and the Setup changed no key (a field added since enters a key only off its default)."""
    S = _setup(synth_root, Store(tmp_path / "t"))
    S = dataclasses.replace(S, store=Store(tmp_path / "n"))
    kd = {"div": 2, "T": 3.0, "alpha": 0.8, "train": FT}
    R.students(S, kd, MATCHING, [("sswa", 1)])
    R.structured_nets(S, {"rate": 0.5, "layers": None, "finetune": FT}, MATCHING, [("sswa", 1)])
    R.unstructured_net(S, {"rate": 0.3, "iterations": 2, "finetune": FT}, MATCHING, ("naive", 1))
    R.quantized(S, FT, MATCHING, ("sswa", 1), 8, 16)
    # the matched networks' keys name the one scale ("image", since the verdicts issue); the naive ones keep "mean"
    match = lambda kind, beta: {"kind": kind, "beta": beta, "layers": ["last_conv"], "p": 0.5, "topk": 1, "relu": True,
                                "center_logits": False, "per_neuron": False, "mask": "teacher",
                                "reduction": "mean" if kind == "none" else "image"}
    base = {"apnb": __version__, "teacher": S.key, "train": dict(FT, seed=1)}
    want = [("student", dict(base, role="kd", spec=dict(SPEC, num_classes=4, width_div=32), method="sswa",
                             match=match("sswa", 2.0), T=3.0, alpha=0.8)),
            ("structured", dict(base, role="structured", method="sswa", match=match("sswa", 2.0), rate=0.5, layers=None))]
    want += [("pruned", dict(base, role="unstructured", method="naive", match=match("none", 0.0), rho_w=0.3, iteration=i))
             for i in (1, 2)]
    from apnb import quantization as Q
    want += [("quantized", dict(base, role="qat", method="sswa", match=match("sswa", 2.0), bits=8, calib_images=16,
                                engine=Q.ENGINE))]
    assert _entries(tmp_path / "n") == sorted(f"{k}-{config_key(c)}" for k, c in want)
    teacher = {"apnb": __version__, "role": "teacher", "spec": dict(SPEC, num_classes=4), "train": TR, "pretrain": None,
               "pretrained": False, "data": S.data["id"]}
    assert S.key == config_key(teacher)


def test_one_api_for_every_recipe(tmp_path, synth_root):
    """Runs are ``(method, seed)`` pairs or :class:`apnb.recipes.Job` objects; one run alone and a cohort give
    the same network; PTQ is not stored; the qualitative pages' networks are these same networks."""
    S = dataclasses.replace(_setup(synth_root, Store(tmp_path / "t")), store=Store(tmp_path / "n"))
    kd = {"div": 2, "T": 3.0, "alpha": 0.8, "train": FT}
    structured = {"rate": 0.5, "layers": None, "finetune": FT}
    (a, _), (a_naive, _) = R.students(S, kd, MATCHING, [("sswa", 1), R.job("naive", 1, FT, MATCHING)])
    (b, binfo), = R.structured_nets(S, structured, MATCHING, [("sswa", 1)])
    assert binfo["params_after"] < binfo["params_before"]
    j = R.job("sswa", 3, FT, MATCHING, p=0.0, layers=["conv4_3"])
    assert (j.train, j.beta, j.p, j.layers) == (dict(FT, seed=3), 2.0, 0.0, ("conv4_3",))
    assert R.job("naive", 0, FT, MATCHING).beta is None and R.job("naive", 0, FT, MATCHING).matching().beta == 0.0
    # a kind at its paper's weight on the one scale, labelled so; its key knows only the kind and the weight
    j = R.job("sswa@paper", 3, FT, MATCHING)
    assert (j.method, j.label, j.beta) == ("sswa", "sswa@paper", pytest.approx(50 / 49))
    assert j.matching().cfg.to_dict() == R.job("sswa", 3, FT, MATCHING, beta=50 / 49).matching().cfg.to_dict()
    assert R.job("e2kd@paper", 3, FT, MATCHING).beta == 0.5  # its authors' 1 on mean (1 - cos)
    n = len(_entries(tmp_path / "n"))
    q, qi = R.quantized(S, None, MATCHING, ("naive", 0), 8, 16)
    assert qi["mode"] == "ptq" and qi["calib_images"] == 16 and len(_entries(tmp_path / "n")) == n
    with pytest.raises(ValueError, match="PTQ trains nothing"):
        R.quantized(S, None, MATCHING, ("sswa", 0))
    nets = R.compared_networks(S, kd, MATCHING, 1, methods=("sswa",), structured=structured)
    assert list(nets) == ["full", "KD sswa", "structured sswa"] and nets["full"] is S.teacher
    assert _same(nets["KD sswa"], a) and _same(nets["structured sswa"], b)
    assert list(R.compared_networks(S, kd, MATCHING, 1, methods=("sswa",))) == ["full", "KD sswa"]
    assert len(_entries(tmp_path / "n")) == n  # nothing was trained again


def test_a_method_can_drop_the_logit_kd_term(tmp_path, synth_root):
    """``Job.kd=False`` (or a kind that declares ``logit_kd = False``) trains on the task loss + matching alone,
    under a key of its own; the default keeps Hinton's term and the key it always had."""
    S = dataclasses.replace(_setup(synth_root, Store(tmp_path / "t")), store=Store(tmp_path / "n"))
    kd = {"div": 2, "T": 3.0, "alpha": 0.8, "train": FT}
    job = R.job("sswa", 1, FT, MATCHING)
    (with_kd, _), (without, _) = R.students(S, kd, MATCHING, [job, dataclasses.replace(job, kd=False)])
    assert not _same(with_kd, without) and len(_entries(tmp_path / "n")) == 2
    cfgs = [p.read_text() for p in (tmp_path / "n").rglob("cfg.json")]
    assert sum('"kd": false' in c for c in cfgs) == 1

    @kinds.register
    class NoLogits(kinds.SWA):
        name, logit_kd = "swa_nologits", False

    try:
        assert R.job("swa_nologits", 1, FT, {"layer": "last_conv", "p": 0.3, "beta": {}}).logit_kd is False
    finally:
        del kinds.REGISTRY["swa_nologits"]


def test_every_trained_network_is_guarded(tmp_path, synth_root):
    """A teacher that does not learn, and students, pruned fine-tunes and QAT networks at chance, stop with one
    line naming the network before anything is built on them; PTQ trains nothing and is not guarded."""
    data = D.voc_data(str(synth_root), None, 32)
    data["pretrain"] = data["train"]  # the fixture's pretrain split is smaller than one batch
    frozen = {"epochs": 3, "lr": 1e-9, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    still = dict(TR, lr=1e-9)
    bench = lambda guards: {"root": str(synth_root), "synth": None, "image_size": 32, "guards": guards}
    recipe = {"spec": SPEC, "pretrain": frozen, "train": still}
    with pytest.raises(G.PremiseError, match="^teacher: the pretrain loss never left its plateau"):
        R.setup(bench({"plateau": 0.8}), recipe, "cpu", Store(tmp_path), data=data)
    with pytest.raises(G.PremiseError, match="plateau"):  # the stored network is refused again on load
        R.setup(bench({"plateau": 0.8}), recipe, "cpu", Store(tmp_path), data=data)
    with pytest.raises(G.PremiseError, match=r"^teacher: mAP_nocue \(cue-free val\) = 0\.\d+ is below the required 0\.990"):
        R.setup(bench({"plateau": None, "teacher_map_nocue": 0.99}), recipe, "cpu", Store(tmp_path), data=data)
    S = R.setup(bench({"plateau": None, "student_over_chance": 0.9}), {"spec": SPEC, "train": still}, "cpu",
                Store(tmp_path), data=data, evaluate=False)
    ft = dict(FT, lr=1e-9)
    chance = r": mAP \(val; chance is 0\.\d+\)"
    with pytest.raises(G.PremiseError, match=f"^student naive /32 seed 0{chance}"):
        R.students(S, {"div": 2, "T": 4.0, "alpha": 0.9, "train": ft}, MATCHING, [("naive", 0)])
    # guard="report" (01's other sizes): the student is not returned, and the reason is
    (none, info), = R.students(S, {"div": 2, "T": 4.0, "alpha": 0.9, "train": ft}, MATCHING, [("naive", 0)],
                               guard="report")
    assert none is None and re.match(f"^student naive /32 seed 0{chance}", info["premise_error"])
    assert re.match(r"^mAP \(val; chance is 0\.\d+\) = 0\.\d+ is below the required \d\.\d+$", info["premise_reason"])
    with pytest.raises(ValueError, match="guard="):
        R.students(S, {"div": 2, "T": 4.0, "alpha": 0.9, "train": ft}, MATCHING, [("naive", 0)], guard="skip")
    with pytest.raises(G.PremiseError, match=f"^structured naive seed 0{chance}"):
        R.structured_nets(S, {"rate": 0.5, "layers": None, "finetune": ft}, MATCHING, [("naive", 0)])
    (none, info), = R.structured_nets(S, {"rate": 0.5, "layers": None, "finetune": ft}, MATCHING, [("naive", 0)],
                                      guard="report")
    assert none is None and re.match(f"^structured naive seed 0{chance}", info["premise_error"])
    with pytest.raises(G.PremiseError, match=f"^unstructured naive seed 0{chance}"):
        R.unstructured_net(S, {"rate": 0.3, "iterations": 1, "finetune": ft}, MATCHING, ("naive", 0))
    with pytest.raises(G.PremiseError, match=f"^QAT naive int8 seed 0{chance}"):
        R.quantized(S, ft, MATCHING, ("naive", 0), 8, 16)
    R.quantized(S, None, MATCHING, ("naive", 0), 8, 16)


def test_structured_study_evaluates_each_fine_tune_once(tmp_path, synth_root, monkeypatch):
    """:class:`apnb.recipes.StructuredStudy`: its jobs are :func:`apnb.recipes.job` with the study's schedule, its
    grid trains the networks :func:`~apnb.recipes.structured_nets` would give, and a row asked for twice is
    evaluated once, unless an ``eval_fn`` asks for the fine-tune again."""
    S = dataclasses.replace(_setup(synth_root, Store(tmp_path / "t")), store=Store(tmp_path / "s"))
    structured = {"rate": 0.5, "layers": None, "finetune": FT}
    study = R.StructuredStudy(S, structured, MATCHING)
    assert study.job("sswa", 1, p=0.0) == R.job("sswa", 1, FT, MATCHING, p=0.0) and study.layer == "last_conv"
    (a, _), = study.train([study.job("sswa", 1)])
    (b, binfo), = R.structured_nets(S, structured, MATCHING, [("sswa", 1)])
    assert _same(a, b)
    calls = []
    real = R.evaluate_model
    monkeypatch.setattr(R, "evaluate_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    row, info = study.run("sswa", 1)
    ref, _ = real(b, S.data, "last_conv", "cpu", reference=S.loc)
    assert pd.Series(row).equals(pd.Series(ref)) and info["history"] == binfo["history"]
    assert study.run("sswa", 1) == (row, info) and len(calls) == 1  # the second ask is the kept row
    study.run("sswa", 1, p=0.0)
    assert len(calls) == 2 and len(_entries(tmp_path / "s")) == 2  # another field, another network
    study.run("sswa", 1, eval_fn=lambda m: {"x": 1.0})
    assert len(calls) == 3


def test_structured_pruning_by_explaining(tmp_path, synth_root):
    """``structured.criterion: lrp`` ranks the teacher's filters by their LRP relevance on reference images (one
    ranking for every run): the same architecture as l1 pruning at that rate, other filters, a key of its own;
    ``l1`` keeps the key it always had."""
    S = dataclasses.replace(_setup(synth_root, Store(tmp_path / "t")), store=Store(tmp_path / "n"))
    l1 = {"rate": 0.5, "layers": None, "finetune": FT}
    lrp = dict(l1, criterion="lrp", reference_images=16)
    (a, ai), = R.structured_nets(S, l1, MATCHING, [("naive", 1)])
    (b, bi), (c, ci) = R.structured_nets(S, lrp, MATCHING, [("naive", 1), ("sswa", 1)])
    assert ai["params_after"] == bi["params_after"] == ci["params_after"]
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()] and not _same(a, b)
    cfgs = [json.loads(p.read_text()) for p in (tmp_path / "n").rglob("cfg.json")]
    assert sorted(c.get("criterion", "l1") for c in cfgs) == ["l1", "lrp", "lrp"]
    assert all(c["reference_images"] == 16 for c in cfgs if "criterion" in c)
    with pytest.raises(ValueError, match="criterion='taylor'"):
        R.structured_nets(S, dict(l1, criterion="taylor"), MATCHING, [("naive", 1)])
