"""Typed configurations of the deformation networks (DESIGN §4.5): one frozen dataclass per branch, its
choices ``Literal`` types checked once (:mod:`ua3dtalk.utils.typed_config`), passed down whole.

The field names are the keys of ``model.deformation`` / ``model.mouth_deformation`` in the experiment
yamls (``experiments/model/ua3dtalk.yaml``; the ablations swap ``fusion``, ``uncertainty`` and
``single_head``), so a yaml key, a dataclass field and a constructor option are one name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...utils.typed_config import check_config

View = Literal["audio", "content", "style", "emotion"]
MouthView = Literal["audio", "content"]
Head = Literal["xyz", "rot", "scale", "opacity", "color"]
Fusion = Literal["diagonal", "full_cov", "uniform", "concat"]
Uncertainty = Literal["both", "aleatoric", "epistemic"]
Activation = Literal["relu", "silu"]
ComputeDtype = Literal["float32", "bfloat16", "auto"]


@dataclass(frozen=True)
class DeformationConfig:
    """Face-branch deformation (:class:`~ua3dtalk.models.deformation.network.DeformationNetwork`); each field is
    documented below it."""

    views: tuple[View, ...] = ("audio", "content", "style", "emotion")
    """configured views, a non-empty subset of ``audio, content, style, emotion``."""
    content_dim: int = 64
    style_dim: int = 64
    emotion_dim: int = 192
    """(content_dim, style_dim, emotion_dim) sizes of the content/style prior features and of the emotion-field
    features."""
    code_dim: int = 48
    """size ``D`` of the fused code μ_f."""
    hidden: int = 64
    """hidden width of the ensemble members, the concat MLP and the decoder trunk."""
    members: int = 10
    """ensemble size ``T``."""
    fusion: Fusion = "diagonal"
    """how the views are fused (:class:`~.fusion.UncertaintyFusion`): precision-weighted per channel
    (``diagonal``, the paper), with full covariances (``full_cov``), equal weights (``uniform``) or an MLP on the
    concatenated views (``concat``)."""
    uncertainty: Uncertainty = "both"
    """which variances weigh the views: aleatoric + epistemic (``both``), or one of them."""
    ensemble_switch: int = 15000
    """optimizer steps of stage A (a single random ensemble member), then all members — counted over every stage
    that trains the network (its ``trained_steps``), so a later stage (fuse) never restarts stage A."""
    heads: tuple[Head, ...] = ("xyz", "rot", "scale")
    extra_heads: tuple[Head, ...] = ()
    single_head: bool = False
    xyz_scale: float = 1e-2
    """(heads, extra_heads, single_head, xyz_scale) decoder heads (:class:`~.decoder.MultiHeadDecoder`): the
    offsets predicted, optional extras (opacity, colour), one shared head instead of one per offset, the scale of
    Δxyz."""
    field_resolution: int = 64
    field_scales: tuple[int, ...] = (1, 2, 4, 8)
    field_channels: int = 16
    """(field_resolution, field_scales, field_channels) the position field's planes (H has channels · #scales
    entries)."""
    audio_dim: int = 32
    eye_dim: int = 6
    blink_dim: int = 1
    audio_window: int = 16
    audio_seq_len: int = 8
    """(audio_dim, eye_dim, blink_dim, audio_window, audio_seq_len) the audio view
    (:class:`~ua3dtalk.models.audio_view.AudioView`)."""
    detach_xyz: bool = True
    """feed ``xyz.detach()`` to the position field: the canonical positions are then learned by the rendering
    loss only."""
    var_floor: float = 1e-4
    """variance floor of the uncertainty blocks."""
    compute_dtype: ComputeDtype = "float32"
    """the ensembles' matmuls: ``float32`` (exact), ``bfloat16`` (codes, variances and gradients stay float32) or
    ``auto`` (bfloat16 on CPUs with fast bfloat16 matmuls)."""
    cache: bool = True
    """use the inference cache in calls without autograd."""
    view_dropout: float = 0.0
    """★ probability of leaving a view out of a training forward (0 = the paper)."""
    emotion_position: bool = False
    """★ concatenate H to the emotion view as well (192 + 64 instead of 192)."""
    decoder_activation: Activation = "relu"
    """nonlinearity of the decoder trunk, ``relu`` (the paper) or ``silu`` (★)."""
    norm_momentum: float = 0.01
    """rate floor of the stored statistics that standardise H, each view's own feature and the fused code
    (:class:`~.norm.RunningStandardize`)."""

    def __post_init__(self) -> None:
        check_config(self)
        if not self.views:
            raise ValueError(f"{type(self).__name__}: at least one view is required")
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"{type(self).__name__}: duplicate views in {self.views}")


@dataclass(frozen=True)
class MouthDeformationConfig(DeformationConfig):
    """Inside-mouth deformation (:class:`~ua3dtalk.models.deformation.network.MouthDeformation`): Δxyz only,
    from the audio and content views, by default without an eye input. Fields as
    :class:`DeformationConfig`; the decoder is fixed to the single ``xyz`` head and the emotion view's
    options do not apply."""

    views: tuple[View, ...] = ("audio", "content")
    heads: tuple[Head, ...] = ("xyz",)
    eye_dim: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(v not in ("audio", "content") for v in self.views):
            raise ValueError(f"MouthDeformation: views must be a subset of ('audio', 'content'), got {self.views}")
        if self.heads != ("xyz",) or self.extra_heads or self.single_head or self.emotion_position:
            raise ValueError("MouthDeformation: the mouth branch has one xyz head (heads=('xyz',), no extra_heads, "
                             "single_head and emotion_position off)")


__all__ = ["Activation", "ComputeDtype", "DeformationConfig", "Fusion", "Head", "MouthDeformationConfig",
           "MouthView", "Uncertainty", "View"]
