"""The figures the chapters share.

:func:`seed_panels` is the figure of Tables 2-7 and their studies: one panel per metric, the mean over seeds
of each method (or bit width, or variant) with its 95 % bootstrap interval (seaborn's pointplot), and a dashed
line at the uncompressed network's value, where that network has one (it has no cosine to itself).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def seed_panels(df: pd.DataFrame, metrics: Sequence[str], x: str = "method", order=None, hue: str | None = None,
                reference: dict | None = None, ref_label: str = "teacher", titles: Sequence[str] | None = None,
                suptitle: str | None = None, panel_size=(3.3, 3.2), dodge: float | bool = False,
                capsize: float = 0.2, legend: str = "first", hue_order=None):
    """One panel per metric of ``df`` (a row per network and seed): pointplots of the mean with 95 % intervals
    over seeds along ``x``, split by ``hue``, and a dashed line at ``reference[metric]`` (the teacher's row)
    where it holds a number for that metric.

    ``legend``: ``"first"`` (on the first panel only), ``"each"`` or ``"none"``. Returns ``(fig, axes)``."""
    if legend not in ("first", "each", "none"):
        raise ValueError(f"legend={legend!r}: use first, each or none")
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise KeyError(f"seed_panels: no column {missing} in the frame (it has {list(df.columns)})")
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_size[0] * len(metrics), panel_size[1]), squeeze=False)
    axes = list(axes[0])
    for i, (ax, met) in enumerate(zip(axes, metrics)):
        sns.pointplot(data=df, x=x, y=met, hue=hue, order=order, hue_order=hue_order, errorbar=("ci", 95),
                      capsize=capsize, dodge=dodge, ax=ax)
        ref = (reference or {}).get(met)
        if isinstance(ref, (int, float)) and not math.isnan(ref):
            ax.axhline(ref, ls="--", c="gray", lw=1, label=ref_label)
        ax.set_title(titles[i] if titles else met, fontsize=9)
        handles, _ = ax.get_legend_handles_labels()
        show = handles and (legend == "each" or (legend == "first" and i == 0))
        if show:
            ax.legend(fontsize=7)
        elif ax.get_legend() is not None:
            ax.get_legend().remove()
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig, axes
