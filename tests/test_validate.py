"""The parameter check (:mod:`apnb.validate`): one line for each bad value, before any kernel, without torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apnb import cli

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.mark.parametrize("key,value,match", [
    ("kd.T", ".inf", "kd.T = .inf is not a finite number"),
    ("kd.T", "1.0e+400", "kd.T = 1.0e\+400 is not a finite number"),
    ("kd.T", "1e400", "T: must be a number, not str '1e400'"),
    ("methods", "[naive, sswaa]", r"unknown compression methods \['sswaa'\]"),
    ("benchmark.synth.classes", "0", "classes=0"),
    ("benchmark.synth.nope", "1", r"unknown SynthConfig fields \['nope'\]"),
    ("benchmark.dataset", "mnist", "dataset: must be one of voc, imagenet, cifar"),
    ("methods", "[naive, catkd]", r"unknown compression methods \['catkd'\]: use naive, ewa"),
    ("seeds", "[0, 1", "-p seeds line 1 column 6: not valid YAML"),
])
def test_validation_gaps_are_closed(key, value, match, capsys):
    assert cli.main(["run", "notebooks/01_voc_distillation.ipynb", "--profile", "smoke", "-p", key, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and __import__("re").search(match, err[0]), err


def test_attribution_methods_are_checked_against_their_registry(capsys):
    assert cli.main(["run", "notebooks/23_lpi_benchmarks.ipynb", "--profile", "smoke", "-p", "lpi_methods", "[ig, sswa]"]) == 2
    assert "unknown attribution methods ['sswa']" in capsys.readouterr().err


@pytest.mark.skipif(__import__("apnb.validate", fromlist=["x"]).cuda_present(), reason="this machine has CUDA")
def test_a_cuda_device_without_cuda_is_refused_before_the_kernel(capsys):
    assert cli.main(["run", "notebooks/01_voc_distillation.ipynb", "--profile", "smoke", "-p", "device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_the_parameter_check_imports_neither_torch_nor_torchvision(tmp_path):
    """A fresh process refuses a bad value without importing torch (torch and torchvision were 7.0 s of the
    7.6 s it took)."""
    code = ("import json, sys, time; t = time.time(); from apnb import cli\n"
            "rc = cli.main(['run', 'notebooks/01_voc_distillation.ipynb', '--profile', 'demo', '-p', 'kd.T', '-1'])\n"
            "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))]))")
    r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, APNB_STORE=str(tmp_path / "store")))
    rc, imported = json.loads(r.stdout.strip().splitlines()[-1])
    assert rc == 2 and imported == [], r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "T: must be > 0" in r.stderr
