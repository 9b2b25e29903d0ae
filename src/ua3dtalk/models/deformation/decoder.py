"""Multi-head decoder of the fused code into per-Gaussian offsets (DESIGN §4).

``[μ_f, H] → Linear(in_dim → hidden) → ReLU →`` one linear head per output:

==========  ====  ==========================================================================
head        size  meaning (applied by the caller to the canonical Gaussians)
==========  ====  ==========================================================================
xyz         3     position offset, multiplied by ``xyz_scale`` (1e-2): ``means + Δxyz``
rot         4     quaternion delta (wxyz) *added* to the canonical quaternion, then normalised
scale       3     log-scale offset: ``log_scales + Δscale``
opacity     1     opacity-logit offset (optional head)
color       3     colour offset (RGB / SH DC; optional head)
==========  ====  ==========================================================================

``single=True`` (ablation ``heads=single``) replaces the separate heads by one linear layer producing
all outputs, split afterwards. The last layers are initialised near zero (weights ~ N(0, init_std²),
biases 0), so the initial deformation is ≈ 0 and training starts from the canonical avatar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

Tensor = torch.Tensor

HEAD_DIMS = {"xyz": 3, "rot": 4, "scale": 3, "opacity": 1, "color": 3}


@dataclass
class Deltas:
    """Per-Gaussian offsets, each ``[B, N, k]`` or ``None`` when the head is not configured
    (k = 3, 4, 3, 1, 3). See the module docstring for how each is applied."""

    xyz: Optional[Tensor] = None
    rot: Optional[Tensor] = None
    scale: Optional[Tensor] = None
    opacity: Optional[Tensor] = None
    color: Optional[Tensor] = None

    def as_dict(self) -> dict[str, Tensor]:
        """The configured offsets, name → tensor."""
        return {k: getattr(self, k) for k in HEAD_DIMS if getattr(self, k) is not None}


class MultiHeadDecoder(nn.Module):
    """Decode ``[μ_f, H]`` into :class:`Deltas`.

    Args:
        in_dim: size of the decoder input = code size + position-encoding size (48 + 64 = 112).
        hidden: width of the shared trunk (64).
        heads: main heads, a subset of ``("xyz", "rot", "scale")`` (the mouth branch uses ``("xyz",)``).
        extra_heads: optional heads, a subset of ``("opacity", "color")``.
        single: one linear layer for all outputs instead of separate heads (ablation ``heads=single``).
        xyz_scale: factor applied to the Δxyz output (1e-2).
        init_std: standard deviation of the output layers' initial weights (biases start at 0).
    """

    def __init__(self, in_dim: int = 48 + 64, hidden: int = 64, heads: Sequence[str] = ("xyz", "rot", "scale"),
                 extra_heads: Sequence[str] = (), single: bool = False, xyz_scale: float = 1e-2,
                 init_std: float = 1e-4) -> None:
        super().__init__()
        names = tuple(str(h) for h in heads) + tuple(str(h) for h in extra_heads)
        if not names:
            raise ValueError("MultiHeadDecoder: at least one head is required")
        for h in names:
            if h not in HEAD_DIMS:
                raise ValueError(f"MultiHeadDecoder: unknown head {h!r}; expected one of {list(HEAD_DIMS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"MultiHeadDecoder: duplicate heads in {names}")
        self.in_dim, self.hidden = int(in_dim), int(hidden)
        self.head_names = names
        self.single = bool(single)
        self.xyz_scale = float(xyz_scale)
        self.trunk = nn.Sequential(nn.Linear(self.in_dim, self.hidden), nn.ReLU())
        if self.single:
            self.out = nn.Linear(self.hidden, sum(HEAD_DIMS[h] for h in names))
            self.heads = nn.ModuleDict()
            last = [self.out]
        else:
            self.out = None
            self.heads = nn.ModuleDict({h: nn.Linear(self.hidden, HEAD_DIMS[h]) for h in names})
            last = list(self.heads.values())
        with torch.no_grad():
            for lin in last:
                lin.weight.normal_(0.0, init_std)
                lin.bias.zero_()

    def forward(self, code: Tensor, h: Optional[Tensor] = None) -> Deltas:
        """``code [B, N, d_code]`` and ``h [N, d_h]`` / ``[B, N, d_h]`` (concatenated to the code; ``None``
        → the code alone must have ``in_dim`` features) → :class:`Deltas` with ``[B, N, k]`` fields."""
        x = code
        if h is not None:
            if h.dim() == code.dim() - 1:
                h = h.unsqueeze(0).expand(*code.shape[:-2], *h.shape)
            if h.shape[:-1] != code.shape[:-1]:
                raise ValueError(f"MultiHeadDecoder: H {list(h.shape)} does not match the code {list(code.shape)}")
            x = torch.cat([code, h], dim=-1)
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MultiHeadDecoder expects {self.in_dim} input features ([μ_f, H]), got "
                             f"{x.shape[-1]}")
        z = self.trunk(x)
        if self.single:
            assert self.out is not None
            parts = torch.split(self.out(z), [HEAD_DIMS[n] for n in self.head_names], dim=-1)
            outs = dict(zip(self.head_names, parts))
        else:
            outs = {n: self.heads[n](z) for n in self.head_names}
        if "xyz" in outs:
            outs["xyz"] = outs["xyz"] * self.xyz_scale
        for n, t in outs.items():
            assert t.shape == (*x.shape[:-1], HEAD_DIMS[n]), (n, t.shape)
        return Deltas(**outs)


__all__ = ["Deltas", "MultiHeadDecoder", "HEAD_DIMS"]
