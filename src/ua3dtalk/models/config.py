"""The typed configuration of :class:`~ua3dtalk.models.module.UA3DTalk` (DESIGN §4.7): learning rates and
their schedule, loss weights, the ★ terms, the emotion condition and the renderer — every scalar option of
the model, its choices ``Literal`` types checked once (:mod:`ua3dtalk.utils.typed_config`).

The field names are the keys of ``model`` in the experiment yamls (``experiments/model/ua3dtalk.yaml``), so a
yaml key, a dataclass field and a constructor option of ``UA3DTalk`` are one name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from ..render.api import Backend
from ..utils.typed_config import check_config

EmotionCondition = Literal["audio", "label"]
FuseMouthGrad = Literal["all", "inner"]
MouthPhoto = Literal["frame", "region"]
FrameCode = Literal["blink", "expression"]


@dataclass(frozen=True)
class UA3DTalkConfig:
    """Scalar options of :class:`~ua3dtalk.models.module.UA3DTalk` (its modules are constructor arguments).

    Each field is documented below it (the keys of ``model`` in the experiment yamls).
    """

    lr_gaussians: Optional[dict] = None
    """learning rates of the Gaussian parameters (means, quats, log_scales, opacity_logits, sh); ``means`` decays
    exponentially to ``lr_means_final`` over ``max_steps``.
    """
    lr_means_final: float = 1.6e-6
    """final learning rate of the means (exponential decay from ``lr_gaussians["means"]`` over ``max_steps``)."""
    lr_net: float = 5e-4
    """learning rate of the networks' MLPs in the render stages (ensembles, decoders, audio view, emotion query; 5e-4,
    the authors' value); lr_prior, lr_emotion for those stages.
    """
    lr_grid: float = 5e-3
    """learning rate of the plane grids in the render stages (position fields, emotion field planes and codebooks;
    5e-3, the authors' value). Both groups warm up linearly over ``net_warmup`` steps of the deformation and then
    decay exponentially to ``net_lr_final`` × their value at the end of the stage (DESIGN §4.5).
    """
    net_warmup: int = 100
    """deformation steps of the networks' linear warm-up."""
    net_lr_final: float = 0.1
    """factor of their learning rates at the end of the stage (exponential decay after the warm-up)."""
    uncertainty_weight: float = 0.01
    """weight of the views' likelihood term (DESIGN §4.5,
    :meth:`~ua3dtalk.models.deformation.fusion.UncertaintyFusion.uncertainty_nll`; 0 = off, the paper).
    """
    uncertainty_beta: float = 0.5
    """its β (β-NLL; 0 = the plain Gaussian NLL)."""
    lr_prior: float = 1e-3
    """learning rate of the ``prior`` stage (Prior Extraction)."""
    lr_emotion: float = 1e-3
    """learning rate of the ``emotion`` stage (Emotion Distillation)."""
    max_steps: int = 10000
    """schedule length (steps of this stage)."""
    static_warmup: int = 500
    """face stage steps without deformation (canonical Gaussians only)."""
    ssim_weight: float = 0.2
    reg_weight: float = 1e-3
    alpha_weight: float = 0.1
    """(ssim_weight, reg_weight, alpha_weight) loss weights: of (1 − SSIM) beside the L1, of the offsets' L1
    regularisers after ``static_warmup``, of the alpha-vs-mask L1."""
    hole_weight: float = 0.1
    """weight of the *mouth-hole* term of the face/fuse stages: the mean face-branch alpha over the ground-truth
    inside-mouth pixels (normalised by their count, not by the image size — the inner mouth is < 1 % of the frame,
    so the image-wide alpha and photometric terms barely see it). It makes the face branch part the lips so that the
    mouth branch behind them becomes visible.
    """
    cover_weight: float = 0.5
    """weight of the *mouth-cover* term of the mouth/fuse stages: the mean transparency (1 − alpha) of the mouth branch
    (mouth stage) or of the composite (fuse stage) over the ground-truth inside-mouth pixels, normalised by their
    count like the hole term. Without it the few inner-mouth pixels of a frame give the mouth branch almost no
    signal, the alpha term pushes its Gaussians away from the background, and they drift behind the face where
    nothing is seen: the parted lips then show the background instead of the mouth's interior.
    """
    lip_weight: float = 0.0
    """weight of the *lip* term of the face/fuse stages (★, not in the paper; 0 = off): the mean L1 over the lip box
    (square box around the mouth landmarks 48–67 with a 40 % margin, else around the inside-mouth mask; no term on a
    frame with neither), normalised by the box's pixel count like the hole term. The lips and the inner mouth are a
    few per cent of the frame but most of the error of a talking face.
    """
    lpips_weight: float = 0.0
    """weight of the perceptual term of the last phase (``fuse`` stage, DESIGN §4): LPIPS
    (:class:`ua3dtalk.metrics.image.LPIPSMetric`, AlexNet v0.1) of the lip region (box around the mouth landmarks
    48–67, else around the inside-mouth mask) plus ``lpips_patches`` random patches of the head; 0 (default) = off.
    Needs the AlexNet checkpoint (the metric's clear error names the file) unless ``lpips_random_backbone`` (tests
    only).
    """
    lpips_patches: int = 1
    lpips_patch_size: int = 32
    """(lpips_patches, lpips_patch_size) random patches per frame and their side (pixels, ≥ 32)."""
    lpips_random_backbone: bool = False
    sh_increase_every: int = 1000
    """raise the active SH degree every this many steps."""
    emotion_condition: EmotionCondition = "audio"
    """where the emotion view's embedding comes from while *training* the render stages: ``audio`` (the paper, default:
    the distilled student's embedding of the frame's audio context) or ``label`` (★: the prototype of the clip's
    emotion/intensity label — exactly what label-driven inference feeds — for frames whose label is known, the audio
    embedding otherwise). With ``audio`` the emotion view only sees the student's noisy guess of the emotion.
    Validation, test and inference always use the audio embedding unless an emotion is given explicitly.
    """
    landmark_weight: float = 0.0
    """weight of the *landmark* term of the face/fuse stages (★, not in the paper; 0 = off): the deformation field
    evaluated at canonical landmark anchors, projected with the frame's camera, against the frame's 68 landmarks
    (:mod:`ua3dtalk.models.landmarks`). The photometric loss cannot drag a lip centimetres to where the frame shows
    it; this term can. Needs landmarks in the batches.
    """
    landmark_frames: int = 0
    """frames per step on which the landmark term is *also* evaluated, drawn from a replay bank of the training frames
    seen so far (their conditioning is constant in the render stages: the prior and emotion modules are frozen). The
    term costs the deformation of a few dozen anchors per frame, no rendering, so each step can supervise the field
    on many frames instead of the one it renders. 0 = only the rendered frames.
    """
    landmark_bank: int = 4096
    """capacity of that bank (frames; reservoir replacement once full; saved in the checkpoint, so a resumed run draws
    from the same frames).
    """
    emotion_swap_weight: float = 0.0
    """weight of the *emotion-swap* term (★, not in the paper; 0 = off; needs ``landmark_weight > 0``,
    ``landmark_frames > 0`` and the emotion view). The anchors are also triangulated per label cell (emotion ×
    intensity, :meth:`LandmarkAnchors.cell_offsets`): a cell's offset from the global anchors is that label's mean
    expression in the training data. On the replay bank's frames, the emotion view's input is swapped for the
    prototype of another label, and the field's change at the anchors must equal the difference of the two labels'
    offsets (projected with the frame's camera, L1, in the units of the landmark term). Without it the field learns
    each clip's expression from the *audio* view (the synthetic and MEAD audio carry the emotion too), and
    requesting a label at inference changes the face by a fraction of a pixel.
    """
    init_mouth_color: bool = True
    """at the first mouth-stage step whose frames show the inner mouth, set every inside-mouth Gaussian's colour to the
    mean ground-truth colour of those pixels (once; a flag in the checkpoint). Randomly initialised colours are mid-
    grey, and the SH learning rate moves them by at most ≈ 0.2 (RGB) in the 250 steps of the demo's mouth stage: the
    inner mouth rendered grey, then, in the fuse stage, lip-red — never dark.
    """
    init_from_frame: bool = False
    """★ place each branch's Gaussians on the pixels of its first training frame instead of at random in its box
    (:mod:`ua3dtalk.models.frame_init`): the face's on the face ∪ hair pixels of the first ``face``-stage frame, the
    mouth's on the inner-mouth pixels of the first ``mouth``-stage frame that shows some (with their colours, cast
    onto the ellipsoid of the branch's box, scaled to tile the mask; opacity ``init_from_frame_opacity``). Once per
    branch; the flags are in the checkpoint. Off by default (the paper initialises at random); ``own_video`` turns
    it on: on a real video at 512² the CPU schedule otherwise spends its first few hundred steps finding the colours
    and renders the teeth of a smile as one pink patch.
    """
    init_from_frame_opacity: float = 0.5
    """opacity of the Gaussians placed by ``init_from_frame`` (in (0, 1))."""
    init_mouth_back: float = 0.0
    """★ with ``init_from_frame``: this fraction of the inside-mouth Gaussians is the cavity — sampled over the frame's
    outer-lip polygon (landmarks 48–59) ∪ its inner mouth, 2 cm further along their rays, with the mean colour of the
    darkest fifth of the frame's inner-mouth pixels: the dark inside that an opening reveals when the lower lip moves
    down (:func:`~ua3dtalk.models.frame_init.mouth_points`; in [0, 1); 0 = all on the frame's surface)."""
    fuse_mouth_grad: FuseMouthGrad = "all"
    """which pixels of the ``fuse`` stage's composite train the inside-mouth branch's *colours*: ``all`` (default)
    every pixel; ``inner`` (★) the ground-truth inner mouth only (its positions and opacities learn from every
    pixel). With ``all``, the lips of the (many) closed-mouth frames — where the face is not quite opaque, the mouth
    branch behind it shows through — recolour the inner mouth lip-red within the 300 steps of the demo's fuse stage,
    so open mouths look red; with ``inner`` they stay dark, but the dark mouth shows through those lips (−1.6 dB at
    demo scale). (Blocking the mouth's opacity and position gradients as well let it spread over the chin: −3 dB.)
    """
    mouth_photo: MouthPhoto = "frame"
    """how the ``mouth`` stage averages its L1: ``frame`` (default) over the inner mouth ∪ the pixels outside the
    head together, so at 512² the inner mouth's ~1,700 pixels weigh ~1 % of a term whose other part is the empty
    background, and the mouth-cover term (normalised by the inner mouth alone) dominates the branch: it grows into
    an opaque blur instead of fitting the teeth and the cavity; ``region`` (★) the mean over the inner mouth plus the
    mean over the outside of the head, each normalised by its own pixel count."""
    frame_code: FrameCode = "blink"
    """the per-frame input of the face deformation's eye channel (the audio view's ``E``, DESIGN §4.2): ``blink``
    (default; AU45, as TalkingGaussian) or ``expression`` (★) — the brow, eye and lip-corner coefficients of the
    dataset's ``expr.npy`` (``EXPRESSION_CODE``: the landmark expression that ``ua3dtalk-preprocess`` writes),
    standardised with the training frames' statistics; needs ``deformation.blink_dim`` = 6. Speech does not say
    which expression a face shows: with audio and blink alone, an expressive video is fitted with one average
    expression (docs/history/2026-12-06-expressive-face.md). The mouth opening stays audio-driven (the code has no
    mouth-opening coefficient). At inference the code is the training average unless ``ua3dtalk-infer
    expression=FILE`` gives a track."""
    face_random_background: bool = False
    """the ``face`` stage composites the face branch (and its target) over a random uniform colour per frame instead of
    the frame's background (★, the random-background trick of 3DGS; off by default). Over the real background a
    semi-transparent lip looks right, and in the ``fuse`` stage the mouth behind it then shows through. In both
    demo-scale runs with it, the deformation decoder's ReLU trunk died completely (static offsets, label control
    exactly 0; see ``decoder_activation`` of :class:`~ua3dtalk.models.deformation.DeformationNetwork`).
    """
    backend: Backend = "auto"
    """renderer backend (``auto``)."""
    log_images_every: int = 1
    """validation renders logged every this many validation batches (0 = never)."""

    def __post_init__(self) -> None:
        own = "UA3DTalk"
        if self.backend not in Backend.__args__:  # found here, not at the first render hours into a run
            raise ValueError(f"{own}: unknown renderer backend {self.backend!r}; choose one of "
                             f"{', '.join(Backend.__args__)}")
        if self.emotion_condition not in EmotionCondition.__args__:
            raise ValueError(f"{own}: emotion_condition must be 'audio' or 'label', got {self.emotion_condition!r}")
        if self.fuse_mouth_grad not in FuseMouthGrad.__args__:
            raise ValueError(f"{own}: fuse_mouth_grad must be 'inner' or 'all', got {self.fuse_mouth_grad!r}")
        check_config(self, own)
        if self.landmark_weight < 0:
            raise ValueError(f"{own}: landmark_weight must be ≥ 0, got {self.landmark_weight}")
        if self.landmark_frames < 0 or self.landmark_bank < 1:
            raise ValueError(f"{own}: landmark_frames must be ≥ 0 and landmark_bank ≥ 1 (got {self.landmark_frames}, "
                             f"{self.landmark_bank})")
        if not (isinstance(self.init_from_frame_opacity, (int, float)) and 0 < self.init_from_frame_opacity < 1):
            raise ValueError(f"{own}: init_from_frame_opacity must be in (0, 1), got {self.init_from_frame_opacity!r}")
        if not (isinstance(self.init_mouth_back, (int, float)) and 0 <= self.init_mouth_back < 1):
            raise ValueError(f"{own}: init_mouth_back must be in [0, 1), got {self.init_mouth_back!r}")
        if self.emotion_swap_weight < 0:
            raise ValueError(f"{own}: emotion_swap_weight must be ≥ 0, got {self.emotion_swap_weight}")
        for key in ("lr_net", "lr_grid", "net_lr_final"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{own}: {key} must be a finite number > 0, got {v!r}")
        if int(self.net_warmup) < 0:
            raise ValueError(f"{own}: net_warmup must be ≥ 0, got {self.net_warmup}")
        if not (math.isfinite(self.uncertainty_weight) and self.uncertainty_weight >= 0
                and math.isfinite(self.uncertainty_beta) and 0 <= self.uncertainty_beta <= 1):
            raise ValueError(f"{own}: uncertainty_weight must be ≥ 0 and uncertainty_beta in [0, 1] (got "
                             f"{self.uncertainty_weight}, {self.uncertainty_beta})")
        if not (math.isfinite(self.lip_weight) and self.lip_weight >= 0):
            raise ValueError(f"{own}: lip_weight must be a finite number ≥ 0, got {self.lip_weight}")
        if self.lpips_weight < 0 or self.lpips_patches < 0 or self.lpips_patch_size < 32:
            raise ValueError(f"{own}: lpips_weight and lpips_patches must be ≥ 0 and lpips_patch_size ≥ 32 "
                             f"(got {self.lpips_weight}, {self.lpips_patches}, {self.lpips_patch_size})")


__all__ = ["Backend", "EmotionCondition", "FuseMouthGrad", "UA3DTalkConfig"]
