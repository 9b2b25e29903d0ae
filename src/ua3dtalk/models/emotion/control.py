"""Emotion control at inference (DESIGN §4): where the emotion embedding ``e`` comes from.

* **from the audio** (default) — run the (student) encoder on the driving audio:
  :meth:`EmotionControl.from_audio`;
* **from a label + intensity** — class/intensity *prototypes*: the mean embedding of every (emotion,
  level) cell, stored as buffers (so they live in the checkpoint): :meth:`EmotionControl.from_label`;
* **an explicit embedding** — :meth:`EmotionControl.explicit` (checks the shape);
* **blending** — linear interpolation between two embeddings: :func:`blend`.

Prototypes in two steps:

1. *during* the emotion stage, :meth:`EmotionControl.update_prototypes` keeps a cheap running mean of
   the student's training-mode embeddings: a cell that has seen ``n`` embeddings and receives ``m`` new
   ones with mean ``x̄`` moves by ``rate = max(m/(n+m), momentum)`` towards ``x̄`` — the exact mean while
   few samples have been seen, an exponential moving average with rate ``momentum`` afterwards (the
   encoder keeps changing during training, so old embeddings should be forgotten). ``momentum=None``
   keeps the exact mean forever. These are embeddings of *earlier* encoders, in training mode (batch
   statistics, dropout), so they are not what the final encoder gives at inference;
2. *at the end* of the emotion stage (:meth:`~ua3dtalk.models.module.UA3DTalk.on_train_end`),
   :meth:`EmotionControl.recompute_prototypes` replaces them by the exact per-cell mean of the *final*
   encoder's eval-mode embeddings of every training frame (``counts`` = frames per cell) and sets the
   buffer ``recomputed`` (saved in the checkpoint; any later running update clears it again).
"""
from __future__ import annotations

import warnings
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from ..prior.checks import expect
from .constants import EMOTIONS

__all__ = ["EmotionControl", "blend", "emotion_index"]


def emotion_index(emotion: Union[str, int], emotions: Sequence[str] = EMOTIONS) -> int:
    """Label id of ``emotion`` (a name, case-insensitive, or an id); ``ValueError`` listing the valid
    names otherwise."""
    if isinstance(emotion, bool):
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(emotions)}")
    if isinstance(emotion, int) or (isinstance(emotion, torch.Tensor) and emotion.numel() == 1
                                    and not emotion.is_floating_point()):
        i = int(emotion)
        if not 0 <= i < len(emotions):
            raise ValueError(f"emotion id {i} out of range; expected 0..{len(emotions) - 1} "
                             f"({', '.join(emotions)})")
        return i
    name = str(emotion).strip().lower()
    if name not in emotions:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(emotions)}")
    return list(emotions).index(name)


def blend(e1: torch.Tensor, e2: torch.Tensor, w: Union[float, torch.Tensor]) -> torch.Tensor:
    """``(1-w)·e1 + w·e2`` — exactly ``e1`` at ``w=0`` and ``e2`` at ``w=1``.

    ``e1``, ``e2`` [B,D] (or broadcastable, e.g. [1,D] prototypes); ``w`` a float or a tensor
    broadcastable to them ([B,1] for per-sample weights, [B] is reshaped to [B,1]).
    """
    if e1.shape[-1] != e2.shape[-1]:
        raise ValueError(f"blend: embeddings of different sizes {list(e1.shape)} and {list(e2.shape)}")
    if isinstance(w, torch.Tensor) and w.dim() == 1 and e1.dim() == 2:
        w = w[:, None]
    return (1 - w) * e1 + w * e2


class EmotionControl(nn.Module):
    """Emotion prototypes and the ways of choosing an emotion embedding (see the module docstring).

    Args:
        dim: embedding size (128).
        emotions: emotion names, in label-id order (:data:`EMOTIONS`).
        n_levels: intensity levels (3: MEAD levels 1..3).
        momentum: floor of the running-mean rate (``None``: exact mean).

    Buffers (saved in checkpoints): ``prototypes`` [n_emotions, n_levels, dim], ``counts``
    [n_emotions, n_levels] (int64, embeddings seen per cell), ``recomputed`` (0-dim bool: the
    prototypes are the exact eval-mode means of :meth:`recompute_prototypes`, not running means).
    """

    def __init__(self, dim: int = 128, emotions: Sequence[str] = EMOTIONS, n_levels: int = 3,
                 momentum: Optional[float] = 0.01):
        super().__init__()
        if momentum is not None and not 0 < momentum <= 1:
            raise ValueError("momentum must be in (0, 1] or None")
        self.dim, self.emotions, self.n_levels = int(dim), tuple(emotions), int(n_levels)
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(len(self.emotions), self.n_levels, self.dim))
        self.register_buffer("counts", torch.zeros(len(self.emotions), self.n_levels, dtype=torch.long))
        self.register_buffer("recomputed", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the flag existed hold running means
        state_dict.setdefault(prefix + "recomputed", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ prototypes
    @torch.no_grad()
    def update_prototypes(self, e: torch.Tensor, labels: torch.Tensor, levels: torch.Tensor) -> None:
        """Accumulate embeddings ``e`` [B,dim] with emotion ``labels`` [B] (ids; -1 = unknown, skipped)
        and intensity ``levels`` [B] (1..n_levels; others skipped) into the prototypes."""
        d = expect(e, "e", ("B", self.dim))
        for t, name in ((labels, "labels"), (levels, "levels")):
            if not isinstance(t, torch.Tensor) or t.shape != (d["B"],) or t.is_floating_point():
                raise ValueError(f"{name}: expected an integer tensor [{d['B']}]")
        ok = (labels >= 0) & (labels < len(self.emotions)) & (levels >= 1) & (levels <= self.n_levels)
        if not bool(ok.any()):
            return
        e = e.detach()[ok].to(self.prototypes.dtype)
        cell = labels[ok].long() * self.n_levels + (levels[ok].long() - 1)
        ncell = len(self.emotions) * self.n_levels
        sums = torch.zeros(ncell, self.dim, dtype=e.dtype, device=e.device).index_add_(0, cell, e)
        n = torch.bincount(cell, minlength=ncell)
        seen = n > 0
        protos = self.prototypes.view(ncell, self.dim)
        counts = self.counts.view(ncell)
        mean = sums[seen] / n[seen, None].to(e.dtype)
        rate = n[seen].to(e.dtype) / (counts[seen] + n[seen]).to(e.dtype)
        if self.momentum is not None:
            rate = rate.clamp_min(self.momentum)
        protos[seen] += rate[:, None] * (mean - protos[seen])
        counts[seen] += n[seen]
        self.recomputed.fill_(False)

    def _labelled(self, e: torch.Tensor, labels: torch.Tensor, levels: torch.Tensor):
        """Rows of ``e`` with a known emotion and level and their cell ids (``emotion·n_levels + level−1``)."""
        d = expect(e, "e", ("B", self.dim))
        for t, name in ((labels, "labels"), (levels, "levels")):
            if not isinstance(t, torch.Tensor) or t.shape != (d["B"],) or t.is_floating_point():
                raise ValueError(f"{name}: expected an integer tensor [{d['B']}]")
        labels, levels = labels.to(e.device), levels.to(e.device)
        ok = (labels >= 0) & (labels < len(self.emotions)) & (levels >= 1) & (levels <= self.n_levels)
        return e.detach()[ok], labels[ok].long() * self.n_levels + (levels[ok].long() - 1)

    @torch.no_grad()
    def recompute_prototypes(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> int:
        """Replace the prototypes by the exact mean embedding of every (emotion, intensity) cell.

        ``batches`` yields ``(e [B,dim], labels [B], levels [B])`` (as :meth:`update_prototypes`; unknown
        labels / levels are skipped) — typically the final encoder's eval-mode embeddings of every training
        frame once. Sums are accumulated in float64. Every cell is recomputed from scratch: ``counts``
        becomes the number of embeddings per cell, a cell without any keeps a zero prototype and count 0.
        Sets ``recomputed``. Returns the number of labelled embeddings used.
        """
        ncell = len(self.emotions) * self.n_levels
        dev = self.prototypes.device
        sums = torch.zeros(ncell, self.dim, dtype=torch.float64, device=dev)
        n = torch.zeros(ncell, dtype=torch.long, device=dev)
        for e, labels, levels in batches:
            e, cell = self._labelled(e, labels, levels)
            if cell.numel():
                sums.index_add_(0, cell.to(dev), e.to(dev, torch.float64))
                n += torch.bincount(cell.to(dev), minlength=ncell)
        mean = sums / n.clamp_min(1)[:, None].to(sums.dtype)
        self.prototypes.copy_(mean.view_as(self.prototypes).to(self.prototypes.dtype))
        self.counts.copy_(n.view_as(self.counts))
        self.recomputed.fill_(True)
        return int(n.sum())

    def reset_prototypes(self) -> None:
        self.prototypes.zero_()
        self.counts.zero_()
        self.recomputed.fill_(False)

    # ------------------------------------------------------------------ sources of e
    @torch.no_grad()
    def from_labels(self, labels: torch.Tensor, levels: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """Batched :meth:`from_label` for training: the prototype of each row's (emotion, intensity) →
        [B,dim]; rows whose label is unknown (-1), whose level is out of range (0 = unknown: the mean of
        the emotion's seen levels) or whose emotion has no prototype keep their row of ``fallback``
        [B,dim] (usually the audio-derived embedding)."""
        d = expect(fallback, "fallback", ("B", self.dim))
        if labels.shape != (d["B"],) or levels.shape != (d["B"],):
            raise ValueError(f"labels / levels: expected [{d['B']}], got {list(labels.shape)} / {list(levels.shape)}")
        n_emo, n_lvl = self.counts.shape
        i = labels.long().clamp(0, n_emo - 1)
        lvl = (levels.long() - 1).clamp(0, n_lvl - 1)
        known = (labels >= 0) & (labels < n_emo) & (self.counts.sum(1)[i] > 0)
        at_level = known & (levels >= 1) & (levels <= n_lvl) & (self.counts[i, lvl] > 0)
        out = torch.where(known[:, None], self._level_means()[i].to(fallback.dtype), fallback)
        return torch.where(at_level[:, None], self.prototypes[i, lvl].to(fallback.dtype), out)

    def _level_means(self) -> torch.Tensor:
        """[n_emotions, dim]: each emotion's prototype averaged over its seen levels, weighted by count
        (0 for an emotion never seen)."""
        w = self.counts.to(self.prototypes.dtype)
        return (w[..., None] * self.prototypes).sum(1) / w.sum(1).clamp_min(1)[:, None]

    def from_label(self, emotion: Union[str, int], intensity: Optional[int] = None) -> torch.Tensor:
        """Prototype of ``emotion`` at ``intensity`` (1..n_levels) → [1,dim].

        ``intensity=None`` averages the levels seen (weighted by their counts). A level never seen in
        training falls back to the nearest seen level of that emotion, with a warning (MEAD has
        neutral at level 1 only). Raises ``ValueError`` for unknown names / levels and
        ``RuntimeError`` when the emotion has no prototype at all.
        """
        i = emotion_index(emotion, self.emotions)
        cnt = self.counts[i]
        if int(cnt.sum()) == 0:
            raise RuntimeError(f"no prototype for emotion {self.emotions[i]!r}: update_prototypes never saw it "
                               "(prototypes are accumulated during the emotion stage)")
        if intensity is None:
            return self._level_means()[i][None]
        if isinstance(intensity, bool) or int(intensity) != intensity or not 1 <= int(intensity) <= self.n_levels:
            raise ValueError(f"intensity must be an integer in 1..{self.n_levels}, got {intensity!r}")
        lvl = int(intensity) - 1
        if int(cnt[lvl]) == 0:
            seen = [k for k in range(self.n_levels) if int(cnt[k]) > 0]
            near = min(seen, key=lambda k: (abs(k - lvl), k))
            warnings.warn(f"no prototype for {self.emotions[i]!r} at intensity {lvl + 1}; using intensity {near + 1}",
                          stacklevel=2)
            lvl = near
        return self.prototypes[i, lvl][None].clone()

    def from_audio(self, encoder: nn.Module, waveform: Optional[torch.Tensor] = None,
                   w2v: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run ``encoder`` (an :class:`~.encoder.EmotionEncoder`, usually the wav2vec2 student) → [B,dim]."""
        e = encoder(waveform=waveform, w2v=w2v).embedding
        expect(e, "encoder embedding", ("B", self.dim))
        return e

    def explicit(self, e: torch.Tensor) -> torch.Tensor:
        """An explicit embedding [dim] or [B,dim] → [B,dim] (shape-checked)."""
        if isinstance(e, torch.Tensor) and e.dim() == 1:
            e = e[None]
        expect(e, "explicit emotion embedding", ("B", self.dim))
        return e

    @staticmethod
    def blend(e1: torch.Tensor, e2: torch.Tensor, w: Union[float, torch.Tensor]) -> torch.Tensor:
        """Linear blending, see :func:`blend`."""
        return blend(e1, e2, w)

    def resolve(self, emotion: Union[str, int, torch.Tensor] = "audio", intensity: Optional[int] = None, *,
                encoder: Optional[nn.Module] = None, waveform: Optional[torch.Tensor] = None,
                w2v: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One entry point for the inference CLI: ``"audio"`` → :meth:`from_audio`; a name or id →
        :meth:`from_label`; a tensor → :meth:`explicit`."""
        if isinstance(emotion, torch.Tensor) and emotion.is_floating_point():
            return self.explicit(emotion)
        if isinstance(emotion, str) and emotion.strip().lower() == "audio":
            if encoder is None:
                raise ValueError("emotion='audio' needs the emotion encoder")
            return self.from_audio(encoder, waveform, w2v)
        return self.from_label(emotion, intensity)
