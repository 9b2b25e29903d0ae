"""Image metrics (DESIGN §8): PSNR, SSIM (torchmetrics) and LPIPS (``lpips`` package, AlexNet, v0.1).

Frames are float tensors [N,3,H,W] in [0,1] (RGB); predictions and ground truth must have the same
shape. Every function returns the mean over the N frames as a Python float (per-frame values are
available from :func:`psnr_per_frame` and :meth:`LPIPSMetric.per_frame`).

LPIPS weights (offline, DESIGN §10)
-----------------------------------
The linear calibration layers of LPIPS v0.1 ship inside the ``lpips`` wheel. The AlexNet backbone is
the torchvision ImageNet checkpoint, read from the torch hub cache
``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` (``torch.hub.get_dir()``); nothing is ever
downloaded. When the file is absent :class:`LPIPSMetric` raises :class:`LPIPSWeightsError` naming the
file and how to obtain it, unless ``random_backbone=True`` is asked for: then a seeded random backbone is
used and the metric reports under ``lpips_randbackbone`` (never ``lpips``), so such numbers cannot be
mixed up with real LPIPS.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = [
    "psnr", "psnr_per_frame", "ssim", "LPIPSMetric", "LPIPSWeightsError", "ALEXNET_FILE", "ALEXNET_URL",
    "alexnet_cache_path", "check_frames", "crop_boxes",
]

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
# torchvision AlexNet ``features`` index of each conv layer → the lpips trunk slice holding it
_ALEX_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def check_frames(pred: torch.Tensor, gt: torch.Tensor, name: str = "frames") -> None:
    """Raise ValueError unless ``pred`` and ``gt`` are float [N,3,H,W] tensors of the same shape."""
    for what, t in (("pred", pred), ("gt", gt)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name}: {what} must be a float torch.Tensor [N,3,H,W] in [0,1], got "
                            f"{type(t).__name__}{'' if not isinstance(t, torch.Tensor) else ' ' + str(t.dtype)}")
        if t.ndim != 4 or t.shape[1] != 3 or t.shape[0] == 0:
            raise ValueError(f"{name}: {what} must have shape [N,3,H,W] with N ≥ 1, got {tuple(t.shape)}")
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")


def psnr_per_frame(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """[N] PSNR in dB of each frame (data range 1, MSE over all pixels and channels of the frame)."""
    check_frames(pred, gt, "psnr")
    return peak_signal_noise_ratio(pred.clamp(0, 1), gt.clamp(0, 1), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean over frames of the per-frame PSNR (dB), frames in [0,1] (TalkingGaussian convention)."""
    return float(psnr_per_frame(pred, gt).mean())


def ssim(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean SSIM over frames (torchmetrics: Gaussian window 11, σ = 1.5, data range 1)."""
    check_frames(pred, gt, "ssim")
    return float(structural_similarity_index_measure(pred.clamp(0, 1), gt.clamp(0, 1), data_range=1.0,
                                                     reduction="elementwise_mean"))


def crop_boxes(frames: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop-and-resize boxes out of frames with bilinear sampling (boxes may leave the image: the outside
    is filled by the border pixels).

    Args:
        frames: [N,C,H,W] float.
        boxes: [N,4] (x0, y0, x1, y1) in pixels (x = column), continuous coordinates (pixel (r, c)
            covers [c, c+1] × [r, r+1]).
        size: output side length.
    Returns:
        [N,C,size,size].
    """
    if frames.ndim != 4:
        raise ValueError(f"crop_boxes: frames must be [N,C,H,W], got {tuple(frames.shape)}")
    boxes = torch.as_tensor(boxes, dtype=frames.dtype, device=frames.device)
    if boxes.shape != (frames.shape[0], 4):
        raise ValueError(f"crop_boxes: boxes must be [N,4] = (x0,y0,x1,y1) with N={frames.shape[0]}, got "
                         f"{tuple(boxes.shape)}")
    if bool(((boxes[:, 2] - boxes[:, 0]) <= 0).any() or ((boxes[:, 3] - boxes[:, 1]) <= 0).any()):
        raise ValueError("crop_boxes: every box needs x1 > x0 and y1 > y0")
    H, W = frames.shape[-2:]
    t = (torch.arange(size, dtype=frames.dtype, device=frames.device) + 0.5) / size  # [S] in (0,1)
    xs = boxes[:, 0:1] + t * (boxes[:, 2:3] - boxes[:, 0:1])  # [N,S] pixel coordinates
    ys = boxes[:, 1:2] + t * (boxes[:, 3:4] - boxes[:, 1:2])
    gx = xs / W * 2 - 1  # align_corners=False: pixel edge 0 → -1, W → 1
    gy = ys / H * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], -1)
    return nn.functional.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


class LPIPSWeightsError(FileNotFoundError):
    """The AlexNet backbone checkpoint of LPIPS is not in the torch hub cache."""


def alexnet_cache_path() -> Path:
    """Where the AlexNet backbone is looked up: ``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``
    (``$TORCH_HOME/hub/checkpoints/...``; TORCH_HOME defaults to ``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class LPIPSMetric(nn.Module):
    """LPIPS distance (Zhang et al. 2018; ``lpips`` package, net='alex', version '0.1', inputs in [0,1]
    with ``normalize=True``), on full frames or face crops.

    Args:
        random_backbone: use a random AlexNet backbone drawn with ``seed`` instead of the ImageNet
            weights (tests/smoke runs only). The metric then reports under ``lpips_randbackbone``.
        seed: seed of the random backbone.
        backbone_path: the torchvision AlexNet checkpoint; default :func:`alexnet_cache_path`.
        face_size: side of the resized face crops of the face variant.
        chunk: frames per forward pass (memory bound).

    Raises:
        LPIPSWeightsError: the backbone checkpoint is missing (and ``random_backbone`` is False).

    Attributes:
        key: metric key, ``"lpips"`` or ``"lpips_randbackbone"``; the face-crop variant is
            ``key.replace("lpips", "lpips_face")``.
    """

    def __init__(self, random_backbone: bool = False, seed: int = 0, backbone_path: str | Path | None = None,
                 face_size: int = 128, chunk: int = 16):
        super().__init__()
        import lpips

        self.random_backbone = bool(random_backbone)
        self.face_size, self.chunk = int(face_size), int(chunk)
        self.key = "lpips_randbackbone" if self.random_backbone else "lpips"
        self.face_key = self.key.replace("lpips", "lpips_face")
        # pnet_rand=True: the package builds an untrained AlexNet and never touches the network; the v0.1
        # linear layers are read from the lpips wheel (pretrained=True only concerns those).
        with _quiet(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
        if not self.random_backbone:
            path = Path(backbone_path) if backbone_path is not None else alexnet_cache_path()
            self.backbone_path = path
            model.net.load_state_dict(self._read_alexnet(path))
        else:
            self.backbone_path = None
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _read_alexnet(path: Path) -> dict:
        if not path.is_file():
            raise LPIPSWeightsError(
                f"LPIPS needs the torchvision AlexNet weights at {path} (file {ALEXNET_FILE}), which is missing. "
                f"Download {ALEXNET_URL} into {path.parent} (e.g. once, online: `python -c \"import torchvision; "
                f"torchvision.models.alexnet(weights='IMAGENET1K_V1')\"`), set TORCH_HOME to a cache holding it, "
                "or use random_backbone=True (reported as lpips_randbackbone, not comparable to LPIPS).")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt/truncated file
            raise LPIPSWeightsError(f"cannot read the AlexNet checkpoint {path}: {e}") from None
        out = {}
        for idx, sl in _ALEX_SLICES.items():
            for kind in ("weight", "bias"):
                k = f"features.{idx}.{kind}"
                if k not in sd:
                    raise LPIPSWeightsError(f"{path} is not a torchvision AlexNet checkpoint (missing {k!r})")
                out[f"slice{sl}.{idx}.{kind}"] = sd[k]
        return out

    @torch.no_grad()
    def per_frame(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """[N] LPIPS of each frame pair; frames [N,3,H,W] in [0,1] (H, W ≥ 32)."""
        check_frames(pred, gt, self.key)
        if min(pred.shape[-2:]) < 32:
            raise ValueError(f"{self.key}: frames must be at least 32×32 for AlexNet, got {tuple(pred.shape[-2:])}")
        dev = next(self.model.parameters()).device
        out = []
        for i in range(0, pred.shape[0], self.chunk):
            a = pred[i:i + self.chunk].to(dev, torch.float32).clamp(0, 1)
            b = gt[i:i + self.chunk].to(dev, torch.float32).clamp(0, 1)
            out.append(self.model(a, b, normalize=True).reshape(-1))
        return torch.cat(out).cpu()

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        """Mean full-frame LPIPS over the frames."""
        return float(self.per_frame(pred, gt).mean())

    def face(self, pred: torch.Tensor, gt: torch.Tensor, boxes: torch.Tensor) -> float:
        """Mean LPIPS of face crops: ``boxes`` [N,4] (x0,y0,x1,y1) pixels (e.g. from
        :func:`ua3dtalk.metrics.evaluators.face_boxes` of the ground-truth landmarks; the same box crops
        both frames), resized to ``face_size``²."""
        check_frames(pred, gt, self.face_key)
        return float(self.per_frame(crop_boxes(pred, boxes, self.face_size),
                                    crop_boxes(gt, boxes, self.face_size)).mean())

    def compute(self, pred: torch.Tensor, gt: torch.Tensor, boxes: Optional[torch.Tensor] = None) -> dict:
        """``{key: full-frame LPIPS}`` plus ``{face_key: face-crop LPIPS}`` when ``boxes`` are given."""
        out = {self.key: self(pred, gt)}
        if boxes is not None:
            out[self.face_key] = self.face(pred, gt, boxes)
        return out
