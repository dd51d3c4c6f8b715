"""Execute notebooks with papermill at a profile, record their results, and build the book.

- Profiles are YAML files ``profiles/<name>.yml``: ``defaults`` (applied to every notebook that declares the
  parameter) and ``notebooks: {<stem>: {...}}`` (per-notebook values; an unknown key is an error).
- ``run_notebook`` writes ``build/runs/<profile>/<stem>.ipynb`` plus ``<stem>.results.json`` (the run
  record: rows logged by the notebook, parameters, seed, git commit, wall time). A stamp of the notebook
  source, its parameters and the ``apnb`` sources lets a re-run skip unchanged notebooks.
- ``build_book`` stages ``_config.yml``, ``_toc.yml``, ``book/`` and the executed notebooks into
  ``build/book-<profile>/`` and runs ``jupyter-book build -W -n --keep-going`` with execution off.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import records
from .data import fixtures
from .validate import ParameterError, check
from .config import atomic_path, atomic_write_text, project_root


class RunError(RuntimeError):
    """A notebook failed or a profile is wrong; the message names the notebook and the fix."""


def repo_root() -> Path:
    """:func:`apnb.config.project_root`: where ``_toc.yml``, ``profiles/``, ``notebooks/`` and ``build/`` are."""
    return project_root()


def toc_notebooks(root: Path | None = None) -> list[Path]:
    """The experiment notebooks listed in ``_toc.yml`` (entries under ``notebooks/``), in book order."""
    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            f = node.get("file")
            if isinstance(f, str) and f.startswith("notebooks/"):
                found.append(root / (f if f.endswith(".ipynb") else f + ".ipynb"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return found


def load_profile(name: str, root: Path | None = None) -> dict:
    root = root or repo_root()
    p = root / "profiles" / f"{name}.yml"
    if not p.exists():
        avail = sorted(q.stem for q in (root / "profiles").glob("*.yml"))
        raise RunError(f"profile {name!r} not found at {p}: available profiles are {', '.join(avail)}")
    prof = yaml.safe_load(p.read_text()) or {}
    unknown = sorted(set(prof) - {"defaults", "notebooks", "extends", "fixtures"})
    if unknown:
        raise RunError(f"profiles/{name}.yml: unknown top-level keys {unknown} (allowed: defaults, notebooks, "
                       f"extends, fixtures)")
    prof.setdefault("defaults", {})
    prof.setdefault("notebooks", {})
    prof["defaults"] = prof["defaults"] or {}
    prof["notebooks"] = prof["notebooks"] or {}
    if prof.get("extends"):
        # a profile may restate only what differs from another: its values replace the base's, key by key
        # (a mapping value such as teacher_train is replaced whole, never merged field by field)
        base = load_profile(prof["extends"], root)
        prof["defaults"] = {**base["defaults"], **prof["defaults"]}
        nbs = {}
        for stem in {**base["notebooks"], **prof["notebooks"]}:
            nbs[stem] = {**(base["notebooks"].get(stem) or {}), **(prof["notebooks"].get(stem) or {})}
        prof["notebooks"] = nbs
        prof.setdefault("fixtures", base.get("fixtures"))
    return prof


def prepare_fixtures(profile: str) -> Path | None:
    """Write the real-format fixtures a profile names (``fixtures: <folder>``, see :mod:`apnb.data.fixtures`)
    unless they are there; locked, so concurrent runs write them once."""
    f = load_profile(profile).get("fixtures")
    if not f:
        return None
    return fixtures.write_all(repo_root() / f)


def notebook_parameters(nb: Path) -> dict:
    """Default values declared in the notebook's ``parameters`` cell (literals, evaluated)."""
    import ast

    import papermill as pm

    out = {}
    for k, v in pm.inspect_notebook(str(nb)).items():
        try:
            out[k] = ast.literal_eval(v["default"])
        except (ValueError, SyntaxError):
            out[k] = v["default"]
    return out


def params_for(nb: Path, profile: str, overrides: dict | None = None) -> dict:
    prof = load_profile(profile)
    declared = notebook_parameters(nb)
    if not declared:
        raise RunError(f"{nb} has no cell tagged 'parameters': add one holding the notebook's literals")
    params = {k: v for k, v in prof["defaults"].items() if k in declared}
    own = prof["notebooks"].get(nb.stem, {}) or {}
    # an override ``recipe.field`` (``-p matching.p 0.5``) replaces one field of a recipe mapping
    fields = {k: v for k, v in (overrides or {}).items() if "." in k}
    whole = {k: v for k, v in (overrides or {}).items() if "." not in k}
    unknown = [k for k in {**own, **whole, **{f.split(".", 1)[0]: 0 for f in fields}} if k not in declared]
    if unknown:
        raise RunError(f"{nb.name}: parameters {unknown} are not in its parameters cell "
                       f"(declared: {', '.join(sorted(declared))}); fix profiles/{profile}.yml or -p")
    params.update(own)
    params.update(whole)
    for f, v in fields.items():
        name, field = f.split(".", 1)
        base = params.get(name, declared[name])
        if not isinstance(base, dict):
            raise RunError(f"{nb.name}: -p {f}: parameter {name} is not a mapping; give it whole (-p {name} VALUE)")
        params[name] = {**base, field: v}
    if "profile" in declared:
        params["profile"] = profile
    try:
        check(nb.name, {**declared, **params})
    except ParameterError as e:
        raise RunError(str(e)) from None
    return params


def source_hash(root: Path | None = None) -> str:
    root = root or repo_root()
    h = hashlib.sha256()
    for p in sorted((root / "apnb").rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _stamp(nb: Path, params: dict) -> str:
    h = hashlib.sha256(nb.read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(source_hash().encode())
    return h.hexdigest()


def runs_dir(profile: str) -> Path:
    return repo_root() / "build" / "runs" / profile


def run_records(profile: str, stems) -> dict[str, dict]:
    """The run records of the notebooks ``stems`` at ``profile`` (stem -> record), for the pages that summarise
    other chapters; a missing one is a one-line error naming the command that writes it."""
    runs = runs_dir(profile)
    out = {}
    for stem in stems:
        path = runs / f"{stem}.results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `apnb run notebooks/{stem}.ipynb --profile {profile}` "
                                    f"first (the book command runs the notebooks in table-of-contents order)")
        out[stem] = json.loads(path.read_text())
    return out


def run_notebook(nb: str | Path, profile: str = "demo", overrides: dict | None = None, force: bool = False,
                 out_dir: Path | None = None, log=print) -> Path:
    """Execute one notebook at ``profile`` into the runs folder; skip it when nothing it depends on changed."""
    nb = Path(nb)
    if not nb.is_absolute():
        nb = (Path.cwd() / nb) if (Path.cwd() / nb).exists() else repo_root() / nb
    if not nb.exists():
        raise RunError(f"notebook {nb} does not exist: see `apnb run --list`")
    prepare_fixtures(profile)  # before the checks, which look for the data the profile names
    params = params_for(nb, profile, overrides)
    out_dir = out_dir or runs_dir(profile)
    with run_lock(nb, out_dir):
        return _run_locked(nb, profile, params, out_dir, force, log)


def run_lock(nb: str | Path, out_dir: Path):
    """The OS lock held while ``nb`` runs into ``out_dir``: one run of a notebook at a time per runs folder, so
    a second caller (another shell, a pytest-xdist worker) waits, then finds the finished run unchanged instead
    of sharing and emptying its partial record."""
    from filelock import FileLock

    out_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(out_dir / f".{Path(nb).stem}.lock"))


def _current(nb: Path, out_dir: Path, stamp: str) -> bool:
    stamp_file = out_dir / f"{nb.stem}.stamp"
    return ((out_dir / nb.name).exists() and (out_dir / f"{nb.stem}.results.json").exists()
            and stamp_file.exists() and stamp_file.read_text() == stamp)


def run_stamp(nb: str | Path, profile: str = "demo", overrides: dict | None = None) -> str:
    """The stamp a run of ``nb`` at ``profile`` records: its source, its parameters and the ``apnb`` sources."""
    nb = Path(nb) if Path(nb).is_absolute() else repo_root() / nb
    return _stamp(nb, params_for(nb, profile, overrides))


def is_current(nb: str | Path, profile: str = "demo", overrides: dict | None = None,
               out_dir: Path | None = None, stamp: str | None = None) -> bool:
    """Whether ``nb``'s run at ``profile`` is there and nothing it depends on changed since (what
    :func:`run_notebook` skips); ``stamp``, when given, is :func:`run_stamp`'s, computed once by the caller."""
    nb = Path(nb) if Path(nb).is_absolute() else repo_root() / nb
    return _current(nb, out_dir or runs_dir(profile), stamp or run_stamp(nb, profile, overrides))


def _run_locked(nb: Path, profile: str, params: dict, out_dir: Path, force: bool, log) -> Path:
    import papermill as pm

    out = out_dir / nb.name
    rec = out_dir / f"{nb.stem}.results.json"
    stamp_file = out_dir / f"{nb.stem}.stamp"
    stamp = _stamp(nb, params)
    if not force and _current(nb, out_dir, stamp):
        log(f"apnb: {nb.name} [{profile}] unchanged, not re-run ({out})")
        return out
    log(f"apnb: running {nb.name} [{profile}] {json.dumps(params, default=str)[:200]}")
    tmp_rec = out_dir / f".{nb.stem}.results.partial.json"
    if tmp_rec.exists():
        tmp_rec.unlink()
    env_before = os.environ.get(records.ENV)
    os.environ[records.ENV] = str(tmp_rec)
    t0 = time.time()
    try:
        with atomic_path(out) as tmp_nb:
            try:
                pm.execute_notebook(str(nb), str(tmp_nb), parameters=params, kernel_name="python3",
                                    cwd=str(repo_root()), progress_bar=False, request_save_on_cell_execute=False)
            except pm.PapermillExecutionError as e:
                failed = out_dir / f"{nb.stem}.failed.ipynb"
                shutil.copy2(tmp_nb, failed)
                raise RunError(f"{nb} failed at profile {profile!r} in cell {e.exec_count}: {e.ename}: {e.evalue} "
                               f"(the executed notebook is kept at {failed})") from None
            wall = time.time() - t0
            effective = {**notebook_parameters(nb), **params}
            records.finalize(tmp_rec, notebook=nb.name, profile=profile, parameters=effective, overrides=params,
                             seed=effective.get("seed", effective.get("seeds")), commit=records.git_commit(repo_root()),
                             wall_time_s=round(wall, 1), python=sys.version.split()[0],
                             finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            os.replace(tmp_rec, rec)
    finally:
        if env_before is None:
            os.environ.pop(records.ENV, None)
        else:
            os.environ[records.ENV] = env_before
    atomic_write_text(stamp_file, stamp)
    (out_dir / f"{nb.stem}.failed.ipynb").unlink(missing_ok=True)
    log(f"apnb: {nb.name} [{profile}] done in {wall:.0f}s -> {out}")
    return out


def run_all(profile: str = "demo", overrides: dict | None = None, force: bool = False) -> list[Path]:
    return [run_notebook(nb, profile, overrides, force) for nb in toc_notebooks()]


def mathjax_dir() -> Path:
    """The MathJax 3 ``es5`` folder the book serves itself (``make install`` puts it in .venv/npm)."""
    env = os.environ.get("APNB_MATHJAX")
    d = Path(env) if env else repo_root() / ".venv" / "npm" / "node_modules" / "mathjax" / "es5"
    if not (d / "tex-chtml.js").exists():
        raise RunError(f"MathJax not found at {d}: run `make install` (npm install --prefix .venv/npm mathjax@3) "
                       f"or set APNB_MATHJAX to a MathJax 3 es5 folder; the book serves it for offline reading")
    return d


def _imports_only(source: str) -> bool:
    import ast

    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body)


def for_readers(executed: Path, dest: Path) -> Path:
    """Copy an executed notebook into the book with its plumbing out of the reader's way.

    Cells that only import are removed; the parameter cell and papermill's injected one are folded
    (``hide-cell``: one click shows the profile's values); progress-bar widgets are dropped, their views and
    the widget state the kernel saved in the notebook's metadata (its text would print a bar into the page).
    The executed notebook in the runs folder is left as it is."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if {"parameters", "injected-parameters"} & set(tags):
            tags.append("hide-cell")
        elif _imports_only(cell.source) and not {"remove-cell", "remove-input"} & set(tags):
            tags.append("remove-cell")
        cell.outputs = [o for o in cell.get("outputs", [])
                        if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    nb.metadata.pop("widgets", None)  # the state of the dropped views ("7/7 [00:07<00:00, 1.18s/it]")
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(dest))
    return dest


def build_book(profile: str = "demo", run: bool = True, force: bool = False) -> Path:
    """Execute every notebook of the toc (unless ``run=False``), stage the book and build it strictly."""
    root = repo_root()
    if run:
        run_all(profile, force=force)
    runs = runs_dir(profile)
    stage = root / "build" / f"book-{profile}"
    if stage.exists():
        for item in stage.iterdir():
            if item.name != "_build":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    stage.mkdir(parents=True, exist_ok=True)
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / f, stage / f)
    shutil.copytree(root / "book", stage / "book")
    shutil.copytree(mathjax_dir(), stage / "_vendor" / "mathjax")  # not _static: Jupyter Book loads every .js there
    (stage / "notebooks").mkdir()
    for nb in toc_notebooks():
        ex = runs / nb.name
        if not ex.exists():
            raise RunError(f"{ex} is missing: run `apnb run {nb.relative_to(root)} --profile {profile}` first")
        for_readers(ex, stage / "notebooks" / nb.name)
    for extra in (root / "notebooks").glob("*.py"):
        shutil.copy2(extra, stage / "notebooks" / extra.name)
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb if jb.exists() else "jupyter-book"), "build", str(stage), "-W", "-n", "--keep-going"]
    r = subprocess.run(cmd, cwd=root)
    if r.returncode != 0:
        raise RunError(f"jupyter-book build of {stage} failed (exit {r.returncode}): see the warnings above")
    index = stage / "_build" / "html" / "index.html"
    return index


def _literal(v) -> str:
    """A Python literal in the notebooks' style (double quotes)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def sync_parameter_cells(profile: str = "demo", notebooks: list[Path] | None = None) -> list[Path]:
    """Rewrite each notebook's ``parameters`` cell so that its literals are the ``profile``'s values: the
    profile is the one source, and a notebook opened by hand runs the demo setting. Returns the changed
    notebooks. (``tests/test_runner.py`` checks that every cell agrees with the demo profile.)"""
    import nbformat

    changed = []
    for nb in notebooks or toc_notebooks():
        params = {k: v for k, v in params_for(nb, profile).items() if k != "profile"}
        node = nbformat.read(nb, as_version=4)
        for cell in node.cells:
            if "parameters" not in cell.get("metadata", {}).get("tags", []):
                continue
            lines = []
            for line in cell.source.splitlines():
                name = line.split("=", 1)[0].strip() if "=" in line else None
                lines.append(f"{name} = {_literal(params[name])}" if name in params else line)
            src = "\n".join(lines)
            if src != cell.source:
                cell.source = src
                nbformat.write(node, nb)
                changed.append(nb)
            break
    return changed
