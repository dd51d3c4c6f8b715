"""The claims table (apnb/claims.yml) and the verdicts built from it: the table is valid, every paper chapter
decides exactly its rows with one call, the scorecard is exactly the primary claim rows, premises stay apart,
and no chapter picks verdicts by position or by their text."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apnb import claims, report

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


def test_the_table_is_valid_and_premises_are_never_scored():
    rows = claims.table()
    assert len({c.id for c in rows}) == len(rows)
    for c in rows:
        assert (ROOT / "notebooks" / f"{c.chapter}.ipynb").exists(), c.id
        if c.kind == "premise":
            assert not c.scored and c.family == "secondary", c.id
        if c.scored:
            assert c.test != "estimate", c.id
        if c.test in ("noninferiority", "equivalence", "restores"):
            assert c.margin and c.margin_source, c.id
        if c.paper:
            assert isinstance(c.paper_effect(), float), c.id
    # the claims the verdicts issue named are tested as claimed
    by_id = {c.id: c for c in rows}
    assert by_id["kd.p2.auc"].kind == "premise" and by_id["st.p2.auc"].kind == "premise"
    assert by_id["kd.p2.map"].test == "noninferiority" and by_id["kd.sswa.map"].test == "noninferiority"
    assert by_id["in.sswa.top1"].test == "equivalence" and by_id["in.resnet.drift"].kind == "description"
    assert by_id["kd.sswa.cos_top1"].kind == "manipulation" and by_id["kd.sswa.restores"].test == "restores"
    assert not by_id["oa.sswa.lrp"].scored  # the same maps as EBP up to a scale: not a row of its own


@pytest.mark.parametrize("bad, message", [
    ({"extra": 1}, "unknown field"),
    ({"test": "noninferiority"}, "positive margin"),
    ({"test": "bogus"}, "is not one of"),
    ({"margin": 0.1}, "margin_source"),
    ({"compare": ["a"]}, "compare must be"),
    ({"test": "estimate", "family": "primary"}, "needs a test"),
])
def test_a_bad_row_is_refused_with_one_line(tmp_path, bad, message):
    row = {"id": "x", "chapter": "01_voc_distillation", "statement": "s", "source": "t", "measure": "AUC",
           "compare": ["naive", "sswa"], "test": "superiority", "kind": "claim", "family": "secondary", **bad}
    p = tmp_path / "c.yml"
    p.write_text(json.dumps({"claims": [row]}))
    with pytest.raises(ValueError, match=message):
        claims.table(p)


def _chapter_frame(effect_auc, effect_map, seeds=(0, 1, 2, 3, 4), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in seeds:
        base = 0.75 + 0.01 * rng.normal()
        m0 = 0.80 + 0.01 * rng.normal()
        for m, auc, mp in [("naive", base, m0), ("ewa", base + 0.02, m0), ("swa", base + 0.03, m0),
                           ("sswa", base + effect_auc + 0.005 * rng.normal(), m0 + effect_map + 0.003 * rng.normal())]:
            rows.append({"method": m, "seed": s, "AUC": auc, "mAP": mp, "mAP_nocue": mp - 0.2, "point_acc": auc - 0.1,
                         "point_acc_tol": auc, "cos": 0.8, "cos_top1": 0.7})
    df = pd.DataFrame(rows)
    for m in ("AUC", "point_acc", "point_acc_tol"):  # scores on common pairs: the same numbers here
        df[m + "_common"] = df[m]
    teacher = {"AUC": 0.90, "mAP": 0.88, "mAP_nocue": 0.87, "point_acc": 0.8, "point_acc_tol": 0.9}
    df["cue_gap"] = df.mAP - df.mAP_nocue
    teacher["cue_gap"] = teacher["mAP"] - teacher["mAP_nocue"]
    teacher.update({m + "_common": teacher[m] for m in ("AUC", "point_acc", "point_acc_tol")})
    return {"runs": claims.Evidence(df, teacher=teacher)}


def test_a_chapter_decides_exactly_its_rows_with_holm_over_the_primary_family():
    df = claims.decide_chapter("01_voc_distillation", _chapter_frame(0.08, 0.0))
    assert list(df.base_id) == [c.id for c in claims.for_chapter("01_voc_distillation")]
    row = df.set_index("claim_id")
    assert row.loc["kd.sswa.auc", "finding"] == "supports the paper's direction"
    assert row.loc["kd.sswa.map", "finding"] == "non-inferior within the margin"  # no effect, within 2 points
    assert row.loc["kd.p2.auc", "finding"].startswith("premise: held by calibration")
    assert row.loc["kd.sswa.cos_top1", "finding"] == "manipulation check, not evidence"
    prim = df[(df.family == "primary") & (df.kind == "claim")]
    assert np.allclose(prim.p_holm, report.holm(prim.p.tolist()), equal_nan=True)
    assert df[df.family == "secondary"].p_holm.isna().all()
    # a 5-point mAP loss is not "keeps accuracy", whatever its direction
    lost = claims.decide_chapter("01_voc_distillation", _chapter_frame(0.08, -0.05)).set_index("claim_id")
    assert lost.loc["kd.sswa.map", "finding"] == "inferior beyond the margin"
    # a network the profile did not run: the row says so, and stays
    ev = _chapter_frame(0.08, 0.0)
    ev["runs"].df = ev["runs"].df[ev["runs"].df.method != "ewa"]
    assert claims.decide_chapter("01_voc_distillation", ev).set_index("claim_id").loc[
        "kd.swa_ewa.auc", "finding"] == "not run at this profile"


def test_each_expands_over_the_values_the_chapter_ran():
    rows = []
    for rate in (0.5, 0.8):
        for s in range(3):
            for m, auc, top1 in [("naive", 0.7 + 0.01 * s, 0.6), ("sswa", 0.75 + 0.012 * s, 0.6 + 0.001 * s)]:
                rows.append({"method": m, "seed": s, "rate": rate, "AUC": auc, "top1": top1})
    res = pd.DataFrame(rows)
    ev = {"unstructured": claims.Evidence(res, teacher={"AUC": 0.8, "top1": 0.62}),
          "resnet": claims.Evidence(res[res.rate == 0.5].drop(columns="rate"), teacher={"AUC": 0.8, "top1": 0.6})}
    df = claims.decide_chapter("05_imagenet", ev).set_index("claim_id")
    assert {"in.sswa.auc@0.5", "in.sswa.auc@0.8", "in.sswa.top1@0.5", "in.drift.auc@0.8"} <= set(df.index)
    assert df.loc["in.sswa.top1@0.5", "finding"] == "equivalent within the margin"
    assert df.loc["in.resnet.drift", "finding"] == "estimate only: no claim tested"


def test_the_scorecard_is_exactly_the_primary_claim_rows_and_premises_stay_apart():
    df = claims.decide_chapter("01_voc_distillation", _chapter_frame(0.08, 0.0))
    recs = df.to_dict("records")
    for r in recs:
        r.update(table="verdict", metric="text", value="x", ours=claims._ours(r), paper="")
    rec = {"commit": "abcdef123", "rows": recs}
    card = report.scorecard({"01_voc_distillation": rec}, {"01_voc_distillation": "Distillation"})
    wanted = [c.statement for c in claims.for_chapter("01_voc_distillation") if c.scored]
    assert list(card.claim) == wanted and set(card.kind) == {"claim"}
    assert "premise" not in " ".join(card.verdict)
    prem = report.premises({"01_voc_distillation": rec}, {"01_voc_distillation": "Distillation"})
    assert list(prem.claim) == [c.statement for c in claims.for_chapter("01_voc_distillation") if c.kind == "premise"]
    html = report.scorecard_html(card)
    assert '<a href="../notebooks/01_voc_distillation.html">Distillation</a>' in html and "margin 2.2 points" in html
    assert "claim_id" not in html and "commit" not in html
    old = {"rows": [{"table": "verdict", "claim": "x", "scorecard": True, "value": "x"}]}
    with pytest.raises(ValueError, match="re-run it"):
        report.scorecard({"01_voc_distillation": old}, {"01_voc_distillation": "Distillation"})


def _code(nb):
    return "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")


def test_every_paper_chapter_ends_with_one_finish_and_no_verdict_is_picked_by_position_or_text():
    chapters = {c.chapter for c in claims.table()}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = _code(nb)
        assert "scorecard=" not in code, nb.name  # no index list of scorecard lines
        assert not re.search(r"str\(l\)\.startswith|\.startswith\(KEY", code), nb.name  # no pick by verdict text
        if nb.stem in chapters:
            assert code.count(f'claims.finish("{nb.stem}"') == 1, nb.name
            assert "report.verdict(" not in code, nb.name
    lib = (ROOT / "apnb" / "report.py").read_text()
    assert "re.search" not in lib and not re.search(r"^import re$", lib, re.M)  # no regex reads a claim's text


def test_forest_plot_draws_each_tested_claim():
    import matplotlib.pyplot as plt

    from apnb import plots

    df = claims.decide_chapter("01_voc_distillation", _chapter_frame(0.08, 0.0))
    fig = plots.forest(df)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "kd.sswa.auc (superiority)" in labels and not any("cos_top1" in t for t in labels)
    assert any("premise" in t for t in labels)
    plt.close(fig)


def test_common_pairs_scores_every_network_on_the_same_pairs():
    import torch

    from apnb import evaluate as E

    def loc(pred, auc, hit):
        pairs = pd.DataFrame({"img": [0, 0, 1, 2], "cls": [1, 2, 0, 1], "predicted": pred, "auc": auc, "hit": hit,
                              "hit_tol": hit, "auc_void_neg": auc})
        return E.LocResult(pairs, torch.zeros(4, 2, 2))

    t = loc([True, True, True, False], [0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0])
    s = loc([True, False, True, True], [0.5, 0.1, 0.3, 0.9], [1, 0, 1, 1])
    out = E.common_pairs({"teacher": t, "student": s})  # pairs 0 and 2 only
    assert out["teacher"]["n_common"] == 2 and out["teacher"]["AUC_common"] == pytest.approx(0.8)
    assert out["student"]["AUC_common"] == pytest.approx(0.4) and out["student"]["point_acc_common"] == 1.0
    assert s.summary()["AUC"] == pytest.approx(np.mean([0.5, 0.3, 0.9]))  # its own pairs differ
    none = E.common_pairs({"a": t, "b": loc([False] * 4, [0.5] * 4, [0] * 4)})
    assert none["a"]["n_common"] == 0 and np.isnan(none["a"]["AUC_common"])
    other = loc([True] * 4, [0.5] * 4, [0] * 4)
    other.pairs["cls"] = [0, 0, 0, 0]
    with pytest.raises(ValueError, match="same loc set"):
        E.common_pairs({"a": t, "b": other})
