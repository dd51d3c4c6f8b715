"""Paths, keys and atomic writes (:mod:`apnb.config`)."""
import os
import stat

import pytest

from apnb import config

pytestmark = pytest.mark.unit


def test_config_key_is_the_sorted_json_and_names_every_value():
    a = config.config_key({"b": 1, "a": [1, 2], "c": {"y": 2, "x": 1}})
    assert a == config.config_key({"c": {"x": 1, "y": 2}, "a": (1, 2), "b": 1}) and len(a) == 16
    assert a != config.config_key({"b": 1, "a": [2, 1], "c": {"y": 2, "x": 1}})
    import hashlib
    assert a == hashlib.sha256(b'{"a": [1, 2], "b": 1, "c": {"x": 1, "y": 2}}').hexdigest()[:16]


def test_relative_paths_resolve_against_the_project_root(tmp_path, monkeypatch):
    monkeypatch.setenv("APNB_ROOT", str(tmp_path))
    monkeypatch.chdir(os.path.dirname(tmp_path))
    assert config.resolve_path("build/x") == tmp_path / "build/x"
    assert config.resolve_path("/abs/y") == config.Path("/abs/y")
    monkeypatch.delenv("APNB_STORE", raising=False)
    assert config.store_dir() == tmp_path / "build/store"


def test_an_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "d" / "r.json"
    config.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with config.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
    config.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~config.umask()  # a plain open's mode, not mkstemp's 0600
