"""Uncertainty-aware fusion of the deformation views (DESIGN §4).

Pure fusion functions (``V`` views stacked on dim 0, ``...`` any leading shape, ``D`` code size):

* :func:`diagonal_fusion` ★ (default) — per-dimension precision weighting of independent Gaussians:
  ``σ_f² = 1 / Σ_v σ_v⁻²``, ``μ_f = σ_f² Σ_v μ_v / σ_v²``; weights ``w_v = σ_v⁻² / Σ_u σ_u⁻²``.
* :func:`full_cov_fusion` — the authors' version with full ``D×D`` covariances:
  ``Σ_f = (Σ_v Σ_v⁻¹)⁻¹``, ``μ_f = Σ_f Σ_v Σ_v⁻¹ μ_v``, computed with batched Cholesky factorisations
  (``O(V·D³)`` per Gaussian instead of ``O(V·D)``; see ``benchmarks/fusion.py``).
* :func:`uniform_fusion` — the mean of the μ_v (no variances; ablation ``fusion=uniform``).

When every ``Σ_v`` is diagonal, ``full_cov_fusion`` equals ``diagonal_fusion`` (tested).

Full covariance of a view (:func:`ensemble_covariance`) ★: the ensemble gives ``T`` member means; the
view's covariance is the population sample covariance of the member means (epistemic part, rank ≤
T−1) plus the diagonal aleatoric variance and the block's ``var_floor`` (so it is positive definite):
``Σ_v = 1/T Σ_t (μ_t − μ̄)(μ_t − μ̄)ᵀ + diag(σ̄²_alea + floor)``. Its diagonal is exactly the
``var`` the diagonal fusion uses, so ``full_cov`` differs from ``diagonal`` only by the off-diagonal
ensemble covariance. With ``uncertainty=aleatoric`` or in stage A (one member, no ensemble) the
covariance is diagonal and ``full_cov`` reduces to ``diagonal`` (at a much higher cost).

The module's ``full_cov`` path never forms a ``D×D`` matrix: with ``W_v`` = member deviations / √T,
``Σ_v = diag(d_v) + W_v W_vᵀ``, so by the Woodbury identity ``P_v = A_v − A_vW_v C_v W_vᵀA_v`` (``A_v = diag(d_v)⁻¹``,
``C_v = (I + W_vᵀA_vW_v)⁻¹``, a ``T×T`` inverse; :func:`lowrank_precision`), and ``Σ_v P_v = S − U C Uᵀ`` with
``S = Σ_v A_v`` (diagonal), ``U = [A_1W_1 … A_VW_V]`` (``D × VT``) and ``C`` block-diagonal. Woodbury once more:
``Σ_f = S⁻¹ + G M⁻¹ Gᵀ`` with ``G = S⁻¹U`` and ``M = C⁻¹ − UᵀS⁻¹U`` (``VT × VT``; ``M ⪰ I``, so its Cholesky is
well conditioned). :func:`full_cov_fusion_factors` returns ``μ_f``, the diagonal of ``Σ_f``, the weights and the
factors ``(S⁻¹, G, M⁻¹)``; :attr:`FusionOutput.cov` forms ``Σ_f`` only when asked. The same values and gradients
as :func:`full_cov_fusion` on the formed covariances (tested pairwise, float64; ``benchmarks/fusion.py`` row
``full_cov_lowrank``).

:class:`UncertaintyFusion` wraps one :class:`~ua3dtalk.models.deformation.ensemble.UncertaintyBlock`
per view and applies the chosen fusion (``diagonal | full_cov | uniform``), or, for ``concat``, the
TalkingGaussian-style single MLP over the concatenated views (no uncertainty).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
from torch import nn

from .ensemble import UNCERTAINTY_MODES, UncertaintyBlock, ViewEstimate, ViewInput, ViewLike

Tensor = torch.Tensor

FUSION_MODES = ("diagonal", "full_cov", "uniform", "concat")


# --------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------


def diagonal_fusion(mus: Tensor, vars: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Precision-weighted fusion of independent per-dimension Gaussians.

    Args:
        mus: ``[V, ..., D]`` view means.
        vars: ``[V, ..., D]`` view variances (> 0).
    Returns:
        ``(mu_f [..., D], var_f [..., D], weights [V, ..., D])`` with ``weights`` the precision share of
        each view (sums to 1 over ``V``; ``mu_f = Σ_v weights_v · mu_v``).
    """
    if mus.shape != vars.shape or mus.dim() < 2:
        raise ValueError(f"diagonal_fusion: mus and vars must both be [V, ..., D], got {list(mus.shape)} "
                         f"and {list(vars.shape)}")
    prec = vars.reciprocal()
    prec_sum = prec.sum(dim=0)
    var_f = prec_sum.reciprocal()
    weights = prec * var_f
    mu_f = (weights * mus).sum(dim=0)
    return mu_f, var_f, weights


class _SPDInverse(torch.autograd.Function):
    """Inverse of symmetric positive-definite matrices ``[..., D, D]``: Cholesky in the forward pass
    (``cholesky_ex`` + ``cholesky_inverse``; raises when a matrix is not positive definite), and the
    analytic backward ``∂L/∂A = −A⁻¹ G A⁻¹`` (two batched matmuls — ~2× faster end to end on CPU than
    differentiating through the Cholesky factorisation)."""

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:  # type: ignore[override]
        lower, info = torch.linalg.cholesky_ex(a)
        if bool((info != 0).any()):
            raise ValueError("full_cov_fusion: a covariance / precision is not positive definite "
                             f"({int((info != 0).sum())} failing matrices)")
        inv = torch.cholesky_inverse(lower)
        ctx.save_for_backward(inv)
        return inv

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (inv,) = ctx.saved_tensors
        return -(inv @ grad @ inv)


def spd_inverse(a: Tensor) -> Tensor:
    """Batched inverse of symmetric positive-definite matrices ``[..., D, D]`` via Cholesky (differentiable)."""
    return _SPDInverse.apply(a)


def full_cov_fusion(mus: Tensor, covs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Precision-weighted fusion with full covariances (product of Gaussians).

    ``P_v = Σ_v⁻¹``, ``Σ_f = (Σ_v P_v)⁻¹``, ``μ_f = Σ_f Σ_v P_v μ_v`` — the inverses by batched Cholesky
    factorisations (:func:`spd_inverse`; every ``Σ_v`` must be symmetric positive definite, otherwise
    ``ValueError``).

    Args:
        mus: ``[V, ..., D]`` view means.
        covs: ``[V, ..., D, D]`` view covariances.
    Returns:
        ``(mu_f [..., D], cov_f [..., D, D], weights [V, ...])`` with ``weights`` the share of each view
        in the total precision, ``tr(P_v) / Σ_u tr(P_u)`` (one scalar per view and leading index; a
        logging summary — it equals the diagonal fusion's weight only when the precisions are equal
        across dimensions).
    """
    d = mus.shape[-1]
    if covs.shape != (*mus.shape, d) or mus.dim() < 2:
        raise ValueError(f"full_cov_fusion: expected mus [V, ..., D] and covs [V, ..., D, D], got "
                         f"{list(mus.shape)} and {list(covs.shape)}")
    prec = spd_inverse(covs)  # [V, ..., D, D]  Σ_v⁻¹
    eta = prec @ mus.unsqueeze(-1)  # [V, ..., D, 1]  Σ_v⁻¹ μ_v
    cov_f = spd_inverse(prec.sum(dim=0))  # (Σ_v P_v)⁻¹
    mu_f = (cov_f @ eta.sum(dim=0)).squeeze(-1)
    tr = prec.diagonal(dim1=-2, dim2=-1).sum(-1)  # [V, ...]
    weights = tr / tr.sum(dim=0, keepdim=True)
    return mu_f, cov_f, weights


def lowrank_precision(diag: Tensor, w: Tensor) -> Tensor:
    """``(diag(d) + W Wᵀ)⁻¹`` by the Woodbury identity: ``D⁻¹ − D⁻¹W (I + WᵀD⁻¹W)⁻¹ WᵀD⁻¹``.

    Args:
        diag: ``[..., D]`` positive diagonal ``d``.
        w: ``[..., D, T]`` low-rank factor ``W`` (``T`` small: one ``T×T`` Cholesky instead of a ``D×D`` one).
    Returns:
        ``[..., D, D]`` precision.
    """
    a, aw, _, core = _woodbury_parts(diag, w)
    return torch.diag_embed(a) - aw @ core @ aw.transpose(-1, -2)


def _woodbury_parts(diag: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(a = 1/d [..., D], aw = a·W [..., D, T], c_inv = I + Wᵀ a W [..., T, T], core = c_inv⁻¹)``."""
    a = diag.reciprocal()
    aw = a.unsqueeze(-1) * w
    c_inv = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device) + w.transpose(-1, -2) @ aw
    return a, aw, c_inv, spd_inverse(c_inv)


def full_cov_fusion_factors(mus: Tensor, diag: Tensor, w: Tensor
                            ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """:func:`full_cov_fusion` for covariances ``Σ_v = diag(d_v) + W_v W_vᵀ`` (an ensemble's: ``d_v`` = aleatoric
    variance + floor, ``W_v`` = member deviations / √T, :func:`ensemble_covariance`) without any ``D×D`` matrix
    (the module docstring derives it): ``T×T`` inverses per view and one ``VT×VT`` inverse of ``M ⪰ I``.

    Args:
        mus: ``[V, ..., D]``; diag: ``[V, ..., D]`` (positive); w: ``[V, ..., D, T]``.
    Returns:
        ``(mu_f [..., D], var_f [..., D], weights [V, ...], (inv_s [..., D], g [..., D, VT], m_inv [..., VT, VT]))``
        with ``var_f`` the diagonal of ``Σ_f = diag(inv_s) + g m_inv gᵀ`` and ``weights`` as :func:`full_cov_fusion`'s
        (``tr P_v / Σ_u tr P_u``).
    """
    if diag.shape != mus.shape or w.shape[:-1] != mus.shape or mus.dim() < 2:
        raise ValueError(f"full_cov_fusion_lowrank: expected mus and diag [V, ..., D] and w [V, ..., D, T], got "
                         f"{list(mus.shape)}, {list(diag.shape)} and {list(w.shape)}")
    v, t = mus.shape[0], w.shape[-1]
    lead = mus.shape[1:-1]
    a, aw, c_inv, core = _woodbury_parts(diag, w)  # A_v, A_v W_v, C_v⁻¹ = I + W_vᵀ A_v W_v, C_v
    inv_s = a.sum(dim=0).reciprocal()  # [..., D]  S⁻¹
    # Σ_v P_v μ_v = Σ_v A_v μ_v − A_v W_v C_v (W_vᵀ A_v μ_v)
    eta = (a * mus).sum(dim=0) - (aw @ (core @ (aw.transpose(-1, -2) @ mus.unsqueeze(-1)))).squeeze(-1).sum(dim=0)
    u = aw.movedim(0, -2).reshape(*lead, mus.shape[-1], v * t)  # [..., D, VT]  (view-major columns)
    g = inv_s.unsqueeze(-1) * u  # [..., D, VT]  S⁻¹U
    block = torch.einsum("v...ij,vu->...viuj", c_inv, torch.eye(v, dtype=w.dtype, device=w.device))
    m = block.reshape(*lead, v * t, v * t) - u.transpose(-1, -2) @ g  # [..., VT, VT]  C⁻¹ − UᵀS⁻¹U
    m_inv = spd_inverse(m)
    mu_f = inv_s * eta + (g @ (m_inv @ (g.transpose(-1, -2) @ eta.unsqueeze(-1)))).squeeze(-1)
    var_f = inv_s + ((g @ m_inv) * g).sum(dim=-1)
    tr = a.sum(dim=-1) - ((aw @ core) * aw).sum(dim=(-2, -1))  # [V, ...]  tr P_v
    return mu_f, var_f, tr / tr.sum(dim=0, keepdim=True), (inv_s, g, m_inv)


def lowrank_covariance(inv_s: Tensor, g: Tensor, m_inv: Tensor) -> Tensor:
    """The fused covariance ``diag(inv_s) + g m_inv gᵀ`` ``[..., D, D]`` from :func:`full_cov_fusion_factors`."""
    return torch.diag_embed(inv_s) + g @ m_inv @ g.transpose(-1, -2)


def full_cov_fusion_lowrank(mus: Tensor, diag: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`full_cov_fusion_factors` with the fused covariance formed: ``(mu_f, cov_f [..., D, D], weights)``,
    the same values as ``full_cov_fusion(mus, diag_embed(diag) + w wᵀ)`` (tested pairwise)."""
    mu_f, _, weights, factors = full_cov_fusion_factors(mus, diag, w)
    return mu_f, lowrank_covariance(*factors), weights


def uniform_fusion(mus: Tensor) -> Tensor:
    """Uniform fusion: ``mus [V, ..., D]`` → mean over views ``[..., D]``."""
    if mus.dim() < 2:
        raise ValueError(f"uniform_fusion: mus must be [V, ..., D], got {list(mus.shape)}")
    return mus.mean(dim=0)


def ensemble_covariance(est: ViewEstimate, include_epistemic: bool = True) -> Tensor:
    """Full covariance ``[..., D, D]`` of a view from its ensemble estimate (module docstring):
    population covariance of ``est.members_mu`` (when present and ``include_epistemic``) with its
    diagonal replaced by ``est.var``; otherwise ``diag(est.var)``. The diagonal always equals
    ``est.var``."""
    if est.members_mu is None or not include_epistemic:
        return torch.diag_embed(est.var)
    mus = est.members_mu
    t, d = mus.shape[0], mus.shape[-1]
    dev = (mus - est.mu.unsqueeze(0)).reshape(t, -1, d)  # [T, M, D]
    cov = torch.einsum("tmd,tme->mde", dev, dev) / t  # [M, D, D]
    cov = cov.reshape(*est.mu.shape, d)
    # var − epistemic = aleatoric + floor (mode both) or floor (mode epistemic)
    return cov + torch.diag_embed(est.var - est.epistemic)


# --------------------------------------------------------------------------------------------------
# module
# --------------------------------------------------------------------------------------------------


@dataclass
class FusionOutput:
    """Output of :class:`UncertaintyFusion` (``...`` = the views' leading shape, usually ``[B, N]``).

    Attributes:
        mu: ``[..., D]`` fused code.
        var: ``[..., D]`` fused variance (diagonal of ``cov`` for ``full_cov``); ``None`` for
            ``uniform`` and ``concat``.
        weights: view name → 0-dim detached tensor, the mean fusion weight of the view (precision share
            for ``diagonal``/``full_cov``, ``1/V`` for ``uniform``; empty for ``concat``) — for logging.
        estimates: view name → :class:`ViewEstimate` (empty for ``concat``).
        dense_cov: ``[..., D, D]`` fused covariance when it was formed (``full_cov`` without the ensembles'
            low-rank covariances); otherwise ``cov_factors`` ``(inv_s, g, m_inv)`` hold it
            (:func:`full_cov_fusion_factors`). Read either through :attr:`cov`.
    """

    mu: Tensor
    var: Optional[Tensor]
    weights: dict[str, Tensor] = field(default_factory=dict)
    estimates: dict[str, ViewEstimate] = field(default_factory=dict)
    dense_cov: Optional[Tensor] = None
    cov_factors: Optional[tuple[Tensor, Tensor, Tensor]] = None

    @property
    def cov(self) -> Optional[Tensor]:
        """``[..., D, D]`` fused covariance (``full_cov`` only; formed from ``cov_factors`` on each read)."""
        if self.dense_cov is None and self.cov_factors is not None:
            return lowrank_covariance(*self.cov_factors)
        return self.dense_cov

    def stats(self) -> dict[str, Tensor]:
        """Detached 0-dim scalars for logging: ``weight/<view>``, ``aleatoric/<view>``,
        ``epistemic/<view>``, ``var/<view>`` (means over Gaussians and dimensions) and ``var/fused``."""
        out: dict[str, Tensor] = {f"weight/{k}": v for k, v in self.weights.items()}
        for k, e in self.estimates.items():
            out[f"aleatoric/{k}"] = e.aleatoric.detach().mean()
            out[f"epistemic/{k}"] = e.epistemic.detach().mean()
            out[f"var/{k}"] = e.var.detach().mean()
        if self.var is not None:
            out["var/fused"] = self.var.detach().mean()
        return out


class UncertaintyFusion(nn.Module):
    """Per-view uncertainty blocks + fusion (DESIGN §4).

    Args:
        view_dims: view name → feature size, e.g. ``{"audio": 102, "content": 128, "style": 128,
            "emotion": 192}``; the order is the order of the views everywhere (stacking, logging).
        out_dim: code size ``D`` (48).
        hidden: hidden width of the ensemble members / of the concat MLP (64).
        members: ensemble size ``T`` (10).
        fusion: ``"diagonal"`` (default ★), ``"full_cov"`` (authors'), ``"uniform"`` (mean of μ) or
            ``"concat"`` (one MLP ``Σd_v → hidden → ReLU → D`` over the concatenated, standardised views, no
            uncertainty blocks).
        uncertainty: variance used by the fusion — ``"both"``, ``"aleatoric"`` or ``"epistemic"``.
        ensemble_switch: training steps of stage A (one random member per view per step).
        logvar_min, logvar_max: bounds of the members' log σ².
        var_floor: variance floor added to every view's fusion variance.
        compute_dtype: ``"float32"`` (exact, default), ``"bfloat16"`` or ``"auto"`` ensemble matmuls (see
            :class:`~ua3dtalk.models.deformation.ensemble.EnsembleMLP`).
        view_dropout: ★ probability of leaving each view out of a training forward (per call, i.e. per
            frame; at least one view is always kept, never in eval mode). The fusion then runs over the
            kept views only (a left-out view has weight 0 in ``weights``). Without it precision weighting
            is rich-get-richer: a view's μ receives gradient in proportion to its fusion weight, so a view
            that starts out noisier (the emotion view, whose input is constant within a clip) is starved and
            never learns what only it can tell; with dropout every view must predict the deformation on its
            own now and then, and its variance then measures how well it really can. ``concat`` fusion
            zeroes a left-out view's input instead.

    The views may be tensors ``[B, N, d_v]`` or :class:`~ua3dtalk.models.deformation.ensemble.ViewInput`
    (segments of the view, not materialised). For ``diagonal`` / ``uniform`` fusion (and ``full_cov``
    with ``uncertainty=aleatoric``) stage B uses the fused member statistics (``members_mu`` of the
    estimates is then ``None``).
    """

    def __init__(
        self,
        view_dims: Mapping[str, int],
        out_dim: int = 48,
        hidden: int = 64,
        members: int = 10,
        fusion: str = "diagonal",
        uncertainty: str = "both",
        ensemble_switch: int = 15000,
        logvar_min: float = -10.0,
        logvar_max: float = 4.0,
        var_floor: float = 1e-4,
        compute_dtype: str = "float32",
        view_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(view_dropout) < 1.0:
            raise ValueError(f"UncertaintyFusion: view_dropout must be in [0, 1), got {view_dropout!r}")
        self.view_dropout = float(view_dropout)
        view_dims = {str(k): int(v) for k, v in dict(view_dims).items()}
        if not view_dims:
            raise ValueError("UncertaintyFusion: view_dims must name at least one view")
        if fusion not in FUSION_MODES:
            raise ValueError(f"UncertaintyFusion: fusion must be one of {FUSION_MODES}, got {fusion!r}")
        if uncertainty not in UNCERTAINTY_MODES:
            raise ValueError(f"UncertaintyFusion: uncertainty must be one of {UNCERTAINTY_MODES}, got "
                             f"{uncertainty!r}")
        self.view_dims = view_dims
        self.out_dim = int(out_dim)
        self.fusion = fusion
        self.uncertainty = uncertainty
        self.ensemble_switch = int(ensemble_switch)
        self.compute_dtype = str(compute_dtype)
        if fusion == "concat":
            self.blocks = nn.ModuleDict()
            d_in = sum(view_dims.values())
            # the views arrive standardised per channel (DESIGN §4.5; a per-sample LayerNorm here could not
            # remove the offset every sample shares, and the MLP died at demo scale); He-initialised
            self.concat_mlp: Optional[nn.Module] = nn.Sequential(
                nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, self.out_dim))
            with torch.no_grad():
                for lin in (self.concat_mlp[0], self.concat_mlp[2]):
                    lin.weight.normal_(0.0, math.sqrt((2.0 if lin is self.concat_mlp[0] else 1.0) / lin.in_features))
                    lin.bias.zero_()
        else:
            self.concat_mlp = None
            self.blocks = nn.ModuleDict({
                name: UncertaintyBlock(d, hidden, self.out_dim, members, uncertainty, ensemble_switch,
                                       logvar_min, logvar_max, var_floor, compute_dtype)
                for name, d in view_dims.items()
            })

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self.view_dims)

    def is_single_member(self, step: Optional[int] = None, single_member: Optional[bool] = None) -> bool:
        """Stage A iff ``single_member`` is True, or (unset and) training with ``step < ensemble_switch``."""
        if single_member is not None:
            return bool(single_member)
        return bool(self.training and step is not None and step < self.ensemble_switch)

    def active_views(self) -> tuple[str, ...]:
        """The views of this forward: all of them, or (training with ``view_dropout``) a random subset of
        at least one, each kept with probability ``1 − view_dropout`` (torch's global RNG)."""
        names = self.view_names
        if not (self.training and self.view_dropout > 0 and len(names) > 1):
            return names
        keep = torch.rand(len(names)) >= self.view_dropout
        if not bool(keep.any()):
            keep[int(torch.randint(len(names), ()))] = True
        return tuple(n for n, k in zip(names, keep.tolist()) if k)

    def uncertainty_nll(self, fused: FusionOutput, beta: float = 0.5) -> Optional[Tensor]:
        """Likelihood term that gives each view's variance a meaning (DESIGN §4.5), or ``None`` when no
        fused variance depends on a trained σ² (``uniform``/``concat`` fusion, ``uncertainty=epistemic``).

        For every view ``v`` of ``fused`` (those kept by view dropout), with ``r = μ_v − sg(μ_f)`` the view's
        residual against the stop-gradient fused code and ``s² = σ²_alea,v + sg(σ²_epi,v) + floor`` its
        predictive variance: the β-NLL (Seitzer et al., ICLR 2022)
        ``sg(s²)^β · ½ (sg(r)²/s² + log s²)``, averaged over dimensions, Gaussians and frames, then over views.
        Only the aleatoric log-variance heads (and, through them, the members' hidden layers) receive its
        gradient: the means are trained by the rendering loss alone (the term does not pull the views
        together) and the epistemic part is what the ensemble's disagreement says. At the optimum
        ``s² = E[r²]``: a view whose mean is far from the consensus gets a large variance, hence a small
        fusion weight."""
        if self.fusion in ("uniform", "concat") or self.uncertainty == "epistemic" or not fused.estimates:
            return None
        target = fused.mu.detach()
        terms = []
        for name, e in fused.estimates.items():
            var = e.aleatoric + e.epistemic.detach() + self.blocks[name].var_floor
            r2 = (e.mu.detach() - target).square()
            nll = 0.5 * (r2 / var + var.log())
            if beta:
                nll = nll * var.detach().pow(beta)
            terms.append(nll.mean())
        return torch.stack(terms).mean()

    @property
    def needs_members(self) -> bool:
        """Whether the fusion needs every member's μ (``full_cov`` with the epistemic covariance)."""
        return self.fusion == "full_cov" and self.uncertainty != "aleatoric"

    def _check_views(self, views: Mapping[str, ViewLike], rows: Optional[Mapping[str, Tensor]] = None) -> tuple:
        missing = [n for n in self.view_dims if n not in views]
        extra = [n for n in views if n not in self.view_dims]
        if missing or extra:
            raise ValueError(f"UncertaintyFusion: views must be exactly {list(self.view_dims)}; missing "
                             f"{missing}, unexpected {extra}")
        rows = rows or {}
        bad = [n for n in rows if n not in self.view_dims]
        if bad:
            raise ValueError(f"UncertaintyFusion: rows given for {bad}, which are not views of this fusion")
        lead = None
        for n, d in self.view_dims.items():
            x = views[n]
            if x.dim() < 2 or x.shape[-1] != d:
                raise ValueError(f"UncertaintyFusion: view {n!r} must be [B, N, {d}], got {list(x.shape)}")
            shape = tuple(x.shape[:-1])
            if n in rows:  # this view's rows are gathered into the output rows
                r = rows[n]
                if r.dim() != 1 or r.dtype not in (torch.int32, torch.int64) or x.dim() < 3:
                    raise ValueError(f"UncertaintyFusion: rows[{n!r}] must be a 1-D integer index over the "
                                     f"view's {x.shape[0]} rows, got {r.dtype} {list(r.shape)}")
                if len(r) and (int(r.min()) < 0 or int(r.max()) >= x.shape[0]):
                    raise ValueError(f"UncertaintyFusion: rows[{n!r}] indexes outside the view's {x.shape[0]} "
                                     "rows")
                shape = (len(r), *shape[1:])
            if lead is None:
                lead = shape
            elif shape != lead:
                raise ValueError(f"UncertaintyFusion: view {n!r} has leading shape {list(shape)}, "
                                 f"other views {list(lead)}")
        return tuple(lead)

    @staticmethod
    def _gather(est: ViewEstimate, rows: Tensor) -> ViewEstimate:
        """``est`` with its leading (frame) dimension gathered by ``rows`` (``members_mu``: the dimension after
        the members')."""
        return ViewEstimate(mu=est.mu[rows], var=est.var[rows], aleatoric=est.aleatoric[rows],
                            epistemic=est.epistemic[rows],
                            members_mu=None if est.members_mu is None else est.members_mu[:, rows],
                            member=est.member)

    def forward(self, views: Mapping[str, ViewLike], step: Optional[int] = None,
                single_member: Optional[bool] = None, rows: Optional[Mapping[str, Tensor]] = None) -> FusionOutput:
        """Fuse the views.

        Args:
            views: name → ``[B, N, d_v]`` tensor or :class:`ViewInput` (exactly the names of ``view_dims``).
            step: global training step (stage A while training and ``step < ensemble_switch``; ``None``
                → stage B).
            single_member: force stage A (True) / B (False).
            rows: view → ``[B]`` integer index: that view is given for ``F`` distinct frames (``[F, N, d_v]``)
                and output row ``b`` uses its frame ``rows[b]``. The view is evaluated once per distinct frame
                and its estimate gathered — the same values and gradients as repeating its input rows (used
                by the landmark term's emotion-swapped copies, which differ from their frame in the emotion
                view only). Views not named are given for every output row.
        Returns:
            :class:`FusionOutput` with ``mu [B, N, out_dim]``.
        """
        lead = self._check_views(views, rows)
        rows = rows or {}
        names = self.active_views()
        if self.fusion == "concat":
            assert self.concat_mlp is not None
            xs = [views[n].materialize() if isinstance(views[n], ViewInput) else views[n] for n in self.view_names]
            xs = [x[rows[n]] if n in rows else x for n, x in zip(self.view_names, xs)]
            xs = [x if n in names else torch.zeros_like(x) for n, x in zip(self.view_names, xs)]
            mu = self.concat_mlp(torch.cat(xs, dim=-1))
            return FusionOutput(mu=mu, var=None)
        single = self.is_single_member(step, single_member)
        need = self.needs_members
        ests = {n: self.blocks[n](views[n], single_member=single, need_members=need) for n in names}
        ests = {n: self._gather(e, rows[n]) if n in rows else e for n, e in ests.items()}
        mus = torch.stack([ests[n].mu for n in names]) if self.fusion != "diagonal" else None  # [V, ..., D]
        cov = factors = None
        if self.fusion == "uniform":
            mu, var = uniform_fusion(mus), None
            w = [mus.new_tensor(1.0 / len(names))] * len(names)
        elif self.fusion == "diagonal":
            # = diagonal_fusion(mus, vars) without stacking the views or materialising the weights:
            # σ_f² = 1/Σ_v σ_v⁻², μ_f = σ_f²·Σ_v σ_v⁻² μ_v; logged weight of v = mean(σ_v⁻²·σ_f²)
            precs = [ests[n].var.reciprocal() for n in names]
            prec_sum = precs[0]
            for p in precs[1:]:
                prec_sum = prec_sum + p
            var = prec_sum.reciprocal()
            acc = precs[0] * ests[names[0]].mu
            for p, n in zip(precs[1:], names[1:]):
                acc = acc + p * ests[n].mu
            mu = var * acc
            vf = var.detach().reshape(-1)
            w = [torch.dot(p.detach().reshape(-1), vf) / vf.numel() for p in precs]
        else:  # full_cov
            inc = self.uncertainty != "aleatoric"
            if inc and all(ests[n].members_mu is not None for n in names):
                # Σ_v = diag(var − epistemic) + W Wᵀ, W = member deviations / √T (= ensemble_covariance): no D×D
                # matrix (full_cov_fusion_factors; the covariance is formed only when FusionOutput.cov is read)
                t = ests[names[0]].members_mu.shape[0]
                ws = torch.stack([((ests[n].members_mu - ests[n].mu) / math.sqrt(t)).movedim(0, -1) for n in names])
                ds = torch.stack([ests[n].var - ests[n].epistemic for n in names])
                mu, var, wts, factors = full_cov_fusion_factors(mus, ds, ws)
            else:
                covs = torch.stack([ensemble_covariance(ests[n], include_epistemic=inc) for n in names])
                mu, cov, wts = full_cov_fusion(mus, covs)
                var = cov.diagonal(dim1=-2, dim2=-1)
            w = [wts[i].detach().mean() for i in range(len(names))]
        assert mu.shape == (*lead, self.out_dim), mu.shape
        weights = dict(zip(names, w))
        if len(names) < len(self.view_dims):  # left out by view dropout: weight 0
            weights = {n: weights.get(n, mu.new_zeros(())) for n in self.view_names}
        return FusionOutput(mu=mu, var=var, weights=weights, estimates=ests, dense_cov=cov, cov_factors=factors)


__all__ = ["diagonal_fusion", "full_cov_fusion", "full_cov_fusion_lowrank", "full_cov_fusion_factors",
           "lowrank_covariance", "lowrank_precision", "spd_inverse",
           "uniform_fusion", "ensemble_covariance", "FusionOutput",
           "UncertaintyFusion", "FUSION_MODES"]
