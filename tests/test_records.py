"""Run records (:mod:`apnb.records`): rows that name their metric and value."""
import pytest
from apnb import records

pytestmark = pytest.mark.unit


def test_record_rows_need_metric_and_value(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        records.log("t", [{"x": 1}], tmp_path / "r.json")
