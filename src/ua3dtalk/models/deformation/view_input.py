"""Decomposed view inputs of the per-view ensembles: a view ``concat(segments)`` given by its segments, so
that the first layer of :class:`~ua3dtalk.models.deformation.ensemble.EnsembleMLP` never materialises the
broadcasts (see the docstring of :mod:`~ua3dtalk.models.deformation.ensemble`, "Decomposed first layer")."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

Tensor = torch.Tensor

SEGMENT_KINDS = ("frame", "shared", "full")




class ViewInput:
    """A view ``x = concat(segments) [B, N, d]`` given by its segments, without materialising the
    broadcasts (see the module docstring, "Decomposed first layer").

    Args:
        segments: ``(kind, tensor)`` pairs in feature order; ``kind`` is ``"frame"`` (``[B, d_i]``, the
            same for every Gaussian), ``"shared"`` (``[N, d_i]``, the same for every frame, e.g. ``H``)
            or ``"full"`` (``[B, N, d_i]``).
        pre: optional ``[N, T·hidden]`` precomputed ``b1 + Σ_shared seg·W1_seg`` of the ensemble that
            evaluates this view (members concatenated as :meth:`EnsembleMLP.w1_rows`), in the
            ensemble's compute dtype; the caller guarantees it matches the current weights.
        batch: ``B`` when no segment carries it (only ``shared`` segments); default 1.
    """

    def __init__(self, segments: Sequence[tuple[str, Tensor]], pre: Optional[Tensor] = None,
                 batch: Optional[int] = None) -> None:
        segs = tuple((str(k), t) for k, t in segments)
        if not segs:
            raise ValueError("ViewInput: at least one segment is required")
        b, n = None, None
        for k, t in segs:
            if k not in SEGMENT_KINDS:
                raise ValueError(f"ViewInput: segment kind must be one of {SEGMENT_KINDS}, got {k!r}")
            want = {"frame": 2, "shared": 2, "full": 3}[k]
            if t.dim() != want:
                raise ValueError(f"ViewInput: a {k!r} segment must have {want} dims, got {list(t.shape)}")
            tb = t.shape[0] if k in ("frame", "full") else None
            tn = t.shape[-2] if k in ("shared", "full") else None
            if tb is not None:
                if b is not None and tb != b:
                    raise ValueError(f"ViewInput: segments disagree on the batch size ({b} vs {tb})")
                b = tb
            if tn is not None:
                if n is not None and tn != n:
                    raise ValueError(f"ViewInput: segments disagree on the number of Gaussians ({n} vs {tn})")
                n = tn
        if n is None:
            raise ValueError("ViewInput: at least one 'shared' or 'full' segment is required")
        if b is None:
            b = 1 if batch is None else int(batch)
        elif batch is not None and int(batch) != b:
            raise ValueError(f"ViewInput: batch={batch} but the segments have batch {b}")
        if pre is not None and (pre.dim() != 2 or pre.shape[0] != n):
            raise ValueError(f"ViewInput: pre must be [N={n}, T·hidden], got {list(pre.shape)}")
        self.segments, self.pre, self.batch, self.n = segs, pre, b, n
        self.dim_features = sum(t.shape[-1] for _, t in segs)

    @property
    def shape(self) -> torch.Size:
        """``[B, N, d]`` of the (virtual) concatenated view."""
        return torch.Size((self.batch, self.n, self.dim_features))

    def dim(self) -> int:
        return 3

    @property
    def dtype(self) -> torch.dtype:
        return self.segments[0][1].dtype

    def materialize(self) -> Tensor:
        """The concatenated view ``[B, N, d]`` (reference / ``fusion=concat``)."""
        b, n = self.batch, self.n
        parts = []
        for k, t in self.segments:
            if k == "frame":
                parts.append(t.unsqueeze(1).expand(-1, n, -1))
            elif k == "shared":
                parts.append(t.unsqueeze(0).expand(b, -1, -1))
            else:
                parts.append(t)
        return parts[0] if len(parts) == 1 and self.segments[0][0] == "full" else torch.cat(parts, dim=-1)

    def __repr__(self) -> str:
        segs = ", ".join(f"{k}{list(t.shape)}" for k, t in self.segments)
        return f"ViewInput([{segs}], pre={None if self.pre is None else list(self.pre.shape)})"


ViewLike = Union[Tensor, ViewInput]


__all__ = ["SEGMENT_KINDS", "ViewInput", "ViewLike"]
