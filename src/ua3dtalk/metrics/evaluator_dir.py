"""Which metrics to compute and the evaluator networks they need (DESIGN §8).

* :data:`METRIC_GROUPS` and :func:`parse_metrics`: the metric groups (the ``metrics`` argument of
  :class:`~.suite.MetricSuite`, the callback and the CLIs) and the keys they produce;
* :func:`load_evaluators` loads the evaluator networks a metric list needs (from a directory written by
  ``ua3dtalk-evaluators train`` and/or explicit paths) into an :class:`Evaluators`, recording for each
  one where it came from and, for each missing one, what is missing;
* :func:`read_manifest` reads the directory's ``manifest.json``.

Evaluator directory layout (``ua3dtalk-evaluators train --out DIR``)::

    DIR/manifest.json             what was trained on what, held-out reports
    DIR/landmark_regressor/       config.json + model.safetensors
    DIR/expression_regressor/     idem
    DIR/emotion_classifier/       idem
    DIR/syncnet.safetensors       project-trained SyncNet (or DIR/syncnet_v2.model, the public weights)
    DIR/3dmm.pt                   optional TorchScript expression / 3DMM regressor
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = [
    "METRIC_GROUPS", "DEFAULT_METRICS", "CHEAP_METRICS", "Evaluators", "load_evaluators", "parse_metrics",
    "read_manifest", "EVALUATOR_DIRS", "SYNCNET_FILES", "THREEDMM_FILE", "MANIFEST_FILE",
]


METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "psnr": ("psnr",), "ssim": ("ssim",), "lpips": ("lpips", "lpips_face"),
    "efid": ("efid_landmark", "efid_regressor", "efid_3dmm"), "lmd": ("lmd", "f_lmd"), "blink": ("blink_err",),
    "acc_emo": ("acc_emo", "acc_emo_clip"), "sync": ("sync_c", "sync_d", "sync_offset"),
}
DEFAULT_METRICS: tuple[str, ...] = tuple(METRIC_GROUPS)
CHEAP_METRICS: tuple[str, ...] = ("psnr", "ssim")
"""Groups computed at every validation; the others are "costly" (``every_n_epochs`` in the callback)."""

EVALUATOR_DIRS = {"landmark": "landmark_regressor", "expression": "expression_regressor",
                  "emotion": "emotion_classifier"}
SYNCNET_FILES = ("syncnet.safetensors", "syncnet_v2.model")
THREEDMM_FILE = "3dmm.pt"
MANIFEST_FILE = "manifest.json"

# evaluator each group needs (besides inputs)
_NEEDS = {"lpips": ("lpips",), "efid": ("landmark", "expression"), "lmd": ("landmark",), "blink": ("landmark",),
          "acc_emo": ("emotion",), "sync": ("syncnet",)}


def parse_metrics(metrics: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    """Metric groups from a list or a comma-separated string ("all" / None = every group)."""
    if metrics is None or metrics == "all":
        return DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    out = []
    for m in metrics:
        m = str(m)
        if m not in METRIC_GROUPS:
            raise ValueError(f"unknown metric {m!r}; expected some of {', '.join(METRIC_GROUPS)} (or 'all')")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("metrics: empty list; expected some of " + ", ".join(METRIC_GROUPS))
    return tuple(out)


@dataclass
class Evaluators:
    """Loaded evaluator networks (None = not available) with their provenance.

    landmark    :class:`~ua3dtalk.metrics.evaluators.LandmarkRegressor`
    expression  :class:`~ua3dtalk.metrics.evaluators.ExpressionRegressor`
    emotion     :class:`~ua3dtalk.metrics.evaluators.EmotionClassifier`
    syncnet     :class:`~ua3dtalk.metrics.syncnet.SyncNet`
    threedmm    :class:`~ua3dtalk.metrics.torchscript.TorchScriptExtractor` (optional, never warned about)
    lpips       :class:`~ua3dtalk.metrics.image.LPIPSMetric`
    sources     evaluator name → where it came from (path, "random backbone", …)
    missing     evaluator name → what is missing (file path and how to get it)
    """

    landmark: Any = None
    expression: Any = None
    emotion: Any = None
    syncnet: Any = None
    threedmm: Any = None
    lpips: Any = None
    sources: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)


def load_evaluators(directory: Union[str, Path, None] = None, metrics: Union[str, Sequence[str], None] = None, *,
                    lpips_random_backbone: bool = False, lpips_backbone: Union[str, Path, None] = None,
                    syncnet: Union[str, Path, None] = None, threedmm: Union[str, Path, None] = None,
                    threedmm_options: Optional[dict] = None) -> Evaluators:
    """Load the evaluators that ``metrics`` need.

    Args:
        directory: evaluator directory (module docstring layout), e.g. ``data/evaluators/synth_small``;
            None: only explicit paths and LPIPS.
        metrics: metric groups (see :data:`METRIC_GROUPS`), default all.
        lpips_random_backbone: use a seeded random AlexNet (key ``lpips_randbackbone``) — for smoke
            runs/tests only; otherwise the AlexNet weights must be in the torch hub cache.
        lpips_backbone: explicit AlexNet checkpoint path.
        syncnet: explicit SyncNet weights (``syncnet_v2.model`` or a project ``.safetensors``); default
            the directory's ``syncnet.safetensors`` / ``syncnet_v2.model``.
        threedmm: TorchScript 3DMM / expression regressor for ``efid_3dmm``; default ``DIR/3dmm.pt``
            when it exists.
        threedmm_options: keyword arguments of :class:`~ua3dtalk.metrics.torchscript.TorchScriptExtractor`.
    Raises:
        ValueError: unknown metric names; ``EvaluatorError`` / ``SyncNetWeightsError`` for evaluator files
        that exist but are corrupt (a missing file is recorded in ``missing``, not raised).
    """
    from . import evaluators as ev
    from .torchscript import TorchScriptExtractor

    groups = parse_metrics(metrics)
    need = {n for g in groups for n in _NEEDS.get(g, ())}
    d = Path(directory) if directory is not None else None
    if d is not None and not d.is_dir():
        raise FileNotFoundError(f"evaluator directory not found: {d} (build one with `ua3dtalk-evaluators train "
                                "--data DATASET --out DIR`, or `make evaluators`)")
    out = Evaluators()
    where = f"in {d}" if d is not None else "(no evaluator directory given: evaluators=DIR)"
    for name in ("landmark", "expression", "emotion"):
        if name not in need:
            continue
        if d is None:
            out.missing[name] = f"{EVALUATOR_DIRS[name]} {where}"
            continue
        p = d / EVALUATOR_DIRS[name]
        try:
            model = ev.load_evaluator(p)
        except ev.EvaluatorMissingError as e:
            out.missing[name] = str(e)
            continue
        setattr(out, name, model)
        out.sources[name] = str(p)
    if "syncnet" in need:
        from .syncnet import OFFICIAL_WEIGHTS_HINT, load_syncnet

        cands = [Path(syncnet)] if syncnet is not None else ([d / f for f in SYNCNET_FILES] if d is not None else [])
        found = next((p for p in cands if p.is_file()), None)
        if found is None:
            what = " or ".join(str(p) for p in cands) if cands else f"SyncNet weights {where}"
            out.missing["syncnet"] = f"SyncNet weights missing: {what} ({OFFICIAL_WEIGHTS_HINT})"
        else:
            out.syncnet = load_syncnet(found)
            out.sources["syncnet"] = str(found)
    if "lpips" in need:
        from .image import LPIPSMetric, LPIPSWeightsError

        try:
            out.lpips = LPIPSMetric(random_backbone=lpips_random_backbone, backbone_path=lpips_backbone)
            out.sources["lpips"] = ("lpips v0.1 alex, random backbone (seed 0): not comparable to LPIPS"
                                    if lpips_random_backbone else f"lpips v0.1 alex, {out.lpips.backbone_path}")
        except LPIPSWeightsError as e:
            out.missing["lpips"] = str(e)
    if "efid" in groups:
        tp = Path(threedmm) if threedmm is not None else (d / THREEDMM_FILE if d is not None else None)
        if tp is not None and (threedmm is not None or tp.is_file()):
            try:
                out.threedmm = TorchScriptExtractor(tp, **(threedmm_options or {}))
                out.sources["threedmm"] = str(tp)
            except ev.EvaluatorMissingError as e:
                out.missing["threedmm"] = str(e)
    return out


def read_manifest(directory: Union[str, Path]) -> Optional[dict]:
    """The ``manifest.json`` of an evaluator directory (None when absent). A manifest that is not a JSON
    object raises :class:`ValueError` naming the file."""
    p = Path(directory) / MANIFEST_FILE
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable evaluator manifest (JSON): {e}") from None
    if not isinstance(m, dict):
        raise ValueError(f"{p}: not an evaluator manifest (expected a JSON object, got {type(m).__name__})")
    return m
