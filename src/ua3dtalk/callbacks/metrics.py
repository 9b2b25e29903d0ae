"""``MetricsCallback``: render the validation / test clips in frame order and score them (DESIGN §8).

At the end of every validation run (skipped during the sanity check and in the audio-only stages
``prior`` / ``emotion``) and of every test run, the callback renders every frame of the split's clips
(whole clips, in frame order — not the ``limit_val_frames`` subset of the validation loop) through the
LightningModule (:meth:`~ua3dtalk.models.module.UA3DTalk.render_batch`), scores them with
:class:`~ua3dtalk.metrics.suite.MetricSuite` against the ground-truth frames, landmarks, ``au.csv``,
the clip's ``aud.wav`` and emotion label, and

* logs ``val/<metric>`` / ``test/<metric>`` through ``pl_module.log`` (so every logger gets them);
* updates ``metrics.json`` in the run directory atomically (keys merged into the existing file, with
  ``metrics_evaluators``: key → evaluator that produced it, and ``metrics_callback``: when/what);
* writes a few side-by-side frames (rendered | ground truth | |error|×4) as PNGs to
  ``<run dir>/metric_images/`` and to loggers that take images (wandb ``log_image``, TensorBoard).

Costly metric groups (everything but PSNR/SSIM) run every ``every_n_epochs`` validation runs (a
Lightning validation epoch = one validation loop run) and always at test time. A metric whose
evaluator is missing is skipped with one warning naming what is missing (never a made-up number).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import lightning as L
import numpy as np
import torch

from ..constants import RENDER_STAGES
from ..metrics.evaluator_dir import CHEAP_METRICS, load_evaluators, parse_metrics
from ..metrics.suite import MetricSuite
from ..utils.io import merge_json

__all__ = ["MetricsCallback", "ClipSequence", "split_sequences", "render_sequence", "side_by_side",
           "update_metrics_json"]

#: keys the callback renames in the val split (the module logs its own head-masked `val/psnr`)
VAL_RENAMES = {"psnr": "psnr_full"}


class ClipSequence:
    """The frames of one clip in a split, in time order: ``clip`` (ClipInfo), ``positions`` [n] frame
    positions in the clip, ``items`` [n] indices into the FrameDataset."""

    def __init__(self, clip, positions: np.ndarray, items: np.ndarray):
        self.clip, self.positions, self.items = clip, positions, items

    @property
    def name(self) -> str:
        return str(self.clip.clip_id)

    def audio(self) -> Optional[np.ndarray]:
        """16 kHz mono audio of the frames (``aud.wav`` from the first frame's audio index), None when the
        clip has no ``aud.wav`` or the frames are not consecutive."""
        from ..data.audio import load_wav
        from ..metrics.syncnet import SAMPLES_PER_FRAME

        if self.clip.wav_path is None:
            return None
        ids = np.asarray(self.clip.aud_ids)[self.positions]
        if len(ids) == 0 or not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
            return None
        wav = load_wav(self.clip.wav_path)
        first = int(ids[0]) * SAMPLES_PER_FRAME
        return wav[first:first + len(ids) * SAMPLES_PER_FRAME]

    def au45(self) -> Optional[np.ndarray]:
        a = self.clip.au()
        col = a.get("AU45_r") if a is not None else None
        if col is None:
            return None
        ids = np.asarray(self.clip.img_ids)[self.positions]
        if ids.max() >= len(col):
            return None
        return np.asarray(col, dtype=np.float32)[ids]


def split_sequences(dm, split: str, max_clips: Optional[int] = None, max_frames: Optional[int] = None):
    """The clips of a DataModule split as whole, time-ordered sequences.

    Returns ``(dataset, sequences)``: a :class:`~ua3dtalk.data.datasets.FrameDataset` over every frame
    of the split (ignoring ``limit_val_frames``) and its :class:`ClipSequence` s (at most ``max_clips``,
    each cut to its first ``max_frames`` frames)."""
    from ..data.datasets import FrameDataset

    if getattr(dm, "clips", None) is None:
        dm.setup("fit")
    index = getattr(dm, "split_index", {}).get(split)
    if index is None:
        raise ValueError(f"split {split!r} not in the DataModule's splits {sorted(getattr(dm, 'split_index', {}))}")
    index = np.asarray(index).reshape(-1, 2)
    seqs, rows = [], []
    for ci in dict.fromkeys(index[:, 0].tolist()):
        pos = np.sort(index[index[:, 0] == ci, 1])
        if max_frames is not None:
            pos = pos[:int(max_frames)]
        seqs.append((int(ci), pos))
        if max_clips is not None and len(seqs) >= int(max_clips):
            break
    out, k = [], 0
    for ci, pos in seqs:
        rows.append(np.stack([np.full(len(pos), ci), pos], 1))
        out.append(ClipSequence(dm.clips[ci], pos, np.arange(k, k + len(pos))))
        k += len(pos)
    positions = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
    ds = FrameDataset(dm.clips, positions, dm.feature_name, dm.neighbours, dm.background, cache_size=0,
                      context=dm.context, context_feature=getattr(dm, "context_feature_name", None))
    return ds, out


@torch.no_grad()
def render_sequence(model, dataset, seq: ClipSequence, batch_size: int = 8, emotion=None):
    """Render one sequence → (pred [n,3,H,W], gt [n,3,H,W], landmarks [n,68,2] | None, label) on the CPU."""
    from ..data.batch import collate_batches

    preds, gts, lms, label = [], [], [], None
    dev = next(model.parameters()).device
    for i in range(0, len(seq.items), batch_size):
        b = collate_batches([dataset[int(j)] for j in seq.items[i:i + batch_size]])
        preds.append(model.render_batch(b.to(dev), emotion=emotion).float().cpu())
        gts.append(b.image.float().cpu())
        lms.append(None if b.landmarks is None else b.landmarks.float().cpu())
        label = int(b.emotion[0])
    lm = None if any(x is None for x in lms) else torch.cat(lms)
    return torch.cat(preds), torch.cat(gts), lm, label


def side_by_side(pred: torch.Tensor, gt: torch.Tensor, gain: float = 4.0) -> np.ndarray:
    """uint8 [H, 3W, 3]: rendered | ground truth | |error|·gain of one frame [3,H,W] in [0,1]."""
    err = ((pred - gt).abs() * gain).clamp(0, 1)
    img = torch.cat([pred.clamp(0, 1), gt.clamp(0, 1), err], dim=2)
    return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


#: merge values into a run's metrics.json atomically (kept under this name for callers)
update_metrics_json = merge_json


class MetricsCallback(L.Callback):
    """Render validation/test clips and log every configured metric (see the module docstring).

    Args:
        metrics: metric groups (:data:`ua3dtalk.metrics.suite.METRIC_GROUPS`: psnr, ssim, lpips, efid,
            lmd, blink, acc_emo, sync) as a list or comma-separated string; "all" = every group.
        evaluators: evaluator directory (``ua3dtalk-evaluators train --out DIR``); None = none (the
            metrics needing one are skipped with a warning).
        every_n_epochs: costly groups (all but PSNR/SSIM) run every n-th validation run (and at test).
        lpips_random_backbone: LPIPS with a seeded random AlexNet, logged as ``lpips_randbackbone``
            (smoke runs without the AlexNet file); otherwise a missing file skips LPIPS with a warning.
        syncnet: explicit SyncNet weights (default: the evaluator directory's).
        threedmm: TorchScript 3DMM regressor for ``efid_3dmm`` (optional).
        max_clips: score at most this many clips of the split (None = all).
        max_frames: at most this many (first) frames per clip (None = all).
        num_images: side-by-side frames logged per evaluation (first frame of the first clips).
        out_dir: where ``metrics.json`` and ``metric_images/`` go; default the trainer's
            ``default_root_dir`` (the run directory of ``ua3dtalk-train``).
        batch_size: frames rendered per forward call.
        on_validation / on_test: evaluate at the end of validation / test runs.
        allow_overlap: score clips the evaluators were trained on (refused by default, at setup, naming
            the clips: :func:`~ua3dtalk.data.splits.eval_protocol`); ``metrics.json`` records the
            protocol under ``eval_protocol`` either way.
    """

    def __init__(self, metrics: Union[str, Sequence[str], None] = "all", evaluators: Optional[str] = None,
                 every_n_epochs: int = 1, lpips_random_backbone: bool = False, syncnet: Optional[str] = None,
                 threedmm: Optional[str] = None, max_clips: Optional[int] = None, max_frames: Optional[int] = None,
                 num_images: int = 3, out_dir: Optional[str] = None, batch_size: int = 8,
                 on_validation: bool = True, on_test: bool = True, allow_overlap: bool = False):
        super().__init__()
        self.metrics = parse_metrics(list(metrics) if not isinstance(metrics, str) and metrics is not None
                                     else metrics)
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be ≥ 1, got {every_n_epochs}")
        self.evaluators_dir = evaluators
        self.every_n_epochs = int(every_n_epochs)
        self.lpips_random_backbone = bool(lpips_random_backbone)
        self.syncnet, self.threedmm = syncnet, threedmm
        self.max_clips, self.max_frames = max_clips, max_frames
        self.num_images, self.out_dir, self.batch_size = int(num_images), out_dir, int(batch_size)
        self.on_validation, self.on_test = bool(on_validation), bool(on_test)
        self.allow_overlap = bool(allow_overlap)
        self.protocol: Optional[dict] = None
        self._suite: Optional[MetricSuite] = None
        self._val_runs = 0
        self.last_metrics: dict = {}

    # ------------------------------------------------------------------ helpers
    @property
    def suite(self) -> MetricSuite:
        if self._suite is None:
            ev = load_evaluators(self.evaluators_dir, self.metrics, lpips_random_backbone=self.lpips_random_backbone,
                                 syncnet=self.syncnet, threedmm=self.threedmm)
            self._suite = MetricSuite(ev, self.metrics)
        return self._suite

    def check_protocol(self, dm) -> dict:
        """The run's ``eval_protocol`` (computed once): raises :class:`~ua3dtalk.data.splits.ProtocolError`
        when the evaluators were trained on a val or test clip (unless ``allow_overlap``)."""
        from ..data.splits import eval_protocol, role_clips

        if self.protocol is None:
            if getattr(dm, "clips", None) is None:
                dm.setup("fit")
            self.protocol = eval_protocol(self.evaluators_dir, role_clips(dm), allow_overlap=self.allow_overlap)
        return self.protocol

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.datamodule is not None and (self.on_validation or self.on_test):
            self.check_protocol(trainer.datamodule)

    def _run_dir(self, trainer) -> Path:
        return Path(self.out_dir if self.out_dir is not None else trainer.default_root_dir)

    def evaluate(self, trainer, pl_module, split: str, costly: bool = True) -> dict:
        """Render and score ``split``; log, write metrics.json and images. Returns ``{split/key: value}``."""
        dm = trainer.datamodule
        if dm is None:
            raise RuntimeError("MetricsCallback needs the trainer to run with a datamodule (trainer.fit(model, "
                               "datamodule=dm))")
        groups = self.metrics if costly else tuple(g for g in self.metrics if g in CHEAP_METRICS)
        if not groups:
            return {}
        protocol = self.check_protocol(dm)
        suite = self.suite
        suite.reset()
        ds, seqs = split_sequences(dm, split, self.max_clips, self.max_frames)
        was_training = pl_module.training
        pl_module.eval()
        images = []
        try:
            for seq in seqs:
                pred, gt, lms, label = render_sequence(pl_module, ds, seq, self.batch_size)
                suite.update(pred, gt, landmarks=lms, audio=seq.audio() if "sync" in groups else None,
                             emotion=label, au45=seq.au45(), name=seq.name, groups=groups)
                if len(images) < self.num_images:
                    images.append((seq.name, side_by_side(pred[0], gt[0])))
        finally:
            pl_module.train(was_training)
        values = suite.compute()
        # the LightningModule logs its own (head-masked, per-stage) `val/psnr`, used for best-checkpoint
        # tracking: the callback's full-frame whole-clip PSNR goes to `val/psnr_full`
        # rather than silently replacing it (ua3dtalk-eval's `test/psnr` is the full-frame DESIGN §8 value)
        rename = VAL_RENAMES if split == "val" else {}
        out = {f"{split}/{rename.get(k, k)}": float(v) for k, v in values.items()}
        for k, v in out.items():
            if np.isfinite(v):
                pl_module.log(k, v, batch_size=1, sync_dist=False)
        if trainer.is_global_zero:
            run_dir = self._run_dir(trainer)
            update_metrics_json(run_dir / "metrics.json", {
                **out, "eval_protocol": protocol,
                "metrics_evaluators": {f"{split}/{rename.get(k, k)}": v
                                       for k, v in suite.provenance(list(values)).items()},
                "metrics_callback": {split: {"stage": str(getattr(pl_module, "stage", "")),
                                             "global_step": int(trainer.global_step),
                                             "epoch": int(trainer.current_epoch), "clips": len(seqs),
                                             "frames": int(suite.num_frames), "costly": bool(costly),
                                             "skipped": suite.skipped}}})
            self._log_images(trainer, pl_module, split, images, run_dir)
        self.last_metrics = out
        return out

    def _log_images(self, trainer, pl_module, split: str, images, run_dir: Path) -> None:
        if not images:
            return
        from PIL import Image

        from ..utils.io import atomic_path

        d = run_dir / "metric_images"
        d.mkdir(parents=True, exist_ok=True)
        stage, step = str(getattr(pl_module, "stage", "")), int(trainer.global_step)
        for i, (name, img) in enumerate(images):
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
            with atomic_path(d / f"{split}_{stage}_step{step:06d}_{i}_{safe}.png", suffix=".png") as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
        for lg in trainer.loggers:
            try:
                if hasattr(lg, "log_image"):  # wandb
                    lg.log_image(key=f"{split}/side_by_side", images=[im for _, im in images],
                                 caption=[f"{n}: rendered | ground truth | error" for n, _ in images], step=step)
                elif hasattr(getattr(lg, "experiment", None), "add_image"):  # TensorBoard
                    for i, (_, im) in enumerate(images):
                        lg.experiment.add_image(f"{split}/side_by_side_{i}", im, step, dataformats="HWC")
            except Exception as e:  # noqa: BLE001 - an image logger failing must not stop training
                warnings.warn(f"MetricsCallback: could not log images to {type(lg).__name__}: {e}", stacklevel=2)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.on_validation or trainer.sanity_checking:
            return
        if getattr(pl_module, "stage", "fuse") not in RENDER_STAGES:
            return
        costly = self._val_runs % self.every_n_epochs == 0
        self._val_runs += 1
        self.evaluate(trainer, pl_module, "val", costly=costly)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.on_test or getattr(pl_module, "stage", "fuse") not in RENDER_STAGES:
            return
        self.evaluate(trainer, pl_module, "test", costly=True)
