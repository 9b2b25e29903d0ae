"""The talking head: conditioning → deformation → render (DESIGN §4), the forward model of
:class:`~ua3dtalk.models.module.UA3DTalk`.

Per rendering step (B frames, one camera each): the frozen prior gives f_content, f_style; the frozen
emotion student gives e ∈ R^128 from the audio context; the EmotionField turns (xyz, e) into
f_emotion; the DeformationNetwork fuses the views by uncertainty and decodes Δxyz, Δrot, Δscale; the
deformed Gaussians are rendered with :func:`ua3dtalk.render.rasterize`.

:class:`TalkingHead` is a plain ``nn.Module`` (no Lightning, no losses): it owns the avatar's modules
(``face``, ``mouth``, ``deformation``, ``mouth_deformation``, ``prior``, ``emotion``, ``emotion_field``,
``emotion_control``) and renders frames from a batch (:meth:`TalkingHead.forward`). The LightningModule
:class:`~ua3dtalk.models.module.UA3DTalk` holds it as ``head`` (state-dict keys ``head.face.means``, …) and adds
the losses, the optimisation and the stage curriculum.
"""
from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Optional, get_args

import torch
from torch import nn

from ..render import rasterize
from ..render.sh import C0 as SH_C0  # degree-0 SH basis: RGB = SH_C0·DC + 0.5
from .config import FrameCode
from .emotion import EmotionControl
from .gaussians import GaussianModel


@dataclass
class Conditioning:
    """Per-frame conditioning of the deformation (``B`` frames)."""

    audio: torch.Tensor  # [B,8,16,C] neighbouring windows or [B,16,C]
    blink: torch.Tensor  # [B]
    content: Optional[torch.Tensor]  # [B,64]
    style: Optional[torch.Tensor]  # [B,64]
    emotion: Optional[torch.Tensor]  # [B,128] emotion embedding e
    code: Optional[torch.Tensor] = None  # [B,6] standardised expression code (frame_code=expression) or None

    def face_eye(self) -> torch.Tensor:
        """The face deformation's eye input ``[B, blink_dim]``: the expression code, else the blink ``[B,1]``."""
        return self.code if self.code is not None else self.blink[:, None]


@dataclass
class BranchRender:
    """Render of one branch for one frame: image/alpha [H,W,3]/[H,W,1] and what density control needs."""

    image: torch.Tensor
    alpha: torch.Tensor
    out: object  # RenderOutput
    deltas: object  # Deltas
    fusion: object  # FusionOutput
    anchor_xyz: Optional[torch.Tensor] = None  # [1,L,3] deformation field at the landmark anchors (if asked)


@contextmanager
def eval_mode(*modules: Optional[nn.Module]):
    """Run frozen modules in eval mode (no BatchNorm statistics updates, no dropout: the conditioning
    a render stage trains with is the one inference sees); every submodule's mode is restored."""
    saved = [(m, m.training) for mod in modules if mod is not None for m in mod.modules()]
    for m, _ in saved:
        m.training = False
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


#: range of the deformed log-scales passed to the renderer (σ from 2e-9 to 20 scene units)
LOG_SCALE_RANGE = (-20.0, 3.0)


EXPRESSION_CODE = ("lip_corner_raise", "lip_corner_asym", "brow_raise", "brow_inner_raise", "brow_furrow",
                   "eye_open")
"""The coefficients of the landmark expression (:data:`~ua3dtalk.metrics.landmarks.LANDMARK_EXPR_NAMES`, the
columns of a preprocessed video's ``expr.npy``) that ``frame_code=expression`` feeds the face deformation: brows,
eyes and lip corners — what an expression changes and speech does not predict; the mouth opening is left to the
audio."""


def expression_columns() -> list[int]:
    """Column indices of :data:`EXPRESSION_CODE` in ``expr.npy``."""
    from ..metrics.landmarks import LANDMARK_EXPR_NAMES

    return [LANDMARK_EXPR_NAMES.index(n) for n in EXPRESSION_CODE]


def _frame(t: Optional[torch.Tensor], i: int) -> Optional[torch.Tensor]:
    """Frame ``i`` of a per-frame tensor, keeping the batch dim (``[1, ...]``); None stays None."""
    return None if t is None else t[i:i + 1]


class TalkingHead(nn.Module):
    """Conditioning, deformation and rendering of the two Gaussian branches (face over inside mouth).

    Args:
        face, mouth: canonical Gaussians of the face/head and the inside-mouth branch.
        deformation: the face branch's :class:`~ua3dtalk.models.deformation.DeformationNetwork` (its ``views``
            decide which of prior / emotion are used).
        mouth_deformation: the mouth branch's :class:`~ua3dtalk.models.deformation.MouthDeformation`.
        prior: :class:`~ua3dtalk.models.prior.PriorExtraction` or None (no content/style views).
        emotion: :class:`~ua3dtalk.models.emotion.EmotionDistillation` or None (no emotion view).
        emotion_field: :class:`~ua3dtalk.models.emotion.EmotionField` (needed with the emotion view).
        emotion_control: :class:`~ua3dtalk.models.emotion.EmotionControl` (label prototypes); built with its
            defaults when an emotion encoder is given and none is.
        emotion_condition: ``audio`` (the student's embedding of the frame's audio) or ``label`` (training frames
            take their label's prototype, see :meth:`conditioning`).
        backend: renderer backend of :func:`ua3dtalk.render.rasterize`.

    Shapes: a :class:`~ua3dtalk.data.batch.FrameBatch` / ``PredictBatch`` of ``B`` frames in, images
    ``[B,3,H,W]`` in [0, 1] out (:meth:`forward`).
    """

    def __init__(self, face: GaussianModel, mouth: GaussianModel, deformation: nn.Module, mouth_deformation: nn.Module,
                 prior: Optional[nn.Module] = None, emotion: Optional[nn.Module] = None,
                 emotion_field: Optional[nn.Module] = None, emotion_control: Optional[nn.Module] = None,
                 emotion_condition: str = "audio", backend: str = "auto", frame_code: str = "blink"):
        super().__init__()
        if frame_code not in get_args(FrameCode):
            raise ValueError(f"model.frame_code must be one of {', '.join(get_args(FrameCode))}, got {frame_code!r}")
        self.frame_code = frame_code
        if frame_code == "expression":
            bd = getattr(getattr(deformation, "audio_view", None), "blink_dim", None)
            if bd != len(EXPRESSION_CODE) or getattr(deformation.audio_view, "eye_dim", 0) < 1:
                raise ValueError(f"model.frame_code=expression feeds {len(EXPRESSION_CODE)} expression coefficients "
                                 "to the face deformation's eye input: it needs the 'audio' view with "
                                 f"model.deformation.blink_dim={len(EXPRESSION_CODE)} and eye_dim > 0 "
                                 f"(blink_dim is {bd})")
            # the code's statistics over the training frames (set_code_statistics; saved in checkpoints; only with
            # frame_code=expression, so a blink model's checkpoint keeps the keys it always had)
            self.register_buffer("code_mean", torch.zeros(len(EXPRESSION_CODE)))
            self.register_buffer("code_std", torch.ones(len(EXPRESSION_CODE)))
            self.register_buffer("code_ready", torch.tensor(False))
        else:
            self.code_ready = self.code_mean = self.code_std = None
        if "emotion" in deformation.views and (emotion is None or emotion_field is None):
            raise ValueError("UA3DTalk: the deformation has the 'emotion' view but no emotion encoder/field is "
                             "configured (use views without 'emotion' for the no-emotion ablation)")
        if ({"content", "style"} & set(deformation.views)) and prior is None:
            raise ValueError("UA3DTalk: the deformation has content/style views but no prior is configured")
        if emotion_control is None and emotion is not None:
            emotion_control = EmotionControl()
        self.face, self.mouth = face, mouth
        self.deformation, self.mouth_deformation = deformation, mouth_deformation
        self.prior, self.emotion = prior, emotion
        self.emotion_field, self.emotion_control = emotion_field, emotion_control
        self.emotion_condition, self.backend = emotion_condition, backend
        self.set_bounds()

    def set_bounds(self) -> None:
        """Fit the deformation fields' grids to the Gaussians' bounding boxes."""
        for g, net in ((self.face, self.deformation), (self.mouth, self.mouth_deformation)):
            lo, hi = g.bounds[0].tolist(), g.bounds[1].tolist()
            net.position_field.set_bounds(lo, hi)
        if self.emotion_field is not None:
            self.emotion_field.set_bounds(*(self.face.bounds[i].tolist() for i in (0, 1)))

    def forward(self, batch, emotion: Optional[torch.Tensor] = None, stage: str = "fuse",
                deform: bool = True) -> torch.Tensor:
        """Every frame of ``batch`` as ``stage`` shows it → ``[B,3,H,W]`` in [0, 1]: ``mouth`` / ``face`` one
        branch over the frame's background, otherwise (``fuse``, inference) face over mouth over background.
        ``emotion`` ``[128]`` or ``[1,128]`` overrides the audio-derived embedding; ``deform=False`` renders the
        face's canonical Gaussians (the static warm-up)."""
        H, W = batch.background.shape[-2:]
        cond = self.conditioning(batch, emotion)
        out = []
        for i in range(batch.background.shape[0]):
            bg = batch.background[i].permute(1, 2, 0)
            vm, K = batch.viewmat[i], batch.K[i]
            if stage == "mouth":
                r = self.render_mouth(cond, i, vm, K, W, H)
                img = r.image + (1 - r.alpha) * bg
            elif stage == "face":
                r = self.render_face(cond, i, vm, K, W, H, deform=deform)
                img = r.image + (1 - r.alpha) * bg
            else:
                img = self.render_frame(cond, i, vm, K, W, H, bg)[0]
            out.append(img.clamp(0, 1).permute(2, 0, 1))
        return torch.stack(out)

    @torch.no_grad()
    def set_code_statistics(self, expr: torch.Tensor) -> None:
        """Mean and std of the expression code from ``expr [M, K]`` (``expr.npy`` rows of the training frames)."""
        from ..metrics.landmarks import LANDMARK_EXPR_NAMES

        if self.frame_code != "expression":
            raise ValueError(f"set_code_statistics: the model was built with frame_code={self.frame_code}")
        expr = torch.as_tensor(expr, dtype=torch.float64)
        if expr.dim() != 2 or expr.shape[1] != len(LANDMARK_EXPR_NAMES) or expr.shape[0] < 2:
            raise ValueError(f"model.frame_code=expression needs expr.npy with the {len(LANDMARK_EXPR_NAMES)} landmark "
                             f"expression coefficients of ua3dtalk-preprocess ({', '.join(LANDMARK_EXPR_NAMES)}) on at "
                             f"least 2 training frames, got {list(expr.shape)}")
        code = expr[:, expression_columns()]
        if not bool(torch.isfinite(code).all()):
            raise ValueError("model.frame_code=expression: expr.npy has non-finite values in the training frames")
        std = code.std(0)
        # a coefficient that never changes in the video maps to 0 (a floor of 1e-3 of the coefficients' scale)
        floor = 1e-3 * code.abs().mean().clamp_min(1e-6)
        self.code_mean.copy_(code.mean(0).to(self.code_mean))
        self.code_std.copy_(torch.maximum(std, floor).to(self.code_std))
        self.code_ready.fill_(True)

    def expression_code(self, expr: Optional[torch.Tensor], batch: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """``[B, 6]`` standardised code of ``expr [B, K]`` (frame_code=expression), zeros (the training average) when
        ``expr`` is None outside training; None with ``frame_code=blink``."""
        if self.frame_code != "expression":
            return None
        if expr is None:
            if self.training:
                raise ValueError("model.frame_code=expression needs the expression coefficients of every training "
                                 "frame (expr.npy, written by ua3dtalk-preprocess)")
            return like.new_zeros(batch, len(EXPRESSION_CODE))
        if not bool(self.code_ready):
            raise RuntimeError("model.frame_code=expression: the code statistics are not set "
                               "(TalkingHead.set_code_statistics, done at the start of training)")
        code = expr[:, expression_columns()].to(like.dtype)
        return (code - self.code_mean.to(like.dtype)) / self.code_std.to(like.dtype)

    def conditioning(self, batch, emotion: Optional[torch.Tensor] = None) -> Conditioning:
        """Prior and emotion features of a :class:`FrameBatch` (frozen modules, no grad).

        ``emotion`` overrides the audio-derived embedding (label/explicit control at inference)."""
        audio = batch.audio_neighbours if batch.audio_neighbours is not None else batch.audio
        context = getattr(batch, "audio_context", None)
        if context is None:
            context = batch.audio[:, 8:10].mean(1, keepdim=True).expand(-1, 50, -1)  # degenerate: no context
        content = style = e = None
        with torch.no_grad(), eval_mode(self.prior, self.emotion):
            if self.prior is not None:
                p = self.prior(batch.audio, context)
                content, style = p.content, p.style
            if emotion is not None:
                e = emotion.to(batch.audio).expand(batch.audio.shape[0], -1)
            elif self.emotion is not None:
                e = self.emotion.encoder(w2v=context).embedding
                if (self.training and self.emotion_condition == "label" and self.emotion_control is not None
                        and getattr(batch, "emotion", None) is not None):
                    e = self.emotion_control.from_labels(batch.emotion, batch.intensity, e)
        code = self.expression_code(getattr(batch, "expr", None), batch.audio.shape[0], batch.audio)
        return Conditioning(audio=audio, blink=batch.blink, content=content, style=style, emotion=e, code=code)

    def _render(self, g: GaussianModel, means, quats, log_scales, viewmat, K, width, height, opacities=None,
                colors=None):
        # deformed log-scales are kept in a finite range: exp() of a runaway Δscale must neither underflow
        # to 0 (rejected by the renderer) nor overflow (beyond the bound a Gaussian is sub-pixel / covers
        # everything either way, so the clamped gradient loses nothing useful)
        log_scales = log_scales.clamp(LOG_SCALE_RANGE[0], LOG_SCALE_RANGE[1])
        return rasterize(means, quats, torch.exp(log_scales), g.opacities if opacities is None else opacities,
                         g.colors() if colors is None else colors, viewmat, K, width, height,
                         sh_degree=g.active_sh_degree, backend=self.backend)

    @contextmanager
    def co_sample(self, points: Optional[torch.Tensor]):
        """Within the block, the face deformation's plane fields (position field, emotion field) sample
        ``points`` ``[L,3]`` together with the first frame's Gaussians, and evaluations at ``points`` reuse
        those samples (:meth:`~ua3dtalk.models.fields.PlaneField.co_sample`: same values, one scatter of the
        gradient into the planes). The training step wraps its frames and the landmark term's replay-bank
        frames, which evaluate the deformation at the landmark anchors. ``None``: a no-op."""
        with ExitStack() as stack:
            if points is not None:
                fields = [self.deformation.position_field]
                if self.emotion_field is not None:
                    fields.append(self.emotion_field.planes)
                for f in fields:
                    stack.enter_context(f.co_sample(points))
            yield

    def render_face(self, cond: Conditioning, i: int, viewmat, K, width, height, deform: bool = True,
                    step: Optional[int] = None, anchors: Optional[torch.Tensor] = None) -> BranchRender:
        """Render the face branch of frame ``i``. ``anchors`` ``[L,3]`` (canonical points, e.g. landmark
        anchors): the deformation field is also evaluated there, in the same forward pass (the same ensemble
        member), and returned as ``anchor_xyz`` ``[1,L,3]``. ``step``: set (any int) for a training call, None
        otherwise; the ensemble stage follows the network's own step count (``DeformationNetwork.schedule_step``).
        The same for :meth:`render_mouth` and :meth:`render_frame`."""
        g = self.face
        deltas = fusion = anchor_xyz = opacities = colors = None
        means, quats, log_scales = g.means, g.quats, g.log_scales
        if deform:
            n = len(g)
            xyz = g.means if anchors is None else torch.cat([g.means, anchors.to(g.means)], 0)
            f_emo = None
            if "emotion" in self.deformation.views:
                f_emo = self.emotion_field(xyz.detach(), cond.emotion[i:i + 1])
            sl = functools.partial(_frame, i=i)
            d = self.deformation(xyz, audio=sl(cond.audio), blink=sl(cond.face_eye()),
                                 content=sl(cond.content), style=sl(cond.style), emotion=f_emo,
                                 step=self.deformation.schedule_step(step))
            deltas, fusion = d.deltas, d.fusion
            if anchors is not None:
                anchor_xyz = deltas.xyz[:, n:]
                deltas = type(deltas)(**{k: v[:, :n] for k, v in deltas.as_dict().items()})
            means = means + deltas.xyz[0]
            if deltas.rot is not None:
                quats = quats + deltas.rot[0]
            if deltas.scale is not None:
                log_scales = log_scales + deltas.scale[0]
            # optional heads: Δopacity is added to the opacity logits, Δcolor (RGB) to the SH DC term
            if deltas.opacity is not None:
                opacities = torch.sigmoid(g.opacity_logits + deltas.opacity[0, :, 0])
            if deltas.color is not None:
                colors = g.colors()
                colors = torch.cat([colors[:, :1] + deltas.color[0][:, None] / SH_C0, colors[:, 1:]], 1)
        out = self._render(g, means, quats, log_scales, viewmat, K, width, height, opacities, colors)
        return BranchRender(out.image, out.alpha, out, deltas, fusion, anchor_xyz)

    def render_mouth(self, cond: Conditioning, i: int, viewmat, K, width, height,
                     step: Optional[int] = None, color_grad_mask: Optional[torch.Tensor] = None) -> BranchRender:
        """Render the inside-mouth branch of frame ``i``. ``color_grad_mask`` [H,W,1]: the Gaussians' colours
        get gradients only from these pixels (a second render with detached colours supplies the others, so
        positions and opacities still learn everywhere); the image values are unchanged."""
        g = self.mouth
        sl = functools.partial(_frame, i=i)
        content = sl(cond.content) if "content" in self.mouth_deformation.views else None
        d = self.mouth_deformation(g.means, audio=sl(cond.audio), blink=sl(cond.blink)[:, None], content=content,
                                   step=self.mouth_deformation.schedule_step(step))
        means = g.means + d.deltas.xyz[0]
        out = self._render(g, means, g.quats, g.log_scales, viewmat, K, width, height)
        image = out.image
        if color_grad_mask is not None:
            fixed = self._render(g, means, g.quats, g.log_scales, viewmat, K, width, height,
                                 colors=g.colors().detach())
            m = color_grad_mask.to(image.dtype)
            image = out.image * m + fixed.image * (1 - m)
        return BranchRender(image, out.alpha, out, d.deltas, d.fusion)

    def render_frame(self, cond: Conditioning, i: int, viewmat, K, width, height, background,
                     step: Optional[int] = None, anchors: Optional[torch.Tensor] = None,
                     mouth_color_mask: Optional[torch.Tensor] = None):
        """Full composite (face over mouth over background) of frame ``i``: (image [H,W,3], alpha, parts);
        ``anchors`` as :meth:`render_face`, ``mouth_color_mask`` as ``color_grad_mask`` of :meth:`render_mouth`."""
        face = self.render_face(cond, i, viewmat, K, width, height, step=step, anchors=anchors)
        mouth = self.render_mouth(cond, i, viewmat, K, width, height, step=step, color_grad_mask=mouth_color_mask)
        inner = mouth.image + (1 - mouth.alpha) * background
        image = face.image + (1 - face.alpha) * inner
        alpha = 1 - (1 - face.alpha) * (1 - mouth.alpha)
        return image, alpha, face, mouth
