"""Behaviour of :func:`rasterize` against hand-computed values and an independent per-pixel oracle
written directly from DESIGN §7 (numpy, float64, no code shared with the package)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ua3dtalk.render.api as api
from ua3dtalk.render import rasterize

BACKENDS = ["dense", "torch", "cpu"]
F64 = torch.float64


@pytest.fixture(params=BACKENDS)
def any_backend(request, helpers):
    return helpers.require_backend(request.param)


def intrinsics(f, cx, cy, fy=None):
    return torch.tensor([[f, 0.0, cx], [0.0, f if fy is None else fy, cy], [0.0, 0.0, 1.0]], dtype=F64)


def gaussians(means, sigma, opac, colors, quats=None):
    """Isotropic Gaussians: ``sigma`` is the world-space std (per Gaussian)."""
    means = torch.as_tensor(means, dtype=F64).reshape(-1, 3)
    n = means.shape[0]
    sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1).expand(n)
    scales = sigma[:, None].repeat(1, 3)
    if quats is None:
        quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64).repeat(n, 1)
    opac = torch.as_tensor(opac, dtype=F64).reshape(-1).expand(n).clone()
    colors = torch.as_tensor(colors, dtype=F64).reshape(n, 3)
    return dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors)


def render(g, K, W, H, backend, viewmat=None, **kw):
    viewmat = torch.eye(4, dtype=g["means"].dtype) if viewmat is None else viewmat
    out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmat, K, W, H,
                    backend=backend, **kw)
    assert out.backend == backend
    return out


# --------------------------------------------------------------------------------------------------
# An independent oracle, written from DESIGN §7
# --------------------------------------------------------------------------------------------------


def _rotmat(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def oracle(means, quats, scales, opacities, colors, viewmat, K, W, H, background=None, near=0.01, far=1e10):
    """Per-pixel front-to-back compositing exactly as DESIGN §7 states it (colors are RGB)."""
    means, quats, scales, opac, colors, V, K = (np.asarray(t.detach(), dtype=np.float64) for t in
                                                 (means, quats, scales, opacities, colors, viewmat, K))
    Rw, tw = V[:3, :3], V[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    items = []
    for i in range(means.shape[0]):
        x, y, z = Rw @ means[i] + tw
        if not (near < z < far) or opac[i] < 1 / 255:
            continue
        tanx, tany = 0.5 * W / fx, 0.5 * H / fy  # the frustum widened by 0.3·tan(fov/2) on each side
        txz = np.clip(x / z, -cx / fx - 0.3 * tanx, (W - cx) / fx + 0.3 * tanx)
        tyz = np.clip(y / z, -cy / fy - 0.3 * tany, (H - cy) / fy + 0.3 * tany)
        J = np.array([[fx / z, 0.0, -fx * txz / z], [0.0, fy / z, -fy * tyz / z]])
        M = _rotmat(quats[i]) @ np.diag(scales[i])
        cov = J @ Rw @ M @ M.T @ Rw.T @ J.T + 0.3 * np.eye(2)
        items.append((z, i, np.array([fx * x / z + cx, fy * y / z + cy]), np.linalg.inv(cov)))
    items.sort(key=lambda it: (it[0], it[1]))  # front to back, ties by index
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    pix = np.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2)
    T = np.ones(len(pix))
    img = np.zeros((len(pix), 3))
    dep = np.zeros(len(pix))
    done = np.zeros(len(pix), dtype=bool)
    for z, i, m, conic in items:
        d = pix - m
        alpha = np.minimum(0.999, opac[i] * np.exp(-0.5 * np.einsum("pi,ij,pj->p", d, conic, d)))
        use = (alpha >= 1 / 255) & ~done
        stop = use & (T * (1 - alpha) < 1e-4)
        done |= stop
        use &= ~stop
        w = np.where(use, alpha * T, 0.0)
        img += w[:, None] * colors[i]
        dep += w * z
        T = np.where(use, T * (1 - alpha), T)
    if background is not None:
        img += T[:, None] * np.asarray(background.detach(), dtype=np.float64)
    return img.reshape(H, W, 3), (1 - T).reshape(H, W, 1), dep.reshape(H, W, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_oracle_on_random_scenes(seed, any_backend, helpers):
    sc = helpers.make_scene(seed=100 + seed, n=25, width=19, height=13, dtype=F64, sigma_px=(0.2, 6.0),
                            behind=0.15, clamp_frac=0.3, large_frac=0.1, sigma_px_large=(15.0, 60.0))
    out = sc.render(any_backend)
    img, alpha, dep = oracle(sc.means, sc.quats, sc.scales, sc.opacities, sc.colors, sc.viewmat, sc.K,
                             sc.width, sc.height, sc.background)
    assert alpha.max() > 0.5
    np.testing.assert_allclose(out.image.numpy(), img, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.alpha.numpy(), alpha, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.depth.numpy(), dep, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# Hand-computed single Gaussians
# --------------------------------------------------------------------------------------------------

W1, H1, F1 = 9, 7, 10.0


def _single(opac=0.6, z=2.0, sigma_px=1.0, color=(0.2, 0.5, 0.9), quats=None):
    # centre pixel (row 3, col 4) has its centre at (4.5, 3.5) = (cx, cy): the Gaussian sits on it
    K = intrinsics(F1, 4.5, 3.5)
    g = gaussians([0.0, 0.0, z], sigma_px * z / F1, opac, color, quats)
    return g, K


def _analytic_alpha(opac, sigma_px, W=W1, H=H1, cx=4.5, cy=3.5):
    var = sigma_px**2 + 0.3  # + the 0.3 px² blur
    rows, cols = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    a = np.minimum(0.999, opac * np.exp(-0.5 * ((cols - cx) ** 2 + (rows - cy) ** 2) / var))
    return np.where(a >= 1 / 255, a, 0.0)[..., None]


def test_single_gaussian_alpha_image_depth(any_backend):
    opac, z, color = 0.6, 2.0, (0.2, 0.5, 0.9)
    g, K = _single(opac, z, 1.0, color)
    out = render(g, K, W1, H1, any_backend)
    assert out.image.shape == (H1, W1, 3)
    assert out.alpha.shape == out.depth.shape == (H1, W1, 1)
    a = out.alpha.numpy()
    assert a[3, 4, 0] == pytest.approx(opac, abs=1e-12)  # opacity · exp(0) at the centre pixel
    assert a[3, 5, 0] == pytest.approx(opac * math.exp(-0.5 / 1.3), abs=1e-12)  # one pixel right
    assert a[2, 4, 0] == pytest.approx(opac * math.exp(-0.5 / 1.3), abs=1e-12)  # one pixel up
    assert a[4, 5, 0] == pytest.approx(opac * math.exp(-1.0 / 1.3), abs=1e-12)  # diagonal
    assert a[3, 6, 0] == pytest.approx(opac * math.exp(-2.0 / 1.3), abs=1e-12)  # two pixels right
    expected = _analytic_alpha(opac, 1.0)
    assert (expected == 0).any(), "the corners are below 1/255 and must be exactly 0"
    np.testing.assert_allclose(a, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.image.numpy(), expected * np.array(color), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.depth.numpy(), z * expected, rtol=0, atol=1e-12)  # depth = z · alpha
    # radius: ⌈extent⌉ with the opacity-aware extent √(2 ln(255 o) σ'²) (+ its tiny margin)
    ext = math.sqrt(2 * math.log(255 * opac) * 1.3) * (1 + 1e-4) + 1e-3
    assert int(out.radii[0]) == math.ceil(ext)
    torch.testing.assert_close(out.means2d.detach(), torch.tensor([[4.5, 3.5]], dtype=F64))


def test_isotropic_gaussian_ignores_rotation_and_quaternion_norm(any_backend):
    g0, K = _single()
    q = torch.tensor([[0.3, -1.2, 0.7, 2.0]], dtype=F64)  # un-normalised, arbitrary rotation
    g1, _ = _single(quats=q)
    a0 = render(g0, K, W1, H1, any_backend)
    a1 = render(g1, K, W1, H1, any_backend)
    torch.testing.assert_close(a0.image, a1.image, rtol=0, atol=1e-12)


def test_anisotropic_gaussian_orientation(any_backend):
    """Scale 3× along world x: the blob is wider than tall (quaternion identity); rotating it by 90°
    about z (q = (cos 45°, 0, 0, sin 45°)) makes it taller than wide."""
    K = intrinsics(F1, 4.5, 3.5)
    g = gaussians([0.0, 0.0, 2.0], 0.2, 0.8, (1.0, 1.0, 1.0))
    g["scales"] = torch.tensor([[0.6, 0.2, 0.2]], dtype=F64)
    a = render(g, K, W1, H1, any_backend).alpha[..., 0]
    assert float(a[3, 6]) > float(a[1, 4]) + 0.1  # 2 px right vs 2 px up
    g["quats"] = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]], dtype=F64)
    b = render(g, K, W1, H1, any_backend).alpha[..., 0]
    assert float(b[1, 4]) > float(b[3, 6]) + 0.1
    torch.testing.assert_close(b[3, 6], a[1, 4], rtol=0, atol=1e-12)  # exactly the transposed falloff


def test_alpha_clamped_at_0_999(any_backend):
    g, K = _single(opac=1.0)
    out = render(g, K, W1, H1, any_backend)
    assert float(out.alpha[3, 4, 0]) == pytest.approx(0.999, abs=1e-12)
    assert float(out.alpha[3, 5, 0]) == pytest.approx(math.exp(-0.5 / 1.3), abs=1e-12)
    np.testing.assert_allclose(out.alpha.numpy(), _analytic_alpha(1.0, 1.0), rtol=0, atol=1e-12)


def test_background_blending(any_backend):
    g, K = _single(0.7, 3.0, 1.5, (0.9, 0.1, 0.4))
    bg = torch.tensor([0.25, 0.5, 1.0], dtype=F64)
    out = render(g, K, W1, H1, any_backend, background=bg)
    plain = render(g, K, W1, H1, any_backend)
    a = out.alpha.numpy()
    assert a.min() < 0.01 and a.max() > 0.6
    expected = np.array([0.9, 0.1, 0.4]) * a + (1 - a) * bg.numpy()
    np.testing.assert_allclose(out.image.numpy(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.alpha, plain.alpha, rtol=0, atol=0)
    torch.testing.assert_close(out.depth, plain.depth, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Ordering, culling, stopping
# --------------------------------------------------------------------------------------------------


def _pair(z_red, z_green, order):
    """Red (o = 0.6) and green (o = 0.5) Gaussians, both centred on pixel (3, 4) with 1 px σ."""
    red = ([0.0, 0.0, z_red], 1.0 * z_red / F1, 0.6, (1.0, 0.0, 0.0))
    green = ([0.0, 0.0, z_green], 1.0 * z_green / F1, 0.5, (0.0, 1.0, 0.0))
    items = [red, green] if order == "rg" else [green, red]
    return gaussians([it[0] for it in items], [it[1] for it in items], [it[2] for it in items],
                     [it[3] for it in items])


@pytest.mark.parametrize("order", ["rg", "gr"])
def test_front_to_back_by_depth_regardless_of_index(order, any_backend):
    K = intrinsics(F1, 4.5, 3.5)
    out = render(_pair(2.0, 3.0, order), K, W1, H1, any_backend)  # red in front
    np.testing.assert_allclose(out.image[3, 4].numpy(), [0.6, 0.5 * 0.4, 0.0], atol=1e-12)
    assert float(out.alpha[3, 4, 0]) == pytest.approx(1 - 0.4 * 0.5, abs=1e-12)
    assert float(out.depth[3, 4, 0]) == pytest.approx(2.0 * 0.6 + 3.0 * 0.5 * 0.4, abs=1e-12)
    out2 = render(_pair(3.0, 2.0, order), K, W1, H1, any_backend)  # green in front
    np.testing.assert_allclose(out2.image[3, 4].numpy(), [0.6 * 0.5, 0.5, 0.0], atol=1e-12)
    assert float(out2.depth[3, 4, 0]) == pytest.approx(2.0 * 0.5 + 3.0 * 0.6 * 0.5, abs=1e-12)


def test_equal_depths_composite_in_index_order(any_backend):
    K = intrinsics(F1, 4.5, 3.5)
    rg = render(_pair(2.0, 2.0, "rg"), K, W1, H1, any_backend)
    gr = render(_pair(2.0, 2.0, "gr"), K, W1, H1, any_backend)
    np.testing.assert_allclose(rg.image[3, 4].numpy(), [0.6, 0.5 * 0.4, 0.0], atol=1e-12)
    np.testing.assert_allclose(gr.image[3, 4].numpy(), [0.6 * 0.5, 0.5, 0.0], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_opacity_below_1_over_255_is_culled(dtype, any_backend):
    K = intrinsics(F1, 4.5, 3.5)
    g = gaussians([[0.0, 0.0, 2.0], [0.0, 0.0, 2.5]], 0.4, [0.99 / 255, 1.05 / 255],
                  [(1.0, 1.0, 1.0), (1.0, 0.0, 0.0)])
    g = {k: v.to(dtype) for k, v in g.items()}
    out = render(g, K.to(dtype), W1, H1, any_backend)
    assert out.radii.tolist()[0] == 0 and out.radii.tolist()[1] > 0
    # only the second one draws, and only where its alpha reaches 1/255
    a = out.alpha[..., 0].double()
    assert float(a[3, 4]) == pytest.approx(1.05 / 255, rel=1e-5)
    assert int((a > 0).sum()) == 1  # at 1 px distance its alpha is already < 1/255
    assert float(out.image[..., 1].abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_compositing_stops_before_transmittance_below_1e_4(dtype, any_backend):
    """Five α = 0.98 Gaussians on one pixel: T = 0.02, 4e-4, then 8e-6 < 1e-4 → stop before the 3rd."""
    K = intrinsics(F1, 4.5, 3.5)
    zs = [2.0, 2.5, 3.0, 3.5, 4.0]
    cols = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    g = gaussians([[0.0, 0.0, z] for z in zs][::-1], [z / F1 for z in zs][::-1], 0.98, cols[::-1])
    g = {k: v.to(dtype) for k, v in g.items()}
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=dtype)
    out = render(g, K.to(dtype), W1, H1, any_backend, background=bg)
    T = 0.02 * 0.02
    tol = 1e-12 if dtype == F64 else 2e-6
    assert float(out.alpha[3, 4, 0]) == pytest.approx(1 - T, abs=tol)
    expected = np.array([0.98, 0.98 * 0.02, 0.0]) + T * bg.double().numpy()  # blue/white never contribute
    np.testing.assert_allclose(out.image[3, 4].double().numpy(), expected, rtol=0, atol=tol)
    assert float(out.depth[3, 4, 0]) == pytest.approx(2.0 * 0.98 + 2.5 * 0.98 * 0.02, abs=10 * tol)
    # one pixel away (α = 0.98·e^{-0.5/1.3} ≈ 0.666 each) nothing stops until T < 1e-4: 0.334^k
    a1 = 0.98 * math.exp(-0.5 / 1.3)
    T1, k = 1.0, 0
    while k < 5 and T1 * (1 - a1) >= 1e-4:
        T1, k = T1 * (1 - a1), k + 1
    assert k == 5
    assert float(out.alpha[3, 5, 0]) == pytest.approx(1 - T1, abs=tol)
    img, _, _ = oracle(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], torch.eye(4), K,
                       W1, H1, bg)
    np.testing.assert_allclose(out.image.double().numpy(), img, rtol=0, atol=tol)


def test_near_and_far_planes_cull(any_backend):
    K = intrinsics(F1, 4.5, 3.5)
    g = gaussians([[0.0, 0.0, 0.5], [0.0, 0.0, 2.0], [0.0, 0.0, 9.0]], [0.05, 0.2, 0.9], 0.5,
                  [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
    out = render(g, K, W1, H1, any_backend, near=1.0, far=5.0)
    assert out.radii.tolist()[0] == 0 and out.radii.tolist()[2] == 0 and out.radii.tolist()[1] > 0
    np.testing.assert_allclose(out.image[3, 4].numpy(), [0.0, 0.5, 0.0], atol=1e-12)
    out = render(g, K, W1, H1, any_backend)  # default near/far: all three, red in front
    assert (out.radii > 0).all()
    assert float(out.image[3, 4, 0]) == pytest.approx(0.5, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------------


def test_projection_is_the_opencv_pinhole(any_backend, helpers):
    sc = helpers.make_scene(seed=7, n=40, width=40, height=30, dtype=F64)
    out = sc.render(any_backend)
    V, K, X = sc.viewmat.numpy(), sc.K.numpy(), sc.means.numpy()
    pc = X @ V[:3, :3].T + V[:3, 3]
    front = pc[:, 2] > 0.01
    uvw = pc @ K.T
    expected = uvw[:, :2] / uvw[:, 2:]
    np.testing.assert_allclose(out.means2d.detach().numpy()[front], expected[front], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("offset,axis,sign", [((0.5, 0, 0), 1, +1), ((-0.5, 0, 0), 1, -1),
                                              ((0, 0.5, 0), 0, +1), ((0, -0.5, 0), 0, -1)])
def test_right_projects_right_and_below_projects_down(offset, axis, sign, any_backend):
    """OpenCV axes: +x is to the right (larger column), +y is down (larger row)."""
    W, H = 21, 15
    K = intrinsics(12.0, W / 2, H / 2)
    g = gaussians([offset[0], offset[1], 2.0], 0.1, 0.9, (1.0, 1.0, 1.0))
    out = render(g, K, W, H, any_backend)
    m2 = out.means2d.detach()[0]
    centre = torch.tensor([W / 2, H / 2], dtype=F64)
    assert sign * float(m2[1 - axis] - centre[1 - axis]) == pytest.approx(12.0 * 0.5 / 2.0)
    a = out.alpha[..., 0]
    r, c = divmod(int(a.argmax()), W)
    peak = (r, c)[axis]
    assert sign * (peak - ((H, W)[axis] // 2)) == 3  # 12·0.5/2 = 3 px from the centre pixel


def test_viewmat_moves_the_world(any_backend, helpers):
    """A rigid motion applied to the world and compensated in viewmat leaves the image unchanged."""
    sc = helpers.make_scene(seed=9, n=30, width=24, height=18, dtype=F64, sigma_px=(0.5, 5.0))
    ref = sc.render(any_backend)
    axis = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
    half = 0.5 * 2.2  # rotation angle 2.2 rad
    qm = torch.tensor([math.cos(half), *(math.sin(half) * axis)], dtype=F64)
    Rm = torch.from_numpy(_rotmat(qm.numpy()))
    tm = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    M = torch.eye(4, dtype=F64)
    M[:3, :3], M[:3, 3] = Rm, tm
    t = sc.tensors()
    t["means"] = sc.means @ Rm.T + tm
    # the Gaussians' orientations rotate with the world: q' = q_m ⊗ q (Hamilton product)
    a1, b1, c1, d1 = qm
    a2, b2, c2, d2 = t["quats"].unbind(-1)
    t["quats"] = torch.stack([
        a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
        a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
        a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
        a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
    ], -1)
    t["viewmat"] = sc.viewmat @ torch.linalg.inv(M)
    moved = sc.render(any_backend, t)
    torch.testing.assert_close(moved.image, ref.image, rtol=0, atol=1e-9)
    torch.testing.assert_close(moved.depth, ref.depth, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# means2d.grad and culled gradients
# --------------------------------------------------------------------------------------------------


def _loss(out, w):
    return (out.image * w[..., :3]).sum() + (out.alpha[..., 0] * w[..., 3]).sum()


def test_means2d_grad_equals_finite_difference_of_principal_point_shift(any_backend):
    """Shifting (cx, cy) moves a Gaussian's 2-D mean and nothing else: dL/dcx = means2d.grad[0, 0]."""
    W, H = 15, 11
    g = gaussians([0.1, -0.05, 2.0], 0.3, 0.7, (0.3, 0.6, 0.9))
    g["scales"] = torch.tensor([[0.3, 0.15, 0.2]], dtype=F64)
    g["quats"] = torch.tensor([[0.9, 0.2, -0.3, 0.1]], dtype=F64)
    w = torch.randn(H, W, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    K = intrinsics(14.0, 7.3, 5.2)
    m = g["means"].clone().requires_grad_(True)
    out = render(dict(g, means=m), K, W, H, any_backend)
    _loss(out, w).backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (1, 2)
    h = 1e-6
    for j, (r, c) in enumerate([(0, 2), (1, 2)]):
        Kp, Km = K.clone(), K.clone()
        Kp[r, c] += h
        Km[r, c] -= h
        lp, lm = _loss(render(g, Kp, W, H, any_backend), w), _loss(render(g, Km, W, H, any_backend), w)
        fd = (lp - lm) / (2 * h)
        assert abs(float(fd)) > 1e-3
        assert float(out.means2d.grad[0, j]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_means2d_grad_per_gaussian_finite_difference(any_backend, helpers, monkeypatch):
    """For each Gaussian, the FD of the loss w.r.t. a 2-D shift of its projected mean alone."""
    sc = helpers.make_scene(seed=11, n=8, width=20, height=14, dtype=F64, sigma_px=(1.5, 4.0), large_frac=0.0,
                            opacity_range=(0.2, 0.8), clamp_frac=0.0, tiny_opacity_frac=0.0, border=0.0)
    w = torch.randn(sc.height, sc.width, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    leaves = sc.leaves(("means",))
    out = sc.render(any_backend, leaves)
    _loss(out, w).backward()
    grad = out.means2d.grad.clone()
    vis = out.radii > 0
    assert int(vis.sum()) >= 5

    shift = torch.zeros(sc.n, 2, dtype=F64)
    orig = api.project_gaussians

    def shifted(*a, **k):
        p = orig(*a, **k)
        p.means2d = p.means2d + shift
        return p

    monkeypatch.setattr(api, "project_gaussians", shifted)
    h = 1e-6
    fd = torch.zeros_like(grad)
    for i in range(sc.n):
        for j in range(2):
            shift.zero_()
            shift[i, j] = h
            lp = _loss(sc.render(any_backend), w)
            shift[i, j] = -h
            lm = _loss(sc.render(any_backend), w)
            fd[i, j] = (lp - lm) / (2 * h)
    assert float(fd[vis].abs().min()) > 0
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)
    assert float(grad[~vis].abs().sum()) == 0.0


def test_culled_gaussians_get_zero_not_nan_gradients(any_backend):
    W, H = 16, 12
    K = intrinsics(15.0, 8.0, 6.0)
    means = [
        [0.0, 0.0, 3.0],  # visible
        [0.3, -0.2, 2.5],  # visible
        [0.0, 0.0, -2.0],  # behind the camera
        [0.0, 0.0, 0.0],  # at the camera centre (z = 0, SH direction undefined)
        [0.0, 0.0, 0.005],  # in front of the camera but before the near plane
        [40.0, 0.0, 2.0],  # far off-screen to the right
        [0.1, 0.1, 2.0],  # opacity below 1/255
    ]
    n = len(means)
    opac = torch.tensor([0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.5 / 255], dtype=F64)
    leaves = dict(
        means=torch.tensor(means, dtype=F64),
        quats=torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=F64),
        scales=torch.full((n, 3), 0.2, dtype=F64),
        opacities=opac,
        # SH degree 1
        colors=0.3 * torch.randn(n, 4, 3, generator=torch.Generator().manual_seed(1), dtype=F64),
    )
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64, requires_grad=True)
    out = rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
                    torch.eye(4, dtype=F64), K, W, H, background=bg, backend=any_backend)
    assert out.radii.tolist()[2:] == [0] * (n - 2) and all(r > 0 for r in out.radii.tolist()[:2])
    w = torch.randn(H, W, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    (_loss(out, w) + out.depth.sum()).backward()
    for k, v in leaves.items():
        assert v.grad is not None, k
        assert bool(torch.isfinite(v.grad).all()), f"{k}.grad has NaN/Inf"
        assert float(v.grad[2:].abs().max()) == 0.0, f"{k}.grad of culled Gaussians is not zero"
        assert float(v.grad[:2].abs().max()) > 0.0, f"{k}.grad of visible Gaussians is zero"
    g2 = out.means2d.grad
    assert g2 is not None and bool(torch.isfinite(g2).all())
    assert float(g2[2:].abs().max()) == 0.0 and float(g2[:2].abs().max()) > 0
    assert bool(torch.isfinite(bg.grad).all())


def test_degenerate_covariance_is_not_drawn_and_has_finite_gradients(any_backend):
    """A Gaussian whose 2-D covariance overflows (det = inf·inf − inf·inf = NaN in float32) is culled, and
    neither it nor the visible ones get NaN/Inf gradients (the conic uses a stand-in determinant)."""
    W, H = 16, 12
    K = intrinsics(15.0, 8.0, 6.0).float()
    leaves = dict(
        means=torch.tensor([[0.0, 0.0, 3.0], [0.1, 0.0, 2.5]]),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.2, 0.0]]),
        scales=torch.tensor([[0.2, 0.2, 0.2], [1e20, 1e20, 1e20]]),
        opacities=torch.tensor([0.6, 0.7]),
        colors=torch.rand(2, 3, generator=torch.Generator().manual_seed(0)),
    )
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    out = rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
                    torch.eye(4), K, W, H, backend=any_backend)
    assert out.radii.tolist() == [out.radii.tolist()[0], 0] and out.radii.tolist()[0] > 0
    assert bool(torch.isfinite(out.image).all())
    out.image.sum().backward()
    for k, v in leaves.items():
        assert bool(torch.isfinite(v.grad).all()), f"{k}.grad has NaN/Inf"
        assert float(v.grad[1].abs().max()) == 0.0, k


@pytest.mark.parametrize("x_over_z, j_at", [(1.6, 1.6), (2.5, 1.9), (-0.5, -0.5), (-1.0, -0.7)])
def test_jacobian_clamp_follows_the_off_centre_frustum(x_over_z, j_at):
    """gsplat's clamp: J is evaluated at x/z clamped to [−c_x/f_x − 0.3·t, (W − c_x)/f_x + 0.3·t],
    t = W/(2 f_x). With W = 20, f_x = 10, c_x = 4 that is [−0.7, 1.9] (a symmetric ±1.3·t clamp
    would give [−1.3, 1.3] and differ for 1.6 and −1.0)."""
    from ua3dtalk.render.projection import jacobian_limits, project_gaussians

    W, H, f, cx, cy, z, s = 20, 10, 10.0, 4.0, 5.0, 2.0, 0.05
    K = intrinsics(f, cx, cy)
    lims = [float(v) for v in jacobian_limits(K, W, H)]
    assert lims == pytest.approx([-0.7, 1.9, -0.65, 0.65])
    g = gaussians([x_over_z * z, 0.0, z], s, 0.5, (1.0, 1.0, 1.0))
    p = project_gaussians(g["means"], g["quats"], g["scales"], g["opacities"], torch.eye(4, dtype=F64), K, W, H)
    # isotropic Σ = s²·I: Σ' = s²·J Jᵀ + 0.3·I with J = [[f/z, 0, −f·j/z], [0, f/z, 0]]
    J = np.array([[f / z, 0.0, -f * j_at / z], [0.0, f / z, 0.0]])
    cov = s * s * J @ J.T + 0.3 * np.eye(2)
    inv = np.linalg.inv(cov)
    np.testing.assert_allclose(p.conics[0].detach().numpy(), [inv[0, 0], inv[0, 1], inv[1, 1]], rtol=1e-12)
    assert float(p.means2d[0, 0]) == pytest.approx(f * x_over_z + cx)  # the mean itself is never clamped
