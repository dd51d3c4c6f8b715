"""The import layers of the library: a module imports from its own layer or the layers below, never above.

A newcomer reads the package bottom-up in this order (``CONTRIBUTING.md``); a new module takes its place in
one layer here. Imports inside a function are held to the same rule, except the few listed in ``LAZY_UP``,
each with its reason.
"""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1] / "apnb"

LAYERS = [
    # 0: names, numbers and files; no network is built here (most of it without torch)
    ["apnb", "apnb.config", "apnb.literals", "apnb.kinds", "apnb.specs", "apnb.paper", "apnb.inference",
     "apnb.metrics", "apnb.records", "apnb.plots"],
    # 1: the networks, their compression and the data
    ["apnb.models", "apnb.compression", "apnb.gradcam", "apnb.quantization", "apnb.precision", "apnb.guards",
     "apnb.faithfulness", "apnb.sanity", "apnb.data", "apnb.data.voc", "apnb.data.imagenet", "apnb.data.cifar",
     "apnb.data.synthetic", "apnb.data.fixtures", "apnb.data.splits", "apnb.validate"],
    # 2: attributions, the matching term, training and the store, evaluation
    ["apnb.attribution", "apnb.matching", "apnb.work", "apnb.engine", "apnb.store", "apnb.evalcache",
     "apnb.evaluate", "apnb.retraining", "apnb.scrutiny"],
    # 3: the recipes, the claims and the report
    ["apnb.recipes", "apnb.claims", "apnb.report", "apnb.calibration"],
    # 4: running notebooks and books, the course, the command line
    ["apnb.runner", "apnb.batch", "apnb.bundle", "apnb.course", "apnb.cli"],
]
# lazy imports that reach up a layer, and why
LAZY_UP = {
    ("apnb.work", "apnb.runner"): "the compute count of a run reads the run's record and machine when asked",
}


def _modules():
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, p


def _imports(name: str, path: Path):
    """``(imported module, at top level)`` of every apnb import in ``path``."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top = {id(n) for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
           for n in ast.walk(stmt)}
    known = {m for m, _ in _modules()}
    for n in ast.walk(tree):
        targets = []
        if isinstance(n, ast.ImportFrom):
            mod = n.module or ""
            if n.level:
                base = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)]
                mod = ".".join(base + ([n.module] if n.module else []))
            if not mod.startswith("apnb"):
                continue
            subs = [f"{mod}.{a.name}" for a in n.names if f"{mod}.{a.name}" in known]
            targets = subs or [mod]
        elif isinstance(n, ast.Import):
            targets = [a.name for a in n.names if a.name.startswith("apnb")]
        for t in targets:
            if t != name:
                yield t, id(n) in top


def test_every_module_has_a_layer():
    placed = [m for layer in LAYERS for m in layer]
    assert sorted({m for m, _ in _modules()} - set(placed)) == [], "place the new module in a layer of LAYERS"


def test_no_upward_import():
    layer = {}
    for i, mods in enumerate(LAYERS):
        for m in mods:
            layer.setdefault(m, i)
    bad = []
    for name, path in _modules():
        for target, top in _imports(name, path):
            if layer[target] > layer[name] and (top or (name, target) not in LAZY_UP):
                bad.append(f"{name} (layer {layer[name]}) imports {target} (layer {layer[target]})"
                           f"{'' if top else ' inside a function'}")
    assert bad == [], "upward imports: " + "; ".join(bad)


def test_the_check_finds_an_upward_import(tmp_path, monkeypatch):
    """The rule itself, on a planted module: a layer-1 module importing the recipes is refused."""
    planted = ROOT / "models.py"
    src = planted.read_text() + "\nfrom . import recipes  # planted\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: src if self == planted else Path.open(self).read())
    with pytest.raises(AssertionError, match=r"apnb.models \(layer 1\) imports apnb.recipes \(layer 3\)"):
        test_no_upward_import()


def test_every_module_has_its_test_file():
    """``apnb/<module>.py`` is tested in ``tests/test_<module>.py`` (the ``apnb/data`` package in
    ``tests/test_data.py``)."""
    tests = Path(__file__).resolve().parent
    missing = [p.name for p in ROOT.glob("*.py") if p.stem != "__init__" and not (tests / f"test_{p.stem}.py").exists()]
    assert missing == [] and (tests / "test_data.py").exists(), f"add tests/test_<module>.py for {missing}"
