"""Score rendered sequences against their ground truth with every configured metric (DESIGN §8).

The one layer that :class:`ua3dtalk.callbacks.metrics.MetricsCallback`, ``ua3dtalk-eval`` and
``ua3dtalk-score`` share, so a number means the same thing whichever of them produced it. No Lightning.

* :func:`load_evaluators` loads the evaluator networks a metric list needs (from a directory written by
  ``ua3dtalk-evaluators train`` and/or explicit paths) into an :class:`Evaluators`, recording for each
  one where it came from and, for each missing one, what is missing.
* :class:`MetricSuite` accumulates clips (:meth:`MetricSuite.update`: pred frames, ground-truth frames,
  landmarks, audio, emotion label, AU45) and :meth:`MetricSuite.compute` returns bare metric keys
  (``psnr``, ``lpips``, ``efid_landmark``, ``sync_c`` …; callers namespace them, e.g. ``val/psnr``).
  Per-clip metrics are averaged over clips weighted by frames (Sync-C/D/offset: plain mean over clips);
  E-FID pools the expression features of all clips (it compares distributions).
  :meth:`MetricSuite.provenance` maps every key to the evaluator that produced it.

A metric whose evaluator (or input: landmarks, audio, label) is missing is skipped, never replaced by
a made-up number; the first :meth:`~MetricSuite.compute` emits ONE ``UserWarning`` naming everything
that is missing (later ones only warn about new items).

Metric groups (the ``metrics`` argument) and the keys they produce:

==========  ====================================  ============================================
group       keys                                  needs
==========  ====================================  ============================================
psnr        psnr                                  —
ssim        ssim                                  —
lpips       lpips, lpips_face (or *_randbackbone)  AlexNet weights (or lpips_random_backbone);
                                                  face variant: ground-truth landmarks
efid        efid_landmark, efid_regressor,        landmark regressor / expression regressor /
            efid_3dmm                             TorchScript 3DMM regressor (when given); landmarks
lmd         lmd, f_lmd                            landmark regressor, landmarks
blink       blink_err                             landmark regressor, landmarks (AU45 from au.csv
                                                  when given, else from the reference landmarks)
acc_emo     acc_emo, acc_emo_clip                 emotion classifier, landmarks, emotion label
sync        sync_c, sync_d, sync_offset           SyncNet, landmarks, audio (≥ 6 frames)
==========  ====================================  ============================================

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
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "METRIC_GROUPS", "DEFAULT_METRICS", "CHEAP_METRICS", "Evaluators", "load_evaluators", "MetricSuite",
    "parse_metrics", "EVALUATOR_DIRS", "SYNCNET_FILES", "THREEDMM_FILE", "MANIFEST_FILE",
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
    threedmm    :class:`~ua3dtalk.metrics.evaluators.TorchScriptExtractor` (optional, never warned about)
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
        threedmm_options: keyword arguments of :class:`~ua3dtalk.metrics.evaluators.TorchScriptExtractor`.
    Raises:
        ValueError: unknown metric names; ``EvaluatorError`` / ``SyncNetWeightsError`` for evaluator files
        that exist but are corrupt (a missing file is recorded in ``missing``, not raised).
    """
    from . import evaluators as ev

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
                out.threedmm = ev.TorchScriptExtractor(tp, **(threedmm_options or {}))
                out.sources["threedmm"] = str(tp)
            except ev.EvaluatorMissingError as e:
                out.missing["threedmm"] = str(e)
    return out


def _as_frames(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{what} must be frames [N,3,H,W] (RGB, float in [0,1] or uint8) with N ≥ 1, got {shape}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{what} must be float in [0,1] or uint8, got {x.dtype}")
    return x.detach().float().cpu()


class MetricSuite:
    """Accumulate clips, then compute every configured metric (see the module docstring).

    Args:
        evaluators: :class:`Evaluators` (from :func:`load_evaluators`).
        metrics: metric groups (default all).
        vshift: SyncNet offsets searched (−vshift..vshift).
        warn: emit the one "skipped metrics" warning.
    """

    def __init__(self, evaluators: Optional[Evaluators] = None, metrics: Union[str, Sequence[str], None] = None, *,
                 vshift: int = 15, warn: bool = True):
        self.ev = evaluators if evaluators is not None else Evaluators()
        self.metrics = parse_metrics(metrics)
        self.vshift = int(vshift)
        self.warn = bool(warn)
        self._warned: set[str] = set()
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the accumulated clips (the warned-about items are kept: one warning per suite)."""
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self._feats: dict[str, tuple[list, list]] = {}
        self._skipped: dict[str, str] = {}
        self.clips: dict[str, dict] = {}
        self.num_frames = 0

    def _add(self, key: str, value: float, weight: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(value) * weight
        self._weights[key] = self._weights.get(key, 0.0) + weight

    def _skip(self, group: str, why: str) -> None:
        self._skipped.setdefault(group, why)

    def _missing(self, group: str) -> Optional[str]:
        """Reason the group's evaluator is missing, else None."""
        for n in _NEEDS.get(group, ()):
            if getattr(self.ev, n) is None:
                if group == "efid" and (self.ev.landmark is not None or self.ev.expression is not None
                                        or self.ev.threedmm is not None):
                    continue  # E-FID runs with whichever extractors are there
                return self.ev.missing.get(n, f"no {n} evaluator loaded")
        return None

    # ------------------------------------------------------------------ input
    def update(self, pred, gt, *, landmarks=None, audio=None, sr: int = 16000, emotion: Optional[int] = None,
               au45=None, name: Optional[str] = None, groups: Optional[Sequence[str]] = None) -> dict:
        """Score one clip and accumulate it.

        Args:
            pred: rendered frames [N,3,H,W] in [0,1] (or uint8), in time order at 25 fps.
            gt: ground-truth frames, same shape.
            landmarks: ground-truth 68 landmarks [N,68,2] (pixels, x = column) — face boxes of every
                face metric (rendered frames share the ground-truth cameras).
            audio: mono waveform [L] at ``sr`` starting at frame 0 (Sync-C/D).
            emotion: label id in :data:`ua3dtalk.data.formats.EMOTIONS` (Acc_emo); None/-1 = unknown.
            au45: ground-truth AU45_r [N] (OpenFace scale 0..5) for the blink error; NaNs = unknown.
            name: clip name (per-clip record).
            groups: subset of this suite's metric groups for this clip (the callback's cheap epochs).
        Returns:
            this clip's metrics (bare keys).
        Raises:
            ValueError: frames of different shapes / counts, bad landmark / AU / audio shapes (named).
        """
        name = name or f"clip{len(self.clips)}"
        pred = _as_frames(pred, f"{name}: pred")
        gt = _as_frames(gt, f"{name}: gt")
        if pred.shape[0] != gt.shape[0]:
            raise ValueError(f"{name}: pred has {pred.shape[0]} frames but gt has {gt.shape[0]}; the sequences "
                             "must have the same number of frames")
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: pred frames {tuple(pred.shape[1:])} and gt frames {tuple(gt.shape[1:])} "
                             "differ in size")
        N = pred.shape[0]
        lms = None
        if landmarks is not None:
            lms = torch.as_tensor(np.asarray(landmarks) if not isinstance(landmarks, torch.Tensor) else landmarks)
            lms = lms.detach().float().cpu()
            if lms.ndim != 3 or lms.shape[1] != 68 or lms.shape[2] not in (2, 3) or lms.shape[0] != N:
                raise ValueError(f"{name}: landmarks must be [N={N},68,2], got {tuple(lms.shape)}")
            lms = lms[..., :2]
        if au45 is not None:
            au45 = torch.as_tensor(np.asarray(au45, dtype=np.float32)).flatten()
            if au45.shape[0] != N:
                raise ValueError(f"{name}: au45 must have N={N} values, got {au45.shape[0]}")
            if not bool(torch.isfinite(au45).all()):
                au45 = None
        if audio is not None:
            a = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio)
            if a.ndim != 1:
                raise ValueError(f"{name}: audio must be a mono waveform [L], got shape {a.shape}")
            audio = a
        groups = self.metrics if groups is None else tuple(g for g in self.metrics if g in groups)
        rec: dict[str, float] = {}
        w = float(N)
        from .image import psnr_per_frame, ssim

        if "psnr" in groups:
            rec["psnr"] = float(psnr_per_frame(pred, gt).mean())
        if "ssim" in groups:
            rec["ssim"] = ssim(pred, gt)
        need_lms = {"efid", "lmd", "blink", "acc_emo", "sync"}
        for g in groups:
            if g in need_lms | {"lpips"}:
                why = self._missing(g)
                if why is not None:
                    self._skip(g, why)
                elif g in need_lms and lms is None:
                    self._skip(g, "ground-truth landmarks (face boxes) of the clip")
        if "lpips" in groups and self.ev.lpips is not None:
            rec[self.ev.lpips.key] = self.ev.lpips(pred, gt)
            if lms is not None:
                from .evaluators import face_boxes

                rec[self.ev.lpips.face_key] = self.ev.lpips.face(pred, gt, face_boxes(lms))
        lm = self.ev.landmark
        if lm is not None and lms is not None and any(g in groups for g in ("lmd", "blink", "efid")):
            from .evaluators import face_boxes
            from .landmarks import blink_error, ear_to_au45, eye_aspect_ratio, landmark_expression, lmd

            boxes = face_boxes(lms, scale=lm.config.box_scale)
            pl, gl = lm.predict(pred, boxes), lm.predict(gt, boxes)  # one detector on both (LMD convention)
            if "lmd" in groups:
                rec["lmd"], rec["f_lmd"] = lmd(pl, gl, region="mouth"), lmd(pl, gl, region="face")
            if "blink" in groups:
                ear_ref = eye_aspect_ratio(gl)
                open_ear = float(torch.quantile(ear_ref.double(), 0.9))
                au_gt = au45 if au45 is not None else ear_to_au45(ear_ref, open_ear=open_ear)
                rec["blink_err"] = blink_error(ear_to_au45(eye_aspect_ratio(pl), open_ear=open_ear), au_gt)
            if "efid" in groups:
                self._feat("efid_landmark", landmark_expression(pl), landmark_expression(gl))
        if "efid" in groups and lms is not None:
            from .evaluators import face_boxes

            for ex in (self.ev.expression, self.ev.threedmm):
                if ex is not None:
                    scale = getattr(getattr(ex, "config", None), "box_scale", None) or getattr(ex, "box_scale", 1.3)
                    b = face_boxes(lms, scale=scale)
                    self._feat(f"efid_{ex.name}", ex.extract(pred, b), ex.extract(gt, b))
        if "acc_emo" in groups and self.ev.emotion is not None and lms is not None:
            if emotion is None or int(emotion) < 0:
                self._skip("acc_emo", "the clip's emotion label (emotion.json)")
            else:
                from .evaluators import emotion_accuracy, face_boxes

                c = self.ev.emotion
                if int(emotion) >= len(c.config.class_names):
                    raise ValueError(f"{name}: emotion label {emotion} outside the classifier's classes "
                                     f"{c.config.class_names}")
                rec.update(emotion_accuracy(c, pred, face_boxes(lms, scale=c.config.box_scale), int(emotion)))
        if "sync" in groups and self.ev.syncnet is not None and lms is not None:
            from .syncnet import WINDOW, crop_for_sync, sync_scores

            if audio is None:
                self._skip("sync", "the clip's audio (aud.wav / the GT video's audio track)")
            elif N < WINDOW + 1:
                self._skip("sync", f"clips of at least {WINDOW + 1} frames (got {N} in {name})")
            else:
                net = self.ev.syncnet
                crops = crop_for_sync(pred, lms, size=int(net.config.lip_size))
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="SyncNet: audio")
                    r = sync_scores(net, crops, audio, sr, vshift=self.vshift)
                rec.update(r.as_dict())
        for k, v in rec.items():
            self._add(k, v, 1.0 if k.startswith("sync_") or k == "acc_emo_clip" else w)
        self.clips[name] = {"frames": N, **rec}
        self.num_frames += N
        return rec

    def _feat(self, key: str, fp: torch.Tensor, fg: torch.Tensor) -> None:
        a, b = self._feats.setdefault(key, ([], []))
        a.append(torch.as_tensor(fp).detach().double().cpu().numpy())
        b.append(torch.as_tensor(fg).detach().double().cpu().numpy())

    # ------------------------------------------------------------------ output
    def compute(self) -> dict:
        """Metrics of the accumulated clips (bare keys; see the module docstring)."""
        from .frechet import frechet_distance

        out = {k: self._sums[k] / self._weights[k] for k in self._sums if self._weights[k] > 0}
        for key, (a, b) in self._feats.items():
            fp, fg = np.concatenate(a), np.concatenate(b)
            if fp.shape[0] < 2:
                self._skip("efid", "at least 2 frames for E-FID")
                continue
            out[key] = frechet_distance(fp, fg)
        new = {g: why for g, why in self._skipped.items() if g not in self._warned}
        if new and self.warn:
            keys = {g: ", ".join(METRIC_GROUPS[g]) for g in new}
            warnings.warn("metrics skipped (missing evaluator or input; no number is reported for them): "
                          + "; ".join(f"{keys[g]}: missing {why}" for g, why in new.items()), UserWarning,
                          stacklevel=2)
        self._warned |= set(new)
        return out

    @property
    def skipped(self) -> dict:
        """Metric group → what was missing (of the accumulated clips)."""
        return dict(self._skipped)

    def provenance(self, keys: Optional[Sequence[str]] = None) -> dict:
        """Metric key → the evaluator that produced it ("—" for evaluator-free metrics)."""
        src = self.ev.sources
        out = {}
        for k in keys if keys is not None else list(self._sums) + list(self._feats):
            if k in ("psnr", "ssim"):
                out[k] = "torchmetrics (no evaluator)"
            elif k.startswith("lpips"):
                out[k] = src.get("lpips", "—")
            elif k in ("lmd", "f_lmd", "blink_err", "efid_landmark"):
                out[k] = f"landmark regressor {src.get('landmark', '—')}"
            elif k == "efid_regressor":
                out[k] = f"expression regressor {src.get('expression', '—')}"
            elif k.startswith("efid_"):
                out[k] = f"TorchScript extractor {src.get('threedmm', '—')}"
            elif k.startswith("acc_emo"):
                out[k] = f"emotion classifier {src.get('emotion', '—')}"
            elif k.startswith("sync_"):
                out[k] = f"SyncNet {src.get('syncnet', '—')}"
        return out


def read_manifest(directory: Union[str, Path]) -> Optional[dict]:
    """The ``manifest.json`` of an evaluator directory (None when absent)."""
    p = Path(directory) / MANIFEST_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def finite_or_none(v):
    """JSON-friendly: floats stay (inf included: identical videos have PSNR = inf), NaN → None."""
    return None if isinstance(v, float) and math.isnan(v) else v
