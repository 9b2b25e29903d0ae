"""Evaluator networks trained by the project on a dataset's ground truth (DESIGN §8): the networks,
their files and the metrics computed with them.

* :class:`ExpressionRegressor` — face crop → per-frame expression coefficients (``expr.npy`` targets);
  the E-FID extractor "regressor".
* :class:`LandmarkRegressor` — face crop → 68 iBUG landmarks in pixels (``.lms`` targets), so LMD,
  blink error and the landmark E-FID work on rendered frames of the synthetic heads, where no real face
  detector works.
* :class:`EmotionClassifier` — face crop (or a short stack of consecutive crops) → 8 emotion logits
  (``emotion.json`` targets); Acc_emo.

The three project networks are small CNNs on face crops (:func:`face_boxes` of the ground-truth
landmarks, :func:`crop_faces`). Rendered frames of a trained avatar share the ground-truth cameras, so
the ground-truth boxes apply to them too. Each has a typed config dataclass and ``save(dir)`` /
``load(dir)`` (``model.safetensors`` + ``config.json``, written atomically; the json records the
SHA-256 of the weights so a mismatched pair is detected); :func:`load_evaluator` loads any of them.

Elsewhere: the ground truth of a dataset (:class:`~.ground_truth.GroundTruth`, the held-out split) in
:mod:`.ground_truth`; the ``fit_*`` functions that train these networks with a tqdm progress bar and
report held-out (by clip) errors in :mod:`.evaluator_training`; external TorchScript expression / 3DMM
regressors (the E-FID extractor "3dmm") in :mod:`.torchscript`.

Frames everywhere are float [N,3,H,W] in [0,1]; boxes [N,4] = (x0, y0, x1, y1) in pixels.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional, Union

import numpy as np
import torch
from torch import nn

from ..utils.io import atomic_write_bytes, atomic_write_json
from .image import crop_boxes
from .landmarks import ear_to_au45, eye_aspect_ratio, landmark_expression, lmd, blink_error

__all__ = [
    "EvaluatorError", "EvaluatorMissingError", "face_boxes", "crop_faces", "CropNetConfig",
    "ExpressionRegressorConfig", "LandmarkRegressorConfig", "EmotionClassifierConfig", "ExpressionRegressor",
    "LandmarkRegressor", "EmotionClassifier", "load_evaluator", "emotion_accuracy", "landmark_metrics",
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
    training with ``target_mean`` / ``target_std`` (set by :func:`~.evaluator_training.fit_expression_regressor`)."""

    out_dim: int = 10
    names: list = field(default_factory=list)
    target_mean: list = field(default_factory=list)
    target_std: list = field(default_factory=list)


@dataclass
class LandmarkRegressorConfig(CropNetConfig):
    """:class:`CropNetConfig` for the 68-landmark regressor. The network outputs box-relative coordinates
    standardised with ``target_mean`` / ``target_std`` (136 values each, x/y interleaved; set by
    :func:`~.evaluator_training.fit_landmark_regressor` from the training landmarks)."""

    target_mean: list = field(default_factory=list)
    target_std: list = field(default_factory=list)


@dataclass
class EmotionClassifierConfig(CropNetConfig):
    """:class:`CropNetConfig` + ``class_names`` (default the 8 MEAD emotions, label ids of
    ``ua3dtalk.constants.EMOTIONS``)."""

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
                                        f"or the fit_* functions of ua3dtalk.metrics.evaluator_training)")
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
