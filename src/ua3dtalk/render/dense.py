"""``dense`` backend: every pixel against every Gaussian in plain PyTorch autograd.

The oracle for tiny scenes; O(H·W·N) memory (pixels are processed in chunks). All compositing
backends implement the same contract::

    composite(means2d [N,2], conics [N,3], features [N,C], opacities [N], depths [N],
              extents [N,2], visible [N] bool, width, height) -> (features [H,W,C], T [H,W])

where ``T`` is the final transmittance. Per pixel p (centre (c+0.5, r+0.5)) and Gaussian i in
front-to-back order of ``depths`` (ties by index): power = -½(a dx² + c dy²) - b dx dy,
α = min(0.999, o·exp(power)), skipped when power > 0 or α < 1/255; compositing stops before the
Gaussian whose α would drive T below 1e-4. Out = Σ f_i α_i T_i.
"""
from __future__ import annotations

import torch

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN


def pixel_centers(width: int, height: int, dtype, device) -> torch.Tensor:
    """[H*W,2] (x, y) pixel centres in row-major order."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def composite_lists(pix, means2d, conics, features, opacities, valid):
    """Composite pixels against (already front-to-back ordered) lists of Gaussians.

    pix [B,P,2]; means2d [B,L,2]; conics [B,L,3]; features [B,L,C]; opacities [B,L]; valid [B,L].
    Returns (out [B,P,C], T [B,P]). Shared by ``dense`` (B=1, L=N) and ``torch`` (B = tiles).
    """
    d = pix[:, :, None, :] - means2d[:, None, :, :]  # [B,P,L,2]
    dx, dy = d[..., 0], d[..., 1]
    a, b, c = conics[:, None, :, 0], conics[:, None, :, 1], conics[:, None, :, 2]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp_max(opacities[:, None, :] * torch.exp(power), ALPHA_MAX)
    ok = (power <= 0) & (alpha >= ALPHA_MIN) & valid[:, None, :]
    alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    t_incl = torch.cumprod(one_minus, dim=-1)
    keep = t_incl >= T_MIN  # non-increasing in L, so this is "stop before the first that drops T"
    t_excl = torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], dim=-1)
    w = torch.where(keep, alpha * t_excl, torch.zeros_like(alpha))  # [B,P,L]
    out = w @ features  # [B,P,C]
    T = torch.where(keep, one_minus, torch.ones_like(one_minus)).prod(-1)
    return out, T


def depth_order(depths: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Indices of the visible Gaussians sorted front to back (stable: ties by index)."""
    idx = torch.nonzero(visible, as_tuple=False).squeeze(-1)
    order = torch.sort(depths.detach()[idx], stable=True).indices
    return idx[order]


def composite_dense(means2d, conics, features, opacities, depths, extents, visible, width, height, chunk=4096):
    order = depth_order(depths, visible)
    C = features.shape[-1]
    pix = pixel_centers(width, height, means2d.dtype, means2d.device)
    # No early exit when nothing is visible: the empty lists below keep every input in the graph, so
    # all gradients (means2d.grad included) come out as zeros rather than None.
    m, q, f, o = means2d[order][None], conics[order][None], features[order][None], opacities[order][None]
    v = torch.ones_like(o, dtype=torch.bool)
    outs, Ts = [], []
    for s in range(0, pix.shape[0], chunk):
        out, T = composite_lists(pix[None, s : s + chunk], m, q, f, o, v)
        outs.append(out[0])
        Ts.append(T[0])
    return torch.cat(outs).reshape(height, width, C), torch.cat(Ts).reshape(height, width)
