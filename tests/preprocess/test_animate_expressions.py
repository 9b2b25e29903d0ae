"""The expressive animated real-face clip (ua3dtalk.preprocess.animate, ``expressive=True``): expressions held for
1–3 s, independent of the speech, that move the brows and the lip corners by known amounts — and that the
landmark expression of the preprocessing reads back (the material of docs/history/2026-12-06-expressive-face.md)."""
from __future__ import annotations

import numpy as np

from ua3dtalk.preprocess.animate import (BROW_PX, BROWS, CORNER_PX, CORNERS, EXPRESSIONS, PhotoAnimator, animate,
                                         expression_track, rot)


def test_expression_track_holds_expressions_and_blends_them():
    ex, names = expression_track(500, seed=0)
    assert ex.shape == (500, 2) and len(names) == 500
    runs = [1]
    for a, b in zip(names, names[1:]):
        if a == b:
            runs[-1] += 1
        else:
            runs.append(1)
    assert len(set(names)) == len(EXPRESSIONS)  # 20 s show every expression
    assert all(25 <= r <= 75 for r in runs[:-1])  # held 1–3 s at 25 fps
    held = [i for i in range(8, 500) if len(set(names[i - 8:i + 1])) == 1]
    np.testing.assert_allclose(ex[held], [EXPRESSIONS[names[i]] for i in held])  # 8 frames after a change: there
    assert np.abs(np.diff(ex, axis=0)).max() < 0.4  # changes are blended, not cut
    other, _ = expression_track(500, seed=1)
    assert not np.allclose(ex, other)


def test_expressions_move_brows_and_corners_and_nothing_far_away():
    an = PhotoAnimator(size=256)
    R, T = rot(0, 0, 0), np.zeros(2)
    neutral = an.render(R, T, 3.0, None)
    np.testing.assert_array_equal(an.render(R, T, 3.0, np.zeros(2)), neutral)
    # photo → output: 1 output px per photo px at 256² (the crop's side is 256 photo px)
    up = an.forward(BROWS, R, T, 0.0, np.array([1.0, 0.0])) - an.forward(BROWS, R, T, 0.0, None)
    np.testing.assert_allclose(up[:, 1], -BROW_PX, atol=0.05)
    corner = an.forward(CORNERS, R, T, 0.0, np.array([0.0, 1.0])) - an.forward(CORNERS, R, T, 0.0, None)
    assert (corner[:, 1] < -0.9 * CORNER_PX).all() and corner[0, 0] < 0 < corner[1, 0]  # up and outwards
    # the backward warp inverts the forward one
    p = np.array([[200.0, 92.0], [230.0, 150.0], [250.0, 88.0]])
    e = np.array([0.7, -0.6])
    dx, dy = an._expr_disp(p[:, 0], p[:, 1], e)
    back = np.stack(an._expr_inverse(p[:, 0] + dx, p[:, 1] + dy, e), -1)
    np.testing.assert_allclose(back, p, atol=1e-3)
    surprised = an.render(R, T, 3.0, np.array(EXPRESSIONS["surprised"]))
    diff = np.abs(surprised.astype(int) - neutral.astype(int)).max(-1) > 12
    rows = np.nonzero(diff)[0]
    assert diff.any() and rows.max() < 256 * 0.5  # the brows and the upper lids, not the mouth or the suit


def test_an_expressive_clip_records_its_track():
    frames, truth = animate(60, 96, expressive=True, seed=3)
    assert truth.expression.shape == (60, 2) and len(truth.expression_names) == 60
    np.testing.assert_allclose(truth.expression, expression_track(60, seed=3)[0])
    plain, t0 = animate(60, 96, seed=3)
    assert not t0.expression.any() and set(t0.expression_names) == {"neutral"}
    frames, plain = list(frames), list(plain)
    moving = [i for i in range(60) if np.any(truth.expression[i])]
    assert moving and all(np.abs(frames[i].astype(int) - plain[i].astype(int)).max() > 0 for i in moving)
