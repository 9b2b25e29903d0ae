"""The deformation's C++ kernel (``csrc/ensemble_stats.cpp``) and its plain-PyTorch reference, side by side.

The kernel is the inference (no-autograd) path of the ensemble views' member statistics
(:meth:`EnsembleMLP.stats <ua3dtalk.models.deformation.ensemble.EnsembleMLP.stats>`, via
:mod:`.fused_stats`): one pass over a block instead of ~12 elementwise passes. Each entry point has a
reference here with the same contract; ``tests/models/test_deformation_kernels.py`` compares them
pairwise (float32 and bfloat16 matmuls, odd sizes, partial blocks, saturated log-variances).

Shapes (T members, n or N Gaussians, D outputs, K input channels, H hidden units per member, B frames):

``ensemble_stats(y, b, span, c, mu, al, ep)``
    y ``[T, n, 2D]`` float32/bfloat16 — the second layer's outputs without bias, the log-variance
    columns pre-scaled (see ``fused_stats._Head``); b ``[T, 2D]`` float32 — the (scaled) bias.
    Writes the member **sums** into the float32 ``[n, D]`` outputs::

        μ_t = y[t,:,:D] + b[t,:D];  u_t = y[t,:,D:] + b[t,D:]
        mu = Σ_t μ_t;  ep = Σ_t (μ_t − mu/T)²;  al = Σ_t exp(span·sigmoid(u_t) + c)

``ensemble_view_stats(x, w, pre, rows, w2c, b, span, c, chunk, batch, n, mu, al, ep)``
    the whole no-grad evaluation of one view for ``batch`` frames: ``z = pre [N, T·H] (optional) +
    rows[f] [B, T·H] (optional) + x[f or 0] [1|B, N, K] @ w [K, T·H] (optional)``, ``h = relu(z)``,
    ``y_t = h_t @ w2c[t]`` (``w2c [T, H, 2D]``), then the sums of ``ensemble_stats`` into rows
    ``f·N + [0, N)`` of the ``[B·N, D]`` outputs. Matmul operands share one dtype (float32 or
    bfloat16); accumulation and outputs are float32. ``chunk`` (Gaussians per block) changes the
    blocking only (results equal up to the GEMMs' rounding). Absent operands are passed as empty tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ...utils.cpp_ext import CppExtension

Tensor = torch.Tensor

#: the deformation extension: ``KERNEL.load()`` builds (first use, cached) and loads it, ``KERNEL.available()``
#: says whether it can (warning once when not), ``KERNEL.reset()`` forgets both
KERNEL = CppExtension("ua3dtalk_deform", Path(__file__).resolve().parent / "csrc" / "ensemble_stats.cpp",
                      what="deformation statistics kernel", fallback="the torch statistics")


def ensemble_stats_reference(y: Tensor, b: Tensor, span: float, c: float) -> tuple[Tensor, Tensor, Tensor]:
    """Plain-PyTorch ``ensemble_stats``: member sums ``(mu, al, ep)``, each float32 ``[n, D]``."""
    t, _, two_d = y.shape
    d = two_d // 2
    v = y.float() + b.float()[:, None, :]  # [T, n, 2D]
    means, u = v[..., :d], v[..., d:]
    mu = means.sum(0)
    ep = (means - mu / t).square().sum(0)
    al = torch.exp(span * torch.sigmoid(u) + c).sum(0)
    return mu, al, ep


def ensemble_view_stats_reference(x: Optional[Tensor], w: Optional[Tensor], pre: Optional[Tensor],
                                  rows: Optional[Tensor], w2c: Tensor, b: Tensor, span: float, c: float,
                                  batch: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Plain-PyTorch ``ensemble_view_stats`` (``None`` for an absent operand): ``(mu, al, ep)`` member
    sums, each float32 ``[batch·n, D]``. Pre-activations and matmuls in ``w2c``'s dtype, like the kernel."""
    t, hid, _ = w2c.shape
    dt = w2c.dtype
    z = torch.zeros(batch, n, t * hid, dtype=dt, device=w2c.device)
    if pre is not None:
        z = z + pre.to(dt)
    if rows is not None:
        z = z + rows.to(dt)[:, None, :]
    if x is not None:
        z = z + (x @ w).expand(batch, -1, -1)
    h = z.clamp_min(0).view(batch, n, t, hid).permute(0, 2, 1, 3)  # [B, T, n, H]
    outs = [ensemble_stats_reference(h[f] @ w2c, b, span, c) for f in range(batch)]  # y: [T, n, 2D]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*outs))  # type: ignore[return-value]


__all__ = ["KERNEL", "ensemble_stats_reference", "ensemble_view_stats_reference"]
