"""EmotionField (DESIGN §4): "4D Gaussian encoding" — a spatial plane field modulated by an emotion
embedding through multi-resolution codebooks.

For scale ``i`` (factor ``s_i`` of ``scales``):

* ``plane_i(xyz)`` ∈ R^C — the product of the three bilinearly sampled planes of a
  :class:`~ua3dtalk.models.fields.PlaneField` (C = ``channels`` = 64, resolution ``resolution·s_i``);
* ``K_i`` ∈ R^{(codebook_base·s_i) × C} — a learnable codebook (64, 128, 256 entries);
* ``q = Linear(e)`` ∈ R^C (one query shared by the scales);
* ``code_i = softmax(q·K_iᵀ / √C) · K_i`` ∈ R^C — an attention read of the codebook;
* ``f_emotion = concat_i(code_i ⊙ plane_i(xyz))`` ∈ R^{C·len(scales)} = R^192 per Gaussian.

Shapes: ``forward(xyz [N,3], e [B,emotion_dim]) → [B,N,C·len(scales)]``.

Initialisation ★: ``plane_i(xyz) = 1 + P_i(xyz)`` starts with a zero-mean spatially varying part ``P_i``
whose standard deviation across points is ``spatial_std`` (0.75), the codebook entries at N(0, 1). Why: the
output at a point is ``code_i ⊙ (1 + P_i)``; its variation *across Gaussians* (for one emotion) is
``|code_i|·std(P_i)`` and its variation *across emotions* (at one point) is ``std_e(code_i)·|1 + P_i|``. With
the position field's initialisation (planes 1 ± 0.1, ``std(P_i)`` ≈ 0.12) the emotion features started as
the emotion code broadcast over the head (spatial std ≈ 0.1 × the across-emotion std), so every Gaussian
saw the same emotion input and the deformation could not tell the brows from the lips through this view.
With ``spatial_std`` ≈ 0.75 the two variations are of the same order from step 0 (≈ 0.7 : 1 per channel,
since ``|code_i|`` and ``std_e(code_i)`` are of the same size at initialisation) while the field keeps the
K-Planes product (mean ≈ 1, so every plane gets a gradient of order one, see :mod:`ua3dtalk.models.fields`).

Each of the three planes of a scale is drawn ``1 + σ·N(0,1)`` per grid node. Bilinear sampling at points
spread over the cells shrinks a node's variance by ``E[w²]`` = (2/3)² (the mean squared bilinear weight,
2/3 per axis), so a sampled plane has variance ``(4/9)σ²``, and the product of three independent planes has
variance ``(1 + 4σ²/9)³ − 1``; ``σ = 1.5·√((1 + spatial_std²)^{1/3} − 1)`` makes that ``spatial_std²``
(``σ`` ≈ 0.60 for 0.75; the position field's 0.1 corresponds to ``spatial_std`` ≈ 0.115).

Inference cache: without autograd the plane samples ``plane_i(xyz)`` (independent of ``e``) are
computed once per set of Gaussians and reused while ``xyz`` and the field's parameters/buffers are
unchanged (keyed on their identities and version counters, like the deformation network's cache);
:meth:`EmotionField.precompute` fills it, :meth:`EmotionField.clear_cache` / ``train()`` drop it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..cache import InferenceCache
from ..fields import PlaneField
from ..prior.checks import expect

__all__ = ["EmotionField", "plane_init_std"]


def plane_init_std(spatial_std: float, n_planes: int = 3) -> float:
    """Per-node standard deviation ``σ`` of ``n_planes`` planes drawn ``1 + σ·N(0,1)`` whose bilinearly
    sampled product has standard deviation ``spatial_std`` across points: ``(1 + (4/9)σ²)^n_planes − 1 =
    spatial_std²`` (module docstring)."""
    return 1.5 * math.sqrt((1.0 + float(spatial_std) ** 2) ** (1.0 / n_planes) - 1.0)


class EmotionField(InferenceCache, nn.Module):
    """Emotion-conditioned multi-resolution plane field (see the module docstring).

    Args:
        bounds_min, bounds_max: the box of the canonical Gaussians mapped onto the planes
            (:meth:`set_bounds` changes it later; saved in checkpoints).
        emotion_dim: size of the emotion embedding ``e`` (128).
        channels: plane channels = codebook entry size = query size C (64).
        scales: resolution factors of the planes; also multiply the codebook sizes (1, 2, 4).
        codebook_base: entries of the codebook at factor 1 (64; scale ``s`` has ``64·s``).
        resolution: base plane resolution (64).
        spatial_std: standard deviation across points of each plane product's zero-mean part ``P_i`` at
            initialisation (0.75; see the module docstring; 0 = constant planes, the code broadcast).
    """

    def __init__(self, bounds_min: Sequence[float] = (-1.0, -1.0, -1.0), bounds_max: Sequence[float] = (1.0, 1.0, 1.0),
                 emotion_dim: int = 128, channels: int = 64, scales: Sequence[int] = (1, 2, 4),
                 codebook_base: int = 64, resolution: int = 64, spatial_std: float = 0.75):
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if emotion_dim < 1 or codebook_base < 1:
            raise ValueError("emotion_dim and codebook_base must be positive")
        if isinstance(spatial_std, bool) or not isinstance(spatial_std, (int, float)) \
                or not math.isfinite(spatial_std) or spatial_std < 0:
            raise ValueError(f"EmotionField: spatial_std must be a finite number ≥ 0, got {spatial_std!r}")
        self.emotion_dim, self.channels, self.scales = int(emotion_dim), int(channels), scales
        self.spatial_std = float(spatial_std)
        self.planes = PlaneField(bounds_min, bounds_max, resolution=resolution, scales=scales, channels=channels,
                                 init_mean=1.0, init_std=plane_init_std(self.spatial_std))
        self.query = nn.Linear(self.emotion_dim, self.channels)
        self.codebooks = nn.ParameterList(nn.Parameter(torch.randn(codebook_base * s, self.channels)) for s in scales)
        self.cache_enabled = True

    # ------------------------------------------------------------------ inference cache
    def _cache_watch(self):
        return [*self.planes.parameters(), *self.planes.buffers()]

    def precompute(self, xyz: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale plane samples ``plane_i(xyz)`` (list of ``[N, C]``), computed without autograd and
        cached for the following calls without autograd (see the module docstring)."""
        xyz = xyz.detach()

        def build():
            with torch.no_grad():
                return self.planes.per_scale(xyz)
        return self.cached(xyz, build)

    @property
    def out_dim(self) -> int:
        """``channels · len(scales)`` (192 with the defaults)."""
        return self.channels * len(self.scales)

    def set_bounds(self, bounds_min, bounds_max) -> None:
        self.planes.set_bounds(bounds_min, bounds_max)

    def codes(self, e: torch.Tensor, return_attention: bool = False):
        """Emotion codes: ``e`` [B,emotion_dim] → list over scales of ``code_i`` [B,C] (and, with
        ``return_attention``, the attention weights [B,entries_i] of each scale)."""
        expect(e, "emotion embedding e", ("B", self.emotion_dim))
        q = self.query(e)  # [B,C]
        codes, atts = [], []
        for k in self.codebooks:
            a = torch.softmax(q @ k.t() / math.sqrt(self.channels), dim=-1)  # [B,M_i]
            codes.append(a @ k)
            atts.append(a)
        return (codes, atts) if return_attention else codes

    def forward(self, xyz: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``xyz`` [N,3], ``e`` [B,emotion_dim] → ``f_emotion`` [B,N,C·len(scales)]."""
        n = expect(xyz, "xyz", ("N", 3))["N"]
        b = expect(e, "emotion embedding e", ("B", self.emotion_dim))["B"]
        codes = self.codes(e)
        if self.cache_enabled and not torch.is_grad_enabled():
            planes = self.precompute(xyz)  # list of [N,C], cached
            dtype = torch.promote_types(codes[0].dtype, planes[0].dtype)
            out = planes[0].new_empty((b, n, self.out_dim), dtype=dtype)
            for i, (c, p) in enumerate(zip(codes, planes)):  # written in place: no concatenation copy
                torch.mul(c[:, None, :], p[None], out=out[..., i * self.channels:(i + 1) * self.channels])
        else:
            planes = self.planes.per_scale(xyz)  # list of [N,C]
            out = torch.cat([c[:, None, :] * p[None] for c, p in zip(codes, planes)], dim=-1)
        if out.shape != (b, n, self.out_dim):
            raise RuntimeError(f"EmotionField output {list(out.shape)} != {[b, n, self.out_dim]}")
        return out
