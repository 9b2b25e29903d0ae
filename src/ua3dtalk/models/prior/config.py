"""Typed configuration of :class:`~ua3dtalk.models.prior.module.PriorExtraction` (DESIGN §4.3), checked once
(:mod:`ua3dtalk.utils.typed_config`); the field names are the keys of ``model.prior`` in the experiment yamls."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ...utils.typed_config import check_config


@dataclass(frozen=True)
class PriorConfig:
    """Options of :class:`~ua3dtalk.models.prior.module.PriorExtraction` (besides the data-given sizes
    ``in_channels``, ``expr_dim``, ``context_channels``); each is documented below it."""

    mouth_dims: tuple[int, ...] = (0, 1, 2)
    """indices of the mouth coefficients in ``expr`` (default jaw_open, lip_round, lip_spread of the synthetic
    generator)."""
    window: int = 16
    """steps per audio window."""
    context: int = 50
    """frames of the style context (50 ≈ 2 s)."""
    dim: int = 64
    """size of f_content, f_style, f_prior."""
    sync_dim: int = 64
    """size of the sync embedding space."""
    lip_dim: int = 40
    """size ``D_lip`` of the lip target (40 = mouth landmarks 48–67 × (x, y))."""
    hidden: int = 128
    """width of the hidden layers."""
    temperature: float = 0.07
    """InfoNCE temperature (> 0)."""
    w_sync: float = 1.0
    w_mouth: float = 1.0
    w_recon: float = 1.0
    w_decor: float = 0.1
    w_emotion: float = 0.0
    """(w_sync, w_mouth, w_recon, w_decor, w_emotion) loss weights in ``total`` (``w_emotion = 0``: the paper's
    prior, whose style view also encodes the emotion heard in the audio)."""
    decor_min_batch: Optional[int] = None
    """smallest batch for which ``decor`` is computed (default ``2·dim``)."""
    recon_dims: Union[str, tuple[int, ...]] = "all"
    """the coefficients of ``expr`` that L_recon reconstructs: ``all`` (the paper), ``non_emotional`` (all but
    ``emotional_dims``; an error when those are unknown), ``auto`` (``non_emotional`` when ``emotional_dims`` is
    given, else ``all`` — the experiment configs' choice), or a list of column indices."""
    emotional_dims: Optional[tuple[int, ...]] = None
    """the columns of ``expr`` the dataset marks as emotional (the synthetic generator lists them,
    ``data_info.emotional_expr_dims``), or None when unknown (real video / MEAD)."""
    pretrained: Optional[str] = None
    """optional weight file for the content/style encoders, loaded at construction (``load_pretrained``)."""
    freeze_pretrained: bool = False
    """freeze the loaded encoders (``requires_grad=False``)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        # lists become tuples (hashable, frozen); the values are checked by resolve_recon_dims, which names them
        for name in ("recon_dims", "emotional_dims"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, bytes, tuple)) and hasattr(v, "__iter__"):
                object.__setattr__(self, name, tuple(v))


__all__ = ["PriorConfig"]
