"""Gaussians placed on a frame's pixels (ua3dtalk.models.frame_init, GaussianModel.reinitialise): each point lies on
its pixel's ray, where the ray enters the branch's ellipsoid, with the pixel's colour and a scale that tiles the
mask."""
from __future__ import annotations

import math

import pytest
import torch

from ua3dtalk.models.frame_init import frame_points, mouth_back_layer, ray_ellipsoid
from ua3dtalk.models.gaussians import GaussianModel
from ua3dtalk.render.sh import C0

BOUNDS = torch.tensor([[-0.1, -0.13, -0.11], [0.1, 0.13, 0.11]])


def camera(yaw_deg: float = 10.0, dist: float = 0.6, f: float = 300.0, size: int = 96):
    """world→camera [4,4] looking at the origin from −z (OpenCV axes, the face looks towards −z), K [3,3]."""
    a = math.radians(yaw_deg)
    R = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    vm = torch.eye(4)
    vm[:3, :3] = R
    vm[:3, 3] = torch.tensor([0.0, 0.0, dist])
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    return vm, K


def project(points, vm, K):
    cam = points @ vm[:3, :3].T + vm[:3, 3]
    uv = cam[:, :2] / cam[:, 2:3] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return uv, cam[:, 2]


def test_points_lie_on_their_pixels_rays_at_the_front_of_the_ellipsoid_with_the_pixels_colours():
    size = 96
    vm, K = camera(size=size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (xx - 48) ** 2 + (yy - 44) ** 2 < 20 ** 2  # inside the head's silhouette (≈ 50 px across here)
    image = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(1))
    n = 500
    pts, rgb, scales = frame_points(mask, image, vm, K, BOUNDS, n, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (n, 3) and rgb.shape == (n, 3) and scales.shape == (n,)
    uv, depth = project(pts, vm, K)
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    assert bool(mask[row, col].all())  # each point projects into a mask pixel …
    torch.testing.assert_close(rgb, image[row, col])  # … and has that pixel's colour
    centre, axes = BOUNDS.mean(0), (BOUNDS[1] - BOUNDS[0]) / 2
    on = (((pts - centre) / axes) ** 2).sum(-1)
    torch.testing.assert_close(on, torch.ones(n), atol=1e-4, rtol=0)  # on the ellipsoid
    _, centre_depth = project(centre[None], vm, K)
    assert bool((depth < centre_depth).all())  # its near side
    m = int(mask.sum())
    torch.testing.assert_close(scales, depth / K[0, 0] * math.sqrt(m / n))
    assert len({(int(r), int(c)) for r, c in zip(row, col)}) == n  # n ≤ mask pixels: no pixel twice


def test_rays_that_miss_take_the_point_nearest_to_the_centre_and_small_masks_are_sampled_with_replacement():
    o = torch.tensor([0.0, 0.0, -2.0])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # the first misses the unit sphere, the second hits it
    p = ray_ellipsoid(o, d, torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(p, torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, -1.0]]))
    p = ray_ellipsoid(torch.tensor([0.0, 2.0, -1.0]), torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(p, torch.tensor([[0.0, 2.0, 0.0]]))  # misses: the nearest approach
    vm, K = camera()
    mask = torch.zeros(96, 96, dtype=torch.bool)
    mask[40:42, 40:43] = True  # 6 pixels for 50 Gaussians
    pts, rgb, _ = frame_points(mask, torch.full((96, 96, 3), 0.25), vm, K, BOUNDS, 50)
    uv, _ = project(pts, vm, K)
    assert pts.shape == (50, 3) and bool(mask[uv[:, 1].floor().long(), uv[:, 0].floor().long()].all())
    with pytest.raises(ValueError, match="no pixels"):
        frame_points(torch.zeros(96, 96, dtype=torch.bool), torch.zeros(96, 96, 3), vm, K, BOUNDS, 10)


def test_reinitialise_sets_positions_colours_scales_and_opacity_in_place():
    g = GaussianModel(num_points=40, seed=0)
    params = {n: p for n, p in g.named_parameters()}
    pts, rgb, s = torch.randn(40, 3) * 0.01, torch.rand(40, 3), torch.rand(40) * 0.01 + 1e-3
    g.reinitialise(pts, rgb, s, opacity=0.5)
    assert all(p is params[n] for n, p in g.named_parameters())  # the optimizer's tensors stay
    torch.testing.assert_close(g.means.data, pts)
    torch.testing.assert_close(g.sh.data[:, 0] * C0 + 0.5, rgb)
    assert float(g.sh.data[:, 1:].abs().max()) == 0.0
    torch.testing.assert_close(g.scales.data, s[:, None].expand(40, 3))
    torch.testing.assert_close(g.opacities.data, torch.full((40,), 0.5))
    with pytest.raises(ValueError, match=r"expected points/rgb \[40,3\]"):
        g.reinitialise(pts[:5], rgb[:5], s[:5])


def test_mouth_back_layer_moves_a_fraction_behind_on_the_same_pixels_with_the_dark_colour():
    """``init_mouth_back``: the last 30 % of the points go 2 cm further along their rays (they still project into
    the same pixels) and take the mean of the darkest fifth of the mouth pixels; the rest is untouched."""
    size = 96
    vm, K = camera(size=size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (xx - 48) ** 2 + (yy - 60) ** 2 < 8 ** 2
    image = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(2))
    pts, rgb, _ = frame_points(mask, image, vm, K, BOUNDS, 100, generator=torch.Generator().manual_seed(0))
    pix = image[mask]
    p2, c2 = mouth_back_layer(pts, rgb, pix, vm, 0.3)
    assert torch.equal(p2[:70], pts[:70]) and torch.equal(c2[:70], rgb[:70])
    uv0, d0 = project(pts[70:], vm, K)
    uv1, d1 = project(p2[70:], vm, K)
    torch.testing.assert_close(uv1, uv0, atol=1e-3, rtol=0)
    torch.testing.assert_close((p2[70:] - pts[70:]).norm(dim=-1), torch.full((30,), 0.02), atol=1e-6, rtol=0)
    assert bool((d1 > d0).all())
    lum = pix @ torch.tensor([0.299, 0.587, 0.114])
    dark = pix[lum <= torch.quantile(lum, 0.2)].mean(0)
    torch.testing.assert_close(c2[70:], dark.expand(30, 3))
    assert float(dark @ torch.tensor([0.299, 0.587, 0.114])) < float(lum.mean()) - 0.1
    p0, c0 = mouth_back_layer(pts, rgb, pix, vm, 0.0)
    assert p0 is pts and c0 is rgb


def test_polygon_mask_matches_the_preprocessings_rasteriser():
    """The torch even–odd rasteriser (pixel centres) against the preprocessing's PIL one on random polygons: they
    (which also fills its outline) may differ only on pixels whose centres lie within a pixel's diagonal of an edge;
    a rectangle is exactly the pixels whose centres it holds."""
    import numpy as np

    from ua3dtalk.models.frame_init import polygon_mask
    from ua3dtalk.preprocess.parsing import polygon_mask as pil_polygon_mask

    rect = polygon_mask(torch.tensor([[2.0, 2.0], [8.0, 2.0], [8.0, 6.0], [2.0, 6.0]]), 10, 10)
    expect = torch.zeros(10, 10, dtype=torch.bool)
    expect[2:6, 2:8] = True
    assert torch.equal(rect, expect)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        ang = torch.sort(torch.rand(12, generator=g) * 2 * math.pi).values
        rad = 10 + 12 * torch.rand(12, generator=g)
        poly = torch.stack([40 + rad * ang.cos(), 30 + 0.6 * rad * ang.sin()], -1)
        ours = polygon_mask(poly, 64, 80)
        ref = torch.from_numpy(pil_polygon_mask(poly.numpy().astype(np.float64), 64, 80))
        differ = ours != ref
        assert int(ours.sum()) > 100 and int(differ.sum()) <= 0.2 * int(ref.sum())
        yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(80) + 0.5, indexing="ij")
        pts = torch.stack([xx[differ], yy[differ]], -1)
        a, b = poly, poly.roll(-1, 0)
        ab = b - a
        t = (((pts[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1)).clamp(0, 1)
        dist = (pts[:, None] - (a + t[..., None] * ab)).norm(dim=-1).min(-1).values
        assert bool((dist <= 1.5).all()), float(dist.max())


def test_mouth_points_put_the_cavity_behind_the_whole_lip_polygon():
    """``init_mouth_back`` with the frame's outer-lip polygon: the front points stay on the inner-mouth pixels with
    their colours; the back layer is spread over the lips' polygon (also below the teeth, where an opening
    appears), 2 cm behind where the ray enters the ellipsoid, with the dark colour."""
    from ua3dtalk.models.frame_init import mouth_points, polygon_mask

    size = 96
    vm, K = camera(size=size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    teeth = ((xx - 48).abs() < 12) & (yy >= 56) & (yy < 60)
    lips = torch.tensor([[32.0, 55.0], [48.0, 51.0], [64.0, 55.0], [60.0, 66.0], [48.0, 70.0], [36.0, 66.0]])
    image = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(4))
    n = 200
    pts, rgb, scales = mouth_points(teeth, image, vm, K, BOUNDS, n, 0.4, lips=lips,
                                    generator=torch.Generator().manual_seed(0))
    assert pts.shape == (n, 3) and rgb.shape == (n, 3) and scales.shape == (n,)
    uv, d = project(pts, vm, K)
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    front, back = slice(0, 120), slice(120, n)
    assert bool(teeth[row[front], col[front]].all())
    torch.testing.assert_close(rgb[front], image[row[front], col[front]])
    region = polygon_mask(lips, size, size) | teeth
    assert bool(region[row[back], col[back]].all())
    below = row[back] >= 60  # under the teeth: where the lower lip is in this frame
    assert int(below.sum()) > 0.4 * 80
    pix = image[teeth]
    lum = pix @ torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(rgb[back], pix[lum <= torch.quantile(lum, 0.2)].mean(0).expand(80, 3))
    assert float(d[back].min()) > float(d[front].max())  # every back point is behind the teeth
    # without the polygon it is the same-pixel back layer of mouth_back_layer; without a back layer frame_points
    p1, _, _ = mouth_points(teeth, image, vm, K, BOUNDS, n, 0.4, generator=torch.Generator().manual_seed(0))
    uv1, _ = project(p1, vm, K)
    assert bool(teeth[uv1[:, 1].floor().long(), uv1[:, 0].floor().long()].all())
    p0, c0, s0 = mouth_points(teeth, image, vm, K, BOUNDS, n, 0.0, lips=lips,
                              generator=torch.Generator().manual_seed(0))
    p_ref, c_ref, s_ref = frame_points(teeth, image, vm, K, BOUNDS, n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p0, p_ref) and torch.equal(c0, c_ref) and torch.equal(s0, s_ref)
