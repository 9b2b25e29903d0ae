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
from ...utils.typed_config import make_config
from .config import DeformationConfig, MouthDeformationConfig
from .decoder import Deltas, MultiHeadDecoder
from .ensemble import ViewInput
from .fusion import FusionOutput, UncertaintyFusion
from .health import HealthMeter, record_forward
from .norm import RunningStandardize

Tensor = torch.Tensor

VIEW_NAMES = DeformationConfig.views  # ("audio", "content", "style", "emotion"): every view, in order


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
        config: the typed :class:`~ua3dtalk.models.deformation.config.DeformationConfig` (views, sizes,
            fusion, uncertainty, heads, field, audio view, precision, ★ options; defaults when None).
        **options: fields of that configuration set on top of ``config`` (the keys of
            ``model.deformation`` in the experiment yamls, e.g. ``members=4, fusion="uniform"``).
    """

    config_class: type[DeformationConfig] = DeformationConfig

    def __init__(self, audio_in_channels: int, bounds_min: Sequence[float] = (-1.0, -1.0, -1.0),
                 bounds_max: Sequence[float] = (1.0, 1.0, 1.0), config: Optional[DeformationConfig] = None,
                 **options: Any) -> None:
        super().__init__()
        cfg = make_config(self.config_class, config, options, type(self).__name__)
        self.config = cfg
        views = cfg.views
        self.views = views
        self.emotion_position = cfg.emotion_position
        self.detach_xyz = cfg.detach_xyz
        self.content_dim, self.style_dim, self.emotion_dim = cfg.content_dim, cfg.style_dim, cfg.emotion_dim
        self.position_field = PositionField(bounds_min, bounds_max, cfg.field_resolution, cfg.field_scales,
                                            cfg.field_channels)
        h_dim = self.position_field.out_dim
        self.h_dim = h_dim
        self.audio_view: Optional[AudioView] = None
        if "audio" in views:
            self.audio_view = AudioView(audio_in_channels, h_dim, cfg.audio_dim, cfg.eye_dim, cfg.blink_dim,
                                        cfg.audio_window, cfg.audio_seq_len)
        dims = {
            "audio": (self.audio_view.out_dim if self.audio_view is not None else 0) + h_dim,
            "content": self.content_dim + h_dim,
            "style": self.style_dim + h_dim,
            "emotion": self.emotion_dim + (h_dim if self.emotion_position else 0),
        }
        self.view_dims = {v: dims[v] for v in views}
        self.fusion = UncertaintyFusion(self.view_dims, cfg.code_dim, cfg.hidden, cfg.members, cfg.fusion,
                                        cfg.uncertainty, cfg.ensemble_switch, var_floor=cfg.var_floor,
                                        compute_dtype=cfg.compute_dtype, view_dropout=cfg.view_dropout)
        self.decoder = MultiHeadDecoder(cfg.code_dim + h_dim, cfg.hidden, cfg.heads, cfg.extra_heads, cfg.single_head,
                                        cfg.xyz_scale, activation=cfg.decoder_activation)
        # stored per-channel statistics (DESIGN §4.5): H, every view's own feature, the fused code
        self.h_norm = RunningStandardize(h_dim, cfg.norm_momentum)
        feat = {"audio": self.audio_view.out_dim if self.audio_view is not None else 0,
                "content": self.content_dim, "style": self.style_dim, "emotion": self.emotion_dim}
        self.input_norms = nn.ModuleDict({v: RunningStandardize(feat[v], cfg.norm_momentum) for v in views})
        self.code_norm = RunningStandardize(cfg.code_dim, cfg.norm_momentum)
        self.compute_dtype = cfg.compute_dtype
        self.cache_enabled = cfg.cache
        #: a :class:`~ua3dtalk.models.deformation.health.HealthMeter` recording every forward without
        #: autograd (validation, evaluation), or None
        self.monitor: Optional[HealthMeter] = None
        # optimizer steps this network has taken over all stages (saved in checkpoints): the ensemble
        # schedule's clock (:meth:`schedule_step`)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))
        # whether code_norm's statistics have been restarted for stage B (see forward)
        self.register_buffer("code_stats_stage_b", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the step counter existed load with 0 (only a resumed training run reads it)
        state_dict.setdefault(prefix + "trained_steps", torch.zeros((), dtype=torch.long))
        state_dict.setdefault(prefix + "code_stats_stage_b", torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def schedule_step(self, step: Optional[int]) -> Optional[int]:
        """The step of the ensemble schedule (stage A while it is below ``ensemble_switch``) for a call made at
        training step ``step`` of some stage: this network's own count of optimizer steps (``trained_steps``,
        incremented by the training loop for every step that deformed a render, carried across stages and
        checkpoints), not the stage's step — the fuse stage continues the face stage's schedule instead of
        restarting stage A, whose single-member outputs the code statistics would then follow while
        inference averages the members. ``None`` (not a training call) → ``None`` (stage B)."""
        return None if step is None else int(self.trained_steps)

    def count_step(self) -> None:
        """One more optimizer step of this network (the training loop calls it after the step)."""
        self.trained_steps.add_(1)

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
               cache: Optional[dict] = None, update: bool = True, rows: Optional[Tensor] = None) -> dict[str, Any]:
        """The configured views as :class:`ViewInput` segments (emotion: a tensor), validated; each view's
        own feature standardised per channel (``input_norms``). ``rows`` (see :meth:`forward`): the frame
        inputs are given for the distinct frames, the emotion features for every output row."""
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
            if rows is not None:
                batch = len(rows)
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
        frame_rows: Optional[Tensor] = None,
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
            frame_rows: ``[B]`` integer index, or None. The frame inputs (``audio``, ``blink``, ``content``,
                ``style``) are then given for ``F`` distinct frames and output row ``b`` is frame
                ``frame_rows[b]`` with its own ``emotion`` features (``[B, N, emotion_dim]``): the views
                that do not depend on the emotion are evaluated once per distinct frame (exactly the same
                values and gradients as repeating the frames, with ``update_stats=False`` as the landmark
                term's emotion-swapped copies call it; a statistics update would count each frame once).
                Needs the ``emotion`` view.
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
        rows = None
        if frame_rows is not None:
            if "emotion" not in self.views:
                raise ValueError("DeformationNetwork: frame_rows needs the 'emotion' view (without it every row "
                                 "of a frame is the same; evaluate the distinct frames instead)")
            rows = {v: frame_rows for v in self.views if v != "emotion"}
        views = self._views(xyz, h, audio, blink, content, style, emotion, cache, update=update_stats,
                            rows=frame_rows)
        fused = self.fusion(views, step=step, single_member=single_member, rows=rows)
        if self.training and update_stats and torch.is_grad_enabled() and not bool(self.code_stats_stage_b) \
                and not self.fusion.is_single_member(step, single_member):
            # the first training forward of stage B: the code statistics gathered on single members (stage A;
            # their outputs spread ≈ 3× wider than the members' mean) would shrink the code inference sees
            # until the moving average forgets them; they restart from the members' mean instead
            self.code_norm.reset()
            self.code_stats_stage_b.fill_(True)
        code = self.code_norm(fused.mu, update=update_stats)  # the fused code at unit scale
        deltas = self.decoder(code, h, h_pre=cache["dec"] if cache is not None else None)
        if self.monitor is not None and not torch.is_grad_enabled() and frame_rows is None:
            record_forward(self.monitor, self, h, views, fused, code)
        return DeformationOutput(deltas=deltas, fusion=fused, h=h)


class MouthDeformation(DeformationNetwork):
    """Inside-mouth branch: Δxyz only, from the audio and content views (DESIGN §4).

    Args: as :class:`DeformationNetwork`, with a
    :class:`~ua3dtalk.models.deformation.config.MouthDeformationConfig` (``views ⊆ ("audio", "content")``, the
    single ``xyz`` head, ``eye_dim`` 0 by default: no eye input for the oral cavity). :meth:`forward` is the
    face branch's: the style/emotion inputs are ignored (no such view), ``deltas.xyz`` is ``[B, N, 3]`` and
    the other fields ``None``.
    """

    config_class = MouthDeformationConfig


__all__ = ["DeformationNetwork", "MouthDeformation", "DeformationOutput", "VIEW_NAMES"]
