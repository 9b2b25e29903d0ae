"""Uncertainty-based deformation: ensembles, stages, fusion variants, decoder, full networks."""
from __future__ import annotations


import pytest
import torch

from ua3dtalk.models.deformation import (
    DeformationNetwork,
    EnsembleMLP,
    MouthDeformation,
    MultiHeadDecoder,
    UncertaintyBlock,
    UncertaintyFusion,
    diagonal_fusion,
    bound_logvar,
    ensemble_covariance,
    full_cov_fusion,
    full_cov_fusion_factors,
    full_cov_fusion_lowrank,
    lowrank_precision,
    spd_inverse,
    uniform_fusion,
)


def num(t) -> float:
    """A Python float from a (possibly grad-requiring) 0-dim tensor."""
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """These tests run tiny tensors: one intra-op thread is fastest (and immune to oversubscription)."""
    yield


def random_spd(*shape_d, gen, dtype=torch.float64):
    *lead, d = shape_d
    a = torch.randn(*lead, d, d, generator=gen, dtype=dtype)
    return a @ a.transpose(-1, -2) / d + 0.5 * torch.eye(d, dtype=dtype)


def make_identical(ens: EnsembleMLP) -> None:
    with torch.no_grad():
        for p in (ens.w1, ens.b1, ens.w2, ens.b2):
            p.copy_(p[:1].expand_as(p))


def small_views(b=2, n=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    dims = {"audio": 7, "content": 6, "style": 5, "emotion": 9}
    return dims, {k: torch.randn(b, n, d, generator=g, dtype=dtype) for k, d in dims.items()}


# --------------------------------------------------------------------------------------------------
# EnsembleMLP / UncertaintyBlock
# --------------------------------------------------------------------------------------------------


def test_ensemble_matches_per_member_loop():
    torch.manual_seed(0)
    ens = EnsembleMLP(11, hidden=16, out_dim=5, members=4).double()
    x = torch.randn(3, 7, 11, dtype=torch.float64)
    mu, lv = ens(x)
    assert mu.shape == lv.shape == (4, 3, 7, 5)
    for t in range(4):
        h = torch.relu(x @ ens.w1[t] + ens.b1[t])
        o = h @ ens.w2[t] + ens.b2[t]
        torch.testing.assert_close(mu[t], o[..., :5], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lv[t], bound_logvar(o[..., 5:], -10.0, 4.0), rtol=1e-12, atol=1e-12)
        m_mu, m_lv = ens.forward_member(x, t)
        torch.testing.assert_close(m_mu, mu[t], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m_lv, lv[t], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        ens(torch.randn(2, 10, dtype=torch.float64))


def test_logvar_is_smoothly_bounded():
    lo, hi = -3.0, 2.0
    ens = EnsembleMLP(3, hidden=4, out_dim=2, members=2, logvar_min=lo, logvar_max=hi)
    x = torch.randn(5, 3)
    with torch.no_grad():
        ens.b2[:, 2:] = 1e4
        assert num(ens(x)[1].max()) <= hi
        ens.b2[:, 2:] = -1e4
        assert num(ens(x)[1].min()) >= lo
    # slope 1 at the centre of the range (-3 for the default [-10, 4]), a gradient inside and just outside
    z = torch.tensor([-12.0, -4.0, -3.0, 0.0, 6.0], requires_grad=True)
    y = bound_logvar(z, -10.0, 4.0)
    assert abs(num(y[2]) + 3.0) < 1e-6 and abs(num(y[1]) + 4.0) < 0.01
    assert -10.0 < num(y.min()) and num(y.max()) < 4.0
    y.sum().backward()
    assert bool((z.grad > 0).all())


def test_members_are_independent_so_epistemic_is_positive():
    torch.manual_seed(0)
    blk = UncertaintyBlock(8, hidden=16, out_dim=4, members=5).eval()
    est = blk(torch.randn(2, 6, 8))
    assert est.mu.shape == est.var.shape == est.aleatoric.shape == est.epistemic.shape == (2, 6, 4)
    assert est.members_mu.shape == (5, 2, 6, 4) and est.member is None
    assert num(est.epistemic.min()) > 0


def test_identical_members_give_zero_epistemic_variance():
    torch.manual_seed(0)
    blk = UncertaintyBlock(8, hidden=16, out_dim=4, members=6).double().eval()
    make_identical(blk.ensemble)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    est = blk(x)
    assert num(est.epistemic.abs().max()) < 1e-12
    mu0, lv0 = blk.ensemble.forward_member(x, 0)
    torch.testing.assert_close(est.mu, mu0)
    torch.testing.assert_close(est.aleatoric, lv0.exp())
    torch.testing.assert_close(est.var, lv0.exp() + blk.var_floor)


@pytest.mark.parametrize("mode", ["both", "aleatoric", "epistemic"])
def test_uncertainty_mode_selects_the_variance(mode):
    torch.manual_seed(0)
    blk = UncertaintyBlock(8, hidden=16, out_dim=4, members=5, mode=mode, var_floor=1e-4).double().eval()
    est = blk(torch.randn(4, 8, dtype=torch.float64))
    expected = {"both": est.aleatoric + est.epistemic, "aleatoric": est.aleatoric,
                "epistemic": est.epistemic}[mode] + 1e-4
    torch.testing.assert_close(est.var, expected)
    if mode != "epistemic":
        assert not torch.allclose(est.var, est.epistemic + 1e-4)


def test_stage_a_uses_one_random_member():
    torch.manual_seed(0)
    blk = UncertaintyBlock(8, hidden=16, out_dim=4, members=10, ensemble_switch=100).train()
    x = torch.randn(2, 3, 8)
    chosen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        est = blk(x, step=5)
        assert est.member is not None and est.members_mu is None
        assert torch.equal(est.epistemic, torch.zeros_like(est.epistemic))
        mu, lv = blk.ensemble.forward_member(x, est.member)
        torch.testing.assert_close(est.mu, mu)
        torch.testing.assert_close(est.aleatoric, lv.exp())
        torch.manual_seed(seed)  # same RNG state → same member
        assert blk(x, step=5).member == est.member
        chosen.add(est.member)
    assert len(chosen) > 2  # the member changes with the RNG
    # stage B after the switch, in eval mode, or when forced
    assert blk(x, step=100).member is None
    assert blk(x, step=None).member is None
    assert blk(x, step=5, single_member=False).member is None
    assert blk.eval()(x, step=5).member is None
    assert blk(x, member=3).member == 3


# --------------------------------------------------------------------------------------------------
# fusion functions
# --------------------------------------------------------------------------------------------------


def test_diagonal_equals_full_cov_for_diagonal_covariances():
    g = torch.Generator().manual_seed(0)
    for d in (6, 48):
        mus = torch.randn(4, 3, 5, d, generator=g, dtype=torch.float64)
        vars_ = torch.rand(4, 3, 5, d, generator=g, dtype=torch.float64) * 3 + 0.01
        mu_d, var_d, w_d = diagonal_fusion(mus, vars_)
        mu_f, cov_f, w_f = full_cov_fusion(mus, torch.diag_embed(vars_))
        assert mu_d.shape == (3, 5, d) and w_d.shape == (4, 3, 5, d) and w_f.shape == (4, 3, 5)
        assert cov_f.shape == (3, 5, d, d)
        assert num((mu_d - mu_f).abs().max()) <= 1e-5
        assert num((var_d - cov_f.diagonal(dim1=-2, dim2=-1)).abs().max()) <= 1e-5
        off = cov_f - torch.diag_embed(cov_f.diagonal(dim1=-2, dim2=-1))
        assert num(off.abs().max()) <= 1e-5
        torch.testing.assert_close(w_d.sum(0), torch.ones(3, 5, d, dtype=torch.float64))
        torch.testing.assert_close(w_f.sum(0), torch.ones(3, 5, dtype=torch.float64))
        torch.testing.assert_close(mu_d, (w_d * mus).sum(0))


def test_full_cov_matches_explicit_inverse_formula():
    g = torch.Generator().manual_seed(1)
    mus = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    covs = random_spd(3, 4, 6, gen=g)
    mu_f, cov_f, _ = full_cov_fusion(mus, covs)
    inv = torch.linalg.inv(covs)
    cov_ref = torch.linalg.inv(inv.sum(0))
    mu_ref = (cov_ref @ (inv @ mus.unsqueeze(-1)).sum(0)).squeeze(-1)
    torch.testing.assert_close(cov_f, cov_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(mu_f, mu_ref, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError):
        full_cov_fusion(mus, -covs)


def lowrank_case(v=3, lead=(2, 5), d=48, t=10, seed=3):
    """Views as an ensemble gives them: diag [V, ..., D] (aleatoric + floor, some tiny), W [V, ..., D, T]."""
    g = torch.Generator().manual_seed(seed)
    mus = torch.randn(v, *lead, d, generator=g, dtype=torch.float64)
    diag = torch.rand(v, *lead, d, generator=g, dtype=torch.float64) * 2 + 1e-4
    w = torch.randn(v, *lead, d, t, generator=g, dtype=torch.float64) * 0.5
    return mus, diag, w


def test_lowrank_precision_is_the_inverse():
    _, diag, w = lowrank_case()
    cov = torch.diag_embed(diag) + w @ w.transpose(-1, -2)
    torch.testing.assert_close(lowrank_precision(diag, w), torch.linalg.inv(cov), rtol=1e-8, atol=1e-8)


def test_lowrank_full_cov_fusion_matches_the_dense_one_values_and_gradients():
    """The Woodbury path equals full_cov_fusion on the formed covariances (float64): fused mean, covariance,
    weights, and the gradients of a loss of all three with respect to the means, diagonals and factors."""
    mus, diag, w = lowrank_case()
    gen = torch.Generator().manual_seed(9)
    probe = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((2, 5, 48), (2, 5, 48, 48), (3, 2, 5))]

    def run(fn):
        xs = [t.clone().requires_grad_(True) for t in (mus, diag, w)]
        out = fn(*xs)
        loss = sum((o * p).sum() for o, p in zip(out, probe))
        return out, torch.autograd.grad(loss, xs)

    fast, g_fast = run(full_cov_fusion_lowrank)
    dense, g_dense = run(lambda m, d, f: full_cov_fusion(m, torch.diag_embed(d) + f @ f.transpose(-1, -2)))
    for a, b in zip(fast + g_fast, dense + g_dense):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="lowrank"):
        full_cov_fusion_lowrank(mus, diag[..., :5], w)


def test_factored_full_cov_fusion_gives_the_dense_variance_and_a_well_conditioned_core():
    """full_cov_fusion_factors: the fused variance is the dense covariance's diagonal (values and gradients), the
    factors rebuild that covariance, and M = C⁻¹ − UᵀS⁻¹U ⪰ I (every eigenvalue of M⁻¹ in (0, 1]) — also with a
    confident view (tiny diagonal: Σ_v conditioned ~10⁴) and members that agree (W ≈ 0)."""
    mus, diag, w = lowrank_case(v=4, t=6)
    diag[1] = 1e-3
    w[2] *= 1e-5
    probe = torch.randn(mus.shape[1:], generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def run(fn):
        xs = [t.clone().requires_grad_(True) for t in (diag, w)]  # (the variance does not depend on the means)
        var = fn(mus, *xs)
        return var, torch.autograd.grad((var * probe).sum(), xs)

    var, g = run(lambda m, d, f: full_cov_fusion_factors(m, d, f)[1])
    ref, g_ref = run(lambda m, d, f: full_cov_fusion(m, torch.diag_embed(d) + f @ f.transpose(-1, -2))[1]
                     .diagonal(dim1=-2, dim2=-1))
    for a, b in zip((var, *g), (ref, *g_ref)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
    _, _, _, (inv_s, gm, m_inv) = full_cov_fusion_factors(mus, diag, w)
    assert gm.shape == (2, 5, 48, 4 * 6) and m_inv.shape == (2, 5, 24, 24)
    torch.testing.assert_close(torch.diag_embed(inv_s) + gm @ m_inv @ gm.transpose(-1, -2),
                               full_cov_fusion(mus, torch.diag_embed(diag) + w @ w.transpose(-1, -2))[1])
    diag[1] = 1e-7  # Σ_1 conditioned ~10⁸: M stays ⪰ I
    for dtype in (torch.float64, torch.float32):
        m_inv = full_cov_fusion_factors(mus.to(dtype), diag.to(dtype), w.to(dtype))[3][2]
        eig = torch.linalg.eigvalsh(m_inv.double())
        assert bool((eig > 0).all()) and float(eig.max()) <= 1 + 1e-4, dtype


def test_full_cov_module_equals_the_dense_reference():
    """UncertaintyFusion(full_cov), stage B: the Woodbury path gives the fused code of the dense reference
    (ensemble_covariance → full_cov_fusion) on the same estimates, values and gradients (float64)."""
    dims, views = small_views(dtype=torch.float64)
    torch.manual_seed(0)
    fus = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4, fusion="full_cov").double().eval()
    views = {k: v.requires_grad_(True) for k, v in views.items()}
    out = fus(views, single_member=False)
    est = out.estimates
    names = list(dims)
    ref_mu, ref_cov, ref_w = full_cov_fusion(torch.stack([est[n].mu for n in names]),
                                             torch.stack([ensemble_covariance(est[n]) for n in names]))
    torch.testing.assert_close(out.mu, ref_mu, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.cov, ref_cov, rtol=1e-9, atol=1e-10)
    probe = torch.randn_like(out.mu)
    g_fast = torch.autograd.grad((out.mu * probe).sum(), list(views.values()), retain_graph=True)
    g_ref = torch.autograd.grad((ref_mu * probe).sum(), list(views.values()))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    for i, n in enumerate(names):
        torch.testing.assert_close(out.weights[n], ref_w[i].mean())


def test_spd_inverse_value_and_gradient():
    g = torch.Generator().manual_seed(2)
    a = random_spd(2, 3, 5, gen=g).requires_grad_(True)
    torch.testing.assert_close(spd_inverse(a), torch.linalg.inv(a))
    # gradients are those of a symmetric argument (the Cholesky reads one triangle only)
    x = torch.randn(2, 5, 5, dtype=torch.float64, generator=g).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: spd_inverse(m @ m.transpose(-1, -2) + torch.eye(5)), (x,))
    w = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g)
    (spd_inverse(a) * w).sum().backward()
    b = a.detach().clone().requires_grad_(True)
    (torch.linalg.inv(b) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_uniform_is_the_mean():
    mus = torch.randn(4, 2, 3, 8)
    torch.testing.assert_close(uniform_fusion(mus), mus.mean(0))


def test_precision_weighting_favours_the_confident_view():
    mus = torch.stack([torch.full((10, 4), 1.0), torch.full((10, 4), -1.0)])
    vars_ = torch.stack([torch.full((10, 4), 0.01), torch.full((10, 4), 1.0)])
    mu, var, w = diagonal_fusion(mus, vars_)
    assert num(w[0].min()) > 0.98
    torch.testing.assert_close(mu, torch.full((10, 4), (1 / 0.01 - 1) / (1 / 0.01 + 1)))
    assert num(var.max()) < 0.01  # fusion never increases the variance beyond the best view
    mu_f, _, w_f = full_cov_fusion(mus, torch.diag_embed(vars_))
    torch.testing.assert_close(mu_f, mu)
    assert num(w_f[0].min()) > 0.98


def test_ensemble_covariance_diagonal_is_the_view_variance():
    torch.manual_seed(0)
    blk = UncertaintyBlock(8, hidden=16, out_dim=6, members=5).double().eval()
    est = blk(torch.randn(2, 3, 8, dtype=torch.float64))
    cov = ensemble_covariance(est)
    assert cov.shape == (2, 3, 6, 6)
    torch.testing.assert_close(cov.diagonal(dim1=-2, dim2=-1), est.var)
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert num(torch.linalg.eigvalsh(cov).min()) > 0
    dev = est.members_mu - est.mu
    ref = torch.einsum("tabi,tabj->abij", dev, dev) / 5 + torch.diag_embed(est.aleatoric + blk.var_floor)
    torch.testing.assert_close(cov, ref)
    assert torch.equal(ensemble_covariance(est, include_epistemic=False), torch.diag_embed(est.var))


# --------------------------------------------------------------------------------------------------
# UncertaintyFusion
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["diagonal", "full_cov", "uniform", "concat"])
@pytest.mark.parametrize("uncertainty", ["both", "aleatoric", "epistemic"])
def test_every_fusion_variant_runs_forward_and_backward(fusion, uncertainty):
    torch.manual_seed(0)
    dims, views = small_views()
    fu = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4, fusion=fusion, uncertainty=uncertainty,
                           ensemble_switch=10).train()
    for step in (0, 10):  # stage A, stage B
        fu.zero_grad()
        out = fu(views, step=step)
        assert out.mu.shape == (2, 5, 8)
        if fusion in ("diagonal", "full_cov"):
            assert out.var.shape == (2, 5, 8) and bool((out.var > 0).all())
            assert set(out.weights) == set(dims)
            torch.testing.assert_close(sum(out.weights.values()), torch.tensor(1.0))
        else:
            assert out.var is None
        if fusion == "full_cov":
            assert out.cov.shape == (2, 5, 8, 8)
        loss = out.mu.square().sum() + (out.var.sum() if out.var is not None else 0)
        loss.backward()
        stats = out.stats()
        assert all(v.dim() == 0 for v in stats.values())
        if step == 10 or fusion == "concat":
            for name, p in fu.named_parameters():
                assert p.grad is not None and bool(p.grad.abs().sum() > 0), (fusion, uncertainty, step, name)


def test_stage_a_only_the_chosen_members_get_gradients():
    torch.manual_seed(0)
    dims, views = small_views()
    fu = UncertaintyFusion(dims, out_dim=8, hidden=16, members=5, ensemble_switch=100).train()
    out = fu(views, step=3)
    (out.mu.square().sum() + out.var.sum()).backward()
    for name, est in out.estimates.items():
        k = est.member
        assert k is not None
        for pname, p in fu.blocks[name].ensemble.named_parameters():
            assert p.grad[k].abs().sum() > 0, (name, pname)
            others = torch.cat([p.grad[:k], p.grad[k + 1:]])
            assert torch.equal(others, torch.zeros_like(others)), (name, pname)
    # the members of the different views are drawn independently
    members = []
    for seed in range(6):
        torch.manual_seed(seed)
        members.append(tuple(e.member for e in fu(views, step=3).estimates.values()))
    assert len(set(members)) > 1 and any(len(set(m)) > 1 for m in members)


def test_fusion_module_uses_precision_weights():
    """A view with a small predicted variance dominates the fused code."""
    torch.manual_seed(0)
    dims, views = small_views(dtype=torch.float64)
    fu = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4, uncertainty="aleatoric").double().eval()
    with torch.no_grad():
        for name, blk in fu.blocks.items():
            blk.ensemble.w2[:, :, 8:] = 0.0
            blk.ensemble.b2[:, 8:] = -4.0 if name == "content" else 1.0
    out = fu(views)
    assert num(out.weights["content"]) > 0.95
    assert max(num(w) for k, w in out.weights.items() if k != "content") < 0.02
    torch.testing.assert_close(out.mu, out.estimates["content"].mu, rtol=0.05, atol=0.05)


def test_full_cov_reduces_to_diagonal_without_epistemic_covariance():
    torch.manual_seed(0)
    dims, views = small_views(dtype=torch.float64)
    diag = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4, uncertainty="aleatoric").double().eval()
    full = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4, fusion="full_cov",
                             uncertainty="aleatoric").double().eval()
    full.load_state_dict(diag.state_dict())
    a, b = diag(views), full(views)
    assert num((a.mu - b.mu).abs().max()) <= 1e-5
    assert num((a.var - b.var).abs().max()) <= 1e-5
    # with the ensemble's off-diagonal covariance (uncertainty=both) the two differ
    diag_b = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4).double().eval()
    full_b = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4, fusion="full_cov").double().eval()
    full_b.load_state_dict(diag_b.state_dict())
    assert num((diag_b(views).mu - full_b(views).mu).abs().max()) > 1e-6


def test_uniform_fusion_module_is_mean_of_view_means():
    torch.manual_seed(0)
    dims, views = small_views()
    fu = UncertaintyFusion(dims, out_dim=8, hidden=16, members=4, fusion="uniform").eval()
    out = fu(views)
    torch.testing.assert_close(out.mu, torch.stack([e.mu for e in out.estimates.values()]).mean(0))


@pytest.mark.parametrize("fusion", ["diagonal", "uniform", "full_cov", "concat"])
def test_view_dropout_leaves_views_out_only_in_training(fusion):
    """view_dropout: a training forward fuses a random non-empty subset of the views (a left-out view
    gets no gradient and weight 0); eval mode always fuses every view; 0 changes nothing."""
    torch.manual_seed(0)
    dims, views = small_views()
    fu = UncertaintyFusion(dims, out_dim=8, hidden=16, members=3, fusion=fusion, view_dropout=0.5)
    ref = UncertaintyFusion(dims, out_dim=8, hidden=16, members=3, fusion=fusion)
    ref.load_state_dict(fu.state_dict())
    fu.eval(), ref.eval()
    torch.testing.assert_close(fu(views).mu, ref(views).mu)
    assert fu.active_views() == tuple(dims)
    fu.train()
    subsets = set()
    for i in range(40):
        torch.manual_seed(i)
        active = fu.active_views()
        torch.manual_seed(i)
        fu.zero_grad()
        out = fu(views, step=10**6)
        out.mu.square().sum().backward()
        subsets.add(active)
        assert 1 <= len(active) <= len(dims)
        if fusion == "concat":
            continue
        for name in dims:
            got = any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in fu.blocks[name].parameters())
            assert got == (name in active), (name, active)
            if name not in active:
                assert num(out.weights[name]) == 0.0
        if fusion == "uniform":
            torch.testing.assert_close(out.mu, torch.stack([out.estimates[n].mu for n in active]).mean(0))
    assert len(subsets) > 4  # random subsets, not a fixed pattern
    with pytest.raises(ValueError, match="view_dropout"):
        UncertaintyFusion(dims, view_dropout=1.0)


def test_fusion_rejects_bad_views():
    dims, views = small_views()
    fu = UncertaintyFusion(dims, out_dim=8, hidden=16, members=2)
    with pytest.raises(ValueError, match="missing"):
        fu({k: v for k, v in views.items() if k != "style"})
    with pytest.raises(ValueError):
        fu({**views, "audio": torch.randn(2, 5, 3)})
    with pytest.raises(ValueError):
        UncertaintyFusion(dims, fusion="mean")


# --------------------------------------------------------------------------------------------------
# decoder
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("single", [False, True])
def test_decoder_shapes_and_near_zero_init(single):
    torch.manual_seed(0)
    dec = MultiHeadDecoder(in_dim=48 + 64, hidden=64, extra_heads=("opacity", "color"), single=single)
    code, h = torch.randn(2, 30, 48), torch.randn(30, 64)
    d = dec(code, h)
    shapes = {k: tuple(v.shape) for k, v in d.as_dict().items()}
    assert shapes == {"xyz": (2, 30, 3), "rot": (2, 30, 4), "scale": (2, 30, 3), "opacity": (2, 30, 1),
                      "color": (2, 30, 3)}
    for k, v in d.as_dict().items():  # small last layers: ≈ 0 offsets, the canonical avatar at first
        assert num(v.abs().mean()) < 1e-2, k
    assert num(d.xyz.abs().max()) < 1e-3
    sum((v * torch.randn_like(v)).sum() for v in d.as_dict().values()).backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_decoder_options():
    dec = MultiHeadDecoder(in_dim=10, hidden=8, heads=("xyz",), xyz_scale=1.0)
    d = dec(torch.randn(1, 4, 10))
    assert d.xyz.shape == (1, 4, 3) and d.rot is None and d.scale is None
    # xyz_scale multiplies the xyz head
    dec2 = MultiHeadDecoder(in_dim=10, hidden=8, heads=("xyz",), xyz_scale=1e-2)
    dec2.load_state_dict(dec.state_dict())
    x = torch.randn(1, 4, 10)
    torch.testing.assert_close(dec2(x).xyz, dec(x).xyz * 1e-2)
    with pytest.raises(ValueError):
        MultiHeadDecoder(heads=("xyz", "pose"))
    with pytest.raises(ValueError):
        dec(torch.randn(1, 4, 9))


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_decoder_activation_matches_its_plain_form(activation):
    """The decoder's decomposed first layer (``code·W_codeᵀ + H·W_Hᵀ``, shared H, cached ``h_pre``) with
    either trunk nonlinearity equals the plain ``heads(act(Linear([code, H])))``."""
    torch.manual_seed(0)
    dec = MultiHeadDecoder(in_dim=12 + 6, hidden=16, init_std=0.1, activation=activation)
    code, h = torch.randn(3, 20, 12), torch.randn(20, 6)
    act = torch.relu if activation == "relu" else torch.nn.functional.silu
    z = act(dec.trunk[0](torch.cat([code, h.expand(3, -1, -1)], -1)))
    k = dec.hidden  # one two-layer head per output: Linear → act → Linear
    ref = torch.cat([act(z @ dec.hidden_w[i * k:(i + 1) * k].t() + dec.hidden_b[i * k:(i + 1) * k]) @ dec.out_w[i].t()
                     + dec.out_b[i] for i in range(len(dec.head_names))], -1)
    for d in (dec(code, h), dec(code, h, h_pre=dec.h_pre(h, 12)), dec(code, h.expand(3, -1, -1))):
        torch.testing.assert_close(torch.cat([d.xyz / dec.xyz_scale, d.rot, d.scale], -1), ref)
    assert isinstance(dec.trunk[1], torch.nn.ReLU if activation == "relu" else torch.nn.SiLU)
    with pytest.raises(ValueError, match="activation must be one of"):
        MultiHeadDecoder(activation="tanh")


def test_silu_decoder_revives_a_unit_that_relu_leaves_dead():
    """A trunk whose biases are pushed far below zero (every unit inactive on every input, as found in the
    demo runs): with ReLU nothing reaches the trunk or the code (the output is constant), with SiLU both
    still get a gradient and a few Adam steps bring units back to life."""
    def dead(activation):
        torch.manual_seed(0)
        dec = MultiHeadDecoder(in_dim=8 + 4, hidden=16, heads=("xyz",), xyz_scale=1.0, init_std=0.1,
                               activation=activation)
        with torch.no_grad():
            dec.trunk[0].bias.fill_(-3.0)
            dec.trunk[0].weight.mul_(0.1)
        return dec

    code, h = torch.randn(2, 50, 8, requires_grad=True), torch.randn(50, 4)
    target = torch.randn(2, 50, 3)
    for activation, alive in (("relu", False), ("silu", True)):
        dec = dead(activation)
        assert float((dec.trunk[0](torch.cat([code, h.expand(2, -1, -1)], -1)) > 0).float().mean()) == 0.0
        loss = (dec(code, h).xyz - target).pow(2).mean()
        code.grad = None
        loss.backward()
        assert (float(dec.trunk[0].weight.grad.abs().sum()) > 0) is alive
        assert (float(code.grad.abs().sum()) > 0) is alive
        opt = torch.optim.Adam(dec.parameters(), lr=5e-2)
        for _ in range(100):
            opt.zero_grad()
            (dec(code.detach(), h).xyz - target).pow(2).mean().backward()
            opt.step()
        with torch.no_grad():
            active = float((dec.trunk[0](torch.cat([code, h.expand(2, -1, -1)], -1)) > 0).float().mean())
        assert (active > 0.01) is alive, (activation, active)


# --------------------------------------------------------------------------------------------------
# full networks
# --------------------------------------------------------------------------------------------------

SMALL = dict(field_resolution=8, field_scales=(1, 2, 4, 8), field_channels=16, members=4)


def net_inputs(b=1, n=40, c=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        xyz=torch.rand(n, 3, generator=g) * 2 - 1,
        audio=torch.randn(b, 8, 16, c, generator=g),
        blink=torch.rand(b, generator=g),
        content=torch.randn(b, 64, generator=g),
        style=torch.randn(b, 64, generator=g),
        emotion=torch.randn(b, n, 192, generator=g),
    )


def test_deformation_network_default_dimensions():
    net = DeformationNetwork(29, members=2)
    assert net.h_dim == 64
    assert net.view_dims == {"audio": 38 + 64, "content": 64 + 64, "style": 64 + 64, "emotion": 192}
    assert net.decoder.in_dim == 48 + 64
    out = net.eval()(**net_inputs(n=10))
    assert out.h.shape == (10, 64) and out.fusion.mu.shape == (1, 10, 48)


@pytest.mark.parametrize("b", [1, 2])
def test_deformation_network_gradients_reach_every_parameter(b):
    torch.manual_seed(0)
    net = DeformationNetwork(29, extra_heads=("opacity", "color"), ensemble_switch=5, **SMALL).train()
    out = net(**net_inputs(b=b), step=5)  # stage B
    d = out.deltas
    assert d.xyz.shape == (b, 40, 3) and d.rot.shape == (b, 40, 4) and d.scale.shape == (b, 40, 3)
    assert d.opacity.shape == (b, 40, 1) and d.color.shape == (b, 40, 3)
    assert num(d.xyz.abs().max()) < 1e-3  # ≈ 0 at initialisation
    sum((v * torch.randn_like(v)).sum() for v in d.as_dict().values()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deformation_network_stage_a_gradients():
    torch.manual_seed(0)
    net = DeformationNetwork(29, ensemble_switch=5, **SMALL).train()
    out = net(**net_inputs(), step=0)
    sum((v * torch.randn_like(v)).sum() for v in out.deltas.as_dict().values()).backward()
    for name, blk in net.fusion.blocks.items():
        k = out.fusion.estimates[name].member
        for p in blk.ensemble.parameters():
            mask = torch.zeros(p.shape[0], dtype=torch.bool)
            mask[k] = True
            assert p.grad[mask].abs().sum() > 0
            assert torch.equal(p.grad[~mask], torch.zeros_like(p.grad[~mask]))
    for name, p in net.named_parameters():
        if ".ensemble." not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", ["diagonal", "full_cov", "uniform", "concat"])
def test_deformation_network_fusion_variants(fusion):
    torch.manual_seed(0)
    net = DeformationNetwork(29, fusion=fusion, single_head=(fusion == "concat"), **SMALL).eval()
    out = net(**net_inputs(b=2))
    assert out.deltas.xyz.shape == (2, 40, 3)
    out.deltas.rot.sum().backward()


def test_deformation_network_view_subsets():
    torch.manual_seed(0)
    inp = net_inputs()
    # no prior, no emotion (TalkingGaussian-like audio only)
    net = DeformationNetwork(29, views=("audio",), **SMALL).eval()
    assert list(net.view_dims) == ["audio"]
    assert net(inp["xyz"], audio=inp["audio"]).deltas.xyz.shape == (1, 40, 3)
    # without emotion; extra inputs are ignored
    net = DeformationNetwork(29, views=("audio", "content", "style"), **SMALL).eval()
    assert net(**inp).deltas.scale.shape == (1, 40, 3)
    # without audio (the audio view has no parameters then)
    net = DeformationNetwork(29, views=("content", "emotion"), **SMALL).eval()
    assert net.audio_view is None
    assert net(inp["xyz"], content=inp["content"], emotion=inp["emotion"]).deltas.rot.shape == (1, 40, 4)
    with pytest.raises(ValueError, match="emotion"):
        net(inp["xyz"], content=inp["content"])
    with pytest.raises(ValueError):
        net(inp["xyz"], content=inp["content"], emotion=inp["emotion"][:, :10])
    with pytest.raises(ValueError):
        DeformationNetwork(29, views=("audio", "pose"))


def test_emotion_position_gives_the_emotion_view_h():
    """emotion_position=True: the emotion view is [f_emotion, H] (192+h_dim); the cached no-grad path equals
    the autograd path; the position field then also learns through the emotion view."""
    torch.manual_seed(0)
    inp = net_inputs()
    net = DeformationNetwork(29, views=("content", "emotion"), emotion_position=True, **SMALL)
    assert net.view_dims["emotion"] == 192 + net.h_dim
    kw = dict(content=inp["content"], emotion=inp["emotion"])
    net.eval()
    with torch.enable_grad():
        ref = net(inp["xyz"], **kw).deltas.xyz
    with torch.no_grad():
        got = net(inp["xyz"], **kw).deltas.xyz
    torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-9)
    # the same f_emotion at every Gaussian: only with H can the emotion view vary over the head
    same = inp["emotion"][:, :1].expand_as(inp["emotion"]).contiguous()
    for pos in (True, False):
        m = DeformationNetwork(29, views=("emotion",), emotion_position=pos, **SMALL).eval()
        mu = m(inp["xyz"], emotion=same).fusion.estimates["emotion"].mu[0]  # [N, code]
        spread = float((mu - mu[:1]).abs().max())
        assert (spread > 1e-4) if pos else (spread < 1e-6), (pos, spread)


def test_mouth_deformation_is_xyz_only():
    torch.manual_seed(0)
    m = MouthDeformation(29, **SMALL).train()
    assert m.view_dims == {"audio": 32 + 64, "content": 64 + 64}
    inp = net_inputs(b=2)
    out = m(inp["xyz"], audio=inp["audio"], content=inp["content"], step=20000,
            style=inp["style"], emotion=inp["emotion"])
    assert out.deltas.xyz.shape == (2, 40, 3)
    assert out.deltas.rot is None and out.deltas.scale is None
    (out.deltas.xyz * torch.randn_like(out.deltas.xyz)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError):
        MouthDeformation(29, views=("audio", "emotion"))


def test_views_are_standardised_before_the_networks():
    """Every view's own feature (and H, and the fused code) is standardised per channel with stored
    statistics (DESIGN §4.5): after training forwards on features with large per-channel offsets and scales,
    what reaches the ensembles has mean ≈ 0 and spread ≈ 1 per channel, and a network trained on ``s·x``
    computes what it computes on ``x`` (any overall scale s). With ``fusion=concat`` the MLP's hidden units
    are then active on a fair share of the inputs (before, every unit of that MLP died at demo scale)."""
    for fusion in ("diagonal", "concat"):
        outs = []
        for s in (1.0, 1e3):
            torch.manual_seed(0)
            net = DeformationNetwork(29, fusion=fusion, ensemble_switch=0, **SMALL).train()
            for k in range(8):
                x = net_inputs(b=3, seed=k)
                for name in ("content", "style", "emotion"):
                    d = x[name].shape[-1]
                    gk = torch.Generator().manual_seed(100 + d)  # the same channel offsets for every batch
                    x[name] = s * (x[name] * (torch.rand(d, generator=gk) + 0.5) + torch.randn(d, generator=gk) * 2)
                out = net(**x, step=1)
            outs.append(out)  # the last of 8 training forwards
        torch.testing.assert_close(outs[0].fusion.mu, outs[1].fusion.mu, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(outs[0].deltas.rot, outs[1].deltas.rot, atol=1e-5, rtol=1e-3)
        net.eval()
        views, h = net.build_views(x["xyz"], x["audio"], x["blink"], x["content"], x["style"], x["emotion"])
        assert float(h.mean(0).abs().max()) < 0.3 and 0.7 < float(h.std(0).mean()) < 1.3
        e = views["emotion"].reshape(-1, views["emotion"].shape[-1])
        assert float(e.mean(0).abs().mean()) < 0.3 and 0.6 < float(e.std(0).mean()) < 1.3
        if fusion == "concat":
            hidden = net.fusion.concat_mlp[0](torch.cat([views[n] for n in net.fusion.view_names], -1))
            frac = (hidden > 0).float().mean(dim=(0, 1))
            assert float(frac.mean()) > 0.2 and float((frac > 0).float().mean()) > 0.8


def test_single_head_ablation_is_a_different_model():
    """``heads=single`` is not ``multi`` in disguise: one two-layer head whose hidden layer every output shares
    (64 hidden units for all outputs, fewer parameters) against one two-layer head per output (3 × 64). With
    one-layer heads the two were the same function (concatenated weights) and the ablation row measured
    nothing."""
    torch.manual_seed(0)
    multi, single = MultiHeadDecoder(48 + 64, 64, single=False), MultiHeadDecoder(48 + 64, 64, single=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert multi.hidden_units() == 3 * 64 and single.hidden_units() == 64
    assert count(single) == count(multi) - 2 * (64 * 64 + 64)
    code, h = torch.randn(1, 20, 48), torch.randn(20, 64)
    for dec, shared in ((multi, False), (single, True)):
        d = dec(code, h)
        # the rotation output depends on the hidden units that feed Δxyz only when they are shared
        g = torch.autograd.grad(d.rot.square().sum(), dec.hidden_w)[0][:64]
        assert (float(g.abs().sum()) > 0) == shared


# --------------------------------------------------------------------------------------------------
# frame rows: views evaluated once per distinct frame and gathered (the landmark term's swapped copies)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["diagonal", "full_cov", "uniform", "concat"])
@pytest.mark.parametrize("stage_b", [True, False])
def test_frame_rows_equal_repeated_frames_in_values_and_gradients(fusion, stage_b):
    """``frame_rows``: the frame inputs of 2 frames and 5 output rows (frames 0, 1, 1, 0, 1) with their own emotion
    features give the same offsets and the same gradient of every parameter and every input as repeating the
    frames' inputs (float64, training mode; stage A draws one member per view and call in both). As the
    landmark term calls it: without updating the standardisation statistics (an update would see each frame
    once instead of once per row)."""
    inp = net_inputs(b=2, n=12)
    rows = torch.tensor([0, 1, 1, 0, 1])
    emo = torch.randn(len(rows), 12, 192, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = {}
    for gathered in (True, False):
        torch.manual_seed(0)
        net = DeformationNetwork(29, fusion=fusion, single_head=(fusion == "concat"), ensemble_switch=5,
                                 **SMALL).double().train()
        x = {k: v.double().clone().requires_grad_(True) for k, v in inp.items() if k != "emotion"}
        e = emo.clone().requires_grad_(True)
        frame = {k: x[k] if gathered else x[k][rows] for k in ("audio", "blink", "content", "style")}
        frame["blink"] = frame["blink"][:, None]
        torch.manual_seed(1)
        out = net(x["xyz"], emotion=e, step=10 if stage_b else 0, frame_rows=rows if gathered else None,
                  update_stats=False, **frame)
        g = torch.Generator().manual_seed(2)
        loss = sum((v * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum() for v in out.deltas.as_dict().values())
        loss.backward()
        res[gathered] = (out.deltas.as_dict(), {n: p.grad for n, p in net.named_parameters()},
                         {k: t.grad for k, t in x.items()}, e.grad)
    for k, v in res[False][0].items():
        torch.testing.assert_close(res[True][0][k], v, msg=k)
    assert any(float(g.abs().sum()) > 0 for g in res[True][1].values())
    for d_true, d_false in ((res[True][1], res[False][1]), (res[True][2], res[False][2])):
        for k, v in d_false.items():
            if v is None:
                assert d_true[k] is None, k
            else:
                torch.testing.assert_close(d_true[k], v, msg=k)
    torch.testing.assert_close(res[True][3], res[False][3])


def test_frame_rows_evaluate_the_frame_views_once_per_frame():
    """With ``frame_rows`` the audio/content/style ensembles see the distinct frames only (2 rows here), the
    emotion ensemble every output row (5)."""
    torch.manual_seed(0)
    net = DeformationNetwork(29, **SMALL).train()
    seen = {}
    for name, blk in net.fusion.blocks.items():
        blk.register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, o.mu.shape[0]))
    inp = net_inputs(b=2, n=12)
    rows = torch.tensor([0, 1, 1, 0, 1])
    out = net(inp["xyz"], audio=inp["audio"], blink=inp["blink"][:, None], content=inp["content"],
              style=inp["style"], emotion=torch.randn(5, 12, 192), step=10, frame_rows=rows)
    assert out.deltas.xyz.shape == (5, 12, 3)
    assert seen == {"audio": 2, "content": 2, "style": 2, "emotion": 5}


def test_frame_rows_are_checked():
    torch.manual_seed(0)
    net = DeformationNetwork(29, **SMALL).train()
    inp = net_inputs(b=2, n=12)
    kw = dict(audio=inp["audio"], blink=inp["blink"][:, None], content=inp["content"], style=inp["style"])
    with pytest.raises(ValueError, match="outside the view's 2 rows"):
        net(inp["xyz"], emotion=torch.randn(3, 12, 192), frame_rows=torch.tensor([0, 1, 2]), **kw)
    with pytest.raises(ValueError, match="emotion must be \\[B, N=12"):
        net(inp["xyz"], emotion=torch.randn(2, 12, 192), frame_rows=torch.tensor([0, 1, 1]), **kw)
    with pytest.raises(ValueError, match="1-D integer index"):
        net(inp["xyz"], emotion=torch.randn(3, 12, 192), frame_rows=torch.tensor([0.0, 1.0, 1.0]), **kw)
    no_emotion = DeformationNetwork(29, views=("audio", "content", "style"), **SMALL)
    with pytest.raises(ValueError, match="frame_rows needs the 'emotion' view"):
        no_emotion(inp["xyz"], frame_rows=torch.tensor([0, 1]), **kw)
    fusion = UncertaintyFusion({"a": 3, "b": 4}, members=2)
    views = {"a": torch.randn(2, 5, 3), "b": torch.randn(3, 5, 4)}
    with pytest.raises(ValueError, match="not views of this fusion"):
        fusion(views, rows={"c": torch.tensor([0, 1, 1])})
    assert fusion(views, rows={"a": torch.tensor([0, 1, 1])}).mu.shape == (3, 5, 48)
