"""Per-frame inputs and targets the datasets compute in numpy, and the feature checks of clips.

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

**Blinks** (:func:`synthetic_blinks`): the blink schedule of the synthetic generator.

Feature checks: :func:`feature_dim` (channels of a clip's stored feature file, checked),
``_check_features`` (one channel count across clips) and ``_common_expr`` (one ``expr.npy`` width).
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np

from .audio import SAMPLE_RATE, AudioFeatures, read_feature_file
from .clip import ClipInfo
from .formats import FPS, DatasetError, DatasetWarning, Problem

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
# feature checks of clips
# --------------------------------------------------------------------------------------------------


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
