"""Counting the work (apnb.work): the hook's MACs agree with apnb.models.count_macs, training and evaluation
are kept apart, the run record receives the TFLOP, and the book's plan is read from the records and the store."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from apnb import matching, models as M
from apnb import records, runner, work
from apnb.engine import StudentObjective, Member, Supervised, TrainConfig, fit, fit_cohort

pytestmark = pytest.mark.unit
SPEC = {"arch": "preact_resnet18", "num_classes": 4, "width_div": 16}


@pytest.fixture
def counting():
    had = work.enabled()
    work.enable()
    work.take()
    yield
    work.take()
    if not had:
        work._STATE["handle"].remove()
        work._STATE["handle"] = None


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), (torch.rand(n, 4, generator=g) > 0.5).float())


def test_counts_match_count_macs(counting):
    net = M.build(SPEC, seed=0)
    macs = M.count_macs(net, 16)
    work.take()
    with torch.no_grad():
        net.eval()(torch.zeros(5, 3, 16, 16))
    assert work.take() == {"train_tflop": 0.0, "eval_tflop": pytest.approx(2 * macs * 5 / 1e12)}
    fit(net, Supervised(), _data(), TrainConfig(epochs=2, batch_size=8, lr=0.01), progress=False, device="cpu")
    # forward + backward of 2 epochs x 32 images: 3 x 2 FLOP per MAC; nothing counted as evaluation
    assert work.take() == {"train_tflop": pytest.approx(6 * macs * 64 / 1e12), "eval_tflop": 0.0}


def test_cohort_counts_one_teacher_pass_per_batch(counting):
    teacher = M.build(dict(SPEC, width_div=8), seed=1).eval()
    t_macs, s_macs = M.count_macs(teacher, 16), M.count_macs(M.build(SPEC, seed=0), 16)
    work.take()
    members = [Member(M.build(SPEC, seed=0), StudentObjective(teacher, matching.AttributionMatching(kind="none"), kd=True),
                      TrainConfig(epochs=1, batch_size=8, lr=0.01)) for _ in range(2)]
    fit_cohort(members, _data(), device="cpu", progress=False)
    # two students with their backward, one logits-only teacher pass (no gradient) per batch for both
    assert work.take()["train_tflop"] == pytest.approx((2 * 6 * s_macs + 2 * t_macs) * 32 / 1e12)


def test_record_receives_work(counting, tmp_path, monkeypatch):
    rec = tmp_path / "r.json"
    monkeypatch.setenv(records.ENV, str(rec))
    net = M.build(SPEC, seed=0)
    fit(net, Supervised(), _data(16), TrainConfig(epochs=1, batch_size=8, lr=0.01), progress=False, device="cpu")
    w = json.loads(rec.read_text())["work"]
    assert w["train_tflop"] > 0 and w["eval_tflop"] == 0
    with torch.no_grad():
        net(torch.zeros(4, 3, 16, 16))
    records.log("t", [{"metric": "m", "value": 1}])
    w2 = json.loads(rec.read_text())["work"]
    assert w2["train_tflop"] == w["train_tflop"] and w2["eval_tflop"] > 0


def test_machine_rate_leaves_the_counts(counting):
    with torch.no_grad():
        M.build(SPEC, seed=0)(torch.zeros(2, 3, 16, 16))
    before = work.pending()
    rate = work.machine_rate(SPEC, batch=8, image_size=16, seconds=0.2)
    assert rate > 0.1 and work.pending() == before


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with two notebooks and a profile ``p``; a store with one network."""
    import nbformat

    for stem in ("a1", "b2", "c3"):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        p = nbformat.v4.new_code_cell("x = 1")
        p.metadata["tags"] = ["parameters"]
        nb.cells = [p]
        (tmp_path / "notebooks").mkdir(exist_ok=True)
        nbformat.write(nb, tmp_path / "notebooks" / f"{stem}.ipynb")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a1\n"
                                       "  - file: notebooks/b2\n  - file: notebooks/c3\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yml").write_text("defaults: {}\n")
    (tmp_path / "apnb").mkdir()
    store = tmp_path / "store" / "checkpoints"
    (store / "student-1").mkdir(parents=True)
    (store / "student-1" / "final.pt").write_bytes(b"net")
    monkeypatch.setenv("APNB_ROOT", str(tmp_path))
    monkeypatch.setenv("APNB_STORE", str(tmp_path / "store"))
    runs = tmp_path / "build" / "runs" / "p"
    runs.mkdir(parents=True)
    w = {"train_tflop": 2.0, "eval_tflop": 0.5}
    (runs / "a1.results.json").write_text(json.dumps({"rows": [], "work": w, "store": {"entries": ["student-1"]}}))
    (runs / "b2.results.json").write_text(json.dumps({"rows": [], "work": w, "store": {"entries": ["student-2"]}}))
    return tmp_path


def test_book_plan(project):
    rows = {r["notebook"]: r for r in work.book_plan("p", 100.0)}
    assert rows["a1"]["tflop"] == 0.5  # its network is in the store: only its evaluation is left
    assert rows["b2"]["tflop"] == 2.5  # its network is gone: training and evaluation
    assert rows["c3"]["tflop"] is None and rows["c3"]["state"] == "new"
    assert rows["b2"]["minutes"] == pytest.approx(2.5e3 / 100 / 60)
    lines = work.plan_lines(list(rows.values()), 100.0, "Some CPU, AVX2, 2 threads")
    assert "unknown" in lines[2] and "1 of 3 chapters unknown" in lines[3]
    assert lines[-1] == "plan: 3.00 TFLOP, 0.5 min at 100 GFLOP/s (Some CPU, AVX2, 2 threads)"


@pytest.mark.slow
def test_book_plan_command(project):
    p = subprocess.run([sys.executable, "-m", "apnb.cli", "book", "--profile", "p", "--plan"], capture_output=True,
                       text=True, timeout=300, cwd=project)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"plan: 3\.00 TFLOP, [0-9.]+ min at [0-9]+ GFLOP/s \(.+, \d+ threads\)", last), last
    m = runner.machine_record("p")
    assert m["gflops"] > 0 and m["precision"] == "fp32" and "threads" in m["cpu"]
    assert not (Path(project) / "build" / "runs" / "p" / "a1.ipynb").exists()  # nothing ran
