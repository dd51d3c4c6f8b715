"""The claims table (``apnb/claims.yml``): the paper's claims and the benchmark's premises, each with its measure,
comparison, test and margin, written before the runs; and :func:`finish`, the one call that ends a paper chapter:
it decides the chapter's rows on its numbers (:mod:`apnb.inference`), Holm-corrects its primary family, and
writes the verdict rows, the Findings glue and the forest plot.

A verdict is built from a row and the numbers, never from text: no chapter picks verdicts by position, and the
book's scorecard (:func:`apnb.report.scorecard`) is exactly the table's primary claim rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import inference as I

PATH = Path(__file__).with_name("claims.yml")
KINDS = ("claim", "premise", "manipulation", "description")
FAMILIES = ("primary", "secondary")
FIELDS = {"id", "chapter", "statement", "source", "measure", "compare", "test", "sign", "margin", "margin_source",
          "kind", "family", "paper", "data", "col", "where", "each", "unit", "mde_from"}


@dataclass(frozen=True)
class Claim:
    """One row of the claims table (see the header of ``apnb/claims.yml`` for the fields)."""

    id: str
    chapter: str
    statement: str
    source: str
    measure: str
    compare: tuple[str, str]
    test: str
    sign: int = 1
    margin: float | None = None
    margin_source: str = ""
    kind: str = "claim"
    family: str = "secondary"
    paper: dict | None = None
    data: str = "runs"
    col: str = "method"
    where: dict = field(default_factory=dict)
    each: str | None = None
    unit: str = "points"
    mde_from: str | None = None

    @property
    def scored(self) -> bool:
        """On the scorecard: a primary claim (premises, manipulation checks and descriptions never are)."""
        return self.kind == "claim" and self.family == "primary"

    @property
    def scale(self) -> float:
        return _scale(self.unit)

    def paper_effect(self) -> float | None:
        """The paper's own ``b - a`` in its table's units (points), or None where the paper prints none."""
        if not self.paper:
            return None
        from . import paper as P

        spec = self.paper
        return P.difference(getattr(P, spec["table"])(), spec.get("measure", self.measure), spec["a"], spec["b"])


def _check(row: dict, i: int) -> Claim:
    where = f"apnb/claims.yml, claim {i + 1} ({row.get('id', 'no id')})"
    unknown = set(row) - FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; the fields are listed at the top of the file")
    for k in ("id", "chapter", "statement", "source", "measure", "compare", "test", "kind", "family"):
        if k not in row:
            raise ValueError(f"{where}: the field '{k}' is missing")
    if row["test"] not in I.TESTS:
        raise ValueError(f"{where}: test '{row['test']}' is not one of {', '.join(I.TESTS)}")
    if row["kind"] not in KINDS or row["family"] not in FAMILIES:
        raise ValueError(f"{where}: kind must be one of {KINDS} and family one of {FAMILIES}")
    if row["test"] in ("noninferiority", "equivalence", "restores") and not (row.get("margin") or 0) > 0:
        raise ValueError(f"{where}: a {row['test']} test needs a positive margin and its margin_source")
    if row.get("margin") is not None and not row.get("margin_source"):
        raise ValueError(f"{where}: a margin needs its margin_source (where the margin comes from)")
    if not (isinstance(row["compare"], list) and len(row["compare"]) == 2):
        raise ValueError(f"{where}: compare must be a list [a, b] (the effect is b - a)")
    if row.get("sign", 1) not in (1, -1):
        raise ValueError(f"{where}: sign must be 1 or -1")
    if row["kind"] == "claim" and row["family"] == "primary" and row["test"] == "estimate":
        raise ValueError(f"{where}: a primary claim needs a test, not an estimate")
    return Claim(**{**row, "compare": tuple(row["compare"]), "where": row.get("where") or {}})


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[Claim, ...]:
    rows = yaml.safe_load(Path(path).read_text())["claims"]
    out = tuple(_check(r, i) for i, r in enumerate(rows))
    ids = [c.id for c in out]
    dup = sorted({x for x in ids if ids.count(x) > 1})
    if dup:
        raise ValueError(f"apnb/claims.yml: duplicate claim id(s) {dup}")
    return out


def table(path: str | Path | None = None) -> tuple[Claim, ...]:
    """Every row of the claims table, in file order."""
    return _load(str(path or PATH))


def for_chapter(chapter: str, path: str | Path | None = None) -> list[Claim]:
    return [c for c in table(path) if c.chapter == chapter]


def frame_table(path: str | Path | None = None) -> pd.DataFrame:
    """The claims table as a DataFrame, for the book's page on how verdicts are made."""
    return pd.DataFrame([{"id": c.id, "chapter": c.chapter, "claim": c.statement, "source": c.source,
                          "measure": c.measure, "comparison": f"{c.compare[1]} - {c.compare[0]}", "test": c.test,
                          "margin": "" if c.margin is None else f"{c.margin * c.scale:g}",
                          "margin from": c.margin_source, "kind": c.kind, "family": c.family} for c in table(path)])


@dataclass
class Evidence:
    """One frame of a chapter's numbers: ``df`` with a ``seed`` column and the network column ``col``; the
    chapter's ``teacher`` row (a dict) where the frame holds no teacher row of its own."""

    df: pd.DataFrame
    col: str = "method"
    teacher: dict | None = None


def _values(ev: Evidence, claim: Claim, name: str, where: dict):
    """A network's values of the claim's measure: a Series indexed by seed, or one number (a single teacher)."""
    d = ev.df
    col = claim.col if claim.col in d.columns else ev.col
    if name == "teacher" and ev.teacher is not None:
        # the frame's own teacher rows where they hold this measure (per seed: scores on common pairs), else the
        # chapter's one teacher row
        own = d[(d[col] == "teacher")] if claim.measure in d else d.iloc[:0]
        if own.empty or own[claim.measure].isna().all():
            return float(ev.teacher.get(claim.measure, float("nan")))
    for k, v in where.items():
        d = d[d[k] == v]
    rows = d[d[col] == name]
    if rows.empty:
        return None
    if claim.measure not in rows:
        raise KeyError(f"claim {claim.id}: the chapter's frame '{claim.data}' has no column '{claim.measure}' "
                       f"(it has {sorted(d.columns)})")
    if len(rows) == 1 and ("seed" not in rows or pd.isna(rows["seed"].iloc[0])):
        return float(rows[claim.measure].iloc[0])
    return rows.set_index("seed")[claim.measure].astype(float)


def _paired(a, b) -> np.ndarray:
    """b - a per seed (a number broadcasts)."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        common = a.index.intersection(b.index)
        return (b.loc[common] - a.loc[common]).to_numpy()
    if isinstance(a, pd.Series) or isinstance(b, pd.Series):
        return (b - a).to_numpy()
    return np.asarray([b - a], float)


def _expand(claim: Claim, ev: Evidence | None) -> list[tuple[str, dict]]:
    if claim.each is None:
        return [(claim.id, dict(claim.where))]
    if ev is None or claim.each not in ev.df:
        return [(claim.id, dict(claim.where))]
    vals = list(dict.fromkeys(ev.df[claim.each].dropna().tolist()))
    return [(f"{claim.id}@{v:g}" if isinstance(v, float) else f"{claim.id}@{v}", {**claim.where, claim.each: v})
            for v in vals]


def evaluate(claim: Claim, ev: Evidence | None, where: dict) -> I.Result | None:
    """The :class:`apnb.inference.Result` of one (expanded) claim on its evidence, or None when the chapter did
    not run a network it compares."""
    if ev is None:
        return None
    a_name, b_name = claim.compare
    if claim.test == "restores":
        t = _values(ev, claim, "teacher", where)
        n = _values(ev, claim, a_name, where)
        m = _values(ev, claim, b_name, where)
        if t is None or n is None or m is None:
            return None
        if isinstance(n, pd.Series) and isinstance(m, pd.Series):
            common = n.index.intersection(m.index)
            n, m = n.loc[common], m.loc[common]
            if isinstance(t, pd.Series):
                t = t.reindex(common)
        return I.restores(np.asarray(t, float), np.asarray(n, float), np.asarray(m, float), claim.margin)
    a, b = _values(ev, claim, a_name, where), _values(ev, claim, b_name, where)
    if a is None or b is None:
        return None
    d = _paired(a, b)
    if claim.test == "superiority":
        return I.superiority(d, claim.sign)
    if claim.test == "noninferiority":
        return I.noninferiority(d, claim.margin, claim.sign)
    if claim.test == "equivalence":
        return I.equivalence(d, claim.margin)
    r = I.estimate(d)
    r.sign = claim.sign
    return r


def calibration_sd(calibration: dict | None, role: str | None, measure: str) -> float:
    """The standard deviation of a naive network's ``measure`` over the calibration seeds of ``role`` (its last
    step, the frozen recipe; a ``_common`` measure reads the network's own-pair score), times
    sqrt(2): the spread of a paired difference of two such networks if their seed effects were independent (an
    assumption stated beside every minimum detectable effect). NaN without a calibration record."""
    if not calibration or not role:
        return float("nan")
    measure = measure.removesuffix("_common")
    rows = [r for r in calibration.get("rows", []) if r.get("role") == role]
    step = rows[-1]["step"] if rows else None  # the last step of the role: the frozen recipe, not one tried before
    v = [r[measure] for r in rows if r["step"] == step and measure in r]
    return float(np.std(v, ddof=1) * math.sqrt(2)) if len(v) >= 2 else float("nan")


def _scale(unit: str) -> float:
    return 100.0 if unit == "points" else 1.0


def _fmt(x: float, scale: float) -> str:
    return "n/a" if x is None or math.isnan(x) else (f"{x * scale:+.1f}" if scale == 100 else f"{x * scale:+.3f}")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def decide_chapter(chapter: str, evidence: dict[str, Evidence], calibration: dict | None = None,
                   path: str | Path | None = None) -> pd.DataFrame:
    """Every row of ``chapter`` decided on ``evidence`` (frame name -> :class:`Evidence`): one row per (expanded)
    claim with its estimate and 95 % interval (in the claim's unit: points for scores in [0, 1]), the one-sided p,
    the Holm-adjusted p over the chapter's primary claims, the finding, the paper's effect and the minimum
    detectable effect. A claim whose networks the chapter did not run reads "not run at this profile"."""
    rows, results = [], []
    for c in for_chapter(chapter, path):
        ev = evidence.get(c.data)
        for cid, where in _expand(c, ev):
            r = evaluate(c, ev, where)
            results.append(r)
            paper = c.paper_effect() if c.paper and not c.each else float("nan")
            n = r.n if r else 0
            sd = calibration_sd(calibration, c.mde_from, c.measure)
            rows.append({"claim_id": cid, "base_id": c.id, "chapter": chapter, "claim": c.statement,
                         "source": c.source, "measure": c.measure, "comparison": f"{c.compare[1]} - {c.compare[0]}",
                         "test": c.test, "sign": c.sign, "margin": c.margin, "margin_source": c.margin_source,
                         "kind": c.kind, "family": c.family, "scorecard": c.scored, "unit": c.unit,
                         "estimate": r.estimate if r else float("nan"), "lo": r.lo if r else float("nan"),
                         "hi": r.hi if r else float("nan"), "n": n, "p": r.p if r else float("nan"),
                         "paper_effect": paper, "mde": I.mde(sd, n) if n >= 2 else float("nan"),
                         **({f"recovered{k}": v for k, v in r.extra.items() if k != "n"} if r and r.extra else {})})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # Holm over the chapter's primary claims; secondary rows keep their own p (and say so)
    prim = (df.family == "primary") & (df.kind == "claim")
    df["p_holm"] = float("nan")
    df.loc[prim, "p_holm"] = I.holm(df.loc[prim, "p"].tolist())
    findings = []
    for r, row in zip(results, df.itertuples()):
        if r is None:
            findings.append("not run at this profile")
        elif row.kind == "premise":
            findings.append(f"premise: held by calibration ({I.decide(r)} on this run)")
        elif row.kind == "manipulation":
            findings.append("manipulation check, not evidence")
        elif row.kind == "description" or row.test == "estimate":
            findings.append("estimate only: no claim tested")
        else:
            findings.append(I.decide(r, row.p_holm if row.family == "primary" else None))
    df["finding"] = findings
    return df


def sentence(row: dict) -> str:
    """The Findings line of one decided row, effects in points (or raw units), with test, margin and p."""
    c_scale = _scale(row["unit"])
    unit = " points" if row["unit"] == "points" else ""
    ours = _ours(row, long=True)
    test = row["test"]
    if row.get("margin") is not None and not math.isnan(row["margin"]):
        m = row["margin"] * c_scale
        test += f", margin {m:g}" + ((" point" if m == 1 else " points") if unit else "")
    if row["family"] == "primary" and row["kind"] == "claim" and not math.isnan(row.get("p_holm", float("nan"))):
        test += f", Holm p {_p(row['p_holm'])}"
    elif not math.isnan(row["p"]) and row["kind"] == "claim":
        test += f", p {_p(row['p'])} (secondary, unadjusted)"
    extra = ""
    if row["test"] == "restores" and not math.isnan(row.get("recoveredfraction", float("nan"))):
        extra = (f"; it recovers {100 * row['recoveredfraction']:.0f} % of the naive drift (95% CI "
                 f"{100 * row['recoveredlo']:.0f} to {100 * row['recoveredhi']:.0f} %)")
    pe, mde = row["paper_effect"], row["mde"] * c_scale
    if row["scorecard"] and math.isnan(mde) and row["n"] >= 2:
        extra += "; no calibration spread for this comparison, so no minimum detectable effect"
    if row["scorecard"] and not math.isnan(mde):
        extra += f"; detectable at n = {row['n']}: {mde:.1f}{unit}"
        if not math.isnan(pe) and mde > abs(pe):
            extra += f", more than the paper's {pe:+.1f}: too few seeds for the paper's effect"
    paper = "" if math.isnan(pe) else f" (paper: {pe:+.1f} points, {row['source']})"
    return f"**{row['claim']}** [{row['claim_id']}; {test}]{paper}: {ours}{extra} — {row['finding']}."


def finish(chapter: str, evidence: dict[str, Evidence], glue_name: str, calibration: dict | None = None,
           notes=(), path: str | Path | None = None, minutes: tuple[str, float] | None = None):
    """End a paper chapter: decide its claims, log the verdict rows (table ``verdict``) to the run record, glue
    the Findings lines as ``glue_name`` and the forest plot as ``glue_name + '_forest'``; returns the decided
    rows. ``notes`` (:func:`apnb.report.note` lines) follow the claims, as descriptions; ``minutes = (name,
    start time)`` glues the chapter's wall time in minutes (:func:`apnb.report.glue_minutes`)."""
    from myst_nb import glue
    from IPython.display import Markdown

    from . import plots, records, report

    if minutes:
        report.glue_minutes(*minutes)

    df = decide_chapter(chapter, evidence, calibration, path)
    recs = df.to_dict("records")
    sentences = [sentence(r) for r in recs]
    for r, s in zip(recs, sentences):
        r.update(metric="text", value=s, answer=s,
                 paper="" if math.isnan(r["paper_effect"]) else f"{r['paper_effect']:+.1f}", ours=_ours(r))
    records.log("verdict", recs + report.verdict_rows(list(notes)))
    premises = [s for r, s in zip(recs, sentences) if r["kind"] == "premise"]
    claims_ = [s for r, s in zip(recs, sentences) if r["kind"] != "premise"]
    md = "\n".join(f"- {s}" for s in claims_)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes)
    if premises:
        md += ("\n\nPremises (held by calibration, so never counted as support):\n\n"
               + "\n".join(f"- {s}" for s in premises))
    glue(glue_name, Markdown(md), display=False)
    fig = plots.forest(df)
    glue(glue_name + "_forest", fig, display=False)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return df


def _ours(r: dict, long: bool = False) -> str:
    """The estimate and its 95 % interval in the claim's unit: short for the scorecard, ``long`` (with the unit
    and "95% CI") for the Findings line."""
    scale = _scale(r["unit"])
    unit = " points" if long and r["unit"] == "points" else ""
    if math.isnan(r["estimate"]):
        return "no data"
    if r["n"] < 2:
        return f"{_fmt(r['estimate'], scale)}{unit} " + ("from one seed" if long else "(one seed)")
    ci = f"{_fmt(r['lo'], scale)} to {_fmt(r['hi'], scale)}, n = {r['n']}"
    return f"{_fmt(r['estimate'], scale)}{unit} (" + ("95% CI " if long else "") + ci + ")"
