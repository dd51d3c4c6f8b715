import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from apnb import paper, report

pytestmark = pytest.mark.unit


def test_mean_ci_matches_scipy_t_interval():
    v = [0.71, 0.74, 0.69, 0.80]
    mu, half, n = report.mean_ci(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert n == 4 and mu == pytest.approx(np.mean(v)) and half == pytest.approx((hi - lo) / 2)
    assert math.isnan(report.mean_ci([0.5])[1])


def test_paired_diff_and_verdicts():
    d = report.paired_diff([0.1, 0.2, 0.3], [0.3, 0.4, 0.6])
    assert d["diff"] == pytest.approx(0.2333333) and d["p"] < 0.05
    assert "supports" in report.verdict(d, "x")
    assert "contradicts" in report.verdict(report.paired_diff([0.3, 0.4, 0.6], [0.1, 0.2, 0.3]), "x")
    assert "includes 0" in report.verdict(report.paired_diff([0.1, 0.5, 0.3], [0.2, 0.3, 0.35]), "x")
    assert "single seed" in report.verdict(report.paired_diff([0.1], [0.2]), "x")
    # the paper reports a decrease (paper_sign -1): only an interval entirely below 0 supports it
    assert "supports" in report.verdict({"diff": -0.1, "ci": 0.05, "n": 3}, "x", -1)
    assert "includes 0" in report.verdict({"diff": -0.011, "ci": 0.023, "n": 3}, "x", -1)
    assert "contradicts" in report.verdict({"diff": 0.1, "ci": 0.05, "n": 3}, "x", -1)
    assert "includes 0" in report.verdict({"diff": 0.046, "ci": 0.061, "n": 3}, "x", -1)
    assert "positive: the interval excludes 0" in report.verdict({"diff": 0.1, "ci": 0.05, "n": 3}, "x", None)
    # "no change" is an equivalence claim with a margin (apnb/claims.yml), never an interval that covers 0
    with pytest.raises(ValueError, match="equivalence"):
        report.verdict({"diff": 0.01, "ci": 0.02, "n": 3}, "x", 0)


def test_side_by_side_labels_paper_rows():
    ours = pd.DataFrame([{"method": "naive", "AUC": 0.8, "AUC_ci": 0.01, "cos_top1": 0.5, "cos_top1_ci": 0.02}])
    t = report.side_by_side(ours, paper.table6_7(), ["method"], {"AUC": (100, 1), "cos_top1": (1, 3)},
                            teacher={"AUC": 0.9})
    assert list(t.index.names) == ["method", "source"] and list(t.columns) == ["AUC", "cos_top1"]
    assert t.loc[("teacher", "ours")].tolist() == ["90.0", ""]  # no interval for the one teacher; no cos to itself
    assert t.loc[("teacher", "paper")].tolist() == ["88.79", ""]  # the paper reports no top-1 cosine
    assert t.loc[("naive", "ours")].tolist() == ["80.0 ± 1.0", "0.500 ± 0.020"]
    assert t.loc[("naive", "paper")].tolist() == ["79.98", ""]


def test_holm_matches_hand_computation():
    from apnb.report import holm

    # p sorted: 0.01 (x3), 0.02 (x2), 0.04 (x1) -> 0.03, 0.04, 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    out = holm([0.5, float("nan"), 0.6])
    assert out[0] == pytest.approx(1.0) and out[2] == pytest.approx(1.0) and out[1] != out[1]


def test_pointing_findings_hand_case():
    text = report.pointing_findings({"full": 0.8, "KD naive": 0.55, "KD sswa": 0.75}, 40)
    assert "40 (image, class) pairs" in text and "full 80.0 %" in text
    assert "KD naive -25.0, KD sswa -5.0" in text and "no interval" in text
    assert "nothing to compare" in report.pointing_findings({"full": 0.0}, 0)


def test_verdict_carries_its_parts_without_reading_its_text():
    v = report.verdict({"diff": -0.1, "ci": 0.05, "n": 5, "p": 0.01}, "Drift: naive AUC minus teacher AUC", -1,
                       paper="negative, -8.8 points")
    assert str(v) == ("Drift: naive AUC minus teacher AUC: -0.100 (95% CI -0.150 to -0.050, "
                      "n=5) — supports the paper's direction.")
    assert (v.claim, v.paper, v.finding) == ("Drift: naive AUC minus teacher AUC", "negative, -8.8 points",
                                             "supports the paper's direction")
    # a "(paper: ...)" inside the claim text is text, not a field
    assert report.verdict({"diff": 0.1, "ci": 0.05, "n": 3}, "x (paper: positive)").paper is None
    one = report.verdict({"diff": 0.02, "ci": float("nan"), "n": 1, "p": float("nan")}, "SSWA minus naive")
    rows = report.verdict_rows([v, one, report.note("a plain line: 3")], study="x")
    assert [r["scorecard"] for r in rows] == [False, False, False] and rows[2]["claim"] == "a plain line"
    assert rows[1]["ours"] == "+0.020 (one seed)" and all(r["study"] == "x" for r in rows)


def test_study_verdicts_are_structured_and_the_summary_reads_their_answers():
    v = report.verdict({"diff": 0.1, "ci": 0.05, "n": 3}, "SWA minus gradient AT, AUC", None, study="Gradient AT")
    assert str(v).startswith("Gradient AT: SWA minus gradient AT, AUC: +0.100")
    assert v.study == "Gradient AT" and v.claim == "SWA minus gradient AT, AUC"
    assert v.answer == str(v)[len("Gradient AT: "):]
    n = report.note("across beta 3-100 the AUC means span 70.1 to 74.2", study="Sensitivity", claim="beta sweep")
    assert str(n) == "Sensitivity: across beta 3-100 the AUC means span 70.1 to 74.2" and n.claim == "beta sweep"
    # a study given to verdict_rows names lines that carry none; the line keeps its own text as the answer
    plain = report.note("KD: no method lowers the drop")
    rows = report.verdict_rows([v, n, plain], study="Right reasons")
    assert [r["study"] for r in rows] == ["Gradient AT", "Sensitivity", "Right reasons"]
    rec = {"notebook": "20_x.ipynb", "rows": [dict(r, table="verdict") for r in rows]}
    assert report.study_answers(rec, "Sensitivity") == "across beta 3-100 the AUC means span 70.1 to 74.2"
    assert report.study_answers(rec, "Right reasons") == "KD: no method lowers the drop"
    assert report.study_answers(rec, "Dynamics") == ""
    with pytest.raises(TypeError, match="report.note"):
        report.verdict_rows(["Design: a sentence"])
    old = {"notebook": "20_x.ipynb", "rows": [{"table": "verdict", "study": "Design", "value": "Design: x"}]}
    with pytest.raises(ValueError, match="apnb run notebooks/20_x.ipynb --force"):
        report.study_answers(old, "Design")


def test_execution_table_and_store_tally(tmp_path, monkeypatch):
    from apnb import records

    rec = tmp_path / "r.json"
    records.tally("trained")  # outside `apnb run`: nothing is written anywhere
    assert not rec.exists() and not (tmp_path / "results.json").exists()
    monkeypatch.setenv(records.ENV, str(rec))
    for c in ("trained", "loaded", "loaded"):
        records.tally(c)
    records.log("t", [{"metric": "m", "value": 1}])
    monkeypatch.setenv("RANK", "1")
    records.tally("loaded")  # a second torchrun rank does not write
    r = records.finalize(rec, profile="demo", commit="0123456789", wall_time_s=90.0, finished_at="2026-12-01T10:00:00Z")
    assert r["store"] == {"trained": 1, "loaded": 2} and len(r["rows"]) == 1
    r["work"] = {"train_tflop": 1.5, "eval_tflop": 0.3}
    t = report.execution_table({"01_x": r, "02_y": {"profile": "demo"}}, machine_gflops=40.0)
    assert t.iloc[0].to_dict() == {"notebook": "01_x", "profile": "demo", "commit": "0123456", "finished (UTC)":
                                   "2026-12-01 10:00:00", "minutes": 1.5, "networks trained": 1, "networks reloaded": 2,
                                   "TFLOP": 1.8, "GFLOP/s": 20.0, "share of machine rate": 0.5}
    assert t.iloc[1]["networks trained"] == 0 and t.iloc[1]["finished (UTC)"] == "not recorded"
    assert t.iloc[1][["TFLOP", "GFLOP/s", "share of machine rate"]].isna().all()


def test_formatted_and_paired_against_with_holm():
    df = pd.DataFrame([{"method": m, "seed": s, "x": v} for m, vals in
                       [("naive", [0.1, 0.2, 0.3]), ("a", [0.2, 0.3, 0.41]), ("b", [0.1, 0.21, 0.3])] for s, v in enumerate(vals)])
    summ = report.summarize(df, ["method"], ["x"])
    t = report.formatted(summ, ["method"], {"x": (100, 1)})
    assert t.loc["naive", "x"] == "20.0 ± 24.8" and list(t.columns) == ["x"]
    tests = report.paired_against(df, ["x"], "naive", ["a", "b"])
    a, b = tests.set_index("method").loc["a"], tests.set_index("method").loc["b"]
    from scipy import stats

    assert a["diff"] == pytest.approx(0.1033, abs=1e-4)
    assert a["p"] == pytest.approx(stats.ttest_rel([0.2, 0.3, 0.41], [0.1, 0.2, 0.3]).pvalue)
    # Holm over the two comparisons of one metric: the smaller p doubled, the larger kept (monotone)
    lo, hi = sorted([a["p"], b["p"]])
    assert sorted([a["p_holm"], b["p_holm"]]) == pytest.approx([min(1, 2 * lo), max(min(1, 2 * lo), hi)])


def test_reader_tables_have_no_index_and_formatted_numbers():
    html = report.table(pd.DataFrame({"method": ["naive"], "AUC": [0.8123], "cos": [0.51234], "n": [3]})).to_html()
    assert "81.2%" in html and "0.512" in html and ">0<" not in html  # no row label 0
    html = report.row_table({"mAP": 0.9, "params": 1234567, "cos": float("nan")}, ["mAP", "params", "cos"]).to_html()
    assert "90.0%" in html and "1,234,567" in html and "n/a" in html and ">0<" not in html


def test_paper_difference_picks_one_row():
    assert paper.difference(paper.table6_7(), "AUC", {"method": "teacher"}, {"method": "naive"}) == pytest.approx(-8.81)
    assert paper.difference(paper.table2(), "mAP", {"student": "teacher"},
                            {"student": "VGG16/8", "method": "naive"}) == pytest.approx(-14.92)
    with pytest.raises(KeyError, match="picks 3 rows"):  # naive at three student sizes
        paper.difference(paper.table2(), "mAP", {"student": "teacher"}, {"method": "naive"})
