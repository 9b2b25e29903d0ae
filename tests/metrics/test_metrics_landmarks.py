"""Landmark measures: EAR/AU45, Procrustes normalisation, expression basis, LMD, blink error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ua3dtalk.metrics.landmarks import (
    LANDMARK_EXPR_NAMES, MOUTH_INDICES, TEMPLATE_68, blink_count, blink_error, ear_to_au45, eye_aspect_ratio,
    landmark_expression, lmd, normalize_landmarks,
)


def _similarity(rng, pts):
    """Random similarity transform (scale, rotation, translation) of [..., 68, 2]."""
    s = rng.uniform(0.3, 300.0)
    a = rng.uniform(-math.pi, math.pi)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = rng.uniform(-500, 500, 2)
    return s * pts @ R.T + t


@pytest.fixture(scope="module")
def gt(synth_emo8):
    """Ground truth of all clips: landmarks [N,68,2], expr [N,K], AU45 [N], clip lengths."""
    from ua3dtalk.data.clip import iter_clips
    from ua3dtalk.data.loading import load_emotional

    L, E, A, n = [], [], [], []
    for c in iter_clips(load_emotional(synth_emo8)):
        L.append(np.stack([c.landmarks(i) for i in range(len(c))]))
        E.append(np.asarray(c.expr(), dtype=np.float64))
        A.append(c.au()["AU45_r"])
        n.append(len(c))
    return np.concatenate(L), np.concatenate(E), np.concatenate(A), n


def test_template_is_constant_and_normalises_to_itself():
    assert TEMPLATE_68.shape == (68, 2) and not TEMPLATE_68.flags.writeable
    np.testing.assert_allclose(normalize_landmarks(TEMPLATE_68), TEMPLATE_68, atol=1e-12)
    assert len(LANDMARK_EXPR_NAMES) == landmark_expression(TEMPLATE_68[None]).shape[1] == 11


def test_normalize_is_invariant_to_similarity_transforms(gt):
    rng = np.random.default_rng(0)
    lms = gt[0][::7][:30].astype(np.float64)
    ref = normalize_landmarks(lms)
    moved = np.stack([_similarity(rng, f) for f in lms])
    np.testing.assert_allclose(normalize_landmarks(moved), ref, atol=1e-9)
    # the template itself moved anywhere comes back exactly
    np.testing.assert_allclose(normalize_landmarks(_similarity(rng, TEMPLATE_68)), TEMPLATE_68, atol=1e-9)
    # a reflection is *not* a similarity: it must not be undone
    assert np.abs(normalize_landmarks(TEMPLATE_68 * [-1, 1]) - TEMPLATE_68).max() > 0.05
    # expression coefficients inherit the invariance
    np.testing.assert_allclose(landmark_expression(moved), landmark_expression(lms), atol=1e-9)


def test_kinds_dtypes_and_gradients():
    rng = np.random.default_rng(1)
    x = (TEMPLATE_68 * 100 + 50 + rng.normal(0, 1, (3, 68, 2))).astype(np.float32)
    out = landmark_expression(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 11)
    xt = torch.tensor(x, requires_grad=True)
    outt = landmark_expression(xt)
    assert isinstance(outt, torch.Tensor) and outt.dtype == torch.float32
    np.testing.assert_allclose(outt.detach().numpy(), out, rtol=1e-5, atol=1e-6)
    outt.sum().backward()
    assert xt.grad is not None and torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0
    # 3-D landmarks: depth ignored
    x3 = np.concatenate([x, rng.normal(0, 5, (3, 68, 1)).astype(np.float32)], -1)
    np.testing.assert_allclose(normalize_landmarks(x3), normalize_landmarks(x), atol=1e-5)
    np.testing.assert_allclose(eye_aspect_ratio(x3), eye_aspect_ratio(x), atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((5, 67, 2)), np.zeros((68,)), np.zeros((2, 68, 4))])
def test_bad_shapes_raise(bad):
    with pytest.raises(ValueError, match=r"lms: expected landmarks of shape \[\.\.\., 68"):
        normalize_landmarks(bad)


def test_nan_raises():
    x = TEMPLATE_68.copy()
    x[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        landmark_expression(x[None])


def test_mouth_open_tracks_ground_truth_jaw_open(gt):
    lms, expr, _, _ = gt
    coef = landmark_expression(lms)
    names = list(LANDMARK_EXPR_NAMES)
    from ua3dtalk.data.synth.head import EXPR, ProceduralHead

    # ground truth of the generator: the jaw opening, the lid aperture (blinks and the lid action units)
    # and the mean brow height (brow action units)
    head = ProceduralHead(0, 600)
    aperture = np.array([sum(head.eye_aperture(e)) for e in expr])
    brow = np.array([-head.brow_offset(np.linspace(-1, 1, 5), e)[1].mean() for e in expr])
    r_mouth = np.corrcoef(coef[:, names.index("mouth_open")], expr[:, EXPR["jaw_open"]])[0, 1]
    r_eye = np.corrcoef(coef[:, names.index("eye_open")], aperture)[0, 1]
    r_brow = np.corrcoef(coef[:, names.index("brow_raise")], brow)[0, 1]
    assert r_mouth > 0.9, r_mouth
    assert r_eye > 0.9, r_eye
    assert r_brow > 0.7, r_brow


def test_ear_drops_on_blink_frames(gt):
    lms, _, au45, _ = gt
    ear = eye_aspect_ratio(lms)
    blink = au45 > 2.5
    assert blink.sum() >= 5 and (~blink).sum() > 100
    assert ear[blink].mean() < 0.5 * np.median(ear[~blink]), (ear[blink].mean(), np.median(ear[~blink]))


def test_ear_to_au45_recovers_ground_truth_blinks(gt, synth_emo8):
    """On clips whose lids only blink (no lid action unit in the emotion) the EAR proxy reproduces the
    ground-truth AU45 (the blink); the lid action units of the other emotions (AU5 wide eyes, AU6/AU7
    narrowing, drooping lids) ramp in and out and move the EAR too, which the clip-level proxy reads as
    partial closure."""
    from ua3dtalk.data.clip import iter_clips
    from ua3dtalk.data.loading import load_emotional

    lms, _, au45, lengths = gt
    emotions = [c.emotion_name for c in iter_clips(load_emotional(synth_emo8))]
    ear = eye_aspect_ratio(lms)
    errs, off = [], 0
    for n in lengths:
        pred = ear_to_au45(ear[off:off + n])
        assert pred.min() >= 0 and pred.max() <= 5
        errs.append(blink_error(pred, au45[off:off + n]))
        off += n
    still = [e for e, name in zip(errs, emotions) if name in ("neutral", "contempt")]
    assert len(still) == 6 and max(still) < 0.2, errs
    assert max(errs) < 1.5 and np.mean(errs) < 0.5, errs
    # a constant-AU45 prediction is much worse on clips that blink
    assert blink_error(np.zeros_like(au45), au45) > 3 * np.mean(still)


def test_ear_to_au45_mapping():
    ear = np.array([0.3, 0.3, 0.15, 0.0, 0.3, 0.36])
    np.testing.assert_allclose(ear_to_au45(ear, open_ear=0.3), [0, 0, 2.5, 5, 0, 0])
    t = ear_to_au45(torch.tensor(ear, dtype=torch.float32), open_ear=0.3)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    with pytest.raises(ValueError, match="open-eye EAR"):
        ear_to_au45(ear, open_ear=0.0)
    with pytest.raises(ValueError, match=r"ear: expected a non-empty 1-D"):
        ear_to_au45(ear[None])


def test_blink_error_and_count():
    gt_ = np.array([0, 0, 5, 5, 0, 0, 0, 4, 0], float)
    pred = np.array([0, 1, 4, 5, 0, 0, 0, 0, 0], float)
    assert blink_error(pred, gt_) == pytest.approx(6 / 9)
    assert blink_error(gt_ + 10, gt_ + 10) == 0.0
    assert blink_count(gt_) == 2 and blink_count(gt_, min_gap=5) == 1 and blink_count(pred) == 1
    with pytest.raises(ValueError, match="same non-empty shape"):
        blink_error(pred[:3], gt_)


def test_lmd_values():
    rng = np.random.default_rng(2)
    gt_ = TEMPLATE_68[None] * 100 + rng.normal(0, 2, (4, 68, 2))
    assert lmd(gt_, gt_) == 0.0 and lmd(gt_, gt_, region="face") == 0.0
    # translation is removed (each set mean-centred)
    assert lmd(gt_ + [7.0, -3.0], gt_) == pytest.approx(0.0, abs=1e-12)
    # one mouth point moved by d: after centring it moves d·19/20, the 19 others d/20
    pred = gt_.copy()
    pred[:, 50] += [3.0, 4.0]
    assert lmd(pred, gt_) == pytest.approx(5.0 * (19 / 20 + 19 / 20) / 20)
    # the whole mouth moved by v: LMD 0, F-LMD = (48·20/68 + 20·48/68)|v| / 68
    pred = gt_.copy()
    pred[:, list(MOUTH_INDICES)] += [3.0, 4.0]
    assert lmd(pred, gt_) == pytest.approx(0.0, abs=1e-12)
    assert lmd(pred, gt_, region="face") == pytest.approx(5.0 * (48 * 20 / 68 + 20 * 48 / 68) / 68)
    assert lmd(torch.tensor(pred), torch.tensor(gt_), region="face") == pytest.approx(lmd(pred, gt_, region="face"))
    with pytest.raises(ValueError, match="region"):
        lmd(pred, gt_, region="lips")
    with pytest.raises(ValueError, match="same shape"):
        lmd(pred[:2], gt_)
