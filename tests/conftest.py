import os
import warnings

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
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


@pytest.fixture(scope="session")
def smoke_runs():
    """Every notebook of the toc executed at the smoke profile (skipped when unchanged); their run records."""
    from apnb import records, runner

    out = {}
    for nb in runner.toc_notebooks():
        runner.run_notebook(nb, "smoke")
        out[nb.stem] = records.load(runner.runs_dir("smoke") / f"{nb.stem}.results.json")
    return out


@pytest.fixture(scope="session")
def smoke_book(smoke_runs):
    """The smoke book built strictly (-W -n) from the smoke runs: the path of its index.html."""
    from apnb import runner

    return runner.build_book("smoke", run=False)


@pytest.fixture(scope="session")
def paper_dry_runs():
    """Every notebook of the toc executed at the paper-dry profile: the paper's architectures, image sizes and
    schedules on real-format fixtures (skipped when unchanged); their run records."""
    from apnb import records, runner

    out = {}
    for nb in runner.toc_notebooks():
        runner.run_notebook(nb, "paper-dry")
        out[nb.stem] = records.load(runner.runs_dir("paper-dry") / f"{nb.stem}.results.json")
    return out
