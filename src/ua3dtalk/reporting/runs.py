"""Runs and their aggregation for the paper's tables (behind ``ua3dtalk-tables``, DESIGN §9).

* the metric columns (:class:`Metric`, :data:`METRICS`, E-FID per extractor), the tables
  (:class:`TableSpec`, :data:`TABLES`, :data:`ABLATION_ORDER`, :data:`ABLATION_LABELS`);
* runs: :class:`Run` from a ``metrics.json`` (:func:`find_runs`) or a wandb project (:func:`wandb_runs`);
* aggregation: :func:`aggregate` (mean ± half-width of the 95 % Student-t interval), :func:`group_rows`.

Rendering (Markdown, LaTeX, JSON) and published numbers are in :mod:`ua3dtalk.reporting.tables`.
"""
from __future__ import annotations

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
    # emotion control by label (``ua3dtalk-eval control=true``; not in the paper's tables, ask with --metrics)
    Metric("acc_emo_label", "Acc_emo by label", True, 3, ("acc_emo_label",)),
    Metric("emo_shift", "label shift (0–255)", True, 2, ("emo_shift",)),
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
                  "abl_fusion_fullcov", "baseline_*", "abl_landmark_none", "abl_swap_none")

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
    "abl_landmark_none": "★ w/o landmark and swap terms", "abl_swap_none": "★ w/o emotion-swap term",
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
