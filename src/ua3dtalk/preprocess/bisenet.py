"""Face parsing with a BiSeNet checkpoint given by path (the network ER-NeRF / TalkingGaussian use).

The architecture follows the face-parsing BiSeNet of those pipelines (a ResNet-18 context path with
attention-refinement modules, the 1/8 ResNet features as the spatial path, a feature-fusion module
and three output heads; 19 CelebAMask-HQ classes), with the same parameter names, so their
``79999_iter.pth`` state dict loads unchanged (``strict=True``; a checkpoint that does not match
raises a clear error). Input: RGB resized to 512², ImageNet normalisation; the label map is resized
back to the frame (nearest).

Class → palette (DESIGN §5.1), as the peers map them: 0 background → background; 1 skin, 2–3 brows,
4–5 eyes, 6 glasses, 7–9 ears and earrings, 10 nose, 12–13 lips → face; 11 inside of the mouth →
mouth; 14 neck, 15 necklace → neck; 16 cloth → torso; 17 hair, 18 hat → hair.
Nothing is downloaded; the ResNet weights come from the checkpoint itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import MissingModelError, PreprocessError

CLASS_TO_PART = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 4, 4, 5, 3, 3], np.uint8)
"""[19] → label index in :data:`ua3dtalk.data.formats.PARTS` (background 0, face 1, mouth 2, hair 3,
neck 4, torso 5)."""
NUM_CLASSES = 19
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = F.relu(self.bn1(self.conv1(x)))
        r = self.bn2(self.conv2(r))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(s + r)


def _layer(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout, 1) for _ in range(n - 1)])


class Resnet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 2, 1)
        self.layer2 = _layer(64, 128, 2, 2)
        self.layer3 = _layer(128, 256, 2, 2)
        self.layer4 = _layer(256, 512, 2, 2)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        f = self.conv(x)
        a = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(f, 1))))
        return f * a


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(f32, 1))
        s32 = self.arm32(f32) + F.interpolate(avg, f32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(s32, f16.shape[2:], mode="nearest"))
        s16 = self.arm16(f16) + up32
        up16 = self.conv_head16(F.interpolate(s16, f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        f = self.convblk(torch.cat([fsp, fcp], 1))
        a = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(f, 1)))))
        return f * a + f


class Head(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """BiSeNet for face parsing. Input [B,3,H,W] normalised RGB → logits [B,n_classes,H,W]
    (the main head; the two auxiliary heads exist so that checkpoints load, and are not run)."""

    def __init__(self, n_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, n_classes)
        self.conv_out16 = Head(128, 64, n_classes)
        self.conv_out32 = Head(128, 64, n_classes)

    def forward(self, x):
        f8, cp8, _ = self.cp(x)
        out = self.conv_out(self.ffm(f8, cp8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


class BiSeNetParser:
    """Loads a checkpoint (state dict, optionally under a ``state_dict`` / ``model`` key) and parses
    frames: :meth:`parse` (uint8 [H,W,3], landmarks unused) → labels uint8 [H,W] (PARTS indices)."""

    def __init__(self, path: str | Path, input_size: int = 512):
        path = Path(path)
        if not path.is_file():
            raise MissingModelError("BiSeNet checkpoint not found (give the face-parsing 79999_iter.pth of "
                                    "ER-NeRF/TalkingGaussian with --parsing-model)", path)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle/zip errors have many types
            raise PreprocessError(f"unreadable BiSeNet checkpoint ({e})", path) from None
        if isinstance(sd, dict):
            for k in ("state_dict", "model"):
                if k in sd and isinstance(sd[k], dict):
                    sd = sd[k]
        if not isinstance(sd, dict):
            raise PreprocessError(f"not a state dict (got {type(sd).__name__})", path)
        sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
        w = sd.get("conv_out.conv_out.weight")
        n = int(w.shape[0]) if isinstance(w, torch.Tensor) else NUM_CLASSES
        if n != NUM_CLASSES:
            raise PreprocessError(f"BiSeNet checkpoint has {n} classes; the CelebAMask-HQ mapping needs {NUM_CLASSES}",
                                  path)
        self.net = BiSeNet(n)
        missing, unexpected = self.net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise PreprocessError(f"not a face-parsing BiSeNet checkpoint: {len(missing)} missing keys (e.g. "
                                  f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})", path)
        self.net.eval()
        self.input_size = int(input_size)

    @torch.no_grad()
    def classes(self, img: np.ndarray) -> np.ndarray:
        """CelebAMask-HQ class map uint8 [H,W] of an RGB frame."""
        H, W = img.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, (self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - torch.tensor(_MEAN)[:, None, None]) / torch.tensor(_STD)[:, None, None]
        logits = self.net(x)
        cls = logits.argmax(1, keepdim=True).float()
        cls = F.interpolate(cls, (H, W), mode="nearest")[0, 0]
        return cls.to(torch.uint8).numpy()

    def parse(self, img: np.ndarray, lms=None) -> np.ndarray:
        return CLASS_TO_PART[self.classes(img)]
