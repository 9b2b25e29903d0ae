"""Import one MEAD subject into the emotional layout (DESIGN §5.2).

MEAD tree (``ROOT`` is the directory holding ``<subject>/``, or the subject directory itself)::

    <subject>/video/front/<emotion>/level_<k>/<NNN>.mp4
    <subject>/audio/<emotion>/level_<k>/<NNN>.m4a          (optional: else the video's own track)

Output::

    <out>/<subject>/<emotion>/level_<k>/<NNN>/   a regular clip directory (§5.1) + emotion.json
    <out>/<subject>/camera.json                   the subject's shared focal length, crop and 3-D template

All clips of a subject share one camera: one square crop (median of the per-clip face crops, so the
background plates agree), one focal length and one 3-D landmark template, estimated from the
landmarks of all clips together (:func:`ua3dtalk.preprocess.pose.estimate_camera`); the world frame
is therefore the same for every clip, as one avatar needs. Each clip is preprocessed with
:class:`~ua3dtalk.preprocess.pipeline.Preprocessor` (resumable: an interrupted import continues).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..constants import EMOTIONS
from ..utils.io import atomic_write_json
from . import video as V
from .errors import PreprocessError
from .config import PreprocessConfig
from .pipeline import Preprocessor

_LEVEL = re.compile(r"^level_(\d+)$")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
AUDIO_EXTS = (".m4a", ".wav", ".mp3", ".aac", ".flac")


@dataclass(frozen=True)
class MeadClip:
    """One MEAD clip: emotion name, intensity level, clip name (``NNN``), video and audio files."""

    emotion: str
    level: int
    name: str
    video: Path
    audio: Optional[Path]

    def rel(self) -> Path:
        return Path(self.emotion) / f"level_{self.level}" / self.name


def subject_dir(root: str | Path, subject: str) -> Path:
    """The subject directory below ``root`` (``root/<subject>`` or ``root`` itself)."""
    root = Path(root)
    for cand in (root / subject, root):
        if (cand / "video").is_dir():
            return cand
    raise PreprocessError(f"no MEAD subject '{subject}' here: expected {root / subject / 'video' / 'front'} "
                          f"(or {root / 'video' / 'front'})", root)


def find_clips(root: str | Path, subject: str, *, emotions: Optional[Sequence[str]] = None,
               levels: Optional[Sequence[int]] = None) -> list[MeadClip]:
    """Every clip of ``subject`` (sorted by emotion, level, name); raises :class:`PreprocessError`
    when the tree does not have the MEAD shape or an emotion directory is unknown."""
    sd = subject_dir(root, subject)
    front = sd / "video" / "front"
    if not front.is_dir():
        raise PreprocessError("missing video/front directory (MEAD front-camera videos)", front)
    clips = []
    for edir in sorted(p for p in front.iterdir() if p.is_dir()):
        emo = edir.name.lower()
        if emo not in EMOTIONS:
            raise PreprocessError(f"unknown emotion directory '{edir.name}'; MEAD emotions are {', '.join(EMOTIONS)}",
                                  edir)
        if emotions is not None and emo not in emotions:
            continue
        for ldir in sorted(p for p in edir.iterdir() if p.is_dir()):
            m = _LEVEL.match(ldir.name)
            if not m:
                raise PreprocessError("expected level_<k> directories", ldir)
            k = int(m.group(1))
            if k not in (1, 2, 3):
                raise PreprocessError(f"intensity level must be 1, 2 or 3, got {k}", ldir)
            if levels is not None and k not in levels:
                continue
            for v in sorted(p for p in ldir.iterdir() if p.suffix.lower() in VIDEO_EXTS):
                adir = sd / "audio" / edir.name / ldir.name
                audio = next((adir / f"{v.stem}{e}" for e in AUDIO_EXTS if (adir / f"{v.stem}{e}").is_file()), None)
                clips.append(MeadClip(emo, k, v.stem, v, audio))
    if not clips:
        raise PreprocessError("no clips found (video/front/<emotion>/level_<k>/<NNN>.mp4)", front)
    return clips


def import_mead(root: str | Path, subject: str, out: str | Path, config: Optional[PreprocessConfig] = None, *,
                emotions: Optional[Sequence[str]] = None, levels: Optional[Sequence[int]] = None,
                max_clips: Optional[int] = None, skip_bad: bool = False, force: bool = False,
                log: Optional[Callable[[str], None]] = None) -> dict:
    """Preprocess every clip of one MEAD subject into ``out/<subject>/...`` (see the module doc).

    ``skip_bad``: a clip that fails (no face, corrupt file, ...) is reported and left out (its
    ``emotion.json`` is not written, so loaders do not see it) instead of stopping the import.
    Returns a report dict (clips done, failed, camera).
    """
    cfg = config or PreprocessConfig()
    log = log or (lambda m: print(f"[ua3dtalk-import-mead] {m}"))
    clips = find_clips(root, subject, emotions=emotions, levels=levels)
    if max_clips is not None:
        clips = clips[:max_clips]
    dest = Path(out) / subject
    dest.mkdir(parents=True, exist_ok=True)
    cam_path = dest / "camera.json"
    cam = json.loads(cam_path.read_text()) if cam_path.is_file() and not force else {}

    # 1. one crop for the subject
    crop = None
    if cam.get("crop_mode") == cfg.crop and "crop" in cam:
        crop = V.Crop(*cam["crop"]) if cam["crop"] is not None else None
    else:
        crops = []
        for c in clips[: min(len(clips), 8)]:
            pre = Preprocessor(c.video, dest / c.rel(), replace(cfg, audio=None), log=log)
            try:
                crops.append(pre.choose_crop(V.probe(c.video)))
            except PreprocessError as e:
                if not skip_bad:
                    raise
                log(f"skipping {c.video} while choosing the crop: {e}")
        if any(x is not None for x in crops):
            arr = np.array([x.as_list() for x in crops if x is not None], float)
            side = int(np.median(arr[:, 2]))
            crop = V.Crop(int(np.median(arr[:, 0])), int(np.median(arr[:, 1])), side)
        cam = {"subject": subject, "crop_mode": cfg.crop, "crop": None if crop is None else crop.as_list()}
        atomic_write_json(cam_path, cam)

    # 2. per clip: everything up to the pose
    front_steps = ["decode", "landmarks", "parsing", "background"]
    ok, failed = [], []
    for c in clips:
        cdir = dest / c.rel()
        ccfg = replace(cfg, audio=str(c.audio) if c.audio is not None else None)
        try:
            Preprocessor(c.video, cdir, ccfg, shared_crop=crop, log=lambda m, c=c: log(f"{c.rel()}: {m}")).run(
                front_steps, force=force)
            atomic_write_json(cdir / "emotion.json", {"emotion": c.emotion, "intensity": c.level})
            ok.append(c)
        except PreprocessError as e:
            (cdir / "emotion.json").unlink(missing_ok=True)
            if not skip_bad:
                raise PreprocessError(f"{c.rel()}: {e}", c.video, step=e.step) from None
            log(f"skipping {c.rel()}: {e}")
            failed.append({"clip": str(c.rel()), "error": str(e)})
    if not ok:
        raise PreprocessError("no clip could be preprocessed", Path(root))

    # 3. shared focal length and template from all clips' landmarks
    sizes = {Preprocessor(c.video, dest / c.rel(), cfg).n_frames() for c in ok}
    W = H = int(cfg.size)
    if cfg.focal is not None and cfg.template is not None:
        focal, template = float(cfg.focal), np.asarray(cfg.template, np.float64)
    elif cam.get("focal") and cam.get("template") and cam.get("clips") == sorted(str(c.rel()) for c in ok):
        focal, template = float(cam["focal"]), np.asarray(cam["template"], np.float64)
    else:
        from .pose import estimate_camera

        lms = [Preprocessor(c.video, dest / c.rel(), cfg).landmarks_array() for c in ok]
        focal, template = estimate_camera(lms, W, H, focal=cfg.focal,
                                          template=None if cfg.template is None else np.asarray(cfg.template))
        cam.update({"focal": float(focal), "template": np.round(template, 8).tolist(),
                    "clips": sorted(str(c.rel()) for c in ok), "frames": int(sum(len(x) for x in lms))})
        atomic_write_json(cam_path, cam)
        log(f"shared camera: focal {focal:.1f} px from {cam['frames']} frames of {len(ok)} clips")

    # 4. per clip: pose with the shared camera, blink, expression, features
    tcfg = replace(cfg, focal=float(focal), template=np.round(np.asarray(template), 8).tolist())
    for c in list(ok):
        cdir = dest / c.rel()
        ccfg = replace(tcfg, audio=str(c.audio) if c.audio is not None else None)
        try:
            Preprocessor(c.video, cdir, ccfg, shared_crop=crop, log=lambda m, c=c: log(f"{c.rel()}: {m}")).run(
                ["pose", "blink", "expr", "features"], force=force)
        except PreprocessError as e:
            if not skip_bad:
                raise PreprocessError(f"{c.rel()}: {e}", c.video, step=e.step) from None
            (cdir / "emotion.json").unlink(missing_ok=True)
            log(f"skipping {c.rel()}: {e}")
            failed.append({"clip": str(c.rel()), "error": str(e)})
            ok.remove(c)
    report = {"subject": subject, "out": str(dest), "clips": [str(c.rel()) for c in ok], "failed": failed,
              "focal": float(focal), "crop": cam.get("crop"), "frame_counts": sorted(sizes)}
    atomic_write_json(dest / "import_report.json", report)
    return report
