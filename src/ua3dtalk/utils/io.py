"""Atomic file writes and video output.

Every output of the project is written to a temporary file in the destination directory and moved
into place with ``os.replace`` (atomic on POSIX), so an interrupted run never leaves a half-written
file under the final name.

Temporary names are ``.<name>.tmp-<host>-<pid>-<random><suffix>`` (directories:
``.<name>.partial-<host>-<pid>-<random>``): hidden, and recognisable as stale once their process is
gone. A process killed by SIGKILL (or a power loss) cannot delete its temporary file; the next
writer of the same path removes it when asked to (``clean_stale=True``, :func:`remove_stale_temporaries`),
so interrupted runs do not accumulate garbage. Only temporaries of this host whose process no
longer exists are removed (a shared file system may hold other hosts' writes in progress).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _tmp_prefix(path: Path, kind: str = "tmp") -> str:
    return f".{path.name}.{kind}-{_HOST}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files / directories that writers of ``path`` killed on this host left next
    to it (their process no longer exists); returns what was removed."""
    path = Path(path)
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    pat = re.compile(r"^\." + re.escape(path.name) + r"\.(tmp|partial)-" + re.escape(_HOST) + r"-(\d+)-")
    for n in names:
        m = pat.match(n)
        if m is None or _pid_alive(int(m.group(2))):
            continue
        p = path.parent / n
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def remove_stale_temporaries_under(root: str | os.PathLike) -> list[Path]:
    """:func:`remove_stale_temporaries` for every file of a directory tree (e.g. a run directory on
    resume: a writer killed while writing a file that is never written again — a finished stage's
    record — would otherwise leave its temporary behind for good); returns what was removed."""
    root = Path(root)
    pat = re.compile(r"^\.(.+)\.(tmp|partial)-" + re.escape(_HOST) + r"-(\d+)-")
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        for n in list(dirnames) + filenames:
            m = pat.match(n)
            if m is not None and not _pid_alive(int(m.group(3))):
                removed += remove_stale_temporaries(Path(dirpath) / m.group(1))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, clean_stale: bool = False):
    """Yield a temporary path next to ``path``; on success move it over ``path`` atomically.

    ``clean_stale``: first remove temporaries of ``path`` left by killed writers
    (:func:`remove_stale_temporaries`; costs a listing of the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean_stale:
        remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=suffix or path.suffix or ".tmp")
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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a hidden staging directory next to ``path``; on success it replaces ``path`` (an existing
    directory there is replaced as a whole), so ``path`` is either absent, the old directory, or the
    complete new one — never a partial result. Staging directories of killed writers are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a directory")
    remove_stale_temporaries(path)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path, "partial")))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp creates 0700
    try:
        yield stage
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path, "partial")))
            os.replace(path, old / "old")
            os.replace(stage, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


class OutputError(ValueError):
    """An output path a command must not or cannot write (the message names the argument)."""


def _resolve_paths(out, inputs: dict | None) -> tuple[Path, Path, list[tuple[str, object, Path]]]:
    """``(out as given, out resolved, [(name, input as given, input resolved)])`` for the given inputs."""
    o = Path(os.path.expanduser(str(out)))
    return o, o.resolve(), [(name, p, Path(os.path.expanduser(str(p))).resolve())
                            for name, p in (inputs or {}).items() if p is not None]


def check_output(out, arg: str, inputs: dict | None = None, *, min_free_bytes: int = 16 << 20,
                 reads_back: tuple = ()) -> Path:
    """The one rule for a command's output file, checked before any work (DESIGN §9.3):

    * never one of the command's own inputs (``inputs``: argument name → path; the same file, also through a
      link), never inside an input directory under a name the command reads back (``reads_back``: file
      names such as ``metrics.json``);
    * its parent is (or can become) a directory — no component is an existing file — and is writable, with
      at least ``min_free_bytes`` free.

    Returns the output path; raises :class:`OutputError` naming ``arg`` (and the input it would overwrite)."""
    o, ro, resolved = _resolve_paths(out, inputs)
    for name, p, q in resolved:
        if ro == q or (o.exists() and q.exists() and os.path.samefile(o, q)):
            raise OutputError(f"{arg}={out}: is the command's own input {name}={p}; write the output elsewhere")
        if q.is_dir() and q in ro.parents and ro.name in reads_back:
            raise OutputError(f"{arg}={out}: would be read back as an input under {name}={p} (a {ro.name}); "
                              "write the output elsewhere")
    if o.is_dir():
        raise OutputError(f"{arg}={out}: is a directory; give a file name")
    _check_place(ro.parent, out, arg, min_free_bytes)
    return o


def _check_place(p: Path, out, arg: str, min_free_bytes: int) -> None:
    """``p`` or its nearest existing ancestor is a writable directory with ``min_free_bytes`` free."""
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise OutputError(f"{arg}={out}: {p} is a file, not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{arg}={out}: {p} is not writable")
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        free = None
    if free is not None and free < min_free_bytes:
        raise OutputError(f"{arg}={out}: only {free >> 20} MB free on the disk of {p} "
                          f"(needs ≥ {min_free_bytes >> 20} MB)")


def check_output_dir(out, arg: str, inputs: dict | None = None, *, own=None, min_free_bytes: int = 64 << 20,
                     what: str = "output") -> Path:
    """The one rule for a command's output *directory*, checked before any work (DESIGN §9.3):

    * it is not one of the command's inputs, does not contain one (replacing it would delete the input) and
      does not lie inside an input directory (``inputs``: argument name → path);
    * no component of the path is an existing file; the directory (or its nearest existing ancestor) is
      writable and has at least ``min_free_bytes`` free;
    * when it exists and is not empty, ``own(path)`` must say it is this command's own earlier output
      (``own=None``: any existing directory is accepted — the command keeps its own files apart, e.g. a
      dataset root holding several subjects).

    Returns the path; raises :class:`OutputError` naming ``arg``."""
    o, ro, resolved = _resolve_paths(out, inputs)
    for name, p, q in resolved:
        if ro == q or ro in q.parents:
            raise OutputError(f"{arg}={out}: holds the command's own input {name}={p}; write the {what} elsewhere")
        if q.is_dir() and q in ro.parents:
            raise OutputError(f"{arg}={out}: is inside the input {name}={p}; write the {what} elsewhere")
    if o.exists() and not o.is_dir():
        raise OutputError(f"{arg}={out}: exists and is not a directory")
    _check_place(ro, out, arg, min_free_bytes)
    if own is not None and o.is_dir() and any(o.iterdir()) and not own(o):
        raise OutputError(f"{arg}={out}: is a non-empty directory that is not an earlier {what} of this command; "
                          "give an empty or new directory (nothing was changed)")
    return o


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


def merge_json(path, values: dict) -> dict:
    """Merge ``values`` into the JSON object at ``path`` (created when absent or unreadable; nested dicts
    are merged one level) and write it atomically; returns the merged object."""
    path = Path(path)
    old: dict = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (ValueError, OSError):
            old = {}
        old = old if isinstance(old, dict) else {}
    for k, v in values.items():
        old[k] = {**old[k], **v} if isinstance(v, dict) and isinstance(old.get(k), dict) else v
    atomic_write_json(path, old)
    return old


def atomic_save_npy(path, arr: np.ndarray, clean_stale: bool = False) -> None:
    with atomic_path(path, suffix=".npy", clean_stale=clean_stale) as tmp:
        np.save(tmp, arr)


def write_video(path, frames, fps: int = 25, audio_path=None) -> None:
    """Write uint8 frames [H,W,3] to an H.264 mp4 (ffmpeg from imageio-ffmpeg), optionally muxing audio."""
    import imageio.v2 as iio2
    import imageio_ffmpeg

    path = Path(path)
    with atomic_path(path, suffix=".mp4", clean_stale=True) as tmp:  # also what a killed earlier run left
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
