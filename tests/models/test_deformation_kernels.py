"""The deformation's C++ kernel (models/deformation/csrc/ensemble_stats.cpp) against its plain-PyTorch
reference (models/deformation/kernels.py), pairwise, and through EnsembleMLP.stats."""
from __future__ import annotations

import math

import pytest
import torch

from ua3dtalk.models.deformation import kernels as K

pytestmark = pytest.mark.skipif(not K.KERNEL.available(), reason="the deformation kernel cannot be built here")


def _outs(rows, d):
    return [torch.empty(rows, d) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 37, 7), (10, 300, 16)])
def test_ensemble_stats_kernel_equals_reference(dtype, shape):
    t, n, d = shape
    g = torch.Generator().manual_seed(t * 1000 + n)
    y = (3 * torch.randn(t, n, 2 * d, generator=g)).to(dtype)
    b = torch.randn(t, 2 * d, generator=g)
    b[:, d:] += torch.linspace(-40, 40, t)[:, None]  # sigmoid saturated both ways
    span, c = 6.0, -4.0
    mu, al, ep = _outs(n, d)
    K.KERNEL.load().ensemble_stats(y, b, span, c, mu, al, ep)
    ref = K.ensemble_stats_reference(y, b, span, c)
    for name, o, r in zip(("mu", "al", "ep"), (mu, al, ep), ref):
        assert o.dtype == torch.float32 and o.shape == (n, d), name
        torch.testing.assert_close(o, r, rtol=2e-5, atol=2e-5, msg=name)


def test_reference_is_the_documented_formula():
    """The reference itself, on numbers worked by hand: two members, one output."""
    y = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])  # μ = 1, 3; u = 0 → sigmoid 0.5
    b = torch.zeros(2, 2)
    mu, al, ep = K.ensemble_stats_reference(y, b, 2.0, 0.0)
    assert float(mu) == 4.0 and float(ep) == 2.0  # (1−2)² + (3−2)²
    assert float(al) == pytest.approx(2 * math.e, rel=1e-6)  # exp(2·0.5 + 0) per member


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("parts", ["x", "x+rows", "pre", "pre+rows", "x+pre+rows", "rows-only-frame-x"])
def test_ensemble_view_stats_kernel_equals_reference(dtype, parts):
    t, hid, d, k, batch, n, chunk = 4, 8, 5, 6, 2, 77, 32  # partial last block (77 = 2·32 + 13)
    g = torch.Generator().manual_seed(len(parts))
    x = w = pre = rows = None
    if "x" in parts:
        x = torch.randn(batch if "frame-x" in parts else 1, n, k, generator=g).to(dtype)
        w = (0.5 * torch.randn(k, t * hid, generator=g)).to(dtype)
    if "pre" in parts:
        pre = torch.randn(n, t * hid, generator=g)
    if "rows" in parts:
        rows = torch.randn(batch, t * hid, generator=g)
    w2c = (0.3 * torch.randn(t, hid, 2 * d, generator=g)).to(dtype)
    b = torch.randn(t, 2 * d, generator=g)
    mu, al, ep = _outs(batch * n, d)
    none = w2c.new_empty(0)
    opt = lambda v: none if v is None else v  # noqa: E731
    K.KERNEL.load().ensemble_view_stats(opt(x), opt(w), opt(pre), opt(rows), w2c, b, 3.0, -1.0, chunk, batch,
                                           n, mu, al, ep)
    ref = K.ensemble_view_stats_reference(x, w, pre, rows, w2c, b, 3.0, -1.0, batch, n)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for name, o, r in zip(("mu", "al", "ep"), (mu, al, ep), ref):
        torch.testing.assert_close(o, r, **tol, msg=name)


def test_kernel_results_do_not_depend_on_the_blocking_beyond_rounding():
    """(the small GEMMs of a block may round differently for another block height)"""
    t, hid, d, k, n = 3, 4, 2, 5, 50
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, n, k, generator=g), torch.randn(k, t * hid, generator=g)
    w2c, b = torch.randn(t, hid, 2 * d, generator=g), torch.randn(t, 2 * d, generator=g)
    none = w2c.new_empty(0)
    res = []
    for chunk in (1, 7, 50, 1000):
        outs = _outs(n, d)
        K.KERNEL.load().ensemble_view_stats(x, w, none, none, w2c, b, 1.0, 0.0, chunk, 1, n, *outs)
        res.append(outs)
    for other in res[1:]:
        for a, o in zip(res[0], other):
            torch.testing.assert_close(a, o, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_fused_statistics_kernel_matches_the_torch_path(compute_dtype, monkeypatch):
    """EnsembleMLP.stats without autograd (kernel) equals the torch code of fused_stats._stats_block:
    odd sizes, a partial last block, saturated log-variances of both signs; with autograd the torch
    path runs and gives the same values."""
    from ua3dtalk.models.deformation import fused_stats as E
    from ua3dtalk.models.deformation.ensemble import EnsembleMLP

    torch.manual_seed(0)
    ens = EnsembleMLP(13, hidden=24, out_dim=7, members=5, compute_dtype=compute_dtype, chunk_rows=64)
    with torch.no_grad():
        ens.b2[:, 7:] += torch.tensor([-40.0, -3.0, 0.0, 3.0, 40.0])[:, None]
    x = torch.randn(2, 301, 13)
    calls = []
    real = E._fused_stats_kernel

    def spy(z, head):
        ext = real(z, head)
        calls.append(ext is not None)
        return ext
    monkeypatch.setattr(E, "_fused_stats_kernel", spy)
    with torch.no_grad():
        monkeypatch.setattr(E, "FUSED_STATS", False)
        ref = ens.stats(x)
        monkeypatch.setattr(E, "FUSED_STATS", True)
        out = ens.stats(x)
    assert calls and calls[-1] is True  # the kernel ran
    for r, o in zip(ref, out):
        assert o.shape == r.shape and o.dtype == torch.float32
        torch.testing.assert_close(o, r, rtol=2e-5, atol=1e-6)
    calls.clear()
    x.requires_grad_(True)
    grad_path = ens.stats(x)
    assert not any(calls)
    for r, o in zip(grad_path, out):
        torch.testing.assert_close(o, r.detach(), rtol=2e-5, atol=1e-6)


def test_kernel_checks_its_arguments():
    ext = K.KERNEL.load()
    y, b = torch.zeros(3, 4, 6), torch.zeros(3, 6)
    outs = [torch.zeros(4, 3) for _ in range(3)]
    ext.ensemble_stats(y, b, 1.0, 0.0, *outs)
    with pytest.raises(RuntimeError, match="b must be float32"):
        ext.ensemble_stats(y, torch.zeros(3, 5), 1.0, 0.0, *outs)
    with pytest.raises(RuntimeError, match="outputs must be contiguous"):
        ext.ensemble_stats(y, b, 1.0, 0.0, torch.zeros(3, 4).t(), *outs[1:])
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ext.ensemble_stats(y.double(), b, 1.0, 0.0, *outs)


def test_a_kernel_that_cannot_be_built_falls_back_with_one_warning(monkeypatch):
    import warnings

    import torch.utils.cpp_extension as cpp

    from ua3dtalk.models.deformation import fused_stats as E
    from ua3dtalk.models.deformation.ensemble import EnsembleMLP

    def boom(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(K.KERNEL, "_ext", None)
    monkeypatch.setattr(K.KERNEL, "_error", None)
    monkeypatch.setattr(cpp, "load", boom)
    ens = EnsembleMLP(5, hidden=4, out_dim=3, members=2)
    with warnings.catch_warnings(record=True) as rec, torch.no_grad():
        warnings.simplefilter("always")
        a = ens.stats(torch.randn(1, 9, 5))
        b = ens.stats(torch.randn(1, 9, 5))
    msgs = [w for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "deformation" in str(msgs[0].message)
    assert a[0].shape == b[0].shape == (1, 9, 3)
    assert K.KERNEL.status().startswith("unavailable")
    assert E._fused_stats_kernel(torch.zeros(1), E._Head(ens.w2, ens.b2, 2, 3, -1.0, 1.0, None)) is None
