"""Atomic file writes and video output.

Every output of the project is written to a temporary file in the destination directory and moved
into place with ``os.replace`` (atomic on POSIX), so an interrupted run never leaves a half-written
file under the final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success move it over ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr)


def write_video(path, frames, fps: int = 25, audio_path=None) -> None:
    """Write uint8 frames [H,W,3] to an H.264 mp4 (ffmpeg from imageio-ffmpeg), optionally muxing audio."""
    import imageio.v2 as iio2
    import imageio_ffmpeg

    path = Path(path)
    with atomic_path(path, suffix=".mp4") as tmp:
        w = iio2.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1,
                            ffmpeg_log_level="error", output_params=["-pix_fmt", "yuv420p"])
        try:
            for f in frames:
                w.append_data(np.asarray(f))
        finally:
            w.close()
        if audio_path is not None:
            muxed = tmp.with_name(tmp.stem + ".mux.mp4")
            try:
                subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(tmp), "-i",
                                str(audio_path), "-c:v", "copy", "-c:a", "aac", "-shortest", str(muxed)], check=True)
                os.replace(muxed, tmp)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(muxed)
