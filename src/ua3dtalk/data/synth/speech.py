"""Speech-like audio with known phonetic timing, and the expression coefficients of a clip.

Syllables = optional consonant (band-passed noise burst) + vowel (glottal pulse train through three
formant resonators, vowels a e i o u with textbook formants). Emotion × intensity changes the prosody
of the waveform only — pitch level and range, energy and tempo (``EMOTION_PROSODY``), as real speech
does; the syllable sequence drawn from a generator is the same for every emotion (only its timing
scales with the tempo).

The per-frame expression of a clip (:func:`expression_track`) is the sum of three independent parts:

* articulation (``jaw_open``, ``lip_round``, ``lip_spread``): one smooth bump per vowel whose peak is
  the vowel's openness/rounding/spreading times a per-syllable stress, reached whatever the tempo
  (the plateau lasts at least a frame) — its amplitude does not depend on the emotion's energy or
  tempo, so the mouth cannot stand in for the facial expression;
* idle motion: blinks (``eye_open``) and slow wandering of brows, cheeks and smile;
* the emotion: the FACS prototype of the emotion (``EMOTION_EXPR``, action units of ``head.EXPR_AU``)
  scaled by the intensity (1/3, 2/3, 1) and by a per-clip onset–apex–offset envelope
  (:func:`emotion_envelope`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import butter, lfilter

from ...constants import EMOTIONS
from .head import EXPR, EXPR_NAMES

SR = 16000
FPS = 25
# vowel: (F1, F2, F3) Hz, jaw openness, lip rounding, lip spreading
VOWELS = {
    "a": ((730, 1090, 2440), 1.0, 0.0, 0.1),
    "e": ((530, 1840, 2480), 0.6, 0.0, 0.5),
    "i": ((270, 2290, 3010), 0.3, 0.0, 0.9),
    "o": ((570, 840, 2410), 0.7, 0.8, 0.0),
    "u": ((300, 870, 2240), 0.35, 1.0, 0.0),
}
# emotion: pitch scale, pitch range scale, energy, tempo (at intensity 3) — the waveform only
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
EMOTION_AUS = {
    "neutral": "",
    "angry": "AU4+5+7+10+17+23/24",
    "contempt": "R12+R14 (unilateral)",
    "disgusted": "AU9/10+15+16+25/26",
    "fear": "AU1+2+4+5+7+20+26",
    "happy": "AU6+12+25/26",
    "sad": "AU1+4+15+17 (+41 lid droop)",
    "surprised": "AU1+2+5+26/27",
}
"""The FACS action units of each emotion prototype (EMFACS prototypes and their common variants)."""
# emotion prototypes: expression coefficients added at the apex of intensity 3 (head.EXPR_AU)
EMOTION_EXPR = {
    "neutral": {},
    "angry": {"brow_lower": 1.0, "lid_raise": 0.6, "lid_tighten": 1.0, "nose_wrinkle": 0.35, "lip_tighten": 1.0,
              "chin_raise": 1.0},
    "contempt": {"smirk": 1.0},
    "disgusted": {"nose_wrinkle": 1.0, "frown": 0.7, "lower_lip_down": 1.0, "jaw_open": 0.25},
    "fear": {"brow_inner_up": 1.0, "brow_outer_up": 0.6, "brow_lower": 0.6, "lid_raise": 1.0, "lid_tighten": 0.4,
             "lip_stretch": 1.0, "jaw_open": 0.7},
    "happy": {"smile": 1.0, "cheek_raise": 1.0, "jaw_open": 0.45},
    "sad": {"brow_inner_up": 1.3, "brow_lower": 0.3, "frown": 1.1, "chin_raise": 1.2, "lid_raise": -0.5},
    "surprised": {"brow_inner_up": 1.0, "brow_outer_up": 1.0, "lid_raise": 1.0, "jaw_open": 1.0},
}
# bounds of the coefficients (after the parts are summed)
EXPR_MIN = np.zeros(len(EXPR_NAMES))
for _k, _v in {"smile": -0.3, "brow_inner_up": -0.3, "brow_outer_up": -0.3, "cheek_raise": -0.3,
               "lid_raise": -1.0}.items():
    EXPR_MIN[EXPR[_k]] = _v
EXPR_MAX = np.full(len(EXPR_NAMES), 1.5)
ARTICULATION = ("jaw_open", "lip_round", "lip_spread")
EMOTIONAL_EXPR = tuple(n for n in EXPR_NAMES
                       if n not in ARTICULATION and any(n in proto for proto in EMOTION_EXPR.values()))
"""The *emotional* coefficients: the action units of the emotion prototypes (``EMOTION_EXPR``), without the
speech articulation (``jaw_open`` is also part of some prototypes but follows the vowels in every clip) —
all but ``jaw_open``, ``lip_round``, ``lip_spread`` and ``eye_open``. Written to ``synth.json``
(``expr_emotional``); the prior's L_recon leaves them out (``PriorExtraction(recon_dims=...)``)."""


def intensity_weight(intensity: int) -> float:
    """MEAD levels 1, 2, 3 → 1/3, 2/3, 1."""
    if intensity not in (1, 2, 3):
        raise ValueError(f"intensity must be 1, 2 or 3, got {intensity!r}")
    return intensity / 3.0


def _check_emotion(emotion: str) -> None:
    if emotion not in EMOTION_PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")


def _prosody(emotion: str, intensity: int):
    _check_emotion(emotion)
    w = intensity_weight(intensity)
    return tuple(1.0 + w * (v - 1.0) for v in EMOTION_PROSODY[emotion])


@dataclass
class Vowel:
    """One vowel of an utterance: time span (s), articulation targets and stress in [0.8, 1]."""

    start: float
    end: float
    openness: float
    rounding: float
    spreading: float
    stress: float


@dataclass
class Utterance:
    audio: np.ndarray  # [S] float32 in [-1, 1], 16 kHz
    openness: np.ndarray  # [S] target jaw openness per sample (0 in silence)
    rounding: np.ndarray  # [S]
    spreading: np.ndarray  # [S]
    envelope: np.ndarray  # [S] amplitude envelope of the waveform (carries the emotion's energy)
    vowels: list = field(default_factory=list)  # [Vowel]: what the articulation follows


def _resonator(x, f, bw):
    r = np.exp(-np.pi * bw / SR)
    th = 2 * np.pi * f / SR
    return lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], x)


def synth_speech(duration: float, rng: np.random.Generator, f0_base: float = 140.0, emotion: str = "neutral",
                 intensity: int = 1) -> Utterance:
    """Speech-like audio of ``duration`` seconds with per-sample articulation targets.

    The random draws per syllable do not depend on the emotion (the consonant noise comes from a
    per-syllable seed), so one generator state gives the same syllables for every emotion."""
    pitch, prange, energy, tempo = _prosody(emotion, intensity)
    n = int(round(duration * SR))
    audio, opn, rnd, spr, env = (np.zeros(n) for _ in range(5))
    vowels = []
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
            noise = np.random.default_rng(rng.integers(2**32)).normal(0, 1, lc)
            lo, hi = (2500, 6000) if rng.random() < 0.5 else (500, 2500)
            b, a = butter(2, [lo / (SR / 2), hi / (SR / 2)], btype="band")
            burst = lfilter(b, a, noise) * 0.15 * energy * np.hanning(lc)
            audio[t:t + lc] += burst
            env[t:t + lc] = np.maximum(env[t:t + lc], 0.15 * energy * np.hanning(lc))
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
        stress = rng.uniform(0.8, 1.0)
        amp = energy * stress * (0.3 + 0.7 * o)  # open vowels are louder (real speech)
        voiced = voiced / (np.abs(voiced).max() + 1e-9) * 0.5 * amp * a_env
        audio[t:t + lv] += voiced
        env[t:t + lv] = np.maximum(env[t:t + lv], amp * a_env)
        opn[t:t + lv] = o
        rnd[t:t + lv] = r_
        spr[t:t + lv] = s_
        vowels.append(Vowel(t / SR, (t + lv) / SR, o, r_, s_, float(stress)))
        t += lv
    peak = np.abs(audio).max()
    if peak > 0.95:
        audio *= 0.95 / peak
    audio += rng.normal(0, 1e-3, n)  # a little room noise
    return Utterance(audio.astype(np.float32), opn, rnd, spr, env, vowels)


def frame_means(x: np.ndarray, n_frames: int) -> np.ndarray:
    hop = SR // FPS
    x = np.pad(x, (0, max(0, n_frames * hop - len(x))))[: n_frames * hop]
    return x.reshape(n_frames, hop).mean(1)


def _ramp(x):
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


# articulation bump of a vowel: anticipation before its onset, plateau of at least PLATEAU_MIN seconds
RISE_LEAD, RISE, FALL, PLATEAU_MIN = 0.05, 0.08, 0.08, 0.045


def articulation_track(utt: Utterance, n_frames: int) -> np.ndarray:
    """[n_frames, len(EXPR_NAMES)]: jaw_open, lip_round, lip_spread of the utterance's vowels (0 elsewhere).

    Each vowel is a smooth bump sampled at the frame centres (frame i covers the audio samples
    [640 i, 640 (i+1))); its plateau is at least one frame long, so every vowel reaches its peak
    o·(0.3 + 0.7 o)·stress (jaw; rounding/spreading peak at the vowel's targets) at any tempo."""
    out = np.zeros((n_frames, len(EXPR_NAMES)))
    if not utt.vowels:
        return out
    t = (np.arange(n_frames) + 0.5) / FPS
    s = np.array([v.start for v in utt.vowels])[:, None]
    e = np.array([v.end for v in utt.vowels])[:, None]
    rise_end = s - RISE_LEAD + RISE
    fall_start = np.maximum(e - 0.03, rise_end + PLATEAU_MIN)
    bump = _ramp((t - (s - RISE_LEAD)) / RISE) * (1 - _ramp((t - fall_start) / FALL))  # [V, n]
    for name, peak in (("jaw_open", [v.openness * (0.3 + 0.7 * v.openness) * v.stress for v in utt.vowels]),
                       ("lip_round", [v.rounding for v in utt.vowels]),
                       ("lip_spread", [v.spreading for v in utt.vowels])):
        out[:, EXPR[name]] = (np.asarray(peak)[:, None] * bump).max(0)
    return out


def idle_track(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """[n_frames, len(EXPR_NAMES)]: open eyes with blinks every 2–5 s, slow wandering of brows, cheeks
    and smile (the same for every emotion: it depends on ``rng`` only)."""
    e = np.zeros((n_frames, len(EXPR_NAMES)))
    e[:, EXPR["eye_open"]] = 1.0
    brow, cheek, smile = (gaussian_filter1d(rng.normal(0, 0.6, n_frames), 12) * 0.6 for _ in range(3))
    e[:, EXPR["brow_inner_up"]] += brow
    e[:, EXPR["brow_outer_up"]] += brow
    e[:, EXPR["cheek_raise"]] += cheek
    e[:, EXPR["smile"]] += smile
    t = int(rng.uniform(0.5, 2.0) * FPS)
    prof = np.array([0.5, 0.1, 0.0, 0.15, 0.6])
    while t < n_frames:
        sl = slice(t, min(t + len(prof), n_frames))
        e[sl, EXPR["eye_open"]] *= prof[: sl.stop - sl.start]
        t += int(rng.uniform(2.0, 5.0) * FPS)
    return e


def emotion_envelope(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """[n_frames] in [0, 1]: onset–apex–offset of the emotion in one clip (0 at frame 0).

    A smooth ramp from neutral to the apex starting within the first 0.3 s (at most 10 % of the clip)
    and lasting 0.3–0.8 s (at most 35 % of the clip), a hold, and a partial release to 35–70 % of the
    apex over 0.3–0.6 s that starts 0.4–1 s (at most 25 % of the clip) before the end."""
    T = n_frames / FPS
    t = np.arange(n_frames) / FPS
    t_on = rng.uniform(0.0, min(0.3, 0.1 * T))
    ramp = min(rng.uniform(0.3, 0.8), 0.35 * T)
    t_rel = max(T - min(rng.uniform(0.4, 1.0), 0.25 * T), t_on + ramp)
    rel = max(min(rng.uniform(0.3, 0.6), T - t_rel), 1e-3)
    level = rng.uniform(0.35, 0.7)
    return _ramp((t - t_on) / ramp) * (1 - (1 - level) * _ramp((t - t_rel) / rel))


def emotion_prototype(emotion: str, intensity: int = 3) -> np.ndarray:
    """[len(EXPR_NAMES)]: the coefficients the emotion adds at its apex at ``intensity``."""
    _check_emotion(emotion)
    out = np.zeros(len(EXPR_NAMES))
    for k, v in EMOTION_EXPR[emotion].items():
        out[EXPR[k]] = v
    return out * intensity_weight(intensity)


def expression_track(utt: Utterance, n_frames: int, rng: np.random.Generator, emotion: str = "neutral",
                     intensity: int = 1, parts: bool = False):
    """Per-frame expression coefficients [n_frames, len(EXPR_NAMES)] float32 of a clip: articulation
    of ``utt`` + idle motion + the emotion's prototype × intensity × envelope (module docstring).

    ``rng`` draws the idle motion and the envelope timings, the same for every emotion. With
    ``parts=True`` returns ``(expr, expr_emotion)``: ``expr_emotion`` is the additive emotion part
    (after clipping to the coefficient bounds), so ``expr - expr_emotion`` is the clip with a neutral
    face (exactly zero for ``neutral``)."""
    base = np.clip(articulation_track(utt, n_frames) + idle_track(n_frames, rng), EXPR_MIN, EXPR_MAX)
    env = emotion_envelope(n_frames, rng)
    emo = env[:, None] * emotion_prototype(emotion, intensity)[None]
    base32 = base.astype(np.float32)
    expr = np.clip(base32 + emo, EXPR_MIN, EXPR_MAX).astype(np.float32) if emo.any() else base32
    if not parts:
        return expr
    return expr, (expr - base32).astype(np.float32)


def head_pose_track(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth head pose [n_frames, 6] = (yaw, pitch, roll, tx, ty, tz) from a few random sinusoids.

    Independent of the emotion: the same ``rng`` gives the same pose for every emotion."""
    t = np.arange(n_frames) / FPS
    amp = np.array([0.12, 0.06, 0.04, 0.004, 0.003, 0.004])
    out = np.zeros((n_frames, 6))
    for k in range(6):
        for _ in range(3):
            f = rng.uniform(0.05, 0.4)
            out[:, k] += amp[k] / 2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out
