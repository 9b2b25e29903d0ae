"""E-FID: Fréchet distance between the per-frame expression coefficients of generated and ground-truth
frames (DESIGN §8; the EMO / Hallo convention, there with Deep3DFaceRecon 3DMM coefficients).

The extractor is pluggable and its name is part of the metric key, ``efid_<name>``:

=============  ===================================================================================
key            extractor
=============  ===================================================================================
efid_landmark  :class:`~ua3dtalk.metrics.evaluators.LandmarkRegressor` → 68 landmarks →
               :func:`~ua3dtalk.metrics.landmarks.landmark_expression` (11 pose-normalised geometric
               coefficients on a fixed basis); ground-truth ``.lms`` landmarks may be passed directly
efid_regressor :class:`~ua3dtalk.metrics.evaluators.ExpressionRegressor` trained by the project on the
               dataset's ``expr.npy``
efid_3dmm      :class:`~ua3dtalk.metrics.torchscript.TorchScriptExtractor`: any 3DMM / expression
               regressor loaded from a TorchScript file
=============  ===================================================================================

Numbers from different extractors are not comparable with each other (nor with published E-FID, which
used Deep3DFaceRecon); the key says which one produced a number.
"""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np
import torch

from .frechet import frechet_distance
from .landmarks import landmark_expression

__all__ = ["efid", "efid_key", "expression_features", "ExpressionExtractor"]


class ExpressionExtractor(Protocol):
    """Anything with a ``name`` and ``extract(frames [N,3,H,W] in [0,1], boxes [N,4]) -> [N,D]``."""

    name: str

    def extract(self, frames: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor: ...


def efid_key(name: str) -> str:
    """Metric key of an extractor: ``efid_<name>`` (e.g. ``efid_landmark``)."""
    if not name or not str(name).replace("_", "").isalnum():
        raise ValueError(f"extractor name must be a non-empty identifier, got {name!r}")
    return f"efid_{name}"


def _is_landmarks(x) -> bool:
    return x.ndim == 3 and x.shape[-2] == 68 and x.shape[-1] in (2, 3)


def expression_features(x, extractor: Optional[ExpressionExtractor] = None, boxes=None) -> tuple[np.ndarray, str]:
    """Per-frame expression features [N,D] (float64) and the extractor name of one input.

    ``x`` may be
      * features [N,D] (used as they are; the name comes from ``extractor``),
      * landmarks [N,68,2|3] (→ :func:`landmark_expression`, name ``"landmark"``),
      * frames [N,3,H,W] in [0,1] (→ ``extractor.extract(x, boxes)``; ``boxes`` [N,4] face boxes, e.g.
        :func:`~ua3dtalk.metrics.evaluators.face_boxes` of the ground-truth landmarks).
    """
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 2:
        if extractor is None:
            raise ValueError("efid: feature inputs [N,D] need an extractor (or name=) to name the metric")
        return t.detach().double().cpu().numpy(), extractor.name
    if _is_landmarks(t):
        return landmark_expression(t.detach().double().cpu()).numpy(), "landmark"
    if t.ndim == 4 and t.shape[1] == 3:
        if extractor is None:
            raise ValueError("efid: frames [N,3,H,W] need an extractor (LandmarkRegressor, ExpressionRegressor, "
                             "TorchScriptExtractor)")
        if boxes is None:
            raise ValueError("efid: frames need face boxes [N,4] (face_boxes of the ground-truth landmarks)")
        return extractor.extract(t, boxes).detach().double().cpu().numpy(), extractor.name
    raise ValueError(f"efid: expected features [N,D], landmarks [N,68,2|3] or frames [N,3,H,W], got {tuple(t.shape)}")


class _Named:
    def __init__(self, name: str):
        self.name = name


def efid(pred, gt, extractor: Optional[ExpressionExtractor] = None, *, boxes=None, gt_boxes=None,
         name: Optional[str] = None) -> dict:
    """E-FID between generated and ground-truth sequences.

    Args:
        pred: generated frames [N,3,H,W] in [0,1], landmarks [N,68,2|3] or features [N,D].
        gt: ground truth of the same kind (or landmarks when ``extractor`` is the landmark one) [M,...].
        extractor: the expression extractor for frame inputs (its ``name`` names the key).
        boxes: face boxes [N,4] of ``pred`` frames; ``gt_boxes`` those of ``gt`` (default ``boxes``;
            rendered frames share the ground-truth cameras, so the ground-truth boxes fit both).
        name: overrides the extractor name in the key.
    Returns:
        ``{"efid_<name>": Fréchet distance}`` (see :func:`~ua3dtalk.metrics.frechet.frechet_distance`).
    """
    ex = extractor if extractor is not None else (_Named(name) if name is not None else None)
    fp, n1 = expression_features(pred, ex, boxes)
    fg, n2 = expression_features(gt, ex, gt_boxes if gt_boxes is not None else boxes)
    if n1 != n2 and name is None:
        raise ValueError(f"efid: pred features come from {n1!r} but gt features from {n2!r}; use one extractor")
    if fp.shape[1] != fg.shape[1]:
        raise ValueError(f"efid: feature dimensions differ ({fp.shape[1]} for pred via {n1!r}, {fg.shape[1]} for gt "
                         f"via {n2!r}); use the same extractor for both")
    return {efid_key(name or n1): frechet_distance(fp, fg)}
