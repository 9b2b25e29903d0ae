"""E-FID: keys name the extractor; ground truth vs itself ≈ 0; emotions are separated."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ua3dtalk.metrics.efid import efid, efid_key
from ua3dtalk.metrics.landmarks import TEMPLATE_68


def _clip(gt, emotion: int, intensity: int) -> torch.Tensor:
    return (gt.emotion == emotion) & (gt.intensity == intensity)


def _separation(gt, feats_of) -> tuple[np.ndarray, np.ndarray]:
    """Per emotion e: FD(e@3, e@2) (same emotion, another clip) and mean_f≠e FD(e@3, f@3)."""
    same, cross = [], []
    for e in range(8):
        a = feats_of(_clip(gt, e, 3))
        same.append(efid(a, feats_of(_clip(gt, e, 2)), name="x")["efid_x"])
        cross.append(np.mean([efid(a, feats_of(_clip(gt, f, 3)), name="x")["efid_x"] for f in range(8) if f != e]))
    return np.array(same), np.array(cross)


def test_keys_and_input_kinds():
    rng = np.random.default_rng(0)
    lms = TEMPLATE_68[None] * 100 + rng.normal(0, 1.0, (20, 68, 2))
    out = efid(lms, lms + [3.0, 4.0])  # landmarks → the landmark basis, translation-free
    assert list(out) == ["efid_landmark"] and out["efid_landmark"] == pytest.approx(0.0, abs=1e-9)
    f1, f2 = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 1
    assert list(efid(f1, f2, name="3dmm")) == ["efid_3dmm"]
    with pytest.raises(ValueError, match="need an extractor"):
        efid(f1, f2)
    with pytest.raises(ValueError, match="frames need face boxes"):
        efid(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), extractor=type("E", (), {"name": "regressor"})())
    with pytest.raises(ValueError, match="from 'landmark' but gt features from 'y'"):
        efid(lms, rng.normal(size=(20, 11)), extractor=type("E", (), {"name": "y"})())
    with pytest.raises(ValueError, match="identifier"):
        efid_key("bad name")


def test_landmark_efid_on_ground_truth(emo8_gt):
    gt = emo8_gt
    assert efid(gt.landmarks, gt.landmarks)["efid_landmark"] < 1e-9
    same, cross = _separation(gt, lambda m: gt.landmarks[m])
    print("landmark E-FID same emotion", same.round(4), "other emotions", cross.round(4))
    assert cross.mean() > 2.0 * same.mean()
    assert (same < cross).sum() >= 6


@pytest.mark.slow
def test_regressor_efid_on_ground_truth_frames(trained_expression, emo8_gt):
    gt = emo8_gt
    reg, _ = trained_expression
    boxes = gt.boxes(reg.config.box_scale)
    frames = gt.images()
    out = efid(frames, frames, reg, boxes=boxes)
    assert list(out) == ["efid_regressor"] and out["efid_regressor"] < 1e-9
    feats = reg.extract(frames, boxes)
    same, cross = _separation(gt, lambda m: feats[m])
    print("regressor E-FID same emotion", same.round(3), "other emotions", cross.round(3))
    assert cross.mean() > 2.0 * same.mean()
    assert (same < cross).sum() >= 7
    # the frames API gives the features API's value
    m1, m2 = _clip(gt, 5, 3), _clip(gt, 6, 3)
    v = efid(frames[m1], frames[m2], reg, boxes=boxes[m1], gt_boxes=boxes[m2])["efid_regressor"]
    assert v == pytest.approx(efid(feats[m1], feats[m2], reg)["efid_regressor"], rel=1e-6)


@pytest.mark.slow
def test_landmark_regressor_efid_key(trained_landmark, emo8_gt):
    gt = emo8_gt
    lr, _ = trained_landmark
    m = _clip(gt, 1, 3)
    boxes = gt.boxes(lr.config.box_scale)[m]
    out = efid(gt.images(m), gt.landmarks[m], lr, boxes=boxes)  # detected vs ground-truth landmarks
    assert list(out) == ["efid_landmark"] and 0 <= out["efid_landmark"] < 0.05
