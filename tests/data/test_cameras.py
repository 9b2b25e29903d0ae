"""Camera conversion OpenGL camera-to-world → OpenCV world-to-camera, checked by reprojection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dataset_builders import FOCAL, H, W, look_at_c2w_opengl, make_regular
from ua3dtalk.data.cameras import intrinsics, opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c, project
from ua3dtalk.data.loading import load_clip


def gl_project(points, c2w_gl, f, cx, cy):
    """Independent OpenGL pinhole: camera looks down -z, image y axis points down (row)."""
    pc = (np.linalg.inv(c2w_gl) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    depth = -pc[:, 2]
    return np.stack([cx + f * pc[:, 0] / depth, cy - f * pc[:, 1] / depth], 1), depth


def test_camera_on_z_axis_projects_known_points():
    d = 2.0
    c2w = np.eye(4)
    c2w[2, 3] = d  # OpenGL camera at (0,0,d) looking along -z at the origin
    V = opengl_c2w_to_opencv_w2c(c2w)
    K = intrinsics(100.0, 50.0, 40.0)
    px, z = project(np.array([[0, 0, 0], [0.2, 0, 0], [0, 0.2, 0], [0, 0, -1.0]]), V, K)
    np.testing.assert_allclose(px[0], [50, 40], atol=1e-9)
    np.testing.assert_allclose(px[1], [50 + 100 * 0.2 / d, 40], atol=1e-9)  # world +x → image right
    np.testing.assert_allclose(px[2], [50, 40 - 100 * 0.2 / d], atol=1e-9)  # world +y (up) → smaller row
    np.testing.assert_allclose(z, [d, d, d, d + 1], atol=1e-9)  # in front: positive OpenCV depth


@pytest.mark.parametrize("seed", range(5))
def test_look_at_cameras_reproject_like_opengl(seed):
    rng = np.random.default_rng(seed)
    eye = rng.normal(size=3) * 3
    target = rng.normal(size=3) * 0.3
    c2w = look_at_c2w_opengl(eye, target)
    V = opengl_c2w_to_opencv_w2c(c2w)
    np.testing.assert_allclose(V[3], [0, 0, 0, 1])
    np.testing.assert_allclose(V @ c2w @ np.diag([1, -1, -1, 1]), np.eye(4), atol=1e-12)
    K = intrinsics(FOCAL, 16.0, 12.0)
    # the look-at target lands on the principal point, in front of the camera
    px, z = project(target[None], V, K)
    np.testing.assert_allclose(px[0], [16, 12], atol=1e-9)
    assert z[0] == pytest.approx(np.linalg.norm(eye - target))
    # a point above the target (camera up) is higher in the image; right of it further right
    up, right = c2w[:3, 1], c2w[:3, 0]
    (pu, pr), _ = project(np.stack([target + 0.1 * up, target + 0.1 * right]), V, K)
    assert pu[1] < 12 and abs(pu[0] - 16) < 1e-9
    assert pr[0] > 16 and abs(pr[1] - 12) < 1e-9
    pts = target + rng.normal(size=(20, 3)) * 0.5
    got, zz = project(pts, V, K)
    want, depth = gl_project(pts, c2w, FOCAL, 16.0, 12.0)
    np.testing.assert_allclose(got, want, atol=1e-9)
    np.testing.assert_allclose(zz, depth, atol=1e-12)
    np.testing.assert_allclose(opencv_w2c_to_opengl_c2w(V), c2w, atol=1e-12)


def test_renderer_draws_a_world_point_where_the_dataset_camera_says(tmp_path):
    """End to end: cameras read from transforms json + ua3dtalk.render put a Gaussian at the reprojected pixel."""
    from ua3dtalk.render import rasterize

    spec = make_regular(tmp_path / "s", n=3)
    clip = load_clip(spec.root)
    point = np.array([0.05, 0.04, 0.1])
    for j in range(len(clip)):
        fr = clip.frame(j)
        want, _ = gl_project(point[None], spec.c2w[fr.img_id], FOCAL, W / 2, H / 2)
        out = rasterize(torch.tensor(point[None], dtype=torch.float32), torch.tensor([[1.0, 0, 0, 0]]),
                        torch.full((1, 3), 0.004), torch.tensor([0.99]), torch.tensor([[1.0, 1.0, 1.0]]),
                        torch.from_numpy(fr.viewmat), torch.from_numpy(fr.K), W, H, backend="dense")
        img = out.image[..., 0]
        r, c = np.unravel_index(int(img.argmax()), img.shape)
        # brightest pixel contains the projected point (pixel (r,c) covers [c, c+1) × [r, r+1))
        assert (c, r) == (int(np.floor(want[0, 0])), int(np.floor(want[0, 1])))


def test_reader_converts_the_json_matrices(regular):
    clip = load_clip(regular.root)
    for j in range(len(clip)):
        fr = clip.frame(j)
        np.testing.assert_allclose(fr.viewmat, opengl_c2w_to_opencv_w2c(regular.c2w[fr.img_id]), atol=1e-6)
    np.testing.assert_allclose(clip.cameras.K, [[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]])
    assert (clip.cameras.width, clip.cameras.height) == (W, H)
    np.testing.assert_allclose(clip.cameras.camera_centers(), regular.c2w[:, :3, 3], atol=1e-5)
    # the json really is OpenGL: its third column points from the target back to the camera
    d = json.loads((regular.root / "transforms_train.json").read_text())
    m = np.array(d["frames"][0]["transform_matrix"])
    assert m[:3, 2] @ m[:3, 3] > 0
