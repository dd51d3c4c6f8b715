import nbformat
import pytest

from apnb import runner
from apnb.course import write_course

pytestmark = pytest.mark.unit


def test_student_notebooks_strip_solutions_and_run(tmp_path):
    import papermill as pm

    written = write_course(tmp_path, runner.toc_notebooks())
    assert written, "no notebook of the book has exercises"
    for p in written:
        nb = nbformat.read(p, 4)
        assert not any("solution" in c.metadata.get("tags", []) for c in nb.cells)
        assert any("exercise" in c.metadata.get("tags", []) for c in nb.cells)
    small = [p for p in written if p.name == "11_metrics.ipynb"]
    for p in small:  # the student version runs up to (and through) its empty exercise cells
        pm.execute_notebook(str(p), str(tmp_path / ("run_" + p.name)), kernel_name="python3", progress_bar=False,
                            cwd=str(runner.repo_root()))
