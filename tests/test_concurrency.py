"""Two real processes sharing a data root or a store; locks, run keys and early parameter checks."""
import filecmp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from apnb import models as M
from apnb.engine import Supervised, TrainConfig, fit
from apnb.store import Store
from apnb.models import ModelError

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _tree_equal(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_tree_equal(a / d, b / d) for d in cmp.common_dirs)


def test_concurrent_synth_into_one_folder(tmp_path):
    args = ["-m", "apnb.cli", "data", "synth", "--classes", "3", "--n-train", "60", "--n-val", "20", "--n-seg", "10",
            "--n-pretrain", "60", "--size", "32"]
    procs = [subprocess.Popen([PY, *args, "--out", str(tmp_path / "shared")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    single = subprocess.run([PY, *args, "--out", str(tmp_path / "single")], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    assert _tree_equal(tmp_path / "shared" / "VOCdevkit", tmp_path / "single" / "VOCdevkit")
    # no temporary or displaced trees are left behind
    assert sorted(p.name for p in (tmp_path / "shared" / "VOCdevkit").iterdir()) == ["VOC2012"]


TEACHER = textwrap.dedent("""
    import hashlib, json, sys, torch
    torch.set_num_threads(1)
    from apnb.data import splits as D
    from apnb import recipes as R
    from apnb.store import Store
    calls = []
    real_fit = R.fit
    def counting_fit(*a, **k):
        calls.append(1)
        return real_fit(*a, **k)
    R.fit = counting_fit
    data = D.voc_data(sys.argv[1], None, 32)
    spec = {"arch": "vgg16_bn", "width_div": 16, "n_pools": 2, "head_pool": 1, "num_classes": len(data["classes"])}
    tr = {"epochs": 2, "lr": 0.01, "optimizer": "adamw", "schedule": "cosine", "batch_size": 8, "seed": 0}
    S = R.setup({}, {"spec": spec, "train": tr}, "cpu", Store(sys.argv[2]), data=data, evaluate=False)
    model, info = S.teacher, S.info
    h = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    print(json.dumps({"fits": len(calls), "weights": h}))
""")


def test_two_processes_train_one_teacher_once(tmp_path, synth_root):
    script = tmp_path / "teacher.py"
    script.write_text(TEACHER)
    procs = [subprocess.Popen([PY, str(script), str(synth_root), str(tmp_path / "store")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    import json

    res = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(r["fits"] for r in res) == [0, 1]  # one process trained, the other loaded
    assert res[0]["weights"] == res[1]["weights"]


def test_killed_lock_holder_does_not_block(tmp_path):
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import sys, time
        from apnb.store import Store
        with Store({str(tmp_path)!r}).lock("teacher", {{"a": 1}}):
            print("held", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    from filelock import Timeout

    with pytest.raises(Timeout):  # really held while the process lives
        with Store(tmp_path).lock("teacher", {"a": 1}, timeout=0.5):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with Store(tmp_path).lock("teacher", {"a": 1}, timeout=5):  # released by the kernel with its process
        pass


def test_checkpoint_of_another_run_is_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(32, 3, 32, 32, generator=g), (torch.rand(32, 4, generator=g) > 0.5).float())
    spec = {"arch": "vgg16_bn", "num_classes": 4, "width_div": 16, "n_pools": 2, "head_pool": 1}
    ck = tmp_path / "train.ckpt"
    cfg = dict(epochs=3, lr=0.01, batch_size=16, schedule="cosine", seed=0)
    fit(M.build(spec, seed=0), Supervised(), ds, TrainConfig(**cfg), ck, device="cpu", progress=False,
        stop_after_epoch=1, key="k1")
    with pytest.raises(ModelError, match=r"belongs to another training run.*rm "):
        fit(M.build(spec, seed=0), Supervised(), ds, TrainConfig(**dict(cfg, lr=0.02)), ck, device="cpu",
            progress=False, key="k1")
    with pytest.raises(ModelError, match="another training run"):
        fit(M.build(spec, seed=0), Supervised(), ds, TrainConfig(**cfg), ck, device="cpu", progress=False, key="k2")
    # the run it belongs to resumes
    r = fit(M.build(spec, seed=0), Supervised(), ds, TrainConfig(**cfg), ck, device="cpu", progress=False, key="k1")
    assert r.resumed_from == 1 and len(r.history) == 3


BAD = [
    ("matching.p", "1.5", "MatchingConfig|drop probability"),
    ("kd.train", "{epochs: 2, lr: -1}", "lr"),
    ("kd", "{div: 2}", "missing fields"),
    ("benchmark.synth", "{classes: 99}", "classes=99"),
    ("benchmark.synth", "null", "benchmark.root .* does not exist"),
    ("benchmark.guards", "{plateau: 3}", "guards.plateau"),
    ("teacher_recipe.spec", "{arch: vgg99}", "unknown arch"),
    ("teacher_recipe", "{spec: {arch: vgg16_bn}}", "missing fields \\['train'\\]"),
    ("matching.beta", "{swa: -1}", "beta=-1"),
]


def _results():
    """Every file under the demo profile's runs folder, the only place these ``--profile demo`` runs could record
    anything (records, stamps, partial files); the smoke and paper-dry runs of other test workers write
    elsewhere, so they cannot make the comparison race."""
    runs = REPO / "build" / "runs" / "demo"
    return {(p, p.stat().st_mtime_ns) for p in runs.rglob("*") if p.is_file()} if runs.exists() else set()


def test_bad_parameter_rejected_before_compute(tmp_path):
    """`apnb run` in a fresh process: the first bad value is one line on stderr, exit 2, within seconds, and
    nothing was generated, trained or recorded."""
    key, value, match = BAD[0]
    env = dict(os.environ, APNB_STORE=str(tmp_path / "store"))
    before = _results()
    t0 = time.time()
    r = subprocess.run([PY, "-m", "apnb.cli", "run", "notebooks/01_voc_distillation.ipynb", "--profile", "demo",
                        "-p", key, value, "-p", "benchmark.root", str(tmp_path / "data")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    elapsed = time.time() - t0
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("apnb: error: 01_voc_distillation.ipynb: parameter ") and __import__("re").search(match, line)
    assert not (tmp_path / "data").exists() and not (tmp_path / "store").exists()
    assert _results() == before
    assert elapsed < 60  # a loose bound for a loaded CI machine; the measured time is in the README


@pytest.mark.parametrize("key,value,match", BAD[1:])
def test_every_bad_parameter_is_one_line_before_compute(tmp_path, monkeypatch, capsys, key, value, match):
    """The same command line through :func:`apnb.cli.main` in this process (no second torch import per case)."""
    from apnb import cli

    monkeypatch.setenv("APNB_STORE", str(tmp_path / "store"))
    monkeypatch.chdir(REPO)
    before = _results()
    rc = cli.main(["run", "notebooks/01_voc_distillation.ipynb", "--profile", "demo", "-p", key, value,
                   "-p", "benchmark.root", str(tmp_path / "data")])
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("apnb: error: 01_voc_distillation.ipynb: parameter ") and __import__("re").search(match, lines[0])
    # nothing was generated or trained, and no run was recorded
    assert not (tmp_path / "data").exists() and not (tmp_path / "store").exists()
    assert _results() == before
