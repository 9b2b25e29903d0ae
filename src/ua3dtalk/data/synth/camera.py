"""Cameras for the synthetic heads: a fixed pinhole looking at the head, head motion as per-frame
world→camera matrices (OpenCV axes), and the conversion to the TalkingGaussian/ER-NeRF
``transform_matrix`` (camera-to-world, OpenGL axes)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..cameras import opencv_w2c_to_opengl_c2w


def intrinsics(size: int, focal_factor: float = 1.6) -> np.ndarray:
    f = focal_factor * size
    return np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])


def euler_to_rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (head frame → world) from yaw (about y), pitch (about x), roll (about z), radians."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def head_viewmat(yaw=0.0, pitch=0.0, roll=0.0, shift=(0.0, 0.0, 0.0), distance: float = 0.55,
                 lift: float = -0.02) -> np.ndarray:
    """World→camera [4,4] of a camera at ``distance`` in front of a head posed by (yaw, pitch, roll, shift).

    The canonical head is fixed in the world (as in TalkingGaussian); head motion is expressed as the
    inverse motion of the camera, so ``viewmat = V0 · H`` with H the head pose.
    """
    v0 = np.eye(4)
    v0[1, 3], v0[2, 3] = lift, distance
    h = np.eye(4)
    h[:3, :3] = euler_to_rot(yaw, pitch, roll)
    h[:3, 3] = shift
    return v0 @ h


viewmat_to_transform = opencv_w2c_to_opengl_c2w  # OpenCV world→camera → TalkingGaussian transform_matrix


def as_torch(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)
