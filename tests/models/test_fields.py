"""PlaneField / PositionField: shapes, sampling convention, clamping, initialisation, TV, learning."""
from __future__ import annotations

import pytest
import torch

from ua3dtalk.models.fields import PlaneField, PositionField


@pytest.fixture(autouse=True)
def _single_thread():
    """These tests run tiny tensors: one intra-op thread is fastest (and immune to oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def bilinear_ref(plane: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """Reference bilinear sample of ``plane [C, H, W]`` at normalised (u, v) ∈ [-1,1]² (align_corners)."""
    c, h, w = plane.shape
    x, y = (u + 1) / 2 * (w - 1), (v + 1) / 2 * (h - 1)
    x0, y0 = min(int(x), w - 2), min(int(y), h - 2)
    fx, fy = x - x0, y - y0
    return ((1 - fx) * (1 - fy) * plane[:, y0, x0] + fx * (1 - fy) * plane[:, y0, x0 + 1]
            + (1 - fx) * fy * plane[:, y0 + 1, x0] + fx * fy * plane[:, y0 + 1, x0 + 1])


def test_position_field_defaults_and_shapes():
    f = PositionField()
    assert f.out_dim == 64 and f.scales == (1, 2, 4, 8) and f.channels == 16
    assert [tuple(g.shape) for g in f.grids] == [(3, 16, 64 * s, 64 * s) for s in (1, 2, 4, 8)]
    xyz = torch.rand(100, 3) * 2 - 1
    h = f(xyz)
    assert h.shape == (100, 64)
    ps = f.per_scale(xyz)
    assert len(ps) == 4 and all(p.shape == (100, 16) for p in ps)
    assert torch.equal(torch.cat(ps, -1), h)
    # arbitrary leading dims
    assert f(xyz.reshape(4, 25, 3)).shape == (4, 25, 64)
    with pytest.raises(ValueError):
        f(torch.rand(10, 2))


def test_init_product_is_not_small():
    f = PlaneField((-1, -1, -1), (1, 1, 1), resolution=16, scales=(1, 2), channels=8, init_std=0.1)
    with torch.no_grad():
        h = f(torch.rand(500, 3) * 2 - 1)
    assert 0.7 < float(h.mean()) < 1.3
    assert float(h.abs().min()) > 0.3
    assert float(h.std()) > 0.01  # spatially varying


def test_sampling_matches_reference_bilinear_and_axes():
    torch.manual_seed(0)
    lo, hi = torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([2.0, 3.0, 2.0])
    f = PlaneField(lo.tolist(), hi.tolist(), resolution=5, scales=(1,), channels=3).double()
    with torch.no_grad():
        f.grids[0].normal_()
    pts = lo + torch.rand(20, 3, dtype=torch.float64) * (hi - lo)
    got = f(pts)
    n = (pts - lo) / (hi - lo) * 2 - 1
    g = f.grids[0]
    for i in range(pts.shape[0]):
        x, y, z = (float(c) for c in n[i])
        ref = bilinear_ref(g[0], x, y) * bilinear_ref(g[1], x, z) * bilinear_ref(g[2], y, z)
        torch.testing.assert_close(got[i], ref, rtol=1e-10, atol=1e-10)
    # the bounds' corners sit exactly on the outermost grid nodes
    corner = f(lo.double()[None])[0]
    torch.testing.assert_close(corner, g[0, :, 0, 0] * g[1, :, 0, 0] * g[2, :, 0, 0])


def test_points_outside_are_clamped():
    f = PlaneField((-1, -1, -1), (1, 1, 1), resolution=8, scales=(1, 2), channels=4)
    inside = torch.tensor([[0.3, -1.0, 1.0], [1.0, 1.0, -0.2]])
    outside = torch.tensor([[0.3, -5.0, 7.0], [3.0, 1.5, -0.2]])
    torch.testing.assert_close(f(outside), f(inside))
    assert torch.isfinite(f(torch.full((1, 3), 1e6))).all()


def test_bounds_are_buffers_and_validated():
    f = PlaneField((0, 0, 0), (1, 2, 3), resolution=4, scales=(1,), channels=2)
    sd = f.state_dict()
    assert torch.equal(sd["bounds_max"], torch.tensor([1.0, 2.0, 3.0]))
    g = PlaneField(resolution=4, scales=(1,), channels=2)
    g.load_state_dict(sd)
    assert torch.equal(g.bounds_max, f.bounds_max)
    with pytest.raises(ValueError):
        f.set_bounds((0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError):
        PlaneField(planes=("xy", "ab"))


def test_tv_loss():
    f = PlaneField(resolution=8, scales=(1, 2), channels=2, init_std=0.0)
    assert float(f.tv_loss().detach()) == 0.0
    f2 = PlaneField(resolution=8, scales=(1, 2), channels=2, init_std=0.1)
    tv = f2.tv_loss()
    assert tv.dim() == 0 and float(tv.detach()) > 0
    tv.backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in f2.grids)


def test_gradients_reach_planes_and_points():
    f = PlaneField(resolution=8, scales=(1, 2), channels=4)
    xyz = (torch.rand(30, 3) * 1.8 - 0.9).requires_grad_(True)
    f(xyz).square().sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in f.grids)
    assert xyz.grad is not None and xyz.grad.abs().sum() > 0


def test_plane_field_learns_a_function():
    """A couple of hundred Adam steps fit a smooth function of xyz (the held-out loss drops by > 100×;
    typically ~10⁴×)."""
    torch.manual_seed(0)

    def target(p):
        return torch.sin(3 * p[:, :1]) * torch.cos(2 * p[:, 1:2]) + p[:, 2:3] ** 2 - 0.3

    f = PlaneField(resolution=16, scales=(1, 2), channels=8)
    head = torch.nn.Linear(f.out_dim, 1)
    opt = torch.optim.Adam(list(f.parameters()) + list(head.parameters()), lr=2e-2)
    test = torch.rand(2000, 3) * 2 - 1

    def loss_on(p):
        return (head(f(p)) - target(p)).square().mean()

    with torch.no_grad():
        first = float(loss_on(test))
    for _ in range(200):
        p = torch.rand(512, 3) * 2 - 1
        opt.zero_grad()
        loss_on(p).backward()
        opt.step()
    with torch.no_grad():
        last = float(loss_on(test))
    assert last < first / 100, (first, last)


def test_co_sample_gives_the_separate_calls_values_and_gradients_with_one_sampling(monkeypatch):
    """``co_sample``: the first gradient-enabled call also samples the extra points; a call on them (same
    storage, e.g. ``.detach()``) reuses those samples. Values and plane gradients equal separate calls,
    with half the ``grid_sample`` calls (one scatter of the gradient into the planes)."""
    import ua3dtalk.models.fields as fields

    torch.manual_seed(0)
    f = PlaneField(resolution=8, scales=(1, 2), channels=4).double()
    xyz = torch.rand(50, 3, dtype=torch.float64) * 2 - 1
    anchors = torch.rand(7, 3, dtype=torch.float64) * 2 - 1
    wa, wb = torch.randn(50, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    calls = []
    real = fields.sample_planes
    monkeypatch.setattr(fields, "sample_planes", lambda g, grid, *a: calls.append(grid.shape[2]) or real(g, grid, *a))

    a, b = f(xyz), f(anchors)
    ref = torch.autograd.grad((a * wa).sum() + (b * wb).sum(), list(f.grids))
    assert len(calls) == 4
    calls.clear()
    with f.co_sample(anchors):
        a2, b2 = f(xyz), f(anchors.detach())
    got = torch.autograd.grad((a2 * wa).sum() + (b2 * wb).sum(), list(f.grids))
    assert calls == [57, 57]  # one sampling per scale, of the 50 points and the 7 anchors together
    torch.testing.assert_close(a2, a, rtol=0, atol=0)
    torch.testing.assert_close(b2, b, rtol=0, atol=0)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    # outside the block, and after the anchors changed in place, the points are sampled afresh
    calls.clear()
    with f.co_sample(anchors):
        f(xyz)
        anchors.mul_(0.5)
        torch.testing.assert_close(f(anchors), real_features(f, anchors))
    assert f._co is None
    # a first call without autograd does not co-sample (its samples could not carry a gradient)
    with f.co_sample(anchors):
        with torch.no_grad():
            f(xyz)
        f(xyz)
        assert f._co["feats"] is not None


def real_features(f, pts):
    return torch.cat(f._per_scale(pts), dim=-1)


def test_kept_gradient_buffers_are_overwritten_with_the_same_gradient():
    """``keep_grad_buffers``: the next backward writes the planes' gradient into the kept tensor (zeroed first:
    the old values do not leak in) and gives it as the gradient; a plane that gets no gradient keeps
    ``grad = None``; a gradient that is a view is not kept."""
    torch.manual_seed(0)
    f = PlaneField(resolution=8, scales=(1, 2), channels=3)
    ref = PlaneField(resolution=8, scales=(1, 2), channels=3)
    ref.load_state_dict(f.state_dict())
    x1, x2 = torch.rand(50, 3) * 2 - 1, torch.rand(40, 3) * 2 - 1
    f(x1).pow(2).sum().backward()
    old_ptrs = [g.grad.data_ptr() for g in f.grids]
    assert f.keep_grad_buffers() == 2
    for g in f.grids:
        g.grad = None
    f(x2).sin().sum().backward()
    ref(x2).sin().sum().backward()
    for g, r, p in zip(f.grids, ref.grids, old_ptrs):
        assert g.grad.data_ptr() == p  # the kept buffer
        torch.testing.assert_close(g.grad, r.grad, rtol=0, atol=0)
    # nothing sampled this time: no gradient, and the pool is emptied by the next keep
    assert f.keep_grad_buffers() == 2
    for g in f.grids:
        g.grad = None
    (f.grids[0].sum() * 0).backward()  # only the coarsest plane gets a (direct) gradient
    assert f.grids[1].grad is None
    big = torch.zeros(2 * f.grids[0].numel())
    f.grids[0].grad = big[: f.grids[0].numel()].view_as(f.grids[0])  # a view (as a DDP bucket's)
    assert f.keep_grad_buffers() == 0
