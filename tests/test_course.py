"""The course (issue: teaching the method): the student set is built from the book's exercises, and grading
three copies of it gives full marks (graded by notebooks/30_course.ipynb), zero, and exactly one exercise's loss."""
import shutil

import nbformat
import pytest

from apnb import course, runner

pytestmark = pytest.mark.unit

FOUNDATIONS = ["10_method", "11_metrics", "00_synthetic_benchmark", "12_calibration"]
PLANTED = ("weights = grads.mean(dim=(2, 3), keepdim=True)", "weights = grads.sum(dim=1, keepdim=True)")


@pytest.fixture(scope="module")
def student_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "set"
    written = course.build(out, runner.toc_notebooks())
    return out, written


def test_every_foundations_chapter_and_four_experiments_have_a_scored_and_a_judgement_exercise():
    ex = course.chapter_exercises(runner.toc_notebooks())
    for ch in FOUNDATIONS:
        assert ch in ex, f"{ch} has no exercise"
    experiments = [c for c in ex if c[:2] in {"01", "02", "03", "04", "05", "06", "07"}]
    assert len(experiments) >= 4
    for ch, items in ex.items():
        assert any(e.scored for e in items), f"{ch}: no autograded exercise"
        assert any(not e.scored for e in items), f"{ch}: no question of judgement"
        assert len({e.question for e in items}) == len(items)


def test_student_notebooks_hide_solutions_and_keep_checks(student_set):
    out, written = student_set
    assert set(written) == set(course.chapter_exercises(runner.toc_notebooks()))
    for ch, p in written.items():
        nb = nbformat.read(p, 4)
        src = "\n".join(c.source for c in nb.cells)
        assert 'grader = otter.Notebook(' in nb.cells[0].source
        for e in course.chapter_exercises(runner.toc_notebooks())[ch]:
            if e.scored:
                assert f'grader.check("{e.question}")' in src
                assert nb.metadata["otter"]["tests"][e.question]["points"] == e.points
                for c in e.solution:  # no line of the worked answer reaches the student
                    for line in c.source.splitlines():
                        if len(line.strip()) > 15 and not line.strip().startswith("#"):
                            assert line not in src, f"{ch}/{e.label}: solution line {line!r} in the student notebook"
        assert (out / "autograder" / f"{ch}.zip").exists()


def _copy(src_dir, dst, names, edit=None):
    dst.mkdir()
    for n in names:
        nb = nbformat.read(src_dir / f"{n}.ipynb", 4)
        if edit:
            edit(nb)
        nbformat.write(nb, dst / f"{n}.ipynb")
    return dst


def _points():
    return {e.question: e.points for items in course.chapter_exercises(runner.toc_notebooks()).values()
            for e in items if e.scored}


def _plant(nb):
    hits = [c for c in nb.cells if PLANTED[0] in c.source]
    for c in hits:
        c.source = c.source.replace(*PLANTED)
    if nb.metadata["otter"]["assignment_name"] == "10_method":
        assert hits, "the Grad-CAM solution line to plant the mistake in is gone"


# The third copy, the worked solutions at full marks, is graded by notebooks/30_course.ipynb, which fails when a
# solution misses a point; test_notebooks.py checks its smoke record (test_course_page_grades_the_solutions).
@pytest.mark.slow
@pytest.mark.parametrize("copy", ["untouched", "planted"])
def test_grading_a_copy(student_set, tmp_path, copy):
    """The untouched student notebooks score zero on every exercise; the solutions with Grad-CAM's weights
    summed over channels lose exactly that exercise's points, with the message a student sees."""
    out, written = student_set
    names = sorted(written)
    points = _points()
    if copy == "untouched":
        table = course.grade(_copy(out / "student", tmp_path / copy, names), out / "autograder")
    else:
        table = course.grade(_copy(out / "autograder", tmp_path / copy, names, _plant), out / "autograder")
    assert set(table.exercise) == set(points)
    assert dict(zip(table.exercise, table.possible)) == points
    if copy == "untouched":
        assert (table.score == 0).all(), table[table.score > 0].to_string()
        return
    lost = table[table.score < table.possible]
    assert list(lost.exercise) == ["gradcam"] and float(lost.score.iloc[0]) == 0.0
    assert "pool the gradients over the spatial positions" in lost.failed.iloc[0]  # the message a student sees
    assert (tmp_path / copy / "scores.csv").exists()


def test_a_foreign_notebook_scores_zero_with_one_line(student_set, tmp_path, capsys):
    out, _ = student_set
    (tmp_path / "subs").mkdir()
    shutil.copy(runner.repo_root() / "notebooks" / "31_execution.ipynb", tmp_path / "subs" / "mine.ipynb")
    table = course.grade(tmp_path / "subs", out / "autograder")
    assert list(table.score) == [0.0] and "not a notebook of this course" in table.failed.iloc[0]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "mine.ipynb" in line and "not a notebook of this course" in line
    with pytest.raises(course.CourseError, match="no autograder zip"):
        course.grade(tmp_path / "subs", tmp_path)


def test_malformed_exercises_are_named():
    v4 = nbformat.v4
    ex = v4.new_markdown_cell("```{exercise} A title\n:label: ex-a\n\nDo it.\n```")
    gate = v4.new_markdown_cell("```{solution-start} ex-a\n:class: dropdown\n```")
    end = v4.new_markdown_cell("```{solution-end}\n```")
    sol = v4.new_code_cell("x = 1", metadata={"tags": ["solution"]})
    check = v4.new_code_cell("# x is one\nassert x == 1", metadata={"tags": ["check"]})
    bare = v4.new_code_cell("x == 1", metadata={"tags": ["check"]})
    good = v4.new_notebook(cells=[ex, gate, sol, check, end])
    (e,) = course.exercises(good, "t")
    assert (e.label, e.title, e.prompt, e.points, e.question) == ("ex-a", "A title", "Do it.", 1, "a")
    for cells, msg in [([ex, gate, sol, check], "not closed"), ([ex, sol, check, end], "outside"),
                       ([ex, gate, sol, end], "no cell tagged 'check'"), ([ex, gate, sol, bare, end], "leaves a value"),
                       ([v4.new_markdown_cell("```{exercise} T\n```")], "no ':label:")]:
        with pytest.raises(course.CourseError, match=msg):
            course.exercises(v4.new_notebook(cells=cells), "t")


def test_a_student_runs_one_exercises_checks_in_the_notebook(student_set, monkeypatch):
    """What `grader.check("hit_low_auc")` shows a student whose map misses: the failing check's message."""
    import otter
    import torch

    out, written = student_set
    nb = nbformat.read(written["11_metrics"], 4)
    ns = {}
    for c in nb.cells:  # the exercise's own cells, the answer left as the student got it
        if c.cell_type == "code" and "otter" not in c.source and "grader." not in c.source and c.source.strip() != "...":
            exec(c.source, ns)
    ns["ex"] = torch.zeros(1, 4, 4)
    ns["ex"][0, 3, 3] = 1.0  # the maximum off the object
    ns["ex_mask"] = torch.zeros(1, 4, 4, dtype=torch.bool)
    ns["ex_mask"][0, :2, :2] = True
    monkeypatch.chdir(written["11_metrics"].parent)  # where the student opens it
    shown = repr(otter.Notebook("11_metrics.ipynb").check("hit_low_auc", global_env=ns))
    assert "Test case failed" in shown and "put the map's maximum on an object pixel" in shown
    assert "hit_low_auc - 1 result:\n        ✅ Test case passed" in shown  # the shape check passes, and says so
