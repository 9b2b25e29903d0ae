"""The training / evaluation datasets (DESIGN §2, §5.4), each returning one frame per item (a batch
with ``B = 1``; :func:`~ua3dtalk.data.batch.collate_batches` is the ``collate_fn`` that concatenates
them):

* :class:`FrameDataset` → :class:`~ua3dtalk.data.batch.FrameBatch` — images, masks, cameras, audio
  window / neighbours / context; for the rendering stages ``mouth``, ``face``, ``fuse``.
* :class:`AudioFrameDataset` → :class:`~ua3dtalk.data.batch.AudioBatch` — audio window, audio context,
  a waveform segment, expression coefficients, lip target, emotion labels; no image is decoded. For
  the ``prior`` and ``emotion`` stages.

Items are (clip index, frame position) pairs (:func:`all_positions`). Inference from any audio file
is :class:`ua3dtalk.data.predict.PredictDataset`; the per-frame features, audio context, lip target
and waveform segments are defined in :mod:`ua3dtalk.data.features`.

Memory (§5.4)
-------------
Nothing is preloaded. :class:`FrameDataset` decodes frames on demand and keeps at most
``cache_size`` decoded frames in an LRU cache *per worker process*, stored compactly as uint8
(image, parsing labels, the torso RGBA layer cropped to its alpha > 0 bounding box: ≈ 1.5 MB per
frame at 512² for the synthetic heads, ≈ 0.4 MB at 256²), so its memory is
bounded by ``num_workers × cache_size × frame size`` whatever the length of the video. Audio
features are memory-mapped; per clip only the per-frame features ([N,C]) are kept.

Workers: every dataset is picklable and drops its caches when pickled, so each DataLoader worker
has its own (under the ``fork`` start method a worker starts from a copy-on-write copy of the
main process's cache, which stays empty unless the main process itself reads frames); loaders
use ``persistent_workers=True`` when ``num_workers > 0`` (the caches survive epochs). An error while
loading a frame is a :class:`~ua3dtalk.data.formats.DatasetError` naming the file; it reaches the
main process as a ``DatasetError`` even from a worker.
"""
from __future__ import annotations

import mmap
import warnings
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import SAMPLE_RATE, AudioFeatures, load_wav, read_feature_file
from .batch import AudioBatch, FrameBatch
from .clip import ClipInfo
from .config import Background
from .features import (
    _check_features,
    _common_expr,
    audio_context_np,
    clip_frame_features,
    lip_target,
    waveform_segment,
)
from .formats import (
    DatasetError,
    DatasetWarning,
    Problem,
    composite,
    parsing_masks,
    read_image_array,
    read_parsing,
    read_teeth_mask,
)

Tensor = torch.Tensor

BACKGROUNDS = get_args(Background)  # ("bc", "bc+torso", "white", "black"), data/config.py


# --------------------------------------------------------------------------------------------------
# caches and shared dataset plumbing
# --------------------------------------------------------------------------------------------------


def _off_heap(a: Optional[np.ndarray], min_bytes: int = 1 << 16) -> Optional[np.ndarray]:
    """A copy of ``a`` in its own anonymous memory map (unmapped when the array is freed), for arrays of
    at least ``min_bytes``; smaller ones are returned as they are.

    Long-lived cache entries allocated with ``malloc`` among the many short-lived multi-megabyte
    temporaries of frame decoding fragment the heap (glibc raises its mmap threshold after the first
    large free, so large temporaries come from the heap too), and freed entries are then not returned
    to the system: at 512² the resident size of a 256-frame cache grew to ≈ 3× its contents. Entries
    outside the heap leave it unfragmented, and the temporaries keep the fast heap allocator.
    """
    if a is None or a.nbytes < min_bytes:
        return a
    buf = mmap.mmap(-1, a.nbytes)
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size).reshape(a.shape)
    out[...] = a
    return out


class LRUCache:
    """A bounded least-recently-used mapping (``maxsize`` entries; 0 disables caching).
    Counts ``hits`` and ``misses``."""

    def __init__(self, maxsize: int):
        if maxsize < 0:
            raise ValueError(f"cache size must be ≥ 0, got {maxsize}")
        self.maxsize = int(maxsize)
        self._d: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key, compute: Callable[[], Any]):
        if key in self._d:
            self._d.move_to_end(key)
            self.hits += 1
            return self._d[key]
        self.misses += 1
        value = compute()
        if self.maxsize > 0:
            self._d[key] = value
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key) -> bool:
        return key in self._d

    def clear(self) -> None:
        self._d.clear()

    def info(self) -> dict:
        return {"size": len(self._d), "maxsize": self.maxsize, "hits": self.hits, "misses": self.misses}


def _as_index(positions, clips: Sequence[ClipInfo]) -> np.ndarray:
    """``positions`` (pairs (clip index, frame position)) → int64 [M,2], range-checked."""
    a = np.asarray(positions, dtype=np.int64) if len(positions) else np.zeros((0, 2), np.int64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"positions must be (clip index, frame position) pairs [M,2], got shape {list(a.shape)}")
    for ci in np.unique(a[:, 0]):
        if not 0 <= ci < len(clips):
            raise ValueError(f"positions: clip index {ci} out of range 0..{len(clips) - 1}")
        pos = a[a[:, 0] == ci, 1]
        n = len(clips[ci])
        if pos.min() < 0 or pos.max() >= n:
            raise ValueError(f"positions: frame position out of range 0..{n - 1} for clip {clips[ci].clip_id}")
    return a


def all_positions(clips: Sequence[ClipInfo], split: Optional[str] = None,
                  clip_indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """(clip index, position) pairs [M,2] of every frame of the chosen clips (default all), restricted
    to the clip's ``split`` ("train" / "val") when given."""
    out = []
    for ci in (range(len(clips)) if clip_indices is None else clip_indices):
        c = clips[ci]
        pos = np.arange(len(c)) if split is None else np.asarray(c.splits.get(split, np.zeros(0, np.int64)))
        out.append(np.stack([np.full(len(pos), ci, np.int64), np.asarray(pos, np.int64)], 1))
    return np.concatenate(out, 0) if out else np.zeros((0, 2), np.int64)



class _ClipFrames(Dataset):
    """Shared plumbing: (clip, position) index, lazily opened per-process audio features."""

    def __init__(self, clips: Sequence[ClipInfo], positions, feature: Optional[str], context: int,
                 context_feature: Optional[str] = None):
        self.clips = list(clips)
        self.index = _as_index(positions, self.clips)
        self.feature = feature
        # the audio context (prior style, emotion encoder) may come from another feature file
        self.context_feature = feature if context_feature is None else context_feature
        self.context = int(context or 0)
        if self.context < 0:
            raise ValueError(f"context must be ≥ 0, got {context}")
        used = [self.clips[i] for i in np.unique(self.index[:, 0])] if len(self.index) else []
        self.audio_dim = _check_features(used, feature)
        self.context_dim = (self.audio_dim if self.context_feature == feature
                            else _check_features(used, self.context_feature))
        self.use_expr = _common_expr(used)
        self._local: dict = {}

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getstate__(self):  # workers build their own caches
        d = dict(self.__dict__)
        d["_local"] = {}
        return d

    def _where(self, idx) -> tuple[int, int]:
        i = int(idx)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{type(self).__name__}: index {i} out of range for {len(self)} frames")
        ci, pos = self.index[i]
        return int(ci), int(pos)

    CLIP_CACHE = 64
    """Clips whose (memory-mapped) features and per-frame features are kept open per process."""

    def _lru(self, name: str, maxsize: int) -> LRUCache:
        if name not in self._local:
            self._local[name] = LRUCache(maxsize)
        return self._local[name]

    def _features(self, ci: int, feature: Optional[str] = None) -> Optional[AudioFeatures]:
        feature = self.feature if feature is None else feature
        if feature is None:
            return None

        def load():
            c = self.clips[ci]
            with warnings.catch_warnings():  # the length rule was reported when the dataset was built
                warnings.simplefilter("ignore", DatasetWarning)
                return read_feature_file(c.features[feature], c.num_frames, name=feature, warn=False)

        return self._lru(f"features/{feature}", self.CLIP_CACHE).get(ci, load)

    def _frame_feats(self, ci: int) -> np.ndarray:
        """Per-frame features of the context feature (the audio context is built from them)."""
        def compute():
            f = self._features(ci, self.context_feature)
            return clip_frame_features(f) if f is not None else np.zeros((self.clips[ci].num_frames, 1), np.float32)

        return self._lru("frame_feats", self.CLIP_CACHE).get(ci, compute)

    def _window(self, ci: int, img_id: int) -> np.ndarray:
        f = self._features(ci)
        return np.asarray(f[img_id], np.float32) if f is not None else np.zeros((16, 1), np.float32)

    def _context(self, ci: int, img_id: int) -> np.ndarray:
        return audio_context_np(self._frame_feats(ci), np.array([img_id]), self.context)[0]

    def _wrap_error(self, ci: int, pos: int, e: Exception) -> DatasetError:
        c = self.clips[ci]
        img_id = int(c.img_ids[pos])
        return DatasetError([Problem(c.image_path(pos), f"failed to load frame {img_id} of clip {c.clip_id}: "
                                                        f"{type(e).__name__}: {e}")])


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------


class FrameDataset(_ClipFrames):
    """Frames of one or more clips → :class:`~ua3dtalk.data.batch.FrameBatch` with B=1 per item.

    Produces what :func:`ua3dtalk.data.loading.read_frame` produces (same decoding, same values) plus
    ``audio_context``, with a bounded LRU cache of decoded frames per worker process.

    Args:
        clips: the clips (:class:`~ua3dtalk.data.clip.ClipInfo`).
        positions: (clip index, frame position) pairs [M,2] — item ``k`` is frame ``positions[k]``
            (:func:`all_positions` builds them).
        feature: stored audio feature name (a key of ``ClipInfo.features``: "mel", "ds", "hu", …);
            None gives zero audio windows [16,1].
        neighbours: number of neighbouring windows in ``audio_neighbours`` (0 = none).
        background: "bc", "bc+torso" (torso layer over ``bc.jpg``), "white" or "black".
        cache_size: decoded frames kept per worker (0 = no cache). Entries are uint8 (image, parsing
            labels, cropped torso RGBA), ≈ 1.5 MB each at 512² (≈ 400 MB per worker for 256 frames).
        context: frames of ``audio_context`` (0 = leave it None).
        landmarks: fill ``landmarks`` (one small ``.lms`` read per frame).
        context_feature: stored feature name of ``audio_context`` (None = ``feature``).
    """

    def __init__(self, clips: Sequence[ClipInfo], positions, feature: Optional[str] = "mel", neighbours: int = 8,
                 background: str = "bc+torso", cache_size: int = 256, context: int = 50, landmarks: bool = True,
                 context_feature: Optional[str] = None):
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        if neighbours < 0:
            raise ValueError(f"neighbours must be ≥ 0, got {neighbours}")
        super().__init__(clips, positions, feature, context, context_feature)
        self.neighbours = int(neighbours)
        self.background = background
        self.cache_size = int(cache_size)
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be ≥ 0, got {cache_size}")
        self.landmarks = bool(landmarks)
        used = [self.clips[i] for i in np.unique(self.index[:, 0])] if len(self.index) else []
        self.use_au = bool(used) and all(c.au_exp() is not None for c in used)

    # per-process caches -------------------------------------------------------------------------
    @property
    def cache(self) -> LRUCache:
        """This process's LRU cache of decoded frames."""
        return self._lru("frames", self.cache_size)

    def cache_info(self) -> dict:
        """``{"size", "maxsize", "hits", "misses"}`` of this process's frame cache."""
        return self.cache.info()

    def _bc(self, ci: int) -> Tensor:
        return self._lru("bc", 8).get(ci, self.clips[ci].background)

    def _decode(self, ci: int, pos: int) -> dict:
        c = self.clips[ci]
        img = read_image_array(c.image_path(pos), "RGB")
        h, w = img.shape[:2]
        labels = read_parsing(c.path("parsing", pos)).numpy()
        if labels.shape != (h, w):
            raise DatasetError([Problem(c.path("parsing", pos), f"parsing size {labels.shape} ≠ image size {(h, w)}")])
        teeth = read_teeth_mask(c.path("teeth", pos), (h, w)).numpy() if "teeth" in c.available else None
        torso = None
        if self.background == "bc+torso" and "torso" in c.available:
            rgba = read_image_array(c.path("torso", pos), "RGBA")
            if rgba.shape[:2] != (h, w):
                raise DatasetError([Problem(c.path("torso", pos),
                                            f"torso size {rgba.shape[:2]} ≠ image size {(h, w)}")])
            # keep only the bounding box of alpha > 0: compositing with alpha 0 returns the background
            # exactly, so the result is identical and the cache entry ~half the size
            rows, cols = np.flatnonzero(rgba[..., 3].any(1)), np.flatnonzero(rgba[..., 3].any(0))
            if rows.size:
                r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
                torso = ((r0, r1, c0, c1), np.ascontiguousarray(rgba[r0:r1, c0:c1]))
        lms = c.landmarks(pos) if self.landmarks else None
        if self.cache_size > 0:  # long-lived: keep it out of the malloc heap (see _off_heap)
            img, labels, teeth = _off_heap(img), _off_heap(labels), _off_heap(teeth)
            torso = None if torso is None else (torso[0], _off_heap(torso[1]))
        return {"image": img, "labels": labels, "teeth": teeth, "torso": torso, "landmarks": lms}

    def __getitem__(self, idx) -> FrameBatch:
        ci, pos = self._where(idx)
        try:
            raw = self.cache.get((ci, pos), lambda: self._decode(ci, pos))
            return self._assemble(ci, pos, raw)
        except DatasetError:
            raise
        except Exception as e:  # never a bare IndexError/KeyError from deep inside a worker
            raise self._wrap_error(ci, pos, e) from e

    def _assemble(self, ci: int, pos: int, raw: dict) -> FrameBatch:
        c = self.clips[ci]
        fr = c.frame(pos)
        i = fr.img_id
        img = torch.from_numpy(np.ascontiguousarray(raw["image"].transpose(2, 0, 1))).float().div_(255.0)
        h, w = img.shape[-2:]
        teeth = torch.from_numpy(raw["teeth"]) if raw["teeth"] is not None else None
        m = parsing_masks(torch.from_numpy(raw["labels"]), teeth)
        if self.background in ("bc", "bc+torso"):
            bg = self._bc(ci).clone()
            if raw["torso"] is not None:
                (r0, r1, c0, c1), crop = raw["torso"]
                fg = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255.0)
                bg[:, r0:r1, c0:c1] = composite(fg, bg[:, r0:r1, c0:c1])
        elif self.background == "white":
            bg = torch.ones(3, h, w)
        else:
            bg = torch.zeros(3, h, w)
        win = torch.from_numpy(self._window(ci, i))
        nb = None
        if self.neighbours:
            f = self._features(ci)
            nb = (torch.from_numpy(f.neighbours(i, self.neighbours)) if f is not None
                  else torch.zeros(self.neighbours, 16, 1))[None]
        ctx = torch.from_numpy(self._context(ci, i))[None] if self.context else None
        expr = c.expr() if self.use_expr else None
        au = c.au_exp() if self.use_au else None
        return FrameBatch(
            image=img[None], face_mask=m["face"][None], mouth_mask=m["mouth"][None], hair_mask=m["hair"][None],
            torso_mask=m["torso"][None], background=bg[None],
            viewmat=torch.from_numpy(np.array(fr.viewmat, dtype=np.float32))[None],
            K=torch.from_numpy(np.array(fr.K, dtype=np.float32))[None],
            audio=win[None], audio_neighbours=nb, audio_context=ctx,
            blink=torch.tensor([float(c.blink()[i])], dtype=torch.float32),
            emotion=torch.tensor([c.emotion], dtype=torch.long),
            intensity=torch.tensor([c.intensity], dtype=torch.long),
            frame_index=torch.tensor([i], dtype=torch.long), clip_id=[c.clip_id],
            expr=None if expr is None else torch.from_numpy(np.array(expr[i], dtype=np.float32))[None],
            au=None if au is None else torch.from_numpy(np.array(au[i], dtype=np.float32))[None],
            landmarks=None if raw["landmarks"] is None else torch.from_numpy(np.array(raw["landmarks"]))[None],
        )


class AudioFrameDataset(_ClipFrames):
    """Frames of one or more clips → :class:`AudioBatch` with B=1 per item (no image decoding).

    Args:
        clips, positions: as for :class:`FrameDataset`.
        feature: stored audio feature name (None → zero audio).
        segment_seconds: length of the ``waveform`` segment (0 → an empty [1,0] waveform). Clips
            without ``aud.wav`` give zeros (with a warning when the dataset is built).
        context: frames of the audio context.
        lip: fill ``lip`` from the landmarks (one ``.lms`` read per frame, cached per worker: 40 floats
            per frame, at most 131072 frames).
        wav_cache: decoded waveforms kept per worker (clips).
        context_feature: stored feature name of ``context`` (None = ``feature``).
    """

    def __init__(self, clips: Sequence[ClipInfo], positions, feature: Optional[str] = "mel",
                 segment_seconds: float = 2.0, context: int = 50, lip: bool = True, wav_cache: int = 16,
                 context_feature: Optional[str] = None):
        if int(context) < 1:
            raise ValueError(f"context must be ≥ 1 for an AudioBatch, got {context}")
        super().__init__(clips, positions, feature, context, context_feature)
        if segment_seconds < 0:
            raise ValueError(f"segment_seconds must be ≥ 0, got {segment_seconds}")
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = int(round(self.segment_seconds * SAMPLE_RATE))
        self.lip = bool(lip)
        self.wav_cache = int(wav_cache)
        if self.segment_samples:
            no_wav = sorted({self.clips[i].clip_id for i in np.unique(self.index[:, 0])
                             if self.clips[i].wav_path is None}) if len(self.index) else []
            if no_wav:
                warnings.warn(f"{len(no_wav)} clip(s) have no aud.wav ({', '.join(no_wav[:5])}); their waveform "
                              "segments are zeros", DatasetWarning, stacklevel=2)

    def _wav(self, ci: int) -> np.ndarray:
        p = self.clips[ci].wav_path
        return self._lru("wav", self.wav_cache).get(ci, lambda: load_wav(p) if p is not None
                                                    else np.zeros(0, np.float32))

    def _lip(self, ci: int, pos: int) -> np.ndarray:
        return self._lru("lip", 1 << 17).get((ci, pos), lambda: lip_target(self.clips[ci].landmarks(pos)))

    def __getitem__(self, idx) -> AudioBatch:
        ci, pos = self._where(idx)
        try:
            return self._item(ci, pos)
        except DatasetError:
            raise
        except Exception as e:
            raise self._wrap_error(ci, pos, e) from e

    def _item(self, ci: int, pos: int) -> AudioBatch:
        c = self.clips[ci]
        i = int(c.img_ids[pos])
        wav = waveform_segment(self._wav(ci), i, self.segment_samples) if self.segment_samples \
            else np.zeros(0, np.float32)
        expr = c.expr() if self.use_expr else None
        return AudioBatch(
            audio=torch.from_numpy(self._window(ci, i))[None],
            context=torch.from_numpy(self._context(ci, i))[None],
            waveform=torch.from_numpy(wav)[None],
            emotion=torch.tensor([c.emotion], dtype=torch.long),
            intensity=torch.tensor([c.intensity], dtype=torch.long),
            frame_index=torch.tensor([i], dtype=torch.long), clip_id=[c.clip_id],
            expr=None if expr is None else torch.from_numpy(np.array(expr[i], dtype=np.float32))[None],
            lip=torch.from_numpy(self._lip(ci, pos))[None] if self.lip else None,
        )
