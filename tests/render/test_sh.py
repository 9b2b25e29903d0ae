"""Spherical harmonics (degrees 0–3) against a direct evaluation with ``scipy.special``.

Convention of 3DGS / gsplat: the real SH *keep* the Condon–Shortley phase, i.e. with scipy's complex
Y_l^m (which includes (−1)^m)

    Y_{l,0} = Y_l^0,   Y_{l,m} = √2·Re Y_l^m (m > 0),   Y_{l,m} = √2·Im Y_l^{|m|} (m < 0),

ordered m = −l..l. This is (−1)^m times the "standard" real SH (Wikipedia's, which multiplies by
(−1)^m again and so cancels the phase); degree 1 is (−C1·y, C1·z, −C1·x).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from ua3dtalk.render import eval_sh_colors, sh_basis

C1 = math.sqrt(3.0 / (4.0 * math.pi))


def standard_real_sh(l: int, m: int, dirs: np.ndarray) -> np.ndarray:  # noqa: E741
    """The usual real SH (Wikipedia's definition, Condon–Shortley phase cancelled)."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    theta = np.arccos(np.clip(z, -1.0, 1.0))  # polar
    phi = np.arctan2(y, x)  # azimuth
    if m == 0:
        return sph_harm_y(l, 0, theta, phi).real
    ylm = sph_harm_y(l, abs(m), theta, phi)
    if m > 0:
        return math.sqrt(2.0) * (-1) ** m * ylm.real
    return math.sqrt(2.0) * (-1) ** m * ylm.imag


def gs_real_sh(l: int, m: int, dirs: np.ndarray) -> np.ndarray:  # noqa: E741
    """3DGS / gsplat basis function (l, m): (−1)^m × the standard real SH."""
    return (-1) ** abs(m) * standard_real_sh(l, m, dirs)


def direct_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    cols = [gs_real_sh(l, m, dirs) for l in range(degree + 1) for m in range(-l, l + 1)]  # noqa: E741
    return np.stack(cols, axis=-1)


def random_dirs(n: int, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).normal(size=(n, 3))
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    # include the axes and the poles (where azimuth is ill-defined) explicitly
    axes = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    return np.concatenate([d, axes])


def test_reference_convention_degree1():
    """The scipy-based reference itself has the documented 3DGS sign pattern."""
    d = random_dirs(50, 0)
    ref = direct_basis(d, 1)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    np.testing.assert_allclose(ref[:, 0], 0.5 / math.sqrt(math.pi), atol=1e-14)
    np.testing.assert_allclose(ref[:, 1:], np.stack([-C1 * y, C1 * z, -C1 * x], -1), atol=1e-14)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_basis_matches_scipy(degree):
    d = random_dirs(200, degree + 1)
    ours = sh_basis(torch.from_numpy(d), degree).numpy()
    assert ours.shape == (d.shape[0], (degree + 1) ** 2)
    np.testing.assert_allclose(ours, direct_basis(d, degree), rtol=0, atol=1e-12)
    # float32 too
    ours32 = sh_basis(torch.from_numpy(d).float(), degree)
    assert ours32.dtype == torch.float32
    np.testing.assert_allclose(ours32.numpy(), direct_basis(d, degree), rtol=0, atol=2e-6)


def test_sh_basis_degree1_is_minus_y_z_minus_x():
    d = torch.tensor([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    b = sh_basis(d, 1)
    torch.testing.assert_close(b[:, 1:], torch.stack([-C1 * d[:, 1], C1 * d[:, 2], -C1 * d[:, 0]], -1))


def test_sh_basis_orthonormal_on_the_sphere():
    """Quadrature on a Gauss–Legendre × uniform grid: ∫ Y_i Y_j dΩ = δ_ij (catches wrong constants)."""
    nt, npf = 24, 48
    xg, wg = np.polynomial.legendre.leggauss(nt)  # cos(theta)
    phi = (np.arange(npf) + 0.5) * 2 * np.pi / npf
    ct, ph = np.meshgrid(xg, phi, indexing="ij")
    st = np.sqrt(1 - ct**2)
    dirs = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3)
    w = (wg[:, None] * np.full(npf, 2 * np.pi / npf)[None, :]).reshape(-1)
    B = sh_basis(torch.from_numpy(dirs), 3).numpy()
    gram = (B * w[:, None]).T @ B
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-10)


@pytest.mark.parametrize("degree", [-1, 4])
def test_sh_basis_rejects_bad_degree(degree):
    with pytest.raises(ValueError, match="0..3"):
        sh_basis(torch.zeros(1, 3), degree)


def _direct_colors(sh: np.ndarray, degree: int, means: np.ndarray, viewmat: np.ndarray) -> np.ndarray:
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    d = means - campos
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    k = (degree + 1) ** 2
    rgb = np.einsum("nk,nkc->nc", direct_basis(d, degree), sh[:, :k]) + 0.5
    return np.maximum(rgb, 0.0)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_colors_matches_direct(degree, helpers):
    sc = helpers.make_scene(seed=40 + degree, n=64, sh_degree=degree, sh_coeffs=16, dtype=torch.float64)
    rgb = eval_sh_colors(sc.colors, degree, sc.means, sc.viewmat)
    ref = _direct_colors(sc.colors.numpy(), degree, sc.means.numpy(), sc.viewmat.numpy())
    assert (ref == 0).any(), "some colours should be clamped at 0"
    assert (ref > 0.05).any()
    np.testing.assert_allclose(rgb.numpy(), ref, rtol=0, atol=1e-12)


def test_view_direction_is_from_camera_to_gaussian():
    """Camera at c looking down +z; a Gaussian at c + 5·e: the direction is +e (not −e)."""
    c = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, 3] = -c
    sh = torch.zeros(3, 4, 3, dtype=torch.float64)
    sh[:, 3, 0] = 1.0  # red channel: coefficient of Y_{1,1} = −C1·x
    sh[:, 2, 1] = 1.0  # green channel: coefficient of Y_{1,0} = C1·z
    means = c + torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]], dtype=torch.float64)
    rgb = eval_sh_colors(sh, 1, means, viewmat)
    expected = torch.tensor([[0.5, 0.5 + C1, 0.5], [max(0.5 - C1, 0.0), 0.5, 0.5], [0.5 + C1, 0.5, 0.5]],
                            dtype=torch.float64)
    torch.testing.assert_close(rgb, expected)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("backend_name", ["dense", "torch", "cpu"])
def test_render_with_sh_equals_render_with_direct_rgb(backend_name, degree, helpers):
    helpers.require_backend(backend_name)
    sc = helpers.make_scene(seed=50 + degree, n=60, width=33, height=24, sh_degree=degree,
                            dtype=torch.float64, sigma_px=(0.5, 8.0))
    rgb = torch.from_numpy(_direct_colors(sc.colors.numpy(), degree, sc.means.numpy(), sc.viewmat.numpy()))
    out_sh = sc.render(backend_name)
    t = sc.tensors()
    t["colors"] = rgb
    out_rgb = sc.render(backend_name, t, sh_degree=None)
    assert out_sh.backend == out_rgb.backend == backend_name
    assert float(out_sh.alpha.max()) > 0.5
    torch.testing.assert_close(out_sh.image, out_rgb.image, rtol=0, atol=1e-10)
    torch.testing.assert_close(out_sh.alpha, out_rgb.alpha, rtol=0, atol=0)
    torch.testing.assert_close(out_sh.depth, out_rgb.depth, rtol=0, atol=0)

    # chain rule: dL/dsh[i,k,c] = Y_k(d_i) · dL/drgb[i,c] where the colour is not clamped, else 0
    sh_leaf = sc.colors.clone().requires_grad_(True)
    rgb_leaf = rgb.clone().requires_grad_(True)
    w = torch.randn(sc.height, sc.width, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t["colors"] = sh_leaf
    (sc.render(backend_name, t).image * w).sum().backward()
    t["colors"] = rgb_leaf
    (sc.render(backend_name, t, sh_degree=None).image * w).sum().backward()
    campos = -sc.viewmat[:3, :3].T @ sc.viewmat[:3, 3]
    d = (sc.means - campos).numpy()
    Y = torch.from_numpy(direct_basis(d / np.linalg.norm(d, axis=-1, keepdims=True), degree))
    expected = Y[:, :, None] * (rgb_leaf.grad * (rgb > 0))[:, None, :]
    assert float(rgb_leaf.grad.abs().max()) > 0
    torch.testing.assert_close(sh_leaf.grad, expected, rtol=1e-9, atol=1e-12)
