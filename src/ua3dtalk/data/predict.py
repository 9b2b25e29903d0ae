"""Inference inputs: :class:`PredictDataset` (any audio file and a camera track →
:class:`~ua3dtalk.data.batch.PredictBatch` per output frame) and :func:`load_camera_track`.

The audio context, waveform segments and blink schedules follow the definitions of
:mod:`ua3dtalk.data.features`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import EMOTIONS
from .audio import SAMPLE_RATE, AudioFeatures, load_wav
from .batch import PredictBatch
from .cameras import Cameras, intrinsics, opengl_c2w_to_opencv_w2c
from .clip import ClipInfo
from .extractors import EXTRACTOR_FEATURES, make_extractor
from .features import audio_context_np, clip_frame_features, synthetic_blinks, waveform_segment
from .formats import INTENSITIES, DatasetError, Problem, frames_for_audio, read_image

Tensor = torch.Tensor


def load_camera_track(path: Union[str, Path]) -> tuple[np.ndarray, Optional[np.ndarray], Optional[int], Optional[int]]:
    """Read a camera track → (viewmats [L,4,4] float32 world→camera OpenCV, K [3,3] or None, width or
    None, height or None).

    Accepted files: ``.npy`` [L,4,4] (or [4,4]) viewmats; ``.json`` holding a list of 4×4 viewmats,
    ``{"viewmats": [...], "K": 3×3, "width": W, "height": H}``, or an ER-NeRF ``transforms_*.json``
    (OpenGL camera-to-world ``transform_matrix`` per frame, converted as in
    :mod:`ua3dtalk.data.cameras`). Raises :class:`DatasetError` naming the file.
    """
    path = Path(path)
    K = width = height = None
    try:
        if path.suffix == ".npy":
            vm = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            obj = json.loads(path.read_text())
            if isinstance(obj, dict) and "frames" in obj:
                c2w = np.array([f["transform_matrix"] for f in obj["frames"]], dtype=np.float64)
                vm = opengl_c2w_to_opencv_w2c(c2w)
                K = intrinsics(float(obj["focal_len"]), float(obj["cx"]), float(obj["cy"]))
                width, height = obj.get("w"), obj.get("h")
            elif isinstance(obj, dict):
                vm = np.asarray(obj["viewmats"], dtype=np.float64)
                K = None if obj.get("K") is None else np.asarray(obj["K"], dtype=np.float64)
                width, height = obj.get("width"), obj.get("height")
            else:
                vm = np.asarray(obj, dtype=np.float64)
        else:
            raise DatasetError([Problem(path, "camera track must be a .npy or .json file")])
    except FileNotFoundError:
        raise DatasetError([Problem(path, "missing camera track file")]) from None
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - json/numpy parsers raise many types (Syntax, Key, Type, Value, ...)
        raise DatasetError([Problem(path, f"unreadable camera track ({type(e).__name__}: {e})")]) from None
    for name, v in (("width", width), ("height", height)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise DatasetError([Problem(path, f"camera track: {name} must be a positive integer, got {v!r}")])
    try:
        vm = np.asarray(vm, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError([Problem(path, f"camera track: viewmats are not numbers ({e})")]) from None
    if vm.shape == (4, 4):
        vm = vm[None]
    if vm.ndim != 3 or vm.shape[1:] != (4, 4) or vm.shape[0] == 0:
        raise DatasetError([Problem(path, f"camera track must hold [L,4,4] world→camera viewmats (OpenCV), got "
                                          f"shape {list(vm.shape)} (a synthetic pose.npy [N,6] is a head pose, not a "
                                          "camera track)")])
    if not np.isfinite(vm).all() or (K is not None and (np.shape(K) != (3, 3) or not np.isfinite(K).all())):
        raise DatasetError([Problem(path, "camera track contains NaN/Inf or a K that is not 3×3")])
    return (vm.astype(np.float32), None if K is None else np.asarray(K, np.float32),
            None if width is None else int(width), None if height is None else int(height))


def read_expression_track(path: Union[str, Path]) -> np.ndarray:
    """float32 ``[M, K]`` expression track from an ``.npy`` (e.g. a preprocessed video's ``expr.npy``); a clear
    ``ValueError`` naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"expression={p}: no such file (an expr.npy [frames, coefficients], e.g. of a video "
                         "preprocessed by ua3dtalk-preprocess)")
    try:
        e = np.load(p, allow_pickle=False)
    except Exception as err:  # not an .npy
        raise ValueError(f"expression={p}: not a readable .npy file ({err})") from None
    if e.ndim != 2 or e.shape[0] < 1 or not np.issubdtype(e.dtype, np.number) or not np.isfinite(e).all():
        raise ValueError(f"expression={p}: expected a finite numeric [frames, coefficients] array, got shape "
                         f"{list(e.shape)} of {e.dtype}")
    return e.astype(np.float32)


def _loop_index(j: np.ndarray, n: int, mode: str) -> np.ndarray:
    if mode == "mirror":  # ping-pong, RAD-NeRF / ER-NeRF `mirror_index`
        turn, res = j // n, j % n
        return np.where(turn % 2 == 0, res, n - 1 - res)
    if mode == "repeat":
        return j % n
    if mode == "hold":
        return np.minimum(j, n - 1)
    raise ValueError(f"loop must be 'mirror', 'repeat' or 'hold', got {mode!r}")


def _background_image(spec, width: int, height: int, bc_path: Optional[Path]) -> Tensor:
    if isinstance(spec, torch.Tensor):
        t = spec.float()
        if t.shape != (3, height, width):
            raise ValueError(f"background tensor must be [3,{height},{width}], got {list(t.shape)}")
        return t
    if spec == "white":
        return torch.ones(3, height, width)
    if spec == "black":
        return torch.zeros(3, height, width)
    if spec in ("bc", "bc+torso"):
        if bc_path is None:
            return torch.ones(3, height, width)  # no bc.jpg: white, as the readers do
        spec = bc_path
    from PIL import Image

    img = read_image(spec)
    if img.shape[-2:] != (height, width):
        a = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        a = np.asarray(Image.fromarray(a).resize((width, height), Image.BILINEAR))
        img = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)
    return img


class PredictDataset(Dataset):
    """Inference frames for any audio file → :class:`PredictBatch` with B=1 per item.

    The number of frames is ``round(duration · 25)`` of the audio (or ``features.num_frames`` when
    precomputed :class:`~ua3dtalk.data.audio.AudioFeatures` are given).

    Args:
        audio_path: any audio file libsndfile reads (any rate, any channels; resampled to 16 kHz mono).
            May be None when ``features`` are precomputed (then ``waveform`` is None).
        features: precomputed :class:`AudioFeatures` for this audio, an extractor name ("mel",
            "wav2vec2") run on the audio in memory (never cached to disk), or an extractor object.
        cameras: the camera track: a :class:`ClipInfo` (its cameras, K, size and ``bc.jpg``), a
            :class:`~ua3dtalk.data.cameras.Cameras`, a ``.npy``/``.json`` file of viewmats
            (:func:`load_camera_track`) or an array [L,4,4]. Looped (``loop``) / trimmed to the audio.
        K: intrinsics [3,3] (default: the track's; scaled when ``width``/``height`` differ from it).
        width, height: output size (default: the track's).
        emotion: "audio" (the model derives it from the audio; id -1), an emotion name or id.
        intensity: 1..3, or None (0: unspecified / average of levels).
        background: "white", "black", "bc" / "bc+torso" (the track clip's ``bc.jpg``; the per-frame
            torso layer of a recording does not apply to new audio), an image path, or a tensor [3,H,W].
        extractor_model, extractor_layer: wav2vec2 model (hub id or directory) and output when an
            extractor name is "wav2vec2".
        neighbours, context: as for :class:`FrameDataset`.
        blink: "zeros", "synthetic" (:func:`synthetic_blinks` with ``blink_seed``) or an array [N].
        expression: ``[M, K]`` expression coefficients per frame (rows of an ``expr.npy``), extended to the N
            frames like the camera track (``loop``), or None (the batches carry no ``expr``).
        loop: how a shorter camera track is extended: "mirror" (ping-pong, as ER-NeRF), "repeat", "hold".
        segment_seconds: length of the ``waveform`` segments (0 → None).
        context_features: features of ``audio_context`` when they differ from ``features`` (the
            DataModule's ``context_feature``), given like ``features``; None = ``features``.
    """

    def __init__(self, audio_path: Union[str, Path, None], features: Union[AudioFeatures, str, Any] = "mel",
                 cameras: Union[ClipInfo, Cameras, str, Path, np.ndarray, None] = None,
                 K: Optional[np.ndarray] = None, width: Optional[int] = None, height: Optional[int] = None,
                 emotion: Union[str, int] = "audio", intensity: Optional[int] = None,
                 background: Union[str, Path, Tensor] = "white", extractor_model: Optional[str] = None,
                 neighbours: int = 8, context: int = 50, blink: Union[str, np.ndarray] = "zeros",
                 blink_seed: int = 0, loop: str = "mirror", segment_seconds: float = 2.0,
                 extractor_layer: Optional[Union[str, int]] = None,
                 context_features: Union[AudioFeatures, str, Any, None] = None,
                 expression: Optional[np.ndarray] = None):
        self.audio_path = None if audio_path is None else Path(audio_path)
        wav = load_wav(self.audio_path) if self.audio_path is not None else None

        def as_features(spec, n: Optional[int], key: str) -> AudioFeatures:
            if isinstance(spec, AudioFeatures):
                return spec if n is None or spec.num_frames == n else \
                    AudioFeatures(spec.to_array(), n, layout="windows", name=spec.name, warn=False)
            if wav is None:
                raise ValueError("PredictDataset: audio_path is required unless precomputed AudioFeatures are given")
            if isinstance(spec, str):
                if spec not in EXTRACTOR_FEATURES:
                    raise ValueError(f"PredictDataset: features must be AudioFeatures, an extractor object or one of "
                                     f"{EXTRACTOR_FEATURES}, got {spec!r}")
                spec = make_extractor(spec, **({} if spec == "mel" else {"model": extractor_model, "config_key": key,
                                                                         "layer": extractor_layer}))
            return AudioFeatures(np.ascontiguousarray(spec(wav), dtype=np.float32),
                                 num_frames=frames_for_audio(wav.shape[0]) if n is None else n,
                                 name=getattr(spec, "name", ""), warn=False)

        feats = as_features(features, None, "data.feature")
        self.num_frames = int(feats.num_frames)
        if self.num_frames <= 0:
            raise ValueError(f"PredictDataset: {self.audio_path} is shorter than one frame (40 ms)")
        self.features = feats
        self.audio_dim = feats.dim
        self.neighbours, self.context = int(neighbours), int(context or 0)
        # the audio context (prior style, emotion encoder): ``context_features`` (same audio), else ``features``
        ctx_feats = (feats if context_features is None
                     else as_features(context_features, self.num_frames, "data.context_feature"))
        self.context_features = ctx_feats
        self.context_dim = ctx_feats.dim
        self._frame_feats = clip_frame_features(ctx_feats) if self.context else None
        self.segment_samples = int(round(float(segment_seconds) * SAMPLE_RATE))
        self.wav = wav if self.segment_samples > 0 else None

        # cameras
        bc_path = None
        if isinstance(cameras, ClipInfo):
            vm, K0, w0, h0 = cameras.cameras.viewmats, cameras.cameras.K, cameras.width, cameras.height
            bc_path = cameras.background_path
        elif isinstance(cameras, Cameras):
            vm, K0, w0, h0 = cameras.viewmats, cameras.K, cameras.width, cameras.height
        elif isinstance(cameras, (str, Path)):
            vm, K0, w0, h0 = load_camera_track(cameras)
        elif cameras is not None:
            vm, K0, w0, h0 = np.asarray(cameras, dtype=np.float32), None, None, None
            if vm.shape == (4, 4):
                vm = vm[None]
            if vm.ndim != 3 or vm.shape[1:] != (4, 4):
                raise ValueError(f"cameras array must be [L,4,4] viewmats, got {list(vm.shape)}")
        else:
            raise ValueError("PredictDataset: a camera track is required (a ClipInfo, Cameras, a .npy/.json file of "
                             "viewmats, or an [L,4,4] array)")
        width = int(width) if width is not None else w0
        height = int(height) if height is not None else h0
        if width is None or height is None:
            raise ValueError("PredictDataset: width and height are required for this camera track")
        if K is not None:
            Kf = np.asarray(K, dtype=np.float32)
        elif K0 is not None:
            Kf = np.array(K0, dtype=np.float32)
            if w0 is not None and h0 is not None and (w0, h0) != (width, height):
                Kf[0] *= width / w0
                Kf[1] *= height / h0
        else:
            raise ValueError("PredictDataset: intrinsics K are required for this camera track")
        if Kf.shape != (3, 3):
            raise ValueError(f"K must be 3×3, got {list(Kf.shape)}")
        self.width, self.height, self.K = width, height, Kf
        self.loop = loop
        cam_idx = _loop_index(np.arange(self.num_frames), len(vm), loop)
        self.viewmats = np.ascontiguousarray(np.asarray(vm, np.float32)[cam_idx])
        self.background = _background_image(background, width, height, bc_path)

        # emotion
        if isinstance(emotion, str) and emotion.strip().lower() == "audio":
            self.emotion = -1
        elif isinstance(emotion, str):
            name = emotion.strip().lower()
            if name not in EMOTIONS:
                raise ValueError(f"unknown emotion {emotion!r}; expected 'audio' or one of {', '.join(EMOTIONS)}")
            self.emotion = EMOTIONS.index(name)
        else:
            if isinstance(emotion, bool) or not 0 <= int(emotion) < len(EMOTIONS):
                raise ValueError(f"emotion id must be in 0..{len(EMOTIONS) - 1}, got {emotion!r}")
            self.emotion = int(emotion)
        if intensity is not None and (isinstance(intensity, bool) or int(intensity) not in INTENSITIES):
            raise ValueError(f"intensity must be 1, 2, 3 or None, got {intensity!r}")
        self.intensity = 0 if intensity is None else int(intensity)

        # blinks
        if isinstance(blink, str):
            if blink == "zeros":
                self.blink = np.zeros(self.num_frames, np.float32)
            elif blink == "synthetic":
                self.blink = synthetic_blinks(self.num_frames, blink_seed)
            else:
                raise ValueError(f"blink must be 'zeros', 'synthetic' or an array, got {blink!r}")
        else:
            b = np.asarray(blink, dtype=np.float32).reshape(-1)
            if b.shape[0] != self.num_frames:
                raise ValueError(f"blink array has {b.shape[0]} values for {self.num_frames} frames")
            self.blink = np.clip(b, 0.0, 1.0)
        self.expr: Optional[np.ndarray] = None
        if expression is not None:
            e = np.asarray(expression, dtype=np.float32)
            if e.ndim != 2 or e.shape[0] < 1 or not np.isfinite(e).all():
                raise ValueError(f"expression must be a finite [M, K] array with M ≥ 1, got {list(e.shape)}")
            self.expr = np.ascontiguousarray(e[_loop_index(np.arange(self.num_frames), e.shape[0], loop)])

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, idx) -> PredictBatch:
        j = int(idx)
        if not 0 <= j < self.num_frames:
            raise IndexError(f"PredictDataset: frame {j} out of range 0..{self.num_frames - 1}")
        f = self.features
        nb = torch.from_numpy(f.neighbours(j, self.neighbours))[None] if self.neighbours else None
        ctx = (torch.from_numpy(audio_context_np(self._frame_feats, np.array([j]), self.context))
               if self.context else None)
        wav = (torch.from_numpy(waveform_segment(self.wav, j, self.segment_samples))[None]
               if self.wav is not None else None)
        return PredictBatch(
            viewmat=torch.from_numpy(self.viewmats[j].copy())[None], K=torch.from_numpy(self.K.copy())[None],
            audio=torch.from_numpy(np.asarray(f[j], np.float32))[None], audio_neighbours=nb, audio_context=ctx,
            blink=torch.tensor([float(self.blink[j])], dtype=torch.float32), background=self.background.clone()[None],
            frame_index=torch.tensor([j], dtype=torch.long), emotion=torch.tensor([self.emotion], dtype=torch.long),
            intensity=torch.tensor([self.intensity], dtype=torch.long), waveform=wav,
            expr=None if self.expr is None else torch.from_numpy(self.expr[j].copy())[None],
        )
