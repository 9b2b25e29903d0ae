"""Curriculum samplers that show hard frames more often (torch ``Sampler`` subclasses).

Talking-head training spends most steps on frames with a closed or barely open mouth and open eyes;
the frames that teach the inside of the mouth and the eyelids are rare. These samplers draw dataset
indices *with replacement* from the mixture

    p_i = uniform_mix / N + (1 - uniform_mix) · s_i^power / Σ_j s_j^power

where ``s`` is a per-frame score in [0,1] (``uniform_mix=1`` is uniform sampling, ``uniform_mix=0``
samples only frames with a positive score; ``power`` > 1 concentrates on the highest scores). When
every score is 0 the sampler is uniform.

* :class:`MouthOpenCurriculumSampler` — score = mouth opening (see :func:`mouth_openness`),
  min-max normalised over the frames;
* :class:`BlinkCurriculumSampler` — score = eye closure (``FrameBatch.blink``: OpenFace AU45_r / 2,
  already in [0,1]).

Both are seeded: epoch ``e`` draws from ``torch.Generator().manual_seed(seed + 1_000_003·e)``;
Lightning calls :meth:`CurriculumSampler.set_epoch`, and without it every new iteration advances the
epoch counter, so a plain DataLoader also gets a different but reproducible order each epoch.
``num_samples`` (default N) is the epoch length.

**Mouth opening** (:func:`mouth_openness`): the expression coefficient of the jaw when the dataset
says which column it is (the synthetic generator lists ``expr_names`` with ``jaw_open`` in
``synth.json``; a column can also be passed explicitly), otherwise the *mouth aspect ratio* of the
68 landmarks — the mean inner-lip gap of the pairs (61,67), (62,66), (63,65) divided by the inner
mouth width (60,64) — which needs no model and works on any ER-NeRF/TalkingGaussian dataset.
"""
from __future__ import annotations

import json
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from .clip import ClipInfo

__all__ = ["CurriculumSampler", "MouthOpenCurriculumSampler", "BlinkCurriculumSampler", "mouth_aspect_ratio",
           "mouth_openness", "jaw_column"]

_EPOCH_STRIDE = 1_000_003


class CurriculumSampler(Sampler[int]):
    """Weighted sampling with replacement from per-frame scores (module docstring).

    Args:
        scores: [N] non-negative scores, one per dataset index (NaN/negative values count as 0).
        power: exponent applied to the scores (> 0).
        uniform_mix: weight of the uniform component in [0,1].
        num_samples: indices per epoch (default N).
        seed: base seed; epoch ``e`` uses ``seed + 1_000_003·e``.
        normalize: min-max normalise the scores to [0,1] first.
    """

    def __init__(self, scores: Sequence[float] | np.ndarray | torch.Tensor, power: float = 1.0,
                 uniform_mix: float = 0.5, num_samples: Optional[int] = None, seed: int = 0,
                 normalize: bool = False):
        s = torch.as_tensor(np.asarray(scores, dtype=np.float64)).reshape(-1)
        if s.numel() == 0:
            raise ValueError(f"{type(self).__name__}: no frames to sample from (empty scores)")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power}")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
        s = torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
        if normalize:
            lo, hi = float(s.min()), float(s.max())
            s = (s - lo) / (hi - lo) if hi > lo else torch.zeros_like(s)
        self.scores = s
        self.power = float(power)
        self.uniform_mix = float(uniform_mix)
        self.num_samples = int(num_samples) if num_samples is not None else int(s.numel())
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        self.seed = int(seed)
        self.epoch: Optional[int] = None
        self._iterations = 0
        self.weights = self._weights()

    def _weights(self) -> torch.Tensor:
        n = self.scores.numel()
        w = self.scores ** self.power
        total = float(w.sum())
        uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
        if total <= 0:
            return uniform
        return self.uniform_mix * uniform + (1.0 - self.uniform_mix) * w / total

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose draw the next ``__iter__`` returns (Lightning calls this)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch if self.epoch is not None else self._iterations
        self._iterations += 1
        g = torch.Generator().manual_seed(self.seed + _EPOCH_STRIDE * epoch)
        idx = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return iter(idx.tolist())


class MouthOpenCurriculumSampler(CurriculumSampler):
    """Samples frames with a wider mouth opening more often.

    Args:
        mouth_open: [N] mouth opening per dataset index (:func:`mouth_openness`; any scale — it is
            min-max normalised to [0,1]).
        power, uniform_mix, num_samples, seed: see :class:`CurriculumSampler`.
    """

    def __init__(self, mouth_open: Sequence[float] | np.ndarray | torch.Tensor, power: float = 1.0,
                 uniform_mix: float = 0.5, num_samples: Optional[int] = None, seed: int = 0):
        super().__init__(mouth_open, power, uniform_mix, num_samples, seed, normalize=True)


class BlinkCurriculumSampler(CurriculumSampler):
    """Samples frames with closed / closing eyes more often.

    Args:
        blink: [N] eye closure in [0,1] per dataset index (``ClipInfo.blink()``; 0 = open).
        power, uniform_mix, num_samples, seed: see :class:`CurriculumSampler`.
    """

    def __init__(self, blink: Sequence[float] | np.ndarray | torch.Tensor, power: float = 1.0,
                 uniform_mix: float = 0.5, num_samples: Optional[int] = None, seed: int = 0):
        super().__init__(np.clip(np.asarray(blink, dtype=np.float64), 0.0, 1.0), power, uniform_mix, num_samples,
                         seed, normalize=False)


# --------------------------------------------------------------------------------------------------
# per-frame scores
# --------------------------------------------------------------------------------------------------


def mouth_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Inner-mouth aspect ratio of 68-point landmarks [...,68,2] → [...]: mean distance of the inner-lip
    pairs (61,67), (62,66), (63,65) over the inner mouth width |60-64| (0 = closed)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    gap = sum(np.linalg.norm(lm[..., a, :] - lm[..., b, :], axis=-1) for a, b in ((61, 67), (62, 66), (63, 65))) / 3
    width = np.linalg.norm(lm[..., 60, :] - lm[..., 64, :], axis=-1)
    return gap / np.maximum(width, 1e-6)


def jaw_column(clip: ClipInfo) -> Optional[int]:
    """Column of ``expr.npy`` holding the jaw opening when the dataset documents it: ``synth.json``
    (written by ``ua3dtalk-synth``) with ``expr_names`` containing ``jaw_open``; else None."""
    p = clip.root / "synth.json"
    if "expr" not in clip.available or not p.is_file():
        return None
    try:
        names = json.loads(p.read_text()).get("expr_names")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(names, list) and "jaw_open" in names:
        return names.index("jaw_open")
    return None


def mouth_openness(clip: ClipInfo, positions: Sequence[int] | np.ndarray, column: Optional[int] = None
                   ) -> np.ndarray:
    """Mouth opening of the frames at ``positions`` of ``clip`` → float64 [len(positions)].

    ``expr[img_id, column]`` when ``column`` is given or :func:`jaw_column` finds it, otherwise the
    :func:`mouth_aspect_ratio` of the frames' landmarks (one small ``.lms`` read per frame).
    The two measures have different scales; the sampler normalises them.
    """
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    col = column if column is not None else jaw_column(clip)
    expr = clip.expr()
    if col is not None and expr is not None:
        return np.asarray(expr[clip.img_ids[pos], int(col)], dtype=np.float64)
    if pos.size == 0:
        return np.zeros(0)
    lms = np.stack([clip.landmarks(int(j)) for j in pos])
    return mouth_aspect_ratio(lms)
