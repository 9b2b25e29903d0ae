"""Readers of the dataset layouts (DESIGN §5.1 regular, §5.2 emotional).

Regular layout — one directory per subject (or per clip of an emotional dataset), the ER-NeRF /
TalkingGaussian layout, read as those projects write it::

    <dir>/
      transforms_train.json, transforms_val.json   {focal_len, cx, cy, [h, w], frames: [{img_id,
                                                   aud_id, transform_matrix}]}  (or one transforms.json)
      ori_imgs/<img_id>.jpg, ori_imgs/<img_id>.lms  frames (25 fps) and 68 "x y" landmark lines
      parsing/<img_id>.png                          RGB label map in the :data:`PALETTE` colours
      gt_imgs/<img_id>.jpg        optional          frame with the background replaced by bc.jpg
      torso_imgs/<img_id>.png     optional          RGBA torso + neck layer
      teeth_mask/<img_id>.npy     optional          bool [H,W] (TalkingGaussian): teeth move from face to mouth
      bc.jpg                      optional          background plate (white when absent)
      aud.wav                     16 kHz mono (optional when an aud_*.npy feature file exists)
      aud_*.npy, aud.npy          optional          audio features (see :mod:`ua3dtalk.data.audio`)
      au.csv                      optional          OpenFace output; column ``AU45_r`` (header names may
                                                    carry OpenFace's leading spaces, `` AU45_r``)
      expr.npy                    optional          [num_frames, K] expression coefficients
      emotion.json                emotional clips   {"emotion": one of EMOTIONS, "intensity": 1|2|3}

Conventions:

* **Frames.** A clip lists its frames in the ``transforms_*.json`` files. ``img_id`` is the frame
  number: a non-negative integer naming the files (``ori_imgs/<img_id>.jpg``) and indexing every
  per-frame array (rows of ``au.csv``, ``expr.npy`` and the audio features, as TalkingGaussian does),
  so those arrays have ``num_frames = max(img_id) + 1`` rows. ``aud_id`` (defaults to ``img_id``) is
  kept for ER-NeRF compatibility. Frames are held sorted by ``img_id``; *positions* ``j = 0..len-1``
  index :meth:`ClipInfo.frame`, the cameras and the split index arrays.
* **Splits.** ``transforms_train.json`` / ``transforms_val.json`` give the split; a single
  ``transforms.json`` is split by the ER-NeRF default (first 10/11 of the frames train, last 1/11 val).
* **Cameras** are converted once to the renderer's OpenCV world→camera convention, see
  :mod:`ua3dtalk.data.cameras`.
* **Image used for training** is ``gt_imgs/<id>.jpg`` when the clip has ``gt_imgs/`` (what ER-NeRF
  and TalkingGaussian train on), otherwise ``ori_imgs/<id>.jpg``.
* **Length rule.** Audio (``aud.wav``) and audio-feature files may differ from ``num_frames`` by at most
  :data:`LENGTH_TOLERANCE` frames — the rounding slack of the ER-NeRF preprocessing — which is
  reported as a warning and fixed when reading (zero padding at the end / trimming, see
  :func:`ua3dtalk.data.audio.fit_length`); a larger difference is an error. Other per-frame arrays
  (``au.csv``, ``expr.npy``) must match exactly.

Where things live: this module holds the constants, :class:`Problem` / :class:`DatasetError`, and the
lazy readers of single files (:func:`read_image`, :func:`read_parsing`, :func:`read_landmarks`, …);
:mod:`ua3dtalk.data.clip` the metadata of a loaded clip (:class:`~ua3dtalk.data.clip.ClipInfo`,
:class:`~ua3dtalk.data.clip.EmotionalData`); :mod:`ua3dtalk.data.validate` the checks
(``inspect_clip``, ``inspect_emotional``), which collect every :class:`Problem` (file + message) instead
of stopping at the first; :mod:`ua3dtalk.data.loading` the loaders (``load_clip`` / ``load_emotional`` /
``load_dataset``), which run them and raise one :class:`DatasetError` listing all errors, and
``read_frame``. ``level="quick"`` (the
loaders' default) checks everything except the pixels: files exist, image headers and sizes, JSON,
audio header, arrays (shapes, NaN/Inf), landmarks, symlinks. ``level="full"`` (``ua3dtalk-validate``)
also decodes every image and checks the parsing colours; the lazy readers (:func:`read_image`,
:func:`read_parsing`, …) raise the same :class:`DatasetError` for a file that fails at training time.
Nothing here writes into a dataset.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..constants import EMOTIONS

# --------------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------------

FPS = 25
"""Video frame rate of every dataset (frames per second)."""


INTENSITIES: tuple[int, ...] = (1, 2, 3)

PARTS: tuple[str, ...] = ("background", "face", "mouth", "hair", "neck", "torso")
"""Label ids of :func:`read_parsing` maps (index into this tuple)."""

PALETTE: dict[str, tuple[int, int, int]] = {
    "background": (255, 255, 255),
    "face": (0, 0, 255),
    "mouth": (100, 100, 100),
    "hair": (0, 0, 0),
    "neck": (0, 255, 0),
    "torso": (255, 0, 0),
}
"""RGB colour of each part in ``parsing/<id>.png`` (exact: parsing maps are lossless PNGs)."""

LENGTH_TOLERANCE = 3
"""Frames by which audio / feature lengths may differ from ``num_frames`` (warning, fixed by padding
or trimming); beyond it the dataset is invalid."""

NUM_LANDMARKS = 68
RIGID_TOLERANCE = 1e-3
TRANSFORM_FILES = ("transforms_train.json", "transforms_val.json")
SINGLE_TRANSFORM_FILE = "transforms.json"
INDEX_FILES = ("clips.json", "clips.txt")
TG_AUS = (1, 4, 5, 6, 7, 45)  # TalkingGaussian's 6 eye/brow action units

_PALETTE_CODES = np.array([(r << 16) | (g << 8) | b for (r, g, b) in (PALETTE[p] for p in PARTS)], dtype=np.int32)


# --------------------------------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """One thing wrong with a dataset: the file concerned, what is wrong, ``error`` or ``warning``."""

    path: Path
    message: str
    severity: str = "error"

    def format(self, relative_to: Path | None = None) -> str:
        p = self.path
        if relative_to is not None:
            try:
                p = Path(os.path.relpath(p, relative_to))
            except ValueError:
                pass
        tag = "" if self.severity == "error" else "warning: "
        return f"{tag}{p}: {self.message}"


class DatasetError(ValueError):
    """A dataset is invalid. ``problems`` lists every error found (each with its file).

    Picklable, and constructible from a plain message (what a DataLoader worker's re-raise does), so
    an error in a worker reaches the main process as a ``DatasetError`` that still names the file.
    """

    def __init__(self, problems: Sequence[Problem] | str, root: Path | str | None = None):
        self.root = Path(root) if root is not None else None
        if isinstance(problems, str):
            self.problems = [Problem(self.root or Path("."), problems)]
            super().__init__(problems if root is None else self.problems[0].format())
            return
        self.problems = list(problems)
        errs = [p for p in self.problems if p.severity == "error"] or self.problems
        head = f"invalid dataset {self.root}" if self.root is not None else "invalid dataset file"
        lines = [f"{head}: {len(errs)} problem{'s' if len(errs) != 1 else ''}"]
        lines += ["  " + p.format() for p in errs]
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (DatasetError, (self.problems, self.root))


class DatasetWarning(UserWarning):
    """A dataset irregularity that the readers fix (e.g. the length rule) — printed, not fatal."""


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


class _Report:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, path: Path, msg: str) -> None:
        self.problems.append(Problem(Path(path), msg, "error"))

    def warn(self, path: Path, msg: str) -> None:
        self.problems.append(Problem(Path(path), msg, "warning"))

    @property
    def n_errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)


# --------------------------------------------------------------------------------------------------
# lazy file readers (each raises DatasetError naming the file)
# --------------------------------------------------------------------------------------------------


MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image (width × height) a reader decodes; a header claiming more is refused before decoding."""


def check_image_header(path: Path, im) -> None:
    """Refuse an image whose header claims more than :data:`MAX_IMAGE_PIXELS` (named, before decoding)."""
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise DatasetError([Problem(Path(path), f"image header claims {w}×{h} pixels (more than the "
                                                f"{MAX_IMAGE_PIXELS // 1_000_000} MP accepted)")])


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    from ..utils.paths import special_file_kind

    kind = special_file_kind(path)
    if kind is not None:
        raise DatasetError([Problem(Path(path), f"is {kind}, not an image file")])
    try:
        im = Image.open(path)
        check_image_header(path, im)
        im.load()
        return im
    except FileNotFoundError:
        raise DatasetError([Problem(Path(path), "missing file")]) from None
    except Image.DecompressionBombError as e:
        raise DatasetError([Problem(Path(path), f"image too large ({e})")]) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DatasetError([Problem(Path(path), f"unreadable image ({e})")]) from None


def read_image_array(path: Path | str, mode: str = "RGB") -> np.ndarray:
    """Decode an image to a uint8 array [H,W,C] (``mode`` "RGB" → C=3, "RGBA" → C=4)."""
    with _open_image(Path(path)) as im:
        return np.asarray(im.convert(mode))


def read_image(path: Path | str) -> torch.Tensor:
    """Decode an RGB image to a float32 tensor [3,H,W] in [0,1] (grey/RGBA inputs are converted)."""
    a = read_image_array(path, "RGB")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def read_rgba(path: Path | str) -> torch.Tensor:
    """Decode an image with alpha (``torso_imgs/<id>.png``) to float32 [4,H,W] in [0,1]."""
    a = read_image_array(path, "RGBA")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def parsing_labels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map an RGB parsing array [H,W,3] uint8 to labels [H,W] uint8 (index into :data:`PARTS`);
    out-of-palette pixels get 255. Returns (labels, out_of_palette_mask)."""
    rgb = np.asarray(rgb)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    labels = np.full(code.shape, 255, dtype=np.uint8)
    for i, c in enumerate(_PALETTE_CODES):
        labels[code == c] = i
    bad = labels == 255
    return labels, bad


def _describe_bad_colours(rgb: np.ndarray, bad: np.ndarray, k: int = 3) -> str:
    cols, counts = np.unique(rgb[bad].reshape(-1, 3), axis=0, return_counts=True)
    order = np.argsort(-counts)[:k]
    ex = ", ".join(f"{tuple(int(v) for v in cols[i])}×{int(counts[i])}" for i in order)
    allowed = ", ".join(f"{n} {c}" for n, c in PALETTE.items())
    return (f"{int(bad.sum())} pixels have colours outside the parsing palette (e.g. {ex}); "
            f"allowed: {allowed}")


def read_parsing(path: Path | str) -> torch.Tensor:
    """Decode ``parsing/<id>.png`` to a label map uint8 [H,W] (index into :data:`PARTS`).

    Colours must match :data:`PALETTE` exactly (parsing maps are PNG); any other colour raises
    :class:`DatasetError` with the count and the most frequent offending colours.
    """
    rgb = read_image_array(path, "RGB")
    labels, bad = parsing_labels(rgb)
    if bad.any():
        raise DatasetError([Problem(Path(path), _describe_bad_colours(rgb, bad))])
    return torch.from_numpy(labels)


def parsing_masks(labels: torch.Tensor, teeth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Masks [1,H,W] bool from a label map [H,W]: ``face``, ``mouth``, ``hair``, ``neck``, ``torso``
    (torso ∪ neck), ``background``. A TalkingGaussian teeth mask [H,W] moves teeth pixels from the
    face to the mouth (as TalkingGaussian does)."""
    lab = labels.unsqueeze(0)
    m = {p: lab == i for i, p in enumerate(PARTS)}
    out = {
        "face": m["face"],
        "mouth": m["mouth"],
        "hair": m["hair"],
        "neck": m["neck"],
        "torso": m["torso"] | m["neck"],
        "background": m["background"],
    }
    if teeth is not None:
        t = teeth.to(torch.bool).unsqueeze(0)
        out["mouth"] = out["mouth"] | (t & (m["face"] | m["mouth"]))
        out["face"] = out["face"] & ~t
    return out


def composite(fg_rgba: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Alpha-composite [4,H,W] over [3,H,W] (both in [0,1])."""
    a = fg_rgba[3:4]
    return fg_rgba[:3] * a + bg * (1 - a)


def read_landmarks(path: Path | str) -> np.ndarray:
    """Read a ``.lms`` file: 68 lines "x y" (x = column, y = row, pixels) → float32 [68,2]."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetError([Problem(path, "missing file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError([Problem(path, f"unreadable landmark file ({e})")]) from None
    rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    if len(rows) != NUM_LANDMARKS or any(len(r) != 2 for r in rows):
        shape = f"{len(rows)}×{'/'.join(sorted({str(len(r)) for r in rows})) or 0}"
        raise DatasetError([Problem(path, f"landmarks must be {NUM_LANDMARKS}×2 (one 'x y' per line), got {shape}")])
    try:
        a = np.array(rows, dtype=np.float32)
    except ValueError as e:
        raise DatasetError([Problem(path, f"landmarks are not numbers ({e})")]) from None
    if not np.isfinite(a).all():
        raise DatasetError([Problem(path, "landmarks contain NaN or Inf")])
    return a


def read_teeth_mask(path: Path | str, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a TalkingGaussian ``teeth_mask/<id>.npy`` → bool [H,W]."""
    path = Path(path)
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError([Problem(path, "missing file")]) from None
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises Syntax/Token/Type/Value errors
        raise DatasetError([Problem(path, f"unreadable array ({type(e).__name__}: {e})")]) from None
    if not isinstance(a, np.ndarray) or not (a.dtype == bool or np.issubdtype(a.dtype, np.number)):
        raise DatasetError([Problem(path, f"teeth mask must be a boolean or numeric array, got dtype "
                                          f"{getattr(a, 'dtype', type(a).__name__)}")])
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 or (shape is not None and tuple(a.shape) != tuple(shape)):
        want = list(shape) if shape else "[H,W]"
        raise DatasetError([Problem(path, f"teeth mask must be [H,W]={want}, got {list(a.shape)}")])
    return torch.from_numpy(np.ascontiguousarray(a != 0))


def _strict_int(v) -> Optional[int]:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def read_emotion_json(path: Path | str) -> tuple[int, int]:
    """Read ``emotion.json`` → (label id in :data:`EMOTIONS`, intensity 1..3).

    Raises :class:`DatasetError` naming the file for a missing file, bad JSON, a missing field, an
    emotion name not in :data:`EMOTIONS` or an intensity outside 1..3.
    """
    path = Path(path)
    rep = _Report()
    out = _check_emotion_json(path, rep)
    if out is None:
        raise DatasetError(rep.problems)
    return out


def _check_emotion_json(path: Path, rep: _Report) -> Optional[tuple[int, int]]:
    d = _load_json_object(path, rep, '{{"emotion": ..., "intensity": ...}}, got {}')
    if d is None:
        return None
    emo = d.get("emotion")
    inten = d.get("intensity")
    ok = True
    if "emotion" not in d:
        rep.error(path, "missing field 'emotion'")
        ok = False
    elif not isinstance(emo, str):
        rep.error(path, f"field 'emotion' must be a string, got {type(emo).__name__}")
        ok = False
    elif emo.strip().lower() not in EMOTIONS:
        rep.error(path, f"unknown emotion {emo!r}; expected one of {', '.join(EMOTIONS)}")
        ok = False
    if "intensity" not in d:
        rep.error(path, "missing field 'intensity'")
        ok = False
    elif _strict_int(inten) is None:
        rep.error(path, f"field 'intensity' must be an integer 1, 2 or 3, got {inten!r}")
        ok = False
    elif _strict_int(inten) not in INTENSITIES:
        rep.error(path, f"intensity must be 1, 2 or 3, got {inten!r}")
        ok = False
    if not ok:
        return None
    return EMOTIONS.index(emo.strip().lower()), int(_strict_int(inten))


def read_au_csv(path: Path | str) -> dict[str, np.ndarray]:
    """Read an OpenFace ``au.csv`` → {column name with surrounding spaces stripped: float32 [rows]}."""
    path = Path(path)
    rep = _Report()
    out = _check_au_csv(path, rep, None)
    if out is None:
        raise DatasetError(rep.problems)
    return out


def _check_au_csv(path: Path, rep: _Report, num_frames: Optional[int]) -> Optional[dict[str, np.ndarray]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        rep.error(path, f"unreadable CSV ({e})")
        return None
    if not rows:
        rep.error(path, "empty file (expected an OpenFace header with column AU45_r)")
        return None
    header = [h.strip() for h in rows[0]]
    if "AU45_r" not in header:
        rep.error(path, "missing column AU45_r (OpenFace header, e.g. 'frame, face_id, ..., AU45_r')")
        return None
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    bad_rows = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad_rows:
        rep.error(path, f"rows with {len(header)} columns expected; wrong at line(s) {bad_rows[:5]}")
        return None
    try:
        data = np.array([[float(c) for c in r] for r in body], dtype=np.float64).reshape(len(body), len(header))
    except ValueError as e:
        rep.error(path, f"non-numeric value ({e})")
        return None
    if not np.isfinite(data).all():
        cols = sorted({header[j] for j in np.nonzero(~np.isfinite(data))[1]})
        rep.error(path, f"NaN or Inf in column(s) {', '.join(cols[:5])}")
        return None
    if num_frames is not None and len(body) != num_frames:
        rep.error(path, f"has {len(body)} rows, the dataset has {num_frames} frames (max img_id + 1)")
        return None
    return {h: data[:, j].astype(np.float32) for j, h in enumerate(header)}


def _load_json(path: Path, rep: _Report):
    try:
        with open(path) as f:
            d = json.load(f)
        if d is None:
            rep.error(path, "the file holds JSON null; expected an object or a list")
        return d
    except FileNotFoundError:
        rep.error(path, "missing file")
    except (OSError, UnicodeDecodeError) as e:
        rep.error(path, f"unreadable file ({e})")
    except json.JSONDecodeError as e:
        rep.error(path, f"invalid JSON ({e})")
    return None


def _load_json_object(path: Path, rep: _Report, expected: str) -> Optional[dict]:
    """:func:`_load_json` a file that must hold a JSON object; anything else is reported as
    "must be a JSON object <expected>" (``expected`` is a format string given the type name). None
    when the file is unreadable or not an object."""
    d = _load_json(path, rep)
    if d is None:
        return None
    if not isinstance(d, dict):
        rep.error(path, "must be a JSON object " + expected.format(type(d).__name__))
        return None
    return d


# --------------------------------------------------------------------------------------------------
# frame counts
# frame counts and audio feature files (the length rule)
# --------------------------------------------------------------------------------------------------


def frames_for_audio(num_samples: int, sample_rate: int = 16000) -> int:
    """Number of 25 fps frames an audio signal spans: round(duration × 25)."""
    return int(math.floor(num_samples * FPS / sample_rate + 0.5))


def frames_in_sequence(t: int) -> int:
    """Video frames (25 fps) covered by a 50 Hz feature sequence of length ``t``: ceil(t / 2)."""
    return (int(t) + 1) // 2


def feature_frames(shape: tuple) -> Optional[int]:
    """Frames covered by a feature array of this shape: [M,16,C] windows or [M,2,C] 50 Hz pairs → M;
    [T,C] 50 Hz sequence → ceil(T/2). None for unsupported shapes."""
    if len(shape) == 3 and shape[1] in (16, 2):
        return int(shape[0])
    if len(shape) == 2:
        return frames_in_sequence(shape[0])
    return None


def feature_files(root: Path) -> dict[str, Path]:
    """Audio feature files of a clip: ``aud.npy`` → "aud", ``aud_<name>.npy`` → "<name>"."""
    out = {}
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for n in names:
        if n == "aud.npy":
            out["aud"] = root / n
        elif n.startswith("aud_") and n.endswith(".npy") and not n.startswith(".") and ".tmp" not in n:
            out[n[4:-4]] = root / n
    return out


def _check_array(path: Path, rep: _Report, *, mmap: bool = True) -> Optional[np.ndarray]:
    try:
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except MemoryError:
        rep.error(path, "unreadable .npy array (its header claims more data than fits in memory)")
        return None
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises Syntax/Token/Type/Value errors
        rep.error(path, f"unreadable .npy array ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
        return None
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.number) \
            or np.issubdtype(a.dtype, np.complexfloating):
        rep.error(path, f"must be a real numeric array, got dtype {getattr(a, 'dtype', type(a).__name__)}")
        return None
    if np.issubdtype(a.dtype, np.floating) and not _all_finite(a):
        rep.error(path, "contains NaN or Inf (or values beyond the float32 range, ±3.4e38, that every reader "
                        "casts to)")
        return None
    return a


def _all_finite(a: np.ndarray, block: int = 1 << 22) -> bool:
    """Every value finite once cast to float32 (what every consumer does): a float64 1e39 is Inf there."""
    flat = a.reshape(-1)
    for s in range(0, flat.shape[0], block):
        chunk = flat[s:s + block]
        if not np.isfinite(chunk).all():
            return False
        if chunk.dtype.itemsize > 4:
            with np.errstate(over="ignore"):
                if not np.isfinite(chunk.astype(np.float32)).all():
                    return False
    return True
