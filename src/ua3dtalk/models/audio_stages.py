"""The audio stages ``prior`` and ``emotion`` of :class:`~ua3dtalk.models.module.UA3DTalk` (training and
validation steps on :class:`~ua3dtalk.data.batch.AudioBatch`, the emotion prototypes), a mixin of the
LightningModule."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .finite import check_finite
from .talking_head import eval_mode


class AudioStages:
    """Steps of the ``prior`` (PriorExtraction) and ``emotion`` (EmotionDistillation) stages."""

    def _step_prior(self, batch, opt, step):
        out = self.prior(batch.audio, batch.context)
        losses = self.prior.losses(out, batch.expr, batch.lip, emotion=batch.emotion)
        check_finite("prior/total", losses["total"], step)
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
        check_finite("emotion/total", losses["total"], step)
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

    @torch.no_grad()
    def recompute_emotion_prototypes(self, data=None) -> int:
        """Recompute :class:`EmotionControl`'s prototypes from scratch with the *current* (final) emotion
        student in eval mode, without gradients: the exact mean embedding per (emotion, intensity) cell
        over the training frames (:meth:`EmotionControl.recompute_prototypes`; sets its ``recomputed`` flag).

        ``data``: a DataModule with ``audio_dataset`` (every frame of its ``train`` split once, in order,
        ``audio_batch_size`` per batch), an iterable of :class:`~ua3dtalk.data.batch.AudioBatch`, or
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

            from ..data.batch import collate_batches

            data = DataLoader(data.audio_dataset("train"), batch_size=int(data.audio_batch_size), shuffle=False,
                              collate_fn=collate_batches, num_workers=int(getattr(data, "num_workers", 0)))

        def embeddings():
            with eval_mode(self.emotion):
                for batch in data:
                    batch = batch.to(self.device)
                    yield self.emotion.encoder(w2v=batch.context).embedding, batch.emotion, batch.intensity

        return self.emotion_control.recompute_prototypes(embeddings())

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
