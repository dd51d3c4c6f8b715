"""Premise guards, seeded initialisation, the top-1 map similarity and the baseline maps; the setup, the recipe
mappings and the fidelity row."""
import math

import pandas as pd
import pytest
import torch
from apnb import evaluate as E
from apnb.data import splits as D
from apnb import recipes as R
from apnb import guards as G
from apnb import metrics as Mt
from apnb import models as M
from apnb.store import Store

pytestmark = pytest.mark.unit
SPEC = {"arch": "vgg16_bn", "width_div": 16, "n_pools": 2, "head_pool": 1}


def test_build_seeded_is_independent_of_history_and_leaves_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = M.build(dict(SPEC, num_classes=4), seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.rand(1000)  # whatever ran before
    b = M.build(dict(SPEC, num_classes=4), seed=5)
    c = M.build(dict(SPEC, num_classes=4), seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_plateau_ratio_and_check():
    flat = [{"phase": "pretrain", "loss": v} for v in (0.65, 0.61, 0.61, 0.61, 0.60)]
    learns = [{"phase": "pretrain", "loss": v} for v in (0.68, 0.60, 0.50, 0.40, 0.33)]
    assert G.plateau_ratio(flat) == pytest.approx(0.60 / 0.65)
    assert G.plateau_ratio(learns) == pytest.approx(0.33 / 0.68)
    G.check_plateau("teacher", learns, 0.8, "pretrain")
    with pytest.raises(G.PremiseError, match=r"^teacher: the pretrain loss never left its plateau \(last/first = 0.92 > 0.8"):
        G.check_plateau("teacher", flat, 0.8, "pretrain")
    G.check_plateau("teacher", flat, None, "pretrain")  # switched off


def test_chance_map_matches_random_scores():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(4000, 5, generator=g) < torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])).float()
    scores = torch.rand(4000, 5, generator=g)
    assert G.chance_map(y) == pytest.approx(0.3, abs=0.01)
    assert Mt.voc_map(scores, y) == pytest.approx(G.chance_map(y), abs=0.02)


def test_guards_validate():
    with pytest.raises(ValueError, match="guards.plateau=3"):
        G.Guards.of({"plateau": 3})
    with pytest.raises(ValueError, match="unknown keys"):
        G.Guards.of({"platoo": 0.5})
    assert G.Guards.of(None).plateau is None


def test_teacher_that_learns_nothing_is_stopped(tmp_path, synth_root):
    """A teacher whose pretraining does not move (lr 1e-9) raises before anything is built on it; so does
    one whose cue-free mAP misses the threshold; nothing is returned."""
    data = D.voc_data(str(synth_root), None, 32)
    spec = dict(SPEC, num_classes=len(data["classes"]))
    frozen = {"epochs": 3, "lr": 1e-9, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    tr = {"epochs": 1, "lr": 1e-9, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    data["pretrain"] = data["train"]  # the fixture's pretrain split is smaller than one batch
    with pytest.raises(G.PremiseError, match="^teacher: the pretrain loss never left its plateau"):
        R.get_teacher(spec, data, tr, frozen, store=Store(tmp_path), device="cpu", progress=False,
                      guards={"plateau": 0.8})
    # the stored network is refused again on load, without training
    with pytest.raises(G.PremiseError, match="plateau"):
        R.get_teacher(spec, data, tr, frozen, store=Store(tmp_path), device="cpu", progress=False,
                      guards={"plateau": 0.8})
    with pytest.raises(G.PremiseError, match=r"^teacher: mAP_nocue \(cue-free val\) = 0\.\d+ is below the required 0\.990"):
        R.get_teacher(spec, data, tr, frozen, store=Store(tmp_path), device="cpu", progress=False,
                      guards={"plateau": None, "teacher_map_nocue": 0.99})


def test_student_at_chance_is_stopped(tmp_path, synth_root):
    data = D.voc_data(str(synth_root), None, 32)
    spec = dict(SPEC, num_classes=len(data["classes"]))
    tr = {"epochs": 1, "lr": 1e-9, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    teacher, info = R.get_teacher(spec, data, tr, None, store=Store(tmp_path), device="cpu", progress=False,
                                  guards=None)
    with pytest.raises(G.PremiseError, match=r"^student naive /32 seed 0: mAP \(val; chance is 0\.\d+\)"):
        R.distill(teacher, info["key"], dict(spec, width_div=32), "naive", data, tr, store=Store(tmp_path),
                  device="cpu", progress=False, guards={"student_over_chance": 0.9})


def test_top1_similarity_and_baselines(synth_root, small_vgg):
    data = D.voc_data(str(synth_root), None, 32)
    net = M.build(dict(SPEC, num_classes=len(data["classes"])), seed=0)
    t = E.top1_maps(net, data["val"], device="cpu")
    assert E.top1_similarity(t, t)["cos_top1"] == pytest.approx(1.0)
    other = M.build(dict(SPEC, num_classes=len(data["classes"])), seed=1)
    s = E.top1_maps(other, data["val"], device="cpu", targets=t[0])
    assert torch.equal(s[0], t[0])
    c = E.top1_similarity(t, s)["cos_top1"]
    # hand reference: the mean of per-image cosines
    ref = torch.nn.functional.cosine_similarity(t[1].flatten(1).double(), s[1].flatten(1).double(), dim=1).mean()
    assert c == pytest.approx(float(ref), abs=1e-9)
    with pytest.raises(Mt.MetricError, match="teacher's top-1"):
        E.top1_similarity(t, E.top1_maps(other, data["val"], device="cpu", targets=(t[0] + 1) % len(data["classes"])))
    # the centred Gaussian peaks at the centre and is symmetric; the random map is seeded
    x = torch.zeros(2, 3, 32, 32)
    g = E.baseline_attr("center")(None, x, None)
    assert g.shape == (2, 32, 32) and torch.allclose(g, g.flip(-1)) and torch.allclose(g, g.flip(-2))
    assert g[0].flatten().argmax() // 32 in (15, 16)
    r1, r2 = E.baseline_attr("random", seed=3)(None, x, None), E.baseline_attr("random", seed=3)(None, x, None)
    assert torch.equal(r1, r2)
    with pytest.raises(ValueError, match="use center or random"):
        E.baseline_attr("corner")
    row, _ = E.evaluate_model(net, data, device="cpu", attr=E.baseline_attr("random"))
    assert 0.0 <= row["AUC"] <= 1.0 or row["AUC"] != row["AUC"]


def _setup(root, train, store):
    """:func:`apnb.recipes.voc_setup` on the 4-class test data (no synth), at 32 px, on the CPU."""
    return R.voc_setup({"root": str(root), "synth": None, "image_size": 32}, {"spec": SPEC, "train": train},
                       device="cpu", store=store)


def test_voc_setup_is_the_teacher_and_its_row(tmp_path, synth_root):
    """:func:`apnb.recipes.voc_setup`: the data, the stored teacher, its row and maps, its spec and device."""
    tr = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    S = _setup(synth_root, tr, Store(tmp_path))
    data, teacher, info, row, loc = S.data, S.teacher, S.info, S.row, S.loc
    assert S.key == info["key"] and len(data["classes"]) == 4 and S.image_size == 32
    assert S.spec == dict(SPEC, num_classes=4) and S.device == torch.device("cpu")
    # the teacher mapping is get_teacher's arguments: the same store entry, not a second network
    again, again_info = R.get_teacher(dict(SPEC, num_classes=4), data, tr, None, store=Store(tmp_path), device="cpu",
                                      progress=False)
    assert again_info["key"] == S.key and len(list(tmp_path.rglob("final.pt"))) == 1
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), again.state_dict().values()))
    ref, _ = E.evaluate_model(teacher, data, device="cpu")
    assert pd.Series(row).equals(pd.Series(ref)) and loc.maps.shape[0] == len(loc.pairs)  # NaN equal to NaN


def _entries(root):
    """The store's entries: ``kind/key`` of every saved network."""
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("final.pt"))


def test_recipe_dicts_make_the_networks_of_the_flat_recipes(tmp_path, synth_root):
    """:func:`apnb.recipes.student`, :func:`~apnb.recipes.structured_net`, :func:`~apnb.recipes.unstructured_net`
    and :func:`~apnb.recipes.quantized` take the profiles' recipe mappings and give the very networks (the same
    store entries and weights) of the flat recipes they stand for."""
    tr = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    ft = {"epochs": 1, "lr": 0.005, "optimizer": "adamw", "schedule": "constant", "batch_size": 8}
    S = _setup(synth_root, tr, Store(tmp_path / "a"))
    matching = {"layer": "last_conv", "p": 0.5, "beta": {"sswa": 2.0}}
    kd = {"div": 2, "T": 3.0, "alpha": 0.8, "train": ft}
    structured = {"rate": 0.5, "layers": None, "finetune": ft}
    unstructured = {"rate": 0.3, "iterations": 2, "finetune": ft}
    new = Store(tmp_path / "new")
    a, _ = R.student(S, kd, matching, "sswa", 1, store=new)
    b, _ = R.structured_net(S, structured, matching, "sswa", 1, store=new)
    c, ci = R.unstructured_net(S, unstructured, matching, "naive", 1, store=new)
    flat = Store(tmp_path / "flat")
    sspec = dict(SPEC, num_classes=4, width_div=SPEC["width_div"] * 2)
    a2, _ = R.distill(S.teacher, S.key, sspec, "sswa", S.data, dict(ft, seed=1), beta=2.0, p=0.5,
                      match_layers=["last_conv"], T=3.0, alpha=0.8, store=flat, device="cpu", progress=False)
    b2, _ = R.prune_structured(S.teacher, S.key, "sswa", S.data, dict(ft, seed=1), 0.5, 32, None, beta=2.0, p=0.5,
                               store=flat, device="cpu", progress=False)
    c2, ci2 = R.prune_unstructured(S.teacher, S.key, "naive", S.data, dict(ft, seed=1), 0.3, 2, p=0.5, store=flat,
                                   device="cpu", progress=False)
    assert _entries(tmp_path / "new") == _entries(tmp_path / "flat") and len(_entries(tmp_path / "new")) == 4  # 1 KD, 1 structured, 2 rounds
    for x, y in [(a, a2), (b, b2), (c, c2)]:
        assert all(torch.equal(u, v) for u, v in zip(x.state_dict().values(), y.state_dict().values()))
    assert ci == ci2 and ci["iterations"] == 2
    # a job overrides one field of the matching recipe, and PTQ ignores it
    j = R.job("sswa", 3, ft, matching, p=0.0, layers=["conv4_3"])
    assert j["train"] == dict(ft, seed=3) and j["beta"] == 2.0 and j["p"] == 0.0 and j["match_layers"] == ["conv4_3"]
    assert R.job("naive", 0, ft, matching)["beta"] is None
    q, qi = R.quantized(S, "naive", 0, None, matching, 8, 16)
    assert qi["mode"] == "ptq" and qi["calib_images"] == 16
    # the side-by-side networks of the qualitative pages are these same stored networks, under their names
    nets = R.compared_networks(S, kd, matching, 1, methods=("sswa",), structured=structured, store=new)
    assert list(nets) == ["full", "KD sswa", "structured sswa"] and nets["full"] is S.teacher
    for x, y in [(nets["KD sswa"], a), (nets["structured sswa"], b)]:
        assert all(torch.equal(u, v) for u, v in zip(x.state_dict().values(), y.state_dict().values()))
    assert list(R.compared_networks(S, kd, matching, 1, methods=("sswa",), store=new)) == ["full", "KD sswa"]
    assert _entries(tmp_path / "new") == _entries(tmp_path / "flat")  # nothing was trained again


def test_structured_study_evaluates_each_fine_tune_once(tmp_path, synth_root, monkeypatch):
    """:class:`apnb.recipes.StructuredStudy`: its jobs are :func:`apnb.recipes.job` with the study's schedule, its
    grid trains the networks :func:`~apnb.recipes.structured_net` would give, and a row asked for twice is
    evaluated once, unless an ``eval_fn`` asks for the fine-tune again."""
    tr = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    ft = {"epochs": 1, "lr": 0.005, "optimizer": "adamw", "schedule": "constant", "batch_size": 8}
    S = _setup(synth_root, tr, Store(tmp_path / "t"))
    matching = {"layer": "last_conv", "p": 0.5, "beta": {"sswa": 2.0}}
    structured = {"rate": 0.5, "layers": None, "finetune": ft}
    store = Store(tmp_path / "s")
    study = R.StructuredStudy(S, structured, matching, "last_conv", store=store)
    assert study.job("sswa", 1, p=0.0) == R.job("sswa", 1, ft, matching, p=0.0)
    (a, _), = study.train([study.job("sswa", 1)])
    b, _ = R.structured_net(S, structured, matching, "sswa", 1, store=store)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    calls = []
    real = R.evaluate_model
    monkeypatch.setattr(R, "evaluate_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    row, info = study.run("sswa", 1)
    ref, _ = real(b, S.data, "last_conv", "cpu", reference=S.loc)
    assert pd.Series(row).equals(pd.Series(ref)) and info["history"] == R.structured_net(S, structured, matching, "sswa", 1, store=store)[1]["history"]
    assert study.run("sswa", 1) == (row, info) and len(calls) == 1  # the second ask is the kept row
    study.run("sswa", 1, p=0.0)
    assert len(calls) == 2 and len(_entries(tmp_path / "s")) == 2  # another field, another network
    study.run("sswa", 1, eval_fn=lambda m: {"x": 1.0})
    assert len(calls) == 3


def test_fidelity_row_of_the_teacher_itself_and_of_another_network(tmp_path, synth_root):
    """:func:`apnb.evaluate.fidelity_row`: the teacher against itself has logit and map cosine 1 and its own AUC
    and mAP; another network's logit cosine is the mean of torch's per-image cosines."""
    tr = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "constant", "batch_size": 8, "seed": 0}
    S = _setup(synth_root, tr, Store(tmp_path))
    x, _ = D.tensors(S.data["val"])
    with torch.no_grad():
        t_logits = S.teacher.eval()(x)
    own = E.fidelity_row(S.teacher, t_logits, x, S.data, "last_conv", "cpu", S.loc)
    assert own["logit_cos"] == pytest.approx(1.0, abs=1e-5)
    self_ref, _ = E.evaluate_model(S.teacher, S.data, "last_conv", "cpu", reference=S.loc)
    # (a one-epoch teacher may predict no pair: its AUC and map cosine are then NaN, NaN equal to NaN here)
    assert pd.Series([own[k] for k in ("AUC", "map_cos", "mAP")]).equals(pd.Series([self_ref[k] for k in ("AUC", "cos", "mAP")]))
    assert own["mAP"] == S.row["mAP"] and not math.isnan(own["mAP"])
    assert math.isnan(own["map_cos"]) or own["map_cos"] == pytest.approx(1.0, abs=1e-5)
    other = M.build(S.spec, seed=7).eval()
    with torch.no_grad():
        expected = torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(other(x), t_logits)]).mean()
    row = E.fidelity_row(other, t_logits, x, S.data, "last_conv", "cpu", S.loc)
    assert row["logit_cos"] == pytest.approx(expected.item(), abs=1e-5) and row["logit_cos"] < 0.999
    ref, _ = E.evaluate_model(other, S.data, "last_conv", "cpu", reference=S.loc)
    assert pd.Series([row["map_cos"], row["AUC"]]).equals(pd.Series([ref["cos"], ref["AUC"]]))
    assert math.isnan(E.fidelity_row(other, t_logits, x, S.data, "last_conv", "cpu")["map_cos"])  # no reference
