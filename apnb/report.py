"""Helpers the notebooks use to summarise seeds and state verdicts (mean, 95 % t-interval, paired tests)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from . import records


def mean_ci(values, level: float = 0.95) -> tuple[float, float, int]:
    """Mean and half-width of the two-sided t confidence interval (NaN half-width for one value); missing values
    (None, NaN) are left out. The half-width is :func:`apnb.inference.half_width`, as in the claims' intervals."""
    from .inference import clean, half_width

    v = clean(values)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), half_width(len(v), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), level), len(v)


def summarize(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and 95 % CI half-width of each metric over seeds, one row per group."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for m in metrics:
            mu, h, n = mean_ci(g[m])
            row[m], row[m + "_ci"], row["n_seeds"] = mu, h, n
        rows.append(row)
    return pd.DataFrame(rows)


def fmt(mu: float, half: float, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(mu):
        return "n/a"
    if math.isnan(half):
        return f"{mu * scale:.{digits}f}"
    return f"{mu * scale:.{digits}f} ± {half * scale:.{digits}f}"


def paired_diff(a, b) -> dict:
    """Paired difference ``b - a`` over seeds: mean, 95 % CI half-width, paired t-test p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    mu, half, n = mean_ci(d)
    p = float(stats.ttest_rel(b, a).pvalue) if n >= 2 and np.std(d) > 0 else float("nan")
    return {"diff": mu, "ci": half, "n": n, "p": p}


class Verdict(str):
    """A verdict sentence (what :func:`verdict` and :func:`note` return) that also carries its parts, so that a
    table can show them without parsing the sentence: ``study`` (the question of the studies it answers, or
    None), ``claim`` (what is compared), ``paper`` (the paper's direction or number, given by the caller, else
    None), ``ours`` (our estimate), ``finding`` (supports / contradicts / not resolved ...) and ``answer`` (the
    sentence without its ``study:`` prefix, as a summary table shows it under the study's name). The paper
    chapters' verdicts come from the claims table instead (:func:`apnb.claims.finish`)."""

    study: str | None
    claim: str
    paper: str | None
    ours: str
    finding: str
    answer: str

    def __new__(cls, text: str, what: str, ours: str, finding: str, study: str | None = None,
                paper: str | None = None):
        obj = super().__new__(cls, f"{study}: {text}" if study else text)
        obj.claim, obj.paper = what, paper
        obj.ours, obj.finding, obj.study = ours, finding, study
        obj.answer = text
        return obj


def note(text: str, study: str | None = None, claim: str | None = None) -> Verdict:
    """A finding that is not one paired test (a range over a sweep, a ranking, a count, a caveat), as a
    :class:`Verdict`: the sentence ``text`` (shown as ``study: text`` when ``study`` is given), its ``claim``
    (default: ``text`` up to its first colon, at most 70 characters) and no paper direction."""
    return Verdict(text, claim or text.split(":", 1)[0][:70].strip(), "", "", study)


def verdict(diff: dict, what: str, paper_sign: int | None = 1, study: str | None = None,
            paper: str | None = None) -> Verdict:
    """One sentence for a question beyond the paper's claims (the studies): which side of 0 a paired
    difference's 95 % interval lies on. ``paper_sign``: +1 or -1, the direction a source reports (the
    sentence then says whether it supports it), ``None`` no direction claimed. A "no change" claim is refused:
    it needs an equivalence test with a margin (a row of ``apnb/claims.yml``, decided by
    :func:`apnb.claims.finish`), not an interval that happens to cover 0. ``paper``: the source's number or
    direction, shown beside ours. ``study``: the question of the studies the sentence answers."""
    if paper_sign == 0:
        raise ValueError(f"{what!r}: 'no change' is an equivalence claim with a margin; add it to apnb/claims.yml "
                         "with test: equivalence instead of paper_sign=0")
    mu, half, n = diff["diff"], diff["ci"], diff["n"]
    if mu is None or math.isnan(mu):
        return Verdict(f"{what}: no data.", what, "no data", "no data", study, paper)
    if n < 2 or math.isnan(half):
        return Verdict(f"{what}: {mu:+.3f} from a single seed, so no interval; this run cannot settle it.", what,
                       f"{mu:+.3f} (one seed)", "one seed: not settled", study, paper)
    lo, hi = mu - half, mu + half
    ours = f"{mu:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}, n={n})"
    if paper_sign is None:
        side = "positive" if lo > 0 else "negative" if hi < 0 else None
        finding = f"{side}: the interval excludes 0" if side else f"the interval includes 0: not resolved at n = {n}"
    else:
        s_lo, s_hi = sorted((paper_sign * lo, paper_sign * hi))
        finding = ("supports the paper's direction" if s_lo > 0 else "contradicts the paper's direction" if s_hi < 0
                   else f"the interval includes 0: not resolved at n = {n}")
    return Verdict(f"{what}: {ours} — {finding}.", what, ours, finding, study, paper)


def verdict_rows(lines, study: str | None = None, **extra) -> list[dict]:
    """Run-record rows (table ``verdict``) for :class:`Verdict` lines, each with its parts: ``study`` (the
    line's own, else the ``study`` given here), ``claim``, ``paper``, ``ours``, ``finding``, ``answer`` and
    the sentence as ``value``. ``extra`` goes into every row. A plain string is refused (make it a
    :func:`note`), so that no reader has to parse a sentence. None of these rows reaches the scorecard,
    which holds the claims table's primary rows only (:func:`scorecard`)."""
    rows = []
    for i, line in enumerate(lines):
        if not isinstance(line, Verdict):
            raise TypeError(f"verdict line {i} is a plain string ({str(line)[:60]!r}...): make it report.note(...)")
        rows.append({**extra, "study": line.study or study, "claim": line.claim, "paper": line.paper,
                     "ours": line.ours, "finding": line.finding, "answer": line.answer, "scorecard": False,
                     "metric": "text", "value": str(line)})
    return rows


def glue_minutes(name: str, started: float) -> None:
    """Glue the minutes since ``started`` (``time.time()``) as ``name``: a chapter's wall time on its page."""
    import time

    from myst_nb import glue

    glue(name, round((time.time() - started) / 60, 1), display=False)


def finish_notes(glue_name: str, lines, rows: list[dict] | None = None,
                 minutes: tuple[str, float] | None = None) -> None:
    """End a chapter beyond the paper (it tests no row of the claims table): glue its :class:`Verdict` lines as
    the Findings list ``glue_name`` and log them to the run record (table ``verdict``); ``rows``: the rows to
    log when the chapter labels them itself (default :func:`verdict_rows` of ``lines``); ``minutes = (name,
    start time)``: :func:`glue_minutes`."""
    from IPython.display import Markdown
    from myst_nb import glue

    if minutes:
        glue_minutes(*minutes)
    glue(glue_name, Markdown("\n".join(f"- {line}" for line in lines)), display=False)
    records.log("verdict", verdict_rows(lines) if rows is None else rows)


def study_answers(rec: dict, study: str) -> str:
    """The answers a run record (:func:`apnb.records` rows) gives to one ``study``: its verdict rows'
    ``answer`` fields, joined; a record written before verdicts carried their parts is a clear error."""
    rows = [r for r in rec["rows"] if r.get("table") == "verdict" and r.get("study") == study]
    if any("answer" not in r for r in rows):
        raise ValueError(f"the run record of {rec.get('notebook', '?')} predates structured verdicts: re-run it "
                         f"with `apnb run notebooks/{rec.get('notebook', '<name>.ipynb')} --force`")
    return " ".join(r["answer"] for r in rows)


def _claim_rows(records: dict[str, dict], titles: dict[str, str], keep) -> pd.DataFrame:
    from . import claims

    rows = []
    for nb, title in titles.items():
        rec = records[nb]
        got = [r for r in rec["rows"] if r.get("table") == "verdict" and r.get("base_id")]
        if not got:
            raise ValueError(f"the run record of {nb} holds no claims-table verdict (it predates apnb/claims.yml): "
                             f"re-run it with `apnb run notebooks/{nb}.ipynb --force`")
        for c in claims.for_chapter(nb):
            if not keep(c):
                continue
            mine = [r for r in got if r["base_id"] == c.id] or [None]
            for r in mine:
                m = c.margin * c.scale if c.margin is not None else None
                test = c.test + (f", margin {m:g}" + ((" point" if m == 1 else " points") if c.unit == "points" else "")
                                 if m is not None else "")
                rows.append({"chapter": title, "claim": c.statement, "test": test,
                             "the paper": (r or {}).get("paper") or "",
                             "ours (mean, 95% CI)": (r or {}).get("ours") or "not recorded",
                             "verdict": (r or {}).get("finding") or "not run", "commit": rec.get("commit", "")[:7],
                             "notebook": nb,
                             # the numbers, for the forest plot (apnb.plots.forest); not shown in the table
                             "claim_id": (r or {}).get("claim_id", c.id), "kind": c.kind, "family": c.family,
                             "test_name": c.test, "sign": c.sign, "margin": c.margin,
                             **{k: (r or {}).get(k, float("nan")) for k in ("estimate", "lo", "hi")}})
    return pd.DataFrame(rows)


SCORECARD_COLUMNS = ("chapter", "claim", "test", "the paper", "ours (mean, 95% CI)", "verdict")


def scorecard(records: dict[str, dict], titles: dict[str, str]) -> pd.DataFrame:
    """The reproduction scorecard: exactly the primary claim rows of the claims table (``apnb/claims.yml``) of
    the chapters in ``titles`` (notebook stem -> title), in table order, each with its test and margin, the
    paper's effect, ours and the verdict its chapter recorded (``records``: stem -> run record). Premises are
    not on it (:func:`premises`). A record written before the claims table is a clear error."""
    return _claim_rows(records, titles, lambda c: c.scored)


def premises(records: dict[str, dict], titles: dict[str, str]) -> pd.DataFrame:
    """The premises of the claims table, as each chapter's run re-checked them: held by calibration, so shown
    apart from the scorecard and never counted as support."""
    return _claim_rows(records, titles, lambda c: c.kind == "premise")


def paired_by_seed(df: pd.DataFrame, metric: str, a: str, b: str, col: str = "method") -> dict:
    """:func:`paired_diff` of ``metric`` between rows ``col == a`` and ``col == b``, paired on ``seed``."""
    A = df[df[col] == a].set_index("seed")[metric]
    B = df[df[col] == b].set_index("seed")[metric]
    common = A.index.intersection(B.index)
    return paired_diff(A.loc[common].values, B.loc[common].values)


def side_by_side(ours: pd.DataFrame, paper_df: pd.DataFrame, keys: list[str], metrics: dict[str, tuple[float, int]],
                 teacher: dict | None = None) -> pd.DataFrame:
    """Our summary (from :func:`summarize`) beside the paper's table: two rows per line, ``ours`` (mean ± the
    95 % half-width over seeds) and ``paper`` (the paper's number), one column per metric, indexed by
    ``(*keys, "source")``. A table as narrow as its metrics, so that it fits the page.

    ``metrics`` maps a metric to ``(scale, digits)`` for our numbers (100 for %, 1 for cos/l2); a metric the
    paper does not report, or a value we do not have (cos of the teacher to itself), is left blank.
    ``teacher``: an optional first line of our teacher's values (no interval), matched to the paper's
    ``teacher`` row."""
    p = paper_df.set_index(keys)
    rows = []
    lines = ([{**{k: "teacher" for k in keys}, **teacher}] if teacher else []) + ours.to_dict("records")
    for r in lines:
        key = tuple(r[k] for k in keys)
        key = key[0] if len(keys) == 1 else key
        mine = {k: r[k] for k in keys} | {"source": "ours"}
        theirs = {k: r[k] for k in keys} | {"source": "paper"}
        for m, (scale, digits) in metrics.items():
            mu = r.get(m)
            mine[m] = "" if mu is None else fmt(mu, r.get(m + "_ci", float("nan")), scale, digits)
            val = p.loc[key, m] if key in p.index and m in p.columns else ""
            theirs[m] = "" if isinstance(val, float) and math.isnan(val) else str(val)
        rows += [mine, theirs]
    return pd.DataFrame(rows).set_index([*keys, "source"])


def formatted(summ: pd.DataFrame, keys: list[str], metrics: dict[str, tuple[float, int]]) -> pd.DataFrame:
    """:func:`summarize`'s output as a reader's table: ``mean ± 95 % half-width`` per metric (``metrics`` maps a
    metric to ``(scale, digits)``), indexed by ``keys``."""
    out = summ[keys].copy()
    for m, (scale, digits) in metrics.items():
        out[m] = [fmt(r[m], r.get(m + "_ci", float("nan")), scale, digits) for r in summ.to_dict("records")]
    return out.set_index(keys)


PERCENT = ("mAP", "mAP_nocue", "mAP_cueflip", "F1", "image_AP", "top1", "AUC", "point_acc", "point_acc_tol",
           "point_acc_classmean", "AUC_void_negative", "AUC_nocue", "point_acc_tol_nocue")


def table(df: pd.DataFrame, columns: list[str] | None = None, digits: int = 3, percent=PERCENT):
    """A frame as a reader's table: the chosen ``columns`` (default all), no 0, 1, 2, ... index, fractions in
    ``percent`` shown as % with one decimal, other floats with ``digits`` decimals, missing values blank."""
    d = df[columns] if columns is not None else df
    fmt_map = {c: ("{:.1%}" if c in percent else f"{{:.{digits}f}}") for c in d.columns
               if pd.api.types.is_float_dtype(d[c])}
    return d.style.hide(axis="index").format(fmt_map, na_rep="")


TEACHER_METRICS = ["params", "mAP", "mAP_nocue", "F1", "AUC", "point_acc", "point_acc_tol"]


def network_table(row: dict, name: str = "teacher", metrics: list[str] | None = None):
    """Log one network's row in the run record (section ``teacher``, model ``name``; :mod:`apnb.records`) and
    show it as :func:`row_table`: how every VOC chapter opens with its full network."""
    records.log("teacher", [{"model": name, "metric": k, "value": v} for k, v in row.items()])
    return row_table(row, metrics or TEACHER_METRICS, name)


def row_table(row: dict, metrics: list[str], name: str = "teacher"):
    """One network's numbers (a :func:`apnb.evaluate.evaluate_model` row) as a narrow two-column table."""
    def show(m, v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.1%}" if m in PERCENT else f"{v:,.3f}" if isinstance(v, float) else f"{v:,}"

    out = pd.DataFrame({"metric": list(metrics), name: [show(m, row.get(m)) for m in metrics]})
    return out.style.hide(axis="index")


def paired_against(df: pd.DataFrame, metrics: list[str], baseline: str, others: list[str], col: str = "method",
                   by: str | None = None) -> pd.DataFrame:
    """Each of ``others`` minus ``baseline``, paired on ``seed``, for every metric (and every value of ``by``):
    one row with the difference, its 95 % half-width, the paired t-test p and the Holm-adjusted p, where the
    family of a Holm correction is one metric (within one ``by`` group) over the ``others``. The metric is in
    column ``measure`` (a run record's rows already have a ``metric``)."""
    rows = []
    groups = df.groupby(by, sort=False) if by else [(None, df)]
    for g, d in groups:
        for m in metrics:
            fam = []
            for o in others:
                r = paired_by_seed(d, m, baseline, o, col)
                fam.append({**({by: g} if by else {}), "measure": m, col: o, "diff": r["diff"], "ci": r["ci"],
                            "n": r["n"], "p": r["p"]})
            for row, ph in zip(fam, holm([r["p"] for r in fam])):
                row["p_holm"] = ph
            rows += fam
    return pd.DataFrame(rows)


def one_sample_diff(values) -> dict:
    """The :func:`paired_diff`-shaped summary of differences already taken (e.g. student - teacher per seed)."""
    mu, half, n = mean_ci(values)
    return {"diff": mu, "ci": half, "n": n, "p": float("nan")}


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (:func:`apnb.inference.holm`)."""
    from .inference import holm as _holm

    return _holm(pvalues)


def pointing_findings(hits: dict[str, float], n_pairs: int, reference: str = "full") -> str:
    """Markdown lines for the qualitative chapter (paper Figures 1, 4-6): each network's pointing accuracy on
    the ``n_pairs`` (image, class) pairs every network predicts, and each network's difference from
    ``reference``. One seed, so point estimates without an interval; the lines say so."""
    if n_pairs == 0:
        return "- No (image, class) pair is predicted correctly by every network: nothing to compare."
    ref = hits[reference]
    lines = [f"- On the {n_pairs} (image, class) pairs that every network predicts correctly, the map's maximum "
             f"falls inside the object for " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in hits.items()) + "."]
    diffs = [f"{k} {100 * (v - ref):+.1f}" for k, v in hits.items() if k != reference]
    if diffs:
        lines.append(f"- Minus the {reference} network, in points: " + ", ".join(diffs)
                     + " (first seed only: point estimates, no interval; the chapters above give the seeds' spread).")
    return "\n".join(lines)


def scorecard_html(card: pd.DataFrame, href: str = "../notebooks/{notebook}.html") -> str:
    """:func:`scorecard` as an HTML table whose chapter cells link to the chapters (``href`` is relative to
    the page that shows it: the default works from ``book/`` and ``notebooks/`` alike)."""
    import html

    shown = card[list(SCORECARD_COLUMNS)].map(lambda v: html.escape(str(v)))
    shown["chapter"] = [f'<a href="{href.format(notebook=n)}">{html.escape(t)}</a>'
                        for n, t in zip(card.notebook, card.chapter)]
    return shown.to_html(index=False, escape=False, border=0, classes="scorecard")


def execution_table(records: dict[str, dict], machine_gflops: float | None = None) -> pd.DataFrame:
    """One row per executed notebook (``records``: notebook stem -> run record): profile, commit, when it
    finished (UTC), wall time, how many networks it trained and how many it reloaded from the store, the
    TFLOP it computed (:mod:`apnb.work`: training and evaluation), its achieved GFLOP/s, and that rate as a
    share of ``machine_gflops`` (the machine's rate on the demo teacher's training step; NaN when unknown)."""
    rows = []
    for nb, rec in records.items():
        store, w = rec.get("store", {}), rec.get("work")
        wall = rec.get("wall_time_s", float("nan"))
        tflop = (w.get("train_tflop", 0.0) + w.get("eval_tflop", 0.0)) if w is not None else float("nan")
        rate = tflop * 1e3 / wall if wall and wall == wall and wall > 0 else float("nan")
        rows.append({"notebook": nb, "profile": rec.get("profile", ""), "commit": rec.get("commit", "")[:7],
                     "finished (UTC)": rec.get("finished_at", "not recorded").replace("T", " ").rstrip("Z"),
                     "minutes": round(wall / 60, 1),
                     "networks trained": store.get("trained", 0), "networks reloaded": store.get("loaded", 0),
                     "TFLOP": round(tflop, 3), "GFLOP/s": round(rate, 1),
                     "share of machine rate": round(rate / machine_gflops, 2) if machine_gflops else float("nan")})
    return pd.DataFrame(rows)
