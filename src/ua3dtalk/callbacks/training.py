"""Callbacks of every training stage (DESIGN §9.1): reproducible, resumable, multi-process training.

* :class:`StepReseed` — re-seeds torch / numpy / random from (seed, stage, step) before every step
  (:func:`step_seed`), so a resumed run draws exactly what an uninterrupted one does;
* :class:`DensityState` — keeps the density-control statistics in the checkpoint;
* :class:`DistributedSync` — DDP gradient averaging over every trained parameter (also the Gaussians
  created by densification, which DDP's reducer does not know) and the density statistics summed over
  ranks before densifying;
* :class:`Interrupt` — raises :class:`~ua3dtalk.curriculum.SimulatedInterruption` after a given step
  (tests of ``resume=true``);
* :class:`ValHistory` — the stage's validation results, kept in the checkpoint for resume.

:func:`training_callbacks` builds the list added to every stage; :func:`state_fingerprint` hashes a
model's weights (comparing ranks / runs).
"""
from __future__ import annotations

import hashlib
from typing import Optional

import lightning as L
import numpy as np
import torch

from ..curriculum import SimulatedInterruption

__all__ = ["StepReseed", "DensityState", "DistributedSync", "Interrupt", "ValHistory", "training_callbacks",
           "step_seed", "density_controls", "state_fingerprint"]


def step_seed(seed: int, stage: str, step: int) -> int:
    """The seed of one training step: a hash of (seed, stage, step) → [0, 2³¹)."""
    h = hashlib.blake2b(f"{seed}/{stage}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % (2 ** 31 - 1)


def density_controls(model) -> dict:
    """The model's density controls (``face_density`` / ``mouth_density``) that exist."""
    return {k: getattr(model, k, None) for k in ("face_density", "mouth_density")
            if getattr(model, k, None) is not None}


class StepReseed(L.Callback):
    """Re-seed torch / numpy / random from (seed, stage, step) before every training step: the
    random draws of a step (ensemble members, densification) do not depend on what ran before, so
    an interrupted and resumed run draws exactly what an uninterrupted one does, and every DDP
    rank draws the same."""

    def __init__(self, seed: int, stage: str):
        self.seed, self.stage = int(seed), stage

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import random

        s = step_seed(self.seed, self.stage, int(trainer.global_step))
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


class DensityState(L.Callback):
    """Keep the density-control statistics (accumulated since the last densification) in the
    checkpoint, and start every stage with fresh statistics."""

    def on_fit_start(self, trainer, pl_module):
        if trainer.ckpt_path is None:
            for dc in density_controls(pl_module).values():
                dc.reset_statistics()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["ua3dtalk_density"] = {k: dc.state_dict() for k, dc in density_controls(pl_module).items()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        for k, state in (checkpoint.get("ua3dtalk_density") or {}).items():
            dc = getattr(pl_module, k, None)
            if dc is not None:
                # checkpoints before the public interface stored the private attribute names
                dc.load_state_dict({f.lstrip("_"): t for f, t in state.items()}, pl_module.device)


class DistributedSync(L.Callback):
    """DDP: average the gradients of every trained parameter (Gaussians replaced by densification
    are unknown to DDP's reducer), and sum the density statistics over ranks before densifying."""

    def setup(self, trainer, pl_module, stage=None):  # noqa: ARG002 (Lightning hook)
        import torch.distributed as dist

        def all_reduce(t, op: str) -> None:
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)

        for dc in density_controls(pl_module).values():
            dc.stats_reducer = all_reduce

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        w = dist.get_world_size()
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(w)


class Interrupt(L.Callback):
    """Raise :class:`~ua3dtalk.curriculum.SimulatedInterruption` once the stage has done ``at_step`` steps."""

    def __init__(self, at_step: int, stage: str = ""):
        self.at_step, self.stage = int(at_step), stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.stage_step() >= self.at_step:
            raise SimulatedInterruption(f"simulated interruption after step {self.at_step} of stage {self.stage}")


class ValHistory(L.Callback):
    """The stage's validation results (``history``: one ``val/*`` dict per validation, sanity checks
    excluded), kept in the checkpoint for resume."""

    def __init__(self):
        self.history: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.history.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})

    def state_dict(self):
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict):
        self.history[:] = [dict(r) for r in state_dict.get("history", [])]


def training_callbacks(seed: int, stage: str, world: int = 1, interrupt_at_step: Optional[int] = None) -> list:
    """The callbacks of every stage: reseeding, density state, DDP sync (``world > 1``), and a simulated
    interruption after ``interrupt_at_step`` steps of this stage (None: none)."""
    cbs = [StepReseed(seed, stage), DensityState()]
    if world > 1:
        cbs.append(DistributedSync())
    if interrupt_at_step is not None:
        cbs.append(Interrupt(interrupt_at_step, stage))
    return cbs


def state_fingerprint(model) -> str:
    """SHA-256 over the model's state dict (names, shapes, float32 bytes), for comparing ranks/runs."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if isinstance(v, torch.Tensor):
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            t = v.detach().cpu().contiguous()
            h.update((t.float() if t.is_floating_point() else t).numpy().tobytes())
    return h.hexdigest()
