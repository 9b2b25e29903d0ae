"""What the preprocessing pipeline runs and what it records (DESIGN §5.1).

The step graph (:data:`STEPS` in order, :data:`DEPS`: the steps whose outputs each one reads), the
options (:class:`PreprocessConfig` and the part of them each step depends on), the outputs of each step
(:data:`STEP_OUTPUTS`) and the source record that names the video a dataset directory is made from
(:func:`video_identity`, :func:`made_from`). The runner and the steps themselves are in
:mod:`ua3dtalk.preprocess.pipeline`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["STEPS", "DEPS", "STATE_DIR", "VERSION", "PreprocessConfig", "STEP_OUTPUTS", "SINGLE_FILE_SUFFIXES",
           "SOURCE_RECORD", "video_identity", "made_from", "config_dict"]

STEPS: tuple[str, ...] = ("decode", "landmarks", "parsing", "background", "pose", "blink", "expr", "features")
DEPS: dict[str, tuple[str, ...]] = {
    "decode": (),
    "landmarks": ("decode",),
    "parsing": ("decode", "landmarks"),
    "background": ("decode", "parsing"),
    "pose": ("decode", "landmarks", "parsing", "background"),
    "blink": ("landmarks",),
    "expr": ("landmarks",),
    "features": ("decode",),
}
"""Steps whose outputs each step reads (a step runs only when these are complete)."""
STATE_DIR = "preprocess"
VERSION = 1


def video_identity(path: str | Path) -> dict:
    """Which video a dataset was made from: its size and SHA-1 (recorded by the decode step)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": Path(path).stat().st_size, "sha1": h.hexdigest()}


SOURCE_RECORD = "source.json"
"""``<out>/preprocess/source.json``: the video a preprocessing run writes ``out`` from (written before any step)."""


def made_from(out: str | Path, video: str | Path) -> bool:
    """Whether ``out`` is this project's preprocessing of ``video`` — finished or killed half-way: its source
    record (or decode record) names the same file (size and SHA-1)."""
    want = video_identity(video)
    for name in (SOURCE_RECORD, "decode.json"):
        try:
            rec = json.loads((Path(out) / STATE_DIR / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("video") == want:
            return True
    return False


@dataclass
class PreprocessConfig:
    """Options of :func:`preprocess_video` (CLI flags of ``ua3dtalk-preprocess`` in brackets).

    size            output side in pixels, frames are square [--size 512]
    crop            "auto" (square input: whole frame; otherwise a square around the face track),
                    "face", "center", "none" (whole frame, must be square) or "X,Y,SIDE" [--crop]
    backend         landmark backend: auto | dlib | mediapipe | fan [--landmark-backend]
    landmarks       given landmarks instead of a backend: a directory of <i>.lms or an [N,68,2] .npy
                    in output-frame pixels [--landmarks]
    smooth          landmark smoothing σ in frames (0: none) [--smooth 0.5]
    max_gap         longest run of frames without a face that is interpolated [--max-gap 5]
    min_frames      shorter videos are rejected [--min-frames 25]
    focal           focal length in pixels; None: searched over the clip [--focal]
    template        [68,3] 3-D landmark template (metres); None: the generic one refined on the clip
    refine_template adapt the template to the subject [--no-refine-template]
    pose_smooth     σ (frames) of the camera smoothing when the cameras come from the landmarks alone
                    [--pose-smooth 1.5]
    track_points    head points tracked to refine the cameras (0: landmarks only; ``tracks`` module)
                    [--track-points 300]
    parsing_model   BiSeNet checkpoint (face-parsing.PyTorch, 19 classes) [--parsing-model]
    features        audio feature extractors to cache ("mel", "wav2vec2") [--features mel]
    w2v_model       wav2vec2 checkpoint (path or cached hub id) for the "wav2vec2" features [--extractor-model]
    audio           separate audio file (instead of the video's track) [--audio]
    jpeg_quality    quality of the written JPEGs [--jpeg-quality 95]
    threads         worker threads for per-frame work (and ffmpeg) [--threads 2]
    progress        show progress bars
    """

    size: int = 512
    crop: str = "auto"
    backend: str = "auto"
    landmarks: Optional[str] = None
    smooth: float = 0.5
    max_gap: int = 5
    min_frames: int = 25
    focal: Optional[float] = None
    template: Optional[list] = None
    refine_template: bool = True
    pose_smooth: float = 1.5
    track_points: int = 300
    parsing_model: Optional[str] = None
    features: tuple = ("mel",)
    w2v_model: Optional[str] = None
    audio: Optional[str] = None
    jpeg_quality: int = 95
    threads: int = 2
    progress: bool = True

    def step_params(self, step: str) -> dict:
        """The options a step's outputs depend on (recorded; a change reruns the step)."""
        keys = {
            "decode": ("size", "crop", "audio", "jpeg_quality"),
            "landmarks": ("backend", "landmarks", "smooth", "max_gap"),
            "parsing": ("parsing_model",),
            "background": ("jpeg_quality",),
            "pose": ("focal", "template", "refine_template", "pose_smooth", "track_points"),
            "blink": (),
            "expr": (),
            "features": ("features", "w2v_model"),
        }[step]
        d = {k: getattr(self, k) for k in keys}
        for k in ("landmarks", "audio", "parsing_model"):
            if d.get(k) is not None:
                d[k] = str(Path(d[k]).absolute())
        if d.get("template") is not None:
            d["template"] = np.round(np.asarray(d["template"], np.float64), 8).tolist()
        if "features" in d:
            d["features"] = list(d["features"])
        return {"version": VERSION, **d}


STEP_OUTPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    # (directory, suffix) per-frame outputs; ("", file) single files
    "decode": (("ori_imgs", ".jpg"), ("", "aud.wav")),
    "landmarks": (("ori_imgs", ".lms"), (STATE_DIR, "landmarks.npz")),
    "parsing": (("parsing", ".png"), (STATE_DIR, "background.npz")),
    "background": (("gt_imgs", ".jpg"), ("torso_imgs", ".png"), ("", "bc.jpg")),
    "pose": (("", "transforms_train.json"), ("", "transforms_val.json"), (STATE_DIR, "pose.npz")),
    "blink": (("", "au.csv"),),
    "expr": (("", "expr.npy"),),
    "features": (),
}
SINGLE_FILE_SUFFIXES = {"aud.wav", "landmarks.npz", "background.npz", "bc.jpg", "transforms_train.json",
                        "transforms_val.json", "pose.npz", "au.csv", "expr.npy"}


def _downstream(step: str) -> list[str]:
    out, changed = set(), True
    while changed:
        changed = False
        for s, deps in DEPS.items():
            if s not in out and (step in deps or out & set(deps)):
                out.add(s)
                changed = True
    return [s for s in STEPS if s in out]


def config_dict(cfg: PreprocessConfig) -> dict:
    return asdict(cfg)
