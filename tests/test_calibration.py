"""The calibration's rules on hand cases, and the demo profile is the calibrated, frozen setting."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from apnb import calibration as K
from apnb import kinds

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
T = {"mAP": 0.88, "mAP_nocue": 0.87, "AUC": 0.90, "point_acc": 0.72, "point_acc_tol": 0.88}


def _student(d_map, d_auc, d_pt, gap, seed):
    return {"seed": seed, "mAP": T["mAP"] - d_map, "mAP_nocue": T["mAP"] - d_map - gap, "AUC": T["AUC"] - d_auc,
            "point_acc_tol": T["point_acc_tol"] - d_pt}


def test_p2_summary_hand_cases():
    drifted = [_student(0.10 + 0.01 * i, 0.08 + 0.005 * i, 0.15, 0.12, i) for i in range(5)]
    s = K.p2_summary(T, drifted)
    assert s["holds"] and s["n"] == 5
    assert s["map_loss"] == pytest.approx(0.12) and s["auc_drop"] == pytest.approx(0.09)
    assert s["extra_gap"] == pytest.approx(0.12 - 0.01)  # the teacher's own gap is 0.01
    assert not K.p2_summary(T, drifted[:4])["holds"]  # fewer than 5 seeds
    too_lossy = [_student(0.20, 0.08, 0.15, 0.12, i) for i in range(5)]
    assert not K.p2_summary(T, too_lossy)["holds"]
    no_drift = [_student(0.05, 0.01, 0.02, 0.0, i) for i in range(5)]
    assert not K.p2_summary(T, no_drift)["holds"]


def test_log_p2_records_each_drift_and_the_verdict(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("APNB_RECORD", str(tmp_path / "r.json"))
    p2 = K.p2_summary(T, [_student(0.05, 0.06, 0.10, 0.03, i) for i in range(5)])
    K.log_p2(p2)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["claim"] for r in rows] == ["P2 map_loss", "P2 auc_drop", "P2 point_drop", "P2 extra_gap", "P2"]
    assert all(r["table"] == "p2" for r in rows) and rows[-1] == {"table": "p2", "claim": "P2", "metric": "holds",
                                                                   "value": p2["holds"]}
    assert rows[1]["value"] == pytest.approx(0.06)


def test_p1_thresholds():
    assert K.p1_holds(T)
    assert not K.p1_holds(dict(T, mAP_nocue=0.79))
    assert not K.p1_holds(dict(T, point_acc_tol=0.59))


def test_beta_rule_largest_beta_within_two_points_of_naive():
    rows = [{"role": "kd", "seed": s, "mAP": 0.80} for s in (0, 1)]
    for b, m in [(3, 0.80), (10, 0.79), (30, 0.775), (100, 0.70)]:
        rows += [{"role": "beta", "method": "swa", "beta": float(b), "seed": s, "mAP": m} for s in (0, 1)]
    rows += [{"role": "beta", "method": "ewa", "beta": 3.0, "seed": s, "mAP": 0.70} for s in (0, 1)]
    assert K.beta_rule(rows) == {"ewa": None, "swa": 10.0}
    assert K.beta_rule(rows, tolerance=0.03) == {"ewa": None, "swa": 30.0}
    # the walk ends at the first miss: a larger beta that happens to pass again is not taken
    rows += [{"role": "beta", "method": "swa", "beta": 300.0, "seed": s, "mAP": 0.80} for s in (0, 1)]
    assert K.beta_rule(rows)["swa"] == 10.0
    # where the rule stopped: the chosen beta against the next one up, with the mAP drop and the seeds
    edge = {e["method"]: e for e in K.beta_edge(rows)}
    assert set(edge) == {"swa"} and (edge["swa"]["beta"], edge["swa"]["next_beta"]) == (10.0, 30.0)
    assert edge["swa"]["drop"] == pytest.approx(0.015) and edge["swa"]["seeds"] == [0, 1]


def test_the_search_ends_where_the_walk_up_the_grid_ends():
    """The one-scale beta steps search their grid from a start: with a mAP that falls as beta grows, they pick
    the beta the walk up the whole grid would pick, training few betas from a good start; the tolerance comes
    from naive KD's spread over the calibration seeds."""
    grid = [round(10 ** (k / 3), 6) for k in range(-9, 7)]
    seeds = [100, 101, 102]
    naive = [{"role": "kd", "step": "A naive KD", "seed": s, "mAP": m}
             for s, m in zip(seeds + [103, 104], (0.78, 0.80, 0.76, 0.79, 0.77))]
    tol = K.spread_tolerance(naive)
    assert tol == pytest.approx(np.std([0.78, 0.80, 0.76, 0.79, 0.77], ddof=1))
    with pytest.raises(ValueError, match="at least 3 seeds"):
        K.spread_tolerance(naive[:2])
    step = {"name": "C", "seeds": seeds, "betas": grid, "start": {"swa": grid[6], "ewa": grid[10]}}
    curves = {"swa": lambda b: 0.80 - 0.3 * b, "ewa": lambda b: 0.79 - 0.01 * b, "grad_at": lambda b: 0.70,
              "e2kd": lambda b: 0.79}  # edge inside the grid, edge inside, below the grid, above it
    for m, mAP in curves.items():
        rows, trained = list(naive), []
        while (b := K.search_next(rows, step, m, tol)) is not None:
            trained.append(b)
            rows += [{"role": "beta", "step": "C", "method": m, "beta": b, "seed": s,
                      "mAP": mAP(b) + 0.01 * (s - 101)} for s in seeds]
        full = list(naive) + [{"role": "beta", "step": "C", "method": m, "beta": b, "seed": s,
                               "mAP": mAP(b) + 0.01 * (s - 101)} for b in grid for s in seeds]
        assert K.beta_rule(rows, tol, step="C")[m] == K.beta_rule(full, tol, step="C")[m], m
        assert len(set(trained)) == len(trained) and len(trained) <= 6, (m, trained)  # galloping, then bisecting
        if m in step["start"]:  # from a start next to the edge: two or three betas
            assert len(trained) <= 3, (m, trained)
    assert K.beta_rule(rows, tol, step="C")["e2kd"] == 100.0
    # a beta trained on two of three seeds is not decided yet: it is trained again, not skipped
    part = list(naive) + [{"role": "beta", "step": "C", "method": "swa", "beta": grid[6], "seed": s, "mAP": 0.1}
                          for s in seeds[:2]]
    assert K.search_next(part, step, "swa", tol) == grid[6]  # the start
    assert K.search_next(list(naive), step, "e2kd", tol) == grid[8]  # no start: the middle of the grid
    # rows of another step do not count
    assert K.beta_rule(part + [{"role": "beta", "step": "A", "method": "swa", "beta": 3.0, "seed": 100, "mAP": 0.8}],
                       tol, step="C") == {"swa": None}


def test_deep_merge():
    assert K.deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}


def test_demo_profile_is_the_calibrated_setting():
    """The book's demo profile holds the setting the calibration froze (all but the seeds, which differ
    on purpose: calibration data seed 1 and network seeds 100+, the book's data seed 0 and seeds 0-4)."""
    rec = K.load_record(REPO / "calibration" / "demo.json")
    kd = [r for r in rec["rows"] if r["role"] == "kd"]
    frozen = rec["settings"][kd[0]["settings"]]
    demo = yaml.safe_load((REPO / "profiles" / "demo.yml").read_text())["defaults"]
    strip = lambda d: {k: v for k, v in d.items() if k != "seed"}  # noqa: E731
    bench, teacher = demo["benchmark"], demo["teacher_recipe"]
    assert strip(bench["synth"]) == strip(frozen["synth"]) and bench["synth"]["seed"] != frozen["synth"]["seed"]
    # the calibration record keeps the flat names it was run with; the profiles hold them as recipe mappings
    kd_, st_ = demo["kd"], demo["structured"]
    assert teacher["pretrained"] is False
    for mine, theirs in [(bench["image_size"], "image_size"), (teacher["spec"], "teacher_spec"),
                         (kd_["div"], "main_div"), (st_["rate"], "rho_c"), (kd_["T"], "kd_T"), (kd_["alpha"], "kd_alpha")]:
        assert mine == frozen[theirs], theirs
    for mine, theirs in [(teacher["pretrain"], "teacher_pretrain"), (teacher["train"], "teacher_train"),
                         (kd_["train"], "student_train")]:
        assert strip(mine) == strip(frozen[theirs]), theirs
    # the structured fine-tune of the last structured step, whose P2 must hold
    st_step = [r for r in rec["rows"] if r["role"] == "structured"][-1]["step"]
    st_rows = [r for r in rec["rows"] if r["step"] == st_step]
    assert K.p2_summary(st_rows[0]["teacher"], st_rows)["holds"]
    assert st_["finetune"] == rec["settings"][st_rows[0]["settings"]]["structured_finetune"]
    # the weights: step A's rule (mean scale, one seed) converted to the one scale of every kind (beta / 64 on
    # the 8x8 maps), until step C's rule (one scale, three seeds) has decided every kind it searches
    rows = [r for r in rec["rows"] if r["role"] in ("kd", "beta")]
    step_c = next(st for st in K.load_plan(REPO / "profiles" / "calibrate.yml")["steps"] if st["name"] == "C beta, one scale")
    tol = K.spread_tolerance(rec["rows"])
    if all(K.search_next(rows, step_c, m, tol) is None for m in step_c["methods"]):
        want = K.beta_rule(rows, tol, step=step_c["name"])
    else:
        want = {m: kinds.get(m).image_beta(b, 64) for m, b in K.beta_rule(rows, step="A beta").items()}
    assert {m: b for m, b in demo["matching"]["beta"].items()} == {m: want[m] for m in demo["matching"]["beta"]}
    assert demo["matching"]["p"] == frozen.get("sswa_p", 0.3)  # the rule kept SSWA's p at the paper's 0.3


def test_every_chapters_weight_of_a_searched_kind_is_its_steps_rule():
    """Wherever a demo chapter weighs a kind that a one-scale step searched (steps C, D, E), the weight is that
    step's rule on the calibration seeds, once the step has ended for the kind. The controls (centre prior,
    shuffled SSWA) are searched by no step: they take SSWA's weight."""
    rec = K.load_record(REPO / "calibration" / "demo.json")
    plan = K.load_plan(REPO / "profiles" / "calibrate.yml")
    rows = [r for r in rec["rows"] if r["role"] in ("kd", "beta")]
    tol = K.spread_tolerance(rec["rows"])
    demo = yaml.safe_load((REPO / "profiles" / "demo.yml").read_text())
    weights = [("defaults", demo["defaults"]["matching"]["beta"])]
    weights += [(nb, o["matching"]["beta"]) for nb, o in demo["notebooks"].items() if "matching" in o and nb != "05_imagenet"]
    checked = 0
    for st in plan["steps"]:
        if st["name"] not in K.ONE_SCALE_STEPS:
            continue
        rule = K.beta_rule(rows, tol, step=st["name"])
        for m in st["methods"]:
            if K.search_next(rows, st, m, tol) is not None:
                continue  # still searching
            for where, beta in weights:
                if m in beta:
                    assert beta[m] == rule[m], (where, m, beta[m], rule[m])
                    checked += 1
    for where, beta in weights:
        for control in ("center_prior", "sswa_shuffled"):
            if control in beta:
                assert beta[control] == beta["sswa"], (where, control)
    if not checked:
        pytest.skip("no one-scale step has ended for a kind a chapter weighs")


def test_p2_table_reads_the_summary():
    from apnb.calibration import p2_summary, p2_table

    t = {"mAP": 0.9, "mAP_nocue": 0.88, "AUC": 0.9, "point_acc_tol": 0.9}
    st = [{"mAP": 0.82 + 0.002 * i, "mAP_nocue": 0.6, "AUC": 0.8 + 0.003 * i, "point_acc_tol": 0.7 + 0.01 * i} for i in range(5)]
    html = p2_table(p2_summary(t, st)).to_html()
    assert "this run (5 seeds)" in html and html.count("True") == 4 and ">0<" not in html


def test_precision_table_pairs_seeds_and_keeps_the_variant_apart():
    """The bf16 rows are compared seed by seed with the frozen fp32 steps, beside the fp32 seed spread, and
    enter neither the frozen steps nor the beta rule."""
    t = {"mAP": 0.9, "mAP_nocue": 0.88, "AUC": 0.9, "point_acc": 0.7, "point_acc_tol": 0.85}

    def teacher(step, role, seed, auc, p1=True):
        return {"step": step, "role": role, "seed": seed, "settings": "s" if role == "teacher" else "b",
                **t, "AUC": auc, "p1": p1}

    def kd(step, role, seed, m):
        return {"step": step, "role": role, "seed": seed, "settings": "s" if role == "kd" else "b", "teacher": t,
                "mAP": m, "mAP_nocue": m - 0.2, "AUC": 0.8, "point_acc": 0.4, "point_acc_tol": 0.6,
                "cos": 0.8, "cos_top1": 0.7}

    rows = [teacher("A teacher", "teacher", s, a) for s, a in [(100, 0.90), (101, 0.92), (102, 0.94)]]
    rows += [kd("A naive KD", "kd", 100 + i, 0.80 + 0.01 * i) for i in range(5)]
    rows += [teacher("bf16 teacher", "teacher_bf16", s, a) for s, a in [(100, 0.91), (101, 0.93)]]
    rows += [kd("bf16 naive KD", "kd_bf16", 100 + i, 0.76 + 0.01 * i) for i in range(5)]  # P2 needs 5 seeds
    rec = {"rows": rows}
    assert K.frozen_teacher_step(rec) == "A teacher" and K.p2_rows(rec, "kd")[0][0]["step"] == "A naive KD"
    tab, premises = K.precision_table(rec)
    auc = tab[(tab.network == "teacher") & (tab.metric == "AUC")].iloc[0]
    assert auc.seeds == 2 and auc.fp32 == pytest.approx(0.91) and auc.bf16 == pytest.approx(0.92)
    assert auc.difference == pytest.approx(0.01) and auc["fp32 seed sd"] == pytest.approx(0.02)
    assert auc["within the spread"]
    m = tab[(tab.network == "naive KD") & (tab.metric == "mAP")].iloc[0]
    assert m.difference == pytest.approx(-0.04) and not m["within the spread"]
    assert "cos_top1" not in set(tab[tab.network == "teacher"].metric)
    assert premises == {"P1": True, "P2": True}
    tried = K.tried(rec)
    assert tried.set_index("step").loc["bf16 teacher", "outcome"] == "P1 holds on 2 of 2 seeds"
    assert tried.set_index("step").loc["bf16 naive KD", "outcome"].startswith("P2 ")
    assert K.precision_table({"rows": rows[:8]})[0].empty
