"""The figures the chapters share.

:func:`seed_panels` is the figure of Tables 2-7 and their studies: one panel per metric, the mean over seeds
of each method (or bit width, or variant) with its 95 % bootstrap interval (seaborn's pointplot), and a dashed
line at the uncompressed network's value, where that network has one (it has no cosine to itself).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

# how the figures and tables name a matching kind (apnb.kinds); others are upper-cased
KIND_NAMES = {"e2kd": "e2KD", "cat_kd": "CAT-KD", "grad_at": "gradient AT", "sswa_coded": "coded SSWA",
              "center_prior": "centre prior", "sswa_shuffled": "shuffled SSWA"}


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


def forest(decided: pd.DataFrame, title: str | None = None):
    """The forest plot of a chapter's decided claims (:func:`apnb.claims.decide_chapter`): one line per claim
    tested, its effect ``b - a`` in points (raw scores such as cosines times 100) with the 95 % interval, 0 as a
    grey line and the claim's margin in red (a non-inferiority bound on its side; an equivalence band both ways).
    Premises are drawn in grey, manipulation checks and descriptions are left out. Returns the figure."""
    test = decided["test_name"] if "test_name" in decided else decided["test"]  # a scorecard names it test_name
    d = decided[decided.kind.isin(["claim", "premise"]) & (test != "estimate")].assign(test=test).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(len(d), 1) + 1.1))
    if d.empty:
        ax.text(0.5, 0.5, "no claim tested in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(len(d))[::-1]
    for yi, r in zip(y, d.itertuples()):
        est, lo, hi = (100 * float(v) for v in (r.estimate, r.lo, r.hi))
        if math.isnan(est):
            continue
        colour = "0.55" if r.kind == "premise" else ("C0" if r.family == "primary" else "C2")
        if not math.isnan(lo):
            ax.plot([lo, hi], [yi, yi], c=colour, lw=2)
        ax.plot([est], [yi], "o", c=colour, ms=5)
        m = r.margin
        if m is not None and not (isinstance(m, float) and math.isnan(m)):
            m = 100 * m
            if r.test in ("equivalence", "restores"):
                ax.plot([-m, -m], [yi - 0.35, yi + 0.35], c="C3", lw=1.5)
                ax.plot([m, m], [yi - 0.35, yi + 0.35], c="C3", lw=1.5)
            elif r.test == "noninferiority":
                ax.plot([-r.sign * m] * 2, [yi - 0.35, yi + 0.35], c="C3", lw=1.5)
            else:  # a premise's minimum effect
                ax.plot([r.sign * m] * 2, [yi - 0.35, yi + 0.35], c="C3", lw=1, ls=":")
    ax.axvline(0, c="0.6", lw=1)
    labels = [f"{r.claim_id} ({r.test}{', premise' if r.kind == 'premise' else ''})" for r in d.itertuples()]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("effect b - a, points (cosines x 100); red: margin", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def beta_search(points: pd.DataFrame, tolerance: float, chosen: dict | None = None):
    """The accuracy-only rule's search on the one scale (:func:`apnb.calibration.beta_search`): each kind's mean
    paired mAP loss against naive KD (points) at every beta trained, on a log axis, with the tolerance; the
    rule's beta ringed. Returns the figure."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if points.empty:
        ax.text(0.5, 0.5, "no beta trained yet", ha="center", va="center", transform=ax.transAxes)
        points = pd.DataFrame(columns=["method", "beta", "mAP loss"])
    for i, (m, g) in enumerate(points.groupby("method", sort=False)):
        g = g.sort_values("beta")
        ax.plot(g.beta, g["mAP loss"], marker="o", c=f"C{i}", label=KIND_NAMES.get(m, m.upper()))
        b = (chosen or {}).get(m)
        if b is not None:
            ax.scatter([b], g[g.beta == b]["mAP loss"], s=160, facecolors="none", edgecolors=f"C{i}", linewidths=1.5)
    ax.axhline(100 * tolerance, ls="--", c="C3", lw=1, label="tolerance")
    ax.axhline(0, c="0.6", lw=0.8)
    ax.set(xscale="log", xlabel="beta on the one scale (2 (1 - cos) per image)",
           ylabel="mAP loss against naive KD (points)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def gain_cost(tests: pd.DataFrame, gain: str = "AUC_common", cost: str = "mAP", margin: float | None = None,
              by: str = "family"):
    """Each method's localization gain against its accuracy cost (the field chapter): from
    :func:`apnb.report.paired_against`'s rows (one baseline), per value of ``by`` one panel with a point per
    method at (its paired difference of ``cost``, of ``gain``) in points, with the 95 % t half-widths as error
    bars on both axes, zero lines, and the ``cost`` non-inferiority ``margin`` (a fraction) as a red line.
    Returns the figure."""
    groups = list(dict.fromkeys(tests[by])) if by in tests else [None]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.0), squeeze=False)
    for ax, g in zip(axes[0], groups):
        t = tests if g is None else tests[tests[by] == g]
        x = t[t.measure == cost].set_index("method")
        y = t[t.measure == gain].set_index("method")
        methods = [m for m in dict.fromkeys(t.method) if m in x.index and m in y.index]
        for i, m in enumerate(methods):
            if math.isnan(x.loc[m, "diff"]) or math.isnan(y.loc[m, "diff"]):
                continue
            ax.errorbar(100 * x.loc[m, "diff"], 100 * y.loc[m, "diff"], xerr=100 * np.nan_to_num(x.loc[m, "ci"]),
                        yerr=100 * np.nan_to_num(y.loc[m, "ci"]), fmt="o", ms=4, capsize=2, c=f"C{i % 10}", label=m)
        ax.axhline(0, c="0.6", lw=0.8)
        ax.axvline(0, c="0.6", lw=0.8)
        if margin is not None:
            ax.axvline(-100 * margin, c="C3", lw=1, ls="--", label=f"mAP margin ({100 * margin:.1f})")
        ax.set(xlabel=f"{cost} minus naive (points)", ylabel=f"{gain} minus naive (points)", title=g or "")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
