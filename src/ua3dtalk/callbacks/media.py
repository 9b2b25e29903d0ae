"""Pictures and videos for the loggers (DESIGN §9): validation renders at every validation and a rendered
held-out clip after the run, so runs can be compared by eye in wandb (or TensorBoard).

* :class:`ValidationImages` — the renders the model keeps during validation (``model.val_outputs``: up to 8
  ``{pred, target}`` pairs [3,H,W] in [0,1]) as one grid per validation, ground truth above render, logged
  as ``val/renders`` to every logger that takes images (``log_image``: wandb; ``add_image``: TensorBoard).
* :func:`write_clip_video` — the first clip of a split rendered in frame order beside its ground truth, with
  the clip's own audio, as an mp4.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch


def render_grid(pairs: list[dict]) -> np.ndarray:
    """``[{pred, target}]`` ([3,H,W] in [0,1]) → uint8 [2H, n·W, 3]: ground truth row above the render row."""
    tops = [p["target"].clamp(0, 1) for p in pairs]
    bottoms = [p["pred"].clamp(0, 1) for p in pairs]
    grid = torch.cat([torch.cat(tops, dim=2), torch.cat(bottoms, dim=2)], dim=1)  # [3, 2H, nW]
    return (grid.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


class ValidationImages(L.Callback):
    """Log the model's kept validation renders as ``val/renders`` at the end of every validation."""

    def __init__(self, key: str = "val/renders"):
        self.key = key

    def on_validation_epoch_end(self, trainer, pl_module):
        pairs = list(getattr(pl_module, "val_outputs", None) or [])
        if not pairs or trainer.sanity_checking or trainer.global_rank != 0:
            return
        grid = render_grid(pairs)
        stage = getattr(pl_module, "stage", "")
        caption = f"{stage} step {trainer.global_step}: ground truth (top), render (bottom)"
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):  # wandb
                lg.log_image(key=self.key, images=[grid], step=int(trainer.global_step), caption=[caption])
            elif hasattr(getattr(lg, "experiment", None), "add_image"):  # TensorBoard
                lg.experiment.add_image(self.key, grid, int(trainer.global_step), dataformats="HWC")


def write_clip_video(model, dm, split: str, path: Path, max_frames: Optional[int] = None) -> Optional[Path]:
    """Render the first clip of ``split`` in frame order (its own audio drives it) and write ``path``: ground
    truth on the left, render on the right, the clip's audio muxed when the frames start at its beginning.
    Returns ``path``, or None when the split has no clip."""
    from ..utils.io import write_video
    from .metrics import render_sequence, split_sequences

    dataset, seqs = split_sequences(dm, split, max_clips=1, max_frames=max_frames)
    if not seqs:
        return None
    seq = seqs[0]
    with torch.no_grad():
        pred, gt, _, _ = render_sequence(model, dataset, seq)
    frames = torch.cat([gt, pred], dim=3).clamp(0, 1)  # [n, 3, H, 2W]
    arr = (frames.permute(0, 2, 3, 1).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    pos = np.asarray(seq.positions)
    contiguous = len(pos) > 0 and pos[0] == 0 and np.all(np.diff(pos) == 1)
    wav = getattr(seq.clip, "wav_path", None) if contiguous else None
    write_video(path, list(arr), fps=25, audio_path=wav)
    return Path(path)
