"""``ua3dtalk-tables``: the paper's tables from saved runs (DESIGN §9).

    ua3dtalk-tables --runs outputs/runs --table ablation
    ua3dtalk-tables --runs outputs/runs/paper_mead outputs/runs/baseline_talkinggaussian --table paper_t2 --format latex
    ua3dtalk-tables --wandb my-team/ua3dtalk --table ablation            # online wandb runs (summaries)

Every ``metrics.json`` under the given directories is one run (written by ``ua3dtalk-train``). Runs are
grouped by experiment name; each cell is the mean ± sample standard deviation over the group's runs
(seeds × subjects; ``n`` column), using the ``test/<metric>`` key when present, else ``val/<metric>``.
The best value of each column is bold (lower or higher is better per metric, arrows in the header).
Published numbers from a cited yaml (``experiments/published/*.yaml``) are appended as rows marked
with their citation, and the paper's relative claims are set against the same comparison in the runs
(full model vs. baseline).

Tables:

* ``paper_t1`` — regular dataset (HDTF-style subjects): runs whose dataset is regular.
* ``paper_t2`` — emotional dataset (MEAD-style): runs whose dataset is emotional, except ablation rows.
* ``ablation`` — ``paper_mead`` (full model), every ``abl_*`` row and the ``baseline_*`` rows.

``--experiments PATTERN...`` (fnmatch) replaces the selection; ``--dataset NAME`` keeps the runs of one
dataset directory name (e.g. ``mead``, ``synth_small_emotional``).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence


@dataclass(frozen=True)
class Metric:
    """A table column: metric id, header label, direction, decimals and accepted key names (without
    the ``test/`` / ``val/`` prefix; a trailing ``*`` matches an extractor suffix such as ``e_fid_landmark``)."""

    id: str
    label: str
    higher_is_better: bool
    decimals: int
    keys: tuple[str, ...]


METRICS: dict[str, Metric] = {m.id: m for m in (
    Metric("psnr", "PSNR", True, 2, ("psnr",)),
    Metric("ssim", "SSIM", True, 4, ("ssim",)),
    Metric("lpips", "LPIPS", False, 4, ("lpips",)),          # never lpips_randbackbone (DESIGN §8)
    Metric("lpips_face", "LPIPS (face)", False, 4, ("lpips_face",)),
    Metric("lmd", "LMD", False, 3, ("lmd",)),
    Metric("f_lmd", "F-LMD", False, 3, ("f_lmd",)),
    Metric("sync_c", "Sync-C", True, 3, ("sync_c",)),
    Metric("sync_d", "Sync-D", False, 3, ("sync_d",)),
    Metric("e_fid", "E-FID", False, 3, ("e_fid", "efid", "e_fid_*", "efid_*")),
    Metric("acc_emo", "Acc_emo", True, 3, ("acc_emo",)),
    Metric("blink_err", "Blink err.", False, 3, ("blink_err", "blink_error")),
)}
PREFIXES = ("test/", "val/")


@dataclass(frozen=True)
class TableSpec:
    title: str
    metrics: tuple[str, ...]
    kind: Optional[str]  # "regular" | "emotional" | None (any)
    include: tuple[str, ...]  # experiment name patterns
    exclude: tuple[str, ...] = ()
    order: tuple[str, ...] = ()  # row order (patterns); the rest alphabetically after


ABLATION_ORDER = ("paper_mead", "abl_prior_none", "abl_emotion_none", "abl_fusion_uniform", "abl_fusion_concat",
                  "abl_uncertainty_aleatoric", "abl_uncertainty_epistemic", "abl_heads_single",
                  "abl_fusion_fullcov", "baseline_*")

TABLES: dict[str, TableSpec] = {
    "paper_t1": TableSpec("Comparison on the regular dataset (HDTF)",
                          ("psnr", "ssim", "lpips", "lmd", "sync_c", "sync_d", "e_fid"), "regular", ("*",),
                          ("abl_*",), ("baseline_*",)),
    "paper_t2": TableSpec("Comparison on the emotional dataset (MEAD)",
                          ("psnr", "ssim", "lpips", "lmd", "sync_c", "sync_d", "e_fid", "acc_emo"), "emotional",
                          ("*",), ("abl_*",), ("baseline_*",)),
    "ablation": TableSpec("Ablation study", ("psnr", "lpips", "lmd", "sync_c", "e_fid", "acc_emo"), None,
                          ("paper_mead*", "abl_*", "baseline_*"), (), ABLATION_ORDER),
}

ABLATION_LABELS = {
    "paper_mead": "UA-3DTalk (full)", "abl_prior_none": "w/o Prior Extraction",
    "abl_emotion_none": "w/o Emotion Distillation", "abl_fusion_uniform": "uniform fusion",
    "abl_fusion_concat": "concatenation fusion", "abl_uncertainty_aleatoric": "aleatoric only",
    "abl_uncertainty_epistemic": "epistemic only", "abl_heads_single": "single head",
    "abl_fusion_fullcov": "full-covariance fusion", "baseline_talkinggaussian": "TalkingGaussian-like baseline",
}


class TablesError(ValueError):
    """Bad input of ``ua3dtalk-tables`` (message names the file / argument)."""


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run: experiment name, seed, subject, dataset and its flat metrics."""

    experiment: str
    seed: int
    subject: str
    dataset: str
    kind: str  # "regular" | "emotional" | ""
    metrics: dict[str, float]
    source: str


def _dataset_of(meta: dict) -> tuple[str, str]:
    root = str(meta.get("data") or "")
    name = meta.get("dataset") or (Path(root).parent.name if root else "")
    kind = meta.get("data_kind") or ""
    if not kind:
        low = (str(name) + " " + root).lower()
        kind = "emotional" if ("emotional" in low or "mead" in low) else ("regular" if root else "")
    return str(name), str(kind)


def run_from_metrics(meta: dict, source: str) -> Run:
    """A :class:`Run` from the content of a ``metrics.json``."""
    if not isinstance(meta, dict) or "experiment" not in meta:
        raise TablesError(f"{source}: not a ua3dtalk metrics.json (no 'experiment' key)")
    flat = {k: float(v) for k, v in meta.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" in k}
    for k, v in (meta.get("test") or {}).items():  # evaluation results written as a nested block
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[k if "/" in k else f"test/{k}"] = float(v)
    ds, kind = _dataset_of(meta)
    return Run(str(meta["experiment"]), int(meta.get("seed", 0)), str(meta.get("subject", "")), ds, kind, flat,
               source)


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run (``metrics.json``) at or under ``paths``."""
    runs = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise TablesError(f"--runs: {p} does not exist")
        files = [p] if p.is_file() else sorted(p.rglob("metrics.json"))
        for f in files:
            try:
                meta = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise TablesError(f"{f}: invalid JSON ({e})") from None
            if isinstance(meta, dict) and "experiment" in meta and "demo_seconds" not in meta:  # not the demo's copy
                runs.append(run_from_metrics(meta, str(f)))
    return runs


def wandb_runs(path: str, api=None) -> list[Run]:
    """Runs of the wandb project ``entity/project`` (online API): experiment = group, metrics = summary."""
    if api is None:
        import wandb

        api = wandb.Api()
    out = []
    for r in api.runs(path):
        cfg = dict(r.config or {})
        summary = {k: v for k, v in dict(r.summary or {}).items()}
        data = cfg.get("data") or {}
        meta = {"experiment": r.group or cfg.get("name") or r.name, "seed": cfg.get("seed", 0),
                "subject": data.get("subject", "") if isinstance(data, dict) else "",
                "data": data.get("root", "") if isinstance(data, dict) else "", **summary}
        out.append(run_from_metrics(meta, f"wandb:{path}/{r.id}"))
    return out


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------


def metric_key(run: Run, metric: Metric) -> Optional[str]:
    """The key of ``metric`` present in the run (finite or not), with the precedence of :func:`metric_value`."""
    for prefix in PREFIXES:
        for pat in metric.keys:
            if "*" not in pat and prefix + pat in run.metrics:
                return prefix + pat
        for pat in metric.keys:
            if "*" in pat:
                for k in sorted(run.metrics):
                    if fnmatch.fnmatchcase(k, prefix + pat):
                        return k
    return None


def metric_value(run: Run, metric: Metric) -> Optional[float]:
    """The run's value of ``metric`` (``test/`` before ``val/``; exact keys before suffixed ones)."""
    for prefix in PREFIXES:
        for pat in metric.keys:
            if "*" not in pat:
                v = run.metrics.get(prefix + pat)
                if v is not None and math.isfinite(v):
                    return v
        for pat in metric.keys:
            if "*" in pat:
                for k in sorted(run.metrics):
                    if fnmatch.fnmatchcase(k, prefix + pat) and math.isfinite(run.metrics[k]):
                        return run.metrics[k]
    return None


@dataclass
class Cell:
    mean: Optional[float]
    std: Optional[float]
    n: int
    nonfinite: int = 0  # runs whose value is NaN/inf (left out of the mean; the cell is marked †)


@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    n_runs: int
    published: bool = False
    cite: str = ""
    experiment: str = ""
    datasets: list[str] = field(default_factory=list)


def aggregate(values: Iterable[Optional[float]]) -> Cell:
    """Mean and sample standard deviation (ddof=1; None for a single value) of the non-missing values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return Cell(None, None, 0)
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Cell(mean, std, len(vals))


def select_runs(runs: Sequence[Run], spec: TableSpec, experiments: Optional[Sequence[str]] = None,
                dataset: Optional[str] = None) -> list[Run]:
    out = []
    for r in runs:
        if dataset and r.dataset != dataset:
            continue
        if experiments:
            if not any(fnmatch.fnmatchcase(r.experiment, p) for p in experiments):
                continue
        else:
            if spec.kind and r.kind and r.kind != spec.kind:
                continue
            if not any(fnmatch.fnmatchcase(r.experiment, p) for p in spec.include):
                continue
            if any(fnmatch.fnmatchcase(r.experiment, p) for p in spec.exclude):
                continue
        out.append(r)
    return out


def _order_key(name: str, order: Sequence[str]) -> tuple:
    for i, p in enumerate(order):
        if fnmatch.fnmatchcase(name, p):
            return (i, name)
    return (len(order), name)


def group_rows(runs: Sequence[Run], spec: TableSpec, metrics: Sequence[str], table: str) -> list[Row]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.experiment, []).append(r)
    rows = []
    order = spec.order if spec.order else ()
    def key(n):
        return _order_key(n, order) if order else ((0 if n.startswith("paper") else 1), n)

    for name in sorted(groups, key=key):
        rs = groups[name]
        datasets = sorted({r.dataset for r in rs})
        if len(datasets) > 1:
            warnings.warn(f"experiment {name!r} has runs on several datasets {datasets}; they are averaged together "
                          "(use --dataset to keep one)", stacklevel=2)
        label = ABLATION_LABELS.get(name, name) if table == "ablation" else name
        cells = {}
        for m in metrics:
            cells[m] = aggregate(metric_value(r, METRICS[m]) for r in rs)
            for r in rs:
                k = metric_key(r, METRICS[m])
                if k is not None and not math.isfinite(r.metrics[k]) and metric_value(r, METRICS[m]) is None:
                    cells[m].nonfinite += 1
                    print(f"ua3dtalk-tables: warning: {r.source}: {k} is {r.metrics[k]} — left out of the "
                          f"mean of {name!r} (cell marked †)", file=sys.stderr)
        rows.append(Row(label, cells, len(rs), experiment=name, datasets=datasets))
    return rows


# --------------------------------------------------------------------------------------------------
# published numbers
# --------------------------------------------------------------------------------------------------


def default_published_dir() -> Optional[Path]:
    try:
        from .train import config_dir

        d = config_dir() / "published"
        return d if d.is_dir() else None
    except FileNotFoundError:
        return None


def load_published(paths: Sequence[str | Path]) -> list[dict]:
    """Read published-number yamls: ``{source: {citation, url, ...}, rows: [...], claims: [...]}``."""
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
            for r in doc.get("rows") or []:
                if not isinstance(r, dict) or "method" not in r or "table" not in r:
                    raise TablesError(f"{f}: every row needs `method`, `table` and `metrics`, got {r!r}")
                unknown = set(r.get("metrics") or {}) - set(METRICS)
                if unknown:
                    raise TablesError(f"{f}: row {r['method']!r}: unknown metrics {sorted(unknown)}; "
                                      f"known: {', '.join(METRICS)}")
            doc["_file"] = str(f)
            out.append(doc)
    return out


def published_rows(docs: Sequence[dict], table: str, metrics: Sequence[str]) -> list[Row]:
    rows = []
    for k, doc in enumerate(docs, 1):
        for r in doc.get("rows") or []:
            if r["table"] != table:
                continue
            vals = r.get("metrics") or {}
            cells = {m: Cell(None if vals.get(m) is None else float(vals[m]), None, 1 if vals.get(m) is not None
                             else 0) for m in metrics}
            rows.append(Row(str(r["method"]), cells, 0, published=True, cite=f"[{k}]"))
    return rows


def claims_for(docs: Sequence[dict], table: str) -> list[tuple[str, dict]]:
    out = []
    for k, doc in enumerate(docs, 1):
        for c in doc.get("claims") or []:
            if c.get("tables") is None or table in c.get("tables"):
                out.append((f"[{k}]", c))
    return out


def _our_change(rows: Sequence[Row], metric: str, kind: str, full: str, baseline: str) -> Optional[float]:
    by = {r.experiment: r for r in rows if not r.published}
    if full not in by or baseline not in by:
        return None
    a, b = by[full].cells.get(metric), by[baseline].cells.get(metric)
    if a is None or b is None or a.mean is None or b.mean is None:
        return None
    if kind == "relative":
        return (a.mean - b.mean) / abs(b.mean) if b.mean else None
    return a.mean - b.mean


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------


def best_values(rows: Sequence[Row], metrics: Sequence[str], include_published: bool = True) -> dict[str, float]:
    best = {}
    for m in metrics:
        vals = [r.cells[m].mean for r in rows if r.cells[m].mean is not None and (include_published or not r.published)]
        if vals:
            best[m] = max(vals) if METRICS[m].higher_is_better else min(vals)
    return best


def _is_best(value: Optional[float], best: Optional[float], metric: Metric) -> bool:
    """Equal to the column's best at the displayed precision (ties are all bold)."""
    if value is None or best is None:
        return False
    return f"{value:.{metric.decimals}f}" == f"{best:.{metric.decimals}f}"


def fmt_cell(c: Cell, metric: Metric, bold: bool, latex: bool) -> str:
    mark = ("$^\\dagger$" if latex else " †") if c.nonfinite else ""
    if c.mean is None:
        return ("—" if not latex else "--") + mark
    d = metric.decimals
    s = f"{c.mean:.{d}f}"
    if c.std is not None:
        s += (f" $\\pm$ {c.std:.{d}f}" if latex else f" ± {c.std:.{d}f}")
    if bold:
        s = f"\\textbf{{{s}}}" if latex else f"**{s}**"
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


def render(rows: Sequence[Row], metrics: Sequence[str], title: str, fmt: str = "md",
           docs: Sequence[dict] = (), claims: Sequence[tuple[str, dict]] = (), table: str = "") -> str:
    latex = fmt == "latex"
    best = best_values(rows, metrics)
    head = ["Method"] + [f"{METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in metrics] + ["n"]
    body = []
    for r in rows:
        label = r.label + (f" {r.cite}" if r.published else "")
        cells = [fmt_cell(r.cells[m], METRICS[m], _is_best(r.cells[m].mean, best.get(m), METRICS[m]), latex)
                 for m in metrics]
        n = "–" if r.published else str(r.n_runs)
        body.append(([_latex_escape(label)] if latex else [label]) + cells + [n])
    notes = []
    for k, doc in enumerate(docs, 1):
        src = doc["source"]
        notes.append(f"[{k}] {src['citation']}" + (f" {src['url']}" if src.get("url") else "")
                     + (f" — {src['note']}" if src.get("note") else ""))
    claim_lines = []
    for cite, c in claims:
        m = METRICS.get(c.get("metric", ""))
        if m is None:
            continue
        kind = c.get("kind", "relative")
        ours = _our_change(rows, m.id, kind, c.get("ours_full", "paper_mead"), c.get("ours_baseline",
                                                                                      "baseline_talkinggaussian"))
        full, base = c.get("ours_full", "paper_mead"), c.get("ours_baseline", "baseline_talkinggaussian")
        line = (f"{m.label}: {_fmt_claim(m, kind, float(c['value']))} for UA-3DTalk vs. {c.get('vs', 'peers')} "
                f"{cite}; these runs, {full} vs. {base}: " + ("n/a" if ours is None else _fmt_claim(m, kind, ours)))
        claim_lines.append(line)
    if latex:
        cols = "l" + "c" * (len(metrics) + 1)
        out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_latex_escape(title)}}}",
               f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
               " & ".join(_latex_escape(h).replace("↑", "$\\uparrow$").replace("↓", "$\\downarrow$") for h in head)
               + " \\\\", "\\midrule"]
        prev_pub = False
        for r, b in zip(rows, body):
            if r.published and not prev_pub and out[-1] != "\\midrule":
                out.append("\\midrule")
            prev_pub = r.published
            out.append(" & ".join(b) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        if any(c.nonfinite for r in rows for c in r.cells.values()):
            out.append("\\par\\footnotesize $^\\dagger$ some runs have a non-finite value, left out of the mean.")
        for line in claim_lines + notes:
            out.append(f"\\par\\footnotesize {_latex_escape(line)}")
        out.append("\\end{table}")
        return "\n".join(out) + "\n"
    out = [f"**{title}**" + (f" (`{table}`)" if table else ""), "", "| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|"]
    out += ["| " + " | ".join(b) + " |" for b in body]
    out.append("")
    out.append("Mean ± sample std over the runs of each experiment (seeds × subjects; n = runs); best in bold; "
               "`test/` metrics when present, else `val/`.")
    if any(c.nonfinite for r in rows for c in r.cells.values()):
        out.append("† some runs of this cell have a non-finite value (NaN/inf), left out of the mean "
                   "(the files are named on stderr).")
    if claim_lines:
        out += ["", "Published improvements (paper) and the same comparison in these runs:", ""] + [
            f"- {c}" for c in claim_lines]
    if notes:
        out += [""] + [f"{n}  " for n in notes]
    return "\n".join(out) + "\n"


def make_table(runs: Sequence[Run], table: str, fmt: str = "md", published: Sequence[dict] = (),
               experiments: Optional[Sequence[str]] = None, dataset: Optional[str] = None,
               metrics: Optional[Sequence[str]] = None) -> str:
    """Render one table (see the module docstring) from runs and published-number documents."""
    if table not in TABLES:
        raise TablesError(f"--table: unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if fmt not in ("md", "latex"):
        raise TablesError(f"--format must be md or latex, got {fmt!r}")
    spec = TABLES[table]
    ms = list(metrics or spec.metrics)
    bad = [m for m in ms if m not in METRICS]
    if bad:
        raise TablesError(f"--metrics: unknown {bad}; known: {', '.join(METRICS)}")
    sel = select_runs(runs, spec, experiments, dataset)
    rows = group_rows(sel, spec, ms, table) + published_rows(published, table, ms)
    if not rows:
        raise TablesError(f"no run matches table {table!r} (experiments {list(experiments or spec.include)}, "
                          f"dataset kind {spec.kind or 'any'}"
                          + (f", dataset {dataset}" if dataset else "") + "); runs found: "
                          + (", ".join(sorted({r.experiment for r in runs})) or "none"))
    used = [d for d in published if any(r["table"] == table for r in d.get("rows") or [])
            or claims_for([d], table)]
    return render(rows, ms, spec.title, fmt, used, claims_for(used, table), table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ua3dtalk-tables", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--runs", nargs="*", default=[], help="run directories or parents of run directories")
    ap.add_argument("--wandb", nargs="*", default=[], metavar="ENTITY/PROJECT",
                    help="also read the runs of these wandb projects (online API)")
    ap.add_argument("--table", required=True, choices=sorted(TABLES))
    ap.add_argument("--format", default="md", choices=["md", "latex"])
    ap.add_argument("--published", nargs="*", default=None,
                    help="published-number yamls or directories (default: experiments/published/; "
                         "--published with no file: none)")
    ap.add_argument("--experiments", nargs="*", default=None, help="experiment name patterns (replace the selection)")
    ap.add_argument("--dataset", default=None, help="keep the runs of this dataset directory name only")
    ap.add_argument("--metrics", default=None, help="comma-separated metric ids: " + ", ".join(METRICS))
    ap.add_argument("--out", default=None, help="write the table to this file (atomically) instead of stdout")
    a = ap.parse_args(argv)
    try:
        if not a.runs and not a.wandb:
            raise TablesError("give --runs DIR... and/or --wandb ENTITY/PROJECT")
        runs = find_runs(a.runs)
        for p in a.wandb:
            runs += wandb_runs(p)
        if a.published is None:
            d = default_published_dir()
            pub = load_published([d]) if d else []
        else:
            pub = load_published(a.published)
        text = make_table(runs, a.table, a.format, pub, a.experiments, a.dataset,
                          a.metrics.split(",") if a.metrics else None)
    except TablesError as e:
        print(f"ua3dtalk-tables: {e}", file=sys.stderr)
        return 2
    if a.out:
        from ..utils.io import atomic_write_text

        atomic_write_text(a.out, text)
        print(f"ua3dtalk-tables: wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
