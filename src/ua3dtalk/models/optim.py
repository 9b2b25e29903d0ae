"""Optimisation of the render stages' networks (DESIGN §4.5 "Optimisation per group"): the parameter groups
(plane grids vs MLPs) and their warm-up/decay schedule. Used by :class:`~ua3dtalk.models.module.UA3DTalk`."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .emotion import EmotionField
from .fields import PlaneField

__all__ = ["net_param_groups", "net_lr_factor", "set_net_lr"]


def net_param_groups(nets: Sequence[nn.Module], lr_net: float, lr_grid: float) -> list[dict]:
    """Adam parameter groups of the render stages' networks: ``grid`` (plane fields: every parameter of a
    :class:`~ua3dtalk.models.fields.PlaneField`, and the emotion field's codebooks) at ``lr_grid`` and ``mlp``
    (everything else) at ``lr_net``. Each group records its ``base_lr`` for the schedule; empty groups are
    left out."""
    grid_ids = set()
    for net in nets:
        for m in net.modules():
            if isinstance(m, PlaneField):
                grid_ids.update(id(p) for p in m.parameters())
            if isinstance(m, EmotionField):
                grid_ids.update(id(p) for p in m.codebooks.parameters())
    seen, grid, mlp = set(), [], []
    for net in nets:
        for p in net.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            (grid if id(p) in grid_ids else mlp).append(p)
    groups = [{"params": ps, "lr": lr, "base_lr": lr, "name": f"net_{name}"}
              for name, ps, lr in (("grid", grid, lr_grid), ("mlp", mlp, lr_net)) if ps]
    return groups


def net_lr_factor(step: int, span: int, warmup: int, final: float) -> float:
    """Multiplier of the groups' ``base_lr`` at deformation step ``step`` of a stage of ``span`` such steps:
    linear warm-up over ``warmup`` steps, times an exponential decay reaching ``final`` at the end."""
    step = max(step, 0)
    t = min(step / max(span, 1), 1.0)
    return min(1.0, (step + 1) / max(warmup, 1)) * final ** t


def set_net_lr(opt, factor: float) -> None:
    """``lr = base_lr · factor`` for every group of ``opt`` that records a ``base_lr``."""
    for g in opt.param_groups:
        if "base_lr" in g:
            g["lr"] = g["base_lr"] * factor
