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
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import literals, records
from .validate import ParameterError, check
from .config import atomic_path, atomic_write_text, project_root, store_dir


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


def load_profile(name: str, root: Path | None = None, _chain: tuple = ()) -> dict:
    """``profiles/<name>.yml`` read as plain data (:mod:`apnb.literals`), its ``extends`` chain merged; every
    defect (a syntax error, a tag, a misplaced key, a cycle) is one :class:`RunError` line naming the file."""
    root = root or repo_root()
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)):
        raise RunError(f"profile name {name!r} is not a plain name (letters, digits, - and _): give the name of a "
                       f"file profiles/<name>.yml, e.g. demo")
    p = root / "profiles" / f"{name}.yml"
    where = f"profiles/{name}.yml"
    if name in _chain:
        raise RunError(f"{where}: extends forms a cycle ({' -> '.join(_chain + (name,))}): extend a profile that "
                       f"does not extend this one")
    if not p.exists():
        avail = sorted(q.stem for q in (root / "profiles").glob("*.yml"))
        raise RunError(f"profile {name!r} not found at {p}: available profiles are {', '.join(avail)}")
    try:
        prof = literals.load(p.read_text(), where) or {}
    except literals.PlainDataError as e:
        raise RunError(str(e)) from None
    if not isinstance(prof, dict):
        raise RunError(f"{where}: must be a mapping of defaults, notebooks, extends and fixtures, not a "
                       f"{type(prof).__name__}")
    unknown = sorted(set(prof) - {"defaults", "notebooks", "extends", "fixtures"})
    if unknown:
        raise RunError(f"{where}: unknown top-level keys {unknown} (allowed: defaults, notebooks, "
                       f"extends, fixtures)")
    prof["defaults"] = prof.get("defaults") or {}
    prof["notebooks"] = prof.get("notebooks") or {}
    if not isinstance(prof["defaults"], dict):
        raise RunError(f"{where}: defaults must be a mapping of parameter: value, not a "
                       f"{type(prof['defaults']).__name__}")
    if not isinstance(prof["notebooks"], dict):
        raise RunError(f"{where}: notebooks must be a mapping of <notebook stem>: {{parameter: value}}, not a "
                       f"{type(prof['notebooks']).__name__}")
    for stem, own in prof["notebooks"].items():
        if own is not None and not isinstance(own, dict):
            raise RunError(f"{where}: notebooks.{stem} must be a mapping of parameter: value, not a "
                           f"{type(own).__name__}")
    for key in ("extends", "fixtures"):
        if prof.get(key) is not None and not isinstance(prof[key], str):
            raise RunError(f"{where}: {key} must be a name (a string), not {prof[key]!r}")
    if prof.get("extends"):
        # a profile may restate only what differs from another: its values replace the base's, key by key
        # (a mapping value such as teacher_train is replaced whole, never merged field by field)
        base = load_profile(prof["extends"], root, _chain + (name,))
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
    from .data import fixtures

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
        name, *path = f.split(".")
        params[name] = _set_path(params.get(name, declared[name]), path, v, nb.name, f, name)
    if "profile" in declared:
        params["profile"] = profile
    try:
        check(nb.name, {**declared, **params}, declared)
    except ParameterError as e:
        raise RunError(str(e)) from None
    return params


def _set_path(base, path: list[str], value, notebook: str, key: str, at: str):
    """``base`` (a mapping) with the field at ``path`` (any depth) replaced by ``value``; copies, never edits."""
    if not isinstance(base, dict):
        raise RunError(f"{notebook}: -p {key}: parameter {at} is not a mapping; give it whole (-p {at} VALUE)")
    if len(path) == 1:
        return {**base, path[0]: value}
    return {**base, path[0]: _set_path(base.get(path[0], {}), path[1:], value, notebook, key, f"{at}.{path[0]}")}


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


def output_dir(profile: str, overrides: dict | None = None) -> Path:
    """Where a run writes: ``build/runs/<profile>``, or for a run with ``-p`` overrides a folder of its own
    beside the profile's records, ``build/runs/<profile>/overrides-<hash>`` (its ``overrides.json`` says
    which), so that a one-off variation never replaces the record the book reads."""
    if not overrides:
        return runs_dir(profile)
    key = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:12]
    d = runs_dir(profile) / f"overrides-{key}"
    if not (d / "overrides.json").exists():
        atomic_write_text(d / "overrides.json", json.dumps(overrides, indent=1, sort_keys=True) + "\n")
    return d


def run_notebook(nb: str | Path, profile: str = "demo", overrides: dict | None = None, force: bool = False,
                 out_dir: Path | None = None, log=print) -> Path:
    """Execute one notebook at ``profile`` into the runs folder (:func:`output_dir`); skip it when nothing it
    depends on changed."""
    nb = Path(nb)
    if not nb.is_absolute():
        nb = (Path.cwd() / nb) if (Path.cwd() / nb).exists() else repo_root() / nb
    if not nb.exists():
        raise RunError(f"notebook {nb} does not exist: see `apnb run --list`")
    prepare_fixtures(profile)  # before the checks of the data the profile names
    params = params_for(nb, profile, overrides)
    out_dir = out_dir or output_dir(profile, overrides)
    with run_lock(nb, out_dir):
        return _run_locked(nb, profile, params, out_dir, force, log)


def run_lock(nb: str | Path, out_dir: Path):
    """The OS lock held while ``nb`` runs into ``out_dir``: one run of a notebook at a time per runs folder, so
    a second caller (another shell, a pytest-xdist worker, a batch job) waits, then finds the finished run
    unchanged instead of sharing its record."""
    from filelock import FileLock

    out_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(out_dir / f".{Path(nb).stem}.lock"))


def _data_paths(params: dict) -> list[str]:
    """The data a run reads, as named by its parameters: ``benchmark.root`` and ``benchmark.gtsegs``, and
    every ``*_root`` parameter."""
    bench = params.get("benchmark") if isinstance(params.get("benchmark"), dict) else {}
    out = [bench.get("root"), bench.get("gtsegs")]
    out += [v for k, v in params.items() if k.endswith("_root")]
    return sorted({v for v in out if isinstance(v, str) and v})


def data_identity(params: dict) -> dict:
    """``{path: identity}`` of the data a run reads: the generator's or fixtures' stamp file when there is one
    (``apnb_synth.json``, ``apnb_fixtures.json``), ``present`` for real data, ``missing`` when absent."""
    out = {}
    for d in _data_paths(params):
        p = (project_root() / d) if not Path(d).is_absolute() else Path(d)
        stamps = [p / "apnb_synth.json", p / "apnb_fixtures.json", p.parent / "apnb_fixtures.json"]
        found = next((q for q in stamps if q.is_file()), None)
        out[d] = (hashlib.sha256(found.read_bytes()).hexdigest()[:16] if found else
                  "present" if p.exists() else "missing")
    return out


def _inputs_present(rec_path: Path) -> bool:
    """Whether what a finished run read is still there: the store entries its record lists, under the store
    this process uses, and its data with the same identity."""
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        return False
    if not rec.get("rows") and not rec.get("parameters"):
        return False  # an empty record is never current
    root = store_dir() / "checkpoints"
    if any(not (root / e / "final.pt").exists() for e in rec.get("store", {}).get("entries", [])):
        return False
    data = rec.get("data")
    return data is None or data == data_identity(rec.get("parameters") or {})


def _current(nb: Path, out_dir: Path, stamp: str) -> bool:
    stamp_file = out_dir / f"{nb.stem}.stamp"
    rec = out_dir / f"{nb.stem}.results.json"
    return ((out_dir / nb.name).exists() and rec.exists() and stamp_file.exists()
            and stamp_file.read_text() == stamp and _inputs_present(rec))
def run_stamp(nb: str | Path, profile: str = "demo", overrides: dict | None = None) -> str:
    """The stamp a run of ``nb`` at ``profile`` records: its source, its parameters and the ``apnb`` sources."""
    nb = Path(nb) if Path(nb).is_absolute() else repo_root() / nb
    return _stamp(nb, params_for(nb, profile, overrides))


def is_current(nb: str | Path, profile: str = "demo", overrides: dict | None = None,
               out_dir: Path | None = None, stamp: str | None = None) -> bool:
    """Whether ``nb``'s run at ``profile`` is there and nothing it depends on changed since (what
    :func:`run_notebook` skips); ``stamp``, when given, is :func:`run_stamp`'s, computed once by the caller."""
    nb = Path(nb) if Path(nb).is_absolute() else repo_root() / nb
    return _current(nb, out_dir or output_dir(profile, overrides), stamp or run_stamp(nb, profile, overrides))


def _tidy(nb: Path, out_dir: Path) -> None:
    """Remove what an interrupted run of ``nb`` left in ``out_dir`` (a killed run cannot clean up after
    itself): its partial records and temporary notebooks. Called under :func:`run_lock`, so none is live."""
    for pattern in (f".{nb.stem}.*.results.partial.json", f".{nb.stem}.results.partial.json",
                    f".{nb.stem}.*.tmp.ipynb"):
        for leftover in out_dir.glob(pattern):
            leftover.unlink(missing_ok=True)


def _ipc_kernel_manager(log_path: Path):
    """The kernel manager papermill starts kernels with: IPC sockets (files in Jupyter's runtime folder, for
    this user only) instead of TCP on localhost, where ipykernel warns that the traffic is unencrypted; the
    kernel process's own messages (not the notebook's outputs) go to ``log_path`` rather than the terminal, so
    that an interrupted run prints one line, not the kernel's complaints about its closed sockets."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _unique_ipc_path(self):
            # jupyter_client's default, ``kernel-ipc`` in the working folder, is shared by concurrent kernels
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            return str(runtime / f"apnb-{os.getpid()}-{os.urandom(4).hex()}-ipc")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log_path, "ab") as log:
                kw.setdefault("stderr", log)
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


def parameterized(nb: Path, params: dict):
    """``nb`` with an ``injected-parameters`` cell after its ``parameters`` cell, written by
    :func:`apnb.literals.parameters_cell` (plain literals that read back to ``params``): papermill's own
    translator is never used, so no value can become code."""
    import nbformat
    import papermill as pm

    node = nbformat.read(str(nb), as_version=4)
    cell = nbformat.v4.new_code_cell(literals.parameters_cell(params))
    cell.metadata["tags"] = ["injected-parameters"]
    at = next((i for i, c in enumerate(node.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if at is None:
        raise RunError(f"{nb} has no cell tagged 'parameters': add one holding the notebook's literals")
    node.cells.insert(at + 1, cell)
    node.metadata["papermill"] = {"default_parameters": {}, "parameters": params, "environment_variables": {},
                                  "version": pm.__version__}
    return node


def _run_locked(nb: Path, profile: str, params: dict, out_dir: Path, force: bool, log) -> Path:
    import papermill as pm

    out = out_dir / nb.name
    rec = out_dir / f"{nb.stem}.results.json"
    stamp_file = out_dir / f"{nb.stem}.stamp"
    stamp = _stamp(nb, params)
    if not force and _current(nb, out_dir, stamp):
        log(f"apnb: {nb.name} [{profile}] unchanged, not re-run ({out})")
        return out
    _tidy(nb, out_dir)
    source = parameterized(nb, params)
    log(f"apnb: running {nb.name} [{profile}] {json.dumps(params, default=str)[:200]}")
    # this run's own partial record: rows go there, and it replaces the record only once the run succeeded
    tmp_rec = out_dir / f".{nb.stem}.{os.getpid()}-{os.urandom(4).hex()}.results.partial.json"
    kernel_log = out_dir / f"{nb.stem}.kernel.log"  # the kernel process's stderr; kept only when the run fails
    kernel_log.unlink(missing_ok=True)
    env_before = os.environ.get(records.ENV)
    os.environ[records.ENV] = str(tmp_rec)
    t0 = time.time()
    try:
        with atomic_path(out) as tmp_nb:
            try:
                pm.execute_notebook(source, str(tmp_nb), kernel_name="python3", cwd=str(repo_root()),
                                    progress_bar=False, request_save_on_cell_execute=False,
                                    kernel_manager_class=_ipc_kernel_manager(kernel_log))
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
                             finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             data=data_identity(effective))
            os.replace(tmp_rec, rec)
    finally:
        tmp_rec.unlink(missing_ok=True)
        if env_before is None:
            os.environ.pop(records.ENV, None)
        else:
            os.environ[records.ENV] = env_before
    atomic_write_text(stamp_file, stamp)
    (out_dir / f"{nb.stem}.failed.ipynb").unlink(missing_ok=True)
    kernel_log.unlink(missing_ok=True)
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


def machine_record(profile: str) -> dict | None:
    """What ``apnb book`` measured of the machine before it ran ``profile`` (``machine.json`` in its runs
    folder: GFLOP/s on the demo teacher's training step, the CPU, the precision), or None."""
    p = runs_dir(profile) / "machine.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def measure_machine(profile: str) -> dict:
    """Measure the machine's rate in the precision and on the device ``profile`` trains with, and record it
    beside the profile's runs (:func:`machine_record`)."""
    from . import precision as P
    from . import work
    from .config import resolve_device

    d = load_profile(profile).get("defaults", {})
    dev = resolve_device(d.get("device", "auto"))
    prec = P.resolve(((d.get("teacher_recipe") or {}).get("train") or {}).get("precision", "fp32"), dev)
    rate = work.machine_rate(precision=prec, device=dev)
    rec = {"gflops": round(rate, 1), "cpu": work.cpu_name(), "device": str(dev), "precision": prec,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(runs_dir(profile) / "machine.json", json.dumps(rec, indent=1))
    return rec


def plan_book(profile: str, log=print) -> tuple[dict, list[dict]]:
    """Measure the machine, then print what every chapter still has to compute at ``profile`` and the expected
    minutes (:func:`apnb.work.book_plan`); returns the machine record and the plan rows."""
    from . import work

    m = measure_machine(profile)
    rows = work.book_plan(profile, m["gflops"])
    log(f"apnb: plan of the {profile} book; the machine reaches {m['gflops']:.0f} GFLOP/s on the demo teacher's "
        f"training step in {m['precision']} on {m['device']}")
    for line in work.plan_lines(rows, m["gflops"], m["cpu"]):
        log(line)
    return m, rows


def build_book(profile: str = "demo", run: bool = True, force: bool = False, plan_only: bool = False,
               log=print) -> Path | None:
    """Execute every notebook of the toc (unless ``run=False``), stage the book and build it strictly.
    First the plan (:func:`plan_book`); ``plan_only`` prints it and returns None. While the notebooks run,
    one line per chapter as it starts and ends, against the plan."""
    root = repo_root()
    if run or plan_only:
        _, rows = plan_book(profile, log)
        if plan_only:
            return None
        t_book = time.time()
        for nb, plan in zip(toc_notebooks(), rows):
            expect = "unknown" if plan["minutes"] is None else f"{plan['minutes']:.1f} min"
            log(f"apnb: {nb.stem} starts at {(time.time() - t_book) / 60:.1f} min (plan: {expect})")
            t0 = time.time()
            run_notebook(nb, profile, None, force)
            log(f"apnb: {nb.stem} ends after {(time.time() - t0) / 60:.1f} min (plan: {expect})")
        log(f"apnb: every chapter ran in {(time.time() - t_book) / 60:.1f} min")
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
                lines.append(f"{name} = {literals.literal(params[name])}" if name in params else line)
            src = "\n".join(lines)
            if src != cell.source:
                cell.source = src
                nbformat.write(node, nb)
                changed.append(nb)
            break
    return changed
