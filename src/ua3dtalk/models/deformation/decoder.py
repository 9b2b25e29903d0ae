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
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

HEAD_DIMS = {"xyz": 3, "rot": 4, "scale": 3, "opacity": 1, "color": 3}
#: nonlinearities of the decoder trunk
ACTIVATIONS = ("relu", "silu")


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
        activation: the trunk's nonlinearity, ``relu`` (the authors' decoder) or ``silu`` (★). With ``relu``
            the trunk dies at demo scale: in the session-5/6 demo runs 6 of its 64 units were ever active
            (1–2 % of unit-inputs), and 0 in both runs with a random face background — every Gaussian then
            gets one constant offset (no expression, no emotion control, no gradient to the fields behind
            it). SiLU has a gradient for negative inputs, so a unit pushed below zero can come back.
    """

    def __init__(self, in_dim: int = 48 + 64, hidden: int = 64, heads: Sequence[str] = ("xyz", "rot", "scale"),
                 extra_heads: Sequence[str] = (), single: bool = False, xyz_scale: float = 1e-2,
                 init_std: float = 1e-4, activation: str = "relu") -> None:
        super().__init__()
        names = tuple(str(h) for h in heads) + tuple(str(h) for h in extra_heads)
        if not names:
            raise ValueError("MultiHeadDecoder: at least one head is required")
        for h in names:
            if h not in HEAD_DIMS:
                raise ValueError(f"MultiHeadDecoder: unknown head {h!r}; expected one of {list(HEAD_DIMS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"MultiHeadDecoder: duplicate heads in {names}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MultiHeadDecoder: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.in_dim, self.hidden = int(in_dim), int(hidden)
        self.head_names = names
        self.single = bool(single)
        self.xyz_scale = float(xyz_scale)
        act = nn.ReLU() if activation == "relu" else nn.SiLU()
        self.trunk = nn.Sequential(nn.Linear(self.in_dim, self.hidden), act)
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

    def _out_layer(self) -> tuple[Tensor, Tensor]:
        """All output layers as one ``(weight [Σk, hidden], bias [Σk])`` in head order."""
        if self.single:
            assert self.out is not None
            return self.out.weight, self.out.bias
        lins = [self.heads[n] for n in self.head_names]
        if len(lins) == 1:
            return lins[0].weight, lins[0].bias
        return torch.cat([lin.weight for lin in lins]), torch.cat([lin.bias for lin in lins])

    def h_pre(self, h: Tensor, code_dim: Optional[int] = None) -> Tensor:
        """The code-independent part of the trunk's pre-activation, ``H·W_Hᵀ + b`` ``[..., hidden]``
        (``W = [W_code, W_H]``; constant while the Gaussians do not move — inference cache)."""
        lin = self.trunk[0]
        dc = self.in_dim - h.shape[-1] if code_dim is None else code_dim
        return F.linear(h, lin.weight[:, dc:], lin.bias)

    def forward(self, code: Tensor, h: Optional[Tensor] = None, h_pre: Optional[Tensor] = None) -> Deltas:
        """``code [B, N, d_code]`` and ``h [N, d_h]`` / ``[B, N, d_h]`` (concatenated to the code; ``None``
        → the code alone must have ``in_dim`` features) → :class:`Deltas` with ``[B, N, k]`` fields.

        The trunk's first layer is evaluated by parts, ``[code, H]·Wᵀ = code·W_codeᵀ + H·W_Hᵀ``, without
        materialising the concatenation; ``h_pre`` (``[N, hidden]``, :meth:`h_pre` of the same ``h``) may
        be given precomputed. All heads are one matmul (weights concatenated), split afterwards."""
        lead = code.shape[:-1]
        lin = self.trunk[0]
        if h is None:
            if code.shape[-1] != self.in_dim:
                raise ValueError(f"MultiHeadDecoder expects {self.in_dim} input features ([μ_f, H]), got "
                                 f"{code.shape[-1]}")
            pre = lin(code)
        else:
            shared = h.dim() == 2 and code.dim() >= 3  # H [N, d_h] shared by the leading (batch) dims
            if (shared and h.shape[0] != code.shape[-2]) or (not shared and h.shape[:-1] != code.shape[:-1]):
                raise ValueError(f"MultiHeadDecoder: H {list(h.shape)} does not match the code {list(code.shape)}")
            dc = code.shape[-1]
            if dc + h.shape[-1] != self.in_dim:
                raise ValueError(f"MultiHeadDecoder expects {self.in_dim} input features ([μ_f, H]), got "
                                 f"{dc + h.shape[-1]}")
            wc = lin.weight[:, :dc]
            if shared:
                n = h.shape[0]
                hp = self.h_pre(h, dc) if h_pre is None else h_pre  # [N, hidden]
                if hp.shape != (n, self.hidden):
                    raise ValueError(f"MultiHeadDecoder: h_pre must be [{n}, {self.hidden}], got {list(hp.shape)}")
                cf = code.reshape(-1, n, dc)
                if cf.shape[0] == 1:
                    pre = torch.addmm(hp, cf[0], wc.t()).unsqueeze(0)
                else:
                    pre = torch.baddbmm(hp.unsqueeze(0), cf, wc.t().unsqueeze(0).expand(cf.shape[0], -1, -1))
                pre = pre.reshape(*lead, self.hidden)
            else:
                pre = F.linear(code, wc) + self.h_pre(h, dc)
        z = torch.relu(pre) if self.activation == "relu" else F.silu(pre)
        w, b = self._out_layer()
        parts = torch.split(F.linear(z, w, b), [HEAD_DIMS[n] for n in self.head_names], dim=-1)
        outs = dict(zip(self.head_names, parts))
        if "xyz" in outs:
            outs["xyz"] = outs["xyz"] * self.xyz_scale
        for n, t in outs.items():
            assert t.shape == (*lead, HEAD_DIMS[n]), (n, t.shape)
        return Deltas(**outs)


__all__ = ["Deltas", "MultiHeadDecoder", "HEAD_DIMS", "ACTIVATIONS"]
