import functools
import os
import warnings

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


def run_one(stem: str, profile: str) -> dict:
    """One notebook of the toc executed at ``profile`` (skipped when unchanged; a reader's earlier chapters run
    first), and its run record. ``runner.run_notebook`` holds a per-notebook lock, so two xdist workers asking
    for the same notebook run it once, and the store's locks make networks they share train once."""
    from apnb import records, runner

    order = runner.toc_notebooks()
    stems = [nb.stem for nb in order]
    todo = order[:stems.index(stem) + 1] if stem in readers() else [order[stems.index(stem)]]
    for nb in todo:
        runner.run_notebook(nb, profile)
    return records.load(runner.runs_dir(profile) / f"{stem}.results.json")


@pytest.fixture(scope="session")
def smoke_runs():
    """Every notebook of the toc executed at the smoke profile (skipped when unchanged); their run records."""
    from apnb import runner

    return {nb.stem: run_one(nb.stem, "smoke") for nb in runner.toc_notebooks()}


@pytest.fixture(scope="session")
def smoke_book(smoke_runs):
    """The smoke book built strictly (-W -n) from the smoke runs: the path of its index.html."""
    from apnb import runner

    return runner.build_book("smoke", run=False)
