"""The shared figure (:func:`apnb.plots.seed_panels`): one panel per metric, the seed means, the teacher line."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from apnb import plots

pytestmark = pytest.mark.unit


def _frame():
    rows = [{"method": m, "seed": s, "AUC": base + 0.01 * s, "cos": 0.5 + base / 2}
            for m, base in [("naive", 0.6), ("sswa", 0.8)] for s in range(3)]
    return pd.DataFrame(rows)


def test_panels_show_seed_means_and_the_teacher_line_where_it_has_the_metric():
    fig, axes = plots.seed_panels(_frame(), ["AUC", "cos"], order=["naive", "sswa"], reference={"AUC": 0.9, "mAP": 1.0},
                                  suptitle="t")
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["AUC", "cos"]
    # the pointplot's line joins the seed means, in the given order (then one line per interval)
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), [0.61, 0.81])
    dashed = [ln for ln in axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(0.9)
    # no teacher value for the cosine (its maps are the reference): no line there
    assert not [ln for ln in axes[1].get_lines() if ln.get_linestyle() == "--"]
    assert axes[0].get_legend() is not None and axes[1].get_legend() is None
    assert fig._suptitle.get_text() == "t"


def test_nan_reference_draws_no_line_and_bad_input_is_named():
    _, axes = plots.seed_panels(_frame(), ["AUC"], reference={"AUC": float("nan")}, legend="none")
    assert not [ln for ln in axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert axes[0].get_legend() is None
    with pytest.raises(KeyError, match="no column"):
        plots.seed_panels(_frame(), ["mAP"])
    with pytest.raises(ValueError, match="legend="):
        plots.seed_panels(_frame(), ["AUC"], legend="all")
