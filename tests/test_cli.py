"""The command line (:mod:`apnb.cli`): help, and one line for an error."""
import pytest
from apnb import cli

pytestmark = pytest.mark.unit


def test_cli_help_and_errors(capsys, mini_repo):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "run" in capsys.readouterr().out
    assert cli.main(["run", "notebooks/n1.ipynb", "--profile", "nope"]) == 2
    assert "profile 'nope' not found" in capsys.readouterr().err
