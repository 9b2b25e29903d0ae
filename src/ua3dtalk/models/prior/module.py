"""Prior Extraction (DESIGN §4): content / style encoders, FuseNet, their losses and weight files.

Data flow for a batch of ``B`` video frames::

    audio window  [B,16,C]  ──ContentEncoder──▶ f_content [B,64] ──▶ mouth_pred [B,len(mouth_dims)]
                                                        │        └──▶ sync_emb  [B,sync_dim] (unit norm)
    audio context [B,50,C'] ──StyleEncoder────▶ f_style   [B,64]
                                    (f_content, f_style) ──FuseNet──▶ f_prior [B,64], expr_pred [B,K]

The *audio context* of frame ``i`` is the per-frame features of frames ``i-25 … i+24`` (≈2 s at
25 fps): :func:`frame_features` turns the §5.3 windows of a clip into one feature per frame (the mean
of the two 50 Hz steps that belong to the frame, ``window[8:10]``), :func:`audio_context` gathers the
neighbourhood, replicating the first/last frame at the clip's edges.

Losses (:meth:`PriorExtraction.losses`), all means over the batch:

* ``sync``  — InfoNCE of the audio sync embedding against a visual lip embedding of the *same* frame
  (:meth:`PriorExtraction.lip_embedding`, a small learned projection of any ``[B,D_lip]`` lip target:
  mouth landmarks 48–67 mean-centred and divided by the face size, or a flattened downsampled mouth
  crop); negatives are the other frames of the batch (sample neighbouring frames of a clip together
  so that temporally shifted frames are among them) and optional explicit shifted negatives;
* ``mouth`` — MSE of ``mouth_pred`` against ``expr[:, mouth_dims]``;
* ``recon`` — MSE of ``expr_pred`` (read out of ``f_prior``) against the coefficients ``recon_dims`` of
  ``expr`` (L_recon; the paper: all of them). ★ ``recon_dims="non_emotional"`` (``"auto"``: when the dataset
  says which coefficients are emotional) leaves the emotional coefficients out. Why: only the emotion
  heard in the prosody predicts them, so reconstructing them makes f_style (the 2-s context) an emotion
  classifier — the style view then carries the emotion, gets the fusion weight and competes with the
  emotion view and the emotion label at inference. Without them L_recon asks the prior for the
  articulation (and blinks), which the audio does determine. This removes the *incentive* to encode the
  emotion; the ``emotion`` term below actively removes what is left (both can be on);
* ``decor`` — :func:`~ua3dtalk.models.prior.losses.decorrelation_penalty` between f_content and f_style,
  computed only for batches of at least ``decor_min_batch`` frames (default ``2·dim`` = 128): with
  fewer samples than feature dimensions any two feature sets look correlated and the penalty only
  injects noise (it is 0 then, and a warning says so once);
* ``emotion`` — ★ :func:`~ua3dtalk.models.prior.losses.emotion_invariance_penalty` of f_content plus that
  of f_style against the frames' emotion labels (batches of an emotional dataset; 0 without labels): the
  prior carries speech content and speaking style, the emotion view alone carries the emotion;
* ``total`` — ``w_sync·sync + w_mouth·mouth + w_recon·recon + w_decor·decor + w_emotion·emotion``.

Weight files: :meth:`PriorExtraction.save_pretrained` writes the content and style encoders
(``content.*``, ``style.*`` keys) as safetensors or a ``torch.save`` state dict;
:meth:`PriorExtraction.load_pretrained` reads those, a full ``PriorExtraction`` state dict, or a
Lightning checkpoint whose keys carry a prefix (``prior.content.*``) — with ``weights_only=True``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...utils.typed_config import make_config
from .checks import expect
from .config import PriorConfig
from .encoders import ContentEncoder, FuseNet, StyleEncoder
from .io import WeightsError, load_checked, read_state_dict, write_state_dict
from .losses import decorrelation_penalty, emotion_invariance_penalty, info_nce

__all__ = ["PriorOutput", "PriorExtraction", "frame_features", "audio_context", "resolve_recon_dims",
           "RECON_MODES"]

PART_NAMES = ("content", "style")
RECON_MODES = ("all", "non_emotional", "auto")


def _index_list(v, name: str, k: int) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ValueError(f"{name}: expected a list of column indices of expr, got {v!r}")
    out = []
    for i in v:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) and not (
                isinstance(i, torch.Tensor) and i.numel() == 1 and not i.is_floating_point()):
            raise ValueError(f"{name}: indices must be integers, got {i!r}")
        out.append(int(i))
    bad = [i for i in out if not 0 <= i < k]
    if bad:
        raise ValueError(f"{name}: indices {bad} out of range for expr_dim={k}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: repeated indices in {out}")
    return tuple(out)


def resolve_recon_dims(recon_dims: Union[str, Sequence[int]], emotional_dims: Optional[Sequence[int]],
                       expr_dim: int) -> tuple[str, tuple[int, ...], Optional[tuple[int, ...]]]:
    """``(mode, columns, emotional)`` of the ``recon_dims`` option (see :class:`PriorExtraction`):
    ``mode`` ∈ {all, non_emotional, explicit}, ``columns`` the sorted columns L_recon reconstructs,
    ``emotional`` the validated ``emotional_dims`` (None = unknown). ``ValueError`` names a bad value."""
    emotional = None if emotional_dims is None else tuple(sorted(_index_list(emotional_dims, "emotional_dims",
                                                                             expr_dim)))
    if isinstance(recon_dims, str):
        mode = recon_dims.strip().lower()
        if mode not in RECON_MODES:
            raise ValueError(f"recon_dims must be one of {', '.join(RECON_MODES)} or a list of column indices, "
                             f"got {recon_dims!r}")
        if mode == "auto":
            mode = "all" if emotional is None else "non_emotional"
        if mode == "all":
            return mode, tuple(range(expr_dim)), emotional
        if emotional is None:
            raise ValueError("recon_dims='non_emotional' needs emotional_dims (the dataset does not say which "
                             "expression coefficients are emotional); use recon_dims='all' or a list of columns")
        cols = tuple(i for i in range(expr_dim) if i not in set(emotional))
        if not cols:
            raise ValueError(f"recon_dims='non_emotional': every one of the {expr_dim} coefficients is emotional; "
                             "nothing left for L_recon")
        return mode, cols, emotional
    cols = tuple(sorted(_index_list(recon_dims, "recon_dims", expr_dim)))
    if not cols:
        raise ValueError("recon_dims: empty list (set w_recon=0 to switch L_recon off)")
    return "explicit", cols, emotional


class PriorOutput(NamedTuple):
    """Outputs of :meth:`PriorExtraction.forward` (``B`` frames)."""

    content: torch.Tensor  # [B,dim]  f_content (content view of the deformation network)
    style: torch.Tensor  # [B,dim]  f_style (style view)
    prior: torch.Tensor  # [B,dim]  f_prior (FuseNet output)
    expr_pred: torch.Tensor  # [B,K]  expression coefficients reconstructed from f_prior
    mouth_pred: torch.Tensor  # [B,len(mouth_dims)]  mouth coefficients predicted from f_content
    sync_emb: torch.Tensor  # [B,sync_dim]  unit-norm audio sync embedding


def frame_features(windows: torch.Tensor, pad: int = 8, stride: int = 2) -> torch.Tensor:
    """Per-frame features from §5.3 windows: ``windows`` [N,W,C] → [N,C].

    Frame ``i``'s window covers the 50 Hz steps ``[2i-pad, 2i-pad+W)``; the steps of the frame itself
    are window positions ``pad … pad+stride-1`` (``8:10`` for the default 16/8/2), averaged here.
    """
    expect(windows, "windows", ("N", "W", "C"))
    if windows.shape[1] < pad + stride:
        raise ValueError(f"windows of {windows.shape[1]} steps do not contain positions {pad}:{pad + stride}")
    return windows[:, pad:pad + stride].mean(1)


def audio_context(frame_feats: torch.Tensor, frames: torch.Tensor, context: int = 50) -> torch.Tensor:
    """Audio context of frames: ``frame_feats`` [N,C] (one clip), ``frames`` [B] (int indices into
    it) → [B,context,C] holding frames ``i - context//2 … i + context - context//2 - 1``; indices
    outside the clip are clamped (the first/last frame is repeated)."""
    expect(frame_feats, "frame_feats", ("N", "C"))
    if frames.dim() != 1 or frames.is_floating_point():
        raise ValueError(f"frames: expected an integer tensor [B], got {frames.dtype} {list(frames.shape)}")
    n = frame_feats.shape[0]
    if n == 0:
        raise ValueError("frame_feats is empty (audio shorter than one frame)")
    if bool((frames < 0).any()) or bool((frames >= n).any()):
        raise ValueError(f"frames must index the {n} frames of the clip, got range "
                         f"[{int(frames.min())}, {int(frames.max())}]")
    off = torch.arange(context, device=frames.device) - context // 2
    idx = (frames[:, None].long() + off[None]).clamp(0, n - 1)
    return frame_feats[idx]


class PriorExtraction(nn.Module):
    """Prior Extraction: :class:`ContentEncoder` + :class:`StyleEncoder` + :class:`FuseNet` + losses.

    Args:
        in_channels: audio feature channels ``C`` of the per-frame windows.
        expr_dim: number ``K`` of expression coefficients.
        context_channels: channels ``C'`` of the context features (default ``in_channels``).
        config: the typed :class:`~ua3dtalk.models.prior.config.PriorConfig` (sizes, loss weights, L_recon's
            coefficients, pretrained encoders; defaults when None).
        **options: fields of that configuration set on top of ``config`` (the keys of ``model.prior``).
    """

    def __init__(self, in_channels: int, expr_dim: int, context_channels: Optional[int] = None,
                 config: Optional[PriorConfig] = None, **options):
        super().__init__()
        cfg = make_config(PriorConfig, config, options, "PriorExtraction")
        self.config = cfg
        mouth_dims, dim, hidden = cfg.mouth_dims, cfg.dim, cfg.hidden
        window, context, sync_dim = cfg.window, cfg.context, cfg.sync_dim
        if any(i >= expr_dim for i in mouth_dims):
            raise ValueError(f"mouth_dims {mouth_dims} out of range for expr_dim={expr_dim}")
        self.recon_mode, self.recon_dims, self.emotional_dims = resolve_recon_dims(cfg.recon_dims, cfg.emotional_dims,
                                                                                   int(expr_dim))
        self.in_channels, self.expr_dim, self.mouth_dims = int(in_channels), int(expr_dim), mouth_dims
        self.window, self.context_len, self.dim, self.lip_dim = int(window), int(context), int(dim), int(cfg.lip_dim)
        self.context_channels = int(context_channels or in_channels)
        self.temperature = float(cfg.temperature)
        self.decor_min_batch = max(2, int(cfg.decor_min_batch if cfg.decor_min_batch is not None else 2 * dim))
        self._warned_decor = False
        self.weights = {"sync": float(cfg.w_sync), "mouth": float(cfg.w_mouth), "recon": float(cfg.w_recon),
                        "decor": float(cfg.w_decor), "emotion": float(cfg.w_emotion)}
        self.content = ContentEncoder(in_channels, window, dim, mouth_dims, sync_dim, hidden)
        self.style = StyleEncoder(self.context_channels, context, dim, hidden)
        self.fuse = FuseNet(dim, expr_dim, hidden)
        self.lip_proj = nn.Sequential(nn.Linear(self.lip_dim, hidden), nn.LeakyReLU(0.02), nn.Linear(hidden, sync_dim))
        self.register_buffer("_mouth_idx", torch.tensor(mouth_dims, dtype=torch.long), persistent=False)
        self.register_buffer("_recon_idx", torch.tensor(self.recon_dims, dtype=torch.long), persistent=False)
        if cfg.pretrained:
            self.load_pretrained(cfg.pretrained, freeze=cfg.freeze_pretrained)

    # ------------------------------------------------------------------------------------------
    def forward(self, audio_window: torch.Tensor, audio_context: torch.Tensor) -> PriorOutput:
        """``audio_window`` [B,window,C], ``audio_context`` [B,context,C'] → :class:`PriorOutput`."""
        d = expect(audio_window, "audio_window", ("B", self.window, self.in_channels))
        expect(audio_context, "audio_context", ("B", self.context_len, self.context_channels), d)
        content = self.content(audio_window)
        style = self.style(audio_context)
        prior, expr_pred = self.fuse(content, style)
        return PriorOutput(content, style, prior, expr_pred, self.content.predict_mouth(content),
                           self.content.sync_embedding(content))

    def lip_embedding(self, lip_target: torch.Tensor) -> torch.Tensor:
        """Visual side of the sync loss: ``lip_target`` [..., D_lip] → [..., sync_dim] (unit norm)."""
        if not isinstance(lip_target, torch.Tensor) or lip_target.shape[-1] != self.lip_dim:
            shape = list(lip_target.shape) if isinstance(lip_target, torch.Tensor) else type(lip_target).__name__
            raise ValueError(f"lip_target: expected [..., {self.lip_dim}] (lip_dim), got {shape}")
        return F.normalize(self.lip_proj(lip_target), dim=-1)

    def losses(self, out: PriorOutput, expr: torch.Tensor, lip_target: torch.Tensor,
               lip_negatives: Optional[torch.Tensor] = None,
               emotion: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Losses of the prior stage (see the module docstring).

        Args:
            out: :meth:`forward` output for ``B`` frames.
            expr: [B,K] ground-truth expression coefficients.
            lip_target: [B,D_lip] lip target of the same frames.
            lip_negatives: optional [B,M,D_lip] lip targets of temporally shifted frames of the same
                clip (hard negatives of row ``i``).
            emotion: optional [B] emotion label ids (-1 = unknown) for the ``emotion`` term.

        Returns:
            ``{"sync", "mouth", "recon", "decor", "emotion", "total"}`` scalar tensors. ``decor`` is 0 for
            ``B < decor_min_batch``; ``emotion`` is 0 without labels.
        """
        d = expect(expr, "expr", ("B", self.expr_dim))
        expect(out.content, "out.content", ("B", self.dim), d)
        expect(lip_target, "lip_target", ("B", self.lip_dim), d)
        neg = None
        if lip_negatives is not None:
            expect(lip_negatives, "lip_negatives", ("B", None, self.lip_dim), d)
            neg = self.lip_embedding(lip_negatives)
        sync = info_nce(out.sync_emb, self.lip_embedding(lip_target), self.temperature, neg)
        mouth = F.mse_loss(out.mouth_pred, expr.index_select(1, self._mouth_idx))
        if len(self.recon_dims) == self.expr_dim:
            recon = F.mse_loss(out.expr_pred, expr)
        else:
            recon = F.mse_loss(out.expr_pred.index_select(1, self._recon_idx), expr.index_select(1, self._recon_idx))
        if expr.shape[0] >= self.decor_min_batch:
            decor = decorrelation_penalty(out.content, out.style)
        else:
            if not self._warned_decor and self.weights["decor"] > 0:
                warnings.warn(f"PriorExtraction: batch of {expr.shape[0]} < decor_min_batch={self.decor_min_batch}; "
                              "the content/style decorrelation penalty is skipped (it needs many more samples "
                              "than feature dimensions)", stacklevel=2)
                self._warned_decor = True
            decor = out.content.new_zeros(()) + (out.content.sum() + out.style.sum()) * 0.0
        if emotion is not None:
            emo = emotion_invariance_penalty(out.content, emotion) + emotion_invariance_penalty(out.style, emotion)
        else:
            emo = (out.content.sum() + out.style.sum()) * 0.0
        w = self.weights
        total = (w["sync"] * sync + w["mouth"] * mouth + w["recon"] * recon + w["decor"] * decor
                 + w["emotion"] * emo)
        return {"sync": sync, "mouth": mouth, "recon": recon, "decor": decor, "emotion": emo, "total": total}

    def context_from_windows(self, windows: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Audio context of ``frames`` [B] from one clip's windows [N,window,C] → [B,context,C]."""
        return audio_context(frame_features(windows), frames, self.context_len)

    # ------------------------------------------------------------------------------------------
    def save_pretrained(self, path: Union[str, Path], parts: Sequence[str] = PART_NAMES) -> Path:
        """Write the encoders named in ``parts`` (keys ``<part>.<param>``) to ``path``
        (``.safetensors`` → safetensors, otherwise ``torch.save``)."""
        state = {}
        for part in self._check_parts(parts):
            state.update({f"{part}.{k}": v for k, v in getattr(self, part).state_dict().items()})
        return write_state_dict(state, path)

    def load_pretrained(self, path: Union[str, Path], parts: Sequence[str] = PART_NAMES, freeze: bool = False,
                        prefix: Optional[str] = None) -> None:
        """Load content/style encoder weights from ``path``.

        The file may hold ``content.*``/``style.*`` keys (:meth:`save_pretrained`, a ``PriorExtraction``
        state dict — other keys are ignored) or the same behind a prefix (``prior.content.*`` in a
        Lightning checkpoint; detected automatically, or given as ``prefix="prior."``).

        Raises:
            FileNotFoundError: the file does not exist (the message names it).
            WeightsError: unreadable file, no weights for a part, or keys/shapes that do not fit
                (the message names the file and lists the mismatched keys).
        """
        state = read_state_dict(path, origin="content/style encoder weights, written by "
                                              "PriorExtraction.save_pretrained or a stage=prior checkpoint")
        for part in self._check_parts(parts):
            sub = self._extract(state, part, path, prefix)
            module = getattr(self, part)
            load_checked(module, sub, path, f"PriorExtraction.{part}")
            if freeze:
                module.requires_grad_(False)

    @staticmethod
    def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
        parts = tuple(parts)
        bad = [p for p in parts if p not in PART_NAMES]
        if bad or not parts:
            raise ValueError(f"parts must be a non-empty subset of {PART_NAMES}, got {parts}")
        return parts

    @staticmethod
    def _extract(state: dict, part: str, path, prefix: Optional[str]) -> dict:
        tag = part + "."
        if prefix is None:
            found = set()
            for k in state:
                i = k.find(tag)
                while i > 0 and k[i - 1] != ".":
                    i = k.find(tag, i + 1)
                if i >= 0:
                    found.add(k[:i])
            if not found:
                keys = list(state)
                raise WeightsError(f"weights file {str(path)!r} has no '{tag}*' keys for the {part} encoder "
                                   f"(keys: {', '.join(keys[:10])}{' …' if len(keys) > 10 else ''})")
            if "" in found:
                prefix = ""
            elif len(found) == 1:
                prefix = found.pop()
            else:
                raise WeightsError(f"weights file {str(path)!r}: '{tag}*' keys under several prefixes "
                                   f"{sorted(found)}; pass prefix=… to choose one")
        full = prefix + tag
        sub = {k[len(full):]: v for k, v in state.items() if k.startswith(full)}
        if not sub:
            raise WeightsError(f"weights file {str(path)!r} has no '{full}*' keys for the {part} encoder")
        return sub
