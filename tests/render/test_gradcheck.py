"""float64 ``torch.autograd.gradcheck`` through :func:`rasterize` w.r.t. every tensor input.

The scenes are tiny (12×10 pixels, a few Gaussians) and built away from the discontinuities of the
compositing rule — every pixel–Gaussian alpha is far from 1/255 and below the 0.999 clamp, the final
transmittance stays far above 1e-4, depths are well separated, SH colours stay above the clamp at 0,
and the J clamp is inactive — which is asserted before the check, so that the check is meaningful.
"""
from __future__ import annotations

import pytest
import torch

from ua3dtalk.render import project_gaussians, rasterize
from ua3dtalk.render.projection import ALPHA_MAX, ALPHA_MIN, jacobian_limits
from ua3dtalk.render.sh import eval_sh_colors

W, H = 12, 10
NAMES = ("means", "quats", "scales", "opacities", "colors", "viewmat", "K", "background")


def tiny_scene(seed: int, n: int = 3, sh_degree: int | None = None, background: bool = True,
               behind: int = 0, sigma=(4.0, 6.0)):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def U(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=f64)

    fx, fy, cx, cy = 14.0 + float(U(-1, 1, ())), 13.0 + float(U(-1, 1, ())), 6.2, 4.9
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=f64)
    u, v = U(3.0, 9.0, n), U(2.5, 7.5, n)
    z = 2.0 + 0.6 * torch.arange(n, dtype=f64)[torch.randperm(n, generator=g)] + U(0.0, 0.1, n)
    if behind:
        z[:behind] = -1.5  # culled behind the camera: must get exact zero gradients
    p_cam = torch.stack([(u - cx) / fx * z.abs(), (v - cy) / fy * z.abs(), z], -1)
    sig = U(sigma[0], sigma[1], n)
    scales = (sig * z.abs() / fx)[:, None] * torch.exp(U(-0.25, 0.25, n, 3))
    quats = torch.randn(n, 4, generator=g, dtype=f64)
    opac = U(0.3, 0.7, n)
    if sh_degree is None:
        colors = U(0.05, 0.95, n, 3)
    else:
        colors = 0.08 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=f64)
        colors[:, 0] = U(-0.6, 0.6, n, 3)
    ang = U(-0.3, 0.3, 3)
    (cxr, cyr, czr), (sxr, syr, szr) = torch.cos(ang), torch.sin(ang)
    Rx = torch.tensor([[1, 0, 0], [0, cxr, -sxr], [0, sxr, cxr]], dtype=f64)
    Ry = torch.tensor([[cyr, 0, syr], [0, 1, 0], [-syr, 0, cyr]], dtype=f64)
    Rz = torch.tensor([[czr, -szr, 0], [szr, czr, 0], [0, 0, 1]], dtype=f64)
    R = Rz @ Ry @ Rx
    t = U(-1.0, 1.0, 3)
    viewmat = torch.eye(4, dtype=f64)
    viewmat[:3, :3], viewmat[:3, 3] = R, t
    means = (p_cam - t) @ R
    d = dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, viewmat=viewmat, K=K)
    if background:
        d["background"] = U(0.0, 1.0, 3)
    return d, sh_degree


def assert_away_from_discontinuities(s: dict, sh_degree):
    """Every quantity that a discontinuity of the forward depends on has a comfortable margin."""
    with torch.no_grad():
        p = project_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], s["viewmat"], s["K"], W, H)
        z = p.depths
        in_front = z > 0.01
        assert torch.equal(p.visible, in_front), "every Gaussian in front must be visible"
        # J clamp inactive
        pc = s["means"] @ s["viewmat"][:3, :3].T + s["viewmat"][:3, 3]
        x_lo, x_hi, y_lo, y_hi = (float(v) for v in jacobian_limits(s["K"], W, H))
        xz, yz = pc[in_front, 0] / z[in_front], pc[in_front, 1] / z[in_front]
        assert bool(((xz > 0.9 * x_lo) & (xz < 0.9 * x_hi)).all())
        assert bool(((yz > 0.9 * y_lo) & (yz < 0.9 * y_hi)).all())
        # depths well separated (the order cannot flip)
        zs = torch.sort(z[in_front]).values
        assert bool((zs[1:] - zs[:-1] > 0.05).all())
        # raw alphas of every pixel-Gaussian pair far from 1/255 and below the 0.999 clamp
        ys, xs = torch.meshgrid(torch.arange(H, dtype=z.dtype) + 0.5, torch.arange(W, dtype=z.dtype) + 0.5,
                                indexing="ij")
        dx = xs.reshape(-1, 1) - p.means2d[in_front, 0]
        dy = ys.reshape(-1, 1) - p.means2d[in_front, 1]
        a, b, c = p.conics[in_front].unbind(-1)
        raw = s["opacities"][in_front] * torch.exp(-0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy)
        assert float((raw - ALPHA_MIN).abs().min()) > 1e-3
        assert float(raw.max()) < ALPHA_MAX - 1e-3
        # transmittance stays far above 1e-4
        T = torch.prod(1 - torch.where(raw >= ALPHA_MIN, raw, torch.zeros_like(raw)), dim=-1)
        assert float(T.min()) > 1e-2
        if sh_degree is not None:
            rgb = (eval_sh_colors(s["colors"], sh_degree, s["means"], s["viewmat"]))
            assert float(rgb.min()) > 0.05, "SH colours must stay away from the clamp at 0"


def _fn(names, fixed, backend, sh_degree):
    def f(*tensors):
        d = dict(fixed)
        d.update(zip(names, tensors, strict=True))
        out = rasterize(d["means"], d["quats"], d["scales"], d["opacities"], d["colors"], d["viewmat"],
                        d["K"], W, H, background=d.get("background"), sh_degree=sh_degree, backend=backend)
        assert out.backend == backend
        return out.image, out.alpha, out.depth

    return f


def _projected(f, k: int = 6):
    """f's outputs reduced to k fixed random linear combinations (fewer backward passes)."""
    proj = torch.randn(k, H * W * 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def g(*tensors):
        img, alpha, depth = f(*tensors)
        return proj @ torch.cat([img.reshape(-1), alpha.reshape(-1), depth.reshape(-1)])

    return g


CASES = {
    "rgb_bg": dict(seed=0, n=3),
    "rgb_nobg_one_behind": dict(seed=1, n=4, background=False, behind=1),
    "sh1": dict(seed=2, n=2, sh_degree=1),
    "sh3": dict(seed=3, n=2, sh_degree=3, background=False),
}


# the torch backend is slow under gradcheck (per-chunk checkpointing), so it gets two of the cases
GRADCHECK_PARAMS = [(b, c) for b in ("dense", "cpu") for c in CASES] + [("torch", "rgb_nobg_one_behind"),
                                                                       ("torch", "sh3")]


@pytest.mark.parametrize("backend_name,case", GRADCHECK_PARAMS)
def test_gradcheck(backend_name, case, helpers):
    helpers.require_backend(backend_name)
    s, sh_degree = tiny_scene(**CASES[case])
    assert_away_from_discontinuities(s, sh_degree)
    names = [k for k in NAMES if k in s]
    inputs = tuple(s[k].clone().requires_grad_(True) for k in names)
    f = _fn(names, {}, backend_name, sh_degree)
    # sanity: the scene draws something non-trivial
    img, alpha, depth = f(*[t.detach() for t in inputs])
    assert float(alpha.min()) > 0.01 and float(alpha.max()) < 0.999
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("backend_name", ["dense", "cpu"])
def test_gradcheck_every_input_entry(backend_name, helpers):
    """Slow-mode gradcheck: every input entry separately (outputs reduced to 6 random projections of
    image, alpha and depth, which keeps the number of backward passes small)."""
    helpers.require_backend(backend_name)
    s, sh_degree = tiny_scene(seed=4, n=2, sh_degree=1)
    assert_away_from_discontinuities(s, sh_degree)
    names = [k for k in NAMES if k in s]
    inputs = tuple(s[k].clone().requires_grad_(True) for k in names)
    g = _projected(_fn(names, {}, backend_name, sh_degree))
    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_detects_a_wrong_gradient():
    """The check above can fail: a function whose backward is off by 1% does not pass."""

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.01 * g

    s, sh_degree = tiny_scene(seed=0, n=3)
    inputs = (s["opacities"].clone().requires_grad_(True),)
    fixed = {k: v for k, v in s.items() if k != "opacities"}

    right = _projected(_fn(("opacities",), fixed, "dense", sh_degree))

    def wrong(o):
        return right(Wrong.apply(o))

    assert not torch.autograd.gradcheck(wrong, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, raise_exception=False,
                                        fast_mode=True)
    assert torch.autograd.gradcheck(right, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
