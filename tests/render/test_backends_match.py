"""The ``torch`` and ``cpu`` compositing backends reproduce the ``dense`` oracle (DESIGN §7).

Forward outputs (image, alpha, depth) within 1e-4 in float32, radii equal, and the gradients of a
random weighted loss of all outputs w.r.t. every input (and ``means2d.grad``) within 1e-3 of the
reference's max-abs, on random scenes covering the corner cases of tile binning and compositing.
"""
from __future__ import annotations

import math

import pytest
import torch


def _tile_border_uv(width, height):
    """Centres exactly on tile borders (multiples of 16), image borders and just outside the image."""
    xs = [0.0, 16.0, 32.0, 48.0, 64.0, float(width), -2.5, width + 2.5, 15.5, 16.5]
    ys = [0.0, 16.0, 32.0, float(height), -2.5, height + 2.5]
    return torch.tensor([[x, y] for x in xs for y in ys], dtype=torch.float64)


# name -> make_scene kwargs; _check_case_property asserts what each case is meant to exercise
CASES = {
    "mixed_rgb_bg_70x45": dict(seed=0, n=300, width=70, height=45),
    "mixed_rgb_nobg_33x64": dict(seed=1, n=200, width=33, height=64, background=False),
    "mixed_sh3_bg_70x45": dict(seed=2, n=150, width=70, height=45, sh_degree=3),
    "mixed_sh1_extra_coeffs_33x64": dict(seed=3, n=80, width=33, height=64, sh_degree=1, sh_coeffs=16,
                                         background=False),
    "sparse_small": dict(seed=4, n=40, width=70, height=45, sigma_px=(0.05, 6.0)),
    "subpixel": dict(seed=5, n=200, width=33, height=64, sigma_px=(0.02, 0.7), large_frac=0.0),
    "huge": dict(seed=6, n=8, width=70, height=45, sigma_px=(60.0, 400.0), large_frac=0.0,
                 opacity_range=(0.05, 0.4), clamp_frac=0.2),
    "clamped_opacity": dict(seed=7, n=60, width=70, height=45, sigma_px=(0.5, 12.0), clamp_frac=0.7),
    "empty": dict(seed=8, n=0, width=33, height=64),
    "all_behind": dict(seed=9, n=30, width=70, height=45, behind=1.0),
    "half_behind_sh2": dict(seed=10, n=100, width=70, height=45, behind=0.5, sh_degree=2),
    "tile_and_image_borders": dict(seed=11, n=60, width=70, height=45, sigma_px=(0.3, 5.0), large_frac=0.0,
                                   opacity_range=(0.1, 0.9), uv=_tile_border_uv(70, 45)),
    "mixed_float64": dict(seed=12, n=120, width=33, height=64, sh_degree=2, dtype=torch.float64),
}


def _check_case_property(name, sc, ref):
    """Make sure each scene really exercises what its name promises (else the test proves little)."""
    radii = ref.radii
    alpha = ref.alpha.detach()
    vis = radii > 0
    if name == "empty":
        assert sc.n == 0
    elif name == "all_behind":
        assert not bool(vis.any())
        assert torch.equal(ref.image, sc.background.expand_as(ref.image))
        assert float(alpha.abs().max()) == 0.0
    else:
        assert int(vis.sum()) >= min(5, sc.n), "too few visible Gaussians"
        assert float(alpha.max()) > 0.3
    if name == "subpixel":
        assert int(((radii > 0) & (radii <= 2)).sum()) >= 20
    if name == "huge":
        assert int((radii > max(sc.width, sc.height)).sum()) >= 5
    if name == "clamped_opacity":
        assert int((vis & (sc.opacities > 0.999)).sum()) >= 10
        assert float(alpha.max()) > 0.999
    if name == "half_behind_sh2":
        z = sc.meta["p_cam"][:, 2]
        assert int(((z < 0) & ~vis).sum()) >= 30 and int(((z > 1) & vis).sum()) >= 10
    if name in ("mixed_rgb_bg_70x45", "mixed_sh3_bg_70x45", "clamped_opacity"):
        # some pixels stop compositing on the T < 1e-4 rule, some are far from saturated
        assert float(alpha.max()) > 1 - 2e-4
    if name in ("sparse_small", "tile_and_image_borders", "subpixel", "mixed_sh1_extra_coeffs_33x64",
                "half_behind_sh2"):
        assert float(alpha.min()) < 0.5
    if name == "tile_and_image_borders":
        assert int(vis.sum()) >= 30


_REFERENCE: dict = {}


def _reference(H, name):
    if name not in _REFERENCE:
        sc = H.make_scene(**CASES[name])
        out, grads = H.render_with_grads(sc, "dense")
        _REFERENCE[name] = (sc, out, grads)
    return _REFERENCE[name]


@pytest.mark.parametrize("name", list(CASES))
def test_backend_matches_dense(name, backend, helpers):
    H = helpers
    sc, ref, ref_grads = _reference(H, name)
    _check_case_property(name, sc, ref)
    out, grads = H.render_with_grads(sc, backend)
    assert out.backend == backend
    f64 = sc.means.dtype == torch.float64
    atol = 1e-9 if f64 else 1e-4
    rtol_g, floor_g = (1e-6, 1e-9) if f64 else (1e-3, 1e-5)

    for key in ("image", "alpha", "depth"):
        a, e = getattr(out, key), getattr(ref, key)
        assert a.shape == e.shape == (sc.height, sc.width, 3 if key == "image" else 1)
        assert a.dtype == sc.means.dtype
        err = float((a - e).detach().abs().max())
        assert err <= atol, f"{key}: max abs error {err:.3e} vs dense"
    assert out.radii.dtype == torch.int32
    assert torch.equal(out.radii, ref.radii)
    assert torch.equal(out.means2d.detach(), ref.means2d.detach())

    for k in H.GRAD_NAMES:
        if k == "background" and sc.background is None:
            continue
        H.assert_rel_close(grads[k], ref_grads[k], rtol_g, floor_g, f"d loss / d {k}")
    if sc.n == 0:
        assert out.means2d.grad is None or out.means2d.grad.numel() == 0
    else:
        H.assert_rel_close(out.means2d.grad, ref.means2d.grad, rtol_g, floor_g, "means2d.grad")


def test_dense_reference_gradients_are_nontrivial(helpers):
    """Guards the comparisons above: the reference gradients are finite, non-zero where they should be,
    and zero (not None, not NaN) when nothing is visible."""
    H = helpers
    sc, ref, g = _reference(H, "mixed_rgb_bg_70x45")
    for k in H.GRAD_NAMES:
        assert torch.isfinite(g[k]).all() and float(g[k].abs().max()) > 0, k
    assert float(ref.means2d.grad.abs().max()) > 0
    sc, ref, g = _reference(H, "all_behind")
    for k in H.GRAD_NAMES:
        assert g[k] is not None and bool(torch.isfinite(g[k]).all()), k
        if k not in ("background", "means", "viewmat"):
            assert float(g[k].abs().max()) == 0.0, k
    assert ref.means2d.grad is not None and float(ref.means2d.grad.abs().max()) == 0.0
    # d(image)/d(background) = T = 1 everywhere: the gradient is the sum of the image weights
    w = H.loss_weights(sc.height, sc.width, sc.means.dtype)
    torch.testing.assert_close(g["background"], w["image"].sum((0, 1)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend_name", ["torch", "cpu"])
def test_backends_match_without_grad(backend_name, helpers):
    """Forward under ``torch.no_grad()`` (no autograd bookkeeping path) equals the dense oracle."""
    helpers.require_backend(backend_name)
    sc = helpers.make_scene(seed=21, n=120, width=45, height=70, sh_degree=1)
    with torch.no_grad():
        ref = sc.render("dense")
        out = sc.render(backend_name)
    assert out.backend == backend_name
    for key in ("image", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, key), getattr(ref, key), rtol=0, atol=1e-4)
    assert torch.equal(out.radii, ref.radii)


def test_auto_backend_on_cpu_uses_the_kernel(helpers):
    helpers.require_backend("cpu")
    sc = helpers.make_scene(seed=22, n=10, width=20, height=12)
    out = sc.render("auto")
    assert out.backend == "cpu"
    ref = sc.render("dense")
    torch.testing.assert_close(out.image, ref.image, rtol=0, atol=1e-4)


def test_larger_than_tile_images_many_tiles(backend, helpers):
    """A 130×97 image (9×7 tiles, partial last row/column) with a few hundred Gaussians."""
    H = helpers
    sc = H.make_scene(seed=23, n=250, width=130, height=97, sigma_px=(0.1, 10.0), opacity_range=(0.05, 0.8))
    ref, rg = H.render_with_grads(sc, "dense", grad_wrt=("means", "opacities", "colors"))
    out, g = H.render_with_grads(sc, backend, grad_wrt=("means", "opacities", "colors"))
    for key in ("image", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, key), getattr(ref, key), rtol=0, atol=1e-4)
    for k in rg:
        H.assert_rel_close(g[k], rg[k], 1e-3, 1e-5, k)
    H.assert_rel_close(out.means2d.grad, ref.means2d.grad, 1e-3, 1e-5, "means2d.grad")
    assert math.isfinite(float(out.image.detach().sum()))
