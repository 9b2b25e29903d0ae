"""The ``UA3DTalk`` LightningModule: avatar + prior + emotion + uncertainty deformation (DESIGN §4).

Stages (``stage=``), each resuming from the previous stage's checkpoint:

==========  ===========================================  ==============================================
stage       trains                                       batches
==========  ===========================================  ==============================================
``prior``   PriorExtraction (sync, mouth, recon, decor)  :class:`~ua3dtalk.data.batch.AudioBatch`
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
from typing import Optional, Sequence

import lightning as L
import torch
from torch import nn

from .audio_stages import AudioStages
from .deformation import DeformationNetwork, MouthDeformation, RunningStandardize
from .emotion import EmotionControl, EmotionDistillation, EmotionField
from .finite import NonFiniteLossError, check_all_finite, check_finite
from .gaussians import DensityControl, GaussianModel, adam, make_optimizer
from .health import HealthMixin
from .landmark_bank import LandmarkBank
from .landmarks import LandmarkAnchors
from .losses import RenderLosses
from .optim import net_lr_factor, net_param_groups, set_net_lr
from .prior import PriorExtraction
from .talking_head import LOG_SCALE_RANGE, BranchRender, Conditioning, TalkingHead

from ..constants import RENDER_STAGES, STAGES


class UA3DTalk(HealthMixin, TalkingHead, RenderLosses, LandmarkBank, AudioStages, L.LightningModule):
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

    def on_train_end(self) -> None:
        """End of the emotion stage: the label prototypes become the exact eval-mode means of the final
        student (:meth:`recompute_emotion_prototypes`); the running means of training were only a cheap
        stand-in. Other stages: nothing."""
        if self.stage == "emotion" and self.emotion is not None and self.emotion_control is not None:
            n = self.recompute_emotion_prototypes()
            self.print(f"emotion prototypes recomputed with the final student (eval mode) from {n} labelled "
                       "training frames")

    def _step_render(self, batch, opts, step):
        H, W = batch.image.shape[-2:]
        # a non-finite trained parameter stops here, named, not in the renderer
        trained = self._trained_parameters()
        self._step_in_progress = step
        # the Gaussians every step (they go to the renderer, which would refuse them less helpfully); the
        # networks' parameters (34 M at paper size, 5 ms a pass) only when the loss turns out non-finite
        check_all_finite([(n, p) for n, p in trained if n.startswith(("face.", "mouth."))], step)
        cond = self.conditioning(batch)
        self.face.set_active_sh_degree(step // max(self.sh_increase_every, 1))
        self.mouth.set_active_sh_degree(step // max(self.sh_increase_every, 1))
        total = torch.zeros((), device=self.device)
        logs = {}
        renders = []
        anchors = self._landmark_anchors(batch)  # of the frames of earlier steps
        for i in range(batch.image.shape[0]):
            loss, terms = self._frame_loss(batch, cond, i, step, anchors, renders, W, H)
            total = total + loss / batch.image.shape[0]
            for k, v in terms.items():
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
            check_all_finite(trained, step)  # name the parameter that made it so, if one did
        check_finite("train/loss", total, step)
        for o in opts:
            o.zero_grad(set_to_none=True)
        for _, r in renders:
            r.out.means2d.retain_grad() if r.out.means2d.requires_grad else None
        self.manual_backward(total)
        # a finite loss can still have a non-finite gradient: never step with it
        check_all_finite([(pname, p.grad) for pname, p in trained], step, prefix="gradient of ")
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

    def _trained_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(qualified name, parameter) of the current stage's trainable modules."""
        trained = {id(m) for m in stage_trainable_modules(self)}
        return [(f"{mname}.{pname}", p) for mname, mod in self.named_children() if id(mod) in trained
                for pname, p in mod.named_parameters()]

    def _opt(self, name, opts):
        names = getattr(self, "_opt_names", self._optimizers_for_stage())
        return opts[names.index(name)] if name in names else None

    # ------------------------------------------------------------------ validation / prediction
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

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0) -> dict:
        """Render the frames of a :class:`~ua3dtalk.data.batch.PredictBatch` as ``ua3dtalk-infer`` does
        (:meth:`render_predict`; the emotion from the audio, or the embedding ``predict_emotion`` when one is
        set, e.g. from :func:`ua3dtalk.cli.infer.resolve_emotion`) →
        ``{"images": [B,3,H,W] in [0,1], "frame_index": [B]}``."""
        images = self.render_predict(batch, emotion=getattr(self, "predict_emotion", None))
        return {"images": images, "frame_index": batch.frame_index}

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


__all__ = ["UA3DTalk", "NonFiniteLossError", "Conditioning", "BranchRender", "LOG_SCALE_RANGE", "STAGES",
           "RENDER_STAGES", "stage_trainable_modules"]
