"""SSIM of the training losses: torchmetrics' ``structural_similarity_index_measure`` (its defaults: Gaussian
window σ = 1.5 of 11 taps, ``k1 = 0.01``, ``k2 = 0.03``, reflection padding of 5 pixels, the mean over the
whole padded-and-filtered image) computed with the window's two 1-D factors.

The 11×11 Gaussian window is the outer product of two normalised 1-D Gaussians, so filtering with it equals
filtering the rows and then the columns with the 1-D window: 22 multiply-adds per pixel and map instead of
121. At 256² the training step's SSIM took 18–21 ms forward + backward on one thread against 76–120 ms for
torchmetrics' grouped 2-D convolution (2026-12-05, a loaded 2-core host; ``benchmarks/model.py`` prints both
side by side). The values are the same up to float rounding (tested
against torchmetrics pairwise, values and gradients, in ``tests/models/test_ssim.py``); the metrics
(``ua3dtalk.metrics.image``) keep torchmetrics itself.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SIGMA = 1.5
TAPS = 11  # torchmetrics: int(3.5·σ + 0.5)·2 + 1
PAD = (TAPS - 1) // 2


@functools.lru_cache(maxsize=8)
def _window(dtype: torch.dtype, device: str) -> torch.Tensor:
    """The normalised 1-D Gaussian window ``[TAPS]`` (torchmetrics' ``_gaussian``)."""
    d = torch.arange((1 - TAPS) / 2, (1 + TAPS) / 2, 1.0, dtype=dtype, device=device)
    g = torch.exp(-((d / SIGMA) ** 2) / 2)
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of ``pred`` and ``target`` ``[B, C, H, W]`` (``H, W > 5``) → a scalar, as
    ``structural_similarity_index_measure(pred, target, data_range=data_range)`` (``reduction`` the mean over
    the batch). Differentiable in both."""
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"ssim: pred and target must be [B,C,H,W] of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if min(pred.shape[-2:]) <= PAD:
        raise ValueError(f"ssim: images must be larger than {PAD} pixels each way, got {tuple(pred.shape[-2:])}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ch = pred.shape[1]
    p = F.pad(pred, (PAD, PAD, PAD, PAD), mode="reflect")
    t = F.pad(target, (PAD, PAD, PAD, PAD), mode="reflect")
    x = torch.cat([p, t, p * p, t * t, p * t], 1)  # [B, 5C, H+2P, W+2P]
    n = x.shape[1]
    g = _window(x.dtype, str(x.device))
    x = F.conv2d(x, g.view(1, 1, 1, TAPS).expand(n, 1, 1, TAPS), groups=n)  # along W
    x = F.conv2d(x, g.view(1, 1, TAPS, 1).expand(n, 1, TAPS, 1), groups=n)  # along H → [B, 5C, H, W]
    mu_p, mu_t, pp, tt, pt = x.split(ch, 1)
    mu_pp, mu_tt, mu_pt = mu_p * mu_p, mu_t * mu_t, mu_p * mu_t
    var_p = (pp - mu_pp).clamp(min=0.0)
    var_t = (tt - mu_tt).clamp(min=0.0)
    cov = pt - mu_pt
    s = ((2 * mu_pt + c1) * (2 * cov + c2)) / ((mu_pp + mu_tt + c1) * (var_p + var_t + c2))
    return s.reshape(s.shape[0], -1).mean(-1).mean()
