"""The course: the book's exercises as student notebooks with autograded checks (otter-grader).

An exercise lives in its chapter, in the form the book renders with sphinx-exercise:

- a Markdown cell with an ``{exercise}`` directive and a ``:label: ex-...``;
- optional code cells tagged ``exercise`` that build its inputs (shown in the book and to the student);
- a gated solution: a Markdown cell ``{solution-start} ex-...`` (``:class: dropdown``), code cells tagged
  ``solution`` (the worked answer), code cells tagged ``check`` (the autograder's tests: asserts whose
  messages say what to fix; ``metadata.points``, default 1) and a Markdown cell ``{solution-end}``;
- or, for a question of judgement, a plain ``{solution} ex-...`` directive with the model answer.

Each exercise's own cells import what it uses: the student notebook holds the exercises alone, so
grading runs in seconds, not the chapter's training. ``apnb course build OUT``
turns each chapter with exercises into an Otter Assign master notebook (fastai's habit: course versions
are generated from the book, not forked) and runs Otter Assign on it: ``OUT/student`` holds the student
notebooks (solutions replaced by ``...``, checks kept and runnable with ``grader.check("...")``),
``OUT/autograder`` one zip per chapter and the solution notebooks. ``apnb course grade SUBMISSIONS``
grades every submitted notebook, each in its own process under bubblewrap (read-only file system but for
a throwaway folder, no network, a timeout and a memory limit; Otter's non-containerised grading inside, no
Docker), and writes one table of scores, a column per exercise. Judgement questions are not scored: their model
answers are in the book.

Otter rather than nbgrader: a student's local check (``grader.check``) runs the same tests with the same
messages as the grader, the tests travel inside the student notebook, and grading a folder needs neither
a course database nor a server extension.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from . import runner

_EXERCISE = re.compile(r"^(`{3,}|:{3,})\{exercise\}\s*(?P<title>.*?)\s*$", re.M)
_LABEL = re.compile(r"^:label:\s*(?P<label>\S+)\s*$", re.M)
_GATE = re.compile(r"\{solution-(?P<which>start|end)\}\s*(?P<label>\S*)")
_JUDGEMENT = re.compile(r"\{solution\}\s*(?P<label>\S+)")


class CourseError(ValueError):
    """A chapter's exercise cells are not in the form the course builder reads."""


@dataclass
class Exercise:
    """One exercise of a chapter. ``checks`` empty: a question of judgement (not scored)."""
    chapter: str
    label: str
    title: str
    prompt: str
    setup: list = field(default_factory=list)
    solution: list = field(default_factory=list)
    checks: list = field(default_factory=list)

    @property
    def question(self) -> str:
        """The Otter question name (``ex-gradcam`` -> ``gradcam``)."""
        return re.sub(r"\W", "_", self.label.removeprefix("ex-"))

    @property
    def points(self) -> int:
        return sum(int(c.metadata.get("points", 1)) for c in self.checks)

    @property
    def scored(self) -> bool:
        return bool(self.checks)


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _prompt_markdown(source: str) -> tuple[str, str, str]:
    """(label, title, body) of an ``{exercise}`` Markdown cell, as plain Markdown for the student."""
    m = _EXERCISE.search(source)
    fence = m.group(1)
    lab = _LABEL.search(source)
    if not lab:
        raise CourseError(f"exercise {m.group('title')!r} has no ':label: ex-...' line: add one")
    body = source[m.end():]
    end = body.rfind(fence)
    body = body[:end] if end >= 0 else body
    body = "\n".join(l for l in body.splitlines() if not l.startswith(":")).strip()
    return lab.group("label"), m.group("title"), body


def exercises(nb: nbformat.NotebookNode, chapter: str = "") -> list[Exercise]:
    """The exercises of a chapter notebook, in order; :class:`CourseError` when a cell is out of place."""
    out: list[Exercise] = []
    cur: Exercise | None = None
    gate: str | None = None
    for i, c in enumerate(nb.cells):
        src = c.source
        where = f"{chapter} cell {i}"
        if c.cell_type == "markdown" and _EXERCISE.search(src):
            if gate:
                raise CourseError(f"{where}: an exercise starts inside the solution of {gate}: close it with {{solution-end}}")
            label, title, body = _prompt_markdown(src)
            cur = Exercise(chapter, label, title, body)
            out.append(cur)
            continue
        if c.cell_type == "markdown":
            g = _GATE.search(src)
            if g and g.group("which") == "start":
                if cur is None or g.group("label") != cur.label:
                    raise CourseError(f"{where}: solution-start {g.group('label')!r} does not follow its exercise")
                gate = cur.label
            elif g:
                gate = None
            elif _JUDGEMENT.search(src) and cur is not None and _JUDGEMENT.search(src).group("label") == cur.label:
                cur = None
            continue
        tags = _tags(c)
        if "solution" in tags or "check" in tags:
            if gate is None or cur is None:
                raise CourseError(f"{where}: a cell tagged solution/check outside a {{solution-start}} ... {{solution-end}} gate")
            (cur.solution if "solution" in tags else cur.checks).append(c)
        elif "exercise" in tags:
            if cur is None:
                raise CourseError(f"{where}: a cell tagged 'exercise' before any exercise")
            cur.setup.append(c)
    if gate:
        raise CourseError(f"{chapter}: the solution of {gate} is not closed with {{solution-end}}")
    for e in out:
        for c in e.checks:
            bare = [n.lineno for n in ast.parse(c.source).body if isinstance(n, ast.Expr)]
            if bare:
                raise CourseError(f"{chapter}: a check of {e.label} leaves a value on line {bare[0]}, which Otter's "
                                  "doctest prints and counts as a failure: assign it (`_ = ...`)")
        if e.solution and not e.checks:
            raise CourseError(f"{chapter}: exercise {e.label} has a solution but no cell tagged 'check'")
    return out


def _code(cell) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(cell.source)


def _check_cell(cell) -> nbformat.NotebookNode:
    """An Otter test cell: the check's asserts, worth ``metadata.points``, failing with the assert's message."""
    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    config = {"points": int(cell.metadata.get("points", 1))}
    if first.startswith("# "):
        config["failure_message"] = first[2:]
    head = '""" # BEGIN TEST CONFIG\n' + yaml.safe_dump(config, sort_keys=False) + '""" # END TEST CONFIG\n'
    return nbformat.v4.new_code_cell(head + cell.source)


def master_notebook(nb: nbformat.NotebookNode, name: str, title: str) -> nbformat.NotebookNode:
    """The Otter Assign master notebook of one chapter's exercises."""
    v4 = nbformat.v4
    config = {"name": name, "requirements": None, "run_tests": False, "solutions_pdf": False,
              "export_cell": False, "check_all_cell": False, "init_cell": True,
              "generate": {"pdf": False, "seed": None}}
    cells = [v4.new_raw_cell("# ASSIGNMENT CONFIG\n" + yaml.safe_dump(config, sort_keys=False)),
             v4.new_markdown_cell(f"# Exercises: {title}\n\nThe exercises of the book's chapter *{title}*; read it "
                                  "first. Run the cells in order. Each coded exercise ends with "
                                  "`grader.check(...)`: it runs the exercise's checks here and says which fail "
                                  "and why. Questions of judgement are read by the instructor.")]
    for e in exercises(nb, name):
        heading = v4.new_markdown_cell(f"## {e.title}\n\n{e.prompt}")
        if not e.scored:
            cells += [heading, v4.new_markdown_cell("*Your answer:*")]
            continue
        q = {"name": e.question, "points": e.points, "all_or_nothing": True}
        cells += [v4.new_raw_cell(yaml.safe_dump(q, sort_keys=False)
                                  .join(["# BEGIN QUESTION\n", ""])), heading]
        cells += [_code(c) for c in e.setup]
        cells += [v4.new_raw_cell("# BEGIN SOLUTION")]
        cells += [v4.new_code_cell("# BEGIN SOLUTION\n" + c.source.rstrip() + "\n# END SOLUTION") for c in e.solution]
        cells += [v4.new_raw_cell("# END SOLUTION"), v4.new_raw_cell("# BEGIN TESTS")]
        cells += [_check_cell(c) for c in e.checks]
        cells += [v4.new_raw_cell("# END TESTS"), v4.new_raw_cell("# END QUESTION")]
    out = v4.new_notebook(cells=cells)
    out.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return out


def _title(nb) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.startswith("# "):
            return c.source.splitlines()[0][2:].strip()
    return "exercises"


def chapter_exercises(notebooks: list[Path]) -> dict[str, list[Exercise]]:
    """Every chapter (notebook stem) with at least one exercise, and its exercises."""
    out = {}
    for p in notebooks:
        ex = exercises(nbformat.read(p, 4), p.stem)
        if ex:
            out[p.stem] = ex
    return out


MARKER = ".apnb-course"  # written by build into OUT: the folder is one that apnb created


def build(out_dir: str | Path, notebooks: list[Path], force: bool = False) -> dict[str, Path]:
    """Write the student set: ``student/<chapter>.ipynb``, ``autograder/<chapter>.zip`` and the solution
    notebooks ``autograder/<chapter>.ipynb``. Returns {chapter: student notebook}.

    Nothing apnb did not write is deleted: a non-empty ``out_dir`` that an earlier build did not create
    (no ``.apnb-course`` marker) is refused unless ``force``; only ``student/`` and ``autograder/`` are ever
    replaced, and what else the folder holds (a teacher's notes, grades) and its siblings are left alone.
    The set is built in a temporary folder inside ``out_dir`` and moved into place, so a failed build leaves
    an earlier set untouched."""
    from otter.assign import main as otter_assign

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CourseError(f"{out_dir} is a file: give a folder for the course set")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists() and not force:
        raise CourseError(f"{out_dir} is not empty and was not written by `apnb course build`: give a new or empty "
                          f"folder, or add --force (only its student/ and autograder/ are then replaced)")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".course-build-", dir=out_dir))
    try:
        written = {}
        for p in notebooks:
            nb = nbformat.read(p, 4)
            if not exercises(nb, p.stem):
                continue
            src = work / "source" / p.stem
            src.mkdir(parents=True)
            nbformat.write(master_notebook(nb, p.stem, _title(nb)), src / f"{p.stem}.ipynb")
            dist = work / "dist" / p.stem
            otter_assign(str(src / f"{p.stem}.ipynb"), str(dist), no_pdfs=True, no_run_tests=True)
            for sub in ("student", "autograder"):
                (work / "set" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(dist / "student" / f"{p.stem}.ipynb", work / "set" / "student" / f"{p.stem}.ipynb")
            shutil.copy(dist / "autograder" / f"{p.stem}.ipynb", work / "set" / "autograder" / f"{p.stem}.ipynb")
            zips = list((dist / "autograder").glob("*.zip"))
            shutil.copy(zips[0], work / "set" / "autograder" / f"{p.stem}.zip")
            written[p.stem] = out_dir / "student" / f"{p.stem}.ipynb"
        if not written:
            raise CourseError("no chapter has an exercise: nothing to build")
        (out_dir / MARKER).write_text("written by `apnb course build`: student/ and autograder/ are replaced by "
                                      "the next build; anything else here is left alone\n")
        for sub in ("student", "autograder"):
            if (out_dir / sub).exists():
                os.replace(out_dir / sub, work / f"previous-{sub}")  # removed with work below
            os.replace(work / "set" / sub, out_dir / sub)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _chapter_of(nb_path: Path, autograders: dict[str, Path]) -> str:
    nb = nbformat.read(nb_path, 4)
    name = nb.metadata.get("otter", {}).get("assignment_name")
    if name in autograders:
        return name
    for stem in sorted(autograders, key=len, reverse=True):
        if nb_path.stem.startswith(stem) or nb_path.stem.endswith(stem):
            return stem
    raise CourseError(f"not a notebook of this course (no chapter {name!r}): submit the student notebook that "
                      f"`apnb course build` wrote")


def sandbox_command() -> list[str] | None:
    """The bubblewrap prefix that isolates one grading (``None`` when ``bwrap`` is not installed): the whole
    file system read-only, no network, no other process visible, no capabilities; the caller binds the
    submission's throwaway folder writable (it is also its ``TMPDIR``)."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return None
    # /tmp stays the (read-only) host /tmp rather than a tmpfs: a checkout or a virtual environment may live
    # there; temporary files go to the throwaway folder (TMPDIR)
    return [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-all", "--cap-drop", "ALL", "--die-with-parent", "--new-session"]


class SandboxMissing(CourseError):
    """Neither bubblewrap nor root is there to isolate a grading."""


class GradingFailed(RuntimeError):
    """One submission could not be graded (timed out, crashed, out of memory); it scores zero."""


def _grade_isolated(nb: Path, zip_path: Path, timeout: float, memory_gb: float, sandbox: bool) -> dict:
    """Grade one submission in its own process, in a throwaway folder that is its only writable place.

    With ``sandbox``: under bubblewrap (:func:`sandbox_command`) where installed, else, for root, as the
    unprivileged user ``nobody``; neither available is a :class:`CourseError`. A memory limit (``RLIMIT_DATA``)
    and a timeout apply in every case. Returns {question: {score, possible, failed}}."""
    import json
    import resource
    import subprocess
    import sys

    limit = int(memory_gb * 2**30)

    def limits():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    with tempfile.TemporaryDirectory(prefix="apnb-grade-", dir=_scratch()) as work:
        work = Path(work)
        shutil.copy(nb, work / nb.name)
        shutil.copy(zip_path, work / zip_path.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APNB_RECORD", "JUPYTER_", "IPYTHON"))}
        env.update(HOME=str(work), JUPYTER_RUNTIME_DIR=str(work / ".runtime"), IPYTHONDIR=str(work / ".ipython"),
                   MPLCONFIGDIR=str(work / ".matplotlib"), XDG_CACHE_HOME=str(work / ".cache"), TMPDIR=str(work),
                   PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        cmd = [sys.executable, "-m", "apnb.course", "grade-one", nb.name, zip_path.name, "result.json"]
        user = None
        if sandbox:
            prefix = sandbox_command()
            if prefix:
                cmd = prefix + ["--bind", str(work), str(work), "--chdir", str(work)] + cmd
            elif os.geteuid() == 0:
                user = "nobody"
                shutil.chown(work, user)
                for f in work.iterdir():
                    shutil.chown(f, user)
            else:
                raise SandboxMissing("grading untrusted submissions needs bubblewrap (Debian: apt-get install "
                                  "bubblewrap; `make install` does it): install it, or pass --no-sandbox to grade "
                                  "submissions you trust")
        try:
            r = subprocess.run(cmd, cwd=work, env=env, preexec_fn=limits, user=user, timeout=timeout,
                               capture_output=True, text=True, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise GradingFailed(f"timed out after {timeout:.0f} s") from None
        out = work / "result.json"
        if r.returncode != 0 or not out.exists():
            last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise GradingFailed(f"grading stopped: {last}")
        return json.loads(out.read_text())


def _scratch() -> str | None:
    """Where throwaway grading folders go: the project's ``build/tmp`` (nothing left under ``/tmp``)."""
    d = runner.repo_root() / "build" / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def _grade_here(nb: str, zip_path: str, out: str) -> None:
    """What one isolated grading process runs (``python -m apnb.course grade-one NB ZIP OUT``)."""
    import json

    from otter.api import grade_submission

    res = grade_submission(nb, zip_path, quiet=True)
    rows = {}
    for q, r in res.to_dict().items():
        failed = [t["test_case"].get("failure_message") or t["test_case"]["name"]
                  for t in r.get("test_case_results", []) if not t.get("passed")]
        rows[q] = {"score": float(r["score"]), "possible": float(r["possible"]), "failed": "; ".join(failed)}
    Path(out).write_text(json.dumps(rows))


def _read_problem(p: Path) -> str | None:
    """Why ``p`` cannot be a submission (empty, not JSON, not a notebook), or None."""
    import json

    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot be read ({e})"
    if not text.strip():
        return "is empty"
    try:
        json.loads(text)
    except ValueError as e:
        return f"is not a notebook (not JSON: {e})"
    try:
        nbformat.reads(text, 4)
    except Exception as e:  # nbformat's validation errors have no common base
        return f"is not a notebook ({str(e).splitlines()[0]})"
    return None


def grade(submissions: str | Path, autograder_dir: str | Path, out: str | Path | None = None,
          timeout: float = 600, memory_gb: float = 4, sandbox: bool = True, log=None):
    """Grade every ``*.ipynb`` under ``submissions`` against ``autograder_dir`` (``OUT/autograder`` of
    :func:`build`), each in its own isolated process: under bubblewrap (:func:`sandbox_command`) where
    installed, else, for root, as the user ``nobody``, with ``timeout`` seconds and ``memory_gb`` GiB. Returns
    a long table (submission, chapter, exercise, score, possible, failed: the messages of the failing checks)
    and writes it to ``out`` (CSV, default ``SUBMISSIONS/scores.csv``), one row per submission and exercise.

    A file that cannot be graded (empty, not JSON, not a notebook of this course, timed out, crashed) gets
    one line naming it (``log``, default standard error) and one row scoring zero, whose ``failed`` says why;
    the others are graded."""
    import sys

    import pandas as pd

    log = log or (lambda m: print(m, file=sys.stderr))
    submissions, autograder_dir = Path(submissions), Path(autograder_dir)
    zips = {z.stem: z for z in sorted(autograder_dir.glob("*.zip"))}
    if not zips:
        raise CourseError(f"{autograder_dir} holds no autograder zip: run `apnb course build OUT` first and pass "
                          "--autograder OUT/autograder")
    files = sorted(p for p in submissions.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not files:
        raise CourseError(f"{submissions} holds no submitted notebook (*.ipynb)")
    rows = []
    for p in files:
        name = str(p.relative_to(submissions))
        chapter = None
        try:
            problem = _read_problem(p)
            if problem:
                raise GradingFailed(problem)
            chapter = _chapter_of(p, zips)
            res = _grade_isolated(p, zips[chapter], timeout, memory_gb, sandbox)
        except SandboxMissing:
            raise
        except (GradingFailed, CourseError) as e:
            log(f"apnb: {p}: {e}: scored 0")
            rows.append({"submission": name, "chapter": chapter or "", "exercise": "", "score": 0.0,
                         "possible": float("nan"), "failed": str(e)})
            continue
        for q, r in res.items():
            rows.append({"submission": name, "chapter": chapter, "exercise": q, **r})
    table = pd.DataFrame(rows, columns=["submission", "chapter", "exercise", "score", "possible", "failed"])
    out = Path(out) if out else submissions / "scores.csv"
    tmp = out.with_name(out.name + ".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return table


def run_exercise(e: Exercise) -> float:
    """Run one exercise's setup, worked solution and checks in a fresh namespace, as a student's notebook
    would; returns the wall time in seconds, and raises :class:`CourseError` when a check fails on the
    solution (the book's exercises must grade their own answers full)."""
    import contextlib
    import io
    import time

    ns: dict = {"__name__": "__exercise__"}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        for c in e.setup + e.solution:
            exec(compile(c.source, f"<{e.label}>", "exec"), ns)
        for i, c in enumerate(e.checks):
            try:
                exec(compile(c.source, f"<{e.label} check {i}>", "exec"), dict(ns))
            except AssertionError as err:
                raise CourseError(f"{e.chapter}/{e.label}: check {i} fails on the book's own solution: {err}") from None
    return time.perf_counter() - t0


def exercise_table(notebooks: list[Path]):
    """One row per exercise of the book: chapter, title, label, autograded or judgement, points, and the
    seconds its setup, solution and checks take here (judgement questions: nothing to run)."""
    import pandas as pd

    rows = []
    for chapter, items in chapter_exercises(notebooks).items():
        for e in items:
            rows.append({"chapter": chapter, "exercise": e.title, "label": e.label,
                         "kind": "autograded" if e.scored else "judgement", "points": e.points if e.scored else 0,
                         "seconds": round(run_exercise(e), 2) if e.scored else float("nan")})
    return pd.DataFrame(rows)


def chapter_requirements(notebooks: list[Path]):
    """What each chapter of the book needs, read from the profiles: the data it reads at ``demo`` (the
    embedded synthetic benchmark, or none) and at ``paper``, and whether it trains networks (at the paper
    profile, a GPU box: the paper's networks and schedules)."""
    import pandas as pd

    prof = {p: runner.load_profile(p) for p in ("demo", "paper")}
    rows = []
    for nb in notebooks:
        declared = runner.notebook_parameters(nb)
        if not declared:
            continue

        def value(p, key):
            own = prof[p]["notebooks"].get(nb.stem) or {}
            return own.get(key, prof[p]["defaults"].get(key)) if key in declared else None

        def data(p):
            bench = value(p, "benchmark")
            return "none" if bench is None else "embedded synthetic" if bench.get("synth") else bench["root"]

        trains = any(k.endswith(("_train", "_finetune", "_recipe")) for k in declared)
        demo_data, paper_data = data("demo"), data("paper")
        rows.append({"chapter": nb.stem, "data at demo (CPU)": demo_data, "data at paper": paper_data,
                     "trains networks": "yes" if trains else "no",
                     "GPU at paper": "yes" if trains and paper_data != "none" else "no"})
    return pd.DataFrame(rows)


if __name__ == "__main__":  # one isolated grading: python -m apnb.course grade-one NB ZIP OUT
    import sys

    if sys.argv[1:2] != ["grade-one"] or len(sys.argv) != 5:
        sys.exit("usage: python -m apnb.course grade-one NOTEBOOK AUTOGRADER_ZIP OUT_JSON")
    _grade_here(*sys.argv[2:])
