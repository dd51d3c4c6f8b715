"""The checkpoint store (:mod:`apnb.store`): round trips, superseded checkpoints, a full disk."""
from pathlib import Path

import pytest
import torch

from apnb.store import Store

from conftest import tiny_net

pytestmark = pytest.mark.unit




def test_store_roundtrip(tmp_path):
    st = Store(tmp_path)
    m = tiny_net()
    assert st.load("teacher", {"a": 1}, tiny_net()) is None
    st.save("teacher", {"a": 1}, m, {"note": "x"})
    m2 = tiny_net(16)
    assert st.load("teacher", {"a": 1}, m2) == {"note": "x"}
    assert st.load("teacher", {"a": 2}, tiny_net()) is None


def test_store_save_drops_superseded_resume_checkpoints(tmp_path):
    st = Store(tmp_path)
    d = st.dir("teacher", {"a": 1})
    (d / "train.ckpt").write_bytes(b"x")
    (d / "pretrain.ckpt").write_bytes(b"x")
    st.save("teacher", {"a": 1}, tiny_net())
    assert sorted(f.name for f in d.iterdir()) == ["cfg.json", "final.pt"]


def test_full_disk_is_one_clear_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """torch.save reports a short write as 'unexpected pos A vs B'; with the disk (nearly) full that becomes a
    DiskFullError naming the path and the free space, and neither the target nor a temporary file is left."""
    import shutil
    from apnb import config as cfgmod

    def short_write(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 32813120 vs 32813008")

    monkeypatch.setattr(torch, "save", short_write)  # apnb.config imports torch on first use
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 3 << 20))
    target = tmp_path / "final.pt"
    with pytest.raises(cfgmod.DiskFullError, match=r"no space left writing .*final.pt \(3 MiB free\)"):
        cfgmod.atomic_torch_save({"w": 1}, target)
    assert list(tmp_path.iterdir()) == []
    # the same error with room to spare is not a disk problem: it is shown as it is
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos") as e:
        cfgmod.atomic_torch_save({"w": 1}, target)
    assert not isinstance(e.value, cfgmod.DiskFullError)
