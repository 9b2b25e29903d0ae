"""Speech-like audio with known phonetic timing, and the expression coefficients it drives.

Syllables = optional consonant (band-passed noise burst) + vowel (glottal pulse train through three
formant resonators, vowels a e i o u with textbook formants). Emotion × intensity changes pitch level
and range, energy and tempo (``EMOTION_PROSODY``). The per-frame mouth opening is vowel openness ×
amplitude envelope with co-articulation smoothing, so the audio→mouth link is real and learnable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import butter, lfilter

from .head import EXPR, EXPR_NAMES

SR = 16000
FPS = 25
EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
# vowel: (F1, F2, F3) Hz, jaw openness, lip rounding, lip spreading
VOWELS = {
    "a": ((730, 1090, 2440), 1.0, 0.0, 0.1),
    "e": ((530, 1840, 2480), 0.6, 0.0, 0.5),
    "i": ((270, 2290, 3010), 0.3, 0.0, 0.9),
    "o": ((570, 840, 2410), 0.7, 0.8, 0.0),
    "u": ((300, 870, 2240), 0.35, 1.0, 0.0),
}
# emotion: pitch scale, pitch range scale, energy, tempo (at intensity 3)
EMOTION_PROSODY = {
    "neutral": (1.0, 1.0, 1.0, 1.0),
    "angry": (1.15, 1.3, 1.6, 1.15),
    "contempt": (0.95, 0.8, 0.9, 0.9),
    "disgusted": (0.93, 0.9, 0.85, 0.88),
    "fear": (1.3, 1.2, 0.9, 1.25),
    "happy": (1.25, 1.6, 1.25, 1.1),
    "sad": (0.88, 0.55, 0.65, 0.78),
    "surprised": (1.35, 1.9, 1.3, 1.0),
}
# emotion offsets of the expression coefficients (at intensity 3)
EMOTION_EXPR = {
    "neutral": {},
    "angry": {"brow_furrow": 0.9, "frown": 0.4, "eye_open": 0.1, "lip_spread": 0.2},
    "contempt": {"smirk": 0.9, "brow_raise": 0.1, "eye_open": -0.1},
    "disgusted": {"frown": 0.3, "brow_furrow": 0.5, "cheek": 0.6, "eye_open": -0.2},
    "fear": {"brow_raise": 0.6, "brow_furrow": 0.4, "eye_open": 0.3, "lip_spread": 0.3},
    "happy": {"smile": 0.9, "cheek": 0.6, "brow_raise": 0.2, "eye_open": -0.1},
    "sad": {"frown": 0.7, "brow_furrow": 0.3, "eye_open": -0.25, "smile": -0.2},
    "surprised": {"brow_raise": 0.9, "eye_open": 0.35, "jaw_open": 0.15},
}


def intensity_weight(intensity: int) -> float:
    """MEAD levels 1, 2, 3 → 1/3, 2/3, 1."""
    if intensity not in (1, 2, 3):
        raise ValueError(f"intensity must be 1, 2 or 3, got {intensity!r}")
    return intensity / 3.0


def _prosody(emotion: str, intensity: int):
    if emotion not in EMOTION_PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    w = intensity_weight(intensity)
    return tuple(1.0 + w * (v - 1.0) for v in EMOTION_PROSODY[emotion])


@dataclass
class Utterance:
    audio: np.ndarray  # [S] float32 in [-1, 1], 16 kHz
    openness: np.ndarray  # [S] target jaw openness per sample (0 in silence)
    rounding: np.ndarray  # [S]
    spreading: np.ndarray  # [S]
    envelope: np.ndarray  # [S] amplitude envelope


def _resonator(x, f, bw):
    r = np.exp(-np.pi * bw / SR)
    th = 2 * np.pi * f / SR
    return lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], x)


def synth_speech(duration: float, rng: np.random.Generator, f0_base: float = 140.0, emotion: str = "neutral",
                 intensity: int = 1) -> Utterance:
    """Speech-like audio of ``duration`` seconds with per-sample articulation targets."""
    pitch, prange, energy, tempo = _prosody(emotion, intensity)
    n = int(round(duration * SR))
    audio, opn, rnd, spr, env = (np.zeros(n) for _ in range(5))
    t = int(rng.uniform(0.1, 0.3) * SR)
    syll_in_word = 0
    names = list(VOWELS)
    while t < n - int(0.1 * SR):
        if syll_in_word == 0 and rng.random() < 0.25:  # pause between words/phrases
            t += int(rng.uniform(0.06, 0.3) / tempo * SR)
            syll_in_word = rng.integers(1, 4)
            continue
        syll_in_word = max(syll_in_word - 1, 0)
        if rng.random() < 0.7:  # consonant
            lc = int(rng.uniform(0.03, 0.08) / tempo * SR)
            lc = min(lc, n - t)
            noise = rng.normal(0, 1, lc)
            lo, hi = (2500, 6000) if rng.random() < 0.5 else (500, 2500)
            b, a = butter(2, [lo / (SR / 2), hi / (SR / 2)], btype="band")
            burst = lfilter(b, a, noise) * 0.15 * energy * np.hanning(lc)
            audio[t:t + lc] += burst
            env[t:t + lc] = np.maximum(env[t:t + lc], 0.15 * np.hanning(lc))
            opn[t:t + lc] = 0.1
            t += lc
        v = names[rng.integers(len(names))]
        (f1, f2, f3), o, r_, s_ = VOWELS[v]
        lv = min(int(rng.uniform(0.11, 0.24) / tempo * SR), n - t)
        if lv <= 32:
            break
        f0 = f0_base * pitch * (1 + prange * 0.18 * rng.normal()) * np.linspace(1.05, 0.95, lv)
        f0 = np.clip(f0, 60, 500)
        phase = 2 * np.pi * np.cumsum(f0) / SR
        src = sum(np.sin(k * phase) / k for k in range(1, int(4000 / f0.max()) + 1))
        voiced = _resonator(src, f1, 90) + 0.6 * _resonator(src, f2, 110) + 0.3 * _resonator(src, f3, 170)
        a_env = np.minimum(1.0, np.minimum(np.arange(lv) / (0.02 * SR), (lv - np.arange(lv)) / (0.04 * SR)))
        amp = energy * rng.uniform(0.8, 1.0) * (0.3 + 0.7 * o)  # open vowels are louder (real speech)
        voiced = voiced / (np.abs(voiced).max() + 1e-9) * 0.5 * amp * a_env
        audio[t:t + lv] += voiced
        env[t:t + lv] = np.maximum(env[t:t + lv], amp * a_env)
        opn[t:t + lv] = o
        rnd[t:t + lv] = r_
        spr[t:t + lv] = s_
        t += lv
    peak = np.abs(audio).max()
    if peak > 0.95:
        audio *= 0.95 / peak
    audio += rng.normal(0, 1e-3, n)  # a little room noise
    return Utterance(audio.astype(np.float32), opn, rnd, spr, env)


def frame_means(x: np.ndarray, n_frames: int) -> np.ndarray:
    hop = SR // FPS
    x = np.pad(x, (0, max(0, n_frames * hop - len(x))))[: n_frames * hop]
    return x.reshape(n_frames, hop).mean(1)


def expression_track(utt: Utterance, n_frames: int, rng: np.random.Generator, emotion: str = "neutral",
                     intensity: int = 1) -> np.ndarray:
    """Per-frame expression coefficients [n_frames, len(EXPR_NAMES)] driven by ``utt`` and the emotion."""
    w = intensity_weight(intensity)
    _, _, energy, _ = _prosody(emotion, intensity)
    e = np.zeros((n_frames, len(EXPR_NAMES)))
    env = frame_means(utt.envelope, n_frames)
    env = env / max(env.max(), 1e-6) if env.max() > 0 else env
    # co-articulation: the articulators are low-pass (σ ≈ 1 frame = 40 ms)
    e[:, EXPR["jaw_open"]] = gaussian_filter1d(frame_means(utt.openness * utt.envelope, n_frames), 1.0) * (
        0.7 + 0.3 * min(energy, 1.6))
    e[:, EXPR["lip_round"]] = gaussian_filter1d(frame_means(utt.rounding, n_frames), 1.2)
    e[:, EXPR["lip_spread"]] = gaussian_filter1d(frame_means(utt.spreading, n_frames), 1.2)
    e[:, EXPR["eye_open"]] = 1.0
    for k, v in EMOTION_EXPR[emotion].items():
        e[:, EXPR[k]] += w * v
    # slow idiosyncratic motion of brows and cheeks
    for k in ("brow_raise", "cheek", "smile"):
        e[:, EXPR[k]] += gaussian_filter1d(rng.normal(0, 0.6, n_frames), 12) * (0.4 + 0.6 * env.mean())
    # blinks every 2–5 s, 5 frames long
    t = int(rng.uniform(0.5, 2.0) * FPS)
    prof = np.array([0.5, 0.1, 0.0, 0.15, 0.6])
    while t < n_frames:
        sl = slice(t, min(t + len(prof), n_frames))
        e[sl, EXPR["eye_open"]] *= prof[: sl.stop - sl.start]
        t += int(rng.uniform(2.0, 5.0) * FPS)
    lo = np.zeros(len(EXPR_NAMES))
    lo[EXPR["smile"]] = -0.3
    return np.clip(e, lo, 1.5).astype(np.float32)


def head_pose_track(n_frames: int, rng: np.random.Generator, emotion: str = "neutral") -> np.ndarray:
    """Smooth head pose [n_frames, 6] = (yaw, pitch, roll, tx, ty, tz) from a few random sinusoids."""
    t = np.arange(n_frames) / FPS
    amp = np.array([0.12, 0.06, 0.04, 0.004, 0.003, 0.004])
    out = np.zeros((n_frames, 6))
    for k in range(6):
        for _ in range(3):
            f = rng.uniform(0.05, 0.4)
            out[:, k] += amp[k] / 2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    if emotion == "sad":
        out[:, 1] += 0.05
    return out
