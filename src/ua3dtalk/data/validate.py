"""Dataset checks (run by the loaders too) and the report of ``ua3dtalk-validate``.

:func:`inspect_clip` / :func:`inspect_emotional` / :func:`inspect_dataset` collect every
:class:`~ua3dtalk.data.formats.Problem` (file + message) instead of stopping at the first; the loaders
of :mod:`ua3dtalk.data.loading` (``load_clip``, ``load_emotional``, ``load_dataset``) run the very
same checks and raise one :class:`~ua3dtalk.data.formats.DatasetError` listing every error.
``level="quick"`` (the loaders' default) checks everything except the pixels; ``level="full"``
(``ua3dtalk-validate``) also decodes every image. What is checked:

* frames: every ``img_id`` listed in the transforms json has ``ori_imgs/<id>.jpg``, ``ori_imgs/<id>.lms``
  and ``parsing/<id>.png`` (and ``gt_imgs``/``torso_imgs``/``teeth_mask`` files when those directories
  exist); images decode (``full``) and all have one size (also ``bc.jpg`` and json ``h``/``w``);
* json: ``transforms_*.json`` fields present with the right types (``focal_len``/``cx``/``cy`` finite
  numbers, ``frames`` a non-empty list, ``img_id``/``aud_id`` non-negative integers, ``transform_matrix``
  a finite rigid 4×4), no duplicate ``img_id``; ``emotion.json`` with a known emotion and intensity 1..3;
* paths: an ``img_id`` or index entry that would escape the dataset directory (``..``, absolute paths,
  separators), files or directories that are symlinks to somewhere outside it;
* audio: ``aud.wav`` readable, 16 kHz mono, and as long as the frames; feature files readable, of a
  supported shape, as long as the frames (≤ LENGTH_TOLERANCE frames of difference is a warning);
* arrays: no NaN/Inf in features, ``expr.npy``, ``au.csv`` (needs an ``AU45_r`` column), landmarks;
  landmark files are 68×2; ``au.csv`` and ``expr.npy`` have one row per frame;
* parsing maps contain only the palette colours (``full``); torso images have alpha (``full``).

The checks of single files are in :mod:`ua3dtalk.data.checks` and :mod:`ua3dtalk.data.formats`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..constants import EMOTIONS
from .cameras import Cameras
from .checks import (
    _decode,
    _discover_clips,
    _image_header,
    _inside,
    _listdir,
    _read_index,
    _read_transforms,
    _special_files,
)
from .clip import FRAME_FILES, OPTIONAL_KINDS, REQUIRED_KINDS, ClipInfo, EmotionalData, detect_layout, find_index
from .formats import (
    FPS,
    LENGTH_TOLERANCE,
    SINGLE_TRANSFORM_FILE,
    TRANSFORM_FILES,
    DatasetError,
    Problem,
    _check_array,
    _check_au_csv,
    _check_emotion_json,
    _describe_bad_colours,
    _Report,
    errors,
    feature_files,
    feature_frames,
    frames_for_audio,
    parsing_labels,
    read_image_array,
    read_landmarks,
    read_teeth_mask,
)

# --------------------------------------------------------------------------------------------------
# validation of one regular directory
# --------------------------------------------------------------------------------------------------


def inspect_clip(root: Path | str, *, level: str = "quick", clip_id: Optional[str] = None,
                 subject: Optional[str] = None, emotion: Optional[tuple[int, int]] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> tuple[Optional[ClipInfo], list[Problem]]:
    """Check one regular directory and build its :class:`ClipInfo`.

    Returns (info, problems); ``info`` is None when there is any error. ``level`` is "quick" (no
    pixel decoding) or "full" (decode every image, check parsing colours, torso alpha); ``progress``
    is called as ``progress(done, total)`` over the frames. ``emotion`` = (label, intensity) when
    known from an index file; otherwise ``emotion.json`` in the directory is read if present.
    """
    if level not in ("quick", "full"):
        raise ValueError(f"level must be 'quick' or 'full', got {level!r}")
    root = Path(root).absolute()
    rep = _Report()
    if not root.is_dir():
        rep.error(root, "not a directory" if root.exists() else "directory does not exist")
        return None, rep.problems
    root_real = os.path.realpath(root)
    clip_id = clip_id if clip_id is not None else root.name
    # clip-level files that are symlinks to somewhere outside the clip directory: reported, never read
    escaped = {n for n in (*TRANSFORM_FILES, SINGLE_TRANSFORM_FILE, "aud.wav", "au.csv", "expr.npy", "emotion.json")
               if (root / n).is_symlink() and os.path.exists(root / n) and not _inside(root / n, root_real)}
    for n in sorted(escaped):
        rep.error(root / n, f"is a symlink to {os.path.realpath(root / n)}, outside the dataset directory")
    # named pipes, devices, sockets in place of data files would block open() or never end: refused by type,
    # before any file of the clip is opened
    if _special_files(root, rep):
        return None, rep.problems

    # ---- transforms / splits / cameras
    parts: list[tuple[str, dict]] = []
    t_train, t_val, t_one = root / TRANSFORM_FILES[0], root / TRANSFORM_FILES[1], root / SINGLE_TRANSFORM_FILE
    if t_train.exists() or t_val.exists():
        for split, p in (("train", t_train), ("val", t_val)):
            if p.name in escaped:
                continue
            if not p.exists():
                if split == "train":
                    rep.error(p, "missing file (camera poses of the training frames)")
                else:
                    rep.warn(p, "missing file: the clip has no validation frames")
                continue
            d = _read_transforms(p, rep)
            if d is not None:
                parts.append((split, d))
    elif t_one.exists() and t_one.name not in escaped:
        d = _read_transforms(t_one, rep)
        if d is not None:
            parts.append(("all", d))
    elif not escaped & {t_one.name}:
        rep.error(t_train, "missing file: no transforms_train.json / transforms_val.json (or transforms.json) "
                           "with the camera poses")
    intr = None
    for split, d in parts:
        k = (d["focal_len"], d["cx"], d["cy"])
        if None in k:
            continue
        if intr is None:
            intr = (k, d["path"])
        elif not np.allclose(k, intr[0], rtol=1e-6, atol=1e-6):
            rep.error(d["path"], f"focal_len/cx/cy {k} differ from {intr[1].name} {intr[0]}; a clip has one intrinsics")
    entries: list[tuple[int, int, np.ndarray, str]] = []
    seen: dict[int, Path] = {}
    for split, d in parts:
        for img_id, aud_id, mat in d["frames"]:
            if img_id in seen:
                rep.error(d["path"], f"duplicate img_id {img_id} (also in {seen[img_id].name})")
                continue
            seen[img_id] = d["path"]
            entries.append((img_id, aud_id, mat, split))
    if not entries:
        return None, rep.problems
    entries.sort(key=lambda e: e[0])
    img_ids = np.array([e[0] for e in entries], dtype=np.int64)
    aud_ids = np.array([e[1] for e in entries], dtype=np.int64)
    num_frames = int(img_ids.max()) + 1
    if parts and parts[0][0] == "all":
        n_train = (len(entries) * 10) // 11 if len(entries) > 1 else len(entries)
        splits = {"train": np.arange(n_train, dtype=np.int64), "val": np.arange(n_train, len(entries), dtype=np.int64)}
    else:
        split_of = np.array([e[3] for e in entries])
        splits = {s: np.nonzero(split_of == s)[0].astype(np.int64) for s in ("train", "val")}
    if (aud_ids != img_ids).any():
        rep.warn(parts[0][1]["path"], f"aud_id differs from img_id for {int((aud_ids != img_ids).sum())} frame(s); "
                                      "audio features are indexed by img_id (as TalkingGaussian does)")

    # ---- per-frame files: existence, symlinks
    listings: dict[str, Optional[dict]] = {}
    for kind, (dname, _) in FRAME_FILES.items():
        if dname in listings:
            continue
        dpath = root / dname
        if dpath.exists() and not _inside(dpath, root_real):
            rep.error(dpath, f"is a symlink to {os.path.realpath(dpath)}, outside the dataset directory")
            listings[dname] = None
            continue
        listings[dname] = _listdir(dpath)
    kinds = list(REQUIRED_KINDS) + [k for k in OPTIONAL_KINDS if listings.get(FRAME_FILES[k][0]) is not None]
    for kind in REQUIRED_KINDS:
        dname = FRAME_FILES[kind][0]
        if listings.get(dname) is None and (root / dname).exists() is False:
            rep.error(root / dname, "missing directory")
    skip: set[Path] = set()  # missing files and symlinks leaving the dataset: not opened below
    kind_ok: dict[str, bool] = {}  # every file of the kind present (optional kinds count only then)
    for kind in kinds:
        dname, suf = FRAME_FILES[kind]
        lst = listings.get(dname)
        kind_ok[kind] = lst is not None
        if lst is None:
            continue
        for i in img_ids:
            name = f"{int(i)}{suf}"
            e = lst.get(name)
            p = root / dname / name
            if e is not None and e.is_symlink() and not _inside(p, root_real):
                rep.error(p, f"(img_id {int(i)}) is a symlink to {os.path.realpath(p)}, outside the dataset directory")
            elif e is None or (e.is_symlink() and not os.path.exists(p)):
                rep.error(p, f"missing frame (img_id {int(i)}, listed in the transforms json)")
            else:
                continue
            skip.add(p)
            kind_ok[kind] = False

    # ---- sizes (headers), optional decode
    size: Optional[tuple[int, int]] = None
    want_hw = [(d.get("w"), d.get("h"), d["path"]) for _, d in parts if d.get("w") and d.get("h")]
    image_kinds = [k for k in ("ori", "gt", "parsing", "torso") if listings.get(FRAME_FILES[k][0]) is not None]
    n_total = len(img_ids)
    for j, i in enumerate(img_ids):
        for kind in image_kinds:
            dname, suf = FRAME_FILES[kind]
            p = root / dname / f"{int(i)}{suf}"
            if p in skip:
                continue
            if level == "full":
                try:
                    arr, mode = _decode(p, "RGBA" if kind == "torso" else "RGB")
                except DatasetError as e:
                    rep.problems.extend(e.problems)
                    continue
                sz = (arr.shape[1], arr.shape[0])
                if kind == "parsing":
                    _, bad = parsing_labels(arr)
                    if bad.any():
                        rep.error(p, _describe_bad_colours(arr, bad))
                if kind == "torso" and mode is None:
                    rep.error(p, "torso image must have an alpha channel (RGBA PNG)")
            else:
                h = _image_header(p, rep, "parsing map" if kind == "parsing" else "image")
                if h is None:
                    continue
                sz = h[0]
            if size is None:
                size = sz
            elif sz != size:
                rep.error(p, f"image size {sz[0]}×{sz[1]} differs from the clip's {size[0]}×{size[1]} "
                             f"({image_kinds[0]} of the first frame)")
        teeth, lms = root / "teeth_mask" / f"{int(i)}.npy", root / "ori_imgs" / f"{int(i)}.lms"
        if level == "full" and "teeth" in kinds and teeth not in skip and size is not None:
            try:
                read_teeth_mask(teeth, (size[1], size[0]))
            except DatasetError as e:
                rep.problems.extend(e.problems)
        if listings.get("ori_imgs") is not None and lms not in skip:
            try:
                read_landmarks(lms)
            except DatasetError as e:
                rep.problems.extend(e.problems)
        if progress is not None:
            progress(j + 1, n_total)
    for w, h, p in want_hw:
        if size is not None and (w, h) != size:
            rep.error(p, f"h/w = {h}/{w} but the images are {size[1]}×{size[0]} (h×w)")

    # ---- subject-level optional files
    available = set(k for k in OPTIONAL_KINDS if kind_ok.get(k))
    bc = root / "bc.jpg"
    if bc.exists():
        if not _inside(bc, root_real):
            rep.error(bc, f"is a symlink to {os.path.realpath(bc)}, outside the dataset directory")
        else:
            if level == "full":
                try:
                    a = read_image_array(bc)
                    bsz = (a.shape[1], a.shape[0])
                except DatasetError as e:
                    rep.problems.extend(e.problems)
                    bsz = None
            else:
                h = _image_header(bc, rep, "background image")
                bsz = h[0] if h else None
            if bsz is not None and size is not None and bsz != size:
                rep.error(bc, f"background size {bsz[0]}×{bsz[1]} differs from the frames' {size[0]}×{size[1]}")
            elif bsz is not None:
                available.add("bc")

    # audio
    wav = root / "aud.wav"
    feats = feature_files(root)
    if wav.name in escaped:
        pass
    elif wav.exists():
        try:
            import soundfile as sf

            info = sf.info(str(wav))
        except Exception as e:  # soundfile raises RuntimeError / LibsndfileError / TypeError
            rep.error(wav, f"unreadable audio ({e})")
            info = None
        if info is not None:
            if info.samplerate != 16000 or info.channels != 1:
                rep.error(wav, f"audio must be 16 kHz mono, got {info.samplerate} Hz with {info.channels} channel(s) "
                               "(convert with e.g. `ffmpeg -i in.wav -ac 1 -ar 16000 aud.wav`)")
            else:
                n_a = frames_for_audio(info.frames, info.samplerate)
                diff = n_a - num_frames
                if abs(diff) > LENGTH_TOLERANCE:
                    rep.error(wav, f"audio lasts {info.frames / info.samplerate:.2f} s = {n_a} frames at {FPS} fps, "
                                   f"but the dataset has {num_frames} frames (max img_id + 1)")
                else:
                    available.add("wav")
    elif not feats:
        rep.error(wav, "missing file: a clip needs aud.wav (16 kHz mono) or an aud_*.npy feature file")
    for name, p in feats.items():
        if not _inside(p, root_real):
            rep.error(p, f"is a symlink to {os.path.realpath(p)}, outside the dataset directory")
            continue
        a = _check_array(p, rep)
        if a is None:
            continue
        m = feature_frames(a.shape)
        if m is None:
            rep.error(p, f"audio features must be [N,16,C] windows, [N,2,C] 50 Hz pairs or a [T,C] 50 Hz sequence, "
                         f"got shape {list(a.shape)}")
            continue
        diff = m - num_frames
        if abs(diff) > LENGTH_TOLERANCE:
            rep.error(p, f"feature length {m} frames ≠ frame count {num_frames} (max img_id + 1); "
                         f"more than the {LENGTH_TOLERANCE}-frame tolerance")
        elif diff:
            rep.warn(p, f"feature length {m} frames ≠ frame count {num_frames}: "
                        f"{'trimmed' if diff > 0 else 'zero-padded at the end'} when read (length rule)")
    for name in [n for n, p in feats.items() if any(q.path == p and q.severity == "error" for q in rep.problems)]:
        feats.pop(name)

    au = root / "au.csv"
    if au.exists() and au.name not in escaped:
        if _check_au_csv(au, rep, num_frames) is not None:
            available.add("au")
    expr = root / "expr.npy"
    if expr.exists() and expr.name not in escaped:
        a = _check_array(expr, rep)
        if a is not None:
            if a.ndim != 2 or a.shape[0] != num_frames:
                rep.error(expr, f"expression coefficients must be [num_frames={num_frames}, K], got {list(a.shape)}")
            else:
                available.add("expr")

    emo = emotion
    ej = root / "emotion.json"
    if emo is None and ej.exists() and ej.name not in escaped:
        emo = _check_emotion_json(ej, rep)

    if rep.n_errors or size is None:
        if size is None and not rep.n_errors:
            rep.error(root / "ori_imgs", "no readable frame to take the image size from")
        return None, rep.problems
    d0 = parts[0][1]
    cams = Cameras.from_transforms(np.stack([e[2] for e in entries]), d0["focal_len"], d0["cx"], d0["cy"],
                                   size[0], size[1])
    info = ClipInfo(root=root, clip_id=clip_id, img_ids=img_ids, aud_ids=aud_ids, cameras=cams, splits=splits,
                    num_frames=num_frames, image_kind="gt" if "gt" in available else "ori",
                    available=frozenset(available), features=feats,
                    emotion=emo[0] if emo else -1, intensity=emo[1] if emo else 0, subject=subject,
                    warnings=[p for p in rep.problems if p.severity != "error"])
    return info, rep.problems


# --------------------------------------------------------------------------------------------------
# emotional layout
# --------------------------------------------------------------------------------------------------


_LEVEL_RE = re.compile(r"^level_(\d+)$")


def inspect_emotional(root: Path | str, *, index: Path | str | None = None, level: str = "quick",
                      progress: Optional[Callable[[str, int, int], None]] = None
                      ) -> tuple[Optional[EmotionalData], list[Problem]]:
    """Check an emotional dataset (§5.2) and build :class:`EmotionalData`.

    Clips are the directories listed by ``index`` (default: ``clips.json`` / ``clips.txt`` in
    ``root`` when present) or else every directory below ``root`` holding an ``emotion.json``, laid
    out as ``<root>/<subject>/<emotion>/level_<k>/<clip>/`` (``root`` may also be one subject's
    directory). Index files: ``clips.txt`` has one relative clip directory per line (``#``
    comments); ``clips.json`` is a list of such strings or of objects ``{"dir", "emotion",
    "intensity", "subject"}`` (the label may then replace the clip's ``emotion.json``). The label
    in ``emotion.json`` must agree with the ``<emotion>/level_<k>`` directories and the index.
    ``clip_id`` = the clip directory relative to ``root`` (with ``/``).
    """
    root = Path(root).absolute()
    rep = _Report()
    if not root.is_dir():
        rep.error(root, "not a directory" if root.exists() else "directory does not exist")
        return None, rep.problems
    idx = Path(index) if index is not None else find_index(root)
    if idx is not None:
        if not idx.is_absolute() and not idx.exists():
            idx = root / idx
        if not idx.is_file():
            rep.error(idx, "missing index file")
            return None, rep.problems
        listed = _read_index(idx, root, rep)
    else:
        listed = [(p, None, None) for p in _discover_clips(root)]
        if not listed:
            rep.error(root, "no clips found: not a regular dataset directory (no transforms_train.json / "
                            "transforms.json) and no <subject>/<emotion>/level_<k>/<clip>/ directories with an "
                            "emotion.json, nor an index file clips.json / clips.txt")
    clips = []
    for n, (cdir, emo_idx, subj) in enumerate(listed):
        rel = cdir.relative_to(root).as_posix()
        if not cdir.is_dir():
            rep.error(cdir, f"clip directory listed in {idx.name if idx else 'the index'} does not exist")
            continue
        ej = cdir / "emotion.json"
        emo_file = None
        if ej.exists() and not _inside(ej, os.path.realpath(cdir)):
            rep.error(ej, f"is a symlink to {os.path.realpath(ej)}, outside the dataset directory")
            continue
        if ej.exists():
            emo_file = _check_emotion_json(ej, rep)
            if emo_file is None:
                continue
        elif emo_idx is None:
            rep.error(ej, "missing file: the clip's emotion label (or give emotion/intensity in clips.json)")
            continue
        if emo_idx is not None and emo_file is not None and emo_idx != emo_file:
            rep.error(ej, f"label {EMOTIONS[emo_file[0]]}/{emo_file[1]} disagrees with the index "
                          f"({EMOTIONS[emo_idx[0]]}/{emo_idx[1]})")
            continue
        emo = emo_file or emo_idx
        parts = Path(rel).parts
        if len(parts) >= 3 and parts[-3] in EMOTIONS and _LEVEL_RE.match(parts[-2]):
            path_emo = (EMOTIONS.index(parts[-3]), int(_LEVEL_RE.match(parts[-2]).group(1)))
            if path_emo != emo:
                rep.error(ej if ej.exists() else cdir, f"label {EMOTIONS[emo[0]]}/intensity {emo[1]} disagrees with "
                                                       f"the directory {parts[-3]}/{parts[-2]}")
                continue
            if subj is None:
                subj = parts[-4] if len(parts) >= 4 else root.name
        info, probs = inspect_clip(cdir, level=level, clip_id=rel, subject=subj, emotion=emo,
                                   progress=None if progress is None else (lambda d, t, _r=rel: progress(_r, d, t)))
        rep.problems.extend(probs)
        if info is not None:
            clips.append(info)
    if rep.n_errors:
        return None, rep.problems
    warns = [p for p in rep.problems if p.severity != "error"]
    return EmotionalData(root=root, clips=clips, warnings=warns), rep.problems


def inspect_dataset(root: Path | str, *, level: str = "quick", index: Path | str | None = None,
                    progress=None) -> tuple[ClipInfo | EmotionalData | None, list[Problem]]:
    """Dispatch on :func:`detect_layout` to :func:`inspect_clip` or :func:`inspect_emotional`."""
    if index is None and detect_layout(root) == "regular":
        prog = None if progress is None else (lambda d, t: progress(Path(root).name, d, t))
        return inspect_clip(root, level=level, progress=prog)
    return inspect_emotional(root, index=index, level=level, progress=progress)


# --------------------------------------------------------------------------------------------------
# report (ua3dtalk-validate)
# --------------------------------------------------------------------------------------------------


def format_problems(problems: list[Problem], root: Path | str) -> list[str]:
    """One line per problem, ``<path relative to root>: <message>`` (warnings prefixed)."""
    return [p.format(Path(root).absolute()) for p in problems]


def summary(root: Path | str, data, problems: list[Problem]) -> str:
    """A last line for the report: what was found and whether it is valid."""
    errs = errors(problems)
    warns = len(problems) - len(errs)
    if errs:
        files = Counter(p.path for p in errs)
        return (f"{root}: INVALID — {len(errs)} error(s) in {len(files)} file(s)"
                + (f", {warns} warning(s)" if warns else ""))
    if isinstance(data, ClipInfo):
        n_tr, n_va = len(data.splits["train"]), len(data.splits["val"])
        what = (f"regular dataset, {len(data)} frames ({n_tr} train / {n_va} val), "
                f"{data.width}×{data.height}, features: {', '.join(sorted(data.features)) or 'none'}")
    elif isinstance(data, EmotionalData):
        emos = sorted({c.emotion_name for c in data.clips if c.emotion_name})
        what = (f"emotional dataset, {len(data)} clips, {sum(len(c) for c in data.clips)} frames, "
                f"subjects: {', '.join(data.subjects) or '-'}, emotions: {', '.join(emos)}")
    else:
        what = "dataset"
    return f"{root}: valid {what}" + (f" ({warns} warning(s))" if warns else "")


def run(root: Path | str, *, level: str = "full", index: Path | str | None = None, strict: bool = False,
        out=None, progress=None) -> int:
    """Validate and print the report to ``out`` (default stdout); return the exit status (0 valid)."""
    import sys

    out = out or sys.stdout
    data, problems = inspect_dataset(root, level=level, index=index, progress=progress)
    for line in format_problems(problems, root):
        print(line, file=out)
    print(summary(root, data, problems), file=out)
    bad = bool(errors(problems)) or (strict and bool(problems))
    return 1 if bad else 0
