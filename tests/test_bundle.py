"""Store bundles (apnb.bundle): a profile's networks round-trip through one archive, and every altered,
foreign, truncated or escaping archive is refused with one line before anything reaches the store."""
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from apnb import __version__, bundle
from apnb.bundle import BundleError
from apnb.store import Store

pytestmark = pytest.mark.unit


@pytest.fixture
def built(tmp_path):
    """A store with three finished networks, run records of profile ``demo`` listing two of them (one in an
    ``overrides-*`` folder), and the exported bundle."""
    st = Store(tmp_path / "store" / "checkpoints")
    keys = []
    for i in range(3):
        cfg = {"role": "student", "i": i, "train": {"seed": i}}
        torch.manual_seed(i)
        st.save("student", cfg, nn.Linear(4, 3))
        keys.append(st.entry("student", cfg))
    runs = tmp_path / "runs" / "demo"
    (runs / "overrides-abc").mkdir(parents=True)
    (runs / "01_x.results.json").write_text(json.dumps({"rows": [], "store": {"entries": [keys[0]]}}))
    (runs / "overrides-abc" / "01_x.results.json").write_text(json.dumps({"rows": [], "store": {"entries": keys[:2]}}))
    (runs / ".01_x.123-ab.results.partial.json").write_text("{")  # a live run's partial record: not exported
    ev = tmp_path / "store" / "evaluations" / ("ab" * 16 + ".pt")  # a kept score (apnb.evalcache)
    ev.parent.mkdir(parents=True)
    torch.save({"row": "{}", "maps": torch.ones(2, 2)}, ev)
    out = tmp_path / "demo.tar"
    man = bundle.export(out, "demo", runs=runs, store=st.root)
    return {"store": st, "keys": keys, "bundle": out, "manifest": man, "tmp": tmp_path}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _write(path: Path, members: dict[str, bytes], manifest: dict | None = None, extra=()) -> Path:
    """A tar of ``members`` (name -> bytes), the manifest first, plus ``extra`` TarInfo members."""
    with tarfile.open(path, "w") as tar:
        if manifest is not None:
            members = {"MANIFEST.json": json.dumps(manifest).encode(), **members}
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def _manifest_for(members: dict[str, bytes], base: dict) -> dict:
    """``base`` with its sums recomputed for ``members`` (a forger who rewrites the manifest as well)."""
    m = json.loads(json.dumps(base))
    for name, data in members.items():
        if name.startswith("checkpoints/") and name.count("/") == 2:
            e, f = name.split("/")[1:]
            m["entries"].setdefault(e, {"files": {}, "precision": "fp32"})["files"][f] = {"sha256": _sha(data),
                                                                                        "bytes": len(data)}
        else:
            m["evaluations" if name.startswith("evaluations/") else "records"][name] = {"sha256": _sha(data),
                                                                                       "bytes": len(data)}
    return m


def _untouched(store_root: Path):
    """Nothing half-imported: the store folder holds no entry and no temporary folder."""
    assert not store_root.exists() or list(store_root.iterdir()) == [], list(store_root.iterdir())
    assert not (store_root.parent / "bundles").exists()


def test_round_trip(built, tmp_path):
    man, keys = built["manifest"], built["keys"]
    assert sorted(man["entries"]) == sorted(keys[:2])  # the networks the records list, not the whole store
    assert len(man["records"]) == 2 and man["apnb"] == __version__ and man["torch"] == torch.__version__
    assert {v["precision"] for v in man["entries"].values()} == {"fp32"}
    dest = tmp_path / "class" / "checkpoints"
    r = bundle.import_bundle(built["bundle"], dest)
    assert sorted(r["added"]) == sorted(keys[:2]) and r["present"] == []
    for e in keys[:2]:
        assert (dest / e / "final.pt").read_bytes() == (built["store"].root / e / "final.pt").read_bytes()
        assert json.loads((dest / e / "cfg.json").read_text())["role"] == "student"
    assert not (dest / keys[2]).exists()
    assert r["evaluations"] == 1 and (dest.parent / "evaluations" / ("ab" * 16 + ".pt")).read_bytes() == \
        (built["tmp"] / "store" / "evaluations" / ("ab" * 16 + ".pt")).read_bytes()
    assert len(list(r["records"].glob("*.results.json"))) == 2 and (r["records"] / "MANIFEST.json").exists()
    # the imported networks are what the store serves: the same weights load under the same key
    net = nn.Linear(4, 3)
    assert Store(dest).load("student", {"role": "student", "i": 0, "train": {"seed": 0}}, net) == {}
    torch.manual_seed(0)
    assert torch.equal(net.weight, nn.Linear(4, 3).weight)
    assert not [p for p in dest.iterdir() if p.name.startswith(".import-")]
    again = bundle.import_bundle(built["bundle"], dest)  # idempotent
    assert again["added"] == [] and sorted(again["present"]) == sorted(keys[:2])


def test_gzip_bundle(built, tmp_path):
    out = tmp_path / "demo.tar.gz"
    bundle.export(out, "demo", runs=tmp_path / "runs" / "demo", store=built["store"].root)
    with open(out, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert len(bundle.import_bundle(out, tmp_path / "c2" / "checkpoints")["added"]) == 2


def test_export_refuses_missing_network_and_no_records(built, tmp_path):
    (built["store"].root / built["keys"][1] / "final.pt").unlink()
    with pytest.raises(BundleError, match="lacks 1 network"):
        bundle.export(tmp_path / "x.tar", "demo", runs=tmp_path / "runs" / "demo", store=built["store"].root)
    assert not (tmp_path / "x.tar").exists()  # nothing half-written
    with pytest.raises(BundleError, match="no run records"):
        bundle.export(tmp_path / "y.tar", "demo", runs=tmp_path / "nothing", store=built["store"].root)


def test_tampered_file(built, tmp_path):
    mem = _members(built["bundle"])
    name = next(n for n in mem if n.endswith("final.pt"))
    mem[name] = mem[name][:-1] + bytes([mem[name][-1] ^ 1])
    bad = _write(tmp_path / "bad.tar", mem)
    dest = tmp_path / "class" / "checkpoints"
    with pytest.raises(BundleError, match=f"{name} does not match its SHA-256"):
        bundle.import_bundle(bad, dest)
    _untouched(dest)


def test_wrong_version_and_format(built, tmp_path):
    mem = _members(built["bundle"])
    man = json.loads(mem.pop("MANIFEST.json"))
    dest = tmp_path / "class" / "checkpoints"
    with pytest.raises(BundleError, match=r"made by apnb 0\.0\.9, this is apnb"):
        bundle.import_bundle(_write(tmp_path / "v.tar", mem, dict(man, apnb="0.0.9")), dest)
    with pytest.raises(BundleError, match="bundle format 2"):
        bundle.import_bundle(_write(tmp_path / "f.tar", mem, dict(man, format=2)), dest)
    with pytest.raises(BundleError, match="no MANIFEST.json"):
        bundle.import_bundle(_write(tmp_path / "n.tar", mem), dest)
    _untouched(dest)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_truncated_archive(built, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    bundle.export(full, "demo", runs=tmp_path / "runs" / "demo", store=built["store"].root)
    data = full.read_bytes()
    dest = tmp_path / "class" / "checkpoints"
    if suffix == ".tar":  # cut inside the first and inside the last member's data (the rest is padding)
        with tarfile.open(full) as tar:
            ms = tar.getmembers()
        cuts = (ms[1].offset_data + 10, ms[-1].offset_data + ms[-1].size - 1)
    else:
        cuts = (len(data) // 3, len(data) - 20)
    for cut in cuts:
        cut_path = tmp_path / f"cut{suffix}"
        cut_path.write_bytes(data[:cut])
        with pytest.raises(BundleError, match="truncated|missing from the archive|does not match"):
            bundle.import_bundle(cut_path, dest)
        _untouched(dest)


def _escape_cases(built, tmp_path):
    mem = _members(built["bundle"])
    man = json.loads(mem.pop("MANIFEST.json"))
    outside = tmp_path / "outside.txt"
    link = tarfile.TarInfo(f"checkpoints/{built['keys'][0]}/cfg.json")
    link.type, link.linkname = tarfile.SYMTYPE, str(outside)
    hard = tarfile.TarInfo("records/x.results.json")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../outside.txt"
    dev = tarfile.TarInfo("records/y.results.json")
    dev.type = tarfile.CHRTYPE
    no_cfg = {k: v for k, v in mem.items() if not k.endswith("cfg.json")}
    return outside, {
        "dotdot": ({**mem, "../outside.txt": b"x"}, []),
        "absolute": ({**mem, str(outside): b"x"}, []),
        "inside dotdot": ({**mem, f"checkpoints/{built['keys'][0]}/../../../outside.txt": b"x"}, []),
        "symlink": (no_cfg, [link]),
        "hard link": (mem, [hard]),
        "device": (mem, [dev]),
        "foreign path": ({**mem, "notebooks/evil.py": b"import os"}, []),
    }, man


@pytest.mark.parametrize("case", ["dotdot", "absolute", "inside dotdot", "symlink", "hard link", "device",
                                  "foreign path"])
def test_member_outside_store(built, tmp_path, case):
    outside, cases, man = _escape_cases(built, tmp_path)
    mem, extra = cases[case]
    bad = _write(tmp_path / "bad.tar", mem, _manifest_for(mem, man), extra)
    dest = tmp_path / "class" / "checkpoints"
    with pytest.raises(BundleError, match="refused, nothing imported") as e:
        bundle.import_bundle(bad, dest)
    assert "\n" not in str(e.value)
    assert not outside.exists()
    _untouched(dest)


@pytest.mark.parametrize("target", ["final.pt", "evaluations/"])
def test_pickle_that_runs_code_is_refused(built, tmp_path, target):
    """A forger can rewrite the manifest's sums; ``weights_only=True`` still refuses a pickle that calls."""
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    mem = _members(built["bundle"])
    man = json.loads(mem.pop("MANIFEST.json"))
    name = next(n for n in mem if n.endswith(target) or n.startswith(target))
    mem[name] = pickle.dumps(Boom())
    bad = _write(tmp_path / "bad.tar", mem, _manifest_for(mem, man))
    dest = tmp_path / "class" / "checkpoints"
    with pytest.raises(BundleError, match="does not load as"):
        bundle.import_bundle(bad, dest)
    assert not (tmp_path / "PWNED").exists()
    _untouched(dest)


def test_different_network_under_same_key_is_kept(built, tmp_path):
    dest = tmp_path / "class" / "checkpoints"
    e = built["keys"][1]
    mine = dest / e / "final.pt"
    mine.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(1)}}, mine)
    before = mine.read_bytes()
    with pytest.raises(BundleError, match=f"already holds a different network under {e}"):
        bundle.import_bundle(built["bundle"], dest)
    assert mine.read_bytes() == before
    assert not (dest / built["keys"][0]).exists()  # the other entry was not moved in either


@pytest.mark.slow
def test_cli_one_line(built, tmp_path):
    mem = _members(built["bundle"])
    mem["MANIFEST.json"] = mem["MANIFEST.json"].replace(__version__.encode(), b"9.9.9")
    bad = _write(tmp_path / "bad.tar", mem)
    env = dict(os.environ, APNB_STORE=str(tmp_path / "class"))
    p = subprocess.run([sys.executable, "-m", "apnb.cli", "store", "import", str(bad)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "made by apnb 9.9.9" in p.stderr, p.stderr
    ok = subprocess.run([sys.executable, "-m", "apnb.cli", "store", "import", str(built["bundle"])], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "imported 2 networks" in ok.stdout, ok.stderr
