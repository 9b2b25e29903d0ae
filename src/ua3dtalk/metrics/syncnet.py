"""SyncNet v2 and the Sync-C / Sync-D lip-sync metrics (DESIGN §8).

Architecture
------------
:class:`SyncNet` is the two-stream network of joonson/syncnet_python (``SyncNetModel.S``), the network
of the public ``syncnet_v2.model`` used by Wav2Lip's LSE-C/LSE-D and by most talking-face papers for
Sync-C/Sync-D. Module and parameter names and shapes are the same, so that file (a plain state dict)
loads as is with :func:`load_syncnet`:

* audio stream ``netcnnaud`` (2-D convs on MFCC ``[B,1,13,20]``, 13 coefficients × 20 frames at 100 Hz
  = 0.2 s) → 512 → ``netfcaud`` (512 → 512 → 1024);
* lip stream ``netcnnlip`` (3-D convs on face crops ``[B,3,5,224,224]``, 5 frames at 25 fps = 0.2 s,
  BGR channel order, pixel values 0..255 as the reference reads them with OpenCV) → 512 →
  ``netfclip`` (512 → 512 → 1024).

:class:`SyncNetConfig` () is the official network. For evaluators that the project trains on CPU a
reduced network keeps every parameter *name* and changes only shapes: ``width`` multiplies every
channel count (conv and hidden FC widths), ``embed_dim`` sets the embedding size and ``lip_size`` the
face-crop size (the kernel of the last lip conv, 6×6 at 224, is set to the remaining spatial size so
the lip stream still ends at 1×1). :meth:`SyncNetConfig.small` (width 0.25, 256-d, 64² crops) trains in
minutes on two CPU cores.

Metric (the reference's ``SyncNetInstance.evaluate`` and ``calc_pdist``)
------------------------------------------------------------------------
Video at 25 fps, audio at 16 kHz. With ``L = min(N_frames, floor(N_samples / 640)) − 5`` windows,
window ``v`` pairs frames ``v..v+4`` with MFCC frames ``4v..4v+19``; both streams give embeddings
``V[v]``, ``A[v]``. For every offset index ``j = 0..2·vshift`` and window ``v`` the distance is
``d[v, j] = ‖V[v] − A[v + j − vshift]‖₂`` (``A`` zero-padded at both ends, as the reference does),
``D[j] = mean_v d[v, j]``. Then

* **Sync-D** (``dist``) = ``min_j D[j]`` — lower is better;
* **Sync-C** (``conf``) = ``median_j D[j] − min_j D[j]`` — higher is better;
* **offset** = ``vshift − argmin_j D[j]``: the audio whose content best matches video frame ``i`` is
  audio frame ``i − offset``. A positive offset means the audio is *ahead* of the video; audio delayed
  by ``k`` frames (sound of frame ``i`` heard at frame ``i + k``) gives ``offset = −k``. In-sync video
  gives 0 (the public model reports small offsets such as ±1 for well-synced real videos).

The numbers are comparable with published Sync-C/Sync-D only with the public ``syncnet_v2.model`` and
the reference's face crops (S3FD face track, ``crop_scale`` 0.4, 224²); :func:`crop_for_sync` makes
the same crop from 68-point landmarks. A project-trained network gives numbers on its own scale;
:func:`load_syncnet` records which file produced them.

Training (:func:`train_syncnet`)
--------------------------------
The reference network was trained on LRS2/VoxCeleb. Without those weights, :func:`train_syncnet`
trains the same architecture on ground-truth video + audio. Default objective ``"multiway"`` (the
multi-way matching of SyncNet v2, Chung et al., "Perfect match", ICASSP 2019, extended with in-batch
negatives): for each 5-frame video window the logits are the *negative Euclidean distances* to a set
of audio windows — the in-sync window, windows of the same clip shifted by ``min_shift..max_shift``
frames, and the windows of every other batch element (other clips or other times) — and the loss is
the cross-entropy of picking the in-sync window. Audio windows of the same clip closer than
``min_shift`` frames are excluded (they are nearly in sync). The distance is the quantity the metric
uses, so trained distances are directly Sync-D/Sync-C. ``loss="contrastive"`` is the original
SyncNet objective (Chung & Zisserman 2016): ``y·d² + (1−y)·max(margin − d, 0)²`` over in-sync
(``y=1``) and shifted / other-clip (``y=0``) pairs.
"""
from __future__ import annotations

import json
import math
import struct
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .mfcc import INT16_SCALE, MFCC_PER_VIDEO_FRAME, NUM_CEPS, SAMPLE_RATE, syncnet_mfcc

WINDOW = 5
"""Video frames per SyncNet window (0.2 s at 25 fps)."""
AUDIO_WINDOW = WINDOW * MFCC_PER_VIDEO_FRAME
"""MFCC frames per SyncNet window (20)."""
SAMPLES_PER_FRAME = SAMPLE_RATE // 25
"""Audio samples per video frame at 16 kHz (640)."""
PAD_VALUE = 110.0 / 255.0
"""Grey level the reference pads frames with before cropping (110 of 255)."""
FORMAT = "ua3dtalk-syncnet"
"""``format`` entry of the metadata of files written by :func:`save_syncnet`."""

# official channel counts
_AUD = (64, 192, 384, 256, 256, 512)
_LIP = (96, 256, 256, 256, 256, 512)
_FC = 512


# --------------------------------------------------------------------------------------------------
# configuration and network
# --------------------------------------------------------------------------------------------------


def _lip_spatial(size: int) -> list[int]:
    """Spatial size after each stage of the lip stream for ``size``² crops."""
    s1 = (size - 7) // 2 + 1  # conv (5,7,7) stride (1,2,2)
    p1 = (s1 - 3) // 2 + 1  # maxpool (1,3,3) stride (1,2,2)
    s2 = (p1 + 2 - 5) // 2 + 1  # conv (1,5,5) stride 2 pad 1
    p2 = (s2 + 2 - 3) // 2 + 1  # maxpool 3 stride 2 pad 1
    p3 = (p2 - 3) // 2 + 1  # 3 convs (same size), maxpool 3 stride 2
    return [s1, p1, s2, p2, p3]


@dataclass(frozen=True)
class SyncNetConfig:
    """Shape of a :class:`SyncNet`; the defaults are the public ``syncnet_v2.model``.

    width       multiplier of every channel count (conv channels 64/192/384/256/256/512 audio,
                96/256/256/256/256/512 lip, hidden FC 512), each rounded, at least 4
    embed_dim   size of the audio and lip embeddings (1024)
    lip_size    side of the square face crops fed to the lip stream (224); ≥ 64
    """

    width: float = 1.0
    embed_dim: int = 1024
    lip_size: int = 224

    def __post_init__(self):
        if not (isinstance(self.width, (int, float)) and 0 < float(self.width) <= 4):
            raise ValueError(f"SyncNetConfig.width must be in (0, 4], got {self.width!r}")
        if int(self.embed_dim) < 1:
            raise ValueError(f"SyncNetConfig.embed_dim must be ≥ 1, got {self.embed_dim!r}")
        if int(self.lip_size) < 64 or _lip_spatial(int(self.lip_size))[-1] < 1:
            raise ValueError(f"SyncNetConfig.lip_size must be ≥ 64, got {self.lip_size!r}")

    @classmethod
    def official(cls) -> "SyncNetConfig":
        """The public ``syncnet_v2.model`` network (13.6 M parameters, 224² crops)."""
        return cls()

    @classmethod
    def small(cls) -> "SyncNetConfig":
        """A CPU-trainable evaluator: width 0.25, 256-d embeddings, 64² crops (same parameter names)."""
        return cls(width=0.25, embed_dim=256, lip_size=64)

    def ch(self, n: int) -> int:
        return max(4, int(round(n * float(self.width))))

    @property
    def lip_final_kernel(self) -> int:
        """Kernel of the last lip conv (6 at 224²): the spatial size left before it."""
        return _lip_spatial(int(self.lip_size))[-1]

    def to_dict(self) -> dict:
        return {"width": float(self.width), "embed_dim": int(self.embed_dim), "lip_size": int(self.lip_size)}

    @classmethod
    def from_dict(cls, d: dict) -> "SyncNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SyncNetConfig field(s) {unknown}; expected {sorted(known)}")
        return cls(**d)


class SyncNet(nn.Module):
    """SyncNet v2 (joonson/syncnet_python ``S``): same module and parameter names.

    ``forward_aud(mfcc [B,1,13,20]) → [B,embed_dim]``;
    ``forward_lip(crops [B,3,5,S,S]) → [B,embed_dim]`` with ``S = config.lip_size``, BGR, values 0..255;
    ``forward(crops, mfcc) → (lip embedding, audio embedding)``.
    Use :func:`sync_scores` for the metric (it builds these inputs from frames and a waveform).
    """

    def __init__(self, config: Optional[SyncNetConfig] = None):
        super().__init__()
        self.config = cfg = config or SyncNetConfig()
        a = [cfg.ch(c) for c in _AUD]
        v = [cfg.ch(c) for c in _LIP]
        fc, e, k = cfg.ch(_FC), int(cfg.embed_dim), cfg.lip_final_kernel
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, a[0], kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(a[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(a[0], a[1], kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(a[1]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(a[1], a[2], kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(a[2]),
            nn.ReLU(inplace=True),
            nn.Conv2d(a[2], a[3], kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(a[3]),
            nn.ReLU(inplace=True),
            nn.Conv2d(a[3], a[4], kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(a[4]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(a[4], a[5], kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(a[5]),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(a[5], fc), nn.BatchNorm1d(fc), nn.ReLU(), nn.Linear(fc, e))
        self.netfclip = nn.Sequential(nn.Linear(v[5], fc), nn.BatchNorm1d(fc), nn.ReLU(), nn.Linear(fc, e))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, v[0], kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(v[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(v[0], v[1], kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[1]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(v[1], v[2], kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[2]),
            nn.ReLU(inplace=True),
            nn.Conv3d(v[2], v[3], kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[3]),
            nn.ReLU(inplace=True),
            nn.Conv3d(v[3], v[4], kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[4]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(v[4], v[5], kernel_size=(1, k, k), padding=0),
            nn.BatchNorm3d(v[5]),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """MFCC windows ``[B,1,13,20]`` → audio embeddings ``[B,embed_dim]``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, NUM_CEPS, AUDIO_WINDOW):
            raise ValueError(f"SyncNet.forward_aud expects MFCC windows [B,1,{NUM_CEPS},{AUDIO_WINDOW}], "
                             f"got {list(x.shape)}")
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """Face-crop windows ``[B,3,5,S,S]`` (BGR, 0..255) → lip embeddings ``[B,embed_dim]``."""
        s = int(self.config.lip_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != (3, WINDOW, s, s):
            raise ValueError(f"SyncNet.forward_lip expects face windows [B,3,{WINDOW},{s},{s}], got {list(x.shape)}")
        mid = self.netcnnlip(x)
        return self.netfclip(mid.flatten(1))

    def forward(self, lip: torch.Tensor, aud: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_lip(lip), self.forward_aud(aud)


# --------------------------------------------------------------------------------------------------
# loading and saving
# --------------------------------------------------------------------------------------------------


class SyncNetWeightsError(ValueError):
    """A SyncNet weights file is unreadable or does not fit the architecture (message names the file
    and lists the missing / unexpected / mis-shaped keys)."""


OFFICIAL_WEIGHTS_HINT = ("the public weights are 'syncnet_v2.model' from joonson/syncnet_python "
                         "(fetched by its download_model.sh into data/); or train an evaluator on ground "
                         "truth with ua3dtalk.metrics.syncnet.train_syncnet")


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 0 < n <= path.stat().st_size - 8 and head[8:9] == b"{"


def _format_keys(keys: Sequence[str], limit: int = 20) -> str:
    keys = list(keys)
    s = ", ".join(keys[:limit])
    return s + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(state: dict, model: SyncNet, path: Union[str, Path, None] = None) -> None:
    """Raise :class:`SyncNetWeightsError` unless ``state`` has exactly the keys and shapes of
    ``model.state_dict()`` (``*.num_batches_tracked`` may be absent: the public file predates them)."""
    where = f"SyncNet weights {path}" if path is not None else "SyncNet state dict"
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} (expected {list(own[k].shape)})" for k in own
              if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{where} do not fit SyncNet{model.config.to_dict()}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {_format_keys(shapes)}")
        raise SyncNetWeightsError("\n".join(lines))


def _strip_prefix(state: dict) -> dict:
    for p in ("__S__.", "module."):
        if state and all(k.startswith(p) for k in state):
            return {k[len(p):]: v for k, v in state.items()}
    return state


def load_syncnet(path: Union[str, Path], config: Optional[SyncNetConfig] = None) -> SyncNet:
    """Load a SyncNet in eval mode, on the CPU, from

    (a) the public ``syncnet_v2.model`` or any plain state dict saved with ``torch.save`` (read with
        ``torch.load(weights_only=True)``); its shape is ``config`` (default: the official network);
    (b) a file written by :func:`save_syncnet` (safetensors with the config in its metadata; ``config``
        must be None or equal to it).

    The loaded model has ``model.source`` = {"path", "format", "meta"} for reports. Raises
    ``FileNotFoundError`` (naming the file and where the public weights come from) for a missing
    file and :class:`SyncNetWeightsError` for a corrupt file or one whose keys / shapes do not fit
    (listing them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet weights not found: {path} ({OFFICIAL_WEIGHTS_HINT})")
    meta: dict = {}
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SyncNetWeightsError(f"SyncNet weights {path}: corrupt safetensors file ({e})") from None
        if md.get("format") != FORMAT or "config" not in md:
            raise SyncNetWeightsError(f"SyncNet weights {path}: not a {FORMAT} file (safetensors metadata "
                                      f"lacks format={FORMAT!r} and config); got keys {sorted(md)}")
        try:
            file_cfg = SyncNetConfig.from_dict(json.loads(md["config"]))
            meta = json.loads(md.get("meta", "{}"))
        except (ValueError, TypeError) as e:
            raise SyncNetWeightsError(f"SyncNet weights {path}: bad config in metadata ({e})") from None
        if config is not None and config != file_cfg:
            raise SyncNetWeightsError(f"SyncNet weights {path} hold a SyncNet{file_cfg.to_dict()}, "
                                      f"but SyncNet{config.to_dict()} was asked for")
        config, fmt = file_cfg, FORMAT
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / zip errors of many kinds
            raise SyncNetWeightsError(f"SyncNet weights {path}: unreadable as a plain state dict with "
                                      f"torch.load(weights_only=True) ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SyncNetWeightsError(f"SyncNet weights {path}: expected a state dict {{name: tensor}}, "
                                      f"got {type(state).__name__}")
        state = _strip_prefix(dict(state))
        fmt = "state_dict"
    model = SyncNet(config or SyncNetConfig())
    check_state_dict(state, model, path)
    model.load_state_dict(state, strict=False)  # strictness checked above (num_batches_tracked optional)
    model.eval()
    model.source = {"path": str(path), "format": fmt, "meta": meta}
    return model


def save_syncnet(model: SyncNet, path: Union[str, Path], meta: Optional[dict] = None) -> Path:
    """Write ``model`` atomically as safetensors with its :class:`SyncNetConfig` (and ``meta``, a JSON
    dict, e.g. how it was trained) in the metadata; :func:`load_syncnet` reads it back. To write the
    public format instead: ``torch.save(model.state_dict(), path)``."""
    from safetensors.torch import save_file

    from ..utils.io import atomic_path

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    md = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), "meta": json.dumps(meta or {})}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=md)
    return path


# --------------------------------------------------------------------------------------------------
# front end
# --------------------------------------------------------------------------------------------------


def _as_frames(frames, what: str = "frames") -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = list(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise ValueError(f"{what} must be a tensor [N,3,H,W] (RGB in [0,1]), got {shape}")
    if frames.dtype == torch.uint8:
        frames = frames.float() / 255.0
    return frames.float()


def to_model_pixels(frames: torch.Tensor, size: int) -> torch.Tensor:
    """RGB frames ``[N,3,H,W]`` in [0,1] → the lip stream's pixels ``[N,3,size,size]``: bilinear resize
    (OpenCV ``INTER_LINEAR`` semantics: half-pixel centres, no antialiasing), BGR order, 0..255."""
    x = frames
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.flip(1) * 255.0


def crop_for_sync(frames, lms, *, crop_scale: float = 0.4, size: int = 224, smooth: int = 13,
                  pad_value: float = PAD_VALUE) -> torch.Tensor:
    """Cut SyncNet face crops from full frames given 68-point landmarks.

    ``frames``: ``[N,3,H,W]`` RGB in [0,1] (or uint8); ``lms``: ``[N,68,2]`` (x = column, y = row,
    pixels). Returns ``[N,3,size,size]`` RGB in [0,1].

    The crop is the reference's (``run_pipeline.crop_video``) with the landmarks' bounding box in place
    of the S3FD face box: half-size ``s = max(w, h)/2`` and centre of the box, both median-filtered
    over ``smooth`` frames (edges replicated); rows ``cy − s .. cy + s(1 + 2·crop_scale)``, columns
    ``cx ± s(1 + crop_scale)`` (a square reaching below the chin), frames padded with grey
    (``pad_value``) where the square leaves the image, then resized to ``size``. Rendered frames share
    the ground truth's cameras, so the ground-truth landmarks give their crops too.
    """
    x = _as_frames(frames)
    boxes = sync_boxes(lms, smooth=smooth)
    if boxes.shape[0] != x.shape[0]:
        raise ValueError(f"lms must be [N,68,2] with N = {x.shape[0]} frames, got {boxes.shape[0]} frames")
    out = torch.empty(x.shape[0], 3, size, size)
    for i in range(x.shape[0]):
        out[i] = crop_one(x[i], boxes[i], crop_scale=crop_scale, size=size, pad_value=pad_value)
    return out


def sync_boxes(lms, *, smooth: int = 13) -> np.ndarray:
    """Face boxes of :func:`crop_for_sync`: ``[N,3]`` = (half-size s, centre x, centre y) of the
    landmarks' bounding box, median-filtered over ``smooth`` frames (edges replicated)."""
    lm = np.asarray(lms.detach().cpu() if hasattr(lms, "detach") else lms, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[2] != 2 or lm.shape[0] < 1:
        raise ValueError(f"lms must be [N,68,2] (x, y pixels), got {list(lm.shape)}")
    if not np.isfinite(lm).all():
        raise ValueError("lms contain NaN or Inf")
    lo, hi = lm.min(1), lm.max(1)
    s = np.maximum(hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]) / 2.0
    cx, cy = (lo[:, 0] + hi[:, 0]) / 2.0, (lo[:, 1] + hi[:, 1]) / 2.0
    if smooth and smooth > 1 and len(s) > 1:
        from scipy.ndimage import median_filter

        s, cx, cy = (median_filter(a, size=int(smooth), mode="nearest") for a in (s, cx, cy))
    return np.stack([s, cx, cy], 1)


def crop_one(frame: torch.Tensor, box, *, crop_scale: float = 0.4, size: int = 224,
             pad_value: float = PAD_VALUE) -> torch.Tensor:
    """Crop one frame ``[3,H,W]`` with a box (s, cx, cy) of :func:`sync_boxes` → ``[3,size,size]``."""
    cs = float(crop_scale)
    bs = max(float(box[0]), 1.0)
    bsi = int(bs * (1 + 2 * cs))
    fr = F.pad(frame, (bsi, bsi, bsi, bsi), value=float(pad_value))
    my, mx = float(box[2]) + bsi, float(box[1]) + bsi
    face = fr[:, int(my - bs):int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)):int(mx + bs * (1 + cs))]
    return F.interpolate(face[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]


def _audio_16k(audio, sr: int) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be a mono 1-D waveform [L], got shape {list(a.shape)}")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / INT16_SCALE
    if int(sr) != SAMPLE_RATE:
        from ..data.audio import resample

        a = resample(a, int(sr), SAMPLE_RATE)
    return a.astype(np.float32)


def _num_windows(num_frames: int, num_samples: int) -> int:
    """The reference's window count: min(frames, floor(samples/640)) − 5."""
    return min(int(num_frames), int(num_samples) // SAMPLES_PER_FRAME) - WINDOW


def _lip_windows(pix: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """``pix [N,3,S,S]`` → windows ``[B,3,5,S,S]`` starting at ``starts [B]``."""
    idx = starts[:, None] + torch.arange(WINDOW)[None]
    return pix[idx].permute(0, 2, 1, 3, 4)


def _mfcc_windows(mfcc: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """``mfcc [13,T]`` → windows ``[B,1,13,20]`` for video-frame starts ``starts [B]``."""
    idx = starts[:, None] * MFCC_PER_VIDEO_FRAME + torch.arange(AUDIO_WINDOW)[None]
    return mfcc[:, idx].permute(1, 0, 2)[:, None]


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def embed_clip(model: SyncNet, frames, audio, sr: int = SAMPLE_RATE, *, batch_size: int = 64
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lip and audio embeddings of every window of a clip, as the reference computes them.

    ``frames``: face crops ``[N,3,H,W]`` RGB in [0,1] at 25 fps (resized to ``model.config.lip_size``);
    ``audio``: mono waveform ``[L]`` (float in [-1,1] or int16) at ``sr``. Returns ``(V, A)``, each
    ``[W, embed_dim]`` with ``W = min(N, floor(L16k/640)) − 5`` (float32, CPU).
    """
    x = _as_frames(frames)
    wav = _audio_16k(audio, sr)
    n_frames = x.shape[0]
    if abs(n_frames - len(wav) / SAMPLES_PER_FRAME) > 1.0:
        warnings.warn(f"SyncNet: audio ({len(wav) / SAMPLE_RATE:.3f} s) and video ({n_frames / 25:.3f} s) lengths "
                      "differ; scoring the common part", stacklevel=3)
    nw = _num_windows(n_frames, len(wav))
    if nw < 1:
        raise ValueError(f"SyncNet needs at least {WINDOW + 1} frames (0.24 s) of video and audio, got "
                         f"{n_frames} frames and {len(wav)} samples")
    mfcc = torch.from_numpy(syncnet_mfcc(wav, SAMPLE_RATE))
    dev = _model_device(model)
    size = int(model.config.lip_size)
    was_training = getattr(model, "training", False)
    model.eval()
    V, A = [], []
    try:
        for i in range(0, nw, batch_size):
            j = min(nw, i + batch_size)
            pix = to_model_pixels(x[i:j + WINDOW - 1], size)
            starts = torch.arange(j - i)
            V.append(model.forward_lip(_lip_windows(pix, starts).to(dev)).float().cpu())
            A.append(model.forward_aud(_mfcc_windows(mfcc, starts + i).to(dev)).float().cpu())
    finally:
        if was_training:
            model.train()
    return torch.cat(V), torch.cat(A)


@dataclass
class SyncResult:
    """Sync scores of one clip (see the module docstring).

    offset  int, ``vshift − argmin D``; > 0: audio ahead of the video, < 0: audio behind
    conf    Sync-C = median(D) − min(D) (higher is better)
    dist    Sync-D = min(D) (lower is better)
    dists   float [2·vshift+1]: D[j], mean distance at offset ``vshift − j`` (the reference's order)
    num_windows  number of 5-frame windows averaged
    """

    offset: int
    conf: float
    dist: float
    dists: np.ndarray
    num_windows: int = 0

    @property
    def vshift(self) -> int:
        return (len(self.dists) - 1) // 2

    @property
    def offsets(self) -> np.ndarray:
        """Offset of each entry of :attr:`dists`."""
        return self.vshift - np.arange(len(self.dists))

    def as_dict(self) -> dict:
        return {"sync_c": float(self.conf), "sync_d": float(self.dist), "sync_offset": int(self.offset)}


def offset_distances(V: torch.Tensor, A: torch.Tensor, vshift: int = 15) -> torch.Tensor:
    """``d [W, 2·vshift+1]``: ``d[v,j] = ‖V[v] − A[v+j−vshift]‖₂`` with ``A`` zero-padded (reference
    ``calc_pdist``, including ``pairwise_distance``'s eps)."""
    W = V.shape[0]
    Ap = F.pad(A, (0, 0, vshift, vshift))
    idx = torch.arange(W)[:, None] + torch.arange(2 * vshift + 1)[None]
    return F.pairwise_distance(V[:, None, :].expand(-1, idx.shape[1], -1), Ap[idx], p=2.0, eps=1e-6)


def scores_from_embeddings(V: torch.Tensor, A: torch.Tensor, vshift: int = 15) -> SyncResult:
    """:class:`SyncResult` from the window embeddings of :func:`embed_clip`."""
    d = offset_distances(V.double(), A.double(), vshift)
    D = d.mean(0)
    minval, minidx = torch.min(D, 0)
    med = torch.median(D)  # torch.median: lower median, as the reference
    return SyncResult(offset=int(vshift - int(minidx)), conf=float(med - minval), dist=float(minval),
                      dists=D.float().numpy(), num_windows=int(V.shape[0]))


def sync_scores(model: SyncNet, frames, audio, sr: int = SAMPLE_RATE, *, vshift: int = 15,
                batch_size: int = 64) -> SyncResult:
    """Sync-C, Sync-D and the audio-video offset of one clip.

    ``frames``: face crops ``[N,3,H,W]`` RGB in [0,1] at 25 fps (e.g. from :func:`crop_for_sync`;
    resized to ``model.config.lip_size`` inside); ``audio``: mono waveform ``[L]`` at ``sr`` (float in
    [-1, 1] or int16). ``vshift``: offsets searched, −vshift..vshift frames (15 as in the papers).
    """
    if int(vshift) < 1:
        raise ValueError(f"vshift must be ≥ 1, got {vshift}")
    V, A = embed_clip(model, frames, audio, sr, batch_size=batch_size)
    return scores_from_embeddings(V, A, int(vshift))


# --------------------------------------------------------------------------------------------------
# training on ground truth
# --------------------------------------------------------------------------------------------------


@dataclass
class SyncClip:
    """One clip for :func:`train_syncnet`.

    frames     a loader ``frames(i) → [3,H,W]`` RGB in [0,1] for i in 0..N-1, or a tensor ``[N,3,H,W]``
    audio      mono waveform ``[L]`` (float in [-1,1]) at ``sr``, starting at frame 0
    landmarks  ``[N,68,2]`` (x, y) pixels: the face box of every frame
    """

    frames: Union[Callable[[int], torch.Tensor], torch.Tensor]
    audio: np.ndarray
    landmarks: np.ndarray
    sr: int = SAMPLE_RATE
    name: str = ""

    @property
    def num_frames(self) -> int:
        return int(len(self.landmarks))

    def load_frames(self) -> torch.Tensor:
        """All frames ``[N,3,H,W]``."""
        if isinstance(self.frames, (torch.Tensor, np.ndarray)):
            return _as_frames(self.frames, f"frames of clip {self.name!r}")
        return torch.stack([self.frames(i) for i in range(self.num_frames)])


def clips_from_dataset(data, *, split: Optional[str] = None) -> list[SyncClip]:
    """:class:`SyncClip` s of a dataset in the DESIGN §5 layout: a path (regular or emotional root), a
    :class:`~ua3dtalk.data.formats.ClipInfo`, a list of them or an :class:`~ua3dtalk.data.formats.EmotionalData`.

    Frames are the training images (``gt_imgs`` when present, else ``ori_imgs``), landmarks
    ``ori_imgs/<i>.lms``, audio ``aud.wav`` from the first frame on. ``split`` ("train" / "val")
    keeps that split's frames, which must be consecutive (the default splits are). Raises
    :class:`~ua3dtalk.data.formats.DatasetError` naming the clip when it has no ``aud.wav`` or the
    frames are not consecutive.
    """
    from ..data.audio import load_wav
    from ..data.formats import DatasetError, Problem, iter_clips, load_dataset, read_image

    if isinstance(data, (str, Path)):
        data = load_dataset(data)
    out = []
    for clip in (list(data) if isinstance(data, (list, tuple)) else iter_clips(data)):
        pos = np.arange(len(clip)) if split is None else np.asarray(clip.splits.get(split, []))
        if len(pos) == 0:
            continue
        ids = clip.img_ids[pos]
        if not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
            raise DatasetError([Problem(clip.root, f"SyncNet needs consecutive frames; the {split or 'all'} "
                                                   "frames of this clip have gaps in img_id")])
        if clip.wav_path is None:
            raise DatasetError([Problem(clip.root / "aud.wav", "missing audio file (SyncNet needs aud.wav)")])
        wav = load_wav(clip.wav_path)
        first = int(ids[0]) * SAMPLES_PER_FRAME
        wav = wav[first:first + len(ids) * SAMPLES_PER_FRAME]
        lms = np.stack([clip.landmarks(int(p)) for p in pos])
        out.append(SyncClip(frames=lambda i, c=clip, p=pos: read_image(c.image_path(int(p[i]))), audio=wav,
                            landmarks=lms, name=f"{clip.clip_id}" + (f":{split}" if split else "")))
    return out


def _as_sync_clip(c, i: int) -> SyncClip:
    if isinstance(c, SyncClip):
        return c
    if isinstance(c, (tuple, list)) and len(c) in (3, 4):
        return SyncClip(c[0], c[1], c[2], *(c[3:] or ()), name=f"clip{i}")
    raise TypeError(f"clip {i}: expected a SyncClip or a tuple (frames, audio, landmarks[, sr]), "
                    f"got {type(c).__name__}")


@dataclass
class _Prepared:
    name: str
    pix: torch.Tensor  # uint8 [N,3,S,S] BGR
    mfcc: torch.Tensor  # float [13,T]
    windows: int  # valid starts 0..windows-1


def _prepare(clip: SyncClip, size: int, crop_scale: float) -> _Prepared:
    """Crop (frame by frame: a long clip never sits in memory at full resolution) and compute MFCCs."""
    boxes = sync_boxes(clip.landmarks)
    pix = torch.empty(clip.num_frames, 3, size, size, dtype=torch.uint8)
    tensor = isinstance(clip.frames, (torch.Tensor, np.ndarray))
    frames = clip.load_frames() if tensor else None
    for i in range(clip.num_frames):
        f = frames[i] if tensor else _as_frames(clip.frames(i)[None], f"frame {i} of clip {clip.name!r}")[0]
        crop = crop_one(f, boxes[i], crop_scale=crop_scale, size=size)
        pix[i] = to_model_pixels(crop[None], size)[0].round().clamp(0, 255).to(torch.uint8)
    wav = _audio_16k(clip.audio, clip.sr)
    mfcc = torch.from_numpy(syncnet_mfcc(wav))
    w = min(pix.shape[0] - WINDOW + 1, (mfcc.shape[1] - AUDIO_WINDOW) // MFCC_PER_VIDEO_FRAME + 1)
    return _Prepared(clip.name, pix, mfcc, int(w))


def _augment_lip(x: torch.Tensor, g: torch.Generator, shift: int) -> torch.Tensor:
    """Per-window photometric jitter, horizontal flip and a small translation (the same for the 5
    frames of a window). ``x [B,3,5,S,S]`` float 0..255."""
    B = x.shape[0]
    gain = 1.0 + 0.2 * (torch.rand(B, 1, 1, 1, 1, generator=g) - 0.5)
    bias = 20.0 * (torch.rand(B, 3, 1, 1, 1, generator=g) - 0.5)
    x = (x * gain + bias).clamp(0, 255)
    flip = torch.rand(B, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    if shift > 0:
        S = x.shape[-1]
        xp = F.pad(x.flatten(1, 2), (shift, shift, shift, shift), mode="replicate").view(B, 3, WINDOW, S + 2 * shift,
                                                                                         S + 2 * shift)
        dy = torch.randint(0, 2 * shift + 1, (B,), generator=g)
        dx = torch.randint(0, 2 * shift + 1, (B,), generator=g)
        x = torch.stack([xp[b, :, :, dy[b]:dy[b] + S, dx[b]:dx[b] + S] for b in range(B)])
    return x


def train_syncnet(clips: Iterable, cfg: Optional[SyncNetConfig] = None, *, steps: int, batch_size: int,
                  out: Union[str, Path, None] = None, seed: int = 0, progress: bool = True, lr: float = 1e-3,
                  loss: str = "multiway", negatives: int = 8, min_shift: int = 2, max_shift: int = 15,
                  margin: float = 10.0, crop_scale: float = 0.4, augment: bool = True) -> SyncNet:
    """Train a :class:`SyncNet` (shape ``cfg``, default :meth:`SyncNetConfig.small`) on ground truth.

    ``clips``: :class:`SyncClip` s (or tuples ``(frames, audio, landmarks[, sr])``), e.g. from
    :func:`clips_from_dataset`; frames are cut with :func:`crop_for_sync` once, up front. Each step
    samples ``batch_size`` in-sync (video window, audio window) pairs and, per pair, ``negatives``
    audio windows of the same clip shifted by ``min_shift..max_shift`` frames; ``loss`` is
    ``"multiway"`` (cross-entropy over negative distances, with the other pairs' audio as extra
    negatives) or ``"contrastive"`` (``margin``), see the module docstring. Adam(``lr``) with a cosine
    schedule; photometric / flip / translation augmentation of the crops and a random gain (a shift of
    the energy coefficient) of the audio when ``augment``. Shows a tqdm bar (``progress``). Returns the
    model in eval mode; when ``out`` is given it is also written there with :func:`save_syncnet`
    (the metadata records the training settings, final loss / accuracy and time).
    """
    from tqdm.auto import tqdm

    cfg = cfg or SyncNetConfig.small()
    if loss not in ("multiway", "contrastive"):
        raise ValueError(f"loss must be 'multiway' or 'contrastive', got {loss!r}")
    if steps < 1 or batch_size < 2:
        raise ValueError(f"steps must be ≥ 1 and batch_size ≥ 2, got steps={steps}, batch_size={batch_size}")
    if not 1 <= min_shift <= max_shift:
        raise ValueError(f"need 1 ≤ min_shift ≤ max_shift, got {min_shift}, {max_shift}")
    clips = [_as_sync_clip(c, i) for i, c in enumerate(clips)]
    t0 = time.time()
    prep = [_prepare(c, cfg.lip_size, crop_scale) for c in tqdm(clips, desc="syncnet: crops + mfcc", unit="clip",
                                                                 disable=not progress, leave=False)]
    prep = [p for p in prep if p.windows > min_shift]
    if not prep:
        raise ValueError(f"train_syncnet: no clip is long enough (need more than {WINDOW + min_shift} frames "
                         "with audio)")
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = SyncNet(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    counts = torch.tensor([p.windows for p in prep], dtype=torch.float64)
    shift = max(1, cfg.lip_size // 32) if augment else 0
    K = int(negatives)
    hist: list[tuple[float, float]] = []
    bar = tqdm(range(steps), desc="syncnet: train", unit="step", disable=not progress)
    for step in bar:
        ci = torch.multinomial(counts, batch_size, replacement=True, generator=g)
        v = torch.stack([torch.randint(0, prep[c].windows, (), generator=g) for c in ci.tolist()])
        # audio candidates: column 0 in sync, columns 1..K shifted by min_shift..max_shift (valid only)
        cand = torch.empty(batch_size, 1 + K, dtype=torch.long)
        cand[:, 0] = v
        for b, c in enumerate(ci.tolist()):
            n = prep[c].windows
            vb = int(v[b])
            ok = [d for d in range(-max_shift, max_shift + 1)
                  if abs(d) >= min_shift and 0 <= vb + d < n]
            pick = torch.randint(0, len(ok), (K,), generator=g)
            cand[b, 1:] = vb + torch.tensor(ok)[pick]
        lip = torch.stack([_lip_windows(prep[c].pix, v[b:b + 1])[0] for b, c in enumerate(ci.tolist())]).float()
        aud = torch.stack([_mfcc_windows(prep[c].mfcc, cand[b]) for b, c in enumerate(ci.tolist())])
        aud = aud.flatten(0, 1)  # [B*(1+K),1,13,20]
        if augment:
            lip = _augment_lip(lip, g, shift)
            aud = aud.clone()
            aud[:, 0, 0, :] += (torch.randn(aud.shape[0], 1, generator=g) * 0.5)
        V = model.forward_lip(lip)
        A = model.forward_aud(aud)
        if loss == "multiway":
            d = torch.cdist(V, A)  # [B, B*(1+K)]
            # candidate j of anchor b may be a negative unless it is a near-sync window of the same clip
            clip_of = ci[:, None].expand(-1, 1 + K).reshape(-1)
            start_of = cand.reshape(-1)
            same = (ci[:, None] == clip_of[None]) & ((v[:, None] - start_of[None]).abs() < min_shift)
            target = torch.arange(batch_size) * (1 + K)
            same[torch.arange(batch_size), target] = False
            logits = (-d).masked_fill(same, float("-inf"))
            L = F.cross_entropy(logits, target)
            acc = float((logits.argmax(1) == target).float().mean())
        else:
            d = (V[:, None, :] - A.view(batch_size, 1 + K, -1)).norm(dim=-1)  # [B,1+K]
            y = torch.zeros_like(d)
            y[:, 0] = 1
            L = (y * d.pow(2) + (1 - y) * (margin - d).clamp(min=0).pow(2)).mean()
            acc = float((d.argmin(1) == 0).float().mean())
        opt.zero_grad(set_to_none=True)
        L.backward()
        opt.step()
        sched.step()
        hist.append((float(L.detach()), acc))
        if progress and (step % 10 == 0 or step == steps - 1):
            tail = hist[-50:]
            bar.set_postfix(loss=f"{np.mean([h[0] for h in tail]):.3f}", acc=f"{np.mean([h[1] for h in tail]):.2f}")
    model.eval()
    tail = hist[-max(1, min(50, steps // 5)):]
    info = {"steps": int(steps), "batch_size": int(batch_size), "seed": int(seed), "lr": float(lr), "loss": loss,
            "negatives": K, "min_shift": int(min_shift), "max_shift": int(max_shift), "crop_scale": float(crop_scale),
            "augment": bool(augment), "clips": [p.name for p in prep],
            "final_loss": float(np.mean([h[0] for h in tail])), "final_acc": float(np.mean([h[1] for h in tail])),
            "seconds": round(time.time() - t0, 2)}
    model.training_info = info
    model.source = {"path": None, "format": "trained", "meta": {"training": info}}
    if out is not None:
        save_syncnet(model, out, meta={"training": info})
        model.source["path"] = str(out)
    return model


__all__ = [
    "SyncNet", "SyncNetConfig", "SyncNetWeightsError", "SyncResult", "SyncClip", "load_syncnet", "save_syncnet",
    "check_state_dict", "crop_for_sync", "sync_boxes", "crop_one", "embed_clip", "sync_scores",
    "scores_from_embeddings", "offset_distances", "to_model_pixels", "clips_from_dataset", "train_syncnet",
    "OFFICIAL_WEIGHTS_HINT",
]
