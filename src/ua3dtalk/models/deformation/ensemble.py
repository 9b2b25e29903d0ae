"""Per-view uncertainty blocks: a batched ensemble of small MLPs (DESIGN §4 "Uncertainty-based
Deformation").

Each view is encoded by ``T`` (default 10) independent MLPs ``in → hidden → ReLU → {μ, log σ²}``.
The ``T`` members are stored as *batched* weight tensors (``[T, in, hidden]``, ``[T, hidden, 2·out]``)
and evaluated together with one (batched) matmul per layer — never a Python loop over members.

Stages (see :class:`UncertaintyBlock`):

* **stage A** (the first ``ensemble_switch`` training steps): each call evaluates one random member;
  only that member's slice of the parameters receives gradients; the epistemic variance is 0.
* **stage B** and inference: every member is evaluated; ``μ`` is the member mean, the *epistemic*
  variance is the (population) variance of the members' ``μ`` and the *aleatoric* variance the mean of
  the members' ``σ²``.

Log-variance range ★: the raw log-variance output ``r`` is squashed into ``(logvar_min, logvar_max)``
(default ``(-10, 4)``, i.e. σ² ∈ (4.5e-5, 55)) by ``lv = c + h·tanh((r − c)/h)`` with centre
``c = (min+max)/2`` and half-width ``h = (max−min)/2`` (:func:`bound_logvar`): slope 1 at the centre,
smooth, strictly bounded. It keeps a gradient inside the range (unlike a hard clamp), costs one
sigmoid (evaluated as the identical ``min + (max−min)·sigmoid(2(r − c)/h)``, since ``tanh(u) =
2·sigmoid(2u) − 1`` and PyTorch's CPU sigmoid is ~6× faster than its tanh; a PETS-style double softplus
costs ~4× more), and it bounds the precision ratio between views, so one view can never take all of
the fusion weight because its variance underflowed.

Note for optimisers: in stage A the unused members' gradients are exactly zero (the parameters are
shared tensors, so their ``.grad`` is not ``None``). Adam's momentum therefore still moves a member
for a few steps after it was last chosen; this is the standard behaviour of batched ensembles.

Fast paths (same mathematics as the plain formulas above, equal to float tolerance; tested in
``tests/models/test_deformation_fast.py``):

* **Decomposed first layer** (:class:`ViewInput`): a view that concatenates a per-frame feature with
  per-Gaussian features, e.g. ``[f ⟶ N, H]``, is passed as its segments. With ``W1 = [W_f; W_H]``,
  ``x·W1 = f·W_f + H·W_H``: the frame part is one row per frame (added as the GEMM bias) instead of
  a broadcast ``[B, N, d_f]`` block and its ``N·d_f·T·hidden`` multiply-adds; the part of the
  Gaussian-only segments, ``b1 + H·W_H``, can be passed precomputed (``ViewInput.pre``, the
  inference cache of :class:`~ua3dtalk.models.deformation.network.DeformationNetwork`).
* **Fused member statistics** (:meth:`EnsembleMLP.stats`): stage B only needs ``(μ̄, mean σ², var μ)``
  — the first layer, the second layer and the statistics are computed in blocks of ``chunk_rows``
  Gaussians (cache resident: neither the ``[N, T·hidden]`` pre-activations nor the ``[T, N, 2·out]``
  outputs are materialised; block temporaries are reused, see :class:`_Workspace`), with a
  hand-written backward (``∂μ_t = ḡ_μ/T + 2ḡ_ep(μ_t−μ̄)/T``, ``∂r_t = ḡ_al/T · σ_t²(1−tanh²)``)
  instead of autograd through ~12 elementwise ops. The members' μ (``ViewEstimate.members_mu``) are
  only materialised when asked for (``need_members=True``, the default of
  :meth:`UncertaintyBlock.forward`; ``fusion=full_cov``).
* **Mixed precision** (``compute_dtype="bfloat16"``, optional; default ``"float32"`` = the
  parameters' dtype, exact): the two ensemble matmuls run in bfloat16 (~3× faster on CPUs with
  AVX512-BF16/AMX), the statistics, outputs and gradients of the parameters are float32.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

Tensor = torch.Tensor

UNCERTAINTY_MODES = ("both", "aleatoric", "epistemic")
COMPUTE_DTYPES = ("float32", "bfloat16", "auto")
SEGMENT_KINDS = ("frame", "shared", "full")

#: Gaussians per block of the fused statistics (the [T, rows, 2·out] block stays in the CPU caches).
CHUNK_ROWS = 1024


def bound_logvar(x: Tensor, lo: float, hi: float) -> Tensor:
    """Smoothly squash ``x`` into ``(lo, hi)``: ``c + h·tanh((x − c)/h)``, ``c = (lo+hi)/2``,
    ``h = (hi−lo)/2`` (identity-like with slope 1 around the centre of the range).

    Evaluated as ``lo + (hi − lo)·sigmoid((x − c)·2/h)`` — the same function (``tanh(u) = 2σ(2u) − 1``),
    ~6× cheaper on CPU."""
    c, h = 0.5 * (lo + hi), 0.5 * (hi - lo)
    return torch.sigmoid((x - c) * (2.0 / h)) * (hi - lo) + lo


@functools.lru_cache(maxsize=None)
def fast_bfloat16_matmul(device_type: str = "cpu") -> bool:
    """Whether bfloat16 matmuls are much faster than float32 ones on this machine: CPUs with
    AVX512-BF16 or AMX (oneDNN's bf16 kernels; 4–5× the float32 GEMM throughput measured on a 2-core
    AMD EPYC with AVX512-BF16). False for other devices (their float32 path is kept: exact and fast)."""
    if device_type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and \
            torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
    except (AttributeError, RuntimeError):
        return False


def resolve_compute_dtype(name: str, device: Union[torch.device, str, None] = None) -> str:
    """``"auto"`` → ``"bfloat16"`` where :func:`fast_bfloat16_matmul` holds for ``device``, else
    ``"float32"``; ``"float32"`` / ``"bfloat16"`` are returned unchanged."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
    if name != "auto":
        return name
    dev = torch.device(device if device is not None else "cpu")
    return "bfloat16" if fast_bfloat16_matmul(dev.type) else "float32"


def _compute_dtype(name: str, device: Union[torch.device, str, None] = None) -> Optional[torch.dtype]:
    return torch.bfloat16 if resolve_compute_dtype(name, device) == "bfloat16" else None


# --------------------------------------------------------------------------------------------------
# decomposed view input
# --------------------------------------------------------------------------------------------------


class ViewInput:
    """A view ``x = concat(segments) [B, N, d]`` given by its segments, without materialising the
    broadcasts (see the module docstring, "Decomposed first layer").

    Args:
        segments: ``(kind, tensor)`` pairs in feature order; ``kind`` is ``"frame"`` (``[B, d_i]``, the
            same for every Gaussian), ``"shared"`` (``[N, d_i]``, the same for every frame, e.g. ``H``)
            or ``"full"`` (``[B, N, d_i]``).
        pre: optional ``[N, T·hidden]`` precomputed ``b1 + Σ_shared seg·W1_seg`` of the ensemble that
            evaluates this view (members concatenated as :meth:`EnsembleMLP.w1_rows`), in the
            ensemble's compute dtype; the caller guarantees it matches the current weights.
        batch: ``B`` when no segment carries it (only ``shared`` segments); default 1.
    """

    def __init__(self, segments: Sequence[tuple[str, Tensor]], pre: Optional[Tensor] = None,
                 batch: Optional[int] = None) -> None:
        segs = tuple((str(k), t) for k, t in segments)
        if not segs:
            raise ValueError("ViewInput: at least one segment is required")
        b, n = None, None
        for k, t in segs:
            if k not in SEGMENT_KINDS:
                raise ValueError(f"ViewInput: segment kind must be one of {SEGMENT_KINDS}, got {k!r}")
            want = {"frame": 2, "shared": 2, "full": 3}[k]
            if t.dim() != want:
                raise ValueError(f"ViewInput: a {k!r} segment must have {want} dims, got {list(t.shape)}")
            tb = t.shape[0] if k in ("frame", "full") else None
            tn = t.shape[-2] if k in ("shared", "full") else None
            if tb is not None:
                if b is not None and tb != b:
                    raise ValueError(f"ViewInput: segments disagree on the batch size ({b} vs {tb})")
                b = tb
            if tn is not None:
                if n is not None and tn != n:
                    raise ValueError(f"ViewInput: segments disagree on the number of Gaussians ({n} vs {tn})")
                n = tn
        if n is None:
            raise ValueError("ViewInput: at least one 'shared' or 'full' segment is required")
        if b is None:
            b = 1 if batch is None else int(batch)
        elif batch is not None and int(batch) != b:
            raise ValueError(f"ViewInput: batch={batch} but the segments have batch {b}")
        if pre is not None and (pre.dim() != 2 or pre.shape[0] != n):
            raise ValueError(f"ViewInput: pre must be [N={n}, T·hidden], got {list(pre.shape)}")
        self.segments, self.pre, self.batch, self.n = segs, pre, b, n
        self.dim_features = sum(t.shape[-1] for _, t in segs)

    @property
    def shape(self) -> torch.Size:
        """``[B, N, d]`` of the (virtual) concatenated view."""
        return torch.Size((self.batch, self.n, self.dim_features))

    def dim(self) -> int:
        return 3

    @property
    def dtype(self) -> torch.dtype:
        return self.segments[0][1].dtype

    def materialize(self) -> Tensor:
        """The concatenated view ``[B, N, d]`` (reference / ``fusion=concat``)."""
        b, n = self.batch, self.n
        parts = []
        for k, t in self.segments:
            if k == "frame":
                parts.append(t.unsqueeze(1).expand(-1, n, -1))
            elif k == "shared":
                parts.append(t.unsqueeze(0).expand(b, -1, -1))
            else:
                parts.append(t)
        return parts[0] if len(parts) == 1 and self.segments[0][0] == "full" else torch.cat(parts, dim=-1)

    def __repr__(self) -> str:
        segs = ", ".join(f"{k}{list(t.shape)}" for k, t in self.segments)
        return f"ViewInput([{segs}], pre={None if self.pre is None else list(self.pre.shape)})"


ViewLike = Union[Tensor, ViewInput]


# --------------------------------------------------------------------------------------------------
# fused stage-B statistics
# --------------------------------------------------------------------------------------------------


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


#: use the C++ kernel of the project's CPU extension (``ensemble_stats`` in
#: ``ua3dtalk/render/csrc/composite.cpp``) for the statistics of calls without autograd (inference): one
#: pass instead of ~12 elementwise passes; the torch code of :func:`_stats_block` is its reference
#: (``tests/models/test_deformation_fast.py`` compares them). Set to False to force the torch path.
FUSED_STATS = True


def _fused_stats_kernel(z: Tensor, head: _Head):
    """The extension module when the fused statistics kernel applies (CPU, float32 parameters, float32
    or bfloat16 matmuls, kernel built), else None. ``z``: any tensor in the matmul dtype on the device."""
    if not FUSED_STATS or z.device.type != "cpu" or head.b2.dtype != torch.float32 or \
            z.dtype not in (torch.float32, torch.bfloat16) or head.w2c.dtype != z.dtype:
        return None
    from ...render.cpu_backend import cpu_backend_available, load_extension

    if not cpu_backend_available():
        return None
    ext = load_extension()
    return ext if hasattr(ext, "ensemble_stats") else None


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
        for f in range(b):
            xf = xc[f if xc.shape[0] > 1 else 0]
            for a in range(0, n, chunk):
                e = min(a + chunk, n)
                r0, r1 = f * n + a, f * n + e
                zc = torch.addmm(rc[f], xf[a:e], wc)  # [e−a, T·hidden]; ReLU'd in place → hidden activations
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
        i = 0
        for f in range(b):
            fx = f if x.shape[0] > 1 else 0
            for a in range(0, n, chunk):
                e = min(a + chunk, n)
                r0, r1 = f * n + a, f * n + e
                jac, h = ctx.blocks[i]
                i += 1
                g = _grad_out(jac, sl(g_mu, r0, r1), sl(g_al, r0, r1), sl(g_ep, r0, r1), head)
                gc = g if g.dtype == h.dtype else _WS.get("gc", g.shape, h.dtype, h.device).copy_(g)
                h3 = h.view(e - a, members, hid)
                if need_w2:
                    _accumulate(dw2, h3.transpose(0, 1).transpose(1, 2), gc)
                if need_b2:
                    db2.add_(g.sum(dim=1))
                if not (need_x or need_w or need_rows):
                    continue
                dz = _WS.get("dz", h.shape, h.dtype, h.device)  # [e−a, T·hidden], a temporary
                torch.bmm(gc, w2c_t, out=dz.view(e - a, members, hid).transpose(0, 1))
                torch.ops.aten.threshold_backward.grad_input(dz, h, 0.0, grad_input=dz)  # ReLU
                if need_rows:
                    drows[f].add_(dz.sum(dim=0).to(drows.dtype))
                if need_w:
                    _accumulate(dw, xc[fx, a:e].t(), dz)
                if need_x:
                    if dx.dtype == dz.dtype:
                        dx[fx, a:e].addmm_(dz, wc_t)
                    else:
                        dx[fx, a:e].add_((dz @ wc_t).to(dx.dtype))
        dw2, db2 = head.param_grads(dw2, db2)
        return dx, dw, drows, dw2, db2, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------


class EnsembleMLP(nn.Module):
    """``T`` independent MLPs ``in_dim → hidden → ReLU → (μ, log σ²) ∈ R^out_dim × R^out_dim``.

    Parameters (``T = members``): ``w1 [T, in_dim, hidden]``, ``b1 [T, hidden]``,
    ``w2 [T, hidden, 2·out_dim]``, ``b2 [T, 2·out_dim]`` (the first ``out_dim`` outputs are μ, the
    rest log σ²). Each member is initialised independently (He-normal first layer, see
    :meth:`reset_parameters`), so members differ and the initial epistemic variance is > 0.

    Inputs ``x`` are tensors ``[..., in_dim]`` or :class:`ViewInput` (``[B, N, in_dim]`` by segments).

    Args:
        in_dim: input feature size.
        hidden: hidden width (64).
        out_dim: size of μ and of log σ² (48).
        members: ensemble size ``T`` (10).
        logvar_min: lower bound of log σ² (see :func:`bound_logvar`).
        logvar_max: upper bound of log σ².
        compute_dtype: ``"float32"`` (the parameters' dtype; exact), ``"bfloat16"`` (the two matmuls
            in bfloat16, outputs in the parameters' dtype) or ``"auto"`` (bfloat16 on CPUs with fast
            bfloat16 matmuls, :func:`fast_bfloat16_matmul`; float32 elsewhere — resolved for the
            device the weights are on at each call).
        chunk_rows: Gaussians per block of :meth:`stats`.
    """

    def __init__(self, in_dim: int, hidden: int = 64, out_dim: int = 48, members: int = 10,
                 logvar_min: float = -10.0, logvar_max: float = 4.0, compute_dtype: str = "float32",
                 chunk_rows: int = CHUNK_ROWS) -> None:
        super().__init__()
        if min(in_dim, hidden, out_dim, members) < 1:
            raise ValueError(f"EnsembleMLP: sizes must be >= 1, got in_dim={in_dim}, hidden={hidden}, "
                             f"out_dim={out_dim}, members={members}")
        if not logvar_min < logvar_max:
            raise ValueError(f"EnsembleMLP: logvar_min ({logvar_min}) must be < logvar_max ({logvar_max})")
        if chunk_rows < 1:
            raise ValueError(f"EnsembleMLP: chunk_rows must be >= 1, got {chunk_rows}")
        self.in_dim, self.hidden, self.out_dim, self.members = int(in_dim), int(hidden), int(out_dim), int(members)
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        self.compute_dtype = str(compute_dtype)
        _compute_dtype(self.compute_dtype)  # validates the name
        self.chunk_rows = int(chunk_rows)
        t = self.members
        self.w1 = nn.Parameter(torch.empty(t, self.in_dim, self.hidden))
        self.b1 = nn.Parameter(torch.empty(t, self.hidden))
        self.w2 = nn.Parameter(torch.empty(t, self.hidden, 2 * self.out_dim))
        self.b2 = nn.Parameter(torch.empty(t, 2 * self.out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Independent init of every member (DESIGN §4.5): the first layer He-normal (``N(0, 2/in_dim)``,
        bias 0 — with standardised inputs each ReLU unit is active for about half of the inputs), μ's
        output weights ``N(0, 1/hidden)`` (a member's μ has about unit variance; members differ, so the
        initial epistemic variance is > 0), log σ²'s output weights ``N(0, (0.1)²/hidden)`` (σ² starts
        near the centre of its range, the same for every input), biases 0."""
        with torch.no_grad():
            self.w1.normal_(0.0, math.sqrt(2.0 / self.in_dim))
            self.b1.zero_()
            d = self.out_dim
            self.w2[..., :d].normal_(0.0, math.sqrt(1.0 / self.hidden))
            self.w2[..., d:].normal_(0.0, 0.1 * math.sqrt(1.0 / self.hidden))
            self.b2.zero_()

    @property
    def _cdtype(self) -> Optional[torch.dtype]:
        """The matmul dtype (None = the parameters' dtype), ``auto`` resolved for the weights' device."""
        return _compute_dtype(self.compute_dtype, self.w1.device)

    def extra_repr(self) -> str:
        s = (f"in_dim={self.in_dim}, hidden={self.hidden}, out_dim={self.out_dim}, members={self.members}, "
             f"logvar=[{self.logvar_min}, {self.logvar_max}]")
        return s + (f", compute_dtype={self.compute_dtype}" if self._cdtype is not None else "")

    # ------------------------------------------------------------------ helpers
    def _cast(self, t: Tensor) -> Tensor:
        return t if self._cdtype is None else t.to(self._cdtype)

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        mu, lv = out.split(self.out_dim, dim=-1)
        return mu, bound_logvar(lv, self.logvar_min, self.logvar_max)

    def _check(self, x: ViewLike) -> None:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"EnsembleMLP expects input [..., {self.in_dim}], got {list(x.shape)}")

    def w1_rows(self, lo: int = 0, hi: Optional[int] = None, member: Optional[int] = None) -> Tensor:
        """First-layer weights of the input features ``[lo, hi)``: ``[hi−lo, T·hidden]`` (members
        concatenated, member-major columns, as the pre-activations of :meth:`pre_activation`) or, for
        one ``member``, ``[hi−lo, hidden]``."""
        hi = self.in_dim if hi is None else hi
        if member is not None:
            return self.w1[member, lo:hi]
        return self.w1[:, lo:hi].permute(1, 0, 2).reshape(hi - lo, self.members * self.hidden)

    def b1_flat(self, member: Optional[int] = None) -> Tensor:
        """First-layer bias ``[T·hidden]`` (or ``[hidden]`` of one member)."""
        return self.b1.reshape(-1) if member is None else self.b1[member]

    def _segments(self, v: ViewInput) -> list[tuple[str, Tensor, int, int]]:
        out, lo = [], 0
        for k, t in v.segments:
            out.append((k, t, lo, lo + t.shape[-1]))
            lo += t.shape[-1]
        assert lo == self.in_dim, (lo, self.in_dim)
        return out

    def shared_pre(self, v: ViewInput) -> Tensor:
        """``b1 + Σ_shared seg·W1_seg`` ``[N, T·hidden]`` (compute dtype): the frame-independent part of
        the first layer of every member, as ``ViewInput.pre`` (inference cache)."""
        self._check(v)
        segs = [(t, lo, hi) for k, t, lo, hi in self._segments(v) if k == "shared"]
        bias = self._cast(self.b1_flat())
        if not segs:
            return bias.expand(v.n, -1).clone()
        x = torch.cat([t for t, _, _ in segs], dim=-1) if len(segs) > 1 else segs[0][0]
        w = torch.cat([self.w1_rows(lo, hi) for _, lo, hi in segs], dim=0)
        return torch.addmm(bias, self._cast(x), self._cast(w))

    def pre_activation(self, x: ViewLike, member: Optional[int] = None) -> Tensor:
        """First-layer pre-activation of all members ``[..., T·hidden]`` (member-major) or of one
        ``member`` ``[..., hidden]``, in the compute dtype. ``x``: ``[..., in_dim]`` or a
        :class:`ViewInput` (→ ``[B, N, ·]``)."""
        self._check(x)
        width = self.hidden * (self.members if member is None else 1)
        if isinstance(x, Tensor):
            lead = x.shape[:-1]
            xf = self._cast(x.reshape(-1, self.in_dim))
            return torch.addmm(self._cast(self.b1_flat(member)), xf, self._cast(self.w1_rows(member=member))) \
                .view(*lead, width)
        b = x.batch
        segs = self._segments(x)
        frames = [(t, lo, hi) for k, t, lo, hi in segs if k == "frame"]
        points = [(k, t, lo, hi) for k, t, lo, hi in segs if k != "frame"]
        fulls = [p for p in points if p[0] == "full"]
        pre = x.pre
        if pre is not None:
            if pre.shape[-1] != self.members * self.hidden:
                raise ValueError(f"EnsembleMLP: ViewInput.pre must be [N, {self.members * self.hidden}], got "
                                 f"{list(pre.shape)}")
            if member is not None:
                pre = pre[:, member * self.hidden:(member + 1) * self.hidden]
            points = fulls  # the shared segments and b1 are in `pre`
        # per-frame rows: (b1 +) Σ_frame f·W_f  → [B, width]
        rows = None if pre is not None else self._cast(self.b1_flat(member)).unsqueeze(0).expand(b, -1)
        for t, lo, hi in frames:
            r = self._cast(t) @ self._cast(self.w1_rows(lo, hi, member))
            rows = r if rows is None else rows + r
        if not points:  # only `pre` (+ frame rows)
            assert pre is not None
            z = pre.unsqueeze(0).expand(b, -1, -1)
            return z + rows.unsqueeze(1) if rows is not None else z.contiguous()
        w = torch.cat([self.w1_rows(lo, hi, member) for _, _, lo, hi in points], dim=0)
        w = self._cast(w)
        if fulls:  # per-frame Gaussian features: one GEMM over [full…, shared…] per frame
            xs = [self._cast(t if k == "full" else t.unsqueeze(0).expand(b, -1, -1)) for k, t, _, _ in points]
            xp = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]  # [B, N, d_p]
            if pre is not None:
                base = pre.unsqueeze(0)
                if rows is not None:
                    base = base + rows.unsqueeze(1)
                if b == 1:
                    return torch.addmm(base[0], xp[0], w).unsqueeze(0)
                return torch.baddbmm(base.expand(b, -1, -1), xp, w.unsqueeze(0).expand(b, -1, -1))
            if b == 1:
                return torch.addmm(rows[0], xp[0], w).unsqueeze(0)
            return torch.baddbmm(rows.unsqueeze(1), xp, w.unsqueeze(0).expand(b, -1, -1))
        # only shared Gaussian features (+ frame rows): one GEMM for all frames
        xs = [self._cast(t) for _, t, _, _ in points]
        xp = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]  # [N, d_p]
        assert rows is not None
        if b == 1:
            return torch.addmm(rows[0], xp, w).unsqueeze(0)
        return (xp @ w).unsqueeze(0) + rows.unsqueeze(1)

    # ------------------------------------------------------------------ evaluation
    def head(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's ``(μ, log σ²)`` ``[T, ..., out_dim]`` from the pre-activations
        ``z [..., T·hidden]`` (:meth:`pre_activation`)."""
        lead = z.shape[:-1]
        zf = z.reshape(-1, self.members * self.hidden)
        m = zf.shape[0]
        h = torch.relu(zf).view(m, self.members, self.hidden).transpose(0, 1)  # [T, M, hidden] (strided view)
        out = torch.baddbmm(self._cast(self.b2).unsqueeze(1), h, self._cast(self.w2))  # [T, M, 2·out]
        if self._cdtype is not None:
            out = out.to(self.w2.dtype)
        mu, lv = self._split(out)
        shape = (self.members, *lead, self.out_dim)
        return mu.reshape(shape), lv.reshape(shape)

    def forward(self, x: ViewLike) -> tuple[Tensor, Tensor]:
        """All members: ``x [..., in_dim]`` → ``(μ, log σ²)``, each ``[T, ..., out_dim]``."""
        # layer 1: the input is shared by the members → one matmul against the members' concatenated
        # weights ([in, T·hidden]); layer 2: one batched matmul over the members. (Equivalent to the
        # einsums "mi,tih->tmh" and "tmh,tho->tmo"; this layout is the fastest on CPU.)
        self._check(x)
        return self.head(self.pre_activation(x))

    def forward_member(self, x: ViewLike, idx: int) -> tuple[Tensor, Tensor]:
        """One member ``idx``: ``x [..., in_dim]`` → ``(μ, log σ²)``, each ``[..., out_dim]``.
        Only that member's slice of the parameters takes part (the others get zero gradients)."""
        self._check(x)
        if not 0 <= int(idx) < self.members:
            raise IndexError(f"EnsembleMLP member {idx} out of range [0, {self.members})")
        idx = int(idx)
        h = torch.relu(self.pre_activation(x, member=idx))
        out = torch.addmm(self._cast(self.b2[idx]), h.reshape(-1, self.hidden), self._cast(self.w2[idx]))
        if self._cdtype is not None:
            out = out.to(self.w2.dtype)
        return self._split(out.view(*h.shape[:-1], 2 * self.out_dim))

    def _point_form(self, x: ViewLike) -> tuple[Tensor, Tensor, Tensor]:
        """``(X [B or 1, N, K], W [K, T·hidden], rows [B, T·hidden])`` with first-layer pre-activations
        ``z_b = rows_b + X_b·W`` (parameters' dtype, differentiable): ``X`` the Gaussian-wise segments
        (shared ones not broadcast unless a ``full`` segment needs it), ``rows`` = ``b1`` + the frame
        segments' part."""
        if isinstance(x, Tensor):
            return x.reshape(1, -1, self.in_dim), self.w1_rows(), self.b1_flat().unsqueeze(0)
        b = x.batch
        segs = self._segments(x)
        rows = self.b1_flat().unsqueeze(0).expand(b, -1)
        for k, t, lo, hi in segs:
            if k == "frame":
                rows = rows + t @ self.w1_rows(lo, hi)
        points = [(k, t, lo, hi) for k, t, lo, hi in segs if k != "frame"]
        if any(k == "full" for k, _, _, _ in points):
            xs = [t if k == "full" else t.unsqueeze(0).expand(b, -1, -1) for k, t, _, _ in points]
        else:
            xs = [t.unsqueeze(0) for _, t, _, _ in points]
        xp = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]
        w = torch.cat([self.w1_rows(lo, hi) for _, _, lo, hi in points], dim=0) if len(points) > 1 else \
            self.w1_rows(points[0][2], points[0][3])
        return xp.contiguous(), w, rows.contiguous()

    def stats(self, x: ViewLike) -> tuple[Tensor, Tensor, Tensor]:
        """Stage-B member statistics without the members' outputs: ``(μ̄, mean σ², var μ)`` each
        ``[..., out_dim]`` (mean over members of μ; of σ² = exp(log σ²); population variance of μ),
        computed in blocks of ``chunk_rows`` with an analytic backward."""
        self._check(x)
        lead = x.shape[:-1]
        shape = (*lead, self.out_dim)
        lo, hi = self.logvar_min, self.logvar_max
        if torch.is_grad_enabled() and _requires_grad(x, self.parameters()):
            if isinstance(x, ViewInput) and x.pre is not None:
                z = self.pre_activation(x).reshape(-1, self.members * self.hidden).contiguous()
                mu, al, ep = _EnsembleStats.apply(z, self.w2, self.b2, self.members, self.out_dim, lo, hi,
                                                  self.chunk_rows)
            else:
                xp, w, rows = self._point_form(x)
                mu, al, ep = _EnsembleViewStats.apply(xp, w, rows, self.w2, self.b2, self.members, self.out_dim, lo,
                                                      hi, self.chunk_rows, self._cdtype)
            return mu.view(shape), al.view(shape), ep.view(shape)
        # no autograd: the pre-activations are produced block by block too (cache resident)
        with torch.no_grad():
            src = _PreRows(self, x)
            head = _Head(self.w2, self.b2, self.members, self.out_dim, lo, hi, self._cdtype)
            mu = torch.empty(src.batch * src.n, self.out_dim, dtype=self.w2.dtype, device=self.w2.device)
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
                                        head.span, head.lo - head.shift, self.chunk_rows, src.batch, src.n, mu, al, ep)
                _finish(head, mu, al, ep)
                return mu.view(shape), al.view(shape), ep.view(shape)
            for f in range(src.batch):
                for a in range(0, src.n, self.chunk_rows):
                    e = min(a + self.chunk_rows, src.n)
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


@dataclass
class ViewEstimate:
    """One view's estimate (``...`` = the input's leading shape, usually ``[B, N]``; ``D = out_dim``).

    Attributes:
        mu: ``[..., D]`` mean code (stage B: mean over members).
        var: ``[..., D]`` variance used for fusion, by the block's ``mode`` (``both`` = aleatoric +
            epistemic), plus ``var_floor``; always > 0.
        aleatoric: ``[..., D]`` predicted variance σ² (stage B: mean over members).
        epistemic: ``[..., D]`` variance of μ across members (population variance; zeros in stage A).
        members_mu: ``[T, ..., D]`` every member's μ (stage B, when asked for with ``need_members``),
            ``None`` in stage A and on the fused fast path; used to build the full covariance for
            ``fusion=full_cov``.
        member: index of the member used in stage A, ``None`` in stage B.
    """

    mu: Tensor
    var: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    members_mu: Optional[Tensor] = None
    member: Optional[int] = None


class UncertaintyBlock(nn.Module):
    """Uncertainty estimate of one view from an :class:`EnsembleMLP` (see the module docstring).

    Args:
        in_dim: feature size of the view.
        hidden: hidden width of each member (64).
        out_dim: code size ``D`` (48).
        members: ensemble size ``T`` (10).
        mode: which variance feeds the fusion — ``"both"`` (aleatoric + epistemic, default),
            ``"aleatoric"`` or ``"epistemic"``. With ``"epistemic"`` in stage A (no epistemic estimate
            yet) every view has variance ``var_floor``, i.e. the fusion is uniform.
        ensemble_switch: training steps of stage A (one random member per call); 15000 by default.
        logvar_min, logvar_max: bounds of the members' log σ² (see the module docstring).
        var_floor: added to the fusion variance so that it is strictly positive and every covariance
            built from it is positive definite (default 1e-4, small against typical σ² ≈ 1).
        compute_dtype: ``"float32"`` (exact) or ``"bfloat16"`` matmuls (see :class:`EnsembleMLP`).
    """

    def __init__(self, in_dim: int, hidden: int = 64, out_dim: int = 48, members: int = 10, mode: str = "both",
                 ensemble_switch: int = 15000, logvar_min: float = -10.0, logvar_max: float = 4.0,
                 var_floor: float = 1e-4, compute_dtype: str = "float32") -> None:
        super().__init__()
        if mode not in UNCERTAINTY_MODES:
            raise ValueError(f"UncertaintyBlock: mode must be one of {UNCERTAINTY_MODES}, got {mode!r}")
        if var_floor <= 0:
            raise ValueError(f"UncertaintyBlock: var_floor must be > 0, got {var_floor}")
        self.mode = mode
        self.ensemble_switch = int(ensemble_switch)
        self.var_floor = float(var_floor)
        self.ensemble = EnsembleMLP(in_dim, hidden, out_dim, members, logvar_min, logvar_max, compute_dtype)

    @property
    def members(self) -> int:
        return self.ensemble.members

    @property
    def out_dim(self) -> int:
        return self.ensemble.out_dim

    def is_single_member(self, step: Optional[int] = None, single_member: Optional[bool] = None) -> bool:
        """Stage decision: an explicit ``single_member`` wins; otherwise stage A iff the module is in
        training mode and ``step < ensemble_switch`` (``step=None`` → stage B)."""
        if single_member is not None:
            return bool(single_member)
        return bool(self.training and step is not None and step < self.ensemble_switch)

    def _total(self, aleatoric: Tensor, epistemic: Optional[Tensor]) -> Tensor:
        if self.mode == "both":
            v = aleatoric + epistemic if epistemic is not None else aleatoric
        elif self.mode == "aleatoric":
            v = aleatoric
        else:
            v = epistemic if epistemic is not None else torch.zeros_like(aleatoric)
        return v + self.var_floor

    def forward(self, x: ViewLike, step: Optional[int] = None, single_member: Optional[bool] = None,
                member: Optional[int] = None, need_members: bool = True) -> ViewEstimate:
        """Estimate the view ``x [..., in_dim]`` (or a :class:`ViewInput`) → :class:`ViewEstimate` with
        ``[..., out_dim]`` fields.

        Args:
            x: view features.
            step: global training step (selects stage A/B in training mode, see :meth:`is_single_member`).
            single_member: force stage A (``True``) or B (``False``).
            member: use this member (implies stage A); otherwise stage A draws one uniformly with the
                global torch RNG.
            need_members: stage B: also return every member's μ (``members_mu``, needed by
                ``fusion=full_cov``); ``False`` takes the fused statistics path (same values, faster,
                ``members_mu=None``).
        """
        if member is not None or self.is_single_member(step, single_member):
            idx = int(member) if member is not None else int(torch.randint(self.members, (1,)).item())
            mu, lv = self.ensemble.forward_member(x, idx)
            al = lv.exp()
            ep = torch.zeros_like(al)
            return ViewEstimate(mu=mu, var=self._total(al, ep), aleatoric=al, epistemic=ep, members_mu=None,
                                member=idx)
        if need_members:
            mus, lvs = self.ensemble(x)  # [T, ..., D]
            mu = mus.mean(dim=0)
            al = lvs.exp().mean(dim=0)
            ep = (mus - mu).square().mean(dim=0)  # population variance (unbiased=False), faster than .var(0)
        else:
            mus = None
            mu, al, ep = self.ensemble.stats(x)
        est = ViewEstimate(mu=mu, var=self._total(al, ep), aleatoric=al, epistemic=ep, members_mu=mus, member=None)
        assert est.mu.shape == (*x.shape[:-1], self.out_dim)
        return est


__all__ = ["EnsembleMLP", "UncertaintyBlock", "ViewEstimate", "ViewInput", "bound_logvar", "UNCERTAINTY_MODES",
           "COMPUTE_DTYPES", "CHUNK_ROWS"]
