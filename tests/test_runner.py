import json
from pathlib import Path

import nbformat
import pytest

from apnb import runner

pytestmark = pytest.mark.unit


def test_params_merge_and_unknown_keys(mini_repo):
    nb = mini_repo / "notebooks" / "n1.ipynb"
    assert runner.toc_notebooks() == [nb]
    assert runner.params_for(nb, "p") == {"a": 2, "b": "y"}  # defaults filtered to declared names
    with pytest.raises(runner.RunError, match="not in its parameters cell"):
        runner.params_for(nb, "bad")
    with pytest.raises(runner.RunError, match="profile 'nope' not found.*available profiles are bad, p"):
        runner.load_profile("nope")


def test_a_dotted_override_replaces_one_field_of_a_recipe(mini_repo):
    """``-p recipe.field VALUE``: one field of a recipe mapping, the others as the profile gives them."""
    prof = mini_repo / "profiles"
    prof.joinpath("r.yml").write_text("defaults: {a: {x: 1, y: 2}}\n")
    nb = mini_repo / "notebooks" / "n1.ipynb"
    assert runner.params_for(nb, "r", {"a.y": 5}) == {"a": {"x": 1, "y": 5}}
    assert runner.params_for(nb, "r", {"a": {"x": 9}}) == {"a": {"x": 9}}  # whole: replaced whole
    with pytest.raises(runner.RunError, match="parameter b is not a mapping"):
        runner.params_for(nb, "r", {"b.z": 1})
    with pytest.raises(runner.RunError, match=r"parameters \['c'\] are not in its parameters cell"):
        runner.params_for(nb, "r", {"c.z": 1})


def test_recipe_mappings_are_checked_field_by_field():
    from apnb import validate

    ok = {"layer": "last_conv", "p": 0.3, "beta": {"sswa": 3.0}}
    validate.check("nb", {"matching": ok, "kd": {"div": 2, "T": 4.0, "alpha": 0.9, "train": {"epochs": 1, "lr": 0.1}}})
    for name, value, match in [("matching", dict(ok, p=1.5), "matching = .*p: "),
                               ("matching", dict(ok, beta={"swa": -1}), "beta=-1"),
                               ("matching", {"layer": "last_conv"}, r"missing fields \['p', 'beta'\]"),
                               ("kd", {"div": 0, "T": 4, "alpha": 0.9, "train": {}}, "div: must be an integer"),
                               ("structured", {"rate": 0.7, "finetune": {"epochs": 1}, "rho": 1}, r"unknown fields \['rho'\]"),
                               ("unstructured", {"iterations": 2, "finetune": {"lr": -1}}, "finetune: .*lr")]:
        with pytest.raises(validate.ParameterError, match=match):
            validate.check("nb", {name: value})
    with pytest.raises(validate.ParameterError, match="kd.div = 3 must be one of student_divs"):
        validate.check("nb", {"kd": {"div": 3, "T": 4.0, "alpha": 0.9, "train": {"epochs": 1}}, "student_divs": [2, 4]})


def test_benchmark_and_teacher_mappings_are_checked(tmp_path):
    """The benchmark (data, scored layer, premise guards) and the teachers (``*_recipe``) are mappings checked
    like the recipes; a real dataset (synth off) or a masks file that is not there is named before anything runs."""
    from apnb import validate

    synth = {"classes": 3, "n_train": 8, "n_val": 4, "n_seg": 4, "size": 32}
    teacher = {"spec": {"arch": "vgg16_bn", "width_div": 16}, "pretrained": False, "train": {"epochs": 1}}
    bench = {"root": str(tmp_path / "new"), "synth": synth, "image_size": 32, "eval_layer": "last_conv",
             "guards": {"teacher_map": 0.85}}
    real = dict(bench, root=str(tmp_path), synth=None)
    validate.check("nb", {"benchmark": bench, "teacher_recipe": teacher, "vgg_recipe": dict(teacher, train=None)})
    validate.check("nb", {"benchmark": real})
    for name, value, match in [
            ("benchmark", {"root": "x", "synth": synth}, r"missing fields \['image_size', 'eval_layer', 'guards'\]"),
            ("benchmark", dict(bench, synth=dict(synth, classes=99)), "synth: .*classes=99"),
            ("benchmark", dict(bench, guards={"teacher_map": 2}), "guards: .*teacher_map=2"),
            ("benchmark", dict(bench, eval_layer=""), "eval_layer: must be a layer name"),
            ("benchmark", dict(real, root=str(tmp_path / "VOC")), "benchmark.root = .*VOC' does not exist"),
            ("benchmark", dict(real, gtsegs=str(tmp_path / "g.mat")), "benchmark.gtsegs = .*does not exist"),
            ("teacher_recipe", dict(teacher, pretrained="yes"), "pretrained: must be true or false"),
            ("teacher_recipe", dict(teacher, spec={"arch": "vgg99"}), "spec: unknown arch"),
            ("resnet_recipe", {"spec": {"arch": "resnet34"}, "epochs": 3}, r"unknown fields \['epochs'\]"),
            ("vgg_recipe", dict(teacher, train={"lr": -1}), "train: .*lr")]:
        with pytest.raises(validate.ParameterError, match=match):
            validate.check("nb", {name: value})


def test_a_profile_extends_another(mini_repo):
    """``extends``: the base's values, then the profile's, key by key (a mapping value is replaced whole)."""
    prof = mini_repo / "profiles"
    prof.joinpath("base.yml").write_text("defaults: {a: 1, b: {x: 1, y: 2}}\nnotebooks: {n1: {b: {x: 5}}, n2: {a: 7}}\n")
    prof.joinpath("child.yml").write_text("extends: base\ndefaults: {a: 3}\nnotebooks: {n1: {a: 4}}\n")
    prof.joinpath("typo.yml").write_text("extend: base\ndefaults: {}\n")
    c = runner.load_profile("child")
    assert c["defaults"] == {"a": 3, "b": {"x": 1, "y": 2}}
    assert c["notebooks"] == {"n1": {"b": {"x": 5}, "a": 4}, "n2": {"a": 7}}
    assert runner.params_for(mini_repo / "notebooks" / "n1.ipynb", "child") == {"a": 4, "b": {"x": 5}}
    with pytest.raises(runner.RunError, match="unknown top-level keys.*extend"):
        runner.load_profile("typo")


def test_run_records_and_skips_unchanged(mini_repo):
    logs = []
    out = runner.run_notebook(mini_repo / "notebooks" / "n1.ipynb", "p", log=logs.append)
    rec = json.loads((out.parent / "n1.results.json").read_text())
    assert rec["parameters"] == {"a": 2, "b": "y"} and rec["overrides"] == {"a": 2, "b": "y"} and rec["rows"][0]["value"] == 2 and "commit" in rec
    runner.run_notebook(mini_repo / "notebooks" / "n1.ipynb", "p", log=logs.append)
    assert "unchanged" in logs[-1]
    (mini_repo / "apnb" / "x.py").write_text("A = 2\n")  # a change in apnb re-runs
    runner.run_notebook(mini_repo / "notebooks" / "n1.ipynb", "p", log=logs.append)
    assert "done" in logs[-1]


def test_failed_cell_names_the_notebook(mini_repo):
    nb = nbformat.read(mini_repo / "notebooks" / "n1.ipynb", 4)
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('boom')"))
    nbformat.write(nb, mini_repo / "notebooks" / "n1.ipynb")
    with pytest.raises(runner.RunError, match="n1.ipynb failed .*ValueError: boom"):
        runner.run_notebook(mini_repo / "notebooks" / "n1.ipynb", "p", log=lambda s: None)
    assert (runner.runs_dir("p") / "n1.failed.ipynb").exists()
    # nothing half-written is left: no partial record, no temporary notebook, no record at all
    left = [p.name for p in runner.runs_dir("p").iterdir() if "partial" in p.name or ".tmp." in p.name]
    assert left == [] and not (runner.runs_dir("p") / "n1.results.json").exists()


def test_parameter_cells_hold_the_demo_profile():
    """The demo profile is the one source: each notebook's own parameter literals equal its demo values
    (`apnb.runner.sync_parameter_cells` rewrites them), so stored networks are shared across notebooks."""
    from apnb import runner

    for nb in runner.toc_notebooks():
        declared = runner.notebook_parameters(nb)
        for k, v in runner.params_for(nb, "demo").items():
            if k != "profile":
                assert declared[k] == v, f"{nb.name}: parameter {k} = {declared[k]!r}, demo profile {v!r}"


def test_for_readers_folds_parameters_removes_imports_and_progress_widgets(tmp_path):
    nb = nbformat.v4.new_notebook()
    imp = nbformat.v4.new_code_cell("import time\nfrom apnb import report")
    par = nbformat.v4.new_code_cell("a = 1")
    par.metadata["tags"] = ["parameters"]
    inj = nbformat.v4.new_code_cell("a = 2")
    inj.metadata["tags"] = ["injected-parameters"]
    work = nbformat.v4.new_code_cell("import numpy as np\nx = np.zeros(2)")
    work.outputs = [nbformat.v4.new_output("display_data", {"application/vnd.jupyter.widget-view+json": {"model_id": "m"},
                                                            "text/plain": "students:  8%|#  | 1/12"}),
                    nbformat.v4.new_output("execute_result", {"text/plain": "array([0., 0.])"}, execution_count=1)]
    nb.cells = [imp, par, inj, work]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"m": {"state": {
        "value": "7/7 [00:07<00:00,  1.18s/it]"}}}, "version_major": 2, "version_minor": 0}}
    nbformat.write(nb, tmp_path / "ex.ipynb")
    out = nbformat.read(runner.for_readers(tmp_path / "ex.ipynb", tmp_path / "book" / "ex.ipynb"), as_version=4)
    assert [c.metadata.get("tags") for c in out.cells] == [["remove-cell"], ["parameters", "hide-cell"],
                                                          ["injected-parameters", "hide-cell"], []]
    assert [o["output_type"] for o in out.cells[3].outputs] == ["execute_result"]  # the bar is gone, the result kept
    assert "widgets" not in out.metadata  # and so is its saved state, which the page would embed
    assert nbformat.read(tmp_path / "ex.ipynb", as_version=4).cells[0].metadata.get("tags") is None  # source untouched


def test_run_records_reads_each_or_names_the_command(mini_repo):
    runs = runner.runs_dir("p")
    runs.mkdir(parents=True)
    (runs / "n1.results.json").write_text(json.dumps({"rows": [], "commit": "abc"}))
    assert runner.run_records("p", ["n1"]) == {"n1": {"rows": [], "commit": "abc"}}
    with pytest.raises(FileNotFoundError, match=r"n2.results.json is missing: run `apnb run notebooks/n2.ipynb --profile p`"):
        runner.run_records("p", ["n1", "n2"])


def test_a_notebook_that_reads_other_records_comes_after_them_in_the_toc():
    """The book and the test fixtures run notebooks in toc order, so a page that reads another's record
    (29 reads the studies and the paper's chapters, 31 reads every chapter) must come after it."""
    import re

    order = [nb.stem for nb in runner.toc_notebooks()]
    for i, nb in enumerate(runner.toc_notebooks()):
        code = "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
        if "run_records" not in code:
            continue
        named = set(re.findall(r"\b\d\d_[a-z_]+\b", code)) & set(order)
        later = sorted(s for s in named if order.index(s) > i)
        assert not later, f"{nb.stem} reads the records of {later}, which come after it in _toc.yml"
        if "toc_notebooks()" in code:  # it reads every chapter: it must be the last
            assert i == len(order) - 1, f"{nb.stem} reads every chapter's record but is not the last notebook of _toc.yml"


def test_store_runs_and_data_resolve_against_one_root(tmp_path, monkeypatch):
    """Every relative path (store, runs, a profile's data_root) lives under apnb.config.project_root, whatever
    the working directory."""
    import apnb
    from apnb import config
    from apnb.data import splits

    proj = tmp_path / "proj"
    monkeypatch.setenv("APNB_ROOT", str(proj))
    monkeypatch.delenv("APNB_STORE", raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert config.store_dir() == proj / "build" / "store"
    assert runner.runs_dir("demo") == proj / "build" / "runs" / "demo"
    assert config.resolve_path("build/data/x") == proj / "build" / "data" / "x"
    assert config.resolve_path(tmp_path / "abs") == tmp_path / "abs"
    monkeypatch.setenv("APNB_STORE", "other/store")
    assert config.store_dir() == proj / "other" / "store"
    d = splits.voc_data("build/data/tiny", {"classes": 2, "n_train": 8, "n_val": 4, "n_seg": 4, "n_pretrain": 4,
                                            "size": 32, "seed": 0}, 32)
    assert d["root"].is_relative_to(proj / "build" / "data" / "tiny") and not (tmp_path / "elsewhere" / "build").exists()
    monkeypatch.delenv("APNB_ROOT")
    assert config.project_root() == Path(apnb.__file__).resolve().parent.parent
