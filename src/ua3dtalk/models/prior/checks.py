"""Shape checks at module boundaries (raise ``ValueError``, never ``assert``: they stay on under
``python -O``)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

Dim = Union[int, str, None]

__all__ = ["expect"]


def expect(x, name: str, shape: Sequence[Dim], dims: Optional[dict] = None, floating: bool = True) -> dict:
    """Check that ``x`` is a tensor of ``shape``.

    Entries of ``shape``: an ``int`` must match exactly; a ``str`` names a size that must agree with
    every other use of that name in ``dims`` (filled in on first use); ``None`` accepts any size.
    ``floating`` also requires a floating-point dtype. Returns ``dims``.
    """
    dims = {} if dims is None else dims
    spec = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {spec}, got {type(x).__name__}")
    if x.dim() != len(shape):
        raise ValueError(f"{name}: expected shape {spec}, got {list(x.shape)}")
    for i, (s, n) in enumerate(zip(shape, x.shape)):
        if s is None:
            continue
        if isinstance(s, str):
            if s in dims and dims[s] != n:
                raise ValueError(f"{name}: dimension {i} ({s}) is {n}, expected {dims[s]} "
                                 f"(shape {spec} = {list(x.shape)})")
            dims.setdefault(s, int(n))
        elif int(s) != n:
            raise ValueError(f"{name}: expected shape {spec}, got {list(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    return dims
