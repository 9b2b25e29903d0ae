"""Camera conventions of the datasets and of the renderer (DESIGN §5.1, §7).

ER-NeRF / TalkingGaussian ``transforms_*.json`` store, per frame, ``transform_matrix``: a 4×4
**camera-to-world** matrix in **OpenGL/Blender** camera axes (x right, y up, z backward — the camera
looks along its −z axis), plus a shared ``focal_len`` and principal point ``cx``, ``cy`` in pixels.

The renderer (:func:`ua3dtalk.render.rasterize`) wants a **world-to-camera** ``viewmat`` in
**OpenCV** camera axes (x right, y down, z forward). The conversion, done once when a dataset is
read, flips the camera's y and z axes and inverts::

    viewmat = inv(c2w @ diag(1, -1, -1, 1))
    K       = [[focal_len, 0, cx], [0, focal_len, cy], [0, 0, 1]]

The world frame itself is left unchanged. Pixel (row r, column c) is centred at (c+0.5, r+0.5),
which is also how ER-NeRF casts its rays (``+0.5``), so ``cx``, ``cy`` are used as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """[...,4,4] OpenGL camera-to-world → [...,4,4] OpenCV world-to-camera (float64).

    Uses the closed-form inverse of a rigid transform (Rᵀ, −Rᵀt), so ``c2w`` must be rigid
    (the readers check this); the bottom row of the result is exactly (0,0,0,1).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"expected [...,4,4] camera-to-world matrices, got shape {c2w.shape}")
    cv = c2w @ GL_TO_CV
    R = cv[..., :3, :3]
    t = cv[..., :3, 3:4]
    out = np.zeros_like(cv)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:4] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def opencv_w2c_to_opengl_c2w(viewmat: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opengl_c2w_to_opencv_w2c` (used by writers, e.g. the synthetic generator)."""
    viewmat = np.asarray(viewmat, dtype=np.float64)
    return np.linalg.inv(viewmat) @ GL_TO_CV


def intrinsics(focal: float, cx: float, cy: float, focal_y: float | None = None) -> np.ndarray:
    """3×3 pinhole intrinsics ``[[f,0,cx],[0,f,cy],[0,0,1]]`` (float64)."""
    fy = focal if focal_y is None else focal_y
    return np.array([[focal, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def rigid_error(m: np.ndarray) -> float:
    """How far a 4×4 matrix is from a rigid transform: max of |RᵀR − I|, |det R − 1|, |bottom row − e4|."""
    m = np.asarray(m, dtype=np.float64)
    R = m[:3, :3]
    e1 = np.abs(R.T @ R - np.eye(3)).max()
    e2 = abs(np.linalg.det(R) - 1.0)
    e3 = np.abs(m[3] - np.array([0.0, 0.0, 0.0, 1.0])).max()
    return float(max(e1, e2, e3))


def project(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [M,3] with an OpenCV world→camera ``viewmat`` and ``K``.

    Returns (pixels [M,2] as (x=column, y=row) in the half-pixel-centre convention, depth z [M]).
    """
    p = np.asarray(points, dtype=np.float64)
    pc = p @ np.asarray(viewmat, dtype=np.float64)[:3, :3].T + np.asarray(viewmat, dtype=np.float64)[:3, 3]
    z = pc[:, 2]
    uv = pc[:, :2] / z[:, None]
    K = np.asarray(K, dtype=np.float64)
    px = np.stack([K[0, 0] * uv[:, 0] + K[0, 2], K[1, 1] * uv[:, 1] + K[1, 2]], -1)
    return px, z


@dataclass
class Cameras:
    """Cameras of one clip, in the renderer's convention.

    viewmats  [N,4,4] float32  OpenCV world→camera, row j belongs to frame position j of the clip
    K         [3,3]   float32  shared intrinsics
    width, height              image size in pixels
    """

    viewmats: np.ndarray
    K: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    @classmethod
    def from_transforms(cls, c2w_opengl: np.ndarray, focal: float, cx: float, cy: float, width: int,
                        height: int) -> "Cameras":
        """Build from ER-NeRF ``transform_matrix`` values ([N,4,4] OpenGL camera-to-world)."""
        return cls(viewmats=opengl_c2w_to_opencv_w2c(c2w_opengl).astype(np.float32),
                   K=intrinsics(focal, cx, cy).astype(np.float32), width=int(width), height=int(height))

    def camera_centers(self) -> np.ndarray:
        """[N,3] camera positions in world coordinates."""
        R = self.viewmats[:, :3, :3].astype(np.float64)
        t = self.viewmats[:, :3, 3].astype(np.float64)
        return -np.einsum("nji,nj->ni", R, t)
