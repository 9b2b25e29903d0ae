"""Atomic, validated checkpoints (DESIGN §9, issue 4 "Bad input").

* :class:`AtomicCheckpointIO` — Lightning ``CheckpointIO`` that writes to a temporary file in the
  target directory, fsyncs, and ``os.replace``-s it over the old file: an interrupted write never
  leaves a truncated checkpoint, and a checkpoint whose weights contain NaN/Inf is refused (the
  previous good file stays). A failed write (disk full) raises ``OSError`` naming the file and keeps
  the previous one; temporaries left by runs killed mid-write are removed by the next save.
  Loading uses ``torch.load(weights_only=True)``.
* :class:`PeriodicCheckpoint` — saves ``last.ckpt`` every ``every_n_steps`` training batches and at
  the end of training.
* :func:`load_model_checkpoint` — weights only, with an error listing mismatched keys.
* :func:`checkpoint_position` — where a checkpoint's fit loop stood (epoch, batches done), to fast-forward
  the training order on resume.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..utils.io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint is unreadable, not finite, or does not fit the model; the message names the file."""


def _nonfinite_keys(state_dict: dict) -> list[str]:
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _os_error_in_chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        bad = _nonfinite_keys(checkpoint.get("state_dict", {}))
        if bad:
            raise CheckpointError(f"{path}: refusing to save a checkpoint with NaN/Inf in {', '.join(bad[:5])}; "
                                  "the previous checkpoint is kept")
        try:
            with atomic_path(path, suffix=".ckpt", clean_stale=True) as tmp:  # + temporaries of killed runs
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:  # disk full, quota, I/O error: temporary gone, old file untouched
            os_err = _os_error_in_chain(e)  # torch's zip writer turns a failed write into a RuntimeError
            if os_err is None:
                raise
            raise OSError(os_err.errno, f"{path}: could not write the checkpoint ({os_err.strerror or os_err}); "
                                        "the previous checkpoint is kept") from e

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        return read_checkpoint(path, map_location)


def read_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error is a bad file for the user
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
                              ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a ua3dtalk/Lightning checkpoint (no 'state_dict')")
    bad = _nonfinite_keys(ckpt["state_dict"])
    if bad:
        raise CheckpointError(f"{path}: checkpoint contains NaN/Inf in {', '.join(bad[:5])}")
    return ckpt


def load_model_checkpoint(model, path) -> dict:
    """Load the weights of ``path`` into ``model`` (a :class:`~ua3dtalk.models.module.UA3DTalk`)."""
    from ..models.module import upgrade_state_dict

    ckpt = read_checkpoint(path)
    state = upgrade_state_dict(ckpt["state_dict"])  # format 1 → 2 (the head's keys under ``head.``)
    if "mouth_color_initialised" not in state:  # written before the flag existed (2026-11-24): the mouth
        # Gaussians' colours were trained if the mouth stage had run
        done = (ckpt.get("ua3dtalk") or {}).get("stage") in ("mouth", "face", "fuse")
        state = {**state, "mouth_color_initialised": torch.tensor(done)}
    if "head.emotion_control.prototypes" in state and "head.emotion_control.recomputed" not in state:
        # written before the flag existed: the prototypes are the running means of the emotion stage
        state = {**state, "head.emotion_control.recomputed": torch.tensor(False)}
    anchors = getattr(model, "landmark_anchors", None)
    if anchors is not None and anchors.n_cells and "landmark_anchors.ata" in state \
            and "landmark_anchors.cell_ata" not in state:  # written before the per-label anchors (2026-11-24):
        # they start empty and fill from the frames of the stages still to train
        state = {**state, **{f"landmark_anchors.{k}": torch.zeros_like(v) for k, v in anchors.named_buffers()
                             if k.startswith("cell_")}}
    try:
        model.on_load_checkpoint(ckpt)
        model.load_weights(state, what=str(path))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return ckpt


def pending_log_row(trainer) -> Optional[dict]:
    """The logger row of the batch that just ended (Lightning writes it to the loggers only *after* the
    ``on_train_batch_end`` hooks): its logged values with ``epoch`` and ``step`` as the loggers will get them;
    None when it cannot be read."""
    try:
        res = trainer._results
        if res is None:
            return None
        row = {k: float(v) for k, v in res.metrics(True)["log"].items()}
        row["epoch"] = int(trainer.current_epoch)
        row["step"] = int(trainer.fit_loop.epoch_loop._batches_that_stepped)
        return row
    except Exception:  # noqa: BLE001 - a private Lightning structure: missing means "no row", never a crash
        return None


class PeriodicCheckpoint(L.Callback):
    """Save ``path`` every ``every_n_steps`` training batches and when training ends. A save at the end of a
    batch also stores that batch's logger row (``ua3dtalk_pending_log``), which Lightning logs only after the
    hook: after a kill, the resumed run puts it back into the stage's ``metrics.csv``."""

    def __init__(self, path, every_n_steps: int = 100):
        self.path = Path(path)
        self.every = max(1, int(every_n_steps))
        self._batches = 0
        self._pending: Optional[dict] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batches += 1
        if self._batches % self.every == 0:
            self._pending = pending_log_row(trainer)
            try:
                trainer.save_checkpoint(self.path, weights_only=False)  # full state (optimizers, loops): resumable
            finally:
                self._pending = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self._pending is not None:
            checkpoint["ua3dtalk_pending_log"] = dict(self._pending)

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path, weights_only=False)


def checkpoint_position(ckpt: dict) -> tuple[int, int]:
    """(epoch, completed batches of that epoch) of a Lightning checkpoint's fit loop."""
    loops = ckpt.get("loops") or {}
    fit = loops.get("fit_loop") or {}
    ep = fit.get("epoch_progress", {}).get("current", {}).get("completed", ckpt.get("epoch", 0))
    cur = fit.get("epoch_loop.batch_progress", {}).get("current", {})
    # saved in on_train_batch_end: the batch is processed (its step done) but not yet "completed"
    return int(ep), int(cur.get("processed", cur.get("completed", 0)))
