"""SyncNet v2, the network behind the Sync-C / Sync-D lip-sync metrics (DESIGN §8).

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

Scoring (the Sync-C / Sync-D metric, face crops, embeddings) is in :mod:`.syncnet_scoring`, training
on ground truth in :mod:`.syncnet_training`; this module holds the network, its configuration and
its weights files (:func:`load_syncnet`, :func:`save_syncnet`).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..utils.state_dict import mismatch_lines, state_dict_diff
from .mfcc import MFCC_PER_VIDEO_FRAME, NUM_CEPS, SAMPLE_RATE

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
    Use :func:`~.syncnet_scoring.sync_scores` for the metric (it builds these inputs from frames and a waveform).
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
                         "truth with ua3dtalk.metrics.syncnet_training.train_syncnet")


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


def check_state_dict(state: dict, model: SyncNet, path: Union[str, Path, None] = None) -> None:
    """Raise :class:`SyncNetWeightsError` unless ``state`` has exactly the keys and shapes of
    ``model.state_dict()`` (``*.num_batches_tracked`` may be absent: the public file predates them)."""
    where = f"SyncNet weights {path}" if path is not None else "SyncNet state dict"
    own = model.state_dict()
    missing, unexpected, shaped = state_dict_diff(own, state, may_miss=("num_batches_tracked",))
    shapes = [f"{k} {list(state[k].shape)} (expected {list(own[k].shape)})" for k in shaped]
    if missing or unexpected or shapes:
        lines = [f"{where} do not fit SyncNet{model.config.to_dict()}:"]
        lines += ["  " + line for line in mismatch_lines(missing, unexpected, shapes, counts=True)]
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


__all__ = [
    "SyncNet", "SyncNetConfig", "SyncNetWeightsError", "load_syncnet", "save_syncnet", "check_state_dict",
    "OFFICIAL_WEIGHTS_HINT", "WINDOW", "AUDIO_WINDOW", "SAMPLES_PER_FRAME", "PAD_VALUE",
]
