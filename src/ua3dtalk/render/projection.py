"""Projection of 3-D Gaussians to the image plane (plain PyTorch autograd).

Conventions (DESIGN §7): OpenCV camera (x right, y down, z forward); ``viewmat`` is world→camera
[4,4]; ``K`` [3,3] maps camera coordinates to *continuous* pixel coordinates in which pixel
(row r, col c) covers [c, c+1)×[r, r+1) and is sampled at its centre (c+0.5, r+0.5). The skew
entry ``K[0,1]`` is ignored, as in gsplat.

For every Gaussian i with near < z_i < far:

* 2-D covariance Σ'_i = J W Σ_i Wᵀ Jᵀ + 0.3·I, with Σ_i = R S Sᵀ Rᵀ and the perspective Jacobian J
  evaluated at x/z, y/z clamped to the image's frustum widened by 0.3·tan(fov/2) on each side (gsplat's
  clamp): x/z ∈ [−c_x/f_x − 0.3·t_x, (W − c_x)/f_x + 0.3·t_x] with t_x = tan(fov_x/2) = W/(2 f_x), and
  likewise for y — ±1.3·t_x when the principal point is the image centre (:func:`jacobian_limits`);
* conic = Σ'⁻¹ stored as (a, b, c) for [[a, b], [b, c]];
* opacity-aware culling extent per axis: e_x = √(2 ln(255 o) Σ'_xx), e_y = √(2 ln(255 o) Σ'_yy).
  A pixel outside [μ ± e] has α < 1/255 exactly, so tile binning with these extents loses nothing
  (a relative margin of 1e-4 plus 1e-3 px absorbs rounding). Gaussians with o < 1/255 never draw.
* radius = ⌈max(e_x, e_y)⌉ in pixels, 0 when culled (depth outside (near, far), o < 1/255, or the
  extent box contains no pixel centre of the image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BLUR = 0.3  # low-pass filter added to the 2-D covariance (pixels²)
ALPHA_MIN = 1.0 / 255.0  # contributions with alpha below this are skipped
ALPHA_MAX = 0.999  # alpha is clamped to this (gsplat's cap; 3DGS/Inria use 0.99)
T_MIN = 1e-4  # compositing stops before the Gaussian that would drive T below this
FOV_MARGIN = 0.3  # J is evaluated at view directions clamped to the frustum widened by this · tan(fov/2)
EXTENT_REL_MARGIN = 1e-4
EXTENT_ABS_MARGIN = 1e-3


@dataclass
class Projected:
    """Per-Gaussian screen-space quantities (N Gaussians).

    means2d  [N,2] pixel coordinates (differentiable)
    conics   [N,3] inverse 2-D covariance (a, b, c) (differentiable)
    depths   [N]   view-space z (differentiable)
    extents  [N,2] culling half-extents in pixels, margin included (no gradient)
    radii    [N]   int32, ⌈max extent⌉, 0 when culled
    visible  [N]   bool, radii > 0
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    extents: torch.Tensor
    radii: torch.Tensor
    visible: torch.Tensor


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N,4] quaternions (w, x, y, z), normalised here → [N,3,3] rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def jacobian_limits(K: torch.Tensor, width: int, height: int) -> tuple:
    """``(x_lo, x_hi, y_lo, y_hi)``: the range of x/z and y/z at which J is evaluated (gsplat's clamp):
    the image's frustum ``[−c/f, (side − c)/f]`` widened by ``FOV_MARGIN·side/(2f)`` on each side.
    Zero-dimensional tensors of ``K``'s dtype (no gradient flows into ``K``)."""
    K = K.detach()
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    mx, my = FOV_MARGIN * 0.5 * width / fx, FOV_MARGIN * 0.5 * height / fy
    return -cx / fx - mx, (width - cx) / fx + mx, -cy / fy - my, (height - cy) / fy + my


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
) -> Projected:
    """Project N Gaussians; see the module docstring for the exact definitions."""
    rot_wc = viewmat[:3, :3]
    p = means @ rot_wc.T + viewmat[:3, 3]
    x, y, z = p.unbind(-1)
    in_depth = (z > near) & (z < far)
    # Culled Gaussians get harmless stand-in values so that no NaN/Inf reaches the gradients.
    z_s = torch.where(in_depth, z, torch.ones_like(z))
    x_s = torch.where(in_depth, x, torch.zeros_like(x))
    y_s = torch.where(in_depth, y, torch.zeros_like(y))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x_lo, x_hi, y_lo, y_hi = jacobian_limits(K, width, height)
    tx = z_s * torch.clamp(x_s / z_s, x_lo, x_hi)
    ty = z_s * torch.clamp(y_s / z_s, y_lo, y_hi)
    zero = torch.zeros_like(z_s)
    inv_z = 1.0 / z_s
    J = torch.stack(
        [fx * inv_z, zero, -fx * tx * inv_z * inv_z, zero, fy * inv_z, -fy * ty * inv_z * inv_z], dim=-1
    ).reshape(-1, 2, 3)
    M = J @ rot_wc @ quat_to_rotmat(quats) * scales[:, None, :]  # [N,2,3]: J W R S
    cov = M @ M.transpose(1, 2)
    a = cov[:, 0, 0] + BLUR
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + BLUR
    # det ≥ BLUR² > 0 in exact arithmetic; a degenerate covariance (overflowed entries, or a determinant
    # lost to cancellation) is not drawn (see `draws`) and gets stand-in values, so that no NaN/Inf reaches
    # the gradients (a mask applied after a·c − b² would still give 0·inf = NaN in its backward)
    cov_ok = torch.isfinite(a) & torch.isfinite(b) & torch.isfinite(c)
    a = torch.where(cov_ok, a, torch.ones_like(a))
    b = torch.where(cov_ok, b, torch.zeros_like(b))
    c = torch.where(cov_ok, c, torch.ones_like(c))
    det = a * c - b * b
    det_ok = cov_ok & torch.isfinite(det) & (det > 0)
    det_s = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    means2d = torch.stack([fx * x_s * inv_z + cx, fy * y_s * inv_z + cy], dim=-1)

    with torch.no_grad():
        thr = 2.0 * torch.log(torch.clamp(opacities.detach() * 255.0, min=1e-30))
        draws = in_depth & (opacities.detach() >= ALPHA_MIN) & det_ok
        thr = torch.clamp(thr, min=0.0)
        ext = torch.stack([torch.sqrt(thr * a.detach()), torch.sqrt(thr * c.detach())], dim=-1)
        ext = ext * (1.0 + EXTENT_REL_MARGIN) + EXTENT_ABS_MARGIN
        m2 = means2d.detach()
        # pixel-centre index range covered by the box [m - e, m + e]
        c_lo = torch.ceil(m2[:, 0] - ext[:, 0] - 0.5)
        c_hi = torch.floor(m2[:, 0] + ext[:, 0] - 0.5)
        r_lo = torch.ceil(m2[:, 1] - ext[:, 1] - 0.5)
        r_hi = torch.floor(m2[:, 1] + ext[:, 1] - 0.5)
        onscreen = (c_hi >= 0) & (c_lo <= width - 1) & (r_hi >= 0) & (r_lo <= height - 1) & (c_lo <= c_hi) & (
            r_lo <= r_hi
        )
        visible = draws & onscreen & torch.isfinite(m2).all(-1)
        radii = torch.where(visible, torch.ceil(ext.max(-1).values), torch.zeros_like(ext[:, 0])).to(torch.int32)
        ext = torch.where(visible[:, None], ext, torch.zeros_like(ext))
    return Projected(means2d=means2d, conics=conics, depths=z, extents=ext, radii=radii, visible=visible)


def tile_ranges(
    means2d: torch.Tensor, extents: torch.Tensor, visible: torch.Tensor, width: int, height: int, tile_size: int
):
    """Inclusive tile index ranges (tx0, tx1, ty0, ty1) [N] int64 of each Gaussian's extent box.

    Only meaningful where ``visible``; the pixel-centre convention is the one of the module docstring.
    """
    m = means2d.detach()
    c_lo = torch.ceil(m[:, 0] - extents[:, 0] - 0.5).clamp(0, width - 1)
    c_hi = torch.floor(m[:, 0] + extents[:, 0] - 0.5).clamp(0, width - 1)
    r_lo = torch.ceil(m[:, 1] - extents[:, 1] - 0.5).clamp(0, height - 1)
    r_hi = torch.floor(m[:, 1] + extents[:, 1] - 0.5).clamp(0, height - 1)
    vis = visible & torch.isfinite(m).all(-1)
    f = lambda t: torch.where(vis, t, torch.zeros_like(t)).long() // tile_size  # noqa: E731
    return f(c_lo), f(c_hi), f(r_lo), f(r_hi)


def num_tiles(width: int, height: int, tile_size: int) -> tuple[int, int]:
    return math.ceil(width / tile_size), math.ceil(height / tile_size)
