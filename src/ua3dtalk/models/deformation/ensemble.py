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
  outputs are materialised; block temporaries are reused; ``fused_stats.py``), with a
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
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from .fused_stats import CHUNK_ROWS, ensemble_stats
from .view_input import ViewInput, ViewLike

Tensor = torch.Tensor

UNCERTAINTY_MODES = ("both", "aleatoric", "epistemic")
COMPUTE_DTYPES = ("float32", "bfloat16", "auto")


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

    def stats(self, x: ViewLike) -> tuple[Tensor, Tensor, Tensor]:
        """Stage-B member statistics without the members' outputs: ``(μ̄, mean σ², var μ)`` each
        ``[..., out_dim]`` (mean over members of μ; of σ² = exp(log σ²); population variance of μ),
        computed in blocks of ``chunk_rows`` with an analytic backward."""
        self._check(x)
        return ensemble_stats(self, x)


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
