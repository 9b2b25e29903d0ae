"""Datasets and Lightning DataModules (DESIGN §2, §5.4).

Three datasets, each returning one frame per item (a batch with ``B = 1``; :func:`collate_batches`
is the ``collate_fn`` that concatenates them):

* :class:`FrameDataset` → :class:`~ua3dtalk.data.batch.FrameBatch` — images, masks, cameras, audio
  window / neighbours / context; for the rendering stages ``mouth``, ``face``, ``fuse``.
* :class:`AudioFrameDataset` → :class:`AudioBatch` — audio window, audio context, a waveform segment,
  expression coefficients, lip target, emotion labels; no image is decoded. For the ``prior`` and
  ``emotion`` stages.
* :class:`PredictDataset` → :class:`PredictBatch` — inference from any audio file and a camera track.

and two DataModules: :class:`TalkingHeadDataModule` (a regular dataset, §5.1; the splits of its
``transforms_*.json``) and :class:`EmotionalTalkingHeadDataModule` (§5.2; splits by clip, stratified
per emotion, optional held-out emotions / intensities).

Definitions
-----------
**Frame features and audio context.** The per-frame feature of frame ``i`` is the mean of rows
``8:10`` of its §5.3 window (the two 50 Hz steps that belong to the frame); the audio context of
frame ``i`` is the per-frame features of frames ``i-25 … i+24`` (``context=50`` ≈ 2 s), the clip's
first / last frame repeated past its ends. This is exactly
:func:`ua3dtalk.models.prior.module.frame_features` / :func:`~ua3dtalk.models.prior.module.audio_context`,
computed here in numpy (:func:`frame_features_np`, :func:`audio_context_np`) so that the data layer
does not import the models (a test checks that the two agree bit for bit).

**Lip target** (:func:`lip_target`): the 20 mouth landmarks 48–67, minus their mean, divided by
the inter-ocular distance (distance between the means of landmarks 36–41 and 42–47), flattened to
40 numbers ``(x48, y48, x49, y49, …)`` — invariant to translation and scale of the face.

**Waveform segment** (:func:`waveform_segment`): ``round(segment_seconds · 16000)`` samples of the
16 kHz mono audio centred on the frame's centre (frame ``i`` spans samples ``[640 i, 640 (i+1))``,
centre ``640 i + 320``), zeros outside the recording.

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

import json
import mmap
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .audio import SAMPLE_RATE, AudioFeatures, extract_features, load_wav, make_extractor, read_feature_file
from .batch import FrameBatch, collate, collate_dataclass
from .cameras import Cameras, intrinsics, opengl_c2w_to_opencv_w2c
from .formats import (
    EMOTIONS,
    FPS,
    INTENSITIES,
    ClipInfo,
    DatasetError,
    DatasetWarning,
    Problem,
    composite,
    frames_for_audio,
    iter_clips,
    list_clip_dirs,
    load_dataset,
    load_emotional,
    parsing_masks,
    read_image,
    read_image_array,
    read_parsing,
    read_teeth_mask,
)
from .samplers import BlinkCurriculumSampler, MouthOpenCurriculumSampler, mouth_openness
from .splits import split_emotional_clips

Tensor = torch.Tensor

__all__ = [
    "AudioBatch", "PredictBatch", "collate_audio", "collate_predict", "collate_batches", "FrameDataset",
    "AudioFrameDataset", "PredictDataset", "TalkingHeadDataModule", "EmotionalTalkingHeadDataModule",
    "frame_features_np", "audio_context_np", "clip_frame_features", "lip_target", "waveform_segment",
    "synthetic_blinks", "load_camera_track", "split_emotional_clips", "STAGES", "AUDIO_STAGES", "FRAME_STAGES",
    "BACKGROUNDS", "EXTRACTOR_FEATURES",
]

STAGES = ("prior", "emotion", "mouth", "face", "fuse")
AUDIO_STAGES = ("prior", "emotion")
FRAME_STAGES = ("mouth", "face", "fuse")
BACKGROUNDS = ("bc", "bc+torso", "white", "black")
EXTRACTOR_FEATURES = ("mel", "wav2vec2")
"""``feature`` values that name an extractor (computed by ``prepare_data``); any other value names a
stored file ``aud_<feature>.npy`` (``ds``, ``hu``, ``eo``, ``w2v``, ``aud``, or a cache name such as
``w2v_wav2vec2-base-960h_logits``)."""

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


# --------------------------------------------------------------------------------------------------
# numpy helpers (definitions in the module docstring)
# --------------------------------------------------------------------------------------------------


def frame_features_np(windows: np.ndarray, pad: int = 8, stride: int = 2) -> np.ndarray:
    """Per-frame features from §5.3 windows: [N,W,C] → [N,C] float32, the mean of window rows
    ``pad : pad+stride`` (numpy twin of ``ua3dtalk.models.prior.module.frame_features``)."""
    w = np.asarray(windows, dtype=np.float32)
    if w.ndim != 3:
        raise ValueError(f"windows: expected [N,W,C], got shape {list(w.shape)}")
    if w.shape[1] < pad + stride:
        raise ValueError(f"windows of {w.shape[1]} steps do not contain positions {pad}:{pad + stride}")
    return w[:, pad:pad + stride].mean(1)


def audio_context_np(frame_feats: np.ndarray, frames: Sequence[int] | np.ndarray, context: int = 50) -> np.ndarray:
    """Audio context: ``frame_feats`` [N,C] of one clip, ``frames`` [B] indices → [B,context,C] holding
    frames ``i - context//2 … i + context - context//2 - 1``, indices clamped to the clip (numpy twin
    of ``ua3dtalk.models.prior.module.audio_context``)."""
    f = np.asarray(frame_feats)
    fr = np.asarray(frames)
    if f.ndim != 2:
        raise ValueError(f"frame_feats: expected [N,C], got shape {list(f.shape)}")
    if fr.ndim != 1 or not np.issubdtype(fr.dtype, np.integer):
        raise ValueError(f"frames: expected an integer array [B], got {fr.dtype} {list(fr.shape)}")
    n = f.shape[0]
    if n == 0:
        raise ValueError("frame_feats is empty (audio shorter than one frame)")
    if fr.size and (fr.min() < 0 or fr.max() >= n):
        raise ValueError(f"frames must index the {n} frames of the clip, got range [{fr.min()}, {fr.max()}]")
    off = np.arange(int(context)) - int(context) // 2
    idx = np.clip(fr.astype(np.int64)[:, None] + off[None], 0, n - 1)
    return f[idx]


def clip_frame_features(feats: AudioFeatures, chunk_bytes: int = 1 << 24) -> np.ndarray:
    """Per-frame features [N,C] float32 of a whole clip, computed in chunks (bounded temporary memory)."""
    n = feats.num_frames
    out = np.zeros((n, feats.dim), np.float32)
    step = max(1, chunk_bytes // (16 * 4 * max(feats.dim, 1)))
    for s in range(0, n, step):
        e = min(n, s + step)
        out[s:e] = frame_features_np(feats.windows(np.arange(s, e)))
    return out


def lip_target(landmarks: np.ndarray) -> np.ndarray:
    """Lip target of 68-point landmarks [...,68,2] → [...,40] float32 (module docstring): mouth
    landmarks 48–67 mean-centred and divided by the inter-ocular distance, flattened (x, y pairs)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks: expected [...,68,2], got shape {list(lm.shape)}")
    mouth = lm[..., 48:68, :]
    centred = mouth - mouth.mean(-2, keepdims=True)
    iod = np.linalg.norm(lm[..., 36:42, :].mean(-2) - lm[..., 42:48, :].mean(-2), axis=-1)
    out = centred / np.maximum(iod, 1e-6)[..., None, None]
    return out.reshape(lm.shape[:-2] + (40,)).astype(np.float32)


def waveform_segment(wav: np.ndarray, frame: int, num_samples: int) -> np.ndarray:
    """``num_samples`` of ``wav`` (16 kHz) centred on frame ``frame``'s centre sample ``640·frame + 320``
    (start ``centre − num_samples//2``), zero-padded outside the recording → float32 [num_samples]."""
    out = np.zeros(int(num_samples), np.float32)
    if num_samples <= 0:
        return out
    start = SAMPLES_PER_FRAME * int(frame) + SAMPLES_PER_FRAME // 2 - int(num_samples) // 2
    a, b = max(start, 0), min(start + int(num_samples), wav.shape[0])
    if b > a:
        out[a - start:b - start] = wav[a:b]
    return out


def synthetic_blinks(num_frames: int, seed: int = 0, fps: int = FPS) -> np.ndarray:
    """A plausible blink schedule [num_frames] float32 in [0,1] (eye closure): a first blink after
    0.5–2 s, then one every 2–5 s, each 5 frames with closure (0.5, 0.9, 1.0, 0.85, 0.4) — the
    schedule of the synthetic generator. Deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(num_frames), np.float32)
    prof = np.array([0.5, 0.9, 1.0, 0.85, 0.4], np.float32)
    t = int(rng.uniform(0.5, 2.0) * fps)
    while t < num_frames:
        k = min(len(prof), num_frames - t)
        out[t:t + k] = prof[:k]
        t += int(rng.uniform(2.0, 5.0) * fps)
    return out


# --------------------------------------------------------------------------------------------------
# batch dataclasses
# --------------------------------------------------------------------------------------------------


def _check_batch(obj, spec: dict, optional: Sequence[str], b: int, what: str) -> None:
    sizes: dict[str, int] = {}
    for name, (trail, kind) in spec.items():
        t = getattr(obj, name)
        if t is None:
            if name in optional:
                continue
            raise ValueError(f"{what}: `{name}` is required")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        want = "[B," + ",".join("*" if s is None else str(s) for s in trail) + "]" if trail else "[B]"
        if t.dim() != 1 + len(trail) or t.shape[0] != b:
            raise ValueError(f"{what}: `{name}` must have shape {want} with B={b}, got {list(t.shape)}")
        for s, d in zip(trail, t.shape[1:]):
            if isinstance(s, int) and s != d:
                raise ValueError(f"{what}: `{name}` must have shape {want}, got {list(t.shape)}")
            if isinstance(s, str) and sizes.setdefault(s, d) != d:
                raise ValueError(f"{what}: `{name}` has {s}={d}, other fields have {s}={sizes[s]}")
        ok = t.is_floating_point() if kind == "float" else t.dtype == torch.int64
        if not ok:
            raise ValueError(f"{what}: `{name}` must be {'floating point' if kind == 'float' else 'int64'}, "
                             f"got {t.dtype}")


class _BatchOps:
    """``to`` / ``pin_memory`` / ``len`` / indexing for the batch dataclasses (list fields are copied)."""

    _LIST_FIELDS: tuple[str, ...] = ()

    def tensor_fields(self) -> dict[str, Tensor]:
        """All tensor fields that are present (optional ``None`` fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def _map(self, fn, lists: Optional[dict] = None):
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in self.tensor_fields().items():
            kw[k] = fn(v)
        for k in self._LIST_FIELDS:
            kw[k] = list(kw[k]) if lists is None else lists[k]
        return type(self)(**kw)

    def to(self, device, non_blocking: bool = False):
        """A copy with every tensor moved to ``device`` (dtypes unchanged)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        """Used by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())

    def __getitem__(self, idx):
        """Select along the batch dimension (an int keeps B=1, a slice, or an index tensor/list)."""
        n = len(self)
        if isinstance(idx, int):
            if not -n <= idx < n:
                raise IndexError(f"{type(self).__name__} index {idx} out of range for batch size {n}")
            sel = [idx % n]
        elif isinstance(idx, slice):
            sel = list(range(n))[idx]
        else:
            sel = [int(i) % n for i in torch.as_tensor(idx).reshape(-1).tolist()]
        index = torch.as_tensor(sel, dtype=torch.long)
        lists = {k: [getattr(self, k)[i] for i in sel] for k in self._LIST_FIELDS}
        return self._map(lambda t: t.index_select(0, index.to(t.device)), lists)


_AUDIO_SPEC: dict[str, tuple[tuple, str]] = {
    "audio": ((16, "C"), "float"),
    "context": ((None, "Cc"), "float"),  # Cc = C unless the DataModule has a context_feature
    "waveform": ((None,), "float"),
    "expr": ((None,), "float"),
    "lip": ((None,), "float"),
    "emotion": ((), "long"),
    "intensity": ((), "long"),
    "frame_index": ((), "long"),
}


@dataclass
class AudioBatch(_BatchOps):
    """Audio-side batch of ``B`` video frames for the ``prior`` and ``emotion`` stages (no images).

    ===========  ============  =======  ==========================================================
    field        shape         dtype    meaning
    ===========  ============  =======  ==========================================================
    audio        [B,16,C]      float32  the frame's §5.3 audio window
    context      [B,50,C']     float32  audio context (frames i-25 … i+24, module docstring) of the
                                        ``context_feature`` (C' = C when it is the window feature)
    waveform     [B,S]         float32  16 kHz segment of ``segment_seconds`` centred on the frame
                                        (zero-padded at clip edges; S = 0 when disabled)
    expr         [B,K] | None  float32  expression coefficients (``expr.npy``)
    lip          [B,40] | None float32  lip target (:func:`lip_target`)
    emotion      [B]           int64    index into ``EMOTIONS``, -1 unknown
    intensity    [B]           int64    1..3, 0 unknown
    frame_index  [B]           int64    the frame's ``img_id``
    clip_id      list[str]     -        clip of each frame
    ===========  ============  =======  ==========================================================
    """

    audio: Tensor
    context: Tensor
    waveform: Tensor
    emotion: Tensor
    intensity: Tensor
    frame_index: Tensor
    clip_id: list[str]
    expr: Optional[Tensor] = None
    lip: Optional[Tensor] = None

    _LIST_FIELDS = ("clip_id",)

    def __post_init__(self) -> None:
        if not isinstance(self.clip_id, list) or not all(isinstance(c, str) for c in self.clip_id):
            raise ValueError(f"AudioBatch: `clip_id` must be a list of str, got {self.clip_id!r}")
        _check_batch(self, _AUDIO_SPEC, ("expr", "lip"), len(self.clip_id), "AudioBatch")

    def __len__(self) -> int:
        return len(self.clip_id)


_PREDICT_SPEC: dict[str, tuple[tuple, str]] = {
    "viewmat": ((4, 4), "float"),
    "K": ((3, 3), "float"),
    "audio": ((16, "C"), "float"),
    "audio_neighbours": ((None, 16, "C"), "float"),
    "audio_context": ((None, "Cc"), "float"),
    "blink": ((), "float"),
    "background": ((3, "H", "W"), "float"),
    "frame_index": ((), "long"),
    "emotion": ((), "long"),
    "intensity": ((), "long"),
    "waveform": ((None,), "float"),
}


@dataclass
class PredictBatch(_BatchOps):
    """Inference batch of ``B`` output frames (:class:`PredictDataset`). Field names match
    :class:`~ua3dtalk.data.batch.FrameBatch` where they mean the same thing.

    ================  ==================  =======  ==================================================
    field             shape               dtype    meaning
    ================  ==================  =======  ==================================================
    viewmat           [B,4,4]             float32  world→camera (OpenCV) of the output frame
    K                 [B,3,3]             float32  intrinsics for ``width`` × ``height``
    audio             [B,16,C]            float32  audio window of the frame
    audio_neighbours  [B,8,16,C] | None   float32  windows of frames i-4 … i+3
    audio_context     [B,50,C] | None     float32  audio context (frames i-25 … i+24)
    blink             [B]                 float32  eye closure in [0,1]
    background        [B,3,H,W]           float32  what the head is composited over
    frame_index       [B]                 int64    output frame number (0-based, 25 fps)
    emotion           [B]                 int64    requested emotion id, -1 = from the audio
    intensity         [B]                 int64    requested intensity 1..3, 0 = unspecified
    waveform          [B,S] | None        float32  16 kHz segment centred on the frame
    ================  ==================  =======  ==================================================
    """

    viewmat: Tensor
    K: Tensor
    audio: Tensor
    blink: Tensor
    background: Tensor
    frame_index: Tensor
    emotion: Tensor
    intensity: Tensor
    audio_neighbours: Optional[Tensor] = None
    audio_context: Optional[Tensor] = None
    waveform: Optional[Tensor] = None

    def __post_init__(self) -> None:
        b = self.frame_index.shape[0] if isinstance(self.frame_index, torch.Tensor) and self.frame_index.dim() else -1
        _check_batch(self, _PREDICT_SPEC, ("audio_neighbours", "audio_context", "waveform"), b, "PredictBatch")

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])

    @property
    def height(self) -> int:
        return int(self.background.shape[-2])

    @property
    def width(self) -> int:
        return int(self.background.shape[-1])


def collate_audio(batches: Sequence[AudioBatch]) -> AudioBatch:
    """Concatenate :class:`AudioBatch` objects along the batch dimension."""
    return collate_dataclass(AudioBatch, batches, ("clip_id",))


def collate_predict(batches: Sequence[PredictBatch]) -> PredictBatch:
    """Concatenate :class:`PredictBatch` objects along the batch dimension."""
    return collate_dataclass(PredictBatch, batches)


def collate_batches(batches: Sequence):
    """``collate_fn`` for every dataset of this module: dispatches on the element type
    (:class:`FrameBatch`, :class:`AudioBatch`, :class:`PredictBatch`)."""
    batches = list(batches)
    if not batches:
        raise ValueError("collate: empty batch")
    first = batches[0]
    if isinstance(first, FrameBatch):
        return collate(batches)
    if isinstance(first, AudioBatch):
        return collate_audio(batches)
    if isinstance(first, PredictBatch):
        return collate_predict(batches)
    raise ValueError(f"collate: unsupported element type {type(first).__name__}")


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


def feature_dim(clip: ClipInfo, feature: str, warn: bool = True) -> int:
    """Channels ``C`` of the stored feature ``feature`` of a clip (checks the file: shape, NaN, length
    rule); raises :class:`DatasetError` naming the missing / bad file."""
    key = ("feature_dim", feature)
    if key not in clip._cache:
        if feature not in clip.features:
            have = ", ".join(sorted(clip.features)) or "none"
            raise DatasetError([Problem(clip.root / f"aud_{feature}.npy",
                                        f"no audio feature file '{feature}' in the clip (available: {have}); "
                                        "compute it with `ua3dtalk-features` or DataModule.prepare_data()")])
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore", DatasetWarning)
            clip._cache[key] = read_feature_file(clip.features[feature], clip.num_frames, name=feature).dim
    return clip._cache[key]


def _check_features(clips: Sequence[ClipInfo], feature: Optional[str]) -> int:
    """Feature channels shared by all clips (1 when ``feature`` is None: zero audio)."""
    if feature is None:
        return 1
    problems, dims = [], {}
    for c in clips:
        try:
            dims[c.clip_id] = feature_dim(c, feature)
        except DatasetError as e:
            problems += e.problems
    if problems:
        raise DatasetError(problems)
    if len(set(dims.values())) > 1:
        raise DatasetError([Problem(clips[0].root.parent, f"audio feature '{feature}' has different channel counts "
                                                          f"across clips: {dims}")])
    return next(iter(dims.values())) if dims else 1


def _common_expr(clips: Sequence[ClipInfo]) -> bool:
    """Whether every clip has ``expr.npy`` of one width K (mixed presence → warning, expr dropped)."""
    have = [c for c in clips if c.expr() is not None]
    if not have:
        return False
    widths = {c.clip_id: int(c.expr().shape[1]) for c in have}
    if len(set(widths.values())) > 1:
        raise DatasetError([Problem(have[0].root / "expr.npy",
                                    f"expr.npy has different widths K across clips: {widths}")])
    if len(have) < len(clips):
        missing = [c.clip_id for c in clips if c.expr() is None]
        warnings.warn(f"expr.npy missing in {len(missing)} of {len(clips)} clips ({', '.join(missing[:5])}…); "
                      "expression coefficients are left out of every batch", DatasetWarning, stacklevel=3)
        return False
    return True


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

    Produces what :func:`ua3dtalk.data.formats.read_frame` produces (same decoding, same values) plus
    ``audio_context``, with a bounded LRU cache of decoded frames per worker process.

    Args:
        clips: the clips (:class:`~ua3dtalk.data.formats.ClipInfo`).
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


# --------------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------------


def load_camera_track(path: Union[str, Path]) -> tuple[np.ndarray, Optional[np.ndarray], Optional[int], Optional[int]]:
    """Read a camera track → (viewmats [L,4,4] float32 world→camera OpenCV, K [3,3] or None, width or
    None, height or None).

    Accepted files: ``.npy`` [L,4,4] (or [4,4]) viewmats; ``.json`` holding a list of 4×4 viewmats,
    ``{"viewmats": [...], "K": 3×3, "width": W, "height": H}``, or an ER-NeRF ``transforms_*.json``
    (OpenGL camera-to-world ``transform_matrix`` per frame, converted as in
    :mod:`ua3dtalk.data.cameras`). Raises :class:`DatasetError` naming the file.
    """
    path = Path(path)
    K = width = height = None
    try:
        if path.suffix == ".npy":
            vm = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            obj = json.loads(path.read_text())
            if isinstance(obj, dict) and "frames" in obj:
                c2w = np.array([f["transform_matrix"] for f in obj["frames"]], dtype=np.float64)
                vm = opengl_c2w_to_opencv_w2c(c2w)
                K = intrinsics(float(obj["focal_len"]), float(obj["cx"]), float(obj["cy"]))
                width, height = obj.get("w"), obj.get("h")
            elif isinstance(obj, dict):
                vm = np.asarray(obj["viewmats"], dtype=np.float64)
                K = None if obj.get("K") is None else np.asarray(obj["K"], dtype=np.float64)
                width, height = obj.get("width"), obj.get("height")
            else:
                vm = np.asarray(obj, dtype=np.float64)
        else:
            raise DatasetError([Problem(path, "camera track must be a .npy or .json file")])
    except FileNotFoundError:
        raise DatasetError([Problem(path, "missing camera track file")]) from None
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - json/numpy parsers raise many types (Syntax, Key, Type, Value, ...)
        raise DatasetError([Problem(path, f"unreadable camera track ({type(e).__name__}: {e})")]) from None
    for name, v in (("width", width), ("height", height)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise DatasetError([Problem(path, f"camera track: {name} must be a positive integer, got {v!r}")])
    try:
        vm = np.asarray(vm, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError([Problem(path, f"camera track: viewmats are not numbers ({e})")]) from None
    if vm.shape == (4, 4):
        vm = vm[None]
    if vm.ndim != 3 or vm.shape[1:] != (4, 4) or vm.shape[0] == 0:
        raise DatasetError([Problem(path, f"camera track must hold [L,4,4] world→camera viewmats (OpenCV), got "
                                          f"shape {list(vm.shape)} (a synthetic pose.npy [N,6] is a head pose, not a "
                                          "camera track)")])
    if not np.isfinite(vm).all() or (K is not None and (np.shape(K) != (3, 3) or not np.isfinite(K).all())):
        raise DatasetError([Problem(path, "camera track contains NaN/Inf or a K that is not 3×3")])
    return (vm.astype(np.float32), None if K is None else np.asarray(K, np.float32),
            None if width is None else int(width), None if height is None else int(height))


def _loop_index(j: np.ndarray, n: int, mode: str) -> np.ndarray:
    if mode == "mirror":  # ping-pong, RAD-NeRF / ER-NeRF `mirror_index`
        turn, res = j // n, j % n
        return np.where(turn % 2 == 0, res, n - 1 - res)
    if mode == "repeat":
        return j % n
    if mode == "hold":
        return np.minimum(j, n - 1)
    raise ValueError(f"loop must be 'mirror', 'repeat' or 'hold', got {mode!r}")


def _background_image(spec, width: int, height: int, bc_path: Optional[Path]) -> Tensor:
    if isinstance(spec, torch.Tensor):
        t = spec.float()
        if t.shape != (3, height, width):
            raise ValueError(f"background tensor must be [3,{height},{width}], got {list(t.shape)}")
        return t
    if spec == "white":
        return torch.ones(3, height, width)
    if spec == "black":
        return torch.zeros(3, height, width)
    if spec in ("bc", "bc+torso"):
        if bc_path is None:
            return torch.ones(3, height, width)  # no bc.jpg: white, as the readers do
        spec = bc_path
    from PIL import Image

    img = read_image(spec)
    if img.shape[-2:] != (height, width):
        a = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        a = np.asarray(Image.fromarray(a).resize((width, height), Image.BILINEAR))
        img = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)
    return img


class PredictDataset(Dataset):
    """Inference frames for any audio file → :class:`PredictBatch` with B=1 per item.

    The number of frames is ``round(duration · 25)`` of the audio (or ``features.num_frames`` when
    precomputed :class:`~ua3dtalk.data.audio.AudioFeatures` are given).

    Args:
        audio_path: any audio file libsndfile reads (any rate, any channels; resampled to 16 kHz mono).
            May be None when ``features`` are precomputed (then ``waveform`` is None).
        features: precomputed :class:`AudioFeatures` for this audio, an extractor name ("mel",
            "wav2vec2") run on the audio in memory (never cached to disk), or an extractor object.
        cameras: the camera track: a :class:`ClipInfo` (its cameras, K, size and ``bc.jpg``), a
            :class:`~ua3dtalk.data.cameras.Cameras`, a ``.npy``/``.json`` file of viewmats
            (:func:`load_camera_track`) or an array [L,4,4]. Looped (``loop``) / trimmed to the audio.
        K: intrinsics [3,3] (default: the track's; scaled when ``width``/``height`` differ from it).
        width, height: output size (default: the track's).
        emotion: "audio" (the model derives it from the audio; id -1), an emotion name or id.
        intensity: 1..3, or None (0: unspecified / average of levels).
        background: "white", "black", "bc" / "bc+torso" (the track clip's ``bc.jpg``; the per-frame
            torso layer of a recording does not apply to new audio), an image path, or a tensor [3,H,W].
        extractor_model, extractor_layer: wav2vec2 model (hub id or directory) and output when an
            extractor name is "wav2vec2".
        neighbours, context: as for :class:`FrameDataset`.
        blink: "zeros", "synthetic" (:func:`synthetic_blinks` with ``blink_seed``) or an array [N].
        loop: how a shorter camera track is extended: "mirror" (ping-pong, as ER-NeRF), "repeat", "hold".
        segment_seconds: length of the ``waveform`` segments (0 → None).
        context_features: features of ``audio_context`` when they differ from ``features`` (the
            DataModule's ``context_feature``), given like ``features``; None = ``features``.
    """

    def __init__(self, audio_path: Union[str, Path, None], features: Union[AudioFeatures, str, Any] = "mel",
                 cameras: Union[ClipInfo, Cameras, str, Path, np.ndarray, None] = None,
                 K: Optional[np.ndarray] = None, width: Optional[int] = None, height: Optional[int] = None,
                 emotion: Union[str, int] = "audio", intensity: Optional[int] = None,
                 background: Union[str, Path, Tensor] = "white", extractor_model: Optional[str] = None,
                 neighbours: int = 8, context: int = 50, blink: Union[str, np.ndarray] = "zeros",
                 blink_seed: int = 0, loop: str = "mirror", segment_seconds: float = 2.0,
                 extractor_layer: Optional[Union[str, int]] = None,
                 context_features: Union[AudioFeatures, str, Any, None] = None):
        self.audio_path = None if audio_path is None else Path(audio_path)
        wav = load_wav(self.audio_path) if self.audio_path is not None else None

        def as_features(spec, n: Optional[int], key: str) -> AudioFeatures:
            if isinstance(spec, AudioFeatures):
                return spec if n is None or spec.num_frames == n else \
                    AudioFeatures(spec.to_array(), n, layout="windows", name=spec.name, warn=False)
            if wav is None:
                raise ValueError("PredictDataset: audio_path is required unless precomputed AudioFeatures are given")
            if isinstance(spec, str):
                if spec not in EXTRACTOR_FEATURES:
                    raise ValueError(f"PredictDataset: features must be AudioFeatures, an extractor object or one of "
                                     f"{EXTRACTOR_FEATURES}, got {spec!r}")
                spec = make_extractor(spec, **({} if spec == "mel" else {"model": extractor_model, "config_key": key,
                                                                         "layer": extractor_layer}))
            return AudioFeatures(np.ascontiguousarray(spec(wav), dtype=np.float32),
                                 num_frames=frames_for_audio(wav.shape[0]) if n is None else n,
                                 name=getattr(spec, "name", ""), warn=False)

        feats = as_features(features, None, "data.feature")
        self.num_frames = int(feats.num_frames)
        if self.num_frames <= 0:
            raise ValueError(f"PredictDataset: {self.audio_path} is shorter than one frame (40 ms)")
        self.features = feats
        self.audio_dim = feats.dim
        self.neighbours, self.context = int(neighbours), int(context or 0)
        # the audio context (prior style, emotion encoder): ``context_features`` (same audio), else ``features``
        ctx_feats = (feats if context_features is None
                     else as_features(context_features, self.num_frames, "data.context_feature"))
        self.context_features = ctx_feats
        self.context_dim = ctx_feats.dim
        self._frame_feats = clip_frame_features(ctx_feats) if self.context else None
        self.segment_samples = int(round(float(segment_seconds) * SAMPLE_RATE))
        self.wav = wav if self.segment_samples > 0 else None

        # cameras
        bc_path = None
        if isinstance(cameras, ClipInfo):
            vm, K0, w0, h0 = cameras.cameras.viewmats, cameras.cameras.K, cameras.width, cameras.height
            bc_path = cameras.background_path
        elif isinstance(cameras, Cameras):
            vm, K0, w0, h0 = cameras.viewmats, cameras.K, cameras.width, cameras.height
        elif isinstance(cameras, (str, Path)):
            vm, K0, w0, h0 = load_camera_track(cameras)
        elif cameras is not None:
            vm, K0, w0, h0 = np.asarray(cameras, dtype=np.float32), None, None, None
            if vm.shape == (4, 4):
                vm = vm[None]
            if vm.ndim != 3 or vm.shape[1:] != (4, 4):
                raise ValueError(f"cameras array must be [L,4,4] viewmats, got {list(vm.shape)}")
        else:
            raise ValueError("PredictDataset: a camera track is required (a ClipInfo, Cameras, a .npy/.json file of "
                             "viewmats, or an [L,4,4] array)")
        width = int(width) if width is not None else w0
        height = int(height) if height is not None else h0
        if width is None or height is None:
            raise ValueError("PredictDataset: width and height are required for this camera track")
        if K is not None:
            Kf = np.asarray(K, dtype=np.float32)
        elif K0 is not None:
            Kf = np.array(K0, dtype=np.float32)
            if w0 is not None and h0 is not None and (w0, h0) != (width, height):
                Kf[0] *= width / w0
                Kf[1] *= height / h0
        else:
            raise ValueError("PredictDataset: intrinsics K are required for this camera track")
        if Kf.shape != (3, 3):
            raise ValueError(f"K must be 3×3, got {list(Kf.shape)}")
        self.width, self.height, self.K = width, height, Kf
        self.loop = loop
        cam_idx = _loop_index(np.arange(self.num_frames), len(vm), loop)
        self.viewmats = np.ascontiguousarray(np.asarray(vm, np.float32)[cam_idx])
        self.background = _background_image(background, width, height, bc_path)

        # emotion
        if isinstance(emotion, str) and emotion.strip().lower() == "audio":
            self.emotion = -1
        elif isinstance(emotion, str):
            name = emotion.strip().lower()
            if name not in EMOTIONS:
                raise ValueError(f"unknown emotion {emotion!r}; expected 'audio' or one of {', '.join(EMOTIONS)}")
            self.emotion = EMOTIONS.index(name)
        else:
            if isinstance(emotion, bool) or not 0 <= int(emotion) < len(EMOTIONS):
                raise ValueError(f"emotion id must be in 0..{len(EMOTIONS) - 1}, got {emotion!r}")
            self.emotion = int(emotion)
        if intensity is not None and (isinstance(intensity, bool) or int(intensity) not in INTENSITIES):
            raise ValueError(f"intensity must be 1, 2, 3 or None, got {intensity!r}")
        self.intensity = 0 if intensity is None else int(intensity)

        # blinks
        if isinstance(blink, str):
            if blink == "zeros":
                self.blink = np.zeros(self.num_frames, np.float32)
            elif blink == "synthetic":
                self.blink = synthetic_blinks(self.num_frames, blink_seed)
            else:
                raise ValueError(f"blink must be 'zeros', 'synthetic' or an array, got {blink!r}")
        else:
            b = np.asarray(blink, dtype=np.float32).reshape(-1)
            if b.shape[0] != self.num_frames:
                raise ValueError(f"blink array has {b.shape[0]} values for {self.num_frames} frames")
            self.blink = np.clip(b, 0.0, 1.0)

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, idx) -> PredictBatch:
        j = int(idx)
        if not 0 <= j < self.num_frames:
            raise IndexError(f"PredictDataset: frame {j} out of range 0..{self.num_frames - 1}")
        f = self.features
        nb = torch.from_numpy(f.neighbours(j, self.neighbours))[None] if self.neighbours else None
        ctx = (torch.from_numpy(audio_context_np(self._frame_feats, np.array([j]), self.context))
               if self.context else None)
        wav = (torch.from_numpy(waveform_segment(self.wav, j, self.segment_samples))[None]
               if self.wav is not None else None)
        return PredictBatch(
            viewmat=torch.from_numpy(self.viewmats[j].copy())[None], K=torch.from_numpy(self.K.copy())[None],
            audio=torch.from_numpy(np.asarray(f[j], np.float32))[None], audio_neighbours=nb, audio_context=ctx,
            blink=torch.tensor([float(self.blink[j])], dtype=torch.float32), background=self.background.clone()[None],
            frame_index=torch.tensor([j], dtype=torch.long), emotion=torch.tensor([self.emotion], dtype=torch.long),
            intensity=torch.tensor([self.intensity], dtype=torch.long), waveform=wav,
        )


# --------------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------------


def _limit(index: np.ndarray, k: Optional[int]) -> np.ndarray:
    """At most ``k`` rows of ``index``, evenly spaced (deterministic)."""
    if k is None or len(index) <= k:
        return index
    if k <= 0:
        return index[:0]
    sel = np.unique(np.round(np.linspace(0, len(index) - 1, int(k))).astype(np.int64))
    return index[sel]


class TalkingHeadDataModule(L.LightningDataModule):
    """DataModule of a regular dataset (DESIGN §5.1): one subject directory (or every clip of an
    emotional root, each with its own transforms split).

    Train / val frames are the clip's ``transforms_train.json`` / ``transforms_val.json`` frames;
    ``test`` = val; ``predict`` re-renders the first val clip from its own audio and camera track
    (or ``predict_audio`` when given).

    Loaders follow :attr:`stage`: ``mouth`` / ``face`` / ``fuse`` → :class:`FrameBatch` loaders
    (``batch_size``, optional curriculum ``sampler``); ``prior`` / ``emotion`` → :class:`AudioBatch`
    loaders (``audio_batch_size``, shuffled). Shuffling is seeded (``seed``).

    Args:
        root: the dataset directory.
        feature: "mel" or "wav2vec2" (extractors: ``prepare_data`` computes and caches
            ``aud_<name>.npy``), or the name of a stored feature file (``ds``, ``hu``, ``eo``, ``w2v``,
            ``aud`` or a cache name) — see :data:`EXTRACTOR_FEATURES`.
        extractor_model: wav2vec2 model (hub id in the local cache, or a directory) for
            ``feature="wav2vec2"`` (default ``facebook/wav2vec2-base-960h``).
        extractor_layer: wav2vec2 output, "logits" (default) or a hidden-layer index.
        neighbours: windows in ``FrameBatch.audio_neighbours`` (TalkingGaussian: 8).
        background: "bc", "bc+torso", "white", "black" (see :class:`FrameDataset`).
        batch_size: frames per batch of the rendering stages.
        audio_batch_size: frames per batch of the prior / emotion stages.
        num_workers: DataLoader workers (``persistent_workers`` when > 0).
        cache_size: decoded frames cached per worker (:class:`FrameDataset`).
        sampler: None (uniform shuffling), "mouth" (:class:`MouthOpenCurriculumSampler`) or "blink"
            (:class:`BlinkCurriculumSampler`) for the rendering stages' train loader.
        sampler_power, sampler_uniform_mix: parameters of the curriculum sampler.
        jaw_column: column of ``expr.npy`` holding the jaw opening, for ``sampler="mouth"`` (default:
            read from ``synth.json``; else the mouth aspect ratio of the landmarks).
        stage: training stage selecting the loaders; settable (``dm.stage = "prior"``).
        limit_val_frames: at most this many val frames (evenly spaced), None = all.
        seed: seed of shuffling and samplers.
        context: frames of the audio context.
        segment_seconds: length of ``AudioBatch.waveform``.
        index: index file of an emotional root (``clips.json`` / ``clips.txt``).
        pin_memory: DataLoader ``pin_memory``.
        predict_audio: audio file for ``predict_dataloader`` (default: the first val clip's audio).
        predict_emotion, predict_intensity, predict_blink: see :class:`PredictDataset`.
        context_feature: features of the audio context (``AudioBatch.context`` /
            ``FrameBatch.audio_context``: what the prior's style encoder and the emotion encoder's
            ``w2v`` branch read) when they differ from ``feature``, given like ``feature`` ("wav2vec2"
            uses ``extractor_model`` / ``extractor_layer``); None = ``feature``. The windows
            (``audio``, ``audio_neighbours``: the audio view, the prior's content encoder) keep ``feature``.
    """

    def __init__(self, root: str, feature: str = "mel", extractor_model: Optional[str] = None,
                 neighbours: int = 8, background: str = "bc+torso", batch_size: int = 1, audio_batch_size: int = 128,
                 num_workers: int = 0, cache_size: int = 256, sampler: Optional[str] = None, stage: str = "face",
                 limit_val_frames: Optional[int] = None, seed: int = 0, context: int = 50,
                 segment_seconds: float = 2.0, extractor_layer: Optional[Union[str, int]] = None,
                 index: Optional[str] = None, pin_memory: bool = False, sampler_power: float = 1.0,
                 sampler_uniform_mix: float = 0.5, jaw_column: Optional[int] = None,
                 predict_audio: Optional[str] = None, predict_emotion: Union[str, int] = "audio",
                 predict_intensity: Optional[int] = None, predict_blink: str = "zeros",
                 context_feature: Optional[str] = None):
        super().__init__()
        self.save_hyperparameters()
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        if sampler not in (None, "mouth", "blink"):
            raise ValueError(f"sampler must be None, 'mouth' or 'blink', got {sampler!r}")
        if batch_size < 1 or audio_batch_size < 1:
            raise ValueError("batch_size and audio_batch_size must be ≥ 1")
        if num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {num_workers}")
        if feature == "mel" and context_feature in (None, "mel") and (extractor_model is not None
                                                                      or extractor_layer is not None):
            raise ValueError("the mel extractor takes no extractor_model / extractor_layer")
        self.root = Path(root)
        self.feature = str(feature)
        self.context_feature = None if context_feature in (None, feature) else str(context_feature)
        self.extractor_model = extractor_model
        self.extractor_layer = extractor_layer
        self.neighbours = int(neighbours)
        self.background = background
        self.batch_size = int(batch_size)
        self.audio_batch_size = int(audio_batch_size)
        self.num_workers = int(num_workers)
        self.cache_size = int(cache_size)
        self.sampler = sampler
        self.sampler_power = float(sampler_power)
        self.sampler_uniform_mix = float(sampler_uniform_mix)
        self.jaw_column = jaw_column
        self.stage = stage
        self.limit_val_frames = None if limit_val_frames is None else int(limit_val_frames)
        self.seed = int(seed)
        self.context = int(context)
        self.segment_seconds = float(segment_seconds)
        self.index = index
        self.pin_memory = bool(pin_memory)
        self.predict_audio = predict_audio
        self.predict_emotion = predict_emotion
        self.predict_intensity = predict_intensity
        self.predict_blink = predict_blink
        self._extractor_obj = None
        self._context_extractor_obj = None
        self.clips: Optional[list[ClipInfo]] = None
        self.split_index: dict[str, np.ndarray] = {}
        self._audio_dim: Optional[int] = None
        self._context_dim: Optional[int] = None
        self._expr_dim: Optional[int] = None
        self._image_size: Optional[tuple[int, int]] = None
        self._predict: Optional[PredictDataset] = None
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ configuration
    @property
    def stage(self) -> str:
        """Training stage: "prior" | "emotion" (AudioBatch loaders) or "mouth" | "face" | "fuse" (FrameBatch)."""
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        if value not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {value!r}")
        self._stage = value

    @property
    def is_audio_stage(self) -> bool:
        return self._stage in AUDIO_STAGES

    def _make_extractor(self, kind: str, key: str):
        if kind == "mel":
            return make_extractor("mel")
        # key: the config key that asked for wav2vec2, named by the missing-model message
        return make_extractor(kind, model=self.extractor_model, layer=self.extractor_layer, config_key=key)

    def extractor(self):
        """The feature extractor for ``feature`` in :data:`EXTRACTOR_FEATURES` (built once), else None."""
        if self.feature not in EXTRACTOR_FEATURES:
            return None
        if self._extractor_obj is None:
            self._extractor_obj = self._make_extractor(self.feature, "data.feature")
        return self._extractor_obj

    def context_extractor(self):
        """The extractor of a ``context_feature`` in :data:`EXTRACTOR_FEATURES` (built once), else None."""
        if self.context_feature not in EXTRACTOR_FEATURES:
            return None
        if self._context_extractor_obj is None:
            self._context_extractor_obj = self._make_extractor(self.context_feature, "data.context_feature")
        return self._context_extractor_obj

    @property
    def feature_name(self) -> str:
        """Name of the feature file used (``aud_<feature_name>.npy``)."""
        ex = self.extractor()
        return ex.name if ex is not None else self.feature

    @property
    def context_feature_name(self) -> str:
        """Name of the feature file of the audio context (:attr:`feature_name` without a ``context_feature``)."""
        if self.context_feature is None:
            return self.feature_name
        ex = self.context_extractor()
        return ex.name if ex is not None else self.context_feature

    def _context_arg(self) -> Optional[str]:
        return None if self.context_feature is None else self.context_feature_name

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Compute missing / stale feature caches (``aud_<name>.npy`` via
        :func:`~ua3dtalk.data.audio.extract_features`) for an extractor ``feature``; the only write
        into a dataset. Stored feature names need nothing. The same for ``context_feature``."""
        exs = [ex for ex in (self.extractor(), self.context_extractor()) if ex is not None]
        if not exs:
            return
        for d in list_clip_dirs(self.root, index=self.index):
            for ex in exs:
                extract_features(d, ex)

    def _load(self) -> list[ClipInfo]:
        return iter_clips(load_dataset(self.root, index=self.index))

    def _make_splits(self, clips: list[ClipInfo]) -> dict[str, np.ndarray]:
        train = all_positions(clips, "train")
        val = all_positions(clips, "val")
        return {"train": train, "val": val, "test": val}

    def setup(self, stage: Optional[str] = None) -> None:
        """Load and check the dataset (``DatasetError`` naming files), then build the datasets."""
        if self.clips is None:
            clips = self._load()
            name = self.feature_name
            self._audio_dim = _check_features(clips, name)
            self._context_dim = (self._audio_dim if self.context_feature is None
                                 else _check_features(clips, self.context_feature_name))
            self._expr_dim = int(clips[0].expr().shape[1]) if _common_expr(clips) else 0
            sizes = {(c.height, c.width) for c in clips}
            if len(sizes) > 1:
                raise DatasetError([Problem(self.root, f"clips have different image sizes {sorted(sizes)}; "
                                                       "one dataset must have one frame size")])
            self._image_size = sizes.pop()
            self.split_index = self._make_splits(clips)
            self.clips = clips
            self._datasets = {}
            self._predict = None

    def _require_setup(self) -> list[ClipInfo]:
        if self.clips is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() first")
        return self.clips

    @property
    def audio_channels(self) -> int:
        """Channels ``C`` of the audio features (after :meth:`setup`)."""
        self._require_setup()
        return int(self._audio_dim)

    @property
    def context_channels(self) -> int:
        """Channels ``C'`` of the audio context features (= :attr:`audio_channels` without a
        ``context_feature``; after :meth:`setup`)."""
        self._require_setup()
        return int(self._context_dim)

    @property
    def expr_dim(self) -> int:
        """Number ``K`` of expression coefficients, 0 when the dataset has no ``expr.npy`` (after setup)."""
        self._require_setup()
        return int(self._expr_dim)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the frames (after :meth:`setup`)."""
        self._require_setup()
        return self._image_size

    # ------------------------------------------------------------------ datasets
    def _split(self, split: str) -> np.ndarray:
        idx = self.split_index[split]
        return _limit(idx, self.limit_val_frames) if split == "val" else idx

    def frame_dataset(self, split: str) -> FrameDataset:
        """:class:`FrameDataset` of "train", "val" or "test" (built once)."""
        clips = self._require_setup()
        key = f"frames/{split}"
        if key not in self._datasets:
            self._datasets[key] = FrameDataset(clips, self._split(split), self.feature_name, self.neighbours,
                                               self.background, self.cache_size, self.context,
                                               context_feature=self._context_arg())
        return self._datasets[key]

    def audio_dataset(self, split: str) -> AudioFrameDataset:
        """:class:`AudioFrameDataset` of "train", "val" or "test" (built once)."""
        clips = self._require_setup()
        key = f"audio/{split}"
        if key not in self._datasets:
            self._datasets[key] = AudioFrameDataset(clips, self._split(split), self.feature_name,
                                                    self.segment_seconds, self.context,
                                                    context_feature=self._context_arg())
        return self._datasets[key]

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` for the current :attr:`stage`."""
        return self.audio_dataset(split) if self.is_audio_stage else self.frame_dataset(split)

    @property
    def predict_dataset(self) -> PredictDataset:
        """:class:`PredictDataset` of ``predict_audio`` (or the first val clip's audio) with the camera track
        of the first val clip."""
        clips = self._require_setup()
        if self._predict is None:
            val = self.split_index["val"]
            ci = int(val[0, 0]) if len(val) else 0
            clip = clips[ci]
            bg = "bc" if self.background == "bc+torso" else self.background
            common = dict(cameras=clip, emotion=self.predict_emotion, intensity=self.predict_intensity,
                          background=bg, neighbours=self.neighbours, context=self.context, blink=self.predict_blink,
                          segment_seconds=self.segment_seconds, blink_seed=self.seed)
            if self.predict_audio is not None:
                ex = self.extractor()
                feats = ex if ex is not None else self.feature
                ctx = None
                if self.context_feature is not None:
                    cex = self.context_extractor()
                    ctx = cex if cex is not None else self.context_feature
                self._predict = PredictDataset(self.predict_audio, feats, context_features=ctx, **common)
            else:
                feats = read_feature_file(clip.features[self.feature_name], clip.num_frames, name=self.feature_name,
                                          warn=False)
                ctx = None
                if self.context_feature is not None:
                    name = self.context_feature_name
                    ctx = read_feature_file(clip.features[name], clip.num_frames, name=name, warn=False)
                self._predict = PredictDataset(clip.wav_path, feats, context_features=ctx, **common)
        return self._predict

    def curriculum_sampler(self) -> Optional[torch.utils.data.Sampler]:
        """The configured curriculum sampler over the train frames, or None."""
        if self.sampler is None:
            return None
        clips = self._require_setup()
        idx = self.split_index["train"]
        scores = np.zeros(len(idx))
        for ci in np.unique(idx[:, 0]):
            rows = np.nonzero(idx[:, 0] == ci)[0]
            pos = idx[rows, 1]
            c = clips[int(ci)]
            if self.sampler == "mouth":
                s = mouth_openness(c, pos, self.jaw_column)
                # normalise per clip: different clips may use different measures / scales
                lo, hi = float(s.min()), float(s.max())
                scores[rows] = (s - lo) / (hi - lo) if hi > lo else 0.0
            else:
                scores[rows] = c.blink()[c.img_ids[pos]]
        kw = dict(power=self.sampler_power, uniform_mix=self.sampler_uniform_mix, seed=self.seed)
        return MouthOpenCurriculumSampler(scores, **kw) if self.sampler == "mouth" else BlinkCurriculumSampler(scores,
                                                                                                              **kw)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool = False, sampler=None) -> DataLoader:
        kw: dict[str, Any] = dict(batch_size=batch_size, collate_fn=collate_batches, num_workers=self.num_workers,
                                  pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
        if sampler is not None:
            kw["sampler"] = sampler
        elif shuffle:
            kw["shuffle"] = True
            kw["generator"] = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, **kw)

    def train_dataloader(self) -> DataLoader:
        if self.is_audio_stage:
            return self._loader(self.audio_dataset("train"), self.audio_batch_size, shuffle=True)
        return self._loader(self.frame_dataset("train"), self.batch_size, shuffle=True,
                            sampler=self.curriculum_sampler())

    def val_dataloader(self) -> DataLoader:
        bs = self.audio_batch_size if self.is_audio_stage else self.batch_size
        return self._loader(self.dataset("val"), bs)

    def test_dataloader(self) -> DataLoader:
        bs = self.audio_batch_size if self.is_audio_stage else self.batch_size
        return self._loader(self.dataset("test"), bs)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, self.batch_size)


class EmotionalTalkingHeadDataModule(TalkingHeadDataModule):
    """DataModule of an emotional dataset (DESIGN §5.2): one subject, many clips with ``emotion.json``.

    Splits are by clip, never by frame (:func:`~ua3dtalk.data.splits.split_emotional_clips`): every
    frame of a clip is in the same split, so no test frame's neighbours are trained on. Four disjoint
    roles (DESIGN §5.5): ``evaluator`` clips (reserved for the metric evaluators; never loaded by any
    loader here), ``train``, ``val`` (validation and model selection) and ``test`` (``test_fraction`` of
    each emotion's clips, plus held-out emotions / intensities). With ``test_fraction = 0`` and nothing held
    out, test = val (and a warning says so). Emotion labels come from each clip's ``emotion.json``
    (``FrameBatch.emotion`` / ``AudioBatch.emotion``). :attr:`split_clips` maps each role to its clips.

    Args:
        root, …: as :class:`TalkingHeadDataModule` (the same arguments, same meaning).
        val_fraction: fraction of each emotion's clips used for validation.
        holdout_emotions: emotions (names or ids) used only for testing.
        holdout_intensities: intensities (1..3) used only for testing.
        split_seed: seed of the clip split (independent of ``seed``).
        test_fraction: fraction of each emotion's clips used only for testing.
        evaluator_fraction: fraction of each emotion's clips reserved for the evaluators.
    """

    def __init__(self, root: str, feature: str = "mel", extractor_model: Optional[str] = None,
                 neighbours: int = 8, background: str = "bc+torso", batch_size: int = 1, audio_batch_size: int = 128,
                 num_workers: int = 0, cache_size: int = 256, sampler: Optional[str] = None, stage: str = "face",
                 limit_val_frames: Optional[int] = None, seed: int = 0, context: int = 50,
                 segment_seconds: float = 2.0, extractor_layer: Optional[Union[str, int]] = None,
                 index: Optional[str] = None, pin_memory: bool = False, sampler_power: float = 1.0,
                 sampler_uniform_mix: float = 0.5, jaw_column: Optional[int] = None,
                 predict_audio: Optional[str] = None, predict_emotion: Union[str, int] = "audio",
                 predict_intensity: Optional[int] = None, predict_blink: str = "zeros",
                 val_fraction: float = 0.34, holdout_emotions: Sequence[Union[str, int]] = (),
                 holdout_intensities: Sequence[int] = (), split_seed: int = 0, test_fraction: float = 0.0,
                 evaluator_fraction: float = 0.0, context_feature: Optional[str] = None):
        super().__init__(root, feature, extractor_model, neighbours, background, batch_size, audio_batch_size,
                         num_workers, cache_size, sampler, stage, limit_val_frames, seed, context, segment_seconds,
                         extractor_layer, index, pin_memory, sampler_power, sampler_uniform_mix, jaw_column,
                         predict_audio, predict_emotion, predict_intensity, predict_blink, context_feature)
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                        ("evaluator_fraction", evaluator_fraction)):
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= float(f) < 1.0:
                raise ValueError(f"data.{name} must be a number in [0, 1), got {f!r}")
        if val_fraction + test_fraction + evaluator_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + data.test_fraction + data.evaluator_fraction must be < 1, got "
                             f"{val_fraction} + {test_fraction} + {evaluator_fraction}")
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.evaluator_fraction = float(evaluator_fraction)
        self.holdout_emotions = tuple(holdout_emotions)
        self.holdout_intensities = tuple(int(k) for k in holdout_intensities)
        self.split_seed = int(split_seed)
        self.split_clips: dict[str, list[ClipInfo]] = {}

    def _load(self) -> list[ClipInfo]:
        return list(load_emotional(self.root, index=self.index).clips)

    def _make_splits(self, clips: list[ClipInfo]) -> dict[str, np.ndarray]:
        s = split_emotional_clips(clips, self.val_fraction, self.holdout_emotions, self.holdout_intensities,
                                  self.split_seed, self.test_fraction, self.evaluator_fraction)
        if self.holdout_emotions or self.holdout_intensities or self.test_fraction > 0:
            if not s["test"]:
                warnings.warn(f"the test split is empty (test_fraction={self.test_fraction}, holdout_emotions="
                              f"{self.holdout_emotions}, holdout_intensities={self.holdout_intensities})",
                              DatasetWarning, stacklevel=3)
        else:
            warnings.warn("test = val: no test_fraction and nothing held out, so the test metrics come from the "
                          "validation clips (set data.test_fraction for a real test split)", DatasetWarning,
                          stacklevel=3)
            s["test"] = s["val"]
        if not s["val"]:
            warnings.warn("the validation split is empty (every emotion has a single clip or val_fraction=0)",
                          DatasetWarning, stacklevel=3)
        self.split_clips = {k: [clips[i] for i in v] for k, v in s.items()}
        return {k: all_positions(clips, None, v) for k, v in s.items() if k != "evaluator"}
