"""External evaluators: an expression / 3DMM regressor saved with ``torch.jit.save`` (DESIGN §8).

:class:`TorchScriptExtractor` is the E-FID extractor "3dmm" (e.g. a Deep3DFaceRecon export): face
crops [B,3,S,S] in → [B,D] coefficients out. The project's own evaluator networks are in
:mod:`.evaluators`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .evaluators import EvaluatorError, EvaluatorMissingError, crop_faces

__all__ = ["TorchScriptExtractor"]


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
