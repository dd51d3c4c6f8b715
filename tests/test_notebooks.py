"""Tier 2 and 3: every notebook of the book at the smoke profile, its run record, and the smoke book build."""
import json
import math

import nbformat
import pytest

from apnb import runner

from conftest import run_one

NOTEBOOKS = runner.toc_notebooks()
ALL_SOURCES = sorted((runner.repo_root() / "notebooks").glob("*.ipynb"))


@pytest.mark.unit
@pytest.mark.parametrize("nb", ALL_SOURCES, ids=lambda p: p.stem)
def test_sources_have_no_outputs_and_one_literal_parameters_cell(nb):
    import ast

    book = nbformat.read(nb, 4)
    for c in book.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{nb.name} has stored outputs"
    params = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{nb.name} needs exactly one cell tagged parameters"
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.Assign), f"{nb.name}: the parameters cell holds assignments only"
        ast.literal_eval(node.value)  # literals only: raises on derived values


@pytest.mark.unit
def test_every_notebook_is_in_the_toc():
    assert sorted(NOTEBOOKS) == ALL_SOURCES


def _finite(v):
    return v is None or (isinstance(v, (int, float)) and not math.isnan(v)) or isinstance(v, str)


@pytest.mark.notebooks
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_records(nb):
    rec = run_one(nb.stem, "smoke")
    for key in ("notebook", "profile", "parameters", "commit", "wall_time_s", "finished_at", "rows"):
        assert key in rec, f"{nb.name} record lacks {key}"
    assert rec["profile"] == "smoke" and rec["rows"]
    executed = nbformat.read(runner.runs_dir("smoke") / nb.name, 4)
    for c in executed.cells:
        for o in c.get("outputs", []):
            assert o.get("output_type") != "error", f"{nb.name}: error output"
    for r in rec["rows"]:
        assert _finite(r["value"]), r
        m = r["metric"]
        if m in ("mAP", "F1", "AUC", "point_acc", "image_AP", "point_acc_tol") and r["value"] is not None:
            assert 0.0 <= r["value"] <= 1.0, r
        if m == "cos" and r["value"] is not None:
            assert -1.0 <= r["value"] <= 1.0 + 1e-9
        if m == "l2" and r["value"] is not None:
            assert 0.0 <= r["value"] <= 2.0 + 1e-9


@pytest.mark.notebooks
def test_distillation_record_structure():
    rec = run_one("01_voc_distillation", "smoke")
    p = rec["parameters"]
    rows = [r for r in rec["rows"] if r["table"] == "table2" and r["metric"] == "AUC"]
    assert len(rows) == len(p["student_divs"]) * len(p["methods"])  # one row per (student, method)
    teacher = [r for r in rec["rows"] if r["table"] == "teacher" and r["metric"] == "AUC"]
    assert len(teacher) == 1  # the teacher's AUC is reported once
    runs = {(r["student"], r["method"], r["seed"]) for r in rec["rows"] if r["table"] == "runs"}
    main = [s for s in runs if s[0] == f"VGG16/{p['kd']['div']}"]
    assert len(main) == len(p["methods"]) * len(p["seeds"])
    # its verdicts are exactly the claims table's rows of this chapter, decided (apnb.claims.finish)
    from apnb import claims

    ids = [r["base_id"] for r in rec["rows"] if r["table"] == "verdict" and r.get("base_id")]
    assert ids == [c.id for c in claims.for_chapter("01_voc_distillation")]
    assert all(r["finding"] for r in rec["rows"] if r["table"] == "verdict" and r.get("base_id"))
    store = rec["store"]  # the execution page's counts: at least the teacher is reloaded from the store
    assert store.get("loaded", 0) >= 1 and store.get("trained", 0) + store.get("loaded", 0) >= 1 + len(runs)


@pytest.mark.notebooks
def test_course_page_grades_the_solutions():
    """The course page grades the worked solutions (the copy that must score full marks; test_course.py grades
    the other two): every autograded exercise is graded, at full marks."""
    from apnb import course

    rows = [r for r in run_one("30_course", "smoke")["rows"] if r["table"] == "grading"]
    score = {r["exercise"]: r["value"] for r in rows if r["metric"] == "score"}
    possible = {r["exercise"]: r["value"] for r in rows if r["metric"] == "possible"}
    points = {e.question: e.points for items in course.chapter_exercises(NOTEBOOKS).values() for e in items if e.scored}
    assert possible == points and score == possible


@pytest.mark.book
def test_smoke_book_builds_without_warnings(smoke_book):
    index = smoke_book
    assert index.exists()
    html = (index.parent / "notebooks" / "01_voc_distillation.html").read_text()
    assert "Traceback" not in html
    for page in sorted((index.parent / "notebooks").glob("*.html")):
        text = page.read_text()
        for noise in ("it/s]", "s/it]", "TqdmWarning", "UserWarning", "RuntimeWarning", "FutureWarning"):
            assert noise not in text, f"{page.name} shows {noise!r}: stderr must not reach a rendered page"
