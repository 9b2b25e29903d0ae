"""Spatial plane fields (DESIGN §4 "Position field"; reused by the EmotionField).

A :class:`PlaneField` is a multi-resolution *tri-plane* grid: for every resolution factor ``s`` in
``scales`` it holds one learnable feature plane per spatial plane (``xy``, ``xz``, ``yz`` by default),
each ``channels × (resolution·s) × (resolution·s)``. A point is encoded by

1. normalising it to ``[-1, 1]³`` with the field's axis-aligned bounds (points outside the box are
   clamped onto its surface),
2. sampling each plane bilinearly at the point's projection (``F.grid_sample``,
   ``align_corners=True``: −1 and +1 are the centres of the border cells, so the bounds map exactly
   onto the outermost grid nodes),
3. multiplying the samples of the planes channel-wise (the K-Planes/TensoRF style product, which lets
   the three 2-D planes represent a genuinely 3-D function),
4. concatenating the per-scale products (coarsest first): ``H ∈ R^{channels·len(scales)}``
   (= 16·4 = 64 with the DESIGN defaults).

Initialisation ★: because the planes are *multiplied*, a zero-mean initialisation would make every
product ≈ 0 (and its gradient with respect to each plane ≈ 0 too). Every plane is therefore
initialised to ``init_mean + init_std·N(0,1)`` (default ``1 ± 0.1``): the initial encoding is ≈ 1 with
small spatially varying noise, and each plane receives gradients of order one from the start.

Shapes (``N`` points, ``C = channels``, ``S = len(scales)``)::

    xyz            [..., 3]          (world coordinates of the canonical Gaussians)
    forward(xyz)   [..., C·S]
    per_scale(xyz) list of S tensors [..., C]
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# plane name -> the two coordinate axes sampled as (u, v); u indexes the plane's width (last dim),
# v its height (second-to-last dim), the grid_sample convention.
_PLANE_AXES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2), "yx": (1, 0), "zx": (2, 0), "zy": (2, 1)}


def _as_vec3(v: Sequence[float] | Tensor, name: str) -> Tensor:
    if isinstance(v, Tensor):
        t = v.detach().to("cpu", torch.float32).reshape(-1).clone()
    else:  # any sequence of numbers (also an OmegaConf ListConfig)
        t = torch.tensor([float(x) for x in v], dtype=torch.float32)
    if t.numel() != 3:
        raise ValueError(f"{name} must have 3 entries (x, y, z), got {t.numel()}")
    return t


class _PlaneSample(torch.autograd.Function):
    """``F.grid_sample(planes, grid, bilinear, border, align_corners=True)`` for a sampling grid that
    needs no gradient, with a faster backward to the planes: the bilinear weights are recomputed and
    the output gradient is scattered row by row (``scatter_add_`` into each ``[H·W]`` channel plane, a
    cache-resident row) instead of ``grid_sampler_2d_backward``'s point-major scatter across all channels
    (~2× faster for 64-channel 256² planes)."""

    @staticmethod
    def forward(ctx, planes: Tensor, grid: Tensor, take_buffer=None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grid)
        ctx.plane_shape, ctx.take_buffer = planes.shape, take_buffer
        return F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=True)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (grid,) = ctx.saved_tensors
        p, c, h, w = ctx.plane_shape
        n = grid.shape[2]
        # unnormalise (align_corners=True) and clip (border), as grid_sample
        x = ((grid[:, 0, :, 0] + 1) / 2 * (w - 1)).clamp_(0, w - 1)  # [P, N]
        y = ((grid[:, 0, :, 1] + 1) / 2 * (h - 1)).clamp_(0, h - 1)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        gx, gy = 1 - fx, 1 - fy
        x0i, y0i = x0.long(), y0.long()
        x1i, y1i = (x0i + 1).clamp_(max=w - 1), (y0i + 1).clamp_(max=h - 1)  # weight 0 where clamped
        # corner-major layout [P, 4, N] (nw, ne, sw, se): the products below run over contiguous N
        idx = torch.stack([y0i * w + x0i, y0i * w + x1i, y1i * w + x0i, y1i * w + x1i], dim=1).reshape(p, 1, 4 * n)
        wts = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], dim=1).to(grad.dtype).unsqueeze(1)  # [P, 1, 4, N]
        g = grad.reshape(p, c, 1, n)
        # the planes' gradient: a buffer kept from the previous step (PlaneField.keep_grad_buffers) if there
        # is one, zeroed in place — a fresh one costs a page fault per 4 kB (≈ 20 ms for 50 MB) every step
        buf = ctx.take_buffer() if ctx.take_buffer is not None else None
        if (buf is not None and buf.shape == ctx.plane_shape and buf.dtype == grad.dtype
                and buf.device == grad.device and buf.is_contiguous()):
            full = buf.zero_()
        else:
            full = grad.new_zeros(p, c, h, w)
        # returned as it is (not a view of it): autograd may then add a second frame's gradient into it in place
        # and store it as the gradient without a copy
        out = full.view(p, c, h * w)
        # in groups of channels: the weighted values [P, cg, 4N] stay a few MB (cache resident, no
        # page-faulting of a fresh 30 MB temporary)
        cg = max(1, min(c, (1 << 20) // max(1, p * 4 * n)))
        src = torch.empty(p, cg, 4, n, dtype=grad.dtype, device=grad.device)
        for c0 in range(0, c, cg):
            c1 = min(c0 + cg, c)
            sc = src[:, :c1 - c0]
            torch.mul(g[:, c0:c1], wts, out=sc)
            out[:, c0:c1].scatter_add_(2, idx.expand(p, c1 - c0, 4 * n), sc.reshape(p, c1 - c0, 4 * n))
        return full, None, None


def sample_planes(planes: Tensor, grid: Tensor, take_buffer=None) -> Tensor:
    """Bilinear samples ``[P, C, 1, N]`` of ``planes [P, C, H, W]`` at ``grid [P, 1, N, 2]`` (``x, y`` in
    ``[-1, 1]``; ``padding_mode="border"``, ``align_corners=True``) — ``F.grid_sample``, with the
    faster backward of :class:`_PlaneSample` when only the planes need a gradient. ``take_buffer``: a
    callable returning a tensor of the planes' shape for that backward to fill with the planes' gradient
    (overwritten; returned as the gradient), or None for a new one."""
    if grid.requires_grad or not (planes.requires_grad and torch.is_grad_enabled()):
        return F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return _PlaneSample.apply(planes, grid, take_buffer)


class PlaneField(nn.Module):
    """Multi-resolution tri-plane feature grid (see the module docstring for the encoding).

    Args:
        bounds_min: lower corner (x, y, z) of the box mapped onto the grid. Set it from the canonical
            Gaussians' bounding box (possibly via :meth:`set_bounds` after construction; the bounds are
            buffers, so they are saved in and restored from checkpoints). Default ``(-1,-1,-1)``.
        bounds_max: upper corner (x, y, z); must be > ``bounds_min`` on every axis. Default ``(1,1,1)``.
        resolution: base plane resolution (cells per side at scale factor 1).
        scales: resolution factors; plane side = ``resolution·s``.
        channels: feature channels per plane (and per scale in the output).
        planes: which coordinate planes to use (``"xy"``, ``"xz"``, ``"yz"``; the first letter is the
            plane's horizontal axis). The features of all planes are multiplied.
        init_std: standard deviation of the Gaussian noise of the initial plane values.
        init_mean: mean of the initial plane values (1 so that the product of planes is ≈ 1).

    Parameters: ``self.grids[i]`` of shape ``[P, channels, resolution·scales[i], resolution·scales[i]]``
    (``P = len(planes)``; one tensor per scale, planes stacked so a single ``grid_sample`` call samples
    them all).
    """

    def __init__(
        self,
        bounds_min: Sequence[float] = (-1.0, -1.0, -1.0),
        bounds_max: Sequence[float] = (1.0, 1.0, 1.0),
        resolution: int = 64,
        scales: Sequence[int] = (1, 2, 4, 8),
        channels: int = 16,
        planes: Sequence[str] = ("xy", "xz", "yz"),
        init_std: float = 0.1,
        init_mean: float = 1.0,
    ) -> None:
        super().__init__()
        scales = tuple(int(s) for s in scales)
        planes = tuple(str(p) for p in planes)
        if resolution < 2:
            raise ValueError(f"resolution must be >= 2, got {resolution}")
        if not scales or any(s < 1 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive integers, got {scales}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not planes:
            raise ValueError("planes must not be empty")
        for p in planes:
            if p not in _PLANE_AXES:
                raise ValueError(f"unknown plane {p!r}; expected one of {sorted(_PLANE_AXES)}")
        self.resolution = int(resolution)
        self.scales = scales
        self.channels = int(channels)
        self.planes = planes
        self.init_std = float(init_std)
        self.init_mean = float(init_mean)
        self.register_buffer("bounds_min", torch.zeros(3))
        self.register_buffer("bounds_max", torch.ones(3))
        self.set_bounds(bounds_min, bounds_max)
        self.register_buffer("_axes", torch.tensor([_PLANE_AXES[p] for p in planes], dtype=torch.long),
                             persistent=False)
        self._grad_pool: dict[int, Tensor] = {}  # scale index → a gradient buffer (keep_grad_buffers)
        self.grids = nn.ParameterList(
            nn.Parameter(torch.empty(len(planes), self.channels, self.resolution * s, self.resolution * s))
            for s in scales
        )
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    def reset_parameters(self) -> None:
        """Re-draw every plane as ``init_mean + init_std·N(0,1)``."""
        with torch.no_grad():
            for g in self.grids:
                g.normal_(self.init_mean, self.init_std)

    @torch.no_grad()
    def set_bounds(self, bounds_min: Sequence[float] | Tensor, bounds_max: Sequence[float] | Tensor) -> None:
        """Set the box mapped onto ``[-1,1]³`` (e.g. the canonical Gaussians' bounding box, padded)."""
        lo, hi = _as_vec3(bounds_min, "bounds_min"), _as_vec3(bounds_max, "bounds_max")
        if not bool((hi > lo).all()):
            raise ValueError(f"bounds_max must be > bounds_min on every axis, got {lo.tolist()} / {hi.tolist()}")
        self.bounds_min.copy_(lo.to(self.bounds_min))
        self.bounds_max.copy_(hi.to(self.bounds_max))

    def keep_grad_buffers(self) -> int:
        """Keep the planes' current gradients as buffers for their next backward, before the optimizers drop
        them (``zero_grad(set_to_none=True)``): the next backward overwrites a kept buffer in place instead of
        faulting in a new one, which costs ≈ 20 ms per 50 MB (the finest position plane) on a CPU. The values
        are unaffected: a kept buffer is zeroed before it is filled, and a plane that gets no gradient in a
        step still has ``grad = None``. A gradient that is a view (e.g. of a DDP bucket) is not kept.
        Returns the number of buffers kept. Call it only when nothing else will read these gradients."""
        self._grad_pool.clear()
        for i, g in enumerate(self.grids):
            gr = g.grad
            if gr is not None and gr._base is None and gr.layout == torch.strided and gr.is_contiguous():
                self._grad_pool[i] = gr
        return len(self._grad_pool)

    def _take_grad_buffer(self, i: int):
        return lambda: self._grad_pool.pop(i, None)

    @property
    def out_dim(self) -> int:
        """Feature size of :meth:`forward`: ``channels · len(scales)``."""
        return self.channels * len(self.scales)

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, scales={self.scales}, channels={self.channels}, "
                f"planes={self.planes}, out_dim={self.out_dim}")

    # ------------------------------------------------------------------ encoding
    def normalize(self, xyz: Tensor) -> Tensor:
        """World coordinates ``[..., 3]`` → ``[-1, 1]`` box coordinates (clamped), same shape."""
        if xyz.shape[-1] != 3:
            raise ValueError(f"xyz must have shape [..., 3], got {list(xyz.shape)}")
        lo = self.bounds_min.to(xyz.dtype)
        hi = self.bounds_max.to(xyz.dtype)
        return ((xyz - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)

    @contextlib.contextmanager
    def co_sample(self, points: Optional[Tensor]):
        """Within the block, the first gradient-enabled call on other points also samples ``points``
        ``[..., 3]`` (in the same ``grid_sample``), and a later call on ``points`` (the same storage and
        shape, e.g. its ``.detach()``) returns those features. Values are the same as separate calls;
        the backward scatters into the planes once instead of twice — each extra sampling of a few points
        otherwise costs a zero-filled gradient of every plane (17 M values for the paper's position field)
        and its accumulation. The training step uses it for the landmark term's anchors
        (:meth:`~ua3dtalk.models.talking_head.TalkingHead.co_sample`). ``points=None``: a no-op."""
        if points is None:
            yield
            return
        prev, self._co = getattr(self, "_co", None), {"points": points.detach(), "feats": None,
                                                   "version": points._version}
        try:
            yield
        finally:
            self._co = prev

    def per_scale(self, xyz: Tensor) -> list[Tensor]:
        """Per-scale features: a list (coarsest first) of ``len(scales)`` tensors ``[..., channels]``,
        each the channel-wise product of the planes' bilinear samples at ``xyz [..., 3]`` (see
        :meth:`co_sample`)."""
        co = getattr(self, "_co", None)
        if co is not None:
            pts = co["points"]
            same = xyz.shape == pts.shape and xyz.dtype == pts.dtype and xyz.device == pts.device and \
                xyz.data_ptr() == pts.data_ptr() and pts._version == co["version"]
            if same and co["feats"] is not None:
                return co["feats"]
            if not same and co["feats"] is None and torch.is_grad_enabled() and xyz.shape[-1] == 3:
                m = xyz.numel() // 3
                both = self._per_scale(torch.cat([xyz.reshape(-1, 3), pts.reshape(-1, 3).to(xyz.dtype)]))
                co["feats"] = [f[m:].reshape(*pts.shape[:-1], self.channels) for f in both]
                return [f[:m].reshape(*xyz.shape[:-1], self.channels) for f in both]
        return self._per_scale(xyz)

    def _per_scale(self, xyz: Tensor) -> list[Tensor]:
        lead = xyz.shape[:-1]
        # computed in the planes' dtype (the output has the parameters' dtype)
        p = self.normalize(xyz.to(self.grids[0].dtype)).reshape(-1, 3)  # [N,3]
        n = p.shape[0]
        # [P, 1, N, 2] sampling grid: plane k samples the point's (u, v) = coordinates _axes[k]
        grid = p[:, self._axes].permute(1, 0, 2).unsqueeze(1).contiguous()  # [P,1,N,2]
        out = []
        for i, g in enumerate(self.grids):
            planes = sample_planes(g, grid, self._take_grad_buffer(i)).unbind(0)  # P × [C, 1, N]
            prod = planes[0]
            for sk in planes[1:]:  # = s.prod(0), with a cheaper backward
                prod = prod * sk
            feat = prod.squeeze(1).transpose(0, 1)  # [N, C]
            assert feat.shape == (n, self.channels)
            out.append(feat.reshape(*lead, self.channels))
        return out

    def forward(self, xyz: Tensor) -> Tensor:
        """Encode points: ``xyz [..., 3]`` → ``[..., channels·len(scales)]`` (scales concatenated,
        coarsest first)."""
        h = torch.cat(self.per_scale(xyz), dim=-1)
        assert h.shape == (*xyz.shape[:-1], self.out_dim)
        return h

    # ------------------------------------------------------------------ regularisation
    def tv_loss(self) -> Tensor:
        """Total-variation regulariser: mean squared difference between neighbouring cells of every
        plane along both plane axes, averaged over the planes' cells and summed over the scales
        (a 0-dim tensor)."""
        total = self.grids[0].new_zeros(())
        for g in self.grids:
            dv = (g[..., 1:, :] - g[..., :-1, :]).pow(2).mean()
            du = (g[..., :, 1:] - g[..., :, :-1]).pow(2).mean()
            total = total + dv + du
        return total


class PositionField(PlaneField):
    """The position field of DESIGN §4: a :class:`PlaneField` with the paper's defaults — planes
    xy/xz/yz, resolution 64, scale factors (1, 2, 4, 8), 16 channels → ``H ∈ R^64`` per Gaussian.

    Args: as :class:`PlaneField` (same names, meanings and defaults: the DESIGN ones).
    """


__all__ = ["PlaneField", "PositionField", "sample_planes"]
