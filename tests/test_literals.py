"""Parameters as plain data (:mod:`apnb.literals`): every YAML tag refused in one line; injected cells read back."""
import ast

import pytest

from apnb import cli, literals, runner

pytestmark = pytest.mark.unit
NASTY = 'a "quoted" \'one\'\nnew line """ \\ " + str(__import__("os").system("touch PWNED")) + " \u2028 \U0001F600'


@pytest.mark.parametrize("text,tag", [("!!binary aGVsbG8=", "!!binary"), ("!!set {a, b}", "!!set"),
                                      ("!!python/object/apply:os.system [ls]", "!!python/object/apply:os.system"),
                                      ("!!python/name:os.system", "!!python/name:os.system"),
                                      ("2024-01-01", "!!timestamp"), ("{x: [1, !!binary aGk=]}", "!!binary")])
def test_every_tag_is_refused_with_one_line(text, tag, capsys):
    with pytest.raises(literals.PlainDataError) as e:
        literals.load(text, "-p record", "record")
    assert tag in str(e.value) and "-p record line 1" in str(e.value) and "\n" not in str(e.value)
    assert cli.main(["run", "notebooks/12_calibration.ipynb", "--profile", "smoke", "-p", "record", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and tag in err[0]


def test_the_injected_cell_reads_back_to_the_same_values(repo):
    params = {"a": 3, "s": NASTY, "data_root": "data/d", "nested": {"k": [1, 2.5, None, True, "q\"'"]}}
    node = runner.parameterized(repo / "notebooks" / "n1.ipynb", params)
    cell = next(c for c in node.cells if "injected-parameters" in c.metadata["tags"])
    tree = ast.parse(cell.source)
    assert all(isinstance(s, ast.Assign) for s in tree.body)  # assignments of literals, nothing else
    got = {s.targets[0].id: ast.literal_eval(s.value) for s in tree.body}
    assert got == params
    for bad in (b"bytes", {1, 2}, float("inf"), object()):
        with pytest.raises(TypeError):
            literals.parameters_cell({"x": bad})
