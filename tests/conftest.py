import functools
import os
import warnings
from pathlib import Path

import nbformat
import pytest

# Under pytest-xdist the two cores are shared by the workers: each worker, and every notebook kernel or
# subprocess it starts (they inherit OMP_NUM_THREADS), gets its share instead of oversubscribing the CPU.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

import torch  # noqa: E402  (after OMP_NUM_THREADS)

torch.set_num_threads(_THREADS)
warnings.filterwarnings("ignore", message=".*non-writable.*")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from apnb.data import write_voc

    return write_voc(tmp_path_factory.mktemp("synth"), classes=4, n_train=40, n_val=16, n_seg=12, n_pretrain=8,
                     size=32, seed=3)


@pytest.fixture
def small_vgg():
    from apnb.models import vgg

    torch.manual_seed(0)
    return vgg("vgg16_bn", num_classes=5, width_div=16, n_pools=2, head_pool=1)


@functools.lru_cache(maxsize=1)
def readers() -> frozenset[str]:
    """The notebooks that read other chapters' run records (``runner.run_records``): their chapters run first."""
    import nbformat

    from apnb import runner

    return frozenset(nb.stem for nb in runner.toc_notebooks()
                     if "run_records" in "\n".join(c.source for c in nbformat.read(nb, 4).cells if c.cell_type == "code"))


def _idle(nb, profile) -> bool:
    """No process holds ``nb``'s run lock (:func:`apnb.runner.run_lock`) at ``profile`` now."""
    from filelock import Timeout

    from apnb import runner

    lock = runner.run_lock(nb, runner.runs_dir(profile))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


@functools.lru_cache(maxsize=None)
def _stamp(nb, profile) -> str:
    """:func:`apnb.runner.run_stamp`, once per notebook and profile (nothing it hashes changes during a test run)."""
    from apnb import runner

    return runner.run_stamp(nb, profile)


def _done(nb, profile) -> bool:
    from apnb import runner

    return runner.is_current(nb, profile, stamp=_stamp(nb, profile))


def run_one(stem: str, profile: str, pool=None) -> dict:
    """One notebook of the toc executed at ``profile`` (skipped when unchanged; a reader's earlier chapters run
    first), and its run record.

    ``runner.run_notebook`` holds a per-notebook lock, so two xdist workers asking for one notebook run it
    once, and the store's locks make the networks they share train once. While every notebook this one needs
    is being run by the other worker, this worker runs another pending notebook of ``pool`` (default: the
    toc) instead of waiting, so the two workers share the notebook runs."""
    import time

    from apnb import records, runner

    order = runner.toc_notebooks()
    stems = [nb.stem for nb in order]
    i = stems.index(stem)
    need = order[:i + 1] if stem in readers() else [order[i]]
    pool = [nb for nb in order if pool is None or nb.stem in pool]
    runner.prepare_fixtures(profile)

    def ready(nb):  # a reader runs once every chapter before it is current
        j = stems.index(nb.stem)
        return nb.stem not in readers() or all(_done(p, profile) for p in order[:j])

    while True:
        pending = [nb for nb in need if not _done(nb, profile)]
        if not pending:
            return records.load(runner.runs_dir(profile) / f"{stem}.results.json")
        mine = next((nb for nb in pending if _idle(nb, profile) and ready(nb)), None)
        if mine is None:  # the other worker runs what this test needs: help with the rest meanwhile
            mine = next((nb for nb in pool if nb not in need and not _done(nb, profile)
                         and _idle(nb, profile) and ready(nb)), None)
        if mine is None:
            time.sleep(0.5)
            continue
        runner.run_notebook(mine, profile)


@pytest.fixture(scope="session")
def smoke_runs():
    """Every notebook of the toc executed at the smoke profile (skipped when unchanged); their run records.
    The machine is measured first, as ``apnb book`` does, so that the execution page shows its rate."""
    from apnb import runner

    if runner.machine_record("smoke") is None:
        runner.measure_machine("smoke")
    return {nb.stem: run_one(nb.stem, "smoke") for nb in runner.toc_notebooks()}


@pytest.fixture(scope="session")
def smoke_book(smoke_runs, testrun_uid):
    """The smoke book built strictly (-W -n) from the smoke runs, once per test session whatever the number of
    xdist workers (the first builds it under a lock, the others find it built by this session): the path of
    its index.html. Not ``--dist loadgroup``: with pytest 9 it no longer groups ``xdist_group`` tests
    (pytest-dev/pytest-xdist issue 1386), so both workers may ask for the book."""
    from filelock import FileLock

    from apnb import runner

    stage = runner.repo_root() / "build" / "book-smoke"
    built = stage.parent / ".book-smoke.session"
    stage.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(stage.parent / ".book-smoke.lock")):
        index = stage / "_build" / "html" / "index.html"
        if built.exists() and built.read_text() == testrun_uid and index.exists():
            return index
        built.unlink(missing_ok=True)
        index = runner.build_book("smoke", run=False)
        built.write_text(testrun_uid)
        return index


def make_notebook(path: Path, params: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A project root with one notebook ``n1`` (parameters ``a``, ``s``, ``data_root``, ``wait``) that touches
    ``in-cell`` at the project root when its cell starts, waits ``wait`` seconds, logs ``a`` and ``s`` and lists
    store entry ``x-1`` as loaded, and a profile ``p``."""
    for d in ("profiles", "book", "apnb"):
        (tmp_path / d).mkdir()
    (tmp_path / "apnb" / "x.py").write_text("A = 1\n")
    make_notebook(tmp_path / "notebooks" / "n1.ipynb", "a = 1\ns = 'x'\ndata_root = 'data/d'\nwait = 0",
              "import os, pathlib, time\nfrom apnb import records\n"
              "pathlib.Path(os.environ['APNB_ROOT'], 'in-cell').touch()\ntime.sleep(wait)\nrecords.tally('loaded', 'x-1')\n"
              "records.log('t', [{'metric': 'a', 'value': a, 's': s}])")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/n1\n")
    (tmp_path / "profiles" / "p.yml").write_text("defaults: {a: 2}\n")
    (tmp_path / "data" / "d").mkdir(parents=True)
    (tmp_path / "data" / "d" / "apnb_synth.json").write_text('{"seed": 0}')
    (tmp_path / "store" / "checkpoints" / "x-1").mkdir(parents=True)
    (tmp_path / "store" / "checkpoints" / "x-1" / "final.pt").write_bytes(b"net")
    monkeypatch.setenv("APNB_ROOT", str(tmp_path))
    monkeypatch.setenv("APNB_STORE", str(tmp_path / "store"))
    return tmp_path


@pytest.fixture
def mini_repo(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "apnb").mkdir()
    (tmp_path / "apnb" / "x.py").write_text("A = 1\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell("a = 1\nb = 'x'")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("from apnb import records\nrecords.log('t', [{'metric': 'a', 'value': a}])")]
    nbformat.write(nb, tmp_path / "notebooks" / "n1.ipynb")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/n1\n")
    (tmp_path / "profiles" / "p.yml").write_text("defaults: {a: 2, zzz: 3}\nnotebooks: {n1: {b: y}}\n")
    (tmp_path / "profiles" / "bad.yml").write_text("defaults: {}\nnotebooks: {n1: {nope: 1}}\n")
    monkeypatch.setenv("APNB_ROOT", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------ small networks and data shared by unit tests
def tiny_data(n=48, k=4, size=32, seed=0):
    """``n`` random images with random multi-label targets over ``k`` classes."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), (torch.rand(n, k, generator=g) > 0.6).float())


def tiny_net(div=16):
    """A 4-class VGG16_bn at width / ``div`` with 2 pools, seeded."""
    from apnb.models import vgg

    torch.manual_seed(0)
    return vgg("vgg16_bn", 4, width_div=div, n_pools=2, head_pool=1)


def vgg_pair(seed=0, double=False):
    """A 5-class teacher (width / 16) and student (width / 32), eval mode, seeded; float64 with ``double``."""
    from apnb.models import vgg

    torch.manual_seed(seed)
    t = vgg("vgg16_bn", 5, width_div=16, n_pools=2, head_pool=1).eval()
    s = vgg("vgg16_bn", 5, width_div=32, n_pools=2, head_pool=1).eval()
    return (t.double(), s.double()) if double else (t, s)


def vgg_pair_gradcam(n=3):
    """:func:`vgg_pair`, a batch of ``n`` images, and both networks' Grad-CAM maps of the teacher's top-1 class."""
    from apnb.gradcam import gradcam

    t, s = vgg_pair()
    x = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        target = t(x).argmax(1)
    return t, s, x, gradcam(s, x, "last_conv", target)[0], gradcam(t, x, "last_conv", target)[0]
