"""Video and audio decoding with the ffmpeg binary of ``imageio-ffmpeg`` (no system ffmpeg needed).

* :func:`probe` reads the container header (``ffmpeg -i``): size, frame rate, duration, audio.
* :func:`iter_frames` streams RGB frames resampled to a constant 25 fps (ffmpeg's ``fps`` filter:
  each output tick takes the input frame nearest in time, so variable-frame-rate and 30/50/60 fps
  inputs come out at 25 fps with the timing of the original), optionally cropped to a square and
  resized. Frames are read one at a time from a pipe: a long video is never held in memory.
* :func:`extract_audio` writes ``aud.wav`` 16 kHz mono 16-bit PCM, padded with silence / trimmed to
  exactly ``num_frames × 640`` samples (25 fps) so that audio and frames line up.

Errors (unreadable, truncated or corrupt file, no video or audio stream) are
:class:`~ua3dtalk.preprocess.errors.PreprocessError` naming the file.
"""
from __future__ import annotations

import io
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..utils.io import atomic_write_bytes
from .errors import PreprocessError, PreprocessWarning

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by ``imageio-ffmpeg``."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says about a video file.

    width, height   display size in pixels (after the rotation metadata, as ffmpeg decodes it)
    fps             average frame rate (frames/s; 0 when unknown)
    tbr             ffmpeg's guess of the base frame rate; differs from ``fps`` for variable frame rate
    duration        seconds (0 when unknown)
    has_audio       whether the file has an audio stream
    audio_rate      sample rate of the first audio stream (0 without audio)
    """

    path: Path
    width: int
    height: int
    fps: float
    tbr: float
    duration: float
    has_audio: bool
    audio_rate: int = 0

    @property
    def expected_frames(self) -> int:
        """Frames at 25 fps the header's duration promises (0 when the duration is unknown)."""
        return int(round(self.duration * FPS))

    @property
    def variable_rate(self) -> bool:
        """True when the average frame rate differs from ffmpeg's base-rate guess (a VFR sign)."""
        return self.fps > 0 and self.tbr > 0 and abs(self.fps - self.tbr) > 0.01 * self.tbr


_DUR = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: (.*)")
_AUDIO = re.compile(r"Stream #\S+.*?: Audio: (.*)")
_SIZE = re.compile(r"(?<![0-9a-fA-Fx])(\d{2,5})x(\d{2,5})(?![0-9])")
_RATE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_HZ = re.compile(r"(\d+) Hz")
_ROT = re.compile(r"rotation of (-?[\d.]+) degrees")

_FATAL = ("Invalid data found", "moov atom not found", "does not contain any stream", "Invalid argument",
          "could not find codec parameters", "End of file", "Permission denied", "No such file")


def probe(path: str | Path) -> VideoInfo:
    """Read the header of a video file with ``ffmpeg -i``. Raises :class:`PreprocessError` when the
    file does not exist, is not a video ffmpeg can read, or has no video stream."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessError("video file does not exist" if not path.exists() else "not a file", path)
    if path.stat().st_size == 0:
        raise PreprocessError("empty file (0 bytes), not a video", path)
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True)
    err = r.stderr.decode("utf-8", "replace")
    vid = _VIDEO.search(err)
    if vid is None:
        why = next((ln.strip() for ln in err.splitlines() if any(k in ln for k in _FATAL)), None)
        detail = f" (ffmpeg: {why})" if why else ""
        if "Stream #" in err:
            raise PreprocessError(f"no video stream in the file{detail}", path)
        raise PreprocessError(f"not a readable video file: corrupt, truncated or not a video{detail}", path)
    vline = vid.group(1)
    size = _SIZE.search(vline)
    if size is None:
        raise PreprocessError(f"could not read the frame size from the header ({vline.strip()})", path)
    w, h = int(size.group(1)), int(size.group(2))
    rates = {}
    for m in _RATE.finditer(vline):
        rates[m.group(3)] = float(m.group(1)) * (1000 if m.group(2) else 1)
    rot = _ROT.search(err)
    if rot is not None and round(abs(float(rot.group(1)))) % 180 == 90:
        w, h = h, w  # ffmpeg auto-rotates when decoding
    d = _DUR.search(err)
    dur = int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3)) if d else 0.0
    aud = _AUDIO.search(err)
    hz = _HZ.search(aud.group(1)) if aud else None
    return VideoInfo(path=path, width=w, height=h, fps=rates.get("fps", 0.0), tbr=rates.get("tbr", 0.0),
                     duration=dur, has_audio=aud is not None, audio_rate=int(hz.group(1)) if hz else 0)


@dataclass(frozen=True)
class Crop:
    """A square crop ``[x, x+side) × [y, y+side)`` of the decoded frame (pixels, integers)."""

    x: int
    y: int
    side: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.side]


def _filters(info: VideoInfo, crop: Optional[Crop], size: Optional[int], fps: Optional[float]) -> str:
    f = []
    if fps:
        f.append(f"fps={fps:g}")
    src = min(info.width, info.height)
    if crop is not None:
        f.append(f"crop={crop.side}:{crop.side}:{crop.x}:{crop.y}")
        src = crop.side
    if size is not None:
        flags = "area" if size < src else "bicubic"
        f.append(f"scale={size}:{size}:flags={flags}")
    return ",".join(f) if f else "null"


def iter_frames(info: VideoInfo, *, crop: Optional[Crop] = None, size: Optional[int] = None,
                fps: Optional[float] = FPS, threads: int = 1) -> Iterator[np.ndarray]:
    """Yield uint8 frames [S,S,3] (RGB) one at a time.

    ``crop``: square region of the (rotated) input; ``size``: output side (both None → the input
    size, which must then be what :func:`probe` reported). ``fps``: resampling rate (None keeps
    every decoded frame). After the last frame, a decoding error of ffmpeg (corrupt data) raises
    :class:`PreprocessError`; the caller checks the frame count against ``info.expected_frames``.
    """
    if size is not None:
        w = h = size
    elif crop is not None:
        w = h = crop.side
    else:
        w, h = info.width, info.height
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-threads", str(max(1, threads)),
           "-i", str(info.path), "-map", "0:v:0", "-vf", _filters(info, crop, size, fps), "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=w * h * 3 * 2)
    nbytes = w * h * 3
    errs: list[bytes] = []
    import threading

    def _drain():  # keep reading stderr so ffmpeg never blocks on a full pipe
        for line in proc.stderr:
            if len(errs) < 200:
                errs.append(line)

    t = threading.Thread(target=_drain, daemon=True)
    t.start()
    try:
        while True:
            buf = proc.stdout.read(nbytes)
            if not buf:
                break
            if len(buf) < nbytes:
                break  # a truncated last frame: dropped
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        if proc.poll() is None:
            proc.stdout.close()
            proc.kill()
        rc = proc.wait()
        t.join(timeout=5)
    if rc != 0 and rc != -9:
        msg = b"".join(errs).decode("utf-8", "replace").strip().splitlines()
        raise PreprocessError(f"ffmpeg failed to decode the video (exit {rc}): {' | '.join(msg[-3:]) or 'no message'}",
                              info.path)
    bad = [ln.decode("utf-8", "replace").strip() for ln in errs]
    serious = [ln for ln in bad if ln and ("corrupt" in ln.lower() or "invalid" in ln.lower() or "error" in ln.lower())]
    if len(serious) > 5:
        warnings.warn(f"{info.path}: ffmpeg reported {len(serious)} decoding errors (e.g. {serious[0]!r}); "
                      "damaged frames may be repeated or grey", PreprocessWarning, stacklevel=2)


def extract_audio(source: str | Path, out_wav: str | Path, num_frames: int) -> dict:
    """Decode the first audio stream of ``source`` to 16 kHz mono PCM and write ``out_wav`` atomically,
    padded with silence or trimmed to exactly ``num_frames × 640`` samples.

    Raises :class:`PreprocessError` when ``source`` has no audio stream or it cannot be decoded.
    Returns a summary dict (``padded_samples``: silence added at the end).
    """
    import soundfile as sf

    source = Path(source)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(source), "-map", "0:a:0", "-vn",
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-acodec", "pcm_s16le", "-f", "wav", "-"]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0 or len(r.stdout) <= 44:
        msg = r.stderr.decode("utf-8", "replace").strip()
        if "matches no streams" in msg or "Stream map" in msg or (r.returncode == 0 and len(r.stdout) <= 44):
            raise PreprocessError("no audio track: the video has no audio stream (give the speech as a separate "
                                  "file with --audio FILE)", source)
        last = msg.splitlines()[-1] if msg else r.returncode
        raise PreprocessError(f"could not decode the audio track (ffmpeg: {last})",
                              source)
    try:
        x, sr = sf.read(io.BytesIO(r.stdout), dtype="int16", always_2d=False)
    except Exception as e:  # soundfile's own error types
        raise PreprocessError(f"could not read the decoded audio ({e})", source) from None
    if x.ndim != 1 or sr != SAMPLE_RATE:
        raise PreprocessError(f"unexpected decoded audio format ({sr} Hz, shape {x.shape})", source)
    want = int(num_frames) * SAMPLES_PER_FRAME
    have = int(x.shape[0])
    if have == 0:
        raise PreprocessError("the audio track is empty", source)
    pad = max(0, want - have)
    y = np.zeros(want, np.int16)
    y[: min(want, have)] = x[:want]
    buf = io.BytesIO()
    sf.write(buf, y, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    atomic_write_bytes(out_wav, buf.getvalue())
    return {"source": str(source), "samples": want, "source_seconds": have / SAMPLE_RATE, "padded_samples": pad}


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(img: np.ndarray, compress_level: int = 1, palette: Optional[np.ndarray] = None) -> bytes:
    """PNG bytes of an RGB/RGBA uint8 image, or of a label map [H,W] with ``palette`` [K,3] (an
    indexed PNG: small and fast; decoders convert it to the palette colours)."""
    from PIL import Image

    buf = io.BytesIO()
    if palette is not None:
        im = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))  # mode "L"; putpalette makes it "P"
        pal = np.zeros((256, 3), np.uint8)
        pal[: len(palette)] = palette
        im.putpalette(pal.reshape(-1).tolist())
        im.save(buf, format="PNG", compress_level=compress_level)
    else:
        Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert(mode))
