"""The fast path of :class:`~ua3dtalk.models.deformation.ensemble.EnsembleMLP`: fused stage-B member
statistics ``(μ̄, mean σ², var μ)`` computed in cache-resident blocks of Gaussians, with a hand-written
backward and, without autograd, the C++ kernel of the CPU extension (see the docstring of
:mod:`~ua3dtalk.models.deformation.ensemble`, "Fused member statistics"; the plain member-wise formulas of
:meth:`EnsembleMLP.forward` are the reference, ``tests/models/test_deformation_fast.py`` compares them)."""
from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Optional

import torch

from .view_input import ViewInput, ViewLike

if TYPE_CHECKING:
    from .ensemble import EnsembleMLP

Tensor = torch.Tensor

#: Gaussians per block of the fused statistics (the [T, rows, 2·out] block stays in the CPU caches).
CHUNK_ROWS = 1024




class _Workspace(threading.local):
    """Per-thread scratch buffers for the blocked evaluation. Block-sized temporaries (2–8 MB) allocated
    afresh every block are served by ``mmap`` and page-faulted on every use; reusing them is ~2–3×
    faster for the elementwise statistics. Only temporaries live here — never a tensor that is returned
    or saved for backward."""

    def __init__(self) -> None:
        self.bufs: dict = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
        numel = math.prod(shape)
        key = (name, dtype, device)
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.bufs[key] = buf
        return buf[:numel].view(shape)


_WS = _Workspace()


class _Head:
    """The second layer prepared for the blocked statistics. The log-variance columns are pre-scaled,
    ``w2' = w2·k``, ``b2' = (b2 − c)·k`` with ``k = 2/h`` (``c``, ``h`` of :func:`bound_logvar`), so the
    matmul yields ``u = (r − c)·k`` directly and ``lv = lo + (hi − lo)·sigmoid(u)``; gradients found for
    ``w2'``, ``b2'`` are mapped back by :meth:`param_grads`. ``w2c`` is in the compute dtype, ``b2`` in
    the parameters' dtype."""

    def __init__(self, w2: Tensor, b2: Tensor, members: int, out_dim: int, lo: float, hi: float,
                 cdtype: Optional[torch.dtype]) -> None:
        with torch.no_grad():
            c, k = 0.5 * (lo + hi), 4.0 / (hi - lo)
            self.scale = torch.ones(2 * out_dim, dtype=w2.dtype, device=w2.device)
            self.scale[out_dim:] = k
            shift = torch.zeros_like(self.scale)
            shift[out_dim:] = -c * k
            w2s = w2 * self.scale
            self.w2c = w2s if cdtype is None else w2s.to(cdtype)
            self.b2 = torch.addcmul(shift, b2, self.scale)
            # the μ and u halves as separate contiguous matrices: two matmuls give contiguous outputs,
            # on which the elementwise statistics run ~1.5× faster than on strided halves
            self.w2_mu, self.w2_u = self.w2c[..., :out_dim].contiguous(), self.w2c[..., out_dim:].contiguous()
            self.b2_mu, self.b2_u = self.b2[:, None, :out_dim], self.b2[:, None, out_dim:]
        self.members, self.out_dim, self.lo, self.span = members, out_dim, float(lo), float(hi - lo)
        # σ² = e^lo·e^{(hi−lo)t}: the factor e^lo is applied once per output (saves a pass) unless a
        # factor would leave the float range (very wide log-variance bounds)
        self.shift = self.lo if (self.span <= 60.0 and self.lo >= -60.0) else 0.0
        self.factor = math.exp(self.shift)

    def param_grads(self, dw2s: Optional[Tensor], db2s: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        return (None if dw2s is None else dw2s.mul_(self.scale)), (None if db2s is None else db2s.mul_(self.scale))


def _stats_block(z: Tensor, head: _Head, mu_out: Tensor, al_out: Tensor, ep_out: Tensor, keep: bool,
                 owned: bool = False) -> Optional[tuple[Tensor, Tensor]]:
    """Second layer + member statistics of one block of rows.

    ``z [n, T·hidden]`` pre-activations (compute dtype). Writes the member *sums* ``Σ_t μ_t``,
    ``Σ_t σ_t²/f``, ``Σ_t (μ_t − μ̄)²`` into ``mu_out``, ``al_out``, ``ep_out`` ``[n, D]`` (``f =
    head.factor``, normally ``e^lo``; :func:`_finish` divides by ``T`` and applies ``f`` once). With
    ``keep``, returns ``([T, n, D], [T, n, D])`` = ``(μ_t − μ̄, σ_t²·t_t(1 − t_t)/f)`` (``t = sigmoid(u)``,
    ``σ² = e^{lo + (hi−lo)t}``; ``∂σ²/∂u = σ²·(hi − lo)·t(1 − t)``), the local derivatives the backward
    needs (fresh tensors); otherwise ``None``. ``owned``: ``z`` is a temporary that may be overwritten
    (ReLU in place)."""
    n, t_, d = z.shape[0], head.members, head.out_dim
    fdt, dev_ = head.b2.dtype, z.device
    shape = (t_, n, d)
    h = (z.clamp_min_(0) if owned else torch.relu(z)).view(n, t_, -1).transpose(0, 1)  # [T, n, hidden]
    ext = None if keep else _fused_stats_kernel(z, head)
    if ext is not None and all(t.is_contiguous() for t in (mu_out, al_out, ep_out)):
        y = torch.bmm(h, head.w2c, out=_WS.get("mm", (t_, n, 2 * d), h.dtype, dev_))  # [T, n, 2D], no bias
        ext.ensemble_stats(y, head.b2, head.span, head.lo - head.shift, mu_out, al_out, ep_out)
        return None
    mus = torch.empty(shape, dtype=fdt, device=dev_) if keep else _WS.get("mu", shape, fdt, dev_)
    u = torch.empty(shape, dtype=fdt, device=dev_) if keep else _WS.get("u", shape, fdt, dev_)
    if h.dtype == fdt:
        torch.baddbmm(head.b2_mu, h, head.w2_mu, out=mus)  # [T, n, D]
        torch.baddbmm(head.b2_u, h, head.w2_u, out=u)
    else:  # bfloat16 matmul (one, N = 2D); bias added in the parameters' dtype (type promotion: one pass)
        tmp = torch.bmm(h, head.w2c, out=_WS.get("mm", (t_, n, 2 * d), h.dtype, dev_))
        torch.add(head.b2_mu, tmp[..., :d], out=mus)
        torch.add(head.b2_u, tmp[..., d:], out=u)
    torch.sum(mus, dim=0, out=mu_out)
    dev = mus.sub_(mu_out, alpha=1.0 / t_)  # μ_t − μ̄ (in place)
    sq = _WS.get("sq", shape, fdt, dev_)
    torch.sum(torch.mul(dev, dev, out=sq), dim=0, out=ep_out)
    t = u.sigmoid_()  # lv = lo + (hi−lo)·t  (= c + h·tanh((r − c)/h), as bound_logvar)
    s = torch.mul(t, head.span, out=sq)
    if head.shift != head.lo:
        s.add_(head.lo - head.shift)
    s.exp_()  # σ_t² / factor  (the factor is applied once, by _finish)
    torch.sum(s, dim=0, out=al_out)
    if not keep:
        return None
    t.mul_(torch.sub(1.0, t)).mul_(s)  # σ_t²·t(1 − t) / factor  (t is u, in place)
    return dev, t


#: use the C++ kernel (:mod:`.kernels`, ``csrc/ensemble_stats.cpp``) for the statistics of calls without
#: autograd (inference): one pass instead of ~12 elementwise passes. Its references are the torch code of
#: :func:`_stats_block` here and :mod:`.kernels`' ``*_reference`` functions (``tests/models`` compares
#: them). Set to False to force the torch path.
FUSED_STATS = True


def _fused_stats_kernel(z: Tensor, head: _Head):
    """The extension module when the fused statistics kernel applies (CPU, float32 parameters, float32
    or bfloat16 matmuls, kernel built), else None. ``z``: any tensor in the matmul dtype on the device."""
    if not FUSED_STATS or z.device.type != "cpu" or head.b2.dtype != torch.float32 or \
            z.dtype not in (torch.float32, torch.bfloat16) or head.w2c.dtype != z.dtype:
        return None
    from .kernels import KERNEL

    return KERNEL.load() if KERNEL.available() else None


def _grad_out(jac: tuple[Tensor, Tensor], g_mu: Optional[Tensor], g_al: Optional[Tensor], g_ep: Optional[Tensor],
              head: _Head) -> Tensor:
    """Gradient ``[T, n, 2D]`` of the (scaled) second layer's output of one block (rows of ``g_*``
    already sliced): ``∂μ_t = ḡ_μ/T + 2ḡ_ep(μ_t − μ̄)/T``, ``∂u_t = ḡ_al/T · σ_t²(hi − lo)t_t(1 − t_t)``
    (``jac`` from :func:`_stats_block`; the term of ``ḡ_ep`` through ``μ̄`` is ``Σ_t (μ_t − μ̄) = 0``)."""
    d, inv_t = head.out_dim, 1.0 / head.members
    dev, jac_u = jac
    g = _WS.get("g", (*dev.shape[:-1], 2 * d), dev.dtype, dev.device)  # a temporary
    gm, gs = g[..., :d], g[..., d:]
    if g_ep is not None:
        torch.mul(dev, g_ep * (2.0 * inv_t), out=gm)
        if g_mu is not None:
            gm.add_(g_mu, alpha=inv_t)
    elif g_mu is not None:
        gm.copy_((g_mu * inv_t).expand_as(gm))
    else:
        gm.zero_()
    if g_al is not None:
        torch.mul(jac_u, g_al * (inv_t * head.span * head.factor), out=gs)
    else:
        gs.zero_()
    return g


def _accumulate(dst: Tensor, a: Tensor, b: Tensor) -> None:
    """``dst += a @ b`` (batched for 3-d), accumulated in ``dst``'s dtype."""
    if a.dtype == dst.dtype:
        (dst.baddbmm_ if dst.dim() == 3 else dst.addmm_)(a, b)
    else:
        dst.add_((torch.bmm if dst.dim() == 3 else torch.mm)(a, b).to(dst.dtype))


def _finish(head: _Head, mu: Tensor, al: Tensor, ep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Member sums → means (``al`` also takes the factor ``e^lo`` left out by :func:`_stats_block`)."""
    inv_t = 1.0 / head.members
    return mu.mul_(inv_t), al.mul_(inv_t * head.factor), ep.mul_(inv_t)


class _EnsembleStats(torch.autograd.Function):
    """``z [M, T·hidden]`` → ``(μ̄, mean σ², var μ)`` each ``[M, D]`` with a blocked forward and the
    analytic backward (see the module docstring). Used when the pre-activations are given (e.g. a
    precomputed ``ViewInput.pre`` with autograd on); :class:`_EnsembleViewStats` otherwise."""

    @staticmethod
    def forward(ctx, z: Tensor, w2: Tensor, b2: Tensor, members: int, out_dim: int, lo: float, hi: float,
                chunk: int):  # type: ignore[override]
        head = _Head(w2, b2, members, out_dim, lo, hi, None if z.dtype == b2.dtype else z.dtype)
        m = z.shape[0]
        mu = z.new_empty((m, out_dim), dtype=b2.dtype)
        al, ep = torch.empty_like(mu), torch.empty_like(mu)
        keep = any(ctx.needs_input_grad[:3])
        saved = []
        for a in range(0, m, chunk):
            e = min(a + chunk, m)
            saved.append(_stats_block(z[a:e], head, mu[a:e], al[a:e], ep[a:e], keep))
        ctx.set_materialize_grads(False)
        if keep:
            ctx.save_for_backward(z)
            ctx.blocks, ctx.head, ctx.chunk = saved, head, chunk
        return _finish(head, mu, al, ep)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mu, g_al, g_ep):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        head, chunk = ctx.head, ctx.chunk
        members = head.members
        m, cdt = z.shape[0], z.dtype
        hid = head.w2c.shape[1]
        w2c_t = head.w2c.transpose(1, 2)  # [T, 2D, hidden]
        need_z, need_w2, need_b2 = ctx.needs_input_grad[:3]
        dz = torch.empty_like(z) if need_z else None
        dw2 = head.b2.new_zeros(head.w2c.shape) if need_w2 else None
        db2 = torch.zeros_like(head.b2) if need_b2 else None
        sl = lambda t, a, e: None if t is None else t[a:e]  # noqa: E731
        for i, a in enumerate(range(0, m, chunk)):
            e = min(a + chunk, m)
            n = e - a
            g = _grad_out(ctx.blocks[i], sl(g_mu, a, e), sl(g_al, a, e), sl(g_ep, a, e), head)
            gc = g.to(cdt)
            zc = z[a:e]
            if need_w2:
                _accumulate(dw2, torch.relu(zc).view(n, members, hid).transpose(0, 1).transpose(1, 2), gc)
            if need_b2:
                db2.add_(g.sum(dim=1))
            if need_z:
                dzc = dz[a:e].view(n, members, hid)
                torch.bmm(gc, w2c_t, out=dzc.transpose(0, 1))
                dzc.mul_(zc.view(n, members, hid) > 0)  # ReLU
        dw2, db2 = head.param_grads(dw2, db2)
        return dz, dw2, db2, None, None, None, None, None


class _EnsembleViewStats(torch.autograd.Function):
    """The whole stage-B evaluation of a view, blocked over Gaussians: first layer
    ``z = rows_b + X_b·W`` (``X [B or 1, N, K]`` the Gaussian-wise features, ``W [K, T·hidden]`` their
    first-layer weights, ``rows [B, T·hidden]`` = ``b1`` + the per-frame features' part), ReLU, second
    layer and member statistics → ``(μ̄, mean σ², var μ)`` each ``[B·N, D]``. Neither the full
    pre-activations nor their gradient are materialised: each block's hidden activations and local
    derivatives are kept for the analytic backward, which accumulates ``∂W``, ``∂rows``, ``∂w2``,
    ``∂b2`` and writes ``∂X`` block by block. Inputs and gradients are in the parameters' dtype; the
    matmuls run in ``cdtype`` (``None`` = the same)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, rows: Tensor, w2: Tensor, b2: Tensor, members: int, out_dim: int,
                lo: float, hi: float, chunk: int, cdtype: Optional[torch.dtype]):  # type: ignore[override]
        head = _Head(w2, b2, members, out_dim, lo, hi, cdtype)
        b, n = rows.shape[0], x.shape[1]
        cast = (lambda t: t) if cdtype is None else (lambda t: t.to(cdtype))  # noqa: E731
        xc, wc, rc = cast(x), cast(w), cast(rows)
        mu = x.new_empty((b * n, out_dim), dtype=b2.dtype)
        al, ep = torch.empty_like(mu), torch.empty_like(mu)
        keep = any(ctx.needs_input_grad[:5])
        saved = []
        shared = xc.shape[0] == 1
        blocks = _view_blocks(b, n, chunk)
        # frames grouped into one block (few Gaussians, many frames: the landmark term's replay bank) share
        # the Gaussian part of the first layer when the Gaussian-wise features are the same for every frame
        xw = xc[0] @ wc if shared and blocks and blocks[0][1] - blocks[0][0] > 1 else None
        for f0, f1, a, e in blocks:
            r0, r1 = f0 * n + a, (f1 - 1) * n + e
            if f1 - f0 == 1:  # [e−a, T·hidden]; ReLU'd in place → hidden activations
                zc = torch.addmm(rc[f0], xc[0 if shared else f0, a:e], wc)
            elif xw is not None:
                zc = (xw.unsqueeze(0) + rc[f0:f1, None]).view(r1 - r0, -1)
            else:
                zc = (xc[f0:f1].reshape(r1 - r0, -1) @ wc).view(f1 - f0, n, -1).add_(rc[f0:f1, None])
                zc = zc.view(r1 - r0, -1)
            jac = _stats_block(zc, head, mu[r0:r1], al[r0:r1], ep[r0:r1], keep, owned=True)
            if keep:
                saved.append((jac, zc))
        ctx.set_materialize_grads(False)
        if keep:
            ctx.save_for_backward(x, w)
            ctx.blocks, ctx.head, ctx.meta = saved, head, (b, chunk, cdtype)
        return _finish(head, mu, al, ep)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mu, g_al, g_ep):  # type: ignore[override]
        x, w = ctx.saved_tensors
        head = ctx.head
        b, chunk, cdtype = ctx.meta
        members = head.members
        cast = (lambda t: t) if cdtype is None else (lambda t: t.to(cdtype))  # noqa: E731
        n = x.shape[1]
        hid = head.w2c.shape[1]
        need_x, need_w, need_rows, need_w2, need_b2 = ctx.needs_input_grad[:5]
        xc, wc_t, w2c_t = cast(x), cast(w).t(), head.w2c.transpose(1, 2)
        dx = torch.zeros_like(x) if need_x else None
        dw = torch.zeros_like(w) if need_w else None
        drows = w.new_zeros((b, w.shape[1])) if need_rows else None
        dw2 = head.b2.new_zeros(head.w2c.shape) if need_w2 else None
        db2 = torch.zeros_like(head.b2) if need_b2 else None
        sl = lambda t, a, e: None if t is None else t[a:e]  # noqa: E731
        shared = x.shape[0] == 1
        for i, (f0, f1, a, e) in enumerate(_view_blocks(b, n, chunk)):
            r0, r1 = f0 * n + a, (f1 - 1) * n + e
            jac, h = ctx.blocks[i]
            g = _grad_out(jac, sl(g_mu, r0, r1), sl(g_al, r0, r1), sl(g_ep, r0, r1), head)
            gc = g if g.dtype == h.dtype else _WS.get("gc", g.shape, h.dtype, h.device).copy_(g)
            h3 = h.view(r1 - r0, members, hid)
            if need_w2:
                _accumulate(dw2, h3.transpose(0, 1).transpose(1, 2), gc)
            if need_b2:
                db2.add_(g.sum(dim=1))
            if not (need_x or need_w or need_rows):
                continue
            dz = _WS.get("dz", h.shape, h.dtype, h.device)  # [rows, T·hidden], a temporary
            torch.bmm(gc, w2c_t, out=dz.view(r1 - r0, members, hid).transpose(0, 1))
            torch.ops.aten.threshold_backward.grad_input(dz, h, 0.0, grad_input=dz)  # ReLU
            if f1 - f0 == 1:
                fx = 0 if shared else f0
                if need_rows:
                    drows[f0].add_(dz.sum(dim=0).to(drows.dtype))
                if need_w:
                    _accumulate(dw, xc[fx, a:e].t(), dz)
                if need_x:
                    if dx.dtype == dz.dtype:
                        dx[fx, a:e].addmm_(dz, wc_t)
                    else:
                        dx[fx, a:e].add_((dz @ wc_t).to(dx.dtype))
                continue
            dz3 = dz.view(f1 - f0, n, -1)  # a block of whole frames
            if need_rows:
                drows[f0:f1].add_(dz3.sum(dim=1, dtype=drows.dtype))
            if shared:  # the frames' gradients summed first (in the parameters' dtype), then one product
                s = dz3.sum(dim=0, dtype=w.dtype)
                if need_w:
                    dw.addmm_(x[0].t(), s)
                if need_x:
                    dx[0].addmm_(s, w.t())
            else:
                if need_w:
                    _accumulate(dw, xc[f0:f1].reshape(r1 - r0, -1).t(), dz)
                if need_x:
                    dx[f0:f1].add_((dz @ wc_t).view(f1 - f0, n, -1).to(dx.dtype))
        dw2, db2 = head.param_grads(dw2, db2)
        return dx, dw, drows, dw2, db2, None, None, None, None, None, None


def _view_blocks(b: int, n: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """The blocks ``(f0, f1, a, e)`` of :class:`_EnsembleViewStats`: frames ``[f0, f1)`` × Gaussians
    ``[a, e)``, at most about ``chunk`` rows each, in row order (frame-major). Views with ``n ≥ chunk``
    Gaussians are cut per frame; smaller ones take ``chunk // n`` whole frames a block (few blocks instead
    of one per frame: the landmark term evaluates ~70 anchors on 32–64 frames)."""
    if n == 0 or b == 0:
        return []
    if n < chunk:
        k = max(1, chunk // n)
        return [(f, min(f + k, b), 0, n) for f in range(0, b, k)]
    return [(f, f + 1, a, min(a + chunk, n)) for f in range(b) for a in range(0, n, chunk)]


def _point_form(ens: EnsembleMLP, x: ViewLike) -> tuple[Tensor, Tensor, Tensor]:
    """``(X [B or 1, N, K], W [K, T·hidden], rows [B, T·hidden])`` with first-layer pre-activations
    ``z_b = rows_b + X_b·W`` (parameters' dtype, differentiable): ``X`` the Gaussian-wise segments
    (shared ones not broadcast unless a ``full`` segment needs it), ``rows`` = ``b1`` + the frame
    segments' part."""
    if isinstance(x, Tensor):
        return x.reshape(1, -1, ens.in_dim), ens.w1_rows(), ens.b1_flat().unsqueeze(0)
    b = x.batch
    segs = ens._segments(x)
    rows = ens.b1_flat().unsqueeze(0).expand(b, -1)
    for k, t, lo, hi in segs:
        if k == "frame":
            rows = rows + t @ ens.w1_rows(lo, hi)
    points = [(k, t, lo, hi) for k, t, lo, hi in segs if k != "frame"]
    if any(k == "full" for k, _, _, _ in points):
        xs = [t if k == "full" else t.unsqueeze(0).expand(b, -1, -1) for k, t, _, _ in points]
    else:
        xs = [t.unsqueeze(0) for _, t, _, _ in points]
    xp = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]
    w = torch.cat([ens.w1_rows(lo, hi) for _, _, lo, hi in points], dim=0) if len(points) > 1 else \
        ens.w1_rows(points[0][2], points[0][3])
    return xp.contiguous(), w, rows.contiguous()


def ensemble_stats(ens: EnsembleMLP, x: ViewLike) -> tuple[Tensor, Tensor, Tensor]:
    """:meth:`EnsembleMLP.stats <ua3dtalk.models.deformation.ensemble.EnsembleMLP.stats>` of ``ens`` (input
    already checked): ``(μ̄, mean σ², var μ)`` each ``[..., out_dim]``, blocked, analytic backward."""
    lead = x.shape[:-1]
    shape = (*lead, ens.out_dim)
    lo, hi = ens.logvar_min, ens.logvar_max
    if torch.is_grad_enabled() and _requires_grad(x, ens.parameters()):
        if isinstance(x, ViewInput) and x.pre is not None:
            z = ens.pre_activation(x).reshape(-1, ens.members * ens.hidden).contiguous()
            mu, al, ep = _EnsembleStats.apply(z, ens.w2, ens.b2, ens.members, ens.out_dim, lo, hi,
                                              ens.chunk_rows)
        else:
            xp, w, rows = _point_form(ens, x)
            mu, al, ep = _EnsembleViewStats.apply(xp, w, rows, ens.w2, ens.b2, ens.members, ens.out_dim, lo,
                                                  hi, ens.chunk_rows, ens._cdtype)
        return mu.view(shape), al.view(shape), ep.view(shape)
    # no autograd: the pre-activations are produced block by block too (cache resident)
    with torch.no_grad():
        src = _PreRows(ens, x)
        head = _Head(ens.w2, ens.b2, ens.members, ens.out_dim, lo, hi, ens._cdtype)
        mu = torch.empty(src.batch * src.n, ens.out_dim, dtype=ens.w2.dtype, device=ens.w2.device)
        al, ep = torch.empty_like(mu), torch.empty_like(mu)
        ext = _fused_stats_kernel(head.w2c, head)
        if ext is not None:  # the whole view in one C++ call, parallel over blocks
            none = head.w2c.new_empty(0)
            xs = [src.cast(t) for _, t in src.parts]
            if len(xs) > 1 and len({t.shape[0] for t in xs}) > 1:
                xs = [t.expand(src.batch, -1, -1) for t in xs]
            xp = (torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]) if xs else none
            # detached: the kernel's worker threads do not inherit this thread's no-grad/inference mode,
            # so an op there on a weight that requires grad would be recorded (and, for tensors made in
            # inference mode, fail: "Inference tensors cannot be saved for backward")
            opt = lambda t: none if t is None else t.detach()  # noqa: E731
            ext.ensemble_view_stats(opt(xp), opt(src.w), opt(src.pre), opt(src.frame_rows), opt(head.w2c),
                                    opt(head.b2),
                                    head.span, head.lo - head.shift, ens.chunk_rows, src.batch, src.n, mu, al, ep)
            _finish(head, mu, al, ep)
            return mu.view(shape), al.view(shape), ep.view(shape)
        for f in range(src.batch):
            for a in range(0, src.n, ens.chunk_rows):
                e = min(a + ens.chunk_rows, src.n)
                r0, r1 = f * src.n + a, f * src.n + e
                zc, owned = src.rows(f, a, e)
                _stats_block(zc, head, mu[r0:r1], al[r0:r1], ep[r0:r1], False, owned)
        _finish(head, mu, al, ep)
    return mu.view(shape), al.view(shape), ep.view(shape)


def _requires_grad(x: ViewLike, params) -> bool:
    if any(p.requires_grad for p in params):
        return True
    if isinstance(x, Tensor):
        return x.requires_grad
    return any(t.requires_grad for _, t in x.segments) or (x.pre is not None and x.pre.requires_grad)


class _PreRows:
    """First-layer pre-activations (all members, compute dtype) of blocks of Gaussians, without
    autograd: ``rows(frame, a, e)`` → ``[e−a, T·hidden]`` for Gaussians ``[a, e)`` of frame ``frame``
    (for a plain tensor input: rows ``[a, e)`` of the flattened input, one "frame")."""

    def __init__(self, ens: EnsembleMLP, x: ViewLike) -> None:
        cast = ens._cast
        self.parts: list[tuple[str, Tensor]] = []
        self.pre: Optional[Tensor] = None
        self.frame_rows: Optional[Tensor] = None  # [B, T·hidden]
        if isinstance(x, Tensor):
            xf = x.reshape(-1, ens.in_dim)
            self.batch, self.n = 1, xf.shape[0]
            self.parts = [("full", xf.unsqueeze(0))]
            self.w: Optional[Tensor] = cast(ens.w1_rows())
            self.frame_rows = cast(ens.b1_flat()).unsqueeze(0)
            self.cast = cast
            return
        self.batch, self.n = x.batch, x.n
        self.cast = cast
        segs = ens._segments(x)
        pre = x.pre
        if pre is not None and pre.shape[-1] != ens.members * ens.hidden:
            raise ValueError(f"EnsembleMLP: ViewInput.pre must be [N, {ens.members * ens.hidden}], got "
                             f"{list(pre.shape)}")
        self.pre = pre
        rows = None if pre is not None else cast(ens.b1_flat()).unsqueeze(0).expand(x.batch, -1)
        for k, t, lo, hi in segs:
            if k == "frame":
                r = cast(t) @ cast(ens.w1_rows(lo, hi))
                rows = r if rows is None else rows + r
        self.frame_rows = rows
        points = [(k, t, lo, hi) for k, t, lo, hi in segs if k == "full" or (k == "shared" and pre is None)]
        self.parts = [(k, t if k == "full" else t.unsqueeze(0)) for k, t, _, _ in points]
        self.w = cast(torch.cat([ens.w1_rows(lo, hi) for _, _, lo, hi in points], dim=0)) if points else None

    def rows(self, f: int, a: int, e: int) -> tuple[Tensor, bool]:
        """``(z, owned)``: the pre-activations (a workspace temporary) and whether they may be
        overwritten (``False`` when they are a view of ``pre``)."""
        width = self.w.shape[1] if self.w is not None else self.pre.shape[1]
        if self.parts:
            xs = [self.cast(t[f if k == "full" else 0, a:e]) for k, t in self.parts]
            xp = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]
            z = _WS.get("z", (e - a, width), xp.dtype, xp.device)
            if self.pre is not None:
                torch.addmm(self.pre[a:e], xp, self.w, out=z)
                return (z.add_(self.frame_rows[f]) if self.frame_rows is not None else z), True
            return torch.addmm(self.frame_rows[f], xp, self.w, out=z), True
        assert self.pre is not None
        if self.frame_rows is not None:
            z = _WS.get("z", (e - a, width), self.pre.dtype, self.pre.device)
            return torch.add(self.pre[a:e], self.frame_rows[f], out=z), True
        return self.pre[a:e], False
