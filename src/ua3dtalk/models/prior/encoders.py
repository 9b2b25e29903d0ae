"""The three networks of Prior Extraction (DESIGN §4): content encoder, style encoder, FuseNet.

★ The paper uses pretrained Wav2Lip / NeRF-3DTalker networks for these (not released); here they are
small networks trained by the framework on the target person's data (see
:class:`ua3dtalk.models.prior.PriorExtraction` for the losses).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import expect

__all__ = ["ContentEncoder", "StyleEncoder", "FuseNet"]


def _mlp(i: int, h: int, o: int, slope: float = 0.02) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.LeakyReLU(slope), nn.Linear(h, o))


class ContentEncoder(nn.Module):
    """Audio window of one video frame → content-synchronised feature ``f_content``.

    Architecture (AudioNet-like): a per-step linear layer ``C → hidden``, then ``ceil(log2 window)``
    1-D convolutions over time with stride 2 (16 → 8 → 4 → 2 → 1 steps), LeakyReLU, a mean over the
    remaining steps and a linear layer to ``dim``.

    Heads (used by the losses of :class:`~ua3dtalk.models.prior.PriorExtraction`):

    * :meth:`predict_mouth` — MLP ``dim → hidden → len(mouth_dims)``: regression of the mouth part
      ``expr[:, mouth_dims]`` of the per-frame expression coefficients;
    * :meth:`sync_embedding` — linear ``dim → sync_dim`` then L2 normalisation: the audio side of the
      audio–visual sync contrastive loss.

    Args:
        in_channels: audio feature channels ``C`` (29 DeepSpeech, 80 log-mel, 768/1024 wav2vec2, …).
        window: time steps of the window (16 for the §5.3 windows at 50 Hz).
        dim: size of ``f_content`` (64).
        mouth_dims: indices of the mouth coefficients in ``expr`` (default ``(0, 1, 2)`` = jaw_open,
            lip_round, lip_spread in the synthetic generator's order); must be non-empty.
        sync_dim: size of the sync embedding.
        hidden: width of the convolutions and head MLPs.

    Shapes: ``forward(x [B,window,C]) → f_content [B,dim]``.
    """

    def __init__(self, in_channels: int, window: int = 16, dim: int = 64, mouth_dims: Sequence[int] = (0, 1, 2),
                 sync_dim: int = 64, hidden: int = 128):
        super().__init__()
        if in_channels < 1 or window < 1 or dim < 1:
            raise ValueError("in_channels, window and dim must be positive")
        mouth_dims = tuple(int(i) for i in mouth_dims)
        if not mouth_dims or min(mouth_dims) < 0:
            raise ValueError(f"mouth_dims must be non-empty non-negative indices, got {mouth_dims}")
        self.in_channels, self.window, self.dim = int(in_channels), int(window), int(dim)
        self.mouth_dims, self.sync_dim = mouth_dims, int(sync_dim)
        self.inp = nn.Linear(self.in_channels, hidden)
        n_conv = max(1, math.ceil(math.log2(self.window)))
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, 3, stride=2, padding=1) for _ in range(n_conv))
        self.out = nn.Linear(hidden, self.dim)
        self.mouth_head = _mlp(self.dim, hidden, len(mouth_dims))
        self.sync_head = nn.Linear(self.dim, self.sync_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B,window,C] → ``f_content`` [B,dim]."""
        expect(x, "ContentEncoder input (audio window)", ("B", self.window, self.in_channels))
        h = F.leaky_relu(self.inp(x), 0.02).transpose(1, 2)  # [B,hidden,W]
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.02)
        return self.out(h.mean(-1))

    def predict_mouth(self, f_content: torch.Tensor) -> torch.Tensor:
        """``f_content`` [B,dim] → predicted ``expr[:, mouth_dims]`` [B,len(mouth_dims)]."""
        expect(f_content, "f_content", ("B", self.dim))
        return self.mouth_head(f_content)

    def sync_embedding(self, f_content: torch.Tensor) -> torch.Tensor:
        """``f_content`` [B,dim] → unit-norm audio sync embedding [B,sync_dim]."""
        expect(f_content, "f_content", ("B", self.dim))
        return F.normalize(self.sync_head(f_content), dim=-1)


class StyleEncoder(nn.Module):
    """A longer audio context (≈2 s) → person-specific complementary feature ``f_style``.

    Architecture: per-step linear ``C' → hidden``; three residual dilated 1-D convolutions (kernel
    5/3/3, dilation 1/2/4; receptive field 2 s at 25 steps/s); statistics pooling (mean and standard
    deviation over time: speaking style is a property of the whole context, not of one frame); MLP
    ``2·hidden → hidden → dim``.

    Args:
        in_channels: per-step feature channels ``C'`` (the per-frame features of
            :func:`ua3dtalk.models.prior.frame_features`, so usually the audio channels ``C``).
        context: steps of the context (50 frames at 25 fps ≈ 2 s).
        dim: size of ``f_style`` (64).
        hidden: width of the convolutions.

    Shapes: ``forward(x [B,context,C']) → f_style [B,dim]``.
    """

    def __init__(self, in_channels: int, context: int = 50, dim: int = 64, hidden: int = 128):
        super().__init__()
        if in_channels < 1 or context < 2 or dim < 1:
            raise ValueError("in_channels and dim must be positive and context ≥ 2")
        self.in_channels, self.context, self.dim = int(in_channels), int(context), int(dim)
        self.inp = nn.Linear(self.in_channels, hidden)
        self.convs = nn.ModuleList([
            nn.Conv1d(hidden, hidden, 5, padding=2, dilation=1),
            nn.Conv1d(hidden, hidden, 3, padding=2, dilation=2),
            nn.Conv1d(hidden, hidden, 3, padding=4, dilation=4),
        ])
        self.out = _mlp(2 * hidden, hidden, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B,context,C'] → ``f_style`` [B,dim]."""
        expect(x, "StyleEncoder input (audio context)", ("B", self.context, self.in_channels))
        h = F.leaky_relu(self.inp(x), 0.02).transpose(1, 2)  # [B,hidden,L]
        for conv in self.convs:
            h = h + F.leaky_relu(conv(h), 0.02)
        stats = torch.cat([h.mean(-1), torch.sqrt(h.var(-1, unbiased=False) + 1e-5)], dim=-1)
        return self.out(stats)


class FuseNet(nn.Module):
    """``(f_content, f_style)`` → expression prior ``f_prior`` and the reconstructed expression.

    ``f_prior = MLP([f_content, f_style])`` (``2·dim → hidden → dim``); the expression coefficients
    are read out *linearly* from ``f_prior`` (``Linear(dim, expr_dim)``), so ``f_prior`` has to carry
    the expression in a form the deformation network can use directly (L_recon).

    Args:
        dim: size of ``f_content``, ``f_style`` and ``f_prior`` (64).
        expr_dim: number ``K`` of expression coefficients (``expr.npy`` columns).
        hidden: MLP width.

    Shapes: ``forward(content [B,dim], style [B,dim]) → (f_prior [B,dim], expr_pred [B,K])``.
    """

    def __init__(self, dim: int = 64, expr_dim: int = 10, hidden: int = 128):
        super().__init__()
        if dim < 1 or expr_dim < 1:
            raise ValueError("dim and expr_dim must be positive")
        self.dim, self.expr_dim = int(dim), int(expr_dim)
        self.fuse = _mlp(2 * self.dim, hidden, self.dim)
        self.expr_head = nn.Linear(self.dim, self.expr_dim)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = expect(content, "f_content", ("B", self.dim))
        expect(style, "f_style", ("B", self.dim), d)
        prior = self.fuse(torch.cat([content, style], dim=-1))
        return prior, self.expr_head(prior)
