"""Head pose: exact recovery on projected templates, and cameras of synthetic videos against the
ground truth up to a similarity transform."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ua3dtalk.preprocess import pose as P
from ua3dtalk.preprocess.template import TEMPLATE_3D


def _poses(n, seed=0):
    rng = np.random.default_rng(seed)
    ang = rng.uniform(-15, 15, (n, 3))
    R = np.stack([P.rotvec_to_matrix(np.radians(a)) for a in ang])
    t = np.stack([rng.uniform(-0.05, 0.05, n), rng.uniform(-0.05, 0.05, n), rng.uniform(0.9, 1.1, n)], -1)
    return R, t


def test_exact_landmarks_give_exact_poses():
    R, t = _poses(20)
    f, c = 700.0, np.array([256.0, 256.0])
    x, _ = P.project(np.asarray(TEMPLATE_3D), R, t, f, c)
    fit = P.fit_clip(x, 512, 512, focal=f, template=np.asarray(TEMPLATE_3D), smooth_sigma=0)
    err = P.rotation_angle(np.swapaxes(fit.R, 1, 2) @ R)
    assert err.max() < 0.05, err.max()
    np.testing.assert_allclose(fit.t, t, atol=1e-4)
    assert fit.errors.max() < 0.01


def test_focal_search_finds_a_strong_perspective():
    """With large head rotations and a close camera the focal length is observable."""
    rng = np.random.default_rng(1)
    n = 40
    R = np.stack([P.rotvec_to_matrix(np.radians(rng.uniform(-30, 30, 3))) for _ in range(n)])
    t = np.stack([np.zeros(n), np.zeros(n), np.full(n, 0.45)], -1)
    f, c = 1.6 * 512, np.array([256.0, 256.0])
    x, _ = P.project(np.asarray(TEMPLATE_3D), R, t, f, c)
    fb = P.search_focal(np.asarray(TEMPLATE_3D), x, np.ones(68), c, 512)
    assert abs(fb / f - 1) < 0.05, fb / f


def test_similarity_alignment_recovers_a_known_transform():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(30, 3))
    Q = P.rotvec_to_matrix(np.array([0.3, -0.2, 0.5]))
    B = 2.5 * A @ Q.T + np.array([1.0, -2.0, 0.5])
    s, Qe, d = P.umeyama(A, B)
    assert abs(s - 2.5) < 1e-9 and np.allclose(Qe, Q) and np.allclose(d, [1.0, -2.0, 0.5])


def _gt(clip_dir):
    from ua3dtalk.data.loading import load_clip

    clip = load_clip(clip_dir)
    lms = np.stack([clip.landmarks(i) for i in range(len(clip))]).astype(np.float64)
    return clip, lms


def _compare(fit_R, fit_centres, clip):
    """Relative rotations (world-frame free) and camera centres after a similarity alignment."""
    Rg = clip.cameras.viewmats[:, :3, :3].astype(np.float64)
    rel_e, rel_g = fit_R @ fit_R[0].T, Rg @ Rg[0].T
    rot_err = P.rotation_angle(np.swapaxes(rel_e, 1, 2) @ rel_g)
    cg = clip.cameras.camera_centers().astype(np.float64)
    s, Q, d = P.umeyama(fit_centres, cg)
    res = np.linalg.norm((s * fit_centres @ Q.T) + d - cg, axis=1)
    spread = np.sqrt(((cg - cg.mean(0)) ** 2).sum(1).mean())
    return rot_err, float(np.sqrt((res**2).mean()) / spread), P.rotation_angle(rel_g).max()


def test_synthetic_cameras_are_exact_with_the_generators_own_landmarks(synth_clip):
    """Conventions: with the synthetic head's own 3-D landmarks (per frame, expressions included) and
    its focal length, the fitted world→camera matrices are the ground truth itself."""
    from ua3dtalk.data.synth.head import ProceduralHead

    clip, lms = _gt(synth_clip)
    meta = json.loads((synth_clip / "synth.json").read_text())
    head = ProceduralHead(meta["identity_seed"], meta["gaussians"])
    X = np.stack([head.landmarks3d(e) for e in np.load(synth_clip / "expr.npy")])
    f, c = float(clip.cameras.K[0, 0]), np.array([clip.width / 2, clip.height / 2])
    R, t = P.init_poses(X[0], lms, np.ones(68), f, c)
    R, t = P.refine_poses(X, lms, np.ones(68), f, c, R, t, iters=20)
    Rg = clip.cameras.viewmats[:, :3, :3].astype(np.float64)
    assert P.rotation_angle(np.swapaxes(R, 1, 2) @ Rg).max() < 0.05
    np.testing.assert_allclose(t, clip.cameras.viewmats[:, :3, 3], atol=2e-4)


def test_synthetic_cameras_match_ground_truth_up_to_similarity(synth_clip):
    """Ground-truth landmarks of a ua3dtalk-synth clip, generic template: relative head rotations
    within 25 % of their range in median and 50 % at most (the cartoon head's shape and expressions
    read as pose; the range is ≈ 14° in this clip), camera centres within 40 % of their spread after a
    similarity alignment when the focal length is known; with the focal length searched the rotations
    are as good."""
    clip, lms = _gt(synth_clip)
    f_gt = float(clip.cameras.K[0, 0])
    fit = P.fit_clip(lms, clip.width, clip.height, focal=f_gt, smooth_sigma=0)
    rot_err, centre_err, rot_range = _compare(fit.R, fit.camera_centers(), clip)
    assert rot_range > 3.0
    assert np.median(rot_err) < 0.25 * rot_range and rot_err.max() < 0.5 * rot_range, (rot_err, rot_range)
    assert centre_err < 0.4, centre_err
    searched = P.fit_clip(lms, clip.width, clip.height, smooth_sigma=0)
    rot_err2, _, _ = _compare(searched.R, searched.camera_centers(), clip)
    assert np.median(rot_err2) < 0.25 * rot_range and rot_err2.max() < 0.5 * rot_range, (rot_err2, rot_range)
    assert 1.0 <= searched.focal / max(clip.width, clip.height) <= 4.0


def test_pipeline_on_a_rendered_synthetic_video(synth_clip, tmp_path):
    """A video rendered by ua3dtalk-synth, preprocessed with its ground-truth landmarks (dlib does not
    find the procedural cartoon head at 64²): cameras agree with the truth up to a similarity."""
    import soundfile as sf
    from PIL import Image

    from preprocess_helpers import write_frames_video
    from ua3dtalk.data.formats import read_landmarks
    from ua3dtalk.data.loading import load_clip
    from ua3dtalk.preprocess import PreprocessConfig, preprocess_video

    clip = load_clip(synth_clip)
    frames = [np.asarray(Image.open(clip.path("ori", i)).convert("RGB")) for i in range(len(clip))]
    wav, sr = sf.read(str(synth_clip / "aud.wav"), dtype="float32")
    video = write_frames_video(tmp_path / "synth.mp4", frames, audio=wav)
    gt = tmp_path / "gt_lms"
    gt.mkdir()
    for i in range(len(clip)):
        (gt / f"{i}.lms").write_text("".join(f"{x} {y}\n" for x, y in read_landmarks(clip.path("lms", i))))
    out = tmp_path / "out"
    cfg = PreprocessConfig(size=clip.width, landmarks=str(gt), focal=float(clip.cameras.K[0, 0]), smooth=0,
                           features=(), progress=False)
    preprocess_video(video, out, cfg, log=lambda m: None)
    ours = load_clip(out)
    assert len(ours) == len(clip)
    R = ours.cameras.viewmats[:, :3, :3].astype(np.float64)
    rot_err, centre_err, rot_range = _compare(R, ours.cameras.camera_centers().astype(np.float64), clip)
    assert np.median(rot_err) < 0.25 * rot_range and centre_err < 0.4, (rot_err, rot_range, centre_err)
    errs = np.loadtxt(out / "preprocess" / "reprojection.csv", delimiter=",", skiprows=1)
    assert errs.shape == (len(clip), 3) and errs[:, 2].mean() < 1.0  # rigid points, pixels at 64²
    rec = json.loads((out / "preprocess" / "pose.json").read_text())
    assert rec["focal"] == pytest.approx(float(clip.cameras.K[0, 0]))
