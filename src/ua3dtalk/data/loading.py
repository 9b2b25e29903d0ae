"""Loading a dataset: the checked loaders and the decoding of one frame.

:func:`load_clip` / :func:`load_emotional` / :func:`load_dataset` run the checks of
:mod:`ua3dtalk.data.validate` and raise one :class:`~ua3dtalk.data.formats.DatasetError` listing
every error (warnings become :class:`~ua3dtalk.data.formats.DatasetWarning`); :func:`validate`
returns the problems instead. :func:`list_clip_dirs` lists the clip directories without checking
them (for tools such as feature extraction). :func:`read_frame` decodes one frame of a
:class:`~ua3dtalk.data.clip.ClipInfo` into a :class:`~ua3dtalk.data.batch.FrameBatch` with B=1.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .batch import FrameBatch
from .checks import _discover_clips, _read_index
from .clip import ClipInfo, EmotionalData, detect_layout, find_index
from .formats import (
    DatasetError,
    DatasetWarning,
    Problem,
    _Report,
    composite,
    errors,
    parsing_masks,
    read_image,
    read_parsing,
    read_rgba,
    read_teeth_mask,
)
from .validate import inspect_clip, inspect_dataset, inspect_emotional

# --------------------------------------------------------------------------------------------------
# loading (the checks are in :mod:`ua3dtalk.data.validate`)
# --------------------------------------------------------------------------------------------------


def _raise_or_warn(root: Path, problems: list[Problem]) -> None:
    errs = errors(problems)
    if errs:
        raise DatasetError(errs, root)
    for p in problems:
        warnings.warn(p.format(), DatasetWarning, stacklevel=3)


def load_clip(root: Path | str, *, level: str = "quick", clip_id: Optional[str] = None) -> ClipInfo:
    """Read and check one regular directory (§5.1); raise :class:`DatasetError` listing every error,
    emit :class:`DatasetWarning` for the rest. See :func:`ua3dtalk.data.validate.inspect_clip`."""
    info, problems = inspect_clip(root, level=level, clip_id=clip_id)
    _raise_or_warn(Path(root), problems)
    assert info is not None
    return info


def load_emotional(root: Path | str, *, index: Path | str | None = None, level: str = "quick") -> EmotionalData:
    """Read and check an emotional dataset; raise :class:`DatasetError` listing every error."""
    data, problems = inspect_emotional(root, index=index, level=level)
    _raise_or_warn(Path(root), problems)
    assert data is not None
    return data


def load_dataset(root: Path | str, *, level: str = "quick", index: Path | str | None = None
                 ) -> ClipInfo | EmotionalData:
    """Load a regular directory (→ :class:`ClipInfo`) or an emotional root (→ :class:`EmotionalData`)."""
    data, problems = inspect_dataset(root, level=level, index=index)
    _raise_or_warn(Path(root), problems)
    assert data is not None
    return data


def validate(root: Path | str, *, level: str = "full", index: Path | str | None = None,
             progress=None) -> list[Problem]:
    """Every problem (errors and warnings) of a dataset; the dataset is valid when none is an error."""
    return inspect_dataset(root, level=level, index=index, progress=progress)[1]



def list_clip_dirs(root: Path | str, *, index: Path | str | None = None) -> list[Path]:
    """Clip directories of a dataset without validating them (for tools such as feature extraction):
    ``[root]`` for a regular directory, else the clips of the index file or the directories holding an
    ``emotion.json``. Raises :class:`DatasetError` for an unreadable index or when nothing is found."""
    root = Path(root).absolute()
    if index is None and detect_layout(root) == "regular":
        return [root]
    rep = _Report()
    idx = Path(index) if index is not None else find_index(root)
    if idx is not None:
        if not idx.is_absolute() and not idx.exists():
            idx = root / idx
        dirs = [p for p, _, _ in _read_index(idx, root, rep)] if idx.is_file() else []
        if not idx.is_file():
            rep.error(idx, "missing index file")
    else:
        dirs = _discover_clips(root)
        if not dirs:
            rep.error(root, "no clips found: not a regular dataset directory (no transforms_*.json) and no "
                            "<subject>/<emotion>/level_<k>/<clip>/emotion.json below it")
    if rep.n_errors:
        raise DatasetError(errors(rep.problems), root)
    return dirs


# --------------------------------------------------------------------------------------------------
# one frame → FrameBatch
# --------------------------------------------------------------------------------------------------


def read_frame(clip: ClipInfo, position: int, *, audio=None, neighbours: int = 0, background: str = "bc",
               landmarks: bool = True, background_cache: Optional[dict] = None):
    """Decode one frame into a :class:`~ua3dtalk.data.batch.FrameBatch` with B=1.

    ``audio``: an :class:`~ua3dtalk.data.audio.AudioFeatures` of the clip (indexed by ``img_id``); when
    None the audio field is a zero [1,16,1] window. ``neighbours`` > 0 also fills
    ``audio_neighbours`` with that many windows (TalkingGaussian: 8, frames i-4..i+3).
    ``background``: "bc" (``bc.jpg``, white when absent), "bc+torso" (torso layer composited over
    bc.jpg — what TalkingGaussian's head stage renders over), "white" or "black".
    ``background_cache`` (a dict) keeps the decoded ``bc.jpg`` between calls.
    """
    fr = clip.frame(position)
    img = read_image(clip.image_path(position))
    H, W = img.shape[-2:]
    labels = read_parsing(clip.path("parsing", position))
    teeth = read_teeth_mask(clip.path("teeth", position), (H, W)) if "teeth" in clip.available else None
    if labels.shape != (H, W):
        raise DatasetError([Problem(clip.path("parsing", position),
                                    f"parsing size {tuple(labels.shape)} ≠ image size {(H, W)}")])
    m = parsing_masks(labels, teeth)
    if background in ("bc", "bc+torso"):
        key = (str(clip.root), "bc")
        bg = background_cache.get(key) if background_cache is not None else None
        if bg is None:
            bg = clip.background()
            if background_cache is not None:
                background_cache[key] = bg
        if background == "bc+torso" and "torso" in clip.available:
            bg = composite(read_rgba(clip.path("torso", position)), bg)
    elif background == "white":
        bg = torch.ones(3, H, W)
    elif background == "black":
        bg = torch.zeros(3, H, W)
    else:
        raise ValueError(f"background must be 'bc', 'bc+torso', 'white' or 'black', got {background!r}")
    i = fr.img_id
    if audio is not None:
        win = torch.from_numpy(np.asarray(audio[i], dtype=np.float32))
        nb = torch.from_numpy(audio.neighbours(i, neighbours))[None] if neighbours else None
    else:
        win = torch.zeros(16, 1)
        nb = torch.zeros(1, neighbours, 16, 1) if neighbours else None
    expr = clip.expr()
    au = clip.au_exp()
    return FrameBatch(
        image=img[None], face_mask=m["face"][None], mouth_mask=m["mouth"][None], hair_mask=m["hair"][None],
        torso_mask=m["torso"][None], background=bg[None],
        viewmat=torch.from_numpy(np.array(fr.viewmat, dtype=np.float32))[None],
        K=torch.from_numpy(np.array(fr.K, dtype=np.float32))[None],
        audio=win[None], audio_neighbours=nb,
        blink=torch.tensor([float(clip.blink()[i])], dtype=torch.float32),
        emotion=torch.tensor([clip.emotion], dtype=torch.long),
        intensity=torch.tensor([clip.intensity], dtype=torch.long),
        frame_index=torch.tensor([i], dtype=torch.long), clip_id=[clip.clip_id],
        expr=None if expr is None else torch.from_numpy(np.array(expr[i], dtype=np.float32))[None],
        au=None if au is None else torch.from_numpy(au[i])[None],
        landmarks=torch.from_numpy(clip.landmarks(position))[None] if landmarks else None,
    )

