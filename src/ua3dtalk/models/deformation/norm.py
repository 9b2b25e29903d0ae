"""Per-channel standardisation with stored statistics (DESIGN §4.5 "Inputs the networks can use").

Why: the deformation networks' inputs share large offsets. The position field's tri-plane product starts
at 1.00 ± 0.12 for every Gaussian, the fused code is ≈ 0.03 in size, the emotion features are one code
broadcast over the head. A ReLU unit whose pre-activation offset (≈ 0.3) is much larger than its spread
across inputs (≈ 0.04) is on for every input or off for every input; at demo scale the decoder trunk ended
with 6 of its 64 units ever active. A per-sample LayerNorm cannot remove an offset shared by every sample.

:class:`RunningStandardize` maps each channel to ``(x − m) / √(v + eps)`` with ``m``, ``v`` the channel's
mean and variance *across samples* (Gaussians and frames), kept as buffers:

* in training mode, when ``update`` is true, the statistics of the current input (all leading dimensions
  pooled) are folded in first, with rate ``max(1/(k+1), momentum)`` after ``k`` updates — the exact mean
  of the first updates, an exponential moving average (window ≈ 1/momentum steps) afterwards;
* the *stored* statistics are then applied (``eps`` is relative to the channels' mean second moment, so
  the map is invariant to the input's overall scale, and a per-frame feature whose variance is still 0 after
  the first frame is not amplified without bound) — the same affine map in training, validation and inference
  (no train/eval mismatch, no dependence on which Gaussians or frames share a batch), detached from the
  graph (the gradient flows through the fixed affine map).

Before the first update the map is the identity. Calls that see an unrepresentative subset of the inputs
(e.g. the landmark term's few dozen anchor points) pass ``update=False``.

Shapes: ``[..., C] → [..., C]`` (``C = num_channels``).
"""
from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor

__all__ = ["RunningStandardize"]


class RunningStandardize(nn.Module):
    """Standardise the last dimension with stored running statistics (see the module docstring).

    Args:
        num_channels: size ``C`` of the last dimension.
        momentum: floor of the update rate (0.01: the statistics follow the inputs over ≈ 100 updates).
        eps: added to the variance, relative to the channels' mean second moment ``mean_c(v_c + m_c²)`` (a
            constant channel maps to 0; a channel whose spread is tiny against the feature's size is damped
            instead of amplified without bound).

    Buffers (saved in checkpoints): ``mean [C]``, ``var [C]``, ``updates`` (0-dim, number of updates).
    """

    def __init__(self, num_channels: int, momentum: float = 0.01, eps: float = 1e-2) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"RunningStandardize: num_channels must be >= 1, got {num_channels}")
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"RunningStandardize: momentum must be in (0, 1], got {momentum}")
        if not float(eps) > 0.0:
            raise ValueError(f"RunningStandardize: eps must be > 0, got {eps}")
        self.num_channels, self.momentum, self.eps = int(num_channels), float(momentum), float(eps)
        self.register_buffer("mean", torch.zeros(self.num_channels))
        self.register_buffer("var", torch.ones(self.num_channels))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, momentum={self.momentum}, eps={self.eps}"

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the statistics (the next updates start a fresh exact mean; until then the map is the identity)."""
        self.mean.zero_(), self.var.fill_(1.0), self.updates.zero_()

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold the statistics of ``x [..., C]`` (leading dimensions pooled) into the buffers."""
        flat = x.detach().reshape(-1, self.num_channels).to(self.mean.dtype)
        if flat.shape[0] == 0:
            return
        m = flat.mean(0)
        v = (flat - m).square().mean(0)  # about the batch mean: no cancellation when |mean| ≫ std
        k = int(self.updates)
        rate = max(1.0 / (k + 1), self.momentum)
        # the mixture (1 − rate)·stored + rate·batch: its mean and variance (law of total variance)
        delta = m - self.mean
        self.var.copy_((1 - rate) * self.var + rate * v + rate * (1 - rate) * delta.square())
        self.mean.add_(rate * delta)
        self.updates.add_(1)

    def forward(self, x: Tensor, update: bool = True) -> Tensor:
        """``x [..., C]`` → standardised ``[..., C]``; updates the statistics first when training and
        ``update`` is true."""
        if x.shape[-1] != self.num_channels:
            raise ValueError(f"RunningStandardize expects [..., {self.num_channels}], got {list(x.shape)}")
        if self.training and update and torch.is_grad_enabled():
            self.update(x)
        if int(self.updates) == 0:
            return x
        # eps relative to the channels' mean second moment: invariant to the input's overall scale (a feature
        # of size 1e-3 is standardised like one of size 1), a constant channel maps to 0, and the first
        # updates — one frame: a per-frame feature has no variance yet — cannot amplify it without bound
        floor = self.eps * (self.var + self.mean.square()).mean() + torch.finfo(self.var.dtype).tiny
        scale = torch.rsqrt(self.var + floor).to(x.dtype)
        return (x - self.mean.to(x.dtype)) * scale
