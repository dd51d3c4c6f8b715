"""Nothing executed, nothing lost, one line for every bad input (the reliability issue): parameter values are
plain data written as checked literals, profiles fail with file, line and column, the parameter check imports
no torch, run records survive concurrent runs and see the store and the data, the course never deletes what
apnb did not write, grading is isolated, CIFAR batches cannot run code, a read-only store serves what it holds."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from apnb import cli, course, runner

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
NASTY = 'a "quoted" \'one\'\nnew line """ \\ " + str(__import__("os").system("touch PWNED")) + " \u2028 \U0001F600'


# ------------------------------------------------------------------ parameters are data


def test_a_hostile_string_runs_as_a_string(repo):
    """End to end: the string that became code under papermill's fallback is logged verbatim, and no file
    appears."""
    runner.run_notebook(repo / "notebooks" / "n1.ipynb", "p", {"s": NASTY}, log=lambda m: None)
    rec = json.loads(next((repo / "build" / "runs" / "p").glob("overrides-*/n1.results.json")).read_text())
    assert rec["rows"][0]["s"] == NASTY
    assert not list(repo.rglob("PWNED")) and not Path("PWNED").exists()


def test_profile_defects_are_one_line_naming_the_file(repo, capsys):
    prof = repo / "profiles"
    prof.joinpath("syntax.yml").write_text("defaults:\n  a: [1, 2\n")
    prof.joinpath("listdef.yml").write_text("defaults: [a, b]\n")
    prof.joinpath("self.yml").write_text("extends: self\n")
    prof.joinpath("loop1.yml").write_text("extends: loop2\n")
    prof.joinpath("loop2.yml").write_text("extends: loop1\n")
    prof.joinpath("tagged.yml").write_text("defaults:\n  a: !!binary aGk=\n")
    cases = {"syntax": "profiles/syntax.yml line 3 column 1: not valid YAML",
             "listdef": "profiles/listdef.yml: defaults must be a mapping",
             "self": "profiles/self.yml: extends forms a cycle (self -> self)",
             "loop1": "extends forms a cycle (loop1 -> loop2 -> loop1)",
             "tagged": "profiles/tagged.yml line 2 column 6: defaults.a has the tag !!binary",
             "../p": "is not a plain name"}
    for name, msg in cases.items():
        assert cli.main(["run", "notebooks/n1.ipynb", "--profile", name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (name, err)
    with pytest.raises(runner.RunError):  # --debug: the traceback instead of the line
        cli.main(["--debug", "run", "notebooks/n1.ipynb", "--profile", "listdef"])


def test_dotted_keys_reach_any_depth(repo):
    (repo / "profiles" / "deep.yml").write_text("defaults: {a: {x: {y: 1, z: 2}, w: 3}}\n")
    nb = repo / "notebooks" / "n1.ipynb"
    assert runner.params_for(nb, "deep", {"a.x.y": 5})["a"] == {"x": {"y": 5, "z": 2}, "w": 3}
    with pytest.raises(runner.RunError, match="parameter a.w is not a mapping"):
        runner.params_for(nb, "deep", {"a.w.q": 1})


# ------------------------------------------------------------------ run records


def test_two_concurrent_runs_keep_the_record_and_print_no_kernel_warning(repo):
    """Two `apnb run` processes of one notebook: both succeed, one after the other (or the second reuses the
    first), and the record holds the row; no TCP-encryption warning is printed."""
    env = dict(os.environ)
    cmd = [PY, "-m", "apnb.cli", "run", "notebooks/n1.ipynb", "--profile", "p", "-p", "wait", "2"]
    procs = [subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("without encryption" in o + e for o, e in outs)
    (d,) = (repo / "build" / "runs" / "p").glob("overrides-*")
    rec = json.loads((d / "n1.results.json").read_text())
    assert rec["rows"] and rec["rows"][0]["value"] == 2
    assert sum("unchanged" in o for o, _ in outs) == 1  # the second waited, then found the run done
    assert not list(d.glob(".n1.*partial*")) and not list(d.glob("*.tmp.ipynb"))


def test_a_run_is_stale_without_its_networks_or_its_data_and_overrides_never_replace_the_record(repo):
    nb = repo / "notebooks" / "n1.ipynb"
    quiet = dict(log=lambda m: None)
    runner.run_notebook(nb, "p", **quiet)
    rec = repo / "build" / "runs" / "p" / "n1.results.json"
    assert json.loads(rec.read_text())["store"]["entries"] == ["x-1"]
    assert runner.is_current(nb, "p")
    before = rec.read_text()
    runner.run_notebook(nb, "p", {"a": 7}, **quiet)  # a -p run: its own folder, the profile's record kept
    assert rec.read_text() == before
    (o,) = (repo / "build" / "runs" / "p").glob("overrides-*")
    assert json.loads((o / "overrides.json").read_text()) == {"a": 7}
    (repo / "store" / "checkpoints" / "x-1" / "final.pt").unlink()
    assert not runner.is_current(nb, "p")  # the network is gone from the store
    (repo / "store" / "checkpoints" / "x-1" / "final.pt").write_bytes(b"net")
    assert runner.is_current(nb, "p")
    os.environ["APNB_STORE"] = str(repo / "empty-store")
    assert not runner.is_current(nb, "p")  # a new, empty store
    os.environ["APNB_STORE"] = str(repo / "store")
    shutil.rmtree(repo / "data" / "d")
    assert not runner.is_current(nb, "p")  # the data was deleted


def test_leftovers_are_removed_and_files_follow_the_umask(repo):
    out = repo / "build" / "runs" / "p"
    out.mkdir(parents=True)
    left = [out / ".n1.results.partial.json", out / ".n1.123-abcd.results.partial.json", out / ".n1.x1y2.tmp.ipynb"]
    for f in left:
        f.write_text("")
    old = os.umask(0o002)
    try:
        runner.run_notebook(repo / "notebooks" / "n1.ipynb", "p", log=lambda m: None)
    finally:
        os.umask(old)
    assert not any(f.exists() for f in left)
    for f in ("n1.results.json", "n1.ipynb", "n1.stamp"):
        assert (out / f).stat().st_mode & 0o777 == 0o664, f


def test_ctrl_c_is_one_line_and_leaves_nothing_half_written(repo):
    cmd = [PY, "-m", "apnb.cli", "run", "notebooks/n1.ipynb", "--profile", "p", "-p", "wait", "60"]
    # as from a terminal: SIGINT at its default, whatever this test process inherited (a worker that once ran
    # an IPython kernel in-process ignores SIGINT, and an ignored signal stays ignored across exec)
    p = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = repo / "build" / "runs" / "p"
    t0 = time.time()
    while not (repo / "in-cell").exists() and time.time() - t0 < 120:  # the kernel is up and in its cell
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    _, err = p.communicate(timeout=60)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert p.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0] and "run the same command" in lines[0], err
    assert not list(out.rglob("*.results.json")) and not list(out.rglob(".*partial*")) and not list(out.rglob("*.tmp.ipynb"))


# ------------------------------------------------------------------ the course


def test_course_build_deletes_nothing_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "teach"
    (out / "grades").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "grades" / "term1.csv").write_text("a,b")
    (tmp_path / "teach.old").mkdir()
    (tmp_path / "teach.old" / "keep").write_text("k")
    assert cli.main(["course", "build", str(out)]) == 2
    assert "not empty and was not written by `apnb course build`" in capsys.readouterr().err
    assert cli.main(["course", "build", str(out), "--force"]) == 0
    assert cli.main(["course", "build", str(out)]) == 0  # its own folder: rebuilt without --force
    assert (out / "notes.txt").read_text() == "mine" and (out / "grades" / "term1.csv").read_text() == "a,b"
    assert (tmp_path / "teach.old" / "keep").read_text() == "k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teach", "teach.old"]
    assert (out / "student" / "10_method.ipynb").exists() and (out / "autograder" / "10_method.zip").exists()
    assert not list(out.glob(".course-build-*"))


@pytest.mark.slow
def test_course_folders_resolve_against_the_project_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "subs").mkdir()
    assert cli.main(["course", "grade", "subs"]) == 2  # relative: under the project root, not here
    err = capsys.readouterr().err
    assert f"{runner.repo_root() / 'subs'}" in err or f"{runner.repo_root() / 'build' / 'course' / 'autograder'}" in err


@pytest.mark.slow
def test_grading_is_isolated_and_a_bad_file_scores_zero(tmp_path, capsys):
    """A submission that tries to write outside its folder is refused and still graded; an empty file, a
    file that is not JSON and a timed-out one each get one line and a zero; the others are graded."""
    if not course.sandbox_command() and os.geteuid() != 0:
        pytest.skip("no bubblewrap and not root: grading refuses to run untrusted code here")
    out = tmp_path / "set"
    course.build(out, runner.toc_notebooks())
    subs = tmp_path / "subs"
    subs.mkdir()
    target = REPO / "build" / f"PWNED_GRADE_{os.getpid()}"
    nb = nbformat.read(out / "autograder" / "10_method.ipynb", 4)
    nb.cells.insert(2, nbformat.v4.new_code_cell(
        f"import os\nos.system('touch {target}')\ntry:\n    open('{target}', 'w')\nexcept OSError:\n    pass"))
    nbformat.write(nb, subs / "10_method.ipynb")
    slow = nbformat.read(out / "autograder" / "11_metrics.ipynb", 4)
    slow.cells.insert(2, nbformat.v4.new_code_cell("import time\ntime.sleep(120)"))
    nbformat.write(slow, subs / "11_metrics.ipynb")
    (subs / "empty.ipynb").write_text("")
    (subs / "junk.ipynb").write_text("{not json")
    table = course.grade(subs, out / "autograder", timeout=20)
    err = capsys.readouterr().err.strip().splitlines()
    assert not target.exists()
    graded = table[table.submission == "10_method.ipynb"]
    assert len(graded) and (graded.score == graded.possible).all()  # refused, yet graded in full
    zero = table[table.submission != "10_method.ipynb"].set_index("submission")
    assert sorted(zero.index) == ["11_metrics.ipynb", "empty.ipynb", "junk.ipynb"] and (zero.score == 0).all()
    assert "timed out" in zero.loc["11_metrics.ipynb", "failed"] and "empty" in zero.loc["empty.ipynb", "failed"]
    assert len(err) == 3 and all(line.startswith("apnb: ") and line.endswith("scored 0") for line in err)
    assert (subs / "scores.csv").exists()


# ------------------------------------------------------------------ data and store


def test_a_tampered_cifar_batch_cannot_run_code(tmp_path):
    from apnb.data.cifar import _unpickle
    from apnb.data.voc import DataError

    target = tmp_path / "PWNED_CIFAR"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="refused global"):
        _unpickle(tmp_path / "data_batch_1")
    assert not target.exists()


def test_a_read_only_store_serves_what_it_holds_without_locks(tmp_path):
    """Under a read-only bind of the store (bubblewrap): a held network loads and no lock file is created;
    a missing one is one StoreError line."""
    if not course.sandbox_command():
        pytest.skip("needs bubblewrap for a read-only mount")
    import torch

    from apnb.store import Store

    store = Store(tmp_path / "store")
    store.save("teacher", {"k": 1}, torch.nn.Linear(2, 2))
    code = ("import torch\nfrom apnb.store import Store, StoreError\n"
            f"s = Store({str(tmp_path / 'store')!r})\n"
            "with s.lock('teacher', {'k': 1}):\n    assert s.load('teacher', {'k': 1}, torch.nn.Linear(2, 2)) is not None\n"
            "try:\n    s.lock('teacher', {'k': 2})\nexcept StoreError as e:\n    print('refused:', e)\n")
    scratch = tmp_path / "scratch"  # the one writable place (torch wants a temporary folder)
    scratch.mkdir()
    cmd = course.sandbox_command() + ["--bind", str(scratch), str(scratch), PY, "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, TMPDIR=str(scratch)))
    assert r.returncode == 0, r.stderr
    assert "refused: the store" in r.stdout and "is read-only and lacks teacher" in r.stdout
    assert not list((tmp_path / "store").glob("*.lock"))
