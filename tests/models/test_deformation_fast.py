"""The fast deformation paths equal the reference mathematics (DESIGN §4).

The reference below is the straightforward implementation the fast paths replaced (materialised view
concatenations, every member's output, autograd through the statistics, ``tanh`` log-variance bound,
``F.grid_sample`` + ``prod`` plane fields, concatenated decoder input, separate heads). Every fast
path — decomposed first layer (``ViewInput``), fused stage-B statistics with the analytic backward,
blocked evaluation, inference caches, plane-sampler backward, decoder by parts — must give the same
outputs and the same gradients of every parameter (float64: ≤ 1e-9; float32: float tolerance).
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from ua3dtalk.models.deformation import (
    DeformationNetwork,
    EnsembleMLP,
    MouthDeformation,
    MultiHeadDecoder,
    RunningStandardize,
    UncertaintyBlock,
    UncertaintyFusion,
    ViewInput,
    diagonal_fusion,
    full_cov_fusion,
    uniform_fusion,
)
from ua3dtalk.models.emotion import EmotionField
from ua3dtalk.models.fields import PlaneField, sample_planes


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TIGHT = dict(rtol=1e-9, atol=1e-10)  # float64


# --------------------------------------------------------------------------------------------------
# reference implementation (the mathematics, written plainly)
# --------------------------------------------------------------------------------------------------


def ref_bound(x, lo, hi):
    c, h = 0.5 * (lo + hi), 0.5 * (hi - lo)
    return torch.tanh((x - c) * (1.0 / h)) * h + c


def ref_ensemble(ens: EnsembleMLP, x):
    """Every member's (μ, log σ²) [T, ..., D] from a materialised input x [..., in]."""
    t, hid, d = ens.members, ens.hidden, ens.out_dim
    lead = x.shape[:-1]
    xf = x.reshape(-1, ens.in_dim)
    w1 = ens.w1.permute(1, 0, 2).reshape(ens.in_dim, t * hid)
    h = torch.relu(torch.addmm(ens.b1.reshape(-1), xf, w1)).view(-1, t, hid).transpose(0, 1)
    out = torch.baddbmm(ens.b2.unsqueeze(1), h, ens.w2)
    mu, lv = out.split(d, dim=-1)
    return mu.reshape(t, *lead, d), ref_bound(lv, ens.logvar_min, ens.logvar_max).reshape(t, *lead, d)


def ref_member(ens: EnsembleMLP, x, idx):
    h = torch.relu(x @ ens.w1[idx] + ens.b1[idx])
    out = h @ ens.w2[idx] + ens.b2[idx]
    mu, lv = out.split(ens.out_dim, dim=-1)
    return mu, ref_bound(lv, ens.logvar_min, ens.logvar_max)


def ref_total(blk, al, ep):
    v = {"both": al + ep, "aleatoric": al, "epistemic": ep}[blk.mode]
    return v + blk.var_floor


def ref_block(blk: UncertaintyBlock, x, idx=None):
    """(mu, var, aleatoric, epistemic, members_mu) of one view; stage A when idx is given."""
    if idx is not None:
        mu, lv = ref_member(blk.ensemble, x, idx)
        al = lv.exp()
        ep = torch.zeros_like(al)
        return mu, ref_total(blk, al, ep), al, ep, None
    mus, lvs = ref_ensemble(blk.ensemble, x)
    mu = mus.mean(0)
    al = lvs.exp().mean(0)
    ep = (mus - mu).square().mean(0)
    return mu, ref_total(blk, al, ep), al, ep, mus


def ref_fusion(fu: UncertaintyFusion, views: dict, single: bool):
    """Reference fusion of materialised views; stage A draws the members from the global RNG in view
    order, like the module."""
    names = list(fu.view_dims)
    if fu.fusion == "concat":
        return fu.concat_mlp(torch.cat([views[n] for n in names], dim=-1)), None, {}
    ests = {}
    for n in names:
        blk = fu.blocks[n]
        idx = int(torch.randint(blk.members, (1,)).item()) if single else None
        ests[n] = ref_block(blk, views[n], idx)
    mus = torch.stack([ests[n][0] for n in names])
    if fu.fusion == "uniform":
        return uniform_fusion(mus), None, ests
    if fu.fusion == "diagonal":
        mu, var, _ = diagonal_fusion(mus, torch.stack([ests[n][1] for n in names]))
        return mu, var, ests
    covs = []
    for n in names:
        mu_v, var_v, al_v, ep_v, mem = ests[n]
        if mem is None or fu.uncertainty == "aleatoric":
            covs.append(torch.diag_embed(var_v))
        else:
            t, d = mem.shape[0], mem.shape[-1]
            dev = (mem - mu_v.unsqueeze(0)).reshape(t, -1, d)
            cov = (torch.einsum("tmd,tme->mde", dev, dev) / t).reshape(*mu_v.shape, d)
            covs.append(cov + torch.diag_embed(var_v - ep_v))
    mu, cov, _ = full_cov_fusion(mus, torch.stack(covs))
    return mu, cov.diagonal(dim1=-2, dim2=-1), ests


def ref_plane_field(pf: PlaneField, xyz):
    p = pf.normalize(xyz.to(pf.grids[0].dtype)).reshape(-1, 3)
    grid = p[:, pf._axes].permute(1, 0, 2).unsqueeze(1)
    out = []
    for g in pf.grids:
        s = F.grid_sample(g, grid, mode="bilinear", padding_mode="border", align_corners=True)
        out.append(s.prod(dim=0).squeeze(1).transpose(0, 1))
    return out


def ref_emotion_field(ef: EmotionField, xyz, e):
    planes = ref_plane_field(ef.planes, xyz)
    q = ef.query(e)
    codes = [torch.softmax(q @ k.t() / ef.channels ** 0.5, dim=-1) @ k for k in ef.codebooks]
    return torch.cat([c[:, None, :] * p[None] for c, p in zip(codes, planes)], dim=-1)


def ref_decoder(dec: MultiHeadDecoder, code, h):
    """Plain form: trunk on the materialised [code, H], then every head group's two layers separately."""
    x = torch.cat([code, h.unsqueeze(0).expand(*code.shape[:-2], *h.shape)], dim=-1)
    act = torch.relu if dec.activation == "relu" else F.silu
    z = dec.trunk(x)
    outs, k = {}, dec.hidden
    for gi, grp in enumerate(dec.groups):
        u = act(z @ dec.hidden_w[gi * k:(gi + 1) * k].t() + dec.hidden_b[gi * k:(gi + 1) * k])
        y = u @ dec.out_w[gi].t() + dec.out_b[gi]
        outs.update(zip(grp, torch.split(y, [{"xyz": 3, "rot": 4, "scale": 3, "opacity": 1, "color": 3}[n]
                                             for n in grp], dim=-1)))
    outs = {n: outs[n] for n in dec.head_names}
    if "xyz" in outs:
        outs["xyz"] = outs["xyz"] * dec.xyz_scale
    return outs


def ref_std(norm, x):
    """RunningStandardize with its current (stored) statistics, no update: identity before the first update."""
    if int(norm.updates) == 0:
        return x
    floor = norm.eps * (norm.var + norm.mean.square()).mean() + torch.finfo(norm.var.dtype).tiny
    return (x - norm.mean) / torch.sqrt(norm.var + floor)


def ref_network(net: DeformationNetwork, xyz, audio=None, blink=None, content=None, style=None, emotion=None,
                step=None, single_member=None):
    """(deltas dict, fused mu, fused var, estimates) of the reference network (standardisations with the
    statistics the network holds now — call it after the network's own forward, which updates them)."""
    n = xyz.shape[0]
    h = ref_std(net.h_norm, torch.cat(ref_plane_field(net.position_field, xyz.detach() if net.detach_xyz else xyz),
                                      dim=-1))
    views = {}
    if "audio" in net.views:
        a = ref_std(net.input_norms["audio"], net.audio_view(audio, blink, h))  # the plain AudioView path
        views["audio"] = torch.cat([a, h.unsqueeze(0).expand(a.shape[0], -1, -1)], dim=-1)
    for name, f in (("content", content), ("style", style)):
        if name in net.views:
            f = ref_std(net.input_norms[name], f)
            views[name] = torch.cat([f.unsqueeze(1).expand(-1, n, -1), h.unsqueeze(0).expand(f.shape[0], -1, -1)],
                                    dim=-1)
    if "emotion" in net.views:
        e = ref_std(net.input_norms["emotion"], emotion)
        views["emotion"] = torch.cat([e, h.unsqueeze(0).expand(e.shape[0], -1, -1)], -1) if net.emotion_position else e
    single = net.fusion.is_single_member(step, single_member)
    mu, var, ests = ref_fusion(net.fusion, views, single)
    return ref_decoder(net.decoder, ref_std(net.code_norm, mu), h), mu, var, ests


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

SMALL = dict(field_resolution=8, field_scales=(1, 2, 4), field_channels=8, members=4, hidden=16, code_dim=8)


def net_inputs(b=1, n=37, c=11, seed=0, dtype=torch.float64, emotion_dim=24):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return dict(xyz=(torch.rand(n, 3, generator=g) * 2.2 - 1.1).to(dtype), audio=r(b, 8, 16, c),
                blink=torch.rand(b, generator=g).to(dtype), content=r(b, 64), style=r(b, 64),
                emotion=r(b, n, emotion_dim))


def make_net(cls=DeformationNetwork, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    args = {**SMALL, **kw}
    if cls is DeformationNetwork:
        args.setdefault("emotion_dim", 24)
        args.setdefault("extra_heads", ("opacity", "color"))
    net = cls(11, **args).to(dtype)
    with torch.no_grad():  # non-trivial decoder outputs (the near-zero init would hide errors)
        for p in net.decoder.parameters():
            p.normal_(0, 0.3)
        # non-trivial stored statistics (identity before the first update would hide errors)
        g = torch.Generator().manual_seed(seed + 1)
        for m in net.modules():
            if isinstance(m, RunningStandardize):
                m.mean.copy_(torch.randn(m.num_channels, generator=g).to(m.mean))
                m.var.copy_((torch.rand(m.num_channels, generator=g) + 0.5).to(m.var))
                m.updates.fill_(3)
    return net


def grads(module):
    return {k: (p.grad.clone() if p.grad is not None else None) for k, p in module.named_parameters()}


def assert_grads_close(ga, gb, **tol):
    assert ga.keys() == gb.keys()
    for k in ga:
        if ga[k] is None or gb[k] is None:
            assert ga[k] is None and gb[k] is None, k
        else:
            torch.testing.assert_close(ga[k], gb[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


def loss_of(deltas: dict, mu, var, seed=1):
    g = torch.Generator().manual_seed(seed)
    total = sum((v * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum() for v in deltas.values())
    total = total + (mu * torch.randn(mu.shape, generator=g, dtype=mu.dtype)).sum()
    if var is not None:
        total = total + (var.log() * torch.randn(var.shape, generator=g, dtype=var.dtype)).sum()
    return total


# --------------------------------------------------------------------------------------------------
# ensemble statistics and decomposed first layer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [5, 1024])
@pytest.mark.parametrize("which", ["mu", "al", "ep", "all"])
def test_fused_stats_equal_reference_values_and_gradients(chunk, which):
    torch.manual_seed(0)
    ens = EnsembleMLP(9, hidden=6, out_dim=4, members=5, logvar_min=-3.0, logvar_max=2.0, chunk_rows=chunk).double()
    x = torch.randn(2, 13, 9, dtype=torch.float64, requires_grad=True)
    mu, al, ep = ens.stats(x)
    mus, lvs = ref_ensemble(ens, x)
    r_mu, r_al, r_ep = mus.mean(0), lvs.exp().mean(0), (mus - mus.mean(0)).square().mean(0)
    for a, b in ((mu, r_mu), (al, r_al), (ep, r_ep)):
        torch.testing.assert_close(a, b, **TIGHT)
    w = [torch.randn_like(mu) for _ in range(3)]
    sel = {"mu": (0,), "al": (1,), "ep": (2,), "all": (0, 1, 2)}[which]
    fast = sum((o * w[i]).sum() for i, o in enumerate((mu, al, ep)) if i in sel)
    ref = sum((o * w[i]).sum() for i, o in enumerate((r_mu, r_al, r_ep)) if i in sel)
    params = [x, *ens.parameters()]
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("bounds", [(-10.0, 4.0), (-80.0, 40.0)])
def test_fused_stats_log_variance_bounds(bounds):
    """Default and very wide log-variance bounds (the σ² factorisation falls back to the plain form)."""
    torch.manual_seed(0)
    ens = EnsembleMLP(6, hidden=8, out_dim=3, members=4, logvar_min=bounds[0], logvar_max=bounds[1]).double()
    with torch.no_grad():
        ens.w2.mul_(30.0)  # log-variances across the whole range
    x = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    mus, lvs = ref_ensemble(ens, x)
    al = ens.stats(x)[1]
    torch.testing.assert_close(al, lvs.exp().mean(0), **TIGHT)
    g = torch.randn_like(al)
    torch.testing.assert_close(torch.autograd.grad((al * g).sum(), ens.w2)[0],
                               torch.autograd.grad((lvs.exp().mean(0) * g).sum(), ens.w2)[0], **TIGHT)


def test_fused_stats_gradcheck():
    torch.manual_seed(0)
    ens = EnsembleMLP(3, hidden=4, out_dim=2, members=3, chunk_rows=2).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w1, b1, w2, b2: ens.stats(x), (x, *ens.parameters()))


def test_fused_stats_without_autograd_and_float32():
    torch.manual_seed(0)
    ens = EnsembleMLP(40, hidden=64, out_dim=48, members=10, chunk_rows=64)
    x = torch.randn(1, 300, 40)
    mus, lvs = ref_ensemble(ens, x)
    with torch.no_grad():
        mu, al, ep = ens.stats(x)
    torch.testing.assert_close(mu, mus.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(al, lvs.exp().mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ep, (mus - mus.mean(0)).square().mean(0), rtol=1e-4, atol=1e-6)


def test_identical_members_give_zero_epistemic_on_the_fused_path():
    blk = UncertaintyBlock(8, hidden=16, out_dim=4, members=6).double().eval()
    with torch.no_grad():
        for p in blk.ensemble.parameters():
            p.copy_(p[:1].expand_as(p))
    est = blk(torch.randn(3, 5, 8, dtype=torch.float64), need_members=False)
    assert est.members_mu is None
    assert float(est.epistemic.detach().abs().max()) < 1e-12


def view_cases(b, n=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return {
        "frame+shared": [("frame", r(b, 5)), ("shared", r(n, 7))],
        "full+shared": [("full", r(b, n, 5)), ("shared", r(n, 7))],
        "shared+frame+full": [("shared", r(n, 3)), ("frame", r(b, 4)), ("full", r(b, n, 5))],
    }


@pytest.mark.parametrize("b,chunk", [(1, 4), (3, 4), (5, 25), (4, 64)])
@pytest.mark.parametrize("case", ["frame+shared", "full+shared", "shared+frame+full"])
def test_view_input_equals_the_materialised_view(b, chunk, case):
    """chunk 4: blocks of Gaussians within a frame; 25 and 64 (> N = 11): blocks of 2 (5 frames → 2, 2, 1)
    and 5 (4 frames → one block) whole frames, as for the landmark term's few anchors on many frames."""
    torch.manual_seed(0)
    segs = view_cases(b)[case]
    for _, t in segs:
        t.requires_grad_(True)
    vi = ViewInput(segs)
    x = vi.materialize()
    assert tuple(vi.shape) == tuple(x.shape) == (b, 11, 12)
    ens = EnsembleMLP(12, hidden=6, out_dim=4, members=5, chunk_rows=chunk).double()
    # all members, pre-activations and outputs
    torch.testing.assert_close(ens.pre_activation(vi), ens.pre_activation(x), **TIGHT)
    for a, r in zip(ens(vi), ref_ensemble(ens, x)):
        torch.testing.assert_close(a, r, **TIGHT)
    # one member (stage A)
    for a, r in zip(ens.forward_member(vi, 3), ref_member(ens, x, 3)):
        torch.testing.assert_close(a, r, **TIGHT)
    # fused statistics + gradients of the segments and the parameters
    mu, al, ep = ens.stats(vi)
    mus, lvs = ref_ensemble(ens, x)
    ref = (mus.mean(0), lvs.exp().mean(0), (mus - mus.mean(0)).square().mean(0))
    w = [torch.randn_like(mu) for _ in range(3)]
    params = [t for _, t in segs] + list(ens.parameters())
    ga = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip((mu, al, ep), w)), params)
    gb = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(ref, w)), params)
    for a, r in zip((mu, al, ep), ref):
        torch.testing.assert_close(a, r, **TIGHT)
    for a, r in zip(ga, gb):
        torch.testing.assert_close(a, r, **TIGHT)
    # with autograd and a (differentiable) precomputed shared part
    v3 = ViewInput(segs, pre=ens.shared_pre(vi))
    out3 = ens.stats(v3)
    ga3 = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(out3, w)), params)
    for a, r in zip(out3, ref):
        torch.testing.assert_close(a, r, **TIGHT)
    for a, r in zip(ga3, gb):
        torch.testing.assert_close(a, r, **TIGHT)
    # without autograd: blocked evaluation, with and without the precomputed shared part
    with torch.no_grad():
        for pre in (None, ens.shared_pre(vi)):
            v2 = ViewInput(segs, pre=pre)
            for a, r in zip(ens.stats(v2), ref):
                torch.testing.assert_close(a, r, **TIGHT)
            torch.testing.assert_close(ens.pre_activation(v2), ens.pre_activation(x), **TIGHT)
            torch.testing.assert_close(ens.forward_member(v2, 2)[0], ref_member(ens, x, 2)[0], **TIGHT)


def test_view_input_rejects_bad_segments():
    with pytest.raises(ValueError):
        ViewInput([("frame", torch.randn(2, 3))])  # no Gaussian segment
    with pytest.raises(ValueError):
        ViewInput([("frame", torch.randn(2, 3)), ("full", torch.randn(3, 5, 2))])  # batch mismatch
    with pytest.raises(ValueError):
        ViewInput([("shared", torch.randn(4, 3)), ("full", torch.randn(1, 5, 2))])  # N mismatch
    with pytest.raises(ValueError):
        ViewInput([("pose", torch.randn(4, 3))])


def test_bound_logvar_is_the_tanh_form():
    from ua3dtalk.models.deformation import bound_logvar

    x = torch.linspace(-40, 40, 2001, dtype=torch.float64)
    torch.testing.assert_close(bound_logvar(x, -10.0, 4.0), ref_bound(x, -10.0, 4.0), rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------------------
# fields, decoder
# --------------------------------------------------------------------------------------------------


def test_plane_sampler_backward_equals_grid_sample():
    torch.manual_seed(0)
    for shape in ((3, 4, 5, 7), (3, 16, 32, 32), (2, 3, 9, 9)):
        g = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        grid = torch.rand(shape[0], 1, 60, 2, dtype=torch.float64) * 2.4 - 1.2  # border clipping too
        grid[0, 0, :4] = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])  # corners
        a = sample_planes(g, grid)
        b = F.grid_sample(g, grid, mode="bilinear", padding_mode="border", align_corners=True)
        assert torch.equal(a, b)
        go = torch.randn_like(a)
        torch.testing.assert_close(torch.autograd.grad(a, g, go)[0], torch.autograd.grad(b, g, go)[0], **TIGHT)


def test_plane_field_equals_reference():
    torch.manual_seed(0)
    pf = PlaneField(resolution=6, scales=(1, 3), channels=5).double()
    xyz = torch.rand(40, 3, dtype=torch.float64) * 2.4 - 1.2
    a, b = pf.per_scale(xyz), ref_plane_field(pf, xyz)
    w = [torch.randn_like(t) for t in a]
    ga = torch.autograd.grad(sum((t * wi).sum() for t, wi in zip(a, w)), list(pf.parameters()))
    gb = torch.autograd.grad(sum((t * wi).sum() for t, wi in zip(b, w)), list(pf.parameters()))
    for x, y in zip(a + list(ga), b + list(gb)):
        torch.testing.assert_close(x, y, **TIGHT)
    # gradient with respect to the points (not detached) still flows, through grid_sample
    xyz.requires_grad_(True)
    (sum(t.sum() for t in pf.per_scale(xyz))).backward()
    assert xyz.grad is not None and bool(xyz.grad.abs().sum() > 0)


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("b", [1, 2])
def test_decoder_by_parts_equals_concatenation(single, b):
    torch.manual_seed(0)
    dec = MultiHeadDecoder(8 + 6, hidden=10, extra_heads=("opacity", "color"), single=single).double()
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.5)
    code = torch.randn(b, 9, 8, dtype=torch.float64, requires_grad=True)
    h = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    fast, ref = dec(code, h).as_dict(), ref_decoder(dec, code, h)
    assert fast.keys() == ref.keys()
    w = {k: torch.randn_like(v) for k, v in fast.items()}
    params = [code, h, *dec.parameters()]
    ga = torch.autograd.grad(sum((fast[k] * w[k]).sum() for k in w), params)
    gb = torch.autograd.grad(sum((ref[k] * w[k]).sum() for k in w), params)
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], **TIGHT)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, **TIGHT)
    with torch.no_grad():  # precomputed H part
        torch.testing.assert_close(dec(code, h, h_pre=dec.h_pre(h)).rot, ref["rot"], **TIGHT)


# --------------------------------------------------------------------------------------------------
# full networks: training (values + every gradient) and inference (cache)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["diagonal", "full_cov", "uniform", "concat"])
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("stage", ["A", "B"])
def test_network_training_step_equals_reference(fusion, b, stage):
    net = make_net(fusion=fusion, ensemble_switch=10).train()
    inp = net_inputs(b=b)
    step = 3 if stage == "A" else 10
    torch.manual_seed(123)  # the same member draws in stage A
    out = net(**inp, step=step)
    fast_loss = loss_of(out.deltas.as_dict(), out.fusion.mu, out.fusion.var)
    fast_loss.backward()
    g_fast = grads(net)
    net.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    d_ref, mu_ref, var_ref, ests = ref_network(net, **inp, step=step)
    loss_of(d_ref, mu_ref, var_ref).backward()
    g_ref = grads(net)
    for k, v in d_ref.items():
        torch.testing.assert_close(out.deltas.as_dict()[k], v, **TIGHT)
    torch.testing.assert_close(out.fusion.mu, mu_ref, **TIGHT)
    if var_ref is not None:
        torch.testing.assert_close(out.fusion.var, var_ref, **TIGHT)
    for name, (mu_v, var_v, al_v, ep_v, _) in ests.items():
        e = out.fusion.estimates[name]
        for a, r in ((e.mu, mu_v), (e.var, var_v), (e.aleatoric, al_v), (e.epistemic, ep_v)):
            torch.testing.assert_close(a, r, **TIGHT)
    assert_grads_close(g_fast, g_ref, **TIGHT)


def test_mouth_network_equals_reference():
    net = make_net(MouthDeformation, ensemble_switch=0).train()
    inp = net_inputs(b=2)
    out = net(inp["xyz"], audio=inp["audio"], content=inp["content"], step=5)
    loss_of(out.deltas.as_dict(), out.fusion.mu, out.fusion.var).backward()
    g_fast = grads(net)
    net.zero_grad(set_to_none=True)
    d_ref, mu_ref, var_ref, _ = ref_network(net, inp["xyz"], audio=inp["audio"], content=inp["content"], step=5)
    loss_of(d_ref, mu_ref, var_ref).backward()
    torch.testing.assert_close(out.deltas.xyz, d_ref["xyz"], **TIGHT)
    assert_grads_close(g_fast, grads(net), **TIGHT)


def test_network_float32_equals_reference():
    """Default sizes (H = 64, T = 10, D = 48) in float32: equal to float tolerance."""
    torch.manual_seed(0)
    net = DeformationNetwork(11, field_resolution=8, ensemble_switch=0).train()
    inp = net_inputs(b=1, n=300, dtype=torch.float32, emotion_dim=192)
    out = net(**inp, step=1)
    loss_of(out.deltas.as_dict(), out.fusion.mu, out.fusion.var).backward()
    g_fast = grads(net)
    net.zero_grad(set_to_none=True)
    d_ref, mu_ref, var_ref, _ = ref_network(net, **inp, step=1)
    loss_of(d_ref, mu_ref, var_ref).backward()
    for k, v in d_ref.items():
        torch.testing.assert_close(out.deltas.as_dict()[k], v, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.fusion.mu, mu_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.fusion.var, var_ref, rtol=1e-4, atol=1e-6)
    g_ref = grads(net)
    for k in g_fast:
        scale = float(g_ref[k].abs().max()) + 1e-12
        assert float((g_fast[k] - g_ref[k]).abs().max()) <= 1e-4 * scale, k


@pytest.mark.parametrize("fusion", ["diagonal", "full_cov"])
def test_inference_cache_equals_uncached_and_reference(fusion):
    net = make_net(fusion=fusion).eval()
    inp = net_inputs(b=2)
    with torch.no_grad():
        d_ref, mu_ref, var_ref, _ = ref_network(net, **inp)
        net.cache_enabled = False
        plain = net(**inp)
        assert net._infer_cache is None
        net.cache_enabled = True
        first = net(**inp)
        cache = net._infer_cache
        assert cache is not None
        second = net(**{**inp, "content": inp["content"] * 2})  # a new frame: cache reused
        assert net._infer_cache is cache
        net.cache_enabled = False
        second_plain = net(**{**inp, "content": inp["content"] * 2})
    for out in (plain, first):
        for k, v in d_ref.items():
            torch.testing.assert_close(out.deltas.as_dict()[k], v, **TIGHT)
        torch.testing.assert_close(out.fusion.mu, mu_ref, **TIGHT)
        torch.testing.assert_close(out.fusion.var, var_ref, **TIGHT)
    for k, v in second_plain.deltas.as_dict().items():
        torch.testing.assert_close(second.deltas.as_dict()[k], v, **TIGHT)


def test_inference_cache_is_invalidated_by_changes():
    net = make_net().eval()
    inp = net_inputs(b=1)
    xyz = inp["xyz"].clone()

    def fresh(**kw):
        args = {**inp, **kw}
        net.cache_enabled = False
        with torch.no_grad():
            ref = net(**args).deltas.rot
        net.cache_enabled = True
        with torch.no_grad():
            out = net(**args).deltas.rot
        torch.testing.assert_close(out, ref, **TIGHT)
        return out

    base = fresh(xyz=xyz)
    # an optimizer step changes every parameter in place (version counters)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.zero_grad()
    net.train()
    out = net(**{**inp, "xyz": xyz}, step=10**6)
    out.deltas.rot.sum().backward()
    net.eval()
    with torch.no_grad():
        net(**{**inp, "xyz": xyz})  # build a cache, then step
    opt.step()
    after_step = fresh(xyz=xyz)
    assert not torch.allclose(after_step, base)
    # only the position field / only one ensemble / the decoder / a buffer (bounds) changes
    for mod in (net.position_field.grids[0], net.fusion.blocks["content"].ensemble.w1, net.decoder.trunk[0].bias):
        with torch.no_grad():
            net(**{**inp, "xyz": xyz})
            mod.add_(0.05)
        fresh(xyz=xyz)
    with torch.no_grad():
        net(**{**inp, "xyz": xyz})
    net.position_field.set_bounds([-1.2] * 3, [1.1] * 3)
    fresh(xyz=xyz)
    # the Gaussians move in place / are replaced (densification)
    with torch.no_grad():
        net(**{**inp, "xyz": xyz})
        xyz.add_(0.01)
    fresh(xyz=xyz)
    fresh(xyz=xyz.clone() * 0.9)
    # train() drops the cache; gradient-enabled calls never use it
    with torch.no_grad():
        net(**{**inp, "xyz": xyz})
    assert net._infer_cache is not None
    net.train()
    assert net._infer_cache is None
    net.eval()
    with torch.no_grad():
        net(**{**inp, "xyz": xyz})
    out = net(**{**inp, "xyz": xyz})
    assert out.deltas.rot.requires_grad and out.h.requires_grad
    # a checkpoint load (in-place copies) invalidates too
    other = make_net(seed=7).eval()
    with torch.no_grad():
        net(**{**inp, "xyz": xyz})
    net.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(**{**inp, "xyz": xyz}).deltas.rot, other(**{**inp, "xyz": xyz}).deltas.rot,
                                   **TIGHT)


def test_precompute_and_stage_a_with_cache():
    net = make_net(ensemble_switch=100).eval()
    inp = net_inputs(b=1)
    cache = net.precompute(inp["xyz"])
    assert set(cache["pre"]) == {"audio", "content", "style"}
    assert cache["h"].shape == (inp["xyz"].shape[0], net.h_dim)
    with torch.no_grad():
        torch.manual_seed(5)
        out = net(**inp, single_member=True)
        net.cache_enabled = False
        torch.manual_seed(5)
        ref = net(**inp, single_member=True)
    assert [e.member for e in out.fusion.estimates.values()] == [e.member for e in ref.fusion.estimates.values()]
    torch.testing.assert_close(out.deltas.xyz, ref.deltas.xyz, **TIGHT)


def test_cache_is_not_copied_or_pickled():
    net = make_net().eval()
    inp = net_inputs(b=1)
    with torch.no_grad():
        net(**inp)
    assert net._infer_cache is not None
    assert copy.deepcopy(net)._infer_cache is None
    assert pickle.loads(pickle.dumps(net))._infer_cache is None


def test_state_dict_layout_is_unchanged():
    net = DeformationNetwork(29, members=3)
    sd = net.state_dict()
    for v, d in net.view_dims.items():
        p = f"fusion.blocks.{v}.ensemble."
        assert sd[p + "w1"].shape == (3, d, 64) and sd[p + "b1"].shape == (3, 64)
        assert sd[p + "w2"].shape == (3, 64, 96) and sd[p + "b2"].shape == (3, 96)
    assert {k for k in sd if k.startswith("decoder.")} == {
        "decoder.trunk.0.weight", "decoder.trunk.0.bias", "decoder.hidden_w", "decoder.hidden_b",
        *(f"decoder.out_{x}.{i}" for x in "wb" for i in range(3))}
    assert sd["decoder.hidden_w"].shape == (3 * 64, 64)  # one two-layer head per output
    assert {k for k in sd if "norm" in k} == {f"{p}.{b}" for p in ("h_norm", "code_norm", *(
        f"input_norms.{v}" for v in net.views)) for b in ("mean", "var", "updates")}
    bf = DeformationNetwork(29, members=3, compute_dtype="bfloat16")
    bf.load_state_dict(sd)  # the compute dtype is not part of the state
    assert set(bf.state_dict()) == set(sd)


# --------------------------------------------------------------------------------------------------
# emotion field cache
# --------------------------------------------------------------------------------------------------


def test_emotion_field_equals_reference_and_caches():
    torch.manual_seed(0)
    ef = EmotionField(emotion_dim=12, channels=8, scales=(1, 2), codebook_base=5, resolution=6).double()
    xyz = torch.rand(30, 3, dtype=torch.float64) * 2 - 1
    e = torch.randn(2, 12, dtype=torch.float64)
    out = ef(xyz, e)
    ref = ref_emotion_field(ef, xyz, e)
    torch.testing.assert_close(out, ref, **TIGHT)
    w = torch.randn_like(out)
    ga = torch.autograd.grad((out * w).sum(), list(ef.parameters()))
    gb = torch.autograd.grad((ref * w).sum(), list(ef.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TIGHT)
    with torch.no_grad():
        torch.testing.assert_close(ef(xyz, e), ref, **TIGHT)
        cache = ef._infer_cache
        assert cache is not None
        torch.testing.assert_close(ef(xyz, e * 3), ref_emotion_field(ef, xyz, e * 3), **TIGHT)
        assert ef._infer_cache is cache  # reused for another emotion
        ef.planes.grids[1].mul_(1.1)  # a parameter changes → recomputed
        torch.testing.assert_close(ef(xyz, e), ref_emotion_field(ef, xyz, e), **TIGHT)
        assert ef._infer_cache is not cache
        xyz.add_(0.02)  # the Gaussians move → recomputed
        torch.testing.assert_close(ef(xyz, e), ref_emotion_field(ef, xyz, e), **TIGHT)
    assert len(ef.precompute(xyz)) == 2
    ef.train()
    assert ef._infer_cache is None


# --------------------------------------------------------------------------------------------------
# bfloat16 compute
# --------------------------------------------------------------------------------------------------


def test_bfloat16_compute_is_close_to_float32_and_trains():
    torch.manual_seed(0)
    net = DeformationNetwork(11, field_resolution=8, ensemble_switch=0, extra_heads=("opacity",)).train()
    with torch.no_grad():
        for p in net.decoder.parameters():
            p.normal_(0, 0.3)
    bf = DeformationNetwork(11, field_resolution=8, ensemble_switch=0, extra_heads=("opacity",),
                            compute_dtype="bfloat16").train()
    bf.load_state_dict(net.state_dict())
    inp = net_inputs(b=1, n=200, dtype=torch.float32, emotion_dim=192)
    a, b = net(**inp, step=1), bf(**inp, step=1)
    assert b.fusion.mu.dtype == torch.float32 and b.fusion.var.dtype == torch.float32
    assert b.deltas.rot.dtype == torch.float32
    rel = lambda x, y: float((x - y).detach().norm() / y.detach().norm())  # noqa: E731
    assert rel(b.fusion.mu, a.fusion.mu) < 2e-2
    assert rel(b.fusion.var, a.fusion.var) < 2e-2
    assert rel(b.deltas.rot, a.deltas.rot) < 2e-2
    for out, m in ((a, net), (b, bf)):
        loss_of(out.deltas.as_dict(), out.fusion.mu, out.fusion.var).backward()
    for (k, p), q in zip(bf.named_parameters(), net.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all()), k
        cos = float(F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0))
        assert cos > 0.97, (k, cos)
    bf.eval()
    net.eval()
    with torch.no_grad():
        assert rel(bf(**inp).fusion.mu, net(**inp).fusion.mu) < 2e-2
    with pytest.raises(ValueError):
        DeformationNetwork(11, compute_dtype="float16")


def test_compute_dtype_auto_resolves_by_device_and_hardware():
    from ua3dtalk.models.deformation.ensemble import EnsembleMLP, fast_bfloat16_matmul, resolve_compute_dtype

    want = "bfloat16" if fast_bfloat16_matmul("cpu") else "float32"
    assert resolve_compute_dtype("auto", "cpu") == want
    assert resolve_compute_dtype("auto", "meta") == "float32"  # only CPUs with fast bf16 matmuls switch
    assert resolve_compute_dtype("float32", "cpu") == "float32"
    assert resolve_compute_dtype("bfloat16", "meta") == "bfloat16"
    with pytest.raises(ValueError, match="compute_dtype"):
        resolve_compute_dtype("fp8")
    ens = EnsembleMLP(7, hidden=4, out_dim=3, members=2, compute_dtype="auto")
    assert ens._cdtype == (torch.bfloat16 if want == "bfloat16" else None)
    assert EnsembleMLP(7, hidden=4, out_dim=3, members=2, compute_dtype="auto").to("meta")._cdtype is None


@pytest.mark.parametrize("emotion_position", [False, True])
def test_inference_mode_equals_no_grad(emotion_position):
    """Under ``torch.inference_mode()`` (Lightning's validation and ``trainer.validate``) the network gives what
    it gives under ``no_grad``: the fused statistics kernel must not record autograd in its worker threads
    (they do not inherit the calling thread's grad mode; an op there on a weight that requires grad failed
    with "Inference tensors cannot be saved for backward" — the emotion view, a plain tensor, hit it)."""
    net = DeformationNetwork(11, field_resolution=8, field_scales=(1, 2), members=4, emotion_dim=24,
                             emotion_position=emotion_position, compute_dtype="auto").eval()
    inp = net_inputs(b=1, n=2100, dtype=torch.float32)
    with torch.no_grad():
        ref = net(**inp).deltas.as_dict()
    net.clear_cache()
    with torch.inference_mode():
        got = net(**inp).deltas.as_dict()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])


@pytest.mark.parametrize("b,chunk", [(3, 4), (3, 64)])
def test_fused_stats_of_a_view_without_gaussians(b, chunk):
    """No Gaussians (e.g. a branch pruned to nothing): empty statistics and zero gradients, not an error."""
    ens = EnsembleMLP(12, hidden=6, out_dim=4, members=5, chunk_rows=chunk).double()
    segs = [("frame", torch.randn(b, 5, dtype=torch.float64, requires_grad=True)),
            ("shared", torch.randn(0, 7, dtype=torch.float64, requires_grad=True))]
    mu, al, ep = ens.stats(ViewInput(segs))
    assert mu.shape == al.shape == ep.shape == (b, 0, 4)
    grads = torch.autograd.grad((mu.sum() + al.sum() + ep.sum()), [segs[0][1], ens.w1, ens.w2], allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads)
