"""``ua3dtalk-tables``: the paper's tables from saved runs (DESIGN §9).

    ua3dtalk-tables --runs outputs/runs --table ablation
    ua3dtalk-tables --runs outputs/runs/paper_mead outputs/runs/baseline_talkinggaussian --table paper_t2 --format latex
    ua3dtalk-tables --runs outputs/runs --table ablation --format json   # mean, ci95, std, n of every cell
    ua3dtalk-tables --wandb my-team/ua3dtalk --table ablation            # online wandb runs (summaries)

Every ``metrics.json`` under the given directories is one run (written by ``ua3dtalk-train``); a file that
is not valid JSON or not a JSON object is an error naming the file. Runs are grouped by experiment name;
each cell is ``mean ± h`` over the group's runs (seeds × subjects), where ``h`` is the half-width of the
two-sided 95 % Student-t confidence interval of the mean, ``h = t(0.975, n−1) · s / √n`` (``s`` the
sample standard deviation, ``n`` the runs that have the metric). The ``n`` column counts the row's runs; a
cell whose ``n`` differs (metric missing or non-finite in some runs) says ``(n=k)``, and a cell of a single
run prints ``value (n=1)``: no interval. The ``test/<metric>`` key is used when present, else
``val/<metric>``. The best mean of each column is bold (lower or higher is better per metric, arrows in the
header).

E-FID is one column per feature extractor (``test/efid_landmark`` → ``E-FID (landmark)``, ``efid_regressor``,
``efid_3dmm`` …): numbers of different extractors are not comparable and are never averaged together.

Published numbers from a cited yaml (``experiments/published/*.yaml``) are appended after the runs' rows,
marked with their citation ``[k]`` and never averaged with the runs (a published E-FID goes to its own
column, named after the extractor the yaml states in ``e_fid_extractor``, else marked as not stated); the
sources under the table name the paper and the table the numbers were copied from (``source.table``, or a
row's own ``source_table``). The paper's relative claims are set against the same *kind* of change in the
runs (our full model vs. our baseline), followed by a line saying what the runs compare and on which data.

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
import re
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence
from .args import Parser


@dataclass(frozen=True)
class Metric:
    """A table column: metric id, header label, direction, decimals and accepted key names (without
    the ``test/`` / ``val/`` prefix; a trailing ``*`` would match any suffix).

    E-FID columns are built per feature extractor (:func:`efid_metric`): ``family`` is then ``"e_fid"``,
    ``extractor`` the extractor name, and ``published`` marks a column holding published numbers only."""

    id: str
    label: str
    higher_is_better: bool
    decimals: int
    keys: tuple[str, ...]
    family: str = ""
    extractor: Optional[str] = None
    published: bool = False

    @property
    def base(self) -> str:
        """The metric id of the family (``e_fid`` for every E-FID column)."""
        return self.family or self.id


METRICS: dict[str, Metric] = {m.id: m for m in (
    Metric("psnr", "PSNR", True, 2, ("psnr",)),
    Metric("ssim", "SSIM", True, 4, ("ssim",)),
    Metric("lpips", "LPIPS", False, 4, ("lpips",)),          # never lpips_randbackbone (DESIGN §8)
    Metric("lpips_face", "LPIPS (face)", False, 4, ("lpips_face",)),
    Metric("lmd", "LMD", False, 3, ("lmd",)),
    Metric("f_lmd", "F-LMD", False, 3, ("f_lmd",)),
    Metric("sync_c", "Sync-C", True, 3, ("sync_c",)),
    Metric("sync_d", "Sync-D", False, 3, ("sync_d",)),
    # the bare key only (extractor not recorded); ``efid_<extractor>`` keys get a column each (efid_metric)
    Metric("e_fid", "E-FID", False, 3, ("e_fid", "efid")),
    Metric("acc_emo", "Acc_emo", True, 3, ("acc_emo",)),
    Metric("blink_err", "Blink err.", False, 3, ("blink_err", "blink_error")),
)}
LPIPS_RANDOM = Metric("lpips_randbackbone", "LPIPS (random AlexNet†: not comparable to LPIPS)", False, 4,
                      ("lpips_randbackbone",))
"""The column of runs scored without the AlexNet weights (tiny / demo scale; DESIGN §8): never mixed with LPIPS."""
PREFIXES = ("test/", "val/")
#: extractors of ua3dtalk.metrics.efid, in column order (others follow alphabetically)
EFID_EXTRACTORS = ("landmark", "regressor", "3dmm")
_EFID_KEY = re.compile(r"^(?:test|val)/e_?fid(?:_([A-Za-z0-9_]+))?$")
CI_LEVEL = 0.95


def efid_metric(extractor: Optional[str]) -> Metric:
    """The column of one E-FID feature extractor (``None``/``""``: runs whose key names no extractor)."""
    base = METRICS["e_fid"]
    if not extractor:
        return Metric("e_fid", "E-FID (extractor not recorded)", False, base.decimals, base.keys, "e_fid", "")
    return Metric(f"e_fid_{extractor}", f"E-FID ({extractor})", False, base.decimals,
                  (f"efid_{extractor}", f"e_fid_{extractor}"), "e_fid", extractor)


def published_efid_metric(extractor: Optional[str], cite: str) -> Metric:
    """The column of a published E-FID: by the extractor its source states, else one per citation."""
    base = METRICS["e_fid"]
    if extractor:
        return Metric(f"e_fid@paper:{extractor}", f"E-FID (paper: {extractor})", False, base.decimals, (), "e_fid",
                      str(extractor), True)
    return Metric(f"e_fid@paper{cite}", f"E-FID (paper {cite}, extractor not stated)", False, base.decimals, (),
                  "e_fid", None, True)


def metric_def(mid: str) -> Metric:
    """The column of a metric id: :data:`METRICS`, or ``e_fid_<extractor>`` / ``efid_<extractor>``."""
    if mid in METRICS:
        return METRICS[mid]
    m = re.fullmatch(r"e_?fid_([A-Za-z0-9_]+)", mid)
    if m:
        return efid_metric(m.group(1))
    raise KeyError(mid)


def efid_extractors(runs: Iterable["Run"]) -> list[str]:
    """The E-FID extractors that appear in the runs' keys (``""`` for a key without one), in column order."""
    found = {m.group(1) or "" for r in runs for k in r.metrics if (m := _EFID_KEY.match(k))}
    return sorted(found, key=lambda e: (e == "", EFID_EXTRACTORS.index(e) if e in EFID_EXTRACTORS
                                        else len(EFID_EXTRACTORS), e))


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
    variant: str = ""  # "+<overrides>" of a run that changed its experiment on the command line (DESIGN §9.1)

    @property
    def row(self) -> str:
        """The table row the run belongs to: its experiment, plus its variant."""
        return self.experiment + self.variant


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
               source, variant=str(meta.get("variant") or ""))


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run (``metrics.json``) at or under ``paths``.

    A file that cannot be read, is not valid JSON or is not a JSON object is an error (:class:`TablesError`
    naming the file): a run must never vanish from a mean silently."""
    runs = []
    seen: set[Path] = set()  # a run reached twice (`--runs A A`, `--runs A A/sub`, a link) counts once
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise TablesError(f"--runs: {p} does not exist")
        files = [p] if p.is_file() else sorted(p.rglob("metrics.json"))
        for f in files:
            real = f.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                meta = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise TablesError(f"{f}: invalid JSON ({e})") from None
            except (OSError, UnicodeDecodeError) as e:
                raise TablesError(f"{f}: cannot be read ({e})") from None
            if not isinstance(meta, dict):
                raise TablesError(f"{f}: a metrics.json must be a JSON object (one run), got a JSON "
                                  f"{type(meta).__name__}; fix or remove the file")
            if "experiment" in meta and "demo_seconds" not in meta:  # not the demo's copy
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
        meta = {"experiment": cfg.get("name") or r.group or r.name, "variant": cfg.get("variant") or "",
                "seed": cfg.get("seed", 0),
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
    """The run's value of ``metric`` (``test/`` before ``val/``; exact keys before patterns)."""
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
    """One cell: ``mean``, sample ``std`` (ddof=1), ``ci95`` (half-width of the 95 % Student-t interval of
    the mean) over ``n`` values; ``std``/``ci95`` are None when n < 2."""

    mean: Optional[float]
    std: Optional[float]
    n: int
    nonfinite: int = 0  # runs whose value is NaN/inf (left out of the mean; the cell is marked †)
    ci95: Optional[float] = None


@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    n_runs: int
    published: bool = False
    cite: str = ""
    experiment: str = ""
    datasets: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # dataset → "regular" | "emotional" | ""
    subjects: list[str] = field(default_factory=list)
    variant: str = ""  # the runs' command-line variant of their experiment ("" = as written)
    source_table: str = ""  # published row: the table of the cited paper its numbers were copied from


def t_quantile(n: int, level: float = CI_LEVEL) -> float:
    """Two-sided Student-t quantile ``t((1 + level) / 2, n − 1)`` for ``n ≥ 2`` values."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def ci_halfwidth(std: float, n: int, level: float = CI_LEVEL) -> float:
    """Half-width of the two-sided Student-t confidence interval of a mean: ``t(·, n−1) · s / √n``."""
    return t_quantile(n, level) * std / math.sqrt(n)


def aggregate(values: Iterable[Optional[float]]) -> Cell:
    """Mean, sample standard deviation (ddof=1) and 95 % t-interval half-width of the non-missing values
    (std and interval None for a single value)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return Cell(None, None, 0)
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return Cell(mean, None, 1)
    std = statistics.stdev(vals)
    return Cell(mean, std, len(vals), ci95=ci_halfwidth(std, len(vals)))


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


def _as_metric(m: str | Metric) -> Metric:
    return m if isinstance(m, Metric) else metric_def(m)


def group_rows(runs: Sequence[Run], spec: TableSpec, metrics: Sequence[str | Metric], table: str) -> list[Row]:
    """One row per experiment; ``metrics``: columns (:class:`Metric`) or metric ids."""
    cols = [_as_metric(m) for m in metrics]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.row, []).append(r)
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
        kinds = {d: next((r.kind for r in rs if r.dataset == d and r.kind), "") for d in datasets}
        exp, variant = rs[0].experiment, rs[0].variant
        label = (ABLATION_LABELS.get(exp, exp) + variant) if table == "ablation" else name
        cells = {}
        for m in cols:
            cells[m.id] = aggregate(metric_value(r, m) for r in rs)
            for r in rs:
                k = metric_key(r, m)
                if k is not None and not math.isfinite(r.metrics[k]) and metric_value(r, m) is None:
                    cells[m.id].nonfinite += 1
                    print(f"ua3dtalk-tables: warning: {r.source}: {k} is {r.metrics[k]} — left out of the "
                          f"mean of {name!r} (cell marked †)", file=sys.stderr)
        rows.append(Row(label, cells, len(rs), experiment=exp, variant=variant, datasets=datasets, kinds=kinds,
                        subjects=sorted({r.subject for r in rs if r.subject})))
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


def main(argv=None) -> int:
    ap = Parser(prog="ua3dtalk-tables", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--runs", nargs="*", default=[], help="run directories or parents of run directories")
    ap.add_argument("--wandb", nargs="*", default=[], metavar="ENTITY/PROJECT",
                    help="also read the runs of these wandb projects (online API)")
    ap.add_argument("--table", required=True, choices=sorted(TABLES))
    ap.add_argument("--format", default="md", choices=list(FORMATS),
                    help="md, latex, or json (every cell's mean, ci95, std, n)")
    ap.add_argument("--published", nargs="*", default=None,
                    help="published-number yamls or directories (default: experiments/published/; "
                         "--published with no file: none)")
    ap.add_argument("--experiments", nargs="*", default=None, help="experiment name patterns (replace the selection)")
    ap.add_argument("--dataset", default=None, help="keep the runs of this dataset directory name only")
    ap.add_argument("--metrics", default=None, help="comma-separated metric ids: " + ", ".join(METRICS)
                    + " (e_fid: a column per extractor; e_fid_<extractor>: that one)")
    ap.add_argument("--out", default=None, help="write the table to this file (atomically) instead of stdout")
    a = ap.parse_args(argv)
    try:
        if not a.runs and not a.wandb:
            raise TablesError("give --runs DIR... and/or --wandb ENTITY/PROJECT")
        if a.out:
            from ..utils.io import OutputError, check_output

            try:
                check_output(a.out, "--out", {f"--runs[{i}]": r for i, r in enumerate(a.runs)},
                             reads_back=("metrics.json",))
            except OutputError as e:
                raise TablesError(str(e)) from None
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
