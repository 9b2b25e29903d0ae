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
``tanh`` (a PETS-style double softplus costs ~4× more on CPU at 10k Gaussians × 10 members), and it
bounds the precision ratio between views, so one view can never take all of the fusion weight
because its variance underflowed.

Note for optimisers: in stage A the unused members' gradients are exactly zero (the parameters are
shared tensors, so their ``.grad`` is not ``None``). Adam's momentum therefore still moves a member
for a few steps after it was last chosen; this is the standard behaviour of batched ensembles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

Tensor = torch.Tensor

UNCERTAINTY_MODES = ("both", "aleatoric", "epistemic")


def bound_logvar(x: Tensor, lo: float, hi: float) -> Tensor:
    """Smoothly squash ``x`` into ``(lo, hi)``: ``c + h·tanh((x − c)/h)``, ``c = (lo+hi)/2``,
    ``h = (hi−lo)/2`` (identity-like with slope 1 around the centre of the range)."""
    c, h = 0.5 * (lo + hi), 0.5 * (hi - lo)
    return torch.tanh((x - c) * (1.0 / h)) * h + c


class EnsembleMLP(nn.Module):
    """``T`` independent MLPs ``in_dim → hidden → ReLU → (μ, log σ²) ∈ R^out_dim × R^out_dim``.

    Parameters (``T = members``): ``w1 [T, in_dim, hidden]``, ``b1 [T, hidden]``,
    ``w2 [T, hidden, 2·out_dim]``, ``b2 [T, 2·out_dim]`` (the first ``out_dim`` outputs are μ, the
    rest log σ²). Each member is initialised independently like ``nn.Linear`` (uniform in
    ``±1/√fan_in``), so members differ and the initial epistemic variance is > 0.

    Args:
        in_dim: input feature size.
        hidden: hidden width (64).
        out_dim: size of μ and of log σ² (48).
        members: ensemble size ``T`` (10).
        logvar_min: lower bound of log σ² (see :func:`bound_logvar`).
        logvar_max: upper bound of log σ².
    """

    def __init__(self, in_dim: int, hidden: int = 64, out_dim: int = 48, members: int = 10,
                 logvar_min: float = -10.0, logvar_max: float = 4.0) -> None:
        super().__init__()
        if min(in_dim, hidden, out_dim, members) < 1:
            raise ValueError(f"EnsembleMLP: sizes must be >= 1, got in_dim={in_dim}, hidden={hidden}, "
                             f"out_dim={out_dim}, members={members}")
        if not logvar_min < logvar_max:
            raise ValueError(f"EnsembleMLP: logvar_min ({logvar_min}) must be < logvar_max ({logvar_max})")
        self.in_dim, self.hidden, self.out_dim, self.members = int(in_dim), int(hidden), int(out_dim), int(members)
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        t = self.members
        self.w1 = nn.Parameter(torch.empty(t, self.in_dim, self.hidden))
        self.b1 = nn.Parameter(torch.empty(t, self.hidden))
        self.w2 = nn.Parameter(torch.empty(t, self.hidden, 2 * self.out_dim))
        self.b2 = nn.Parameter(torch.empty(t, 2 * self.out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Independent ``nn.Linear``-style init of every member: U(±1/√fan_in) for weights and biases."""
        with torch.no_grad():
            for w, b, fan_in in ((self.w1, self.b1, self.in_dim), (self.w2, self.b2, self.hidden)):
                bound = 1.0 / math.sqrt(fan_in)
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, hidden={self.hidden}, out_dim={self.out_dim}, members={self.members}, "
                f"logvar=[{self.logvar_min}, {self.logvar_max}]")

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        mu, lv = out.split(self.out_dim, dim=-1)
        return mu, bound_logvar(lv, self.logvar_min, self.logvar_max)

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"EnsembleMLP expects input [..., {self.in_dim}], got {list(x.shape)}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All members: ``x [..., in_dim]`` → ``(μ, log σ²)``, each ``[T, ..., out_dim]``."""
        self._check(x)
        lead = x.shape[:-1]
        xf = x.reshape(-1, self.in_dim)  # [M, in]
        m = xf.shape[0]
        # layer 1: the input is shared by the members → one matmul against the members' concatenated
        # weights ([in, T·hidden]); layer 2: one batched matmul over the members. (Equivalent to the
        # einsums "mi,tih->tmh" and "tmh,tho->tmo"; this layout is the fastest on CPU.)
        w1 = self.w1.permute(1, 0, 2).reshape(self.in_dim, self.members * self.hidden)
        h = torch.relu(torch.addmm(self.b1.reshape(-1), xf, w1))  # [M, T·hidden]
        h = h.view(m, self.members, self.hidden).transpose(0, 1)  # [T, M, hidden] (strided view)
        out = torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)  # [T, M, 2·out]
        mu, lv = self._split(out)
        shape = (self.members, *lead, self.out_dim)
        return mu.reshape(shape), lv.reshape(shape)

    def forward_member(self, x: Tensor, idx: int) -> tuple[Tensor, Tensor]:
        """One member ``idx``: ``x [..., in_dim]`` → ``(μ, log σ²)``, each ``[..., out_dim]``.
        Only that member's slice of the parameters takes part (the others get zero gradients)."""
        self._check(x)
        if not 0 <= int(idx) < self.members:
            raise IndexError(f"EnsembleMLP member {idx} out of range [0, {self.members})")
        h = torch.relu(x @ self.w1[idx] + self.b1[idx])
        return self._split(h @ self.w2[idx] + self.b2[idx])


@dataclass
class ViewEstimate:
    """One view's estimate (``...`` = the input's leading shape, usually ``[B, N]``; ``D = out_dim``).

    Attributes:
        mu: ``[..., D]`` mean code (stage B: mean over members).
        var: ``[..., D]`` variance used for fusion, by the block's ``mode`` (``both`` = aleatoric +
            epistemic), plus ``var_floor``; always > 0.
        aleatoric: ``[..., D]`` predicted variance σ² (stage B: mean over members).
        epistemic: ``[..., D]`` variance of μ across members (population variance; zeros in stage A).
        members_mu: ``[T, ..., D]`` every member's μ (stage B), ``None`` in stage A; used to build the
            full covariance for ``fusion=full_cov``.
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
    """

    def __init__(self, in_dim: int, hidden: int = 64, out_dim: int = 48, members: int = 10, mode: str = "both",
                 ensemble_switch: int = 15000, logvar_min: float = -10.0, logvar_max: float = 4.0,
                 var_floor: float = 1e-4) -> None:
        super().__init__()
        if mode not in UNCERTAINTY_MODES:
            raise ValueError(f"UncertaintyBlock: mode must be one of {UNCERTAINTY_MODES}, got {mode!r}")
        if var_floor <= 0:
            raise ValueError(f"UncertaintyBlock: var_floor must be > 0, got {var_floor}")
        self.mode = mode
        self.ensemble_switch = int(ensemble_switch)
        self.var_floor = float(var_floor)
        self.ensemble = EnsembleMLP(in_dim, hidden, out_dim, members, logvar_min, logvar_max)

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

    def _total(self, aleatoric: Tensor, epistemic: Tensor) -> Tensor:
        if self.mode == "both":
            v = aleatoric + epistemic
        elif self.mode == "aleatoric":
            v = aleatoric
        else:
            v = epistemic
        return v + self.var_floor

    def forward(self, x: Tensor, step: Optional[int] = None, single_member: Optional[bool] = None,
                member: Optional[int] = None) -> ViewEstimate:
        """Estimate the view ``x [..., in_dim]`` → :class:`ViewEstimate` with ``[..., out_dim]`` fields.

        Args:
            x: view features.
            step: global training step (selects stage A/B in training mode, see :meth:`is_single_member`).
            single_member: force stage A (``True``) or B (``False``).
            member: use this member (implies stage A); otherwise stage A draws one uniformly with the
                global torch RNG.
        """
        if member is not None or self.is_single_member(step, single_member):
            idx = int(member) if member is not None else int(torch.randint(self.members, (1,)).item())
            mu, lv = self.ensemble.forward_member(x, idx)
            al = lv.exp()
            ep = torch.zeros_like(al)
            return ViewEstimate(mu=mu, var=self._total(al, ep), aleatoric=al, epistemic=ep, members_mu=None,
                                member=idx)
        mus, lvs = self.ensemble(x)  # [T, ..., D]
        mu = mus.mean(dim=0)
        al = lvs.exp().mean(dim=0)
        ep = (mus - mu).square().mean(dim=0)  # population variance (unbiased=False), faster than .var(0)
        est = ViewEstimate(mu=mu, var=self._total(al, ep), aleatoric=al, epistemic=ep, members_mu=mus, member=None)
        assert est.mu.shape == (*x.shape[:-1], self.out_dim)
        return est


__all__ = ["EnsembleMLP", "UncertaintyBlock", "ViewEstimate", "bound_logvar", "UNCERTAINTY_MODES"]
