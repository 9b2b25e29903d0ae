"""Deformation networks of the face and inside-mouth branches (DESIGN §4).

:class:`DeformationNetwork` (face branch)::

    xyz [N,3] ──PositionField──▶ H [N,64]
    audio windows, blink, H ──AudioView──▶ a [B,N,38]
    views:  audio   = [a, H]                       [B,N,38+64]
            content = [f_content ⟶ N, H]           [B,N,64+64]
            style   = [f_style ⟶ N, H]             [B,N,64+64]
            emotion = f_emotion (EmotionField)     [B,N,192]
    UncertaintyFusion(views) ──▶ μ_f [B,N,48]  ──MultiHeadDecoder([μ_f, H])──▶ Δxyz, Δrot, Δscale (…)

Any subset of the views can be configured (``views=...``; e.g. without the prior or without emotion
for ablations); only the configured views' inputs are required by :meth:`DeformationNetwork.forward`
(the others are ignored). The emotion features are computed by the caller (the EmotionField needs
the emotion embedding), the content/style features by the prior module.

:class:`MouthDeformation` (inside-mouth branch): Δxyz only, from the audio and content views, with
its own position field (the mouth's bounding box) and, by default, no eye input (``eye_dim=0``, so
its audio view is 32 + 64).

Speed (same mathematics; ``tests/models/test_deformation_fast.py``): the audio/content/style views are
passed to the ensembles as :class:`~ua3dtalk.models.deformation.ensemble.ViewInput` segments
(``[f, H]·W1 = f·W_f + H·W_H``, no broadcast concatenation), stage B uses the fused member statistics,
and the decoder evaluates ``[μ_f, H]`` by parts. *Inference cache*: without autograd
(``torch.no_grad()``), ``H``, the audio view's region-attention gates, ``b1 + H·W_H`` of every view's
first layer and the decoder's ``H`` part are computed once per set of canonical Gaussians and reused
while the Gaussians and the network's parameters are unchanged (keyed on the identity and version
counters of ``xyz`` and of every parameter/buffer; :meth:`DeformationNetwork.precompute` fills it,
:meth:`DeformationNetwork.clear_cache` / ``train()`` drop it). Gradient-enabled calls never use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..audio_view import AudioView
from ..cache import InferenceCache
from ..fields import PositionField
from .decoder import Deltas, MultiHeadDecoder
from .ensemble import ViewInput
from .fusion import FusionOutput, UncertaintyFusion
from .health import HealthMeter, record_forward
from .norm import RunningStandardize

Tensor = torch.Tensor

VIEW_NAMES = ("audio", "content", "style", "emotion")


@dataclass
class DeformationOutput:
    """Output of the deformation networks.

    Attributes:
        deltas: :class:`Deltas` with ``[B, N, k]`` offsets.
        fusion: :class:`FusionOutput` (fused code, variance, per-view weights and estimates).
        h: ``[N, h_dim]`` position encoding of the Gaussians.
    """

    deltas: Deltas
    fusion: FusionOutput
    h: Tensor


class DeformationNetwork(InferenceCache, nn.Module):
    """Uncertainty-based deformation of the face branch (see the module docstring).

    Args:
        audio_in_channels: feature size ``C`` of the audio windows.
        bounds_min, bounds_max: box of the position field (the canonical Gaussians' bounding box; can be
            set later with ``self.position_field.set_bounds``).
        views: configured views, a non-empty subset of ``("audio", "content", "style", "emotion")``.
        content_dim, style_dim, emotion_dim: sizes of the content/style prior features (64) and of the
            emotion field features (192).
        code_dim: size ``D`` of the fused code μ_f (48).
        hidden: hidden width of ensemble members, concat MLP and decoder trunk (64).
        members: ensemble size ``T`` (10).
        fusion: ``diagonal | full_cov | uniform | concat`` (see :class:`UncertaintyFusion`).
        uncertainty: ``both | aleatoric | epistemic``.
        ensemble_switch: training steps of stage A (single random ensemble member).
        heads, extra_heads, single_head, xyz_scale: decoder heads (see :class:`MultiHeadDecoder`).
        field_resolution, field_scales, field_channels: position field (H size = channels · #scales).
        audio_dim, eye_dim, blink_dim, audio_window, audio_seq_len: audio view (see :class:`AudioView`).
        detach_xyz: feed ``xyz.detach()`` to the position field (default; the canonical positions are
            then learned by the rendering loss only, not through the deformation network).
        var_floor: variance floor of the uncertainty blocks.
        compute_dtype: ``"float32"`` (default, exact), ``"bfloat16"`` (the ensembles' matmuls in
            bfloat16; fused code, variances and parameter gradients stay float32) or ``"auto"``
            (bfloat16 on CPUs with fast bfloat16 matmuls, float32 elsewhere; the experiments' default).
        cache: use the inference cache (module docstring) in calls without autograd.
        emotion_position: ★ concatenate H to the emotion view as well (192+64 instead of 192). The emotion
            field's planes start at ≈ 1 ± 0.1, so f_emotion is at first the emotion code broadcast over the
            head: without H the emotion view cannot say *where* an emotion moves the face (brows, lip corners)
            until the planes have learned it, and in a few thousand CPU steps they do not.
        view_dropout: probability of leaving a view out of a training forward
            (:class:`~ua3dtalk.models.deformation.fusion.UncertaintyFusion`; 0 = the paper).
        decoder_activation: nonlinearity of the decoder's trunk, ``relu`` (the paper) or ``silu`` (★; see
            :class:`~ua3dtalk.models.deformation.decoder.MultiHeadDecoder`).
        norm_momentum: rate floor of the stored statistics that standardise ``H``, each view's own
            feature and the fused code per channel (:class:`~ua3dtalk.models.deformation.norm.RunningStandardize`,
            DESIGN §4.5).
    """

    def __init__(
        self,
        audio_in_channels: int,
        bounds_min: Sequence[float] = (-1.0, -1.0, -1.0),
        bounds_max: Sequence[float] = (1.0, 1.0, 1.0),
        views: Sequence[str] = VIEW_NAMES,
        content_dim: int = 64,
        style_dim: int = 64,
        emotion_dim: int = 192,
        code_dim: int = 48,
        hidden: int = 64,
        members: int = 10,
        fusion: str = "diagonal",
        uncertainty: str = "both",
        ensemble_switch: int = 15000,
        heads: Sequence[str] = ("xyz", "rot", "scale"),
        extra_heads: Sequence[str] = (),
        single_head: bool = False,
        xyz_scale: float = 1e-2,
        field_resolution: int = 64,
        field_scales: Sequence[int] = (1, 2, 4, 8),
        field_channels: int = 16,
        audio_dim: int = 32,
        eye_dim: int = 6,
        blink_dim: int = 1,
        audio_window: int = 16,
        audio_seq_len: int = 8,
        detach_xyz: bool = True,
        var_floor: float = 1e-4,
        compute_dtype: str = "float32",
        cache: bool = True,
        view_dropout: float = 0.0,
        emotion_position: bool = False,
        decoder_activation: str = "relu",
        norm_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        views = tuple(str(v) for v in views)
        if not views:
            raise ValueError("DeformationNetwork: at least one view is required")
        for v in views:
            if v not in VIEW_NAMES:
                raise ValueError(f"DeformationNetwork: unknown view {v!r}; expected a subset of {VIEW_NAMES}")
        if len(set(views)) != len(views):
            raise ValueError(f"DeformationNetwork: duplicate views in {views}")
        self.views = views
        self.emotion_position = bool(emotion_position)
        self.detach_xyz = bool(detach_xyz)
        self.content_dim, self.style_dim, self.emotion_dim = int(content_dim), int(style_dim), int(emotion_dim)
        self.position_field = PositionField(bounds_min, bounds_max, field_resolution, field_scales, field_channels)
        h_dim = self.position_field.out_dim
        self.h_dim = h_dim
        self.audio_view: Optional[AudioView] = None
        if "audio" in views:
            self.audio_view = AudioView(audio_in_channels, h_dim, audio_dim, eye_dim, blink_dim, audio_window,
                                        audio_seq_len)
        dims = {
            "audio": (self.audio_view.out_dim if self.audio_view is not None else 0) + h_dim,
            "content": self.content_dim + h_dim,
            "style": self.style_dim + h_dim,
            "emotion": self.emotion_dim + (h_dim if self.emotion_position else 0),
        }
        self.view_dims = {v: dims[v] for v in views}
        self.fusion = UncertaintyFusion(self.view_dims, code_dim, hidden, members, fusion, uncertainty,
                                        ensemble_switch, var_floor=var_floor, compute_dtype=compute_dtype,
                                        view_dropout=view_dropout)
        self.decoder = MultiHeadDecoder(code_dim + h_dim, hidden, heads, extra_heads, single_head, xyz_scale,
                                        activation=decoder_activation)
        # stored per-channel statistics (DESIGN §4.5): H, every view's own feature, the fused code
        self.h_norm = RunningStandardize(h_dim, norm_momentum)
        feat = {"audio": self.audio_view.out_dim if self.audio_view is not None else 0,
                "content": self.content_dim, "style": self.style_dim, "emotion": self.emotion_dim}
        self.input_norms = nn.ModuleDict({v: RunningStandardize(feat[v], norm_momentum) for v in views})
        self.code_norm = RunningStandardize(code_dim, norm_momentum)
        self.compute_dtype = str(compute_dtype)
        self.cache_enabled = bool(cache)
        #: a :class:`~ua3dtalk.models.deformation.health.HealthMeter` recording every forward without
        #: autograd (validation, evaluation), or None
        self.monitor: Optional[HealthMeter] = None

    # ------------------------------------------------------------------ inference cache
    def _cache_extra(self) -> tuple:
        return (self.detach_xyz, self.fusion.fusion)

    def _build_cache(self, xyz: Tensor) -> dict[str, Any]:
        with torch.no_grad():
            h = self.encode_h(xyz, update=False)
            out: dict[str, Any] = {"h": h, "gates": None, "pre": {}}
            if self.audio_view is not None:
                out["gates"] = self.audio_view.gates(h)
            if self.fusion.fusion != "concat":
                for name in self.views:
                    if name == "emotion" and not self.emotion_position:
                        continue
                    ens = self.fusion.blocks[name].ensemble
                    d_f = ens.in_dim - self.h_dim
                    segs = [("frame", h.new_zeros(1, d_f)), ("shared", h)] if name not in ("audio", "emotion") \
                        else [("full", h.new_zeros(1, h.shape[0], d_f)), ("shared", h)]
                    out["pre"][name] = ens.shared_pre(ViewInput(segs))
            out["dec"] = self.decoder.h_pre(h)
        return out

    def precompute(self, xyz: Tensor) -> dict[str, Any]:
        """Fill (or reuse) the inference cache for the canonical Gaussians ``xyz [N, 3]`` and return it:
        ``h [N, h_dim]``, the audio ``gates``, ``pre`` (view → ``b1 + H·W_H`` ``[N, T·hidden]``) and the
        decoder's ``dec`` ``[N, hidden]``. Calls without autograd use it automatically; it is rebuilt when
        ``xyz`` or any parameter/buffer changes (in-place updates included) and dropped by ``train()``."""
        return self.cached(xyz, lambda: self._build_cache(xyz))

    # ------------------------------------------------------------------ helpers
    def encode_h(self, xyz: Tensor, update: bool = True) -> Tensor:
        """``H [N, h_dim]`` of the canonical Gaussians ``xyz [N, 3]``: the position field, standardised per
        channel with the stored statistics (updated in training when ``update``)."""
        return self.h_norm(self.position_field(xyz.detach() if self.detach_xyz else xyz), update=update)

    @staticmethod
    def _frame_feature(name: str, f: Optional[Tensor], dim: int, batch: Optional[int]) -> Tensor:
        if f is None:
            raise ValueError(f"DeformationNetwork: the {name!r} view is configured but no {name} feature was "
                             "given")
        if f.dim() != 2 or f.shape[-1] != dim or (batch is not None and f.shape[0] != batch):
            raise ValueError(f"DeformationNetwork: {name} must be [B{'=' + str(batch) if batch else ''}, {dim}], "
                             f"got {list(f.shape)}")
        return f

    def _views(self, xyz: Tensor, h: Tensor, audio: Optional[Tensor], blink: Optional[Tensor],
               content: Optional[Tensor], style: Optional[Tensor], emotion: Optional[Tensor],
               cache: Optional[dict] = None, update: bool = True) -> dict[str, Any]:
        """The configured views as :class:`ViewInput` segments (emotion: a tensor), validated; each view's
        own feature standardised per channel (``input_norms``)."""
        n = xyz.shape[0]
        norm = lambda name, t: self.input_norms[name](t, update=update)  # noqa: E731
        pre = cache["pre"] if cache is not None else {}
        out: dict[str, Any] = {}
        batch: Optional[int] = None
        if "audio" in self.views:
            if audio is None:
                raise ValueError("DeformationNetwork: the 'audio' view is configured but no audio was given")
            assert self.audio_view is not None
            a = self.audio_view(audio, blink, h, gates=cache["gates"] if cache is not None else None)  # [B, N, 38]
            a = norm("audio", a)
            batch = a.shape[0]
            out["audio"] = ViewInput([("full", a), ("shared", h)], pre=pre.get("audio"))
        for name, f, dim in (("content", content, self.content_dim), ("style", style, self.style_dim)):
            if name in self.views:
                f = norm(name, self._frame_feature(name, f, dim, batch))
                batch = f.shape[0]
                out[name] = ViewInput([("frame", f), ("shared", h)], pre=pre.get(name))
        if "emotion" in self.views:
            if emotion is None:
                raise ValueError("DeformationNetwork: the 'emotion' view is configured but no emotion "
                                 "features were given")
            if emotion.dim() != 3 or emotion.shape[1:] != (n, self.emotion_dim) or \
                    (batch is not None and emotion.shape[0] != batch):
                raise ValueError(f"DeformationNetwork: emotion must be [B, N={n}, {self.emotion_dim}], got "
                                 f"{list(emotion.shape)}")
            emotion = norm("emotion", emotion)
            out["emotion"] = ViewInput([("full", emotion), ("shared", h)], pre=pre.get("emotion")) \
                if self.emotion_position else emotion
        for name, t in out.items():
            assert tuple(t.shape[1:]) == (n, self.view_dims[name]), (name, t.shape)
        return {v: out[v] for v in self.views}

    def _check_xyz(self, xyz: Tensor) -> None:
        if xyz.dim() != 2 or xyz.shape[-1] != 3:
            raise ValueError(f"DeformationNetwork: xyz must be [N, 3], got {list(xyz.shape)}")

    def build_views(self, xyz: Tensor, audio: Optional[Tensor] = None, blink: Optional[Tensor] = None,
                    content: Optional[Tensor] = None, style: Optional[Tensor] = None,
                    emotion: Optional[Tensor] = None) -> tuple[dict[str, Tensor], Tensor]:
        """The configured views ``name → [B, N, d_v]`` (materialised concatenations) and
        ``H [N, h_dim]`` (arguments as :meth:`forward`; reference form — :meth:`forward` does not
        materialise the broadcasts)."""
        self._check_xyz(xyz)
        h = self.encode_h(xyz, update=False)  # [N, h_dim]
        views = self._views(xyz, h, audio, blink, content, style, emotion, update=False)
        return {k: v.materialize() if isinstance(v, ViewInput) else v for k, v in views.items()}, h

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        xyz: Tensor,
        audio: Optional[Tensor] = None,
        blink: Optional[Tensor] = None,
        content: Optional[Tensor] = None,
        style: Optional[Tensor] = None,
        emotion: Optional[Tensor] = None,
        step: Optional[int] = None,
        single_member: Optional[bool] = None,
        update_stats: bool = True,
    ) -> DeformationOutput:
        """Offsets of the Gaussians for ``B`` frames.

        Args:
            xyz: ``[N, 3]`` canonical Gaussian centres.
            audio: ``[B, 8, 16, C]`` neighbouring audio windows or ``[B, 16, C]`` (required with the audio view).
            blink: ``[B, blink_dim]`` / ``[B]`` eye input, or ``None`` (eyes open).
            content: ``[B, content_dim]`` content prior (required with the content view).
            style: ``[B, style_dim]`` style prior (required with the style view).
            emotion: ``[B, N, emotion_dim]`` emotion-field features (required with the emotion view).
            step: global training step (ensemble stage, see :class:`UncertaintyFusion`).
            single_member: force ensemble stage A (True) / B (False).
            update_stats: in training, fold this call's inputs into the stored standardisation statistics
                (``False`` for calls on a few special points, e.g. landmark anchors).
        Returns:
            :class:`DeformationOutput` (``deltas`` fields ``[B, N, k]``). Without autograd the inference
            cache is used (module docstring); ``h`` is then the cached tensor (do not modify it in place).
        """
        self._check_xyz(xyz)
        cache = None
        if self.cache_enabled and not torch.is_grad_enabled():
            cache = self.precompute(xyz.detach())
            h = cache["h"]
        else:
            h = self.encode_h(xyz, update=update_stats)  # [N, h_dim]
        views = self._views(xyz, h, audio, blink, content, style, emotion, cache, update=update_stats)
        fused = self.fusion(views, step=step, single_member=single_member)
        code = self.code_norm(fused.mu, update=update_stats)  # the fused code at unit scale
        deltas = self.decoder(code, h, h_pre=cache["dec"] if cache is not None else None)
        if self.monitor is not None and not torch.is_grad_enabled():
            record_forward(self.monitor, self, h, views, fused, code)
        return DeformationOutput(deltas=deltas, fusion=fused, h=h)


class MouthDeformation(DeformationNetwork):
    """Inside-mouth branch: Δxyz only, from the audio and content views (DESIGN §4).

    Args: as :class:`DeformationNetwork`, restricted to ``views ⊆ ("audio", "content")`` and a single
    ``xyz`` head; ``eye_dim`` defaults to 0 (no eye input for the oral cavity).
    """

    def __init__(
        self,
        audio_in_channels: int,
        bounds_min: Sequence[float] = (-1.0, -1.0, -1.0),
        bounds_max: Sequence[float] = (1.0, 1.0, 1.0),
        views: Sequence[str] = ("audio", "content"),
        content_dim: int = 64,
        code_dim: int = 48,
        hidden: int = 64,
        members: int = 10,
        fusion: str = "diagonal",
        uncertainty: str = "both",
        ensemble_switch: int = 15000,
        xyz_scale: float = 1e-2,
        field_resolution: int = 64,
        field_scales: Sequence[int] = (1, 2, 4, 8),
        field_channels: int = 16,
        audio_dim: int = 32,
        eye_dim: int = 0,
        blink_dim: int = 1,
        audio_window: int = 16,
        audio_seq_len: int = 8,
        detach_xyz: bool = True,
        var_floor: float = 1e-4,
        compute_dtype: str = "float32",
        cache: bool = True,
        decoder_activation: str = "relu",
        norm_momentum: float = 0.01,
    ) -> None:
        views = tuple(str(v) for v in views)
        bad = [v for v in views if v not in ("audio", "content")]
        if bad:
            raise ValueError(f"MouthDeformation: views must be a subset of ('audio', 'content'), got {views}")
        super().__init__(
            audio_in_channels, bounds_min, bounds_max, views=views, content_dim=content_dim, code_dim=code_dim,
            hidden=hidden, members=members, fusion=fusion, uncertainty=uncertainty,
            ensemble_switch=ensemble_switch, heads=("xyz",), extra_heads=(), single_head=False,
            xyz_scale=xyz_scale, field_resolution=field_resolution, field_scales=field_scales,
            field_channels=field_channels, audio_dim=audio_dim, eye_dim=eye_dim, blink_dim=blink_dim,
            audio_window=audio_window, audio_seq_len=audio_seq_len, detach_xyz=detach_xyz, var_floor=var_floor,
            compute_dtype=compute_dtype, cache=cache, decoder_activation=decoder_activation,
            norm_momentum=norm_momentum,
        )

    def forward(  # type: ignore[override]
        self,
        xyz: Tensor,
        audio: Optional[Tensor] = None,
        blink: Optional[Tensor] = None,
        content: Optional[Tensor] = None,
        step: Optional[int] = None,
        single_member: Optional[bool] = None,
        update_stats: bool = True,
        **_ignored: Optional[Tensor],
    ) -> DeformationOutput:
        """As :meth:`DeformationNetwork.forward` with the audio/content inputs only (``style``/``emotion``
        keyword arguments are accepted and ignored); ``deltas.xyz`` is ``[B, N, 3]``, the other fields
        ``None``."""
        return super().forward(xyz, audio, blink, content, None, None, step=step, single_member=single_member,
                               update_stats=update_stats)


__all__ = ["DeformationNetwork", "MouthDeformation", "DeformationOutput", "VIEW_NAMES"]
