"""Run records: a tidy results file written beside each executed notebook.

A notebook logs rows with :func:`log`; the runner (:mod:`apnb.runner`) adds the parameters, seed, git
commit and wall time once the notebook has finished. Rows are long-format: one observation per row,
``{"table": ..., <identifying keys>..., "metric": ..., "value": ...}``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

from .config import atomic_write_text

ENV = "APNB_RECORD"


def record_path() -> Path:
    """Where rows go: ``$APNB_RECORD`` (set by the runner), else ``results.json`` in the working dir."""
    return Path(os.environ.get(ENV, "results.json"))


def _clean(v: Any):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def load(path: str | os.PathLike | None = None) -> dict:
    p = Path(path) if path else record_path()
    if not p.exists():
        return {"rows": []}
    return json.loads(p.read_text())


def _add_work(rec: dict) -> dict:
    """Add the work counted since the last write (:mod:`apnb.work`, TFLOP per phase) to ``rec["work"]``."""
    import sys

    work = sys.modules.get("apnb.work")  # loaded (and counting) only where torch is: never imported from here
    if work is not None and work.enabled() and os.environ.get("RANK", "0") == "0":
        done = work.take()
        if any(done.values()):
            acc = rec.setdefault("work", {})
            for k, v in done.items():
                acc[k] = acc.get(k, 0.0) + v
    return rec


def add_work() -> None:
    """Write the work counted so far into the run record (inside ``apnb run`` only)."""
    if ENV not in os.environ or os.environ.get("RANK", "0") != "0":
        return
    p = record_path()
    atomic_write_text(p, json.dumps(_add_work(load(p)), indent=1))


def log(table: str, rows: Iterable[dict], path: str | os.PathLike | None = None) -> None:
    """Append rows to ``table``. Each row needs ``metric`` and ``value``; other keys identify it."""
    p = Path(path) if path else record_path()
    rec = _add_work(load(p)) if path is None else load(p)
    for r in rows:
        if "metric" not in r or "value" not in r:
            raise ValueError(f"record row needs 'metric' and 'value' keys, got {sorted(r)}")
        rec["rows"].append({"table": table, **{k: _clean(v) for k, v in r.items()}})
    atomic_write_text(p, json.dumps(rec, indent=1))


def tally(counter: str, entry: str | None = None) -> None:
    """Count one event in the record's ``store`` header (``trained``, ``loaded``: networks of the checkpoint
    store), for the book's execution page, and list the store ``entry`` it concerns under ``store.entries``
    (a run whose networks are gone from the store is stale: :func:`apnb.runner.is_current`). Only inside
    ``apnb run`` (``$APNB_RECORD`` set); else nothing."""
    if ENV not in os.environ or os.environ.get("RANK", "0") != "0":  # one writer under torchrun
        return
    p = record_path()
    rec = _add_work(load(p))
    store = rec.setdefault("store", {})
    store[counter] = store.get(counter, 0) + 1
    if entry is not None and entry not in store.setdefault("entries", []):
        store["entries"].append(entry)
    atomic_write_text(p, json.dumps(rec, indent=1))


def log_frame(table: str, df, id_cols: list[str], path=None) -> None:
    """Log a wide pandas frame: every non-id column becomes a metric."""
    long = df.melt(id_vars=id_cols, var_name="metric", value_name="value")
    log(table, long.to_dict("records"), path)


def finalize(path: str | os.PathLike, **header) -> dict:
    """Add header fields (parameters, seed, commit, wall time...) to a record, atomically."""
    rec = load(path)
    rec.update(header)
    atomic_write_text(path, json.dumps(rec, indent=1))
    return rec


def frame(path: str | os.PathLike | None = None, table: str | None = None):
    """The record's rows as a pandas DataFrame (optionally one table)."""
    import pandas as pd

    df = pd.DataFrame(load(path)["rows"])
    if table is not None and len(df):
        df = df[df["table"] == table].dropna(axis=1, how="all")
    return df


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "apnb", "notebooks", "profiles"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
