"""Metadata of a loaded dataset: :class:`ClipInfo` (one regular directory, DESIGN §5.1), its
:class:`Frame` records, and :class:`EmotionalData` (every clip of an emotional dataset, §5.2).

A :class:`ClipInfo` is built by :func:`ua3dtalk.data.validate.inspect_clip` (run by the loaders of
:mod:`ua3dtalk.data.loading`) once every check has passed; it holds no pixels, and reads the
per-frame arrays (``au.csv``, ``expr.npy``) lazily. Also: :func:`detect_layout`, :func:`find_index`
(the index file of an emotional root) and :func:`iter_clips`. The layouts themselves are described
in :mod:`ua3dtalk.data.formats`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch

from ..constants import EMOTIONS
from .cameras import Cameras
from .formats import (
    INDEX_FILES,
    SINGLE_TRANSFORM_FILE,
    TG_AUS,
    TRANSFORM_FILES,
    Problem,
    read_au_csv,
    read_image,
    read_landmarks,
)

# --------------------------------------------------------------------------------------------------
# clip metadata
# --------------------------------------------------------------------------------------------------

# per-frame file kinds: directory, suffix
FRAME_FILES: dict[str, tuple[str, str]] = {
    "ori": ("ori_imgs", ".jpg"),
    "lms": ("ori_imgs", ".lms"),
    "parsing": ("parsing", ".png"),
    "gt": ("gt_imgs", ".jpg"),
    "torso": ("torso_imgs", ".png"),
    "teeth": ("teeth_mask", ".npy"),
}
REQUIRED_KINDS = ("ori", "lms", "parsing")
OPTIONAL_KINDS = ("gt", "torso", "teeth")


class Frame(NamedTuple):
    """One frame of a clip (see :meth:`ClipInfo.frame`)."""

    position: int          # index in the clip (0..len-1, sorted by img_id)
    img_id: int            # the dataset's frame number (file names, per-frame array rows)
    aud_id: int            # ER-NeRF audio index (= img_id unless the json says otherwise)
    split: str             # "train" | "val"
    viewmat: np.ndarray    # [4,4] float32, OpenCV world→camera
    K: np.ndarray          # [3,3] float32


@dataclass
class ClipInfo:
    """Metadata of one regular directory (a subject of §5.1 or a clip of §5.2); no pixels loaded.

    Attributes
    ----------
    root        the directory (absolute)
    clip_id     identifier used in :class:`~ua3dtalk.data.batch.FrameBatch` (directory name, or the path
                relative to the emotional root)
    img_ids     int64 [L] frame numbers, sorted; position j ↔ img_ids[j]
    aud_ids     int64 [L]
    cameras     :class:`~ua3dtalk.data.cameras.Cameras` (viewmats [L,4,4], K, width, height)
    splits      {"train": positions, "val": positions} (int64 arrays)
    num_frames  rows every per-frame array has (max img_id + 1)
    image_kind  "gt" or "ori": which directory :meth:`image_path` reads
    available   optional items present: subset of {"gt", "torso", "teeth", "bc", "au", "expr", "wav"}
    features    {name: path} of audio feature files (``aud_ds.npy`` → "ds", ``aud.npy`` → "aud", ...)
    emotion     label id in :data:`EMOTIONS` or -1;  intensity 1..3 or 0
    subject     subject name when known
    warnings    non-fatal problems found when loading
    """

    root: Path
    clip_id: str
    img_ids: np.ndarray
    aud_ids: np.ndarray
    cameras: Cameras
    splits: dict[str, np.ndarray]
    num_frames: int
    image_kind: str
    available: frozenset
    features: dict[str, Path]
    emotion: int = -1
    intensity: int = 0
    subject: Optional[str] = None
    warnings: list[Problem] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---------------------------------------------------------------- frames
    def __len__(self) -> int:
        return int(len(self.img_ids))

    @property
    def width(self) -> int:
        return self.cameras.width

    @property
    def height(self) -> int:
        return self.cameras.height

    @property
    def wav_path(self) -> Optional[Path]:
        return self.root / "aud.wav" if "wav" in self.available else None

    @property
    def background_path(self) -> Optional[Path]:
        return self.root / "bc.jpg" if "bc" in self.available else None

    @property
    def emotion_name(self) -> Optional[str]:
        return EMOTIONS[self.emotion] if self.emotion >= 0 else None

    def split_of(self, position: int) -> str:
        """Name of the split holding the frame at ``position``."""
        if "split_of" not in self._cache:
            names = np.full(len(self), "train", dtype=object)
            for name, pos in self.splits.items():
                names[pos] = name
            self._cache["split_of"] = names
        return str(self._cache["split_of"][position])

    def frame(self, position: int) -> Frame:
        """The frame at ``position`` (0..len-1) with its camera."""
        j = int(position)
        if not 0 <= j < len(self):
            raise IndexError(f"{self.clip_id}: frame position {j} out of range 0..{len(self) - 1}")
        return Frame(j, int(self.img_ids[j]), int(self.aud_ids[j]), self.split_of(j),
                     self.cameras.viewmats[j], self.cameras.K)

    def position_of(self, img_id: int) -> int:
        """Position of the frame with this ``img_id`` (``KeyError`` if the clip does not list it)."""
        if "pos" not in self._cache:
            self._cache["pos"] = {int(i): j for j, i in enumerate(self.img_ids)}
        return self._cache["pos"][int(img_id)]

    def path(self, kind: str, position: int) -> Path:
        """Path of a per-frame file: ``kind`` in ori, gt, lms, parsing, torso, teeth, or "image"
        (``gt`` when the clip has gt_imgs, else ``ori``)."""
        if kind == "image":
            kind = self.image_kind
        d, suf = FRAME_FILES[kind]
        return self.root / d / f"{int(self.img_ids[position])}{suf}"

    def image_path(self, position: int) -> Path:
        return self.path("image", position)

    # ---------------------------------------------------------------- per-frame arrays (lazy, cached)
    def au(self) -> Optional[dict[str, np.ndarray]]:
        """All ``au.csv`` columns (names stripped) as float32 [num_frames], or None without au.csv."""
        if "au" not in self.available:
            return None
        if "au" not in self._cache:
            self._cache["au"] = read_au_csv(self.root / "au.csv")
        return self._cache["au"]

    def blink(self) -> np.ndarray:
        """float32 [num_frames] eye closure in [0,1]: AU45_r clipped to [0,2] / 2 (TalkingGaussian);
        zeros when the clip has no au.csv."""
        if "blink" not in self._cache:
            au = self.au()
            self._cache["blink"] = (np.zeros(self.num_frames, np.float32) if au is None
                                    else (np.clip(au["AU45_r"], 0.0, 2.0) / 2.0).astype(np.float32))
        return self._cache["blink"]

    def au_exp(self) -> Optional[np.ndarray]:
        """float32 [num_frames, 6]: AU01,04,05,06,07,45 (AU45 clipped to [0,2]) — TalkingGaussian's eye
        input — or None when au.csv lacks one of the columns."""
        if "au_exp" not in self._cache:
            au = self.au()
            cols = [f"AU{k:02d}_r" for k in TG_AUS]
            a = None
            if au is not None and all(c in au for c in cols):
                a = np.stack([au[c] for c in cols], 1).astype(np.float32)
                a[:, -1] = np.clip(a[:, -1], 0.0, 2.0)
            self._cache["au_exp"] = a
        return self._cache["au_exp"]

    def expr(self) -> Optional[np.ndarray]:
        """``expr.npy`` [num_frames, K] as stored (memory-mapped; :func:`~ua3dtalk.data.loading.read_frame`
        casts to float32), or None."""
        if "expr" not in self.available:
            return None
        if "expr" not in self._cache:
            self._cache["expr"] = np.load(self.root / "expr.npy", mmap_mode="r")
        return self._cache["expr"]

    def landmarks(self, position: int) -> np.ndarray:
        return read_landmarks(self.path("lms", position))

    def background(self) -> torch.Tensor:
        """Background plate [3,H,W] float32: ``bc.jpg``, or white when absent."""
        p = self.background_path
        if p is None:
            return torch.ones(3, self.height, self.width)
        return read_image(p)

    def __getstate__(self):  # workers get a copy without decoded caches
        d = dict(self.__dict__)
        d["_cache"] = {}
        return d



@dataclass
class EmotionalData:
    """Every clip of an emotional dataset (§5.2). Clips carry ``emotion``, ``intensity``, ``subject``."""

    root: Path
    clips: list[ClipInfo]
    warnings: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[ClipInfo]:
        return iter(self.clips)

    def __getitem__(self, i: int) -> ClipInfo:
        return self.clips[i]

    @property
    def subjects(self) -> list[str]:
        return sorted({c.subject for c in self.clips if c.subject is not None})

    def select(self, *, emotions: Optional[Iterable[str | int]] = None, intensities: Optional[Iterable[int]] = None,
               subjects: Optional[Iterable[str]] = None) -> list[ClipInfo]:
        """Clips matching all given filters (emotions by name or id)."""
        emo = None if emotions is None else {EMOTIONS.index(e) if isinstance(e, str) else int(e) for e in emotions}
        inten = None if intensities is None else {int(i) for i in intensities}
        subj = None if subjects is None else set(subjects)
        return [c for c in self.clips if (emo is None or c.emotion in emo) and (inten is None or c.intensity in inten)
                and (subj is None or c.subject in subj)]


def find_index(root: Path | str) -> Optional[Path]:
    for n in INDEX_FILES:
        p = Path(root) / n
        if p.is_file():
            return p
    return None


def detect_layout(root: Path | str) -> str:
    """"regular" when ``root`` holds transforms json files, else "emotional"."""
    root = Path(root)
    if any((root / n).exists() for n in TRANSFORM_FILES + (SINGLE_TRANSFORM_FILE,)):
        return "regular"
    return "emotional"


def iter_clips(data: ClipInfo | EmotionalData) -> list[ClipInfo]:
    """The clips of a loaded dataset (a regular directory is one clip)."""
    return [data] if isinstance(data, ClipInfo) else list(data.clips)
