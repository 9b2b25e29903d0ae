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
from .config import UA3DTalkConfig
from .deformation import DeformationNetwork, MouthDeformation, RunningStandardize
from .emotion import EmotionControl, EmotionDistillation, EmotionField
from .fields import PlaneField
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
from ..utils.typed_config import make_config


class UA3DTalk(HealthMixin, RenderLosses, LandmarkBank, AudioStages, L.LightningModule):
    """UA-3DTalk avatar (see the module docstring): the talking head (:class:`TalkingHead`, an ``nn.Module``:
    conditioning → deformation → render, held as ``self.head``) plus what training needs — the losses, the
    optimisers, the stage curriculum's steps, the landmark term and the checkpoint format.

    The head's modules are also reachable as read-only attributes (``model.face`` is ``model.head.face``, …);
    their state-dict keys are ``head.<module>.…`` (checkpoint format 2; format-1 checkpoints, with the keys
    at the top level, are upgraded on load).

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
        landmark_anchors: the :class:`~ua3dtalk.models.landmarks.LandmarkAnchors` (which landmarks, prior);
            built with its defaults when ``landmark_weight > 0`` and none is given. Its normal equations are
            accumulated from every training frame of the render stages and saved in the checkpoint.
        stage: one of ``prior | emotion | mouth | face | fuse`` (the curriculum sets it per stage).
        config: the typed :class:`~ua3dtalk.models.config.UA3DTalkConfig` (learning rates and schedule, loss
            weights, ★ terms, emotion condition, renderer; defaults when None).
        **options: fields of that configuration set on top of ``config`` (the keys of ``model`` in the
            experiment yamls, e.g. ``lr_net=1e-3``).

    The options become attributes of the same name (``self.max_steps``, ``self.landmark_weight``, …; the
    curriculum changes ``max_steps`` per stage); ``self.config`` keeps the configuration as given.
    """

    def __init__(self, face: GaussianModel, mouth: GaussianModel, deformation: DeformationNetwork,
                 mouth_deformation: MouthDeformation, prior: Optional[PriorExtraction] = None,
                 emotion: Optional[EmotionDistillation] = None, emotion_field: Optional[EmotionField] = None,
                 emotion_control: Optional[EmotionControl] = None, face_density: Optional[DensityControl] = None,
                 mouth_density: Optional[DensityControl] = None, landmark_anchors: Optional[LandmarkAnchors] = None,
                 stage: str = "face", config: Optional[UA3DTalkConfig] = None, **options):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"UA3DTalk: unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        cfg = make_config(UA3DTalkConfig, config, options, "UA3DTalk")
        self.config = cfg
        self.landmark_weight = float(cfg.landmark_weight)
        self.landmark_anchors = (landmark_anchors if landmark_anchors is not None else LandmarkAnchors()) \
            if self.landmark_weight > 0 else None
        self.landmark_frames, self.landmark_bank = int(cfg.landmark_frames), int(cfg.landmark_bank)
        self._bank: dict[str, torch.Tensor] = {}  # replay bank of the landmark term (see landmark_frames)
        self.emotion_swap_weight = float(cfg.emotion_swap_weight)
        self.init_mouth_color = bool(cfg.init_mouth_color)
        self.fuse_mouth_grad = cfg.fuse_mouth_grad
        self.mouth_photo = cfg.mouth_photo
        self.face_random_background = bool(cfg.face_random_background)
        self.register_buffer("mouth_color_initialised", torch.tensor(False))
        self.init_from_frame = bool(cfg.init_from_frame)
        self.init_from_frame_opacity = float(cfg.init_from_frame_opacity)
        self.init_mouth_back = float(cfg.init_mouth_back)
        if self.init_from_frame:  # once per branch (frame_init), remembered in the checkpoint
            self.register_buffer("face_points_initialised", torch.tensor(False))
            self.register_buffer("mouth_points_initialised", torch.tensor(False))
        self._bank_seen = self._bank_n = 0  # frames offered to / held by the bank
        self.automatic_optimization = False
        self.head = TalkingHead(face, mouth, deformation, mouth_deformation, prior, emotion, emotion_field,
                                emotion_control, emotion_condition=cfg.emotion_condition, backend=cfg.backend,
                                frame_code=cfg.frame_code)
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
        self.lr_gaussians = dict(cfg.lr_gaussians or {"means": 1.6e-4, "quats": 1e-3, "log_scales": 5e-3,
                                                      "opacity_logits": 5e-2, "sh": 2.5e-3})
        self.lr_means_final, self.lr_net, self.lr_prior, self.lr_emotion = \
            cfg.lr_means_final, cfg.lr_net, cfg.lr_prior, cfg.lr_emotion
        self.lr_grid, self.net_warmup = float(cfg.lr_grid), int(cfg.net_warmup)
        self.net_lr_final = float(cfg.net_lr_final)
        self.uncertainty_weight, self.uncertainty_beta = float(cfg.uncertainty_weight), float(cfg.uncertainty_beta)
        self.max_steps, self.static_warmup = int(cfg.max_steps), int(cfg.static_warmup)
        self.ssim_weight, self.reg_weight, self.alpha_weight = cfg.ssim_weight, cfg.reg_weight, cfg.alpha_weight
        self._step_in_progress: Optional[int] = None  # the render step being trained (error messages)
        self.hole_weight = float(cfg.hole_weight)
        self.cover_weight = float(cfg.cover_weight)
        self.lip_weight = float(cfg.lip_weight)
        self.lpips_weight, self.lpips_patches = float(cfg.lpips_weight), int(cfg.lpips_patches)
        self.lpips_patch_size, self.lpips_random_backbone = int(cfg.lpips_patch_size), bool(cfg.lpips_random_backbone)
        self._lpips_net: list = []  # built on first use; kept out of the state dict (fixed weights)
        if self.lpips_weight > 0:
            self._lpips()  # fail at construction, naming the missing backbone file, not hours into a run
        self.sh_increase_every = cfg.sh_increase_every
        self.log_images_every = cfg.log_images_every
        self.val_outputs: list[dict] = []
        self._register_load_state_dict_pre_hook(_upgrade_state_dict_hook)

    # ------------------------------------------------------------------ the talking head's modules
    # read-only views of ``self.head``'s modules (the LightningModule's code and its users read ``self.face``)
    face = property(lambda self: self.head.face, doc="face/head-branch Gaussians (``head.face``)")
    mouth = property(lambda self: self.head.mouth, doc="inside-mouth Gaussians (``head.mouth``)")
    deformation = property(lambda self: self.head.deformation, doc="face-branch deformation network")
    mouth_deformation = property(lambda self: self.head.mouth_deformation, doc="mouth-branch deformation network")
    prior = property(lambda self: self.head.prior, doc="PriorExtraction or None")
    emotion = property(lambda self: self.head.emotion, doc="EmotionDistillation or None")
    emotion_field = property(lambda self: self.head.emotion_field, doc="EmotionField or None")
    emotion_control = property(lambda self: self.head.emotion_control, doc="EmotionControl or None")
    emotion_condition = property(lambda self: self.head.emotion_condition, doc="``audio`` or ``label``")
    backend = property(lambda self: self.head.backend, doc="renderer backend")

    def on_fit_start(self) -> None:
        """``frame_code=expression``: the code's statistics from the training frames' ``expr.npy`` (once; saved)."""
        if self.head.frame_code != "expression" or bool(self.head.code_ready):
            return
        dm = getattr(self.trainer, "datamodule", None)
        rows = dm.train_expr() if dm is not None and hasattr(dm, "train_expr") else None
        if rows is None:
            raise ValueError("model.frame_code=expression needs expr.npy in the dataset (ua3dtalk-preprocess writes "
                             "it; or set model.frame_code=blink)")
        self.head.set_code_statistics(torch.as_tensor(rows))

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
        norms = [(m, m.mean.clone(), m.var.clone(), m.updates.clone()) for m in self._submodules(RunningStandardize)]
        try:
            try:
                return self._step_render(batch, opts, step)
            except ValueError as e:
                if self._step_in_progress is None or "NaN or Inf" not in str(e):
                    raise
                # the renderer refused non-finite Gaussians: a network parameter went non-finite (they are not
                # scanned every step): name it
                check_all_finite(self._trained_parameters(), step)
                raise NonFiniteLossError(f"step {step}: the deformed Gaussians are not finite ({e}); training "
                                         "stopped before the optimizer step, the last checkpoint is intact") from None
        except BaseException:
            self._step_in_progress = None
            with torch.no_grad():
                for m, mean, var, updates in norms:
                    m.mean.copy_(mean), m.var.copy_(var), m.updates.copy_(updates)
            raise

    def _submodules(self, cls: type) -> list[nn.Module]:
        """The submodules of type ``cls``, listed once (the networks are fixed at construction; densification
        changes parameters, not modules)."""
        cache = self.__dict__.setdefault("_submodule_lists", {})
        if cls not in cache:
            cache[cls] = [m for m in self.modules() if isinstance(m, cls)]
        return cache[cls]

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
        check_all_finite([(n, p) for n, p in trained if n.startswith(("head.face.", "head.mouth."))], step)
        cond = self.head.conditioning(batch)
        self.face.set_active_sh_degree(step // max(self.sh_increase_every, 1))
        self.mouth.set_active_sh_degree(step // max(self.sh_increase_every, 1))
        total = torch.zeros((), device=self.device)
        logs = {}
        renders = []
        anchors = self._landmark_anchors(batch)  # of the frames of earlier steps
        deform_step = step - self.static_warmup if self.stage == "face" else step
        use_bank = anchors is not None and self.landmark_frames > 0 and self._bank_n > 0 and \
            (self.stage == "fuse" or deform_step >= 0)
        # the bank frames evaluate the deformation at the anchors: their plane samples are taken with the
        # frames' own (one backward scatter into the planes instead of two)
        with self.head.co_sample(anchors if use_bank else None):
            for i in range(batch.image.shape[0]):
                loss, terms = self._frame_loss(batch, cond, i, step, anchors, renders, W, H)
                total = total + loss / batch.image.shape[0]
                for k, v in terms.items():
                    logs[f"train/{k}"] = logs.get(f"train/{k}", 0) + v.detach() / batch.image.shape[0]
            if use_bank:
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
        for f in self._submodules(PlaneField):  # last step's plane gradients: buffers for this backward
            f.keep_grad_buffers()
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
        # the ensemble schedule's clock (DeformationNetwork.schedule_step): each network that deformed a render
        # of this step has taken one more optimizer step (the face network not in the static warm-up)
        for branch in {b for b, r in renders if r.deltas is not None}:
            (self.deformation if branch == "face" else self.mouth_deformation).count_step()
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
        """(qualified name in the LightningModule, e.g. ``head.face.sh``; parameter) of the current stage's
        trainable modules."""
        trained = {id(m) for m in stage_trainable_modules(self)}
        return [(f"head.{mname}.{pname}", p) for mname, mod in self.head.named_children() if id(mod) in trained
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

    @torch.no_grad()
    def render_batch(self, batch, emotion: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Render every frame of a FrameBatch as the current stage shows it (the face stage's static warm-up
        without the deformation) → ``[B,3,H,W]`` in [0, 1] (:meth:`TalkingHead.forward`)."""
        return self.head(batch, emotion, stage=self.stage, deform=self.global_step >= self.static_warmup)

    @torch.no_grad()
    def render_predict(self, batch, emotion: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Render a :class:`~ua3dtalk.data.batch.PredictBatch` (no ground truth) → ``[B,3,H,W]``: the composite of
        both branches."""
        return self.head(batch, emotion, stage="fuse")

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
                                  "version": CHECKPOINT_VERSION, "model_config": getattr(self, "model_config", None),
                                  "data_config": getattr(self, "data_config", None)}
        # the landmark term's replay bank (frames seen, frames held, the held rows): resumed bit for bit
        n = self._bank_n
        rows = {k: v[:n].detach().cpu().clone() for k, v in self._bank.items()}
        checkpoint["ua3dtalk_landmark_bank"] = {"seen": int(self._bank_seen), "n": int(n), "rows": rows}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("ua3dtalk")
        if meta is None:
            raise ValueError("checkpoint was not written by ua3dtalk (no 'ua3dtalk' entry)")
        if meta.get("version") not in (1, CHECKPOINT_VERSION):
            raise ValueError(f"checkpoint format version {meta.get('version')} is not supported (expected 1 or "
                             f"{CHECKPOINT_VERSION})")
        bank = checkpoint.get("ua3dtalk_landmark_bank")
        if isinstance(bank, dict):  # checkpoints written before the bank was saved refill it from scratch
            rows = {k: v for k, v in (bank.get("rows") or {}).items() if isinstance(v, torch.Tensor)}
            if "blink" in rows and "eye" not in rows:  # banks written before frame_code held the blink [n]
                rows["eye"] = rows.pop("blink")[:, None]
            n = int(bank.get("n", 0))
            if any(len(v) != n for v in rows.values()) or (n and not rows):
                raise ValueError(f"the landmark replay bank in the checkpoint is inconsistent ({n} frames held)")
            dev = self.face.means.device
            self._bank = {k: v.to(dev).clone() for k, v in rows.items()}
            self._bank_n, self._bank_seen = n, int(bank.get("seen", n))

    def load_weights(self, state_dict: dict, strict: bool = True, what: str = "checkpoint") -> None:
        """Load a state dict with a clear error listing mismatched keys (checkpoints of another config)."""
        state_dict = upgrade_state_dict(state_dict)
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
        """Parameter count per module of the head (``face``, ``deformation``, …) and of the LightningModule."""
        mods = [*self.head.named_children(), *((n, m) for n, m in self.named_children() if m is not self.head)]
        return {n: sum(p.numel() for p in m.parameters()) for n, m in mods}


#: checkpoint format: 1 = the head's modules at the top level of the state dict (``face.means``), 2 = under
#: ``head.`` (``head.face.means``); format 1 is upgraded on load (:func:`upgrade_state_dict`)
CHECKPOINT_VERSION = 2
HEAD_MODULES = ("face", "mouth", "deformation", "mouth_deformation", "prior", "emotion", "emotion_field",
                "emotion_control")


def upgrade_state_dict(state: dict, prefix: str = "") -> dict:
    """A format-1 state dict (``face.means``, …) with the keys of the format-2 :class:`UA3DTalk`
    (``head.face.means``); format-2 keys and the LightningModule's own (``landmark_anchors.…``,
    ``mouth_color_initialised``) stay. Returns a new dict (the same one when nothing changes)."""
    old = [k for k in state if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] in HEAD_MODULES
           and "." in k[len(prefix):]]
    if not old:
        return state
    return {(f"{prefix}head.{k[len(prefix):]}" if k in old else k): v for k, v in state.items()}


def _upgrade_state_dict_hook(state_dict, prefix, *args, **kwargs) -> None:
    """``load_state_dict`` pre-hook of :class:`UA3DTalk`: format-1 keys are renamed in place."""
    new = upgrade_state_dict(state_dict, prefix)
    if new is not state_dict:
        state_dict.clear()
        state_dict.update(new)


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


__all__ = ["UA3DTalk", "TalkingHead", "NonFiniteLossError", "Conditioning", "BranchRender", "LOG_SCALE_RANGE",
           "STAGES", "RENDER_STAGES", "stage_trainable_modules", "upgrade_state_dict", "CHECKPOINT_VERSION"]
