"""Fault injection callbacks, instantiated by ``ua3dtalk-train`` from a Hydra override
(``+callbacks.nan._target_=robustness_faults.InjectNaN``) in the robustness tests."""
from __future__ import annotations

import lightning as L
import torch

SNAPSHOTS: dict[str, dict] = {}
"""``InjectNaN`` stores the weights it saw just before poisoning one, under its ``key``."""


class InjectNaN(L.Callback):
    """Before training batch ``at`` of a stage: remember every weight, then set one value of the
    parameter ``param`` (dotted name in the LightningModule) to NaN."""

    def __init__(self, at: int = 2, param: str = "head.face.sh", key: str = "nan"):
        self.at, self.param, self.key = int(at), str(param), str(key)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx != self.at:
            return
        SNAPSHOTS[self.key] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        p = pl_module.get_parameter(self.param)
        with torch.no_grad():
            p.view(-1)[0] = float("nan")


class EarlyBestScore(L.Callback):
    """Logs ``val/early_score`` = −(global step) at every validation: higher is better, so the first
    validation of a stage holds the best value (what a run's ``best`` must keep after a resume)."""

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            pl_module.log("val/early_score", -float(trainer.global_step))
