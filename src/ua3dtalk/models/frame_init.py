"""Initialising a branch's Gaussians from a training frame (``model.init_from_frame``, DESIGN §4.1).

A branch's Gaussians start random in its bounding box with mid-grey colours (:class:`GaussianModel`); on a real
video at 512² the CPU schedule then spends its first few hundred steps finding the head's colours and never
resolves small structures such as the teeth of a smile. :func:`frame_points` instead places the N Gaussians on
the pixels of one frame that the branch renders (face ∪ hair for the face, the inner mouth for the mouth):

* each sampled pixel (uniform over the mask, jittered inside the pixel; pixel (r, c) has its centre at
  (c + 0.5, r + 0.5) as everywhere in the project) is cast as a ray from the frame's camera
  (``viewmat`` world→camera, OpenCV axes; ``K`` intrinsics) and put where the ray enters the ellipsoid
  inscribed in the branch's ``bounds`` (a head is roughly such an ellipsoid, and the mouth sits in the front of
  its own box); a ray that misses it takes the point nearest to the ellipsoid's centre;
* its colour is the pixel's;
* its scale is the sampling spacing at that depth: ``depth / fx · sqrt(mask pixels / N)`` (isotropic), so the
  splats tile the mask without holes.

The frame is reproduced at once up to the depth error of the ellipsoid; training refines geometry, colours and
opacities as usual. Shapes: ``mask`` [H,W] bool, ``image`` [H,W,3] in [0,1], ``viewmat`` [4,4], ``K`` [3,3] →
points [N,3], colors [N,3], scales [N] (world units).
"""
from __future__ import annotations

import torch


def ray_ellipsoid(origin: torch.Tensor, dirs: torch.Tensor, centre: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Points where rays ``origin`` [3] + t·``dirs`` [N,3] first enter the axis-aligned ellipsoid (``centre`` [3],
    semi-axes ``axes`` [3]); rays that miss it (or start inside it) take the point of the ray nearest to the centre
    in the ellipsoid's metric → [N,3]."""
    o = (origin - centre) / axes  # the ellipsoid becomes the unit sphere
    d = dirs / axes
    a = (d * d).sum(-1)
    b = 2 * (d * o).sum(-1)
    c = (o * o).sum() - 1
    disc = b * b - 4 * a * c
    t_near = -b / (2 * a)  # nearest approach to the centre
    t_hit = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
    t = torch.where((disc > 0) & (t_hit > 0), t_hit, t_near)
    return origin + t[:, None] * dirs


def frame_points(mask: torch.Tensor, image: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                 bounds: torch.Tensor, n: int, generator: torch.Generator | None = None):
    """``n`` Gaussians on the pixels of ``mask`` (see the module docstring) → (points [n,3], colors [n,3],
    scales [n]). ``bounds`` [2,3] is the branch's box (min, max). Raises ``ValueError`` when the mask is empty."""
    rows, cols = torch.nonzero(mask.to(torch.bool), as_tuple=True)
    m = rows.numel()
    if m == 0:
        raise ValueError("frame_points: the mask has no pixels")
    if n <= 0:
        raise ValueError(f"frame_points: n must be ≥ 1, got {n}")
    dev = mask.device
    pick = (torch.randperm(m, generator=generator)[:n] if m >= n
            else torch.randint(m, (n,), generator=generator)).to(dev)
    jitter = torch.rand(n, 2, generator=generator).to(dev)
    r, c = rows[pick], cols[pick]
    u = c.to(torch.float32) + jitter[:, 0]  # pixel (r, c) spans [c, c+1) × [r, r+1): its centre is (c+.5, r+.5)
    v = r.to(torch.float32) + jitter[:, 1]
    colors = image[r, c].to(torch.float32).clamp(0, 1)
    vm = viewmat.to(torch.float32)
    R, t = vm[:3, :3], vm[:3, 3]
    Kf = K.to(torch.float32)
    x_cam = torch.stack([(u - Kf[0, 2]) / Kf[0, 0], (v - Kf[1, 2]) / Kf[1, 1], torch.ones_like(u)], -1)
    origin = -R.T @ t
    dirs = x_cam @ R  # R^T x for each row
    b = bounds.to(dev, torch.float32)
    centre, axes = (b[0] + b[1]) / 2, (b[1] - b[0]).abs() / 2
    points = ray_ellipsoid(origin, dirs, centre, axes.clamp_min(1e-6))
    depth = ((points - origin) @ R.T)[:, 2].clamp_min(1e-6)  # camera z of each point
    spacing = (m / n) ** 0.5  # pixels between samples
    scales = depth / Kf[0, 0] * spacing
    return points, colors, scales


def polygon_mask(poly: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool [H,W]: the pixels whose centres (c + 0.5, r + 0.5) lie inside the polygon ``poly`` [P,2] (x, y pixels;
    even–odd rule)."""
    poly = poly.to(torch.float32)
    ys = torch.arange(height, dtype=torch.float32, device=poly.device)[:, None, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=poly.device)[None, :, None] + 0.5
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = poly.roll(-1, 0)[:, 0], poly.roll(-1, 0)[:, 1]
    straddles = (y0 > ys) != (y1 > ys)  # [H,1,P]
    x_cross = x0 + (ys - y0) * (x1 - x0) / torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
    return ((straddles & (xs < x_cross)).sum(-1) % 2).bool()


def mouth_back_layer(points: torch.Tensor, colors: torch.Tensor, mouth_pixels: torch.Tensor, viewmat: torch.Tensor,
                     fraction: float, depth: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """The inside of the mouth behind the teeth (``model.init_mouth_back``): the last ``round(fraction · N)`` of the
    placed points [N,3] move ``depth`` (world units, 2 cm) further along their camera rays and take the mean colour
    of the darkest fifth of ``mouth_pixels`` [M,3] (the frame's inner-mouth pixels). A mouth that opens past the
    frame's opening then shows a dark cavity rather than whatever is behind the branch. Returns new (points,
    colors); the inputs are not changed."""
    n = points.shape[0]
    k = int(round(float(fraction) * n))
    if k <= 0 or mouth_pixels.shape[0] == 0:
        return points, colors
    vm = viewmat.to(points.dtype)
    R, t = vm[:3, :3], vm[:3, 3]
    origin = -R.T @ t
    d = points[n - k:] - origin
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lum = mouth_pixels.to(torch.float32) @ torch.tensor([0.299, 0.587, 0.114], device=mouth_pixels.device)
    dark = mouth_pixels[lum <= torch.quantile(lum, 0.2)].to(colors.dtype).mean(0)
    points, colors = points.clone(), colors.clone()
    points[n - k:] = points[n - k:] + depth * d
    colors[n - k:] = dark
    return points, colors


def mouth_points(mask: torch.Tensor, image: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                 bounds: torch.Tensor, n: int, back_fraction: float = 0.0, lips: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
    """The inside-mouth branch's ``n`` Gaussians from one frame → (points [n,3], colors [n,3], scales [n]).

    Without a back layer (``back_fraction`` 0) these are :func:`frame_points` of the inner-mouth ``mask``. With
    one, ``round(back_fraction · n)`` of them form the cavity (:func:`mouth_back_layer`): sampled over the whole
    outer-lip polygon ``lips`` [12,2] (landmarks 48–59, pixels) ∪ ``mask`` rather than over the teeth alone —
    the cavity that a lower lip reveals when it moves down lies behind the lips of this frame, not behind its
    teeth — then 2 cm further along their rays, with the darkest fifth's mean colour of the inner-mouth pixels.
    ``lips`` None: the back layer is taken from the inner-mouth samples themselves."""
    if back_fraction <= 0:
        return frame_points(mask, image, viewmat, K, bounds, n, generator=generator)
    k = min(int(round(float(back_fraction) * n)), n - 1)
    if lips is None or k <= 0:
        points, colors, scales = frame_points(mask, image, viewmat, K, bounds, n, generator=generator)
        points, colors = mouth_back_layer(points, colors, image[mask.bool()], viewmat, back_fraction)
        return points, colors, scales
    front = frame_points(mask, image, viewmat, K, bounds, n - k, generator=generator)
    cavity = mask.bool() | polygon_mask(lips, mask.shape[0], mask.shape[1]).to(mask.device)
    back = frame_points(cavity, image, viewmat, K, bounds, k, generator=generator)
    bp, bc = mouth_back_layer(back[0], back[1], image[mask.bool()], viewmat, 1.0)
    return torch.cat([front[0], bp]), torch.cat([front[1], bc]), torch.cat([front[2], back[2]])
