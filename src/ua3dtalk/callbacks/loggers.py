"""Run loggers (DESIGN §9.1): one wandb run per training run, and per-stage CSV logs that survive a resume.

* :func:`wandb_mode` — ``online`` / ``offline`` / ``disabled`` from ``WANDB_MODE``, the configured mode and
  whether an API key is configured;
* :class:`WandbRunLogger` — Lightning's ``WandbLogger`` spanning several stages (continuous x-axis, run id
  kept in ``wandb_id.txt`` so that ``resume=true`` continues the same wandb run);
* :func:`restore_csv_rows` — keep the rows a Lightning ``CSVLogger`` logged up to a checkpoint when the
  stage resumes from it (Lightning's CSV writer would delete the file).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ..utils.io import atomic_write_text

__all__ = ["wandb_mode", "WandbRunLogger", "read_csv_rows", "restore_csv_rows"]


def wandb_mode(mode: str = "auto") -> str:
    """``online`` / ``offline`` / ``disabled``: ``WANDB_MODE`` wins; ``auto`` is online only when an API
    key is configured (``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``), else offline."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("offline", "dryrun"):
        return "offline"
    if env in ("disabled", "online"):
        return env
    if mode not in ("auto", None, ""):
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        rc = netrc.netrc(os.environ.get("NETRC") or None)
        if any("api.wandb.ai" in h for h in rc.hosts):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


class WandbRunLogger(WandbLogger):
    """:class:`~lightning.pytorch.loggers.WandbLogger` for one training run spanning several stages.

    One wandb run per training run: the x-axis (``trainer/global_step``) continues across stages
    (``step_offset`` is set by the curriculum), ``mode="auto"`` is offline unless an API key is configured
    (:func:`wandb_mode`), and the run id is stored in ``<save_dir>/wandb_id.txt`` so that
    ``resume=true`` continues the same wandb run.

    Args:
        mode: ``auto | online | offline | disabled``.
        project, entity, group, name, job_type, tags, save_dir: as ``wandb.init``.
        **kwargs: further ``wandb.init`` / WandbLogger arguments.
    """

    def __init__(self, mode: str = "auto", project: str = "ua3dtalk", entity: Optional[str] = None,
                 group: Optional[str] = None, name: Optional[str] = None, job_type: str = "train",
                 tags: Optional[list] = None, save_dir: str = ".", **kwargs):
        self.mode = wandb_mode(mode)
        save = Path(save_dir)
        id_file = save / "wandb_id.txt"
        run_id = kwargs.pop("id", None)
        if run_id is None and self.mode != "disabled":
            if id_file.is_file():
                run_id = id_file.read_text().strip() or None
            if run_id is None:
                import secrets

                run_id = secrets.token_hex(4)
                if rank_zero_only.rank == 0:
                    save.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(id_file, run_id + "\n")
        extra = {"mode": "disabled"} if self.mode == "disabled" else {}
        super().__init__(name=name, save_dir=str(save), offline=self.mode == "offline", project=project,
                         entity=entity, group=group, job_type=job_type, tags=list(tags or []), id=run_id,
                         **extra, **kwargs)
        self.step_offset = 0

    @rank_zero_only
    def log_metrics(self, metrics, step: Optional[int] = None) -> None:
        super().log_metrics(metrics, None if step is None else int(step) + self.step_offset)

    @rank_zero_only
    def set_summary(self, values: dict) -> None:
        """Write ``values`` into the run summary."""
        for k, v in values.items():
            self.experiment.summary[k] = v

    @rank_zero_only
    def finish(self) -> None:
        """Close the wandb run (the next run in this process starts a new one)."""
        if self._experiment is not None:
            self._experiment.finish()
            self._experiment = None


def read_csv_rows(path: Path, until_step: int) -> list[dict]:
    """Rows of a Lightning ``metrics.csv`` logged at ``step ≤ until_step`` (values as written, blanks dropped)."""
    import csv

    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                if int(float(r.get("step") or -1)) > until_step:
                    continue
            except ValueError:
                continue
            row = {k: v for k, v in r.items() if v not in ("", None)}  # as written: the log is rewritten verbatim
            row["step"] = int(float(row["step"]))
            rows.append(row)
    return rows


def restore_csv_rows(logger, keep_until_step: Optional[int] = None, pending: Optional[dict] = None,
                     is_main: bool = True):
    """When resuming (``keep_until_step`` = the checkpoint's global step), queue again the rows the CSV
    ``logger`` wrote up to that step — or, with ``pending`` (the checkpointed batch's own row), the rows
    before it and then that row; later rows are logged again by the resumed run. Returns ``logger``."""
    path = Path(logger.log_dir) / "metrics.csv"
    if keep_until_step is not None and path.is_file() and is_main:
        if pending is not None:  # rows up to the checkpointed batch, then that batch's own row
            rows = [r for r in read_csv_rows(path, int(pending["step"])) if r["step"] < int(pending["step"])]
            rows.append({k: v for k, v in pending.items()})
        else:
            rows = read_csv_rows(path, int(keep_until_step))
        exp = logger.experiment  # creating the writer deletes the old file: its rows are queued again
        exp.metrics[:0] = rows
    return logger
