"""Checks of single dataset files, each reporting every problem into a ``_Report`` instead of raising:
the transforms json (:func:`_read_transforms`), image headers, special files (FIFOs, devices),
symlinks leaving the dataset (:func:`_inside`), and the clip list of an emotional dataset (index file
:func:`_read_index`, or :func:`_discover_clips`). :mod:`ua3dtalk.data.validate` runs them over a
whole dataset; the checks of ``emotion.json``, ``au.csv`` and ``.npy`` arrays live next to their
readers in :mod:`ua3dtalk.data.formats`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..constants import EMOTIONS
from .cameras import rigid_error
from .formats import (
    INTENSITIES,
    MAX_IMAGE_PIXELS,
    RIGID_TOLERANCE,
    _load_json,
    _load_json_object,
    _open_image,
    _Report,
    _strict_int,
)

# --------------------------------------------------------------------------------------------------
# transforms json, images, special files, symlinks (one regular directory)
# --------------------------------------------------------------------------------------------------

_ID_RE = re.compile(r"^[0-9]+$")
MAX_FRAME_ID = 10_000_000
"""Largest accepted ``img_id`` / ``aud_id`` (111 hours at 25 fps): per-frame arrays are sized by it."""


def _parse_img_id(v, path: Path, rep: _Report, where: str, field_name: str = "img_id") -> Optional[int]:
    if isinstance(v, str):
        s = v.strip()
        if s.startswith(("/", "\\", "~")) or ".." in s or "/" in s or "\\" in s or re.match(r"^[A-Za-z]:", s):
            rep.error(path, f"{where}: {field_name} {v!r} would escape the dataset directory (path separators, "
                            "'..' and absolute paths are not allowed; use an integer frame number)")
            return None
        i = int(s) if _ID_RE.match(s) else None
        if i is None:
            rep.error(path, f"{where}: {field_name} must be a non-negative integer, got {v!r}")
            return None
    else:
        i = _strict_int(v)
        if i is None or i < 0:
            rep.error(path, f"{where}: {field_name} must be a non-negative integer, got {v!r} ({type(v).__name__})")
            return None
    if i > MAX_FRAME_ID:
        rep.error(path, f"{where}: {field_name} {v!r} is larger than {MAX_FRAME_ID} (frame numbers index per-frame "
                        "arrays)")
        return None
    return i


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_transforms(path: Path, rep: _Report) -> Optional[dict]:
    """Parse a transforms json, reporting every bad field; return what is usable (intrinsics are
    None when invalid, invalid frames are left out) so that the other checks still run. None only
    when the file cannot be read as a JSON object."""
    d = _load_json_object(path, rep, "with focal_len, cx, cy, frames; got {}")
    if d is None:
        return None
    out: dict = {"path": path}
    for k in ("focal_len", "cx", "cy"):
        out[k] = None
        if k not in d:
            rep.error(path, f"missing field '{k}'")
        elif not _is_number(d[k]) or not math.isfinite(d[k]):
            rep.error(path, f"field '{k}' must be a finite number, got {d[k]!r}")
        elif k == "focal_len" and d[k] <= 0:
            rep.error(path, f"field 'focal_len' must be > 0, got {d[k]!r}")
        else:
            out[k] = float(d[k])
    for k in ("h", "w"):
        out[k] = None
        if k in d:
            if _strict_int(d[k]) is None or _strict_int(d[k]) <= 0:
                rep.error(path, f"field '{k}' must be a positive integer, got {d[k]!r}")
            else:
                out[k] = _strict_int(d[k])
    frames = d.get("frames")
    out["frames"] = []
    if "frames" not in d:
        rep.error(path, "missing field 'frames'")
        return out
    if not isinstance(frames, list) or not frames:
        got = "an empty list" if isinstance(frames, list) else type(frames).__name__
        rep.error(path, f"field 'frames' must be a non-empty list, got {got}")
        return out
    for n, fr in enumerate(frames):
        where = f"frames[{n}]"
        if not isinstance(fr, dict):
            rep.error(path, f"{where} must be an object, got {type(fr).__name__}")
            continue
        if "img_id" not in fr:
            rep.error(path, f"{where}: missing field 'img_id'")
            continue
        img_id = _parse_img_id(fr["img_id"], path, rep, where)
        aud_id = _parse_img_id(fr["aud_id"], path, rep, where, "aud_id") if "aud_id" in fr else img_id
        if "transform_matrix" not in fr:
            rep.error(path, f"{where}: missing field 'transform_matrix'")
            continue
        m = fr["transform_matrix"]
        try:
            mat = None if isinstance(m, (str, bytes)) else np.array(m, dtype=np.float64)
        except (ValueError, TypeError):
            mat = None
        if mat is None or mat.shape != (4, 4):
            shape = list(mat.shape) if mat is not None else "not numeric"
            rep.error(path, f"{where}: transform_matrix must be a 4×4 list of numbers, got {shape}")
            continue
        if not np.isfinite(mat).all():
            rep.error(path, f"{where}: transform_matrix contains NaN or Inf")
            continue
        err = rigid_error(mat)
        if err > RIGID_TOLERANCE:
            rep.error(path, f"{where}: transform_matrix is not a rigid camera-to-world transform "
                            f"(rotation not orthonormal or bottom row not 0 0 0 1; error {err:.2e})")
            continue
        if img_id is not None and aud_id is not None:
            out["frames"].append((img_id, aud_id, mat))
    return out


def _listdir(d: Path) -> Optional[dict[str, os.DirEntry]]:
    try:
        with os.scandir(d) as it:
            return {e.name: e for e in it}
    except (FileNotFoundError, NotADirectoryError):
        return None


def _inside(path: str | Path, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _decode(path: Path, mode: str) -> tuple[np.ndarray, Optional[str]]:
    """Decode to ``mode``; also return the file's own mode when it has an alpha channel, else None."""
    with _open_image(path) as im:
        alpha = im.mode if (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info) else None
        return np.asarray(im.convert(mode)), alpha


def _image_header(path: Path, rep: _Report, what: str) -> Optional[tuple[tuple[int, int], str]]:
    from PIL import Image, UnidentifiedImageError

    from ..utils.paths import special_file_kind

    kind = special_file_kind(path)
    if kind is not None:  # a FIFO would block open() forever
        rep.error(path, f"{what} is {kind}, not a regular file")
        return None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                rep.error(path, f"{what}: header claims {w}×{h} pixels (more than the "
                                f"{MAX_IMAGE_PIXELS // 1_000_000} MP accepted)")
                return None
            return im.size, im.mode
    except Image.DecompressionBombError as e:
        rep.error(path, f"{what} too large ({e})")
        return None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        rep.error(path, f"unreadable {what} ({e})")
        return None


def _special_files(root: Path, rep: _Report) -> bool:
    """Report every FIFO / device / socket in the clip directory and its sub-directories (one level);
    True when there is one."""
    from ..utils.paths import special_file_kind

    found = False
    dirs = [root] + [Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=True) or e.is_file(follow_symlinks=True):
                continue
            kind = special_file_kind(e.path)
            if kind is not None and kind != "a directory":
                rep.error(Path(e.path), f"is {kind}, not a regular file")
                found = True
    return found


# --------------------------------------------------------------------------------------------------
# clip list of an emotional dataset (index file or discovery)
# --------------------------------------------------------------------------------------------------


def _read_index(path: Path, root: Path, rep: _Report) -> list[tuple[Path, Optional[tuple[int, int]], Optional[str]]]:
    out = []
    root_real = os.path.realpath(root)
    entries: list = []
    if path.suffix == ".json":
        d = _load_json(path, rep)
        if d is None:
            return []
        if isinstance(d, dict):
            d = d.get("clips")
        if not isinstance(d, list):
            rep.error(path, "index must be a JSON list of clips (or {\"clips\": [...]}); each a relative directory "
                            "string or {\"dir\": ..., \"emotion\": ..., \"intensity\": ..., \"subject\": ...}")
            return []
        entries = d
    else:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            rep.error(path, f"unreadable index ({e})")
            return []
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    seen: dict[str, int] = {}
    for n, e in enumerate(entries):
        where = f"entry {n}"
        emo = None
        subj = None
        if isinstance(e, str):
            rel = e
        elif isinstance(e, dict) and isinstance(e.get("dir"), str):
            rel = e["dir"]
            if "emotion" in e or "intensity" in e:
                sub = _Report()
                tmp = {"emotion": e.get("emotion"), "intensity": e.get("intensity")}
                emo = _check_emotion_fields(tmp, path, sub, where)
                rep.problems.extend(sub.problems)
                if emo is None:
                    continue
            subj = e.get("subject") if isinstance(e.get("subject"), str) else None
        else:
            rep.error(path, f"{where}: must be a directory string or an object with a 'dir' string, got {e!r}")
            continue
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            rep.error(path, f"{where}: clip directory {rel!r} would escape the dataset directory")
            continue
        p = root / rel
        if p.exists() and not _inside(p, root_real):
            rep.error(path, f"{where}: clip directory {rel!r} is a symlink to {os.path.realpath(p)}, "
                            "outside the dataset directory")
            continue
        real = os.path.realpath(p)
        if real in seen:  # listed twice (also through another spelling or a link): it would count twice
            rep.error(path, f"{where}: clip directory {rel!r} is listed twice (first as entry {seen[real]}); "
                            "list each clip once")
            continue
        seen[real] = n
        out.append((p, emo, subj))
    return out


def _check_emotion_fields(d: dict, path: Path, rep: _Report, where: str) -> Optional[tuple[int, int]]:
    emo, inten = d.get("emotion"), d.get("intensity")
    if not isinstance(emo, str) or emo.strip().lower() not in EMOTIONS:
        rep.error(path, f"{where}: unknown emotion {emo!r}; expected one of {', '.join(EMOTIONS)}")
        return None
    if _strict_int(inten) not in INTENSITIES:
        rep.error(path, f"{where}: intensity must be 1, 2 or 3, got {inten!r}")
        return None
    return EMOTIONS.index(emo.strip().lower()), int(_strict_int(inten))


def _discover_clips(root: Path, max_depth: int = 4) -> list[Path]:
    found = []
    root_s = str(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = 0 if dirpath == root_s else len(Path(dirpath).relative_to(root).parts)
        if "emotion.json" in filenames and dirpath != root_s:
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        if depth >= max_depth:
            dirnames[:] = []
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in
                             {"ori_imgs", "gt_imgs", "parsing", "torso_imgs", "teeth_mask"})
    return sorted(found)
