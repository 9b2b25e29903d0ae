"""Audio loading and per-frame audio features (DESIGN §5.3).

Pipeline::

    any wav/flac (any rate, any channels) ──load_wav──▶ 16 kHz mono float32
        ──extractor──▶ 50 Hz feature sequence [T,C]   (T = ceil(samples / 320))
        ──cached as aud_<name>.npy next to the data (atomic write)
        ──AudioFeatures(num_frames=N)──▶ per-frame windows [N,16,C] at 25 fps

**Resampling.** :func:`load_wav` averages the channels (down-mix) and resamples with
``scipy.signal.resample_poly`` (polyphase FIR, Kaiser window β=5, the up/down factors reduced by
their gcd; e.g. 44.1 kHz → 16 kHz is ×160/441), which includes the anti-aliasing low-pass.

**Time alignment.** 50 Hz feature ``t`` describes the 20 ms of audio starting at ``t·320`` samples
(its analysis window is centred at sample ``320t + 160``). Video frame ``i`` (25 fps) uses the
50 Hz features ``[2i-8, 2i+8)`` — pad 8, window 16, stride 2, the ER-NeRF/AD-NeRF convention —
with zeros outside the sequence (:func:`window_features`).

**Length rule.** A clip has ``N`` frames (``num_frames``); its audio covers ``ceil(T/2)`` frames.
When they differ, :class:`AudioFeatures` emits a :class:`LengthMismatchWarning` and: for a 50 Hz
sequence, frames past the audio get zero-padded windows (the sequence is treated as zero after its
end) and frames past ``N`` are dropped; for stored windows ``[M,16,C]`` (``aud_ds.npy``), missing
frames get all-zero windows and extra ones are trimmed (:func:`fit_length`). Nothing is ever
broadcast. The dataset validator accepts at most ``LENGTH_TOLERANCE`` frames of difference.

**Extractors** (log-mel, wav2vec2) are in :mod:`ua3dtalk.data.extractors`; this module runs them
and caches their output (:func:`extract_features`, :func:`features_for_clip`).

**Stored formats read** (:func:`read_feature_file`): windows ``[M,16,C]`` (``aud_ds.npy`` DeepSpeech
C=29, ``aud_eo.npy`` ER-NeRF wav2vec C=44, ``aud.npy``, a user ``aud_w2v.npy``), ER-NeRF/
TalkingGaussian HuBERT pairs ``[M,2,C]`` (``aud_hu.npy``: the 50 Hz sequence reshaped so that row
``i`` holds 50 Hz features ``2i, 2i+1`` — windowed like any 50 Hz sequence, so ``window[8:10]`` is
exactly ``aud_hu[i]``), and this project's caches ``[T,C]`` (50 Hz).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

import numpy as np

from ..utils.io import atomic_save_npy, atomic_write_json
from .clip import ClipInfo
from .formats import (
    LENGTH_TOLERANCE,  # noqa: F401  (re-exported: the validator's tolerance)
    DatasetError,
    DatasetWarning,
    Problem,
    _check_array,
    _Report,
    frames_in_sequence,
)

SAMPLE_RATE = 16000
FEATURE_RATE = 50
HOP = SAMPLE_RATE // FEATURE_RATE  # 320 samples per 50 Hz step
WINDOW = 16
PAD = 8
STRIDE = 2
NEIGHBOURS = 8


class LengthMismatchWarning(DatasetWarning):
    """Audio / features and the frame count differ; the length rule padded or trimmed."""



# --------------------------------------------------------------------------------------------------
# waveform
# --------------------------------------------------------------------------------------------------


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D signal with ``scipy.signal.resample_poly`` (Kaiser β=5 polyphase FIR)."""
    x = np.asarray(x, dtype=np.float32)
    if int(sr_in) == int(sr_out):
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    y = resample_poly(x.astype(np.float64), int(sr_out) // g, int(sr_in) // g, window=("kaiser", 5.0))
    return y.astype(np.float32)


def load_wav(path: Union[str, Path], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file (anything libsndfile reads: wav, flac, ogg, …) → mono float32 [L] at
    ``sample_rate`` (channels averaged, then :func:`resample`). Raises :class:`DatasetError` naming
    the file when it is missing or unreadable."""
    import soundfile as sf

    path = Path(path)
    check_audio_file(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise DatasetError([Problem(path, "missing audio file")]) from None
    except Exception as e:  # libsndfile errors are RuntimeError subclasses, TypeError for odd files
        if not path.exists():
            raise DatasetError([Problem(path, "missing audio file")]) from None
        raise DatasetError([Problem(path, f"unreadable audio ({e})")]) from None
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise DatasetError([Problem(path, "audio contains NaN or Inf")])
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    if peak > MAX_AMPLITUDE:
        raise DatasetError([Problem(path, f"audio amplitude {peak:.3g} is far outside [-1, 1] (a float file must "
                                          f"be scaled to full scale 1; at most {MAX_AMPLITUDE:g} is accepted)")])
    return resample(mono, sr, sample_rate)


MIN_RATE, MAX_RATE, MAX_CHANNELS, MAX_SECONDS, MAX_AMPLITUDE = 4000, 384_000, 32, 4 * 3600, 16.0
"""Audio accepted by :func:`load_wav`: sample rate, channels, length, and peak amplitude (checked before any
resampling, so an absurd header cannot ask for gigabytes)."""


def check_audio_file(path: Union[str, Path]) -> None:
    """Refuse, naming the file, audio whose header is out of range (:data:`MIN_RATE` … :data:`MAX_SECONDS`)
    or that is not a regular file (a FIFO or device would block or never end)."""
    import soundfile as sf

    from ..utils.paths import special_file_kind

    path = Path(path)
    kind = special_file_kind(path)
    if kind is not None:
        raise DatasetError([Problem(path, f"is {kind}, not a regular audio file")])
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile errors
        raise DatasetError([Problem(path, f"unreadable audio ({e})")]) from None
    if not MIN_RATE <= int(info.samplerate) <= MAX_RATE:
        raise DatasetError([Problem(path, f"sample rate {info.samplerate} Hz is out of range "
                                          f"({MIN_RATE}–{MAX_RATE} Hz)")])
    if not 1 <= int(info.channels) <= MAX_CHANNELS:
        raise DatasetError([Problem(path, f"{info.channels} channels (1–{MAX_CHANNELS} accepted)")])
    if info.frames / info.samplerate > MAX_SECONDS:
        raise DatasetError([Problem(path, f"{info.frames / info.samplerate / 3600:.1f} h of audio "
                                          f"(at most {MAX_SECONDS // 3600} h)")])


def sequence_length(num_samples: int) -> int:
    """Length of the 50 Hz sequence the extractors produce for ``num_samples`` at 16 kHz."""
    return -(-int(num_samples) // HOP)


# --------------------------------------------------------------------------------------------------
# windows and the length rule
# --------------------------------------------------------------------------------------------------


def fit_length(x: np.ndarray, n: int, what: str = "features", warn: bool = True) -> np.ndarray:
    """Make ``x`` have ``n`` rows (axis 0): append zero rows or drop the last ones, with a
    :class:`LengthMismatchWarning` naming ``what`` whenever the length changes."""
    m = int(x.shape[0])
    if m == n:
        return x
    if warn:
        warnings.warn(f"{what}: {m} rows for {n} frames; "
                      f"{'zero-padded at the end' if m < n else 'trimmed at the end'} (length rule)",
                      LengthMismatchWarning, stacklevel=2)
    if m > n:
        return x[:n]
    pad = np.zeros((n - m,) + tuple(x.shape[1:]), dtype=x.dtype)
    return np.concatenate([np.asarray(x), pad], 0)


def _window_index(frames: np.ndarray) -> np.ndarray:
    """[F,16] 50 Hz indices of the windows of ``frames``."""
    return STRIDE * np.asarray(frames, dtype=np.int64)[:, None] - PAD + np.arange(WINDOW)[None]


def _gather(seq: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """seq[idx] with zeros where idx is outside [0, len(seq))."""
    t = seq.shape[0]
    valid = (idx >= 0) & (idx < t)
    out = np.zeros(idx.shape + tuple(seq.shape[1:]), dtype=np.float32)
    if valid.any():
        out[valid] = np.asarray(seq[np.clip(idx, 0, max(t - 1, 0))[valid]], dtype=np.float32)
    return out


def window_features(seq: np.ndarray, num_frames: Optional[int] = None) -> np.ndarray:
    """50 Hz features [T,C] → per-frame windows [N,16,C] float32: frame i holds features
    ``[2i-8, 2i+8)``, zeros outside the sequence. ``num_frames`` defaults to ceil(T/2); it is used
    as given (no warning here — :class:`AudioFeatures` applies and reports the length rule)."""
    seq = np.asarray(seq)
    if seq.ndim != 2:
        raise ValueError(f"window_features: expected a [T,C] sequence, got shape {list(seq.shape)}")
    n = frames_in_sequence(seq.shape[0]) if num_frames is None else int(num_frames)
    return _gather(seq, _window_index(np.arange(n)))


class AudioFeatures:
    """Per-frame audio windows ``[N,16,C]`` of one clip, produced on demand (no [N,16,C] copy).

    Build with :func:`read_feature_file` / :func:`features_for_clip`, or directly from a 50 Hz
    sequence ``AudioFeatures(seq, num_frames=N)`` or stored windows
    ``AudioFeatures(windows, num_frames=N, layout="windows")``. The length rule (module docstring)
    is applied here, with a :class:`LengthMismatchWarning` when it changes anything.

    ``feats[i]`` → [16,C] window of frame ``i`` (0 ≤ i < N, the clip's ``img_id``);
    ``feats.windows(idx)`` → [len(idx),16,C]; ``feats.neighbours(i, 8)`` → [8,16,C] windows of
    frames i-4 … i+3 (zero windows outside 0..N-1, TalkingGaussian's temporal-attention input);
    ``feats.to_array()`` → [N,16,C]. Arrays may be memory-mapped, so reading from DataLoader workers
    shares pages instead of copying.
    """

    def __init__(self, data: np.ndarray, num_frames: Optional[int] = None, *, layout: str = "sequence",
                 name: str = "", source: Optional[Path] = None, warn: bool = True):
        if layout not in ("sequence", "windows"):
            raise ValueError(f"layout must be 'sequence' or 'windows', got {layout!r}")
        self.layout = layout
        self.name = name
        self.source = source
        what = f"{source}" if source is not None else (name or "audio features")
        if layout == "sequence":
            if data.ndim != 2:
                raise ValueError(f"{what}: a 50 Hz sequence must be [T,C], got {list(data.shape)}")
            have = frames_in_sequence(data.shape[0])
            self.num_frames = have if num_frames is None else int(num_frames)
            if warn and have != self.num_frames:
                fix = "missing frames get zero-padded windows" if have < self.num_frames else "extra audio is dropped"
                warnings.warn(f"{what}: audio covers {have} frames, the clip has {self.num_frames}; "
                              f"{fix} (length rule)", LengthMismatchWarning, stacklevel=2)
            self._data = data
        else:
            if data.ndim != 3 or data.shape[1] != WINDOW:
                raise ValueError(f"{what}: windows must be [M,{WINDOW},C], got {list(data.shape)}")
            self.num_frames = int(data.shape[0]) if num_frames is None else int(num_frames)
            if data.shape[0] != self.num_frames:
                data = fit_length(np.asarray(data), self.num_frames, what, warn)
            self._data = data
        self.dim = int(data.shape[-1])

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"AudioFeatures(name={self.name!r}, frames={self.num_frames}, dim={self.dim}, layout={self.layout})"

    def windows(self, frames) -> np.ndarray:
        """Windows of the given frame indices [F] → [F,16,C] float32 (IndexError outside 0..N-1)."""
        fr = np.asarray(frames, dtype=np.int64).reshape(-1)
        if fr.size and (fr.min() < 0 or fr.max() >= self.num_frames):
            raise IndexError(f"{self.name or 'audio features'}: frame index out of range 0..{self.num_frames - 1}: "
                             f"{fr[(fr < 0) | (fr >= self.num_frames)][:5].tolist()}")
        return self._windows_unchecked(fr)

    def _windows_unchecked(self, fr: np.ndarray) -> np.ndarray:
        if self.layout == "sequence":
            return _gather(self._data, _window_index(fr))
        return _gather(self._data, fr)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.windows([int(i)])[0]

    def neighbours(self, i: int, n: int = NEIGHBOURS) -> np.ndarray:
        """[n,16,C]: windows of frames ``i - n//2 … i + n - n//2 - 1``; all-zero outside the clip."""
        if not 0 <= int(i) < self.num_frames:
            raise IndexError(f"frame {i} out of range 0..{self.num_frames - 1}")
        fr = np.arange(int(i) - n // 2, int(i) - n // 2 + n)
        out = np.zeros((n, WINDOW, self.dim), np.float32)
        ok = (fr >= 0) & (fr < self.num_frames)
        if ok.any():
            out[ok] = self._windows_unchecked(fr[ok])
        return out

    def to_array(self) -> np.ndarray:
        return self._windows_unchecked(np.arange(self.num_frames))


# --------------------------------------------------------------------------------------------------
# stored feature files
# --------------------------------------------------------------------------------------------------


def _load_checked(path: Path) -> np.ndarray:
    rep = _Report()
    a = _check_array(Path(path), rep)
    if a is None:
        raise DatasetError(rep.problems)
    return a


def read_feature_file(path: Union[str, Path], num_frames: Optional[int] = None, name: Optional[str] = None,
                      warn: bool = True) -> AudioFeatures:
    """Read a stored feature file → :class:`AudioFeatures` (memory-mapped).

    Layout by shape: ``[M,16,C]`` windows, ``[M,2,C]`` 50 Hz pairs (``aud_hu.npy``), ``[T,C]`` 50 Hz
    sequence (this project's caches). ``num_frames`` (the clip's frame count) triggers the length
    rule; default: the file's own length. Raises :class:`DatasetError` naming the file for an
    unreadable file, NaN/Inf, or an unsupported shape.
    """
    path = Path(path)
    verify_cache_record(path)
    a = _load_checked(path)
    nm = name if name is not None else path.stem.removeprefix("aud_")
    if a.ndim == 3 and a.shape[1] == WINDOW:
        return AudioFeatures(a, num_frames, layout="windows", name=nm, source=path, warn=warn)
    if a.ndim == 3 and a.shape[1] == 2:
        return AudioFeatures(a.reshape(a.shape[0] * 2, a.shape[2]), num_frames, name=nm, source=path, warn=warn)
    if a.ndim == 2:
        return AudioFeatures(a, num_frames, name=nm, source=path, warn=warn)
    raise DatasetError([Problem(path, f"audio features must be [N,16,C] windows, [N,2,C] 50 Hz pairs or a [T,C] "
                                      f"50 Hz sequence, got shape {list(a.shape)}")])


_VERIFIED: set = set()


def verify_cache_record(path: Union[str, Path]) -> None:
    """A cache proves itself: when ``aud_<name>.npy`` has a record ``aud_<name>.json`` (written by
    :func:`extract_features`), the array must be the one the record names (SHA-1 — so also its shape and
    dtype) and the clip's ``aud.wav`` must still be the audio it was computed from (size and SHA-1).
    Raises :class:`DatasetError` naming the file and the fix; a file without a record (put there by hand)
    is taken as it is. A verified (array, record, wav) state is remembered by mtime and size."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if not meta.is_file() or not path.is_file():
        return
    try:
        rec = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DatasetError([Problem(meta, "the cache record is not readable JSON; delete it and its array, or "
                                          "recompute with `ua3dtalk-features --force`")]) from None
    if not isinstance(rec, dict) or "npy_sha1" not in rec:
        return
    wav = rec.get("wav") if isinstance(rec.get("wav"), dict) else {}
    wav_path = path.parent / str(wav.get("name") or "aud.wav")
    st, mst = path.stat(), meta.stat()
    wst = wav_path.stat() if wav_path.is_file() else None
    key = (str(path), st.st_mtime_ns, st.st_size, mst.st_mtime_ns, None if wst is None else (wst.st_mtime_ns,
                                                                                             wst.st_size))
    if key in _VERIFIED:
        return
    fix = "recompute it with `ua3dtalk-features --force` (or delete the .npy and its .json)"
    if _sha1(path) != rec["npy_sha1"]:
        raise DatasetError([Problem(path, f"the array is not the one its record {meta.name} describes (changed "
                                          f"after it was written); {fix}")])
    if wst is not None and wav.get("sha1") and (wst.st_size != wav.get("size") or _sha1(wav_path) != wav["sha1"]):
        raise DatasetError([Problem(path, f"stale: {wav_path.name} changed since this cache was computed from it "
                                          f"({meta.name}); {fix}")])
    _VERIFIED.add(key)


def _read_native(path: Union[str, Path], dim1: int, channels: Optional[int], what: str) -> np.ndarray:
    path = Path(path)
    a = _load_checked(path)
    if a.ndim != 3 or a.shape[1] != dim1 or (channels is not None and a.shape[2] != channels):
        want = f"[N,{dim1},{channels if channels is not None else 'C'}]"
        raise DatasetError([Problem(path, f"{what} must have shape {want}, got {list(a.shape)}")])
    return a


def read_aud_ds(path: Union[str, Path]) -> np.ndarray:
    """ER-NeRF/AD-NeRF DeepSpeech windows ``aud_ds.npy`` (or ``aud.npy``) → [N,16,29] (memory-mapped)."""
    return _read_native(path, WINDOW, 29, "DeepSpeech features")


def read_aud_eo(path: Union[str, Path]) -> np.ndarray:
    """ER-NeRF wav2vec (esperanto CTC) windows ``aud_eo.npy`` → [N,16,44]."""
    return _read_native(path, WINDOW, 44, "ER-NeRF wav2vec features")


def read_aud_hu(path: Union[str, Path]) -> np.ndarray:
    """ER-NeRF/TalkingGaussian HuBERT ``aud_hu.npy`` → [N,2,C] (C=1024 for hubert-large); row i holds
    the 50 Hz features 2i and 2i+1. Use :func:`read_feature_file` to get windows."""
    return _read_native(path, 2, None, "HuBERT features")


# --------------------------------------------------------------------------------------------------
# extractor protocol (the extractors are in ua3dtalk.data.extractors)
# --------------------------------------------------------------------------------------------------


class Extractor(Protocol):
    """What :func:`extract_features` needs from an extractor."""

    name: str  # cache file is aud_<name>.npy

    def __call__(self, wav: np.ndarray, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """16 kHz mono float32 [L] → 50 Hz features [ceil(L/320), C] float32."""

    def describe(self) -> dict:
        """JSON-able parameters; a cache made with different parameters is recomputed."""



# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------


def cache_path(clip_dir: Union[str, Path], extractor: Extractor) -> Path:
    """Where :func:`extract_features` stores ``extractor``'s output: ``<clip_dir>/aud_<name>.npy``."""
    return Path(clip_dir) / f"aud_{extractor.name}.npy"


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_features(clip_dir: Union[str, Path, ClipInfo], extractor: Extractor, *, force: bool = False,
                     wav: Union[str, Path, None] = None, cache_dir: Union[str, Path, None] = None,
                     progress: Optional[Callable[[int], None]] = None) -> Path:
    """Compute ``extractor`` on the clip's ``aud.wav`` and cache the 50 Hz sequence [T,C] float32 as
    ``aud_<name>.npy`` (+ ``aud_<name>.json`` recording the extractor parameters, the wav's SHA-1 and
    the array's SHA-1). An existing cache is reused when its record matches both (or it has none — a
    file put there by hand); ``force=True`` recomputes. A run killed at any point leaves either the
    previous cache, or a complete array whose record does not match it (recomputed next time).
    Writes are atomic (:mod:`ua3dtalk.utils.io`: temporary file in the same directory, then
    ``os.replace``). Returns the cache path.

    This is the only function that writes into a dataset directory (``cache_dir`` redirects it).
    """
    root = clip_dir.root if isinstance(clip_dir, ClipInfo) else Path(clip_dir)
    wav_path = Path(wav) if wav is not None else root / "aud.wav"
    if not wav_path.is_file():
        raise DatasetError([Problem(wav_path, "missing audio file (needed to extract features)")])
    out = cache_path(cache_dir if cache_dir is not None else root, extractor)
    meta_path = out.with_suffix(".json")
    st = wav_path.stat()
    record = {"extractor": extractor.describe(), "wav": {"name": wav_path.name, "size": st.st_size,
                                                         "sha1": _sha1(wav_path)},
              "layout": "[T,C] float32, 50 Hz (window with ua3dtalk.data.audio.AudioFeatures)"}
    if out.exists() and not force:
        if not meta_path.exists():
            return out
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        # the record names the array it describes (``npy_sha1``): a run killed between writing the
        # array and its record leaves a pair that does not match, which is recomputed
        described = {k: v for k, v in old.items() if k not in ("npy_sha1", "shape", "dtype")} \
            if isinstance(old, dict) else None
        if described == record \
                and old.get("npy_sha1") == _sha1(out):
            return out
    _check_cache_place(out, seq_bytes=wav_path.stat().st_size * 4)  # before the extractor runs
    x = load_wav(wav_path)
    seq = np.ascontiguousarray(extractor(x, progress=progress), dtype=np.float32)
    if seq.ndim != 2 or seq.shape[0] != sequence_length(x.shape[0]):
        raise RuntimeError(f"extractor {extractor.name} returned shape {list(seq.shape)}, expected "
                           f"[{sequence_length(x.shape[0])}, C]")
    if not np.isfinite(seq).all():
        raise RuntimeError(f"extractor {extractor.name} produced NaN/Inf for {wav_path}")
    try:
        atomic_save_npy(out, seq, clean_stale=True)
        atomic_write_json(meta_path, {**record, "shape": list(seq.shape), "dtype": str(seq.dtype),
                                      "npy_sha1": _sha1(out)})
    except OSError as e:  # full or read-only after the check: name the cache, keep the dataset as it was
        raise DatasetError([Problem(out, f"cannot write the feature cache ({e.strerror or e}); free space or "
                                         "make the dataset directory writable, or precompute it with "
                                         "`ua3dtalk-features`")]) from None
    return out


def _check_cache_place(out: Path, seq_bytes: int) -> None:
    """The cache's directory is writable and has room for the array (+ 16 MB), else a :class:`DatasetError`
    naming the cache — before minutes of feature extraction."""
    import shutil

    d = out.parent
    if not os.access(d, os.W_OK | os.X_OK):
        raise DatasetError([Problem(out, f"cannot write the feature cache: {d} is not writable; make it writable "
                                         "or precompute the features elsewhere with `ua3dtalk-features`")])
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        return
    need = int(seq_bytes) + (16 << 20)
    if free < need:
        raise DatasetError([Problem(out, f"cannot write the feature cache: only {free >> 20} MB free on the disk "
                                         f"of {d} (needs ≈ {need >> 20} MB)")])


def features_for_clip(clip: ClipInfo, feature: Union[str, Extractor], *, force: bool = False,
                      cache_dir: Union[str, Path, None] = None) -> AudioFeatures:
    """Per-frame audio windows of a clip, fitted to ``clip.num_frames`` by the length rule.

    ``feature`` is the name of a stored file (a key of ``clip.features``: "ds", "hu", "eo", "aud",
    "w2v", "mel", "w2v_<model>_<layer>", …) or an extractor, which is run (and cached) when needed.
    """
    if isinstance(feature, str):
        if feature not in clip.features:
            have = ", ".join(sorted(clip.features)) or "none"
            raise DatasetError([Problem(clip.root / f"aud_{feature}.npy",
                                        f"no audio feature file '{feature}' in the clip (available: {have}); "
                                        "extract it with `ua3dtalk-features`")])
        return read_feature_file(clip.features[feature], clip.num_frames, name=feature)
    path = extract_features(clip, feature, force=force, cache_dir=cache_dir)
    return read_feature_file(path, clip.num_frames, name=feature.name)
