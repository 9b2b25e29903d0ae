"""Real spherical harmonics up to degree 3 for view-dependent colour.

Basis: the real SH with the Condon–Shortley phase, ordered by degree l then m = -l..l, i.e. the
convention of 3D Gaussian Splatting / gsplat (``Y_1 = (-C1·y, C1·z, -C1·x)``). Colour =
Σ_k sh_k Y_k(d) + 0.5, clamped at 0, where d is the unit direction from the camera centre to the
Gaussian's mean.
"""
from __future__ import annotations

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Unit directions [N,3] → basis values [N,(degree+1)²]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            C2[0] * xy,
            C2[1] * yz,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * xz,
            C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh_colors(sh: torch.Tensor, degree: int, means: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    """SH coefficients [N,K,3] (K ≥ (degree+1)²) → RGB [N,3] seen from the camera of ``viewmat``."""
    rot = viewmat[:3, :3]
    campos = -rot.T @ viewmat[:3, 3]
    d = means - campos
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = (degree + 1) ** 2
    basis = sh_basis(d, degree)  # [N,k]
    rgb = (basis[:, :, None] * sh[:, :k, :]).sum(1) + 0.5
    return torch.clamp_min(rgb, 0.0)
