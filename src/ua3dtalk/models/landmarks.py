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

3. **Per-label anchors** (``n_cells > 0``, for the emotion-swap term of
   :class:`~ua3dtalk.models.module.UA3DTalk`): the same triangulation restricted to the frames of one
   *cell* (an emotion label × intensity level), with a ridge prior towards the global anchors. Its
   difference from the global anchors, :meth:`LandmarkAnchors.cell_offsets`, is that label's mean
   canonical expression — what the data says a label does to the face, to be shown when that label is
   requested for any audio.

Shapes: landmarks ``[B,68,2]`` (x = column, y = row, pixels); viewmat ``[B,4,4]`` world→camera (OpenCV);
K ``[B,3,3]``; anchors ``[L,3]`` for the ``L`` selected landmark indices.
"""
from __future__ import annotations

from typing import Optional, Sequence

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
        n_cells: number of label cells with anchors of their own (0 = none; see point 3 of the module
            docstring). Buffers ``cell_ata`` ``[C,L,3,3]``, ``cell_atb`` ``[C,L,3]``, ``cell_frames`` ``[C]``.
        cell_prior: weight of a cell's ridge prior towards the global anchors, in the same frame units as
            ``prior``. Larger than ``prior``: a cell holds few clips, and the depth their head motion leaves
            unobserved should show no offset.
    """

    def __init__(self, indices: Sequence[int] = DEFAULT_LANDMARKS, prior: float = 1.0, min_frames: int = 16,
                 n_cells: int = 0, cell_prior: float = 10.0):
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
        if n_cells < 0 or cell_prior < 0:
            raise ValueError(f"LandmarkAnchors: n_cells and cell_prior must be ≥ 0 (got {n_cells}, {cell_prior})")
        self.n_cells, self.cell_prior = int(n_cells), float(cell_prior)
        if self.n_cells:
            self.register_buffer("cell_ata", torch.zeros(self.n_cells, len(idx), 3, 3, dtype=torch.float64))
            self.register_buffer("cell_atb", torch.zeros(self.n_cells, len(idx), 3, dtype=torch.float64))
            self.register_buffer("cell_frames", torch.zeros(self.n_cells, dtype=torch.long))

    @property
    def ready(self) -> bool:
        return int(self.frames) >= self.min_frames

    @torch.no_grad()
    def accumulate(self, landmarks: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                   cells: Optional[torch.Tensor] = None) -> None:
        """Add frames: landmarks ``[B,68,2]``, viewmat ``[B,4,4]``, K ``[B,3,3]``; ``cells`` ``[B]`` (integer,
        only with ``n_cells > 0``): each frame's label cell, or -1 for none. Frames with a non-finite
        landmark are skipped.

        Each landmark gives two linear equations in ``X``: with ``R, t`` the world→camera rotation and
        translation, ``(u − cx)·(R₃·X + t₃) = fx·(R₁·X + t₁)`` and the same for ``v`` with row 2."""
        lm = landmarks.detach().to(torch.float64)[:, self.indices]  # [B,L,2]
        ok = torch.isfinite(lm).flatten(1).all(1)
        if cells is not None:
            if not self.n_cells:
                raise ValueError("LandmarkAnchors.accumulate: cells given but the anchors have n_cells=0")
            if cells.shape != ok.shape or cells.is_floating_point():
                raise ValueError(f"LandmarkAnchors.accumulate: cells must be an integer tensor [{len(ok)}], "
                                 f"got {cells.dtype} {list(cells.shape)}")
            if bool((cells >= self.n_cells).any()):
                raise ValueError(f"LandmarkAnchors.accumulate: cell ids must be < n_cells={self.n_cells}, "
                                 f"got {cells.max().item()}")
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
        ata = torch.einsum("blki,blkj->blij", A, A)  # [B,L,3,3] per frame
        atb = torch.einsum("blki,blk->bli", A, b)
        self.ata += ata.sum(0)
        self.atb += atb.sum(0)
        self.frames += int(ok.sum())
        if cells is not None:
            c = cells.to(self.cell_frames.device)[ok.to(cells.device)]
            has = c >= 0
            if bool(has.any()):
                self.cell_ata.index_add_(0, c[has], ata[has])
                self.cell_atb.index_add_(0, c[has], atb[has])
                self.cell_frames.index_add_(0, c[has], torch.ones_like(c[has]))

    def anchors(self) -> torch.Tensor:
        """The canonical anchors ``[L,3]`` (float32, no grad). Raises before :attr:`ready`."""
        if not self.ready:
            raise RuntimeError(f"LandmarkAnchors: {int(self.frames)} frames accumulated, {self.min_frames} needed")
        lam = self.prior * self.ata.diagonal(dim1=1, dim2=2).sum(-1) / (3.0 * float(self.frames))  # [L]
        eye = torch.eye(3, dtype=self.ata.dtype, device=self.ata.device)
        A = self.ata + lam[:, None, None] * eye
        b = self.atb + lam[:, None] * self.template.to(self.atb.dtype)
        return torch.linalg.solve(A, b[..., None])[..., 0].to(torch.float32)

    def cell_offsets(self, min_frames: Optional[int] = None,
                     base: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's anchors minus the global anchors → (offsets ``[C,L,3]`` float32, ready ``[C]`` bool).

        A cell's anchors solve its own normal equations plus ``cell_prior`` (in frame units, as for
        :meth:`anchors`) times the identity pulling towards the global anchors, so a direction its frames do not
        observe gets no offset. Cells with fewer than ``min_frames`` frames (default :attr:`min_frames`) are not
        ready and get zero offsets. ``base``: :meth:`anchors`, when the caller already has them. Needs
        ``n_cells > 0`` and :attr:`ready`."""
        if not self.n_cells:
            raise RuntimeError("LandmarkAnchors.cell_offsets: built with n_cells=0")
        base = (self.anchors() if base is None else base).to(torch.float64)  # [L,3]
        need = self.min_frames if min_frames is None else int(min_frames)
        n = self.cell_frames
        ready = n >= max(need, 1)
        lam = self.cell_prior * self.cell_ata.diagonal(dim1=2, dim2=3).sum(-1) / (3.0 * n.clamp_min(1)[:, None])
        lam = lam.clamp_min(1e-12)  # [C,L]; empty cells solve to the base anchors
        eye = torch.eye(3, dtype=base.dtype, device=base.device)
        A = self.cell_ata + lam[..., None, None] * eye
        b = self.cell_atb + lam[..., None] * base
        off = torch.linalg.solve(A, b[..., None])[..., 0] - base
        return torch.where(ready[:, None, None], off, torch.zeros_like(off)).to(torch.float32), ready


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

