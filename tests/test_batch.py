"""Batch execution through submitit's local executor, for real: notebooks x seeds as separate processes."""
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from apnb import batch, records, runner

pytestmark = pytest.mark.slow


def _notebook(path, fail_seed=None):
    nb = new_notebook(cells=[
        new_code_cell('profile = "demo"\nseeds = [0]', metadata={"tags": ["parameters"]}),
        new_code_cell("from apnb import records\n"
                      f"if {fail_seed!r} in seeds:\n    raise RuntimeError('seed rejected on purpose')\n"
                      "records.log('runs', [{'seed': s, 'metric': 'value', 'value': s * 10} for s in seeds])"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_local_executor_fans_out_seeds_and_names_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "runs_dir", lambda profile: tmp_path / "runs" / profile)
    good = _notebook(tmp_path / "toy_grid.ipynb")
    jobs = batch.plan([good], "smoke", seeds=[0, 1])
    assert [j.overrides["seeds"] for j in jobs] == [[0], [1]]
    ex = batch.executor("local", folder=tmp_path / "jobs" / "%j", timeout_min=10)
    batch.submit(jobs, ex, log=lambda *a: None)
    for s in (0, 1):
        rec = records.load(tmp_path / "runs" / "smoke" / f"seed-{s}" / "toy_grid.results.json")
        assert rec["parameters"]["seeds"] == [s]
        assert [r["value"] for r in rec["rows"] if r["table"] == "runs"] == [s * 10]
    # a finished job is not re-run: its stamp matches, the executed notebook is left as it is
    out = tmp_path / "runs" / "smoke" / "seed-0" / "toy_grid.ipynb"
    before = out.stat().st_mtime_ns
    batch.submit(jobs[:1], batch.executor("local", folder=tmp_path / "jobs2" / "%j"), log=lambda *a: None)
    assert out.stat().st_mtime_ns == before
    bad = _notebook(tmp_path / "toy_fail.ipynb", fail_seed=1)
    with pytest.raises(runner.RunError) as e:
        batch.submit(batch.plan([bad], "smoke", seeds=[0, 1]), batch.executor("local", folder=tmp_path / "jobs3" / "%j"),
                     log=lambda *a: None)
    msg = str(e.value)
    assert "1 of 2 jobs failed" in msg and "toy_fail.ipynb" in msg and "seed 1" in msg


def test_plan_rejects_unknown_parameters_before_submitting(tmp_path):
    nb = _notebook(tmp_path / "toy.ipynb")
    with pytest.raises(runner.RunError, match="not in its parameters cell"):
        batch.plan([nb], "smoke", seeds=[0], overrides={"nope": 1})


def test_slurm_executor_writes_the_sbatch_options(tmp_path, monkeypatch):
    # no cluster here: a stand-in `srun` on PATH lets submitit build the executor; we read its sbatch script
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    ex = batch.executor("slurm", folder=tmp_path / "%j", partition="gpu", gpus=2, timeout_min=90, parallelism=4)
    text = ex._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90", "#SBATCH --cpus-per-task=8"):
        assert line in text, line
    assert ex._executor.parameters["array_parallelism"] == 4
    with pytest.raises(ValueError, match="use local or slurm"):
        batch.executor("pbs")


def _teacher_notebook(path):
    """A notebook that asks the store for a (smoke-sized) teacher and records how often it ran ``fit``."""
    nb = new_notebook(cells=[
        new_code_cell('profile = "smoke"\nseeds = [0]\ndata_root = ""\nstore = ""', metadata={"tags": ["parameters"]}),
        new_code_cell(
            "import hashlib\n"
            "from apnb import recipes as R, records\n"
            "from apnb.data import splits as D\n"
            "from apnb.store import Store\n"
            "calls = []\n"
            "_fit = R.fit\n"
            "R.fit = lambda *a, **k: (calls.append(1), _fit(*a, **k))[1]\n"
            "data = D.voc_data(data_root, None, 32)\n"
            "spec = {'arch': 'vgg16_bn', 'width_div': 16, 'n_pools': 2, 'head_pool': 1, 'num_classes': len(data['classes'])}\n"
            "tr = {'epochs': 1, 'lr': 0.05, 'schedule': 'onecycle', 'batch_size': 16, 'seed': 0}\n"
            "S = R.setup({}, {'spec': spec, 'train': tr}, 'cpu', Store(store), data=data, evaluate=False)\n"
            "model, info = S.teacher, S.info\n"
            "h = hashlib.sha256(b''.join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()\n"
            "records.log('runs', [{'seed': seeds[0], 'metric': 'fits', 'value': len(calls), 'weights': h}])"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_local_executor_with_parallelism_trains_a_shared_network_once(tmp_path, synth_root, monkeypatch):
    """``apnb run --executor local --parallelism 2`` on a fresh store: three jobs need one teacher; two run
    at once, one of them trains it and every other job loads it (the store entry's lock)."""
    monkeypatch.setattr(runner, "runs_dir", lambda profile: tmp_path / "runs" / profile)
    nb = _teacher_notebook(tmp_path / "toy_teacher.ipynb")
    overrides = {"data_root": str(synth_root), "store": str(tmp_path / "store")}
    jobs = batch.plan([nb], "smoke", seeds=[0, 1, 2], overrides=overrides)
    ex = batch.executor("local", folder=tmp_path / "jobs" / "%j", timeout_min=10, parallelism=2)
    batch.submit(jobs, ex, log=lambda *a: None, poll_s=0.2)
    out = runner.output_dir("smoke", overrides)  # -p runs: beside the profile's records, never over them
    assert out.parent == tmp_path / "runs" / "smoke" and out.name.startswith("overrides-")
    rows = [r for s in (0, 1, 2) for r in records.load(out / f"seed-{s}" / "toy_teacher.results.json")["rows"]]
    assert sorted(r["value"] for r in rows) == [0, 0, 1]  # trained once, loaded twice
    assert len({r["weights"] for r in rows}) == 1
