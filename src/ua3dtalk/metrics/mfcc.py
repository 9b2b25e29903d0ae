"""The SyncNet audio front end: 13 MFCCs at 100 Hz from 16 kHz mono audio.

This is the front end of joonson/syncnet_python (``SyncNetInstance.evaluate``): the clip's audio is
extracted by ffmpeg as 16 kHz mono 16-bit PCM, read with ``scipy.io.wavfile`` (int16 sample values,
*not* rescaled to [-1, 1]) and passed to ``python_speech_features.mfcc(audio, 16000)`` with its
defaults:

=====================  ==========================================================
window                 25 ms (400 samples), rectangular (``winfunc`` = ones)
step                   10 ms (160 samples) → 100 frames per second
frames                 1 + ceil((L − 400) / 160) (the last frame zero-padded)
pre-emphasis           y[n] = x[n] − 0.97 x[n−1] over the whole signal
spectrum               power spectrum |rfft(frame, 512)|² / 512
filterbank             26 triangular mel filters, 0 Hz … 8 kHz
cepstrum               log filterbank energies → DCT-II (orthonormal), first 13
lifter                 1 + (22/2)·sin(π n / 22)
energy                 coefficient 0 replaced by log(frame energy) (``appendEnergy``)
=====================  ==========================================================

We call ``python_speech_features`` itself (so the numbers are the reference's by construction) after
bringing the waveform to the reference's scale: a float waveform in [-1, 1] (what
:func:`ua3dtalk.data.audio.load_wav` returns) is multiplied by 32768, which gives back exactly the int16
values of a 16-bit wav file. Other sample rates are resampled to 16 kHz first
(:func:`ua3dtalk.data.audio.resample`).

Alignment with video (25 fps): video frame ``i`` ↔ MFCC frames ``4i .. 4i+3``; SyncNet compares the 5
video frames ``v .. v+4`` with the 20 MFCC frames ``4v .. 4v+19``.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
"""Sample rate of the SyncNet front end (Hz)."""
MFCC_RATE = 100
"""MFCC frames per second (10 ms step)."""
NUM_CEPS = 13
"""MFCC coefficients per frame."""
MFCC_PER_VIDEO_FRAME = MFCC_RATE // 25
"""MFCC frames per 25 fps video frame (4)."""
INT16_SCALE = 32768.0
"""Factor from a float waveform in [-1, 1] to the int16 sample values the reference reads."""


def num_mfcc_frames(num_samples: int) -> int:
    """Number of MFCC frames ``python_speech_features`` yields for ``num_samples`` at 16 kHz."""
    n = int(num_samples)
    if n <= 400:
        return 1
    return 1 + int(np.ceil((n - 400) / 160.0))


def syncnet_mfcc(audio, sr: int = SAMPLE_RATE) -> np.ndarray:
    """MFCCs of a mono waveform as SyncNet sees them → float32 ``[13, T]`` (T at 100 Hz).

    ``audio``: 1-D array (numpy or torch) of samples. Floating-point input is taken to be in [-1, 1]
    and scaled by 32768 (the int16 scale of the reference); integer input (int16 samples as read by
    ``scipy.io.wavfile``) is used as is. ``sr``: its sample rate; anything other than 16000 is
    resampled. Raises ``ValueError`` for a non-1-D, empty or non-finite input.
    """
    try:
        import python_speech_features as psf
    except ImportError as e:  # pragma: no cover - declared in install_requires
        raise ImportError("the SyncNet front end needs the 'python_speech_features' package "
                          "(pip install python_speech_features)") from e
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be a mono 1-D waveform [L], got shape {list(a.shape)}")
    if a.size == 0:
        raise ValueError("audio is empty")
    if np.issubdtype(a.dtype, np.integer):
        x = a.astype(np.float64)
        if int(sr) != SAMPLE_RATE:
            from ..data.audio import resample

            x = resample(x / INT16_SCALE, int(sr), SAMPLE_RATE).astype(np.float64) * INT16_SCALE
    else:
        x = a.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("audio contains NaN or Inf")
        if int(sr) != SAMPLE_RATE:
            from ..data.audio import resample

            x = resample(x, int(sr), SAMPLE_RATE).astype(np.float64)
        x = x * INT16_SCALE
    feat = psf.mfcc(x, SAMPLE_RATE)  # [T, 13], all defaults (see the module docstring)
    return np.ascontiguousarray(feat.T, dtype=np.float32)
