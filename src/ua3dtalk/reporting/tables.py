"""The paper's tables from runs: published numbers, claims, and rendering as Markdown, LaTeX or JSON
(behind ``ua3dtalk-tables``; see that command's help for the rules of the cells).

:func:`make_table` is the entry point: runs (:mod:`ua3dtalk.reporting.runs`) + published documents →
the table's text.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from .runs import (
    LPIPS_RANDOM,
    METRICS,
    TABLES,
    Cell,
    Metric,
    Row,
    Run,
    TablesError,
    _as_metric,
    efid_extractors,
    efid_metric,
    group_rows,
    metric_def,
    metric_key,
    published_efid_metric,
    select_runs,
)

# --------------------------------------------------------------------------------------------------
# published numbers
# --------------------------------------------------------------------------------------------------


def default_published_dir() -> Optional[Path]:
    try:
        from ..paths import config_dir

        d = config_dir() / "published"
        return d if d.is_dir() else None
    except FileNotFoundError:
        return None


def load_published(paths: Sequence[str | Path]) -> list[dict]:
    """Read published-number yamls: ``{source: {citation, url, table, e_fid_extractor, ...}, rows: [...],
    claims: [...]}``. ``source.table`` (or a row's ``source_table``) names the table of the cited paper the
    numbers come from; a row's ``table`` must be one of :data:`TABLES`."""
    import yaml

    out = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        for f in files:
            if not f.is_file():
                raise TablesError(f"--published: {f} does not exist")
            try:
                doc = yaml.safe_load(f.read_text()) or {}
            except yaml.YAMLError as e:
                raise TablesError(f"{f}: invalid YAML ({e})") from None
            if not isinstance(doc, dict) or "source" not in doc or "citation" not in (doc.get("source") or {}):
                raise TablesError(f"{f}: a published-numbers file needs `source: {{citation: ...}}`")
            for key in ("e_fid_extractor", "table"):
                ex = doc["source"].get(key)
                if ex is not None and not isinstance(ex, str):
                    raise TablesError(f"{f}: source.{key} must be a string (or null), got {ex!r}")
            for r in doc.get("rows") or []:
                if not isinstance(r, dict) or "method" not in r or "table" not in r:
                    raise TablesError(f"{f}: every row needs `method`, `table` and `metrics`, got {r!r}")
                if r["table"] not in TABLES:
                    raise TablesError(f"{f}: row {r['method']!r}: table must be one of {', '.join(TABLES)}, "
                                      f"got {r['table']!r}")
                st = r.get("source_table")
                if st is not None and not isinstance(st, str):
                    raise TablesError(f"{f}: row {r['method']!r}: source_table must be a string, got {st!r}")
                unknown = set(r.get("metrics") or {}) - set(METRICS)
                if unknown:
                    raise TablesError(f"{f}: row {r['method']!r}: unknown metrics {sorted(unknown)}; "
                                      f"known: {', '.join(METRICS)}")
                ex = r.get("e_fid_extractor")
                if ex is not None and not isinstance(ex, str):
                    raise TablesError(f"{f}: row {r['method']!r}: e_fid_extractor must be a string, got {ex!r}")
            doc["_file"] = str(f)
            out.append(doc)
    return out


def _published_efid_column(doc: dict, row: dict, cite: str) -> Metric:
    ex = row.get("e_fid_extractor") or (doc.get("source") or {}).get("e_fid_extractor")
    return published_efid_metric(ex, cite)


def published_columns(docs: Sequence[dict], table: str) -> list[Metric]:
    """The published E-FID columns of ``table`` (one per stated extractor, else one per source)."""
    out: dict[str, Metric] = {}
    for k, doc in enumerate(docs, 1):
        for r in doc.get("rows") or []:
            if r["table"] == table and (r.get("metrics") or {}).get("e_fid") is not None:
                col = _published_efid_column(doc, r, f"[{k}]")
                out.setdefault(col.id, col)
    return list(out.values())


def published_rows(docs: Sequence[dict], table: str, metrics: Sequence[str | Metric]) -> list[Row]:
    cols = [_as_metric(m) for m in metrics]
    rows = []
    for k, doc in enumerate(docs, 1):
        for r in doc.get("rows") or []:
            if r["table"] != table:
                continue
            vals = r.get("metrics") or {}
            efid_col = _published_efid_column(doc, r, f"[{k}]").id
            cells = {}
            for m in cols:
                if m.base == "e_fid":  # a published E-FID only in its own column, never in ours
                    v = vals.get("e_fid") if m.id == efid_col else None
                else:
                    v = vals.get(m.id)
                cells[m.id] = Cell(None if v is None else float(v), None, 0 if v is None else 1)
            rows.append(Row(str(r["method"]), cells, 0, published=True, cite=f"[{k}]",
                            datasets=[str(r["dataset"])] if r.get("dataset") else [],
                            source_table=_source_table(doc, r)))
    return rows


def _source_table(doc: dict, row: dict) -> str:
    """The table of the cited paper a published row was copied from (the row's own, else the source's)."""
    return str(row.get("source_table") or (doc.get("source") or {}).get("table") or "")


def source_tables(doc: dict, table: str) -> list[str]:
    """The tables of the cited paper behind ``doc``'s rows in ``table`` (in order, once each); for a source
    cited only for its claims, its ``source.table`` when stated."""
    out: list[str] = []
    rows = [r for r in doc.get("rows") or [] if r["table"] == table]
    for name in ([_source_table(doc, r) for r in rows] if rows
                 else [str((doc.get("source") or {}).get("table") or "")]):
        if name and name not in out:
            out.append(name)
    return out


def source_line(doc: dict, k: int, table: str) -> str:
    """``[k] <citation> <paper table(s)>. <url> — <note>``: what a ``[k]`` row or claim was copied from."""
    src = doc["source"]
    tables = source_tables(doc, table)
    return (f"[{k}] {src['citation']}" + (f" {'; '.join(tables)}." if tables else "")
            + (f" {src['url']}" if src.get("url") else "") + (f" — {src['note']}" if src.get("note") else ""))


def table_columns(runs: Sequence[Run], metric_ids: Sequence[str], docs: Sequence[dict] = (),
                  table: str = "") -> list[Metric]:
    """The columns of a table: ``e_fid`` becomes one column per E-FID extractor found in ``runs`` and one per
    published E-FID source of ``table`` (an empty ``E-FID`` column when there is none); ``lpips`` becomes the
    labelled random-backbone column (:data:`LPIPS_RANDOM`) when the runs have only that key."""
    cols: list[Metric] = []
    for mid in metric_ids:
        if mid == "lpips" and not any(metric_key(r, METRICS["lpips"]) for r in runs) and any(
                metric_key(r, LPIPS_RANDOM) for r in runs):
            cols.append(LPIPS_RANDOM)  # runs without the AlexNet weights: the labelled random-backbone column
            continue
        if mid != "e_fid":
            cols.append(metric_def(mid))
            continue
        efid = [efid_metric(e) for e in efid_extractors(runs)] + published_columns(docs, table)
        cols += efid or [METRICS["e_fid"]]
    seen: set[str] = set()
    return [c for c in cols if not (c.id in seen or seen.add(c.id))]


def claims_for(docs: Sequence[dict], table: str) -> list[tuple[str, dict]]:
    out = []
    for k, doc in enumerate(docs, 1):
        for c in doc.get("claims") or []:
            if c.get("tables") is None or table in c.get("tables"):
                out.append((f"[{k}]", c))
    return out


def _our_change(rows: Sequence[Row], metric: str, kind: str, full: str, baseline: str) -> Optional[float]:
    """Change of the column ``metric`` (a column id) from ``baseline`` to ``full`` in the runs' rows."""
    by = {r.experiment: r for r in rows if not r.published and not r.variant}  # the experiments as written
    if full not in by or baseline not in by:
        return None
    a, b = by[full].cells.get(metric), by[baseline].cells.get(metric)
    if a is None or b is None or a.mean is None or b.mean is None:
        return None
    if kind == "relative":
        return (a.mean - b.mean) / abs(b.mean) if b.mean else None
    return a.mean - b.mean


def _claim_defaults(c: dict) -> tuple[str, str]:
    return str(c.get("ours_full", "paper_mead")), str(c.get("ours_baseline", "baseline_talkinggaussian"))


def _runs_phrase(row: Optional[Row], name: str) -> str:
    if row is None:
        return f"{name} (no runs in this table)"
    data = ", ".join(f"{d or 'dataset not recorded'}" + (f" [{row.kinds.get(d)}]" if row.kinds.get(d) else "")
                     for d in row.datasets) or "dataset not recorded"
    subj = f"; {len(row.subjects)} subject{'s' if len(row.subjects) != 1 else ''}" if row.subjects else ""
    return f"{name} ({row.n_runs} run{'s' if row.n_runs != 1 else ''} on {data}{subj})"


def comparison_lines(rows: Sequence[Row], claims: Sequence[tuple[str, dict]]) -> list[str]:
    """One line per (full, baseline) pair of the claims: what the runs compare, on which data, and that it is
    not the paper's comparison."""
    by = {r.experiment: r for r in rows if not r.published and not r.variant}  # the experiments as written
    pairs: dict[tuple[str, str], list[str]] = {}
    for _, c in claims:
        if c.get("metric") in METRICS:
            vs = pairs.setdefault(_claim_defaults(c), [])
            if c.get("vs", "peers") not in vs:
                vs.append(str(c.get("vs", "peers")))
    out = []
    for (full, base), vs in pairs.items():
        out.append(f"What these runs compare: {_runs_phrase(by.get(full), full)} vs. {_runs_phrase(by.get(base), base)}"
                   f" — our full model against our own baseline on our data; not the paper's comparison "
                   f"(UA-3DTalk vs. {' / '.join(vs)} on the paper's datasets), so the two changes are not "
                   "directly comparable.")
    return out


def claim_entries(rows: Sequence[Row], columns: Sequence[Metric],
                  claims: Sequence[tuple[str, dict]]) -> list[dict]:
    """The claims with the same kind of change computed from the runs (per E-FID extractor column)."""
    out = []
    for cite, c in claims:
        m = METRICS.get(c.get("metric", ""))
        if m is None:
            continue
        kind = c.get("kind", "relative")
        full, base = _claim_defaults(c)
        cols = [col for col in columns if col.base == m.id and not col.published] or [m]
        ours = [(col, _our_change(rows, col.id, kind, full, base)) for col in cols]
        if len(ours) > 1:  # several E-FID extractors: the ones both experiments have (else all, as n/a)
            ours = [o for o in ours if o[1] is not None] or ours
        out.append({"cite": cite, "metric": m, "kind": kind, "value": float(c["value"]),
                    "vs": str(c.get("vs", "peers")), "full": full, "baseline": base, "ours": ours})
    return out


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------


def best_values(rows: Sequence[Row], metrics: Sequence[str | Metric], include_published: bool = True
                ) -> dict[str, float]:
    best = {}
    for m in map(_as_metric, metrics):
        vals = [r.cells[m.id].mean for r in rows
                if r.cells[m.id].mean is not None and (include_published or not r.published)]
        if vals:
            best[m.id] = max(vals) if m.higher_is_better else min(vals)
    return best


def _is_best(value: Optional[float], best: Optional[float], metric: Metric) -> bool:
    """Equal to the column's best at the displayed precision (ties are all bold)."""
    if value is None or best is None:
        return False
    return f"{value:.{metric.decimals}f}" == f"{best:.{metric.decimals}f}"


def fmt_cell(c: Cell, metric: Metric, bold: bool, latex: bool, n_runs: Optional[int] = None) -> str:
    """``mean ± ci95`` (bold when best), then ``(n=k)`` when the cell has one value or fewer than the row's
    ``n_runs``, then † when runs had a non-finite value. ``n_runs=None``: a published number (value only)."""
    mark = ("$^\\dagger$" if latex else " †") if c.nonfinite else ""
    if c.mean is None:
        return ("—" if not latex else "--") + mark
    d = metric.decimals
    s = f"{c.mean:.{d}f}"
    if n_runs is not None and c.ci95 is not None:
        s += (f" $\\pm$ {c.ci95:.{d}f}" if latex else f" ± {c.ci95:.{d}f}")
    if bold:
        s = f"\\textbf{{{s}}}" if latex else f"**{s}**"
    if n_runs is not None and (c.n == 1 or c.n != n_runs):
        s += f" (n={c.n})"
    return s + mark


def _latex_escape(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"),
                 ("_", "\\_"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"), ("^", "\\^{}")):
        s = s.replace(a, b)
    return s


def _fmt_claim(metric: Metric, kind: str, value: float) -> str:
    if kind == "relative":
        return f"{value * 100:+.1f} %"
    return f"{value:+.{metric.decimals}f}"


def _claim_line(e: dict) -> str:
    m = e["metric"]
    ours = []
    for col, v in e["ours"]:
        txt = "n/a" if v is None else _fmt_claim(m, e["kind"], v)
        ours.append(txt if col.id == m.id and col.label == m.label else f"{col.label} {txt}")
    return (f"{m.label}: {_fmt_claim(m, e['kind'], e['value'])} for UA-3DTalk vs. {e['vs']} {e['cite']}; "
            f"these runs, {e['full']} vs. {e['baseline']}: " + ", ".join(ours))


CI_NOTE = ("± = half-width of the 95 % confidence interval of the mean, Student's t with n−1 degrees of freedom "
           "(t(0.975, n−1)·s/√n) over the runs of each experiment (seeds × subjects); n = runs of the row, "
           "(n=k) when a cell has a different number of runs with that metric, (n=1): a single run, no interval")


PUBLISHED_NOTE = ("Rows marked [k] are published numbers copied from the cited paper and table (its data, "
                  "subjects and metric implementations, not these runs): no n, no interval, never averaged with "
                  "the runs above.")


CI_NOTE_LATEX = ("$\\pm$ = half-width of the 95\\,\\% confidence interval of the mean, Student's $t$ with $n-1$ "
                 "degrees of freedom ($t_{0.975,\\,n-1}\\,s/\\sqrt{n}$) over the runs of each experiment (seeds "
                 "$\\times$ subjects); $n$ = runs of the row, ($n$=$k$) when a cell has a different number of runs "
                 "with that metric, ($n$=1): a single run, no interval; best mean in bold.")


def render(rows: Sequence[Row], metrics: Sequence[str | Metric], title: str, fmt: str = "md",
           docs: Sequence[dict] = (), claims: Sequence[tuple[str, dict]] = (), table: str = "") -> str:
    cols = [_as_metric(m) for m in metrics]
    if fmt == "json":
        return render_json(rows, cols, title, docs, claims, table)
    latex = fmt == "latex"
    best = best_values(rows, cols, include_published=False)  # bold marks the best of our runs only
    head = ["Method"] + [f"{m.label} {'↑' if m.higher_is_better else '↓'}" for m in cols] + ["n"]
    body = []
    for r in rows:
        label = r.label + (f" {r.cite}" if r.published else "")
        cells = [fmt_cell(r.cells[m.id], m, _is_best(r.cells[m.id].mean, best.get(m.id), m), latex,
                          None if r.published else r.n_runs) for m in cols]
        n = "–" if r.published else str(r.n_runs)
        body.append(([_latex_escape(label)] if latex else [label]) + cells + [n])
    notes = [source_line(doc, k, table) for k, doc in enumerate(docs, 1)]
    pub_note = PUBLISHED_NOTE if any(r.published for r in rows) else ""
    entries = claim_entries(rows, cols, claims)
    claim_lines = [_claim_line(e) for e in entries]
    compare = comparison_lines(rows, claims) if entries else []
    efid_note = ("E-FID: one column per feature extractor (not comparable across columns, never averaged "
                 "together); a published E-FID has its own column." if sum(m.base == "e_fid" for m in cols) > 1
                 or any(m.published for m in cols) else "")
    if latex:
        n_cols = "l" + "c" * (len(cols) + 1)
        out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_latex_escape(title)}}}",
               f"\\begin{{tabular}}{{{n_cols}}}", "\\toprule",
               " & ".join(_latex_escape(h).replace("↑", "$\\uparrow$").replace("↓", "$\\downarrow$") for h in head)
               + " \\\\", "\\midrule"]
        prev_pub = False
        for r, b in zip(rows, body):
            if r.published and not prev_pub and out[-1] != "\\midrule":
                out.append("\\midrule")
            prev_pub = r.published
            out.append(" & ".join(b) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        out.append(f"\\par\\footnotesize {CI_NOTE_LATEX}")
        if efid_note:
            out.append(f"\\par\\footnotesize {_latex_escape(efid_note)}")
        if any(c.nonfinite for r in rows for c in r.cells.values()):
            out.append("\\par\\footnotesize $^\\dagger$ some runs have a non-finite value, left out of the mean.")
        if pub_note:
            out.append(f"\\par\\footnotesize {_latex_escape(pub_note)}")
        for line in claim_lines + compare + (["Sources:"] if notes else []) + notes:
            out.append(f"\\par\\footnotesize {_latex_escape(line)}")
        out.append("\\end{table}")
        return "\n".join(out) + "\n"
    out = [f"**{title}**" + (f" (`{table}`)" if table else ""), "", "| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|"]
    out += ["| " + " | ".join(b) + " |" for b in body]
    out.append("")
    out.append(f"{CI_NOTE}. Best mean in bold; `test/` metrics when present, else `val/`.")
    if efid_note:
        out.append(efid_note)
    if any(c.nonfinite for r in rows for c in r.cells.values()):
        out.append("† some runs of this cell have a non-finite value (NaN/inf), left out of the mean "
                   "(the files are named on stderr).")
    if pub_note:
        out.append(pub_note)
    if claim_lines:
        out += ["", "Published improvements (paper) and the same kind of change in these runs:", ""] + [
            f"- {c}" for c in claim_lines]
        if compare:
            out += [""] + compare
    if notes:
        out += ["", "Sources:", ""] + [f"{n}  " for n in notes]
    return "\n".join(out) + "\n"


def _num(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def render_json(rows: Sequence[Row], columns: Sequence[Metric], title: str, docs: Sequence[dict] = (),
                claims: Sequence[tuple[str, dict]] = (), table: str = "") -> str:
    """The table as JSON: every cell with ``mean``, ``ci95`` (95 % Student-t half-width), ``std`` and ``n``."""
    best = best_values(rows, columns, include_published=False)
    entries = claim_entries(rows, columns, claims)
    doc = {
        "table": table, "title": title,
        "interval": {"ci95": "half-width of the two-sided 95 % Student-t confidence interval of the mean, "
                             "t(0.975, n-1) * std / sqrt(n); null when n < 2", "std": "sample std (ddof=1)"},
        "columns": [{"id": m.id, "label": m.label, "metric": m.base, "higher_is_better": m.higher_is_better,
                     "decimals": m.decimals, **({"extractor": m.extractor} if m.base == "e_fid" else {}),
                     "published": m.published} for m in columns],
        "rows": [{"label": r.label, "experiment": r.experiment or None, "variant": r.variant,
                  "published": r.published, "cite": r.cite or None, "source_table": r.source_table or None,
                  "n_runs": None if r.published else r.n_runs,
                  "datasets": r.datasets, "dataset_kinds": r.kinds, "subjects": r.subjects,
                  "cells": {m.id: {"mean": _num(r.cells[m.id].mean), "ci95": _num(r.cells[m.id].ci95),
                                   "std": _num(r.cells[m.id].std),
                                   "n": None if r.published else r.cells[m.id].n,
                                   "nonfinite": r.cells[m.id].nonfinite,
                                   "best": _is_best(r.cells[m.id].mean, best.get(m.id), m)} for m in columns}}
                 for r in rows],
        "claims": [{"cite": e["cite"], "metric": e["metric"].id, "kind": e["kind"], "value": e["value"],
                    "vs": e["vs"], "ours_full": e["full"], "ours_baseline": e["baseline"],
                    "ours": {col.id: _num(v) for col, v in e["ours"]}} for e in entries],
        "comparison": comparison_lines(rows, claims) if entries else [],
        "published_note": PUBLISHED_NOTE if any(r.published for r in rows) else None,
        "sources": [{"cite": f"[{k}]", **{k2: v for k2, v in d["source"].items()},
                     "paper_tables": source_tables(d, table), "file": d.get("_file")}
                    for k, d in enumerate(docs, 1)],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"


FORMATS = ("md", "latex", "json")


def make_table(runs: Sequence[Run], table: str, fmt: str = "md", published: Sequence[dict] = (),
               experiments: Optional[Sequence[str]] = None, dataset: Optional[str] = None,
               metrics: Optional[Sequence[str]] = None) -> str:
    """Render one table (see the module docstring) from runs and published-number documents."""
    if table not in TABLES:
        raise TablesError(f"--table: unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if fmt not in FORMATS:
        raise TablesError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    spec = TABLES[table]
    ms = list(metrics or spec.metrics)
    bad = []
    for m in ms:
        try:
            metric_def(m)
        except KeyError:
            bad.append(m)
    if bad:
        raise TablesError(f"--metrics: unknown {bad}; known: {', '.join(METRICS)} (or e_fid_<extractor>)")
    sel = select_runs(runs, spec, experiments, dataset)
    used = [d for d in published if any(r["table"] == table for r in d.get("rows") or [])
            or claims_for([d], table)]  # cited as [1], [2] … in this order
    cols = table_columns(sel, ms, used, table)
    rows = group_rows(sel, spec, cols, table) + published_rows(used, table, cols)
    if not rows:
        raise TablesError(f"no run matches table {table!r} (experiments {list(experiments or spec.include)}, "
                          f"dataset kind {spec.kind or 'any'}"
                          + (f", dataset {dataset}" if dataset else "") + "); runs found: "
                          + (", ".join(sorted({r.experiment for r in runs})) or "none"))
    return render(rows, cols, spec.title, fmt, used, claims_for(used, table), table)
