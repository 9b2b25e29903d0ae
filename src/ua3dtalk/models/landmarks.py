"""Landmark anchors: sparse geometric supervision of the face deformation (★, not in the paper).

Why: the photometric loss only moves a Gaussian by the gradient of the pixels it covers, so it
cannot drag a closed lip 1–3 cm down to where the ground truth shows an open mouth (the lip's
Gaussians see dark inner-mouth pixels and fade instead of moving). At demo scale the deformation then
learns a static offset and lips that barely move. Every dataset carries 68 landmarks per frame
(DESIGN §5), which say where the lips, chin, eyelids and brows *are*; this module turns them into a
loss on the deformation field itself.

1. **Anchors.** Each landmark ``l`` gets a canonical 3-D point ``X_l`` in the head frame: the linear
   least-squares triangulation of its 2-D positions over all training frames seen so far through
   their cameras (``viewmat``, ``K``), with a weak ridge prior towards the generic template
   (:data:`ua3dtalk.preprocess.template.TEMPLATE_3D`) for the depth that small head motions leave
   under-determined. The normal equations are accumulated in buffers (:meth:`LandmarkAnchors.accumulate`,
   a few flops per frame), so the anchors survive checkpoints and stage changes, and do not depend on the
   Gaussian set (which density control changes).
2. **Loss.** The deformation network is a field: it can be evaluated at any canonical point. Each
   training frame, the anchors are deformed with the frame's conditioning and projected with its camera;
   :func:`landmark_loss` is the mean L1 distance to the frame's landmarks in units of the image size.
   Since ``X_l`` is the least-squares centre of the landmark, the residual a frame leaves is its
   expression, which the field must reproduce — and the Gaussians around each anchor share its position
   features, so they follow.

Shapes: landmarks ``[B,68,2]`` (x = column, y = row, pixels); viewmat ``[B,4,4]`` world→camera (OpenCV);
K ``[B,3,3]``; anchors ``[L,3]`` for the ``L`` selected landmark indices.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..preprocess.template import TEMPLATE_3D

#: default landmarks: the chin (5–11), brows, nose, eyes and lips (17–67). The jaw contour's sides are a
#: silhouette (a different surface point in every pose) and are left out.
DEFAULT_LANDMARKS = tuple(range(5, 12)) + tuple(range(17, 68))


def project(points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection: points ``[B,L,3]`` (world), viewmat ``[B,4,4]``, K ``[B,3,3]`` → pixels ``[B,L,2]``."""
    cam = points @ viewmat[:, :3, :3].transpose(1, 2) + viewmat[:, None, :3, 3]
    z = cam[..., 2:3].clamp_min(1e-6)
    uv = cam[..., :2] / z
    return uv * torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)[:, None] + K[:, None, :2, 2]


class LandmarkAnchors(nn.Module):
    """Canonical 3-D anchors of selected landmarks, triangulated on line from the training frames.

    Args:
        indices: landmark indices (0–67) to anchor (default :data:`DEFAULT_LANDMARKS`).
        prior: weight of the ridge prior towards the generic template, relative to the mean per-frame
            curvature of the triangulation (so it is worth ``prior`` frames: negligible after a few
            hundred frames in well-observed directions, decisive along a never-observed depth).
        min_frames: frames needed before :attr:`ready` (the anchors of fewer frames are unreliable).
    """

    def __init__(self, indices: Sequence[int] = DEFAULT_LANDMARKS, prior: float = 1.0, min_frames: int = 16):
        super().__init__()
        idx = [int(i) for i in indices]
        if not idx or min(idx) < 0 or max(idx) > 67 or len(set(idx)) != len(idx):
            raise ValueError("LandmarkAnchors: indices must be distinct landmark numbers in 0..67, "
                             f"got {list(indices)}")
        if prior < 0 or min_frames < 1:
            raise ValueError(f"LandmarkAnchors: prior must be ≥ 0 and min_frames ≥ 1 (got {prior}, {min_frames})")
        self.prior, self.min_frames = float(prior), int(min_frames)
        self.register_buffer("indices", torch.tensor(idx, dtype=torch.long))
        self.register_buffer("template", torch.tensor(TEMPLATE_3D[idx], dtype=torch.float32))
        # normal equations of the linear triangulation, float64 (sums over thousands of frames)
        self.register_buffer("ata", torch.zeros(len(idx), 3, 3, dtype=torch.float64))
        self.register_buffer("atb", torch.zeros(len(idx), 3, dtype=torch.float64))
        self.register_buffer("frames", torch.zeros((), dtype=torch.long))

    @property
    def ready(self) -> bool:
        return int(self.frames) >= self.min_frames

    @torch.no_grad()
    def accumulate(self, landmarks: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> None:
        """Add frames: landmarks ``[B,68,2]``, viewmat ``[B,4,4]``, K ``[B,3,3]``. Frames with a non-finite
        landmark are skipped.

        Each landmark gives two linear equations in ``X``: with ``R, t`` the world→camera rotation and
        translation, ``(u − cx)·(R₃·X + t₃) = fx·(R₁·X + t₁)`` and the same for ``v`` with row 2."""
        lm = landmarks.detach().to(torch.float64)[:, self.indices]  # [B,L,2]
        ok = torch.isfinite(lm).flatten(1).all(1)
        if not bool(ok.any()):
            return
        lm, vm, K = lm[ok], viewmat.detach().to(torch.float64)[ok], K.detach().to(torch.float64)[ok]
        R, t = vm[:, :3, :3], vm[:, :3, 3]
        rows, rhs = [], []
        for a in (0, 1):  # x then y
            f, c = K[:, a, a], K[:, a, 2]
            d = lm[..., a] - c[:, None]  # [B,L]
            rows.append(d[..., None] * R[:, None, 2] - f[:, None, None] * R[:, None, a])  # [B,L,3]
            rhs.append(f[:, None] * t[:, None, a] - d * t[:, None, 2])  # [B,L]
        A = torch.stack(rows, 2)  # [B,L,2,3]
        b = torch.stack(rhs, 2)  # [B,L,2]
        self.ata += torch.einsum("blki,blkj->lij", A, A)
        self.atb += torch.einsum("blki,blk->li", A, b)
        self.frames += int(ok.sum())

    def anchors(self) -> torch.Tensor:
        """The canonical anchors ``[L,3]`` (float32, no grad). Raises before :attr:`ready`."""
        if not self.ready:
            raise RuntimeError(f"LandmarkAnchors: {int(self.frames)} frames accumulated, {self.min_frames} needed")
        lam = self.prior * self.ata.diagonal(dim1=1, dim2=2).sum(-1) / (3.0 * float(self.frames))  # [L]
        eye = torch.eye(3, dtype=self.ata.dtype, device=self.ata.device)
        A = self.ata + lam[:, None, None] * eye
        b = self.atb + lam[:, None] * self.template.to(self.atb.dtype)
        return torch.linalg.solve(A, b[..., None])[..., 0].to(torch.float32)


def landmark_loss(anchors: torch.Tensor, offsets: torch.Tensor, landmarks: torch.Tensor, indices: torch.Tensor,
                  viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Mean L1 distance (in units of ``max(width, height)``) between the projected deformed anchors and the
    frames' landmarks.

    anchors ``[L,3]``; offsets ``[B,L,3]`` (the deformation field at the anchors); landmarks ``[B,68,2]``;
    indices ``[L]`` (which landmark each anchor is); viewmat ``[B,4,4]``; K ``[B,3,3]`` → scalar. Non-finite
    landmarks are ignored (0 when none is left)."""
    pred = project(anchors[None] + offsets, viewmat, K)  # [B,L,2]
    target = landmarks[:, indices].to(pred.dtype)
    ok = torch.isfinite(target).all(-1, keepdim=True)
    err = ((pred - torch.where(ok, target, pred.detach())).abs() * ok).sum()
    return err / (2 * ok.sum()).clamp_min(1) / float(max(width, height))


__all__ = ["LandmarkAnchors", "landmark_loss", "project", "DEFAULT_LANDMARKS"]

