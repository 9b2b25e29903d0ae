"""Inputs refused by type and header before they are opened or decoded (issue 18 item 2): a FIFO in place of
a data file (would block ``open()`` forever), an image header claiming 65000² pixels, audio with an absurd
sample rate, channel count or amplitude — each named, never a hang, a traceback or gigabytes of memory."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest

from ua3dtalk.data.audio import load_wav
from ua3dtalk.data.formats import DatasetError, read_image

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


def _png_header_claiming(path: Path, w: int, h: int) -> None:
    """A real 4×4 PNG whose IHDR is patched to claim w×h pixels (CRC recomputed): the header parses."""
    from PIL import Image

    Image.new("RGB", (4, 4)).save(path)
    b = bytearray(path.read_bytes())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", w, h)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))


def test_image_header_over_the_limit_is_refused_by_name(tmp_path):
    p = tmp_path / "0.png"
    _png_header_claiming(p, 65000, 65000)
    with pytest.raises(DatasetError, match=r"0\.png.*(65000×65000 pixels|too large)"):
        read_image(p)
    _png_header_claiming(p, 9000, 9000)  # under PIL's own limit, over ours
    with pytest.raises(DatasetError, match=r"0\.png.*9000×9000 pixels"):
        read_image(p)


def test_fifo_in_place_of_an_image_is_refused_not_opened(tmp_path):
    p = tmp_path / "0.jpg"
    os.mkfifo(p)
    with pytest.raises(DatasetError, match=r"named pipe"):
        read_image(p)  # would block forever in open()


def test_fifo_in_a_clip_does_not_hang_validate(synth_emotional_small, tmp_path):
    import shutil

    src = next(p.parent for p in sorted(synth_emotional_small.rglob("aud.wav")))
    clip = tmp_path / "clip"
    shutil.copytree(src, clip)
    (clip / "expr.npy").unlink()
    os.mkfifo(clip / "expr.npy")
    frame = sorted((clip / "gt_imgs").iterdir())[0]
    frame.unlink()
    os.mkfifo(frame)
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.validate", str(clip)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "expr.npy: is a named pipe" in r.stdout + r.stderr and frame.name in r.stdout + r.stderr


def _wav(path: Path, rate: int, channels: int, samples: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(samples * channels, dtype=np.int16).tobytes())


@pytest.mark.parametrize("rate,channels,samples,needle", [
    (1, 1, 100_000, "sample rate 1 Hz"),          # resampling would ask for gigabytes
    (16000, 200, 1600, "200 channels"),
])
def test_audio_header_out_of_range_is_refused_before_resampling(tmp_path, rate, channels, samples, needle):
    p = tmp_path / "a.wav"
    _wav(p, rate, channels, samples)
    with pytest.raises(DatasetError, match=needle):
        load_wav(p)


def test_audio_far_outside_full_scale_is_refused(tmp_path):
    import soundfile as sf

    p = tmp_path / "loud.wav"
    x = np.zeros(16000, dtype=np.float32)
    x[100] = 3e38
    sf.write(p, x, 16000, subtype="FLOAT")
    with pytest.raises(DatasetError, match="amplitude"):
        load_wav(p)


def test_fifo_as_audio_is_refused(tmp_path):
    p = tmp_path / "aud.wav"
    os.mkfifo(p)
    with pytest.raises(DatasetError, match="named pipe"):
        load_wav(p)
