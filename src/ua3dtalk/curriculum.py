"""The stage curriculum (DESIGN §9.1): train the stages in order, each from the previous one's weights.

:func:`train_stages` runs the stages of a :class:`Curriculum` (plain values, no Hydra config) on a built
model and DataModule: per stage a Lightning trainer from the caller's ``make_trainer`` factory, the
stage's CSV logger from ``stage_logger``, ``checkpoints/<stage>/last.ckpt`` (atomic, every
``checkpoint_every`` steps and at the end), ``best.ckpt`` of the last rendering stage, and
``checkpoints/<stage>/done.json`` (the stage's final validation metrics). With ``resume``, finished stages
are taken from their ``last.ckpt`` and an interrupted stage continues from its ``last.ckpt`` with the same
result as an uninterrupted run (see :mod:`ua3dtalk.callbacks.training` and
:mod:`ua3dtalk.data.epoch_sampler`).

This module imports no torch at import time (:class:`SimulatedInterruption`, :func:`is_better` are used
while parsing arguments); the training itself imports Lightning.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .constants import STAGES

__all__ = ["Curriculum", "CurriculumResult", "SimulatedInterruption", "train_stages", "active_stages", "is_better",
           "best_checkpoint_callback", "world_and_rank", "LOWER_IS_BETTER"]

LOWER_IS_BETTER = ("mse", "lpips", "fid", "lmd", "loss", "sync_d", "syncd", "error", "err", "mae", "l1")
"""Metric names containing one of these are minimised (best = min); all others are maximised."""


class SimulatedInterruption(RuntimeError):
    """Raised by ``interrupt_at={stage, step}`` after that step's checkpoint (tests of ``resume=true``)."""


@dataclass
class Curriculum:
    """What :func:`train_stages` runs (plain values).

    Args:
        run_dir: the run directory (``checkpoints/<stage>/`` is written under it).
        stages: the stages to run, in order (see :func:`active_stages`).
        stage_steps: optimisation steps of each stage.
        seed: the run's seed (the random state of a step is derived from (seed, stage, step)).
        val_every: validation interval in training batches.
        checkpoint_every: ``last.ckpt`` interval in training batches (0: ``val_every``).
        resume: continue from the checkpoints of an interrupted run.
        checkpoint_monitor: the ``val/*`` metric whose best value ``best.ckpt`` keeps.
        interrupt_at: ``(stage, step)`` of a simulated interruption, or None.
        planned_world: processes the trainer will start (sizes the first epoch before the trainer exists).
        hparams: logged to every stage's CSV logger (with ``stage``).
        prog: the prefix of progress messages.
    """

    run_dir: Path
    stages: Sequence[str]
    stage_steps: dict
    seed: int
    val_every: int
    checkpoint_every: int = 0
    resume: bool = False
    checkpoint_monitor: str = "val/psnr"
    interrupt_at: Optional[tuple] = None
    planned_world: int = 1
    hparams: dict = field(default_factory=dict)
    prog: str = "ua3dtalk-train"


@dataclass
class CurriculumResult:
    """What :func:`train_stages` returns: per-stage records, the run's final and best ``val/*`` values."""

    stages: dict
    final: dict
    best: dict
    checkpoint: Optional[Path]
    world_size: int = 1
    rank: int = 0

    def summary(self) -> dict:
        """The ``metrics.json`` entries of the curriculum (after ``stages``)."""
        return {**self.final, "best": self.best, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "best_checkpoint": self.stages[list(self.stages)[-1]].get("best_checkpoint") if self.stages else None,
                "world_size": self.world_size}


def is_better(key: str, new: float, old: Optional[float]) -> bool:
    """Is ``new`` a better value of metric ``key`` than ``old`` (None / non-finite: any finite value is)?"""
    if old is None or not math.isfinite(old):
        return math.isfinite(new)
    low = any(s in key.lower() for s in LOWER_IS_BETTER)
    return new < old if low else new > old


def world_and_rank(trainer=None) -> tuple[int, int]:
    """(world size, rank) of ``trainer``, else from the launcher's environment."""
    if trainer is not None:
        return int(trainer.world_size), int(trainer.global_rank)
    env = os.environ
    rank = env.get("RANK", env.get("SLURM_PROCID", env.get("LOCAL_RANK", 0)))
    return int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1))), int(rank)


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def active_stages(stages: Sequence[str], model, prog: str = "ua3dtalk-train") -> list[str]:
    """``stages`` minus the stages whose module is absent (prior / emotion ablations)."""
    out = []
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"stages: unknown stage {s!r}; choose from {', '.join(STAGES)}")
        if (s == "prior" and model.prior is None) or (s == "emotion" and model.emotion is None):
            print(f"{prog}: stage {s} skipped (model.{s} is not configured)", flush=True)
            continue
        out.append(s)
    return out


def best_checkpoint_callback(monitor: Optional[str], stage: str, stages: Sequence[str], ckpt_dir: Path):
    """Lightning's ``ModelCheckpoint`` keeping ``<ckpt_dir>/best.ckpt``, the weights with the best
    ``monitor`` (default ``val/psnr``) seen at validation during the last stage — the stage whose
    weights are the finished model — saved through the project's atomic checkpoint IO; ``None`` for other
    stages and when the last stage does not render (prior / emotion only)."""
    if stage != stages[-1] or stage in ("prior", "emotion"):
        return None
    from lightning.pytorch.callbacks import ModelCheckpoint

    monitor = str(monitor or "val/psnr")
    return ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=monitor,
                           mode="min" if any(t in monitor.lower() for t in LOWER_IS_BETTER) else "max",
                           save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
                           save_on_train_epoch_end=False)


def _read_done(done: Path, stage: str) -> dict:
    try:
        rec = json.loads(done.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{done}: the record of the finished stage {stage} is not readable JSON ({e}); "
                         "delete it to train the stage again") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{done}: the record of the finished stage {stage} is not a JSON object; delete "
                         "it to train the stage again")
    return rec


def train_stages(cur: Curriculum, model, dm, *, make_trainer: Callable[..., Any],
                 stage_logger: Callable[..., Any], run_loggers: Sequence = (),
                 user_callbacks: Callable[[], list] = list, is_main: bool = True) -> CurriculumResult:
    """Train the stages of ``cur`` on ``model`` / ``dm`` (both built, ``dm`` set up).

    ``make_trainer(**kwargs)`` builds a Lightning trainer with the given arguments (max_steps, logger,
    callbacks, plugins, …) added to the caller's trainer settings; ``stage_logger(stage, keep_until_step=,
    pending=)`` the stage's CSV logger (rows up to a resumed checkpoint kept); ``user_callbacks()`` further
    callbacks, built again for every stage. A non-finite loss propagates as the model's
    ``NonFiniteLossError`` with the attribute ``stage``.
    """
    import torch

    from .callbacks.checkpoint import (AtomicCheckpointIO, PeriodicCheckpoint, checkpoint_position,
                                       load_model_checkpoint, read_checkpoint)
    from .callbacks.loggers import WandbRunLogger
    from .callbacks.media import ValidationImages
    from .callbacks.training import ValHistory, state_fingerprint, training_callbacks
    from .data.epoch_sampler import make_train_loader
    from .models.module import NonFiniteLossError
    from .utils.io import atomic_write_json

    stages = list(cur.stages)
    run_dir = Path(cur.run_dir)
    records: dict[str, dict] = {}
    best: dict[str, float] = {}
    step_offset = 0
    prev_ckpt: Optional[Path] = None
    every = int(cur.checkpoint_every or cur.val_every)
    trainer = None
    for stage in stages:
        steps = int(cur.stage_steps[stage])
        ckpt_dir = run_dir / "checkpoints" / stage
        done = ckpt_dir / "done.json"
        last = ckpt_dir / "last.ckpt"
        if cur.resume and done.is_file():  # finished before the interruption: take its weights
            done_rec = _read_done(done, stage)
            load_model_checkpoint(model, last)
            records[stage] = done_rec
            best.update(done_rec.get("best", {}))  # later stages define the run's keys
            step_offset += int(done_rec.get("global_step", 0))
            prev_ckpt = last
            print(f"{cur.prog}: stage {stage} already done ({done}); resuming after it", flush=True)
            continue
        if prev_ckpt is not None and cur.resume:
            load_model_checkpoint(model, prev_ckpt)
        model.stage = stage
        model.max_steps = steps
        dm.stage = stage
        n_opt = len(model._optimizers_for_stage())
        resume_ckpt = last if (cur.resume and last.is_file()) else None
        start_epoch = skip = 0
        resume_step = pending_row = None
        if resume_ckpt is not None:
            ck = read_checkpoint(resume_ckpt)
            start_epoch, skip = checkpoint_position(ck)
            resume_step = int(ck.get("global_step", 0))
            pending_row = ck.get("ua3dtalk_pending_log")
            del ck
            print(f"{cur.prog}: stage {stage}: resuming from {resume_ckpt} (epoch {start_epoch}, "
                  f"batch {skip})", flush=True)
        csv = stage_logger(stage, keep_until_step=resume_step, pending=pending_row)
        loggers = [csv] + list(run_loggers)
        for lg in loggers:
            if isinstance(lg, WandbRunLogger):
                lg.step_offset = step_offset
        if is_main:
            csv.log_hyperparams({"stage": stage, **cur.hparams})

        t_wall, t_cpu = time.perf_counter(), cpu_seconds()
        n_train = len(make_train_loader(dm, 0, cur.planned_world))
        history = ValHistory()
        best_ckpt = best_checkpoint_callback(cur.checkpoint_monitor, stage, stages, ckpt_dir)
        images = [ValidationImages()] if run_loggers else []  # wandb / TensorBoard: renders every validation
        interrupt = cur.interrupt_at
        callbacks = ([PeriodicCheckpoint(last, every_n_steps=every)] + ([best_ckpt] if best_ckpt else [])
                     + training_callbacks(cur.seed, stage, cur.planned_world,
                                          int(interrupt[1]) if interrupt and interrupt[0] == stage else None)
                     + list(user_callbacks()) + images + [history])
        trainer = make_trainer(
            max_steps=steps * n_opt, logger=loggers, default_root_dir=str(run_dir),
            enable_checkpointing=best_ckpt is not None, plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,
            val_check_interval=max(1, min(int(cur.val_every), n_train)), check_val_every_n_epoch=1,
            callbacks=callbacks,
        )
        world, rank = int(trainer.world_size), int(trainer.global_rank)
        is_main = rank == 0
        dm.train_dataloader = (lambda _dm=dm, _r=rank, _w=world, _e=start_epoch, _s=skip:  # noqa: E731
                               make_train_loader(_dm, _r, _w, _e, _s))
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
        except NonFiniteLossError as e:
            e.stage = stage
            raise
        finally:
            del dm.train_dataloader  # back to the DataModule's method
        ctl = model.emotion_control
        if stage == "emotion" and model.emotion is not None and ctl is not None and not bool(ctl.recomputed):
            # resumed from a checkpoint taken after the stage's last step: fit had nothing left to run and
            # on_train_end (which recomputes the prototypes with the final student) did not fire
            model.recompute_emotion_prototypes(dm)
        res = trainer.validate(model, datamodule=dm, verbose=False)
        stage_metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}
        stage_best: dict[str, float] = {}
        for rec in history.history + [stage_metrics]:
            for k, v in rec.items():
                if k.startswith("val/") and is_better(k, v, stage_best.get(k)):
                    stage_best[k] = v
        best.update(stage_best)  # a key's best is that of the last stage reporting it (masks differ per stage)
        stage_metrics.update({"steps": steps, "global_step": int(trainer.global_step), "best": stage_best,
                              "seconds": round(time.perf_counter() - t_wall, 2),
                              "cpu_seconds": round(cpu_seconds() - t_cpu, 2)})
        trainer.save_checkpoint(last)
        if best_ckpt is not None and best_ckpt.best_model_path:
            stage_metrics["best_checkpoint"] = {"path": best_ckpt.best_model_path, "monitor": best_ckpt.monitor,
                                                "score": float(best_ckpt.best_model_score)}
        if is_main:
            atomic_write_json(done, stage_metrics)
        records[stage] = stage_metrics
        step_offset += int(trainer.global_step)
        prev_ckpt = last
        torch.set_grad_enabled(True)
    final = {}
    for stage in stages:  # later stages override earlier ones for the same key
        final.update({k: v for k, v in records[stage].items() if k.startswith(("val/", "health/", "fusion_weight/"))})
    world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
    if world > 1:
        atomic_write_json(run_dir / "fingerprints" / f"rank{rank}.json",
                          {"rank": rank, "world_size": world, "sha256": state_fingerprint(model),
                           "num_face": len(model.face), "num_mouth": len(model.mouth)})
    return CurriculumResult(records, final, best, prev_ckpt, world, rank)


def report_non_finite(e: BaseException, prog: str = "ua3dtalk-train") -> None:
    """Print a non-finite loss of :func:`train_stages` as ``<prog>: stage <stage>: <message>`` on stderr."""
    print(f"{prog}: stage {getattr(e, 'stage', '?')}: {e}", file=sys.stderr)
