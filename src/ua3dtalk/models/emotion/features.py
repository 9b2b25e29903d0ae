"""Spectral front-ends of the emotion encoder, in torch (batched, differentiable, device-agnostic).

* :class:`LogMel` — log-mel spectrogram: periodic-Hann frames of ``win_length`` samples (25 ms) every
  ``hop_length`` samples (10 ms = 100 frames/s), zero-padded to ``n_fft`` (512), power spectrum,
  ``n_mels`` (80) triangular filters on the HTK mel scale ``m = 2595·log10(1 + f/700)`` between
  ``fmin`` and ``fmax`` (0–8 kHz), each normalised to unit area (same filter shape as
  :class:`ua3dtalk.data.extractors.MelExtractor`), natural log of ``power + 1e-6``. Frames are centred
  (``center=True``, reflect padding), so a clip of ``S`` samples has ``1 + S // hop_length`` frames.
* :class:`MFCC` — DCT-II (orthonormal) of the log-mel spectrogram, the first ``n_mfcc`` (40)
  coefficients (c0 included: it carries the energy, an emotion cue).

Filterbank, window and DCT matrix are non-persistent buffers: they never appear in checkpoints.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..prior.checks import expect

__all__ = ["mel_filterbank", "dct_matrix", "LogMel", "MFCC", "sequence_from_windows"]


def mel_filterbank(n_mels: int = 80, n_fft: int = 512, sample_rate: int = 16000, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """[n_mels, n_fft//2+1] triangular HTK-mel filters, each of unit area (float32)."""
    fmax = sample_rate / 2 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 ≤ fmin < fmax ≤ sample_rate/2, got fmin={fmin}, fmax={fmax}")

    def hz2mel(f):
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo_m, hi_m = hz2mel(torch.tensor(float(fmin), dtype=torch.float64)), hz2mel(torch.tensor(fmax, dtype=torch.float64))
    pts = mel2hz(torch.linspace(float(lo_m), float(hi_m), n_mels + 2, dtype=torch.float64))
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (ce - lo)
    down = (hi - freqs[None]) / (hi - ce)
    fb = torch.clamp(torch.minimum(up, down), min=0.0) * (2.0 / (hi - lo))
    return fb.to(torch.float32)


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_in, n_out] orthonormal DCT-II basis: ``x [.., n_in] @ D`` gives the first ``n_out``
    coefficients."""
    if not 1 <= n_out <= n_in:
        raise ValueError(f"need 1 ≤ n_out ≤ n_in, got {n_out}, {n_in}")
    n = torch.arange(n_in, dtype=torch.float64)[:, None]
    k = torch.arange(n_out, dtype=torch.float64)[None]
    d = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    d[:, 0] /= math.sqrt(2.0)
    return d.to(torch.float32)


class LogMel(nn.Module):
    """Waveform [B,S] (16 kHz) → log-mel spectrogram [B,n_mels,frames] (see the module docstring).

    Args:
        sample_rate: input rate (Hz).
        n_fft: FFT size.
        win_length: analysis window (samples, ≤ n_fft).
        hop_length: frame step (samples).
        n_mels: mel bands.
        fmin, fmax: filterbank range (Hz); ``fmax=None`` is ``sample_rate/2``.
        log_offset: added to the mel power before the log.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, win_length: int = 400, hop_length: int = 160,
                 n_mels: int = 80, fmin: float = 0.0, fmax: float | None = 8000.0, log_offset: float = 1e-6):
        super().__init__()
        if not 0 < win_length <= n_fft or hop_length < 1:
            raise ValueError("need 0 < win_length ≤ n_fft and hop_length ≥ 1")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.log_offset = n_mels, float(log_offset)
        self.register_buffer("fb", mel_filterbank(n_mels, n_fft, sample_rate, fmin, fmax), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav`` [B,S] → [B,n_mels,1 + S//hop_length]. Needs ``S > n_fft//2`` (reflect padding)."""
        expect(wav, "waveform", ("B", "S"))
        if wav.shape[1] <= self.n_fft // 2:
            need = self.n_fft // 2 + 1
            raise ValueError(f"waveform of {wav.shape[1]} samples is shorter than one analysis window "
                             f"({need} samples = {1000 * need / self.sample_rate:.0f} ms)")
        spec = torch.stft(wav.float(), self.n_fft, self.hop_length, self.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)  # [B,F,T]
        power = spec.real.pow(2) + spec.imag.pow(2)
        return torch.log(torch.einsum("mf,bft->bmt", self.fb, power) + self.log_offset)


class MFCC(nn.Module):
    """Waveform [B,S] → MFCC [B,n_mfcc,frames]: DCT-II (ortho) of :class:`LogMel`.

    Args:
        n_mfcc: coefficients kept (≤ n_mels).
        **logmel: arguments of :class:`LogMel`.
    """

    def __init__(self, n_mfcc: int = 40, **logmel):
        super().__init__()
        self.logmel = LogMel(**logmel)
        self.n_mfcc = int(n_mfcc)
        self.register_buffer("dct", dct_matrix(self.logmel.n_mels, self.n_mfcc), persistent=False)

    def from_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """[B,n_mels,T] → [B,n_mfcc,T]."""
        expect(logmel, "log-mel", ("B", self.logmel.n_mels, "T"))
        return torch.einsum("bmt,mk->bkt", logmel, self.dct)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.from_logmel(self.logmel(wav))


def sequence_from_windows(windows: torch.Tensor, pad: int = 8, stride: int = 2) -> torch.Tensor:
    """Per-frame §5.3 windows of consecutive frames → the 50 Hz feature sequence they come from.

    ``windows`` [B,F,W,C] (F consecutive video frames, e.g. a 1–2 s clip segment) → [B,F·stride,C]:
    frame ``i``'s own steps are window positions ``pad … pad+stride-1`` (``8:10``), so concatenating
    them undoes the overlapping windowing. This is the ``w2v`` input of the emotion encoder.
    """
    expect(windows, "windows", ("B", "F", "W", "C"))
    if windows.shape[2] < pad + stride:
        raise ValueError(f"windows of {windows.shape[2]} steps do not contain positions {pad}:{pad + stride}")
    b, f, _, c = windows.shape
    return windows[:, :, pad:pad + stride].reshape(b, f * stride, c)
