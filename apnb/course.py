"""Student versions of the book's notebooks: cells tagged ``solution`` are replaced by an empty exercise cell.

``apnb course OUT`` writes them (fastai's ``clean.py`` habit: course versions are generated, not forked).
The rendered book shows the solutions folded (``hide-cell``).
"""
from __future__ import annotations

from pathlib import Path

import nbformat


def strip_solutions(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Copy of ``nb`` with every ``solution`` cell replaced by an empty code cell tagged ``exercise``."""
    out = nbformat.from_dict(nb)
    n = 0
    cells = []
    for c in out.cells:
        if "solution" in c.metadata.get("tags", []):
            n += 1
            cells.append(nbformat.v4.new_code_cell("# your solution here\n", metadata={"tags": ["exercise"]}))
        else:
            cells.append(c)
    out.cells = cells
    return out, n


def write_course(out_dir: str | Path, notebooks: list[Path]) -> list[Path]:
    """Write the student notebooks of ``notebooks`` (only those with exercises) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in notebooks:
        nb, n = strip_solutions(nbformat.read(p, 4))
        if n:
            target = out_dir / p.name
            nbformat.write(nb, target)
            written.append(target)
    return written
