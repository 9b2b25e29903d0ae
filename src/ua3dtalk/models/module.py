"""The ``UA3DTalk`` LightningModule: avatar + prior + emotion + uncertainty deformation (DESIGN §4).

Stages (``stage=``), each resuming from the previous stage's checkpoint:

==========  ===========================================  ==============================================
stage       trains                                       batches
==========  ===========================================  ==============================================
``prior``   PriorExtraction (sync, mouth, recon, decor)  :class:`~ua3dtalk.data.datamodule.AudioBatch`
``emotion`` EmotionDistillation (teacher → w2v student),  AudioBatch (emotional dataset)
            class/intensity prototypes of EmotionControl
``mouth``   inside-mouth Gaussians + MouthDeformation    :class:`~ua3dtalk.data.batch.FrameBatch`
``face``    face Gaussians, DeformationNetwork,          FrameBatch
            EmotionField (static warm-up first)
``fuse``    face + mouth together, composited            FrameBatch
==========  ===========================================  ==============================================

Per rendering step (B frames, one camera each): the frozen prior gives f_content, f_style; the frozen
emotion student gives e ∈ R^128 from the audio context; the EmotionField turns (xyz, e) into
f_emotion; the DeformationNetwork fuses the views by uncertainty and decodes Δxyz, Δrot, Δscale; the
deformed Gaussians are rendered with :func:`ua3dtalk.render.rasterize`.

Losses (image stages): L1 + ``ssim_weight``·(1 − SSIM) between the render composited over the
frame's background and the target (the frame where the branch's mask is set, the background
elsewhere); after ``static_warmup`` steps small L1 regularisers on the offsets and an alpha-vs-mask
L1. Manual optimisation: density control changes the Gaussian parameter set between steps.

Bad input: a non-finite loss stops training with the step and the offending tensor named
(:class:`NonFiniteLossError`); nothing is stepped, so the last checkpoint stays the last good one.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

from ..render import rasterize
from ..render.sh import C0 as SH_C0  # degree-0 SH basis: RGB = SH_C0·DC + 0.5
from .deformation import DeformationNetwork, MouthDeformation, RunningStandardize
from .emotion import EmotionControl, EmotionDistillation, EmotionField
from .gaussians import DensityControl, GaussianModel, adam, make_optimizer
from .health import HealthMixin
from .landmarks import LandmarkAnchors, landmark_loss, project
from .optim import net_lr_factor, net_param_groups, set_net_lr
from .prior import PriorExtraction

STAGES = ("prior", "emotion", "mouth", "face", "fuse")
RENDER_STAGES = ("mouth", "face", "fuse")


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or an output becomes NaN/Inf; the message names the step and the tensor."""


@dataclass
class Conditioning:
    """Per-frame conditioning of the deformation (``B`` frames)."""

    audio: torch.Tensor  # [B,8,16,C] neighbouring windows or [B,16,C]
    blink: torch.Tensor  # [B]
    content: Optional[torch.Tensor]  # [B,64]
    style: Optional[torch.Tensor]  # [B,64]
    emotion: Optional[torch.Tensor]  # [B,128] emotion embedding e


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
def _eval_mode(*modules: Optional[nn.Module]):
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


def _check_all_finite(named: Sequence[tuple[str, Optional[torch.Tensor]]], step: int, prefix: str = "") -> None:
    """:func:`_check_finite` of many tensors at the cost of one pass: the 2-norms of all tensors in one
    multi-tensor kernel (a NaN or Inf anywhere makes its tensor's norm non-finite) and one host sync;
    only when one is non-finite are the tensors checked one by one to name the culprit."""
    named = [(n, t) for n, t in named if t is not None and t.numel()]
    if not named:
        return
    tensors = [t.detach() for _, t in named]
    norms = torch.stack(torch._foreach_norm(tensors, 2)) if hasattr(torch, "_foreach_norm") else \
        torch.stack([t.norm() for t in tensors])
    if bool(torch.isfinite(norms).all()):
        return
    for n, t in named:
        if not bool(torch.isfinite(t.detach()).all()):
            _check_finite(prefix + n, t, step)
    # every element finite but the float32 norm overflowed (values beyond ~1e19): that is a blow-up too
    n, t = named[int((~torch.isfinite(norms)).nonzero()[0])]
    raise NonFiniteLossError(f"step {step}: `{prefix}{n}` has exploded (max |value| "
                             f"{float(t.detach().abs().max()):.3g}); training stopped before the optimizer step, "
                             "the last checkpoint is intact")


def _check_finite(name: str, t: torch.Tensor, step: int) -> None:
    finite = torch.isfinite(t.detach())
    if not bool(finite.all()):
        bad = t.detach()[~finite]
        raise NonFiniteLossError(f"step {step}: `{name}` is not finite ({bad.numel()} of {t.numel()} values, e.g. "
                                 f"{bad.flatten()[:4].tolist()}); training stopped before the optimizer step, "
                                 "the last checkpoint is intact")


#: range of the deformed log-scales passed to the renderer (σ from 2e-9 to 20 scene units)
LOG_SCALE_RANGE = (-20.0, 3.0)


class UA3DTalk(HealthMixin, L.LightningModule):
    """UA-3DTalk avatar (see the module docstring).

    Args:
        face: canonical Gaussians of the face/head branch.
        mouth: canonical Gaussians of the inside-mouth branch.
        deformation: face-branch :class:`DeformationNetwork` (its ``views`` decide which of prior /
            emotion are used).
        mouth_deformation: :class:`MouthDeformation` of the mouth branch.
        prior: :class:`PriorExtraction` or None (ablation without prior: no content/style views).
        emotion: :class:`EmotionDistillation` or None (ablation without emotion distillation).
        emotion_field: :class:`EmotionField` (needed when the deformation has the emotion view).
        emotion_control: :class:`EmotionControl` (prototypes for label-driven inference).
        face_density, mouth_density: :class:`DensityControl` strategies (None = fixed set).
        stage: one of ``prior | emotion | mouth | face | fuse``.
        lr_gaussians: learning rates of the Gaussian parameters (means, quats, log_scales,
            opacity_logits, sh); ``means`` decays exponentially to ``lr_means_final`` over ``max_steps``.
        lr_net: learning rate of the networks' MLPs in the render stages (ensembles, decoders, audio view,
            emotion query; 5e-4, the authors' value); lr_prior, lr_emotion for those stages.
        lr_grid: learning rate of the plane grids in the render stages (position fields, emotion field planes
            and codebooks; 5e-3, the authors' value). Both groups warm up linearly over ``net_warmup`` steps
            of the deformation and then decay exponentially to ``net_lr_final`` × their value at the end of
            the stage (DESIGN §4.5).
        net_warmup, net_lr_final: that schedule.
        uncertainty_weight: weight of the views' likelihood term (DESIGN §4.5,
            :meth:`~ua3dtalk.models.deformation.fusion.UncertaintyFusion.uncertainty_nll`; 0 = off, the paper).
        uncertainty_beta: its β (β-NLL; 0 = the plain Gaussian NLL).
        max_steps: schedule length (steps of this stage).
        static_warmup: face stage steps without deformation (canonical Gaussians only).
        ssim_weight, reg_weight, alpha_weight: loss weights.
        hole_weight: weight of the *mouth-hole* term of the face/fuse stages: the mean face-branch alpha over
            the ground-truth inside-mouth pixels (normalised by their count, not by the image size — the
            inner mouth is < 1 % of the frame, so the image-wide alpha and photometric terms barely see it).
            It makes the face branch part the lips so that the mouth branch behind them becomes visible.
        cover_weight: weight of the *mouth-cover* term of the mouth/fuse stages: the mean transparency
            (1 − alpha) of the mouth branch (mouth stage) or of the composite (fuse stage) over the
            ground-truth inside-mouth pixels, normalised by their count like the hole term. Without it the
            few inner-mouth pixels of a frame give the mouth branch almost no signal, the alpha term pushes
            its Gaussians away from the background, and they drift behind the face where nothing is seen:
            the parted lips then show the background instead of the mouth's interior.
        lpips_weight: weight of the perceptual term of the last phase (``fuse`` stage, DESIGN §4): LPIPS
            (:class:`ua3dtalk.metrics.image.LPIPSMetric`, AlexNet v0.1) of the lip region (box around the
            mouth landmarks 48–67, else around the inside-mouth mask) plus ``lpips_patches`` random patches
            of the head; 0 (default) = off. Needs the AlexNet checkpoint (the metric's clear error names
            the file) unless ``lpips_random_backbone`` (tests only).
        lpips_patches, lpips_patch_size: random patches per frame and their side (pixels, ≥ 32).
        sh_increase_every: raise the active SH degree every this many steps.
        emotion_condition: where the emotion view's embedding comes from while *training* the render stages:
            ``audio`` (the paper, default: the distilled student's embedding of the frame's audio context) or
            ``label`` (★: the prototype of the clip's emotion/intensity label — exactly what label-driven
            inference feeds — for frames whose label is known, the audio embedding otherwise). With
            ``audio`` the emotion view only sees the student's noisy guess of the emotion. Validation, test
            and inference always use the audio embedding unless an emotion is given explicitly.
        landmark_weight: weight of the *landmark* term of the face/fuse stages (★, not in the paper; 0 = off):
            the deformation field evaluated at canonical landmark anchors, projected with the frame's camera,
            against the frame's 68 landmarks (:mod:`ua3dtalk.models.landmarks`). The photometric loss cannot
            drag a lip centimetres to where the frame shows it; this term can. Needs landmarks in the batches.
        landmark_anchors: the :class:`~ua3dtalk.models.landmarks.LandmarkAnchors` (which landmarks, prior);
            built with its defaults when ``landmark_weight > 0`` and none is given. Its normal equations are
            accumulated from every training frame of the render stages and saved in the checkpoint.
        landmark_frames: frames per step on which the landmark term is *also* evaluated, drawn from a replay
            bank of the training frames seen so far (their conditioning is constant in the render stages: the
            prior and emotion modules are frozen). The term costs the deformation of a few dozen anchors per
            frame, no rendering, so each step can supervise the field on many frames instead of the one it
            renders. 0 = only the rendered frames.
        landmark_bank: capacity of that bank (frames; reservoir replacement once full; saved in the checkpoint,
            so a resumed run draws from the same frames).
        emotion_swap_weight: weight of the *emotion-swap* term (★, not in the paper; 0 = off; needs
            ``landmark_weight > 0``, ``landmark_frames > 0`` and the emotion view). The anchors are also
            triangulated per label cell (emotion × intensity, :meth:`LandmarkAnchors.cell_offsets`): a cell's
            offset from the global anchors is that label's mean expression in the training data. On the replay
            bank's frames, the emotion view's input is swapped for the prototype of another label, and the
            field's change at the anchors must equal the difference of the two labels' offsets (projected with
            the frame's camera, L1, in the units of the landmark term). Without it the field learns each
            clip's expression from the *audio* view (the synthetic and MEAD audio carry the emotion too), and
            requesting a label at inference changes the face by a fraction of a pixel.
        init_mouth_color: at the first mouth-stage step whose frames show the inner mouth, set every
            inside-mouth Gaussian's colour to the mean ground-truth colour of those pixels (once; a flag in the
            checkpoint). Randomly initialised colours are mid-grey, and the SH learning rate moves them by at most
            ≈ 0.2 (RGB) in the 250 steps of the demo's mouth stage: the inner mouth rendered grey, then, in the
            fuse stage, lip-red — never dark.
        fuse_mouth_grad: which pixels of the ``fuse`` stage's composite train the inside-mouth branch's
            *colours*: ``all`` (default) every pixel; ``inner`` (★) the ground-truth inner mouth only (its
            positions and opacities learn from every pixel). With ``all``, the lips of the (many) closed-mouth
            frames — where the face is not quite opaque, the mouth branch behind it shows through — recolour
            the inner mouth lip-red within the 300 steps of the demo's fuse stage, so open mouths look red; with
            ``inner`` they stay dark, but the dark mouth shows through those lips (−1.6 dB at demo scale).
            (Blocking the mouth's opacity and position gradients as well let it spread over the chin: −3 dB.)
        face_random_background: the ``face`` stage composites the face branch (and its target) over a random
            uniform colour per frame instead of the frame's background (★, the random-background trick of
            3DGS; off by default). Over the real background a semi-transparent lip looks right, and in the
            ``fuse`` stage the mouth behind it then shows through. In both demo-scale runs with it, the
            deformation decoder's ReLU trunk died completely (static offsets, label control exactly 0; see
            ``decoder_activation`` of :class:`~ua3dtalk.models.deformation.DeformationNetwork`).
        backend: renderer backend (``auto``).
        log_images_every: validation renders logged every this many validation batches (0 = never).
    """

    def __init__(
        self,
        face: GaussianModel,
        mouth: GaussianModel,
        deformation: DeformationNetwork,
        mouth_deformation: MouthDeformation,
        prior: Optional[PriorExtraction] = None,
        emotion: Optional[EmotionDistillation] = None,
        emotion_field: Optional[EmotionField] = None,
        emotion_control: Optional[EmotionControl] = None,
        face_density: Optional[DensityControl] = None,
        mouth_density: Optional[DensityControl] = None,
        stage: str = "face",
        lr_gaussians: Optional[dict] = None,
        lr_means_final: float = 1.6e-6,
        lr_net: float = 5e-4,
        lr_grid: float = 5e-3,
        net_warmup: int = 100,
        net_lr_final: float = 0.1,
        uncertainty_weight: float = 0.01,
        uncertainty_beta: float = 0.5,
        lr_prior: float = 1e-3,
        lr_emotion: float = 1e-3,
        max_steps: int = 10000,
        static_warmup: int = 500,
        ssim_weight: float = 0.2,
        reg_weight: float = 1e-3,
        alpha_weight: float = 0.1,
        hole_weight: float = 0.1,
        cover_weight: float = 0.5,
        lpips_weight: float = 0.0,
        lpips_patches: int = 1,
        lpips_patch_size: int = 32,
        lpips_random_backbone: bool = False,
        sh_increase_every: int = 1000,
        emotion_condition: str = "audio",
        landmark_weight: float = 0.0,
        landmark_anchors: Optional[LandmarkAnchors] = None,
        landmark_frames: int = 0,
        landmark_bank: int = 4096,
        emotion_swap_weight: float = 0.0,
        init_mouth_color: bool = True,
        fuse_mouth_grad: str = "all",
        face_random_background: bool = False,
        backend: str = "auto",
        log_images_every: int = 1,
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"UA3DTalk: unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        from ..render.api import BACKENDS

        if backend not in BACKENDS:  # found here, not at the first render hours into a run
            raise ValueError(f"UA3DTalk: unknown renderer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if "emotion" in deformation.views and (emotion is None or emotion_field is None):
            raise ValueError("UA3DTalk: the deformation has the 'emotion' view but no emotion encoder/field is "
                             "configured (use views without 'emotion' for the no-emotion ablation)")
        if ({"content", "style"} & set(deformation.views)) and prior is None:
            raise ValueError("UA3DTalk: the deformation has content/style views but no prior is configured")
        if emotion_condition not in ("audio", "label"):
            raise ValueError(f"UA3DTalk: emotion_condition must be 'audio' or 'label', got {emotion_condition!r}")
        self.emotion_condition = emotion_condition
        if landmark_weight < 0:
            raise ValueError(f"UA3DTalk: landmark_weight must be ≥ 0, got {landmark_weight}")
        self.landmark_weight = float(landmark_weight)
        self.landmark_anchors = (landmark_anchors if landmark_anchors is not None else LandmarkAnchors()) \
            if self.landmark_weight > 0 else None
        if landmark_frames < 0 or landmark_bank < 1:
            raise ValueError(f"UA3DTalk: landmark_frames must be ≥ 0 and landmark_bank ≥ 1 (got {landmark_frames}, "
                             f"{landmark_bank})")
        self.landmark_frames, self.landmark_bank = int(landmark_frames), int(landmark_bank)
        self._bank: dict[str, torch.Tensor] = {}  # replay bank of the landmark term (see landmark_frames)
        if emotion_swap_weight < 0:
            raise ValueError(f"UA3DTalk: emotion_swap_weight must be ≥ 0, got {emotion_swap_weight}")
        self.emotion_swap_weight = float(emotion_swap_weight)
        self.init_mouth_color = bool(init_mouth_color)
        if fuse_mouth_grad not in ("inner", "all"):
            raise ValueError(f"UA3DTalk: fuse_mouth_grad must be 'inner' or 'all', got {fuse_mouth_grad!r}")
        self.fuse_mouth_grad = fuse_mouth_grad
        self.face_random_background = bool(face_random_background)
        self.register_buffer("mouth_color_initialised", torch.tensor(False))
        self._bank_seen = self._bank_n = 0  # frames offered to / held by the bank
        self.automatic_optimization = False
        self.face, self.mouth = face, mouth
        self.deformation, self.mouth_deformation = deformation, mouth_deformation
        self.prior, self.emotion = prior, emotion
        self.emotion_field = emotion_field
        self.emotion_control = emotion_control if emotion_control is not None else (
            EmotionControl() if emotion is not None else None)
        if self.emotion_swap_weight > 0:
            missing = [what for what, ok in (("landmark_weight > 0", self.landmark_weight > 0),
                                             ("landmark_frames > 0", self.landmark_frames > 0),
                                             ("the 'emotion' deformation view", "emotion" in deformation.views),
                                             ("emotion control", self.emotion_control is not None)) if not ok]
            if missing:
                raise ValueError(f"UA3DTalk: emotion_swap_weight > 0 needs {', '.join(missing)} "
                                 "(set model.emotion_swap_weight=0 to train without the emotion-swap term)")
            n_cells = len(self.emotion_control.emotions) * self.emotion_control.n_levels
            if landmark_anchors is None:
                self.landmark_anchors = LandmarkAnchors(n_cells=n_cells)
            elif self.landmark_anchors.n_cells != n_cells:
                raise ValueError(f"UA3DTalk: emotion_swap_weight > 0 needs landmark_anchors with n_cells={n_cells} "
                                 f"(emotions × intensity levels), got n_cells={self.landmark_anchors.n_cells}")
        self.face_density, self.mouth_density = face_density, mouth_density
        self.stage = stage
        self.lr_gaussians = dict(lr_gaussians or {"means": 1.6e-4, "quats": 1e-3, "log_scales": 5e-3,
                                                  "opacity_logits": 5e-2, "sh": 2.5e-3})
        self.lr_means_final, self.lr_net, self.lr_prior, self.lr_emotion = lr_means_final, lr_net, lr_prior, lr_emotion
        for key, v in (("lr_net", lr_net), ("lr_grid", lr_grid), ("net_lr_final", net_lr_final)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"UA3DTalk: {key} must be a finite number > 0, got {v!r}")
        if int(net_warmup) < 0:
            raise ValueError(f"UA3DTalk: net_warmup must be ≥ 0, got {net_warmup}")
        if not (math.isfinite(uncertainty_weight) and uncertainty_weight >= 0 and math.isfinite(uncertainty_beta)
                and 0 <= uncertainty_beta <= 1):
            raise ValueError("UA3DTalk: uncertainty_weight must be ≥ 0 and uncertainty_beta in [0, 1] (got "
                             f"{uncertainty_weight}, {uncertainty_beta})")
        self.lr_grid, self.net_warmup, self.net_lr_final = float(lr_grid), int(net_warmup), float(net_lr_final)
        self.uncertainty_weight, self.uncertainty_beta = float(uncertainty_weight), float(uncertainty_beta)
        self.max_steps, self.static_warmup = int(max_steps), int(static_warmup)
        self.ssim_weight, self.reg_weight, self.alpha_weight = ssim_weight, reg_weight, alpha_weight
        self._step_in_progress: Optional[int] = None  # the render step being trained (error messages)
        self.hole_weight = float(hole_weight)
        self.cover_weight = float(cover_weight)
        self.lpips_weight, self.lpips_patches = float(lpips_weight), int(lpips_patches)
        self.lpips_patch_size, self.lpips_random_backbone = int(lpips_patch_size), bool(lpips_random_backbone)
        if self.lpips_weight < 0 or self.lpips_patches < 0 or self.lpips_patch_size < 32:
            raise ValueError("UA3DTalk: lpips_weight and lpips_patches must be ≥ 0 and lpips_patch_size ≥ 32 "
                             f"(got {lpips_weight}, {lpips_patches}, {lpips_patch_size})")
        self._lpips_net: list = []  # built on first use; kept out of the state dict (fixed weights)
        if self.lpips_weight > 0:
            self._lpips()  # fail at construction, naming the missing backbone file, not hours into a run
        self.sh_increase_every, self.backend, self.log_images_every = sh_increase_every, backend, log_images_every
        self.val_outputs: list[dict] = []
        self._set_bounds()

    # ------------------------------------------------------------------ setup
    def _set_bounds(self) -> None:
        for g, net in ((self.face, self.deformation), (self.mouth, self.mouth_deformation)):
            lo, hi = g.bounds[0].tolist(), g.bounds[1].tolist()
            net.position_field.set_bounds(lo, hi)
        if self.emotion_field is not None:
            self.emotion_field.set_bounds(*(self.face.bounds[i].tolist() for i in (0, 1)))

    def stage_step(self) -> int:
        return int(self.global_step) // max(1, len(self._optimizers_for_stage()))

    def _optimizers_for_stage(self):
        return {"prior": ["prior"], "emotion": ["emotion"], "mouth": ["mouth_g", "net"], "face": ["face_g", "net"],
                "fuse": ["face_g", "mouth_g", "net"]}[self.stage]

    def configure_optimizers(self):
        if self.stage == "prior":
            if self.prior is None:
                raise ValueError("stage=prior needs a prior module")
            return [adam(self.prior.parameters(), lr=self.lr_prior)]
        if self.stage == "emotion":
            if self.emotion is None:
                raise ValueError("stage=emotion needs an emotion module")
            return [adam(self.emotion.parameters(), lr=self.lr_emotion)]
        opts = {"face_g": make_optimizer(self.face, self.lr_gaussians),
                "mouth_g": make_optimizer(self.mouth, self.lr_gaussians)}
        nets = [self.deformation if self.stage != "mouth" else self.mouth_deformation]
        if self.stage == "fuse":
            nets.append(self.mouth_deformation)
        if self.stage != "mouth" and self.emotion_field is not None:
            nets.append(self.emotion_field)
        opts["net"] = adam(net_param_groups(nets, self.lr_net, self.lr_grid))
        self._opt_names = self._optimizers_for_stage()
        return [opts[k] for k in self._opt_names]

    def _schedule_net_lr(self, opt, step: int) -> None:
        """Warm-up then exponential decay of the network groups (``lr_net``/``lr_grid``, see the class
        docstring); ``step`` counts the deformation's steps in this stage."""
        span = self.max_steps - (self.static_warmup if self.stage == "face" else 0)
        set_net_lr(opt, net_lr_factor(step, span, self.net_warmup, self.net_lr_final))

    def _decay_means_lr(self, opt, step: int) -> None:
        t = min(step / max(self.max_steps, 1), 1.0)
        lr0 = self.lr_gaussians.get("means", 1.6e-4)
        lr = math.exp((1 - t) * math.log(lr0) + t * math.log(max(self.lr_means_final, 1e-12)))
        for g in opt.param_groups:
            if g.get("name") == "means":
                g["lr"] = lr

    # ------------------------------------------------------------------ conditioning
    def conditioning(self, batch, emotion: Optional[torch.Tensor] = None) -> Conditioning:
        """Prior and emotion features of a :class:`FrameBatch` (frozen modules, no grad).

        ``emotion`` overrides the audio-derived embedding (label/explicit control at inference)."""
        audio = batch.audio_neighbours if batch.audio_neighbours is not None else batch.audio
        context = getattr(batch, "audio_context", None)
        if context is None:
            context = batch.audio[:, 8:10].mean(1, keepdim=True).expand(-1, 50, -1)  # degenerate: no context
        content = style = e = None
        with torch.no_grad(), _eval_mode(self.prior, self.emotion):
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
        return Conditioning(audio=audio, blink=batch.blink, content=content, style=style, emotion=e)

    # ------------------------------------------------------------------ rendering
    def _render(self, g: GaussianModel, means, quats, log_scales, viewmat, K, width, height, opacities=None,
                colors=None):
        # deformed log-scales are kept in a finite range: exp() of a runaway Δscale must neither underflow
        # to 0 (rejected by the renderer) nor overflow (beyond the bound a Gaussian is sub-pixel / covers
        # everything either way, so the clamped gradient loses nothing useful)
        log_scales = log_scales.clamp(LOG_SCALE_RANGE[0], LOG_SCALE_RANGE[1])
        try:
            return rasterize(means, quats, torch.exp(log_scales), g.opacities if opacities is None else opacities,
                             g.colors() if colors is None else colors, viewmat, K, width, height,
                             sh_degree=g.active_sh_degree, backend=self.backend)
        except ValueError as e:
            step = self._step_in_progress
            if step is None or "NaN or Inf" not in str(e):
                raise
            # a network parameter went non-finite (they are not scanned every step): name it
            _check_all_finite(self._trained_parameters(), step)
            raise NonFiniteLossError(f"step {step}: the deformed Gaussians are not finite ({e}); training stopped "
                                     "before the optimizer step, the last checkpoint is intact") from None

    def render_face(self, cond: Conditioning, i: int, viewmat, K, width, height, deform: bool = True,
                    step: Optional[int] = None, anchors: Optional[torch.Tensor] = None) -> BranchRender:
        """Render the face branch of frame ``i``. ``anchors`` ``[L,3]`` (canonical points, e.g. landmark
        anchors): the deformation field is also evaluated there, in the same forward pass (the same ensemble
        member), and returned as ``anchor_xyz`` ``[1,L,3]``."""
        g = self.face
        deltas = fusion = anchor_xyz = opacities = colors = None
        means, quats, log_scales = g.means, g.quats, g.log_scales
        if deform:
            n = len(g)
            xyz = g.means if anchors is None else torch.cat([g.means, anchors.to(g.means)], 0)
            f_emo = None
            if "emotion" in self.deformation.views:
                f_emo = self.emotion_field(xyz.detach(), cond.emotion[i:i + 1])
            sl = lambda t: None if t is None else t[i:i + 1]  # noqa: E731
            d = self.deformation(xyz, audio=sl(cond.audio), blink=sl(cond.blink)[:, None],
                                 content=sl(cond.content), style=sl(cond.style), emotion=f_emo, step=step)
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
        sl = lambda t: None if t is None else t[i:i + 1]  # noqa: E731
        content = sl(cond.content) if "content" in self.mouth_deformation.views else None
        d = self.mouth_deformation(g.means, audio=sl(cond.audio), blink=sl(cond.blink)[:, None], content=content,
                                   step=step)
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

    # ------------------------------------------------------------------ losses
    def _photometric(self, pred: torch.Tensor, target: torch.Tensor) -> dict:
        """pred/target [H,W,3] → l1, ssim terms."""
        l1 = (pred - target).abs().mean()
        p, t = pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
        ssim = ssim_fn(p, t, data_range=1.0)
        return {"l1": l1, "ssim": 1 - ssim}

    def _reg(self, deltas) -> torch.Tensor:
        if deltas is None:
            return torch.zeros((), device=self.device)
        terms = [d.abs().mean() for d in (deltas.xyz, deltas.rot, deltas.scale) if d is not None]
        return sum(terms) if terms else torch.zeros((), device=self.device)

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        step = self.stage_step()
        if self.stage == "prior":
            return self._step_prior(batch, opts[0], step)
        if self.stage == "emotion":
            return self._step_emotion(batch, opts[0], step)
        # the standardisation statistics are updated inside the forward; a step that fails leaves them as
        # they were (like every parameter), so a resume from the last checkpoint is unaffected
        if "_norms" not in self.__dict__:  # the networks (and their norms) are fixed at construction
            self.__dict__["_norms"] = [m for m in self.modules() if isinstance(m, RunningStandardize)]
        norms = [(m, m.mean.clone(), m.var.clone(), m.updates.clone()) for m in self.__dict__["_norms"]]
        try:
            return self._step_render(batch, opts, step)
        except BaseException:
            with torch.no_grad():
                for m, mean, var, updates in norms:
                    m.mean.copy_(mean), m.var.copy_(var), m.updates.copy_(updates)
            raise

    def _step_prior(self, batch, opt, step):
        out = self.prior(batch.audio, batch.context)
        losses = self.prior.losses(out, batch.expr, batch.lip, emotion=batch.emotion)
        _check_finite("prior/total", losses["total"], step)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(losses["total"])
        opt.step()
        self.log_dict({f"train/prior/{k}": v.detach() for k, v in losses.items()}, prog_bar=False,
                      batch_size=batch.audio.shape[0])
        self.log("train/loss", losses["total"].detach(), prog_bar=True, batch_size=batch.audio.shape[0])
        return losses["total"].detach()

    def _step_emotion(self, batch, opt, step):
        t_out, s_out = self.emotion(waveform=batch.waveform, w2v=batch.context)
        losses = self.emotion.losses(t_out, s_out, batch.emotion, batch.intensity)
        _check_finite("emotion/total", losses["total"], step)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(losses["total"])
        opt.step()
        if self.emotion_control is not None:
            self.emotion_control.update_prototypes(s_out.embedding.detach(), batch.emotion, batch.intensity)
        b = batch.waveform.shape[0]
        self.log_dict({f"train/emotion/{k}": v.detach() for k, v in losses.items()}, batch_size=b)
        acc = (s_out.logits.argmax(-1) == batch.emotion).float()[batch.emotion >= 0].mean()
        self.log("train/emotion/student_acc", acc, prog_bar=True, batch_size=b)
        self.log("train/loss", losses["total"].detach(), prog_bar=True, batch_size=b)
        return losses["total"].detach()

    def on_train_end(self) -> None:
        """End of the emotion stage: the label prototypes become the exact eval-mode means of the final
        student (:meth:`recompute_emotion_prototypes`); the running means of training were only a cheap
        stand-in. Other stages: nothing."""
        if self.stage == "emotion" and self.emotion is not None and self.emotion_control is not None:
            n = self.recompute_emotion_prototypes()
            self.print(f"emotion prototypes recomputed with the final student (eval mode) from {n} labelled "
                       "training frames")

    @torch.no_grad()
    def recompute_emotion_prototypes(self, data=None) -> int:
        """Recompute :class:`EmotionControl`'s prototypes from scratch with the *current* (final) emotion
        student in eval mode, without gradients: the exact mean embedding per (emotion, intensity) cell
        over the training frames (:meth:`EmotionControl.recompute_prototypes`; sets its ``recomputed`` flag).

        ``data``: a DataModule with ``audio_dataset`` (every frame of its ``train`` split once, in order,
        ``audio_batch_size`` per batch), an iterable of :class:`~ua3dtalk.data.datamodule.AudioBatch`, or
        None — the attached trainer's DataModule, else its training loader (one pass). Under DDP every rank
        makes the same full pass over the DataModule's split (identical prototypes, no communication).
        Returns the number of labelled frames used (0 without an emotion module or control)."""
        if self.emotion is None or self.emotion_control is None:
            return 0
        if data is None:
            trainer = self._trainer
            dm = getattr(trainer, "datamodule", None) if trainer is not None else None
            data = dm if dm is not None and hasattr(dm, "audio_dataset") else (
                trainer.train_dataloader if trainer is not None else None)
            if data is None:
                raise RuntimeError("recompute_emotion_prototypes: no data (pass a DataModule or AudioBatch loader)")
        if hasattr(data, "audio_dataset"):
            from torch.utils.data import DataLoader

            from ..data.datamodule import collate_batches

            data = DataLoader(data.audio_dataset("train"), batch_size=int(data.audio_batch_size), shuffle=False,
                              collate_fn=collate_batches, num_workers=int(getattr(data, "num_workers", 0)))

        def embeddings():
            with _eval_mode(self.emotion):
                for batch in data:
                    batch = batch.to(self.device)
                    yield self.emotion.encoder(w2v=batch.context).embedding, batch.emotion, batch.intensity

        return self.emotion_control.recompute_prototypes(embeddings())

    def _targets(self, batch, i):
        img = batch.image[i].permute(1, 2, 0)
        bg = batch.background[i].permute(1, 2, 0)
        m = lambda name: getattr(batch, name)[i, 0][..., None].to(img.dtype)  # noqa: E731
        return img, bg, m

    def _lpips(self):
        if not self._lpips_net:
            from ua3dtalk.metrics.image import LPIPSMetric

            self._lpips_net.append(LPIPSMetric(random_backbone=self.lpips_random_backbone))
        return self._lpips_net[0]

    def _perceptual(self, pred: torch.Tensor, target: torch.Tensor, landmarks: Optional[torch.Tensor],
                    inner: torch.Tensor, head: torch.Tensor, step: int) -> torch.Tensor:
        """LPIPS of the lip box plus ``lpips_patches`` random head patches: pred/target [H,W,3],
        landmarks [68,2] pixels or None, inner/head masks [H,W,1] → scalar (mean over the crops)."""
        from ua3dtalk.metrics.image import crop_boxes

        H, W = pred.shape[:2]
        boxes = []
        if landmarks is not None and bool(torch.isfinite(landmarks[48:68]).all()):
            pts = landmarks[48:68]
            lo, hi = pts.min(0).values, pts.max(0).values
        elif bool(inner.any()):
            ys, xs = torch.nonzero(inner[..., 0], as_tuple=True)
            lo = torch.stack([xs.min(), ys.min()]).to(pred.dtype)
            hi = torch.stack([xs.max(), ys.max()]).to(pred.dtype) + 1
        else:
            lo = hi = None
        if lo is not None:
            c, half = (lo + hi) / 2, ((hi - lo).max() / 2 * 1.4).clamp_min(4.0)  # square box, 40 % margin
            boxes.append(torch.stack([c[0] - half, c[1] - half, c[0] + half, c[1] + half]))
        ps = min(self.lpips_patch_size, H, W)
        if self.lpips_patches > 0 and ps >= 32:
            g = torch.Generator().manual_seed(int(step) * 7919 + len(boxes))
            ys, xs = torch.nonzero(head[..., 0] > 0, as_tuple=True)
            for _ in range(self.lpips_patches):
                if len(ys):  # a patch centred on a random head pixel, shifted inside the frame
                    k = int(torch.randint(len(ys), (1,), generator=g))
                    cy, cx = int(ys[k]), int(xs[k])
                else:
                    cy, cx = H // 2, W // 2
                y0, x0 = min(max(cy - ps // 2, 0), H - ps), min(max(cx - ps // 2, 0), W - ps)
                boxes.append(torch.tensor([x0, y0, x0 + ps, y0 + ps], dtype=pred.dtype, device=pred.device))
        if not boxes:
            return pred.new_zeros(())
        b = torch.stack(boxes)
        size = max(32, self.lpips_patch_size)
        p_crops = crop_boxes(pred.permute(2, 0, 1)[None].expand(len(boxes), -1, -1, -1), b, size)
        t_crops = crop_boxes(target.permute(2, 0, 1)[None].expand(len(boxes), -1, -1, -1), b, size)
        net = self._lpips().to(pred.device)  # its `model` is the lpips.LPIPS network (differentiable)
        return net.model(p_crops.clamp(0, 1), t_crops.detach().clamp(0, 1), normalize=True).mean()

    @staticmethod
    def _hole(face_alpha: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """Mean face alpha [H,W,1] over the inside-mouth pixels ``inner`` [H,W,1] (0 when there are none)."""
        return (face_alpha * inner).sum() / inner.sum().clamp_min(1.0)

    @staticmethod
    def _cover(alpha: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """Mean transparency ``1 − alpha`` [H,W,1] over the inside-mouth pixels ``inner`` (0 when none)."""
        return ((1 - alpha) * inner).sum() / inner.sum().clamp_min(1.0)

    def _step_render(self, batch, opts, step):
        H, W = batch.image.shape[-2:]
        # a non-finite trained parameter stops here, named, not in the renderer
        trained = self._trained_parameters()
        self._step_in_progress = step
        # the Gaussians every step (they go to the renderer, which would refuse them less helpfully); the
        # networks' parameters (34 M at paper size, 5 ms a pass) only when the loss turns out non-finite
        _check_all_finite([(n, p) for n, p in trained if n.startswith(("face.", "mouth."))], step)
        cond = self.conditioning(batch)
        self.face.set_active_sh_degree(step // max(self.sh_increase_every, 1))
        self.mouth.set_active_sh_degree(step // max(self.sh_increase_every, 1))
        total = torch.zeros((), device=self.device)
        logs = {}
        renders = []
        anchors = self._landmark_anchors(batch)  # of the frames of earlier steps
        for i in range(batch.image.shape[0]):
            img, bg, m = self._targets(batch, i)
            vm, K = batch.viewmat[i], batch.K[i]
            face_r = None  # this frame's face-branch render (landmark term)
            if self.stage == "mouth":
                if i == 0:
                    self._init_mouth_color(batch)
                r = self.render_mouth(cond, i, vm, K, W, H, step=step)
                mask = m("mouth_mask")
                target = img * mask + bg * (1 - mask)
                pred = r.image + (1 - r.alpha) * bg
                # only the inside-mouth region and the region outside the head count for the mouth branch
                head = torch.clamp(m("face_mask") + m("hair_mask"), 0, 1) * (1 - mask)
                w = 1 - head
                photo = {"l1": ((pred - target).abs() * w).sum() / (w.sum() * 3).clamp_min(1)}
                photo["ssim"] = self._photometric(pred * w + target * (1 - w), target)["ssim"]
                # mouth alpha outside the inner mouth: penalised fully over the background, lightly behind
                # the head (hidden by the face there, but a mouth branch spread behind the whole face
                # shows through wherever the face is not fully opaque)
                alpha_l = (r.alpha * ((1 - torch.clamp(mask + head, 0, 1)) + 0.1 * head)).mean()
                hole = torch.zeros((), device=self.device)
                cover = self._cover(r.alpha, mask)
                reg = self._reg(r.deltas)
                renders.append(("mouth", r))
            elif self.stage == "face":
                deform = step >= self.static_warmup
                r = self.render_face(cond, i, vm, K, W, H, deform=deform, step=step - self.static_warmup,
                                     anchors=anchors if deform else None)
                mask = torch.clamp(m("face_mask") + m("hair_mask"), 0, 1)
                if self.face_random_background:  # a see-through face shows the random colour: it is penalised
                    bg = self._random_color(img).expand_as(bg)
                target = img * mask + bg * (1 - mask)
                pred = r.image + (1 - r.alpha) * bg
                photo = self._photometric(pred, target)
                alpha_l = (r.alpha - mask).abs().mean() if deform else torch.zeros((), device=self.device)
                hole = self._hole(r.alpha, m("mouth_mask")) if deform else torch.zeros((), device=self.device)
                cover = torch.zeros((), device=self.device)
                reg = self._reg(r.deltas)
                renders.append(("face", r))
                face_r = r
            else:  # fuse
                pred, alpha, rf, rm = self.render_frame(
                    cond, i, vm, K, W, H, bg, step=step, anchors=anchors,
                    mouth_color_mask=m("mouth_mask") if self.fuse_mouth_grad == "inner" else None)
                mask = torch.clamp(m("face_mask") + m("hair_mask") + m("mouth_mask"), 0, 1)
                target = img * mask + bg * (1 - mask)
                photo = self._photometric(pred, target)
                alpha_l = (alpha - mask).abs().mean()
                hole = self._hole(rf.alpha, m("mouth_mask"))
                cover = self._cover(alpha, m("mouth_mask"))
                reg = self._reg(rf.deltas) + self._reg(rm.deltas)
                if self.lpips_weight > 0:
                    lm = None if batch.landmarks is None else batch.landmarks[i]
                    photo["lpips"] = self._perceptual(pred, target, lm, m("mouth_mask"), mask, step)
                renders += [("face", rf), ("mouth", rm)]
                face_r = rf
            loss = (photo["l1"] + self.ssim_weight * photo["ssim"] + self.alpha_weight * alpha_l
                    + self.hole_weight * hole + self.cover_weight * cover + self.reg_weight * reg)
            if face_r is not None and face_r.anchor_xyz is not None:
                photo["landmark"] = landmark_loss(anchors, face_r.anchor_xyz, batch.landmarks[i:i + 1],
                                                  self.landmark_anchors.indices, vm[None], K[None], W, H)
                loss = loss + self.landmark_weight * photo["landmark"]
            if "lpips" in photo:
                loss = loss + self.lpips_weight * photo["lpips"]
            if self.uncertainty_weight > 0:
                nll = self._uncertainty_nll(renders)
                if nll is not None:
                    photo["uncertainty_nll"] = nll
                    loss = loss + self.uncertainty_weight * nll
            total = total + loss / batch.image.shape[0]
            for k, v in {**photo, "alpha": alpha_l, "hole": hole, "cover": cover, "reg": reg}.items():
                logs[f"train/{k}"] = logs.get(f"train/{k}", 0) + v.detach() / batch.image.shape[0]
        if anchors is not None and self.landmark_frames > 0:
            deform_step = step - self.static_warmup if self.stage == "face" else step
            if self.stage == "fuse" or deform_step >= 0:
                bank, swap = self._bank_landmark(anchors, deform_step, W, H)
                if bank is not None:
                    total = total + self.landmark_weight * bank
                    logs["train/landmark_bank"] = bank.detach()
                if swap is not None:
                    total = total + self.emotion_swap_weight * swap
                    logs["train/emotion_swap"] = swap.detach()
        if not bool(torch.isfinite(total.detach())):
            _check_all_finite(trained, step)  # name the parameter that made it so, if one did
        _check_finite("train/loss", total, step)
        for o in opts:
            o.zero_grad(set_to_none=True)
        for _, r in renders:
            r.out.means2d.retain_grad() if r.out.means2d.requires_grad else None
        self.manual_backward(total)
        # a finite loss can still have a non-finite gradient: never step with it
        _check_all_finite([(pname, p.grad) for pname, p in trained], step, prefix="gradient of ")
        by_branch: dict[str, list] = {}
        for name, r in renders:
            by_branch.setdefault(name, []).append(r)
        for name, rs in by_branch.items():
            g, dc, opt = ((self.face, self.face_density, self._opt("face_g", opts)) if name == "face"
                          else (self.mouth, self.mouth_density, self._opt("mouth_g", opts)))
            if dc is not None and opt is not None:
                # statistics of every frame of the batch first, then (at most) one densification: the
                # Gaussian set must not change between the frames' statistics
                for r in rs[:-1]:
                    dc.accumulate(g, r.out, W, H)
                info = dc.after_backward(g, opt.optimizer if hasattr(opt, "optimizer") else opt, rs[-1].out, step,
                                         W, H)
                # every key every step (0 = nothing happened): a logger row never carries a stale count, and a
                # resumed run logs exactly what an uninterrupted one does
                info = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0, "num_gaussians": len(g), **info}
                for k, v in info.items():
                    logs[f"train/density_{name}/{k}"] = float(v)
        net_opt = self._opt("net", opts)
        if net_opt is not None:
            self._schedule_net_lr(net_opt.optimizer if hasattr(net_opt, "optimizer") else net_opt,
                                  step - self.static_warmup if self.stage == "face" else step)
        for o in opts:
            self._decay_means_lr(o.optimizer if hasattr(o, "optimizer") else o, step)
            o.step()
        self._step_in_progress = None
        # only a step that succeeded adds its frames to the landmark anchors and the replay bank
        if self.landmark_anchors is not None and getattr(batch, "landmarks", None) is not None:
            self.landmark_anchors.accumulate(batch.landmarks, batch.viewmat, batch.K, cells=self._cells(batch))
            if self.landmark_frames > 0 and self.stage != "mouth":
                self._bank_add(batch, cond)
        logs["train/loss"] = total.detach()
        logs["train/num_gaussians_face"] = float(len(self.face))
        logs["train/num_gaussians_mouth"] = float(len(self.mouth))
        for name, r in renders:
            if r.fusion is not None:
                for k, v in r.fusion.weights.items():
                    logs[f"train/fusion_{name}/weight_{k}"] = v
        self.log_dict(logs, prog_bar=False, batch_size=batch.image.shape[0])
        self.log("loss", total.detach(), prog_bar=True, logger=False, batch_size=batch.image.shape[0])
        return total.detach()

    def _uncertainty_nll(self, renders) -> Optional[torch.Tensor]:
        """The views' likelihood term of this frame's renders (the last one or two of ``renders``)."""
        terms = []
        for name, r in renders[-2:] if self.stage == "fuse" else renders[-1:]:
            net = self.deformation if name == "face" else self.mouth_deformation
            if r.fusion is not None:
                t = net.fusion.uncertainty_nll(r.fusion, self.uncertainty_beta)
                if t is not None:
                    terms.append(t)
        return torch.stack(terms).sum() if terms else None

    def _landmark_anchors(self, batch) -> Optional[torch.Tensor]:
        """The anchors ``[L,3]`` to supervise the face deformation with, or None (term off, mouth stage, no
        landmarks in the batch, too few frames yet). Each successful render step adds its frames to them."""
        lm = getattr(batch, "landmarks", None)
        if self.landmark_anchors is None or lm is None:
            return None
        if self.stage == "mouth" or not self.landmark_anchors.ready:
            return None
        return self.landmark_anchors.anchors()

    @staticmethod
    def _random_color(like: torch.Tensor) -> torch.Tensor:
        """A uniform random RGB colour [3] (``face_random_background``)."""
        return torch.rand(3, device=like.device, dtype=like.dtype)

    def _init_mouth_color(self, batch) -> None:
        """``init_mouth_color``: the mouth Gaussians take the mean colour of the batch's inner-mouth pixels
        (the first time a batch has some)."""
        if not self.init_mouth_color or bool(self.mouth_color_initialised):
            return
        m = batch.mouth_mask.to(batch.image.dtype)  # [B,1,H,W]
        if float(m.sum()) < 1:
            return
        rgb = (batch.image * m).sum((0, 2, 3)) / m.sum()
        self.mouth.set_colors(rgb)
        self.mouth_color_initialised.fill_(True)

    def _bank_add(self, batch, cond: Conditioning) -> None:
        """Store the conditioning, landmarks and cameras of the batch's frames in the replay bank
        (reservoir sampling once it holds ``landmark_bank`` frames)."""
        rows = {"audio": cond.audio, "blink": cond.blink, "content": cond.content, "style": cond.style,
                "emotion": cond.emotion, "landmarks": batch.landmarks, "viewmat": batch.viewmat, "K": batch.K,
                "cell": self._cells(batch)}
        rows = {k: v.detach() for k, v in rows.items() if v is not None}
        for j in range(batch.landmarks.shape[0]):
            self._bank_seen += 1
            n = self._bank_n
            if n < self.landmark_bank:
                if not self._bank or n == len(self._bank["K"]):  # grow by doubling, up to the capacity
                    size = min(self.landmark_bank, max(64, 2 * n))
                    for k, v in rows.items():
                        new = v.new_empty((size, *v.shape[1:]))
                        if n:
                            new[:n] = self._bank[k][:n]
                        self._bank[k] = new
                slot = n
                self._bank_n += 1
            else:
                slot = int(torch.randint(self._bank_seen, (1,)))
                if slot >= self.landmark_bank:
                    continue
            for k, v in rows.items():
                self._bank[k][slot] = v[j]

    def _cells(self, batch) -> Optional[torch.Tensor]:
        """Each frame's label cell ``emotion · n_levels + intensity − 1`` ``[B]`` (-1 where unknown), or None
        when the emotion-swap term is off or the batch has no labels."""
        if self.emotion_swap_weight <= 0 or getattr(batch, "emotion", None) is None \
                or getattr(batch, "intensity", None) is None:
            return None
        n_emo, n_lvl = len(self.emotion_control.emotions), self.emotion_control.n_levels
        e, k = batch.emotion.long(), batch.intensity.long()
        ok = (e >= 0) & (e < n_emo) & (k >= 1) & (k <= n_lvl)
        return torch.where(ok, e * n_lvl + k - 1, torch.full_like(e, -1))

    def _swap_plan(self, cells: torch.Tensor, anchors: Optional[torch.Tensor] = None):
        """For bank frames of label cells ``cells`` ``[B]``: which rows get a swapped label, the target cell of
        each and the target-minus-own anchor offsets → (rows ``[S]``, embeddings ``[S,dim]``, offsets
        ``[S,L,3]``), or None when fewer than two cells are ready (triangulated and with a prototype).
        ``anchors``: the global anchors if already solved."""
        offsets, ready = self.landmark_anchors.cell_offsets(base=anchors)
        ready = ready & (self.emotion_control.counts.view(-1) > 0).to(ready.device)
        n_ready = int(ready.sum())
        if n_ready < 2:
            return None
        own_ok = (cells >= 0) & ready[cells.clamp_min(0)]
        rows = own_ok.nonzero()[:, 0]
        if len(rows) == 0:
            return None
        own = cells[rows]
        choices = ready.nonzero()[:, 0]  # [R]
        # a uniformly drawn ready cell other than the row's own: draw among R−1 and skip the own cell
        r = torch.randint(n_ready - 1, (len(rows),), device=cells.device)
        own_pos = torch.searchsorted(choices, own)
        target = choices[r + (r >= own_pos).long()]
        protos = self.emotion_control.prototypes.view(-1, self.emotion_control.dim)
        return rows, protos[target], offsets[target] - offsets[own]

    def _bank_landmark(self, anchors: torch.Tensor, step: int, width: int, height: int):
        """The landmark term on ``landmark_frames`` frames drawn from the replay bank, and the emotion-swap
        term on those of them whose label is known → (landmark, swap); each None when it has no frames."""
        n = self._bank_n
        if n == 0:
            return None, None
        pick = torch.randperm(n, device=self._bank["K"].device)[:self.landmark_frames]
        get = lambda k: self._bank[k][pick] if k in self._bank else None  # noqa: E731
        plan = self._swap_plan(get("cell"), anchors) if self.emotion_swap_weight > 0 and "cell" in self._bank else None
        rows = torch.arange(len(pick), device=pick.device)
        emo = get("emotion")
        if plan is not None:  # one forward over the frames and their label-swapped copies
            rows = torch.cat([rows, plan[0]])
            emo = torch.cat([emo, plan[1].to(emo)])
        take = lambda t: None if t is None else t[rows]  # noqa: E731
        f_emo = self.emotion_field(anchors, emo) if "emotion" in self.deformation.views else None
        d = self.deformation(anchors, audio=take(get("audio")), blink=take(get("blink"))[:, None],
                             content=take(get("content")), style=take(get("style")), emotion=f_emo, step=step,
                             update_stats=False)
        xyz, B = d.deltas.xyz, len(pick)
        lm = landmark_loss(anchors, xyz[:B], get("landmarks"), self.landmark_anchors.indices, get("viewmat"),
                           get("K"), width, height)
        if plan is None:
            return lm, None
        sel = plan[0]
        vm, K = get("viewmat")[sel], get("K")[sel]
        pred = project(anchors[None] + xyz[B:], vm, K)
        target = project(anchors[None] + xyz[:B][sel].detach() + plan[2].to(xyz), vm, K)
        return lm, (pred - target).abs().mean() / float(max(width, height))

    def _trained_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(qualified name, parameter) of the current stage's trainable modules."""
        trained = {id(m) for m in stage_trainable_modules(self)}
        return [(f"{mname}.{pname}", p) for mname, mod in self.named_children() if id(mod) in trained
                for pname, p in mod.named_parameters()]

    def _opt(self, name, opts):
        names = getattr(self, "_opt_names", self._optimizers_for_stage())
        return opts[names.index(name)] if name in names else None

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def render_batch(self, batch, emotion: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Render every frame of a FrameBatch as the current stage would show it → [B,3,H,W] in [0,1]."""
        H, W = batch.image.shape[-2:]
        cond = self.conditioning(batch, emotion)
        out = []
        for i in range(batch.image.shape[0]):
            bg = batch.background[i].permute(1, 2, 0)
            vm, K = batch.viewmat[i], batch.K[i]
            if self.stage == "mouth":
                r = self.render_mouth(cond, i, vm, K, W, H)
                img = r.image + (1 - r.alpha) * bg
            elif self.stage == "face":
                r = self.render_face(cond, i, vm, K, W, H, deform=self.global_step >= self.static_warmup)
                img = r.image + (1 - r.alpha) * bg
            else:
                img = self.render_frame(cond, i, vm, K, W, H, bg)[0]
            out.append(img.clamp(0, 1).permute(2, 0, 1))
        return torch.stack(out)

    @torch.no_grad()
    def render_predict(self, batch, emotion: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Render a :class:`~ua3dtalk.data.datamodule.PredictBatch` (no ground truth) → [B,3,H,W]."""
        H, W = batch.background.shape[-2:]
        cond = self.conditioning(batch, emotion)
        out = []
        for i in range(batch.background.shape[0]):
            bg = batch.background[i].permute(1, 2, 0)
            img = self.render_frame(cond, i, batch.viewmat[i], batch.K[i], W, H, bg)[0]
            out.append(img.clamp(0, 1).permute(2, 0, 1))
        return torch.stack(out)

    def validation_step(self, batch, batch_idx):
        if self.stage in ("prior", "emotion"):
            return self._val_audio(batch)
        pred = self.render_batch(batch)
        img = batch.image
        if self.stage == "mouth":
            mask = batch.mouth_mask.to(img.dtype)
        elif self.stage == "face":
            mask = (batch.face_mask | batch.hair_mask).to(img.dtype)
        else:
            mask = (batch.face_mask | batch.hair_mask | batch.mouth_mask).to(img.dtype)
        target = img * mask + batch.background * (1 - mask)
        mse = ((pred - target) ** 2).flatten(1).mean(1)
        psnr = (-10 * torch.log10(mse.clamp_min(1e-10))).mean()
        self.log("val/psnr", psnr, prog_bar=True, batch_size=img.shape[0])
        if self.log_images_every and batch_idx % max(self.log_images_every, 1) == 0 and len(self.val_outputs) < 8:
            self.val_outputs.append({"pred": pred[0].cpu(), "target": target[0].cpu()})
        return psnr

    def _val_audio(self, batch):
        b = batch.audio.shape[0]
        if self.stage == "prior":
            out = self.prior(batch.audio, batch.context)
            err = F.mse_loss(out.mouth_pred, batch.expr[:, list(self.prior.mouth_dims)])
            self.log("val/prior_mouth_mse", err, prog_bar=True, batch_size=b)
            return err
        s = self.emotion.encoder(w2v=batch.context)
        acc = (s.logits.argmax(-1) == batch.emotion).float().mean()
        self.log("val/emotion_acc", acc, prog_bar=True, batch_size=b)
        return acc

    def on_validation_epoch_start(self):
        self.val_outputs = []
        if self.stage not in ("prior", "emotion"):
            self.attach_health()

    def on_validation_epoch_end(self):
        health = self.detach_health()
        if health:
            self.log_dict(health, batch_size=1)
            self.warn_low_health(health)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ua3dtalk"] = {"stage": self.stage, "num_face": len(self.face), "num_mouth": len(self.mouth),
                                  "version": 1, "model_config": getattr(self, "model_config", None),
                                  "data_config": getattr(self, "data_config", None)}
        # the landmark term's replay bank (frames seen, frames held, the held rows): resumed bit for bit
        n = self._bank_n
        rows = {k: v[:n].detach().cpu().clone() for k, v in self._bank.items()}
        checkpoint["ua3dtalk_landmark_bank"] = {"seen": int(self._bank_seen), "n": int(n), "rows": rows}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("ua3dtalk")
        if meta is None:
            raise ValueError("checkpoint was not written by ua3dtalk (no 'ua3dtalk' entry)")
        if meta.get("version") != 1:
            raise ValueError(f"checkpoint format version {meta.get('version')} is not supported (expected 1)")
        bank = checkpoint.get("ua3dtalk_landmark_bank")
        if isinstance(bank, dict):  # checkpoints written before the bank was saved refill it from scratch
            rows = {k: v for k, v in (bank.get("rows") or {}).items() if isinstance(v, torch.Tensor)}
            n = int(bank.get("n", 0))
            if any(len(v) != n for v in rows.values()) or (n and not rows):
                raise ValueError(f"the landmark replay bank in the checkpoint is inconsistent ({n} frames held)")
            dev = self.face.means.device
            self._bank = {k: v.to(dev).clone() for k, v in rows.items()}
            self._bank_n, self._bank_seen = n, int(bank.get("seen", n))

    def load_weights(self, state_dict: dict, strict: bool = True, what: str = "checkpoint") -> None:
        """Load a state dict with a clear error listing mismatched keys (checkpoints of another config)."""
        own = self.state_dict()
        missing = sorted(k for k in own if k not in state_dict)
        unexpected = sorted(k for k in state_dict if k not in own)
        gaussian_keys = tuple(f"{b}.{p}" for b in ("face", "mouth") for p in
                              ("means", "quats", "log_scales", "opacity_logits", "sh"))
        shape = sorted(k for k in own if k in state_dict and own[k].shape != state_dict[k].shape
                       and not k.endswith(gaussian_keys))
        if strict and (missing or unexpected or shape):
            lines = [f"{what} does not match this model configuration:"]
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape)):
                if keys:
                    extra = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                    desc = [f"{k} {list(state_dict[k].shape)} vs {list(own[k].shape)}" if label == "shape mismatch"
                            else k for k in keys[:8]]
                    lines.append(f"  {label}: " + ", ".join(desc) + extra)
            raise ValueError("\n".join(lines))
        self.load_state_dict(state_dict, strict=strict)

    def trainable_summary(self) -> dict[str, int]:
        return {n: sum(p.numel() for p in m.parameters()) for n, m in self.named_children()}


def stage_trainable_modules(model: UA3DTalk) -> Sequence[nn.Module]:
    """Modules whose parameters the current stage updates (for tests and documentation)."""
    s = model.stage
    if s == "prior":
        return [model.prior]
    if s == "emotion":
        return [model.emotion]
    mods = [model.mouth, model.mouth_deformation] if s == "mouth" else [model.face, model.deformation]
    if s in ("face", "fuse") and model.emotion_field is not None:
        mods.append(model.emotion_field)
    if s == "fuse":
        mods += [model.mouth, model.mouth_deformation]
    return mods
