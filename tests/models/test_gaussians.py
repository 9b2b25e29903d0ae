"""GaussianModel and DensityControl: activations, density control keeps the optimizer consistent,
clone/split where gradients are large, prune transparent Gaussians, state dicts of another size."""
import torch

from ua3dtalk.models.gaussians import DensityControl, GaussianModel, make_optimizer
from ua3dtalk.render import RenderOutput


def _fake_out(model, grad_rows, g=1e-2):
    n = len(model)
    means2d = torch.zeros(n, 2, requires_grad=True)
    means2d.grad = torch.zeros(n, 2)
    means2d.grad[grad_rows] = g
    return RenderOutput(image=None, alpha=None, depth=None, radii=torch.ones(n, dtype=torch.int32), means2d=means2d)


def _train_step(model, opt):
    loss = (model.means**2).sum() + model.opacities.sum() + model.sh.sum() + model.log_scales.sum() + model.quats.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_activations_and_init():
    m = GaussianModel(num_points=100, init_opacity=0.1, sh_degree=2)
    assert m.sh.shape == (100, 9, 3)
    assert torch.allclose(m.opacities, torch.full((100,), 0.1), atol=1e-6)
    assert (m.scales > 0).all()
    lo, hi = m.bounds
    assert ((m.means >= lo) & (m.means <= hi)).all()
    m.set_active_sh_degree(5)
    assert m.active_sh_degree == 2 and m.colors().shape == (100, 9, 3)


def test_clone_split_prune_keep_optimizer_consistent():
    torch.manual_seed(0)
    m = GaussianModel(num_points=50, init_opacity=0.5)
    opt = make_optimizer(m, {"means": 1e-3})
    _train_step(m, opt)
    with torch.no_grad():  # make rows 0-4 large (split) and 5-9 small (clone)
        m.log_scales[:5] = 0.0
        m.log_scales[5:10] = -10.0
        m.opacity_logits[40:] = -20.0  # transparent → pruned
    dc = DensityControl(start=0, interval=1, reset_interval=0, grad_threshold=1e-3)
    out = _fake_out(m, list(range(10)))
    info = dc.after_backward(m, opt, out, step=1, width=100, height=100)
    assert info["cloned"] == 5 and info["split"] == 5 and info["pruned"] == 10
    assert len(m) == 50 + 5 + 5 - 10
    # the optimizer holds exactly the model's current tensors, with moments of matching shape
    names = {g["name"]: g["params"][0] for g in opt.param_groups}
    for k, p in m.parameters_by_name().items():
        assert names[k] is p
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape
    _train_step(m, opt)  # and training continues
    assert torch.isfinite(m.means).all()


def test_split_children_are_smaller_and_near_parent():
    torch.manual_seed(1)
    m = GaussianModel(num_points=1, init_opacity=0.5, points=torch.zeros(1, 3))
    with torch.no_grad():
        m.log_scales[:] = 0.0
    opt = make_optimizer(m, {})
    dc = DensityControl(start=0, interval=1, reset_interval=0, grad_threshold=1e-3, percent_dense=0.0)
    dc.after_backward(m, opt, _fake_out(m, [0]), step=1, width=10, height=10)
    assert len(m) == 2
    assert torch.allclose(m.scales, torch.full((2, 3), 1 / 1.6))


def test_below_threshold_nothing_changes():
    m = GaussianModel(num_points=20, init_opacity=0.5)
    opt = make_optimizer(m, {})
    dc = DensityControl(start=0, interval=1, reset_interval=0, grad_threshold=1.0)
    info = dc.after_backward(m, opt, _fake_out(m, [0, 1], g=1e-6), step=1, width=10, height=10)
    assert info["cloned"] == 0 and info["split"] == 0 and len(m) == 20


def test_opacity_reset():
    m = GaussianModel(num_points=10, init_opacity=0.9)
    opt = make_optimizer(m, {})
    DensityControl().reset_opacity(m, opt)
    assert torch.allclose(m.opacities, torch.full((10,), 0.01), atol=1e-6)


def test_state_dict_of_other_size_loads():
    a = GaussianModel(num_points=30, seed=1)
    b = GaussianModel(num_points=10, seed=2)
    b.load_state_dict(a.state_dict())
    assert len(b) == 30 and torch.equal(a.means, b.means)


def test_fused_adam_is_used_and_matches_the_default_update():
    """make_optimizer uses the fused Adam on CPU; its steps equal torch's default implementation."""
    torch.manual_seed(3)
    a = GaussianModel(num_points=40, seed=3)
    b = GaussianModel(num_points=40, seed=3)
    oa = make_optimizer(a, {"means": 1e-2})
    assert oa.defaults["fused"] is True
    groups = [{"params": [p], "lr": 1e-2 if n == "means" else 1e-3, "name": n}
              for n, p in b.parameters_by_name().items()]
    ob = torch.optim.Adam(groups, lr=1e-3, eps=1e-15, foreach=False)
    for _ in range(5):
        _train_step(a, oa)
        _train_step(b, ob)
    for k in a.parameters_by_name():
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-5, atol=1e-6)


def test_density_statistics_state_round_trip_and_reducer():
    m = GaussianModel(num_points=12, init_opacity=0.5)
    dc = DensityControl(start=0, interval=1, reset_interval=0, grad_threshold=1e-3)
    assert dc.state_dict() == {}
    dc.accumulate(m, _fake_out(m, [0, 3]), 10, 10)
    st = dc.state_dict()
    assert set(st) == {"grad_accum", "count", "max_radii"} and st["count"].tolist() == [1.0] * 12
    assert st["grad_accum"][0] > 0 and st["grad_accum"][1] == 0
    other = DensityControl()
    other.load_state_dict(st)
    assert all(torch.equal(other.state_dict()[k], st[k]) for k in st)
    other.reset_statistics()
    assert other.state_dict() == {}
    try:
        other.load_state_dict({"grad_accum": st["grad_accum"]})
    except ValueError as e:
        assert "count" in str(e)
    else:
        raise AssertionError("a partial state must be refused")
    # the reducer is applied to every statistic right before densifying (data-parallel ranks agree)
    seen = []

    def reducer(t, op):
        seen.append(op)
        if op == "sum":
            t.mul_(2)  # as if a second rank had seen the same
    dc.stats_reducer = reducer
    opt = make_optimizer(m, {})
    dc.densify_and_prune(m, opt)
    assert sorted(seen) == ["max", "sum", "sum"]
