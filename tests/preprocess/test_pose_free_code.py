"""scripts/pose_free_code.py: the oracle copy of an animated clip's dataset whose expression-code columns have the
known head pose and mouth opening regressed out (docs/history/2026-12-06-pose-free-code.md)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ua3dtalk.metrics.landmarks import LANDMARK_EXPR_NAMES
from ua3dtalk.models.talking_head import expression_columns
from ua3dtalk.preprocess.animate import animate

N, SIZE, SEED = 100, 64, 3


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("pose_free_code")


@pytest.fixture(scope="module")
def truth():
    return animate(N, SIZE, seed=SEED, expressive=True)[1]


def _dataset(root: Path, truth, true_mouth: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    """A dataset whose columns are an expression signal plus a known mix of the pose and (``true_mouth``) the
    animation's mouth opening."""
    rng = np.random.default_rng(0)
    k = len(LANDMARK_EXPR_NAMES)
    signal = rng.normal(size=(N, k))
    known = [truth.yaw, truth.pitch, truth.roll] + ([truth.mouth_open] if true_mouth else [])
    nuisance = np.stack(known, 1) @ rng.normal(size=(len(known), k))
    expr = signal + nuisance
    d = root / "ds"
    d.mkdir()
    np.save(d / "expr.npy", expr.astype(np.float32))
    c2w = np.tile(np.eye(4), (N, 1, 1))  # cameras whose rotation is the known pose
    c2w[:, :3, :3] = Rotation.from_euler("yxz", np.stack([truth.yaw, truth.pitch, truth.roll], 1), degrees=True
                                         ).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(N, 3))
    frames = [{"img_id": i, "transform_matrix": c2w[i].tolist()} for i in range(N)]
    (d / "transforms_train.json").write_text(json.dumps({"frames": frames[:N - 8]}))
    (d / "transforms_val.json").write_text(json.dumps({"frames": frames[N - 8:]}))
    (d / "gt_imgs").mkdir()
    (d / "gt_imgs" / "0.jpg").write_bytes(b"frame")
    return d, signal, expr


def test_the_code_columns_lose_the_pose_and_keep_the_rest(tmp_path, truth, capsys, script):
    d, signal, expr = _dataset(tmp_path, truth)
    out = tmp_path / "oracle"
    assert script.main([str(d), str(out), "--seed", str(SEED), "--frames", str(N), "--size", str(SIZE)]) == 0
    new = np.load(out / "expr.npy").astype(np.float64)
    cols = expression_columns()
    rest = [c for c in range(expr.shape[1]) if c not in cols]
    np.testing.assert_array_equal(new[:, rest], expr[:, rest].astype(np.float32))  # other columns unchanged
    train = np.arange(N - 8)
    x = np.stack([np.ones(N), truth.yaw, truth.pitch, truth.roll, truth.mouth_open], 1)[train]
    for c in cols:  # nothing of the pose is left in the training frames, the expression signal is kept
        coef, *_ = np.linalg.lstsq(x, new[train, c], rcond=None)
        assert np.abs(coef[1:]).max() < 1e-4, c
        assert np.corrcoef(new[:, c], signal[:, c])[0, 1] > 0.9
        assert np.corrcoef(expr[:, c], signal[:, c])[0, 1] < np.corrcoef(new[:, c], signal[:, c])[0, 1]
        assert new[train, c].mean() == pytest.approx(expr[train, c].mean(), abs=1e-5)
    assert (out / "gt_imgs" / "0.jpg").read_bytes() == b"frame"  # everything else copied
    assert "brow_inner_raise" in capsys.readouterr().out


def test_estimated_fits_the_cameras_angles_and_the_mouth_columns(tmp_path, truth, script):
    """--estimated: the residual is free of the cameras' yaw/pitch/roll and of expr.npy's mouth_open and jaw_drop."""
    d, signal, expr = _dataset(tmp_path, truth, true_mouth=False)
    mouth = [LANDMARK_EXPR_NAMES.index(k) for k in ("mouth_open", "jaw_drop")]
    cols = expression_columns()
    expr[:, cols] += expr[:, mouth] @ np.random.default_rng(1).normal(size=(2, len(cols)))  # speech leaking in
    np.save(d / "expr.npy", expr.astype(np.float32))
    out = tmp_path / "est"
    assert script.main([str(d), str(out), "--estimated", "--frames", str(N)]) == 0
    new = np.load(out / "expr.npy").astype(np.float64)
    train = np.arange(N - 8)
    x = np.c_[np.ones(N), truth.yaw, truth.pitch, truth.roll, expr[:, mouth]][train]
    for c in cols:
        coef, *_ = np.linalg.lstsq(x, new[train, c], rcond=None)
        assert np.abs(coef[1:]).max() < 1e-3, c
        assert np.corrcoef(new[:, c], signal[:, c])[0, 1] > 0.9


def test_refuses_an_existing_output_and_a_wrong_frame_count(tmp_path, truth, capsys, script):
    d, _, _ = _dataset(tmp_path, truth)
    assert script.main([str(d), str(d), "--seed", str(SEED), "--frames", str(N), "--size", str(SIZE)]) == 2
    assert "exists" in capsys.readouterr().err
    assert script.main([str(d), str(tmp_path / "o"), "--seed", str(SEED), "--frames", str(N + 1)]) == 2
    assert "expr.npy" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert script.main([str(tmp_path / "missing"), str(tmp_path / "o"), "--seed", "0"]) == 2
    with pytest.raises(SystemExit) as e:  # neither or both of the two fits
        script.main([str(d), str(tmp_path / "o")])
    assert e.value.code == 2
