"""Kernel-focused checks of the C++ ``cpu`` compositing backend against the ``dense`` oracle."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from ua3dtalk.render import cpu_backend, project_gaussians, rasterize
from ua3dtalk.render.cpu_backend import composite_cpu, cpu_backend_available, cpu_backend_status
from ua3dtalk.render.dense import composite_dense

pytestmark = pytest.mark.skipif(not cpu_backend_available(), reason="cpu kernel could not be built")


def make_scene(n, width, height, dtype=torch.float32, seed=0, scale=(0.01, 0.06), opacity_shift=0.0, sh=False):
    """Gaussians on a small ellipsoid 0.5 in front of an OpenCV camera (a head-like blob)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    means = d * torch.tensor([0.10, 0.13, 0.11], dtype=torch.float64)
    means = means + 0.01 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    means[:, 2] += 0.5
    lo, hi = math.log(scale[0]), math.log(scale[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opacities = torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64) + opacity_shift)
    colors = torch.randn(n, 16, 3, generator=g, dtype=torch.float64) * 0.3 if sh else torch.rand(
        n, 3, generator=g, dtype=torch.float64)
    f = 1.2 * width
    K = torch.tensor([[f, 0.0, width / 2 + 0.3], [0.0, f, height / 2 - 0.2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    background = torch.rand(3, generator=g, dtype=torch.float64)
    cast = {k: v.to(dtype) for k, v in dict(means=means, quats=quats, scales=scales, opacities=opacities,
                                             colors=colors, viewmat=viewmat, K=K, background=background).items()}
    return dict(**cast, width=width, height=height)


DIFF = ("means", "quats", "scales", "opacities", "colors", "background")


def render_with_grads(scene, backend, loss_seed=1):
    args = {k: (v.detach().clone().requires_grad_(True) if k in DIFF else v) for k, v in scene.items()}
    out = rasterize(**args, backend=backend)
    g = torch.Generator().manual_seed(loss_seed)
    wi = torch.rand(out.image.shape, generator=g, dtype=torch.float64).to(out.image.dtype)
    wa = torch.rand(out.alpha.shape, generator=g, dtype=torch.float64).to(out.image.dtype)
    loss = (out.image * wi).sum() + (out.alpha * wa).sum() + 0.5 * out.depth.sum()
    loss.backward()
    return out, {k: args[k].grad for k in DIFF}


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize(
    "n,width,height,seed,sh",
    [(150, 40, 33, 0, False), (400, 64, 48, 1, False), (300, 37, 50, 2, True), (60, 17, 16, 3, False)],
)
def test_rasterize_cpu_matches_dense(n, width, height, seed, sh):
    scene = make_scene(n, width, height, seed=seed, sh=sh)
    ref, gref = render_with_grads(scene, "dense")
    out, gout = render_with_grads(scene, "cpu")
    assert out.backend == "cpu"
    assert float(ref.alpha.detach().max()) > 0.5  # the scene really covers pixels
    for name in ("image", "alpha", "depth"):
        a, b = getattr(out, name), getattr(ref, name)
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4, name
    for name in DIFF:
        assert gout[name].shape == gref[name].shape
        assert rel_err(gout[name], gref[name]) <= 1e-3, name


def projected(scene):
    s = scene
    p = project_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], s["viewmat"], s["K"], s["width"],
                          s["height"])
    return p


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_composite_saturated_float64_matches_dense(channels):
    """Opaque scene: exercises early termination (T < 1e-4) and the 0.999 clamp, float64, any C."""
    scene = make_scene(250, 30, 26, dtype=torch.float64, seed=5, opacity_shift=4.0, scale=(0.02, 0.08))
    p = projected(scene)
    g = torch.Generator().manual_seed(7)
    feats = torch.rand(250, channels, generator=g, dtype=torch.float64)
    inputs = [p.means2d.detach(), p.conics.detach(), feats, scene["opacities"]]
    results = []
    for fn in (composite_dense, composite_cpu):
        xs = [x.clone().requires_grad_(True) for x in inputs]
        out, T = fn(*xs, p.depths.detach(), p.extents, p.visible, 30, 26)
        w = torch.rand(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        ((out * w).sum() + (T * T).sum()).backward()
        results.append((out.detach(), T.detach(), [x.grad for x in xs]))
    (o0, t0, g0), (o1, t1, g1) = results
    assert float(t0.min()) < 1e-3  # termination really happens
    assert bool((scene["opacities"] * 1.0 > 0.999).any())
    torch.testing.assert_close(o1, o0, rtol=0, atol=1e-10)
    torch.testing.assert_close(t1, t0, rtol=0, atol=1e-10)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_gradcheck_float64_tiny():
    scene = make_scene(6, 10, 12, dtype=torch.float64, seed=11, scale=(0.01, 0.03), opacity_shift=1.0)
    p = projected(scene)
    assert int(p.visible.sum()) >= 3
    g = torch.Generator().manual_seed(2)
    feats = torch.rand(6, 4, generator=g, dtype=torch.float64)
    ins = [x.detach().clone().requires_grad_(True) for x in (p.means2d, p.conics, feats, scene["opacities"])]

    def fn(m, c, f, o):
        return composite_cpu(m, c, f, o, p.depths.detach(), p.extents, p.visible, 10, 12)

    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_results_independent_of_thread_count():
    scene = make_scene(3000, 80, 72, seed=4, scale=(0.005, 0.03))
    prev = torch.get_num_threads()
    try:
        runs = []
        for nt in (1, 2, 1, 3):
            torch.set_num_threads(nt)
            out, grads = render_with_grads(scene, "cpu")
            runs.append((out.image.detach(), out.alpha.detach(), out.depth.detach(), out.means2d.grad, grads))
    finally:
        torch.set_num_threads(prev)
    ref = runs[0]
    for run in runs[1:]:
        for a, b in zip(run[:4], ref[:4]):
            assert torch.equal(a, b)
        for k in DIFF:
            assert torch.equal(run[4][k], ref[4][k]), k


def test_large_scene_thread_independent():
    """Big enough (> 262k tile-Gaussian pairs) for the parallel binning path."""
    scene = make_scene(12000, 256, 224, seed=8, scale=(0.01, 0.05))
    p = projected(scene)
    feats = torch.cat([torch.rand(12000, 3, generator=torch.Generator().manual_seed(1)), p.depths.detach()[:, None]],
                      -1)
    ins = [p.means2d.detach(), p.conics.detach(), feats, scene["opacities"]]
    ext = cpu_backend.load_extension()
    n_pairs = ext.forward(*(x.contiguous() for x in ins), p.depths.detach().contiguous(), p.extents, p.visible,
                          256, 224)[4].numel()
    assert n_pairs > 8 * 32768
    prev = torch.get_num_threads()
    runs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            xs = [x.clone().requires_grad_(True) for x in ins]
            out, T = composite_cpu(*xs, p.depths.detach(), p.extents, p.visible, 256, 224)
            (out.sum() + (T * T).sum()).backward()
            runs.append([out.detach(), T.detach()] + [x.grad for x in xs])
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_empty_scene_and_all_culled():
    for n in (0, 5):
        means2d = torch.rand(n, 2, requires_grad=True)
        conics = torch.ones(n, 3).mul(torch.tensor([1.0, 0.0, 1.0])).requires_grad_(True)
        feats = torch.rand(n, 4, requires_grad=True)
        op = torch.rand(n, requires_grad=True)
        depth = torch.rand(n)
        ext = torch.full((n, 2), 3.0)
        vis = torch.zeros(n, dtype=torch.bool)
        out, T = composite_cpu(means2d, conics, feats, op, depth, ext, vis, 9, 7)
        assert out.shape == (7, 9, 4) and T.shape == (7, 9)
        assert torch.equal(out, torch.zeros(7, 9, 4)) and torch.equal(T, torch.ones(7, 9))
        (out.sum() + T.sum()).backward()
        for x in (means2d, conics, feats, op):
            assert x.grad is not None and x.grad.shape == x.shape and not x.grad.any()
    # rasterize with every Gaussian behind the camera
    scene = make_scene(20, 16, 16)
    scene["means"] = scene["means"] * torch.tensor([1.0, 1.0, -1.0])
    out, grads = render_with_grads(scene, "cpu")
    assert torch.equal(out.alpha, torch.zeros(16, 16, 1))
    assert torch.allclose(out.image, scene["background"].expand(16, 16, 3))
    assert not grads["means"].any()


def test_offscreen_and_partial_tiles_match_dense():
    """Gaussians straddling the image border and tiles of a 33x18 image (partial tiles)."""
    g = torch.Generator().manual_seed(9)
    n = 40
    means2d = torch.rand(n, 2, generator=g) * torch.tensor([45.0, 30.0]) - torch.tensor([6.0, 6.0])
    a = torch.rand(n, generator=g) * 0.3 + 0.05
    c = torch.rand(n, generator=g) * 0.3 + 0.05
    b = (torch.rand(n, generator=g) - 0.5) * 0.8 * torch.sqrt(a * c)
    conics = torch.stack([a, b, c], -1)
    op = torch.rand(n, generator=g) * 0.9 + 0.05
    det = a * c - b * b
    thr = 2 * torch.log(op * 255)
    ext = torch.stack([torch.sqrt(thr * c / det), torch.sqrt(thr * a / det)], -1) * 1.0001 + 1e-3
    feats = torch.rand(n, 3, generator=g)
    depth = torch.rand(n, generator=g)
    vis = torch.ones(n, dtype=torch.bool)
    vis[::7] = False
    outs = []
    for fn in (composite_dense, composite_cpu):
        xs = [x.clone().requires_grad_(True) for x in (means2d, conics, feats, op)]
        out, T = fn(*xs, depth, ext, vis, 33, 18)
        ((out * torch.linspace(0.2, 1, 3)).sum() + T.sum()).backward()
        outs.append((out.detach(), T.detach(), [x.grad for x in xs]))
    (o0, t0, g0), (o1, t1, g1) = outs
    assert (o1 - o0).abs().max() <= 1e-5 and (t1 - t0).abs().max() <= 1e-5
    for x, y in zip(g1, g0):
        assert rel_err(x, y) <= 1e-4


def test_kernel_rejects_bad_inputs():
    ext = cpu_backend.load_extension()
    n = 4
    good = dict(means2d=torch.rand(n, 2), conics=torch.rand(n, 3), features=torch.rand(n, 3), opacities=torch.rand(n),
                depths=torch.rand(n), extents=torch.rand(n, 2), visible=torch.ones(n, dtype=torch.bool))
    ext.forward(**good, width=8, height=8)  # sanity
    bad_cases = [
        dict(conics=torch.rand(n, 3, dtype=torch.float64)),
        dict(conics=torch.rand(n + 1, 3)),
        dict(features=torch.rand(n, 0)),
        dict(features=torch.rand(3, n).t()),  # not contiguous
        dict(visible=torch.ones(n)),
        dict(means2d=torch.rand(n, 2).half()),
        dict(opacities=torch.rand(n, 1)),
    ]
    for bad in bad_cases:
        with pytest.raises(RuntimeError, match="composite_cpu"):
            ext.forward(**{**good, **bad}, width=8, height=8)
    for w, h in ((0, 8), (8, -1)):
        with pytest.raises(RuntimeError, match="width and height"):
            ext.forward(**good, width=w, height=h)


def test_status_and_build_failure_warns_once(monkeypatch):
    assert cpu_backend_status() == "built"
    import torch.utils.cpp_extension as cpp

    def boom(*args, **kwargs):
        raise RuntimeError("no compiler\nfound")

    monkeypatch.setattr(cpu_backend.KERNEL, "_ext", None)
    monkeypatch.setattr(cpu_backend.KERNEL, "_error", None)
    monkeypatch.setattr(cpp, "load", boom)
    assert cpu_backend_status() == "not built"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cpu_backend_available() is False
        assert cpu_backend_available() is False
    msgs = [w for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1
    text = str(msgs[0].message)
    assert "cpu" in text and "torch" in text and "\n" not in text
    assert cpu_backend_status().startswith("unavailable: ")
