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
