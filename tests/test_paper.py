"""The paper's numbers (:mod:`apnb.paper`), quoted: spot checks against the paper's tables, and the
differences the claims quote."""
import pytest

from apnb import paper

pytestmark = pytest.mark.unit


def test_the_quoted_tables_hold_the_papers_values():
    t2 = paper.table2()
    teacher = t2[t2.method == "teacher"].iloc[0]
    assert (teacher.mAP, teacher.AUC, teacher.point_acc) == (91.83, 88.79, 80.21)  # Table 2, the full VGG16
    assert len(t2) == 13 and set(t2.method) == {"teacher", "naive", "ewa", "swa", "sswa"}
    for table in (paper.table2, paper.table3, paper.table4_5, paper.table6_7, paper.table8, paper.table9_10,
                  paper.table11, paper.table12):
        assert len(table()) > 0 and not table().isna().all().any(), table.__name__


def test_difference_picks_one_row_each():
    assert paper.difference(paper.table2(), "AUC", {"student": "VGG16/8", "method": "naive"},
                            {"student": "VGG16/8", "method": "sswa"}) == pytest.approx(88.06 - 78.74)
    with pytest.raises(KeyError, match="picks 3 rows"):
        paper.difference(paper.table2(), "AUC", {"method": "naive"}, {"method": "sswa"})
