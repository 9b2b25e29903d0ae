"""Helpers of the preprocessing tests: small videos with known content (no downloads)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def write_frames_video(path: Path, frames, fps: int = 25, audio: np.ndarray | None = None) -> Path:
    """H.264 mp4 from uint8 frames, with 16 kHz audio muxed in when given."""
    from ua3dtalk.utils.io import write_video

    path = Path(path)
    if audio is None:
        write_video(path, frames, fps=fps)
        return path
    wav = path.with_suffix(".tmp.wav")
    sf.write(str(wav), audio, 16000)
    try:
        write_video(path, frames, fps=fps, audio_path=wav)
    finally:
        wav.unlink(missing_ok=True)
    return path


def ffmpeg(*args: str) -> None:
    from ua3dtalk.preprocess.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


def noise_frames(n: int, size: int = 128, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (size, size, 3)).astype(np.uint8)
    for i in range(n):
        yield np.roll(base, i, axis=1)


def two_face_frames(n: int, seed: int = 0):
    """512² frames: the animated astronaut (face ≈ 140 px) bottom-left, a static smaller copy of the
    face (≈ 93 px) top-right."""
    from ua3dtalk.preprocess.animate import animate, astronaut

    frames, truth = animate(n, 384, seed=seed)
    small = astronaut()[40:190, 160:290]  # a 130×150 face crop (≈ 93 px face)
    bg = np.full((512, 512, 3), 215, np.uint8)
    out = []
    for f in frames:
        c = bg.copy()
        c[128:512, 0:384] = f
        c[0:150, 382:512] = small
        out.append(c)
    return out, truth
