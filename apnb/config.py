"""Device resolution, project paths and atomic file writes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

_DEVICE = None  # torch.device, resolved once; torch itself is imported on first use (the parameter check does not)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when available, else CPU. Resolved once per process and cached.

    Never call ``.cuda()`` elsewhere: pass the device returned here down.
    """
    global _DEVICE
    import torch

    if isinstance(device, torch.device):
        return device
    if device != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device: auto or cpu")
        return dev
    if _DEVICE is None:
        _DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _DEVICE


CHECKOUT = Path(__file__).resolve().parent.parent  # the folder that holds the package, _toc.yml and profiles/


def project_root() -> Path:
    """The one root that every relative path of the project is resolved against: ``$APNB_ROOT``, else the
    checkout that holds the package. Under it: the checkpoint store (``build/store``), the executed notebooks
    and their run records (``build/runs/<profile>``), the generated data (``build/data``), a profile's
    relative ``data_root`` and the notebooks' working directory."""
    return Path(os.environ.get("APNB_ROOT", CHECKOUT))


def resolve_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else ``path`` under :func:`project_root` (not the working directory)."""
    path = Path(path)
    return path if path.is_absolute() else project_root() / path


def store_dir() -> Path:
    """Root of the checkpoint store: ``$APNB_STORE``, default ``build/store``, resolved by :func:`resolve_path`."""
    return resolve_path(os.environ.get("APNB_STORE", "build/store"))


def umask() -> int:
    """The process's file-creation mask (read without changing it where Linux shows it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the same folder; rename it onto ``path`` only if the block succeeds. The file
    gets the mode a plain ``open`` would (``0666`` less the umask), not ``mkstemp``'s private ``0600``, so a
    store or runs folder shared by a group stays readable to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


class DiskFullError(OSError):
    """A write ran out of disk space; the message says where and how much was free."""


def _no_space_message(path: Path, err: BaseException) -> str | None:
    """The one-line error for a write that failed for want of space, or None when space was not the cause.

    A full disk shows up in ``torch.save`` as a short write, which its zip writer reports as
    ``unexpected pos A vs B`` or ``file write failed`` rather than as ``ENOSPC``."""
    text = str(err)
    short_write = "unexpected pos" in text or "failed writing file" in text or "file write failed" in text
    if not (getattr(err, "errno", None) == 28 or "No space left" in text or short_write):
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if short_write and free is not None and free > (512 << 20):
        return None  # plenty of room: some other failure, shown as it is
    room = f"{free / 2**20:.0f} MiB free" if free is not None else "free space unknown"
    return (f"no space left writing {path} ({room}): free disk space, or point APNB_STORE (and the runs folder, "
            f"via `make clean`) to a larger disk, then re-run; finished networks in the store are kept")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`; a full disk becomes one :class:`DiskFullError` line."""
    import torch

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (RuntimeError, OSError) as e:
        msg = _no_space_message(path, e)
        if msg is None:
            raise
        raise DiskFullError(28, msg) from e


def config_key(cfg: dict) -> str:
    """The store's key of a configuration: the first 16 hex digits of the SHA-256 of its sorted JSON."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
