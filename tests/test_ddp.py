import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.unit, pytest.mark.slow]
HERE = Path(__file__).parent


def test_torchrun_two_processes_equal_one(tmp_path):
    """DDP over 2 gloo processes (global batch 16 = 2 x 8) ends where one process with batch 16 ends."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one.pt")], env=env,
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(HERE / "ddp_worker.py"), str(tmp_path / "two.pt")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "two.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
