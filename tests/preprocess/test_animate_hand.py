"""The hand occluder of the animated real-face clip (ua3dtalk.preprocess.animate, ``hand=(a, b)``): it appears only
in frames a … b−1, slides in and out, covers the cheek and the mouth corner, and leaves the rest of the frame as it
was."""
from __future__ import annotations

import numpy as np
import pytest

from ua3dtalk.preprocess.animate import HAND_RGB, animate, hand_amounts


def test_the_hand_covers_the_cheek_only_in_its_frames():
    plain, _ = animate(12, 96)
    handed, truth = animate(12, 96, hand=(3, 10))
    plain, handed = list(plain), list(handed)
    np.testing.assert_allclose(truth.hand, [0, 0, 0, .25, .5, .75, 1, .75, .5, .25, 0, 0])
    for i in range(12):
        diff = np.abs(plain[i].astype(int) - handed[i].astype(int)).max(-1)
        if truth.hand[i] == 0:
            assert diff.max() == 0, i
        else:
            assert diff.max() > 20, i
    full = np.abs(plain[6].astype(int) - handed[6].astype(int)).max(-1) > 20
    frac = full.mean()
    assert 0.03 < frac < 0.25, frac  # a hand, not the whole frame
    rows, cols = np.nonzero(full)
    assert cols.mean() < 96 / 2 and 96 * 0.4 < rows.mean() < 96 * 0.95  # the subject's right cheek and jaw
    skin = handed[6][full].astype(float).mean(0)
    assert np.abs(skin - HAND_RGB).max() < 40
    with pytest.raises(ValueError, match="hand="):
        hand_amounts(10, (5, 11))
    assert not hand_amounts(10, None).any()
