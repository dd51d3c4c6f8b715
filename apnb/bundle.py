"""Store bundles: the finished networks of one profile in one archive, so that a class (or a reader) loads
what one machine trained instead of training it again.

``export`` collects every store entry that the run records of a profile list (``build/runs/<profile>``, the
``store.entries`` of each ``*.results.json``), with those records and the store's kept scores
(:mod:`apnb.evalcache`, keyed by the weights they score), into a tar archive whose ``MANIFEST.json``
gives each file's SHA-256 and size, the library and torch versions and each network's precision.

``import_bundle`` trusts nothing in the archive until it is checked: every member must be a regular file at
one of the three paths a bundle holds (no link, no absolute or ``..`` path, nothing outside the store); the
manifest's library version must be this one; every sum must match; every network must load with
``torch.load(..., weights_only=True)``; and an entry the store already holds must be the same bytes. Only
then is anything moved into the store (each entry under its store lock, by rename), so a refused bundle
leaves the store as it was. Each refusal is one :class:`BundleError` line.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
import warnings
import zlib
from pathlib import Path

from . import __version__
from .config import atomic_path, atomic_write_text, store_dir

__all__ = ["BundleError", "export", "import_bundle", "FORMAT"]

FORMAT = 1
MANIFEST = "MANIFEST.json"
ENTRY = re.compile(r"(teacher|student|pruned|structured|quantized)-[0-9a-f]{16}")
ENTRY_FILES = ("final.pt", "cfg.json")
_MEMBER = re.compile(r"^(?:MANIFEST\.json"
                     r"|checkpoints/(?:teacher|student|pruned|structured|quantized)-[0-9a-f]{16}/(?:final\.pt|cfg\.json)"
                     r"|records/[A-Za-z0-9_.-]+\.results\.json"
                     r"|evaluations/[0-9a-f]{32}\.pt)$")


class BundleError(RuntimeError):
    """A bundle cannot be written or is refused; the message names the file and the fix."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _records(runs: Path) -> list[Path]:
    """The finished run records under ``runs`` (a profile's folder and its ``overrides-*`` folders)."""
    return sorted(p for p in runs.rglob("*.results.json") if not p.name.startswith("."))


def _precision(cfg: dict) -> str:
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    return str(train.get("precision", "fp32"))


def export(bundle: str | os.PathLike, profile: str = "demo", runs: str | os.PathLike | None = None,
           store: str | os.PathLike | None = None) -> dict:
    """Write ``bundle`` (``.tar``, or gzip-compressed for ``.tar.gz``/``.tgz``) with the networks the run
    records of ``profile`` list; return the manifest. Refuses, before writing, when a listed network is not
    finished in the store."""
    import torch

    from .runner import runs_dir

    runs = Path(runs) if runs else runs_dir(profile)
    root = Path(store) if store else store_dir() / "checkpoints"
    recs = _records(runs)
    if not recs:
        raise BundleError(f"no run records under {runs}: build the profile first (apnb book --profile {profile})")
    entries: dict[str, None] = {}
    for r in recs:
        try:
            rec = json.loads(r.read_text())
        except ValueError as e:
            raise BundleError(f"{r}: not a JSON run record ({e}); re-run its notebook") from e
        for e in rec.get("store", {}).get("entries", []):
            entries.setdefault(e, None)
    missing = [e for e in entries if not (root / e / "final.pt").is_file()]
    if missing:
        raise BundleError(f"the store {root} lacks {len(missing)} network(s) the records list (first: {missing[0]}): "
                          f"re-run the profile (apnb book --profile {profile}) so that they are trained, then export")
    names = {}
    manifest = {"format": FORMAT, "apnb": __version__, "torch": torch.__version__, "profile": profile,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "entries": {}, "records": {},
                "evaluations": {}}
    for e in entries:
        cfg = json.loads((root / e / "cfg.json").read_text()) if (root / e / "cfg.json").is_file() else {}
        files = {}
        for f in ENTRY_FILES:
            p = root / e / f
            if p.is_file():
                files[f] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
                names[f"checkpoints/{e}/{f}"] = p
        manifest["entries"][e] = {"files": files, "precision": _precision(cfg)}
    for r in recs:
        arc = "records/" + "__".join(r.relative_to(runs).parts)
        manifest["records"][arc] = {"sha256": _sha256(r), "bytes": r.stat().st_size}
        names[arc] = r
    evals = root.parent / "evaluations"  # the scores kept in the store (apnb.evalcache), keyed by the weights
    for p in sorted(evals.glob("*.pt")) if evals.is_dir() else []:
        if re.fullmatch(r"[0-9a-f]{32}\.pt", p.name):
            arc = f"evaluations/{p.name}"
            manifest["evaluations"][arc] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
            names[arc] = p
    bundle = Path(bundle)
    mode = "w:gz" if bundle.name.endswith((".tar.gz", ".tgz")) else "w"
    with atomic_path(bundle) as tmp:
        with tarfile.open(tmp, mode) as tar:
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            for arc, p in names.items():
                tar.add(p, arcname=arc, recursive=False)
    return manifest


def _check_member(m: tarfile.TarInfo, bundle: Path) -> None:
    if not m.isfile():
        what = "a link" if (m.issym() or m.islnk()) else "a folder" if m.isdir() else "not a plain file"
        raise BundleError(f"{bundle}: member {m.name!r} is {what}; a bundle holds plain files only: "
                          f"refused, nothing imported")
    if not _MEMBER.match(m.name):
        raise BundleError(f"{bundle}: member {m.name!r} is not a path a bundle holds (MANIFEST.json, "
                          f"checkpoints/<entry>/final.pt or cfg.json, records/*.results.json, evaluations/<key>.pt): refused, "
                          f"nothing imported")


def _read(bundle: Path, into: Path) -> dict:
    """Extract ``bundle`` into the empty folder ``into`` after checking every member's path and type; return
    its manifest."""
    try:
        with open(bundle, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        if gz:  # read the compressed stream to its end first: its CRC and length catch a cut or damaged copy
            with gzip.open(bundle, "rb") as f:
                while f.read(1 << 20):
                    pass
        with tarfile.open(bundle, "r:gz" if gz else "r:") as tar:
            members = tar.getmembers()  # reads the whole index: a truncated archive fails here
            for m in members:
                _check_member(m, bundle)
            if len({m.name for m in members}) != len(members):
                raise BundleError(f"{bundle}: a member appears twice: refused, nothing imported")
            for m in members:
                tar.extract(m, into, filter="data")
    except tarfile.FilterError as e:
        raise BundleError(f"{bundle}: member {e.tarinfo.name!r} would land outside the store ({e}): refused, "
                          f"nothing imported") from e
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise BundleError(f"{bundle}: not a complete bundle ({type(e).__name__}: {e}); the archive is truncated "
                          f"or damaged: copy it again") from e
    mf = into / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST}: not an apnb store bundle")
    try:
        return json.loads(mf.read_text())
    except ValueError as e:
        raise BundleError(f"{bundle}: {MANIFEST} is not JSON ({e}): not an apnb store bundle") from e


def import_bundle(bundle: str | os.PathLike, store: str | os.PathLike | None = None) -> dict:
    """Check ``bundle`` whole, then add its networks and kept scores to the store (``$APNB_STORE``) and its run
    records to ``<store>/bundles/<profile>-<sha12>/``. Returns ``{"added": [...], "present": [...], "records":
    folder, "evaluations": <scores added>}``.
    Nothing is moved into the store unless every check passes."""
    import torch

    from .store import Store

    bundle = Path(bundle)
    if not bundle.is_file():
        raise BundleError(f"{bundle}: no such bundle file; give the path of an archive `apnb store export` wrote")
    st = Store(Path(store) if store else None)
    if not st.writable():
        raise BundleError(f"the store {st.root} is read-only: point APNB_STORE at a folder you can write")
    st.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=st.root) as tmp:
        tmp = Path(tmp)
        man = _read(bundle, tmp)
        if man.get("format") != FORMAT:
            raise BundleError(f"{bundle}: bundle format {man.get('format')!r}, this apnb reads format {FORMAT}")
        if man.get("apnb") != __version__:
            raise BundleError(f"{bundle}: made by apnb {man.get('apnb')}, this is apnb {__version__}: its store keys "
                              f"differ; export it again with this version, or install apnb {man.get('apnb')}")
        listed = {f"checkpoints/{e}/{f}": v for e, spec in man.get("entries", {}).items()
                  for f, v in spec.get("files", {}).items()}
        listed.update(man.get("records", {}))
        listed.update(man.get("evaluations", {}))
        present = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()} - {MANIFEST}
        if present != set(listed):
            odd = sorted(present ^ set(listed))[0]
            raise BundleError(f"{bundle}: {odd} is {'missing from the archive' if odd in listed else 'not in the manifest'}: "
                              f"the bundle was altered or cut short: refused, nothing imported")
        for name, v in sorted(listed.items()):
            if _sha256(tmp / name) != v.get("sha256"):
                raise BundleError(f"{bundle}: {name} does not match its SHA-256 in the manifest (altered or damaged): "
                                  f"refused, nothing imported")
        for name in man.get("evaluations", {}):  # read back like any entry before it is kept
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.load(tmp / name, map_location="cpu", weights_only=True)
            except Exception as err:
                raise BundleError(f"{bundle}: {name} does not load as data ({type(err).__name__}): refused, "
                                  f"nothing imported") from err
        added, same = [], []
        for e in man.get("entries", {}):
            if not ENTRY.fullmatch(e) or not (tmp / "checkpoints" / e / "final.pt").is_file():
                raise BundleError(f"{bundle}: entry {e!r} has no network: refused, nothing imported")
            try:
                with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the refusal says it
                    warnings.simplefilter("ignore")
                    torch.load(tmp / "checkpoints" / e / "final.pt", map_location="cpu", weights_only=True)
            except Exception as err:
                raise BundleError(f"{bundle}: {e}/final.pt does not load as weights ({type(err).__name__}): "
                                  f"refused, nothing imported") from err
            held = st.root / e / "final.pt"
            if held.is_file():
                if _sha256(held) != man["entries"][e]["files"]["final.pt"]["sha256"]:
                    raise BundleError(f"{bundle}: the store already holds a different network under {e}: refused, "
                                      f"nothing imported (keep both apart with APNB_STORE=<another folder>)")
                same.append(e)
            else:
                added.append(e)
        for e in added:  # every check passed: move each entry in under its lock
            src = tmp / "checkpoints" / e
            with st.entry_lock(e):
                dst = st.root / e
                if (dst / "final.pt").exists():
                    continue  # trained here meanwhile by another process: keep it
                dst.mkdir(parents=True, exist_ok=True)
                if (src / "cfg.json").is_file():
                    os.replace(src / "cfg.json", dst / "cfg.json")
                for resume in dst.glob("*.ckpt"):  # an interrupted training here is superseded
                    resume.unlink(missing_ok=True)
                os.replace(src / "final.pt", dst / "final.pt")  # last: the entry is finished when this exists
        scores = 0
        for name in man.get("evaluations", {}):
            dst = st.root.parent / name
            if not dst.exists():  # same key, same inputs: a score already here is kept
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / name, dst)
                scores += 1
        digest = _sha256(tmp / MANIFEST)[:12]
        dest = st.root.parent / "bundles" / f"{man.get('profile', 'profile')}-{digest}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in man.get("records", {}):
            os.replace(tmp / name, dest / Path(name).name)
        atomic_write_text(dest / MANIFEST, (tmp / MANIFEST).read_text())
    return {"added": added, "present": same, "records": dest, "evaluations": scores}

