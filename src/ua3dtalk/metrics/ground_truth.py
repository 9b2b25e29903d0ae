"""The ground truth of a dataset for training and checking the evaluator networks (DESIGN §8).

:func:`load_ground_truth` reads every frame of a dataset with its targets (landmarks, ``expr.npy``,
``emotion.json``, ``au.csv``) into a :class:`GroundTruth`; :func:`holdout_mask` chooses the frames
held out for validation (by clip). Frames are uint8 [N,3,H,W]; landmarks float32 [N,68,2] pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils.threads import torch_threads
from .evaluators import face_boxes

__all__ = ["GroundTruth", "load_ground_truth", "holdout_mask"]


@dataclass
class GroundTruth:
    """Every frame of a dataset with its targets, in clip order.

    frames      uint8 [N,3,H,W]
    landmarks   float32 [N,68,2] pixels
    expr        float32 [N,K] or None (no ``expr.npy``)
    emotion     int64 [N] label id in EMOTIONS, -1 when unknown
    intensity   int64 [N] 1..3, 0 when unknown
    clip        int64 [N] index into ``clip_ids``
    val_frame   bool [N] frame is in the clip's own validation split (transforms_val.json)
    clip_ids    list[str]
    au45        float32 [N] AU45_r from ``au.csv`` (NaN when absent)
    """

    frames: torch.Tensor
    landmarks: torch.Tensor
    expr: Optional[torch.Tensor]
    emotion: torch.Tensor
    intensity: torch.Tensor
    clip: torch.Tensor
    val_frame: torch.Tensor
    clip_ids: list[str]
    au45: torch.Tensor

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def images(self, idx=None) -> torch.Tensor:
        """float [n,3,H,W] in [0,1] of the selected frames."""
        f = self.frames if idx is None else self.frames[idx]
        return f.float() / 255.0

    def boxes(self, scale: float = 1.3) -> torch.Tensor:
        return face_boxes(self.landmarks, scale=scale)

    def subset(self, idx) -> "GroundTruth":
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return GroundTruth(self.frames[idx], self.landmarks[idx], None if self.expr is None else self.expr[idx],
                           self.emotion[idx], self.intensity[idx], self.clip[idx], self.val_frame[idx],
                           self.clip_ids, self.au45[idx])


def load_ground_truth(data, *, progress: bool = True, num_threads: Optional[int] = 1) -> GroundTruth:
    """Read every frame of a dataset with its targets: the frame image exactly as
    :func:`ua3dtalk.data.loading.read_frame` reads it (``gt_imgs`` when present, else ``ori_imgs``),
    ``.lms`` landmarks, ``expr.npy``, ``emotion.json``, ``au.csv``.

    Args:
        data: a dataset directory (regular or emotional), a ``ClipInfo``, an ``EmotionalData`` or a
            list of ``ClipInfo``; a :class:`GroundTruth` is returned unchanged.
        num_threads: torch threads while decoding (one is fastest on a loaded machine; None: unchanged).
    """
    from ..data.clip import ClipInfo, iter_clips
    from ..data.formats import read_image_array
    from ..data.loading import load_dataset

    if isinstance(data, GroundTruth):
        return data
    if isinstance(data, (str, Path)):
        data = load_dataset(data)
    clips = list(data) if isinstance(data, (list, tuple)) else iter_clips(data)
    if not clips or not all(isinstance(c, ClipInfo) for c in clips):
        raise ValueError("load_ground_truth: expected a dataset path, ClipInfo, EmotionalData or a list of ClipInfo")
    total = sum(len(c) for c in clips)
    F, L, E, emo, inten, cl, val, au = [], [], [], [], [], [], [], []
    has_expr = all(c.expr() is not None for c in clips)
    bar = tqdm(total=total, desc="ground truth", unit="frame", disable=not progress, leave=False)
    with torch_threads(num_threads):
        for ci, c in enumerate(clips):
            a = c.au()
            a45 = a.get("AU45_r") if a is not None else None
            ex = np.array(c.expr(), dtype=np.float32) if has_expr else None
            for j in range(len(c)):
                img = read_image_array(c.image_path(j), "RGB")  # the decoder behind read_frame's image
                F.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
                L.append(torch.from_numpy(c.landmarks(j)).float())
                i = int(c.img_ids[j])
                if ex is not None:
                    E.append(torch.from_numpy(ex[i]))
                au.append(float(a45[i]) if a45 is not None and i < len(a45) else float("nan"))
                val.append(c.split_of(j) == "val")
                bar.update(1)
            n = len(c)
            emo += [int(c.emotion)] * n
            inten += [int(c.intensity)] * n
            cl += [ci] * n
    bar.close()
    shapes = {tuple(f.shape) for f in F}
    if len(shapes) != 1:
        raise ValueError(f"load_ground_truth: clips have different frame sizes {sorted(shapes)}")
    return GroundTruth(
        frames=torch.stack(F), landmarks=torch.stack(L), expr=torch.stack(E).float() if has_expr else None,
        emotion=torch.tensor(emo, dtype=torch.long), intensity=torch.tensor(inten, dtype=torch.long),
        clip=torch.tensor(cl, dtype=torch.long), val_frame=torch.tensor(val, dtype=torch.bool),
        clip_ids=[c.clip_id for c in clips], au45=torch.tensor(au, dtype=torch.float32))


def holdout_mask(gt: GroundTruth, *, val_fraction: float = 0.2, val_clips: Optional[Sequence[str]] = None
                 ) -> torch.Tensor:
    """bool [N]: frames held out for validation — never frames of a training clip (DESIGN §5.2).

    * ``val_clips`` given: the frames of those clip ids.
    * several clips: per emotion label, every k-th clip (k ≈ 1/val_fraction, starting at the middle one of
      each group) so each emotion keeps training clips; at least one clip in total.
    * a single clip (regular dataset): the clip's own validation frames (transforms_val.json; the last
      1/11 of the video by default).
    """
    if val_clips is not None:
        unknown = set(val_clips) - set(gt.clip_ids)
        if unknown:
            raise ValueError(f"val_clips: unknown clip ids {sorted(unknown)}; known: {gt.clip_ids}")
        sel = torch.tensor([gt.clip_ids.index(c) for c in val_clips], dtype=torch.long)
        return torch.isin(gt.clip, sel)
    n_clips = len(gt.clip_ids)
    if n_clips == 1:
        return gt.val_frame.clone()
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    clip_emo = {}
    for ci, e in zip(gt.clip.tolist(), gt.emotion.tolist()):
        clip_emo.setdefault(ci, e)
    k = max(2, int(round(1 / val_fraction)))
    held = []
    for e in sorted(set(clip_emo.values())):
        members = sorted(c for c, ee in clip_emo.items() if ee == e)
        if len(members) < 2:
            continue
        start = len(members) // 2
        held += [members[(start + i * k) % len(members)] for i in range(max(1, len(members) // k))]
    if not held:
        held = [n_clips - 1]
    return torch.isin(gt.clip, torch.tensor(sorted(set(held)), dtype=torch.long))
