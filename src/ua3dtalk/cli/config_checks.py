"""Typed, range-checked top-level settings of ``ua3dtalk-train`` (pydantic), checked before any work starts.

Hydra gives the values as typed on the command line; :func:`check_train_config` refuses a value that is not
what its key means, naming the key: ``seed=abc``, ``val_every=0``, ``checkpoint_every=-1``,
``stage_steps.face=-3``, an unknown stage, ``data.root=null``, a non-finite or non-positive learning rate
(``model.lr_net=nan``), and any NaN / infinite number in the model or data settings. The model's and the
DataModule's own arguments are checked again by their constructors.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Stage = Literal["prior", "emotion", "mouth", "face", "fuse"]


class InterruptAt(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    stage: Stage
    step: int = Field(ge=0)


class TrainSettings(BaseModel):
    """The keys of ``train.yaml`` that the CLI itself reads."""

    model_config = ConfigDict(extra="ignore", strict=True)
    name: str = Field(min_length=1)
    seed: int = Field(ge=0, le=2**31 - 1)
    resume: bool
    cpu_allocator: Literal["reuse", "system"] = "reuse"
    stages: list[Stage] = Field(min_length=1)
    stage_steps: dict[Stage, int]
    val_every: int = Field(ge=1)
    checkpoint_every: Optional[int] = Field(default=None, ge=1)
    checkpoint_monitor: str = Field(default="val/psnr", pattern=r"^val/\S+$")
    interrupt_at: Optional[InterruptAt] = None

    @field_validator("stages")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"each stage once, got {v}")
        return v

    @field_validator("stage_steps")
    @classmethod
    def _steps(cls, v):
        bad = {k: n for k, n in v.items() if n < 1}
        if bad:
            raise ValueError(f"every stage needs ≥ 1 step, got {bad}")
        return v


def _where(loc) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "literal")))


def _nonfinite(node: Any, prefix: str) -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _nonfinite(v, f"{prefix}.{key}")]
    if isinstance(node, (list, tuple)):
        return [k for i, v in enumerate(node) for k in _nonfinite(v, f"{prefix}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{prefix}={node}"]
    return []


def _learning_rates(node: Any, prefix: str) -> list[str]:
    out = []
    if isinstance(node, dict):
        for key, v in node.items():
            k = f"{prefix}.{key}"
            if (str(key) == "lr" or str(key).startswith("lr_")) and not isinstance(v, (dict, list)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    out.append(f"{k}={v!r}")
            out += _learning_rates(v, k)
    return out


def check_train_config(cfg) -> None:
    """Raise ``ValueError`` naming the first bad key(s) of ``cfg`` (a composed ``train.yaml``)."""
    from omegaconf import OmegaConf

    top = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
           for k in TrainSettings.model_fields if k in cfg}
    try:
        TrainSettings.model_validate(top)
    except ValidationError as e:
        msgs = []
        for err in e.errors()[:3]:
            key = _where(err["loc"])
            if err.get("type") == "value_error":  # our validators name the bad values themselves
                msgs.append(f"{key}: {str(err['msg']).removeprefix('Value error, ')}")
            else:
                msgs.append(f"{key}: {str(err['msg']).lower()} (got {err.get('input')!r})")
        raise ValueError("; ".join(msgs)) from None
    data = OmegaConf.to_container(cfg.data, resolve=True) if "data" in cfg else {}
    if not isinstance(data.get("root"), str) or not data.get("root"):
        raise ValueError(f"data.root: a dataset directory is required, got {data.get('root')!r}")
    model = OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else {}
    bad = _nonfinite(model, "model") + _nonfinite(data, "data")
    if bad:
        raise ValueError(f"{bad[0].split('=')[0]}: a finite number is required, got {bad[0].split('=', 1)[1]}")
    lrs = _learning_rates(model, "model")
    if lrs:
        raise ValueError(f"{lrs[0].split('=')[0]}: a learning rate must be a positive number, got "
                         f"{lrs[0].split('=', 1)[1]}")
