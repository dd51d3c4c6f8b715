"""The book speaks of itself alone: no paths outside the repository and no words about how it was built.

Checked on every file a reader meets (notebook sources, book pages, the README)."""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "book").glob("*.md"), ROOT / "README.md"])
# a word about the process that built the book, not about the book; each with what it would look like
PROCESS = [
    (r"\.\./shared", "a path outside the repository"),
    (r"/shared/(paper|notes)", "a path outside the repository"),
    (r"\bsessions?\b", "the work session that built it"),
    (r"feasibility (probe|note)", "a development probe"),
    (r"\bthe issue'?s?\b|\bissue #?\d+", "an issue tracker's task"),
    (r"\bbudget\b(?! of \d+ backward)", "someone's time budget (a compute budget of N passes is fine)"),
    (r"\bassignment\b", "someone's assignment"),
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_process_words(path):
    text = path.read_text()
    hits = [f"{why}: ...{text[max(0, m.start() - 40):m.end() + 40]!r}..." for rx, why in PROCESS
            for m in re.finditer(rx, text, flags=re.IGNORECASE)]
    assert not hits, f"{path.relative_to(ROOT)}:\n" + "\n".join(hits[:5])


def test_the_checks_catch_what_they_are_for():
    bad = "as the feasibility probe in ../shared/notes found, this session's budget"
    assert sum(bool(re.search(rx, bad, flags=re.IGNORECASE)) for rx, _ in PROCESS) >= 4
    assert not any(re.search(rx, "each gets the same budget of 10 backward passes", flags=re.IGNORECASE)
                   for rx, _ in PROCESS)
