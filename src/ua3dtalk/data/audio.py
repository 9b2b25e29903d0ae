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

**Extractors.** :class:`MelExtractor` — 80 log-mel bands (natural log of power + 1e-6, HTK mel
scale 0–8 kHz, area-normalised triangles, 40 ms periodic-Hann frames, FFT 1024, hop 320).
:class:`Wav2Vec2Extractor` — any ``transformers`` wav2vec2 checkpoint (hub id or local directory;
default ``facebook/wav2vec2-base-960h``), output CTC logits (``layer="logits"``) or a hidden state
(``layer=k``; 0 = transformer input, k = output of layer k, negative counts from the end). The input
is normalised to zero mean / unit variance over the whole file when the checkpoint's
``preprocessor_config.json`` says ``do_normalize`` (default: yes); long audio runs in chunks of
``chunk_seconds`` with ``context_seconds`` of overlap on each side whose outputs are discarded,
which bounds memory. Weights are loaded with ``local_files_only=True`` — nothing is downloaded unless
``allow_download=True`` is passed explicitly (and HF_HUB_OFFLINE is not set); a missing model is a
:class:`MissingModelError` (one line) that says where it was looked for and how to provide it — or to
train on ``data.feature=mel``. The cache record of a local model directory holds a SHA-1 of its
weights. Without network access, :mod:`ua3dtalk.data.tiny_wav2vec2` saves a tiny random-initialised
model in that layout (what the synthetic experiments use: ``data.synth.wav2vec2=tiny``).

**Stored formats read** (:func:`read_feature_file`): windows ``[M,16,C]`` (``aud_ds.npy`` DeepSpeech
C=29, ``aud_eo.npy`` ER-NeRF wav2vec C=44, ``aud.npy``, a user ``aud_w2v.npy``), ER-NeRF/
TalkingGaussian HuBERT pairs ``[M,2,C]`` (``aud_hu.npy``: the 50 Hz sequence reshaped so that row
``i`` holds 50 Hz features ``2i, 2i+1`` — windowed like any 50 Hz sequence, so ``window[8:10]`` is
exactly ``aud_hu[i]``), and this project's caches ``[T,C]`` (50 Hz).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import math
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

import numpy as np

from ..utils.io import atomic_save_npy, atomic_write_json
from .formats import (
    LENGTH_TOLERANCE,  # noqa: F401  (re-exported: the validator's tolerance)
    ClipInfo,
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
DEFAULT_W2V_MODEL = "facebook/wav2vec2-base-960h"


class LengthMismatchWarning(DatasetWarning):
    """Audio / features and the frame count differ; the length rule padded or trimmed."""


class MissingModelError(FileNotFoundError):
    """A pretrained model is not available locally (nothing is downloaded, DESIGN §10)."""


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
# extractors
# --------------------------------------------------------------------------------------------------


class Extractor(Protocol):
    """What :func:`extract_features` needs from an extractor."""

    name: str  # cache file is aud_<name>.npy

    def __call__(self, wav: np.ndarray, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """16 kHz mono float32 [L] → 50 Hz features [ceil(L/320), C] float32."""

    def describe(self) -> dict:
        """JSON-able parameters; a cache made with different parameters is recomputed."""


def mel_filterbank(n_mels: int = 80, n_fft: int = 1024, sample_rate: int = SAMPLE_RATE, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters on the HTK mel scale, each normalised to unit area
    (Slaney normalisation 2/(f_hi - f_lo))."""
    fmax = sample_rate / 2 if fmax is None else fmax

    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)

    pts = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (ce - lo)
    down = (hi - freqs[None]) / (hi - ce)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / (hi - lo))
    return fb


class MelExtractor:
    """80-band log-mel spectrogram at 50 Hz (see the module docstring for every parameter)."""

    name = "mel"

    def __init__(self, n_mels: int = 80, n_fft: int = 1024, win_length: int = 640, fmin: float = 0.0,
                 fmax: float = 8000.0, log_offset: float = 1e-6):
        if win_length > n_fft or win_length % 2:
            raise ValueError("win_length must be even and ≤ n_fft")
        self.n_mels, self.n_fft, self.win_length = int(n_mels), int(n_fft), int(win_length)
        self.fmin, self.fmax, self.log_offset = float(fmin), float(fmax), float(log_offset)
        self.name = "mel" if (n_mels, n_fft, win_length, fmin, fmax, log_offset) == (80, 1024, 640, 0.0, 8000.0, 1e-6) \
            else f"mel{n_mels}"
        self._fb = mel_filterbank(self.n_mels, self.n_fft, SAMPLE_RATE, self.fmin, self.fmax)
        n = np.arange(self.win_length)
        self._win = 0.5 - 0.5 * np.cos(2 * np.pi * n / self.win_length)  # periodic Hann

    @property
    def dim(self) -> int:
        return self.n_mels

    def describe(self) -> dict:
        return {"type": "mel", "n_mels": self.n_mels, "n_fft": self.n_fft, "win_length": self.win_length,
                "hop": HOP, "fmin": self.fmin, "fmax": self.fmax, "log_offset": self.log_offset, "version": 1}

    def __call__(self, wav: np.ndarray, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        x = np.asarray(wav, dtype=np.float64).reshape(-1)
        t = sequence_length(x.shape[0])
        out = np.zeros((t, self.n_mels), np.float32)
        half = self.win_length // 2
        left = half - HOP // 2  # frame t's window is centred at 320t + 160
        xp = np.zeros(HOP * max(t - 1, 0) + self.win_length, dtype=np.float64)
        xp[left:left + x.shape[0]] = x[: xp.shape[0] - left]
        step = 4096  # frames per block: bounds memory for long audio
        for s in range(0, t, step):
            e = min(t, s + step)
            idx = HOP * np.arange(s, e)[:, None] + np.arange(self.win_length)[None]
            spec = np.abs(np.fft.rfft(xp[idx] * self._win, n=self.n_fft, axis=1)) ** 2
            out[s:e] = np.log(spec @ self._fb.T + self.log_offset)
            if progress is not None:
                progress(min(x.shape[0], HOP * e) - min(x.shape[0], HOP * s))
        return out


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or re.match(r"^[A-Za-z]:", s) is not None


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        return os.environ.get("HF_HOME", "~/.cache/huggingface") + "/hub"


def _missing_model_message(model: str, local: bool, detail: str = "", key: str = "data.feature") -> str:
    """One line (the train CLI prints user errors as one line): what was looked for where, the training
    config keys that fix it, and how to provide the weights."""
    if local:
        where = f"wav2vec2 model directory {model!r} does not exist or is not a model directory{detail}"
        get = DEFAULT_W2V_MODEL
    else:
        where = (f"wav2vec2 model {model!r} is not available locally: looked for a directory of that name and in the "
                 f"Hugging Face cache ({_hf_cache_dir()}){detail}")
        get = model
    return (f"{where}; ua3dtalk never downloads weights (DESIGN §10). Train on log-mel features with {key}=mel, "
            "or give a local directory in the `save_pretrained` layout (config.json + model.safetensors or "
            "pytorch_model.bin) as data.extractor_model=DIR (ua3dtalk-features: --model PATH), or fill the Hugging "
            f"Face cache on a machine with network access: `huggingface-cli download {get}` (or `hf download {get}`) "
            "with HF_HOME pointing at the cache used here.")


def _weights_fingerprint(directory: Path) -> Optional[str]:
    """SHA-1 of a local checkpoint's ``config.json`` and weight files (names and bytes), or None."""
    files = sorted(p for pat in ("config.json", "*.safetensors", "*.bin") for p in directory.glob(pat) if p.is_file())
    if not files:
        return None
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode() + b"\0" + _sha1(f).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled() if hasattr(hf_logging, "is_progress_bar_enabled") else None
    hf_logging.set_verbosity_error()
    if bars is not None:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _conv_geometry(config) -> tuple[int, int]:
    """(hop, receptive field) in samples of the wav2vec2 convolutional feature encoder."""
    hop, rf = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        rf += (k - 1) * hop
        hop *= s
    return hop, rf


class Wav2Vec2Extractor:
    """wav2vec2 features through ``transformers`` at 50 Hz (module docstring for the details).

    Parameters
    ----------
    model : hub id (looked up in the local Hugging Face cache only) or a local ``save_pretrained``
        directory; default ``facebook/wav2vec2-base-960h``. An ``nn.Module`` (``Wav2Vec2ForCTC`` or
        ``Wav2Vec2Model``) is also accepted, with ``model_name`` naming it (benchmarks).
    layer : "logits" (CTC head, needs a fine-tuned checkpoint) or an int hidden-state index.
    device : torch device for the forward pass.
    chunk_seconds, context_seconds : audio is processed in chunks of ``chunk_seconds`` plus
        ``context_seconds`` of context on both sides (bounded memory; identical output for audio
        shorter than one chunk).
    allow_download : permit a download from the Hub (off by default; never when HF_HUB_OFFLINE=1).
    normalize : zero-mean/unit-variance input normalisation; None reads the checkpoint's
        ``preprocessor_config.json`` (``do_normalize``), defaulting to True.
    dtype : "float32" or "bfloat16" (CPU autocast; faster, ~1e-2 relative deviation).
    config_key : the training config key that asked for wav2vec2 features ("data.feature",
        "data.context_feature"), named by the missing-model message.
    """

    def __init__(self, model: Union[str, Path, "object"] = DEFAULT_W2V_MODEL, layer: Union[str, int] = "logits",
                 device: str = "cpu", chunk_seconds: float = 20.0, context_seconds: float = 1.0,
                 allow_download: bool = False, normalize: Optional[bool] = None, dtype: str = "float32",
                 model_name: Optional[str] = None, config_key: str = "data.feature"):
        import torch

        if isinstance(layer, str) and layer != "logits":
            try:
                layer = int(layer)
            except ValueError:
                raise ValueError(f"layer must be 'logits' or an integer hidden-state index, got {layer!r}") from None
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_frames = max(1, int(round(chunk_seconds * FEATURE_RATE)))
        self.context_frames = max(0, int(round(context_seconds * FEATURE_RATE)))
        if isinstance(model, (str, Path)):
            self.model_id = str(model)
            self.model, self._normalize_cfg = self._load(str(model), layer, allow_download, config_key)
            is_dir = _looks_like_path(self.model_id) or Path(self.model_id).exists()
            base = Path(self.model_id.rstrip("/\\")).name if is_dir else self.model_id.split("/")[-1]
            # a local checkpoint is identified by its bytes too: a cache made by other weights that were in
            # the same directory is recomputed (ua3dtalk.data.tiny_wav2vec2 rewrites its directory, say)
            self.weights_sha1 = _weights_fingerprint(Path(self.model_id).expanduser()) if is_dir else None
        else:
            self.model, self._normalize_cfg = model, None
            self.model_id = model_name or type(model).__name__
            self.weights_sha1 = None
            base = model_name or type(model).__name__
        self.model.eval().to(self.device)
        cfg = self.model.config
        self.hop, self.receptive_field = _conv_geometry(cfg)
        if self.hop != HOP:
            raise ValueError(f"wav2vec2 model {self.model_id!r} has a feature stride of {self.hop} samples; "
                             f"{HOP} (50 Hz at 16 kHz) is required")
        n_hidden = int(cfg.num_hidden_layers)
        if layer == "logits":
            if not hasattr(self.model, "lm_head"):
                raise ValueError(f"wav2vec2 model {self.model_id!r} has no CTC head; choose a hidden layer (--layer K)")
            self.layer = "logits"
            self.dim = int(cfg.vocab_size)
        else:
            k = int(layer)
            if not -(n_hidden + 1) <= k <= n_hidden:
                raise ValueError(f"layer {k} out of range for a model with {n_hidden} transformer layers "
                                 f"(valid: {-(n_hidden + 1)}..{n_hidden} or 'logits')")
            self.layer = k % (n_hidden + 1)
            self.dim = int(cfg.hidden_size)
        self.normalize = self._normalize_cfg if normalize is None else bool(normalize)
        if self.normalize is None:
            self.normalize = True
        safe = re.sub(r"[^A-Za-z0-9.-]+", "-", base).strip("-") or "model"
        self.name = f"w2v_{safe}_{'logits' if self.layer == 'logits' else f'h{self.layer}'}"

    @staticmethod
    def _load(model: str, layer, allow_download: bool, key: str = "data.feature"):
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

        p = Path(model).expanduser()
        local = p.exists() or _looks_like_path(model)
        if local:
            if not p.is_dir():
                raise MissingModelError(_missing_model_message(model, True, key=key))
            if not (p / "config.json").is_file():
                raise MissingModelError(_missing_model_message(model, True, " (no config.json in it)", key))
        offline = (not allow_download) or _offline()
        cls = Wav2Vec2ForCTC if layer == "logits" else Wav2Vec2Model
        try:
            with _quiet_transformers():
                m, info = cls.from_pretrained(str(p) if local else model, local_files_only=offline,
                                              output_loading_info=True)
        except (OSError, ValueError, pickle.UnpicklingError) as e:  # unpickling: refused by weights_only
            why = f" ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
            raise MissingModelError(_missing_model_message(model, local, why, key)) from e
        missing = set(info.get("missing_keys", ()))
        if layer == "logits" and any(k.startswith("lm_head") for k in missing):
            raise ValueError(f"wav2vec2 model {model!r} has no trained CTC head (lm_head missing from the checkpoint); "
                             "use a fine-tuned checkpoint for logits or choose a hidden layer (--layer K)")
        if any(not k.startswith("lm_head") for k in missing):
            raise ValueError(f"wav2vec2 checkpoint {model!r} lacks weights: {sorted(missing)[:5]}")
        norm = None
        try:
            from transformers import Wav2Vec2FeatureExtractor

            with _quiet_transformers():
                fe = Wav2Vec2FeatureExtractor.from_pretrained(str(p) if local else model, local_files_only=True)
            norm = bool(getattr(fe, "do_normalize", True))
        except Exception:  # no preprocessor_config.json: keep the default
            norm = None
        return m, norm

    def describe(self) -> dict:
        d = {"type": "wav2vec2", "model": self.model_id, "layer": self.layer, "normalize": self.normalize,
             "chunk_frames": self.chunk_frames, "context_frames": self.context_frames, "dtype": self.dtype,
             "version": 1}
        if self.weights_sha1 is not None:  # local directory: which weights made the cache
            d["weights_sha1"] = self.weights_sha1
        return d

    def __call__(self, wav: np.ndarray, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        import torch

        x = np.asarray(wav, dtype=np.float32).reshape(-1)
        n = x.shape[0]
        t = sequence_length(n)
        if t == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        left = (self.receptive_field - self.hop) // 2
        total = self.hop * (t - 1) + self.receptive_field
        xp = np.zeros(total, np.float32)
        xp[left:left + n] = x[: total - left]
        out = np.empty((t, self.dim), np.float32)
        xt = torch.from_numpy(xp)
        for a in range(0, t, self.chunk_frames):
            b = min(t, a + self.chunk_frames)
            s, e = max(0, a - self.context_frames), min(t, b + self.context_frames)
            seg = xt[self.hop * s: self.hop * (e - 1) + self.receptive_field][None].to(self.device)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                        enabled=self.dtype == "bfloat16"):
                if self.layer == "logits":
                    y = self.model(seg).logits[0]
                else:
                    y = self.model(seg, output_hidden_states=True).hidden_states[self.layer][0]
            if y.shape[0] != e - s:  # pragma: no cover - guards a transformers change
                raise RuntimeError(f"wav2vec2 produced {y.shape[0]} frames for {e - s} expected")
            out[a:b] = y[a - s: b - s].float().cpu().numpy()
            if progress is not None:
                progress(min(n, self.hop * b) - min(n, self.hop * a))
        return out


def make_extractor(kind: str, model: Optional[str] = None, layer: Union[str, int, None] = None, **kw) -> Extractor:
    """``kind`` "mel" or "wav2vec2" (alias "w2v") → an extractor; ``model``/``layer``/``kw`` go to
    :class:`Wav2Vec2Extractor`."""
    if kind == "mel":
        if model is not None or layer is not None:
            raise ValueError("the mel extractor takes no model or layer")
        return MelExtractor()
    if kind in ("wav2vec2", "w2v"):
        return Wav2Vec2Extractor(model or DEFAULT_W2V_MODEL, "logits" if layer is None else layer, **kw)
    raise ValueError(f"unknown extractor {kind!r}; choose 'wav2vec2' or 'mel'")


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
    x = load_wav(wav_path)
    seq = np.ascontiguousarray(extractor(x, progress=progress), dtype=np.float32)
    if seq.ndim != 2 or seq.shape[0] != sequence_length(x.shape[0]):
        raise RuntimeError(f"extractor {extractor.name} returned shape {list(seq.shape)}, expected "
                           f"[{sequence_length(x.shape[0])}, C]")
    if not np.isfinite(seq).all():
        raise RuntimeError(f"extractor {extractor.name} produced NaN/Inf for {wav_path}")
    atomic_save_npy(out, seq, clean_stale=True)
    atomic_write_json(meta_path, {**record, "shape": list(seq.shape), "dtype": str(seq.dtype), "npy_sha1": _sha1(out)})
    return out


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
