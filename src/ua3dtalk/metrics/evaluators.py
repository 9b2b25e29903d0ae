"""Evaluator networks trained by the project on a dataset's ground truth (DESIGN §8), and loaders for
external ones.

* :class:`ExpressionRegressor` — face crop → per-frame expression coefficients (``expr.npy`` targets);
  the E-FID extractor "regressor".
* :class:`LandmarkRegressor` — face crop → 68 iBUG landmarks in pixels (``.lms`` targets), so LMD,
  blink error and the landmark E-FID work on rendered frames of the synthetic heads, where no real face
  detector works.
* :class:`EmotionClassifier` — face crop (or a short stack of consecutive crops) → 8 emotion logits
  (``emotion.json`` targets); Acc_emo.
* :class:`TorchScriptExtractor` — any expression / 3DMM regressor saved with ``torch.jit.save``; the
  E-FID extractor "3dmm".

The three project networks are small CNNs on face crops (:func:`face_boxes` of the ground-truth
landmarks, :func:`crop_faces`). Rendered frames of a trained avatar share the ground-truth cameras, so
the ground-truth boxes apply to them too. Each has a typed config dataclass, ``save(dir)`` /
``load(dir)`` (``model.safetensors`` + ``config.json``, written atomically; the json records the
SHA-256 of the weights so a mismatched pair is detected), and a ``fit_*`` function that trains it on
the ground truth of a dataset with a tqdm progress bar and reports held-out (by clip) errors.

Frames everywhere are float [N,3,H,W] in [0,1]; boxes [N,4] = (x0, y0, x1, y1) in pixels.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..utils.io import atomic_write_bytes, atomic_write_json
from ..utils.threads import torch_threads
from .image import crop_boxes
from .landmarks import ear_to_au45, eye_aspect_ratio, landmark_expression, lmd, blink_error

__all__ = [
    "EvaluatorError", "EvaluatorMissingError", "face_boxes", "crop_faces", "GroundTruth", "load_ground_truth",
    "holdout_mask", "CropNetConfig", "ExpressionRegressorConfig", "LandmarkRegressorConfig",
    "EmotionClassifierConfig", "ExpressionRegressor", "LandmarkRegressor", "EmotionClassifier",
    "TorchScriptExtractor", "TrainConfig", "fit_expression_regressor", "fit_landmark_regressor",
    "fit_emotion_classifier", "load_evaluator", "emotion_accuracy", "landmark_metrics",
]

EMOTION_NAMES = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class EvaluatorError(RuntimeError):
    """An evaluator cannot be loaded (corrupt or mismatched files) or used (bad input)."""


class EvaluatorMissingError(EvaluatorError, FileNotFoundError):
    """An evaluator file does not exist (metric callbacks skip the metric with a warning)."""


# --------------------------------------------------------------------------------------------------
# face crops
# --------------------------------------------------------------------------------------------------

def face_boxes(lms, *, scale: float = 1.3) -> torch.Tensor:
    """Square face boxes from landmarks: centred on the landmarks' bounding box, side ``scale`` × its
    longer side.

    Args:
        lms: [N,68,2] (or [N,68,3]) landmarks in pixels (numpy or torch).
        scale: margin factor.
    Returns:
        float32 [N,4] (x0, y0, x1, y1) pixels.
    """
    t = torch.as_tensor(np.asarray(lms) if not isinstance(lms, torch.Tensor) else lms).detach().float()
    if t.ndim != 3 or t.shape[1] != 68 or t.shape[2] not in (2, 3):
        raise ValueError(f"face_boxes: lms must be [N,68,2|3] landmarks, got {tuple(t.shape)}")
    t = t[..., :2]
    lo, hi = t.amin(1), t.amax(1)
    c = 0.5 * (lo + hi)
    half = 0.5 * scale * (hi - lo).amax(-1, keepdim=True).clamp_min(1.0)
    return torch.cat([c - half, c + half], -1)


def crop_faces(frames: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,size,size] bilinear crops of ``boxes`` [N,4] out of ``frames`` [N,3,H,W] (see
    :func:`ua3dtalk.metrics.image.crop_boxes`)."""
    return crop_boxes(frames, boxes, size)


# --------------------------------------------------------------------------------------------------
# ground truth of a dataset
# --------------------------------------------------------------------------------------------------

@dataclass
class GroundTruth:
    """Every frame of a dataset with its targets, in clip order.

    frames      uint8 [N,3,H,W]
    landmarks   float32 [N,68,2] pixels
    expr        float32 [N,K] or None (no ``expr.npy``)
    emotion     int64 [N] label id in EMOTIONS, -1 when unknown
    intensity   int64 [N] 1..3, 0 when unknown
    clip        int64 [N] index into ``clip_ids``
    val_frame   bool [N] frame is in the clip's own validation split (transforms_val.json)
    clip_ids    list[str]
    au45        float32 [N] AU45_r from ``au.csv`` (NaN when absent)
    """

    frames: torch.Tensor
    landmarks: torch.Tensor
    expr: Optional[torch.Tensor]
    emotion: torch.Tensor
    intensity: torch.Tensor
    clip: torch.Tensor
    val_frame: torch.Tensor
    clip_ids: list[str]
    au45: torch.Tensor

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def images(self, idx=None) -> torch.Tensor:
        """float [n,3,H,W] in [0,1] of the selected frames."""
        f = self.frames if idx is None else self.frames[idx]
        return f.float() / 255.0

    def boxes(self, scale: float = 1.3) -> torch.Tensor:
        return face_boxes(self.landmarks, scale=scale)

    def subset(self, idx) -> "GroundTruth":
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return GroundTruth(self.frames[idx], self.landmarks[idx], None if self.expr is None else self.expr[idx],
                           self.emotion[idx], self.intensity[idx], self.clip[idx], self.val_frame[idx],
                           self.clip_ids, self.au45[idx])


def load_ground_truth(data, *, progress: bool = True, num_threads: Optional[int] = 1) -> GroundTruth:
    """Read every frame of a dataset with its targets: the frame image exactly as
    :func:`ua3dtalk.data.formats.read_frame` reads it (``gt_imgs`` when present, else ``ori_imgs``),
    ``.lms`` landmarks, ``expr.npy``, ``emotion.json``, ``au.csv``.

    Args:
        data: a dataset directory (regular or emotional), a ``ClipInfo``, an ``EmotionalData`` or a
            list of ``ClipInfo``; a :class:`GroundTruth` is returned unchanged.
        num_threads: torch threads while decoding (one is fastest on a loaded machine; None: unchanged).
    """
    from ..data.formats import ClipInfo, iter_clips, load_dataset, read_image_array

    if isinstance(data, GroundTruth):
        return data
    if isinstance(data, (str, Path)):
        data = load_dataset(data)
    clips = list(data) if isinstance(data, (list, tuple)) else iter_clips(data)
    if not clips or not all(isinstance(c, ClipInfo) for c in clips):
        raise ValueError("load_ground_truth: expected a dataset path, ClipInfo, EmotionalData or a list of ClipInfo")
    total = sum(len(c) for c in clips)
    F, L, E, emo, inten, cl, val, au = [], [], [], [], [], [], [], []
    has_expr = all(c.expr() is not None for c in clips)
    bar = tqdm(total=total, desc="ground truth", unit="frame", disable=not progress, leave=False)
    with torch_threads(num_threads):
        for ci, c in enumerate(clips):
            a = c.au()
            a45 = a.get("AU45_r") if a is not None else None
            ex = np.array(c.expr(), dtype=np.float32) if has_expr else None
            for j in range(len(c)):
                img = read_image_array(c.image_path(j), "RGB")  # the decoder behind read_frame's image
                F.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
                L.append(torch.from_numpy(c.landmarks(j)).float())
                i = int(c.img_ids[j])
                if ex is not None:
                    E.append(torch.from_numpy(ex[i]))
                au.append(float(a45[i]) if a45 is not None and i < len(a45) else float("nan"))
                val.append(c.split_of(j) == "val")
                bar.update(1)
            n = len(c)
            emo += [int(c.emotion)] * n
            inten += [int(c.intensity)] * n
            cl += [ci] * n
    bar.close()
    shapes = {tuple(f.shape) for f in F}
    if len(shapes) != 1:
        raise ValueError(f"load_ground_truth: clips have different frame sizes {sorted(shapes)}")
    return GroundTruth(
        frames=torch.stack(F), landmarks=torch.stack(L), expr=torch.stack(E).float() if has_expr else None,
        emotion=torch.tensor(emo, dtype=torch.long), intensity=torch.tensor(inten, dtype=torch.long),
        clip=torch.tensor(cl, dtype=torch.long), val_frame=torch.tensor(val, dtype=torch.bool),
        clip_ids=[c.clip_id for c in clips], au45=torch.tensor(au, dtype=torch.float32))


def holdout_mask(gt: GroundTruth, *, val_fraction: float = 0.2, val_clips: Optional[Sequence[str]] = None
                 ) -> torch.Tensor:
    """bool [N]: frames held out for validation — never frames of a training clip (DESIGN §5.2).

    * ``val_clips`` given: the frames of those clip ids.
    * several clips: per emotion label, every k-th clip (k ≈ 1/val_fraction, starting at the middle one of
      each group) so each emotion keeps training clips; at least one clip in total.
    * a single clip (regular dataset): the clip's own validation frames (transforms_val.json; the last
      1/11 of the video by default).
    """
    if val_clips is not None:
        unknown = set(val_clips) - set(gt.clip_ids)
        if unknown:
            raise ValueError(f"val_clips: unknown clip ids {sorted(unknown)}; known: {gt.clip_ids}")
        sel = torch.tensor([gt.clip_ids.index(c) for c in val_clips], dtype=torch.long)
        return torch.isin(gt.clip, sel)
    n_clips = len(gt.clip_ids)
    if n_clips == 1:
        return gt.val_frame.clone()
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    clip_emo = {}
    for ci, e in zip(gt.clip.tolist(), gt.emotion.tolist()):
        clip_emo.setdefault(ci, e)
    k = max(2, int(round(1 / val_fraction)))
    held = []
    for e in sorted(set(clip_emo.values())):
        members = sorted(c for c, ee in clip_emo.items() if ee == e)
        if len(members) < 2:
            continue
        start = len(members) // 2
        held += [members[(start + i * k) % len(members)] for i in range(max(1, len(members) // k))]
    if not held:
        held = [n_clips - 1]
    return torch.isin(gt.clip, torch.tensor(sorted(set(held)), dtype=torch.long))


def _stack_index(clip: torch.Tensor, n_frames: int) -> torch.Tensor:
    """[N, n_frames] indices of a centred window of consecutive frames within each frame's clip (clamped
    at the clip ends). Frames of a clip must be contiguous and in time order."""
    N = clip.shape[0]
    idx = torch.arange(N)
    start = torch.zeros(N, dtype=torch.long)
    end = torch.zeros(N, dtype=torch.long)
    change = torch.ones(N, dtype=torch.bool)
    change[1:] = clip[1:] != clip[:-1]
    starts = idx[change]
    ends = torch.cat([starts[1:], torch.tensor([N])]) - 1
    seg = torch.cumsum(change.long(), 0) - 1
    start, end = starts[seg], ends[seg]
    off = torch.arange(n_frames) - (n_frames - 1) // 2
    return torch.minimum(torch.maximum(idx[:, None] + off, start[:, None]), end[:, None])


# --------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------

@dataclass
class CropNetConfig:
    """Architecture of a crop CNN evaluator.

    crop_size   side of the face crop fed to the network (pixels; a multiple of 16)
    box_scale   margin of :func:`face_boxes`
    width       channels of the first conv layer (then ×2, ×4, ×4)
    in_frames   consecutive frames stacked along channels (1 = single frame)
    """

    crop_size: int = 64
    box_scale: float = 1.3
    width: int = 16
    in_frames: int = 1

    def __post_init__(self):
        if self.crop_size < 16 or self.crop_size % 16:
            raise ValueError(f"crop_size must be a multiple of 16 (≥ 16), got {self.crop_size}")
        if self.in_frames < 1 or self.width < 1 or self.box_scale <= 0:
            raise ValueError(f"invalid config: in_frames={self.in_frames}, width={self.width}, "
                             f"box_scale={self.box_scale}")


@dataclass
class ExpressionRegressorConfig(CropNetConfig):
    """:class:`CropNetConfig` + targets: ``out_dim`` coefficients named ``names``, standardised during
    training with ``target_mean`` / ``target_std`` (set by :func:`fit_expression_regressor`)."""

    out_dim: int = 10
    names: list = field(default_factory=list)
    target_mean: list = field(default_factory=list)
    target_std: list = field(default_factory=list)


@dataclass
class LandmarkRegressorConfig(CropNetConfig):
    """:class:`CropNetConfig` for the 68-landmark regressor. The network outputs box-relative coordinates
    standardised with ``target_mean`` / ``target_std`` (136 values each, x/y interleaved; set by
    :func:`fit_landmark_regressor` from the training landmarks)."""

    target_mean: list = field(default_factory=list)
    target_std: list = field(default_factory=list)


@dataclass
class EmotionClassifierConfig(CropNetConfig):
    """:class:`CropNetConfig` + ``class_names`` (default the 8 MEAD emotions, label ids of
    ``ua3dtalk.data.formats.EMOTIONS``)."""

    class_names: list = field(default_factory=lambda: list(EMOTION_NAMES))


def _block(cin, cout, stride):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _CropNet(nn.Module):
    """conv5×5/2 → conv/2 → conv → conv/2 → conv → conv/2 (crop/16 spatial) → FC 256 → FC out
    (BatchNorm + ReLU after every conv; ≈ 9 M multiply-adds per 64² crop at width 16)."""

    def __init__(self, in_ch: int, out_dim: int, crop: int, w: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, w, 5, 2, 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            *_block(w, 2 * w, 2), *_block(2 * w, 2 * w, 1), *_block(2 * w, 4 * w, 2), *_block(4 * w, 4 * w, 1),
            *_block(4 * w, 4 * w, 2))
        s = crop // 16
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * s * s, 256), nn.ReLU(inplace=True),
                                  nn.Dropout(0.1), nn.Linear(256, out_dim))

    def forward(self, x):
        return self.head(self.features(x))


class _CropEvaluator(nn.Module):
    """Base class: a crop CNN with typed config, save/load and batched prediction on frames."""

    kind: ClassVar[str] = ""
    config_cls: ClassVar[type] = CropNetConfig
    name: ClassVar[str] = ""

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config
        self.net = _CropNet(3 * config.in_frames, self._out_dim(), config.crop_size, config.width)
        self.source: Optional[str] = None  # directory it was loaded from
        self.weights_sha256: Optional[str] = None

    def describe(self) -> dict:
        """Which evaluator this is (for metric reports): kind, name, source directory, weights hash."""
        return {"kind": self.kind, "name": self.name, "source": self.source, "weights_sha256": self.weights_sha256}

    def _out_dim(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Raw network output of crops [B, 3·in_frames, S, S] in [0,1]."""
        return self.net(crops - 0.5)

    # ---------------------------------------------------------------- inputs
    def make_inputs(self, frames: torch.Tensor, boxes: torch.Tensor, clip: Optional[torch.Tensor] = None
                    ) -> torch.Tensor:
        """Crops [N, 3·in_frames, S, S] of frames [N,3,H,W] (float in [0,1] or uint8) at boxes [N,4]; with
        ``in_frames`` > 1 each frame is stacked with its neighbours of the same ``clip`` [N] (default: all
        frames are one sequence in time order)."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: frames must be [N,3,H,W], got {tuple(frames.shape)}")
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.shape != (frames.shape[0], 4):
            raise ValueError(f"{type(self).__name__}: boxes must be [N,4] with N={frames.shape[0]}, got "
                             f"{tuple(boxes.shape)}")
        f = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        crops = crop_faces(f, boxes.to(f.device), self.config.crop_size)
        T = self.config.in_frames
        if T > 1:
            c = torch.zeros(frames.shape[0], dtype=torch.long) if clip is None else torch.as_tensor(clip).cpu()
            crops = crops[_stack_index(c, T).to(crops.device)].flatten(1, 2)
        return crops

    @torch.no_grad()
    def _run(self, frames, boxes, clip=None, batch_size: int = 64) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            out = []
            x_all = self.make_inputs(frames, boxes, clip)
            for i in range(0, x_all.shape[0], batch_size):
                out.append(self(x_all[i:i + batch_size].to(self.device)).float().cpu())
            return torch.cat(out) if out else torch.zeros(0, self._out_dim())
        finally:
            self.train(was)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write ``path/model.safetensors`` and ``path/config.json`` (atomically; the json last, with the
        weights' SHA-256). Returns ``path``."""
        from safetensors.torch import save as st_save

        path = Path(path)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        blob = st_save(sd, metadata={"kind": self.kind})
        atomic_write_bytes(path / WEIGHTS_FILE, blob)
        atomic_write_json(path / CONFIG_FILE, {
            "kind": self.kind, "format": FORMAT_VERSION, "config": asdict(self.config),
            "weights_sha256": hashlib.sha256(blob).hexdigest()})
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: Union[str, torch.device] = "cpu"):
        """Load an evaluator written by :meth:`save`.

        Raises:
            EvaluatorMissingError: ``path/config.json`` or ``path/model.safetensors`` does not exist.
            EvaluatorError: unreadable/corrupt files, another evaluator kind, weights that do not belong to
                the config (hash or parameter names/shapes).
        """
        meta, blob = _read_files(Path(path), cls.kind)
        cfg_path = Path(path) / CONFIG_FILE
        try:
            names = {f.name for f in fields(cls.config_cls)}
            config = cls.config_cls(**{k: v for k, v in meta["config"].items() if k in names})
        except (TypeError, ValueError, AttributeError) as e:
            raise EvaluatorError(f"{cfg_path}: invalid config for {cls.__name__}: {e}") from None
        model = cls(config)
        _load_state(model, blob, Path(path) / WEIGHTS_FILE)
        model.source = str(Path(path))
        model.weights_sha256 = hashlib.sha256(blob).hexdigest()
        return model.to(map_location).eval()


def _read_files(path: Path, kind: str) -> tuple[dict, bytes]:
    cfg, wts = path / CONFIG_FILE, path / WEIGHTS_FILE
    for p in (cfg, wts):
        if not p.is_file():
            raise EvaluatorMissingError(f"evaluator file missing: {p} (train one with `ua3dtalk-evaluators train` "
                                        f"or the fit_* functions of ua3dtalk.metrics.evaluators)")
    try:
        meta = json.loads(cfg.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError("expected an object with 'kind', 'config' and 'weights_sha256'")
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise EvaluatorError(f"{cfg}: unreadable evaluator config ({e})") from None
    if meta.get("kind") != kind:
        raise EvaluatorError(f"{cfg}: holds a {meta.get('kind')!r} evaluator, expected {kind!r}")
    if meta.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise EvaluatorError(f"{cfg}: format {meta.get('format')} is newer than this code ({FORMAT_VERSION})")
    blob = wts.read_bytes()
    want = meta.get("weights_sha256")
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise EvaluatorError(f"{wts}: weights do not match {cfg} (SHA-256 differs: corrupt file or files from "
                             "different trainings)")
    return meta, blob


def _load_state(model: nn.Module, blob: bytes, wpath: Path) -> None:
    from safetensors.torch import load as st_load

    try:
        sd = st_load(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt data
        raise EvaluatorError(f"{wpath}: corrupt safetensors file ({e})") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or bad:
        detail = "; ".join(x for x in (
            f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
            ("shape mismatch " + ", ".join(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:3]))
            if bad else "") if x)
        raise EvaluatorError(f"{wpath}: weights do not fit {type(model).__name__}({model.config}): {detail}")
    model.load_state_dict(sd)


class ExpressionRegressor(_CropEvaluator):
    """Face crop → expression coefficients (the E-FID extractor ``"regressor"``).

    ``extract(frames, boxes)`` → [N, out_dim] coefficients in the units of the training targets
    (``expr.npy``).
    """

    kind = "expression_regressor"
    config_cls = ExpressionRegressorConfig
    name = "regressor"

    def _out_dim(self) -> int:
        return self.config.out_dim

    def _stats(self):
        c = self.config
        mean = torch.tensor(c.target_mean or [0.0] * c.out_dim, dtype=torch.float32)
        std = torch.tensor(c.target_std or [1.0] * c.out_dim, dtype=torch.float32)
        return mean, std

    def extract(self, frames: torch.Tensor, boxes: torch.Tensor, clip=None, batch_size: int = 64) -> torch.Tensor:
        """[N, out_dim] coefficients of frames [N,3,H,W] at face boxes [N,4]."""
        mean, std = self._stats()
        return self._run(frames, boxes, clip, batch_size) * std + mean


class LandmarkRegressor(_CropEvaluator):
    """Face crop → 68 landmarks. The network predicts box-relative coordinates ((p − box_xy0) / side),
    mapped back to pixels with the same box."""

    kind = "landmark_regressor"
    config_cls = LandmarkRegressorConfig
    name = "landmark"

    def _out_dim(self) -> int:
        return 136

    def _stats(self):
        c = self.config
        mean = torch.tensor(c.target_mean or [0.5] * 136, dtype=torch.float32)
        std = torch.tensor(c.target_std or [1.0] * 136, dtype=torch.float32)
        return mean, std

    def predict(self, frames: torch.Tensor, boxes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """float32 [N,68,2] landmarks in pixels of frames [N,3,H,W] at boxes [N,4]."""
        mean, std = self._stats()
        rel = (self._run(frames, boxes, None, batch_size) * std + mean).view(-1, 68, 2)
        return _from_box(rel, torch.as_tensor(boxes, dtype=torch.float32))

    def extract(self, frames: torch.Tensor, boxes: torch.Tensor, clip=None, batch_size: int = 64) -> torch.Tensor:
        """[N, 11] landmark expression coefficients (:func:`~ua3dtalk.metrics.landmarks.landmark_expression`)
        of the predicted landmarks (the E-FID extractor ``"landmark"``)."""
        return landmark_expression(self.predict(frames, boxes, batch_size))


def _to_box(lms: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    side = (boxes[:, 2:3] - boxes[:, 0:1])[:, None]
    return (lms - boxes[:, None, 0:2]) / side


def _from_box(rel: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    side = (boxes[:, 2:3] - boxes[:, 0:1])[:, None]
    return rel * side + boxes[:, None, 0:2]


class EmotionClassifier(_CropEvaluator):
    """Face crop(s) → emotion logits over ``config.class_names`` (Acc_emo)."""

    kind = "emotion_classifier"
    config_cls = EmotionClassifierConfig
    name = "emotion"

    def _out_dim(self) -> int:
        return len(self.config.class_names)

    def logits(self, frames: torch.Tensor, boxes: torch.Tensor, clip=None, batch_size: int = 64) -> torch.Tensor:
        """[N, C] logits; ``clip`` [N] groups frames into sequences for frame stacks."""
        return self._run(frames, boxes, clip, batch_size)


def emotion_accuracy(classifier: EmotionClassifier, frames: torch.Tensor, boxes: torch.Tensor, labels,
                     clip=None) -> dict:
    """Acc_emo: fraction of frames whose predicted emotion is the label (``acc_emo``), and of sequences
    (frames grouped by ``clip`` [N], default one sequence) whose mean softmax predicts it
    (``acc_emo_clip``).

    Args:
        labels: [N] label ids (or one id for all frames) in ``classifier.config.class_names``.
    """
    N = frames.shape[0]
    labels = torch.as_tensor(labels, dtype=torch.long)
    labels = labels.expand(N) if labels.ndim == 0 else labels
    if labels.shape != (N,):
        raise ValueError(f"emotion_accuracy: labels must be [N={N}] or a scalar, got {tuple(labels.shape)}")
    c = torch.zeros(N, dtype=torch.long) if clip is None else torch.as_tensor(clip, dtype=torch.long)
    lg = classifier.logits(frames, boxes, c)
    frame_acc = float((lg.argmax(-1) == labels).float().mean())
    p = lg.softmax(-1)
    hits = []
    for k in torch.unique(c):
        m = c == k
        hits.append(float(p[m].mean(0).argmax() == torch.mode(labels[m]).values))
    return {"acc_emo": frame_acc, "acc_emo_clip": float(np.mean(hits))}


def landmark_metrics(regressor: LandmarkRegressor, pred_frames: torch.Tensor, boxes: torch.Tensor, *,
                     gt_frames: Optional[torch.Tensor] = None, gt_landmarks=None, gt_au45=None) -> dict:
    """LMD, F-LMD (pixels) and blink error of one sequence of rendered frames.

    Landmarks of ``pred_frames`` come from ``regressor``; the reference landmarks from the same
    regressor on ``gt_frames`` (the usual convention: one detector on both), or ``gt_landmarks`` [N,68,2]
    when given. Blink: AU45 = :func:`ear_to_au45` of the EAR of the predicted landmarks with the open-eye
    EAR of the reference (its 90th percentile), compared with ``gt_au45`` [N] (e.g. ``au.csv``) or with
    the reference landmarks' AU45.

    Returns:
        {"lmd", "f_lmd", "blink_err"}
    """
    pl = regressor.predict(pred_frames, boxes)
    if gt_landmarks is not None:
        gl = torch.as_tensor(np.asarray(gt_landmarks) if not isinstance(gt_landmarks, torch.Tensor)
                             else gt_landmarks).float()[..., :2]
    elif gt_frames is not None:
        gl = regressor.predict(gt_frames, boxes)
    else:
        raise ValueError("landmark_metrics: give gt_frames or gt_landmarks")
    ear_ref = eye_aspect_ratio(gl)
    open_ear = float(torch.quantile(ear_ref.double(), 0.9))
    au_pred = ear_to_au45(eye_aspect_ratio(pl), open_ear=open_ear)
    au_gt = torch.as_tensor(gt_au45, dtype=torch.float32) if gt_au45 is not None else ear_to_au45(
        ear_ref, open_ear=open_ear)
    return {"lmd": lmd(pl, gl, region="mouth"), "f_lmd": lmd(pl, gl, region="face"),
            "blink_err": blink_error(au_pred, au_gt)}


# --------------------------------------------------------------------------------------------------
# external TorchScript extractor
# --------------------------------------------------------------------------------------------------

class TorchScriptExtractor(nn.Module):
    """An expression / 3DMM regressor saved with ``torch.jit.save`` (the E-FID extractor ``"3dmm"``).

    The module receives face crops [B,3,crop_size,crop_size] (RGB, scaled by ``input_scale`` and shifted
    by ``input_shift``: the defaults give [0,1]; use 255/0 for [0,255] or 2/−1 for [−1,1]) and must return
    [B,D] coefficients, or a tuple/list/dict from which ``output`` selects the tensor (index or key).
    ``columns`` optionally keeps a subset of the D coefficients (e.g. the 64 expression coefficients of
    a Deep3DFaceRecon 257-vector: ``columns=range(80, 144)``).

    Raises:
        EvaluatorMissingError: ``path`` does not exist.
        EvaluatorError: the file is not a TorchScript archive.
    """

    def __init__(self, path: str | Path, *, name: str = "3dmm", crop_size: int = 224, box_scale: float = 1.3,
                 input_scale: float = 1.0, input_shift: float = 0.0, output: Union[int, str, None] = None,
                 columns: Optional[Sequence[int]] = None, batch_size: int = 32):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise EvaluatorMissingError(f"TorchScript extractor file missing: {path} (export your 3DMM/expression "
                                        "regressor with torch.jit.script/trace and torch.jit.save)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the format
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/ValueError variants
            raise EvaluatorError(f"{path}: not a loadable TorchScript archive ({e})") from None
        self.path, self.name = path, name
        self.crop_size, self.box_scale = int(crop_size), float(box_scale)
        self.input_scale, self.input_shift = float(input_scale), float(input_shift)
        self.output, self.batch_size = output, int(batch_size)
        self.columns = None if columns is None else list(columns)

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def describe(self) -> dict:
        """Which evaluator this is (for metric reports)."""
        return {"kind": "torchscript", "name": self.name, "source": str(self.path)}

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        out = self.module(crops * self.input_scale + self.input_shift)
        if self.output is not None:
            out = out[self.output]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise EvaluatorError(f"{self.path}: output is {type(out).__name__}; set output= to select a tensor")
        out = out.reshape(out.shape[0], -1)
        return out[:, self.columns] if self.columns is not None else out

    @torch.no_grad()
    def extract(self, frames: torch.Tensor, boxes: torch.Tensor, clip=None, batch_size: Optional[int] = None
                ) -> torch.Tensor:
        """[N,D] coefficients of frames [N,3,H,W] in [0,1] at face boxes [N,4]."""
        f = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        crops = crop_faces(f, torch.as_tensor(boxes, dtype=torch.float32), self.crop_size)
        bs = batch_size or self.batch_size
        return torch.cat([self(crops[i:i + bs].to(self.device)).float().cpu()
                          for i in range(0, crops.shape[0], bs)])


KINDS = {c.kind: c for c in (ExpressionRegressor, LandmarkRegressor, EmotionClassifier)}


def load_evaluator(path: str | Path, map_location="cpu"):
    """Load any evaluator saved by :meth:`save` (the kind is read from ``config.json``)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        raise EvaluatorMissingError(f"evaluator file missing: {cfg}")
    try:
        kind = json.loads(cfg.read_text()).get("kind")
    except (ValueError, OSError, AttributeError) as e:
        raise EvaluatorError(f"{cfg}: unreadable evaluator config ({e})") from None
    if kind not in KINDS:
        raise EvaluatorError(f"{cfg}: unknown evaluator kind {kind!r}; expected one of {sorted(KINDS)}")
    return KINDS[kind].load(path, map_location)


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Optimisation of the evaluator networks.

    epochs       passes over the training frames
    batch_size   crops per step
    lr           AdamW peak learning rate (one-cycle schedule)
    weight_decay AdamW weight decay
    jitter       box augmentation: random shift and scale change, as a fraction of the box side
    color_jitter random per-crop brightness/contrast change (fraction)
    val_fraction clips held out (see :func:`holdout_mask`); ignored when ``val_clips`` is given
    val_clips    clip ids held out
    seed         initialisation, sampling and augmentation seed
    progress     show a tqdm bar
    num_threads  torch intra-op threads while training (restored afterwards); these nets are tiny and one
                 thread is ~10× faster than contended threads on a loaded machine; None keeps the setting
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    jitter: float = 0.05
    color_jitter: float = 0.1
    val_fraction: float = 0.2
    val_clips: Optional[list] = None
    seed: int = 0
    progress: bool = True
    num_threads: Optional[int] = 1


def _augment_boxes(boxes: torch.Tensor, jitter: float, g: torch.Generator) -> torch.Tensor:
    if jitter <= 0:
        return boxes
    side = boxes[:, 2:3] - boxes[:, 0:1]
    c = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    c = c + (torch.rand(c.shape, generator=g) * 2 - 1) * jitter * side
    half = 0.5 * side * (1 + (torch.rand(side.shape, generator=g) * 2 - 1) * jitter)
    return torch.cat([c - half, c + half], -1)


def _color_jitter(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    if amount <= 0:
        return x
    B = x.shape[0]
    gain = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * amount
    bias = (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * amount * 0.5
    return (x * gain + bias).clamp(0, 1)


def _train(model: _CropEvaluator, gt: GroundTruth, train_idx: torch.Tensor, loss_fn, tc: TrainConfig, desc: str):
    """Generic loop: random batches of training frames, augmented boxes, ``loss_fn(model, crops, idx,
    boxes)``; AdamW + one-cycle."""
    with torch_threads(tc.num_threads):
        return _train_loop(model, gt, train_idx, loss_fn, tc, desc)


def _train_loop(model, gt, train_idx, loss_fn, tc: TrainConfig, desc: str):
    if train_idx.numel() == 0:
        raise ValueError(f"{desc}: no training frames (every clip is held out)")
    g = torch.Generator().manual_seed(tc.seed + 1)
    steps_per_epoch = max(1, math.ceil(train_idx.numel() / tc.batch_size))
    total = tc.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=max(total, 1), pct_start=0.15)
    boxes_all = gt.boxes(model.config.box_scale)
    T = model.config.in_frames
    stack = _stack_index(gt.clip, T) if T > 1 else None
    model.train()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not tc.progress, leave=False)
    loss_ema = None
    for _ in range(tc.epochs):
        perm = train_idx[torch.randperm(train_idx.numel(), generator=g)]
        for s in range(steps_per_epoch):
            idx = perm[s * tc.batch_size:(s + 1) * tc.batch_size]
            if idx.numel() < 2:
                continue
            boxes = _augment_boxes(boxes_all[idx], tc.jitter, g)
            if stack is None:
                crops = crop_faces(gt.images(idx), boxes, model.config.crop_size)
            else:
                nb = stack[idx]  # [B,T] neighbours, all cropped with the centre frame's jittered box
                fr = gt.images(nb.flatten())
                crops = crop_faces(fr, boxes.repeat_interleave(T, 0), model.config.crop_size)
                crops = crops.view(idx.numel(), T * 3, *crops.shape[-2:])
            crops = _color_jitter(crops, tc.color_jitter, g)
            loss = loss_fn(model, crops.to(model.device), idx, boxes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss = loss.detach()
            loss_ema = float(loss) if loss_ema is None else 0.9 * loss_ema + 0.1 * float(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}")
    bar.close()
    model.eval()
    return loss_ema


def _seeded(cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def _split(gt: GroundTruth, tc: TrainConfig):
    val = holdout_mask(gt, val_fraction=tc.val_fraction, val_clips=tc.val_clips)
    return (~val).nonzero().flatten(), val.nonzero().flatten()


def fit_expression_regressor(data, config: Optional[ExpressionRegressorConfig] = None,
                             train: Optional[TrainConfig] = None, names: Optional[Sequence[str]] = None
                             ) -> tuple[ExpressionRegressor, dict]:
    """Train an :class:`ExpressionRegressor` on the ``expr.npy`` targets of a dataset.

    Args:
        data: dataset path / loaded dataset / :class:`GroundTruth`.
        config: architecture; ``out_dim`` and the target statistics are set from the data.
        train: optimisation settings.
        names: coefficient names stored in the config (default: ``expr_<k>``).
    Returns:
        (model in eval mode, report) with held-out ``val_rmse`` (coefficient units), ``val_r2`` (mean
        coefficient of determination over coefficients), per-coefficient ``val_r2_per_coef``,
        ``train_frames`` / ``val_frames``.
    """
    gt = load_ground_truth(data, progress=(train or TrainConfig()).progress)
    tc = train or TrainConfig()
    if gt.expr is None:
        raise ValueError("fit_expression_regressor: the dataset has no expr.npy (expression targets)")
    tr, va = _split(gt, tc)
    y = gt.expr
    mean, std = y[tr].mean(0), y[tr].std(0).clamp_min(1e-4)
    cfg = config or ExpressionRegressorConfig()
    cfg = ExpressionRegressorConfig(**{**asdict(cfg), "out_dim": y.shape[1],
                                       "names": list(names) if names is not None else (cfg.names or [
                                           f"expr_{k}" for k in range(y.shape[1])]),
                                       "target_mean": mean.tolist(), "target_std": std.tolist()})
    model = _seeded(ExpressionRegressor, cfg, tc.seed)
    yn = (y - mean) / std

    def loss_fn(m, crops, idx, boxes):
        return nn.functional.mse_loss(m(crops), yn[idx].to(crops.device))

    _train(model, gt, tr, loss_fn, tc, "fit expression regressor")
    report = {"train_frames": int(tr.numel()), "val_frames": int(va.numel())}
    if va.numel():
        pred = model.extract(gt.images(va), gt.boxes(cfg.box_scale)[va], gt.clip[va])
        err = pred - y[va]
        var = y[va].var(0, unbiased=False).clamp_min(1e-8)
        r2 = 1 - (err ** 2).mean(0) / var
        report.update(val_rmse=float(err.pow(2).mean().sqrt()), val_r2=float(r2.mean()),
                      val_r2_per_coef=dict(zip(cfg.names, r2.tolist())))
    return model, report


def fit_landmark_regressor(data, config: Optional[LandmarkRegressorConfig] = None,
                           train: Optional[TrainConfig] = None) -> tuple[LandmarkRegressor, dict]:
    """Train a :class:`LandmarkRegressor` on the ``.lms`` landmarks of a dataset.

    Returns:
        (model, report) with held-out ``val_px_error`` (mean per-point L2 distance in pixels),
        ``val_px_error_mouth`` (points 48-67), ``val_lmd`` (mean-centred mouth LMD against the ground
        truth, i.e. the LMD floor of this detector) and the frame counts.
    """
    gt = load_ground_truth(data, progress=(train or TrainConfig()).progress)
    tc = train or TrainConfig()
    tr, va = _split(gt, tc)
    cfg = config or LandmarkRegressorConfig()
    rel = _to_box(gt.landmarks[tr], gt.boxes(cfg.box_scale)[tr]).reshape(tr.numel(), -1)
    mean, std = rel.mean(0), rel.std(0).clamp_min(1e-4)
    cfg = LandmarkRegressorConfig(**{**asdict(cfg), "target_mean": mean.tolist(), "target_std": std.tolist()})
    model = _seeded(LandmarkRegressor, cfg, tc.seed)

    def loss_fn(m, crops, idx, boxes):
        target = (_to_box(gt.landmarks[idx], boxes).reshape(idx.numel(), -1) - mean) / std
        return nn.functional.smooth_l1_loss(m(crops), target.to(crops.device), beta=0.5)

    _train(model, gt, tr, loss_fn, tc, "fit landmark regressor")
    report = {"train_frames": int(tr.numel()), "val_frames": int(va.numel())}
    if va.numel():
        pred = model.predict(gt.images(va), gt.boxes(cfg.box_scale)[va])
        d = torch.linalg.vector_norm(pred - gt.landmarks[va], dim=-1)
        report.update(val_px_error=float(d.mean()), val_px_error_mouth=float(d[:, 48:].mean()),
                      val_lmd=lmd(pred, gt.landmarks[va]), val_flmd=lmd(pred, gt.landmarks[va], region="face"))
    return model, report


def fit_emotion_classifier(data, config: Optional[EmotionClassifierConfig] = None,
                           train: Optional[TrainConfig] = None) -> tuple[EmotionClassifier, dict]:
    """Train an :class:`EmotionClassifier` on the ``emotion.json`` labels of an emotional dataset.

    Returns:
        (model, report) with held-out-clip ``val_acc`` (frames), ``val_acc_clip`` (clips, mean softmax),
        ``chance`` (1 / number of classes present) and the frame counts.
    """
    gt = load_ground_truth(data, progress=(train or TrainConfig()).progress)
    tc = train or TrainConfig()
    if bool((gt.emotion < 0).any()):
        raise ValueError("fit_emotion_classifier: every clip needs an emotion label (emotion.json)")
    cfg = config or EmotionClassifierConfig()
    if int(gt.emotion.max()) >= len(cfg.class_names):
        raise ValueError(f"fit_emotion_classifier: label {int(gt.emotion.max())} outside class_names {cfg.class_names}")
    tr, va = _split(gt, tc)
    model = _seeded(EmotionClassifier, cfg, tc.seed)

    def loss_fn(m, crops, idx, boxes):
        return nn.functional.cross_entropy(m(crops), gt.emotion[idx].to(crops.device), label_smoothing=0.05)

    _train(model, gt, tr, loss_fn, tc, "fit emotion classifier")
    report = {"train_frames": int(tr.numel()), "val_frames": int(va.numel()),
              "chance": 1.0 / max(1, len(torch.unique(gt.emotion)))}
    if va.numel():
        acc = emotion_accuracy(model, gt.images(va), gt.boxes(cfg.box_scale)[va], gt.emotion[va], gt.clip[va])
        report.update(val_acc=acc["acc_emo"], val_acc_clip=acc["acc_emo_clip"])
    return model, report
