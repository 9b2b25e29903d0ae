"""Multi-head decoder of the fused code into per-Gaussian offsets (DESIGN §4, §4.3).

``[μ_f, H] → Linear(in_dim → hidden) → ReLU →`` one two-layer head per output, as in the authors' code
(``Linear(hidden → hidden) → ReLU → Linear(hidden → k)``):

==========  ====  ==========================================================================
head        size  meaning (applied by the caller to the canonical Gaussians)
==========  ====  ==========================================================================
xyz         3     position offset, multiplied by ``xyz_scale`` (1e-2): ``means + Δxyz``
rot         4     quaternion delta (wxyz) *added* to the canonical quaternion, then normalised
scale       3     log-scale offset: ``log_scales + Δscale``
opacity     1     opacity-logit offset (optional head)
color       3     colour offset (RGB / SH DC; optional head)
==========  ====  ==========================================================================

``single=True`` (ablation ``heads=single``) replaces the separate heads by *one* two-layer head whose
hidden layer is shared by all outputs (``hidden → hidden → ReLU → Σk``): it has ``(#heads − 1)·hidden`` fewer
hidden units and the outputs compete for them, so it is a different model from ``multi`` (with one-layer
heads the two were the same function — concatenated weights — and the ablation measured nothing).

Initialisation: the trunk and the heads' hidden layers are He-initialised (``N(0, 2/fan_in)``, biases 0): with
standardised inputs (DESIGN §4.5) every ReLU unit is active for about half of the Gaussians from the start.
The last layers start small (weights ``N(0, init_std²)``, biases 0; ``init_std`` 1e-3 puts the initial offsets
at ≈ 0.05 px and a few per mille of scale), so training starts from the canonical avatar while the trunk's
gradient is not noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_names

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


def _he_(lin: nn.Linear) -> None:
    """He (Kaiming) normal initialisation for a layer followed by a ReLU: weights ``N(0, 2/fan_in)``,
    bias 0."""
    with torch.no_grad():
        lin.weight.normal_(0.0, math.sqrt(2.0 / lin.in_features))
        lin.bias.zero_()


class MultiHeadDecoder(nn.Module):
    """Decode ``[μ_f, H]`` into :class:`Deltas`.

    Args:
        in_dim: size of the decoder input = code size + position-encoding size (48 + 64 = 112).
        hidden: width of the shared trunk and of each head's hidden layer (64).
        heads: main heads, a subset of ``("xyz", "rot", "scale")`` (the mouth branch uses ``("xyz",)``).
        extra_heads: optional heads, a subset of ``("opacity", "color")``.
        single: one two-layer head for all outputs instead of one per output (ablation ``heads=single``).
        xyz_scale: factor applied to the Δxyz output (1e-2).
        init_std: standard deviation of the last layers' initial weights (biases start at 0).
        activation: the nonlinearity, ``relu`` (the authors' decoder) or ``silu`` (★, a gradient for negative
            inputs too).

    Parameters: ``trunk`` (``Linear(in_dim, hidden)``, activation); ``hidden_w [G·hidden, hidden]``,
    ``hidden_b [G·hidden]`` — the heads' hidden layers stacked (``G`` = number of heads, 1 with ``single``);
    ``out_w`` (list of ``[k_g, hidden]``) and ``out_b`` (list of ``[k_g]``) — each head's output layer.
    """

    def __init__(self, in_dim: int = 48 + 64, hidden: int = 64, heads: Sequence[str] = ("xyz", "rot", "scale"),
                 extra_heads: Sequence[str] = (), single: bool = False, xyz_scale: float = 1e-2,
                 init_std: float = 1e-3, activation: str = "relu") -> None:
        super().__init__()
        names = tuple(str(h) for h in heads) + tuple(str(h) for h in extra_heads)
        check_names("MultiHeadDecoder", "head", names, HEAD_DIMS, f"one of {list(HEAD_DIMS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MultiHeadDecoder: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        if not init_std >= 0:
            raise ValueError(f"MultiHeadDecoder: init_std must be >= 0, got {init_std}")
        self.activation = activation
        self.in_dim, self.hidden = int(in_dim), int(hidden)
        self.head_names = names
        self.single = bool(single)
        self.xyz_scale = float(xyz_scale)
        act = nn.ReLU() if activation == "relu" else nn.SiLU()
        self.trunk = nn.Sequential(nn.Linear(self.in_dim, self.hidden), act)
        _he_(self.trunk[0])
        # output groups: one per head, or one for all (single)
        self.groups: tuple[tuple[str, ...], ...] = (names,) if self.single else tuple((n,) for n in names)
        g = len(self.groups)
        self.hidden_w = nn.Parameter(torch.randn(g * self.hidden, self.hidden) * math.sqrt(2.0 / self.hidden))
        self.hidden_b = nn.Parameter(torch.zeros(g * self.hidden))
        self.out_w = nn.ParameterList(
            nn.Parameter(torch.randn(sum(HEAD_DIMS[n] for n in grp), self.hidden) * float(init_std))
            for grp in self.groups)
        self.out_b = nn.ParameterList(nn.Parameter(torch.zeros(sum(HEAD_DIMS[n] for n in grp))) for grp in self.groups)

    def _act(self, x: Tensor) -> Tensor:
        return torch.relu(x) if self.activation == "relu" else F.silu(x)

    def hidden_units(self) -> int:
        """Hidden units of the heads (``G·hidden``)."""
        return self.hidden_w.shape[0]

    def output_bias(self, name: str) -> Tensor:
        """The slice ``[k]`` of the output bias that belongs to head ``name`` (a view: in-place edits change
        the parameter)."""
        for gi, grp in enumerate(self.groups):
            off = 0
            for n in grp:
                if n == name:
                    return self.out_b[gi][off:off + HEAD_DIMS[n]]
                off += HEAD_DIMS[n]
        raise KeyError(f"MultiHeadDecoder: no head {name!r} (heads: {list(self.head_names)})")

    def h_pre(self, h: Tensor, code_dim: Optional[int] = None) -> Tensor:
        """The code-independent part of the trunk's pre-activation, ``H·W_Hᵀ + b`` ``[..., hidden]``
        (``W = [W_code, W_H]``; constant while the Gaussians do not move — inference cache)."""
        lin = self.trunk[0]
        dc = self.in_dim - h.shape[-1] if code_dim is None else code_dim
        return F.linear(h, lin.weight[:, dc:], lin.bias)

    def trunk_pre(self, code: Tensor, h: Optional[Tensor] = None, h_pre: Optional[Tensor] = None) -> Tensor:
        """The trunk's pre-activation ``[..., hidden]`` of ``code [B, N, d_code]`` and ``h`` (see :meth:`forward`)."""
        lead = code.shape[:-1]
        lin = self.trunk[0]
        if h is None:
            if code.shape[-1] != self.in_dim:
                raise ValueError(f"MultiHeadDecoder expects {self.in_dim} input features ([μ_f, H]), got "
                                 f"{code.shape[-1]}")
            return lin(code)
        shared = h.dim() == 2 and code.dim() >= 3  # H [N, d_h] shared by the leading (batch) dims
        if (shared and h.shape[0] != code.shape[-2]) or (not shared and h.shape[:-1] != code.shape[:-1]):
            raise ValueError(f"MultiHeadDecoder: H {list(h.shape)} does not match the code {list(code.shape)}")
        dc = code.shape[-1]
        if dc + h.shape[-1] != self.in_dim:
            raise ValueError(f"MultiHeadDecoder expects {self.in_dim} input features ([μ_f, H]), got "
                             f"{dc + h.shape[-1]}")
        wc = lin.weight[:, :dc]
        if not shared:
            return F.linear(code, wc) + self.h_pre(h, dc)
        n = h.shape[0]
        hp = self.h_pre(h, dc) if h_pre is None else h_pre  # [N, hidden]
        if hp.shape != (n, self.hidden):
            raise ValueError(f"MultiHeadDecoder: h_pre must be [{n}, {self.hidden}], got {list(hp.shape)}")
        cf = code.reshape(-1, n, dc)
        if cf.shape[0] == 1:
            pre = torch.addmm(hp, cf[0], wc.t()).unsqueeze(0)
        else:
            pre = torch.baddbmm(hp.unsqueeze(0), cf, wc.t().unsqueeze(0).expand(cf.shape[0], -1, -1))
        return pre.reshape(*lead, self.hidden)

    def head_pre(self, z: Tensor) -> Tensor:
        """The heads' hidden pre-activations ``[..., G·hidden]`` from the trunk's output ``z [..., hidden]``."""
        return F.linear(z, self.hidden_w, self.hidden_b)

    def forward(self, code: Tensor, h: Optional[Tensor] = None, h_pre: Optional[Tensor] = None) -> Deltas:
        """``code [B, N, d_code]`` and ``h [N, d_h]`` / ``[B, N, d_h]`` (concatenated to the code; ``None``
        → the code alone must have ``in_dim`` features) → :class:`Deltas` with ``[B, N, k]`` fields.

        The trunk's first layer is evaluated by parts, ``[code, H]·Wᵀ = code·W_codeᵀ + H·W_Hᵀ``, without
        materialising the concatenation; ``h_pre`` (``[N, hidden]``, :meth:`h_pre` of the same ``h``) may
        be given precomputed. The heads' hidden layers are one matmul (stacked weights), their output layers
        one matmul with the block-diagonal weight."""
        lead = code.shape[:-1]
        z = self._act(self.trunk_pre(code, h, h_pre))
        u = self._act(self.head_pre(z))  # [..., G·hidden]
        w_out = torch.block_diag(*self.out_w) if len(self.out_w) > 1 else self.out_w[0]
        b_out = torch.cat(list(self.out_b)) if len(self.out_b) > 1 else self.out_b[0]
        y = F.linear(u, w_out, b_out)
        order = [n for grp in self.groups for n in grp]
        parts = dict(zip(order, torch.split(y, [HEAD_DIMS[n] for n in order], dim=-1)))
        outs = {n: parts[n] for n in self.head_names}
        if "xyz" in outs:
            outs["xyz"] = outs["xyz"] * self.xyz_scale
        for n, t in outs.items():
            assert t.shape == (*lead, HEAD_DIMS[n]), (n, t.shape)
        return Deltas(**outs)


__all__ = ["Deltas", "MultiHeadDecoder", "HEAD_DIMS", "ACTIVATIONS"]
